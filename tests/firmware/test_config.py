"""Config validation: a bad candidate is rejected whole, with a reason naming
the setting and value; the running config is never half-changed."""

import copy

import pytest

import config

CURRENT = dict(config.DEFAULTS, version=3)


def test_partial_candidate_keeps_other_settings():
    new = config.validate({"version": 4, "publish_interval_s": 10}, CURRENT)
    assert new == dict(CURRENT, version=4, publish_interval_s=10)


@pytest.mark.parametrize("candidate,reason", [
    ({"publish_interval_s": 5}, "no version"),
    ({"version": "4"}, "version must be an integer, got '4'"),
    ({"version": True}, "version must be an integer"),
    ({"version": 2}, "version 2 is older than the applied version 3"),
    ({"version": 4, "publish_interval_s": 0}, "publish_interval_s must be between 1 and 3600, got 0"),
    ({"version": 4, "publish_interval_s": float("nan")}, "publish_interval_s must be a number"),
    ({"version": 4, "sample_interval_s": 10, "publish_interval_s": 5}, "must not exceed publish_interval_s"),
    ({"version": 4, "pzem_addresses": [1, 1]}, "duplicates"),
    ({"version": 4, "pzem_addresses": [1, 300]}, "300 is not a Modbus address"),
    ({"version": 4, "pzem_addresses": "1,2"}, "must be a list"),
    ({"version": 4, "publsh_interval_s": 5}, "unknown setting(s): publsh_interval_s"),
    ({"version": 4, "setpoint_c": 900}, "setpoint_c must be between -40 and 400, got 900"),
    ([1, 2], "config must be a JSON object"),
])
def test_bad_candidates_are_rejected_with_reason(candidate, reason):
    before = copy.deepcopy(CURRENT)
    with pytest.raises(config.ConfigError) as err:
        config.validate(candidate, CURRENT)
    assert reason in str(err.value)
    assert CURRENT == before


def test_same_version_reapplies():
    assert config.validate({"version": 3}, CURRENT) == CURRENT


def test_setpoint_may_be_cleared():
    assert config.validate({"version": 4, "setpoint_c": None}, dict(CURRENT, setpoint_c=180))["setpoint_c"] is None


def test_ack_payloads():
    assert config.ack(4, "applied") == {"version": 4, "result": "applied", "detail": None}
    assert config.ack(5, "rejected", "x")["detail"] == "x"
    with pytest.raises(ValueError):
        config.ack(4, "ok")
    assert config.candidate_version({"version": 9}) == 9
    assert config.candidate_version({"version": "9"}) is None

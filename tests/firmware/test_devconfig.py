"""Config validation (plugins/module_utils/devconfig.py, the device
contract): a candidate is the whole desired state over defaults and the
flash-time config; a bad candidate is rejected whole, with a reason naming
the setting and value; the running config is never half-changed."""

import copy

import pytest

import devconfig

BASE = devconfig.initial({"pzem_addresses": [1], "temperature_zones": 2, "setpoint_c": 180})
ROM_A = "28ff001d12340465"
ROM_B = "28ff011d1234047a"


def test_candidate_is_applied_over_the_flash_time_config_not_over_the_previous_one():
    first = devconfig.validate({"version": 4, "publish_interval_s": 10, "setpoint_c": 150}, BASE)
    assert first == dict(BASE, version=4, publish_interval_s=10, setpoint_c=150)
    # the next cfg leaves setpoint_c out: it returns to the flash-time value, not 150
    second = devconfig.validate({"version": 5, "publish_interval_s": 10}, BASE, applied_version=4)
    assert second["setpoint_c"] == 180
    # the same message always gives the same config, whatever was applied before
    assert devconfig.validate({"version": 5, "publish_interval_s": 10}, BASE) == second


@pytest.mark.parametrize("candidate,reason", [
    ({"publish_interval_s": 5}, "no version"),
    ({"version": "4"}, "version must be an integer, got '4'"),
    ({"version": True}, "version must be an integer"),
    ({"version": 4, "publish_interval_s": 0}, "publish_interval_s must be between 1 and 3600, got 0"),
    ({"version": 4, "publish_interval_s": float("nan")}, "publish_interval_s must be a number"),
    ({"version": 4, "sample_interval_s": 10, "publish_interval_s": 5}, "must not exceed publish_interval_s"),
    ({"version": 4, "pzem_addresses": [1, 1]}, "duplicates"),
    ({"version": 4, "pzem_addresses": [1, 300]}, "300 is not a Modbus address"),
    ({"version": 4, "pzem_addresses": "1,2"}, "must be a list"),
    ({"version": 4, "publsh_interval_s": 5}, "unknown setting(s): publsh_interval_s"),
    ({"version": 4, "setpoint_c": 900}, "setpoint_c must be between -40 and 400, got 900"),
    ({"version": 4, "temperature_sensors": {"28zz": 0}}, "'28zz' is not a DS18B20 ROM code"),
    ({"version": 4, "temperature_sensors": {"10ff001d12340465": 0}}, "family 28"),
    ({"version": 4, "temperature_sensors": {ROM_A: 0, ROM_B: 0}}, "zone 0 is given to two sensors"),
    ({"version": 4, "temperature_sensors": {ROM_A: 2}}, "mapped to zone 2, but temperature_zones is 2"),
    ({"version": 4, "temperature_sensors": [ROM_A]}, "must map DS18B20 ROM codes to zones"),
    ({"version": 4, "ntp_server": "ntp server"}, "ntp_server must be a host name"),
    ({"version": 4, "ntp_server": "ctl:99999"}, "bad port"),
    ([1, 2], "config must be a JSON object"),
])
def test_bad_candidates_are_rejected_with_reason(candidate, reason):
    before = copy.deepcopy(BASE)
    with pytest.raises(devconfig.ConfigError) as err:
        devconfig.validate(candidate, BASE)
    assert reason in str(err.value)
    assert BASE == before


def test_older_version_is_refused_same_version_reapplies():
    with pytest.raises(devconfig.ConfigError, match="version 2 is older than the applied version 3"):
        devconfig.validate({"version": 2}, BASE, applied_version=3)
    assert devconfig.validate({"version": 3}, BASE, applied_version=3) == dict(BASE, version=3)


def test_sensor_map_and_ntp_server():
    new = devconfig.validate({"version": 1, "temperature_sensors": {ROM_A.upper(): 1, ROM_B: 0},
                              "ntp_server": "10.0.0.2:1123"}, BASE)
    assert new["temperature_sensors"] == {ROM_A: 1, ROM_B: 0}
    assert new["ntp_server"] == "10.0.0.2:1123"


def test_setpoint_may_be_cleared():
    assert devconfig.validate({"version": 4, "setpoint_c": None}, BASE)["setpoint_c"] is None


def test_flash_time_config():
    assert devconfig.initial({})["version"] == 0
    with pytest.raises(devconfig.ConfigError, match="carries no version"):
        devconfig.initial({"version": 3})
    with pytest.raises(devconfig.ConfigError, match="unknown setting"):
        devconfig.initial({"bogus": 1})


def test_ack_payloads():
    assert devconfig.ack(4, "applied") == {"version": 4, "result": "applied", "detail": None}
    assert devconfig.ack(5, "rejected", "x")["detail"] == "x"
    with pytest.raises(ValueError):
        devconfig.ack(4, "ok")
    assert devconfig.candidate_version({"version": 9}) == 9
    assert devconfig.candidate_version({"version": "9"}) is None

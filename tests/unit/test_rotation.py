"""The controller side of a password rotation (plugins/module_utils/rotation.py)
and the mosquitto role's next password file."""

import json
import os
import stat

import pytest

import rotatecmd
import rotation
from rolerender import render, role_vars

DEV = "psu-ktcyat68"
OTHER = "env-3z0v4y2b"


@pytest.fixture
def secrets(tmp_path):
    d = tmp_path / "mqtt"
    d.mkdir()
    for u, p in ((DEV, "old-psu"), (OTHER, "old-env"), ("controller", "ctl")):
        (d / u).write_text(p + "\n")
    return d


def test_prepare_makes_a_private_next_password_once(secrets):
    assert rotation.prepare([DEV], str(secrets), 32, check=True) == {DEV: rotation.WOULD_CREATE}
    assert not (secrets / (DEV + ".next")).exists()
    assert rotation.prepare([DEV], str(secrets), 32) == {DEV: rotation.CREATED}
    first = (secrets / (DEV + ".next")).read_text().strip()
    assert len(first) == 32 and first.isalnum() and first != "old-psu"
    assert stat.S_IMODE(os.stat(secrets / (DEV + ".next")).st_mode) == 0o600
    assert rotation.prepare([DEV], str(secrets), 32) == {DEV: rotation.KEPT}
    assert (secrets / (DEV + ".next")).read_text().strip() == first


def test_inventory_passwords_and_unknown_devices_are_refused_before_anything(secrets):
    with pytest.raises(rotation.RotationError, match="psu-ktcyat68 comes from the inventory"):
        rotation.check_rotatable([DEV], str(secrets), {DEV: "vaulted"})
    with pytest.raises(rotation.RotationError, match="no current password .* for fan-00000000"):
        rotation.check_rotatable(["fan-00000000"], str(secrets), {})
    with pytest.raises(rotation.RotationError, match="password_length must be 16"):
        rotation.new_password(8)


def test_the_command_carries_the_next_password_and_an_id_that_does_not_reveal_it(secrets):
    rotation.prepare([DEV], str(secrets), 32)
    pw = (secrets / (DEV + ".next")).read_text().strip()
    cmd = rotation.stage_command(DEV, str(secrets), 8884, 1_800_000_000.5, 30)
    assert cmd["cmd"] == "rotate" and cmd["password"] == pw and cmd["port"] == 8884
    assert cmd["expires"] == 1_800_000_031  # the phase's wait, rounded up: a late device refuses it
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"  # the command checks the PEM header only
    assert rotation.stage_ca_command(pem, 8884, 1_800_000_000, 30)["expires"] == 1_800_000_030
    assert pw not in cmd["id"] and cmd["id"] == rotation.command_id(DEV, pw)
    assert rotation.command_id(DEV, pw) != rotation.command_id(OTHER, pw)
    assert rotatecmd.check_rotate_command(cmd) == (8884, pw, None)


@pytest.mark.parametrize("cmd, error", [
    ({"port": 0, "password": "x"}, "rotate port must be an integer 1..65535, got 0"),
    ({"port": 8884}, "nothing to rotate"),
    ({"port": 8884, "password": "has space"}, "printable ASCII characters without spaces"),
    ({"port": 8884, "ca": "not a pem"}, "one PEM certificate"),
])
def test_bad_rotate_commands_are_refused_without_echoing_the_password(cmd, error):
    with pytest.raises(rotatecmd.RotateError, match=error) as e:
        rotatecmd.check_rotate_command(dict(cmd, id="r", cmd="rotate"))
    assert "has space" not in str(e.value)


def test_stage_plan_skips_proven_devices_until_the_next_password_changes(secrets):
    rotation.prepare([DEV, OTHER], str(secrets), 32)
    record = rotation.Record.open(str(secrets / rotation.RECORD))
    statuses = {DEV: {"online": True}, OTHER: {"online": False}}
    plan = {d.id: d for d in rotation.plan_stage([DEV, OTHER, "fan-00000000"], str(secrets), record, statuses)}
    assert (plan[DEV].state, plan[OTHER].state, plan["fan-00000000"].state) == (
        rotation.SENT, rotation.OFFLINE, rotation.NOT_ROTATING)
    assert plan[DEV].on_ack({"id": "other", "cmd": "rotate", "result": "accepted"}) is False
    assert plan[DEV].on_ack({"id": plan[DEV].cmd_id, "cmd": "rotate", "result": "accepted", "detail": "p"})
    record.prove(DEV, plan[DEV].cmd_id, 1.0)
    record.save()
    again = rotation.plan_stage([DEV], str(secrets), rotation.Record.open(record.path), statuses)
    assert again[0].state == rotation.SKIPPED
    (secrets / (DEV + ".next")).write_text("another-next-password\n")  # a new rotation is not proven
    assert rotation.plan_stage([DEV], str(secrets), rotation.Record.open(record.path), statuses)[0].state == rotation.SENT


def test_retire_moves_only_proven_or_forced_devices(secrets):
    rotation.prepare([DEV, OTHER], str(secrets), 32)
    new = {d: (secrets / (d + ".next")).read_text().strip() for d in (DEV, OTHER)}
    record = rotation.Record.open(str(secrets / rotation.RECORD))
    record.prove(DEV, rotation.command_id(DEV, new[DEV]), 1.0)
    plan = rotation.plan_retire([DEV, OTHER], str(secrets), record)
    assert [d.state for d in plan] == [rotation.RETIRED, rotation.MISSED]
    assert rotation.retire(plan, str(secrets), record, check=True) == [DEV]
    assert (secrets / DEV).read_text().strip() == "old-psu"  # check mode changed nothing
    plan = rotation.plan_retire([DEV, OTHER], str(secrets), record)
    assert rotation.retire(plan, str(secrets), record) == [DEV]
    assert (secrets / DEV).read_text().strip() == new[DEV] and not (secrets / (DEV + ".next")).exists()
    assert (secrets / OTHER).read_text().strip() == "old-env"  # missed: the old one stays
    assert json.loads((secrets / rotation.RECORD).read_text())["devices"] == {}
    forced = rotation.plan_retire([OTHER], str(secrets), record, force={OTHER})
    assert forced[0].state == rotation.FORCED
    rotation.retire(forced, str(secrets), record)
    assert (secrets / OTHER).read_text().strip() == new[OTHER]


def test_the_roles_next_password_file_has_next_passwords_and_the_main_one_does_not(secrets):
    (secrets / (DEV + ".next")).write_text("next-psu\n")
    variables = role_vars("mosquitto", {"edgefleet_site": "plant1", "edgefleet_secrets_dir": str(secrets.parent),
                                        "mosquitto_secrets_dir": str(secrets),
                                        "_mosquitto_devices": [DEV, OTHER], "_mosquitto_service_names": ["controller"],
                                        "mosquitto_passwords": {}})
    hashed = {}
    for mode in (False, True):
        text = render("mosquitto", "edgefleet.passwd.j2", dict(variables, _mosquitto_passwd_for_next=mode))
        hashed[mode] = dict(line.split(":", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert hashed[True][OTHER] == hashed[False][OTHER] and hashed[True]["controller"] == hashed[False]["controller"]
    assert hashed[True][DEV] != hashed[False][DEV]
    from edgefleet import mosquitto_passwd_hash
    assert hashed[True][DEV] == mosquitto_passwd_hash("next-psu", DEV, "test-controller", 101)
    assert hashed[False][DEV] == mosquitto_passwd_hash("old-psu", DEV, "test-controller", 101)

"""plugins/module_utils/commands.py: the expiry every controller command carries."""

import pytest

import commands
import contract


def test_with_expiry_adds_whole_seconds_rounded_up_and_leaves_the_command_alone():
    cmd = contract.reboot_command("r-1")
    out = commands.with_expiry(cmd, 1700000000.25, 300)
    assert out == {"id": "r-1", "cmd": "reboot", "expires": 1700000301}
    assert "expires" not in cmd
    assert commands.with_expiry(cmd, 1700000000, 60)["expires"] == 1700000060
    assert contract.check_command(out) == ("r-1", "reboot")


@pytest.mark.parametrize("cmd,now,ttl,match", [
    ({"id": "r-1", "cmd": "reboot"}, 1700000000, 0, r"expiry of command 'r-1' must be a number of seconds > 0, got 0"),
    ({"id": "r-1", "cmd": "reboot"}, 1700000000, "60", r"got '60'"),
    ({"id": "r-1", "cmd": "reboot"}, None, 60, r"now must be the wall clock .* got None"),
    ({"id": "r-1", "cmd": "reboot"}, True, 60, r"got True"),
    (["reboot"], 1700000000, 60, r"a command must be a dict, got list"),
    ({"id": "r-1", "cmd": "dance"}, 1700000000, 60, r"command 'r-1': unknown command 'dance'"),
])
def test_bad_input_is_refused_naming_the_value(cmd, now, ttl, match):
    with pytest.raises(commands.CommandError, match=match):
        commands.with_expiry(cmd, now, ttl)


@pytest.mark.parametrize("expires", [0, -5, 1.5, "1700000000", True])
def test_the_contract_refuses_a_bad_expires(expires):
    with pytest.raises(contract.ContractError, match=r"command expires must be a positive integer .* got %s"
                       % __import__("re").escape(repr(expires))):
        contract.check_command({"id": "r-1", "cmd": "reboot", "expires": expires})


def test_a_refusal_answer_carries_its_reason():
    assert contract.cmd_ack("o-1", "ota", "rejected", "inbox full", "inbox_full") == {
        "id": "o-1", "cmd": "ota", "result": "rejected", "detail": "inbox full", "reason": "inbox_full"}
    assert "reason" not in contract.cmd_ack("r-1", "reboot", "accepted")

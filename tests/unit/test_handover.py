"""Rotation of the site's OTA signing key on the controller side: the
hand-over record (plugins/module_utils/handover.py) and the key directory's
next/promote steps (otasign). A device that accepted is never sent the
hand-over again, a record of another key is refused, the next key is made
only on request and never replaced while a hand-over is in progress, and
promotion moves next -> current -> previous, also after an interruption."""

import json
import os

import pytest

import contract
import handover
import otasign
from otasign import SigningKeyError


@pytest.fixture
def keys(tmp_path):
    d = str(tmp_path / "signing")
    current = otasign.ensure_key(d)
    return d, current


def test_the_next_key_is_made_only_on_request_and_needs_a_current_one(tmp_path):
    d = str(tmp_path / "signing")
    with pytest.raises(SigningKeyError, match="has no current key to rotate from"):
        otasign.ensure_key(d, "next")
    current = otasign.ensure_key(d)
    assert sorted(os.listdir(d)) == ["current.key", "current.pub"]  # present does not make a next key
    nxt = otasign.ensure_key(d, "next")
    assert nxt["created"] and nxt["public_key"] != current["public_key"]
    again = otasign.ensure_key(d, "next")
    assert not again["created"] and again["public_key"] == nxt["public_key"]  # a stopped rotation keeps its key


def test_a_lost_next_key_is_not_replaced_while_a_handover_is_in_progress(keys):
    d, _ = keys
    nxt = otasign.ensure_key(d, "next")
    state = handover.HandoverState.open(os.path.join(d, otasign.HANDOVER), nxt["public_key"])
    state.accept("psu-ktcyat68", 1.0)
    state.save()
    os.unlink(nxt["key_path"])
    os.unlink(nxt["public_key_path"])
    with pytest.raises(SigningKeyError, match="records a hand-over in progress, but next.key is missing"):
        otasign.ensure_key(d, "next")
    assert not os.path.exists(nxt["key_path"])


def test_promotion_moves_next_to_current_and_current_to_previous(keys):
    d, current = keys
    nxt = otasign.ensure_key(d, "next")
    state = handover.HandoverState.open(os.path.join(d, otasign.HANDOVER), nxt["public_key"])
    state.accept("psu-ktcyat68", 1.0)
    state.save()
    done = otasign.promote(d)
    assert done == {"public_key": nxt["public_key"], "previous_public_key": current["public_key"], "changed": True}
    assert otasign.current_public_key(d) == nxt["public_key"]
    assert otasign.load_pair(d, "current")[1] == nxt["public_key"]
    assert otasign.load_pair(d, "previous")[1] == current["public_key"]
    assert not os.path.exists(os.path.join(d, "next.key")) and not os.path.exists(os.path.join(d, "next.pub"))
    record = os.path.join(d, "retired", "handover-%s.json" % nxt["public_key"][2:18])
    assert json.load(open(record))["devices"] == {"psu-ktcyat68": {"state": "accepted", "at": 1.0}}
    assert not os.path.exists(os.path.join(d, otasign.HANDOVER))
    assert otasign.ensure_key(d)["changed"] is False  # the new current pair is consistent
    with pytest.raises(SigningKeyError, match="no next key to promote"):
        otasign.promote(d)
    # a second rotation retires the first previous key
    third = otasign.ensure_key(d, "next")
    otasign.promote(d)
    assert otasign.load_pair(d, "previous")[1] == nxt["public_key"]
    tag = current["public_key"][2:18]
    assert sorted(os.listdir(os.path.join(d, "retired"))) == sorted(
        ["handover-%s.json" % nxt["public_key"][2:18], tag + ".key", tag + ".pub"])
    assert otasign.current_public_key(d) == third["public_key"]


def test_an_interrupted_promotion_is_finished(keys):
    """Killed between the renames: current.key is the new key, current.pub
    still the old one, next.pub still there. promote() finishes it; the
    plain key check refuses the half-done state instead of regenerating."""
    d, current = keys
    nxt = otasign.ensure_key(d, "next")
    os.link(os.path.join(d, "current.pub"), os.path.join(d, "previous.pub"))
    os.link(os.path.join(d, "current.key"), os.path.join(d, "previous.key"))
    os.replace(nxt["key_path"], os.path.join(d, "current.key"))
    with pytest.raises(SigningKeyError, match="does not match its public key"):
        otasign.ensure_key(d)
    done = otasign.promote(d)
    assert done["public_key"] == nxt["public_key"] and done["previous_public_key"] == current["public_key"]
    assert otasign.ensure_key(d)["public_key"] == nxt["public_key"]


def test_promotion_refuses_a_next_key_that_does_not_match(keys):
    d, _ = keys
    nxt = otasign.ensure_key(d, "next")
    with open(nxt["public_key_path"], "w") as f:
        f.write(otasign.public_key_hex(otasign.generate_key()) + "\n")
    with pytest.raises(SigningKeyError, match="next.key does not match"):
        otasign.promote(d)
    assert otasign.load_pair(d, "current")  # nothing moved


# --- the hand-over record and each device's answer ----------------------------------------

NEW = otasign.public_key_hex(otasign.generate_key())
OTHER = otasign.public_key_hex(otasign.generate_key())


def test_the_command_id_is_one_per_new_key():
    cid = handover.command_id(NEW)
    assert cid == "signing-key-" + NEW[2:18] and contract.check_command_id(cid) == cid
    assert handover.command_id(OTHER) != cid
    with pytest.raises(ValueError, match="new signing key must be 130"):  # contract.ContractError
        handover.command_id("04ab")


def test_the_record_keeps_accepted_devices_and_refuses_another_key(tmp_path):
    path = str(tmp_path / "handover.json")
    state = handover.HandoverState.open(path, NEW)
    assert not os.path.exists(path)
    state.accept("psu-ktcyat68", 10.0)
    state.save()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    again = handover.HandoverState.open(path, NEW)
    assert again.accepted("psu-ktcyat68") and not again.accepted("env-yy1ka51y")
    assert again.command_id == handover.command_id(NEW)
    with pytest.raises(handover.HandoverError) as e:
        handover.HandoverState.open(path, OTHER)
    assert "records a hand-over to another key" in str(e.value) and "psu-ktcyat68" in str(e.value)
    (tmp_path / "handover.json").write_text("{broken")
    with pytest.raises(handover.HandoverError, match="is not a hand-over record"):
        handover.HandoverState.open(path, NEW)


def test_the_plan_sends_only_to_online_devices_not_accepted_before(tmp_path):
    state = handover.HandoverState.open(str(tmp_path / "h.json"), NEW)
    state.accept("a-00000001", 1.0)
    statuses = {"a-00000001": {"online": True}, "a-00000002": {"online": True}, "a-00000003": {"online": False},
                "a-00000005": "garbage"}
    plan = handover.plan(["a-00000001", "a-00000002", "a-00000003", "a-00000004", "a-00000005"], state, statuses)
    assert [(d.id, d.state) for d in plan] == [("a-00000001", "skipped"), ("a-00000002", "sent"),
                                               ("a-00000003", "offline"), ("a-00000004", "offline"),
                                               ("a-00000005", "offline")]


def test_each_answer_settles_its_device_once():
    cid = handover.command_id(NEW)
    d = handover.Device("a-00000002", handover.SENT)
    assert not d.on_ack({"id": "other", "cmd": "signing_key", "result": "accepted"}, cid)  # not ours
    assert not d.on_ack({"id": cid, "cmd": "reboot", "result": "accepted"}, cid)
    assert d.on_ack({"id": cid, "cmd": "signing_key", "result": "rejected", "detail": "bad signature"}, cid)
    assert (d.state, d.detail) == ("rejected", "bad signature")
    assert not d.on_ack({"id": cid, "cmd": "signing_key", "result": "accepted"}, cid)  # settled
    ok = handover.Device("a-00000003", handover.SENT)
    assert ok.on_ack(contract.cmd_ack(cid, "signing_key", "accepted"), cid) and ok.state == "accepted"
    late = handover.Device("a-00000004", handover.SENT)
    late.timed_out(30)
    assert late.state == "timed_out" and "30 s" in late.detail
    assert handover.summarize([d, ok, late])["rejected"] == 1

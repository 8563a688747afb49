"""plugins/module_utils/rollout: the plan of waves is stable and sized as
asked, the abort rule trips only past its percentage, a device succeeds
only after confirming, coming back on the new version and soaking, and the
state file is written atomically and resumes without commanding anyone
twice. Every time is passed in: nothing sleeps."""

import hashlib
import json
import os
import stat

import contract
import otasign
import pytest
import rollout
import testkeys
from rollout import (COMMANDED, CONFIRMED, FAILED, OFFLINE, PENDING, ROLLED_BACK, SKIPPED, SUCCEEDED, TIMED_OUT,
                     AbortPolicy, DeviceTracker, RolloutError, RolloutState)

SHA = "ab" * 32
OTHER_SHA = "cd" * 32
KEY = testkeys.new_key()
IMAGE = KEY.sign({"version": "1.2.0", "payload": "app", "url": "http://ctl:8080/app/1.2.0/app-1.2.0.bin",
                  "size": 1024, "sha256": SHA})
CID = rollout.command_id("r1", SHA)
DEVICES = ["psu-%08d" % i for i in range(101)]


def sizes(plan):
    return [len(w) for w in plan]


# --- ids and paths -------------------------------------------------------------------

def test_ids_and_paths():
    assert rollout.check_rollout_id("fw-1.2.0_a") == "fw-1.2.0_a"
    assert rollout.check_rollout_id("x" * 40) == "x" * 40
    assert CID == "r1-abababab"
    long_id = rollout.command_id("x" * 40, SHA)
    assert long_id == "x" * 40 + "-abababab" and len(long_id) <= contract.MAX_COMMAND_ID
    assert rollout.command_id("r1", SHA.upper()) == CID
    assert rollout.state_path("/var/lib/ef", "r1", SHA) == "/var/lib/ef/r1-abababababab.json"


@pytest.mark.parametrize("call, message", [
    (lambda: rollout.check_rollout_id("bad id"), "rollout_id: 'bad id' is not 1-40"),
    (lambda: rollout.check_rollout_id("x" * 41), "rollout_id: '%s'" % ("x" * 41)),
    (lambda: rollout.check_rollout_id(""), "rollout_id: ''"),
    (lambda: rollout.check_rollout_id(7), "rollout_id: 7"),
    (lambda: rollout.command_id("r/1", SHA), "rollout_id: 'r/1'"),
    (lambda: rollout.command_id("r1", "abc"), "sha256: 'abc' is not 64 hex digits"),
    (lambda: rollout.state_path("/d", "r1", "zz" * 32), "sha256: '%s'" % ("zz" * 32)),
])
def test_bad_ids(call, message):
    with pytest.raises(RolloutError) as err:
        call()
    assert message in str(err.value)


# --- the plan -------------------------------------------------------------------------

def test_plan_is_a_stable_spread_order():
    plan = rollout.plan_waves(DEVICES, "r1", canary=3, waves=[10, "25%"])
    assert plan == rollout.plan_waves(list(reversed(DEVICES)), "r1", canary=3, waves=[10, "25%"])
    flat = [d for w in plan for d in w]
    assert sorted(flat) == DEVICES  # every device exactly once
    assert flat == sorted(DEVICES, key=lambda d: hashlib.sha256(("r1/" + d).encode()).hexdigest())
    assert flat != DEVICES  # not the input order: the canaries are a sample
    other = rollout.plan_waves(DEVICES, "r2", canary=3, waves=[10, "25%"])
    assert other[0] != plan[0]  # another rollout, other canaries
    assert sizes(other) == sizes(plan)


@pytest.mark.parametrize("n, canary, waves, factor, expected", [
    (10, 1, None, None, [1, 9]),  # default: canary then everyone
    (10, 2, [3], None, [2, 3, 3, 2]),  # the last entry repeats, the last wave is smaller
    (10, 1, [1, "50%"], None, [1, 1, 5, 3]),
    (10, 1, [2, 3, 100, 7], None, [1, 2, 3, 4]),  # surplus entries ignored
    (100, 1, ["10%"], None, [1] + [10] * 9 + [9]),  # percent of all the devices
    (101, 0, ["10%"], None, [11] * 9 + [2]),  # rounded up
    (7, 1, ["1%"], None, [1] * 7),  # at least 1
    (10, 0, [4], None, [4, 4, 2]),  # no canary wave
    (5, 5, None, None, [5]),
    (3, 10, [1], None, [3]),  # canary >= devices: all in the canary wave
    (100, 1, ["10%"], 2, [1, 10, 20, 40, 29]),
    (100, 1, ["10%"], 2.0, [1, 10, 20, 40, 29]),
    (10, 0, [1], 1.5, [1, 2, 3, 4]),  # ceil(1.5) = 2, ceil(4.5) = 5 > what is left
    (100, 0, [10], 1.1, [10, 11, 13, 15, 17, 19, 15]),
    # 2.2 is the decimal written: ceil(25 * 2.2) is 55, not 56 as in floating point
    (100, 0, [25], 2.2, [25, 55, 20]),
])
def test_plan_sizes(n, canary, waves, factor, expected):
    plan = rollout.plan_waves(DEVICES[:n], "r1", canary=canary, waves=waves, increment_factor=factor)
    assert sizes(plan) == expected
    assert sorted(d for w in plan for d in w) == DEVICES[:n]


def test_no_devices_no_waves():
    assert rollout.plan_waves([], "r1") == []
    assert rollout.plan_waves([], "r1", canary=0, waves=["10%"], increment_factor=2) == []


@pytest.mark.parametrize("kw, message", [
    ({"waves": ["10%", "20%", "150%"]}, "waves[2]: '150%' is not a count or a percentage 1%-100%"),
    ({"waves": [0]}, "waves[0]: 0 is not a count"),
    ({"waves": [5, -3]}, "waves[1]: -3 is not"),
    ({"waves": [True]}, "waves[0]: True is not"),
    ({"waves": ["0%"]}, "waves[0]: '0%' is not"),
    ({"waves": ["10"]}, "waves[0]: '10' is not"),
    ({"waves": ["abc"]}, "waves[0]: 'abc' is not"),
    ({"waves": [2.5]}, "waves[0]: 2.5 is not"),
    ({"waves": []}, "waves: [] is not a non-empty list"),
    ({"waves": "10%"}, "waves: '10%' is not a non-empty list"),
    ({"canary": -1}, "canary: -1 is not a count >= 0"),
    ({"canary": True}, "canary: True is not"),
    ({"canary": "1"}, "canary: '1' is not"),
    ({"waves": ["10%"], "increment_factor": 1.0}, "increment_factor: 1.0 is not a number greater than 1.0"),
    ({"waves": ["10%"], "increment_factor": 0.5}, "increment_factor: 0.5 is not"),
    ({"waves": ["10%"], "increment_factor": True}, "increment_factor: True is not"),
    ({"waves": ["10%"], "increment_factor": "2"}, "increment_factor: '2' is not"),
    ({"waves": ["10%"], "increment_factor": float("inf")}, "increment_factor: inf is not"),
    ({"waves": ["10%", "20%"], "increment_factor": 2}, "waves: ['10%', '20%'] must have exactly one entry"),
    ({"devices": "psu-00000001"}, "devices: 'psu-00000001' is not a list"),
    ({"devices": ["a", 3]}, "devices[1]: 3 is not a device id"),
    ({"devices": ["a", "b", "a"]}, "devices[2]: 'a' is listed twice"),
    ({"rollout_id": "r 1"}, "rollout_id: 'r 1'"),
])
def test_bad_plans(kw, message):
    args = {"devices": DEVICES[:10], "rollout_id": "r1"}
    args.update(kw)
    with pytest.raises(RolloutError) as err:
        rollout.plan_waves(**args)
    assert message in str(err.value)


def test_bad_waves_are_refused_even_without_devices():
    with pytest.raises(RolloutError, match=r"waves\[0\]: '101%'"):
        rollout.plan_waves([], "r1", waves=["101%"])


# --- the abort rule -------------------------------------------------------------------

@pytest.mark.parametrize("percent, minimum, succeeded, failed, reason", [
    (20, 5, 8, 2, None),  # exactly the percentage: does not pass it
    (20, 5, 7, 3, "3 of 10 executed devices failed (30.0% > 20%)"),
    (20, 10, 0, 9, None),  # min_executed not reached, however bad
    (20, 10, 0, 10, "10 of 10 executed devices failed (100.0% > 20%)"),
    (0, 1, 0, 1, "1 of 1 executed devices failed (100.0% > 0%)"),
    (0, 3, 1, 1, None),  # 0%: not before min_executed ...
    (0, 3, 2, 1, "1 of 3 executed devices failed (33.3% > 0%)"),  # ... then the first failure
    (0, 1, 5, 0, None),
    (100, 1, 0, 5, None),
    (12.5, 1, 7, 1, None),
    (12.5, 1, 6, 1, "1 of 7 executed devices failed (14.3% > 12.5%)"),
    (20, 1, 0, 0, None),
])
def test_abort_policy(percent, minimum, succeeded, failed, reason):
    assert AbortPolicy(percent, minimum).check(succeeded, failed) == reason


@pytest.mark.parametrize("args, message", [
    ((101, 1), "failure_percent: 101 is not a number 0-100"),
    ((-1, 1), "failure_percent: -1 is not"),
    (("20", 1), "failure_percent: '20' is not"),
    ((True, 1), "failure_percent: True is not"),
    ((20, 0), "min_executed: 0 is not a count >= 1"),
    ((20, 1.5), "min_executed: 1.5 is not"),
    ((20, True), "min_executed: True is not"),
])
def test_bad_abort_policy(args, message):
    with pytest.raises(RolloutError) as err:
        AbortPolicy(*args)
    assert message in str(err.value)
    with pytest.raises(RolloutError, match="failed: -1 is not a count"):
        AbortPolicy(20, 1).check(1, -1)


# --- one device -----------------------------------------------------------------------

def tracker(state=PENDING, timeout_s=30, soak_s=60, **record):
    record.update(state=state, wave=0)
    return DeviceTracker(record, "1.2.0", timeout_s, soak_s, "psu-ktcyat68")


def report(state, detail=None, cmd_id=CID):
    return contract.ota_report(cmd_id, state, "1.2.0", detail)


def online(fw="1.2.0"):
    return {"online": True, "fw": fw, "cfg_version": 3}


OFFLINE_STATUS = {"online": False}


def commanded(now=100.0, **kw):
    t = tracker(**kw)
    assert t.commanded(now, CID) is True
    return t


def soaking(now=120.0):
    t = commanded()
    t.on_status(online(), now)
    t.on_ota(report("confirmed"), now)
    assert t.state == CONFIRMED and t.record["soak_from"] == now
    return t


def test_success_status_first_then_confirmed_then_soak():
    t = commanded()
    assert (t.state, t.record["commanded_at"], t.record["command_id"]) == (COMMANDED, 100.0, CID)
    assert t.on_status(online("1.1.0"), 100.5) is True  # the retained status, old version
    for now, state in ((101, "downloading"), (103, "verifying"), (104, "rebooting")):
        assert t.on_ota(report(state), now) is True
        assert t.record["progress"] == state and t.state == COMMANDED
    assert t.on_ota(report("rebooting"), 104.5) is False  # nothing new
    t.on_status(OFFLINE_STATUS, 105)
    assert t.on_status(online(), 110) is True
    assert t.state == COMMANDED  # online on the version, not confirmed yet
    assert t.on_status(online(), 110.5) is False
    assert t.on_ota(report("confirmed"), 112) is True
    assert (t.state, t.record["confirmed_at"], t.record["soak_from"]) == (CONFIRMED, 112, 112)
    assert t.tick(140) is False and t.state == CONFIRMED  # past timeout_s: soaking devices do not time out
    assert t.tick(171.9) is False and t.state == CONFIRMED
    assert t.tick(172) is True
    assert (t.state, t.final, t.failed) == (SUCCEEDED, True, False)
    assert t.record["ended_at"] == 172
    assert t.tick(500) is False and t.state == SUCCEEDED


def test_success_confirmed_first_then_status():
    t = commanded()
    t.on_ota(report("rebooting"), 104)
    assert t.on_ota(report("confirmed"), 110) is True
    assert t.state == COMMANDED and t.record["confirmed_at"] == 110  # not yet seen on the version
    assert t.on_ota(report("confirmed"), 112) is False and t.record["confirmed_at"] == 110  # a redelivery
    assert t.final is False
    t.on_status(online("1.1.0"), 111)
    assert t.state == COMMANDED
    assert t.on_status(online(), 115) is True
    assert (t.state, t.record["soak_from"]) == (CONFIRMED, 115)
    assert t.tick(174) is False and t.tick(175) is True and t.state == SUCCEEDED


def test_confirmed_needs_the_latest_status_on_the_version():
    t = commanded()
    t.on_status(online(), 105)
    t.on_status(OFFLINE_STATUS, 106)  # gone again
    t.on_ota(report("confirmed"), 107)
    assert t.state == COMMANDED
    t.on_status(online(), 108)
    assert (t.state, t.record["soak_from"]) == (CONFIRMED, 108)


def test_a_status_before_the_command_does_not_count():
    t = tracker()
    t.on_status(online(), 99)  # retained, before the command
    assert t.record["online"] is True and t.record["fw"] == "1.2.0"
    t.commanded(100, CID)
    t.on_ota(report("confirmed"), 101)
    assert t.state == COMMANDED


@pytest.mark.parametrize("state, detail, final, expected_detail", [
    ("failed", "sha256 mismatch", FAILED, "sha256 mismatch"),
    ("failed", None, FAILED, "the device reported failed"),
    ("rolled_back", "self-test: broker unreachable", ROLLED_BACK, "self-test: broker unreachable"),
])
def test_failure_reports(state, detail, final, expected_detail):
    t = commanded()
    t.on_ota(report("downloading"), 101)
    assert t.on_ota(report(state, detail), 105) is True
    assert (t.state, t.record["detail"], t.final, t.failed) == (final, expected_detail, True, True)
    assert t.on_ota(report("confirmed"), 106) is False
    assert t.on_status(online(), 107) is True and t.state == final  # recorded, no effect
    assert t.tick(1000) is False and t.state == final


def test_a_failure_report_ends_a_soak():
    t = soaking()
    assert t.on_ota(report("rolled_back", "crashed twice"), 130) is True
    assert (t.state, t.record["detail"]) == (ROLLED_BACK, "crashed twice")


def test_rolled_back_by_status_during_the_soak():
    t = soaking()
    assert t.on_status(online(), 125) is False and t.state == CONFIRMED
    assert t.on_status(online("1.1.0"), 130) is True
    assert (t.state, t.record["detail"], t.failed) == (ROLLED_BACK, "came back on 1.1.0", True)


def test_offline_during_the_soak():
    t = soaking()
    assert t.on_status(OFFLINE_STATUS, 130) is True
    assert (t.state, t.record["detail"], t.failed) == (FAILED, "went offline during the soak", True)
    assert t.on_status(online(), 131) is True and t.state == FAILED  # coming back does not undo it


def test_repeated_confirmed_does_not_restart_the_soak():
    t = soaking(120)
    assert t.on_ota(report("confirmed"), 150) is False
    assert t.record["soak_from"] == 120
    assert t.tick(180) is True and t.state == SUCCEEDED


def test_timeout_names_the_last_progress():
    t = commanded()
    t.on_ota(report("downloading"), 101)
    assert t.deadline() == 130
    assert t.tick(129.9) is False and t.state == COMMANDED
    assert t.tick(130) is True
    assert (t.state, t.record["detail"], t.failed) == (TIMED_OUT, "no final report within 30 s (last: downloading)",
                                                       True)


def test_timeout_without_any_report():
    t = commanded(timeout_s=45)
    assert t.tick(145) is True
    assert t.record["detail"] == "no final report within 45 s (last: no report)"


def test_timeout_confirmed_but_never_online_on_the_version():
    t = commanded()
    t.on_ota(report("confirmed"), 110)
    t.on_status(OFFLINE_STATUS, 111)
    assert t.tick(130) is True
    assert (t.state, t.record["detail"]) == (TIMED_OUT,
                                             "confirmed but not online on 1.2.0 within 30 s (last status: offline)")


def test_reports_of_another_command_are_ignored():
    t = tracker()
    assert t.on_ota(report("failed", "x"), 99) is False  # not commanded yet
    t.commanded(100, CID)
    for r in (report("failed", "x", cmd_id="r0-abababab"), report("confirmed", cmd_id="r1-cdcdcdcd"),
              {"state": "failed"}, "failed", None, {"id": CID, "state": "exploded"}):
        assert t.on_ota(r, 101) is False
        assert t.state == COMMANDED and t.record["progress"] is None


def test_a_device_is_never_commanded_twice():
    t = commanded()
    with pytest.raises(RolloutError, match="device psu-ktcyat68 is already commanded .*never commanded twice"):
        t.commanded(200, CID)
    assert t.record["commanded_at"] == 100.0
    done = soaking()
    done.tick(1000)
    with pytest.raises(RolloutError, match="already succeeded"):
        done.commanded(2000, CID)
    with pytest.raises(RolloutError, match="already confirmed"):
        soaking().commanded(2000, CID)
    with pytest.raises(RolloutError, match="already skipped"):
        tracker(SKIPPED).commanded(2000, CID)


def test_offline_devices_stay_eligible():
    t = tracker()
    assert t.offline(50) is True and t.state == OFFLINE
    assert t.offline(60) is False
    assert t.commanded(100, CID) is True and t.state == COMMANDED
    with pytest.raises(RolloutError, match="is commanded, not pending"):
        t.offline(101)


def test_bad_tracker_arguments():
    with pytest.raises(RolloutError, match="command id must be a string of 1-64 characters, got 'xxx"):
        tracker().commanded(1, "x" * 65)
    with pytest.raises(RolloutError, match="timeout_s: 0 is not"):
        DeviceTracker({"state": PENDING}, "1.2.0", 0, 60)
    with pytest.raises(RolloutError, match="soak_s: -1 is not"):
        DeviceTracker({"state": PENDING}, "1.2.0", 30, -1)
    with pytest.raises(RolloutError, match="version: '' is not"):
        DeviceTracker({"state": PENDING}, "", 30, 60)
    with pytest.raises(RolloutError, match="'state': 'done'"):
        DeviceTracker({"state": "done"}, "1.2.0", 30, 60)


# --- resume ---------------------------------------------------------------------------

def test_resumed_on_the_new_version_soaks_again():
    t = commanded()
    t.on_ota(report("downloading"), 101)
    assert t.resumed(online(), 500) is True
    assert (t.state, t.record["soak_from"], t.record["command_id"], t.record["commanded_at"]) == (
        CONFIRMED, 500, CID, 100.0)
    assert t.tick(559) is False and t.tick(560) is True and t.state == SUCCEEDED


def test_resumed_while_soaking_restarts_the_soak():
    t = soaking(120)
    assert t.resumed(online(), 150) is True
    assert (t.state, t.record["soak_from"]) == (CONFIRMED, 150)
    assert t.tick(180) is False and t.tick(210) is True


def test_resumed_without_status_waits_for_the_grace_then_times_out():
    t = commanded()
    t.on_ota(report("verifying"), 103)
    assert t.resumed(None, 500) is True
    assert t.state == COMMANDED and t.deadline() == 510
    assert t.tick(509.9) is False and t.state == COMMANDED
    assert t.tick(510) is True
    assert (t.state, t.record["detail"]) == (TIMED_OUT, "no final report within 30 s (last: verifying)")


def test_resumed_grace_is_at_most_the_timeout_and_never_shortens_it():
    short = commanded(timeout_s=4)
    short.resumed(None, 500)
    assert short.deadline() == 504
    early = commanded()
    early.resumed(OFFLINE_STATUS, 105)
    assert early.deadline() == 130  # commanded_at + timeout_s is later than now + 10


def test_resumed_on_the_old_version_still_takes_late_reports():
    t = commanded()
    t.resumed(online("1.1.0"), 500)
    assert t.state == COMMANDED and t.deadline() == 510
    t.on_ota(report("confirmed"), 505)
    t.on_status(online(), 506)
    assert (t.state, t.record["soak_from"]) == (CONFIRMED, 506)


@pytest.mark.parametrize("status, state, detail", [
    (OFFLINE_STATUS, FAILED, "went offline during the soak"),
    ({"online": True, "fw": "1.1.0"}, ROLLED_BACK, "came back on 1.1.0"),
])
def test_resumed_soak_failures(status, state, detail):
    t = soaking()
    assert t.resumed(status, 500) is True
    assert (t.state, t.record["detail"]) == (state, detail)


def test_resumed_soaking_without_status_waits_for_one():
    t = soaking(120)
    assert t.resumed(None, 500) is True
    assert t.state == COMMANDED and t.deadline() == 510 and t.record["confirmed_at"] == 120
    t.on_status(online(), 503)
    assert (t.state, t.record["soak_from"]) == (CONFIRMED, 503)


@pytest.mark.parametrize("state", [PENDING, OFFLINE, SKIPPED, SUCCEEDED, FAILED])
def test_resumed_leaves_other_states_alone(state):
    t = tracker(state)
    before = dict(t.record)
    assert t.resumed(online(), 500) is False
    assert t.record == before


# --- the state file -------------------------------------------------------------------

class Planner(object):
    def __init__(self, plan):
        self.plan = plan
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.plan


def never():
    raise AssertionError("a resumed rollout is not planned again")


def new_state(tmp_path, plan=None, now=1000.0):
    path = rollout.state_path(str(tmp_path / "rollouts"), "r1", SHA)
    planner = Planner(plan or rollout.plan_waves(DEVICES[:10], "r1", canary=1, waves=[3]))
    return RolloutState.open(path, "r1", IMAGE, planner, now), planner


def test_a_new_rollout_is_planned_and_written_only_on_save(tmp_path):
    state, planner = new_state(tmp_path)
    assert planner.calls == 1 and state.resumed is False
    assert sizes(state.waves) == [1, 3, 3, 3]
    assert state.devices[state.waves[2][1]] == {"state": PENDING, "wave": 2}
    assert (state.aborted, state.finished, state.record["created"]) == (None, False, 1000.0)
    assert not os.path.exists(state.path) and not (tmp_path / "rollouts").exists()
    state.save()
    assert os.path.exists(state.path)
    assert stat.S_IMODE(os.stat(state.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(state.path)).st_mode) == 0o700
    text = open(state.path).read()
    data = json.loads(text)
    assert data["format"] == 1 and data["rollout_id"] == "r1" and data["image"] == IMAGE
    assert text == json.dumps(data, sort_keys=True, indent=1) + "\n"


def test_save_and_resume_round_trip_keeps_the_plan(tmp_path):
    state, _ = new_state(tmp_path)
    first = state.waves[0][0]
    t = state.tracker(first, 30, 60)
    t.commanded(1001.0, state.command_id())
    t.on_ota(report("downloading"), 1002.0)
    state.add_skipped(["psu-99999999"])
    state.abort(1, "3 of 10 executed devices failed (30.0% > 20%)", 1003.0)
    state.save()
    again = RolloutState.open(state.path, "r1", IMAGE, never, 5000.0)
    assert again.resumed is True
    assert again.record == state.record
    assert again.waves == state.waves and again.record["created"] == 1000.0
    assert again.devices[first]["state"] == COMMANDED and again.devices[first]["progress"] == "downloading"
    assert again.aborted == {"wave": 1, "reason": "3 of 10 executed devices failed (30.0% > 20%)", "at": 1003.0}
    # a resumed rollout keeps its plan, whatever the devices are now
    assert RolloutState.open(state.path, "r1", IMAGE, never, 5000.0).waves == state.waves


def test_a_killed_rollout_never_commands_twice(tmp_path):
    """Write-ahead: COMMANDED is saved before the command goes out, so a run
    killed after the save resumes with the device already commanded."""
    state, _ = new_state(tmp_path)
    canary = state.waves[0][0]
    state.tracker(canary, 30, 60).commanded(1001.0, state.command_id())
    state.save()
    del state  # killed here, before or after the publish
    path = rollout.state_path(str(tmp_path / "rollouts"), "r1", SHA)
    resumed = RolloutState.open(path, "r1", IMAGE, never, 2000.0)
    t = resumed.tracker(canary, 30, 60)
    with pytest.raises(RolloutError, match="never commanded twice"):
        t.commanded(2000.0, resumed.command_id())
    t.resumed(None, 2000.0)
    assert t.tick(2010.0) is True and t.state == TIMED_OUT
    assert sorted(d for d, e in resumed.devices.items() if e["state"] == PENDING) == sorted(
        d for w in resumed.waves[1:] for d in w)


@pytest.mark.parametrize("rid, sha, named", [
    ("r1", OTHER_SHA, [SHA, OTHER_SHA]),
    ("r2", SHA, ["'r1'", "'r2'"]),
])
def test_resume_of_another_rollout_or_image_is_refused(tmp_path, rid, sha, named):
    state, _ = new_state(tmp_path)
    state.save()
    with pytest.raises(RolloutError) as err:
        RolloutState.open(state.path, rid, dict(IMAGE, sha256=sha), never, 2000.0)
    for value in named + [state.path]:
        assert value in str(err.value)


def test_a_broken_state_file_is_refused(tmp_path):
    path = tmp_path / "r1.json"
    path.write_text("{not json")
    with pytest.raises(RolloutError, match="r1.json is not a rollout state file"):
        RolloutState.open(str(path), "r1", IMAGE, never, 1.0)
    path.write_text('{"format": 2}')
    with pytest.raises(RolloutError, match="r1.json is not a rollout state file of format 1"):
        RolloutState.open(str(path), "r1", IMAGE, never, 1.0)


def test_atomic_save_leaves_no_temporary_files(tmp_path, monkeypatch):
    state, _ = new_state(tmp_path)
    state.save()
    state.finish(2000.0)
    state.save()
    directory = os.path.dirname(state.path)
    assert os.listdir(directory) == [os.path.basename(state.path)]
    before = open(state.path).read()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(rollout.os, "replace", broken_replace)
    state.abort(3, "late", 3000.0)
    with pytest.raises(OSError, match="disk full"):
        state.save()
    assert os.listdir(directory) == [os.path.basename(state.path)]
    assert open(state.path).read() == before  # the old state, whole


def test_save_syncs_the_file_and_the_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(rollout.os, "fsync", fsync)
    state, _ = new_state(tmp_path)
    state.save()
    assert synced == [False, True]


def test_skipped_summaries_abort_and_finish(tmp_path):
    state, _ = new_state(tmp_path)
    w1 = state.waves[1]
    state.tracker(state.waves[0][0], 30, 60).commanded(1001.0, state.command_id())
    state.tracker(w1[0], 30, 60).offline(1001.0)
    assert state.add_skipped(["psu-99999999", w1[0], w1[1], state.waves[0][0]]) == ["psu-99999999", w1[0], w1[1]]
    assert state.devices["psu-99999999"] == {"state": SKIPPED, "wave": None}
    assert state.devices[w1[1]] == {"state": SKIPPED, "wave": 1}
    assert state.devices[state.waves[0][0]]["state"] == COMMANDED  # commanded: not touched
    assert state.wave_summary(0)[COMMANDED] == 1
    w1_counts = state.wave_summary(1)
    assert (w1_counts[SKIPPED], w1_counts[PENDING], sum(w1_counts.values())) == (2, 1, 3)
    total = state.summary()
    assert (total[SKIPPED], total[PENDING], total[COMMANDED], sum(total.values())) == (3, 7, 1, 11)
    with pytest.raises(RolloutError, match="wave: 4 is not a wave of rollout r1 .it has 4."):
        state.wave_summary(4)
    state.tracker(state.waves[2][0], 30, 60).commanded(1001.0, state.command_id())
    state.tracker(state.waves[2][0], 30, 60).on_ota(report("failed", "x"), 1002.0)
    done = state.tracker(state.waves[0][0], 30, 0)
    done.on_status(online(), 1003.0)
    done.on_ota(report("confirmed"), 1003.0)
    done.tick(1003.0)
    assert state.executed() == (1, 1)
    state.abort(2, "first", 1004.0)
    state.abort(3, "second", 1005.0)
    assert state.aborted == {"wave": 2, "reason": "first", "at": 1004.0}
    state.finish(1006.0)
    assert state.finished is True and state.record["finished_at"] == 1006.0


def test_bad_images_and_plans(tmp_path):
    path = str(tmp_path / "r1.json")
    with pytest.raises(RolloutError, match="image app 1.2.0: ota size must be a positive integer, got 0"):
        RolloutState.open(path, "r1", dict(IMAGE, size=0), never, 1.0)
    with pytest.raises(RolloutError, match="image app 1.2.0: sha256: 'abc'"):
        RolloutState.open(path, "r1", dict(IMAGE, sha256="abc"), never, 1.0)
    with pytest.raises(RolloutError, match="plan: device 'a' is in waves 0 and 1"):
        RolloutState.open(path, "r1", IMAGE, lambda: [["a"], ["b", "a"]], 1.0)
    state = RolloutState.open(path, "r1", IMAGE, lambda: [["a"]], 1.0)
    with pytest.raises(RolloutError, match="device 'b' is not in rollout r1"):
        state.tracker("b", 30, 60)


@pytest.mark.parametrize("change, fragment", [
    ({"signature": None}, "image app 1.2.0 has no signature: the site signing key's signature"),
    ({"security_version": None}, "image app 1.2.0 has no security_version"),
    ({"signature": "AB" * 64}, "image app 1.2.0: signature must be 128 lower-case hex digits"),
    ({"signature": "ab" * 32}, "image app 1.2.0: signature must be 128 lower-case hex digits"),
    ({"security_version": -1}, "image app 1.2.0: security_version must be an integer 0..2147483647"),
    ({"security_version": "1"}, "image app 1.2.0: security_version must be an integer"),
    ({"url": "https://ctl:8443/app/1.2.0/app-1.2.0.bin"}, "image app 1.2.0: ota url must be http://"),
    ({"version": "1.2 beta"}, "image app 1.2 beta: ota version must be"),
], ids=["unsigned", "no-security-version", "upper-case", "short", "negative", "string", "https", "version"])
def test_images_are_checked_up_front_naming_the_image(tmp_path, change, fragment):
    image = dict(IMAGE, **change)
    if change.get("signature", 1) is None or change.get("security_version", 1) is None:
        image = {k: v for k, v in image.items() if v is not None}
    with pytest.raises(RolloutError) as err:
        rollout.check_image(image, "r1")
    assert fragment in str(err.value)
    with pytest.raises(RolloutError):
        RolloutState.open(str(tmp_path / "r1.json"), "r1", image, never, 1.0)
    assert not (tmp_path / "r1.json").exists()


def test_a_checked_image_is_a_signed_ota_command():
    image = rollout.check_image(dict(IMAGE, sha256=SHA.upper()), "r1")
    assert image["sha256"] == SHA
    cmd = contract.ota_command(rollout.command_id("r1", SHA), image["payload"], image["version"], image["url"],
                               image["size"], image["sha256"], image["security_version"], image["signature"])
    assert contract.ota_signed_fields(cmd) == (0, IMAGE["signature"])
    assert otasign.verify_entry(KEY.public, "app", "1.2.0", 1024, SHA, 0, cmd["signature"])


def test_a_resume_with_another_security_version_is_refused(tmp_path):
    """The devices of earlier waves were commanded with one security_version:
    a later wave must not get another for the same image."""
    state, _ = new_state(tmp_path)
    state.save()
    raised = KEY.sign(dict(IMAGE), security_version=2)
    with pytest.raises(RolloutError) as err:
        RolloutState.open(state.path, "r1", raised, never, 2000.0)
    assert "security_version 0, not 2" in str(err.value) and "new rollout_id" in str(err.value)
    # re-signed with the same fields (say by a new key after a rotation): the same rollout resumes
    other = testkeys.new_key().sign(dict(IMAGE))
    assert RolloutState.open(state.path, "r1", other, never, 2000.0).resumed

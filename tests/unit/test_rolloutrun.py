"""The rollout executor (plugins/module_utils/rolloutrun.py) against a fake
session and fake clocks: the protocol without ansible-playbook, a broker or
time passing. The fake (FakeFleet) is a mock of what cannot be cheap here:
a broker with a fleet whose timing each test scripts (a restart at a given
second, a device that hangs or crash-loops); the same executor runs on the
real MQTT session in tests/integration/test_ota_rollout.py."""

import json

import pytest

import rolloutrun
import testkeys

# the modules the executor uses (the collection's, when it imports them so)
contract, fleetmqtt, rollout = rolloutrun.contract, rolloutrun.fleetmqtt, rolloutrun.rollout
Message = fleetmqtt.Message

OLD, NEW = "1.0.0", "2.0.0"
DEVICES = ["psu-%08d" % i for i in range(1, 9)]


class FakeClock(rolloutrun.Clock):
    def __init__(self):
        self.t = 1000.0
        self.wall_offset = 1.7e9

    def mono(self):
        return self.t

    def wall(self):
        return self.t + self.wall_offset


class FakeFleet(object):
    """A broker and its devices on a fake clock. Each device: online on OLD,
    telemetry every *interval* s; a command makes it report downloading
    after 1 s, reboot onto NEW after 4 s (live status, uptime 0) and report
    confirmed after 5 s. Behaviours: "deaf" (ignores commands), "hang" (on
    NEW: silent after 3 s, its will 90 s later), "crashloop" (on NEW: resets
    every 8 s, reconnecting before its keepalive ends: no will)."""

    def __init__(self, clock, devices=DEVICES, interval=5.0, behaviour=None):
        self.clock = clock
        self.inbox = []
        self.actions = []  # (time, seq, fn)
        self.n = 0
        self.connected = True
        self.broker_up = True
        self.told_lost = True
        self.cmds = []  # (time, device, cmd)
        self.restarts = []
        self.behaviour = behaviour or {}
        self.dev = {}
        for d in devices:
            self.dev[d] = dict(fw=OLD, online=True, boot=clock.t - 500, interval=interval, seq=0,
                               next_tel=clock.t + 1, gen=0, silent=False)
        self.retained = dict((d, self.status(d, True)) for d in devices)

    # --- the fleet ---------------------------------------------------------------
    def status(self, d, online):
        dev = self.dev[d]
        return {"online": online, "fw": dev["fw"], "publish_interval_s": dev["interval"],
                "uptime_s": round(self.clock.t - dev["boot"], 3)}

    def at(self, delay, fn, device=None):
        gen = self.dev[device]["gen"] if device else None

        def guarded():
            if device is None or self.dev[device]["gen"] == gen:
                fn()
        self.n += 1
        self.actions.append((self.clock.t + delay, self.n, guarded))

    def deliver(self, d, channel, payload, retain=False):
        if self.connected:
            self.inbox.append(Message(d, channel, json.dumps(payload).encode(), retain))

    def set_status(self, d, online):
        self.dev[d]["online"] = online
        self.retained[d] = self.status(d, online)
        self.deliver(d, "status", self.retained[d])

    def report(self, d, cmd_id, state):
        if self.broker_up and self.dev[d]["online"]:
            self.deliver(d, "ota", contract.ota_report(cmd_id, state, NEW, None))

    def reboot_onto(self, d, fw):
        dev = self.dev[d]
        dev.update(fw=fw, boot=self.clock.t, seq=0, next_tel=self.clock.t + dev["interval"])
        self.set_status(d, True)
        b = self.behaviour.get(d)
        if fw == NEW and b == "hang":
            self.at(3, lambda: dev.update(silent=True), d)
            self.at(93, lambda: self.set_status(d, False), d)  # the will, 1.5 x keepalive 60 s later
        if fw == NEW and b == "crashloop":
            self.at(8, lambda: self.reboot_onto(d, NEW), d)

    def take_command(self, d, cmd):
        if self.behaviour.get(d) == "deaf" or not self.dev[d]["online"]:
            return
        b = self.behaviour.get(d) or ""
        if b.startswith("refuse:"):  # refuse:<reason>:<how many commands>
            _, reason, times = b.split(":")
            refused = sum(1 for _, dd, _ in self.cmds if dd == d)
            if refused <= int(times):
                self.at(1, lambda: self.deliver(d, "cmd/ack", contract.cmd_ack(
                    cmd["id"], "ota", "rejected", "refused for the test", reason or None)), d)
                return
        cid = cmd["id"]
        self.at(1, lambda: self.report(d, cid, "downloading"), d)
        self.at(4, lambda: self.reboot_onto(d, NEW), d)
        self.at(5, lambda: self.report(d, cid, "confirmed"), d)

    def restart_broker(self, down_s, jitter=(0.5, 3.0)):
        """The broker publishes every will, closes every session, is away
        *down_s* s; each device is back after a jitter. A device in the
        middle of its download loses it and comes back on OLD, no report."""
        self.restarts.append(self.clock.t)
        for d, dev in self.dev.items():
            if dev["online"]:
                self.set_status(d, False)
            dev["gen"] += 1  # its scheduled steps (download, report) die with the session
        self.broker_up = False
        self.connected = False
        self.told_lost = False
        back = self.clock.t + down_s
        for i, d in enumerate(sorted(self.dev)):
            delay = down_s + jitter[0] + (jitter[1] - jitter[0]) * ((i * 7919) % 100) / 100.0
            self.at(delay, lambda d=d: self.device_back(d))
        self.up_at = back

    def device_back(self, d):
        dev = self.dev[d]
        dev["next_tel"] = self.clock.t + dev["interval"]
        self.set_status(d, True)
        if self.behaviour.get(d) == "hang" and dev["fw"] == NEW:
            dev["silent"] = True

    def step(self):
        now = self.clock.t
        if not self.broker_up and now >= self.up_at:
            self.broker_up = True
        due = sorted(a for a in self.actions if a[0] <= now)
        self.actions = [a for a in self.actions if a[0] > now]
        for _, _, fn in due:
            if self.broker_up or fn.__name__ != "guarded":
                fn()
        for d, dev in self.dev.items():
            if self.broker_up and dev["online"] and not dev["silent"] and now >= dev["next_tel"]:
                dev["seq"] += 1
                dev["next_tel"] += dev["interval"]
                self.deliver(d, "state", {"seq": dev["seq"], "status": {"uptime_seconds": round(now - dev["boot"])}})

    # --- the session interface -------------------------------------------------
    def subscribe(self, channels, timeout=10.0):
        for d, st in sorted(self.retained.items()):
            self.deliver(d, "status", st, retain=True)

    def events(self, timeout=0.0):
        self.clock.t += timeout
        self.step()
        out, self.inbox = self.inbox, []
        if not out and not self.connected and not self.told_lost:
            self.told_lost = True
            raise fleetmqtt.SessionLost("fake broker restart")
        return out

    def publish(self, device_id, channel, payload):
        assert self.connected, "published while the session was down"
        cmd = json.loads(payload)
        self.cmds.append((self.clock.t, device_id, cmd))
        self.take_command(device_id, cmd)

    def flush(self, timeout=30.0):
        if not self.connected:
            raise fleetmqtt.SessionLost("fake")

    def reconnect(self, timeout=10.0):
        if not self.broker_up and self.clock.t + timeout < self.up_at:
            self.clock.t += max(timeout, 0.1)  # time passes, whatever timeout the caller gives
            self.step()
            raise fleetmqtt.SessionLost("fake broker still down")
        self.clock.t = max(self.clock.t, getattr(self, "up_at", self.clock.t))
        self.step()
        self.connected = True
        self.subscribe(None)


KEY = testkeys.new_key()


def image():
    return KEY.sign({"version": NEW, "payload": "app", "url": "http://ota.example/app.bundle", "size": 1000,
                     "sha256": "ab" * 32}, 1)


class Recorder(rolloutrun.Output):
    def __init__(self):
        self.lines, self.warnings = [], []

    def say(self, text, color=None):
        self.lines.append(text)

    def warn(self, text):
        self.warnings.append(text)


class Hooks(object):
    """Calls fn(fleet, clock) once when the fake clock passes *at*."""

    def __init__(self, fleet, script):
        self.fleet, self.script = fleet, sorted(script, key=lambda x: x[0])
        original = fleet.step

        def step():
            while self.script and fleet.clock.t >= self.script[0][0]:
                _, fn = self.script.pop(0)
                fn(fleet, fleet.clock)
            original()
        fleet.step = step


def run(tmp_path, fleet, clock, selection=DEVICES, rid="r1", waves=("50%",), canary=1, stop=None, **opts):
    options = dict(rollout_id=rid, device_timeout=60.0, soak=30.0, connect_timeout=5.0, canary=canary,
                   max_attempts=3, recommand_after=10.0, outage_grace=30.0, outage_max=120.0)
    options.update(opts)
    out = Recorder()
    r = rolloutrun.RolloutRun(fleet, options, selection, rollout.check_image(image(), rid), list(waves),
                              rollout.AbortPolicy(10, 1), str(tmp_path / (rid + ".json")), output=out, clock=clock,
                              should_stop=stop)
    try:
        r.run()
    finally:
        r.close()
    return r, r.report({}), out


def per_device(fleet):
    counts = {}
    for _, d, _ in fleet.cmds:
        counts[d] = counts.get(d, 0) + 1
    return counts


def test_a_plain_rollout_succeeds_with_one_command_each(tmp_path):
    clock = FakeClock()
    fleet = FakeFleet(clock)
    r, res, out = run(tmp_path, fleet, clock)
    assert res["summary"] == {"succeeded": 8}, res["devices"]
    assert per_device(fleet) == dict((d, 1) for d in DEVICES)
    assert res["outages"] == [] and res["left_out"] == []


@pytest.mark.parametrize("offset", [10.0, 20.0, 30.0])  # in the soak of the canary (it confirms at +5 s)
def test_a_broker_restart_during_the_soak_is_not_a_failure(tmp_path, offset):
    clock = FakeClock()
    fleet = FakeFleet(clock)
    Hooks(fleet, [(clock.t + offset, lambda f, c: f.restart_broker(6.0))])
    r, res, out = run(tmp_path, fleet, clock)
    assert len(fleet.restarts) == 1
    assert res["summary"] == {"succeeded": 8}, res["devices"]
    assert res["aborted"] is None
    assert len(res["outages"]) == 1 and res["outages"][0]["wave"] == 1
    assert per_device(fleet) == dict((d, 1) for d in DEVICES)


def test_a_broker_restart_during_downloads_commands_them_again_with_new_ids(tmp_path):
    """Wave 2's devices lose their download with their session and come back
    on the old version without a report: each is commanded again (a new id),
    once, and succeeds; every attempt is in the result."""
    clock = FakeClock()
    fleet = FakeFleet(clock)
    r0 = rollout.plan_waves(DEVICES, "r1", 1, ["50%"])
    # the canary is commanded at once and succeeds after its 30 s soak; wave 2 at about +35 s
    first = {}

    def restart_in_wave_2(f, c):
        assert any(d in r0[1] for _, d, _ in f.cmds), "wave 2 not commanded yet"
        first["t"] = c.t
        f.restart_broker(5.0)

    Hooks(fleet, [(clock.t + 36.5, restart_in_wave_2)])  # downloading, before the reboot
    r, res, out = run(tmp_path, fleet, clock)
    assert res["summary"] == {"succeeded": 8}, res["devices"]
    counts = per_device(fleet)
    assert all(counts[d] == 2 for d in r0[1]), counts
    assert max(counts.values()) <= 3
    for d in r0[1]:
        attempts = res["devices"][d]["attempts"]
        assert [a["id"] for a in attempts] == ["r1-abababab", "r1-abababab.2"]
        assert attempts[1]["why"].startswith("back online on 1.0.0")
    ids = [cmd["id"] for _, d, cmd in fleet.cmds if d == r0[1][0]]
    assert len(set(ids)) == len(ids)


def test_a_device_on_the_new_version_whose_confirmed_report_was_lost_is_soaked(tmp_path):
    """The restart comes between wave 2's reboot onto the new version and
    its confirmed report: they are online on it, with no report; after
    recommand_after their soak starts (no second command)."""
    clock = FakeClock()
    fleet = FakeFleet(clock)
    Hooks(fleet, [(clock.t + 38.5, lambda f, c: f.restart_broker(5.0))])
    r, res, out = run(tmp_path, fleet, clock)
    assert res["summary"] == {"succeeded": 8}, res["devices"]
    assert per_device(fleet) == dict((d, 1) for d in DEVICES)
    wave2 = rollout.plan_waves(DEVICES, "r1", 1, ["50%"])[1]
    assert all(res["devices"][d]["progress"] == "online on 2.0.0, no confirmed report" for d in wave2)


def test_attempts_per_device_are_bounded(tmp_path):
    """A device that never takes the command and keeps coming back on the old
    version is commanded max_attempts times, then times out."""
    clock = FakeClock()
    deaf = rollout.plan_waves(DEVICES, "r1", 1, ["50%"])[0][0]
    fleet = FakeFleet(clock, behaviour={deaf: "deaf"})
    # a reconnect of the deaf device every 12 s: back online on the old version
    Hooks(fleet, [(clock.t + k, lambda f, c: f.set_status(deaf, True)) for k in range(2, 200, 12)])
    r, res, out = run(tmp_path, fleet, clock, max_attempts=3, device_timeout=100.0)
    assert per_device(fleet)[deaf] == 3
    assert res["devices"][deaf]["state"] == "timed_out"
    assert "(3 attempts)" in res["devices"][deaf]["detail"]
    assert len(res["devices"][deaf]["attempts"]) == 3


def test_a_resume_never_commands_outside_the_selection(tmp_path):
    clock = FakeClock()
    fleet = FakeFleet(clock)
    plan = rollout.plan_waves(DEVICES, "r1", 1, ["50%"])
    # the first run stops (its ansible-playbook is gone) once the canary is commanded
    with pytest.raises(rollout.RolloutError, match="is gone"):
        run(tmp_path, fleet, clock, stop=lambda: bool(fleet.cmds))
    assert [d for _, d, _ in fleet.cmds] == plan[0]
    selection = sorted(plan[0] + plan[1][:2])  # --limit: the canary and two of wave 2
    fleet.cmds = []
    r, res, out = run(tmp_path, fleet, clock, selection=selection)
    commanded = set(d for _, d, _ in fleet.cmds)
    assert commanded == set(plan[1][:2]), commanded
    outside = sorted(set(DEVICES) - set(selection))
    assert res["left_out"] == outside
    assert all(res["devices"][d]["state"] == "pending" for d in outside)
    assert any("outside this run's selection" in w and outside[0] in w for w in out.warnings)
    assert "run again with them selected" in res["msg"]
    # the rerun with every device finishes them
    fleet.cmds = []
    r, res, out = run(tmp_path, fleet, clock)
    assert set(d for _, d, _ in fleet.cmds) == set(outside)
    assert res["summary"] == {"succeeded": 8} and res["left_out"] == []


def test_a_device_that_hangs_fails_inside_the_soak(tmp_path):
    """Silent on the new version: failed after 2 x 5 s + 5 s of silence, long
    before its will (93 s after the hang) and within the 60 s soak."""
    clock = FakeClock()
    canary = rollout.plan_waves(DEVICES, "r1", 1, ["50%"])[0][0]
    fleet = FakeFleet(clock, behaviour={canary: "hang"})
    start = clock.t
    r, res, out = run(tmp_path, fleet, clock, soak=60.0)
    rec = res["devices"][canary]
    assert rec["state"] == "failed" and "silent" in rec["detail"] and "hung" in rec["detail"], rec
    ended = r.state.devices[canary]["ended_at"] - clock.wall_offset - start
    assert ended < 4 + 3 + 15 + rolloutrun.HOLD_S + 2, ended  # reboot + hang + silence limit + hold
    assert res["aborted"] is not None  # 1 of 1 executed failed


def test_a_device_that_crash_loops_fails_inside_the_soak(tmp_path):
    clock = FakeClock()
    canary = rollout.plan_waves(DEVICES, "r1", 1, ["50%"])[0][0]
    fleet = FakeFleet(clock, interval=2.0, behaviour={canary: "crashloop"})
    start = clock.t
    r, res, out = run(tmp_path, fleet, clock, soak=60.0)
    rec = res["devices"][canary]
    assert rec["state"] == "failed" and "reset during the soak" in rec["detail"], rec
    ended = r.state.devices[canary]["ended_at"] - clock.wall_offset - start
    assert ended < 4 + 8 + rolloutrun.HOLD_S + 3, ended


@pytest.mark.parametrize("step", [3600.0, -3600.0, 86400.0])
def test_a_wall_clock_step_mid_wave_times_nothing_out(tmp_path, step):
    clock = FakeClock()
    fleet = FakeFleet(clock)
    plan = rollout.plan_waves(DEVICES, "r1", 1, ["50%"])

    def ntp_step(f, c):
        assert any(d in plan[1] for _, d, _ in f.cmds)
        c.wall_offset += step

    Hooks(fleet, [(clock.t + 37.0, ntp_step)])
    r, res, out = run(tmp_path, fleet, clock, device_timeout=20.0)
    assert res["summary"] == {"succeeded": 8}, res["devices"]
    # the state file has wall-clock times for people, after the step
    assert r.state.devices[plan[2][0]]["commanded_at"] > 1.7e9 + step


def test_a_soak_too_short_to_see_a_silent_device_is_warned(tmp_path):
    clock = FakeClock()
    fleet = FakeFleet(clock, interval=20.0)
    r, res, out = run(tmp_path, fleet, clock, soak=30.0)
    assert any("soak 30 s is shorter than" in w and "45 s" in w for w in out.warnings), out.warnings
    clock = FakeClock()
    fleet = FakeFleet(clock, interval=5.0)
    r, res, out = run(tmp_path, fleet, clock, soak=30.0, rid="r2")
    assert not any("soak" in w for w in out.warnings)


def test_the_broker_not_back_within_outage_max_stops_leaving_a_resumable_state(tmp_path):
    clock = FakeClock()
    fleet = FakeFleet(clock)
    Hooks(fleet, [(clock.t + 10.0, lambda f, c: f.restart_broker(500.0))])
    with pytest.raises(rollout.RolloutError, match="not back within 60 s"):
        run(tmp_path, fleet, clock, outage_max=60.0)
    clock.t = fleet.up_at + 5  # the broker is back
    state = json.load(open(str(tmp_path / "r1.json")))
    assert state["aborted"] is None and not state["finished"]
    r, res, out = run(tmp_path, fleet, clock)
    assert res["resumed"] is True and res["summary"] == {"succeeded": 8}, res["devices"]


def test_a_resumed_rollout_commands_again_a_device_back_on_the_old_version(tmp_path):
    """The run dies while wave 2 downloads; the devices lose the download
    and are back on the old version with no report. The resumed run waits
    out their timeout (they might still be downloading), then commands each
    once more with a new id; all succeed."""
    clock = FakeClock()
    fleet = FakeFleet(clock)
    plan = rollout.plan_waves(DEVICES, "r1", 1, ["50%"])
    with pytest.raises(rollout.RolloutError, match="is gone"):
        run(tmp_path, fleet, clock, stop=lambda: any(d in plan[1] for _, d, _ in fleet.cmds))
    for d in plan[1]:
        fleet.dev[d]["gen"] += 1  # the download dies
        fleet.set_status(d, True)  # back, on the old version
    clock.t += 20
    resumed_at = clock.t
    r, res, out = run(tmp_path, fleet, clock)
    assert res["resumed"] is True and res["summary"] == {"succeeded": 8}, res["devices"]
    for d in plan[1]:
        ids = [a["id"] for a in res["devices"][d]["attempts"]]
        assert ids == ["r1-abababab", "r1-abababab.2"], ids
        again = [t for t, dev, cmd in fleet.cmds if dev == d][-1]
        assert again >= resumed_at + 60 - 20 - 1  # not before its first command's timeout was over
    assert max(per_device(fleet).values()) <= 2


def test_every_ota_command_carries_an_expiry_of_the_device_timeout(tmp_path):
    """The expiry covers a device that is away (its command waits queued
    in its persistent session) for as long as the rollout would wait for
    it anyway, and no longer."""
    clock = FakeClock()
    fleet = FakeFleet(clock)
    r, res, out = run(tmp_path, fleet, clock, device_timeout=60.0)
    assert res["summary"] == {"succeeded": 8}
    for t, _, cmd in fleet.cmds:
        assert cmd["expires"] == int(t + clock.wall_offset + 60.0) + (0 if (t + clock.wall_offset) % 1 == 0 else 1)
        assert contract.check_command(cmd)[1] == "ota"


@pytest.mark.parametrize("reason", ["inbox_full", "clock_unset", "expired"])
def test_a_refusal_that_passes_is_commanded_again_and_succeeds(tmp_path, reason):
    """A device that refuses its command once on cmd/ack (inbox_full,
    clock_unset, expired: nothing was done) is commanded again with a new id
    after recommand_after, and succeeds."""
    clock = FakeClock()
    canary = rollout.plan_waves(DEVICES, "r1", 1, ["50%"])[0][0]
    fleet = FakeFleet(clock, behaviour={canary: "refuse:%s:1" % reason})
    r, res, out = run(tmp_path, fleet, clock, recommand_after=10.0)
    assert res["summary"] == {"succeeded": 8}, res["devices"][canary]
    attempts = res["devices"][canary]["attempts"]
    assert [a["id"] for a in attempts] == ["r1-abababab", "r1-abababab.2"]
    assert attempts[1]["why"] == "refused %s 10 s ago" % reason
    times = [t for t, d, _ in fleet.cmds if d == canary]
    assert times[1] - times[0] >= 10.0


def test_refusals_past_max_attempts_fail_the_device_with_the_reason(tmp_path):
    clock = FakeClock()
    canary = rollout.plan_waves(DEVICES, "r1", 1, ["50%"])[0][0]
    fleet = FakeFleet(clock, behaviour={canary: "refuse:inbox_full:99"})
    r, res, out = run(tmp_path, fleet, clock, max_attempts=2, recommand_after=5.0)
    assert per_device(fleet)[canary] == 2
    assert res["devices"][canary]["state"] == "failed"
    assert res["devices"][canary]["detail"] == "refused (inbox_full): refused for the test (2 attempts)"


def test_a_refusal_without_a_passing_reason_fails_at_once(tmp_path):
    clock = FakeClock()
    canary = rollout.plan_waves(DEVICES, "r1", 1, ["50%"])[0][0]
    fleet = FakeFleet(clock, behaviour={canary: "refuse::1"})
    r, res, out = run(tmp_path, fleet, clock)
    assert per_device(fleet)[canary] == 1
    assert res["devices"][canary]["state"] == "failed"
    assert res["devices"][canary]["detail"] == "refused: refused for the test"

# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Ansible side: the OTA rollout executor: one run of a rollout over a broker session.
rollout.py holds the pure parts (plan, abort rule, device tracker, state
file); this module drives them with the messages of a session and the
clocks, and knows nothing of Ansible (the action plugin
plugins/action/ota_rollout.py is the glue: arguments, check mode, result).

The session. Anything with these methods (fleetmqtt.FleetSession on a real
broker; a fake in the unit tests)::

    subscribe(channels, timeout)   # retained messages of those channels arrive first
    events(timeout) -> [Message(device_id, channel, payload, retain)]
                                   # raises fleetmqtt.SessionLost once per lost session
    publish(device_id, channel, payload)
    flush(timeout)                 # waits for the PUBACKs; may raise SessionLost
    reconnect(timeout)             # the session back, subscribed again; or SessionLost

The clocks. ``Clock.mono()`` (time.monotonic) takes every decision:
deadlines, soaks, silences, waits. ``Clock.wall()`` (time.time) only stamps
the state file and the result for people. A step of the wall clock (NTP)
changes no decision of a running rollout.

A broker outage is not a device failure. When the broker restarts it
publishes the will of every connected client ("offline"), then closes
every session, the controller's included; the retained statuses the
controller reads when it is back are those wills until each device is
back. The rule: an offline status counts only after it has been held
``HOLD_S`` seconds with the controller's session up all along; one that
arrives in the ``HOLD_S`` before the controller's session is lost, while
it is lost, or in the ``outage_grace`` seconds after it is back is an
outage report: a soaking device is "away", its soak starts again when it
is back online on the new version, and it fails only if it is not back
within ``outage_grace`` seconds. Commanded devices get the outage's length
added to their deadline. The run reconnects for at most ``outage_max``
seconds; then it saves the state and stops (a rerun resumes it).

Commands again. A commanded device that comes back online on the old
version after its command (a reconnect or a reset: the command or the
download died with a session) and sends no report of any of its commands
for ``recommand_after`` seconds is commanded again with a new command id
(``<command id>.<attempt>``), at most ``max_attempts`` commands in all per
device; every attempt is kept in the device's record (``attempts``).
A report of any attempt counts.

The selection. A run commands only devices of the current selection
(``devices``): on a resume, planned devices outside it are neither
commanded nor followed; the run names them (``left_out``).

The soak sees hangs and resets. Besides going offline or coming back on
another version, a soaking device fails when its uptime drops (a live
status or telemetry with a lower uptime than before: it reset) or when it
is silent (no telemetry nor status) for 2 x its ``publish_interval_s``
plus DeviceTracker's slack. The controller reads ``state`` for that.
"""

import errno
import fcntl
import json
import os
import time

try:
    from ansible_collections.edgefleet.site.plugins.module_utils import commands, contract, fleetmqtt, rollout
except ImportError:  # tests import it from plugins/module_utils directly
    import commands
    import contract
    import fleetmqtt
    import rollout

ACTIVE = (rollout.COMMANDED, rollout.CONFIRMED)
HOLD_S = 2.0
LOCK_WAIT_S = 15.0
PROGRESS_EVERY_S = 2.0
SAVE_EVERY_S = 1.0
POLL_S = 0.2
KEEPALIVE_WILL_FACTOR = 1.5  # the broker sends a silent client's will after 1.5 x its keepalive

DEFAULTS = dict(device_timeout=300.0, soak=60.0, connect_timeout=10.0, download_timeout=None, canary=1,
                increment_factor=None, max_attempts=3, recommand_after=30.0, outage_grace=120.0,
                outage_max=300.0)


class Clock(object):
    """The clocks of a run (tests inject their own)."""

    def mono(self):
        return time.monotonic()

    def wall(self):
        return time.time()


class Output(object):
    """Where a run prints progress and warnings (the action plugin's display)."""

    def say(self, text, color=None):
        pass

    def warn(self, text):
        pass


def attempt_id(command_id, attempt):
    """The command id of a device's *attempt* (1: the rollout's command id)."""
    return command_id if attempt <= 1 else "%s.%d" % (command_id, attempt)


class RolloutRun(object):
    def __init__(self, session, opts, devices, image, waves, policy, path, check_mode=False, output=None,
                 clock=None, should_stop=None):
        self.session, self.devices, self.image = session, list(devices), image
        self.opts = dict(DEFAULTS, **dict((k, v) for k, v in opts.items() if v is not None or k not in DEFAULTS))
        self.waves_arg, self.policy, self.path, self.check_mode = waves, policy, path, check_mode
        self.out = output or Output()
        self.clock = clock or Clock()
        self.should_stop = should_stop
        self.rid = self.opts["rollout_id"]
        self.command_id = rollout.command_id(self.rid, image["sha256"])
        self.status = {}
        self.trackers = {}
        self.started = self.clock.mono()
        self.commanded_now = 0
        self.commands_sent = 0
        self.dirty = False
        self.lock_fd = None
        self.held = []  # (arrived mono, Message): status and state messages held HOLD_S
        self.lost_at = None  # mono when the session was last lost
        self.outage_until = None  # mono until which offline reports are outage reports
        self.outages = []  # [{"wave", "lost_at", "back_after_s"}]
        self.wave = None
        self.selection = set(self.devices)
        self.left_out = []
        self.state = None

    # --- plumbing ----------------------------------------------------------------------
    def wall_of(self, mono):
        """The wall-clock time of a monotonic instant (for the state file)."""
        return self.clock.wall() - (self.clock.mono() - mono)

    def lock(self):
        """One run per rollout at a time: an exclusive lock beside the state file."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        self.lock_fd = os.open(self.path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except (IOError, OSError) as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    raise rollout.RolloutError("rollout %s is being run by another process (lock %s.lock held for "
                                               "%g s)" % (self.rid, self.path, LOCK_WAIT_S))
                time.sleep(0.2)

    def close(self):
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def check_stop(self):
        if self.should_stop is not None and self.should_stop():
            self.state.save()
            raise rollout.RolloutError("the ansible-playbook that ran rollout %s is gone: stopped (run it again to "
                                       "resume from %s)" % (self.rid, self.path))

    def tracker(self, device_id):
        t = self.trackers.get(device_id)
        if t is None:
            t = self.trackers[device_id] = rollout.DeviceTracker(
                self.state.devices[device_id], self.image["version"], self.opts["device_timeout"],
                self.opts["soak"], device_id, wall=self.wall_of, recommand_after_s=self.opts["recommand_after"],
                max_attempts=self.opts["max_attempts"])
        return t

    def in_outage(self, now):
        return self.lost_at is not None and (self.outage_until is None or now < self.outage_until)

    # --- messages ----------------------------------------------------------------------
    def poll(self, timeout, by_device):
        """Read the session: ota reports go to their tracker at once; status
        and telemetry are held HOLD_S (a will that comes just before the
        session is lost is an outage report). A lost session: reconnect."""
        try:
            messages = self.session.events(timeout=timeout)
        except fleetmqtt.SessionLost as e:
            self.outage(str(e))
            messages = []
        now = self.clock.mono()
        for m in messages:
            if m.channel in ("ota", "cmd/ack"):
                t = by_device.get(m.device_id)
                if t is not None:
                    if m.channel == "ota":
                        self.dirty |= t.on_ota(fleetmqtt.decode(m.payload), now)
                    else:
                        self.dirty |= t.on_cmd_ack(fleetmqtt.decode(m.payload), now)
            elif m.channel in ("status", "state"):
                self.held.append((now, m))
        self.release(by_device, now)

    def release(self, by_device, now, everything=False):
        while self.held and (everything or now - self.held[0][0] >= HOLD_S):
            arrived, m = self.held.pop(0)
            payload = fleetmqtt.decode(m.payload)
            t = by_device.get(m.device_id)
            if m.channel == "status":
                self.status[m.device_id] = payload
                if t is not None:
                    # from HOLD_S before the session was lost to outage_grace after it is back
                    outage = self.lost_at is not None and arrived >= self.lost_at - HOLD_S and (
                        self.outage_until is None or arrived < self.outage_until)
                    self.dirty |= t.on_status(payload, arrived, live=not m.retain, outage=outage)
            elif t is not None and not m.retain:
                self.dirty |= t.on_telemetry(payload, arrived)

    def outage(self, why):
        """The session is lost: messages held so far that say offline are
        outage reports; reconnect for at most outage_max seconds."""
        lost = self.clock.mono()
        self.lost_at = lost
        self.outage_until = None
        self.out.say("ota_rollout %s: lost the broker session (%s): reconnecting (at most %g s); offline reports "
                     "until %g s after it is back are the outage's, not the devices' failures"
                     % (self.rid, why, self.opts["outage_max"], self.opts["outage_grace"]), color="yellow")
        while True:
            if self.should_stop is not None:
                self.check_stop()
            left = self.opts["outage_max"] - (self.clock.mono() - lost)
            if left <= 0:
                self.state.save()
                raise rollout.RolloutError(
                    "the broker was not back within %g s (outage_max): stopped, nothing is lost; run it again to "
                    "resume from %s" % (self.opts["outage_max"], self.path))
            try:
                self.session.reconnect(timeout=min(left, self.opts["connect_timeout"]))
                break
            except fleetmqtt.SessionLost:
                continue
        back = self.clock.mono()
        self.outage_until = back + self.opts["outage_grace"]
        self.outages.append({"wave": None if self.wave is None else self.wave + 1,
                             "lost_at": self.wall_of(lost), "back_after_s": round(back - lost, 3)})
        for t in self.trackers.values():
            t.pause(back - lost, back)
        self.dirty = True
        self.out.say("ota_rollout %s: the broker session is back after %.1f s" % (self.rid, back - lost))

    # --- the run -----------------------------------------------------------------------
    def run(self):
        opts, version = self.opts, self.image["version"]
        self.session.subscribe(["status", "ota", "cmd/ack", "state"], timeout=opts["connect_timeout"])
        for m in self.session.events():
            if m.channel == "status":
                self.status[m.device_id] = fleetmqtt.decode(m.payload)
        on_version = [d for d in self.devices if (self.status.get(d) or {}).get("fw") == version]
        already = set(on_version)
        to_update = [d for d in self.devices if d not in already]
        if not self.check_mode:
            self.lock()  # before reading the state file: another run may still be writing it
        self.state = rollout.RolloutState.open(
            self.path, self.rid, self.image,
            lambda: rollout.plan_waves(to_update, self.rid, opts["canary"], self.waves_arg,
                                       opts["increment_factor"]), self.clock.wall())
        outside = sorted(set(self.devices) - set(self.state.devices))
        if outside:
            self.out.warn("ota_rollout %s: %d device(s) are not in this rollout's plan (it was planned before "
                          "they were added), e.g. %s; start a new rollout_id for them"
                          % (self.rid, len(outside), ", ".join(outside[:5])))
        self.left_out = sorted(d for d, rec in self.state.devices.items()
                               if d not in self.selection and rec["state"] in (rollout.PENDING, rollout.OFFLINE)
                               + ACTIVE)
        if self.left_out:
            self.out.warn("ota_rollout %s: %d planned device(s) are outside this run's selection (--limit or "
                          "devices) and are left as they are: %s%s; to finish them, run it again with a selection "
                          "that includes them (or none)" % (self.rid, len(self.left_out),
                                                            ", ".join(self.left_out[:10]),
                                                            ", ..." if len(self.left_out) > 10 else ""))
        self.state.add_skipped([d for d in on_version if d in self.state.devices or not self.state.resumed])
        self.check_soak()
        if self.check_mode:
            return
        self.execute()

    def check_soak(self):
        """Warn when the soak is too short to see a silent device."""
        soak = self.opts["soak"]
        intervals = [s.get("publish_interval_s") for d, s in self.status.items()
                     if d in self.selection and isinstance(s, dict)]
        intervals = [i for i in intervals if isinstance(i, (int, float)) and not isinstance(i, bool) and i > 0]
        if intervals:
            need = 2 * max(intervals) + rollout.SILENCE_SLACK_S
            if soak < need:
                self.out.warn("ota_rollout %s: soak %g s is shorter than 2 x the longest telemetry interval (%g s) "
                              "+ %g s = %g s: a device that hangs on the new version may pass its soak (the broker "
                              "sends its will only after 1.5 x its keepalive)"
                              % (self.rid, soak, max(intervals), rollout.SILENCE_SLACK_S, need))

    def execute(self):
        if self.state.resumed:
            resumed = 0
            now = self.clock.mono()
            for device, record in self.state.devices.items():
                if record["state"] in ACTIVE and device in self.selection:
                    self.tracker(device).resumed(self.status.get(device), now)
                    resumed += 1
            self.out.say("ota_rollout %s: resuming from %s (%d device(s) were being updated)"
                         % (self.rid, self.path, resumed))
        self.state.save()
        if self.state.aborted is None:
            for i, wave in enumerate(self.state.waves):
                self.run_wave(i, wave)
                if self.state.aborted is not None:
                    break
        else:
            self.out.say("ota_rollout %s: aborted in an earlier run (wave %d/%d: %s): nothing is commanded"
                         % (self.rid, self.state.aborted["wave"] + 1, len(self.state.waves),
                            self.state.aborted["reason"]))
        if self.state.aborted is None and not any(r["state"] in (rollout.PENDING,) + ACTIVE
                                                  for r in self.state.devices.values()):
            self.state.finish(self.clock.wall())
        self.state.save()

    def command(self, send):
        """Publish the commands of [(device, command id)] (already saved)."""
        while True:
            try:
                for device, cmd_id in send:
                    # it expires when the device would time out anyway: a device away a
                    # while still gets it queued, a stale one refuses it (expired)
                    cmd = json.dumps(commands.with_expiry(contract.ota_command(
                        cmd_id, self.image["payload"], self.image["version"], self.image["url"], self.image["size"],
                        self.image["sha256"], self.image["security_version"], self.image["signature"],
                        self.opts["download_timeout"]), self.clock.wall(), self.opts["device_timeout"]),
                        sort_keys=True)
                    self.session.publish(device, "cmd", cmd)
                self.session.flush(timeout=30)
                break
            except fleetmqtt.SessionLost as e:
                # paho sends unacknowledged QoS 1 messages again on reconnect;
                # one that is lost anyway is re-commanded (recommand_after)
                self.outage(str(e))
                try:
                    self.session.flush(timeout=30)
                    break
                except fleetmqtt.SessionLost:
                    continue
        self.commands_sent += len(send)

    def run_wave(self, i, wave):
        self.wave = i
        now = self.clock.mono()
        send = []
        for device in wave:
            if device not in self.selection:
                continue
            record = self.state.devices[device]
            if record["state"] not in (rollout.PENDING, rollout.OFFLINE):
                continue
            st = self.status.get(device)
            if st and st.get("online") is True:
                self.tracker(device).commanded(now, self.command_id)
                send.append((device, self.command_id))
            else:
                self.tracker(device).offline(now)
        active = [d for d in wave if d in self.selection and self.state.devices[d]["state"] in ACTIVE]
        if not active:
            return
        self.check_stop()
        self.state.save()  # write-ahead: a device marked commanded is commanded again only by recommand
        self.command(send)
        self.commanded_now += len(send)
        self.out.say("ota_rollout %s: wave %d/%d: commanded %d device(s)%s" % (
            self.rid, i + 1, len(self.state.waves), len(send),
            ", following %d from before" % (len(active) - len(send)) if len(active) > len(send) else ""))
        self.follow(i, active)

    def follow(self, i, active):
        trackers = [self.tracker(d) for d in active]
        by_device = dict(zip(active, trackers))
        next_progress = self.clock.mono() + PROGRESS_EVERY_S
        next_save = self.clock.mono() + SAVE_EVERY_S
        while any(t.state in ACTIVE for t in trackers) or self.held:
            self.check_stop()
            self.poll(POLL_S, by_device)
            now = self.clock.mono()
            if not any(t.state in ACTIVE for t in trackers):
                self.release(by_device, now, everything=True)
                break
            again = []
            for d, t in by_device.items():
                self.dirty |= t.tick(now, self.opts["outage_grace"])
                why = t.wants_recommand(now)
                if why:
                    cmd_id = attempt_id(self.command_id, len(t.attempt_ids()) + 1)
                    t.recommand(now, cmd_id, why)
                    again.append((d, cmd_id))
            if again:
                self.state.save()  # write-ahead, as for the first command
                self.command(again)
                self.out.say("ota_rollout %s: wave %d/%d: commanded %d device(s) again (%s)"
                             % (self.rid, i + 1, len(self.state.waves), len(again),
                                ", ".join("%s as %s" % x for x in again[:5])))
            if self.state.aborted is None and self.dirty:
                reason = self.policy.check(*self.state.executed())
                if reason:
                    self.state.abort(i, reason, self.clock.wall())
                    self.state.save()
                    self.out.say("ota_rollout %s: ABORT in wave %d/%d: %s; no further device is commanded, "
                                 "this wave's devices are followed to their end"
                                 % (self.rid, i + 1, len(self.state.waves), reason), color="bright red")
            if self.dirty and self.clock.mono() >= next_save:
                self.state.save()
                self.dirty = False
                next_save = self.clock.mono() + SAVE_EVERY_S
            if self.clock.mono() >= next_progress:
                next_progress += PROGRESS_EVERY_S
                self.out.say(self.progress(i))
        self.state.save()
        self.dirty = False
        self.out.say(self.progress(i))

    def progress(self, i):
        w = self.state.wave_summary(i)
        s = self.state.summary()
        done = sum(s[x] for x in rollout.FINAL)
        return "ota_rollout %s: wave %d/%d (%d devices): %d succeeded, %d failed, %d timed out, %d rolled back, " \
               "%d soaking, %d updating, %d offline; overall %d/%d done (%.1f s)" % (
                   self.rid, i + 1, len(self.state.waves), len(self.state.waves[i]), w["succeeded"],
                   w["failed"], w["timed_out"], w["rolled_back"], w["confirmed"], w["commanded"], w["offline"],
                   done, len(self.state.devices) - s["skipped"], self.clock.mono() - self.started)

    # --- the result --------------------------------------------------------------------
    @staticmethod
    def device_report(rec):
        """A device's entry in the result; waves are numbered from 1 (the canary) for people."""
        out = dict((k, v) for k, v in rec.items() if k in ("state", "detail", "progress"))
        out["wave"] = rec["wave"] + 1 if rec.get("wave") is not None else None
        if rec.get("attempts"):
            out["attempts"] = [dict(a) for a in rec["attempts"]]
        return out

    def report(self, result):
        r, state = result, self.state
        waves = []
        for i, wave in enumerate(state.waves):
            counts = dict((k, v) for k, v in state.wave_summary(i).items() if v)
            waves.append({"wave": i + 1, "size": len(wave), "devices": list(wave), "counts": counts})
        r["waves"] = waves
        r["devices"] = dict((d, self.device_report(rec)) for d, rec in sorted(state.devices.items()))
        r["summary"] = dict((k, v) for k, v in state.summary().items() if v)
        r["aborted"] = None if state.aborted is None else {
            "wave": state.aborted["wave"] + 1, "reason": state.aborted["reason"], "at": state.aborted["at"]}
        r["state_file"] = self.path
        r["resumed"] = state.resumed
        r["left_out"] = list(self.left_out)
        r["outages"] = list(self.outages)
        if self.check_mode:
            r["changed"] = any(rec["state"] in (rollout.PENDING, rollout.OFFLINE) and d in self.selection
                               for d, rec in state.devices.items())
            r["msg"] = "check mode: %d wave(s) over %d device(s) (%s); %d already on %s; nothing was commanded" % (
                len(waves), sum(w["size"] for w in waves), ", ".join(str(w["size"]) for w in waves),
                r["summary"].get("skipped", 0), self.image["version"])
            self.out.say("ota_rollout %s: %s" % (self.rid, r["msg"]))
            return r
        r["changed"] = self.commands_sent > 0
        s = state.summary()
        r["msg"] = "%d succeeded, %d failed, %d timed out, %d rolled back, %d skipped (on %s), %d offline" % (
            s["succeeded"], s["failed"], s["timed_out"], s["rolled_back"], s["skipped"], self.image["version"],
            s["offline"])
        if self.left_out:
            r["msg"] += "; %d planned device(s) outside this run's selection left as they are (run again with " \
                        "them selected to finish)" % len(self.left_out)
        if state.aborted is not None:
            r["failed"] = True
            r["msg"] = "aborted in wave %d/%d: %s (%s)" % (state.aborted["wave"] + 1, len(state.waves),
                                                           state.aborted["reason"], r["msg"])
        return r

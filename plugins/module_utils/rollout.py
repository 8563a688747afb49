# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Ansible side: the controller-side logic of an OTA rollout: the plan of waves, the abort
rule, the state of each device and the resumable state file. Pure: no
Ansible, no MQTT, no threads, no clock (every time is passed in as ``now``,
the caller's monotonic clock; ``DeviceTracker(wall=...)`` turns it into
wall-clock times for the record), so the I/O around it is thin and the tests
never sleep. The executor that drives it is rolloutrun.py.

Waves. ``plan_waves`` orders the devices to update (those not already on the
version) by sha256("<rollout id>/<device id>"): a stable pseudo-random
order, so the canaries are a spread sample and the same inputs always give
the same plan. Wave 0 is the canary wave (``canary`` devices; none with
``canary=0``, then wave 0 is the first of ``waves``). Each entry of
``waves`` is the size of the next wave, a count or "N%" of all the devices
(rounded up); the last entry repeats until every device is placed. With
``increment_factor`` (an exponential rollout, as AWS IoT Jobs do it),
``waves`` holds only the first wave's size and each later wave is
ceil(previous size * factor).

Success. A device succeeds when (1) it reports ``confirmed`` on ``ota`` for
this rollout's command id, (2) its retained ``status`` shows it online on
the new version (either order), and (3) it then stays online on that
version for ``soak_s`` (the soak). Going offline during the soak is a
failure (unless the caller says it is a broker outage: the device is then
away and its soak starts again when it is back, ``tick(now, outage_grace_s)``
fails it if it is not back in time); coming back on another version during
the soak is a roll-back. A reset during the soak (a live status whose
``uptime_s`` is lower than an uptime seen before, or telemetry whose
``status.uptime_seconds`` is lower than the previous one) and a silence
longer than 2 x ``publish_interval_s`` + SILENCE_SLACK_S (``on_telemetry``
and live statuses are what the device is heard by) are failures too.

Commands again. A COMMANDED device seen online on the old version after its
command (``on_status`` with ``live`` or ``outage``) with no report of any of
its commands for ``recommand_after_s`` is ``wants_recommand``; the caller
gives it a new command id with ``recommand`` (at most ``max_attempts``
commands in all; the record's ``attempts`` keeps each). A COMMANDED device
online on the new version with no ``confirmed`` for ``recommand_after_s``
(its report died with a session) starts its soak.

Failure and timeouts. A device fails when it reports ``failed`` or
``rolled_back``, fails the soak, or has not got through (1) and (2) within
``timeout_s`` of being commanded (timed out, the detail names the last
progress report seen). ``AbortPolicy.check(succeeded, failed)`` is asked
with the counts of the whole rollout so far (``RolloutState.executed()``):
once at least ``min_executed`` devices have an outcome, more than
``failure_percent`` percent of them failing (strictly more) aborts the
rollout: no further device is commanded; those already commanded are still
followed to their outcome.

Offline devices. A device that is offline when its wave comes is not
commanded: it is marked OFFLINE and stays eligible, to be commanded on a
later run or resume of the same rollout.

Write-ahead, the caller's protocol. The state file
(``state_path(directory, rollout_id, sha256)``) is what makes a rollout
resumable, and the rule that keeps a killed rollout from ever commanding a
device twice is: mark the devices COMMANDED (``DeviceTracker.commanded``)
and ``RolloutState.save()`` BEFORE publishing their commands. A run killed
between the save and the publish leaves devices COMMANDED that never got the
command: on resume they are commanded again only by the rule above (back on
the old version with no report), with a new command id. One run goes::

    state = RolloutState.open(path, rid, image, lambda: plan_waves(to_update, rid, ...), now)
    state.add_skipped(already_on_version); state.save()
    for each record COMMANDED or CONFIRMED (a resume): tracker.resumed(retained status or None, now)
    for each wave, in order, unless aborted:
        for each PENDING or OFFLINE device of this wave and the earlier ones:
            online -> tracker.commanded(now, command_id(rid, sha256)); else tracker.offline(now)
        state.save(); then publish the commands
        feed tracker.on_ota / on_status with the messages, tracker.tick(now) every second,
        save() when one returns True; abort (state.abort) when AbortPolicy.check(*state.executed())
        says so; the next wave starts when every device commanded in this one is final
    state.finish(now); state.save()

The image. ``check_image`` checks an image dict (version, payload, url,
size, sha256, security_version, signature) the way a device will check its
command, and names the image in its error: a device installs nothing
unsigned, so an image without its signature or security_version is refused
before anything is planned. Whether the signature verifies with the site's
key is the caller's check (otasign.verify_entry, on the controller).

Resume. ``RolloutState.open`` on an existing file keeps its plan (the device
list given now is not planned again), refuses a file of another rollout id,
image sha256 or security_version (the devices commanded before got that
security_version; a later wave must not get another), and the caller calls
``DeviceTracker.resumed`` once for each
device commanded but not final. The ``ota`` reports sent while the
controller was down are lost, the retained ``status`` is not: a device
online on the new version starts a new soak; any other device keeps waiting
for its reports at least min(timeout_s, 10) s more before it times out. A
device that was soaking and is now offline, or online on another version,
failed its soak. A device back online on the old version is commanded
again after ``recommand_after_s`` (see Commands again).
"""

import hashlib
import json
import math
import os
import re
import tempfile
from fractions import Fraction

try:
    from ansible_collections.edgefleet.site.plugins.module_utils import contract
except ImportError:  # tests import it from plugins/module_utils directly
    import contract

PENDING = "pending"
COMMANDED = "commanded"
CONFIRMED = "confirmed"  # the device said confirmed and is online on the version: soaking
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
ROLLED_BACK = "rolled_back"
SKIPPED = "skipped"  # already on the version
OFFLINE = "offline"  # offline when its wave came: not commanded, still eligible
STATES = (PENDING, COMMANDED, CONFIRMED, SUCCEEDED, FAILED, TIMED_OUT, ROLLED_BACK, SKIPPED, OFFLINE)
FINAL = (SUCCEEDED, FAILED, TIMED_OUT, ROLLED_BACK)
FAILURES = (FAILED, TIMED_OUT, ROLLED_BACK)

FORMAT = 1
RESUME_GRACE_S = 10
SILENCE_SLACK_S = 5.0
_ROLLOUT_ID = re.compile(r"^[A-Za-z0-9._-]{1,40}$")
_PERCENT = re.compile(r"^([0-9]+)%$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class RolloutError(ValueError):
    pass


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_rollout_id(rid):
    """1-40 of A-Za-z0-9._- (it names the state file and starts the command id)."""
    if not isinstance(rid, str) or not _ROLLOUT_ID.match(rid):
        raise RolloutError("rollout_id: %r is not 1-40 characters of A-Za-z0-9._-" % (rid,))
    return rid


def _check_sha256(sha256):
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise RolloutError("sha256: %r is not 64 hex digits" % (sha256,))
    return sha256.lower()


def command_id(rollout_id, sha256):
    """The id of the rollout's OTA command: ``<rollout id>-<sha256[:8]>``."""
    cmd_id = "%s-%s" % (check_rollout_id(rollout_id), _check_sha256(sha256)[:8])
    try:
        return contract.check_command_id(cmd_id)
    except contract.ContractError as e:
        raise RolloutError(str(e))


def state_path(directory, rollout_id, sha256):
    """The rollout's state file: ``<directory>/<rollout id>-<sha256[:12]>.json``."""
    return os.path.join(directory, "%s-%s.json" % (check_rollout_id(rollout_id), _check_sha256(sha256)[:12]))


# --- the plan -------------------------------------------------------------------------

def _wave_size(entry, index, total):
    """The size of one entry of ``waves``: a count or "N%" of *total*, rounded up."""
    if _is_int(entry) and entry > 0:
        return entry
    if isinstance(entry, str):
        m = _PERCENT.match(entry)
        if m and 1 <= int(m.group(1)) <= 100:
            return -(-total * int(m.group(1)) // 100)  # rounded up: at least 1 of 1 device or more
    raise RolloutError("waves[%d]: %r is not a count or a percentage 1%%-100%%" % (index, entry))


def plan_waves(devices, rollout_id, canary=1, waves=None, increment_factor=None):
    """The waves of a rollout, a list of lists of device ids; wave 0 is the
    canary wave (when canary > 0). No devices: no waves."""
    check_rollout_id(rollout_id)
    if not isinstance(devices, (list, tuple)):
        raise RolloutError("devices: %r is not a list of device ids" % (devices,))
    seen = set()
    for i, device in enumerate(devices):
        if not isinstance(device, str) or not device:
            raise RolloutError("devices[%d]: %r is not a device id" % (i, device))
        if device in seen:
            raise RolloutError("devices[%d]: %r is listed twice" % (i, device))
        seen.add(device)
    if not _is_int(canary) or canary < 0:
        raise RolloutError("canary: %r is not a count >= 0 (0: no canary wave)" % (canary,))
    if waves is None:
        waves = ["100%"]
    if not isinstance(waves, (list, tuple)) or not waves:
        raise RolloutError("waves: %r is not a non-empty list of counts and percentages" % (waves,))
    total = len(devices)
    sizes = [_wave_size(entry, i, total) for i, entry in enumerate(waves)]
    factor = None
    if increment_factor is not None:
        if not _is_number(increment_factor) or increment_factor <= 1:
            raise RolloutError("increment_factor: %r is not a number greater than 1.0" % (increment_factor,))
        if len(waves) != 1:
            raise RolloutError("waves: %r must have exactly one entry (the first wave's size) with increment_factor"
                               % (list(waves),))
        # the decimal value written (1.1 is 11/10, not 1.100000000000000088...)
        factor = Fraction(repr(float(increment_factor)))
    if not devices:
        return []
    order = sorted(devices, key=lambda d: hashlib.sha256((rollout_id + "/" + d).encode()).hexdigest())
    plan = []
    if canary:
        plan.append(order[:canary])
    placed = len(plan[0]) if plan else 0
    size = None
    i = 0
    while placed < total:
        if factor is not None:
            size = sizes[0] if size is None else int(math.ceil(size * factor))
        else:
            size = sizes[min(i, len(sizes) - 1)]
        plan.append(order[placed:placed + size])
        placed += len(plan[-1])
        i += 1
    return plan


# --- the abort rule -------------------------------------------------------------------

class AbortPolicy(object):
    """Abort when, out of at least *min_executed* devices with an outcome,
    more than *failure_percent* percent failed."""

    def __init__(self, failure_percent, min_executed):
        if not _is_number(failure_percent) or not 0 <= failure_percent <= 100:
            raise RolloutError("failure_percent: %r is not a number 0-100" % (failure_percent,))
        if not _is_int(min_executed) or min_executed < 1:
            raise RolloutError("min_executed: %r is not a count >= 1" % (min_executed,))
        self.failure_percent = failure_percent
        self.min_executed = min_executed

    def check(self, succeeded, failed):
        """None, or the reason to abort."""
        for name, value in (("succeeded", succeeded), ("failed", failed)):
            if not _is_int(value) or value < 0:
                raise RolloutError("%s: %r is not a count >= 0" % (name, value))
        executed = succeeded + failed
        if executed < self.min_executed or failed * 100 <= self.failure_percent * executed:
            return None
        return "%d of %d executed devices failed (%.1f%% > %g%%)" % (
            failed, executed, 100.0 * failed / executed, self.failure_percent)


# --- one device -----------------------------------------------------------------------

class DeviceTracker(object):
    """The state of one device in a rollout, driven by events. *record* is
    the device's entry in the state file, changed in place; every event
    method returns True when it changed the record.

    Clocks: every ``now`` is the caller's monotonic clock and every decision
    (deadline, soak, silence, re-command) is taken on it, kept in memory
    (``self.m``). The record gets wall-clock times for people, from
    ``wall(now)`` (default: ``now`` itself, for a caller with one clock)."""

    def __init__(self, record, version, timeout_s, soak_s, device_id=None, wall=None, recommand_after_s=None,
                 max_attempts=1, silence_slack_s=SILENCE_SLACK_S):
        if not isinstance(record, dict) or record.get("state") not in STATES:
            raise RolloutError("device %s: %r is not a device record" % (device_id, record))
        if not isinstance(version, str) or not version:
            raise RolloutError("version: %r is not a version string" % (version,))
        if not _is_number(timeout_s) or timeout_s <= 0:
            raise RolloutError("timeout_s: %r is not a number of seconds > 0" % (timeout_s,))
        if not _is_number(soak_s) or soak_s < 0:
            raise RolloutError("soak_s: %r is not a number of seconds >= 0" % (soak_s,))
        if not _is_int(max_attempts) or max_attempts < 1:
            raise RolloutError("max_attempts: %r is not a count >= 1" % (max_attempts,))
        self.record = record
        self.version = version
        self.timeout_s = timeout_s
        self.soak_s = soak_s
        self.device_id = device_id
        self.wall = wall or (lambda now: now)
        self.recommand_after_s = recommand_after_s
        self.max_attempts = max_attempts
        self.silence_slack_s = silence_slack_s
        # monotonic decision times: commanded, soak_from, grace_until, away_since,
        # heard (last live message), back_old (seen back on the old version)
        self.m = {}
        if record.get("state") in (COMMANDED, CONFIRMED) and record.get("commanded_at") is not None \
                and wall is None:
            self.m["commanded"] = record["commanded_at"]
            if record.get("soak_from") is not None:
                self.m["soak_from"] = record["soak_from"]
            if record.get("grace_until") is not None:
                self.m["grace_until"] = record["grace_until"]
        self.uptime = None  # the highest uptime seen live since the soak began
        self.telemetry = None  # (seq, uptime) of the last live telemetry

    @property
    def state(self):
        return self.record["state"]

    @property
    def final(self):
        return self.state in FINAL

    @property
    def failed(self):
        return self.state in FAILURES

    def attempt_ids(self):
        ids = [a["id"] for a in self.record.get("attempts") or []]
        if self.record.get("command_id") and self.record["command_id"] not in ids:
            ids.append(self.record["command_id"])
        return ids

    def _end(self, state, detail, now):
        self.record.update(state=state, detail=detail, ended_at=self.wall(now))
        return True

    def _soak(self, now):
        self.record.update(state=CONFIRMED, soak_from=self.wall(now))
        self.m["soak_from"] = now
        self.m["heard"] = now
        self.m.pop("away_since", None)
        self.uptime = None
        self.telemetry = None
        return True

    def offline(self, now):
        """The device is offline when its wave comes: not commanded (PENDING -> OFFLINE)."""
        if self.state == OFFLINE:
            return False
        if self.state != PENDING:
            raise RolloutError("device %s is %s, not pending: it cannot be marked offline"
                               % (self.device_id, self.state))
        self.record.update(state=OFFLINE, offline_at=self.wall(now))
        return True

    def commanded(self, now, command_id, why=None):
        """PENDING/OFFLINE -> COMMANDED. Again from COMMANDED only through
        :meth:`recommand` (a new command id, within max_attempts)."""
        if self.state not in (PENDING, OFFLINE) and why is None:
            raise RolloutError("device %s is already %s (command %s): a device is never commanded twice"
                               % (self.device_id, self.state, self.record.get("command_id")))
        try:
            contract.check_command_id(command_id)
        except contract.ContractError as e:
            raise RolloutError("device %s: %s" % (self.device_id, e))
        attempts = list(self.record.get("attempts") or [])
        if not attempts and self.record.get("command_id") and why is not None:
            attempts.append({"id": self.record["command_id"], "at": self.record.get("commanded_at"), "why": None})
        attempts.append({"id": command_id, "at": self.wall(now), "why": why})
        self.record.update(state=COMMANDED, commanded_at=self.wall(now), command_id=command_id, progress=None,
                           detail=None, confirmed_at=None, soak_from=None, on_version=False, grace_until=None,
                           ended_at=None, attempts=attempts)
        self.m = {"commanded": now}
        return True

    def wants_recommand(self, now):
        """A reason to command this device again, or None: it is COMMANDED,
        and either came back online on the old version after its command (a
        reconnect or a reset: the download or the command was lost with a
        session) with no report of any of its commands for
        recommand_after_s since, or refused its current command for a
        passing reason (on_cmd_ack) recommand_after_s ago."""
        if self.state != COMMANDED or self.recommand_after_s is None:
            return None
        if len(self.attempt_ids()) >= self.max_attempts:
            return None
        refused = self.m.get("refused")
        if refused is not None:
            if now - refused[0] < self.recommand_after_s:
                return None
            return "refused %s %g s ago" % (refused[1], self.recommand_after_s)
        if "back_old" not in self.m:
            return None
        if now - self.m["back_old"] < self.recommand_after_s:
            return None
        return "back online on %s with no final report for %g s" % (self.record.get("fw"), self.recommand_after_s)

    def recommand(self, now, command_id, why):
        """COMMANDED -> COMMANDED with a new command id (one more attempt)."""
        if self.state != COMMANDED:
            raise RolloutError("device %s is %s: only a commanded device is commanded again"
                               % (self.device_id, self.state))
        if len(self.attempt_ids()) >= self.max_attempts:
            raise RolloutError("device %s had its %d attempts" % (self.device_id, self.max_attempts))
        return self.commanded(now, command_id, why)

    def on_ota(self, report, now):
        """A report on the device's ``ota`` channel ({"id", "state", "version", "detail"});
        a report of any of the device's attempts counts."""
        if (not isinstance(report, dict) or self.state not in (COMMANDED, CONFIRMED)
                or report.get("id") not in self.attempt_ids()):
            return False
        state, detail = report.get("state"), report.get("detail")
        self.m.pop("back_old", None)  # it is working on a command
        if state in ("failed", "rolled_back"):
            if report.get("id") != self.record.get("command_id") and self.state == COMMANDED:
                return False  # an earlier attempt failed; the current one is still running
            return self._end(FAILED if state == "failed" else ROLLED_BACK,
                             str(detail) if detail else "the device reported %s" % state, now)
        if self.state != COMMANDED or state not in contract.OTA_STATES:
            return False  # a repeated report while soaking, or not a report
        before = dict(self.record)
        self.record["progress"] = state
        if state == "confirmed":
            if self.record.get("confirmed_at") is None:
                self.record["confirmed_at"] = self.wall(now)
            if self.record.get("on_version"):
                self._soak(now)
        return self.record != before

    def on_cmd_ack(self, ack, now):
        """An answer on the device's ``cmd/ack`` to its current OTA command:
        the device refused it before doing anything. A refusal for one of
        contract.CMD_REASONS (expired: it waited, queued, past its expiry;
        clock_unset: the device could not tell the time; inbox_full) passes:
        the device is commanded again after recommand_after_s (a new id and
        a new expiry), within max_attempts, and fails with that reason when
        none is left. Any other refusal of an OTA command fails it now."""
        if (not isinstance(ack, dict) or self.state != COMMANDED or ack.get("id") != self.record.get("command_id")
                or ack.get("result") != "rejected"):
            return False
        reason, detail = ack.get("reason"), ack.get("detail")
        text = "refused%s: %s" % (" (%s)" % reason if reason else "", detail or "no detail")
        if reason in contract.CMD_REASONS and self.recommand_after_s is not None \
                and len(self.attempt_ids()) < self.max_attempts:
            self.m["refused"] = (now, reason)
            self.m.pop("back_old", None)
            self.record["progress"] = text
            return True
        attempts = len(self.attempt_ids())
        return self._end(FAILED, text + (" (%d attempts)" % attempts if attempts > 1 else ""), now)

    def on_status(self, status, now, live=True, outage=False):
        """The device's retained ``status`` ({"online": bool, "fw": str, ...}).
        *live*: a message published now (not a retained one delivered at a
        subscription). *outage*: the broker or the controller's session is
        down or just back: going offline is not the device's fault."""
        if not isinstance(status, dict):
            return False
        before = dict(self.record)
        online, fw = bool(status.get("online")), status.get("fw")
        self.record["online"] = online
        if fw is not None:
            self.record["fw"] = fw
        if online and _is_number(status.get("publish_interval_s")) and status["publish_interval_s"] > 0:
            self.record["publish_interval_s"] = status["publish_interval_s"]
        if self.state == COMMANDED:
            self.record["on_version"] = online and fw == self.version
            if online and fw is not None and fw != self.version and (live or outage):
                self.m.setdefault("back_old", now)
            if self.record["on_version"]:
                self.m.pop("back_old", None)
                if live or outage:
                    self.m.setdefault("on_new", now)
                if self.record.get("confirmed_at") is not None:
                    self._soak(now)
            else:
                self.m.pop("on_new", None)
        elif self.state == CONFIRMED:
            if not online and outage:
                self.m.setdefault("away_since", now)
            elif online and "away_since" in self.m and fw == self.version:
                self._soak(now)  # back after the outage: the soak starts again
            elif self._check_soak(online, fw, now):
                pass
            elif online and live:
                self.m["heard"] = now
                self._check_uptime(status.get("uptime_s"), "status", now, telemetry=False)
        return self.record != before

    def on_telemetry(self, payload, now):
        """A live ``state`` message of the device: it is alive; its uptime
        (``status.uptime_seconds``) must not drop during the soak."""
        if self.state != CONFIRMED or not isinstance(payload, dict) or "away_since" in self.m:
            return False
        self.m["heard"] = now
        st = payload.get("status") if isinstance(payload.get("status"), dict) else {}
        return self._check_uptime(st.get("uptime_seconds"), "telemetry", now, telemetry=True,
                                  seq=payload.get("seq"))

    def _check_uptime(self, uptime, where, now, telemetry, seq=None):
        if not _is_number(uptime):
            return False
        if telemetry:
            # telemetry comes in the order it was made (buffered ones first); a
            # QoS 1 duplicate repeats an earlier (seq, uptime) and is ignored
            last = self.telemetry
            if last is not None and (seq, uptime) == last:
                return False
            self.telemetry = (seq, uptime)
            if last is not None and uptime < last[1]:
                return self._end(FAILED, "reset during the soak (telemetry uptime %g -> %g s)"
                                 % (last[1], uptime), now)
        elif self.uptime is not None and uptime < self.uptime:
            # a status is made at a connect: after everything seen before it
            return self._end(FAILED, "reset during the soak (status uptime %g s after %g s)"
                             % (uptime, self.uptime), now)
        self.uptime = max(self.uptime or 0, uptime)
        return False

    def _check_soak(self, online, fw, now):
        if not online:
            return self._end(FAILED, "went offline during the soak", now)
        if fw is not None and fw != self.version:
            return self._end(ROLLED_BACK, "came back on %s" % fw, now)
        return False

    def silence_limit(self):
        """How long a soaking device may stay silent: two telemetry intervals
        (``publish_interval_s`` of its status) plus a slack; None without one."""
        interval = (self.record.get("publish_interval_s"))
        if not _is_number(interval) or interval <= 0:
            return None
        return 2 * interval + self.silence_slack_s

    def deadline(self):
        """When a COMMANDED device times out (None in other states), monotonic."""
        if self.state != COMMANDED:
            return None
        deadline = self.m["commanded"] + self.timeout_s
        if self.m.get("grace_until") is not None:
            deadline = max(deadline, self.m["grace_until"])
        return deadline

    def pause(self, seconds, now):
        """The broker was away for *seconds*, back at *now*: a COMMANDED
        device's deadline moves by as much; a soaking one was not heard for
        the outage's sake (its silence counts from now)."""
        if self.state == COMMANDED:
            self.m["grace_until"] = (self.deadline() or 0) + seconds
        elif self.state == CONFIRMED:
            self.m["heard"] = max(self.m.get("heard", now), now)

    def tick(self, now, outage_grace_s=None):
        """Time passes: a COMMANDED device times out, a soak ends in success,
        a soaking device that is silent too long or away after an outage fails."""
        if self.state == COMMANDED and now >= self.deadline():
            attempts = len(self.attempt_ids())
            tried = " (%d attempts)" % attempts if attempts > 1 else ""
            if self.record.get("confirmed_at") is not None:
                detail = "confirmed but not online on %s within %g s (last status: %s)%s" % (
                    self.version, self.timeout_s, self._last_status(), tried)
            else:
                detail = "no final report within %g s (last: %s)%s" % (
                    self.timeout_s, self.record.get("progress") or "no report", tried)
            return self._end(TIMED_OUT, detail, now)
        if (self.state == COMMANDED and self.record.get("on_version") and self.recommand_after_s is not None
                and "on_new" in self.m and now - self.m["on_new"] >= self.recommand_after_s):
            # online on the version, its confirmed report lost with a session:
            # the soak decides (a reset or a rollback fails it)
            self.record["progress"] = "online on %s, no confirmed report" % self.version
            return self._soak(now)
        if self.state != CONFIRMED:
            return False
        if "away_since" in self.m:
            if outage_grace_s is not None and now - self.m["away_since"] >= outage_grace_s:
                return self._end(FAILED, "offline since the broker outage and not back within %g s"
                                 % outage_grace_s, now)
            return False
        limit = self.silence_limit()
        if limit is not None and now - self.m.get("heard", now) > limit:
            return self._end(FAILED, "silent for %.0f s during the soak (telemetry every %g s): hung"
                             % (now - self.m["heard"], self.record["publish_interval_s"]), now)
        if now - self.m["soak_from"] >= self.soak_s:
            return self._end(SUCCEEDED, None, now)
        return False

    def _last_status(self):
        if self.record.get("online") is None:
            return "none"
        return "online on %s" % self.record.get("fw") if self.record["online"] else "offline"

    def resumed(self, status, now):
        """Once per COMMANDED or CONFIRMED device when a killed rollout is
        resumed, with its retained *status* (None: none). Other states: no-op.
        The time left of the device's timeout comes from the wall-clock
        commanded_at (the only use of the wall clock in a decision)."""
        if self.state not in (COMMANDED, CONFIRMED):
            return False
        before = dict(self.record)
        online = fw = None
        if isinstance(status, dict):
            online, fw = bool(status.get("online")), status.get("fw")
            self.record["online"] = online
            if fw is not None:
                self.record["fw"] = fw
        elapsed = self.wall(now) - (self.record.get("commanded_at") or self.wall(now))
        left = min(max(self.timeout_s - elapsed, 0), self.timeout_s)
        self.m["commanded"] = now - (self.timeout_s - left)
        if online and fw == self.version:
            self.record["on_version"] = True
            self._soak(now)  # runs the new version: the soak starts again
        elif self.state == CONFIRMED and online is not None:
            self._check_soak(online, fw, now)  # was soaking, now offline or on another version
        else:
            self.m["grace_until"] = now + max(left, min(self.timeout_s, RESUME_GRACE_S))
            self.record.update(state=COMMANDED, on_version=False, grace_until=self.wall(self.m["grace_until"]))
            if online and fw is not None and self.recommand_after_s is not None:
                # on the old version, maybe still downloading (its reports went
                # to the run that died): commanded again once its timeout is over
                self.m["back_old"] = now + max(0.0, left - self.recommand_after_s)
                self.m["grace_until"] += self.recommand_after_s + 1
        return self.record != before


# --- the state file -------------------------------------------------------------------

def image_name(image):
    """``<payload> <version>`` of an image dict, for messages."""
    if not isinstance(image, dict):
        return repr(image)
    return "%s %s" % (image.get("payload", "app"), image.get("version", "(no version)"))


def check_image(image, rollout_id):
    """The image with its sha256 lower-cased, or RolloutError naming the
    image and what is wrong: every field an ota command carries, checked as
    the device checks it, the signed ones (security_version, signature)
    included."""
    if not isinstance(image, dict):
        raise RolloutError("image: %r is not a dict of version, payload, url, size, sha256, security_version, "
                           "signature" % (image,))
    name = image_name(image)
    for key, what in (("signature", "the site signing key's signature over it (the ota_server role's manifest "
                                    "carries it; devices install nothing unsigned)"),
                      ("security_version", "its security_version (signed with it; the manifest carries it)")):
        if image.get(key) is None:
            raise RolloutError("image %s has no %s: %s" % (name, key, what))
    try:
        sha256 = _check_sha256(image.get("sha256"))
    except RolloutError as e:
        raise RolloutError("image %s: %s" % (name, e))
    cmd = dict(image, id=command_id(rollout_id, sha256), cmd="ota")
    try:
        contract.check_ota_command(cmd)
        contract.ota_signed_fields(cmd)
    except contract.ContractError as e:
        raise RolloutError("image %s: %s" % (name, e))
    return dict(image, sha256=sha256)


class RolloutState(object):
    """The resumable state file of one rollout (see the module's docstring)."""

    def __init__(self, path, record, resumed):
        self.path = path
        self.record = record
        self._resumed = resumed

    @classmethod
    def open(cls, path, rollout_id, image, plan_fn, now):
        """Load *path*, or start a new rollout planned by plan_fn() (not
        written before save())."""
        check_rollout_id(rollout_id)
        image = check_image(image, rollout_id)
        if os.path.exists(path):
            try:
                with open(path) as f:
                    record = json.load(f)
            except ValueError as e:
                raise RolloutError("%s is not a rollout state file: %s" % (path, e))
            if (not isinstance(record, dict) or record.get("format") != FORMAT
                    or not isinstance(record.get("devices"), dict) or not isinstance(record.get("waves"), list)
                    or not isinstance(record.get("image"), dict)):
                raise RolloutError("%s is not a rollout state file of format %d" % (path, FORMAT))
            if record.get("rollout_id") != rollout_id:
                raise RolloutError("%s is the state of rollout %r, not %r"
                                   % (path, record.get("rollout_id"), rollout_id))
            if str(record["image"].get("sha256")).lower() != image["sha256"]:
                raise RolloutError("%s is the state of a rollout of image sha256 %s, not %s"
                                   % (path, record["image"].get("sha256"), image["sha256"]))
            recorded = record["image"].get("security_version")
            if recorded is not None and recorded != image["security_version"]:
                raise RolloutError("%s is the state of a rollout of image %s with security_version %s, not %s: the "
                                   "devices commanded so far got %s; start a new rollout_id for the new one"
                                   % (path, image_name(image), recorded, image["security_version"], recorded))
            return cls(path, record, True)
        plan = plan_fn()
        devices = {}
        for i, wave in enumerate(plan):
            for device in wave:
                if device in devices:
                    raise RolloutError("plan: device %r is in waves %d and %d" % (device, devices[device]["wave"], i))
                devices[device] = {"state": PENDING, "wave": i}
        record = {"format": FORMAT, "rollout_id": rollout_id, "image": image, "created": now,
                  "waves": [list(w) for w in plan], "devices": devices, "aborted": None, "finished": False}
        return cls(path, record, False)

    @property
    def rollout_id(self):
        return self.record["rollout_id"]

    @property
    def image(self):
        return self.record["image"]

    @property
    def waves(self):
        return self.record["waves"]

    @property
    def devices(self):
        return self.record["devices"]

    @property
    def aborted(self):
        """None, or {"wave", "reason", "at"}."""
        return self.record["aborted"]

    @property
    def finished(self):
        return bool(self.record["finished"])

    @property
    def resumed(self):
        return self._resumed

    def command_id(self):
        return command_id(self.rollout_id, self.image["sha256"])

    def tracker(self, device_id, timeout_s, soak_s):
        """The DeviceTracker of one device of this rollout (on its record)."""
        if device_id not in self.devices:
            raise RolloutError("device %r is not in rollout %s" % (device_id, self.rollout_id))
        return DeviceTracker(self.devices[device_id], self.image["version"], timeout_s, soak_s, device_id)

    def add_skipped(self, ids):
        """Devices already on the version: SKIPPED. A device not in the file
        joins with wave None; a planned one still PENDING or OFFLINE keeps its
        wave; any other is left as it is. Returns the ids marked."""
        marked = []
        for device in ids:
            entry = self.devices.get(device)
            if entry is None:
                self.devices[device] = {"state": SKIPPED, "wave": None}
            elif entry["state"] in (PENDING, OFFLINE):
                entry["state"] = SKIPPED
            else:
                continue
            marked.append(device)
        return marked

    def abort(self, wave, reason, now):
        """Record the abort (the first one counts)."""
        if self.record["aborted"] is None:
            self.record["aborted"] = {"wave": wave, "reason": reason, "at": now}

    def finish(self, now):
        self.record["finished"] = True
        self.record["finished_at"] = now

    def _counts(self, entries):
        counts = dict((s, 0) for s in STATES)
        for entry in entries:
            counts[entry["state"]] += 1
        return counts

    def wave_summary(self, i):
        """{state: count} of the devices of wave *i*."""
        if not _is_int(i) or not 0 <= i < len(self.waves):
            raise RolloutError("wave: %r is not a wave of rollout %s (it has %d)"
                               % (i, self.rollout_id, len(self.waves)))
        return self._counts(e for e in self.devices.values() if e.get("wave") == i)

    def summary(self):
        """{state: count} over every device of the rollout."""
        return self._counts(self.devices.values())

    def executed(self):
        """(succeeded, failed) over the whole rollout, for AbortPolicy.check."""
        counts = self.summary()
        return counts[SUCCEEDED], sum(counts[s] for s in FAILURES)

    def save(self):
        """Write the file atomically (temporary file, fsync, rename, fsync of
        the directory), mode 0600 in a directory created 0700."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        text = json.dumps(self.record, sort_keys=True, indent=1) + "\n"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(self.path) + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

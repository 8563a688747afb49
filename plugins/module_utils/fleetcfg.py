# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Ansible side: the logic of the device_config action plugin (controller side): the
desired config of each device from inventory, the decision what to send,
config versions, the outcome of each device, and the diff; and ``Push``,
which publishes the configs and follows the acks over a session it is given
(fleetmqtt.FleetSession; a fake in the unit tests). No I/O of its own.

Desired state (docs/architecture.md, section 10). A device's desired config is the merge
of dict variables, in order (default ``device_config_fleet``,
``device_config_kind``, ``device_config``: group_vars/fleet, group_vars/<kind>,
host_vars), a later one's settings over an earlier one's. It is published
retained on ``cfg`` as ``{"version": N, ...settings}``: the whole desired
state, which the device applies over its firmware defaults and flash-time
config.

Versions. The broker's retained ``cfg`` of each device is the record of what
was last desired, and the device's retained ``status`` says which version it
applied (``cfg_version``). So:

- desired settings equal to the retained ones: nothing new. A device that
  reports that version is ``unchanged`` and gets nothing; a device online
  with another version (it missed or refused it) gets the same message, same
  version, again, so that it answers;
- different settings (or none retained): a new version,
  ``max(retained + 1, reported + 1, seconds since 2024-01-01 UTC)``.

A broker restart during a push is not a device's failure. The broker
publishes every connected client's will (``online: false``) and closes
every session, the controller's too. So an offline status settles a device
only after it has been held ``HOLD_S`` seconds with the controller's session
up all along; once the session has been lost, offline statuses settle
nobody, and a device still unconfirmed at the deadline whose last status
said offline is ``offline``. The push reconnects (for at most its timeout),
publishes every unconfirmed device's config again (the same version: the
device applies it once and acknowledges it again), and counts a live
status with ``cfg_version`` of that version as the acknowledgement (a device
that acknowledged while the controller's session was down). The deadline
moves by the outage's length.

No state file is involved, so there is none to lose. Two controllers read the
same retained messages: with the same inventory the second finds nothing to
send; with different inventories the later one wins with a higher version,
never an older one (the device refuses a version older than the one it
applied, so a stale controller cannot roll a device back by accident). A
broker that lost its retained messages is covered by the device's reported
version. The wall-clock part keeps versions rising even then; the limit is two
controllers publishing different settings within the same second, which get
the same version (the later publish wins on the device and on the broker).
"""

try:
    from ansible_collections.edgefleet.site.plugins.module_utils import devconfig, fleetmqtt, identity
except ImportError:  # tests import it from plugins/module_utils directly
    import devconfig
    import fleetmqtt
    import identity

import json
import time

DEFAULT_VARS = ("device_config_fleet", "device_config_kind", "device_config")
VERSION_EPOCH = 1704067200  # 2024-01-01T00:00:00Z
RESULTS = ("applied", "unchanged", "rejected", "timed_out", "offline")
FAILURES = ("rejected", "timed_out")


class FleetConfigError(ValueError):
    pass


def check_desired(settings):
    """The controller's check of a desired config before anything is
    published: unknown settings, every value's type and range, and the
    cross-setting rules where the config gives both settings (the device
    checks the rest against its flash-time config, and has the last word).
    The rules are the device's own (devconfig); this stays out of devconfig
    so that the device does not carry it."""
    if not isinstance(settings, dict):
        raise devconfig.ConfigError("must be a mapping of settings, got %s" % type(settings).__name__)
    known = [s for s in devconfig.SETTINGS if s != "version"]
    unknown = sorted(str(k) for k in settings if k not in known)
    if unknown:
        raise devconfig.ConfigError("unknown setting(s): %s (known: %s)" % (", ".join(unknown), ", ".join(known)))
    out = {}
    for name in sorted(settings):
        out[name] = devconfig._check(name, settings[name])
    if "sample_interval_s" in out and "publish_interval_s" in out and \
            out["sample_interval_s"] > out["publish_interval_s"]:
        raise devconfig.ConfigError("sample_interval_s (%r) must not exceed publish_interval_s (%r)"
                                    % (out["sample_interval_s"], out["publish_interval_s"]))
    if "temperature_sensors" in out and "temperature_zones" in out:
        for rom, zone in sorted(out["temperature_sensors"].items()):
            if zone >= out["temperature_zones"]:
                raise devconfig.ConfigError("temperature_sensors: %s is mapped to zone %d, but temperature_zones "
                                            "is %d" % (rom, zone, out["temperature_zones"]))
    return out


def plain(value):
    """Inventory values (templated, possibly tagged or unsafe str/dict
    subclasses) as plain JSON types."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    raise FleetConfigError("%r (%s) is not a JSON value" % (value, type(value).__name__))


def collect_desired(devices, lookup, var_names=DEFAULT_VARS):
    """({device: settings}, [error lines]) from *lookup(device, var)*, which
    returns the variable's value or None when it is undefined. Every device
    is checked before anything is sent; an error names the host, the
    variable and the bad value."""
    desired, errors = {}, []
    for device in devices:
        try:
            identity.split_device_id(device)
        except ValueError as e:
            errors.append("%s: not a device id (<kind>-<short8>): %s" % (device, e))
            continue
        merged, sources = {}, {}
        bad = False
        for var in var_names:
            value = lookup(device, var)
            if value is None:
                continue
            try:
                value = plain(value)
            except FleetConfigError as e:
                errors.append("%s: %s: %s" % (device, var, e))
                bad = True
                continue
            if not isinstance(value, dict):
                errors.append("%s: %s must be a mapping of settings, got %s %r" % (
                    device, var, type(value).__name__, value))
                bad = True
                continue
            for k, v in value.items():
                merged[k] = v
                sources[k] = var
        if bad:
            continue
        try:
            desired[device] = check_desired(merged)
        except devconfig.ConfigError as e:
            named = [sources[k] for k in sources if ("%s" % k) in str(e)]
            where = " (from %s)" % ", ".join(sorted(set(named))) if named else ""
            errors.append("%s: %s%s" % (device, e, where))
    return desired, errors


def _version(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def new_version(retained_version, reported_version, now):
    floor = max(retained_version or 0, reported_version or 0) + 1
    return max(floor, int(now) - VERSION_EPOCH)


def body_of(cfg):
    return {k: v for k, v in cfg.items() if k != "version"}


class Plan(object):
    """What to do for one device: ``send`` (new version), ``resend`` (the
    retained version again, to hear the device), or nothing."""

    __slots__ = ("device", "desired", "version", "action", "online", "reported_version", "known_body")

    def __init__(self, device, desired, retained, status, now):
        self.device, self.desired = device, desired
        cfg = fleetmqtt.decode(retained)
        st = fleetmqtt.decode(status)
        retained_version = _version(cfg.get("version")) if cfg else None
        self.online = bool(st and st.get("online") is True)
        self.reported_version = _version(st.get("cfg_version")) if st else None
        # the body the device runs, when it says so: the retained one it acked,
        # or none at all (version 0: defaults + flash-time config)
        if cfg is not None and retained_version is not None and self.reported_version == retained_version:
            self.known_body = body_of(cfg)
        elif self.reported_version == 0 and cfg is None:
            self.known_body = {}
        else:
            self.known_body = None
        retained_body = body_of(cfg) if cfg is not None and retained_version is not None else None
        if retained_body is None and desired == {} and self.reported_version in (0, None) and cfg is None:
            retained_body, retained_version = {}, 0  # nothing desired, nothing ever sent
        if retained_body == desired and (self.reported_version or 0) <= (retained_version or 0):
            self.version = retained_version
            if self.reported_version == retained_version:
                self.action = None
            else:
                self.action = "resend" if self.online else None
        else:
            self.version = new_version(retained_version, self.reported_version, now)
            self.action = "send"

    @property
    def would_change(self):
        return self.action == "send" or (self.action == "resend" and self.known_body != self.desired)

    def message(self):
        return json.dumps(dict(self.desired, version=self.version), sort_keys=True, separators=(",", ":"))

    def diff(self):
        if self.known_body is not None:
            before = json.dumps(self.known_body, indent=2, sort_keys=True) + "\n"
            header = "%s reported (version %s)" % (self.device, self.reported_version)
        else:
            before = ""
            header = "%s reported (version %s; its settings are not on the broker)" % (
                self.device, self.reported_version if self.reported_version is not None else "unknown")
        return {"before": before, "after": json.dumps(self.desired, indent=2, sort_keys=True) + "\n",
                "before_header": header, "after_header": "%s desired (version %s)" % (self.device, self.version)}


class Outcome(object):
    """The result of one device, from its acks and statuses after a send."""

    def __init__(self, plan):
        self.plan = plan
        self.sent = plan.action is not None
        if plan.action is None:
            self.result = "unchanged" if plan.reported_version == plan.version else "offline"
        else:
            self.result = None if plan.online else "offline"
        self.detail = None if self.result != "offline" else "offline: the retained config waits for it"
        self.away = False  # its last status said offline, in a broker outage

    @property
    def pending(self):
        return self.result is None

    def on_ack(self, ack):
        """A decoded cfg/ack; True when it settled this device."""
        if not self.pending or not isinstance(ack, dict) or ack.get("version") != self.plan.version:
            return False
        if ack.get("result") == "applied":
            self.result = "applied"
        elif ack.get("result") == "rejected":
            self.result = "rejected"
            self.detail = str(ack.get("detail"))
        else:
            return False
        return True

    def on_status(self, status):
        """A decoded status; True when it settled this device: offline (a
        device that went offline while we waited), or online with the
        version sent as its applied one (its ack went where nobody heard it)."""
        if not self.pending or not isinstance(status, dict):
            return False
        if status.get("online") is False:
            self.result = "offline"
            self.detail = "went offline before it answered"
            return True
        if status.get("online") is True:
            self.away = False
            if _version(status.get("cfg_version")) == self.plan.version:
                self.result = "applied"
                return True
        return False

    def timed_out(self, timeout):
        if self.pending and self.away:
            self.result = "offline"
            self.detail = "offline since a broker outage: the retained config waits for it"
        elif self.pending:
            self.result = "timed_out"
            self.detail = "no cfg/ack for version %s within %ss" % (self.plan.version, timeout)

    @property
    def changed(self):
        return self.result == "applied" and self.plan.known_body != self.plan.desired

    def as_dict(self):
        return {"result": self.result, "version": self.plan.version, "changed": self.changed, "sent": self.sent,
                "detail": self.detail}


def tolerance(max_failures, total):
    """The number of failed devices a run tolerates: an int, or "N%" of *total*."""
    if isinstance(max_failures, bool):
        raise FleetConfigError("max_failures must be a count or a percentage like '5%%', got %r" % (max_failures,))
    if isinstance(max_failures, int):
        if max_failures < 0:
            raise FleetConfigError("max_failures must not be negative, got %r" % (max_failures,))
        return max_failures
    text = str(max_failures).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 <= pct <= 100:
                raise ValueError
            return int(total * pct / 100.0)
        n = int(text)
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        raise FleetConfigError("max_failures must be a count or a percentage like '5%%', got %r" % (max_failures,))


def summarize(outcomes):
    counts = dict((r, 0) for r in RESULTS)
    for o in outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
    return counts


HOLD_S = 2.0  # an offline status settles a device once held this long with the session up
POLL_S = 0.2
PROGRESS_EVERY_S = 2.0


class Push(object):
    """One push over *session* (fleetmqtt.FleetSession, or anything with its
    publish, flush, events and reconnect): publish the config of every
    outcome that is to be sent, retained, then follow acks and statuses until
    each outcome is settled or *timeout* seconds (plus any outage) have
    passed. *progress(outcomes)* is called every PROGRESS_EVERY_S and
    *say(text)* on a lost and a regained session; *clock* is monotonic.

    After ``run()``, ``outages`` lists each lost session: ``lost_after_s``
    (since the push began) and ``back_after_s``. FleetMqttError when the
    broker is not back within *timeout*."""

    def __init__(self, session, outcomes, timeout, connect_timeout=10.0, progress=None, say=None, clock=None):
        self.session, self.outcomes, self.timeout = session, list(outcomes), timeout
        self.connect_timeout = connect_timeout
        self.progress = progress or (lambda outcomes: None)
        self.say = say or (lambda text: None)
        self.clock = clock or time.monotonic
        self.by_device = dict((o.plan.device, o) for o in self.outcomes)
        self.held = []  # (arrived, outcome, status): offline statuses waiting HOLD_S
        self.lost = False  # the session has been lost during this push
        self.outages = []
        self.started = self.clock()

    def run(self):
        self.publish([o for o in self.outcomes if o.sent])
        flush_timeout = max(10.0, self.timeout)
        while True:
            try:
                self.session.flush(timeout=flush_timeout)
                break
            except fleetmqtt.SessionLost as e:
                self.outage(str(e))
        deadline = self.clock() + self.timeout
        next_progress = self.clock() + PROGRESS_EVERY_S
        while any(o.pending for o in self.outcomes):
            left = deadline - self.clock()
            if left <= 0:
                break
            try:
                messages = self.session.events(timeout=min(left, POLL_S))
            except fleetmqtt.SessionLost as e:
                deadline += self.outage(str(e))
                continue
            self.read(messages)
            if self.clock() >= next_progress:
                next_progress += PROGRESS_EVERY_S
                self.progress(self.outcomes)
        for o in self.outcomes:
            o.timed_out(self.timeout)
        return self.outcomes

    def publish(self, outcomes):
        """Publish each one's config; a session lost meanwhile: reconnect and
        publish all of them again (the same messages: idempotent)."""
        while True:
            try:
                for o in outcomes:
                    self.session.publish(o.plan.device, "cfg", o.plan.message(), retain=True)
                return
            except fleetmqtt.SessionLost as e:
                self.outage(str(e), republish=False)

    def read(self, messages):
        now = self.clock()
        for m in messages:
            o = self.by_device.get(m.device_id)
            if o is None or not o.pending:
                continue
            if m.channel == "cfg/ack":
                o.on_ack(fleetmqtt.decode(m.payload))
            elif m.channel == "status":
                status = fleetmqtt.decode(m.payload)
                if isinstance(status, dict) and status.get("online") is False:
                    if self.lost:
                        o.away = True  # the outage's: settles nobody
                    else:
                        self.held.append((now, o, status))
                else:
                    o.on_status(status)
        while self.held and now - self.held[0][0] >= HOLD_S:
            _arrived, o, status = self.held.pop(0)
            o.on_status(status)

    def outage(self, why, republish=True):
        """The session is lost: offline statuses held so far are the outage's;
        reconnect (for at most the push's timeout), then publish every
        unconfirmed device's config again. Returns the outage's length."""
        lost = self.clock()
        self.lost = True
        for _arrived, o, _status in self.held:
            o.away = True
        self.held = []
        self.say("device_config: lost the broker session (%s): reconnecting (at most %g s); offline statuses "
                 "from now on are the outage's" % (why, self.timeout))
        while True:
            left = self.timeout - (self.clock() - lost)
            if left <= 0:
                raise fleetmqtt.FleetMqttError(
                    "the broker was not back within %g s (the timeout); every config published so far is retained "
                    "on the broker and a device takes it when it connects: run the task again to confirm them"
                    % self.timeout)
            try:
                self.session.reconnect(timeout=min(left, self.connect_timeout))
                break
            except fleetmqtt.SessionLost:
                continue
        back = self.clock()
        self.outages.append({"lost_after_s": round(lost - self.started, 3), "back_after_s": round(back - lost, 3)})
        self.say("device_config: the broker session is back after %.1f s" % (back - lost))
        if republish:
            self.publish([o for o in self.outcomes if o.pending])
        return back - lost

# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Ansible side: the logic of the device_config action plugin (controller side): the
desired config of each device from inventory, the decision what to send,
config versions, the outcome of each device, and the diff. No I/O: the
action plugin feeds it the broker's retained messages and the acks.

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
        """A decoded status: a device that went offline while we waited."""
        if self.pending and isinstance(status, dict) and status.get("online") is False:
            self.result = "offline"
            self.detail = "went offline before it answered"
            return True
        return False

    def timed_out(self, timeout):
        if self.pending:
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

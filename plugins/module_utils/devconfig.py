# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Device contract: device configuration: defaults, validation with a reason, ack payloads
(docs/architecture.md, sections 3 and 10). Part of the device contract: the firmware image packs
this file as it is, the simulator imports it, and controller-side plugins
import it as ``ansible_collections.edgefleet.site.plugins.module_utils.devconfig``.
It runs unchanged on MicroPython and imports nothing.

The controller publishes the desired config retained on ``cfg`` as
``{"version": N, ...}``. It is the whole desired state, never a patch: the
applied config is always

    DEFAULTS  <-  flash-time config (device.json)  <-  the cfg message

so the same ``cfg`` gives the same applied config whatever was applied
before. A candidate is checked as a whole before anything is applied: any
bad value rejects the whole candidate with a reason that names the setting
and the value, and the running config stays as it was (never half-applied).
Unknown settings are rejected too, so that a typo in an inventory cannot
pass silently.
"""

DEFAULTS = {
    "version": 0,
    "sample_interval_s": 1.0,
    "publish_interval_s": 5.0,
    "pzem_addresses": [1, 2, 3],
    "temperature_zones": 0,
    # DS18B20 ROM code (16 hex digits) -> zone index. With none given, the
    # sensors found take the zones in ROM order (fine on a bench, fragile in
    # a plant: one dead sensor shifts every zone after it).
    "temperature_sensors": {},
    "setpoint_c": None,
    "buffer_capacity": 100,
    "metrics_port": 80,
    # "host" or "host:port"; None: the broker's host (the site controller)
    "ntp_server": None,
}

# name: (kind, minimum, maximum)
_RULES = {
    "version": ("int", 1, 2 ** 31 - 1),
    "sample_interval_s": ("num", 0.1, 60),
    "publish_interval_s": ("num", 1, 3600),
    "pzem_addresses": ("addr_list", 1, 247),
    "temperature_zones": ("int", 0, 8),
    "temperature_sensors": ("rom_map", 0, 7),
    "setpoint_c": ("num_or_none", -40, 400),
    "buffer_capacity": ("int", 1, 100),
    "metrics_port": ("int", 1, 65535),
    "ntp_server": ("host_or_none", 1, 64),
}
SETTINGS = tuple(sorted(_RULES))
_HEX = "0123456789abcdef"
_HOST_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.-:"


class ConfigError(ValueError):
    pass


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v  # not NaN  # pylint: disable=comparison-with-itself


def _check_rom_map(name, value, lo, hi):
    if not isinstance(value, dict):
        raise ConfigError("%s must map DS18B20 ROM codes to zones, got %r" % (name, value))
    out, zones = {}, []
    for rom, zone in value.items():
        key = rom.lower() if isinstance(rom, str) else rom
        if not isinstance(key, str) or len(key) != 16 or any(c not in _HEX for c in key) or key[:2] != "28":
            raise ConfigError("%s: %r is not a DS18B20 ROM code (16 hex digits, family 28)" % (name, rom))
        if not _is_int(zone) or not lo <= zone <= hi:
            raise ConfigError("%s: zone %r of %s must be an integer %d..%d" % (name, zone, rom, lo, hi))
        if zone in zones:
            raise ConfigError("%s: zone %d is given to two sensors" % (name, zone))
        zones.append(zone)
        out[key] = zone
    return out


def _check_host(name, value, lo, hi):
    if value is None:
        return None
    if not isinstance(value, str) or not lo <= len(value) <= hi or any(c not in _HOST_CHARS for c in value.lower()):
        raise ConfigError("%s must be a host name or address (optionally :port), got %r" % (name, value))
    host, sep, port = value.rpartition(":")
    if sep and (not host or not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ConfigError("%s: bad port in %r" % (name, value))
    return value


def _check(name, value):
    kind, lo, hi = _RULES[name]
    if kind == "rom_map":
        return _check_rom_map(name, value, lo, hi)
    if kind == "host_or_none":
        return _check_host(name, value, lo, hi)
    if kind == "int" and not _is_int(value):
        raise ConfigError("%s must be an integer, got %r" % (name, value))
    if kind == "num_or_none":
        if value is None:
            return value
        kind = "num"
    if kind == "num" and not _is_num(value):
        raise ConfigError("%s must be a number, got %r" % (name, value))
    if kind == "addr_list":
        if not isinstance(value, list) or len(value) > 3:
            raise ConfigError("%s must be a list of at most 3 Modbus addresses, got %r" % (name, value))
        for a in value:
            if not _is_int(a) or not lo <= a <= hi:
                raise ConfigError("%s: %r is not a Modbus address %d..%d" % (name, a, lo, hi))
        if len(set(value)) != len(value):
            raise ConfigError("%s has duplicates: %r" % (name, value))
        return list(value)
    if not lo <= value <= hi:
        raise ConfigError("%s must be between %s and %s, got %r" % (name, lo, hi, value))
    return value


def _merge(base, candidate):
    unknown = sorted(k for k in candidate if k not in _RULES)
    if unknown:
        raise ConfigError("unknown setting(s): %s" % ", ".join(unknown))
    new = dict(base)
    for name in candidate:
        new[name] = _check(name, candidate[name])
    if new["sample_interval_s"] > new["publish_interval_s"]:
        raise ConfigError("sample_interval_s (%r) must not exceed publish_interval_s (%r)"
                          % (new["sample_interval_s"], new["publish_interval_s"]))
    for rom, zone in new["temperature_sensors"].items():
        if zone >= new["temperature_zones"]:
            raise ConfigError("temperature_sensors: %s is mapped to zone %d, but temperature_zones is %d"
                              % (rom, zone, new["temperature_zones"]))
    return new


def initial(overrides):
    """The flash-time config: DEFAULTS with *overrides* (validated), version 0."""
    if not isinstance(overrides, dict):
        raise ConfigError("the flash-time config must be an object, got %s" % type(overrides).__name__)
    if "version" in overrides:
        raise ConfigError("the flash-time config carries no version")
    return _merge(DEFAULTS, overrides)


def validate(candidate, base, applied_version=0):
    """The complete config that *candidate* (a decoded ``cfg`` message)
    asks for, or ConfigError with the reason.

    *base* is ``initial(flash-time config)``: the settings the candidate
    leaves out take their values from it, never from the config applied
    before. A candidate older than *applied_version* is refused."""
    if not isinstance(candidate, dict):
        raise ConfigError("config must be a JSON object, got %s" % type(candidate).__name__)
    if "version" not in candidate:
        raise ConfigError("config has no version")
    new = _merge(base, candidate)
    if new["version"] < applied_version:
        raise ConfigError("version %d is older than the applied version %d" % (new["version"], applied_version))
    return new


def ack(version, result, detail=None):
    """The ``cfg/ack`` payload (docs/architecture.md, section 3.2)."""
    if result not in ("applied", "rejected"):
        raise ValueError("ack result must be 'applied' or 'rejected', got %r" % (result,))
    return {"version": version, "result": result, "detail": detail}


def candidate_version(candidate):
    """The version a candidate claims, for the ack of a rejected one (or None)."""
    if isinstance(candidate, dict) and _is_int(candidate.get("version")):
        return candidate["version"]
    return None

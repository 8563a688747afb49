"""Device configuration: defaults, validation with a reason, ack payloads.

The controller publishes the desired config retained on ``cfg`` as
``{"version": N, ...}``. A candidate is checked as a whole before anything
is applied: any bad value rejects the whole candidate with a reason that
names the setting and the value, and the running config stays as it was
(never half-applied). Unknown settings are rejected too, so that a typo in an
inventory cannot pass silently.
"""

DEFAULTS = {
    "version": 0,
    "sample_interval_s": 1.0,
    "publish_interval_s": 5.0,
    "pzem_addresses": [1, 2, 3],
    "temperature_zones": 0,
    "setpoint_c": None,
    "buffer_capacity": 100,
    "metrics_port": 80,
}

# name: (kind, minimum, maximum); kind 'int', 'num', 'addr_list', 'num_or_none'
_RULES = {
    "version": ("int", 1, 2 ** 31 - 1),
    "sample_interval_s": ("num", 0.1, 60),
    "publish_interval_s": ("num", 1, 3600),
    "pzem_addresses": ("addr_list", 1, 247),
    "temperature_zones": ("int", 0, 8),
    "setpoint_c": ("num_or_none", -40, 400),
    "buffer_capacity": ("int", 1, 100),
    "metrics_port": ("int", 1, 65535),
}


class ConfigError(ValueError):
    pass


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v  # not NaN


def _check(name, value):
    kind, lo, hi = _RULES[name]
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


def validate(candidate, current):
    """Return the complete new config, or raise ConfigError with the reason.

    *candidate* is the decoded ``cfg`` payload; settings it leaves out keep
    their *current* values.
    """
    if not isinstance(candidate, dict):
        raise ConfigError("config must be a JSON object, got %s" % type(candidate).__name__)
    if "version" not in candidate:
        raise ConfigError("config has no version")
    unknown = sorted(k for k in candidate if k not in _RULES)
    if unknown:
        raise ConfigError("unknown setting(s): %s" % ", ".join(unknown))
    new = dict(current)
    for name in candidate:
        new[name] = _check(name, candidate[name])
    if new["version"] < current.get("version", 0):
        raise ConfigError("version %d is older than the applied version %d" % (new["version"], current["version"]))
    if new["sample_interval_s"] > new["publish_interval_s"]:
        raise ConfigError("sample_interval_s (%r) must not exceed publish_interval_s (%r)"
                          % (new["sample_interval_s"], new["publish_interval_s"]))
    return new


def initial(overrides):
    """The flash-time config: DEFAULTS with *overrides* (validated), version 0."""
    if "version" in overrides:
        raise ConfigError("the flash-time config carries no version")
    new = validate(dict(overrides, version=1), dict(DEFAULTS))
    new["version"] = 0
    return new


def ack(version, result, detail=None):
    """The ``cfg/ack`` payload (DESIGN.md section 3)."""
    if result not in ("applied", "rejected"):
        raise ValueError("ack result must be 'applied' or 'rejected', got %r" % (result,))
    return {"version": version, "result": result, "detail": detail}


def candidate_version(candidate):
    """The version a candidate claims, for the ack of a rejected one (or None)."""
    if isinstance(candidate, dict) and _is_int(candidate.get("version")):
        return candidate["version"]
    return None

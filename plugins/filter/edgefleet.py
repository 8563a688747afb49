# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Jinja2 filters used by the edgefleet roles.

mosquitto_passwd_hash
    Hash a password in Mosquitto 2.x password-file format
    (``$7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>``), the format that
    ``mosquitto_passwd`` writes. The salt is derived from a seed (the broker's
    host name and the user name) instead of drawn at random, so that the same
    password gives the same line on every run: re-runs leave the file
    unchanged and a changed password changes exactly one line.

subject_alt_names
    Turn a list of host names and IP addresses into ``DNS:``/``IP:``
    subjectAltName entries for community.crypto.

device_config_max
    The largest value the device contract allows for a device setting
    (``'temperature_zones' | device_config_max`` is 8), read from
    plugins/module_utils/devconfig.py, the module the firmware validates its
    config with: roles size what they export by it instead of keeping a
    second copy of the number.

dashboard_without_datasource
    A Grafana dashboard (JSON text) without the panels that use the data
    source of the given uid: the grafana role provisions the history panels
    (InfluxQL on InfluxDB 1.x) only where that data source exists.
"""

import base64
import hashlib
import ipaddress
import json

from ansible.errors import AnsibleFilterError

MOSQUITTO_SALT_BYTES = 12  # what mosquitto_passwd uses
MOSQUITTO_DEFAULT_ITERATIONS = 101  # mosquitto_passwd's default


def mosquitto_passwd_hash(password, username, salt_seed, iterations=MOSQUITTO_DEFAULT_ITERATIONS):
    """Return ``$7$...`` for *password*; salt = blake2b(seed, user)[:12]."""
    if not isinstance(password, str) or not password:
        raise AnsibleFilterError(f"mosquitto_passwd_hash: empty or non-string password for user '{username}'")
    if not isinstance(username, str) or not username or ":" in username:
        raise AnsibleFilterError(f"mosquitto_passwd_hash: invalid user name {username!r} (non-empty, no ':')")
    try:
        iterations = int(iterations)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"mosquitto_passwd_hash: iterations must be an integer, got {iterations!r}")
    if iterations < 1:
        raise AnsibleFilterError(f"mosquitto_passwd_hash: iterations must be >= 1, got {iterations}")
    salt = hashlib.blake2b(
        f"edgefleet-mosquitto\0{salt_seed}\0{username}".encode(), digest_size=MOSQUITTO_SALT_BYTES
    ).digest()
    return mosquitto_passwd_hash_with_salt(password, salt, iterations)


def mosquitto_passwd_hash_with_salt(password, salt, iterations=MOSQUITTO_DEFAULT_ITERATIONS):
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return "$7${}${}${}".format(
        iterations, base64.b64encode(salt).decode("ascii"), base64.b64encode(digest).decode("ascii")
    )


def subject_alt_names(names):
    """``['ctl.local', '10.0.0.5']`` -> ``['DNS:ctl.local', 'IP:10.0.0.5']`` (deduplicated, order kept)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise AnsibleFilterError(f"subject_alt_names: expected a list of names, got {names!r}")
    out = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise AnsibleFilterError(f"subject_alt_names: invalid entry {name!r} in {list(names)!r}")
        name = name.strip()
        try:
            entry = "IP:" + str(ipaddress.ip_address(name))
        except ValueError:
            if any(c in name for c in " /:@") or name.startswith(".") or ".." in name:
                raise AnsibleFilterError(f"subject_alt_names: {name!r} is neither an IP address nor a DNS name")
            entry = "DNS:" + name.lower()
        if entry not in out:
            out.append(entry)
    return out


def device_config_max(setting):
    """The maximum of a numeric device setting, as devconfig enforces it."""
    # imported here: tools that import this file for the password hash
    # alone (tools/pylib/broker.py) need no collection loader
    from ansible_collections.edgefleet.site.plugins.module_utils import devconfig

    rule = devconfig._RULES.get(setting)  # (kind, minimum, maximum); kept private on the device for its RAM
    if rule is None or rule[0] not in ("int", "num", "num_or_none"):
        numeric = sorted(n for n, r in devconfig._RULES.items() if r[0] in ("int", "num", "num_or_none"))
        raise AnsibleFilterError(f"device_config_max: {setting!r} is not a numeric device setting "
                                 f"(one of {', '.join(numeric)})")
    return rule[2]


def dashboard_without_datasource(text, uid):
    """*text* (a dashboard's JSON) without the panels, top-level or in rows,
    whose data source is *uid* (a row of such panels carries it too)."""
    try:
        dashboard = json.loads(text)
    except (TypeError, ValueError) as e:
        raise AnsibleFilterError(f"dashboard_without_datasource: not a dashboard's JSON: {e}")

    def keep(panels):
        out = []
        for panel in panels:
            ds = panel.get("datasource")
            if isinstance(ds, dict) and ds.get("uid") == uid:
                continue
            if isinstance(panel.get("panels"), list):
                panel = dict(panel, panels=keep(panel["panels"]))
            out.append(panel)
        return out

    dashboard["panels"] = keep(dashboard.get("panels") or [])
    return json.dumps(dashboard, indent=2) + "\n"


class FilterModule:
    def filters(self):
        return {
            "mosquitto_passwd_hash": mosquitto_passwd_hash,
            "subject_alt_names": subject_alt_names,
            "device_config_max": device_config_max,
            "dashboard_without_datasource": dashboard_without_datasource,
        }

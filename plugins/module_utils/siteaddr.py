# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Ansible side: the device-facing address of a site controller (``edgefleet_controller_address``).

Devices reach the controller by one name or IP address: the broker host
written into each board, the host of the OTA manifest's URLs, the devices'
default NTP server, and a name the server certificate must cover. These
helpers check such an address and whether a list of certificate names
covers it; the roles call them through the ``controller_address_problem``
and ``names_cover_address`` filters (plugins/filter/siteaddr.py).
"""

import ipaddress

MAX_NAME = 253
MAX_LABEL = 63
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _ip(value):
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def address_problem(value):
    """None when *value* is an IP address or a DNS name a device can dial;
    otherwise why not (a sentence naming the value)."""
    if not isinstance(value, str) or not value.strip():
        return "%r is not a host name or an IP address" % (value,)
    if value != value.strip():
        return "%r has white space around it" % (value,)
    if _ip(value) is not None:
        return None
    if ":" in value:
        return "%r is not an IP address (a port does not belong here: the ports have their own variables)" % (value,)
    if len(value) > MAX_NAME:
        return "%r is longer than %d characters" % (value, MAX_NAME)
    labels = value.lower().split(".")
    for label in labels:
        if not label:
            return "%r has an empty label (two dots, or a dot at an end)" % (value,)
        if len(label) > MAX_LABEL:
            return "%r has a label longer than %d characters" % (value, MAX_LABEL)
        if not set(label) <= _LABEL_CHARS:
            bad = sorted(set(label) - _LABEL_CHARS)
            return "%r contains %s: a DNS name has only letters, digits, '-' and '.'" % (value, " ".join(map(repr, bad)))
        if label[0] == "-" or label[-1] == "-":
            return "%r has a label that starts or ends with '-'" % (value,)
    if labels[-1].isdigit():
        return "%r looks like an IP address but is not one" % (value,)
    return None


def san(value):
    """The subjectAltName entry that covers *value*: ``IP:...`` or ``DNS:...`` (lower case)."""
    ip = _ip(value)
    return "IP:%s" % ip if ip is not None else "DNS:%s" % value.lower()


def covers(names, value):
    """True when the certificate names *names* (host names and IP addresses,
    as the site_ca role takes them) include *value*. Wildcards are not used
    by the site CA, so a name covers only itself."""
    want = san(value)
    for name in names:
        if isinstance(name, str) and name.strip() and address_problem(name.strip()) is None and san(name.strip()) == want:
            return True
    return False

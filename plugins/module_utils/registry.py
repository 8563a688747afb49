# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Ansible side: the device registry: boards registered at the flash station, kept in one
YAML inventory file inside the site's inventory directory
(``inventories/<site>/registry.yml``), which Ansible reads with the rest of
the inventory. Its hosts join ``fleet`` under their kind's group, exactly
like the devices written by hand in hosts.yml, so the broker role gives them
a user and ACL and every fleet playbook sees them.

The file is owned by the registry: it is rewritten whole, sorted, so the
same registrations give the same bytes (a clean git diff per new board).
A board already in the inventory (by MAC) is never registered again."""

import re

try:
    from ansible_collections.edgefleet.site.plugins.module_utils import identity
except ImportError:  # tests import it from plugins/module_utils directly
    import identity

HEADER = """\
# Boards registered by playbooks/flash.yml (module edgefleet.site.fleet_registry):
# one host per board, its id derived from its MAC (docs/architecture.md, section 3.1). The
# play rewrites this file whole, sorted; to retire a board, delete its entry
# (and its password file in the secrets directory).
"""
STAMP = re.compile(r"^\d{4}-\d\d-\d\d$")


class RegistryError(Exception):
    pass


def parse(data, where):
    """{device id: {mac, kind, registered}} from a loaded registry file (None: empty)."""
    if data is None:
        return {}
    try:
        kinds = data["all"]["children"]["fleet"]["children"]
        if not isinstance(kinds, dict):
            raise TypeError
    except (KeyError, TypeError):
        raise RegistryError("%s is not a registry file (all: children: fleet: children: <kind>: hosts:)" % where)
    devices = {}
    for kind, group in sorted(kinds.items()):
        hosts = (group or {}).get("hosts") or {}
        for device, hostvars in sorted(hosts.items()):
            where_host = "%s: host %s" % (where, device)
            try:
                id_kind, _suffix = identity.split_device_id(device)
                mac = identity.parse_mac((hostvars or {}).get("device_mac", ""))
            except ValueError as e:
                raise RegistryError("%s: %s" % (where_host, e))
            if id_kind != kind or identity.device_id(kind, mac) != device:
                raise RegistryError("%s is under kind %s with MAC %s, which makes %s" % (
                    where_host, kind, identity.format_mac(mac), identity.device_id(kind, mac)))
            devices[device] = {"mac": identity.format_mac(mac), "kind": kind,
                               "registered": str(hostvars.get("device_registered", ""))}
    return devices


def register(registered, known, boards, today):
    """Plan the registration of *boards* ([{mac, kind[, port]}]).

    *registered*: parse()'s result; *known*: {device id: mac} of the whole
    inventory (registry included). Returns (new registry, [per board
    {id, mac, kind, port, new}]). A MAC the inventory knows keeps its id,
    whatever kind the line is set to."""
    by_mac = {}
    for device, mac in known.items():
        if mac:
            try:
                by_mac[identity.format_mac(mac)] = device
            except ValueError:
                raise RegistryError("inventory host %s has device_mac %r, which is not a MAC" % (device, mac))
    out = {k: dict(v) for k, v in registered.items()}
    result = []
    for i, board in enumerate(boards):
        try:
            mac = identity.format_mac(board.get("mac", ""))
            kind = identity.check_kind(board.get("kind"))
        except (ValueError, AttributeError) as e:
            raise RegistryError("boards[%d] (port %s): %s" % (i, board.get("port") if isinstance(board, dict) else "?", e))
        if mac in by_mac:
            result.append({"id": by_mac[mac], "mac": mac, "kind": identity.split_device_id(by_mac[mac])[0],
                           "port": board.get("port"), "new": False})
            continue
        device = identity.device_id(kind, mac)
        if device in known and known[device]:
            # 40 bits of blake2s: two MACs with one id is a collision to
            # resolve by hand (and a reason to look at the MACs twice)
            raise RegistryError("board %s on port %s derives id %s, which inventory host %s already has with MAC %s"
                                % (mac, board.get("port"), device, device, known[device]))
        out[device] = {"mac": mac, "kind": kind, "registered": today}
        by_mac[mac] = device
        result.append({"id": device, "mac": mac, "kind": kind, "port": board.get("port"), "new": True})
    return out, result


def render(devices):
    """The registry file's text: deterministic for the same devices."""
    lines = [HEADER.rstrip("\n"), "all:", "  children:", "    fleet:", "      children:"]
    kinds = sorted({d["kind"] for d in devices.values()})
    if not kinds:
        lines[-1] += " {}"
    for kind in kinds:
        lines += ["        %s:" % kind, "          hosts:"]
        for device in sorted(d for d, v in devices.items() if v["kind"] == kind):
            entry = devices[device]
            extra = ', device_registered: "%s"' % entry["registered"] if STAMP.match(entry.get("registered", "")) else ""
            lines.append('            %s: {device_mac: "%s"%s}' % (device, entry["mac"], extra))
    return "---\n" + "\n".join(lines) + "\n"

# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Inventory plugin: the fleet as the site broker sees it, from the devices'
retained announce and status messages (docs/architecture.md, sections 3 and 5)."""

DOCUMENTATION = r"""
name: mqtt_fleet
short_description: The ESP32 fleet of a site, from its devices' retained MQTT announce and status
description:
  - Connects to the site broker as the controller's service user, takes the
    retained C(announce) and C(status) messages of every device of the site
    (topics C(site/<site>/<kind>/<device id>/announce|status)) and makes one
    host per device id seen, named by the device id.
  - Host variables C(device_id), C(device_kind), C(device_mac), C(device_chip),
    C(device_fw), C(device_ip), C(device_online) (false when the device has no
    status), C(device_cfg_version), C(device_uptime_s), C(device_rssi),
    C(device_metrics) (the URL of its /metrics), C(device_offline_reason)
    (null when online; else the reason its retained status gives, one of
    C(rebooting), C(updating), C(shutdown) (the simulator), C(connection_lost) (the
    broker's will), or null when it gives none), and the whole decoded
    payloads as C(device_announce) and C(device_status) (empty when none).
    C(ansible_host) is not set; devices are not SSH hosts, the fleet plugins
    run on the Ansible controller.
  - Groups. The parent group O(group) with one child group per kind (named like
    the kind, for example C(psu), as in the static site inventories),
    C(fw_<version>) per firmware version (characters other than
    C([A-Za-z0-9_]) replaced by C(_)), and C(online) / C(offline). Then the
    constructable options O(compose), O(groups) and O(keyed_groups) apply, to
    the host variables above.
  - Messages that do not follow the device contract are skipped with a warning
    naming the topic and the reason (not JSON, not a JSON object, an announce
    whose id differs from its topic or is not the id of its MAC, a kind the
    contract does not accept, a status whose C(online) is not true or false).
    An empty retained payload (a cleared retained message) is ignored.
  - Needs paho-mqtt 2.x on the Ansible controller (requirements.txt).
  - The file name must end with C(mqtt_fleet.yml) or C(mqtt_fleet.yaml).
options:
  plugin:
    description: Must be C(edgefleet.site.mqtt_fleet).
    required: true
    choices: [edgefleet.site.mqtt_fleet, mqtt_fleet]
  site:
    description: The site name, the second level of every device topic.
    type: str
    required: true
  broker_host:
    description: Host name or address of the site broker.
    type: str
    required: true
  broker_port:
    description: Port of the site broker (8883 is its TLS listener).
    type: int
    default: 8883
  tls:
    description: Connect with TLS, verifying the broker's certificate against O(ca_file).
    type: bool
    default: true
  ca_file:
    description:
      - The site CA (for example C(secrets/<site>/ca/ca.crt)). Required when O(tls) is true.
      - A relative path is taken from the current directory.
    type: path
  username:
    description: MQTT user name; the mosquitto role's ACL gives the C(controller) service user what this plugin needs.
    type: str
    default: controller
  password:
    description:
      - Password of O(username); may be vault-encrypted (C(!vault |)).
      - Give exactly one of O(password) and O(password_file).
    type: str
  password_file:
    description:
      - A file holding the password of O(username), for example
        C(secrets/<site>/mqtt/controller) where the mosquitto role keeps generated passwords.
        Surrounding white space is removed.
      - A relative path is taken from the current directory.
      - Give exactly one of O(password) and O(password_file).
    type: path
  timeout:
    description:
      - Seconds for connecting and taking the snapshot of the retained messages; the snapshot's waits get what
        connecting left.
    type: float
    default: 10
  group:
    description: Parent group of the devices' kind groups.
    type: str
    default: fleet
extends_documentation_fragment:
  - constructed
"""

EXAMPLES = r"""
# inventories/factory/mqtt_fleet.yml (ansible-inventory -i inventories/factory --graph)
plugin: edgefleet.site.mqtt_fleet
site: factory
broker_host: controller.factory.example
ca_file: secrets/factory/ca/ca.crt
password_file: secrets/factory/mqtt/controller

---
# a vault-encrypted password, plain MQTT, and groups of its own
plugin: edgefleet.site.mqtt_fleet
site: lab
broker_host: 127.0.0.1
broker_port: 1883
tls: false
password: !vault |
  $ANSIBLE_VAULT;1.1;AES256
  6132...
compose:
  weak_signal: device_rssi is not none and device_rssi < -80
groups:
  needs_attention: device_announce.problems is defined
keyed_groups:
  - key: device_chip
    prefix: chip
"""

import os
import re
import time

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

# the device contract (docs/architecture.md, section 3) and the controller's MQTT session
from ansible_collections.edgefleet.site.plugins.module_utils import contract, fleetmqtt, identity

try:  # ansible-core 2.19+: a string is a template only when tagged as trusted, which device data never is
    from ansible.module_utils._internal import _datatag  # noqa: F401  # pylint: disable=unused-import

    def _untrusted(value):
        return value
except ImportError:  # older ansible-core: mark device data unsafe, never templated
    from ansible.utils.unsafe_proxy import wrap_var as _untrusted

CHANNELS = ("announce", "status")
MAX_WARNINGS = 20  # skipped messages named one by one; beyond that only the total
_NOT_GROUP_CHAR = re.compile(r"[^A-Za-z0-9_]")
_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}\Z")


class Skip(ValueError):
    """A message that does not follow the device contract; str() is the reason."""


def message_topic(site, device_id, channel):
    """The topic a message came on (fleetmqtt checked that the kind level is
    the kind part of the device id)."""
    return "site/%s/%s/%s/%s" % (site, device_id.rpartition("-")[0], device_id, channel)


def fw_group(fw):
    """``'1.4.0-rc.1'`` -> ``'fw_1_4_0_rc_1'``."""
    return "fw_" + _NOT_GROUP_CHAR.sub("_", fw)


def check_device_id(device_id):
    """The kind of a device id; Skip when the id or its kind is not the contract's."""
    try:
        kind, _suffix = identity.split_device_id(device_id)
    except ValueError as e:
        raise Skip(str(e))
    return kind


def decode(payload):
    """The JSON object of a payload; Skip when it is not JSON or not an object."""
    try:
        return fleetmqtt.json_object(payload)
    except ValueError as e:
        raise Skip(str(e))


def check_announce(device_id, kind, data):
    """Validate an announce (already decoded) of *device_id* of *kind*;
    returns the MAC in the inventory's form; Skip with the reason otherwise."""
    announced = data.get("id")
    if announced != device_id:
        raise Skip("announce id %r differs from its topic's %s" % (announced, device_id))
    if "kind" in data and data["kind"] != kind:
        raise Skip("announce kind %r differs from the kind of its id (%s)" % (data["kind"], kind))
    text = data.get("mac")
    if not isinstance(text, str):
        raise Skip("announce mac %r is not a MAC address" % (text,))
    if _CANONICAL_MAC.match(text):  # what the firmware publishes: the fast path
        mac = bytes.fromhex(text.replace(":", ""))
    else:
        try:
            mac = identity.parse_mac(text)
        except ValueError:
            raise Skip("announce mac %r is not a MAC address" % (text,))
        text = ":".join("%02x" % b for b in mac)
    expected = kind + "-" + identity.short8(mac)
    if expected != device_id:
        raise Skip("announce id %s is not the id of its mac %s (that is %s): a foreign or forged device"
                   % (device_id, text, expected))
    fw = data.get("fw")
    if fw is not None and not isinstance(fw, str):
        raise Skip("announce fw %r is not a string" % (fw,))
    return text


def check_status(data):
    """Validate a status (already decoded); Skip with the reason otherwise."""
    online = data.get("online")
    if not isinstance(online, bool):
        raise Skip("status online %r is not true or false" % (online,))
    fw = data.get("fw")
    if fw is not None and not isinstance(fw, str):
        raise Skip("status fw %r is not a string" % (fw,))
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise Skip("status reason %r is not a string" % (reason,))


def fold(site, messages):
    """Fold messages ([(device_id, channel, payload, ...)], in arrival order:
    a later message of a device's channel replaces an earlier one) into
    ({device_id: host vars}, [(topic, reason) of each skipped message])."""
    seen = {}  # device_id -> [kind, announce, mac, status]
    bad_ids = {}  # device_id -> reason, so a bad id costs one check
    skipped = []
    for m in messages:
        device_id, channel, payload = m[0], m[1], m[2]
        if channel not in CHANNELS:
            continue
        if not payload:  # a cleared retained message: the channel has nothing now
            entry = seen.get(device_id)
            if entry is not None:
                if channel == "announce":
                    entry[1] = entry[2] = None
                else:
                    entry[3] = None
            continue
        try:
            entry = seen.get(device_id)
            if entry is None:
                if device_id in bad_ids:
                    raise Skip(bad_ids[device_id])
                try:
                    kind = check_device_id(device_id)
                except Skip as e:
                    bad_ids[device_id] = str(e)
                    raise
                entry = [kind, None, None, None]
            data = decode(payload)
            if channel == "announce":
                entry[2] = check_announce(device_id, entry[0], data)
                entry[1] = data
            else:
                check_status(data)
                entry[3] = data
            seen[device_id] = entry
        except Skip as e:
            skipped.append((message_topic(site, device_id, channel), str(e)))
    hosts = {}
    for device_id, (kind, announce, mac, status) in seen.items():
        if announce is None and status is None:
            continue  # both cleared
        hosts[device_id] = host_vars(device_id, kind, announce, mac, status)
    return hosts, skipped


def host_vars(device_id, kind, announce, mac, status):
    """The host variables of one device from its (validated) announce and status."""
    announce = announce or {}
    status = status or {}
    fw = status.get("fw")
    if fw is None:  # offline: the will {"online": false} carries no fw
        fw = announce.get("fw")
    return {
        "device_id": device_id, "device_kind": kind, "device_mac": mac,
        "device_chip": announce.get("chip"), "device_fw": fw, "device_ip": announce.get("ip"),
        "device_online": status.get("online") is True, "device_cfg_version": status.get("cfg_version"),
        "device_uptime_s": status.get("uptime_s"), "device_rssi": status.get("rssi"),
        "device_metrics": announce.get("metrics"), "device_announce": announce, "device_status": status,
        # why an offline device is offline, as its retained status says: rebooting, updating (its new
        # image never came back if this stays), shutdown, connection_lost (the will); None when online
        "device_offline_reason": None if status.get("online") is True else status.get("reason"),
    }


def host_groups(hostvars, parent="fleet"):
    """(the host's group under *parent*: its kind's group, or *parent* itself
    when the kind's name is a group of another meaning, [its firmware
    version's group (when it reports one), online or offline])."""
    kind = hostvars["device_kind"]
    others = [fw_group(hostvars["device_fw"])] if hostvars["device_fw"] else []
    others.append("online" if hostvars["device_online"] else "offline")
    return (parent if kind in (parent, "all", "ungrouped", "online", "offline") else kind), others


def skip_warnings(skipped, limit=MAX_WARNINGS):
    """The warnings for skipped messages: the first *limit* by name, then the total."""
    out = ["mqtt_fleet skipped %s: %s" % (topic, reason) for topic, reason in skipped[:limit]]
    if len(skipped) > limit:
        out.append("mqtt_fleet skipped %d messages in all (the first %d are named above)" % (len(skipped), limit))
    return out


def connection_settings(options):
    """Check the broker options (a dict of the plugin's options) and return
    FleetSession's keyword arguments; fleetmqtt.FleetMqttError otherwise."""
    try:
        contract.check_site(options["site"])
    except contract.ContractError as e:
        raise fleetmqtt.FleetMqttError("site: %s" % e)
    port = options["broker_port"]
    if not 0 < port < 65536:
        raise fleetmqtt.FleetMqttError("broker_port %r is not a port" % (port,))
    tls, ca_file = options["tls"], options.get("ca_file")
    if tls:
        if not ca_file:
            raise fleetmqtt.FleetMqttError("tls needs ca_file, the site CA (for example secrets/<site>/ca/ca.crt)")
        if not os.path.isfile(ca_file):
            raise fleetmqtt.FleetMqttError("the site CA %s does not exist (ca_file)" % ca_file)
    username = options["username"]
    password, password_file = options.get("password"), options.get("password_file")
    if (password is None) == (password_file is None):
        raise fleetmqtt.FleetMqttError("give exactly one of password and password_file (for MQTT user %s)"
                                       % username)
    if password_file is not None:
        try:
            with open(password_file) as f:
                password = f.read().strip()
        except (IOError, OSError) as e:
            raise fleetmqtt.FleetMqttError("cannot read the password of MQTT user %s from %s (password_file): %s"
                                           % (username, password_file, e.strerror or e))
        where = password_file
    else:
        where = "password"
    if not password:
        raise fleetmqtt.FleetMqttError("the password of MQTT user %s from %s is empty" % (username, where))
    if options["timeout"] <= 0:
        raise fleetmqtt.FleetMqttError("timeout must be positive, got %r" % (options["timeout"],))
    return {"host": options["broker_host"], "port": port, "username": username, "password": password,
            "site": options["site"], "tls": tls, "ca_file": ca_file if tls else None}


def snapshot(settings, timeout, channels=CHANNELS):
    """Connect, take the retained messages of *channels* of every device of
    the site, disconnect: ([Message], count of messages on topics that name
    no device). The whole within *timeout* seconds."""
    fleetmqtt.require_paho()
    deadline = time.monotonic() + timeout
    try:
        session = fleetmqtt.FleetSession(**settings)
    except (OSError, ValueError) as e:  # e.g. an unreadable or invalid CA file
        raise fleetmqtt.FleetMqttError("TLS setup for the broker %s:%d failed: %s"
                                       % (settings["host"], settings["port"], e))
    try:
        session.connect(timeout=timeout)
        session.subscribe(list(channels), timeout=max(round(deadline - time.monotonic(), 2), 0.01))
        return session.events(), session.foreign
    finally:
        session.close()


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "edgefleet.site.mqtt_fleet"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("mqtt_fleet.yml", "mqtt_fleet.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        started = time.perf_counter()
        self._read_config_data(path)
        options = {name: self.get_option(name) for name in (
            "site", "broker_host", "broker_port", "tls", "ca_file", "username", "password", "password_file",
            "timeout")}
        try:
            settings = connection_settings(options)
            messages, foreign = snapshot(settings, options["timeout"])
        except fleetmqtt.FleetMqttError as e:
            raise AnsibleParserError("%s: %s" % (to_native(path), e))
        received = time.perf_counter()
        hosts, skipped = fold(options["site"], messages)
        for warning in skip_warnings(skipped):
            self.display.warning(warning)
        if foreign:
            self.display.warning("mqtt_fleet skipped %d messages on topics of site %s that name no device "
                                 "(site/<site>/<kind>/<kind>-<short8>/...)" % (foreign, options["site"]))
        self._populate(hosts)
        self.display.vv("mqtt_fleet %s: %d hosts from %d messages (%d skipped); snapshot %.3f s, inventory %.3f s, "
                        "parse %.3f s" % (path, len(hosts), len(messages), len(skipped), received - started,
                                          time.perf_counter() - received, time.perf_counter() - started))

    def _populate(self, hosts):
        inventory = self.inventory
        parent = inventory.add_group(self.get_option("group"))
        compose, groups = self.get_option("compose"), self.get_option("groups")
        keyed_groups, strict = self.get_option("keyed_groups"), self.get_option("strict")
        known, homeless = {parent}, set()
        for name in sorted(hosts):
            hostvars = hosts[name]
            home, others = host_groups(hostvars, parent)
            if home not in known:
                known.add(inventory.add_group(home))
                inventory.add_child(parent, home)
            elif home == parent and hostvars["device_kind"] not in homeless:
                homeless.add(hostvars["device_kind"])
                self.display.warning("mqtt_fleet: devices of kind %s are not in a group of their kind: %s is "
                                     "a group of another meaning" % (hostvars["device_kind"], home))
            inventory.add_host(name, group=home)
            for group in others:
                if group not in known:
                    known.add(inventory.add_group(group))
                inventory.add_child(group, name)
            # straight onto the Host: InventoryManager's set_variable wrapper
            # deep-copies and origin-tags every value, 4 s for 10,000
            # devices; these are fresh json.loads values (dict, list, str,
            # int, float, bool, None), which it would pass unchanged, and no
            # string of them is trusted as a template (device data)
            host = inventory.get_host(name)
            for key, value in hostvars.items():
                host.set_variable(key, _untrusted(value))
            if compose:
                self._set_composite_vars(compose, hostvars, name, strict)
            if groups:
                self._add_host_to_composed_groups(groups, hostvars, name, strict, fetch_hostvars=bool(compose))
            if keyed_groups:
                self._add_host_to_keyed_groups(keyed_groups, hostvars, name, strict, fetch_hostvars=bool(compose))

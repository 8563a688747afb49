# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Inventory plugin: a generated fleet of devices for the lab and for tests."""

DOCUMENTATION = r"""
name: sim_fleet
short_description: A generated fleet of simulated ESP32 devices
description:
  - Adds I(count) devices to the C(fleet) group (and a group per kind), with MAC
    addresses counted up from I(mac_prefix). Host names are the device ids that
    the firmware derives from each MAC (the device contract's identity module,
    the same file the firmware runs).
  - Used by the lab so that the simulated fleet (C(python -m firmware.sim)) can
    run hundreds of devices, each with its own MQTT user and ACL.
options:
  plugin:
    description: Must be C(edgefleet.site.sim_fleet).
    required: true
    choices: [edgefleet.site.sim_fleet, sim_fleet]
  count:
    description: Number of devices.
    type: int
    required: true
  kinds:
    description: Device kinds, assigned round-robin.
    type: list
    elements: str
    default: [psu, oven, mixer, fan, env]
  mac_prefix:
    description: First three or four bytes of every MAC, as C(aa:bb:cc) or C(aa:bb:cc:dd).
    type: str
    default: "24:0a:c4:01"
  group:
    description: Parent group of the devices.
    type: str
    default: fleet
"""

EXAMPLES = r"""
# inventories/lab/sim_fleet.yml
plugin: edgefleet.site.sim_fleet
count: 200
"""

import os

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

# the device contract: the very file the firmware runs (docs/architecture.md, section 2)
from ansible_collections.edgefleet.site.plugins.module_utils import identity


def fleet_macs(mac_prefix, count):
    parts = mac_prefix.lower().split(":")
    if len(parts) not in (3, 4) or any(len(p) != 2 for p in parts):
        raise ValueError("mac_prefix %r must be 3 or 4 hex bytes like 24:0a:c4:01" % (mac_prefix,))
    try:
        prefix = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError("mac_prefix %r is not hexadecimal" % (mac_prefix,))
    free_bits = 8 * (6 - len(prefix))
    if not 0 < count <= 2 ** free_bits:
        raise ValueError("count %r does not fit the %d free bits after mac_prefix %s" % (count, free_bits, mac_prefix))
    width = 6 - len(prefix)
    return [":".join("%02x" % b for b in prefix + i.to_bytes(width, "big")) for i in range(1, count + 1)]


class InventoryModule(BaseInventoryPlugin):
    NAME = "edgefleet.site.sim_fleet"

    def verify_file(self, path):
        return super().verify_file(path) and os.path.basename(path) in ("sim_fleet.yml", "sim_fleet.yaml")

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        group = self.get_option("group")
        kinds = self.get_option("kinds")
        try:
            for kind in kinds:
                identity.check_kind(kind)
            macs = fleet_macs(self.get_option("mac_prefix"), self.get_option("count"))
        except ValueError as e:
            raise AnsibleParserError("%s: %s" % (path, e))
        self.inventory.add_group(group)
        for i, mac in enumerate(macs):
            kind = kinds[i % len(kinds)]
            name = identity.device_id(kind, mac)
            self.inventory.add_group(kind)
            self.inventory.add_child(group, kind)
            self.inventory.add_host(name, group=kind)
            self.inventory.set_variable(name, "device_mac", mac)
            self.inventory.set_variable(name, "device_simulated", True)
            # these simulated devices serve no /metrics: Prometheus leaves them out
            self.inventory.set_variable(name, "device_metrics_address", "")

#!/usr/bin/python
# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Documentation of the device_config action plugin (plugins/action/device_config.py).
The code runs on the Ansible controller, in the action plugin; this file only
documents it, as ansible.builtin.debug's module file does."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: device_config
short_description: Push each device's desired config over MQTT and confirm that it applied it
description:
  - An action plugin that runs on the Ansible controller and holds one MQTT session to the site broker for
    the whole fleet (run it once, with C(run_once)); it prints its progress while it waits.
  - Each device's desired config is the merge of dict variables from the inventory, in the order of
    I(config_vars) (by default C(device_config_fleet), C(device_config_kind), C(device_config); a setting
    of a later variable replaces the same setting of an earlier one). It is the whole desired state
    (docs/architecture.md, section 10); the device applies firmware defaults, then its flash-time config, then this.
  - Every desired config is checked against the device's own rules before anything is published; one bad
    value fails the task, naming the host, the variable and the value, and nothing is published.
  - The config is published retained on C(site/<site>/<kind>/<id>/cfg), its settings with a C(version), and
    the task waits for each online device's C(cfg/ack) of that version.
  - "Versions: the broker's retained C(cfg) is the record of what was desired, the device's retained
    C(status) says which version it applied. Unchanged settings keep their version and are not sent to a
    device that applied them; changed settings get max(retained + 1, reported + 1, seconds since
    2024-01-01 UTC). No state file; two controllers see the same retained messages."
  - "Per device result: C(applied), C(unchanged) (nothing sent), C(rejected) (with the device's reason),
    C(timed_out), or C(offline) (the retained config waits for it)."
  - A broker restart during the push is not a device failure. An offline status counts only once held 2 s with
    the controller's session up; after a lost session the task reconnects (for at most I(timeout)), publishes
    every unconfirmed config again, and takes a device's live status with that config version as its ack."
  - C(changed) is true only for devices that applied settings that differ from the ones they had.
version_added: "0.1.0"
author: edgefleet developers (!UNKNOWN)
extends_documentation_fragment:
  - edgefleet.site.fleet_broker
options:
  devices:
    description:
      - Device ids (inventory host names) to configure. Default the play's hosts (C(ansible_play_hosts)),
        so C(--limit) works.
    type: list
    elements: str
  config_vars:
    description: The inventory variables merged, in this order, into each device's desired config.
    type: list
    elements: str
    default: [device_config_fleet, device_config_kind, device_config]
  timeout:
    description: Seconds to wait for the acks after the configs were published.
    type: float
    default: 30.0
  max_failures:
    description:
      - How many devices may reject or time out before the task fails, as a count (C(3)) or a percentage
        of the devices (C("2%")).
    type: raw
    default: 0
  fail_offline:
    description: Count offline devices as failures too.
    type: bool
    default: false
notes:
  - Check mode connects and reads the retained messages but publishes nothing; it reports which devices
    would change. With C(--diff) it shows desired versus reported settings per device (in check mode and in
    a real run).
  - Run it with C(run_once) (playbooks/configure.yml does); each run handles every device in I(devices).
attributes:
  check_mode:
    description: Check mode (C(--check)) reports what would change and changes nothing.
    support: full
  diff_mode:
    description: Diff mode (C(--diff)) shows what changes, or in check mode what would change.
    support: full
  action:
    description: Runs as an action plugin on the Ansible controller; this module file holds its documentation.
    support: full
"""

EXAMPLES = r"""
# group_vars/fleet.yml:   device_config_fleet: {publish_interval_s: 10}
# group_vars/oven.yml:    device_config_kind: {setpoint_c: 220}
# host_vars/oven-tvcft64q.yml: device_config: {setpoint_c: 230}
- name: Configure the fleet
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Push and confirm the desired config
      edgefleet.site.device_config:
        timeout: 30
        max_failures: "1%"
      run_once: true
      delegate_to: localhost

- name: Configure the ovens through an explicit broker
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Configure the ovens
      edgefleet.site.device_config:
        devices: "{{ groups['oven'] }}"
        broker_host: controller.plant.example
        tls: true
        ca_file: secrets/plant/ca/ca.crt
"""

RETURN = r"""
devices:
  description:
    - Per device id. In a real run C(result) (applied, unchanged, rejected, timed_out, offline), C(version),
      C(changed), C(sent), C(detail) (the device's reason for a rejection).
    - In check mode C(result) is would_change, would_confirm (same settings, the device has not confirmed
      them), unchanged or offline, with C(reported_version) and C(online).
  returned: always
  type: dict
  sample: {"oven-tvcft64q": {"result": "applied", "version": 91234567, "changed": true, "sent": true, "detail": null}}
summary:
  description: Devices per result.
  returned: when not in check mode
  type: dict
  sample: {"applied": 3, "unchanged": 2, "rejected": 0, "timed_out": 0, "offline": 1}
outages:
  description:
    - Each broker session lost during the push (a broker restart), with C(lost_after_s) (since the push began) and
      C(back_after_s). The push reconnects, publishes every unconfirmed config again, and does not take the wills a
      stopping broker publishes for devices going offline.
  returned: when not in check mode
  type: list
  elements: dict
  sample: [{"lost_after_s": 0.41, "back_after_s": 1.2}]
would_change:
  description: Devices whose applied config would change.
  returned: in check mode
  type: list
  elements: str
"""

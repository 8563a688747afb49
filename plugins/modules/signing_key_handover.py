#!/usr/bin/python
# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Documentation of the signing_key_handover action plugin (plugins/action/signing_key_handover.py).
The code runs on the Ansible controller, in the action plugin; this file only
documents it, as ansible.builtin.debug's module file does."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: signing_key_handover
short_description: Hand every device over to the site's next OTA signing key, over MQTT, and confirm each
description:
  - An action plugin that runs on the Ansible controller over one MQTT session to the site broker (run it
    once, with C(run_once)). It prints its progress while it waits.
  - "It reads the CURRENT key and C(next.pub) from I(signing_dir) (the next key is made explicitly:
    edgefleet.site.ota_signing_key C(state=next)), signs the hand-over with the current key
    (C(contract.key_rotation_message), ECDSA P-256) and publishes the same C(signing_key) command
    (C(contract.signing_key_command)) to every online device on C(site/<site>/<kind>/<id>/cmd). A device checks
    the signature with the key it holds, keeps the new key, and answers on C(cmd/ack); the task waits for each
    answer."
  - "Per device: C(accepted), C(skipped) (accepted in an earlier run), C(rejected) with the device's reason,
    C(timed_out), or C(offline) (its retained status is not online: not sent)."
  - "C(handover.json) in I(signing_dir) records the devices that accepted, at once, so a run that stopped
    (an offline device, a rejection, a kill) goes on with the others: a device holding the new key would
    refuse a second hand-over signed by the old one. A record of another next key is refused (its devices
    trust that key)."
  - The task fails unless every device accepted (now or before). Only then may the key be promoted
    (edgefleet.site.ota_signing_key C(state=promoted)); C(playbooks/signing_key.yml) does the three steps in
    order.
  - The private keys never leave the Ansible controller; devices get the new public key and the signature.
version_added: "0.1.0"
author: edgefleet developers (!UNKNOWN)
extends_documentation_fragment:
  - edgefleet.site.fleet_broker
options:
  devices:
    description:
      - Device ids (inventory host names). Default the play's hosts (C(ansible_play_hosts)).
    type: list
    elements: str
  signing_dir:
    description: The key directory. Default C(<edgefleet_secrets_dir>/signing).
    type: path
  timeout:
    description: Seconds to wait for the answers after the commands were published.
    type: float
    default: 30.0
notes:
  - Check mode reads the retained statuses and the record and lists the devices that would get the hand-over;
    it publishes nothing and writes nothing.
  - After the promotion, re-sign the OTA manifest with the new key (C(site.yml --tags ota)); boards flashed
    from then on get the new public key.
attributes:
  check_mode:
    description: Check mode (C(--check)) reports what would change and changes nothing.
    support: full
  diff_mode:
    description: Diff mode gives no diff for this module.
    support: none
  action:
    description: Runs as an action plugin on the Ansible controller; this module file holds its documentation.
    support: full
"""

EXAMPLES = r"""
- name: Rotate the site's OTA signing key
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Create the next key (explicitly)
      edgefleet.site.ota_signing_key:
        dir: "{{ edgefleet_secrets_dir }}/signing"
        state: next
      run_once: true

    - name: Hand every device over to it
      edgefleet.site.signing_key_handover:
        timeout: 60
      run_once: true

    - name: Promote it once every device accepted
      edgefleet.site.ota_signing_key:
        dir: "{{ edgefleet_secrets_dir }}/signing"
        state: promoted
      run_once: true
"""

RETURN = r"""
devices:
  description: Per device id, its result (accepted, skipped, rejected, timed_out, offline; would_send in check mode) and detail.
  returned: always
  type: dict
  sample: {"psu-ktcyat68": {"result": "accepted", "detail": null}}
summary:
  description: Devices per result.
  returned: always
  type: dict
all_accepted:
  description: Whether every device holds the new key (the condition for promoting it).
  returned: unless in check mode
  type: bool
new_key:
  description: The new public key the devices were handed over to.
  returned: always
  type: str
current_key:
  description: The current public key that signed the hand-over.
  returned: always
  type: str
command_id:
  description: The id of the signing_key command (the same for every device and run of this hand-over).
  returned: always
  type: str
record:
  description: The hand-over record (C(handover.json)).
  returned: always
  type: str
"""

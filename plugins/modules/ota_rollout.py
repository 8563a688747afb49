#!/usr/bin/python
# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Documentation of the ota_rollout action plugin (plugins/action/ota_rollout.py).
The code runs on the Ansible controller, in the action plugin; this file only
documents it, as ansible.builtin.debug's module file does."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ota_rollout
short_description: Roll a firmware image out to ESP32 devices over MQTT, in waves, with abort and resume
description:
  - An action plugin that runs on the Ansible controller over one MQTT session to the site broker (run it
    once, with C(run_once)). It prints the progress of each wave while it runs.
  - "Devices already on I(image.version) (their retained C(status)) are skipped. The others are put into
    waves: a canary wave of I(canary) devices, then waves of the sizes in I(waves) (counts or percentages of
    the devices to update; the last entry repeats), or, with I(increment_factor), each wave that factor larger
    than the one before. Wave membership is a stable shuffle of the device ids by I(rollout_id)."
  - "A wave's devices get the OTA command (docs/architecture.md, section 3.4) at once. A device succeeds when all of these
    hold: it reported C(confirmed) for this command, it is online on the new version, and it stayed online on
    that version for I(soak) seconds. C(failed), C(rolled_back), going offline or coming back on another version
    during the soak, and no confirmation within I(device_timeout) are failures."
  - The rollout aborts when the failed devices among those executed (succeeded or failed) pass
    I(abort_percent), once at least I(abort_min_executed) have executed. After an abort no further device is
    commanded; devices of the current wave are still followed to their end; the result names the wave and the
    reason.
  - "Devices offline when their wave comes are not commanded (C(offline)); a later run commands them."
  - "Signed images only: before anything is read or commanded (check mode too), the image's C(signature) must
    verify with the site's signing key (I(signing_key_file)) over its payload, version, size, sha256 and
    security_version, as every device checks it. An edited manifest, an image entry changed by hand, or a
    manifest signed by another key (one written before a key rotation) stops the task, and nothing is
    commanded."
  - "Resume: every device's state is kept in a state file named by I(rollout_id) and the image's sha256
    (C(<state_dir>/<rollout_id>-<sha256 prefix>.json)), written before each wave's commands are published.
    Run the same task again after the controller was killed at any point: it keeps the waves it planned,
    never commands a device again that it commanded before, follows the devices it was waiting for (the
    retained status shows a device that finished meanwhile) and carries on with the next wave. An aborted
    rollout stays aborted; start a new I(rollout_id) to try again."
version_added: "0.1.0"
author: edgefleet developers (!UNKNOWN)
extends_documentation_fragment:
  - edgefleet.site.fleet_broker
options:
  rollout_id:
    description: Names the rollout and its state file; 1-40 of C(A-Z a-z 0-9 . _ -).
    type: str
    required: true
  image:
    description:
      - The image, as the OTA server's manifest lists it (C(playbooks/ota.yml) reads it from there). Extra keys
        (such as C(name)) are ignored.
    type: dict
    required: true
    suboptions:
      version:
        description: The version the devices report once updated (1-32 characters).
        type: str
        required: true
      payload:
        description: C(app) (an app bundle) or C(firmware) (a MicroPython image).
        type: str
        choices: [app, firmware]
        default: app
      url:
        description: Where devices download it (the OTA server, as devices reach it); plain C(http://) only.
        type: str
        required: true
      sha256:
        description: The image's sha256 (64 hex digits); devices install nothing else.
        type: str
        required: true
      size:
        description: The image's size in bytes.
        type: int
        required: true
      security_version:
        description:
          - The image's security version (anti-rollback), signed with it. Required (the manifest carries it); a
            missing one fails the task naming the image.
        type: int
      signature:
        description:
          - The site signing key's signature over payload, version, size, sha256 and security_version (128 hex
            digits, r||s). Required (the manifest carries it); devices install nothing unsigned.
        type: str
  devices:
    description: Device ids (inventory host names). Default the play's hosts (C(ansible_play_hosts)).
    type: list
    elements: str
  canary:
    description: Devices in the first wave. 0 for none.
    type: int
    default: 1
  waves:
    description:
      - Sizes of the waves after the canary, each a count (C(10)) or a percentage of the devices to update
        (C("25%")). The last entry repeats until every device has a wave.
      - With I(increment_factor), exactly one entry, the first wave's size.
    type: list
    elements: raw
    default: ["100%"]
  increment_factor:
    description: Each wave after the first is this much larger (rounded up), like AWS IoT Jobs' exponential rate.
    type: float
  abort_percent:
    description: Abort when more than this percentage of the executed devices failed.
    type: float
    default: 10.0
  abort_min_executed:
    description: The abort rule applies once at least this many devices have executed.
    type: int
    default: 1
  device_timeout:
    description: Seconds from a device's command to its confirmation, online on the new version.
    type: float
    default: 300.0
  download_timeout:
    description: The device's own limit for the download (the command's C(timeout_s)); default the firmware's.
    type: int
  soak:
    description:
      - Seconds a device must stay online on the new version after confirming it, without a reset (its uptime
        drops) or a silence longer than 2 x its telemetry interval (C(publish_interval_s)) + 5 s.
      - The task warns when the soak is shorter than that silence limit (a hung device could pass it).
    type: float
    default: 60.0
  max_attempts:
    description: Commands per device at most, the first included (see O(recommand_after)).
    type: int
    default: 3
  recommand_after:
    description:
      - Seconds a commanded device may be back online on the old version, after its command, with no report of
        any of its commands, before it is commanded again with a new command id (its command or download died
        with a session). Also how long a device online on the new version whose confirmed report was lost
        waits before its soak starts.
    type: float
    default: 30.0
  outage_grace:
    description:
      - Seconds after the controller's broker session is back during which offline reports are the outage's
        (a broker restart publishes every device's will), not failures; a soaking device must be back by then.
    type: float
    default: 120.0
  outage_max:
    description: Seconds the run tries to get its broker session back; then it stops with its state saved (rerun to resume).
    type: float
    default: 300.0
  state_dir:
    description: Where state files live. Default C(<edgefleet_secrets_dir>/rollouts).
    type: path
  signing_key_file:
    description:
      - The site's signing public key (the contract's 130 hex digits), which the image's signature must verify
        with. Default C(<edgefleet_secrets_dir>/signing/current.pub), where the ota_signing role keeps it.
    type: path
notes:
  - Check mode reads the retained statuses and lists the waves and their devices; it commands nothing and
    writes no state file.
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
- name: Canary, then 10%, then the rest
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Roll out app 0.9.0
      edgefleet.site.ota_rollout:
        rollout_id: app-0.9.0
        image:
          version: 0.9.0
          payload: app
          url: http://ctl-1:8080/app/0.9.0/app-0.9.0.bundle
          sha256: 9f2c4b0e0d8a6c1e3b5a7d9f1e2c4b6a8d0f2e4c6b8a0d2f4e6c8b0a2d4f6e8c
          size: 48211
          security_version: 0
          # from the ota_server role's manifest, which the Ansible controller signed
          signature: "{{ lookup('ansible.builtin.file', 'signature-app-0.9.0.txt') }}"
        canary: 2
        waves: ["10%", "100%"]
        abort_percent: 5
        abort_min_executed: 10
        soak: 120
      run_once: true

- name: Exponential waves (1, 5, 10, 20, 40, ...)
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Roll out MicroPython 1.27.0
      edgefleet.site.ota_rollout:
        rollout_id: fw-1.27.0
        image: "{{ manifest.images | selectattr('version', 'eq', '1.27.0') | first }}"
        canary: 1
        waves: [5]
        increment_factor: 2
      run_once: true
"""

RETURN = r"""
waves:
  description: Per wave (numbered from 1, the canary), its devices and the count of devices per state.
  returned: always
  type: list
  elements: dict
  sample: [{"wave": 1, "size": 1, "devices": ["psu-ktcyat68"], "counts": {"succeeded": 1}}]
devices:
  description:
    - Per device id, its state (succeeded, failed, timed_out, rolled_back, skipped, offline, pending), wave and detail.
    - C(attempts) lists each command (id, at, why) of a device commanded more than once.
  returned: always
  type: dict
summary:
  description: Devices per state.
  returned: always
  type: dict
aborted:
  description: The wave that tripped the abort and why, or null.
  returned: always
  type: dict
  sample: {"wave": 2, "reason": "3 of 10 executed devices failed (30.0% > 10%)", "at": 1795537982.6}
state_file:
  description: The rollout's state file (not written in check mode).
  returned: always
  type: str
resumed:
  description: Whether this run continued a rollout from its state file.
  returned: always
  type: bool
left_out:
  description: Planned devices not finished that are outside this run's selection (--limit, devices), left as they are.
  returned: always
  type: list
  elements: str
outages:
  description: Each time the broker session was lost during the run (wave, lost_at, back_after_s).
  returned: always
  type: list
  elements: dict
"""

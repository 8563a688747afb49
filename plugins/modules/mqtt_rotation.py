#!/usr/bin/python
# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Documentation of the mqtt_rotation action plugin (plugins/action/mqtt_rotation.py).
The code runs on the Ansible controller, in the action plugin; this file only
documents it, as ansible.builtin.debug's module file does."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mqtt_rotation
short_description: Rotate devices' MQTT passwords over the air, proven on the broker's next listener first
description:
  - An action plugin that runs on the Ansible controller (run it once, with C(run_once)). One phase per call
    (I(state)); C(playbooks/rotate.yml) runs them in order with the mosquitto role in between.
  - "C(prepared): makes C(<user>.next), a new random password, in the secrets directory for each device that has
    none (a run that stopped keeps it). The mosquitto role then puts it in the password file of the broker's next
    listener (C(mosquitto_rotation_port)); the main listeners keep the current one."
  - "C(staged): over one MQTT session, sends each online device with a C(<user>.next) a C(rotate) command
    (C(rotatecmd.rotate_command)) with its next password and the next listener's port, on its own cmd topic. The
    device keeps the new password beside the old one, ends its session, connects to the next listener with the new
    password and answers accepted from there: that answer is the proof. A device that cannot prove it goes back to
    the main listener with the old password and answers rejected with the reason. Proofs are recorded at once in
    C(rotation.json)."
  - "C(retired): for each device that proved its next password, C(<user>.next) replaces C(<user>); the mosquitto
    role then puts it on the main listeners and the old password is gone. Devices that did not prove keep their old
    password valid on the main listener and are returned in C(missed), unless named in I(force)."
  - "Passwords are never printed or returned. A device whose password comes from C(mosquitto_passwords) (the
    inventory) is refused: rotate it there."
version_added: "0.1.0"
author: edgefleet developers (!UNKNOWN)
extends_documentation_fragment:
  - edgefleet.site.fleet_broker
options:
  state:
    description: The phase.
    type: str
    required: true
    choices: [prepared, staged, retired]
  secret:
    description:
      - "C(password): each device's own MQTT password (files C(<user>.next) in I(secrets_dir))."
      - "C(ca): the site CA, for the whole fleet. The site_ca role makes the next CA in C(<ca_dir>/next/)
        (C(site_ca_next=true)) and the mosquitto role serves its server certificate on the next listener. C(staged)
        sends every device the next CA's certificate; a device proves it by verifying the next listener with it
        (it keeps trusting the old CA on the main listeners meanwhile). C(retired) promotes the next CA (the old
        one moves to C(<ca_dir>/previous/<time>/)) only when every device of the fleet (C(mosquitto_fleet_group))
        proved it or is in I(force), and the run covers the whole fleet; otherwise nothing changes and the result
        names the devices. Then the site_ca role reissues the main listeners' certificate from the new CA, and a
        device that connects with it drops the old CA. C(prepared) does nothing for C(ca)."
    type: str
    default: password
    choices: [password, ca]
  ca_dir:
    description: The site CA's directory (C(secret=ca)). Default C(<edgefleet_secrets_dir>/ca).
    type: path
  devices:
    description:
      - Device ids (inventory host names). Default the play's hosts (C(ansible_play_hosts)).
    type: list
    elements: str
  secrets_dir:
    description: The passwords' directory. Default C(mosquitto_secrets_dir), else C(<edgefleet_secrets_dir>/mqtt).
    type: path
  port:
    description:
      - The next listener's port, sent to the devices. Default C(mosquitto_rotation_port) (8884); with
        C(mosquitto_rotation_enabled=false) the C(staged) phase is refused.
    type: int
  timeout:
    description: Seconds to wait for the proofs after the commands were published (C(staged)).
    type: float
    default: 30.0
  force:
    description:
      - Devices (of this run) whose old password is retired although they did not prove the next one
        (C(retired)). They cannot connect until they are re-flashed (a flash writes the new password).
    type: list
    elements: str
    default: []
  password_length:
    description: Length of a new password (C(prepared)), letters and digits.
    type: int
    default: 32
notes:
  - Check mode makes no file, sends nothing and retires nothing; it lists what each phase would do. Diff mode
    names the files and devices that change, never a password.
attributes:
  check_mode:
    description: Check mode (C(--check)) reports what would change and changes nothing.
    support: full
  diff_mode:
    description: Names the next password files made and the devices whose old password is retired.
    support: full
  action:
    description: Runs as an action plugin on the Ansible controller; this module file holds its documentation.
    support: full
"""

EXAMPLES = r"""
- name: Stage the next passwords (after the mosquitto role put them on the next listener)
  edgefleet.site.mqtt_rotation:
    state: staged
    timeout: 60
  run_once: true

- name: Retire the old passwords of the devices that proved theirs, and of psu-ktcyat68 anyway
  edgefleet.site.mqtt_rotation:
    state: retired
    force: [psu-ktcyat68]
  run_once: true
"""

RETURN = r"""
devices:
  description: Per device id, its result and detail (no password).
  returned: always
  type: dict
  sample: {"psu-ktcyat68": {"result": "proven", "detail": "proven on port 8884"}}
summary:
  description: Devices per result.
  returned: always
  type: dict
proven:
  description: Devices that proved their next password (now or in an earlier run).
  returned: state=staged, not in check mode
  type: list
  elements: str
missed:
  description: Devices that did not prove it (offline, rejected, timed out); their old password stays valid.
  returned: state=staged or retired
  type: list
  elements: str
all_proven:
  description: Whether every rotating device of the run proved its next password.
  returned: state=staged, not in check mode
  type: bool
retired:
  description: Devices whose next password replaced the current one.
  returned: state=retired
  type: list
  elements: str
forced:
  description: Devices retired without proof (I(force)); they need a re-flash.
  returned: state=retired
  type: list
  elements: str
would_send:
  description: Devices that would get the rotate command.
  returned: state=staged, in check mode
  type: list
  elements: str
port:
  description: The next listener's port sent to the devices.
  returned: state=staged
  type: int
previous:
  description: Where the old CA went (C(secret=ca), C(state=retired), when it was promoted).
  returned: when the next CA was promoted
  type: str
secret:
  description: What was rotated (password or ca).
  returned: except state=prepared with secret=ca
  type: str
ca_dir:
  description: The site CA's directory.
  returned: secret=ca, except state=prepared
  type: str
record:
  description: The rotation record (C(rotation.json)).
  returned: always
  type: str
secrets_dir:
  description: The passwords' directory.
  returned: always
  type: str
"""

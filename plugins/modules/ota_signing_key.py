#!/usr/bin/python
# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Documentation of the ota_signing_key action plugin (plugins/action/ota_signing_key.py).
The code runs on the Ansible controller, in the action plugin; this file only
documents it, as ansible.builtin.debug's module file does."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ota_signing_key
short_description: The site's OTA signing key on the Ansible controller, created once and never regenerated implicitly
description:
  - An action plugin that runs in the Ansible controller's own process and opens no connection, so the private
    key never leaves I(dir) on the Ansible controller. Devices install only images signed by this key (ECDSA
    P-256 with SHA-256, C(plugins/module_utils/contract.py)); every board gets its public key at flash time.
  - "I(dir) holds C(current.key) (the private key, PEM, mode 0600) and C(current.pub) (its public key as
    130 lower-case hex digits, C(04||X||Y), the contract's form); during a rotation also C(next.key),
    C(next.pub) and C(handover.json) (which devices accepted the next key); after one C(previous.key) and
    C(previous.pub), and earlier ones with the finished hand-over records in C(retired/). The directory is
    made mode 0700."
  - "C(state=present): creates the current key when I(dir) holds no key at all, otherwise checks it. A public
    file without its private key, a private key that does not match its public file, a key that is not
    P-256, or a missing current key beside other keys (an interrupted rotation) fails with the files named
    and the way out; nothing is ever replaced. A private key without its public file gets one."
  - "C(state=next): the same for the next key of a rotation, only on request (nothing creates it implicitly);
    the current key must exist. A missing next key while C(handover.json) records a hand-over in progress
    is refused: devices that accepted it trust that key."
  - "C(state=promoted): the next key becomes the current key, the old current key becomes C(previous) (an
    earlier C(previous) and the hand-over record move to C(retired/)). Only after every device accepted the
    hand-over (edgefleet.site.signing_key_handover; C(playbooks/signing_key.yml) does both in order). It also
    finishes a promotion that was interrupted between its renames."
version_added: "0.1.0"
author: edgefleet developers (!UNKNOWN)
options:
  dir:
    description: The key directory on the Ansible controller, normally C(<edgefleet_secrets_dir>/signing).
    type: path
    required: true
  state:
    description: C(present), C(next) or C(promoted), as described above.
    type: str
    choices: [present, next, promoted]
    default: present
notes:
  - Check mode writes nothing and reports what would be created or promoted. The ota_signing role runs
    C(state=present) with C(check_mode=false), as the site_ca role creates the CA in check mode, because the
    OTA manifest cannot be rendered unsigned; nothing on a target changes.
  - Back the directory up with the rest of the secrets directory (docs/operations.md); a lost private key
    means re-flashing every board.
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
- name: Create the site's signing key once, check it on every run
  edgefleet.site.ota_signing_key:
    dir: "{{ edgefleet_secrets_dir }}/signing"
  run_once: true
  check_mode: false
  register: signing

- name: Start a rotation (explicitly) by creating signing/next.*
  edgefleet.site.ota_signing_key:
    dir: "{{ edgefleet_secrets_dir }}/signing"
    state: next
  run_once: true

- name: Finish it, once every device accepted the hand-over
  edgefleet.site.ota_signing_key:
    dir: "{{ edgefleet_secrets_dir }}/signing"
    state: promoted
  run_once: true
"""

RETURN = r"""
public_key:
  description: The current public key (130 hex digits); null in check mode before it exists.
  returned: always
  type: str
  sample: 04a1b2c3...
private_key_path:
  description: Path of the current private key on the Ansible controller (the key itself is never returned).
  returned: always
  type: str
public_key_path:
  description: Path of the current public key file.
  returned: always
  type: str
created:
  description: Whether a key was (or, in check mode, would be) created.
  returned: with state=present or next
  type: bool
next_public_key:
  description: The next key's public key (null in check mode before it exists).
  returned: with state=next
  type: str
previous_public_key:
  description: The public key that was current before the promotion.
  returned: with state=promoted, unless in check mode
  type: str
"""

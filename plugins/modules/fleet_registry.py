#!/usr/bin/python
# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""fleet_registry: register new boards in the site inventory."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_registry
short_description: Register boards found at the flash station in the site inventory
description:
  - Runs on the Ansible controller (C(delegate_to) localhost). Given the boards a flash station found
    (MAC and the kind of the line they were plugged into), it writes every board the inventory does not
    know yet into one registry file in the site's inventory directory (C(inventories/<site>/registry.yml)),
    as a host of C(fleet) under its kind's group, named by the id its MAC derives (C(<kind>-<short8>)).
  - A board whose MAC the inventory already has keeps its id (even if the line's kind differs).
  - The file is rewritten whole and sorted, atomically; the same registrations give the same bytes.
  - The passwords of new devices are not made here. The broker role generates each device's password
    into the secrets directory when it next runs, as for every device (C(playbooks/flash.yml) runs it
    right after this).
version_added: "0.1.0"
author: edgefleet developers (!UNKNOWN)
options:
  path:
    description: The registry file, inside the site's inventory directory so that Ansible reads it.
    type: path
    required: true
  boards:
    description: Boards to register, from C(edgefleet.site.esp32_flash) with C(state=identified).
    type: list
    elements: dict
    required: true
    suboptions:
      mac:
        description: The board's MAC.
        type: str
        required: true
      kind:
        description: The device kind this board becomes if it is new.
        type: str
        required: true
      port:
        description: Where the board is plugged in (reported back).
        type: str
  known:
    description:
      - "Every device the inventory has now, as C({device id: MAC}) (hosts without a MAC may map to an empty
        string). Boards with one of these MACs are not registered again."
    type: dict
    default: {}
  today:
    description: Registration date written with new entries (C(YYYY-MM-DD)); default today (UTC).
    type: str
notes:
  - Check mode reports the boards that would be registered and writes nothing; C(--diff) shows the file
    before and after.
attributes:
  check_mode:
    description: Check mode (C(--check)) reports what would change and changes nothing.
    support: full
  diff_mode:
    description: Diff mode (C(--diff)) shows what changes, or in check mode what would change.
    support: full
"""

EXAMPLES = r"""
- name: Register the boards this station found
  edgefleet.site.fleet_registry:
    path: "{{ inventory_dir }}/registry.yml"
    boards: "{{ found.boards | selectattr('mac') | map('combine', {'kind': flash_kind}) }}"
    known: "{{ dict(groups['fleet'] | zip(groups['fleet'] | map('extract', hostvars) | map(attribute='device_mac', default=''))) }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
devices:
  description: Per board, the id it has in the inventory after this task.
  returned: always
  type: list
  elements: dict
  contains:
    id: {description: Device id., type: str, sample: psu-ktcyat68}
    mac: {description: The board's MAC., type: str, sample: "24:0a:c4:12:34:01"}
    kind: {description: Device kind., type: str, sample: psu}
    port: {description: Where the board is plugged in., type: str}
    new: {description: Registered by this task (it was not in the inventory)., type: bool}
new_devices:
  description: Ids registered by this task.
  returned: always
  type: list
  elements: str
"""

import datetime
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgefleet.site.plugins.module_utils import registry


def main():
    module = AnsibleModule(argument_spec=dict(
        path=dict(type="path", required=True),
        boards=dict(type="list", elements="dict", required=True, options=dict(
            mac=dict(type="str", required=True), kind=dict(type="str", required=True), port=dict(type="str"))),
        known=dict(type="dict", default={}),
        today=dict(type="str"),
    ), supports_check_mode=True)
    p = module.params
    path = p["path"]
    today = p["today"] or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    if not registry.STAMP.match(today):
        module.fail_json(msg="today must be YYYY-MM-DD, got %r" % today)
    if not os.path.isdir(os.path.dirname(path) or "."):
        module.fail_json(msg="the registry's directory %s does not exist: path must be inside the site's inventory "
                         "directory" % os.path.dirname(path))
    before = ""
    if os.path.exists(path):
        with open(path) as f:
            before = f.read()
    try:
        import yaml  # ansible-core's own dependency

        current = registry.parse(yaml.safe_load(before) if before else None, path)
        devices, boards = registry.register(current, p["known"], p["boards"], today)
    except yaml.YAMLError as e:
        module.fail_json(msg="%s is not valid YAML: %s" % (path, e))
    except registry.RegistryError as e:
        module.fail_json(msg=str(e))
    after = registry.render(devices)
    new = [b["id"] for b in boards if b["new"]]
    changed = bool(new)  # an existing file is rewritten only to add boards
    result = dict(changed=changed, devices=boards, new_devices=new)
    if module._diff:
        result["diff"] = {"before": before, "after": after, "before_header": path, "after_header": path}
    if changed and not module.check_mode:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".registry-")
        with os.fdopen(fd, "w") as f:
            f.write(after)
        os.chmod(tmp, 0o644)
        module.atomic_move(tmp, path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

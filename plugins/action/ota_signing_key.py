# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Action plugin edgefleet.site.ota_signing_key: the site's OTA signing key
in the secrets directory on the Ansible controller (created once, checked on
every run, never regenerated implicitly; a next key for a rotation only on
request, promoted once the fleet accepted it). It runs in the controller's own
process and never opens a connection, so the private key cannot reach a
target. Documentation: plugins/modules/ota_signing_key.py; logic:
plugins/module_utils/otasign.py."""

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.edgefleet.site.plugins.module_utils import otasign

ARGSPEC = dict(
    dir=dict(type="path", required=True),
    state=dict(type="str", choices=["present", "next", "promoted"], default="present"),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars or {})
        _validation, args = self.validate_argument_spec(argument_spec=ARGSPEC)
        try:
            result.update(self._run(args["dir"], args["state"], self._task.check_mode))
        except otasign.SigningKeyError as e:
            raise AnsibleActionFail("ota_signing_key: %s" % e)
        except (IOError, OSError) as e:
            raise AnsibleActionFail("ota_signing_key: %s: %s" % (getattr(e, "filename", None) or args["dir"],
                                                                 e.strerror or e))
        return result

    @staticmethod
    def _run(directory, state, check_mode):
        out = {"dir": directory}
        changed = False
        if state == "promoted":
            if check_mode:
                if os.path.exists(otasign.key_paths(directory, "next")[0]):
                    otasign.load_pair(directory, "next")
                changed, out["msg"] = True, "check mode: the next key would become the current key"
            else:
                done = otasign.promote(directory)
                changed = done["changed"]
                out["previous_public_key"] = done["previous_public_key"]
                out["msg"] = "the next key %s... is now the current key; the old one is previous.*" % (
                    done["public_key"][:20])
        elif state == "next":
            done = otasign.ensure_key(directory, "next", dry_run=check_mode)
            changed = done["changed"]
            out.update(next_public_key=done["public_key"], next_public_key_path=done["public_key_path"],
                       created=done["created"])
            out["msg"] = "%s the next key%s" % (
                ("would create" if check_mode else "created") if done["created"] else "checked",
                " %s..." % done["public_key"][:20] if done["public_key"] else "")
        current = otasign.ensure_key(directory, "current", dry_run=check_mode)
        if state == "present":
            out["created"] = current["created"]
            out["msg"] = "%s the current key%s" % (
                ("would create" if check_mode else "created") if current["created"] else "checked",
                " %s..." % current["public_key"][:20] if current["public_key"] else "")
        out.update(public_key=current["public_key"], private_key_path=current["key_path"],
                   public_key_path=current["public_key_path"], changed=changed or current["changed"])
        return out

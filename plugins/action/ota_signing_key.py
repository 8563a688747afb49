# -*- coding: utf-8 -*-
"""Action plugin edgefleet.site.ota_signing_key: the site's OTA signing key
in the secrets directory on the Ansible controller (created once, checked on
every run, never regenerated implicitly). It runs in the controller's own
process and never opens a connection, so the private key cannot reach a
target. Documentation: plugins/modules/ota_signing_key.py; logic:
plugins/module_utils/otasign.py."""

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.edgefleet.site.plugins.module_utils import otasign

ARGSPEC = dict(
    dir=dict(type="path", required=True),
    state=dict(type="str", choices=["present"], default="present"),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars or {})
        _, args = self.validate_argument_spec(argument_spec=ARGSPEC)
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
        current = otasign.ensure_key(directory, "current", dry_run=check_mode)
        verb = ("would create" if check_mode else "created") if current["created"] else "checked"
        return {"dir": directory, "created": current["created"], "changed": current["changed"],
                "public_key": current["public_key"], "private_key_path": current["key_path"],
                "public_key_path": current["public_key_path"],
                "msg": "%s the current key%s" % (verb, " %s..." % current["public_key"][:20]
                                                  if current["public_key"] else "")}

# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Action plugin edgefleet.site.ota_rollout: roll a firmware image out in
waves over one MQTT session, with abort threshold, soak and resume.
Documentation: plugins/modules/ota_rollout.py; logic:
plugins/module_utils/rollout.py (plan, device tracker, state file) and
plugins/module_utils/rolloutrun.py (the executor over a broker session).
This plugin is the Ansible glue: arguments, check mode, display, result."""

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.edgefleet.site.plugins.module_utils import contract, fleetmqtt, otasign, rollout, rolloutrun

display = Display()

IMAGE_SPEC = dict(version=dict(type="str", required=True),
                  payload=dict(type="str", choices=list(contract.OTA_PAYLOADS), default="app"),
                  url=dict(type="str", required=True),
                  sha256=dict(type="str", required=True),
                  size=dict(type="int", required=True),
                  # required too, checked by rollout.check_image to name the image
                  security_version=dict(type="int"),
                  signature=dict(type="str"))
ARGSPEC = dict(
    rollout_id=dict(type="str", required=True),
    image=dict(type="dict", required=True, options=IMAGE_SPEC),
    devices=dict(type="list", elements="str"),
    canary=dict(type="int", default=1),
    waves=dict(type="list", elements="raw", default=["100%"]),
    increment_factor=dict(type="float"),
    abort_percent=dict(type="float", default=10.0),
    abort_min_executed=dict(type="int", default=1),
    device_timeout=dict(type="float", default=300.0),
    download_timeout=dict(type="int"),
    soak=dict(type="float", default=60.0),
    max_attempts=dict(type="int", default=3),
    recommand_after=dict(type="float", default=30.0),
    outage_grace=dict(type="float", default=120.0),
    outage_max=dict(type="float", default=300.0),
    state_dir=dict(type="path"),
    signing_key_file=dict(type="path"),
    **fleetmqtt.BROKER_ARGS
)


class _Display(rolloutrun.Output):
    def say(self, text, color=None):
        display.display(text, color=color)

    def warn(self, text):
        display.warning(text)


class _Parent(object):
    """Ansible runs the rollout in a worker process that has its own
    session: a SIGKILL of ansible-playbook does not reach it. It watches its
    parent and stops when that is gone, so a resumed run never races it."""

    def __init__(self):
        self.parent = os.getppid()

    def __call__(self):
        return os.getppid() != self.parent and self.parent != 1


def _wave_size(entry):
    """Inventory values may arrive as strings ("10" from a template)."""
    if isinstance(entry, str) and entry.strip().isdigit():
        return int(entry)
    return entry


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        image = self._task.args.get("image")
        if isinstance(image, dict):  # a manifest entry: its other keys (name, ...) are not ours
            self._task.args["image"] = dict((k, v) for k, v in image.items() if k in IMAGE_SPEC)
        _validation, args = self.validate_argument_spec(argument_spec=ARGSPEC)
        try:
            devices = fleetmqtt.target_devices(args["devices"], task_vars)
        except fleetmqtt.FleetMqttError as e:
            raise AnsibleActionFail("ota_rollout: %s" % e)
        bad = [d for d in devices if contract.parse_topic("site/x/%s/%s/cmd" % (d.rpartition("-")[0], d)) is None]
        if bad:
            raise AnsibleActionFail("ota_rollout: not device ids (<kind>-<short8>): %s" % ", ".join(bad[:20]))
        image = dict(args["image"])
        image["sha256"] = image["sha256"].lower()
        waves = [_wave_size(w) for w in args["waves"]]
        try:
            rollout.check_rollout_id(args["rollout_id"])
            image = rollout.check_image(image, args["rollout_id"])
            command_id = rollout.command_id(args["rollout_id"], image["sha256"])
            contract.ota_command(command_id, image["payload"], image["version"], image["url"], image["size"],
                                 image["sha256"], image["security_version"], image["signature"],
                                 args["download_timeout"])
            rollout.plan_waves(devices, args["rollout_id"], args["canary"], waves, args["increment_factor"])
            policy = rollout.AbortPolicy(args["abort_percent"], args["abort_min_executed"])
            for name in ("device_timeout", "soak", "recommand_after", "outage_grace", "outage_max"):
                if args[name] < 0 or (name in ("device_timeout", "outage_max") and args[name] == 0):
                    raise rollout.RolloutError("%s: %r is not a number of seconds" % (name, args[name]))
            if args["max_attempts"] < 1:
                raise rollout.RolloutError("max_attempts: %r is not a count >= 1 (commands per device)"
                                           % (args["max_attempts"],))
        except (rollout.RolloutError, contract.ContractError) as e:
            raise AnsibleActionFail("ota_rollout: %s" % e)
        try:
            inventory_vars = fleetmqtt.site_vars(task_vars, self._templar.template)
        except fleetmqtt.FleetMqttError as e:
            raise AnsibleActionFail("ota_rollout: %s" % e)
        check_signature(image, args["signing_key_file"], inventory_vars.get("edgefleet_secrets_dir"))
        state_dir = args["state_dir"]
        if not state_dir:
            secrets = inventory_vars.get("edgefleet_secrets_dir")
            if not secrets:
                raise AnsibleActionFail("ota_rollout: set state_dir (or edgefleet_secrets_dir, whose rollouts/ "
                                        "holds the state files)")
            state_dir = os.path.join(secrets, "rollouts")
        path = rollout.state_path(state_dir, args["rollout_id"], image["sha256"])
        try:
            session = fleetmqtt.open_session(args, inventory_vars)
        except fleetmqtt.FleetMqttError as e:
            raise AnsibleActionFail("ota_rollout: %s" % e)
        opts = dict((k, args[k]) for k in ("rollout_id", "device_timeout", "soak", "connect_timeout",
                                           "download_timeout", "canary", "increment_factor", "max_attempts",
                                           "recommand_after", "outage_grace", "outage_max"))
        try:
            run = rolloutrun.RolloutRun(session, opts, devices, image, waves, policy, path,
                                        check_mode=self._task.check_mode, output=_Display(), should_stop=_Parent())
            try:
                run.run()
                return run.report(result)
            finally:
                run.close()
        except (fleetmqtt.FleetMqttError, rollout.RolloutError) as e:
            raise AnsibleActionFail("ota_rollout: %s" % e)
        finally:
            session.close()


def check_signature(image, key_file, secrets):
    """Refuse an image whose signature the site's signing key did not make
    (an edited manifest, another site's key, a key rotated since the
    manifest was written): devices would refuse it one by one."""
    if not key_file:
        if not secrets:
            raise AnsibleActionFail("ota_rollout: set signing_key_file (or edgefleet_secrets_dir, whose "
                                    "signing/current.pub is the site's signing key)")
        key_file = os.path.join(secrets, "signing", "current.pub")
    try:
        public = otasign.read_public_file(key_file)
        ok = otasign.verify_entry(public, image["payload"], image["version"], image["size"], image["sha256"],
                                  image["security_version"], image["signature"])
    except otasign.SigningKeyError as e:
        raise AnsibleActionFail("ota_rollout: cannot check the signature of image %s: %s. Nothing was commanded."
                                % (rollout.image_name(image), e))
    if not ok:
        raise AnsibleActionFail(
            "ota_rollout: the signature of image %s (sha256 %s, security_version %d) does not verify with the site's "
            "signing key %s (%s...): the manifest or the image entry was edited, or another key signed it (after a "
            "key rotation, run the ota_server role again to re-sign the manifest). Devices would refuse it; nothing "
            "was commanded." % (rollout.image_name(image), image["sha256"], image["security_version"], key_file,
                                public[:20]))

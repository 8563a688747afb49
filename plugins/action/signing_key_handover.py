# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Action plugin edgefleet.site.signing_key_handover: hand every device
over to the site's next OTA signing key (signed by the current one) over one
MQTT session, and wait for each device's cmd/ack. Documentation:
plugins/modules/signing_key_handover.py; logic:
plugins/module_utils/handover.py and otasign.py."""

import json
import os
import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.edgefleet.site.plugins.module_utils import commands, contract, fleetmqtt, handover, otasign

display = Display()

ARGSPEC = dict(
    devices=dict(type="list", elements="str"),
    signing_dir=dict(type="path"),
    timeout=dict(type="float", default=30.0),
    **fleetmqtt.BROKER_ARGS
)
PROGRESS_EVERY_S = 2.0


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=ARGSPEC)
        try:
            devices = fleetmqtt.target_devices(args["devices"], task_vars)
            inventory_vars = fleetmqtt.site_vars(task_vars, self._templar.template)
        except fleetmqtt.FleetMqttError as e:
            raise AnsibleActionFail("signing_key_handover: %s" % e)
        bad = [d for d in devices if contract.parse_topic("site/x/%s/%s/cmd" % (d.rpartition("-")[0], d)) is None]
        if bad:
            raise AnsibleActionFail("signing_key_handover: not device ids (<kind>-<short8>): %s" % ", ".join(bad[:20]))
        if args["timeout"] <= 0:
            raise AnsibleActionFail("signing_key_handover: timeout %r is not a number of seconds" % args["timeout"])
        directory = args["signing_dir"]
        if not directory:
            secrets = inventory_vars.get("edgefleet_secrets_dir")
            if not secrets:
                raise AnsibleActionFail("signing_key_handover: set signing_dir (or edgefleet_secrets_dir, whose "
                                        "signing/ holds the keys)")
            directory = os.path.join(secrets, "signing")
        record = os.path.join(directory, otasign.HANDOVER)
        try:
            current, current_hex = otasign.load_pair(directory, "current")
            if self._task.check_mode and not os.path.exists(otasign.key_paths(directory, "next")[0]):
                # check mode of a rotation whose next key the real run creates first
                new_hex, cmd, state = None, None, handover.HandoverState.empty(record)
            else:
                _new_key, new_hex = otasign.load_pair(directory, "next")
                signature = otasign.sign_handover(current, new_hex)
                if not otasign.verify_handover(current_hex, new_hex, signature):
                    raise otasign.SigningKeyError("the hand-over signature does not verify with current.pub")
                state = handover.HandoverState.open(record, new_hex)
                # expires when this task stops waiting: a device away longer refuses it (expired); a rerun sends again
                cmd = json.dumps(commands.with_expiry(contract.signing_key_command(state.command_id, new_hex, signature),
                                                      time.time(), args["timeout"]), sort_keys=True)
        except otasign.SigningKeyError as e:
            raise AnsibleActionFail("signing_key_handover: %s (create the next key first: ota_signing_key "
                                    "state=next, as playbooks/signing_key.yml does)" % e)
        except (handover.HandoverError, contract.ContractError, commands.CommandError) as e:
            raise AnsibleActionFail("signing_key_handover: %s" % e)
        try:
            session = fleetmqtt.open_session(args, inventory_vars)
        except fleetmqtt.FleetMqttError as e:
            raise AnsibleActionFail("signing_key_handover: %s" % e)
        try:
            return self._run(session, args, devices, state, cmd, current_hex, new_hex, result)
        except fleetmqtt.FleetMqttError as e:
            raise AnsibleActionFail("signing_key_handover: %s" % e)
        finally:
            session.close()

    def _run(self, session, args, devices, state, cmd, current_hex, new_hex, result):
        started = time.monotonic()
        session.subscribe(["status", "cmd/ack"], timeout=args["connect_timeout"])
        statuses = {}
        for m in session.events():
            if m.channel == "status":
                statuses[m.device_id] = fleetmqtt.decode(m.payload)
        plan = handover.plan(devices, state, statuses)
        to_send = [d for d in plan if d.state == handover.SENT]
        result.update(new_key=new_hex, current_key=current_hex, command_id=state.command_id,
                      record=state.path)
        if self._task.check_mode:
            for d in to_send:
                d.state, d.detail = handover.WOULD_SEND, None
            return self._report(plan, result, check=True)
        by_id = dict((d.id, d) for d in to_send)
        for d in to_send:
            session.publish(d.id, "cmd", cmd)
        session.flush(timeout=max(10.0, args["timeout"]))
        display.display("signing_key_handover: sent the hand-over to %s... to %d device(s) (%d accepted before, %d "
                        "offline); waiting for their answers" % (new_hex[:20], len(to_send),
                                                                 sum(1 for d in plan if d.state == handover.SKIPPED),
                                                                 sum(1 for d in plan if d.state == handover.OFFLINE)))
        deadline = time.monotonic() + args["timeout"]
        next_progress = time.monotonic() + PROGRESS_EVERY_S
        waiting = len(to_send)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for m in session.events(timeout=min(left, 0.2)):
                d = by_id.get(m.device_id)
                if d is None or m.channel != "cmd/ack":
                    continue
                if d.on_ack(fleetmqtt.decode(m.payload), state.command_id):
                    waiting -= 1
                    if d.state == handover.ACCEPTED:
                        state.accept(d.id, time.time())
                        state.save()  # at once: that device now trusts only the new key
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_EVERY_S
                display.display(self._progress(plan, started))
        for d in to_send:
            d.timed_out(args["timeout"])
        state.save()
        display.display(self._progress(plan, started))
        return self._report(plan, result)

    @staticmethod
    def _progress(plan, started):
        c = handover.summarize(plan)
        return ("signing_key_handover: %d devices: %d accepted, %d accepted before, %d rejected, %d timed out, "
                "%d offline; waiting for %d (%.1f s)" % (len(plan), c["accepted"], c["skipped"], c["rejected"],
                                                         c["timed_out"], c["offline"], c["sent"],
                                                         time.monotonic() - started))

    @staticmethod
    def _report(plan, result, check=False):
        result["devices"] = dict((d.id, d.as_dict()) for d in plan)
        counts = dict((k, v) for k, v in handover.summarize(plan).items() if v)
        if check:
            would = sorted(d.id for d in plan if d.state == handover.WOULD_SEND)
            result.update(changed=bool(would), would_send=would, summary=counts)
            result["msg"] = "check mode: %d device(s) would get the hand-over; nothing was sent" % len(would)
            return result
        result["summary"] = counts
        result["changed"] = any(d.state == handover.ACCEPTED for d in plan)
        failed = [d for d in plan if d.state in handover.FAILURES]
        result["all_accepted"] = not failed
        if failed:
            result["failed"] = True
            lines = ["%s: %s (%s)" % (d.id, d.state, d.detail) for d in failed[:20]]
            if len(failed) > 20:
                lines.append("... and %d more" % (len(failed) - 20))
            result["msg"] = ("%d of %d device(s) were not handed over to the new key; the key must not be promoted "
                             "until every device accepted it (run the same task again: devices that accepted are "
                             "not sent it again):\n%s" % (len(failed), len(plan), "\n".join(lines)))
        else:
            result["msg"] = "every device (%d) holds the new key: %d now, %d before" % (
                len(plan), counts.get("accepted", 0), counts.get("skipped", 0))
        return result

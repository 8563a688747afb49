# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Action plugin edgefleet.site.mqtt_rotation: rotate devices' MQTT
passwords over the air in two phases (prepare the next passwords, stage
and prove them on the broker's next listener, retire the old ones).
Documentation: plugins/modules/mqtt_rotation.py; logic:
plugins/module_utils/rotation.py."""

import json
import os
import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.edgefleet.site.plugins.module_utils import contract, fleetmqtt, rotation

display = Display()

ARGSPEC = dict(
    state=dict(type="str", required=True, choices=["prepared", "staged", "retired"]),
    secret=dict(type="str", default="password", choices=["password", "ca"]),
    ca_dir=dict(type="path"),
    devices=dict(type="list", elements="str"),
    secrets_dir=dict(type="path"),
    port=dict(type="int"),
    timeout=dict(type="float", default=30.0),
    force=dict(type="list", elements="str", default=[]),
    password_length=dict(type="int", default=32),
    **fleetmqtt.BROKER_ARGS
)
PROGRESS_EVERY_S = 2.0


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_diff = True

    def _var(self, task_vars, name, default=None):
        if name not in task_vars:
            return default
        try:
            return self._templar.template(task_vars[name])
        except Exception as e:  # the templar's errors name no variable
            raise AnsibleActionFail("mqtt_rotation: inventory variable %s: %s" % (name, e))

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=ARGSPEC)
        group = task_vars.get("groups", {}).get(self._var(task_vars, "mosquitto_fleet_group", "fleet")) or []
        self._fleet = sorted(group)
        try:
            devices = fleetmqtt.target_devices(args["devices"], task_vars)
            inventory_vars = fleetmqtt.site_vars(task_vars, self._templar.template)
        except fleetmqtt.FleetMqttError as e:
            raise AnsibleActionFail("mqtt_rotation: %s" % e)
        bad = [d for d in devices + list(args["force"])
               if contract.parse_topic("site/x/%s/%s/cmd" % (d.rpartition("-")[0], d)) is None]
        if bad:
            raise AnsibleActionFail("mqtt_rotation: not device ids (<kind>-<short8>): %s" % ", ".join(bad[:20]))
        stray = sorted(set(args["force"]) - set(devices))
        if stray:
            raise AnsibleActionFail("mqtt_rotation: force names devices outside this run: %s" % ", ".join(stray))
        if args["timeout"] <= 0:
            raise AnsibleActionFail("mqtt_rotation: timeout %r is not a number of seconds" % args["timeout"])
        directory = args["secrets_dir"] or self._var(task_vars, "mosquitto_secrets_dir")
        if not directory:
            secrets = inventory_vars.get("edgefleet_secrets_dir")
            if not secrets:
                raise AnsibleActionFail("mqtt_rotation: set secrets_dir (or edgefleet_secrets_dir, whose mqtt/ holds "
                                        "the passwords)")
            directory = os.path.join(secrets, "mqtt")
        check = self._task.check_mode
        pem = None
        try:
            if args["secret"] == "ca":
                ca_dir = args["ca_dir"] or os.path.join(inventory_vars.get("edgefleet_secrets_dir") or "", "ca")
                if not args["ca_dir"] and not inventory_vars.get("edgefleet_secrets_dir"):
                    raise rotation.RotationError("set ca_dir (or edgefleet_secrets_dir, whose ca/ holds the site CA)")
                if args["state"] == "prepared":
                    result.update(changed=False, msg="the site_ca role makes the next CA (site_ca_next=true)")
                    return result
                pem = rotation.read_next_ca(ca_dir)
                record = rotation.Record.open(rotation.ca_record_path(ca_dir))
                result.update(ca_dir=ca_dir)
            else:
                rotation.check_rotatable(devices, directory, inventory_vars.get("mosquitto_passwords"))
                record = rotation.Record.open(os.path.join(directory, rotation.RECORD))
        except rotation.RotationError as e:
            raise AnsibleActionFail("mqtt_rotation: %s" % e)
        result.update(record=record.path, secrets_dir=directory, secret=args["secret"])
        if args["state"] == "prepared":
            return self._prepare(args, devices, directory, result, check)
        if args["state"] == "retired":
            if pem is not None:
                return self._retire_ca(args, devices, ca_dir, pem, record, result, check)
            return self._retire(args, devices, directory, record, result, check)
        port = args["port"]
        if port is None:
            if not _true(self._var(task_vars, "mosquitto_rotation_enabled", True)):
                raise AnsibleActionFail("mqtt_rotation: the broker's next listener is disabled "
                                        "(mosquitto_rotation_enabled: false): a device has nowhere to prove a new "
                                        "password. Enable it (the broker restarts once), then rotate; nothing was sent")
            port = self._var(task_vars, "mosquitto_rotation_port", 8884)
        try:
            port = int(port)
            if not 0 < port < 65536:
                raise ValueError
        except (TypeError, ValueError):
            raise AnsibleActionFail("mqtt_rotation: port %r (task port or mosquitto_rotation_port) is not a port"
                                    % (port,))
        try:
            session = fleetmqtt.open_session(args, inventory_vars)
        except fleetmqtt.FleetMqttError as e:
            raise AnsibleActionFail("mqtt_rotation: %s" % e)
        try:
            return self._stage(session, args, devices, directory, record, port, result, check, pem)
        except fleetmqtt.FleetMqttError as e:
            raise AnsibleActionFail("mqtt_rotation: %s" % e)
        finally:
            session.close()

    def _prepare(self, args, devices, directory, result, check):
        try:
            made = rotation.prepare(devices, directory, args["password_length"], check=check)
        except rotation.RotationError as e:
            raise AnsibleActionFail("mqtt_rotation: %s" % e)
        new = sorted(d for d, s in made.items() if s in (rotation.CREATED, rotation.WOULD_CREATE))
        result.update(changed=bool(new), devices=dict((d, {"result": s}) for d, s in made.items()))
        result["msg"] = "%s a next password for %d device(s) (%d kept from an earlier run)" % (
            "would make" if check else "made", len(new), len(made) - len(new))
        if self._task.diff and new:
            result["diff"] = {"before": "", "after": "".join("%s%s\n" % (d, rotation.NEXT) for d in new),
                              "before_header": directory, "after_header": directory}
        return result

    def _retire(self, args, devices, directory, record, result, check):
        try:
            plan = rotation.plan_retire(devices, directory, record, set(args["force"]))
            done = rotation.retire(plan, directory, record, check=check)
        except (rotation.RotationError, OSError) as e:
            raise AnsibleActionFail("mqtt_rotation: %s" % e)
        result["devices"] = dict((d.id, d.as_dict()) for d in plan)
        result["summary"] = rotation.summarize(plan)
        missed = sorted(d.id for d in plan if d.state == rotation.MISSED)
        forced = sorted(d.id for d in plan if d.state == rotation.FORCED or (check and d.id in args["force"]))
        result.update(changed=bool(done), retired=sorted(done), missed=missed, forced=forced)
        if self._task.diff and done:
            result["diff"] = {"before": "".join("%s: old password valid on the main listener\n" % d for d in done),
                              "after": "".join("%s: next password on the main listener, old one gone\n" % d
                                               for d in done)}
        result["msg"] = "%s %d device(s)%s" % ("would retire the old password of" if check else
                                               "retired the old password of", len(done),
                                               ("; still on their old password (missed, named in 'missed'): %s"
                                                % ", ".join(missed[:20])) if missed else "")
        return result

    def _retire_ca(self, args, devices, ca_dir, pem, record, result, check):
        """The next CA is promoted only when every device of the run proved it or is forced, and only for
        the whole fleet: one server certificate serves them all."""
        fleet = self._fleet
        plan = rotation.plan_retire_ca(devices, pem, record, set(args["force"]))
        result["devices"] = dict((d.id, d.as_dict()) for d in plan)
        result["summary"] = rotation.summarize(plan)
        missed = sorted(d.id for d in plan if d.state == rotation.MISSED)
        forced = sorted(d.id for d in plan if d.state == rotation.FORCED)
        result.update(missed=missed, forced=forced, retired=[])
        outside = sorted(set(fleet) - set(devices))
        if missed or outside:
            result["changed"] = False
            result["msg"] = ("the next CA is not promoted: %s. Nothing was changed; the main listeners keep the old "
                             "CA's certificate" % "; ".join(
                                 (["%d device(s) did not prove it (named in 'missed'): %s" % (
                                     len(missed), ", ".join(missed[:20]))] if missed else [])
                                 + (["the run leaves out %d device(s) of the fleet (--limit?): %s" % (
                                     len(outside), ", ".join(outside[:20]))] if outside else [])))
            return result
        result["retired"] = sorted(d.id for d in plan)
        result["changed"] = True
        if self._task.diff:
            result["diff"] = {"before": "main listeners: the current CA's certificate\n",
                              "after": "main listeners: the next CA's certificate (next CA promoted)\n"}
        if check:
            result["msg"] = "would promote the next CA in %s" % ca_dir
            return result
        try:
            result["previous"] = rotation.promote_ca(ca_dir, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        except (rotation.RotationError, OSError) as e:
            raise AnsibleActionFail("mqtt_rotation: %s" % e)
        result["msg"] = ("promoted the next CA in %s (the old one is in %s): run the mosquitto role to serve the "
                         "new CA's certificate on the main listeners" % (ca_dir, result["previous"]))
        return result

    def _stage(self, session, args, devices, directory, record, port, result, check, pem=None):
        started = time.monotonic()
        session.subscribe(["status", "cmd/ack"], timeout=args["connect_timeout"])
        statuses = {}
        for m in session.events():
            if m.channel == "status":
                statuses[m.device_id] = fleetmqtt.decode(m.payload)
        if pem is not None:
            plan = rotation.plan_stage_ca(devices, pem, record, statuses)
        else:
            plan = rotation.plan_stage(devices, directory, record, statuses)
        to_send = [d for d in plan if d.state == rotation.SENT]
        result["port"] = port
        if check:
            for d in to_send:
                d.state = rotation.WOULD_SEND
            return self._report(plan, result, check=True)
        for d in to_send:
            if pem is not None:
                cmd = rotation.stage_ca_command(pem, port, time.time(), args["timeout"])
            else:
                cmd = rotation.stage_command(d.id, directory, port, time.time(), args["timeout"])
            session.publish(d.id, "cmd", json.dumps(cmd, sort_keys=True))
            cmd = None
        session.flush(timeout=max(10.0, args["timeout"]))
        display.display("mqtt_rotation: sent the next password to %d device(s) (%d proven before, %d offline); "
                        "waiting for their proofs from port %d" % (
                            len(to_send), sum(1 for d in plan if d.state == rotation.SKIPPED),
                            sum(1 for d in plan if d.state == rotation.OFFLINE), port))
        by_id = dict((d.id, d) for d in to_send)
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
                if d.on_ack(fleetmqtt.decode(m.payload)):
                    waiting -= 1
                    if d.state == rotation.PROVEN:
                        record.prove(d.id, d.cmd_id, time.time())
                        record.save()  # at once: a kill keeps the proof
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_EVERY_S
                display.display("mqtt_rotation: %s (%.1f s)" % (rotation.summarize(plan), time.monotonic() - started))
        for d in to_send:
            d.timed_out(args["timeout"])
        return self._report(plan, result)

    @staticmethod
    def _report(plan, result, check=False):
        result["devices"] = dict((d.id, d.as_dict()) for d in plan)
        result["summary"] = rotation.summarize(plan)
        if check:
            would = sorted(d.id for d in plan if d.state == rotation.WOULD_SEND)
            result.update(changed=bool(would), would_send=would)
            result["msg"] = ("check mode: %d device(s) would get their next password on port %d; nothing was sent"
                             % (len(would), result["port"]))
            return result
        result["changed"] = any(d.state == rotation.PROVEN for d in plan)
        missed = sorted(d.id for d in plan if d.state in rotation.STAGE_FAILURES)
        result["proven"] = sorted(d.id for d in plan if d.state in (rotation.PROVEN, rotation.SKIPPED))
        result["missed"] = missed
        result["all_proven"] = not missed
        lines = ["%s: %s (%s)" % (d.id, d.state, d.detail) for d in plan if d.state in rotation.STAGE_FAILURES][:20]
        result["msg"] = "%d device(s) proved their next password%s" % (
            len(result["proven"]), (("; %d did not, and keep their old password on the main listener until they "
                                     "prove it or are retired with force:\n%s") % (len(missed), "\n".join(lines)))
            if missed else "")
        return result


def _true(value):
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")

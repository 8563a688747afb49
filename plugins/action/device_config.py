# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Action plugin edgefleet.site.device_config: push each device's desired
config (from inventory) over one MQTT session and confirm it. Documentation:
plugins/modules/device_config.py; logic: plugins/module_utils/fleetcfg.py."""

import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.edgefleet.site.plugins.module_utils import fleetcfg, fleetmqtt

display = Display()

ARGSPEC = dict(
    devices=dict(type="list", elements="str"),
    config_vars=dict(type="list", elements="str", default=list(fleetcfg.DEFAULT_VARS)),
    timeout=dict(type="float", default=30.0),
    max_failures=dict(type="raw", default=0),
    fail_offline=dict(type="bool", default=False),
    **fleetmqtt.BROKER_ARGS
)


def progress_line(outcomes, started):
    counts = fleetcfg.summarize(o for o in outcomes if not o.pending)
    waiting = sum(1 for o in outcomes if o.pending)
    return "device_config: %d devices: %d applied, %d unchanged, %d rejected, %d timed out, %d offline; " \
           "waiting for %d (%.1f s)" % (len(outcomes), counts["applied"], counts["unchanged"], counts["rejected"],
                                        counts["timed_out"], counts["offline"], waiting, time.monotonic() - started)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=ARGSPEC)
        started = time.monotonic()

        try:
            devices = fleetmqtt.target_devices(args["devices"], task_vars)
            limit = fleetcfg.tolerance(args["max_failures"], len(devices))
        except (fleetmqtt.FleetMqttError, fleetcfg.FleetConfigError) as e:
            raise AnsibleActionFail("device_config: %s" % e)
        hostvars = task_vars.get("hostvars") or {}

        current = {}  # hostvars[device] resolves all of a host's variables (about 1 ms): once per device

        def lookup(device, var):
            if current.get("device") != device:
                if device not in hostvars:
                    raise AnsibleActionFail("device_config: %s is not a host of the inventory" % device)
                current.update(device=device, vars=hostvars[device])
            host = current["vars"]
            return host[var] if var in host else None

        desired, errors = fleetcfg.collect_desired(devices, lookup, args["config_vars"])
        if errors:
            shown = errors[:50]
            more = "\n... and %d more" % (len(errors) - 50) if len(errors) > 50 else ""
            raise AnsibleActionFail("device_config: nothing was published: %d device(s) have a bad desired config:\n%s%s"
                                    % (len(errors), "\n".join(shown), more))
        try:
            inventory_vars = fleetmqtt.site_vars(task_vars, self._templar.template)
            session = fleetmqtt.open_session(args, inventory_vars)
        except fleetmqtt.FleetMqttError as e:
            raise AnsibleActionFail("device_config: %s" % e)
        try:
            return self._run(session, args, devices, desired, limit, started, result)
        except fleetmqtt.FleetMqttError as e:
            raise AnsibleActionFail("device_config: %s" % e)
        finally:
            session.close()

    def _run(self, session, args, devices, desired, limit, started, result):
        # what the broker holds: the retained cfg (last desired) and status
        # (what each device applied, and whether it is online)
        session.subscribe(["cfg", "status", "cfg/ack"], timeout=args["connect_timeout"])
        retained, status = {}, {}
        for m in session.events():
            if m.channel == "cfg":
                retained[m.device_id] = m.payload
            elif m.channel == "status":
                status[m.device_id] = m.payload
        session.unsubscribe(["cfg"])  # our own publishes would come back
        now = time.time()
        plans = [fleetcfg.Plan(d, desired[d], retained.get(d), status.get(d), now) for d in devices]
        if self._task.diff:
            diffs = [p.diff() for p in plans if p.would_change]
            if diffs:
                result["diff"] = diffs
        if self._task.check_mode:
            return self._check_mode(plans, result, started)

        outcomes = [fleetcfg.Outcome(p) for p in plans]
        push = fleetcfg.Push(session, outcomes, args["timeout"], connect_timeout=args["connect_timeout"],
                             progress=lambda outcomes: display.display(progress_line(outcomes, started)),
                             say=lambda text: display.display(text, color="yellow"))
        display.display("device_config: publishing %d config(s) of %d devices, then waiting for their acks"
                        % (sum(1 for o in outcomes if o.sent), len(devices)))
        push.run()
        display.display(progress_line(outcomes, started))

        summary = fleetcfg.summarize(outcomes)
        result["devices"] = dict((o.plan.device, o.as_dict()) for o in outcomes)
        result["summary"] = summary
        result["changed"] = any(o.changed for o in outcomes)
        result["outages"] = push.outages
        failed = [o for o in outcomes if o.result in fleetcfg.FAILURES]
        offline = [o for o in outcomes if o.result == "offline"]
        problems = list(failed)
        if args["fail_offline"]:
            problems += offline
        if len(problems) > limit:
            result["failed"] = True
            lines = ["%s: %s (%s)" % (o.plan.device, o.result, o.detail) for o in problems[:20]]
            if len(problems) > 20:
                lines.append("... and %d more" % (len(problems) - 20))
            result["msg"] = "%d device(s) did not apply their config (tolerated: %d):\n%s" % (
                len(problems), limit, "\n".join(lines))
        else:
            result["msg"] = "%(applied)d applied, %(unchanged)d unchanged, %(rejected)d rejected, " \
                            "%(timed_out)d timed out, %(offline)d offline" % summary
        return result

    def _check_mode(self, plans, result, started):
        devices = {}
        for p in plans:
            if p.action is None:
                state = "unchanged" if p.reported_version == p.version else "offline"
            else:
                state = "would_change" if p.would_change else "would_confirm"
            devices[p.device] = {"result": state, "version": p.version, "reported_version": p.reported_version,
                                 "online": p.online, "changed": p.would_change}
        would = sorted(d for d, v in devices.items() if v["changed"])
        result["devices"] = devices
        result["would_change"] = would
        result["changed"] = bool(would)
        result["msg"] = "check mode: %d of %d devices would change; nothing was published" % (len(would), len(plans))
        display.display("device_config: %s (%.1f s)" % (result["msg"], time.monotonic() - started))
        return result

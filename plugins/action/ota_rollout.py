# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
# -*- coding: utf-8 -*-
"""Action plugin edgefleet.site.ota_rollout: roll a firmware image out in
waves over one MQTT session, with abort threshold, soak and resume.
Documentation: plugins/modules/ota_rollout.py; logic:
plugins/module_utils/rollout.py."""

import errno
import fcntl
import json
import os
import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.edgefleet.site.plugins.module_utils import contract, fleetmqtt, otasign, rollout

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
    state_dir=dict(type="path"),
    signing_key_file=dict(type="path"),
    **fleetmqtt.BROKER_ARGS
)
LOCK_WAIT_S = 15.0
PROGRESS_EVERY_S = 2.0
SAVE_EVERY_S = 1.0
ACTIVE = (rollout.COMMANDED, rollout.CONFIRMED)


def _decode(payload):
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


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
            for name in ("device_timeout", "soak"):
                if args[name] < 0 or (name == "device_timeout" and args[name] == 0):
                    raise rollout.RolloutError("%s: %r is not a number of seconds" % (name, args[name]))
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
        try:
            run = Rollout(self, session, args, devices, image, waves, policy, command_id, path, result)
            try:
                return run.run()
            finally:
                if run.lock_fd is not None:
                    os.close(run.lock_fd)
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


class Rollout(object):
    def __init__(self, action, session, args, devices, image, waves, policy, command_id, path, result):
        self.check_mode = action._task.check_mode
        self.session, self.args, self.devices, self.image = session, args, devices, image
        self.waves, self.policy, self.command_id, self.path, self.result = waves, policy, command_id, path, result
        self.status = {}
        self.trackers = {}
        self.started = time.monotonic()
        self.commanded_now = 0
        self.dirty = False
        # Ansible runs this in a worker process that has its own session: a
        # SIGKILL of ansible-playbook does not reach it. It watches its parent
        # and stops when that is gone, so a resumed run never races it.
        self.parent = os.getppid()
        self.lock_fd = None

    def check_parent(self):
        if os.getppid() != self.parent and self.parent != 1:
            self.state.save()
            raise rollout.RolloutError("the ansible-playbook that ran rollout %s is gone: stopped (run it again to "
                                       "resume from %s)" % (self.args["rollout_id"], self.path))

    def lock(self):
        """One run per rollout at a time: an exclusive lock beside the state file."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        self.lock_fd = os.open(self.path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except (IOError, OSError) as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    raise rollout.RolloutError("rollout %s is being run by another process (lock %s.lock held for "
                                               "%g s)" % (self.args["rollout_id"], self.path, LOCK_WAIT_S))
                time.sleep(0.2)

    def tracker(self, device_id):
        t = self.trackers.get(device_id)
        if t is None:
            t = self.trackers[device_id] = self.state.tracker(device_id, self.args["device_timeout"], self.args["soak"])
        return t

    def run(self):
        args, version = self.args, self.image["version"]
        self.session.subscribe(["status", "ota"], timeout=args["connect_timeout"])
        for m in self.session.events():
            if m.channel == "status":
                self.status[m.device_id] = _decode(m.payload)
        on_version = [d for d in self.devices if (self.status.get(d) or {}).get("fw") == version]
        already = set(on_version)
        to_update = [d for d in self.devices if d not in already]
        if not self.check_mode:
            self.lock()  # before reading the state file: another run may still be writing it
        now = time.time()
        self.state = rollout.RolloutState.open(
            self.path, args["rollout_id"], self.image,
            lambda: rollout.plan_waves(to_update, args["rollout_id"], args["canary"], self.waves,
                                       args["increment_factor"]), now)
        outside = sorted(set(self.devices) - set(self.state.devices))
        if outside:
            display.warning("ota_rollout %s: %d device(s) are not in this rollout's plan (it was planned before "
                            "they were added), e.g. %s; start a new rollout_id for them"
                            % (args["rollout_id"], len(outside), ", ".join(outside[:5])))
        self.state.add_skipped([d for d in on_version if d in self.state.devices or not self.state.resumed])
        if self.check_mode:
            return self.report(check=True)
        return self.execute(now)

    def execute(self, now):
        args = self.args
        if self.state.resumed:
            resumed = 0
            for device, record in self.state.devices.items():
                if record["state"] in ACTIVE:
                    self.tracker(device).resumed(self.status.get(device), now)
                    resumed += 1
            display.display("ota_rollout %s: resuming from %s (%d device(s) were being updated)"
                            % (args["rollout_id"], self.path, resumed))
        self.state.save()
        if self.state.aborted is None:
            for i, wave in enumerate(self.state.waves):
                self.run_wave(i, wave)
                if self.state.aborted is not None:
                    break
        else:
            display.display("ota_rollout %s: aborted in an earlier run (wave %d/%d: %s): nothing is commanded"
                            % (args["rollout_id"], self.state.aborted["wave"] + 1, len(self.state.waves),
                               self.state.aborted["reason"]))
        if self.state.aborted is None and not any(r["state"] in (rollout.PENDING,) + ACTIVE
                                                  for r in self.state.devices.values()):
            self.state.finish(time.time())
        self.state.save()
        return self.report()

    def run_wave(self, i, wave):
        now = time.time()
        send = []
        for device in wave:
            record = self.state.devices[device]
            if record["state"] not in (rollout.PENDING, rollout.OFFLINE):
                continue
            st = self.status.get(device)
            if st and st.get("online") is True:
                self.tracker(device).commanded(now, self.command_id)
                send.append(device)
            else:
                self.tracker(device).offline(now)
        # this wave's devices being updated: those commanded now, and on a
        # resume those commanded before the kill (each is followed in its wave)
        active = [d for d in wave if self.state.devices[d]["state"] in ACTIVE]
        if not active:
            return
        self.check_parent()
        self.state.save()  # write-ahead: a device marked commanded is never commanded again, even after a kill
        cmd = json.dumps(contract.ota_command(self.command_id, self.image["payload"], self.image["version"],
                                              self.image["url"], self.image["size"], self.image["sha256"],
                                              self.image["security_version"], self.image["signature"],
                                              self.args["download_timeout"]), sort_keys=True)
        for device in send:
            self.session.publish(device, "cmd", cmd)
        self.session.flush(timeout=30)
        self.commanded_now += len(send)
        display.display("ota_rollout %s: wave %d/%d: commanded %d device(s)%s" % (
            self.args["rollout_id"], i + 1, len(self.state.waves), len(send),
            ", following %d from before" % (len(active) - len(send)) if len(active) > len(send) else ""))
        self.follow(i, active)

    def follow(self, i, active):
        trackers = [self.tracker(d) for d in active]
        by_device = dict(zip(active, trackers))
        next_progress = time.monotonic() + PROGRESS_EVERY_S
        next_save = time.monotonic() + SAVE_EVERY_S
        while any(t.state in ACTIVE for t in trackers):
            self.check_parent()
            now = time.time()
            for m in self.session.events(timeout=0.2):
                if m.channel == "status":
                    self.status[m.device_id] = _decode(m.payload)
                t = by_device.get(m.device_id)
                if t is None:
                    continue
                if m.channel == "ota":
                    self.dirty |= t.on_ota(_decode(m.payload), now)
                elif m.channel == "status":
                    self.dirty |= t.on_status(self.status[m.device_id], now)
            now = time.time()
            for t in trackers:
                self.dirty |= t.tick(now)
            if self.state.aborted is None and self.dirty:  # counting every device's state costs: only on changes
                reason = self.policy.check(*self.state.executed())
                if reason:
                    self.state.abort(i, reason, now)
                    self.state.save()
                    display.display("ota_rollout %s: ABORT in wave %d/%d: %s; no further device is commanded, "
                                    "this wave's devices are followed to their end"
                                    % (self.args["rollout_id"], i + 1, len(self.state.waves), reason),
                                    color="bright red")
            if self.dirty and time.monotonic() >= next_save:
                self.state.save()
                self.dirty = False
                next_save = time.monotonic() + SAVE_EVERY_S
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_EVERY_S
                display.display(self.progress(i))
        self.state.save()
        self.dirty = False
        display.display(self.progress(i))

    def progress(self, i):
        w = self.state.wave_summary(i)
        s = self.state.summary()
        done = sum(s[x] for x in rollout.FINAL)
        return "ota_rollout %s: wave %d/%d (%d devices): %d succeeded, %d failed, %d timed out, %d rolled back, " \
               "%d soaking, %d updating, %d offline; overall %d/%d done (%.1f s)" % (
                   self.args["rollout_id"], i + 1, len(self.state.waves), len(self.state.waves[i]), w["succeeded"],
                   w["failed"], w["timed_out"], w["rolled_back"], w["confirmed"], w["commanded"], w["offline"],
                   done, len(self.state.devices) - s["skipped"], time.monotonic() - self.started)

    @staticmethod
    def device_report(rec):
        """A device's entry in the result; waves are numbered from 1 (the canary) for people."""
        out = dict((k, v) for k, v in rec.items() if k in ("state", "detail", "progress"))
        out["wave"] = rec["wave"] + 1 if rec.get("wave") is not None else None
        return out

    def report(self, check=False):
        r, state = self.result, self.state
        waves = []
        for i, wave in enumerate(state.waves):
            counts = dict((k, v) for k, v in state.wave_summary(i).items() if v)
            waves.append({"wave": i + 1, "size": len(wave), "devices": list(wave), "counts": counts})
        r["waves"] = waves
        r["devices"] = dict((d, self.device_report(rec)) for d, rec in sorted(state.devices.items()))
        r["summary"] = dict((k, v) for k, v in state.summary().items() if v)
        r["aborted"] = None if state.aborted is None else {
            "wave": state.aborted["wave"] + 1, "reason": state.aborted["reason"], "at": state.aborted["at"]}
        r["state_file"] = self.path
        r["resumed"] = state.resumed
        if check:
            r["changed"] = any(rec["state"] in (rollout.PENDING, rollout.OFFLINE) for rec in state.devices.values())
            r["msg"] = "check mode: %d wave(s) over %d device(s) (%s); %d already on %s; nothing was commanded" % (
                len(waves), sum(w["size"] for w in waves), ", ".join(str(w["size"]) for w in waves),
                r["summary"].get("skipped", 0), self.image["version"])
            display.display("ota_rollout %s: %s" % (self.args["rollout_id"], r["msg"]))
            return r
        r["changed"] = self.commanded_now > 0
        s = state.summary()
        r["msg"] = "%d succeeded, %d failed, %d timed out, %d rolled back, %d skipped (on %s), %d offline" % (
            s["succeeded"], s["failed"], s["timed_out"], s["rolled_back"], s["skipped"], self.image["version"],
            s["offline"])
        if state.aborted is not None:
            r["failed"] = True
            r["msg"] = "aborted in wave %d/%d: %s (%s)" % (state.aborted["wave"] + 1, len(state.waves),
                                                           state.aborted["reason"], r["msg"])
        return r

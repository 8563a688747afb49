# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Ansible side: handing the fleet over to a new OTA signing key: the controller-side
logic behind the signing_key_handover action plugin. Pure: no Ansible, no
MQTT, no clock (times are passed in).

One hand-over is one new key (``next.pub`` in the signing directory). Every
device gets the same command, ``contract.signing_key_command(command_id(new),
new, signature)``, the signature made by the CURRENT key over
``contract.key_rotation_message(new)`` (otasign.sign_handover): a device
checks it with the key it holds, stores the new key, and answers on
``cmd/ack`` (accepted, or rejected with its reason).

The record, ``<signing dir>/handover.json``, keeps which devices accepted,
so a run that stopped (a device offline, a rejection, a kill) goes on with
the others only: a device that accepted holds the new key and would refuse
a second hand-over signed by the old one. The record belongs to one new
key: a record of another key is refused (its devices trust that key now).
The key is promoted (next -> current, otasign.promote) only once every
device of the fleet accepted; promotion files the record away.

Per device: ACCEPTED (final), REJECTED (with the device's reason), TIMED_OUT
(no answer within the timeout), OFFLINE (its retained status said offline,
or none: not sent). Only ACCEPTED is kept across runs; a later run sends to
every other device again.
"""

import json
import os
import tempfile

try:
    from ansible_collections.edgefleet.site.plugins.module_utils import contract
except ImportError:  # tests import it from plugins/module_utils directly
    import contract

FORMAT = 1
ACCEPTED = "accepted"
REJECTED = "rejected"
TIMED_OUT = "timed_out"
OFFLINE = "offline"
SENT = "sent"  # waiting for its answer (never saved as such)
SKIPPED = "skipped"  # accepted in an earlier run: not sent again
WOULD_SEND = "would_send"  # check mode
FAILURES = (REJECTED, TIMED_OUT, OFFLINE)


class HandoverError(ValueError):
    pass


def command_id(new_public_hex):
    """``signing-key-<16 hex digits of the new point>``: the same for every
    device and every run of one hand-over."""
    contract.check_public_key(new_public_hex, "new signing key")
    return contract.check_command_id("signing-key-" + new_public_hex[2:18])


def answer(ack, cmd_id):
    """(result, detail) of a device's cmd/ack to this hand-over, or None
    when it answers something else."""
    if not isinstance(ack, dict) or ack.get("id") != cmd_id or ack.get("cmd") not in (None, "signing_key"):
        return None
    result = ack.get("result")
    if result == "accepted":
        return ACCEPTED, None
    detail = ack.get("detail")
    return REJECTED, str(detail) if detail else "the device rejected it (%r)" % (result,)


class HandoverState(object):
    """handover.json: {"format", "new_key", "command_id", "devices": {id:
    {"state": "accepted", "at": t}}}; only accepted devices are recorded."""

    def __init__(self, path, record):
        self.path = path
        self.record = record

    @classmethod
    def open(cls, path, new_public_hex):
        cmd_id = command_id(new_public_hex)
        if not os.path.exists(path):
            return cls(path, {"format": FORMAT, "new_key": new_public_hex, "command_id": cmd_id, "devices": {}})
        try:
            with open(path) as f:
                record = json.load(f)
        except ValueError as e:
            raise HandoverError("%s is not a hand-over record: %s" % (path, e))
        if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("devices"),
                                                                                            dict):
            raise HandoverError("%s is not a hand-over record of format %d" % (path, FORMAT))
        if record.get("new_key") != new_public_hex:
            accepted = sorted(d for d, r in record["devices"].items() if r.get("state") == ACCEPTED)
            raise HandoverError(
                "%s records a hand-over to another key (%s...), not to next.pub (%s...): %d device(s) accepted it "
                "and trust it now (%s). Restore the next key it names from the backup, or re-flash those devices; "
                "nothing was sent" % (path, str(record.get("new_key"))[:20], new_public_hex[:20], len(accepted),
                                      ", ".join(accepted[:10]) or "none"))
        return cls(path, record)

    @classmethod
    def empty(cls, path):
        """No record and no key yet (check mode before the next key exists)."""
        return cls(path, {"format": FORMAT, "new_key": None, "command_id": None, "devices": {}})

    @property
    def command_id(self):
        return self.record["command_id"]

    def accepted(self, device):
        return (self.record["devices"].get(device) or {}).get("state") == ACCEPTED

    def accept(self, device, now):
        self.record["devices"][device] = {"state": ACCEPTED, "at": now}

    def save(self):
        """Atomically (temporary file, fsync, rename), mode 0600."""
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(self.path) + ".")
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(json.dumps(self.record, sort_keys=True, indent=1) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


class Device(object):
    """One device's part in this run."""

    def __init__(self, device_id, state, detail=None):
        self.id, self.state, self.detail = device_id, state, detail

    def on_ack(self, ack, cmd_id):
        """True when this answer settles the device."""
        if self.state != SENT:
            return False
        got = answer(ack, cmd_id)
        if got is None:
            return False
        self.state, self.detail = got
        return True

    def timed_out(self, timeout):
        if self.state == SENT:
            self.state, self.detail = TIMED_OUT, "no answer on cmd/ack within %g s" % timeout

    def as_dict(self):
        return {"result": self.state, "detail": self.detail}


def plan(devices, state, statuses):
    """[Device] for *devices*: SKIPPED when the record has it accepted,
    OFFLINE when its retained status (a dict, or None) is not online, else
    SENT (the caller sends it the command)."""
    out = []
    for d in devices:
        if state.accepted(d):
            out.append(Device(d, SKIPPED, "accepted in an earlier run"))
        elif not (isinstance(statuses.get(d), dict) and statuses[d].get("online") is True):
            out.append(Device(d, OFFLINE, "offline: not sent (run again when it is online)"))
        else:
            out.append(Device(d, SENT))
    return out


def summarize(devices):
    counts = dict((s, 0) for s in (ACCEPTED, SKIPPED, REJECTED, TIMED_OUT, OFFLINE, SENT, WOULD_SEND))
    for d in devices:
        counts[d.state] += 1
    return counts

# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Ansible side: rotating devices' MQTT passwords over the air, in two phases: the
controller-side logic behind the mqtt_rotation action plugin. Pure: no
Ansible, no MQTT, no clock (times are passed in).

A broker account holds one password (Mosquitto's password file keeps the
last line of a user), so a rotation uses a second listener, the broker's
"next" listener, whose password file has each rotating device's NEXT
password (the current one for the others); the main listeners keep the
current one. Files, in the mosquitto role's secrets directory
(``<secrets>/mqtt``), mode 0600:

  <user>         the current password (the mosquitto role's, as before)
  <user>.next    the next one, while that device's rotation is open
  rotation.json  the record: which devices proved their next password

1. prepare: ``<user>.next`` is made for each device (once: a run that
   stopped keeps it); the mosquitto role then puts it on the next listener.
2. stage: each online device gets ``rotatecmd.rotate_command`` with its next
   password and the next listener's port over its cmd topic (TLS, and only
   that device may read it). It proves the password by connecting to the
   next listener and answers accepted from that session; the record keeps
   it at once (PROVEN), tied to the command id, which hashes the password:
   a newer next password is a new rotation.
3. retire: for each PROVEN device ``<user>.next`` replaces ``<user>``; the
   mosquitto role then puts the new password on the main listeners, and the
   old one is gone. A device that did not prove keeps its old password on
   the main listener and is named (MISSED) until it proves in a later run,
   or the operator retires it anyway (``force``): it is then locked out
   until re-flashed (a flash writes ``<user>``, the new password).
"""

import hashlib
import json
import os
import string
import tempfile

try:
    from ansible_collections.edgefleet.site.plugins.module_utils import commands, contract, rotatecmd
except ImportError:  # tests import it from plugins/module_utils directly
    import commands
    import contract
    import rotatecmd

FORMAT = 1
RECORD = "rotation.json"
NEXT = ".next"
ALPHABET = string.ascii_letters + string.digits  # what the mosquitto role's generated passwords use

# per device
PROVEN = "proven"  # answered accepted from the next listener (final for this next password)
REJECTED = "rejected"
TIMED_OUT = "timed_out"
OFFLINE = "offline"
SENT = "sent"
SKIPPED = "skipped"  # proven in an earlier run
WOULD_SEND = "would_send"
STAGE_FAILURES = (REJECTED, TIMED_OUT, OFFLINE)
RETIRED = "retired"  # <user>.next became <user>
FORCED = "forced"  # retired without proof, by the operator's force
MISSED = "missed"  # did not prove: still on its old password
NOT_ROTATING = "not_rotating"  # no <user>.next
WOULD_RETIRE = "would_retire"
CREATED = "created"
KEPT = "kept"
WOULD_CREATE = "would_create"


class RotationError(ValueError):
    pass


def next_path(directory, user):
    return os.path.join(directory, user + NEXT)


def current_path(directory, user):
    return os.path.join(directory, user)


def read_secret(path):
    with open(path) as f:
        return f.read().strip()


def write_secret(path, value):
    """Atomically, mode 0600 (temporary file, fsync, rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def new_password(length, randbelow=None):
    if not isinstance(length, int) or not 16 <= length <= rotatecmd.MAX_PASSWORD:
        raise RotationError("password_length must be 16..%d, got %r" % (rotatecmd.MAX_PASSWORD, length))
    if randbelow is None:
        import secrets
        randbelow = secrets.randbelow
    return "".join(ALPHABET[randbelow(len(ALPHABET))] for _i in range(length))


def check_rotatable(devices, directory, inventory_passwords):
    """Refuse, before anything changes, a device whose password comes from
    the inventory (mosquitto_passwords: the vault is the source, not the
    secrets directory) or that has no current password file."""
    fixed = sorted(d for d in devices if d in (inventory_passwords or {}))
    if fixed:
        raise RotationError("the password of %s comes from the inventory (mosquitto_passwords): rotate it there "
                            "(docs/operations.md, \"Rotating a password\"); nothing was changed" % ", ".join(fixed[:20]))
    missing = sorted(d for d in devices if not os.path.isfile(current_path(directory, d)))
    if missing:
        raise RotationError("no current password in %s for %s: has the mosquitto role run for them? nothing was "
                            "changed" % (directory, ", ".join(missing[:20])))


def prepare(devices, directory, length, check=False, randbelow=None):
    """{device: CREATED|KEPT|WOULD_CREATE}: make ``<user>.next`` where missing."""
    out = {}
    for d in devices:
        if os.path.exists(next_path(directory, d)):
            out[d] = KEPT
        elif check:
            out[d] = WOULD_CREATE
        else:
            write_secret(next_path(directory, d), new_password(length, randbelow))
            out[d] = CREATED
    return out


def command_id(device, password):
    """``rotate-<16 hex digits>``: the same for every run of one next
    password of one device; reveals nothing usable about it."""
    digest = hashlib.sha256(("edgefleet-rotate-1\n%s\n%s\n" % (device, password)).encode()).hexdigest()
    return contract.check_command_id("rotate-" + digest[:16])


def answer(ack, cmd_id):
    """(state, detail) of a device's cmd/ack to this rotation, or None."""
    if not isinstance(ack, dict) or ack.get("id") != cmd_id or ack.get("cmd") not in (None, "rotate"):
        return None
    if ack.get("result") == "accepted":
        return PROVEN, ack.get("detail")
    detail = ack.get("detail")
    return REJECTED, str(detail) if detail else "the device rejected it (%r)" % (ack.get("result"),)


class Record(object):
    """rotation.json: {"format", "devices": {id: {"state": "proven",
    "command_id", "at"}}}: only proofs are kept, each for one next password."""

    def __init__(self, path, record):
        self.path, self.record = path, record

    @classmethod
    def open(cls, path):
        if not os.path.exists(path):
            return cls(path, {"format": FORMAT, "devices": {}})
        try:
            with open(path) as f:
                record = json.load(f)
        except ValueError as e:
            raise RotationError("%s is not a rotation record: %s" % (path, e))
        if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("devices"),
                                                                                            dict):
            raise RotationError("%s is not a rotation record of format %d" % (path, FORMAT))
        return cls(path, record)

    def proven(self, device, cmd_id):
        entry = self.record["devices"].get(device) or {}
        return entry.get("state") == PROVEN and entry.get("command_id") == cmd_id

    def prove(self, device, cmd_id, now):
        self.record["devices"][device] = {"state": PROVEN, "command_id": cmd_id, "at": now}

    def forget(self, device):
        self.record["devices"].pop(device, None)

    def save(self):
        write_secret(self.path, json.dumps(self.record, sort_keys=True, indent=1))


class Device(object):
    def __init__(self, device_id, state, detail=None, cmd_id=None):
        self.id, self.state, self.detail, self.cmd_id = device_id, state, detail, cmd_id

    def on_ack(self, ack):
        if self.state != SENT:
            return False
        got = answer(ack, self.cmd_id)
        if got is None:
            return False
        self.state, self.detail = got
        return True

    def timed_out(self, timeout):
        if self.state == SENT:
            self.state, self.detail = TIMED_OUT, "no answer on cmd/ack within %g s" % timeout

    def as_dict(self):
        return {"result": self.state, "detail": self.detail}


def plan_stage(devices, directory, record, statuses):
    """[Device] of the stage phase: NOT_ROTATING without ``<user>.next``,
    SKIPPED when proven for this next password, OFFLINE when its retained
    status is not online, else SENT (with its command id)."""
    out = []
    for d in devices:
        path = next_path(directory, d)
        if not os.path.exists(path):
            out.append(Device(d, NOT_ROTATING, "no %s: nothing to rotate" % os.path.basename(path)))
            continue
        cmd_id = command_id(d, read_secret(path))
        if record.proven(d, cmd_id):
            out.append(Device(d, SKIPPED, "proven in an earlier run", cmd_id))
        elif not (isinstance(statuses.get(d), dict) and statuses[d].get("online") is True):
            out.append(Device(d, OFFLINE, "offline: not sent (run again when it is online)", cmd_id))
        else:
            out.append(Device(d, SENT, None, cmd_id))
    return out


def stage_command(device, directory, port, now, ttl_s):
    """The rotate command for *device* (it carries the next password),
    expiring *ttl_s* after *now* (wall clock, s): the phase waits that long
    for the proof; a device that gets it later refuses it, and a rerun sends
    it again."""
    password = read_secret(next_path(directory, device))
    return commands.with_expiry(rotatecmd.rotate_command(command_id(device, password), port, password=password),
                                now, ttl_s)


def plan_retire(devices, directory, record, force=()):
    """[Device] of the retire phase: RETIRED (proven), FORCED (in *force*),
    MISSED (rotating, not proven: keeps its old password), NOT_ROTATING."""
    out = []
    for d in devices:
        path = next_path(directory, d)
        if not os.path.exists(path):
            out.append(Device(d, NOT_ROTATING, None))
            continue
        cmd_id = command_id(d, read_secret(path))
        if record.proven(d, cmd_id):
            out.append(Device(d, RETIRED, "the next password replaces the current one", cmd_id))
        elif d in force:
            out.append(Device(d, FORCED, "retired without proof (force): the device cannot connect until it is "
                                         "re-flashed", cmd_id))
        else:
            out.append(Device(d, MISSED, "did not prove its next password: its old one stays valid on the main "
                                         "listener (run the rotation again, or force it)", cmd_id))
    return out


def retire(plan, directory, record, check=False):
    """Carry out *plan*: ``<user>.next`` replaces ``<user>`` for RETIRED and
    FORCED devices (their record entries go). Returns the devices changed."""
    done = []
    for d in plan:
        if d.state not in (RETIRED, FORCED):
            continue
        done.append(d.id)
        if check:
            d.state, d.detail = WOULD_RETIRE, d.detail
            continue
        os.replace(next_path(directory, d.id), current_path(directory, d.id))
        record.forget(d.id)
        record.save()
    return done


def summarize(devices):
    counts = {}
    for d in devices:
        counts[d.state] = counts.get(d.state, 0) + 1
    return counts


# --- the site CA ------------------------------------------------------------------
#
# A CA rotation is one new CA for the whole fleet: the site_ca role makes it
# in <ca dir>/next/ (ca.key, ca.crt, and the next listener's server
# certificate), the mosquitto role serves that certificate on the next
# listener. Every device gets the same rotate command with the new CA's PEM
# and proves it by verifying the next listener with it. The record is
# <ca dir>/next/rotation.json. Retirement promotes the next CA (the old one
# moves to <ca dir>/previous/<time>/), after which the site_ca role reissues
# the main listeners' certificate from it: only when every device of the
# fleet proved it, or is forced (it cannot verify the broker any more and
# needs a re-flash), because there is one server certificate for all.

CA_NEXT = "next"
CA_FILES = ("ca.key", "ca.crt")


def ca_next_cert(ca_dir):
    return os.path.join(ca_dir, CA_NEXT, "ca.crt")


def read_next_ca(ca_dir):
    path = ca_next_cert(ca_dir)
    try:
        pem = read_secret(path) + "\n"
    except (IOError, OSError) as e:
        raise RotationError("no next CA at %s (%s): the site_ca role makes it with site_ca_next=true, as "
                            "playbooks/rotate.yml does with rotate_secret=ca" % (path, e.strerror or e))
    if pem.count("-----BEGIN CERTIFICATE-----") != 1:
        raise RotationError("%s must hold exactly one PEM certificate" % path)
    return pem


def ca_command_id(pem):
    return contract.check_command_id("rotate-ca-" + hashlib.sha256(pem.encode()).hexdigest()[:16])


def ca_record_path(ca_dir):
    return os.path.join(ca_dir, CA_NEXT, RECORD)


def plan_stage_ca(devices, pem, record, statuses):
    cmd_id = ca_command_id(pem)
    out = []
    for d in devices:
        if record.proven(d, cmd_id):
            out.append(Device(d, SKIPPED, "proven in an earlier run", cmd_id))
        elif not (isinstance(statuses.get(d), dict) and statuses[d].get("online") is True):
            out.append(Device(d, OFFLINE, "offline: not sent (run again when it is online)", cmd_id))
        else:
            out.append(Device(d, SENT, None, cmd_id))
    return out


def stage_ca_command(pem, port, now, ttl_s):
    """The rotate command of the next CA, expiring as stage_command's."""
    return commands.with_expiry(rotatecmd.rotate_command(ca_command_id(pem), port, ca=pem), now, ttl_s)


def plan_retire_ca(devices, pem, record, force=()):
    cmd_id = ca_command_id(pem)
    out = []
    for d in devices:
        if record.proven(d, cmd_id):
            out.append(Device(d, RETIRED, "proved the next CA", cmd_id))
        elif d in force:
            out.append(Device(d, FORCED, "retired without proof (force): the device cannot verify the broker "
                                         "until it is re-flashed", cmd_id))
        else:
            out.append(Device(d, MISSED, "did not prove the next CA: the main listeners keep the old CA's "
                                         "certificate until it does (run the rotation again, or force it)", cmd_id))
    return out


def promote_ca(ca_dir, stamp):
    """next/ca.* become the CA; the old CA and the next directory's rest
    (its server certificates, the record) go to previous/<stamp>/."""
    nxt = os.path.join(ca_dir, CA_NEXT)
    for name in CA_FILES:
        if not os.path.isfile(os.path.join(nxt, name)):
            raise RotationError("%s has no %s: nothing to promote" % (nxt, name))
    previous = os.path.join(ca_dir, "previous", stamp)
    os.makedirs(previous, mode=0o700)
    for name in CA_FILES:
        if os.path.exists(os.path.join(ca_dir, name)):
            os.replace(os.path.join(ca_dir, name), os.path.join(previous, name))
        os.replace(os.path.join(nxt, name), os.path.join(ca_dir, name))
    os.replace(nxt, os.path.join(previous, CA_NEXT))
    return previous

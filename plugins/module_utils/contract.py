# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Device contract: topics, channels, commands and OTA messages (docs/architecture.md,
section 3), in one place for the firmware, the simulator, the mosquitto
role's ACL and the controller-side plugins.

This file runs unchanged on MicroPython (the firmware image packs it as it
is) and imports nothing, not even its siblings: controller code imports it
as ``ansible_collections.edgefleet.site.plugins.module_utils.contract``, the
device as ``contract``.
"""

# Every topic is site/<site>/<kind>/<device id>/<channel>.
# Channels a device writes (retained: status, announce) and reads.
DEVICE_WRITES = ("state", "status", "announce", "cfg/ack", "cmd/ack", "ota")
DEVICE_READS = ("cfg", "cmd")
RETAINED = ("status", "announce", "cfg")
CHANNELS = DEVICE_WRITES + DEVICE_READS

COMMANDS = ("ota", "reboot", "signing_key", "rotate")
CMD_RESULTS = ("accepted", "rejected")
# Machine-readable reasons of a refusal on cmd/ack (besides the text in
# "detail"): the command's ``expires`` had passed; it carried ``expires`` but
# the device's clock was still unset after CLOCK_WAIT_S; the device's inbox
# was full when it arrived (nothing of it was done).
CMD_REASONS = ("expired", "clock_unset", "inbox_full")
CLOCK_WAIT_S = 60
OTA_PAYLOADS = ("app", "firmware")
OTA_STATES = ("downloading", "verifying", "rebooting", "confirmed", "failed", "rolled_back")
OTA_FINAL_STATES = ("confirmed", "failed", "rolled_back")
OTA_DEFAULT_TIMEOUT_S = 30
MAX_COMMAND_ID = 64
# Signed updates: ECDSA over NIST P-256 with SHA-256. A signature is r||s
# (IEEE P1363, 64 bytes), a public key the uncompressed SEC1 point
# (0x04||X||Y, 65 bytes); both travel as lower-case hex.
SIGNATURE_SCHEME = "ecdsa-p256-sha256"
SIGNATURE_HEX = 128
PUBLIC_KEY_HEX = 130
MAX_SECURITY_VERSION = 0x7FFFFFFF


class ContractError(ValueError):
    pass


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_site(site):
    """A site name is one topic level: 1-32 of a-z, 0-9, '_' and '-'."""
    if (not isinstance(site, str) or not 1 <= len(site) <= 32
            or any(not ("a" <= c <= "z" or "0" <= c <= "9" or c in "_-") for c in site)):
        raise ContractError("site name must be 1-32 of a-z0-9_- (one topic level), got %r" % (site,))
    return site


def device_kind(device_id):
    """The kind part of a device id (``psu-ktcyat68`` -> ``psu``)."""
    kind, sep, code = str(device_id).rpartition("-")
    if not sep or not kind or len(code) != 8:
        raise ContractError("not a device id (<kind>-<short8>): %r" % (device_id,))
    return kind


def base_topic(site, device_id):
    """``site/<site>/<kind>/<id>/``: every channel of a device starts with it."""
    return "site/%s/%s/%s/" % (check_site(site), device_kind(device_id), device_id)


def topic(site, device_id, channel):
    if channel not in CHANNELS:
        raise ContractError("unknown channel %r (one of %s)" % (channel, ", ".join(CHANNELS)))
    return base_topic(site, device_id) + channel


def parse_topic(name):
    """(site, kind, device id, channel) of a device topic, or None."""
    parts = str(name).split("/", 4)
    if len(parts) != 5 or parts[0] != "site" or parts[4] not in CHANNELS:
        return None
    try:
        if device_kind(parts[3]) != parts[2]:
            return None
    except ContractError:
        return None
    return parts[1], parts[2], parts[3], parts[4]


# --- commands (channel cmd) ------------------------------------------------------

def check_command_id(cmd_id):
    if not isinstance(cmd_id, str) or not 1 <= len(cmd_id) <= MAX_COMMAND_ID:
        raise ContractError("command id must be a string of 1-%d characters, got %r" % (MAX_COMMAND_ID, cmd_id))
    return cmd_id


def check_command(cmd):
    """Validate the envelope of a command: ``{"id", "cmd", ...}``. Returns
    (id, name). The id of a malformed command may be None in the answer."""
    if not isinstance(cmd, dict):
        raise ContractError("a command must be a JSON object, got %s" % type(cmd).__name__)
    check_command_id(cmd.get("id"))
    name = cmd.get("cmd")
    if name not in COMMANDS:
        raise ContractError("unknown command %r (known: %s)" % (name, ", ".join(COMMANDS)))
    expires = cmd.get("expires")
    if expires is not None and (not _is_int(expires) or expires <= 0):
        raise ContractError("command expires must be a positive integer (seconds since the epoch, UTC), got %r"
                            % (expires,))
    return cmd["id"], name


def command_id_of(cmd):
    """The id a (possibly malformed) command carries, for its answer."""
    if isinstance(cmd, dict) and isinstance(cmd.get("id"), str) and len(cmd["id"]) <= MAX_COMMAND_ID:
        return cmd["id"]
    return None


def cmd_ack(cmd_id, cmd, result, detail=None, reason=None):
    """The device's answer on ``cmd/ack`` to a command that is not an OTA
    (an OTA command is answered on ``ota``), and to any command, an OTA
    included, refused for one of CMD_REASONS (then with ``reason``)."""
    if result not in CMD_RESULTS:
        raise ContractError("cmd/ack result must be one of %s, got %r" % (", ".join(CMD_RESULTS), result))
    out = {"id": cmd_id, "cmd": cmd, "result": result, "detail": detail}
    if reason is not None:
        out["reason"] = reason
    return out


def reboot_command(cmd_id, expires=None):
    cmd = {"id": check_command_id(cmd_id), "cmd": "reboot"}
    if expires is not None:
        cmd["expires"] = expires
    return cmd


# --- OTA (channels cmd and ota) ----------------------------------------------------

def _is_hex(value, length):
    return (isinstance(value, str) and len(value) == length
            and all(c in "0123456789abcdef" for c in value))


def check_signature(signature, what="signature"):
    """A signature as it travels: 128 lower-case hex digits (r||s)."""
    if not _is_hex(signature, SIGNATURE_HEX):
        raise ContractError("%s must be %d lower-case hex digits (ECDSA P-256 r||s), got %r"
                            % (what, SIGNATURE_HEX, signature if not isinstance(signature, str) else signature[:40]))
    return signature


def check_public_key(key, what="signing key"):
    """A public key as it travels: 130 lower-case hex digits, ``04`` first
    (an uncompressed P-256 point)."""
    if not _is_hex(key, PUBLIC_KEY_HEX) or not key.startswith("04"):
        raise ContractError("%s must be %d lower-case hex digits starting 04 (an uncompressed P-256 point), got %r"
                            % (what, PUBLIC_KEY_HEX, key if not isinstance(key, str) else key[:40]))
    return key


def check_security_version(value):
    if not _is_int(value) or not 0 <= value <= MAX_SECURITY_VERSION:
        raise ContractError("security_version must be an integer 0..%d, got %r" % (MAX_SECURITY_VERSION, value))
    return value


def ota_signed_message(payload, version, size, sha256, security_version):
    """The bytes the site's signing key signs for one manifest entry: the
    payload kind, version, size, sha256 and security version, one per
    line after a domain tag. The URL is not signed (it is transport only);
    nothing else in the command changes what is installed."""
    return ("edgefleet-ota-1\n%s\n%s\n%d\n%s\n%d\n" % (payload, version, size, sha256.lower(),
                                                       security_version)).encode()


def key_rotation_message(new_key):
    """The bytes the current signing key signs to hand over to *new_key*."""
    return ("edgefleet-signing-key-1\n%s\n" % check_public_key(new_key, "new signing key")).encode()


def signing_key_command(cmd_id, key, signature):
    """Hand a device over to a new signing key: ``{"id", "cmd":
    "signing_key", "key", "signature"}``; *signature* is by the current
    key over key_rotation_message(key). Answered on ``cmd/ack``."""
    cmd = {"id": check_command_id(cmd_id), "cmd": "signing_key", "key": key, "signature": signature}
    check_signing_key_command(cmd)
    return cmd


def check_signing_key_command(cmd):
    """(key, signature) of a signing_key command, formats checked."""
    return check_public_key(cmd.get("key"), "new signing key"), check_signature(cmd.get("signature"))


def ota_signed_fields(cmd):
    """(security_version, signature) of an ota command, or ContractError
    naming what is missing: a device installs nothing unsigned."""
    if "signature" not in cmd:
        raise ContractError("unsigned image: the ota command carries no signature")
    if "security_version" not in cmd:
        raise ContractError("the ota command carries no security_version")
    return check_security_version(cmd["security_version"]), check_signature(cmd["signature"])


def check_ota_command(cmd):
    """Validate ``{"id", "cmd": "ota", "payload", "version", "url", "size",
    "sha256", "security_version", "signature"[, "timeout_s"]}`` (the last
    two are checked by ota_signed_fields); return (payload, version, url,
    size, sha256, timeout_s). Downloads are plain ``http://``: the image
    is signed, and a device holds only one TLS session (its MQTT)."""
    for key in ("id", "payload", "version", "url", "size", "sha256"):
        if key not in cmd:
            raise ContractError("ota command without %s" % key)
    check_command_id(cmd["id"])
    if cmd.get("cmd", "ota") != "ota":
        raise ContractError("not an ota command: %r" % (cmd.get("cmd"),))
    payload = cmd["payload"]
    if payload not in OTA_PAYLOADS:
        raise ContractError("unknown ota payload %r (app or firmware)" % (payload,))
    version = cmd["version"]
    if (not isinstance(version, str) or not 1 <= len(version) <= 32
            or any(not (c.isalpha() or c.isdigit() or c in "._+-") for c in version)):
        raise ContractError("ota version must be 1-32 of A-Z a-z 0-9 . _ + -, got %r" % (version,))
    url = cmd["url"]
    if not isinstance(url, str) or not url.startswith("http://") or len(url) > 512:
        raise ContractError("ota url must be http:// (at most 512 characters; the image is signed, and a device "
                            "keeps its one TLS session for MQTT), got %r" % (url,))
    size = cmd["size"]
    if not _is_int(size) or size <= 0:
        raise ContractError("ota size must be a positive integer, got %r" % (size,))
    digest = cmd["sha256"]
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
        raise ContractError("ota sha256 must be 64 hex digits, got %r" % (digest,))
    timeout_s = cmd.get("timeout_s", OTA_DEFAULT_TIMEOUT_S)
    if not _is_int(timeout_s) or not 1 <= timeout_s <= 3600:
        raise ContractError("ota timeout_s must be an integer 1..3600, got %r" % (timeout_s,))
    return payload, version, url, size, digest.lower(), timeout_s


def ota_command(cmd_id, payload, version, url, size, sha256, security_version, signature, timeout_s=None):
    """The command the controller sends (validated like the device will)."""
    cmd = {"id": cmd_id, "cmd": "ota", "payload": payload, "version": version, "url": url, "size": size,
           "sha256": sha256, "security_version": security_version, "signature": signature}
    if timeout_s is not None:
        cmd["timeout_s"] = timeout_s
    check_ota_command(cmd)
    ota_signed_fields(cmd)
    return cmd


def ota_report(cmd_id, state, version, detail=None):
    """The device's progress on ``ota``."""
    if state not in OTA_STATES:
        raise ContractError("ota state must be one of %s, got %r" % (", ".join(OTA_STATES), state))
    return {"id": cmd_id, "state": state, "version": version, "detail": detail}

"""What a device accepts: updates signed by the site, and a new signing key
only from the key it trusts now.

The site's public key (ECDSA P-256, the contract's hex) is written into
``device.json`` (``signing_key``) at flash time. A handover to a new key
(``signing_key`` command, signed by the current key) and the device's own
security version are kept in ``signing.json``, replaced atomically:

  {"key": "04...", "security_version": 3}

An ota command is refused, before anything is downloaded or switched, when
it carries no signature, when its signature does not verify with the
current key over the signed entry (payload kind, version, size, sha256,
security version: a signature by another key and any field changed after
signing both end here), or when its security version is lower than the
device's own. The device's security version rises only when an update that
carries a higher one is confirmed (its self-test passed), so a rolled-back
update does not lock the board out of the version it runs.

The verifier (``p256``) is imported only while a signature is checked and
released after it: it is rare, and an ESP32's heap is small.
"""

import sys

import bootsel
import contract

STATE_FILE = "signing.json"


class SignatureError(Exception):
    pass


def _load(fs):
    if not fs.exists(STATE_FILE):
        return {}
    try:
        with fs.open(STATE_FILE, "r") as f:
            import json

            state = json.loads(f.read())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def current_key(device):
    """The public key this device trusts now (hex), or None."""
    return _load(device.fs).get("key") or device.settings.get("signing_key")


def security_version(device):
    """The device's own security version: that of the last confirmed update (0 at first)."""
    return _load(device.fs).get("security_version", device.settings.get("security_version", 0))


def _save(device, key=None, secver=None):
    state = _load(device.fs)
    state["key"] = key or current_key(device)
    state["security_version"] = security_version(device) if secver is None else secver
    bootsel.write_json(device.fs, STATE_FILE, state)


def _verify(key_hex, message, signature_hex):
    """True when *signature_hex* is *key_hex*'s over *message*."""
    import gc

    import p256

    try:
        return p256.verify(bytes.fromhex(key_hex), message, bytes.fromhex(signature_hex))
    except ValueError:  # a key that is not a point on the curve
        return False
    finally:
        sys.modules.pop("p256", None)  # the verifier leaves with its garbage
        gc.collect()


def check_update(device, cmd):
    """Raise SignatureError (the reason for the ``ota`` report) unless *cmd*
    is signed by the current key and not older than the device's security
    version; return the command's security version."""
    payload, version, _url, size, sha256, _timeout = contract.check_ota_command(cmd)
    try:
        secver, signature = contract.ota_signed_fields(cmd)
    except contract.ContractError as e:
        raise SignatureError(str(e))
    key = current_key(device)
    if not key:
        raise SignatureError("this device holds no signing key: flash it with the site's public key")
    if not _verify(key, contract.ota_signed_message(payload, version, size, sha256, secver), signature):
        raise SignatureError("signature does not verify with this device's signing key (signed by another key,"
                             " or changed after signing)")
    own = security_version(device)
    if secver < own:
        raise SignatureError("security version %d is lower than this device's %d (anti-rollback)" % (secver, own))
    return secver


def confirmed(device, last):
    """An update passed its self-test: raise the device's security version to its own."""
    secver = (last or {}).get("security_version")
    if isinstance(secver, int) and secver > security_version(device):
        _save(device, secver=secver)


def hand_over(device, cmd):
    """A ``signing_key`` command: trust the new key if the current one
    signed the handover. Returns None when accepted, else the reason."""
    try:
        new_key, signature = contract.check_signing_key_command(cmd)
    except contract.ContractError as e:
        return str(e)
    key = current_key(device)
    if not key:
        return "this device holds no signing key to verify a handover with"
    if new_key == key:
        return None  # already the key: a repeated command changes nothing
    if not _verify(key, contract.key_rotation_message(new_key), signature):
        return "handover not signed by this device's current signing key"
    import p256

    try:
        p256.check_public_key(bytes.fromhex(new_key))
    except ValueError as e:
        return "new signing key refused: %s" % e
    finally:
        sys.modules.pop("p256", None)
    _save(device, key=new_key)
    return None

# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Ansible side: the site's OTA signing key on the Ansible controller (CPython, the
``cryptography`` package): created once, checked on every use, never
regenerated implicitly, never copied anywhere but the secrets directory.

The formats are the device contract's (contract.py): ECDSA over P-256 with
SHA-256, a signature is r||s as 128 lower-case hex digits, a public key the
uncompressed point 04||X||Y as 130 hex digits. Signatures are RFC 6979
deterministic (``ECDSA(SHA256, deterministic_signing=True)``, cryptography
43 or newer): the same entry always gets the same signature, so a manifest
written twice from the same images is byte-identical (the ota_server role
stays idempotent). A deterministic signature is an ordinary ECDSA
signature; any verifier accepts it.

The key directory (``<edgefleet_secrets_dir>/signing``, mode 0700) holds

    current.key  current.pub    the key images are signed with
    next.key     next.pub       only during a rotation (made explicitly)
    handover.json               during a rotation: which devices accepted next
    previous.key previous.pub   the key before the last rotation, for the record
    retired/                    earlier ``previous`` keys, finished hand-overs

``<name>.key`` is the private key (PEM, PKCS#8, unencrypted, mode 0600),
``<name>.pub`` its public key as the contract's hex and a newline. The
public file is what flash stations and the rollout read; the private key
never leaves this directory.

Rules (``ensure_key``): a key is generated only when its pair is missing
altogether, and ``current`` only when the directory holds no key at all (a
fresh site). A public file without its private key, a private key that
does not match its public file, or a missing ``current`` beside other keys
(an interrupted rotation, a lost file) is an error naming the files and the
way out; nothing is replaced. A private key without its public file gets the
public file (derived from it).
"""

import os
import stat
import tempfile

try:
    from ansible_collections.edgefleet.site.plugins.module_utils import contract
except ImportError:  # tests import it from plugins/module_utils directly
    import contract

try:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_ERROR = None
except ImportError as e:  # reported by the callers with what to install
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_ERROR = str(e)

NAMES = ("current", "next", "previous")
KEY_MODE = 0o600
DIR_MODE = 0o700
RETIRED = "retired"
HANDOVER = "handover.json"
DOCS = "docs/operations.md, \"The OTA signing key\""


class SigningKeyError(Exception):
    pass


def require_cryptography():
    if not HAS_CRYPTOGRAPHY:
        raise SigningKeyError("OTA signing needs the Python package cryptography (43 or newer) on the Ansible "
                              "controller (it is in requirements.txt): %s" % CRYPTOGRAPHY_ERROR)


def _ecdsa():
    try:
        return ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    except TypeError:
        raise SigningKeyError("cryptography on the Ansible controller is too old for deterministic (RFC 6979) "
                              "ECDSA signatures, which keep the OTA manifest the same on every run: install "
                              "cryptography 43 or newer (requirements.txt)")


# --- keys --------------------------------------------------------------------------------

def generate_key():
    require_cryptography()
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key):
    """PKCS#8 PEM, unencrypted (the secrets directory is the protection)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_key(path):
    """The P-256 private key in *path* (PEM); SigningKeyError naming the file."""
    require_cryptography()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (IOError, OSError) as e:
        raise SigningKeyError("cannot read the OTA signing key %s: %s" % (path, e.strerror or e))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SigningKeyError("the OTA signing key %s is encrypted: the role needs it unencrypted (keep the secrets "
                              "directory private instead)" % path)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise SigningKeyError("%s is not a PEM private key: %s" % (path, e))
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise SigningKeyError("%s is not an ECDSA P-256 (secp256r1) key, which the devices require (%s)"
                              % (path, getattr(getattr(key, "curve", None), "name", type(key).__name__)))
    return key


def public_key_hex(key):
    """The contract's form of the public key of *key* (a private or public
    key): 130 lower-case hex digits, 04||X||Y."""
    require_cryptography()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint).hex()


def public_key_from_hex(public_hex, what="signing key"):
    """The public key of a contract hex string; SigningKeyError if it is not
    a point of P-256."""
    require_cryptography()
    try:
        contract.check_public_key(public_hex, what)
    except contract.ContractError as e:
        raise SigningKeyError(str(e))
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(public_hex))
    except ValueError:
        raise SigningKeyError("%s %s... is not a point of the P-256 curve" % (what, public_hex[:20]))


def read_public_file(path):
    """The public key hex in *path* (whitespace around it ignored), checked."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except (IOError, OSError) as e:
        raise SigningKeyError("cannot read the OTA signing public key %s: %s" % (path, e.strerror or e))
    public_key_from_hex(text, "the public key in %s" % path)
    return text


# --- signatures ----------------------------------------------------------------------

def sign(key, message):
    """128 hex digits: r||s of a deterministic ECDSA P-256 SHA-256 signature."""
    r, s = decode_dss_signature(key.sign(message, _ecdsa()))
    return "%064x%064x" % (r, s)


def verify(public_hex, message, signature):
    """True when *signature* (contract hex) is *public_hex*'s over *message*;
    False for a wrong signature, a malformed one included."""
    key = public_key_from_hex(public_hex)
    try:
        contract.check_signature(signature)
    except contract.ContractError:
        return False
    r, s = int(signature[:64], 16), int(signature[64:], 16)
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def entry_message(payload, version, size, sha256, security_version):
    """contract.ota_signed_message with its fields checked first (a bad
    value names itself instead of signing something a device refuses)."""
    if payload not in contract.OTA_PAYLOADS:
        raise SigningKeyError("payload must be one of %s, got %r" % (", ".join(contract.OTA_PAYLOADS), payload))
    if not isinstance(version, str) or not version:
        raise SigningKeyError("version must be a non-empty string, got %r" % (version,))
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise SigningKeyError("size must be a positive integer, got %r" % (size,))
    if (not isinstance(sha256, str) or len(sha256) != 64
            or any(c not in "0123456789abcdef" for c in sha256.lower())):
        raise SigningKeyError("sha256 must be 64 hex digits, got %r" % (sha256,))
    try:
        contract.check_security_version(security_version)
    except contract.ContractError as e:
        raise SigningKeyError(str(e))
    return contract.ota_signed_message(payload, version, size, sha256, security_version)


def sign_entry(key, payload, version, size, sha256, security_version):
    """The signature of one manifest entry (what a device checks before it
    installs anything)."""
    return sign(key, entry_message(payload, version, size, sha256, security_version))


def verify_entry(public_hex, payload, version, size, sha256, security_version, signature):
    return verify(public_hex, entry_message(payload, version, size, sha256, security_version), signature)


def sign_handover(old_key, new_public_hex):
    """The current key's signature over the hand-over to *new_public_hex*
    (contract.key_rotation_message), for a signing_key command."""
    public_key_from_hex(new_public_hex, "new signing key")
    return sign(old_key, contract.key_rotation_message(new_public_hex))


def verify_handover(old_public_hex, new_public_hex, signature):
    return verify(old_public_hex, contract.key_rotation_message(new_public_hex), signature)


# --- the key directory ---------------------------------------------------------------

def key_paths(directory, name):
    """(private key path, public key path) of key *name* in *directory*."""
    if name not in NAMES:
        raise SigningKeyError("no signing key called %r (one of %s)" % (name, ", ".join(NAMES)))
    return os.path.join(directory, name + ".key"), os.path.join(directory, name + ".pub")


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path, data, mode):
    """Write *path*, which must not exist: a temporary file (mode *mode*
    from the start) linked into place, so an existing key is never replaced
    and a crash never leaves half a key."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise SigningKeyError("%s appeared while it was being written (another run?): nothing was replaced"
                                  % path)
    finally:
        os.unlink(tmp)
    _fsync_dir(directory)


def _ensure_dir(directory, dry_run=False):
    """The key directory, created 0700; returns whether it changed (would change)."""
    if not os.path.isabs(directory):
        raise SigningKeyError("the signing key directory %r must be an absolute path" % (directory,))
    if not os.path.isdir(directory):
        if not dry_run:
            os.makedirs(directory, DIR_MODE)
            os.chmod(directory, DIR_MODE)  # whatever the umask
        return True
    if stat.S_IMODE(os.stat(directory).st_mode) != DIR_MODE:
        if not dry_run:
            os.chmod(directory, DIR_MODE)
        return True
    return False


def _present(directory):
    """The names of the keys with a file (private or public) in *directory*."""
    return [n for n in NAMES if any(os.path.exists(p) for p in key_paths(directory, n))]


def _check_pair(directory, name, dry_run=False):
    """(key, public hex, changed) of an existing pair; writes a missing
    public file, tightens a private key's mode; refuses a mismatch."""
    key_path, pub_path = key_paths(directory, name)
    changed = False
    key = load_private_key(key_path)
    derived = public_key_hex(key)
    if stat.S_IMODE(os.stat(key_path).st_mode) != KEY_MODE:
        if not dry_run:
            os.chmod(key_path, KEY_MODE)
        changed = True
    if not os.path.exists(pub_path):
        if not dry_run:
            _write_new(pub_path, (derived + "\n").encode(), 0o644)
        return key, derived, True
    recorded = read_public_file(pub_path)
    if recorded != derived:
        raise SigningKeyError(
            "the OTA signing key %s does not match its public key %s (it is %s..., the file says %s...): one of "
            "them was replaced by hand. Nothing was signed or replaced. Put back the matching pair from the backup "
            "of the secrets directory; to change the key, rotate it deliberately (%s)"
            % (key_path, pub_path, derived[:20], recorded[:20], DOCS))
    return key, derived, changed


def ensure_key(directory, name="current", dry_run=False):
    """Make sure key *name* exists in *directory* and is consistent; create
    it only as the module docstring's rules allow. Returns {"key",
    "public_key", "key_path", "public_key_path", "created", "changed"}.
    With *dry_run* nothing is written: a key that would be created is
    reported with key and public_key None."""
    require_cryptography()
    changed = _ensure_dir(directory, dry_run)
    key_path, pub_path = key_paths(directory, name)
    has_key, has_pub = os.path.exists(key_path), os.path.exists(pub_path)
    created = False
    if has_pub and not has_key:
        raise SigningKeyError(
            "%s exists but its private key %s does not: the OTA signing key is never regenerated implicitly "
            "(every board holds its public key and would refuse images signed by another). Restore %s from the "
            "backup of the secrets directory. If it is lost for good, the boards must be re-flashed with a new "
            "key (%s)" % (pub_path, key_path, key_path, DOCS))
    if not has_key:
        others = [n for n in _present(directory) if n != name]
        if name == "current" and others:
            raise SigningKeyError(
                "%s has no current key but holds %s: a rotation was interrupted or a file was lost. Nothing was "
                "generated (a new key would orphan every board). Restore current.key and current.pub from the "
                "backup, or finish the rotation (%s)" % (directory, ", ".join(n + ".*" for n in others), DOCS))
        if name != "current" and "current" not in _present(directory):
            raise SigningKeyError("%s has no current key to rotate from: create it first (the ota_signing role)"
                                  % directory)
        if name == "next" and os.path.exists(os.path.join(directory, HANDOVER)):
            raise SigningKeyError(
                "%s records a hand-over in progress, but next.key is missing: devices that accepted it trust that "
                "next key now, and a new one would strand them. Restore next.key and next.pub from the backup; if "
                "they are lost, re-flash the devices %s lists as accepted, then remove it"
                % (os.path.join(directory, HANDOVER), HANDOVER))
        if dry_run:
            return {"key": None, "public_key": None, "key_path": key_path, "public_key_path": pub_path,
                    "created": True, "changed": True}
        _write_new(key_path, private_pem(generate_key()), KEY_MODE)
        created = changed = True
    key, public_hex, pair_changed = _check_pair(directory, name, dry_run)
    return {"key": key, "public_key": public_hex, "key_path": key_path, "public_key_path": pub_path,
            "created": created, "changed": changed or pair_changed}


def current_public_key(directory):
    """The current public key hex (what flash stations and the rollout
    check against), from its file; SigningKeyError when there is none."""
    _key_path, pub_path = key_paths(directory, "current")
    if not os.path.exists(pub_path):
        raise SigningKeyError("there is no OTA signing key: %s does not exist (the ota_signing role creates it; "
                              "site.yml runs it with the ota_server role)" % pub_path)
    return read_public_file(pub_path)


def load_pair(directory, name):
    """(key, public hex) of an existing, consistent key *name*; never
    writes anything. SigningKeyError when it is missing or inconsistent."""
    require_cryptography()
    key_path, pub_path = key_paths(directory, name)
    if not os.path.exists(key_path):
        raise SigningKeyError("there is no %s signing key: %s does not exist" % (name, key_path))
    key = load_private_key(key_path)
    derived = public_key_hex(key)
    if os.path.exists(pub_path) and read_public_file(pub_path) != derived:
        raise SigningKeyError("the OTA signing key %s does not match its public key %s: put back the matching pair "
                              "from the backup (%s)" % (key_path, pub_path, DOCS))
    return key, derived


def _retire(directory):
    """Move previous.* into retired/<16 hex digits of its point>.*."""
    key_path, pub_path = key_paths(directory, "previous")
    if not (os.path.exists(key_path) or os.path.exists(pub_path)):
        return None
    if os.path.exists(key_path):
        tag = public_key_hex(load_private_key(key_path))[2:18]
    else:
        tag = read_public_file(pub_path)[2:18]
    retired = _retired_dir(directory)
    for path, suffix in ((key_path, ".key"), (pub_path, ".pub")):
        if os.path.exists(path):
            os.replace(path, os.path.join(retired, tag + suffix))
    return tag


def _retired_dir(directory):
    retired = os.path.join(directory, RETIRED)
    if not os.path.isdir(retired):
        os.makedirs(retired, DIR_MODE)
    return retired


def _file_handover(directory, new_hex):
    """The finished hand-over's record goes to retired/handover-<new key's tag>.json."""
    path = os.path.join(directory, HANDOVER)
    if os.path.exists(path):
        os.replace(path, os.path.join(_retired_dir(directory), "handover-%s.json" % new_hex[2:18]))


def promote(directory):
    """next -> current, the old current -> previous (the previous one before
    it, and the hand-over's record, into retired/). Returns {"public_key",
    "previous_public_key", "changed"}. Also finishes a promotion that was
    interrupted between its steps (current.key already the next key,
    next.pub still there). Only after every device accepted the hand-over:
    the caller's rule."""
    require_cryptography()
    next_key, next_pub = key_paths(directory, "next")
    cur_key, cur_pub = key_paths(directory, "current")
    prev_key, prev_pub = key_paths(directory, "previous")
    if not os.path.exists(next_key) and os.path.exists(next_pub) and os.path.exists(cur_key):
        # interrupted after the private key moved: finish with the public file
        pending = read_public_file(next_pub)
        if public_key_hex(load_private_key(cur_key)) == pending:
            os.replace(next_pub, cur_pub)
            _fsync_dir(directory)
            _file_handover(directory, pending)
            previous = read_public_file(prev_pub) if os.path.exists(prev_pub) else None
            return {"public_key": pending, "previous_public_key": previous, "changed": True}
    if not os.path.exists(next_key):
        raise SigningKeyError("there is no next key to promote in %s: create it first (ota_signing_key state=next)"
                              % directory)
    _new_key, new_hex, _new_changed = _check_pair(directory, "next")
    _old_key, old_hex, _old_changed = _check_pair(directory, "current")
    _retire(directory)
    os.link(cur_pub, prev_pub)
    os.link(cur_key, prev_key)
    _fsync_dir(directory)
    os.replace(next_key, cur_key)  # from here the current key is the new one (the rest is the record)
    _fsync_dir(directory)
    os.replace(next_pub, cur_pub)
    _fsync_dir(directory)
    _file_handover(directory, new_hex)
    return {"public_key": new_hex, "previous_public_key": old_hex, "changed": True}

"""plugins/module_utils/otasign.py: the site's OTA signing key on the
Ansible controller. Signatures in the contract's formats that an independent
verifier (cryptography's own, from the raw point) accepts; deterministic
signatures; a key created once and never replaced; every inconsistent state
refused with the files named."""

import os
import stat

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import contract
import otasign
from otasign import SigningKeyError

SHA = "ab" * 32
ENTRY = ("app", "1.2.0", 1024, SHA, 3)


@pytest.fixture(scope="module")
def key():
    return otasign.generate_key()


def independent_verify(public_hex, message, signature):
    """Verify as a device would: the raw point and r||s, nothing of otasign."""
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(public_hex))
    der = encode_dss_signature(int(signature[:64], 16), int(signature[64:], 16))
    pub.verify(der, message, ec.ECDSA(hashes.SHA256()))


def test_formats_are_the_contracts(key):
    public_hex = otasign.public_key_hex(key)
    assert contract.check_public_key(public_hex) == public_hex and public_hex.startswith("04")
    signature = otasign.sign_entry(key, *ENTRY)
    assert contract.check_signature(signature) == signature
    independent_verify(public_hex, contract.ota_signed_message(*ENTRY), signature)


def test_entry_signature_verifies_and_is_deterministic(key):
    public_hex = otasign.public_key_hex(key)
    signature = otasign.sign_entry(key, *ENTRY)
    assert otasign.verify_entry(public_hex, *ENTRY, signature)
    # RFC 6979: the same entry gets the same signature (a manifest written twice is the same file)
    assert otasign.sign_entry(key, *ENTRY) == signature
    assert otasign.sign_entry(key, "app", "1.2.0", 1024, SHA.upper(), 3) == signature  # the contract lower-cases


@pytest.mark.parametrize("index, value", [(0, "firmware"), (1, "1.2.1"), (2, 1025), (3, "cd" * 32), (4, 4)],
                         ids=["payload", "version", "size", "sha256", "security_version"])
def test_changing_any_signed_field_breaks_verification(key, index, value):
    public_hex = otasign.public_key_hex(key)
    signature = otasign.sign_entry(key, *ENTRY)
    changed = list(ENTRY)
    changed[index] = value
    assert not otasign.verify_entry(public_hex, *changed, signature)
    with pytest.raises(InvalidSignature):
        independent_verify(public_hex, contract.ota_signed_message(*changed), signature)


def test_another_key_or_a_damaged_signature_does_not_verify(key):
    signature = otasign.sign_entry(key, *ENTRY)
    other = otasign.public_key_hex(otasign.generate_key())
    assert not otasign.verify_entry(other, *ENTRY, signature)
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    assert not otasign.verify_entry(otasign.public_key_hex(key), *ENTRY, flipped)
    for bad in (signature.upper(), signature[:-2], None, 42):
        assert not otasign.verify_entry(otasign.public_key_hex(key), *ENTRY, bad)


@pytest.mark.parametrize("entry, fragment", [
    (("bootloader", "1", 1, SHA, 0), "payload must be one of"),
    (("app", "", 1, SHA, 0), "version must be"),
    (("app", "1", 0, SHA, 0), "size must be a positive integer"),
    (("app", "1", True, SHA, 0), "size must be a positive integer"),
    (("app", "1", 1, "xyz", 0), "sha256 must be 64 hex digits"),
    (("app", "1", 1, SHA, -1), "security_version must be an integer"),
    (("app", "1", 1, SHA, "3"), "security_version must be an integer"),
    (("app", "1", 1, SHA, 2 ** 31), "security_version must be an integer"),
])
def test_bad_entries_are_refused_before_signing(key, entry, fragment):
    with pytest.raises(SigningKeyError, match=fragment):
        otasign.sign_entry(key, *entry)


def test_handover_is_signed_by_the_old_key_over_the_new_public_key(key):
    new = otasign.generate_key()
    new_hex, old_hex = otasign.public_key_hex(new), otasign.public_key_hex(key)
    signature = otasign.sign_handover(key, new_hex)
    cmd = contract.signing_key_command("sk-1", new_hex, signature)
    assert contract.check_signing_key_command(cmd) == (new_hex, signature)
    independent_verify(old_hex, contract.key_rotation_message(new_hex), signature)
    assert otasign.verify_handover(old_hex, new_hex, signature)
    assert not otasign.verify_handover(new_hex, new_hex, signature)  # not signed by the new key
    third = otasign.public_key_hex(otasign.generate_key())
    assert not otasign.verify_handover(old_hex, third, signature)  # not a hand-over to another key


@pytest.mark.parametrize("public_hex, fragment", [
    ("04" + "00" * 64, "not a point of the P-256 curve"),
    ("03" + "11" * 64, "starting 04"),
    ("04" + "AB" * 64, "lower-case hex"),
    ("04ab", "130 lower-case hex digits"),
])
def test_public_keys_are_checked(public_hex, fragment):
    with pytest.raises(SigningKeyError, match=fragment):
        otasign.public_key_from_hex(public_hex)


# --- the key directory -----------------------------------------------------------------

def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_fresh_directory_gets_one_key_once(tmp_path):
    d = str(tmp_path / "signing")
    first = otasign.ensure_key(d)
    assert first["created"] and first["changed"]
    assert mode(d) == 0o700 and mode(first["key_path"]) == 0o600
    assert open(first["public_key_path"]).read() == first["public_key"] + "\n"
    assert b"PRIVATE KEY" in open(first["key_path"], "rb").read()
    again = otasign.ensure_key(d)
    assert not again["created"] and not again["changed"]
    assert again["public_key"] == first["public_key"]
    assert otasign.current_public_key(d) == first["public_key"]
    assert sorted(os.listdir(d)) == ["current.key", "current.pub"]  # no temporary files left


def test_dry_run_writes_nothing(tmp_path):
    d = tmp_path / "signing"
    r = otasign.ensure_key(str(d), dry_run=True)
    assert r["created"] and r["public_key"] is None and not d.exists()
    otasign.ensure_key(str(d))
    os.chmod(d / "current.key", 0o644)
    (d / "current.pub").unlink()
    r = otasign.ensure_key(str(d), dry_run=True)
    assert r["changed"] and not r["created"] and mode(d / "current.key") == 0o644 and not (d / "current.pub").exists()


def test_a_missing_public_file_is_derived_and_a_loose_mode_tightened(tmp_path):
    d = str(tmp_path)
    first = otasign.ensure_key(d)
    os.unlink(first["public_key_path"])
    os.chmod(first["key_path"], 0o644)
    again = otasign.ensure_key(d)
    assert again["changed"] and not again["created"]
    assert again["public_key"] == first["public_key"] and mode(first["key_path"]) == 0o600


def test_a_public_file_without_its_private_key_is_never_regenerated(tmp_path):
    d = str(tmp_path)
    first = otasign.ensure_key(d)
    os.unlink(first["key_path"])
    with pytest.raises(SigningKeyError) as e:
        otasign.ensure_key(d)
    assert "current.pub exists but its private key" in str(e.value) and "never regenerated" in str(e.value)
    assert sorted(os.listdir(d)) == ["current.pub"]
    assert open(first["public_key_path"]).read() == first["public_key"] + "\n"


def test_a_key_that_does_not_match_its_public_file_is_refused(tmp_path):
    d = str(tmp_path)
    first = otasign.ensure_key(d)
    other = otasign.public_key_hex(otasign.generate_key())
    with open(first["public_key_path"], "w") as f:
        f.write(other + "\n")
    with pytest.raises(SigningKeyError, match="does not match its public key"):
        otasign.ensure_key(d)
    assert open(first["public_key_path"]).read() == other + "\n"  # nothing replaced


def test_no_current_key_beside_other_keys_is_refused(tmp_path):
    d = str(tmp_path)
    otasign.ensure_key(d)
    os.rename(tmp_path / "current.key", tmp_path / "previous.key")
    os.rename(tmp_path / "current.pub", tmp_path / "previous.pub")
    with pytest.raises(SigningKeyError, match="has no current key but holds previous"):
        otasign.ensure_key(d)
    assert not (tmp_path / "current.key").exists()


@pytest.mark.parametrize("content, fragment", [
    (b"not a key", "is not a PEM private key"),
    ("rsa", "is not an ECDSA P-256"),
    ("p384", "is not an ECDSA P-256"),
    ("encrypted", "is encrypted"),
])
def test_foreign_keys_are_refused(tmp_path, content, fragment):
    from cryptography.hazmat.primitives.asymmetric import rsa

    if content == "rsa":
        content = rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    elif content == "p384":
        content = otasign.private_pem(ec.generate_private_key(ec.SECP384R1()))
    elif content == "encrypted":
        content = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"))
    (tmp_path / "current.key").write_bytes(content)
    with pytest.raises(SigningKeyError, match=fragment):
        otasign.ensure_key(str(tmp_path))


def test_a_bad_public_file_names_itself(tmp_path):
    otasign.ensure_key(str(tmp_path))
    (tmp_path / "current.pub").write_text("04zz\n")
    with pytest.raises(SigningKeyError, match="the public key in .*current.pub must be 130"):
        otasign.current_public_key(str(tmp_path))


def test_no_key_at_all_is_named(tmp_path):
    with pytest.raises(SigningKeyError, match="there is no OTA signing key: .*current.pub does not exist"):
        otasign.current_public_key(str(tmp_path))
    with pytest.raises(SigningKeyError, match="absolute path"):
        otasign.ensure_key("relative/signing")

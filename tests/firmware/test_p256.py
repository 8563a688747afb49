"""firmware/app/p256.py, the device's ECDSA P-256 / SHA-256 verifier:

- every case of Wycheproof's ecdsa_secp256r1_sha256_p1363_test.json
  (tests/data/wycheproof) plus our own: malformed keys and signatures, and
  signatures by the keys G and -G (which no Wycheproof key is), on
  CPython and on both builds of MicroPython's unix port (the module compiled
  by mpy-cross, as the image packs it), through tests/firmware/mpy/p256_driver.py
  and a file of cases (the unix port aborts on long argv strings);
- under CPython: signatures made by the ``cryptography`` library verify, any
  flipped bit of message, signature or key does not, and each kind of
  malformed key raises ValueError naming the problem.

Wycheproof's "acceptable" results (legacy encodings a library may accept)
are treated as must-not-verify: p256 takes exactly 64-byte signatures. The
vendored version of the file has no such case (its older version's four
were 2-byte signatures, "invalid" now); ACCEPTABLE records the choice.
"""

import collections
import hashlib
import json
import pathlib
import secrets
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

import p256
from interp import command

ROOT = pathlib.Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "data" / "wycheproof" / "ecdsa_secp256r1_sha256_p1363_test.json"
DRIVER = pathlib.Path(__file__).parent / "mpy" / "p256_driver.py"
# what the driver must print for each Wycheproof result
EXPECTED = {"valid": "True", "invalid": "False"}
ACCEPTABLE = "False"  # strict: an "acceptable" case must not verify
EXPECTED["acceptable"] = ACCEPTABLE
WYCHEPROOF_COUNTS = {"valid": 169, "invalid": 83}

P, N, B = p256.P, p256.N, p256.B


def wycheproof_cases():
    """[(id, key hex, msg hex, sig hex, result)] of every test in the file."""
    data = json.loads(VECTORS.read_text())
    cases = [(f"wp{t['tcId']}", g["publicKey"]["uncompressed"], t["msg"], t["sig"], t["result"])
             for g in data["testGroups"] for t in g["tests"]]
    assert len(cases) == data["numberOfTests"]
    return cases


def _sqrt(v):
    """A square root mod P (P = 3 mod 4), or None."""
    root = pow(v, (P + 1) // 4, P)
    return root if root * root % P == v % P else None


def _x_beyond_p():
    """x0 + p (< 2**256) for the smallest x0 of a curve point: the same point
    mod p, so only the range check rejects it."""
    x0 = 0
    while _sqrt(x0 ** 3 - 3 * x0 + B) is None:
        x0 += 1
    return x0 + P, _sqrt(x0 ** 3 - 3 * x0 + B)


def _int32(v):
    return v.to_bytes(32, "big")


def malformed_keys(good):
    """[(id, key bytes, expected ValueError text)] built from the valid key *good*."""
    x, y = good[1:33], good[33:]
    far_x, far_y = _x_beyond_p()
    off_curve = (int.from_bytes(y, "big") + 1) % P
    return [
        ("key-empty", b"", "must be 65 bytes"),
        ("key-short", good[:-1], "must be 65 bytes"),
        ("key-long", good + b"\0", "must be 65 bytes"),
        ("key-compressed", b"\x02" + x, "must be 65 bytes"),
        ("key-prefix-03", b"\x03" + x + y, "must start with 0x04"),
        ("key-prefix-00", b"\x00" + x + y, "must start with 0x04"),
        ("key-infinity", b"\x00", "point at infinity"),
        ("key-zeros", b"\x04" + bytes(64), "point at infinity"),
        ("key-x-ge-p", b"\x04" + _int32(far_x) + _int32(far_y), "X coordinate"),
        ("key-y-ge-p", b"\x04" + x + _int32(2 ** 256 - 1), "Y coordinate"),
        ("key-off-curve", b"\x04" + x + _int32(off_curve), "not a point on the P-256 curve"),
    ]


def malformed_signatures(sig):
    """[(id, signature bytes)] that must not verify, from a valid *sig*."""
    r, s = sig[:32], sig[32:]
    return [
        ("sig-empty", b""),
        ("sig-63", sig[:-1]),
        ("sig-65", sig + b"\0"),
        ("sig-65-lead0", b"\0" + sig),
        ("sig-r0", bytes(32) + s),
        ("sig-s0", r + bytes(32)),
        ("sig-rn", _int32(N) + s),
        ("sig-sn", r + _int32(N)),
        ("sig-r-n+1", _int32(N + 1) + s),
        ("sig-all-ff", b"\xff" * 64),
    ]


def _keypair(d=None):
    key = ec.generate_private_key(ec.SECP256R1()) if d is None else ec.derive_private_key(d, ec.SECP256R1())
    pub = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return key, pub


def _sign(key, msg):
    r, s = utils.decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    return _int32(r) + _int32(s)


def edge_key_signatures():
    """[(id, key, msg, sig)]: signatures by d = 1 (Q = G) and d = n - 1
    (Q = -G: G + Q, in the Shamir table, is the point at infinity), which no
    Wycheproof key is."""
    out = []
    for name, d in (("g", 1), ("neg-g", N - 1)):
        key, pub = _keypair(d)
        for i, msg in enumerate((b"", b"edge", secrets.token_bytes(40))):
            out.append((f"own-key-{name}-{i}", pub, msg, _sign(key, msg)))
    return out


def _hex(b):
    return b.hex() or "-"


def test_wycheproof_and_malformed_inputs(interp, compiled_device, tmp_path):
    cases = wycheproof_cases()
    assert dict(collections.Counter(c[4] for c in cases)) == WYCHEPROOF_COUNTS
    first = cases[0]
    assert first[4] == "valid"
    good_key, msg, good_sig = bytes.fromhex(first[1]), bytes.fromhex(first[2]), bytes.fromhex(first[3])
    expected = {c[0]: EXPECTED[c[4]] for c in cases}
    lines = [f"{c[0]} {c[1]} {c[2] or '-'} {c[3] or '-'}" for c in cases]
    lines.append(f"own-valid {_hex(good_key)} {_hex(msg)} {_hex(good_sig)}")
    expected["own-valid"] = "True"
    for case, key, text in malformed_keys(good_key):
        lines.append(f"{case} {_hex(key)} {_hex(msg)} {_hex(good_sig)}")
        expected[case] = "ValueError " + text
    for case, sig in malformed_signatures(good_sig):
        lines.append(f"{case} {_hex(good_key)} {_hex(msg)} {_hex(sig)}")
        expected[case] = "False"
    for case, key, edge_msg, sig in edge_key_signatures():
        lines.append(f"{case} {_hex(key)} {_hex(edge_msg)} {_hex(sig)}")
        expected[case] = "True"
    path = tmp_path / "cases.txt"
    path.write_text("\n".join(lines) + "\n")

    argv, env = command(interp, DRIVER, compiled_device)
    run = subprocess.run(argv + [str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout.splitlines()
    assert out[-1] == f"cases {len(lines)}"
    got = dict(line.split(" ", 1) for line in out[:-1])
    assert len(got) == len(expected) == 252 + 1 + 11 + 10 + 6
    wrong = []
    for case, want in expected.items():
        have = got.get(case)
        if have is not None and want.startswith("ValueError "):
            ok = have.startswith("ValueError ") and want[len("ValueError "):] in have
        else:
            ok = have == want
        if not ok:
            wrong.append(f"{case}: want {want!r}, got {have!r}")
    assert not wrong, f"{len(wrong)} of {len(expected)} cases wrong on {interp}:\n" + "\n".join(wrong[:40])
    # every Wycheproof key is valid: no case raised
    assert not [c for c, v in got.items() if c.startswith("wp") and v.startswith("ValueError")]


# --- CPython only ------------------------------------------------------------------


def _flip(data, bit):
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


@pytest.mark.parametrize("size", [0, 1, 32, 55, 56, 64, 1000])
def test_cryptography_signatures_verify(size):
    for _ in range(5):
        key, pub = _keypair()
        msg = secrets.token_bytes(size)
        sig = _sign(key, msg)
        assert p256.verify(pub, msg, sig)
        assert p256.verify(bytearray(pub), bytearray(msg), bytearray(sig))
        assert p256.verify(memoryview(pub), memoryview(msg), memoryview(sig))
        # ECDSA accepts (r, n - s) too: no low-s rule
        s = int.from_bytes(sig[32:], "big")
        assert p256.verify(pub, msg, sig[:32] + _int32(N - s))


def test_a_hash_above_n_verifies():
    """e = SHA-256(message) >= n must be reduced mod n. Finding such a message
    takes ~2**32 hashes, so this uses Wycheproof's (tcId 90)."""
    above = [c for c in wycheproof_cases() if int.from_bytes(hashlib.sha256(bytes.fromhex(c[2])).digest(), "big") >= N]
    assert [c[0] for c in above] == ["wp90"] and above[0][4] == "valid"
    case = above[0]
    assert p256.verify(bytes.fromhex(case[1]), bytes.fromhex(case[2]), bytes.fromhex(case[3]))


def test_every_flipped_bit_fails():
    key, pub = _keypair()
    msg = secrets.token_bytes(24)
    sig = _sign(key, msg)
    assert p256.verify(pub, msg, sig)
    for bit in range(len(msg) * 8):
        assert not p256.verify(pub, _flip(msg, bit), sig), f"message bit {bit}"
    for bit in range(len(sig) * 8):
        assert not p256.verify(pub, msg, _flip(sig, bit)), f"signature bit {bit}"
    for bit in range(len(pub) * 8):  # nearly every flip leaves the curve; a flip that does not must fail too
        flipped = _flip(pub, bit)
        try:
            p256.check_public_key(flipped)
        except ValueError:
            with pytest.raises(ValueError):
                p256.verify(flipped, msg, sig)
            continue
        assert not p256.verify(flipped, msg, sig), f"key bit {bit}"
    # valid keys other than the signer's: another key, and -Q (same X)
    other_key, other = _keypair()
    negated = pub[:33] + _int32(P - int.from_bytes(pub[33:], "big"))  # -Q: valid, same x
    for wrong in (other, negated):
        assert p256.check_public_key(wrong) == wrong
        assert not p256.verify(wrong, msg, sig)


def test_signature_by_another_key_or_message_fails():
    key, pub = _keypair()
    other, _ = _keypair()
    assert not p256.verify(pub, b"firmware", _sign(other, b"firmware"))
    assert not p256.verify(pub, b"firmware", _sign(key, b"firmwarf"))


def test_malformed_keys_raise_value_error_naming_the_problem():
    _, pub = _keypair()
    sig = bytes(range(1, 65))
    for case, key, text in malformed_keys(pub):
        with pytest.raises(ValueError, match=text):
            p256.check_public_key(key)
        with pytest.raises(ValueError, match=text):
            p256.verify(key, b"m", sig)
    for wrong_type in (pub.hex(), None, 4):
        with pytest.raises(ValueError, match="must be bytes"):
            p256.check_public_key(wrong_type)
    assert p256.check_public_key(pub) is pub


def test_generator_and_its_negation_are_valid_keys():
    """Q = G and Q = -G verify (and a changed message does not)."""
    for case, pub, msg, sig in edge_key_signatures():
        assert p256.verify(pub, msg, sig), case
        assert not p256.verify(pub, msg + b"!", sig), case


def test_malformed_signatures_are_false_and_wrong_types_raise():
    key, pub = _keypair()
    sig = _sign(key, b"m")
    assert p256.verify(pub, b"m", sig)
    for case, bad in malformed_signatures(sig):
        assert p256.verify(pub, b"m", bad) is False, case
    with pytest.raises(TypeError):
        p256.verify(pub, b"m", sig.hex())
    with pytest.raises(TypeError):
        p256.verify(pub, "m", sig)

"""Device identity: the firmware's own BLAKE2s and id encoding, checked
against CPython's hashlib and an independent RFC 4648 base32 path, on CPython
and under a real MicroPython (from the mpy-cross compiled module)."""

import base64
import hashlib
import json
import random

import pytest

import identity
from mpy_runner import compile_app, run_micropython

RFC4648 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
MACS = ["24:0a:c4:12:34:01", "30:AE:A4:07:20:32", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "a4cf12abcdef"]


def independent_short8(mac):
    raw = bytes.fromhex(mac.replace(":", ""))
    digest = hashlib.blake2s(raw, digest_size=5).digest()
    return base64.b32encode(digest).decode().translate(str.maketrans(RFC4648, identity.CROCKFORD))


@pytest.mark.parametrize("length", [0, 1, 5, 6, 55, 63, 64, 65, 127, 128, 129, 300])
@pytest.mark.parametrize("digest_size", [1, 5, 16, 32])
def test_blake2s_matches_hashlib(length, digest_size):
    data = random.Random(length * 33 + digest_size).randbytes(length)
    assert identity.blake2s(data, digest_size) == hashlib.blake2s(data, digest_size=digest_size).digest()


@pytest.mark.parametrize("mac", MACS)
def test_device_id_matches_the_independent_computation(mac):
    assert identity.device_id("psu", mac) == "psu-" + independent_short8(mac)


def test_known_lab_ids():
    assert identity.device_id("psu", "24:0a:c4:12:34:01") == "psu-ktcyat68"
    assert identity.device_id("oven", bytes.fromhex("240ac4123421")) == "oven-tvcft64q"


@pytest.mark.parametrize("bad", ["24:0a:c4:12:34", "zz:0a:c4:12:34:01", "", b"\x01\x02"])
def test_bad_mac_is_refused_with_the_value(bad):
    with pytest.raises(ValueError) as err:
        identity.device_id("psu", bad)
    assert "MAC" in str(err.value)


@pytest.mark.parametrize("kind", ["", "p", "PSU", "1psu", "ps-u", "a" * 17, None])
def test_bad_kind_is_refused(kind):
    with pytest.raises(ValueError) as err:
        identity.device_id(kind, MACS[0])
    assert "kind" in str(err.value)


def test_split_device_id():
    assert identity.split_device_id("oven-tvcft64q") == ("oven", "tvcft64q")
    for bad in ("oven", "oven-tvcft64", "oven-TVCFT64Q", "oven-tvcft64u", "-tvcft64q"):
        with pytest.raises(ValueError):
            identity.split_device_id(bad)


def test_same_results_under_micropython(tmp_path):
    mpy = compile_app(tmp_path, ["identity"])
    code = (
        "import identity\n"
        f"macs = {MACS!r}\n"
        "print([identity.device_id('env', m) for m in macs])\n"
        "print(identity.blake2s(bytes(range(200)), 32).hex())\n"
    )
    lines = run_micropython(code, mpy).splitlines()
    assert json.loads(lines[0].replace("'", '"')) == ["env-" + independent_short8(m) for m in MACS]
    assert lines[1] == hashlib.blake2s(bytes(range(200))).hexdigest()

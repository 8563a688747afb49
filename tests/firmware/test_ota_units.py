"""Boot slot selection and app bundles (no network)."""

import hashlib

import pytest

import bootsel
import ota
from firmware.sim.board import HostFS


@pytest.fixture
def fs(tmp_path):
    return HostFS(str(tmp_path / "flash"))


def test_fresh_device_boots_slot_a(fs):
    assert bootsel.select(fs)["active"] == "a"


def test_staged_slot_boots_pending_then_rolls_back_if_never_confirmed(fs):
    bootsel.stage(fs, "b", {"id": "c1", "version": "2"})
    first = bootsel.select(fs)
    assert first["active"] == "b" and first["pending"] and first["attempts"] == 1
    second = bootsel.select(fs)
    assert second["active"] == "a" and not second["pending"]
    assert second["last"]["result"] == "rolled_back" and second["last"]["id"] == "c1"


def test_confirmed_slot_stays(fs):
    bootsel.stage(fs, "b", {"id": "c1", "version": "2"})
    bootsel.select(fs)
    bootsel.confirm(fs)
    for _ in range(3):
        state = bootsel.select(fs)
    assert state["active"] == "b" and state["last"]["result"] == "confirmed"


def test_corrupt_boot_file_falls_back_to_a(fs):
    with fs.open("boot.json", "w") as f:
        f.write("{broken")
    assert bootsel.select(fs)["active"] == "a"


def test_bundle_roundtrip_and_determinism(fs):
    files = {"b.py": b"print(2)\n", "a.py": b"print(1)\n"}
    data = ota.pack_bundle("1.2.3", files)
    assert data == ota.pack_bundle("1.2.3", dict(reversed(list(files.items()))))
    with fs.open("in.bin", "wb") as f:
        f.write(data)
    assert ota.unpack_bundle(fs, "in.bin", "b") == "1.2.3"
    with fs.open("app_b/a.py", "rb") as f:
        assert f.read() == b"print(1)\n"
    assert ota.slot_version(fs, "b") == "1.2.3" and ota.slot_version(fs, "a") is None


@pytest.mark.parametrize("tamper,reason", [
    (lambda d: d[:-1] + b"X", "damaged"),
    (lambda d: b"not json\n" + d.split(b"\n", 1)[1], "manifest"),
])
def test_damaged_bundle_is_refused(fs, tamper, reason):
    data = tamper(ota.pack_bundle("1", {"a.py": b"x = 1\n"}))
    with fs.open("in.bin", "wb") as f:
        f.write(data)
    with pytest.raises(ota.OtaError, match=reason):
        ota.unpack_bundle(fs, "in.bin", "b")
    assert not fs.exists("app_b/manifest.json"), "a refused bundle must not look installable"


def test_bundle_cannot_write_outside_its_slot(fs):
    body = b"x"
    manifest = ('{"version":"1","files":[{"name":"../boot.json","size":1,"sha256":"%s"}]}\n'
                % hashlib.sha256(body).hexdigest()).encode()
    with fs.open("in.bin", "wb") as f:
        f.write(manifest + body)
    with pytest.raises(ota.OtaError, match="not allowed"):
        ota.unpack_bundle(fs, "in.bin", "b")

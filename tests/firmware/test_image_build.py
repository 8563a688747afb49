"""The flash image build: partition table, littlefs filesystem with the
compiled app, NVS, merge with the MicroPython base image, determinism, and
proof that the simulator runs the very files the image packs.

The MicroPython ESP32 firmware.bin cannot be downloaded here, so these tests
use a stand-in with the same layout (image headers at 0x1000 and 0x10000);
what is tested is our part: everything around it."""

import hashlib
import json
import pathlib
import struct
import sys

import pytest

import firmware.image as build
import testkeys
from mpy_runner import APP, SOURCES, run_micropython

KEY = testkeys.new_key()  # the test site's OTA signing key
DEVICE = {"id": "psu-ktcyat68", "kind": "psu", "site": "lab", "broker": {"host": "10.0.0.2", "port": 1883},
          "password": "secret", "config": {"pzem_addresses": [1, 2, 3], "temperature_zones": 0},
          "signing_key": KEY.public}


def stand_in_micropython():
    bootloader = bytes([0xE9]) + b"B" * (0x7000 - 1)
    old_table = b"\xff" * (0x10000 - 0x8000)
    app = bytes([0xE9]) + b"A" * (0x1000 - 1)
    return bootloader + old_table + app


@pytest.fixture(scope="module")
def built():
    return build.build_image(stand_in_micropython(), DEVICE, ca_pem=b"-----BEGIN CERTIFICATE-----\n",
                             wifi={"ssid": "plant-net", "password": "pw"}, version="1.4.0")


def test_partition_table_layout():
    table = build.partition_table()
    assert len(table) == 0xC00
    entries = []
    for i in range(0, len(table), 32):
        row = table[i:i + 32]
        if row[:2] != b"\xaa\x50":
            break
        _, ptype, subtype, offset, size, label, flags = struct.unpack("<2sBBLL16sL", row)
        entries.append((label.rstrip(b"\0").decode(), ptype, subtype, offset, size))
    md5_row = table[len(entries) * 32:len(entries) * 32 + 32]
    assert md5_row[:2] == b"\xeb\xeb" and md5_row[16:] == hashlib.md5(table[:len(entries) * 32]).digest()
    assert set(table[len(entries) * 32 + 32:]) == {0xFF}
    assert entries == list(build.PARTITIONS)
    spans = sorted((o, o + s) for _, _, _, o, s in entries)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert spans[0][0] >= 0x9000 and spans[-1][1] <= build.FLASH_SIZE
    assert build.partition("ota_0")[4] == build.partition("ota_1")[4]


def test_image_layout(built):
    image, report = built
    assert len(image) == build.FLASH_SIZE and report["sha256"] == hashlib.sha256(image).hexdigest()
    assert image[0x1000] == 0xE9 and image[0x1001:0x1004] == b"BBB"
    assert image[0x8000:0x8C00] == build.partition_table()
    assert image[0x10000] == 0xE9 and image[0x10001:0x10004] == b"AAA"
    nvs = image[0x9000:0xE000]
    assert nvs[:4] == b"\xfe\xff\xff\xff", "NVS page 0 must be active"
    assert b"plant-net" in nvs and b"edgefleet" in nvs


def read_filesystem(image):
    vfs = build.partition("vfs")
    return build.read_littlefs(image[vfs[3]:vfs[3] + vfs[4]])


def test_filesystem_holds_the_compiled_app_and_device_files(built, tmp_path):
    image, report = built
    files = read_filesystem(image)
    assert json.loads(files["device.json"]) == DEVICE
    assert json.loads(files["device.json"])["signing_key"] == KEY.public  # the public key, for the OTA check
    pem = KEY.key.private_bytes(*_pkcs8())
    der = KEY.key.private_numbers().private_value.to_bytes(32, "big")
    assert b"PRIVATE KEY" not in image and pem not in image and der not in image
    assert files["main.py"] == (APP / "main.py").read_bytes()
    assert {"bootsel.mpy", "board_esp32.mpy", "boardkit.mpy", "supervisor.mpy", "ca.crt"} <= set(files)
    manifest = json.loads(files["app_a/manifest.json"])
    assert manifest["version"] == "1.4.0"
    for entry in manifest["files"]:
        assert hashlib.sha256(files["app_a/" + entry["name"]]).hexdigest() == entry["sha256"]
    # the packed bytecode runs on MicroPython as it is
    for name, data in files.items():
        if name.startswith("app_a/") and name.endswith(".mpy"):
            (tmp_path / name.split("/")[1]).write_bytes(data)
    out = run_micropython("import identity\nprint(identity.device_id('psu', '24:0a:c4:12:34:01'))", tmp_path)
    assert out.strip() == DEVICE["id"]


def test_freeze_manifest_freezes_the_modules_the_image_packs(tmp_path):
    """What firmware.image writes for MicroPython's FROZEN_MANIFEST: the
    port's own manifest first (when given), then exactly the modules the
    image packs, as their sources; main.py stays a file (/main.py)."""
    manifest = build.freeze_manifest(tmp_path / "frozen", "$(PORT_DIR)/boards/manifest.py")
    calls = []
    exec(manifest.read_text(), {"include": lambda path: calls.append(("include", path)),
                                "freeze": lambda path, script=None: calls.append(("freeze", path, script))})
    assert calls[0] == ("include", "$(PORT_DIR)/boards/manifest.py")
    [(_, folder, scripts)] = calls[1:]
    assert set(scripts) == {p.name for p in build.app_sources()} - {"main.py"}
    sources = {p.name: p for p in build.app_sources()}
    for name in scripts:
        assert (manifest.parent / folder / name).read_bytes() == sources[name].read_bytes()
    assert sorted(p.name for p in (manifest.parent / folder).iterdir()) == sorted(scripts)


def test_image_for_a_firmware_with_the_app_frozen_in_holds_no_modules():
    image, report = build.build_image(stand_in_micropython(), DEVICE, ca_pem=b"-----BEGIN CERTIFICATE-----\n",
                                      frozen_app=True)
    files = read_filesystem(image)
    assert set(files) == {"main.py", "device.json", "ca.crt"}
    assert files["main.py"] == (APP / "main.py").read_bytes()


def test_same_inputs_same_bytes_and_any_change_shows(built):
    image, report = built
    again, report2 = build.build_image(stand_in_micropython(), DEVICE, ca_pem=b"-----BEGIN CERTIFICATE-----\n",
                                       wifi={"ssid": "plant-net", "password": "pw"}, version="1.4.0")
    assert again == image and report2 == report
    other, report3 = build.build_image(stand_in_micropython(), dict(DEVICE, password="rotated"),
                                       ca_pem=b"-----BEGIN CERTIFICATE-----\n",
                                       wifi={"ssid": "plant-net", "password": "pw"}, version="1.4.0")
    assert report3["sha256"] != report["sha256"]
    rekeyed, report4 = build.build_image(stand_in_micropython(), dict(DEVICE, signing_key=testkeys.new_key().public),
                                         ca_pem=b"-----BEGIN CERTIFICATE-----\n",
                                         wifi={"ssid": "plant-net", "password": "pw"}, version="1.4.0")
    assert report4["sha256"] != report["sha256"]  # a board with another site key needs flashing


def _pkcs8():
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()


@pytest.mark.parametrize("signing_key, reason", [
    (None, "device.json of psu-ktcyat68 has no signing_key"),
    ("04" + "ab" * 32, "signing_key of psu-ktcyat68 must be 130 lower-case hex digits"),
    ("04" + "AB" * 64, "signing_key of psu-ktcyat68 must be 130 lower-case hex digits"),
    ("-----BEGIN PRIVATE KEY-----\nMIG...", "signing_key of psu-ktcyat68 must be 130"),
])
def test_a_device_without_the_sites_public_key_is_refused(signing_key, reason):
    device = dict(DEVICE)
    device.pop("signing_key")
    if signing_key is not None:
        device["signing_key"] = signing_key
    with pytest.raises(build.BuildError, match=reason):
        build.build_regions(stand_in_micropython(), device)


@pytest.mark.parametrize("base,reason", [
    (b"\x00" * 0x20000, "not a MicroPython ESP32 firmware.bin"),
    (bytes([0xE9]) + b"\x00" * 0x10000, "no app image at 0x10000"),
])
def test_bad_base_image_is_refused(base, reason):
    with pytest.raises(build.BuildError, match=reason):
        build.build_image(base, DEVICE)


def test_nvs_keys_are_checked():
    with pytest.raises(build.BuildError, match="longer than 15"):
        build.nvs_image("edgefleet", {"a_very_long_key_name": "x"}, 0x5000)


def test_the_contract_is_packed_from_plugins_module_utils(built):
    """identity, contract and devconfig exist once, in plugins/module_utils:
    the image holds exactly what mpy-cross makes of those files."""
    files = read_filesystem(built[0])
    for name in build.CONTRACT_MODULES:
        source = build.CONTRACT_DIR / f"{name}.py"
        assert not (APP / f"{name}.py").exists(), f"a second copy of {name} in firmware/app"
        assert files[f"app_a/{name}.mpy"] == build.compile_module(source)
    # and the compiler output differs when the source differs (so the comparison can fail)
    assert build.compile_module(build.CONTRACT_DIR / "identity.py") != build.compile_module(
        build.CONTRACT_DIR / "contract.py")


SIM_RUN = """
import asyncio, json, pathlib, sys, tempfile
from firmware import common
from firmware.sim import fleet
with tempfile.TemporaryDirectory() as tmp:
    root = fleet.provision(tmp, "psu-ktcyat68", "psu", "24:0a:c4:12:34:01", "lab", {"host": "127.0.0.1", "port": 1},
                           "pw", initial_config=common.kind_config("psu"), signing_key="04" + "5a" * 64)
    sim = fleet.SimDevice(root, bytes.fromhex("240ac4123401"), "psu", time_scale=0.01)

    async def briefly():
        sim.start()
        for _ in range(200):
            await asyncio.sleep(0.02)
            if sim.device is not None and sim.device.seq > 0:
                break
        await sim.stop()

    asyncio.run(briefly())
    assert sim.device.seq > 0, "the simulated device did not run"
import device
# imported for rare jobs only (a command, an update, a scrape), and rotate and
# rotatecmd only for a rotation (kept out of RARE, see device.py): resolve them too
for name in device.RARE + ("rotate", "rotatecmd"):
    __import__(name)
print(json.dumps(sorted(str(pathlib.Path(m.__file__).resolve()) for m in list(sys.modules.values())
                        if getattr(m, "__file__", None))))
"""


def test_the_simulator_runs_the_files_the_image_packs():
    """Run a simulated device in a fresh interpreter, then compare the device
    modules it loaded with the sources the image build compiles: the same
    files, nothing else (a fresh process, so no other test's imports count).
    The modules the device imports only for a rare job (device.RARE) are
    imported by name in that process, so that they resolve the same way."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", SIM_RUN], cwd=APP.parents[1], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = {pathlib.Path(p) for p in json.loads(out.stdout)}
    device_dirs = {APP, build.CONTRACT_DIR}
    executed = {p for p in loaded if p.parent in device_dirs}
    packed = {p.resolve() for p in build.app_sources()}
    board_only = {APP / "board_esp32.py", APP / "main.py"}
    assert packed == {p.resolve() for p in SOURCES.values()}
    assert executed <= packed, executed - packed
    assert executed == packed - board_only, "packed but never run by the simulator: %s" % (packed - board_only - executed)

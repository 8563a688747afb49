"""plugins/module_utils/esp32flash against ROM-protocol peers (tools/pylib/
rompeer.py): real esptool, several boards in parallel, one of them
failing. The peer stands in for boards that cannot exist here (no chip, no
Espressif QEMU); everything on our side of the serial line is real."""

import hashlib
import json
import types

import esp32flash
import firmware.image as build
import identity
import plugrun
import pytest
import testkeys
from rompeer import RomPeer

MACS = [bytes.fromhex("240ac41234%02x" % i) for i in (1, 2, 3)]
KEY = testkeys.new_key()  # the test site's OTA signing key: boards get its public key
APP = 0x10000
CFG = 0x3F0000


def fake_plan(kind="psu"):
    """A stand-in for firmware/image where only the flashing is under test:
    an app region (same for all) and a per-device region."""
    def plan(mac):
        device_id = identity.device_id(kind, mac)
        regions = regions_of(device_id, mac)
        return device_id, regions, esp32flash.image_digest(regions)
    return plan


def regions_of(device_id, mac):
    app = bytes((i * 7) & 0xFF for i in range(64 * 1024))
    cfg = ('{"device_id": "%s", "mac": "%s"}' % (device_id, mac)).encode().ljust(4096, b"\xff")
    return [(APP, app), (CFG, cfg)]


@pytest.fixture
def peers():
    started = []

    def make(*kws):
        for mac, kw in zip(MACS, kws):
            started.append(RomPeer(mac, **kw).start())
        return started

    yield make
    for p in started:
        p.stop()


def holds(peer, regions):
    return all(peer.flash[a:a + len(d)] == d for a, d in regions)


def test_flashes_each_board_with_its_own_identity_and_a_second_run_changes_nothing(peers):
    ps = peers({}, {}, {})
    results = esp32flash.flash_ports([p.url for p in ps], fake_plan(), workers=3)
    assert [r["error"] for r in results] == [None, None, None]
    for p, r, mac in zip(ps, results, MACS):
        assert r["device_id"] == identity.device_id("psu", mac)  # derived from the MAC the board reported
        assert r["mac"] == esp32flash.format_mac(mac) and r["chip"].startswith("ESP32")
        assert r["changed"] and r["regions_written"] == ["0x10000", "0x3f0000"]
        assert holds(p, regions_of(r["device_id"], r["mac"]))
    writes = [len(p.log) for p in ps]
    again = esp32flash.flash_ports([p.url for p in ps], fake_plan(), workers=3)
    assert [(r["changed"], r["error"]) for r in again] == [(False, None)] * 3
    for p, n in zip(ps, writes):
        later = [name for name, _ in p.log[n:]]
        assert "SPI_FLASH_MD5" in later and not any(c.startswith("FLASH") for c in later)


def test_only_the_stale_region_is_rewritten(peers):
    [p] = peers({})
    [r] = esp32flash.flash_ports([p.url], fake_plan())
    device_id = r["device_id"]
    p.flash[CFG + 10] ^= 0xFF  # the per-device region no longer matches
    [r] = esp32flash.flash_ports([p.url], fake_plan())
    assert r["error"] is None and r["regions_written"] == ["0x3f0000"]
    assert holds(p, regions_of(device_id, r["mac"]))


def test_check_mode_reports_what_would_be_written_and_writes_nothing(peers):
    ps = peers({}, {})
    results = esp32flash.flash_ports([p.url for p in ps], fake_plan("env"), check_mode=True)
    assert [r["changed"] for r in results] == [True, True]
    assert [r["regions_written"] for r in results] == [["0x10000", "0x3f0000"]] * 2
    assert all(p.flash == b"\xff" * len(p.flash) for p in ps)
    assert not any(c.startswith("FLASH") for p in ps for c in p.commands())


def test_a_board_that_drops_mid_write_fails_alone(peers):
    ps = peers({}, {"drop_after": 20_000}, {})
    results = esp32flash.flash_ports([p.url for p in ps], fake_plan(), workers=3, connect_attempts=1)
    assert results[0]["error"] is None and results[2]["error"] is None
    assert results[1]["error"] and results[1]["device_id"] == identity.device_id("psu", MACS[1])
    assert results[1]["log"], "the failed board's esptool messages are kept"
    assert holds(ps[0], regions_of(results[0]["device_id"], results[0]["mac"]))
    assert not holds(ps[1], regions_of(results[1]["device_id"], results[1]["mac"]))
    assert esp32flash.failures(results) == ["%s (%s): %s" % (ps[1].url, results[1]["device_id"], results[1]["error"])]


def test_a_corrupted_write_is_a_failure_not_a_success(peers):
    [p] = peers({"corrupt_at": APP + 5000})
    [r] = esp32flash.flash_ports([p.url], fake_plan("oven"))
    assert r["error"] and ("md5" in r["error"].lower() or "verif" in r["error"].lower()), r["error"]
    assert r["changed"]  # it was stale and a write was attempted


def test_identify_reads_chip_and_mac_and_derives_the_id_without_writing(peers):
    ps = peers({}, {})
    results = esp32flash.identify_ports([p.url for p in ps], "fan")
    assert [r["device_id"] for r in results] == [identity.device_id("fan", m) for m in MACS[:2]]
    assert [r["mac"] for r in results] == [esp32flash.format_mac(m) for m in MACS[:2]]
    assert not any(c.startswith(("FLASH", "SPI_FLASH_MD5")) for p in ps for c in p.commands())


@pytest.mark.parametrize("ports, message", [
    ([], "non-empty list"),
    (["/dev/ttyUSB0", "COM3"], "ports[1] 'COM3' is not a serial port"),
    (["socket://127.0.0.1:1", "socket://127.0.0.1:1"], "listed twice"),
    (["http://example:80"], "is not a serial port"),
])
def test_bad_ports_are_refused_naming_the_value(ports, message):
    with pytest.raises(esp32flash.FlashError, match=message.replace("[", r"\[").replace("]", r"\]")):
        esp32flash.flash_ports(ports, fake_plan())


def test_a_udev_link_and_its_device_are_one_port(tmp_path):
    dev = tmp_path / "ttyUSB0"
    dev.write_text("")
    (tmp_path / "slot1").symlink_to(dev)
    with pytest.raises(esp32flash.FlashError, match="listed twice"):
        esp32flash.check_ports(["/dev/../" + str(dev), "/dev/../" + str(tmp_path / "slot1")])


def test_discovery_keeps_esp32_bridges_and_prefers_stable_names(tmp_path):
    links = tmp_path / "edgefleet"
    links.mkdir()
    (links / "slot3").symlink_to("/dev/ttyUSB1")
    ports = [types.SimpleNamespace(device="/dev/ttyUSB0", vid=0x10C4), types.SimpleNamespace(device="/dev/ttyUSB1", vid=0x1A86),
             types.SimpleNamespace(device="/dev/ttyS0", vid=None), types.SimpleNamespace(device="/dev/ttyACM0", vid=0x2341)]
    assert sorted(esp32flash.discover_ports(ports, str(links))) == sorted([str(links / "slot3"), "/dev/ttyUSB0"])


def test_image_digest_depends_on_addresses_and_bytes():
    a = esp32flash.image_digest([(0x1000, b"x")])
    assert a != esp32flash.image_digest([(0x2000, b"x")]) and a != esp32flash.image_digest([(0x1000, b"y")])
    assert a == hashlib.sha256(b"00001000:1:x").hexdigest()


# --- the registry check and the real image build ---------------------------------------

PSU1 = {"id": identity.device_id("psu", MACS[0]), "mac": "24:0A:C4:12:34:01", "config": {"pzem_addresses": [1]}}


@pytest.mark.parametrize("devices, message", [
    ([{"id": "psu-ktcyat68", "mac": "24:0a:c4:12:34:02"}], "has MAC 24:0a:c4:12:34:02, but that MAC makes a psu board"),
    ([{"id": "psu-ktcyat68", "mac": "not-a-mac"}], r"devices\[0\] \(psu-ktcyat68\): not a MAC"),
    ([{"id": "PSU_1", "mac": "24:0a:c4:12:34:01"}], "not a device id"),
    ([PSU1, dict(PSU1)], "MAC 24:0a:c4:12:34:01 is registered twice"),
    ([{"mac": "24:0a:c4:12:34:01"}], "must be a dict with id and mac"),
])
def test_registered_devices_are_checked_before_any_board(devices, message):
    with pytest.raises(esp32flash.FlashError, match=message):
        esp32flash.check_devices(devices)


def test_a_device_without_a_password_is_refused_before_any_board():
    with pytest.raises(esp32flash.FlashError, match="no MQTT password for psu-ktcyat68"):
        esp32flash.image_planner(build.build_regions, build.flat_image, b"", [PSU1], "lab",
                                 {"host": "h", "port": 1}, {}, signing_key=KEY.public)


@pytest.mark.parametrize("signing_key, message", [
    (None, "signing_key is required: every board gets the site's OTA signing public key"),
    ("", "signing_key is required"),
    ("04" + "ab" * 10, "signing_key must be 130 lower-case hex digits"),
    ("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n",
     "signing_key is a private key: give the public key"),
])
def test_the_sites_public_signing_key_is_required_before_any_board(signing_key, message):
    with pytest.raises(esp32flash.FlashError, match=message):
        esp32flash.image_planner(build.build_regions, build.flat_image, b"", [PSU1], "lab",
                                 {"host": "h", "port": 1}, {PSU1["id"]: "pw"}, signing_key=signing_key)


def test_a_board_holds_its_built_image_byte_for_byte_and_an_unregistered_one_fails(peers):
    """The real firmware/image build per board: the peer's whole flash equals
    the merged image `python -m firmware.image` writes, device.json on its
    filesystem carries its own identity, and a MAC not in the registry fails
    without a write."""
    ps = peers({}, {})
    secret = "s3cret-password-xyz"
    ca = b"-----BEGIN CERTIFICATE-----\nMII...\n-----END CERTIFICATE-----\n"
    plan = esp32flash.image_planner(build.build_regions, build.flat_image, plugrun.stand_in_micropython(), [PSU1], "lab",
                                    {"host": "10.0.0.2", "port": 8883, "tls": True}, {PSU1["id"]: secret},
                                    ca_pem=ca, version="1.2.3", signing_key=KEY.public)
    results = esp32flash.flash_ports([p.url for p in ps], plan, workers=2)
    ok, unregistered = results
    assert ok["error"] is None and ok["device_id"] == PSU1["id"]
    doc = esp32flash.device_document(PSU1["id"], "psu", "lab", {"host": "10.0.0.2", "port": 8883}, secret,
                                     PSU1["config"], ca=True, signing_key=KEY.public)
    image, report = build.build_image(plugrun.stand_in_micropython(), doc, ca, None, "1.2.3")
    assert bytes(ps[0].flash) == image and ok["image_sha256"] == report["sha256"]
    files = build.read_littlefs(bytes(ps[0].flash[0x310000:0x400000]))
    assert json.loads(files["device.json"])["id"] == PSU1["id"] and files["ca.crt"] == ca
    assert json.loads(files["device.json"])["signing_key"] == KEY.public
    assert "not registered" in unregistered["error"] and unregistered["mac"] == "24:0a:c4:12:34:02"
    assert not any(c.startswith("FLASH") for c in ps[1].commands())
    assert secret not in json.dumps(results)


def test_the_simulator_boots_a_board_from_its_flash_bytes(peers, tmp_path):
    """firmware.sim --flash: the partition table and filesystem read back
    from the board give the device its identity; a dump paired with another
    board's MAC is refused."""
    from firmware.sim import fleet

    [p] = peers({})
    plan = esp32flash.image_planner(build.build_regions, build.flat_image, plugrun.stand_in_micropython(), [PSU1], "lab",
                                    {"host": "127.0.0.1", "port": 1883, "tls": False}, {PSU1["id"]: "pw"},
                                    signing_key=KEY.public)
    [r] = esp32flash.flash_ports([p.url], plan)
    assert r["error"] is None
    root, device_id, kind = fleet.boot_from_flash(str(tmp_path), bytes(p.flash), MACS[0])
    assert (device_id, kind) == (PSU1["id"], "psu")
    doc = json.loads((tmp_path / device_id / "device.json").read_text())
    assert doc["broker"] == {"host": "127.0.0.1", "port": 1883, "tls": False} and doc["password"] == "pw"
    assert doc["signing_key"] == KEY.public  # the simulated board holds the site key as flashed
    assert (tmp_path / device_id / "app_a" / "manifest.json").is_file()
    with pytest.raises(ValueError, match="not the id of MAC"):
        fleet.boot_from_flash(str(tmp_path), bytes(p.flash), MACS[1])
    with pytest.raises(build.BuildError, match="no partition table"):
        fleet.boot_from_flash(str(tmp_path), b"\xff" * 0x400000, MACS[0])

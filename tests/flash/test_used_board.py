"""Flashing a board that has run (docs/flashing.md, "A board that has run"):
the real image build and real esptool against a ROM-protocol peer
(tools/pylib/rompeer.py: the board, which cannot exist here), and the
simulator running the unchanged app from that board's own flash bytes
against a real Mosquitto and a real HTTP server. The app's writes (applied
config, an app bundle and then a MicroPython image by OTA, the offline
buffer) go back into the peer's flash (fleet.SimDevice(flash=...)); a
second flash keeps them and updates the project's files; factory_reset
wipes them. And flash-time config goes through the device's own rules
before any board is written."""

import asyncio
import json
import pathlib
import sys
import uuid

import esp32flash
import firmware.image as build
import identity
import plugrun
import pytest
import testkeys
from rompeer import RomPeer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "integration"))
from roleacl import render_acl  # noqa: E402
from simsite import SERVICE, online, payloads, topic, until, watcher  # noqa: E402

import ota  # noqa: E402  (firmware/app: the bundle format the device unpacks)
from firmware import common  # noqa: E402
from firmware.sim import fleet  # noqa: E402

SITE = "it"  # simsite.topic() builds topics of this site
KIND, MAC = "psu", "24:0a:c4:12:34:01"
DEV = identity.device_id(KIND, MAC)
RAW = bytes.fromhex(MAC.replace(":", ""))
APP_VERSION, IMAGE_VERSION = "0.9.0", "0.9.1"
SETTINGS = {"watchdog_s": 0, "selftest_timeout_s": 150}  # simsite's settings for sped-up time


def planner(broker_port, password, key, config=None):
    devices = [{"id": DEV, "mac": MAC, "config": common.kind_config(KIND, MAC) if config is None else config}]
    return esp32flash.image_planner(build.build_regions, build.flat_image, plugrun.stand_in_micropython(), devices,
                                    SITE, {"host": "127.0.0.1", "port": broker_port, "tls": False},
                                    {DEV: password}, version="0.2.0", settings=SETTINGS, signing_key=key.public,
                                    layout=build.flash_layout())


def ota_cmd(key, www, payload, version, data, security_version=0):
    artifact = www.publish("%s-%s.bin" % (payload, version), data)
    return dict(key.sign(dict(artifact, payload=payload, version=version), security_version), id="ota-" + uuid.uuid4().hex[:6],
                cmd="ota")


def board_fs(peer):
    return build.read_filesystem(bytes(peer.flash))


def flashes(peer, since=0):
    return [c for c in peer.commands()[since:] if c.startswith("FLASH")]


def run_board(peer, broker, key, www, tmp_path):
    """Boot the simulator from the peer's flash; let the app apply a cfg,
    install an app bundle and a MicroPython image by OTA, and buffer
    telemetry while its network is down; power it off (its files go back
    into the peer's flash)."""
    root, device_id, kind = fleet.boot_from_flash(str(tmp_path / "sim"), bytes(peer.flash), RAW)
    sim = fleet.SimDevice(root, RAW, kind, time_scale=0.02, flash=peer.flash)
    ctl = watcher(broker, "controller", topic(DEV, "#"))

    def oks():
        return [r for r in payloads(ctl, "ota", DEV) if r["state"] in ("confirmed", "failed", "rolled_back")]

    async def scenario():
        await online(ctl, DEV)
        ctl.publish(topic(DEV, "cfg"), json.dumps({"version": 7, "publish_interval_s": 9}), retain=True)
        await until(lambda: any(a.get("result") == "applied" for a in payloads(ctl, "cfg/ack", DEV)), 10, "cfg applied")
        bundle = ota.pack_bundle(APP_VERSION, {"device.py": b"# the updated app\n", "version.txt": b"0.9.0"})
        # security version 1: the board records it (and the key it trusts) in signing.json once confirmed
        ctl.publish(topic(DEV, "cmd"), json.dumps(ota_cmd(key, www, "app", APP_VERSION, bundle, 1)))
        await until(lambda: len(oks()) >= 1, 20, "the app update's final state")
        image = bytes(range(256)) * 256  # a 64 KiB stand-in MicroPython image: the partitions are what counts
        ctl.publish(topic(DEV, "cmd"), json.dumps(ota_cmd(key, www, "firmware", IMAGE_VERSION, image, 1)))
        await until(lambda: len(oks()) >= 2, 20, "the image update's final state")
        await online(ctl, DEV, count=3)
        sim.go_offline(3600)
        await until(lambda: sim.device is not None and len(sim.device.buffer) >= 2, 10, "telemetry buffered")
        return image

    async def main():
        task = sim.start()
        try:
            return await scenario()
        finally:
            await sim.stop()
            assert task.done()

    image = asyncio.run(main())
    states = [r["state"] for r in oks()]
    ctl.close()
    assert states == ["confirmed", "confirmed"], payloads(ctl, "ota", DEV)
    return image


def boot_and_status(peer, broker, state_dir):
    """Boot the simulator from the peer's flash until its first online status; return that status."""
    root, _, kind = fleet.boot_from_flash(str(state_dir), bytes(peer.flash), RAW)
    sim = fleet.SimDevice(root, RAW, kind, time_scale=0.02, flash=peer.flash)
    ctl = watcher(broker, "controller", topic(DEV, "status"))

    async def main():
        sim.start()
        try:
            await online(ctl, DEV)
        finally:
            await sim.stop()

    asyncio.run(main())
    statuses = [s for s in payloads(ctl, "status", DEV) if s.get("online")]
    ctl.close()
    return statuses[0], sim.board.firmware_running()


@pytest.fixture
def peer():
    p = RomPeer(RAW).start()
    yield p
    p.stop()


def test_a_used_board_keeps_what_it_wrote_gets_the_projects_new_files_and_factory_reset_wipes_it(
        peer, broker, www, tmp_path):
    b = broker(users=dict(SERVICE, **{DEV: "pw-1"}), acl=render_acl(SITE, [DEV]))
    key = testkeys.site_key(tmp_path / "secrets")
    [first] = esp32flash.flash_ports([peer.url], planner(b.port, "pw-1", key))
    assert first["error"] is None and first["changed"] and not first["board_files_kept"]
    fresh = board_fs(peer)

    image = run_board(peer, b, key, www, tmp_path)
    used = board_fs(peer)
    board_own = {p: d for p, d in used.items() if not build.project_owned(p, used)}
    assert json.loads(used["config.json"])["version"] == 7  # what the app wrote is in the board's flash now
    assert json.loads(used["boot.json"])["active"] == "b" and used["app_b/device.py"] == b"# the updated app\n"
    assert len([p for p in used if p.startswith("buf/")]) >= 2
    assert json.loads(used["signing.json"]) == {"key": key.public, "security_version": 1}
    assert bytes(peer.flash[0x190000:0x190000 + len(image)]) == image  # MicroPython's new image in ota_1
    assert fleet.read_otadata(peer.flash) == ("ota_1", False)  # and the board's boot selection

    # the same inputs again: the project's files are all there, nothing is written
    n = len(peer.commands())
    [same] = esp32flash.flash_ports([peer.url], planner(b.port, "pw-1", key))
    assert same["error"] is None and not same["changed"] and flashes(peer, n) == []
    assert same["regions_kept"] == ["0xe000", "0x10000"] and "config.json" in same["board_files_kept"]

    # a rotated password: device.json is rewritten, the board's own files and partitions stay
    before = bytes(peer.flash)
    [rotated] = esp32flash.flash_ports([peer.url], planner(b.port, "pw-2", key))
    assert rotated["error"] is None and rotated["changed"], rotated
    assert rotated["regions_written"] == ["0x310000"] and rotated["files_written"] == ["device.json"]
    assert rotated["regions_kept"] == ["0xe000", "0x10000"] and not rotated["board_files_reset"]
    after = board_fs(peer)
    assert json.loads(after["device.json"])["password"] == "pw-2"
    assert {p: d for p, d in after.items() if not build.project_owned(p, after)} == board_own
    assert after["app_a/manifest.json"] == used["app_a/manifest.json"]
    assert bytes(peer.flash[:0x310000]) == before[:0x310000]  # otadata and both app partitions untouched
    # ... and the board boots from it: the new password (on a broker that has only that one) with the
    # OTA-updated app and the config it applied
    b2 = broker(users=dict(SERVICE, **{DEV: "pw-2"}), acl=render_acl(SITE, [DEV]))
    [moved] = esp32flash.flash_ports([peer.url], planner(b2.port, "pw-2", key))
    assert moved["error"] is None and moved["files_written"] == ["device.json"]
    status, running = boot_and_status(peer, b2, tmp_path / "again")
    assert status["fw"] == APP_VERSION and status["cfg_version"] == 7 and running == "ota_1", status

    # a rotated OTA signing key reaches the board even though it trusts signing.json's key first
    held = json.loads(board_fs(peer)["signing.json"])
    key2 = testkeys.new_key()
    [rekeyed] = esp32flash.flash_ports([peer.url], planner(b2.port, "pw-2", key2))
    assert rekeyed["error"] is None and rekeyed["files_written"] == ["device.json", "signing.json"], rekeyed
    assert json.loads(board_fs(peer)["signing.json"]) == dict(held, key=key2.public)
    key = key2

    # check mode of a factory reset: says so, writes nothing
    n = len(peer.commands())
    [would] = esp32flash.flash_ports([peer.url], planner(b2.port, "pw-2", key), check_mode=True, factory_reset=True)
    assert would["changed"] and would["board_files_reset"] and would["factory_reset"] and flashes(peer, n) == []
    assert "wiped (factory reset)" in esp32flash.diff_after(would)

    # factory reset: the whole image as a new board gets it
    [reset] = esp32flash.flash_ports([peer.url], planner(b2.port, "pw-2", key), factory_reset=True)
    assert reset["error"] is None and reset["board_files_reset"] and reset["regions_kept"] == []
    doc = esp32flash.device_document(DEV, KIND, SITE, {"host": "127.0.0.1", "port": b2.port, "tls": False}, "pw-2",
                                     common.kind_config(KIND, MAC), settings=SETTINGS, signing_key=key.public)
    whole, _ = build.build_image(plugrun.stand_in_micropython(), doc, None, None, "0.2.0")
    ota_1 = build.partition("ota_1")
    # all but ota_1, which the image does not define: with a blank boot selection it never boots
    assert bytes(peer.flash[:ota_1[3]]) == whole[:ota_1[3]]
    assert bytes(peer.flash[ota_1[3] + ota_1[4]:]) == whole[ota_1[3] + ota_1[4]:]
    print("blocks read %s; seconds: first %s, same %s, rotated %s, check %s, reset %s" % ((same["blocks_read"],) + tuple(
        r["seconds"] for r in (first, same, rotated, would, reset))))
    assert set(board_fs(peer)) == set(fresh) and fleet.read_otadata(peer.flash) == ("ota_0", False)


def test_a_board_flashed_for_another_device_id_starts_fresh_and_says_so(peer, tmp_path):
    """The board's filesystem holds another id (re-registered as another
    kind): its config, buffer and app were that device's."""
    key = testkeys.new_key()
    other = identity.device_id("env", MAC)
    plan = esp32flash.image_planner(build.build_regions, build.flat_image, plugrun.stand_in_micropython(),
                                    [{"id": other, "mac": MAC}], SITE, {"host": "h", "port": 1, "tls": False},
                                    {other: "pw"}, signing_key=key.public, layout=build.flash_layout())
    [r] = esp32flash.flash_ports([peer.url], plan)
    assert r["error"] is None
    root, _, _ = fleet.boot_from_flash(str(tmp_path), bytes(peer.flash), RAW)
    (pathlib.Path(root) / "config.json").write_text('{"version": 3}')  # what its app wrote
    fleet.write_to_flash(root, peer.flash)
    [r] = esp32flash.flash_ports([peer.url], planner(1883, "pw", key))
    assert r["error"] is None and r["identity_changed"] == {"from": other, "to": DEV} and r["board_files_reset"]
    files = board_fs(peer)
    assert json.loads(files["device.json"])["id"] == DEV and "config.json" not in files
    assert "identity changed from %s" % other in esp32flash.diff_after(r)


@pytest.mark.parametrize("config, source, message", [
    ({"publish_interval_s": 0}, "device_flash_config (host var of %s)" % DEV, "publish_interval_s must be between"),
    ({"pzem_adresses": [1]}, "flash_default_config[psu] (station line1)", "pzem_adresses"),
])
def test_flash_time_config_the_device_would_refuse_is_refused_before_any_board_is_written(
        peer, config, source, message):
    key = testkeys.new_key()
    devices = [{"id": DEV, "mac": MAC, "config": config, "config_from": source}]
    with pytest.raises(esp32flash.FlashError) as e:
        esp32flash.image_planner(build.build_regions, build.flat_image, plugrun.stand_in_micropython(), devices,
                                 SITE, {"host": "h", "port": 1}, {DEV: "pw"}, signing_key=key.public)
    text = str(e.value)
    assert DEV in text and source in text and message in text, text
    assert not flashes(peer)


def test_the_simulator_cli_writes_what_the_board_wrote_back_into_its_flash_dump(peer, tmp_path):
    """python -m firmware.sim --flash DUMP=MAC: a board with no broker to reach
    buffers its telemetry in its filesystem; the dump holds it afterwards."""
    import subprocess
    key = testkeys.new_key()
    [r] = esp32flash.flash_ports([peer.url], planner(1, "pw", key))  # port 1: nothing listens
    assert r["error"] is None
    dump = tmp_path / "board.bin"
    dump.write_bytes(bytes(peer.flash))
    run = subprocess.run([sys.executable, "-m", "firmware.sim", "--flash", "%s=%s" % (dump, MAC), "--state-dir",
                          str(tmp_path / "sim"), "--time-scale", "0.05", "--duration", "3"],
                         cwd=str(pathlib.Path(build.ROOT)), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    files = build.read_filesystem(dump.read_bytes())
    assert [p for p in files if p.startswith("buf/") and p != "buf/dropped"], sorted(files)
    assert files["device.json"] == board_fs(peer)["device.json"]

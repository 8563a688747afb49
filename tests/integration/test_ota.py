"""OTA of both payloads on simulated devices (the firmware's own ota.py,
bootsel.py and httpget.py) against a real broker and a real HTTP server:
success, corrupted download, stalled download, self-test failure with
rollback, and power cuts at the risky steps."""

import asyncio
import functools
import hashlib
import http.server
import json
import threading
import uuid

import pytest

import bootsel
import ota
from simsite import DEVICES, messages, run_for, topic, watcher

NEW_VERSION = "0.2.0"


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def publish_file(http_dir, name, data):
    root, url = http_dir
    (root / name).write_bytes(data)
    return {"url": f"{url}/{name}", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def app_bundle():
    files = {"device.py": b"# new app\n", "version.txt": NEW_VERSION.encode()}
    return ota.pack_bundle(NEW_VERSION, files)


def ota_cmd(payload, artifact, **extra):
    return dict({"id": "ota-" + uuid.uuid4().hex[:6], "cmd": "ota", "payload": payload, "version": NEW_VERSION},
                **artifact, **extra)


def run_ota(site, http_dir, payload, data, setup=None, settle=3.0, cmd_extra=None):
    sims = site(DEVICES[:1])
    sim = sims[0]
    device_id = DEVICES[0][0]
    sim.board.faults.selftest_fail = False
    if setup:
        setup(sim)
    ctl = watcher(site.broker, "controller", topic(device_id, "ota"))
    status = watcher(site.broker, "controller", topic(device_id, "status"))
    cmd = ota_cmd(payload, publish_file(http_dir, "artifact.bin", data), **(cmd_extra or {}))

    async def scenario():
        await asyncio.sleep(0.5)
        ctl.publish(topic(device_id, "cmd"), json.dumps(cmd))
        await asyncio.sleep(settle)

    asyncio.run(run_for(sims, 0, during=scenario))
    reports = [json.loads(m.payload) for m in messages(ctl)]
    statuses = [json.loads(m.payload) for m in messages(status)]
    ctl.close()
    status.close()
    assert all(r["id"] == cmd["id"] for r in reports), reports
    return sim, [r["state"] for r in reports], reports, statuses


def test_app_bundle_update_is_confirmed(site, http_dir):
    sim, states, reports, statuses = run_ota(site, http_dir, "app", app_bundle())
    assert states == ["downloading", "verifying", "rebooting", "confirmed"]
    state = bootsel.load(sim.board.fs)
    assert state["active"] == "b" and not state["pending"] and state["last"]["result"] == "confirmed"
    assert sim.boots == 2
    assert statuses[-1]["fw"] == NEW_VERSION or any(s.get("fw") == NEW_VERSION for s in statuses)
    assert sim.board.fs.exists("app_b/device.py") and sim.board.fs.exists("app_b/manifest.json")


def test_corrupted_download_fails_and_nothing_switches(site, http_dir):
    def corrupt(sim):
        sim.board.faults.ota_corrupt = True

    sim, states, reports, _ = run_ota(site, http_dir, "app", app_bundle(), setup=corrupt, settle=1.5)
    assert states == ["downloading", "failed"]
    assert "sha256 mismatch" in reports[-1]["detail"]
    assert bootsel.load(sim.board.fs)["active"] == "a" and sim.boots == 1


def test_stalled_download_times_out(site, http_dir):
    def hang(sim):
        sim.board.faults.ota_hang = True

    sim, states, reports, _ = run_ota(site, http_dir, "app", app_bundle(), setup=hang, settle=2.5,
                                      cmd_extra={"timeout_s": 1})
    assert states == ["downloading", "failed"] and "stalled" in reports[-1]["detail"]
    assert bootsel.load(sim.board.fs)["active"] == "a"


def test_failed_self_test_rolls_back_to_the_previous_slot(site, http_dir):
    def broken_new_app(sim):
        sim.board.faults.selftest_fail = True

    sim, states, reports, statuses = run_ota(site, http_dir, "app", app_bundle(), setup=broken_new_app, settle=4.0)
    assert states == ["downloading", "verifying", "rebooting", "rolled_back"]
    assert "self-test failed" in reports[-1]["detail"]
    state = bootsel.load(sim.board.fs)
    assert state["active"] == "a" and not state["pending"]
    assert sim.boots == 3  # old slot, new slot (self-test fails), old slot again
    assert statuses[-1]["fw"] != NEW_VERSION


def test_firmware_image_update_is_confirmed(site, http_dir):
    image = bytes(range(256)) * 512  # 128 KiB stand-in image: the partition handling is what is tested
    sim, states, reports, _ = run_ota(site, http_dir, "firmware", image)
    assert states == ["downloading", "verifying", "rebooting", "confirmed"]
    assert sim.board.firmware_running() == "ota_1" and not sim.board.firmware_pending()
    with open(sim.board.firmware.root + "/ota_1.bin", "rb") as f:
        assert f.read() == image


def test_firmware_image_that_fails_its_self_test_is_reverted_by_the_bootloader(site, http_dir):
    def broken(sim):
        sim.board.faults.selftest_fail = True

    sim, states, reports, _ = run_ota(site, http_dir, "firmware", b"\x00" * 4096, setup=broken, settle=4.0)
    assert states == ["downloading", "verifying", "rebooting", "rolled_back"]
    assert sim.board.firmware_running() == "ota_0"


def test_power_cut_during_download_and_before_confirmation_leaves_a_bootable_device(site, http_dir):
    sims = site(DEVICES[:1])
    sim = sims[0]
    device_id = DEVICES[0][0]
    sim.board.faults.ota_hang = True
    ctl = watcher(site.broker, "controller", topic(device_id, "ota"))
    cmd = ota_cmd("app", publish_file(http_dir, "a.bin", app_bundle()), timeout_s=30)

    async def scenario():
        await asyncio.sleep(0.5)
        ctl.publish(topic(device_id, "cmd"), json.dumps(cmd))
        await asyncio.sleep(0.5)  # the download is stalled half way
        await sim.power_off()
        sim.start()
        await asyncio.sleep(1.0)
        assert sim.device.online() and bootsel.load(sim.board.fs)["active"] == "a"
        # now power cuts right after the switch: the device is off while the
        # new slot boots once (bootsel.select, as main.py does) and dies
        # before its self-test; the next boot must return to the old slot
        sim.board.faults.ota_hang = False
        await sim.power_off()
        bootsel.stage(sim.board.fs, "b", {"id": "x", "version": NEW_VERSION, "payload": "app"})
        assert bootsel.select(sim.board.fs)["active"] == "b"  # first boot of b, pending
        sim.start()  # second boot of an unconfirmed slot
        await asyncio.sleep(1.0)
        assert sim.device.online()

    asyncio.run(run_for(sims, 0, during=scenario))
    ctl.close()
    state = bootsel.load(sim.board.fs)
    assert state["active"] == "a" and state["last"]["result"] == "rolled_back"
    assert sim.device is not None


def test_app_update_over_https_with_the_site_ca(broker, tmp_path):
    import ssl

    from firmware.sim import fleet
    from simsite import SERVICE
    from roleacl import render_acl
    from tlsca import make_ca_and_server

    tls = make_ca_and_server(tmp_path / "tls")
    device_id, kind, mac = DEVICES[0]
    b = broker(users=dict(SERVICE, **{device_id: "pw"}), acl=render_acl("it", [device_id]))
    www = tmp_path / "www"
    www.mkdir()
    data = app_bundle()
    (www / "app.bin").write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls["cert"], tls["key"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = fleet.provision(str(tmp_path / "sim"), device_id, kind, mac, "it", {"host": "127.0.0.1", "port": b.port},
                           "pw", ca_file=str(tls["ca"]), initial_config=fleet.kind_config(kind))
    sim = fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind, time_scale=0.02)
    ctl = watcher(b, "controller", topic(device_id, "ota"))
    cmd = ota_cmd("app", {"url": f"https://127.0.0.1:{server.server_address[1]}/app.bin", "size": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()})

    async def scenario():
        await asyncio.sleep(0.5)
        ctl.publish(topic(device_id, "cmd"), json.dumps(cmd))
        await asyncio.sleep(3.0)

    try:
        asyncio.run(run_for([sim], 0, during=scenario))
    finally:
        server.shutdown()
    states = [json.loads(m.payload)["state"] for m in messages(ctl)]
    ctl.close()
    assert states == ["downloading", "verifying", "rebooting", "confirmed"]
    assert bootsel.load(sim.board.fs)["active"] == "b"

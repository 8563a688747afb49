"""OTA of both payloads on simulated devices (the firmware's own ota.py,
bootsel.py, supervisor.py and httpget.py) against a real broker and a real
HTTP server: success, corrupted download, stalled download, out of memory,
self-test failure with rollback, a new slot that keeps crashing, the
watchdog, power cuts at the risky steps, and answers to other commands.
Every OTA command is signed with the test site's key (tools/pylib/testkeys),
as the controller signs it, and its URL is plain http:// (the contract).
Every wait is on a condition with a deadline."""

import asyncio
import json
import uuid

import pytest

import bootsel
import ota
import supervisor
import testkeys
from simsite import DEVICES, online, payloads, run_for, topic, until, watcher
from www import Www

NEW_VERSION = "0.9.0"
FINAL = ("confirmed", "failed", "rolled_back")


def app_bundle():
    files = {"device.py": b"# new app\n", "version.txt": NEW_VERSION.encode()}
    return ota.pack_bundle(NEW_VERSION, files)


def ota_cmd(site, payload, artifact, security_version=0, **extra):
    """An ota command for *artifact* (url, size, sha256), signed by the site key."""
    signed = site.key.sign(dict(artifact, payload=payload, version=NEW_VERSION), security_version)
    return dict(signed, id="ota-" + uuid.uuid4().hex[:6], cmd="ota", **extra)


def run_ota(site, www, payload, data, setup=None, cmd_extra=None, until_boots=None):
    """Send one OTA command to a device once it is online; return when the
    device reported a final state (and, with *until_boots*, booted that often).
    A device reports confirmed or rolled_back after its status of that boot."""
    sims = site(DEVICES[:1])
    sim = sims[0]
    device_id = DEVICES[0][0]
    if setup:
        setup(sim)
    ctl = watcher(site.broker, "controller", topic(device_id, "#"))
    cmd = ota_cmd(site, payload, www.publish("artifact.bin", data), **(cmd_extra or {}))

    def final():
        return [r for r in payloads(ctl, "ota", device_id) if r["state"] in FINAL]

    async def scenario():
        await online(ctl, device_id)  # subscribed to cmd by then
        ctl.publish(topic(device_id, "cmd"), json.dumps(cmd))
        await until(final, 20, "a final OTA state")
        if until_boots:
            await until(lambda: sim.boots >= until_boots, 10, f"boot {until_boots}")

    asyncio.run(run_for(sims, 0, during=scenario))
    reports = payloads(ctl, "ota", device_id)
    statuses = [s for s in payloads(ctl, "status", device_id) if s.get("online")]
    ctl.close()
    assert all(r["id"] == cmd["id"] for r in reports), reports
    return sim, [r["state"] for r in reports], reports, statuses


def test_app_bundle_update_is_confirmed(site, www):
    sim, states, reports, statuses = run_ota(site, www, "app", app_bundle())
    assert states == ["downloading", "verifying", "rebooting", "confirmed"]
    state = bootsel.load(sim.board.fs)
    assert state["active"] == "b" and not state["pending"] and state["last"]["result"] == "confirmed"
    assert sim.boots == 2
    assert statuses[-1]["fw"] == NEW_VERSION
    assert sim.board.fs.exists("app_b/device.py") and sim.board.fs.exists("app_b/manifest.json")
    assert not sim.board.fs.exists(ota.INCOMING)


def test_corrupted_download_fails_and_nothing_switches(site, www):
    def corrupt(sim):
        sim.board.faults.ota_corrupt = True

    sim, states, reports, _ = run_ota(site, www, "app", app_bundle(), setup=corrupt)
    assert states == ["downloading", "failed"]
    assert "sha256 mismatch" in reports[-1]["detail"]
    assert bootsel.load(sim.board.fs)["active"] == "a" and sim.boots == 1
    assert not sim.board.fs.exists(ota.INCOMING), "a failed download must not keep flash"


def test_stalled_download_times_out(site, www):
    def hang(sim):
        sim.board.faults.ota_hang = True

    sim, states, reports, _ = run_ota(site, www, "app", app_bundle(), setup=hang, cmd_extra={"timeout_s": 1})
    assert states == ["downloading", "failed"] and "stalled" in reports[-1]["detail"]
    assert bootsel.load(sim.board.fs)["active"] == "a"


def test_running_out_of_memory_during_an_update_is_reported_as_failed(site, www, monkeypatch):
    """MemoryError is what a real ESP32 raises when a download buffer does
    not fit; the controller must hear 'failed', not wait on 'downloading'."""
    def alloc_fails(*a, **kw):
        raise MemoryError("memory allocation failed, allocating 4096 bytes")

    monkeypatch.setattr(ota.FileSink, "write", alloc_fails)
    sim, states, reports, _ = run_ota(site, www, "app", app_bundle())
    assert states == ["downloading", "failed"]
    assert reports[-1]["detail"] == "out of memory during the update"
    assert bootsel.load(sim.board.fs)["active"] == "a"


def test_failed_self_test_rolls_back_to_the_previous_slot(site, www):
    def broken_new_app(sim):
        sim.board.faults.selftest_fail = True

    sim, states, reports, statuses = run_ota(site, www, "app", app_bundle(), setup=broken_new_app, until_boots=3)
    assert states == ["downloading", "verifying", "rebooting", "rolled_back"]
    assert "self-test failed" in reports[-1]["detail"]
    state = bootsel.load(sim.board.fs)
    assert state["active"] == "a" and not state["pending"]
    assert sim.boots == 3  # old slot, new slot (self-test fails), old slot again
    assert statuses[-1]["fw"] != NEW_VERSION


def test_a_new_slot_that_keeps_crashing_is_abandoned(site, www):
    """The new app raises at start, before its self-test: the supervisor
    records the crash and resets; the second unconfirmed boot returns to the
    old slot, which reports the rollback with the crash, and announces it."""
    def crashing_new_app(sim):
        sim.board.faults.crash_pending = True

    sims = site(DEVICES[:1])
    sim = sims[0]
    device_id = DEVICES[0][0]
    crashing_new_app(sim)
    ctl = watcher(site.broker, "controller", topic(device_id, "#"))
    cmd = ota_cmd(site, "app", www.publish("a.bin", app_bundle()))

    async def scenario():
        await online(ctl, device_id)
        ctl.publish(topic(device_id, "cmd"), json.dumps(cmd))
        await until(lambda: any(r["state"] in FINAL for r in payloads(ctl, "ota", device_id)), 20, "a final state")

    asyncio.run(run_for(sims, 0, during=scenario))
    ctl.close()
    states = [r["state"] for r in payloads(ctl, "ota", device_id)]
    assert states == ["downloading", "verifying", "rebooting", "rolled_back"]
    detail = payloads(ctl, "ota", device_id)[-1]["detail"]
    assert "slot b was not confirmed" in detail and "injected crash" in detail
    assert sim.boots == 3 and bootsel.load(sim.board.fs)["active"] == "a"
    crash = payloads(ctl, "announce", device_id)[-1]["crash"]
    assert crash["slot"] == "b" and "injected crash" in crash["error"] and crash["count"] == 1
    assert supervisor.load_crash(sim.board.fs) is None, "a reported crash is cleared"


def test_firmware_image_update_is_confirmed(site, www):
    image = bytes(range(256)) * 512  # 128 KiB stand-in image: the partition handling is what is tested
    sim, states, reports, _ = run_ota(site, www, "firmware", image)
    assert states == ["downloading", "verifying", "rebooting", "confirmed"]
    assert sim.board.firmware_running() == "ota_1" and not sim.board.firmware_pending()
    with open(sim.board.firmware.root + "/ota_1.bin", "rb") as f:
        assert f.read() == image


def test_firmware_image_that_fails_its_self_test_is_reverted_by_the_bootloader(site, www):
    def broken(sim):
        sim.board.faults.selftest_fail = True

    sim, states, reports, _ = run_ota(site, www, "firmware", b"\x00" * 4096, setup=broken, until_boots=3)
    assert states == ["downloading", "verifying", "rebooting", "rolled_back"]
    assert sim.board.firmware_running() == "ota_0"


def test_power_cut_during_download_and_before_confirmation_leaves_a_bootable_device(site, www):
    sims = site(DEVICES[:1])
    sim = sims[0]
    device_id = DEVICES[0][0]
    sim.board.faults.ota_hang = True
    ctl = watcher(site.broker, "controller", topic(device_id, "#"))
    cmd = ota_cmd(site, "app", www.publish("a.bin", app_bundle()), timeout_s=30)

    async def scenario():
        await online(ctl, device_id)
        ctl.publish(topic(device_id, "cmd"), json.dumps(cmd))
        # the download has started: reported, requested from the server, being written
        await until(lambda: payloads(ctl, "ota", device_id), 5, "downloading reported")
        await until(lambda: "/a.bin" in " ".join(www.requests), 5, "the GET at the server")
        await until(lambda: sim.board.fs.exists(ota.INCOMING), 5, "the download file on flash")
        assert payloads(ctl, "ota", device_id)[-1]["state"] == "downloading"
        await sim.power_off()  # half way: the download is stalled
        sim.start()
        await online(ctl, device_id, count=2)
        assert bootsel.load(sim.board.fs)["active"] == "a"
        assert not sim.board.fs.exists(ota.INCOMING), "the partial download is cleared at boot"
        # now power cuts right after the switch: the device is off while the
        # new slot boots once (supervisor.boot, as main.py does) and dies
        # before its self-test; the next boot must return to the old slot
        sim.board.faults.ota_hang = False
        await sim.power_off()
        bootsel.stage(sim.board.fs, "b", {"id": "x", "version": NEW_VERSION, "payload": "app"})
        assert supervisor.boot(sim.board.fs)["active"] == "b"  # first boot of b, pending
        sim.start()  # second boot of an unconfirmed slot
        await online(ctl, device_id, count=3)

    asyncio.run(run_for(sims, 0, during=scenario))
    ctl.close()
    state = bootsel.load(sim.board.fs)
    assert state["active"] == "a" and state["last"]["result"] == "rolled_back"
    assert payloads(ctl, "ota", device_id)[-1] == {"id": "x", "state": "rolled_back", "version": NEW_VERSION,
                                                   "detail": "slot b was not confirmed after boot"}


def test_one_tls_session_through_a_whole_ota(broker, tmp_path, monkeypatch):
    """MQTT over TLS with the site CA, and an update offered twice: over
    HTTPS (refused, even signed: a second TLS session is what an ESP32
    without PSRAM cannot afford) and over plain HTTP (the image is signed).
    Every connection the device opens goes through netio.open_connection;
    the TLS ones are counted, and how many are open at each new one."""
    import netio
    from firmware import common
    from firmware.sim import fleet
    from roleacl import render_acl
    from simsite import SERVICE
    from tlsca import make_ca_and_server

    key = testkeys.new_key()
    tls = make_ca_and_server(tmp_path / "tls")
    device_id, kind, mac = DEVICES[0]
    b = broker(users=dict(SERVICE, **{device_id: "pw"}), acl=render_acl("it", [device_id]), tls=tls)
    (tmp_path / "https").mkdir()
    (tmp_path / "http").mkdir()
    https, http = Www(tmp_path / "https", tls=tls), Www(tmp_path / "http")
    root = fleet.provision(str(tmp_path / "sim"), device_id, kind, mac, "it",
                           {"host": "127.0.0.1", "port": b.tls_port, "tls": True}, "pw", ca_file=str(tls["ca"]),
                           initial_config=common.kind_config(kind, mac), settings={"selftest_timeout_s": 150},
                           signing_key=key.public)
    sim = fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind, time_scale=0.02)
    ctl = watcher(b, "controller", topic(device_id, "#"))

    def command(server):
        artifact = server.publish("app.bin", app_bundle())
        return dict(key.sign(dict(artifact, payload="app", version=NEW_VERSION)), id="ota-" + uuid.uuid4().hex[:6],
                    cmd="ota")

    over_https, over_http = command(https), command(http)
    real_open = netio.open_connection
    tls_open, peak = [], [0]

    async def counting_open(host, port, ssl=None, timeout_s=10):
        reader, writer = await real_open(host, port, ssl, timeout_s)
        if ssl is not None:
            tls_open.append(writer)
            peak[0] = max(peak[0], sum(1 for w in tls_open if not w.transport.is_closing()))
        return reader, writer

    monkeypatch.setattr(netio, "open_connection", counting_open)

    def final(cmd):
        return [r for r in payloads(ctl, "ota", device_id) if r["id"] == cmd["id"] and r["state"] in FINAL]

    async def scenario():
        await online(ctl, device_id)
        for cmd in (over_https, over_http):
            ctl.publish(topic(device_id, "cmd"), json.dumps(cmd))
            await until(lambda: final(cmd), 20, "a final state")

    try:
        asyncio.run(run_for([sim], 0, during=scenario))
    finally:
        https.close()
        http.close()
    ctl.close()
    assert peak[0] == 1, f"{peak[0]} TLS connections open at once"
    refused = [r for r in payloads(ctl, "ota", device_id) if r["id"] == over_https["id"]]
    assert [r["state"] for r in refused] == ["failed"] and "must be http://" in refused[0]["detail"], refused
    assert https.requests == [], "the device must not fetch over HTTPS"
    assert [r["state"] for r in payloads(ctl, "ota", device_id) if r["id"] == over_http["id"]] == [
        "downloading", "verifying", "rebooting", "confirmed"]
    assert bootsel.load(sim.board.fs)["active"] == "b"
    assert len(tls_open) == 2, "one MQTT session before the reboot, one after"

def test_every_command_gets_an_answer(site):
    """reboot is accepted (with its id) and the device reboots; an unknown or
    malformed command is rejected with the reason, never ignored."""
    sims = site(DEVICES[:1])
    sim = sims[0]
    device_id = DEVICES[0][0]
    ctl = watcher(site.broker, "controller", topic(device_id, "#"))

    def answers():
        return payloads(ctl, "cmd/ack", device_id)

    async def scenario():
        await online(ctl, device_id)
        for n, cmd in enumerate([{"id": "u-1", "cmd": "selfdestruct"}, b"{not json", {"cmd": "reboot"},
                                 {"id": "r-1", "cmd": "reboot"}], 1):
            ctl.publish(topic(device_id, "cmd"), cmd if isinstance(cmd, bytes) else json.dumps(cmd))
            await until(lambda: len(answers()) >= n, 5, f"answer {n}")
        await until(lambda: sim.boots == 2, 5, "the reboot")
        await online(ctl, device_id, count=2)

    asyncio.run(run_for(sims, 0, during=scenario))
    ctl.close()
    a = answers()
    assert a[0]["id"] == "u-1" and a[0]["result"] == "rejected" and "unknown command 'selfdestruct'" in a[0]["detail"]
    assert a[1] == {"id": None, "cmd": None, "result": "rejected", "detail": "command is not valid JSON"}
    assert a[2]["id"] is None and a[2]["result"] == "rejected" and "command id" in a[2]["detail"]
    assert a[3] == {"id": "r-1", "cmd": "reboot", "result": "accepted", "detail": None}
    assert payloads(ctl, "announce", device_id)[-1]["reset_cause"] == "soft"


def test_the_watchdog_resets_a_device_whose_sensor_bus_wedged(site):
    """The 1-Wire/Modbus read never returns: the app stops feeding the
    (simulated hardware) watchdog, which resets the board; the next boot
    announces the watchdog reset. A healthy device under the same watchdog
    is not reset."""
    # time_scale 0.05: the healthy device must not be reset by a scheduling delay of the test machine
    sims = site(DEVICES[:2], time_scale=0.05, settings={"watchdog_s": 60})
    wedged, healthy = sims
    ctl = watcher(site.broker, "controller", f"site/it/+/+/#")

    async def scenario():
        for d, _, _ in DEVICES[:2]:
            await online(ctl, d)
        wedged.board.faults.sensors_hang = True
        await until(lambda: wedged.boots >= 2, 20, "the watchdog reset")
        wedged.board.faults.sensors_hang = False
        await online(ctl, DEVICES[0][0], count=2)

    asyncio.run(run_for(sims, 0, during=scenario))
    ctl.close()
    assert payloads(ctl, "announce", DEVICES[0][0])[-1]["reset_cause"] == "watchdog"
    assert healthy.boots == 1 and healthy.board.wdt_timeout == 60
    assert any("watchdog" in line for line in wedged.board.logs)

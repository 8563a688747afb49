"""The whole, unchanged device app on MicroPython's unix port, booted from a
real flash image's littlefs (MicroPython's own VfsLfs2 driver), against a
real Mosquitto with the mosquitto role's real ACL.

The board layer (tools/unixport/board_unix.py) is a test fixture: Wi-Fi,
the PZEM meters, DS18B20 sensors, the RTC and resets are stood in for (see
its docstring). Everything else is the device's own code on the device's
interpreter: MQTT client, config, buffer, OTA with bootsel and the
supervisor, /metrics, NTP."""

import json
import subprocess
import threading
import time
import urllib.request

import pytest

import contract
import device as app
import identity
from broker import free_port
from interp import APP, mpy_cross
from mqttc import Client as Paho
from roleacl import render_acl
from testkeys import TestKey
from unixdev import UnixDevice, app_bundle
from waits import wait_until
from www import Www

SITE = "mp"
MAC = "24:0a:c4:12:34:01"
DEVICE_ID = identity.device_id("psu", MAC)
USERS = {DEVICE_ID: "dev-pw", "controller": "ctl-pw", "telegraf": "tg-pw"}
NEW = "0.9.0"
SITE_KEY = TestKey()  # the test site's signing key, written into every board as the flash station does


def topic(channel):
    return contract.topic(SITE, DEVICE_ID, channel)


class Site:
    def __init__(self, broker, tmp_path, binary):
        self.binary = binary
        self.broker = broker(users=USERS, acl=render_acl(SITE, [DEVICE_ID]))
        self.tmp = tmp_path
        self.devices = []
        self.clients = []

    def device(self, config=None, settings=None, **kw):
        device = dict({"id": DEVICE_ID, "kind": "psu", "site": SITE, "password": USERS[DEVICE_ID],
                       "broker": {"host": "127.0.0.1", "port": self.broker.port, "keepalive": 30},
                       "config": dict({"publish_interval_s": 1, "pzem_addresses": [1, 2, 3]}, **(config or {})),
                       "reconnect_spread_s": 2, "backoff_base_s": 0.5, "backoff_cap_s": 2,
                       "signing_key": SITE_KEY.public_hex}, **(settings or {}))
        d = UnixDevice(self.tmp / f"dev{len(self.devices)}", device, MAC, binary=self.binary, **kw)
        self.devices.append(d)
        return d

    def watch(self, user, pattern=None, **kw):
        c = Paho(self.broker.port, user=user, password=USERS[user], **kw).connect_ok()
        self.clients.append(c)
        assert c.subscribe(pattern or contract.base_topic(SITE, DEVICE_ID) + "#", 1) == [1]
        return c

    def close(self):
        for d in self.devices:
            d.kill()
        for c in self.clients:
            c.close()


@pytest.fixture
def site(broker, tmp_path, micropython):
    s = Site(broker, tmp_path, micropython)
    yield s
    s.close()


def payloads(client, channel):
    return [json.loads(m.payload) for m in client.messages() if m.topic == topic(channel)]


def online_count(client):
    return sum(1 for p in payloads(client, "status") if p.get("online"))


def wait_online(client, device, count=1, timeout=15):
    wait_until(lambda: online_count(client) >= count, timeout,
               f"status online number {count}; device output:\n{device.output()[-2000:]}")


def test_boot_announce_status_and_telemetry_cadence(site):
    ctl = site.watch("controller")
    tg = site.watch("telegraf", f"site/{SITE}/+/+/state")
    d = site.device(config={"ntp_server": f"127.0.0.1:{free_port()}"}).start()  # an NTP server that is not there
    wait_online(ctl, d)
    wait_until(lambda: len(tg.messages()) >= 6, 15, "6 telemetry messages")
    arrivals = [m for m in tg.messages()]
    state = [json.loads(m.payload) for m in arrivals]
    # the shape of docs/architecture.md, section 3.3 (payloads), from the device's own code on MicroPython
    m = state[-1]
    assert m["device_id"] == DEVICE_ID and m["ts"] is None  # no NTP answer yet: not a date in 2000
    assert set(m["electrical"]["voltage"]) == {"a", "b", "c"} and 229 < m["electrical"]["voltage"]["a"] < 232
    assert m["electrical"]["power_factor"] == 0.92 and m["status"]["operational_state"] == "run"
    assert [s["seq"] for s in state] == list(range(1, len(state) + 1))
    # a fixed 1 s cadence (publish_interval_s 1), measured at the subscriber
    stamps = [s["status"]["uptime_seconds"] for s in state]
    assert all(b - a in (0, 1, 2) for a, b in zip(stamps, stamps[1:])), stamps
    # retained identity and status, for a controller that subscribes later
    late = site.watch("controller")
    wait_until(lambda: payloads(late, "announce") and payloads(late, "status"), 5, "retained announce and status")
    retained = {m.topic.rsplit("/", 1)[1]: m for m in late.messages() if m.retain}
    announce = json.loads(retained["announce"].payload)
    assert announce["id"] == DEVICE_ID and announce["mac"] == MAC and announce["hostname"] == DEVICE_ID + ".local"
    assert announce["chip"].startswith("MicroPython unix port") and announce["reset_cause"] == "power_on"
    status = json.loads(retained["status"].payload)
    assert status["online"] is True and status["fw"] == "0.2.0" and status["free_heap"] > 0
    assert "log: watchdog 120s" in d.output()


def test_telemetry_cadence_is_one_second(site):
    tg = site.watch("telegraf", f"site/{SITE}/+/+/state")
    site.device().start()
    wait_until(lambda: len(tg.messages()) >= 8, 20, "8 telemetry messages")
    times = [m.timestamp for m in tg.messages()]
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    median = gaps[len(gaps) // 2]
    assert 0.85 <= median <= 1.15, gaps


def test_cfg_applied_and_acked_bad_cfg_rejected_and_old_config_kept(site):
    ctl = site.watch("controller")
    d = site.device().start()
    wait_online(ctl, d)
    ctl.publish(topic("cfg"), json.dumps({"version": 3, "publish_interval_s": 2, "setpoint_c": 70}), retain=True)
    wait_until(lambda: len(payloads(ctl, "cfg/ack")) >= 1, 5, "the first cfg/ack")
    ctl.publish(topic("cfg"), json.dumps({"version": 4, "publish_interval_s": 2, "pzem_addresses": [1, 300]}),
                retain=True)
    wait_until(lambda: len(payloads(ctl, "cfg/ack")) >= 2, 5, "the second cfg/ack")
    acks = payloads(ctl, "cfg/ack")
    assert acks[0] == {"version": 3, "result": "applied", "detail": None}
    assert acks[1] == {"version": 4, "result": "rejected",
                       "detail": "pzem_addresses: 300 is not a Modbus address 1..247"}
    d.kill()
    files = d.files()
    assert json.loads(files["config.json"]) == {"version": 3, "publish_interval_s": 2, "setpoint_c": 70}
    # after a reboot the device still runs version 3 (and the broker's retained v4 is refused again)
    d2 = site.device()
    d2.flash.write_bytes(d.flash.read_bytes())
    d2.start()
    wait_until(lambda: len(payloads(ctl, "cfg/ack")) >= 3, 10, "the retained cfg acked after a reboot")
    assert payloads(ctl, "cfg/ack")[2]["result"] == "rejected"
    wait_until(lambda: any(s.get("online") and s["cfg_version"] == 3 for s in payloads(ctl, "status")[2:]), 5,
               "status with cfg_version 3 after the reboot")


def test_outage_buffer_is_delivered_in_order_after_a_broker_restart(site):
    tg = Paho(site.broker.port, user="telegraf", password=USERS["telegraf"], client_id="tg-mp", clean_session=False)
    tg.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
    site.clients.append(tg.connect_ok())
    assert tg.subscribe(topic("state"), 1) == [1]
    d = site.device().start()
    wait_until(lambda: len(tg.messages()) >= 2, 15, "telemetry before the outage")
    site.broker.stop()
    time.sleep(4)  # the outage itself: about four 1 s telemetry periods go to the flash buffer
    site.broker.start()

    def seqs():
        return [json.loads(m.payload)["seq"] for m in tg.messages()]

    wait_until(lambda: len(set(seqs())) >= max(seqs()) >= 8, 30, f"telemetry after the outage: {seqs()}")
    unique = list(dict.fromkeys(seqs()))
    assert unique == list(range(1, len(unique) + 1)), f"lost or out of order: {unique}"
    assert "connection lost" in d.output()


def test_will_is_published_when_the_process_is_killed(site):
    ctl = site.watch("controller")
    d = site.device().start()
    wait_online(ctl, d)
    d.kill()  # a power cut: no DISCONNECT
    wait_until(lambda: {"online": False, "reason": "connection_lost"} in payloads(ctl, "status"), 10, "the will")


def test_metrics_endpoint(site):
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    tg = site.watch("telegraf", f"site/{SITE}/+/+/state")
    site.device(metrics_port=port).start()
    wait_until(lambda: len(tg.messages()) >= 2, 15, "telemetry")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    assert families["edgefleet_device_info"].samples[0].labels["device_id"] == DEVICE_ID
    assert families["edgefleet_mqtt_connected"].samples[0].value == 1
    assert families["edgefleet_telemetry_published"].samples[0].value >= 2
    assert {s.labels["phase"] for s in families["edgefleet_voltage_volts"].samples} == {"a", "b", "c"}


def signed_ota(www, bundle, digest_of=None, key=SITE_KEY, security_version=0, cmd_id="ota-1"):
    artifact = www.publish("app.bin", bundle, digest_of)
    return key.sign_command({"id": cmd_id, "cmd": "ota", "payload": "app", "version": NEW, **artifact},
                            security_version)


def send_ota(site, www, bundle, digest_of=None, key=SITE_KEY, **device_kw):
    ctl = site.watch("controller")
    d = site.device(**device_kw).start()
    wait_online(ctl, d)
    ctl.publish(topic("cmd"), json.dumps(signed_ota(www, bundle, digest_of, key)))
    wait_until(lambda: any(r["state"] in contract.OTA_FINAL_STATES for r in payloads(ctl, "ota")), 60,
               f"a final OTA state; device output:\n{d.output()[-3000:]}")
    return ctl, d, [r["state"] for r in payloads(ctl, "ota")]


def test_app_bundle_ota_is_confirmed(site, www):
    ctl, d, states = send_ota(site, www, app_bundle(NEW))
    assert states == ["downloading", "verifying", "rebooting", "confirmed"], d.output()[-3000:]
    assert d.boots == 2 and d.exits[:1] == [75]
    wait_until(lambda: any(s.get("fw") == NEW for s in payloads(ctl, "status")), 5, "status of the new version")
    d.kill()
    boot = json.loads(d.files()["boot.json"])
    assert boot["active"] == "b" and not boot["pending"] and boot["last"]["result"] == "confirmed"


def test_an_update_signed_by_another_key_is_refused_before_the_download(site, www):
    ctl, d, states = send_ota(site, www, app_bundle(NEW), key=TestKey())
    assert states == ["failed"], d.output()[-3000:]
    assert payloads(ctl, "ota")[-1]["detail"].startswith("refused: signature does not verify")
    assert www.requests == [] and d.boots == 1


def test_a_key_handover_over_mqtt_then_an_update_signed_by_the_new_key(site, www):
    """signing_key is answered on cmd/ack; after it, the old key's images
    are refused and the new key's installed."""
    new_key = TestKey()
    ctl = site.watch("controller")
    d = site.device().start()
    wait_online(ctl, d)
    ctl.publish(topic("cmd"), json.dumps(TestKey().handover("k-0", new_key.public_hex)))  # not the site's key
    ctl.publish(topic("cmd"), json.dumps(SITE_KEY.handover("k-1", new_key.public_hex)))
    wait_until(lambda: len(payloads(ctl, "cmd/ack")) >= 2, 10, "two answers")
    assert [(a["id"], a["result"]) for a in payloads(ctl, "cmd/ack")] == [("k-0", "rejected"), ("k-1", "accepted")]
    ctl.publish(topic("cmd"), json.dumps(signed_ota(www, app_bundle(NEW), cmd_id="old-key")))
    ctl.publish(topic("cmd"), json.dumps(signed_ota(www, app_bundle(NEW), key=new_key, cmd_id="new-key")))
    wait_until(lambda: any(r["state"] == "confirmed" for r in payloads(ctl, "ota")), 60,
               f"confirmed; device output:\n{d.output()[-3000:]}")
    reports = [(r["id"], r["state"]) for r in payloads(ctl, "ota")]
    assert reports == [("old-key", "failed"), ("new-key", "downloading"), ("new-key", "verifying"),
                       ("new-key", "rebooting"), ("new-key", "confirmed")], reports
    d.kill()
    assert json.loads(d.files()["signing.json"])["key"] == new_key.public_hex


def test_corrupt_bundle_is_reported_failed_with_a_sha256_reason(site, www):
    good = app_bundle(NEW)
    corrupt = good[:100] + bytes((good[100] ^ 0xFF,)) + good[101:]
    ctl, d, states = send_ota(site, www, corrupt, digest_of=good)
    report = payloads(ctl, "ota")[-1]
    assert states == ["downloading", "failed"]
    assert report["detail"].startswith("sha256 mismatch: got ") and d.boots == 1
    d.kill()
    files = d.files()
    assert json.loads(files.get("boot.json", b'{"active": "a"}'))["active"] == "a"
    assert "ota_incoming.bin" not in files


def test_a_new_slot_that_crashes_at_import_is_abandoned(site, www, tmp_path):
    """A bundle whose device module raises at import: the supervisor records
    the crash and resets; the unconfirmed slot's second boot goes back to
    slot a, which reports rolled_back naming the crash and announces it."""
    broken = tmp_path / "device.py"
    broken.write_text("raise RuntimeError('broken build')\n")
    subprocess.run([mpy_cross(), "-o", str(tmp_path / "device.mpy"), str(broken)], check=True)
    bundle = app_bundle(NEW, replace={"device.mpy": (tmp_path / "device.mpy").read_bytes()})
    ctl, d, states = send_ota(site, www, bundle)
    assert states == ["downloading", "verifying", "rebooting", "rolled_back"], d.output()[-3000:]
    detail = payloads(ctl, "ota")[-1]["detail"]
    assert "slot b was not confirmed after boot; it crashed: RuntimeError: broken build" == detail
    assert d.boots == 3 and d.exits[:2] == [75, 75]
    crash = payloads(ctl, "announce")[-1]["crash"]
    assert crash == {"error": "RuntimeError: broken build", "count": 1, "slot": "b", "uptime_s": 0}


def test_an_app_bundle_runs_instead_of_the_frozen_app(broker, tmp_path, www, frozen_micropython32):
    """On a MicroPython with the app frozen in, whose filesystem holds no
    modules (firmware.image.frozen_app_files), an app bundle installed by
    OTA runs instead of the frozen modules: its slot comes first on
    sys.path, before '' and .frozen. The bundle's device module says where
    it was loaded from."""
    marked = tmp_path / "device.py"
    marked.write_text((APP / "device.py").read_text() + '\nprint("log: device module " + __file__)\n')
    subprocess.run([mpy_cross(), "-s", "device.py", "-o", str(tmp_path / "device.mpy"), str(marked)], check=True)
    bundle = app_bundle(NEW, replace={"device.mpy": (tmp_path / "device.mpy").read_bytes()})
    site = Site(broker, tmp_path, frozen_micropython32)
    try:
        ctl, d, states = send_ota(site, www, bundle, frozen=True)
        assert states == ["downloading", "verifying", "rebooting", "confirmed"], d.output()[-3000:]
        wait_until(lambda: any(s.get("fw") == NEW for s in payloads(ctl, "status")), 5, "status of the new version")
        first, second = d.output().split("log: reset\n", 1)
        assert "log: device module" not in first  # the frozen app, which reports its own FW_VERSION
        assert payloads(ctl, "status")[0]["fw"] == app.FW_VERSION
        assert "log: device module /flash/app_b/device.mpy" in second.splitlines()
        d.kill()
        modules = {e["name"] for e in json.loads(bundle.split(b"\n", 1)[0])["files"]}
        assert {p for p in d.files() if p.endswith(".mpy")} == {"app_b/" + n for n in modules}
    finally:
        site.close()


def test_every_command_is_answered_and_reboot_reboots(site):
    ctl = site.watch("controller")
    d = site.device().start()
    wait_online(ctl, d)
    ctl.publish(topic("cmd"), json.dumps({"id": "x-1", "cmd": "dance"}))
    ctl.publish(topic("cmd"), json.dumps({"id": "r-1", "cmd": "reboot"}))
    wait_until(lambda: len(payloads(ctl, "cmd/ack")) >= 2, 5, "two answers")
    wait_online(ctl, d, count=2)
    answers = payloads(ctl, "cmd/ack")
    assert answers[0]["id"] == "x-1" and answers[0]["result"] == "rejected" and "unknown command" in answers[0]["detail"]
    assert answers[1] == {"id": "r-1", "cmd": "reboot", "result": "accepted", "detail": None}
    assert d.boots == 2 and payloads(ctl, "announce")[-1]["reset_cause"] == "soft"


def test_time_from_the_sites_ntp_server(site, ntp_server):
    tg = site.watch("telegraf", f"site/{SITE}/+/+/state")
    ntp_server.start()
    site.device(config={"ntp_server": ntp_server.address}).start()
    wait_until(lambda: any(json.loads(m.payload)["ts"] for m in tg.messages()), 15, "a timestamped message")
    stamped = [json.loads(m.payload)["ts"] for m in tg.messages() if json.loads(m.payload)["ts"]]
    assert abs(stamped[-1] - ntp_server.now()) < 5, (stamped[-1], ntp_server.now())
    assert ntp_server.queries >= 1


def test_status_is_published_again_once_the_clock_is_set(site, ntp_server):
    """The status of the connect says time_synced false while NTP has not
    answered; once it does, the retained status says true without waiting for
    a reconnect (the site alerts on a device whose clock stays unset)."""
    ctl = site.watch("controller")
    # the server's socket exists but does not answer yet: each query times out
    d = site.device(config={"ntp_server": ntp_server.address}, time_scale=0.1).start()
    wait_online(ctl, d)
    assert payloads(ctl, "status")[-1]["time_synced"] is False
    ntp_server.start()
    wait_until(lambda: payloads(ctl, "status")[-1]["time_synced"] is True, 20,
               f"a status with time_synced true; device output:\n{d.output()[-2000:]}")
    assert online_count(ctl) == 2 and d.boots == 1  # published again, not reconnected
    late = site.watch("controller")
    wait_until(lambda: payloads(late, "status"), 5, "the retained status")
    assert payloads(late, "status")[-1]["time_synced"] is True


# --- issue 22: commands that are not lost, status that tells the truth -----------------------------

def test_a_command_sent_while_the_device_was_away_is_delivered_when_it_is_back(site):
    """A persistent session (client id = device id, QoS 1 cmd): the broker
    queues a command sent while the device is off and delivers it at the
    next connect. With a clean session it was gone."""
    ctl = site.watch("controller")
    d = site.device().start()
    wait_online(ctl, d)
    d.kill()  # a power cut
    wait_until(lambda: payloads(ctl, "status")[-1]["online"] is False, 10, "the will")
    ctl.publish(topic("cmd"), json.dumps({"id": "away-1", "cmd": "dance"}), qos=1)
    d.start()
    wait_until(lambda: payloads(ctl, "cmd/ack"), 15, f"the queued command's answer; device output:\n"
                                                      f"{d.output()[-2000:]}")
    answers = payloads(ctl, "cmd/ack")
    assert [(a["id"], a["result"]) for a in answers] == [("away-1", "rejected")]
    assert "unknown command" in answers[0]["detail"] and d.boots == 2


def test_a_stale_command_is_refused_expired_and_a_fresh_one_runs(site, ntp_server):
    """A command carries ``expires``; the device runs it only before then,
    by its clock (set from the site's NTP server). The reboot that runs
    leaves the retained status offline with its reason before the reset."""
    ctl = site.watch("controller")
    ntp_server.start()
    d = site.device(config={"ntp_server": ntp_server.address}).start()
    wait_online(ctl, d)
    wait_until(lambda: payloads(ctl, "status")[-1]["time_synced"] is True, 15, "the clock set")
    now = int(ntp_server.now())
    ctl.publish(topic("cmd"), json.dumps({"id": "old-1", "cmd": "reboot", "expires": now - 5}))
    ctl.publish(topic("cmd"), json.dumps({"id": "new-1", "cmd": "reboot", "expires": now + 300}))
    wait_until(lambda: len(payloads(ctl, "cmd/ack")) >= 2 and d.boots == 2, 10, "two answers and a reboot")
    old, new = payloads(ctl, "cmd/ack")[:2]
    assert (old["id"], old["result"], old["reason"]) == ("old-1", "rejected", "expired"), old
    assert old["detail"].startswith("the command expired at %d" % (now - 5))
    assert new == {"id": "new-1", "cmd": "reboot", "result": "accepted", "detail": None}
    statuses = payloads(ctl, "status")
    offline = [s for s in statuses if s["online"] is False]
    assert offline and offline[0]["reason"] == "rebooting" and offline[0]["fw"] == app.FW_VERSION, statuses


def test_a_command_with_expires_waits_for_the_clock_then_is_refused_clock_unset(site):
    """With the clock never set, a command that carries ``expires`` cannot
    be judged: after contract.CLOCK_WAIT_S (device seconds) it is refused
    ``clock_unset`` and not run (no reboot)."""
    ctl = site.watch("controller")
    d = site.device(config={"ntp_server": "127.0.0.1:9"}, time_scale=0.05).start()
    wait_online(ctl, d)
    ctl.publish(topic("cmd"), json.dumps({"id": "r-1", "cmd": "reboot", "expires": int(time.time()) + 3600}))
    wait_until(lambda: payloads(ctl, "cmd/ack"), 15, "the answer")
    answer = payloads(ctl, "cmd/ack")[0]
    assert (answer["id"], answer["result"], answer["reason"]) == ("r-1", "rejected", "clock_unset"), answer
    time.sleep(1)
    assert d.boots == 1 and online_count(ctl) == 1


def test_inbox_overflow_is_answered_inbox_full(site):
    """While the device is busy with one command (it waits for its clock),
    the next INBOX_LIMIT wait in its inbox and those after them are
    answered ``inbox_full`` on cmd/ack, in order, instead of vanishing."""
    ctl = site.watch("controller")
    d = site.device(config={"ntp_server": "127.0.0.1:9"}, time_scale=0.1).start()
    wait_online(ctl, d)
    ctl.publish(topic("cmd"), json.dumps({"id": "busy", "cmd": "reboot", "expires": int(time.time()) + 3600}))
    extra = 3
    for i in range(app.INBOX_LIMIT + extra):
        ctl.publish(topic("cmd"), json.dumps({"id": "q-%d" % i, "cmd": "dance"}))
    total = 1 + app.INBOX_LIMIT + extra
    wait_until(lambda: len(payloads(ctl, "cmd/ack")) >= total, 20,
               f"{total} answers; device output:\n{d.output()[-2000:]}")
    answers = [(a["id"], a.get("reason")) for a in payloads(ctl, "cmd/ack")]
    assert answers[0] == ("busy", "clock_unset")
    assert answers[1:] == [("q-%d" % i, None) for i in range(app.INBOX_LIMIT)] + [
        ("q-%d" % i, "inbox_full") for i in range(app.INBOX_LIMIT, app.INBOX_LIMIT + extra)], answers
    assert all(a["result"] == "rejected" for a in payloads(ctl, "cmd/ack")) and d.boots == 1


def test_a_device_that_never_comes_back_stays_offline_with_the_reason(site, www):
    """Reboot, then an update whose new image never boots: each time the
    retained status a late subscriber reads says offline, and why."""
    ctl = site.watch("controller")
    d = site.device().start()
    wait_online(ctl, d)
    d.never_back = True
    ctl.publish(topic("cmd"), json.dumps({"id": "r-1", "cmd": "reboot"}))
    wait_until(lambda: d.exits, 10, "the reset")
    late = site.watch("controller")
    wait_until(lambda: payloads(late, "status"), 5, "the retained status")
    assert payloads(late, "status")[-1] == dict(payloads(late, "status")[-1], online=False, reason="rebooting")
    d.never_back = False
    d.start()
    wait_online(ctl, d, count=2)
    d.never_back = True
    ctl.publish(topic("cmd"), json.dumps(signed_ota(www, app_bundle(NEW))))
    wait_until(lambda: len(d.exits) == 2, 30, f"the update's reset; device output:\n{d.output()[-3000:]}")
    assert [r["state"] for r in payloads(ctl, "ota")] == ["downloading", "verifying", "rebooting"]
    later = site.watch("controller")
    wait_until(lambda: payloads(later, "status"), 5, "the retained status")
    status = payloads(later, "status")[-1]
    assert status["online"] is False and status["reason"] == "updating" and status["fw"] == app.FW_VERSION


def test_a_download_cut_by_a_broker_restart_is_reported_failed_after_the_reconnect(site, www):
    """The broker restarts during a download and the download is cut: the
    ``failed`` report cannot go out on the dead session, so the boot record
    keeps it, and the self-test after the reconnect sends it."""
    ctl = Paho(site.broker.port, user="controller", password=USERS["controller"], client_id="ctl-mp",
               clean_session=False)
    ctl.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
    site.clients.append(ctl.connect_ok())
    assert ctl.subscribe(contract.base_topic(SITE, DEVICE_ID) + "#", 1) == [1]
    d = site.device().start()
    wait_online(ctl, d)
    www.cut = threading.Event()
    ctl.publish(topic("cmd"), json.dumps(signed_ota(www, app_bundle(NEW), cmd_id="cut-1")))
    assert www.midway.wait(20), d.output()[-2000:]
    site.broker.stop()
    www.cut.set()  # the rest of the download never comes
    time.sleep(1)
    site.broker.start()
    wait_until(lambda: any(r["state"] == "failed" for r in payloads(ctl, "ota")), 30,
               f"the failed report after the reconnect; device output:\n{d.output()[-3000:]}")
    reports = payloads(ctl, "ota")
    assert [(r["id"], r["state"]) for r in reports] == [("cut-1", "downloading"), ("cut-1", "failed")], reports
    assert "downloaded" in reports[-1]["detail"] and reports[-1]["version"] == NEW
    assert d.boots == 1 and "could not report the failure" in d.output()
    # the device marks the report sent in boot.json once its PUBACK is back,
    # which can be after the controller sees it: two more telemetry messages
    # (1 s apart) come after that write, then the flash is read
    sent = len(payloads(ctl, "state"))
    wait_until(lambda: len(payloads(ctl, "state")) >= sent + 2, 10, "telemetry after the report")
    d.kill()
    boot = json.loads(d.files()["boot.json"])
    assert boot["active"] == "a" and boot["last"]["result"] == "failed" and boot["last"]["reported"] is True


def test_a_password_rotation_is_proven_on_another_listener_and_never_locks_the_device_out(site, broker):
    """rotate (rotate.py) on MicroPython: the device proves the new password
    by connecting to the port the command names and answers there; a
    password that listener refuses is answered rejected from the old
    session. Here the next listener is a second Mosquitto that knows only the
    new password (the role's own next listener, on the same broker, is
    tests/integration/test_mqtt_rotation.py's); the retirement is the first
    broker restarted with the new password."""
    nxt = broker(users={DEVICE_ID: "new-pw", "controller": "ctl-pw"}, acl=render_acl(SITE, [DEVICE_ID]))
    there = Paho(nxt.port, user="controller", password="ctl-pw").connect_ok()
    site.clients.append(there)
    assert there.subscribe(topic("cmd/ack"), 1) == [1]
    ctl = site.watch("controller")
    d = site.device().start()
    wait_online(ctl, d)
    ctl.publish(topic("cmd"), json.dumps({"id": "r-bad", "cmd": "rotate", "port": nxt.port, "password": "wrong-pw"}))
    wait_until(lambda: payloads(ctl, "cmd/ack"), 20, f"the rejection; device output:\n{d.output()[-2000:]}")
    [ack] = payloads(ctl, "cmd/ack")
    assert ack["id"] == "r-bad" and ack["result"] == "rejected" and f"port {nxt.port}" in ack["detail"], ack
    assert "wrong-pw" not in ack["detail"]
    ctl.publish(topic("cmd"), json.dumps({"id": "r-1", "cmd": "rotate", "port": nxt.port, "password": "new-pw"}))
    wait_until(lambda: [m for m in there.messages() if m.topic == topic("cmd/ack")], 20,
               f"the proof from the next listener; device output:\n{d.output()[-2000:]}")
    proof = json.loads(there.messages()[-1].payload)
    assert proof["id"] == "r-1" and proof["result"] == "accepted", proof
    wait_online(ctl, d, 3, timeout=20)  # back on the first broker, which refuses new-pw: with the old password
    assert json.loads(d.files()["rotation.json"])["next"]["password"] == "new-pw"
    # retirement: the main broker now knows only the new password
    site.broker.users[DEVICE_ID] = "new-pw"
    site.broker.stop()
    site.broker.start()
    after = site.watch("controller")
    wait_until(lambda: any(m.topic == topic("status") and not m.retain and json.loads(m.payload).get("online")
                           for m in after.messages()), 30,
               f"a fresh online status; device output:\n{d.output()[-2000:]}")
    d.kill()
    state = json.loads(d.files()["rotation.json"])
    assert state["cur"]["password"] == "new-pw" and "next" not in state, state

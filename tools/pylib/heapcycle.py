"""One full cycle of the device app on MicroPython's unix port with a given
heap (``-X heapsize``): boot, telemetry, a cfg applied, a /metrics scrape,
and a 64 KiB app-bundle OTA to ``confirmed`` on the next boot. Used by the
memory-budget test and by bench/mpy_heap.py, which searches for the
smallest heap that still completes it."""

import json
import time
import urllib.request

import contract
import identity
import testkeys
from broker import free_port
from mqttc import Client as Paho
from unixdev import UnixDevice, app_bundle
from waits import Timeout, wait_until

MAC = "24:0a:c4:12:34:01"
DEVICE_ID = identity.device_id("psu", MAC)
SITE = "heap"
USERS = {DEVICE_ID: "dev-pw", "controller": "ctl-pw", "telegraf": "tg-pw"}
BUNDLE_SIZE = 64 * 1024
NEW = "0.9.1"
KEY = testkeys.new_key()  # the cycle's OTA signing key (throw-away)


def bundle_64k():
    """The real app at version NEW, padded with one extra file to exactly 64 KiB."""
    pad = BUNDLE_SIZE - len(app_bundle(NEW))
    for _ in range(5):  # the manifest grows with pad.bin's entry: converge on the size
        data = app_bundle(NEW, replace={"pad.bin": b"\xa5" * pad})
        if len(data) == BUNDLE_SIZE:
            return data
        pad -= len(data) - BUNDLE_SIZE
    raise AssertionError("could not pad the bundle to %d bytes" % BUNDLE_SIZE)


def run_cycle(broker_port, www, workdir, heap, timeout=40.0, binary=None, frozen=False):
    """(True, seconds) when the cycle completes; (False, why) otherwise."""
    topic = lambda ch: contract.topic(SITE, DEVICE_ID, ch)  # noqa: E731
    ctl = Paho(broker_port, user="controller", password=USERS["controller"]).connect_ok()
    assert ctl.subscribe(contract.base_topic(SITE, DEVICE_ID) + "#", 1) == [1]
    tg = Paho(broker_port, user="telegraf", password=USERS["telegraf"]).connect_ok()
    assert tg.subscribe(topic("state"), 1) == [1]
    port = free_port()
    device = {"id": DEVICE_ID, "kind": "psu", "site": SITE, "password": USERS[DEVICE_ID], "signing_key": KEY.public,
              "broker": {"host": "127.0.0.1", "port": broker_port}, "reconnect_spread_s": 1,
              "config": {"publish_interval_s": 1, "pzem_addresses": [1, 2, 3], "temperature_zones": 2,
                         "ntp_server": "127.0.0.1:9"}}
    dev = UnixDevice(workdir, device, MAC, heap=heap, metrics_port=port,
                     roms=("28ff001d1234049f", "28ff011d12340452"), binary=binary, frozen=frozen)

    def payloads(channel):
        return [json.loads(m.payload) for m in ctl.messages() if m.topic == topic(channel)]

    t0 = time.monotonic()
    step = "boot"
    try:
        dev.start()
        wait_until(lambda: any(s.get("online") for s in payloads("status")) or not dev.running() and dev.exits,
                   timeout, "online")
        step = "telemetry"
        wait_until(lambda: len(tg.messages()) >= 2, timeout, step)
        step = "cfg"
        ctl.publish(topic("cfg"), json.dumps({"version": 2, "publish_interval_s": 2, "setpoint_c": 200}),
                    retain=True)
        wait_until(lambda: {"version": 2, "result": "applied", "detail": None} in payloads("cfg/ack"), timeout, step)
        step = "scrape"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"edgefleet_config_version 2" in r.read()
        step = "ota"
        artifact = www.publish("heap-app.bin", bundle_64k())
        assert artifact["size"] == BUNDLE_SIZE, artifact["size"]
        ctl.publish(topic("cmd"), json.dumps(contract.ota_command(
            "heap-1", "app", NEW, artifact["url"], artifact["size"], artifact["sha256"], 0,
            KEY.signature("app", NEW, artifact["size"], artifact["sha256"]))))
        wait_until(lambda: any(r["state"] in contract.OTA_FINAL_STATES for r in payloads("ota")), timeout, step)
        states = [r["state"] for r in payloads("ota")]
        if states != ["downloading", "verifying", "rebooting", "confirmed"]:
            return False, "ota %s: %s" % (states, payloads("ota")[-1].get("detail"))
        return True, time.monotonic() - t0
    except (Timeout, AssertionError, OSError) as e:
        tail = dev.output()[-400:].replace("\n", " | ")
        return False, "%s: %s; %d boots; output: ...%s" % (step, e, dev.boots, tail)
    finally:
        dev.kill()
        ctl.publish(topic("cfg"), b"", retain=True)  # clear the retained cfg for the next cycle
        ctl.close()
        tg.close()

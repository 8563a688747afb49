"""Simulated devices (the unchanged firmware app on the host board layer)
against a real Mosquitto with the mosquitto role's real ACL.

Device timers run sped up (time_scale) so that minutes of device time take
seconds; the broker, the MQTT sessions and the ACL are real."""

import asyncio
import json
import time

import pytest

from firmware.sim import fleet
from mqttc import Client as Paho
from roleacl import render_acl
from simsite import DEVICES, SERVICE, SITE, messages, run_for, topic, watcher


def test_telemetry_has_the_design_shape(site):
    sims = site()
    tg = watcher(site.broker, "telegraf", f"site/{SITE}/+/+/state")
    asyncio.run(run_for(sims, 2.0))  # 100 s of device time
    got = {}
    for m in messages(tg):
        got.setdefault(m.topic, []).append(json.loads(m.payload))
    tg.close()
    psu, oven, env = (d for d, _, _ in DEVICES)
    assert set(got) == {topic(d, "state") for d, _, _ in DEVICES}
    for device_id, msgs in ((psu, got[topic(psu, "state")]), (oven, got[topic(oven, "state")])):
        m = msgs[-1]
        assert m["device_id"] == device_id and isinstance(m["ts"], (int, float))
        assert set(m["electrical"]["voltage"]) == {"a", "b", "c"} == set(m["electrical"]["current"])
        assert all(200 < v < 260 for v in m["electrical"]["voltage"].values())
        assert 0 <= m["electrical"]["power_factor"] <= 1
        assert m["status"]["operational_state"] in ("run", "stop", "fault")
        assert m["status"]["wifi_rssi"] < 0 and m["status"]["uptime_seconds"] >= 0
    assert "thermal" not in got[topic(psu, "state")][-1]
    oven_thermal = got[topic(oven, "state")][-1]["thermal"]
    assert len(oven_thermal["temperature_zones"]) == 3 and oven_thermal["setpoint"] == 180.0
    env_msg = got[topic(env, "state")][-1]
    assert "electrical" not in env_msg and len(env_msg["thermal"]["temperature_zones"]) == 1
    assert all(len(msgs) >= 10 for msgs in got.values()), {t: len(v) for t, v in got.items()}


def test_status_announce_and_will(site):
    sims = site(DEVICES[:1])
    ctl = watcher(site.broker, "controller", f"site/{SITE}/+/+/#")

    async def scenario():
        await asyncio.sleep(0.5)
        sims[0].device.client.abort()  # power cut: the broker publishes the will
        await asyncio.sleep(0.5)

    asyncio.run(run_for(sims, 0, during=scenario))
    seen = [(m.topic.rsplit("/", 1)[1], json.loads(m.payload)) for m in messages(ctl)]
    ctl.close()
    device_id = DEVICES[0][0]
    statuses = [p for ch, p in seen if ch == "status"]
    announce = [p for ch, p in seen if ch == "announce"]
    assert statuses[0]["online"] is True and statuses[0]["fw"] and "free_heap" in statuses[0]
    assert {"online": False} in statuses, "the will did not arrive"
    assert announce[0]["id"] == device_id and announce[0]["mac"] == DEVICES[0][2]
    assert statuses[-1]["online"] is False  # a clean stop marks the device offline


def test_config_applies_acks_and_bad_config_is_rejected(site):
    sims = site(DEVICES[:1])
    device_id = DEVICES[0][0]
    ctl = watcher(site.broker, "controller", topic(device_id, "cfg/ack"))

    async def scenario():
        await asyncio.sleep(0.5)
        ctl.publish(topic(device_id, "cfg"), json.dumps({"version": 1, "publish_interval_s": 2}), retain=True)
        await asyncio.sleep(0.7)
        ctl.publish(topic(device_id, "cfg"),
                    json.dumps({"version": 2, "publish_interval_s": 2, "sample_interval_s": 9}), retain=True)
        await asyncio.sleep(0.7)
        ctl.publish(topic(device_id, "cfg"), b"{not json", retain=True)
        await asyncio.sleep(0.7)

    asyncio.run(run_for(sims, 0, during=scenario))
    acks = [json.loads(m.payload) for m in messages(ctl)]
    ctl.close()
    assert acks[0] == {"version": 1, "result": "applied", "detail": None}
    assert acks[1]["version"] == 2 and acks[1]["result"] == "rejected"
    assert "sample_interval_s (9) must not exceed publish_interval_s (2)" in acks[1]["detail"]
    assert acks[2]["result"] == "rejected" and "not valid JSON" in acks[2]["detail"]
    board = sims[0].board
    assert sims[0].device.config["version"] == 1 and sims[0].device.config["publish_interval_s"] == 2
    with board.fs.open("config.json") as f:
        assert json.load(f)["version"] == 1, "the persisted config must be the last applied one"


def test_retained_config_is_picked_up_after_reconnect(site):
    sims = site(DEVICES[:1])
    device_id = DEVICES[0][0]
    ctl = watcher(site.broker, "controller", topic(device_id, "cfg/ack"))

    async def scenario():
        await asyncio.sleep(0.5)
        sims[0].go_offline(1.0)
        ctl.publish(topic(device_id, "cfg"), json.dumps({"version": 5, "publish_interval_s": 3}), retain=True)
        await asyncio.sleep(0.3)
        assert not sims[0].device.online()
        await asyncio.sleep(2.0)

    asyncio.run(run_for(sims, 0, during=scenario))
    acks = [json.loads(m.payload) for m in messages(ctl)]
    ctl.close()
    assert {"version": 5, "result": "applied", "detail": None} in acks
    assert sims[0].device.config["publish_interval_s"] == 3
    assert sims[0].device.connects >= 2


def test_outage_buffer_delivers_100_messages_in_order_after_the_broker_returns(site):
    # a 1 s publish interval at time_scale 0.005: one message every ~5 ms of real time
    sims = site(DEVICES[:1], time_scale=0.005, initial={"publish_interval_s": 1, "sample_interval_s": 1})
    b = site.broker
    device_id = DEVICES[0][0]
    # a persistent-session subscriber, like Telegraf: the broker keeps its
    # subscription across the restart and paho reconnects by itself
    tg = watcher(b, "telegraf", topic(device_id, "state"), client_id="telegraf-it", clean_session=False)
    seen = {}

    async def scenario():
        await asyncio.sleep(0.5)
        b.stop()
        # until the full buffer has dropped some of its oldest messages
        for _ in range(200):
            await asyncio.sleep(0.05)
            if sims[0].device.buffer.dropped >= 20:
                break
        seen["buffered"], seen["dropped"] = len(sims[0].device.buffer), sims[0].device.buffer.dropped
        b.start()
        for _ in range(100):
            await asyncio.sleep(0.1)
            if len(sims[0].device.buffer) == 0 and sims[0].device.online():
                break
        seen["left"] = len(sims[0].device.buffer)
        await asyncio.sleep(1.0)

    asyncio.run(run_for(sims, 0, during=scenario))
    time.sleep(0.5)
    received = [json.loads(m.payload)["seq"] for m in messages(tg)]
    tg.close()
    assert seen["buffered"] == 100, seen
    assert seen["dropped"] >= 20, seen
    assert seen["left"] == 0, seen
    unique = list(dict.fromkeys(received))  # QoS 1 may deliver a message twice
    assert unique == sorted(unique), "messages arrived out of order"
    jumps = [(a, b2) for a, b2 in zip(unique, unique[1:]) if b2 != a + 1]
    # exactly one hole: the oldest messages the full buffer dropped
    assert len(jumps) == 1, jumps
    first_kept = jumps[0][1]
    hole, dropped = first_kept - jumps[0][0] - 1, sims[0].device.buffer.dropped
    # the message in flight when the broker went down may have reached it
    # before the connection broke: buffered again, then dropped, yet delivered
    assert dropped - 1 <= hole <= dropped, (hole, dropped)
    kept = unique[unique.index(first_kept):]
    assert kept[:100] == list(range(first_kept, first_kept + 100)), "the 100 buffered messages were not all delivered"


@pytest.mark.parametrize("fraction", [1.0])
def test_malformed_messages_are_sent_when_injected(site, fraction):
    sims = site(DEVICES[:1])
    sims[0].board.faults.malformed = fraction
    tg = watcher(site.broker, "telegraf", topic(DEVICES[0][0], "state"))
    asyncio.run(run_for(sims, 1.0))
    got = messages(tg)
    tg.close()
    assert got
    for m in got:
        with pytest.raises(ValueError):
            json.loads(m.payload)


def test_metrics_endpoint_speaks_prometheus_text(site):
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from broker import free_port

    sims = site(DEVICES[1:2])  # the oven: meters and temperature zones
    port = free_port()
    sims[0].board.metrics_port = port
    pages = {}

    async def scenario():
        await asyncio.sleep(1.0)
        loop = asyncio.get_running_loop()

        def get(path):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status, r.headers.get("Content-Type"), r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, None, ""

        pages["metrics"] = await loop.run_in_executor(None, get, "/metrics")
        pages["other"] = await loop.run_in_executor(None, get, "/")

    asyncio.run(run_for(sims, 0, during=scenario))
    status, ctype, text = pages["metrics"]
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    info = families["edgefleet_device_info"].samples[0]
    assert info.labels["device_id"] == DEVICES[1][0] and info.labels["kind"] == "oven"
    assert families["edgefleet_mqtt_connected"].samples[0].value == 1
    assert families["edgefleet_telemetry_published"].samples[0].value >= 1  # counter: _total is the sample name
    phases = {s.labels["phase"]: s.value for s in families["edgefleet_voltage_volts"].samples}
    assert set(phases) == {"a", "b", "c"} and all(200 < v < 260 for v in phases.values())
    assert len(families["edgefleet_temperature_celsius"].samples) == 3
    assert pages["other"][0] == 404


def test_devices_use_tls_with_the_site_ca(broker, tmp_path):
    from tlsca import make_ca_and_server

    tls = make_ca_and_server(tmp_path / "tls")
    device_id, kind, mac = DEVICES[0]
    b = broker(users=dict(SERVICE, **{device_id: "pw"}), acl=render_acl(SITE, [device_id]), tls=tls)
    root = fleet.provision(str(tmp_path / "sim"), device_id, kind, mac, SITE,
                           {"host": "127.0.0.1", "port": b.tls_port, "tls": True}, "pw", ca_file=str(tls["ca"]),
                           initial_config=fleet.kind_config(kind))
    sim = fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind, time_scale=0.02)
    tg = Paho(b.tls_port, user="telegraf", password=SERVICE["telegraf"], ca_file=str(tls["ca"])).connect_ok()
    tg.subscribe(topic(device_id, "state"), 1)
    asyncio.run(run_for([sim], 1.0))
    got = messages(tg)
    tg.close()
    assert got and json.loads(got[0].payload)["device_id"] == device_id
    # a device that does not trust this CA cannot connect
    other = make_ca_and_server(tmp_path / "other")
    with sim.board.fs.open("ca.crt", "wb") as f:
        f.write(other["ca"].read_bytes())
    sim2 = fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind, time_scale=0.02)

    async def attempt():
        sim2.start()
        await asyncio.sleep(0.5)
        connected = sim2.device.online()
        logs = list(sim2.board.logs)
        await sim2.stop()
        return connected, logs

    connected, logs = asyncio.run(attempt())
    assert not connected and any("CERTIFICATE_VERIFY_FAILED" in line or "certificate verify failed" in line
                                 for line in logs), logs

"""Simulated devices (the unchanged firmware app on the host board layer)
against a real Mosquitto with the mosquitto role's real ACL.

Device timers run sped up (time_scale) so that minutes of device time take
seconds; the broker, the MQTT sessions and the ACL are real. Every wait is
on a condition with a deadline."""

import asyncio
import json

import pytest

import testkeys
from firmware import common
from firmware.sim import fleet
from mqttc import Client as Paho
from roleacl import render_acl
from simsite import DEVICES, SERVICE, SITE, WILL, online, payloads, run_for, topic, until, watcher


def test_telemetry_has_the_design_shape(site):
    sims = site()
    tg = watcher(site.broker, "telegraf", f"site/{SITE}/+/+/state")

    async def enough():
        await until(lambda: all(len(payloads(tg, "state", d)) >= 10 for d, _, _ in DEVICES), 20,
                    "10 telemetry messages from each device")

    asyncio.run(run_for(sims, 0, during=enough))
    tg.close()
    psu, oven, env = (d for d, _, _ in DEVICES)
    got = {d: payloads(tg, "state", d) for d, _, _ in DEVICES}
    for device_id in (psu, oven):
        m = got[device_id][-1]
        assert m["device_id"] == device_id and isinstance(m["ts"], float)
        assert set(m["electrical"]["voltage"]) == {"a", "b", "c"} == set(m["electrical"]["current"])
        assert all(200 < v < 260 for v in m["electrical"]["voltage"].values())
        assert 0 <= m["electrical"]["power_factor"] <= 1
        assert m["status"]["operational_state"] in ("run", "stop", "fault")
        assert m["status"]["wifi_rssi"] < 0 and m["status"]["uptime_seconds"] >= 0
    assert "thermal" not in got[psu][-1]
    oven_thermal = got[oven][-1]["thermal"]
    assert len(oven_thermal["temperature_zones"]) == 3 and oven_thermal["setpoint"] == 180.0
    assert all(isinstance(t, float) for t in oven_thermal["temperature_zones"])
    env_msg = got[env][-1]
    assert "electrical" not in env_msg and len(env_msg["thermal"]["temperature_zones"]) == 1
    for msgs in got.values():
        seqs = [m["seq"] for m in msgs]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def test_status_announce_and_will(site):
    sims = site(DEVICES[:1])
    device_id = DEVICES[0][0]
    ctl = watcher(site.broker, "controller", f"site/{SITE}/+/+/#")

    async def scenario():
        await online(ctl, device_id)
        sims[0].device.client.abort()  # power cut: the broker publishes the will
        await until(lambda: WILL in payloads(ctl, "status", device_id), 5, "the will")

    asyncio.run(run_for(sims, 0, during=scenario))
    statuses = payloads(ctl, "status", device_id)
    announce = payloads(ctl, "announce", device_id)
    ctl.close()
    assert statuses[0]["online"] is True and statuses[0]["fw"] and "free_heap" in statuses[0]
    assert statuses[0]["time_synced"] is True
    assert announce[0]["id"] == device_id and announce[0]["mac"] == DEVICES[0][2]
    assert announce[0]["hostname"] == device_id + ".local" and sims[0].board.hostname == device_id
    assert announce[0]["reset_cause"] == "power_on"
    assert statuses[-1]["online"] is False  # a clean stop marks the device offline


def test_lowering_buffer_capacity_trims_the_buffer_at_once(site):
    """A cfg that lowers buffer_capacity trims what is already buffered at
    once (oldest first, counted as dropped), not only from the next push.
    The device (the firmware's own code, at real time) publishes no
    telemetry in the test (once an hour) and its flush loop is not woken,
    so the ten messages put in its buffer stay there until the cfg."""
    sims = site(DEVICES[:1], time_scale=1.0, initial={"publish_interval_s": 3600})
    device_id = DEVICES[0][0]
    ctl = watcher(site.broker, "controller", topic(device_id, "#"))
    seen = {}

    async def scenario():
        await online(ctl, device_id)
        dev = sims[0].device
        for i in range(10):  # what an outage leaves behind
            dev.buffer.push(b'{"n": %d}' % i)
        seen["before"] = len(dev.buffer)
        ctl.publish(topic(device_id, "cfg"), json.dumps({"version": 1, "publish_interval_s": 3600,
                                                         "buffer_capacity": 3}), retain=True)
        await until(lambda: payloads(ctl, "cfg/ack", device_id), 5, "the cfg/ack")
        await until(lambda: payloads(ctl, "status", device_id)[-1].get("cfg_version") == 1, 5, "the status")
        seen["left"] = [dev.buffer.peek()[1]] + [None] * (len(dev.buffer) - 1)
        seen["len"], seen["dropped"] = len(dev.buffer), dev.buffer.dropped

    asyncio.run(run_for(sims, 0, during=scenario))
    ctl.close()
    assert payloads(ctl, "cfg/ack", device_id)[0] == {"version": 1, "result": "applied", "detail": None}
    assert seen["before"] == 10 and seen["len"] == 3 and seen["dropped"] == 7, seen
    assert seen["left"][0] == b'{"n": 7}'  # the oldest went
    statuses = payloads(ctl, "status", device_id)
    status = [s for s in statuses if s["online"] and s["cfg_version"] == 1][0]
    assert status["buffered"] == 3 and status["buffer_dropped"] == 7, status
    # the simulator's clean stop at the end says offline, and why (its DISCONNECT discards the will)
    assert statuses[-1]["online"] is False and statuses[-1]["reason"] == "shutdown", statuses[-1]


def test_config_applies_acks_and_bad_config_is_rejected(site):
    sims = site(DEVICES[:1])
    device_id = DEVICES[0][0]
    ctl = watcher(site.broker, "controller", topic(device_id, "#"))

    def acks():
        return payloads(ctl, "cfg/ack", device_id)

    async def send(cfg, count):
        ctl.publish(topic(device_id, "cfg"), cfg if isinstance(cfg, bytes) else json.dumps(cfg), retain=True)
        await until(lambda: len(acks()) >= count, 5, f"cfg/ack number {count}")

    async def scenario():
        await online(ctl, device_id)
        await send({"version": 1, "publish_interval_s": 2, "setpoint_c": 60}, 1)
        await send({"version": 2, "publish_interval_s": 2, "sample_interval_s": 9}, 2)
        await send(b"{not json", 3)
        seen["after_bad"] = dict(sims[0].device.config)
        # the whole desired state: setpoint_c left out returns to the flash-time value
        await send({"version": 3, "publish_interval_s": 3}, 4)

    seen = {}
    asyncio.run(run_for(sims, 0, during=scenario))
    ctl.close()
    a = acks()
    assert a[0] == {"version": 1, "result": "applied", "detail": None}
    assert a[1]["version"] == 2 and a[1]["result"] == "rejected"
    assert "sample_interval_s (9) must not exceed publish_interval_s (2)" in a[1]["detail"]
    assert a[2]["result"] == "rejected" and "not valid JSON" in a[2]["detail"]
    assert seen["after_bad"]["version"] == 1 and seen["after_bad"]["setpoint_c"] == 60, "a rejected cfg changed it"
    assert a[3] == {"version": 3, "result": "applied", "detail": None}
    config = sims[0].device.config
    assert config["version"] == 3 and config["publish_interval_s"] == 3 and config["setpoint_c"] is None
    with sims[0].board.fs.open("config.json") as f:
        assert json.load(f) == {"version": 3, "publish_interval_s": 3}, "config.json keeps the last applied cfg"


def test_retained_config_is_picked_up_after_reconnect(site):
    sims = site(DEVICES[:1])
    device_id = DEVICES[0][0]
    ctl = watcher(site.broker, "controller", topic(device_id, "#"))

    async def scenario():
        await online(ctl, device_id)
        sims[0].go_offline(1.0)
        ctl.publish(topic(device_id, "cfg"), json.dumps({"version": 5, "publish_interval_s": 3}), retain=True)
        await until(lambda: not sims[0].device.online(), 2, "the device offline")
        await until(lambda: {"version": 5, "result": "applied", "detail": None} in payloads(ctl, "cfg/ack"), 10,
                    "the retained cfg applied after the reconnect")

    asyncio.run(run_for(sims, 0, during=scenario))
    ctl.close()
    assert sims[0].device.config["publish_interval_s"] == 3
    assert sims[0].device.connects >= 2


def test_outage_buffer_delivers_100_messages_in_order_after_the_broker_returns(site):
    # a 1 s publish interval at time_scale 0.005: one message every ~5 ms of real time
    sims = site(DEVICES[:1], time_scale=0.005, initial={"publish_interval_s": 1, "sample_interval_s": 1})
    b = site.broker
    device_id = DEVICES[0][0]
    # a persistent-session subscriber, like Telegraf: the broker keeps its
    # subscription and queues for it across the restart; paho reconnects by
    # itself (quickly, so the wait below measures the device, not paho)
    tg = Paho(b.port, user="telegraf", password=SERVICE["telegraf"], client_id="telegraf-it", clean_session=False)
    tg.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
    tg.connect_ok()
    assert tg.subscribe(topic(device_id, "state"), 1) == [1]
    seen = {}

    def seqs():
        return [p["seq"] for p in payloads(tg, "state", device_id)]

    async def scenario():
        device = sims[0]
        await until(lambda: device.device is not None and device.device.online() and seqs(), 10, "first telemetry")
        b.stop()
        # until the full buffer has dropped some of its oldest messages
        await until(lambda: device.device.buffer.dropped >= 20, 20, "20 buffered messages dropped")
        buf = device.device.buffer
        seen["buffered"], seen["dropped_at_return"] = len(buf), buf.dropped
        remove = buf.remove

        def first_flush_noted(seq):  # the drops so far are all before the first message sent from the buffer
            if "dropped_before_flush" not in seen:
                seen["dropped_before_flush"] = buf.dropped
            remove(seq)

        buf.remove = first_flush_noted
        b.start()
        await until(lambda: len(buf) == 0 and device.device.online(), 20, "the buffer sent")
        seen["last_buffered"] = device.device.seq
        await until(lambda: seen["last_buffered"] in seqs(), 10, "the last buffered message at the subscriber")

    asyncio.run(run_for(sims, 0, during=scenario))
    received = seqs()
    tg.close()
    assert seen["buffered"] == 100, seen
    assert seen["dropped_at_return"] >= 20, seen
    dropped = sims[0].device.buffer.dropped
    unique = list(dict.fromkeys(received))  # QoS 1 may deliver a message twice
    assert unique == sorted(unique), "messages arrived out of order"
    # every message from the first to the last is delivered, or was dropped
    # (oldest first) by the full buffer; the one in flight when the broker
    # went down may have been both delivered and buffered, then dropped
    missing = set(range(unique[0], unique[-1] + 1)) - set(unique)
    assert len(missing) <= dropped, (sorted(missing), dropped)
    if dropped == seen["dropped_before_flush"]:
        # the buffer drained faster than the device produced (the usual case):
        # exactly one hole, and the 100 messages in the buffer when sending
        # resumed were all delivered, in order
        jumps = [(a, b2) for a, b2 in zip(unique, unique[1:]) if b2 != a + 1]
        assert len(jumps) == 1, jumps
        first_kept = jumps[0][1]
        kept = unique[unique.index(first_kept):]
        assert kept[:100] == list(range(first_kept, first_kept + 100)), "the 100 buffered messages were not all delivered"


def test_malformed_messages_are_sent_when_injected(site):
    sims = site(DEVICES[:1])
    sims[0].board.faults.malformed = 1.0
    tg = watcher(site.broker, "telegraf", topic(DEVICES[0][0], "state"))

    async def three():
        await until(lambda: len(tg.messages()) >= 3, 10, "three messages")

    asyncio.run(run_for(sims, 0, during=three))
    got = tg.messages()
    tg.close()
    for m in got:
        with pytest.raises(ValueError):
            json.loads(m.payload)


def test_sensors_are_zones_by_rom_and_a_dead_one_empties_only_its_zone(site):
    """Oven zones are pinned to DS18B20 ROM codes: when the sensor of zone 0
    dies, zone 0 reports null and zones 1 and 2 keep their own sensors'
    readings (by scan position, everything would shift down by one)."""
    oven_id, kind, mac = DEVICES[1]
    sims = site([DEVICES[1]])
    sims[0].board.faults.dead_zones = (0,)
    tg = watcher(site.broker, "telegraf", topic(oven_id, "state"))
    ctl = watcher(site.broker, "controller", topic(oven_id, "announce"))

    async def scenario():
        await until(lambda: len(tg.messages()) >= 3, 10, "oven telemetry")

    asyncio.run(run_for(sims, 0, during=scenario))
    tg.close()
    ctl.close()
    zones = payloads(tg, "state", oven_id)[-1]["thermal"]["temperature_zones"]
    assert zones[0] is None and all(isinstance(z, float) for z in zones[1:]), zones
    signals = sims[0].board.signals
    # zones 1 and 2 read their own sensors (within the model's noise and the averaging window)
    for zone in (1, 2):
        assert abs(zones[zone] - signals.temps[zone]) < 2.0, (zone, zones, signals.temps)
    assert sims[0].device.sensor_errors > 0
    announced = payloads(ctl, "announce", oven_id)[-1]["sensors"]
    assert common.kind_config(kind, mac)["temperature_sensors"].keys() - set(announced) == {
        next(r for r, z in common.kind_config(kind, mac)["temperature_sensors"].items() if z == 0)}


def test_telemetry_time_is_null_until_the_clock_is_set(site, ntp_server):
    """An ESP32 starts in the year 2000: until NTP answers, ts is null (not a
    date in 2000); the device asks the site's NTP server (ntp_server in cfg)."""
    sims = site(DEVICES[:1])
    device_id = DEVICES[0][0]
    sims[0].board.faults.clock_unset = True
    tg = watcher(site.broker, "telegraf", topic(device_id, "state"))
    ctl = watcher(site.broker, "controller", topic(device_id, "#"))

    async def scenario():
        await until(lambda: len(tg.messages()) >= 2, 10, "telemetry before NTP")
        seen["before"] = payloads(tg, "state", device_id)
        ntp_server.start()
        ctl.publish(topic(device_id, "cfg"), json.dumps({"version": 1, "ntp_server": ntp_server.address}),
                    retain=True)
        await until(lambda: sims[0].board.time_synced(), 10, "the clock set from NTP")
        count = len(tg.messages())
        await until(lambda: len(tg.messages()) >= count + 2, 10, "telemetry after NTP")

    seen = {}
    asyncio.run(run_for(sims, 0, during=scenario))
    tg.close()
    ctl.close()
    assert all(m["ts"] is None for m in seen["before"])
    after = payloads(tg, "state", device_id)[-1]
    # from the NTP server's clock (2031), not the host's: device time runs 50x
    # faster than real time here, so only the day is compared
    assert ntp_server.start_epoch <= after["ts"] < ntp_server.start_epoch + 86400, (after["ts"], ntp_server.now())
    assert ntp_server.queries >= 1


def test_metrics_endpoint_speaks_prometheus_text(site):
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from broker import free_port

    sims = site(DEVICES[1:2])  # the oven: meters and temperature zones
    port = free_port()
    sims[0].board.metrics_port = port
    # the heap figures only an ESP32 can read (MicroPython's mem_info, ESP-IDF's
    # heap), stood in for here: they must reach status and /metrics
    sims[0].board.heap_largest_free = lambda: 30016
    sims[0].board.idf_largest_free = lambda: 17120
    ctl = watcher(site.broker, "telegraf", topic(DEVICES[1][0], "state"))
    st = watcher(site.broker, "controller", topic(DEVICES[1][0], "status"))
    pages = {}

    async def scenario():
        await until(lambda: len(ctl.messages()) >= 1, 10, "first telemetry")
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
    ctl.close()
    status, ctype, text = pages["metrics"]
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    info = families["edgefleet_device_info"].samples[0]
    assert info.labels["device_id"] == DEVICES[1][0] and info.labels["kind"] == "oven"
    assert families["edgefleet_mqtt_connected"].samples[0].value == 1
    assert families["edgefleet_heap_largest_free_block_bytes"].samples[0].value == 30016
    assert families["edgefleet_idf_heap_largest_free_block_bytes"].samples[0].value == 17120
    status = [p for p in payloads(st, "status", DEVICES[1][0]) if p.get("online")][0]
    st.close()
    assert status["heap_largest_free"] == 30016 and status["idf_largest_free"] == 17120
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
                           initial_config=common.kind_config(kind, mac),
                           signing_key=testkeys.new_key().public)
    sim = fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind, time_scale=0.02)
    tg = Paho(b.tls_port, user="telegraf", password=SERVICE["telegraf"], ca_file=str(tls["ca"])).connect_ok()
    tg.subscribe(topic(device_id, "state"), 1)

    async def first():
        await until(lambda: tg.messages(), 10, "telemetry over TLS")

    asyncio.run(run_for([sim], 0, during=first))
    got = tg.messages()
    tg.close()
    assert json.loads(got[0].payload)["device_id"] == device_id
    # a device that does not trust this CA cannot connect
    other = make_ca_and_server(tmp_path / "other")
    with sim.board.fs.open("ca.crt", "wb") as f:
        f.write(other["ca"].read_bytes())
    sim2 = fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind, time_scale=0.02)

    def refused():
        return any("CERTIFICATE_VERIFY_FAILED" in line or "certificate verify failed" in line
                   for line in sim2.board.logs)

    async def attempt():
        sim2.start()
        await until(refused, 10, "a refused TLS handshake")
        connected = sim2.device.online()
        await sim2.stop()
        return connected

    assert not asyncio.run(attempt())

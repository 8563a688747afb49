"""The device application: identity, config, MQTT session, sampling,
telemetry with an offline buffer, commands. Hardware comes from the board
layer passed in (``board_esp32`` on a device, ``firmware.sim`` on a host),
so this file runs unchanged in both.

Files on the device's filesystem (the board's ``fs``):
  device.json   identity and broker settings written at flash time
  config.json   the applied config (replaced atomically)
  buf/          the offline buffer
"""

import asyncio
import json

import backoff
import bootsel
import config
import ds18b20
import identity
import metrics
import mqtt
import ota
import pzem
import telemetry
from buffer import OfflineBuffer

FW_VERSION = "0.1.0"


def load_json(fs, path, default=None):
    if not fs.exists(path):
        return default
    with fs.open(path, "r") as f:
        return json.loads(f.read())


class Device:
    def __init__(self, board):
        self.board = board
        self.fs = board.fs
        settings = load_json(self.fs, "device.json")
        if settings is None:
            raise RuntimeError("device.json missing: the board was not provisioned")
        self.settings = settings
        self.kind = settings["kind"]
        self.id = identity.device_id(self.kind, board.mac())
        if settings.get("id") not in (None, self.id):
            raise RuntimeError("device.json is for %s but this board is %s" % (settings["id"], self.id))
        self.site = settings["site"]
        self.base = "site/%s/%s/%s/" % (self.site, self.kind, self.id)
        applied = load_json(self.fs, "config.json")
        # the config written at flash time, then the last one applied over MQTT
        self.config = config.initial(settings.get("config") or {})
        if applied:
            try:
                self.config = config.validate(applied, self.config)
            except config.ConfigError:
                pass  # a corrupt file: keep the defaults, the broker's retained cfg follows
        self.buffer = OfflineBuffer(self.fs, "buf", self.config["buffer_capacity"])
        self.boot = bootsel.load(self.fs)  # the boot loader has already run bootsel.select()
        self.fw = ota.slot_version(self.fs, self.boot["active"]) or FW_VERSION
        self.selftest_timeout_s = settings.get("selftest_timeout_s", 60)
        self.confirmed_event = asyncio.Event()
        self.backoff = backoff.Backoff(settings.get("backoff_base_s", 1.0), settings.get("backoff_cap_s", 60.0),
                                       rand=getattr(board, "random", None))
        self.meters = pzem.Pzem(board.modbus)
        self.aggregator = telemetry.Aggregator()
        self.client = None
        self.inbox = []
        self.inbox_event = asyncio.Event()
        self.wake_flush = asyncio.Event()
        self.published = 0
        self.connects = 0
        self.seq = 0  # telemetry sequence number since boot: consumers detect gaps and duplicates
        self.last = None  # the last telemetry message, for /metrics
        self.sensor_errors = 0
        self.metrics_server = None

    # --- helpers -----------------------------------------------------------
    def topic(self, channel):
        return self.base + channel

    def status_payload(self, online=True):
        return {
            "online": online, "fw": self.fw, "cfg_version": self.config["version"],
            "uptime_s": self.board.uptime_s(), "rssi": self.board.wifi_rssi(), "free_heap": self.board.free_heap(),
            "buffered": len(self.buffer), "buffer_dropped": self.buffer.dropped,
        }

    def announce_payload(self):
        return {"id": self.id, "kind": self.kind, "mac": ":".join("%02x" % b for b in self.board.mac()),
                "chip": self.board.chip(), "fw": self.fw, "ip": self.board.ip(),
                "metrics": "http://%s:%d/metrics" % (self.board.ip(), self.config["metrics_port"])}

    async def publish_json(self, channel, value, qos=1, retain=False):
        payload = json.dumps(value).encode()
        payload = self.board.outgoing(self.topic(channel), payload)
        await self.client.publish(self.topic(channel), payload, qos=qos, retain=retain)

    # --- MQTT session --------------------------------------------------------
    def _on_message(self, topic, payload, retain):
        self.inbox.append((topic, payload))
        self.inbox_event.set()

    async def _connect_once(self):
        broker = self.settings["broker"]
        await self.board.wifi_connect()
        will = (self.topic("status"), json.dumps({"online": False}).encode(), 1, True)
        client = mqtt.Client(self.id, broker["host"], broker.get("port", 1883), user=self.id,
                             password=self.settings["password"], keepalive=broker.get("keepalive", 60), will=will,
                             ssl=self.board.ssl_context(broker) if broker.get("tls") else None,
                             on_message=self._on_message, timeout_s=broker.get("timeout_s", 10))
        await client.connect()
        self.client = client
        self.connects += 1
        await self.publish_json("status", self.status_payload(), retain=True)
        await self.publish_json("announce", self.announce_payload(), retain=True)
        # the retained desired config arrives right after this subscription
        await client.subscribe(self.topic("cfg"), 1)
        await client.subscribe(self.topic("cmd"), 1)
        await self.self_test_passed()

    # --- OTA: self-test, confirm, report --------------------------------------------
    def update_pending(self):
        last = self.boot.get("last") or {}
        if last.get("payload") == "firmware" and last.get("result") == "pending":
            return self.board.firmware_pending()
        return self.boot["pending"]

    async def self_test_passed(self):
        """Broker reachable (we are connected) and config valid: confirm a
        pending update, then report the outcome of the last update once."""
        config.validate(dict(self.config, version=max(1, self.config["version"])), self.config)
        last = self.boot.get("last")
        if last and last.get("result") == "pending":
            if last.get("payload") == "firmware":
                if self.board.firmware_running() == last.get("target") and self.board.firmware_pending():
                    self.board.firmware_mark_valid()
                    last.update(result="confirmed", reported=False)
                elif self.board.firmware_running() != last.get("target"):
                    last.update(result="rolled_back", reported=False,
                                detail="the bootloader returned to %s" % self.board.firmware_running())
                bootsel.save(self.fs, self.boot)
            else:
                self.boot = bootsel.confirm(self.fs)
                last = self.boot["last"]
        self.confirmed_event.set()
        if last and not last.get("reported") and last.get("result") in ("confirmed", "rolled_back"):
            await self.publish_json("ota", {"id": last.get("id"), "state": last["result"], "version": last.get("version"),
                                            "detail": last.get("detail")})
            last["reported"] = True
            bootsel.save(self.fs, self.boot)

    async def self_test_watchdog(self):
        """A pending update that cannot reach the broker in time is abandoned."""
        if not self.update_pending():
            return
        await self.board.sleep(self.selftest_timeout_s)
        if not self.confirmed_event.is_set():
            detail = "self-test failed: broker not reachable within %ss" % self.selftest_timeout_s
            self.board.log(detail)
            last = self.boot.get("last") or {}
            if last.get("payload") == "firmware":
                last.update(detail=detail)
                bootsel.save(self.fs, self.boot)  # not marked valid: the bootloader reverts
            else:
                bootsel.save(self.fs, bootsel.rollback(self.boot, detail))
            self.board.reset()

    async def connection_loop(self):
        while True:
            try:
                await self._connect_once()
            except Exception as e:
                if self.client is not None:  # connected, then failed to set up: drop the half session
                    self.client.abort()
                self.client = None
                delay = self.backoff.next_delay()
                self.board.log("connect failed (%r); retry in %.1fs" % (e, delay))
                await self.board.sleep(delay)
                continue
            self.backoff.reset()
            self.wake_flush.set()
            reason = await self.client.wait_closed()
            delay = self.backoff.next_delay()
            self.board.log("connection lost (%s); reconnect in %.1fs" % (reason, delay))
            await self.board.sleep(delay)

    def online(self):
        return self.client is not None and self.client.connected

    # --- incoming ------------------------------------------------------------
    async def inbox_loop(self):
        while True:
            await self.inbox_event.wait()
            self.inbox_event.clear()
            while self.inbox:
                topic, payload = self.inbox.pop(0)
                try:
                    if topic == self.topic("cfg"):
                        await self.handle_cfg(payload)
                    elif topic == self.topic("cmd"):
                        await self.handle_cmd(payload)
                except Exception as e:
                    self.board.log("handling %s failed: %r" % (topic, e))

    async def handle_cfg(self, payload):
        try:
            candidate = json.loads(payload)
        except ValueError:
            await self.publish_json("cfg/ack", config.ack(None, "rejected", "config is not valid JSON"))
            return
        try:
            new = config.validate(candidate, self.config)
        except config.ConfigError as e:
            await self.publish_json("cfg/ack", config.ack(config.candidate_version(candidate), "rejected", str(e)))
            return
        if new != self.config:
            bootsel.write_json(self.fs, "config.json", new)  # atomic
            self.config = new
            self.buffer.capacity = new["buffer_capacity"]
        await self.publish_json("cfg/ack", config.ack(new["version"], "applied"))
        await self.publish_json("status", self.status_payload(), retain=True)

    async def handle_cmd(self, payload):
        try:
            cmd = json.loads(payload)
        except ValueError:
            return
        if not isinstance(cmd, dict):
            return
        if cmd.get("cmd") == "reboot":
            await self.client.disconnect()
            self.board.reset()
        elif cmd.get("cmd") == "ota":
            await ota.run(self, cmd)

    # --- sampling and telemetry ---------------------------------------------------
    async def read_sensors(self):
        meters = []
        for address in self.config["pzem_addresses"]:
            try:
                meters.append(await self.meters.read(address))
            except pzem.PzemError as e:
                self.board.log(str(e))
                meters.append(None)
        temps = []
        if self.config["temperature_zones"]:
            pads = await self.board.ds18b20_read()
            for rom, pad in pads[:self.config["temperature_zones"]]:
                try:
                    temps.append(ds18b20.temperature(pad))
                except ds18b20.SensorError as e:
                    self.board.log(str(e))
                    temps.append(None)
        return meters, temps

    async def tick(self, due, interval):
        """Sleep until *due* + *interval*: a fixed cadence, so time spent
        working or waiting for the CPU is not added to the period. Returns
        the new due time. When the loop fell behind, or the wall clock
        jumped (NTP), the cadence restarts from now instead of bursting or
        stalling."""
        now = self.board.time()
        delay = due + interval - now
        if delay < 0 or delay > interval:
            due, delay = now, interval
        await self.board.sleep(delay)
        return due + interval

    def phase(self, interval):
        """A random start phase: devices that boot together (a site power
        cut) do not sample and publish in lockstep."""
        return self.board.time() - self.backoff.rand() * interval

    async def sample_loop(self):
        due = self.phase(self.config["sample_interval_s"])
        while True:
            meters, temps = await self.read_sensors()
            self.aggregator.add(meters, temps)
            due = await self.tick(due, self.config["sample_interval_s"])

    async def publish_loop(self):
        due = self.phase(self.config["publish_interval_s"])
        while True:
            due = await self.tick(due, self.config["publish_interval_s"])
            msg = self.aggregator.payload(self.id, self.board.time(), self.board.operational_state(),
                                          self.board.wifi_rssi(), self.board.uptime_s(),
                                          self.config["setpoint_c"])
            self.sensor_errors += self.aggregator.errors
            self.aggregator.reset()
            self.last = msg
            self.seq += 1
            msg["seq"] = self.seq
            payload = json.dumps(msg).encode()
            if self.online() and not len(self.buffer):
                try:
                    await self.client.publish(self.topic("state"), self.board.outgoing(self.topic("state"), payload),
                                              qos=1)
                    self.published += 1
                    continue
                except Exception:
                    pass
            self.buffer.push(payload)
            self.wake_flush.set()

    async def flush_loop(self):
        """Send buffered messages, oldest first, whenever connected."""
        while True:
            await self.wake_flush.wait()
            self.wake_flush.clear()
            while self.online():
                item = self.buffer.peek()
                if item is None:
                    break
                seq, payload = item
                try:
                    await self.client.publish(self.topic("state"), payload, qos=1)
                except Exception:
                    break  # the next connection wakes this loop again
                self.buffer.remove(seq)
                self.published += 1

    # --- /metrics -----------------------------------------------------------------
    def metrics_text(self):
        info = (("device_id", self.id), ("kind", self.kind), ("fw", self.fw))
        last = self.last or {}
        elec = last.get("electrical", {})
        zones = last.get("thermal", {}).get("temperature_zones", [])
        return metrics.render([
            ("edgefleet_device_info", "gauge", "Device identity.", [(info, 1)]),
            ("edgefleet_uptime_seconds", "gauge", "Seconds since boot.", [((), self.board.uptime_s())]),
            ("edgefleet_wifi_rssi_dbm", "gauge", "Wi-Fi signal.", [((), self.board.wifi_rssi())]),
            ("edgefleet_free_heap_bytes", "gauge", "Free heap.", [((), self.board.free_heap())]),
            ("edgefleet_mqtt_connected", "gauge", "1 while the MQTT session is up.", [((), self.online())]),
            ("edgefleet_mqtt_connects_total", "counter", "MQTT sessions opened.", [((), self.connects)]),
            ("edgefleet_telemetry_published_total", "counter", "Telemetry messages acknowledged by the broker.",
             [((), self.published)]),
            ("edgefleet_buffer_messages", "gauge", "Telemetry messages waiting in flash.", [((), len(self.buffer))]),
            ("edgefleet_buffer_dropped_total", "counter", "Buffered messages dropped when the buffer was full.",
             [((), self.buffer.dropped)]),
            ("edgefleet_config_version", "gauge", "Applied config version.", [((), self.config["version"])]),
            ("edgefleet_sensor_errors_total", "counter", "Failed sensor reads.", [((), self.sensor_errors)]),
            ("edgefleet_voltage_volts", "gauge", "Mean phase voltage of the last interval.",
             [((("phase", p),), v) for p, v in sorted(elec.get("voltage", {}).items())]),
            ("edgefleet_current_amperes", "gauge", "Mean phase current of the last interval.",
             [((("phase", p),), v) for p, v in sorted(elec.get("current", {}).items())]),
            ("edgefleet_power_factor", "gauge", "Mean power factor of the last interval.",
             [((), elec.get("power_factor"))]),
            ("edgefleet_temperature_celsius", "gauge", "Mean zone temperature of the last interval.",
             [((("zone", str(i)),), t) for i, t in enumerate(zones)]),
        ])

    async def start_metrics(self):
        address = self.board.metrics_address(self.config["metrics_port"])
        if address is not None and self.metrics_server is None:
            self.metrics_server = await metrics.serve(address[0], address[1], self.metrics_text)

    async def run(self):
        await self.start_metrics()
        tasks = [asyncio.create_task(c) for c in (
            self.connection_loop(), self.inbox_loop(), self.sample_loop(), self.publish_loop(), self.flush_loop(),
            self.self_test_watchdog())]
        try:
            await asyncio.gather(*tasks)
        finally:
            # gather does not stop the other loops when one ends (a reset in
            # the simulator, an error): stop them all together
            for task in tasks:
                task.cancel()

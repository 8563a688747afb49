"""The device application: identity, config, MQTT session, sampling,
telemetry with an offline buffer, commands, time, watchdog. Hardware comes
from the board layer passed in (``board_esp32`` on a device, ``firmware.sim``
on a host, a unix-port board in the tests), so this file runs unchanged in
all of them.

Files on the device's filesystem (the board's ``fs``):
  device.json   identity and broker settings written at flash time
  config.json   the last applied ``cfg`` message (replaced atomically)
  buf/          the offline buffer
  crash.json    the last crash, reported on ``announce`` at the next boot
"""

import asyncio
import json
import sys

import backoff
import bootsel
import contract
import devconfig
import ds18b20
import identity
import metrics
import mqtt
import ota
import pzem
import supervisor
import telemetry
from buffer import OfflineBuffer

FW_VERSION = "0.2.0"
INBOX_LIMIT = 8  # commands and configs waiting to be handled; more ends the session unacknowledged
SENSOR_READ_DEADLINE_S = 30  # a sensor read that takes longer means a wedged bus: stop feeding the watchdog
# Modules imported only for a rare job and released after it (release_modules:
# on MicroPython their code then leaves the heap): sntp for a time query,
# metricstext for a scrape.
RARE = ("sntp", "metricstext")
MICROPYTHON = sys.implementation.name == "micropython"


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
        self.base = contract.base_topic(self.site, self.id)
        board.set_hostname(self.id)  # <id>.local
        self.problems = []
        try:
            self.base_config = devconfig.initial(settings.get("config") or {})
        except devconfig.ConfigError as e:
            self.problems.append("flash-time config refused: %s" % e)
            self.base_config = dict(devconfig.DEFAULTS)
        # the applied config: defaults + flash-time config + the last cfg message, never the one before
        self.config = self.base_config
        stored = None
        try:
            stored = load_json(self.fs, "config.json")
        except (OSError, ValueError):
            pass  # unreadable: the broker's retained cfg follows on connect
        if stored:
            try:
                self.config = devconfig.validate(stored, self.base_config)
            except devconfig.ConfigError as e:
                self.problems.append("stored config refused: %s" % e)
        self.buffer = OfflineBuffer(self.fs, "buf", self.config["buffer_capacity"])
        self.boot = bootsel.load(self.fs)  # the boot loader has already run bootsel.select()
        ota.discard_incoming(self.fs)  # what a power cut during a download left behind
        ota.reserve_buffer()  # while the heap is in one piece
        self.fw = ota.slot_version(self.fs, self.boot["active"]) or FW_VERSION
        self.crash = supervisor.load_crash(self.fs)
        self.selftest_timeout_s = settings.get("selftest_timeout_s", 60)
        self.watchdog_s = settings.get("watchdog_s", 120)
        self.confirmed_event = asyncio.Event()
        self.backoff = backoff.Backoff(settings.get("backoff_base_s", backoff.BASE_S),
                                       settings.get("backoff_cap_s", backoff.CAP_S),
                                       rand=board.random, spread_s=settings.get("reconnect_spread_s", backoff.SPREAD_S))
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
        self.sensors_seen = []  # DS18B20 ROM codes found on the bus
        self.sampling_since = None  # when the sensor read in progress started
        self.alive_at = board.time()
        self.metrics_server = None

    # --- helpers -----------------------------------------------------------
    @staticmethod
    def release_modules(*names):
        """Forget modules imported for a rare job, so that the collector can
        take their code back: MicroPython keeps an .mpy module's bytecode in
        the heap (a frozen one's stays in flash, but its globals do not).
        The next job imports them again. Only on MicroPython: under CPython
        the simulator's devices share one process (and tests patch modules)."""
        if MICROPYTHON:
            for name in names:
                sys.modules.pop(name, None)

    def topic(self, channel):
        return self.base + channel

    def timestamp(self):
        """Wall-clock time for telemetry, or None while the clock is not set
        (an ESP32 starts in the year 2000 until NTP answers)."""
        return self.board.time() if self.board.time_synced() else None

    def status_payload(self, online=True):
        return {
            "online": online, "fw": self.fw, "cfg_version": self.config["version"],
            "uptime_s": self.board.uptime_s(), "rssi": self.board.wifi_rssi(), "free_heap": self.board.free_heap(),
            "buffered": len(self.buffer), "buffer_dropped": self.buffer.dropped, "time_synced": self.board.time_synced(),
        }

    def announce_payload(self):
        ip = self.board.ip()
        out = {"id": self.id, "kind": self.kind, "mac": ":".join("%02x" % b for b in self.board.mac()),
               "chip": self.board.chip(), "fw": self.fw, "ip": ip, "hostname": self.id + ".local",
               "metrics": "http://%s:%d/metrics" % (ip, self.config["metrics_port"]),
               "reset_cause": self.board.reset_cause(), "sensors": self.sensors_seen}
        if self.crash:
            out["crash"] = self.crash
        if self.problems:
            out["problems"] = self.problems
        return out

    async def publish_json(self, channel, value, qos=1, retain=False):
        payload = json.dumps(value).encode()
        payload = self.board.outgoing(self.topic(channel), payload)
        await self.client.publish(self.topic(channel), payload, qos=qos, retain=retain)

    # --- MQTT session --------------------------------------------------------
    def _on_message(self, topic, payload, retain):
        if len(self.inbox) >= INBOX_LIMIT:
            raise RuntimeError("inbox full")  # not acknowledged: the session ends
        self.inbox.append((topic, payload))
        self.inbox_event.set()

    async def _connect_once(self):
        broker = self.settings["broker"]
        await self.board.wifi_connect()
        will = (self.topic("status"), json.dumps({"online": False}).encode(), 1, True)
        client = mqtt.Client(self.id, broker["host"], broker.get("port", 1883), user=self.id,
                             password=self.settings["password"], keepalive=broker.get("keepalive", 60), will=will,
                             ssl=self.board.ssl_context(broker) if broker.get("tls") else None,
                             on_message=self._on_message, timeout_s=broker.get("timeout_s", 10),
                             max_packet_size=broker.get("max_packet_size", mqtt.MAX_PACKET_SIZE))
        self.client = client
        await client.connect()
        self.connects += 1
        # subscribe first: a retained status online=true then means that
        # this device takes cfg and cmd (the retained cfg arrives now)
        await client.subscribe(self.topic("cmd"), 1)
        await client.subscribe(self.topic("cfg"), 1)
        await self.publish_json("announce", self.announce_payload(), retain=True)
        if self.crash is not None:
            supervisor.clear_crash(self.fs)  # reported (and kept in this boot's announce)
        await self.publish_json("status", self.status_payload(), retain=True)
        await self.self_test_passed()

    async def connection_loop(self):
        while True:
            connects = self.connects
            try:
                await self._connect_once()
            except Exception as e:
                if self.client is not None:  # connected, then failed to set up: drop the half session
                    self.client.abort()
                self.client = None
                # a session that was up when it failed is a lost session (a
                # broker restart during setup): come back spread out, too
                delay = self.backoff.after_loss() if self.connects > connects else self.backoff.next_delay()
                self.board.log("connect failed (%r); retry in %.1fs" % (e, delay))
                await self.board.sleep(delay)
                continue
            self.backoff.reset()
            self.wake_flush.set()
            reason = await self.client.wait_closed()
            # everybody lost the broker at once (a restart): come back spread out
            delay = self.backoff.after_loss()
            self.board.log("connection lost (%s); reconnect in %.1fs" % (reason, delay))
            await self.board.sleep(delay)

    def online(self):
        return self.client is not None and self.client.connected

    # --- OTA: self-test, confirm, report --------------------------------------------
    def update_pending(self):
        last = self.boot.get("last") or {}
        if last.get("payload") == "firmware" and last.get("result") == "pending":
            return self.board.firmware_pending()
        return self.boot["pending"]

    async def self_test_passed(self):
        """Broker reachable (we are connected) and config valid: confirm a
        pending update, then report the outcome of the last update once."""
        devconfig.validate(dict(self.config, version=max(1, self.config["version"])), self.base_config)
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
            await self.publish_json("ota", contract.ota_report(last.get("id"), last["result"], last.get("version"),
                                                                last.get("detail")))
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
        """Apply a whole desired config (over defaults + flash-time config) and acknowledge it."""
        try:
            candidate = json.loads(payload)
        except ValueError:
            await self.publish_json("cfg/ack", devconfig.ack(None, "rejected", "config is not valid JSON"))
            return
        try:
            new = devconfig.validate(candidate, self.base_config, self.config["version"])
        except devconfig.ConfigError as e:
            await self.publish_json("cfg/ack", devconfig.ack(devconfig.candidate_version(candidate), "rejected",
                                                              str(e)))
            return
        if new != self.config:
            bootsel.write_json(self.fs, "config.json", candidate)  # atomic
            self.config = new
            self.buffer.capacity = new["buffer_capacity"]
        await self.publish_json("cfg/ack", devconfig.ack(new["version"], "applied"))
        await self.publish_json("status", self.status_payload(), retain=True)

    async def answer(self, cmd_id, name, result, detail=None):
        await self.publish_json("cmd/ack", contract.cmd_ack(cmd_id, name, result, detail))

    async def handle_cmd(self, payload):
        """Every command gets an answer: ``ota`` on the ota channel, the
        others (and anything malformed) on cmd/ack."""
        try:
            cmd = json.loads(payload)
        except ValueError:
            await self.answer(None, None, "rejected", "command is not valid JSON")
            return
        try:
            cmd_id, name = contract.check_command(cmd)
        except contract.ContractError as e:
            await self.answer(contract.command_id_of(cmd), cmd.get("cmd") if isinstance(cmd, dict) else None,
                              "rejected", str(e))
            return
        if name == "ota":
            await ota.run(self, cmd)
            return
        # reboot
        try:
            await self.answer(cmd_id, name, "accepted")
            await self.client.disconnect()
        finally:
            self.board.reset()

    # --- sampling and telemetry ---------------------------------------------------
    async def read_temperatures(self):
        """Zone temperatures: by ROM code when the config maps sensors to
        zones (a missing sensor leaves only its own zone empty), otherwise
        in ROM order."""
        zones = self.config["temperature_zones"]
        if not zones:
            return []
        found = {}
        for rom, pad in await self.board.ds18b20_read():
            try:
                found[ds18b20.check_rom(rom).hex()] = pad
            except ds18b20.SensorError as e:
                self.board.log(str(e))
        self.sensors_seen = sorted(found)
        mapping = self.config["temperature_sensors"]
        if not mapping:
            mapping = {rom: i for i, rom in enumerate(self.sensors_seen[:zones])}
        temps = [None] * zones
        for rom, zone in mapping.items():
            pad = found.get(rom)
            if pad is None:
                self.board.log("DS18B20 %s (zone %d) did not answer" % (rom, zone))
                self.sensor_errors += 1
                continue
            try:
                temps[zone] = ds18b20.temperature(pad)
            except ds18b20.SensorError as e:
                self.board.log(str(e))
                self.sensor_errors += 1
        return temps

    async def read_sensors(self):
        meters = []
        for address in self.config["pzem_addresses"]:
            try:
                meters.append(await self.meters.read(address))
            except pzem.PzemError as e:
                self.board.log(str(e))
                meters.append(None)
        return meters, await self.read_temperatures()

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
            self.sampling_since = self.board.time()
            meters, temps = await self.read_sensors()
            self.sampling_since = None
            self.aggregator.add(meters, temps)
            self.alive_at = self.board.time()
            due = await self.tick(due, self.config["sample_interval_s"])

    async def publish_loop(self):
        due = self.phase(self.config["publish_interval_s"])
        while True:
            due = await self.tick(due, self.config["publish_interval_s"])
            msg = self.aggregator.payload(self.id, self.timestamp(), self.board.operational_state(),
                                          self.board.wifi_rssi(), self.board.uptime_s(),
                                          self.config["setpoint_c"])
            self.sensor_errors += self.aggregator.errors
            self.aggregator.reset()
            self.last = msg
            self.board.collect_garbage()  # often and early: MicroPython's heap does not compact
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

    # --- time and watchdog --------------------------------------------------------
    async def set_time(self, server):
        """One query (sntp is imported for it and released after)."""
        try:
            import sntp

            self.board.set_time(await sntp.query(server))
        finally:
            self.release_modules("sntp")

    async def time_loop(self):
        """Set the clock from the site's NTP server (the controller by default)."""
        while True:
            server = self.config["ntp_server"] or self.settings["broker"]["host"]
            try:
                await self.set_time(server)
                wait = 3600
            except Exception as e:  # SntpError, OSError: keep going on the clock we have
                self.board.log("time: %s" % e)
                wait = 600 if self.board.time_synced() else 30
            await self.board.sleep(wait)

    def making_progress(self):
        """The loops that must never stall are moving: no sensor read hangs
        and the sampling cadence is kept."""
        now = self.board.time()
        if self.sampling_since is not None and now - self.sampling_since > SENSOR_READ_DEADLINE_S:
            return False
        return now - self.alive_at <= 2 * self.config["sample_interval_s"] + SENSOR_READ_DEADLINE_S

    async def watchdog_loop(self):
        """The hardware watchdog resets the board unless this loop feeds it,
        which it does only while the event loop runs and the app makes progress."""
        if not self.watchdog_s:
            return
        self.board.watchdog_start(self.watchdog_s)
        while True:
            if self.making_progress():
                self.board.watchdog_feed()
            await self.board.sleep(self.watchdog_s / 8)

    # --- /metrics -----------------------------------------------------------------
    def metrics_lines(self):
        """The lines of /metrics, rendered by metricstext (imported for the
        scrape and released after)."""
        try:
            import metricstext

            return metricstext.device_lines(self)
        finally:
            self.release_modules("metricstext")

    async def start_metrics(self):
        address = self.board.metrics_address(self.config["metrics_port"])
        if address is not None and self.metrics_server is None:
            self.metrics_server = await metrics.serve(address[0], address[1], self.metrics_lines)

    async def run(self):
        await self.start_metrics()
        tasks = [asyncio.create_task(c) for c in (
            self.connection_loop(), self.inbox_loop(), self.sample_loop(), self.publish_loop(), self.flush_loop(),
            self.self_test_watchdog(), self.time_loop(), self.watchdog_loop())]
        try:
            await asyncio.gather(*tasks)
        finally:
            # gather does not stop the other loops when one ends (a reset in
            # the simulator, an error): stop them all together
            for task in tasks:
                task.cancel()
            if self.metrics_server is not None:
                self.metrics_server.close()
                self.metrics_server = None

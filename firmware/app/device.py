"""The device application: identity, config, MQTT session, sampling,
telemetry with an offline buffer, commands, time, watchdog. Hardware comes
from the board layer passed in (``board_esp32`` on a device, ``firmware.sim``
on a host, a unix-port board in the tests), so this file runs unchanged in
all of them.

Memory: an ESP32 has about 100 KB of heap, and MicroPython keeps an .mpy
module's code in it. What runs all the time is here and in the modules
imported below; the rare jobs are in modules imported for the job and
released after it (RARE, ``Device.release_modules``): control
(a connect and its self-test, a cfg, a command), ota and httpget (an
update), sntp (a time query), metricstext (a scrape), and at boot identity,
the contract and the config schema, one at a time.

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
import ds18b20
import metrics
import mqtt  # noqa: F401  (resident: the session's client, which control.connect makes)
import pzem
import supervisor
import telemetry
from buffer import OfflineBuffer

FW_VERSION = "0.2.0"
# Commands waiting to be handled. One more is refused (answered inbox_full
# on cmd/ack, only its id kept); past twice this the session ends with the
# message unacknowledged, and the broker (a persistent session) sends it again.
# A cfg never takes a slot: it replaces the cfg waiting, if any.
INBOX_LIMIT = 8
SENSOR_READ_DEADLINE_S = 30  # a sensor read that takes longer means a wedged bus: stop feeding the watchdog
# Modules imported only for a rare job and released after it (release_modules:
# on MicroPython their code then leaves the heap): identity
# and the contract at boot, the config schema and control for a cfg, a
# command or the self-test after a connect, ota, otasig, p256 (the signature
# check), httpget and otaend (its outcome) for an update, sntp for a time query, metricstext for a
# scrape. Rarer still, and not in RARE (whose names are interned at every
# boot, for good): rotate and rotatecmd, imported only for a rotation of the
# MQTT secrets (the command, and a connect while rotation.json exists, the
# first of which follows the boot) and released after it by control.
RARE = ("identity", "contract", "devconfig", "control", "ota", "otaend", "otasig", "p256", "httpget", "sntp",
        "metricstext")
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
        self.site = settings["site"]
        self.boot = bootsel.load(self.fs)  # the boot loader has already run bootsel.select()
        # What only the boot needs (ota, identity, the contract, the config
        # schema) is imported one module at a time and released before the
        # next, so the boot's peak is the resident app and the largest of them;
        # first, all rare modules' names are interned while the heap is young.
        self._intern_names()
        self._boot_ota()
        self._boot_identity()
        self._boot_config()
        self.buffer = OfflineBuffer(self.fs, "buf", self.config["buffer_capacity"])
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
        self.control_lock = asyncio.Lock()  # control jobs run one at a time (see control())

    def _boot_ota(self):
        import ota

        # the update's one buffer, taken while the heap is in one piece;
        # kept here, as ota itself is released until an update
        self.ota_buffer = ota.reserve_buffer()
        ota.discard_incoming(self.fs)  # what a power cut during a download left behind
        self.fw = ota.slot_version(self.fs, self.boot["active"]) or FW_VERSION
        self.release_modules("ota")

    def _intern_names(self):
        """Import every rare module once and release it again: what stays
        are their names. MicroPython keeps every name (qstr) it has seen, in
        pools that never shrink, each twice the size of the last: the one
        the app's names spill into (640 names, 4.5 KB in one block on the
        32-bit unix port) must be taken now, while the heap is young; after
        hours of work (the first scrape, an update) there may be no such
        block left. And a rare module that cannot be imported (a broken
        app bundle) fails this boot, which rolls the update back, instead
        of the first job that needs it."""
        for name in RARE:
            __import__(name)
            self.release_modules(name)
        self.board.collect_garbage()

    def _boot_identity(self):
        import identity

        self.id = identity.device_id(self.kind, self.board.mac())
        del identity
        self.release_modules("identity")
        if self.settings.get("id") not in (None, self.id):
            raise RuntimeError("device.json is for %s but this board is %s" % (self.settings["id"], self.id))
        import contract

        self.base = contract.base_topic(self.site, self.id)
        self.release_modules("contract")
        self.board.set_hostname(self.id)  # <id>.local

    def _boot_config(self):
        import devconfig

        self.problems = []
        try:
            self.base_config = devconfig.initial(self.settings.get("config") or {})
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
        self.release_modules("devconfig")

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
        out = {
            "online": online, "fw": self.fw, "cfg_version": self.config["version"],
            "publish_interval_s": self.config["publish_interval_s"],
            "uptime_s": self.board.uptime_s(), "rssi": self.board.wifi_rssi(), "free_heap": self.board.free_heap(),
            "buffered": len(self.buffer), "buffer_dropped": self.buffer.dropped, "time_synced": self.board.time_synced(),
        }
        # the largest free blocks, where the board can read them (an ESP32)
        largest, idf = self.board.heap_largest_free(), self.board.idf_largest_free()
        if largest is not None:
            out["heap_largest_free"] = largest
        if idf is not None:
            out["idf_largest_free"] = idf
        return out

    async def publish_json(self, channel, value, qos=1, retain=False):
        payload = json.dumps(value).encode()
        payload = self.board.outgoing(self.topic(channel), payload)
        await self.client.publish(self.topic(channel), payload, qos=qos, retain=retain)

    # --- MQTT session --------------------------------------------------------
    def on_message(self, topic, payload, retain):
        inbox = self.inbox
        if topic == self.base + "cfg":  # the whole desired state: it replaces the one waiting
            inbox[:] = [m for m in inbox if m[0] != topic]
        elif len(inbox) >= INBOX_LIMIT:
            if len(inbox) >= 2 * INBOX_LIMIT:
                raise RuntimeError("inbox full")  # not acknowledged: the session ends
            try:  # refused: keep only the id, to answer inbox_full (control.message)
                payload = json.loads(payload)["id"]
            except Exception:
                payload = None
            topic = None
        inbox.append((topic, payload))
        self.inbox_event.set()

    async def connection_loop(self):
        while True:
            connects = self.connects
            try:
                await self.control("connect")
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

    # --- OTA: the self-test's deadline (the self-test runs after each connect) ---------
    def update_pending(self):
        last = self.boot.get("last") or {}
        if last.get("payload") == "firmware" and last.get("result") == "pending":
            return self.board.firmware_pending()
        return self.boot["pending"]

    async def self_test_watchdog(self):
        """A pending update that cannot reach the broker in time is abandoned."""
        if not self.update_pending():
            return
        await self.board.sleep(self.selftest_timeout_s)
        if not self.confirmed_event.is_set():
            await self.control("self_test_expired")

    # --- rare jobs and incoming messages ----------------------------------------
    async def control(self, job, *args):
        """Run ``control.<job>(self, *args)``: a connect, a cfg, a command.
        Jobs run one at a time, each with control and what it imports
        (contract, devconfig) loaded for it alone and released after it. A
        command that is an update returns the command: ota.run carries it
        out after that, outside the lock (a reconnect can run meanwhile),
        with the contract still loaded (it releases it before the download)."""
        async with self.control_lock:
            update = None
            try:
                import control

                update = await getattr(control, job)(self, *args)
            finally:
                control = None
                self.release_modules("control", "devconfig", *(() if update is not None else ("contract",)))
        if update is not None:
            try:
                import ota

                await ota.run(self, update)
            except MemoryError:  # not even the update's code fitted: it is answered all the same
                import contract

                await self.publish_json("ota", contract.ota_report(contract.command_id_of(update), "failed",
                                                                   update.get("version"),
                                                                   "out of memory during the update"))
            finally:
                self.release_modules("ota", "otaend", "httpget", "contract")

    async def inbox_loop(self):
        while True:
            await self.inbox_event.wait()
            self.inbox_event.clear()
            while self.inbox:
                topic, payload = self.inbox.pop(0)
                try:
                    await self.control("message", topic, payload)
                except Exception as e:
                    self.board.log("handling %s failed: %r" % (topic, e))

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
        """Set the clock from the site's NTP server (the controller by default).
        The first time it is set, the retained status is published again: the
        one of the connect said time_synced false (the site alerts on it)."""
        while True:
            server = self.config["ntp_server"] or self.settings["broker"]["host"]
            synced = self.board.time_synced()
            try:
                await self.set_time(server)
                wait = 3600
                if not synced and self.online():
                    async with self.control_lock:  # not between a connect's messages
                        await self.publish_json("status", self.status_payload(), retain=True)
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

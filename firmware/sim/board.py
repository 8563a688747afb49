"""The host board layer: what ``machine``, ``network`` and ``esp32`` give the
app on an ESP32, backed here by files, a simulated Modbus bus and 1-Wire bus,
and a simulated Wi-Fi link that fault injection can take down."""

import asyncio
import hashlib
import json
import logging
import os
import random
import ssl
import time

import ds18b20
import pzem
from boardkit import Fs

from firmware.common import sensor_rom

from .signals import Signals

log = logging.getLogger("edgefleet.sim")


class Reboot(BaseException):
    """Raised by reset(): the fleet runner boots the device again, like
    machine.reset(). A BaseException so that the app's error handling, which
    catches Exception, does not swallow it."""


class HostFS(Fs):
    """A device's flash filesystem, rooted in a host directory: the ESP32
    board's own Fs (firmware/app/boardkit.py) on the host's POSIX rename,
    which, like littlefs, replaces a file atomically."""

    def __init__(self, root):
        os.makedirs(root, exist_ok=True)
        super().__init__(root)


class ModbusBus:
    """RS-485 bus with one simulated PZEM-004T per phase at addresses 1..3."""

    def __init__(self, board):
        self.board = board

    async def transact(self, request, response_length, timeout_ms):
        await self.board._hang_if_wedged()
        request = bytes(request)
        if len(request) != 8 or pzem.crc16(request) != 0:
            return b""
        address, function = request[0], request[1]
        phase = address - 1
        if function != pzem.READ_INPUT_REGISTERS or not 0 <= phase < self.board.signals.phases:
            return b""  # nobody answers
        self.board.signals.advance(self.board.time())
        m = self.board.signals.meter(phase)
        regs = [round(m["voltage"] * 10)]
        for value in (round(m["current"] * 1000), round(m["power"] * 10), m["energy_wh"]):
            regs += [value & 0xFFFF, (value >> 16) & 0xFFFF]
        regs += [round(m["frequency"] * 10), round(m["power_factor"] * 100), 0]
        data = b"".join(r.to_bytes(2, "big") for r in regs)
        return pzem.with_crc(bytes((address, function, len(data))) + data)


class Faults:
    """Fault injection for one device; the fleet runner switches these."""

    def __init__(self):
        self.offline_until = 0.0
        self.malformed = 0.0  # probability that an outgoing message is corrupted
        self.ota_corrupt = False  # flip a byte of every download: the sha256 check must catch it
        self.ota_hang = False  # downloads stall after the headers
        self.selftest_fail = False  # a freshly updated app/image cannot reach the network
        self.crash_pending = False  # a freshly updated app crashes at start, before its self-test
        self.sensors_hang = False  # sensor reads never return (a wedged bus): only the watchdog helps
        self.dead_zones = ()  # DS18B20 zones whose sensor does not answer
        self.clock_unset = False  # the RTC starts at 2000-01-01 until NTP sets it
        # on this app version (fw), after hang_after_s device seconds of uptime:
        self.hang_on = None  # the app stops dead, its socket left open (no will until the keepalive ends)
        self.crash_on = None  # the app crashes (a reset), again after every boot: a crash loop
        self.hang_after_s = 30.0


class _FaultyReader:
    """Wraps a download stream to corrupt or stall it."""

    def __init__(self, reader, faults):
        self.reader, self.faults, self.headers_done = reader, faults, False

    async def readline(self):
        line = await self.reader.readline()
        if line in (b"\r\n", b"\n"):
            self.headers_done = True
        return line

    async def read(self, n):
        if self.faults.ota_hang and self.headers_done:
            await asyncio.Event().wait()  # never set: the server stalls
        data = await self.reader.read(n)
        if self.faults.ota_corrupt and data:
            data = bytes((data[0] ^ 0xFF,)) + data[1:]
        return data


class SimFirmware:
    """ota_0/ota_1 partitions and otadata, backed by files, with the ESP-IDF
    bootloader's rollback rule: a new image boots pending verification, and
    if it is not marked valid before the next reset, the previous one boots."""

    SIZE = 0x1E0000

    def __init__(self, root):
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.state_file = os.path.join(root, "otadata.json")
        if not os.path.exists(self.state_file):
            self._save({"running": "ota_0", "boot": "ota_0", "previous": None, "pending": False, "tried": False})

    def _load(self):
        with open(self.state_file) as f:
            return json.load(f)

    def _save(self, st):
        tmp = self.state_file + ".new"
        with open(tmp, "w") as f:
            json.dump(st, f)
        os.replace(tmp, self.state_file)

    def boot(self):
        st = self._load()
        if st["pending"]:
            if st["tried"]:  # booted once and never marked valid
                st.update(boot=st["previous"], pending=False, tried=False)
            else:
                st["tried"] = True
        st["running"] = st["boot"]
        self._save(st)

    def running(self):
        return self._load()["running"]

    def pending(self):
        st = self._load()
        return st["pending"] and st["running"] == st["boot"]

    def mark_valid(self):
        st = self._load()
        st.update(pending=False, tried=False, previous=None)
        self._save(st)

    def writer(self, size):
        if size > self.SIZE:
            raise ValueError("image of %d bytes does not fit the %d-byte partition" % (size, self.SIZE))
        target = "ota_1" if self.running() == "ota_0" else "ota_0"
        return _PartitionWriter(self, target)


class _PartitionWriter:
    def __init__(self, fw, label):
        self.fw, self.label = fw, label
        self.path = os.path.join(fw.root, label + ".bin")
        self.f = open(self.path, "wb")

    def write(self, data):
        self.f.write(data)

    def readback_sha256(self):
        self.f.flush()
        with open(self.path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def abort(self):
        self.f.close()

    def finish(self):
        self.f.close()
        st = self.fw._load()
        st.update(previous=st["running"], boot=self.label, pending=True, tried=False)
        self.fw._save(st)
        return self.label


class HostBoard:
    def __init__(self, root, mac, kind, seed=None, time_scale=1.0, clock=time.time):
        self.fs = HostFS(root)
        self._mac = bytes(mac)
        self.kind = kind
        self.rng = random.Random(seed if seed is not None else int.from_bytes(self._mac, "big"))
        self.time_scale = time_scale
        self._clock = clock
        self._boot = clock()
        self._wall_offset = 0.0  # set by NTP (set_time)
        self._synced = False
        self.faults = Faults()
        self.signals = Signals(kind, self.rng.getrandbits(32), start_time=self.time())
        self.modbus = ModbusBus(self)
        self.rssi_base = -45 - self.rng.randrange(0, 35)
        self.ip_address = "10.99.%d.%d" % (self._mac[4], self._mac[5])
        self.resets = 0
        self.logs = []
        self.metrics_port = None  # a port for /metrics, or None for none
        self.metrics_host = "127.0.0.1"  # where it listens: 0.0.0.0 for a fleet on a plant network
        self.firmware = SimFirmware(root.rstrip("/") + ".partitions")
        self.hostname = None
        self.last_reset = "power_on"
        self.wdt_timeout = None  # the simulated hardware watchdog (the fleet runner enforces it)
        self.wdt_fed = None

    # time
    def _elapsed(self):
        """Device seconds since this board object was created (time_scale applied)."""
        return (self._clock() - self._boot) / self.time_scale

    def time(self):
        """Seconds since the epoch, sped up by time_scale since boot. With
        the clock_unset fault the clock starts at 2000-01-01 until set_time()."""
        if self.faults.clock_unset and not self._synced:
            return 946684800.0 + self._elapsed()
        return self._boot + self._elapsed() + self._wall_offset

    def time_synced(self):
        return self._synced or not self.faults.clock_unset

    def set_time(self, epoch):
        self._wall_offset = epoch - self._boot - self._elapsed()
        self._synced = True
        self._set_at = (epoch, self._clock())

    def wall_time(self):
        """The clock a command's ``expires`` is judged on (control.cmd): the
        wall clock at real speed, as a board's RTC runs; time() runs
        time_scale times fast, which would expire every command early."""
        if getattr(self, "_set_at", None) is not None:
            return self._set_at[0] + self._clock() - self._set_at[1]
        return self._clock() if not self.faults.clock_unset else self.time()

    def uptime_s(self):
        return int(self._elapsed())

    async def sleep(self, seconds):
        await asyncio.sleep(seconds * self.time_scale)

    def random(self):
        return self.rng.random()

    # identity and system
    def mac(self):
        return self._mac

    def chip(self):
        return "ESP32-D0WD-V3 (simulated)"

    def free_heap(self):
        return 110_000 + self.rng.randrange(-4000, 4000)

    def collect_garbage(self):
        """CPython's collector needs no help (and would cost the fleet dearly)."""

    def heap_largest_free(self):
        """No MicroPython heap here: not reported (null), as on a port that cannot read it."""
        return None

    def idf_largest_free(self):
        """No ESP-IDF here: not reported (null)."""
        return None

    def log(self, message):
        self.logs.append(message)
        del self.logs[:-50]
        log.debug("%s: %s", self.ip_address, message)

    def reset(self):
        self.resets += 1
        raise Reboot()

    def reset_cause(self):
        return self.last_reset

    def set_hostname(self, name):
        self.hostname = name

    def watchdog_start(self, timeout_s):
        self.wdt_timeout = timeout_s
        self.wdt_fed = self.time()

    def watchdog_feed(self):
        self.wdt_fed = self.time()

    def watchdog_expired(self):
        return self.wdt_timeout is not None and self.time() - self.wdt_fed > self.wdt_timeout

    # network
    def offline(self):
        return self._clock() < self.faults.offline_until

    def update_pending(self):
        import bootsel
        return bootsel.load(self.fs)["pending"] or self.firmware.pending()

    async def wifi_connect(self):
        if self.offline():
            raise OSError("Wi-Fi: no access point (simulated outage)")
        if self.faults.selftest_fail and self.update_pending():
            raise OSError("Wi-Fi: the updated firmware cannot join the network (injected self-test failure)")

    async def open_connection(self, host, port, tls, timeout_s=10):
        import netio

        reader, writer = await netio.open_connection(host, port, self.ssl_context(None) if tls else None, timeout_s)
        if self.faults.ota_corrupt or self.faults.ota_hang:
            reader = _FaultyReader(reader, self.faults)
        return reader, writer

    # the MicroPython image partitions
    def firmware_writer(self, size):
        return self.firmware.writer(size)

    def firmware_running(self):
        return self.firmware.running()

    def firmware_pending(self):
        return self.firmware.pending()

    def firmware_mark_valid(self):
        self.firmware.mark_valid()

    def wifi_rssi(self):
        return self.rssi_base + self.rng.randrange(-3, 4)

    def ip(self):
        return self.ip_address

    def metrics_address(self, port):
        """Where /metrics listens: every simulated device shares the host, so
        the fleet runner hands out a port per device (or none), on loopback
        or, for a fleet on a plant network, on every interface."""
        return None if self.metrics_port is None else (self.metrics_host, self.metrics_port)

    def ssl_context(self, broker):
        """TLS trusting the site CA that the flash station wrote (ca.crt)."""
        ca = (broker or {}).get("ca", "ca.crt")
        return ssl.create_default_context(cafile=self.fs.path(ca))

    def outgoing(self, topic, payload):
        if self.faults.malformed and self.rng.random() < self.faults.malformed:
            return payload[: max(1, len(payload) // 2)]  # a truncated, malformed JSON document
        return payload

    # sensors
    def operational_state(self):
        self.signals.advance(self.time())
        return self.signals.state

    async def _hang_if_wedged(self):
        if self.faults.sensors_hang:
            await asyncio.Event().wait()  # never set: the bus never answers
        await asyncio.sleep(0)

    async def ds18b20_read(self):
        await self._hang_if_wedged()
        self.signals.advance(self.time())
        out = []
        for zone in range(self.signals.zones):
            if zone in self.faults.dead_zones:
                continue
            raw = int(round(self.signals.temperature(zone) * 16)) & 0xFFFF
            pad = bytes((raw & 0xFF, raw >> 8, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10))
            out.append((sensor_rom(self._mac, zone), pad + bytes((ds18b20.crc8(pad),))))
        return out

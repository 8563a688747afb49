"""A board layer for MicroPython's unix port: a test fixture, not product
code. It lets the unchanged device app (from a real flash image's littlefs,
mounted with MicroPython's own VfsLfs2 driver) run on the real interpreter
against a real broker. What an ESP32 has and this host has not is stood in
for plainly, and said so:

- Wi-Fi: the host's network (always joined); RSSI a constant.
- PZEM-004T meters and DS18B20 sensors: answered here from fixed values with
  a little noise, through the app's own Modbus and 1-Wire codecs.
- The RTC: starts at 2000-01-01 until the app sets it from NTP, like an
  ESP32 after power-on.
- reset(): exits with code 75; the harness (tools/pylib/unixdev.py) starts
  the process again, like a reboot. A hard kill is a power cut.
- The watchdog: feeds are counted (nothing resets the process).
- No TLS (this build has no ssl) and no OTA partitions (app bundles only).

Configured through the environment (the unix port's argv is short): see
tools/pylib/unixdev.py.
"""

import asyncio
import os
import random
import sys
import time

from boardkit import Fs, Heap, Uptime

RESET_EXIT_CODE = 75
Y2000 = 946684800


def env(name, default=None):
    value = os.getenv(name)
    return default if value is None or value == "" else value


def log(message):
    print("log: " + message)


class Modbus:
    """Three PZEM-004T meters at addresses 1..3 that answer like real ones."""

    def __init__(self, board):
        self.board = board

    async def transact(self, request, response_length, timeout_ms):
        import pzem  # from the app slot (the board is made before the slot is on sys.path)

        await asyncio.sleep(0)
        address = request[0]
        if pzem.crc16(request) != 0 or not 1 <= address <= 3:
            return b""
        regs = [2300 + random.getrandbits(4), 1500 + address, 0, 3450, 0, 12345, 0, 500, 92, 0]
        data = b"".join(bytes((r >> 8, r & 0xFF)) for r in regs)
        return pzem.with_crc(bytes((address, 4, len(data))) + data)


class UnixBoard(Heap):
    def __init__(self, root="/flash"):
        self.fs = Fs(root)
        self.scale = float(env("EF_TIME_SCALE", "1"))
        mac = env("EF_MAC", "240ac4123401")
        self._mac = bytes(int(mac[i:i + 2], 16) for i in range(0, 12, 2))
        self._wall0 = time.time_ns() / 1e9
        self._clock0 = Y2000  # an unset RTC
        self.synced = False
        self.uptime = Uptime(time.ticks_ms, time.ticks_diff)
        self.modbus = Modbus(self)
        self.hostname = None
        self.wdt_timeout = None
        self.wdt_feeds = 0
        self.metrics_port = env("EF_METRICS_PORT")
        self.roms = [bytes(int(r[i:i + 2], 16) for i in range(0, 16, 2)) for r in env("EF_ROMS", "").split(",") if r]

    # time
    def _elapsed(self):
        return (time.time_ns() / 1e9 - self._wall0) / self.scale

    def time(self):
        return self._clock0 + self._elapsed()

    def time_synced(self):
        return self.synced

    def set_time(self, epoch):
        self._clock0 = epoch - self._elapsed()
        self.synced = True

    def uptime_s(self):
        return int(self.uptime.ms() / 1000 / self.scale)

    async def sleep(self, seconds):
        await asyncio.sleep(seconds * self.scale)

    def random(self):
        return random.getrandbits(24) / 16777216.0

    # identity and system
    def mac(self):
        return self._mac

    def chip(self):
        return "MicroPython unix port (test board)"

    def log(self, message):
        log(message)

    def reset(self):
        log("reset")
        sys.exit(RESET_EXIT_CODE)

    def reset_cause(self):
        return env("EF_RESET_CAUSE", "power_on")

    def set_hostname(self, name):
        self.hostname = name
        log("hostname " + name)

    def watchdog_start(self, timeout_s):
        self.wdt_timeout = timeout_s
        log("watchdog %ss" % timeout_s)

    def watchdog_feed(self):
        self.wdt_feeds += 1

    # network
    async def wifi_connect(self):
        return

    def wifi_rssi(self):
        return -55

    def ip(self):
        return "127.0.0.1"

    def ssl_context(self, broker):
        raise OSError("no TLS in this MicroPython build")

    async def open_connection(self, host, port, tls, timeout_s=10):
        import netio

        if tls:
            raise OSError("no TLS in this MicroPython build")
        return await netio.open_connection(host, port, None, timeout_s)

    def metrics_address(self, port):
        return ("127.0.0.1", int(self.metrics_port)) if self.metrics_port else None

    def outgoing(self, topic, payload):
        return payload

    # sensors
    def operational_state(self):
        return "run"

    async def ds18b20_read(self):
        import ds18b20

        await asyncio.sleep(0)
        out = []
        for i, rom in enumerate(self.roms):
            raw = (21 + i) * 16 + random.getrandbits(2)
            pad = bytes((raw & 0xFF, raw >> 8, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10))
            out.append((rom, pad + bytes((ds18b20.crc8(pad),))))
        return out

    # no OTA partitions on this host
    def firmware_writer(self, size):
        raise OSError("the unix port has no OTA partitions")

    def firmware_running(self):
        return "ota_0"

    def firmware_pending(self):
        return False

    def firmware_mark_valid(self):
        pass

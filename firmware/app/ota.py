"""Over-the-air updates of both payloads of docs/architecture.md, section 6.4.

- ``app``: our app bundle (compiled modules + manifest) into the inactive
  A/B slot directory; the boot pointer (bootsel) changes last, atomically.
- ``firmware``: a MicroPython image into the inactive ota_0/ota_1 partition
  through the board (``esp32.Partition`` on a device); the ESP-IDF bootloader
  boots it pending verification.

A command is checked first (``otasig``): signed by the site's key over
payload kind, version, size, sha256 and security version, and not older
than the device's security version; otherwise it is refused before
anything is downloaded. Both are downloaded in chunks over plain HTTP,
checked for size and sha256 (the signed ones) before anything switches, boot pending, pass the app's self-test and are confirmed, or roll
back. Every step is reported on ``ota`` with the command id.

Bundle format: one JSON line (the manifest: version and, per file, name,
size, sha256), then the files' bytes in manifest order.

The device imports this module for an update only (``Device.control``) and
keeps the one download buffer itself. During an update, the contract (and
httpget after the download) are released as soon as they are done with, so
that the download and the unpacking have the heap they need.
"""

import hashlib
import io
import json

import bootsel

CHUNK = 2048
INCOMING = "ota_incoming.bin"
_buffer = []


def reserve_buffer(buf=None):
    """The one buffer every download and unpack uses, taken at boot while
    the heap is still in one piece: later, a fragmented heap may have the
    bytes free but not in one block (seen under the unix port's -X heapsize).
    The device keeps it (this module is loaded only for an update) and hands
    it back as *buf*."""
    if buf is not None:
        _buffer[:] = [buf]
    elif not _buffer:
        _buffer.append(memoryview(bytearray(CHUNK)))
    return _buffer[0]


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


async def download(url, connect, size, sha256, sink, timeout_s=30):
    """Stream *url* into sink.write(); check size and sha256."""
    import httpget

    response = await httpget.get(url, connect, timeout_s)
    h = hashlib.sha256()
    got = 0
    buf = reserve_buffer()
    try:
        if response.length is not None and response.length != size:
            raise OtaError("server announces %d bytes, command says %d" % (response.length, size))
        while got < size:
            n = await response.readinto(buf[:min(CHUNK, size - got)])
            if not n:
                break
            h.update(buf[:n])
            sink.write(buf[:n])
            got += n
    except httpget.HttpError as e:
        raise OtaError(str(e))
    finally:
        response.close()
    if got != size:
        raise OtaError("downloaded %d of %d bytes" % (got, size))
    digest = _hex(h.digest())  # once: MicroPython's hash objects allow a single digest()
    if digest != sha256:
        raise OtaError("sha256 mismatch: got %s, expected %s" % (digest, sha256))


class FileSink:
    def __init__(self, fs, path):
        self.f = fs.open(path, "wb")

    def write(self, data):
        self.f.write(data)

    def close(self):
        self.f.close()


class _Line(io.IOBase):
    """A file's next line as a stream of its own, for ``json.load``:
    MicroPython's reads it a byte at a time, so a bundle's manifest (over
    2 KB for the app) needs no block of its length from a heap that is
    fragmented by the time the download is done."""

    def __init__(self, f):
        self.f = f
        self.done = False

    def readinto(self, buf):  # MicroPython's json.load reads through this
        if self.done:
            return 0
        n = self.f.readinto(memoryview(buf)[:1])
        if not n or buf[0] == 10:
            self.done = True
        return n

    def read(self, size=-1):  # CPython's json.load reads it whole
        return self.f.readline()


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
        try:
            manifest = json.load(_Line(f))
            entries = manifest["files"]
            version = manifest["version"]
        except (ValueError, KeyError, TypeError):
            raise OtaError("bundle manifest is not valid")
        manifest = None  # only the entries are kept while the files are copied
        buf = reserve_buffer()
        for entry in entries:
            name = entry["name"]
            if "/" in name or name.startswith("."):
                raise OtaError("bundle file name %r not allowed" % (name,))
            # copied in chunks: the memory needed does not grow with the file
            h = hashlib.sha256()
            left = entry["size"]
            with fs.open(target + "/" + name, "wb") as out:
                while left > 0:
                    n = f.readinto(buf[:min(CHUNK, left)])
                    if not n:
                        break
                    h.update(buf[:n])
                    out.write(buf[:n])
                    left -= n
            digest = _hex(h.digest())
            if left or digest != entry["sha256"]:
                raise OtaError("bundle file %s is damaged (sha256 %s)" % (name, digest))
    # the manifest is written last: a slot without one is incomplete
    # (streamed: json.dumps would need one block of its whole length, over 2 KB for the app)
    with fs.open(target + "/manifest.json", "w") as out:
        json.dump({"version": version, "files": entries}, out)
    return version


def slot_version(fs, slot):
    path = bootsel.slot_dir(slot) + "/manifest.json"
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.loads(f.read()).get("version")


def discard_incoming(fs):
    """Free the flash a partial download holds (after a failure or a power cut)."""
    try:
        if fs.exists(INCOMING):
            fs.remove(INCOMING)
    except OSError:
        pass


async def _install(device, cmd, report):
    """Download, verify and commit; returns once the next boot runs the update."""
    board, fs = device.board, device.fs
    import contract

    payload, version, url, size, sha256, timeout_s = contract.check_ota_command(cmd)
    import otasig

    try:
        secver = otasig.check_update(device, cmd)  # before anything is downloaded or switched
    except otasig.SignatureError as e:
        raise OtaError("refused: %s" % e)
    del contract, otasig
    # not needed again before the reset: their code leaves the heap to the update
    device.release_modules("contract", "otasig")
    await report("downloading")
    if payload == "app":
        slot = bootsel.other(bootsel.load(fs)["active"])
        sink = FileSink(fs, INCOMING)
        try:
            await download(url, board.open_connection, size, sha256, sink, timeout_s)
        finally:
            sink.close()
        device.release_modules("httpget")
        await report("verifying")
        board.collect_garbage()
        unpack_bundle(fs, INCOMING, slot)
        fs.remove(INCOMING)
        # the commit point: the next boot runs the new slot, pending its self-test
        bootsel.stage(fs, slot, {"id": cmd["id"], "version": version, "payload": "app", "security_version": secver})
        return
    writer = board.firmware_writer(size)
    try:
        await download(url, board.open_connection, size, sha256, writer, timeout_s)
        await report("verifying")
        if writer.readback_sha256() != sha256:
            raise OtaError("the written partition does not read back as downloaded")
    except BaseException:
        writer.abort()
        raise
    target = writer.finish()  # sets the boot partition; the image boots pending verification
    state = bootsel.load(fs)
    state["last"] = {"id": cmd["id"], "version": version, "payload": "firmware", "target": target,
                     "result": "pending", "reported": False, "security_version": secver}
    bootsel.save(fs, state)


async def run(device, cmd):
    """Carry out an ota command, reporting each step on ``ota``. A failure
    is reported as ``failed`` with its reason (running out of memory
    included) and changes nothing; once the update is committed the board
    always resets, even when the report cannot be sent. The caller keeps
    no reference to the contract: _install releases it before the download.
    What follows the install either way is in otaend, imported only then."""
    import contract

    # every report has the contract's shape (ota_report); only its state and detail change
    shape = contract.ota_report(contract.command_id_of(cmd), "downloading", cmd.get("version"))
    del contract

    async def report(state, detail=None):
        await device.publish_json("ota", dict(shape, state=state, detail=detail))

    reserve_buffer(device.ota_buffer)
    device.board.collect_garbage()  # start the update with the garbage gone
    try:
        await _install(device, cmd, report)
    except Exception as e:  # OtaError, HttpError, ContractError, OSError, MemoryError, a lost session ...
        discard_incoming(device.fs)
        if isinstance(e, MemoryError):
            device.board.collect_garbage()  # room to report it
            detail = "out of memory during the update"
        else:
            detail = str(e) or type(e).__name__
        import otaend

        await otaend.failed(device, cmd, shape, detail, report)
        return False
    import otaend

    await otaend.committed(device, report)
    return True

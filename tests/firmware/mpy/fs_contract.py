"""What the app expects of a board's filesystem, as one list of checks that
runs against every board: the simulator's host filesystem (CPython), and the
ESP32 board's boardkit.Fs on MicroPython's littlefs driver (the unix port).

Run as a script under MicroPython it mounts a littlefs on a RAM block
device, runs the checks there, then cuts the power at every block write of
a state-file replacement and prints JSON results.
"""

import json

import bootsel


def _read(fs, name):
    with fs.open(name, "r") as f:
        return f.read()


def _write(fs, name, text):
    with fs.open(name, "w") as f:
        f.write(text)


def rename_replaces_an_existing_file(fs):
    _write(fs, "a.json", "old")
    _write(fs, "a.json.new", "new")
    fs.rename("a.json.new", "a.json")
    assert _read(fs, "a.json") == "new"
    assert not fs.exists("a.json.new")


def rename_to_a_new_name(fs):
    _write(fs, "b.tmp", "x")
    fs.rename("b.tmp", "b.json")
    assert _read(fs, "b.json") == "x" and not fs.exists("b.tmp")


def rename_replaces_inside_a_directory(fs):
    if not fs.exists("d"):
        fs.mkdir("d")
    _write(fs, "d/f", "1")
    _write(fs, "d/f.new", "2")
    fs.rename("d/f.new", "d/f")
    assert sorted(fs.listdir("d")) == ["f"] and _read(fs, "d/f") == "2"


def write_json_replaces_and_leaves_nothing_behind(fs):
    bootsel.write_json(fs, "boot.json", {"active": "a"})
    bootsel.write_json(fs, "boot.json", {"active": "b"})
    assert json.loads(_read(fs, "boot.json")) == {"active": "b"}
    assert "boot.json.new" not in fs.listdir("")


def remove_and_exists(fs):
    _write(fs, "gone", "x")
    fs.remove("gone")
    assert not fs.exists("gone")
    try:
        fs.remove("gone")
    except OSError:
        return
    raise AssertionError("removing a missing file did not raise OSError")


CHECKS = (rename_replaces_an_existing_file, rename_to_a_new_name, rename_replaces_inside_a_directory,
          write_json_replaces_and_leaves_nothing_behind, remove_and_exists)


def run_checks(fs):
    results = {}
    for check in CHECKS:
        try:
            check(fs)
            results[check.__name__] = "ok"
        except Exception as e:
            results[check.__name__] = "%s: %s" % (type(e).__name__, e)
    return results


# --- MicroPython: littlefs on a RAM block device, with power cuts ---------------------

BLOCK = 4096


class RamFlash:
    """A flash chip in RAM; with a budget, the power fails at that block write."""

    def __init__(self, data, budget=None):
        self.data, self.budget = data, budget

    def readblocks(self, n, buf, offset=0):
        start = n * BLOCK + offset
        try:
            buf[:] = self.data[start:start + len(buf)]
        except MemoryError:
            # called by the finaliser of a file a power cut left open, during
            # a collection (heap locked; seen on the 32-bit port): copy
            # without allocating
            i = 0
            while i < len(buf):
                buf[i] = self.data[start + i]
                i += 1

    def writeblocks(self, n, buf, offset=0):
        if self.budget is not None:
            if self.budget <= 0:
                raise OSError(5, "power cut")
            self.budget -= 1
        start = n * BLOCK + offset
        self.data[start:start + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return len(self.data) // BLOCK
        if op == 5:
            return BLOCK
        return 0


def _mounted(data, budget=None, where="/lfs"):
    import vfs

    vfs.mount(vfs.VfsLfs2(RamFlash(data, budget)), where)
    import boardkit

    return boardkit.Fs(where)


def _unmount(where="/lfs"):
    import vfs

    try:
        vfs.umount(where)
    except OSError:
        pass


def power_cut_sweep():
    """Replace boot.json with bootsel.write_json, cutting the power before
    the 1st, 2nd, ... block write until one run completes; after each cut,
    remount and read boot.json. Returns [(cut at write k, completed, what was read)]."""
    import vfs

    data = bytearray(b"\xff" * BLOCK * 32)
    vfs.VfsLfs2.mkfs(RamFlash(data))
    bootsel.write_json(_mounted(data), "boot.json", {"v": "old"})
    _unmount()
    out = []
    k = 0
    while k < 64:
        k += 1
        flash = bytearray(data)
        completed = True
        try:
            bootsel.write_json(_mounted(flash, budget=k - 1), "boot.json", {"v": "new"})
        except OSError:
            completed = False
        _unmount()
        fs = _mounted(flash)
        try:
            found = json.loads(_read(fs, "boot.json"))["v"]
        except (OSError, ValueError) as e:
            found = "missing or corrupt: %r" % (e,)
        _unmount()
        out.append((k, completed, found))
        if completed:
            break
    return out


if __name__ == "__main__":
    import vfs

    data = bytearray(b"\xff" * BLOCK * 64)
    vfs.VfsLfs2.mkfs(RamFlash(data))
    results = run_checks(_mounted(data))
    _unmount()
    print(json.dumps({"checks": results, "sweep": power_cut_sweep()}))

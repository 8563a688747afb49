"""Parts of a MicroPython board layer that are not hardware: the flash
filesystem, a wrap-free uptime and the heap. ``board_esp32`` uses them on a device;
the tests run them under MicroPython's unix port, on MicroPython's own
littlefs driver (VfsLfs2), against the same expectations as the simulator's
host filesystem.

This module sits at the filesystem root next to main.py (it is not part of
an app slot, so an app update can never break it).
"""

import gc
import os


def block_bytes():
    """Bytes per GC block: four machine words (16 on an ESP32, 32 on 64-bit)."""
    import sys

    return 32 if sys.maxsize > 0xFFFFFFFF else 16


def parse_max_free(text, block=None):
    """The largest free block in bytes from ``micropython.mem_info()``'s
    text ("max free sz: N" counts GC blocks), or None when it is not there."""
    at = text.find("max free sz:")
    if at < 0:
        return None
    digits = ""
    for c in text[at + 12:].lstrip():
        if not c.isdigit():
            break
        digits += c
    return int(digits) * (block or block_bytes()) if digits else None


class Heap:
    """The board methods about MicroPython's heap (a base class of boards).
    The largest free blocks are None where the port gives no way to read
    them (the unix port prints mem_info() only to its stdout)."""

    def free_heap(self):
        gc.collect()
        return gc.mem_free()

    def collect_garbage(self):
        gc.collect()

    def heap_largest_free(self):
        """Largest free block of the Python heap in bytes, or None."""
        return None

    def idf_largest_free(self):
        """Largest free block of ESP-IDF's data heap (where Wi-Fi, lwIP and
        TLS allocate) in bytes, or None off an ESP32."""
        return None


class Fs:
    """The board's flash filesystem (littlefs on an ESP32), rooted at *root*."""

    def __init__(self, root="/"):
        self.root = root.rstrip("/")

    def path(self, name):
        return self.root + "/" + name.lstrip("/")

    def open(self, name, mode="r"):
        return open(self.path(name), mode)

    def exists(self, name):
        try:
            os.stat(self.path(name))
            return True
        except OSError:
            return False

    def listdir(self, name=""):
        return os.listdir(self.path(name))

    def remove(self, name):
        os.remove(self.path(name))

    def mkdir(self, name):
        os.mkdir(self.path(name))

    def rename(self, old, new):
        """Replace *new* atomically: littlefs (like POSIX) renames over an
        existing file in one metadata commit, so a power cut leaves either
        the old or the new file, never none."""
        os.rename(self.path(old), self.path(new))


class Uptime:
    """Milliseconds since boot that do not wrap.

    ``time.ticks_ms()`` wraps (at 2**30 ms on an ESP32, about 12.4 days),
    and ``ticks_diff`` is only right for spans under half of that. This
    accumulates the difference between successive calls, so it stays right
    for as long as it is called at least every few days (the app reads it
    at every sample)."""

    def __init__(self, ticks_ms, ticks_diff):
        self._ticks_ms, self._ticks_diff = ticks_ms, ticks_diff
        self._last = ticks_ms()
        self._ms = 0

    def ms(self):
        now = self._ticks_ms()
        self._ms += self._ticks_diff(now, self._last)
        self._last = now
        return self._ms

    def seconds(self):
        return self.ms() // 1000

"""Boot a device on MicroPython's unix port from a flash filesystem image:
mount the littlefs image (EF_FLASH) with MicroPython's VfsLfs2 at /flash,
then hand over to the image's own supervisor, as /main.py does on an ESP32.
A test fixture (see board_unix.py)."""

import os
import sys

import vfs

BLOCK = 4096


class FileBlockDevice:
    """The littlefs partition, kept in a host file (the extended block protocol)."""

    def __init__(self, path):
        self.f = open(path, "r+b")
        self.f.seek(0, 2)
        self.count = self.f.tell() // BLOCK

    def readblocks(self, n, buf, offset=0):
        self.f.seek(n * BLOCK + offset)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, offset=0):
        self.f.seek(n * BLOCK + offset)
        self.f.write(buf)
        self.f.flush()

    def ioctl(self, op, arg):
        if op == 4:
            return self.count
        if op == 5:
            return BLOCK
        return 0


vfs.mount(vfs.VfsLfs2(FileBlockDevice(os.getenv("EF_FLASH"))), "/flash")
sys.path.insert(0, "/flash")  # the root modules: supervisor, bootsel, boardkit

import supervisor  # noqa: E402  (from the flash image)
from board_unix import UnixBoard  # noqa: E402

supervisor.run(UnixBoard, reset_delay_s=int(os.getenv("EF_CRASH_DELAY") or "0"))

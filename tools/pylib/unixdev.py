"""A device on MicroPython's unix port, for tests and benchmarks: the
firmware image's filesystem (built by firmware.image: compiled app in slot a,
root modules, device.json) in a file, booted by tools/unixport/main_unix.py
on the real interpreter. The board layer there is a test fixture; the app,
its MQTT client, OTA, buffer, config and /metrics are the device's own.

A reset (exit code 75) boots the process again, like an ESP32 reboot; kill()
is a power cut (the broker then sends the will)."""

import json
import os
import pathlib
import signal
import subprocess
import threading
import time

from interp import find_micropython

ROOT = pathlib.Path(__file__).resolve().parents[2]
UNIXPORT = ROOT / "tools" / "unixport"
RESET_EXIT_CODE = 75
VFS_SIZE = 0xF0000  # the image's vfs partition


def flash_files(device, version="0.2.0", extra=None, frozen=False):
    """{path: bytes} of a freshly flashed board's filesystem; *frozen*: for
    a MicroPython with the app frozen in (firmware.image.frozen_app_files)."""
    import firmware.image as image

    files = image.frozen_app_files() if frozen else image.app_files(version)[0]
    files["device.json"] = json.dumps(device, sort_keys=True).encode()
    files.update(extra or {})
    return files


def app_bundle(version, replace=None):
    """An app bundle of the real app at *version*; *replace* swaps modules' bytes."""
    import firmware.image as image
    import ota

    files, _ = image.app_files(version)
    slot = {p.split("/", 1)[1]: d for p, d in files.items()
            if p.startswith("app_a/") and p.endswith(".mpy")}
    slot.update(replace or {})
    return ota.pack_bundle(version, slot)


def read_flash(path):
    """{path: bytes} of every file in a littlefs image file (read on the host)."""
    import firmware.image as image

    return image.read_littlefs(pathlib.Path(path).read_bytes())


class UnixDevice:
    def __init__(self, workdir, device, mac, heap=None, metrics_port=None, time_scale=1.0, roms=(), files=None,
                 version="0.2.0", binary=None, frozen=False):
        import firmware.image as image

        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flash = self.dir / "flash.img"
        self.flash.write_bytes(image.littlefs_image(files or flash_files(device, version, frozen=frozen), VFS_SIZE))
        self.env = dict(os.environ, MICROPYPATH=".frozen", EF_FLASH=str(self.flash), EF_MAC=mac.replace(":", ""),
                        EF_METRICS_PORT=str(metrics_port or ""), EF_TIME_SCALE=str(time_scale),
                        EF_ROMS=",".join(roms))
        self.argv = [binary or find_micropython()] + (["-X", f"heapsize={heap}"] if heap else []) + [
            str(UNIXPORT / "main_unix.py")]
        self.lines = []  # (monotonic time, line) of everything the device printed
        self.exits = []  # exit codes, in order
        self.boots = 0
        self.never_back = False  # True: a reset ends the device for good (an image that never boots)
        self.proc = None
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------
    def start(self, cause="power_on"):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(cause,), daemon=True)
        self._thread.start()
        return self

    def _run(self, cause):
        while not self._stop.is_set():
            env = dict(self.env, EF_RESET_CAUSE=cause)
            with self._lock:
                self.proc = subprocess.Popen(self.argv, env=env, cwd=UNIXPORT, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True)
                self.boots += 1
            for line in self.proc.stdout:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
            code = self.proc.wait()
            self.exits.append(code)
            if code != RESET_EXIT_CODE or self.never_back:
                return  # killed, or died: no reboot
            cause = "soft"

    def kill(self):
        """A power cut: the process dies at once; no reboot follows."""
        self._stop.set()
        with self._lock:
            if self.proc and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
        if self._thread:
            self._thread.join(10)

    stop = kill

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # --- looking at it -----------------------------------------------------------
    def output(self):
        return "\n".join(line for _, line in self.lines)

    def files(self):
        """The flash filesystem as the device left it (read after stop())."""
        return read_flash(self.flash)

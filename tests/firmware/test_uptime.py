"""Uptime does not wrap: boardkit.Uptime stays exact over 20 days of ESP32
ticks (ticks_ms wraps every 12.4 days), on CPython and on MicroPython."""

import json
import pathlib
import subprocess

from interp import command

SCRIPT = pathlib.Path(__file__).parent / "mpy" / "uptime_check.py"


def test_uptime_is_exact_for_20_days(interp, compiled_device):
    argv, env = command(interp, SCRIPT, compiled_device)
    out = json.loads(subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=60).stdout)
    assert out["seen"] == [6 * 3600 * (i + 1) for i in range(80)]
    # the formula it replaces: one ticks_diff since boot is wrong after 6.2 days
    assert out["naive_end"] != 20 * 24 * 3600

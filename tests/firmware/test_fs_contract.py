"""The filesystem contract between the app and its boards: the same checks
(tests/firmware/mpy/fs_contract.py) pass on the simulator's HostFS and on
the ESP32 board's boardkit.Fs, run on MicroPython's own littlefs driver
under the unix port. Renaming over a file replaces it atomically on both,
so no board deletes first; on littlefs a power cut at any block write of a
state-file replacement leaves the old or the new file, never none."""

import json
import pathlib
import subprocess

import pytest

import boardkit
import fs_contract
from firmware.sim.board import HostFS
from interp import command

SCRIPT = pathlib.Path(fs_contract.__file__)


@pytest.mark.parametrize("make", [HostFS, boardkit.Fs], ids=["sim HostFS", "boardkit.Fs on POSIX"])
def test_the_checks_pass_on_cpython_boards(make, tmp_path):
    results = fs_contract.run_checks(make(str(tmp_path)))
    assert results == {c.__name__: "ok" for c in fs_contract.CHECKS}


def test_the_checks_pass_on_littlefs_under_micropython_and_survive_power_cuts(mp_port, compiled_device):
    argv, env = command(mp_port, SCRIPT, compiled_device)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    # the report is the last line: before it, the 32-bit port may print what
    # the finaliser of a file left open by a power cut met (a second cut)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["checks"] == {c.__name__: "ok" for c in fs_contract.CHECKS}
    sweep = report["sweep"]
    assert sweep[-1][1] is True and len(sweep) >= 3, sweep  # it completed, after several cut points
    for k, completed, found in sweep:
        assert found in ("old", "new"), f"power cut at block write {k}: boot.json {found}"
        if completed:
            assert found == "new"

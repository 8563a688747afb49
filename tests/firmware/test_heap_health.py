"""Heap health a device reports (status and /metrics): the largest free
block of the Python heap, read from ``micropython.mem_info()``'s text by
``boardkit.parse_max_free`` (the ESP32 board captures that text through
os.dupterm; the unix port can only print it, so its boards report null).

The text here is real: mem_info() of each unix-port build (64- and 32-bit),
on a fresh heap and on one fragmented on purpose into 2,000-byte holes. The
parser runs on the same interpreter that printed it."""

import pathlib
import subprocess

import boardkit
from interp import command

DRIVER = pathlib.Path(__file__).parent / "mpy" / "heap_fragment.py"
PARSE = "import sys, boardkit\nprint(boardkit.parse_max_free(open(sys.argv[1]).read()))\n"


def _parse_on(mp_port, compiled_device, tmp_path, text):
    (tmp_path / "mem.txt").write_text(text)
    script = tmp_path / "parse.py"
    script.write_text(PARSE.replace("sys.argv[1]", repr(str(tmp_path / "mem.txt"))))
    argv, env = command(mp_port, script, compiled_device)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    return int(out.stdout.strip())


def test_largest_free_block_from_real_mem_info(mp_port, compiled_device, tmp_path):
    argv, env = command(mp_port, DRIVER, compiled_device, heap="64k")
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    fresh, fragmented = out.stdout.split("FREE ")[1:]
    free_fresh, free_fragmented = int(fresh.split()[0]), int(fragmented.split()[0])

    largest_fresh = _parse_on(mp_port, compiled_device, tmp_path, fresh)
    largest_fragmented = _parse_on(mp_port, compiled_device, tmp_path, fragmented)
    # a fresh heap is nearly one free run
    assert 0.9 * free_fresh < largest_fresh <= free_fresh
    # fragmented: about half the heap free, but only in 2,000-byte holes
    assert free_fragmented > 20000
    assert 2000 <= largest_fragmented < 2100, (largest_fragmented, fragmented)
    # the same on CPython (the block size of the build that printed it)
    block = 16 if mp_port == "micropython32" else 32
    assert boardkit.parse_max_free(fragmented, block) == largest_fragmented


def test_no_figure_in_the_text_is_none():
    assert boardkit.parse_max_free("GC: total: 64000, used: 752, free: 63248\n", 16) is None
    assert boardkit.parse_max_free(" max blk sz: 11, max free sz: 3853\n", 16) == 3853 * 16

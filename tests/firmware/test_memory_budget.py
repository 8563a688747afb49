"""The device app's memory budget, held by a test: on MicroPython's unix
port with a heap of HEAP_KIB (``-X heapsize``), the unchanged app booted
from the flash image completes a full cycle: telemetry, a cfg applied, a
/metrics scrape and a 64 KiB app-bundle OTA to ``confirmed``.

HEAP_KIB sits above the noisy edge that bench/mpy_heap.py finds (below it,
whether a cycle completes depends on how the heap happened to fragment), so
this test fails on a change that needs more memory, not on fragmentation
luck.
docs/firmware.md says what this means for an ESP32 (4-byte words where the
unix port has 8) and docs/benchmarks.md has the measurements."""

import heapcycle
from roleacl import render_acl
from www import Www

HEAP_KIB = 224


def test_full_cycle_fits_the_heap_budget(broker, micropython, tmp_path):
    b = broker(users=heapcycle.USERS, acl=render_acl(heapcycle.SITE, [heapcycle.DEVICE_ID]))
    (tmp_path / "www").mkdir()
    www = Www(tmp_path / "www")
    try:
        ok, info = heapcycle.run_cycle(b.port, www, tmp_path / "dev", f"{HEAP_KIB}k", binary=micropython)
    finally:
        www.close()
    assert ok, f"with a {HEAP_KIB} KiB heap: {info}"


def test_the_budget_can_be_exceeded(broker, mp_port, micropython, tmp_path):
    """The same cycle with a heap far too small fails: the test above can fail."""
    b = broker(users=heapcycle.USERS, acl=render_acl(heapcycle.SITE, [heapcycle.DEVICE_ID]))
    (tmp_path / "www").mkdir()
    www = Www(tmp_path / "www")
    try:
        ok, info = heapcycle.run_cycle(b.port, www, tmp_path / "dev", {"micropython": "160k", "micropython32": "80k"}[mp_port], timeout=8,
                                       binary=micropython)
    finally:
        www.close()
    assert not ok

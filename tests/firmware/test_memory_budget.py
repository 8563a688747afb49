"""The device app's memory budgets, held by tests: on MicroPython's unix
port with a heap of the budget (``-X heapsize``), the unchanged app booted
from the flash image completes a full cycle: telemetry, a cfg applied, a
/metrics scrape and a 64 KiB app-bundle OTA to ``confirmed``.

- the app as .mpy files from littlefs (what the image holds today): 96 KiB
  on the 32-bit port (an ESP32's 4-byte words), and HEAP_KIB's figure on
  the 64-bit port (8-byte words, CI's own);
- the app frozen into the interpreter (the 32-bit port built from
  firmware.image's freeze manifest, as an ESP32 firmware would be): 72 KiB.
  The update in that cycle is the whole app as .mpy files, so the second
  boot runs the bundle's modules over the frozen ones.

Each budget sits above the noisy edge that bench/mpy_heap.py finds (below
it, whether a cycle completes depends on how the heap happened to
fragment), so these tests fail on a change that needs more memory, not on
fragmentation luck. Each has a companion with a heap clearly too small,
which must fail: the budget test can fail. docs/firmware.md says what the
figures mean for an ESP32; docs/benchmarks.md has the measurements."""

import pytest

import heapcycle
from roleacl import render_acl
from www import Www

HEAP_KIB = {"micropython": 160, "micropython32": 96}  # the app as .mpy from littlefs
TOO_SMALL_KIB = {"micropython": 96, "micropython32": 64}
FROZEN_HEAP_KIB = 72  # 32-bit, the app frozen in
FROZEN_TOO_SMALL_KIB = 40


def cycle(broker, tmp_path, heap_kib, timeout=40.0, **kw):
    b = broker(users=heapcycle.USERS, acl=render_acl(heapcycle.SITE, [heapcycle.DEVICE_ID]))
    (tmp_path / "www").mkdir()
    www = Www(tmp_path / "www")
    try:
        return heapcycle.run_cycle(b.port, www, tmp_path / "dev", f"{heap_kib}k", timeout=timeout, **kw)
    finally:
        www.close()


def test_full_cycle_fits_the_heap_budget(broker, mp_port, micropython, tmp_path):
    ok, info = cycle(broker, tmp_path, HEAP_KIB[mp_port], binary=micropython)
    assert ok, f"{mp_port}, the app as .mpy, with a {HEAP_KIB[mp_port]} KiB heap: {info}"


def test_the_budget_can_be_exceeded(broker, mp_port, micropython, tmp_path):
    """The same cycle with a heap far too small fails: the test above can fail."""
    ok, info = cycle(broker, tmp_path, TOO_SMALL_KIB[mp_port], timeout=8, binary=micropython)
    assert not ok, f"{mp_port} completed the cycle with {TOO_SMALL_KIB[mp_port]} KiB: lower TOO_SMALL_KIB"


def test_frozen_app_fits_its_heap_budget(broker, frozen_micropython32, tmp_path):
    ok, info = cycle(broker, tmp_path, FROZEN_HEAP_KIB, binary=frozen_micropython32, frozen=True)
    assert ok, f"32-bit, the app frozen in, with a {FROZEN_HEAP_KIB} KiB heap: {info}"


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-build", "frozen-filesystem-on-plain-build"])
def test_the_frozen_budget_can_be_exceeded(broker, frozen_micropython32, frozen, tmp_path):
    """The frozen build with a heap far too small fails; and the frozen
    layout (no modules on the filesystem) on the plain 32-bit binary does
    not boot at all: the cycle above runs the frozen modules, nothing else."""
    from interp import find_micropython

    if frozen:
        ok, _ = cycle(broker, tmp_path, FROZEN_TOO_SMALL_KIB, timeout=8, binary=frozen_micropython32, frozen=True)
    else:
        ok, _ = cycle(broker, tmp_path, FROZEN_HEAP_KIB, timeout=8, binary=find_micropython("micropython32"),
                      frozen=True)
    assert not ok

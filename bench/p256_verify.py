"""What firmware/app/p256.py (ECDSA P-256 / SHA-256 verify) costs on the
device's interpreter: MicroPython's unix port, 32-bit (an ESP32's word size,
so its heap figures stand for a board's) and 64-bit, and CPython for time.

    MICROPYTHON=../shared/tools/micropython/micropython \\
    MICROPYTHON32=../shared/tools/micropython32/micropython \\
        .venv/bin/python bench/p256_verify.py --runs 51

For each MicroPython build, with p256 compiled by mpy-cross as the image
packs it:

- time per verify: the median (and min, max) of --runs verifies of one
  signature over an OTA manifest entry (contract.ota_signed_message);
- module heap: gc.mem_free() before and after ``import p256`` (gc.collect()
  before each reading): what the imported module keeps;
- allocated per verify: gc.mem_alloc() growth over one verify with the GC
  disabled (every byte allocated, garbage included);
- peak heap, two ways: (1) the least free heap with which one verify
  succeeds, the rest of the heap filled with bytearrays after the import
  (bisected to 16 bytes); (2) the smallest ``-X heapsize`` (bisected to
  --step bytes) with which the script imports p256 and verifies once,
  against the same script that imports p256 and does not verify (the
  difference is what a verify needs beyond the import's own peak). The
  script is mpy-cross compiled as well, so no heap goes to compiling it.

CPU speed is not modelled: an ESP32 at 240 MHz runs MicroPython bytecode
roughly 20-50x slower than an x86 core. Prints Markdown for docs/benchmarks.md.
"""

import argparse
import hashlib
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import timeit

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools" / "pylib"), str(ROOT / "firmware" / "app"), str(ROOT / "plugins" / "module_utils")]

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, utils  # noqa: E402

import contract  # noqa: E402
import p256  # noqa: E402
from interp import command, compile_device, find_micropython, mpy_cross  # noqa: E402

# The device-side script: argv[1] is the mode, argv[2] a JSON file with key, msg and sig (hex),
# argv[3] the timed runs (mode time) or the free bytes to leave (mode ballast).
SCRIPT = '''
import gc
import json
import sys
from binascii import unhexlify

mode = sys.argv[1]
with open(sys.argv[2]) as f:
    case = json.load(f)
KEY, MSG, SIG = unhexlify(case["key"]), unhexlify(case["msg"]), unhexlify(case["sig"])
case = None
gc.collect()
free0 = gc.mem_free()
import p256
gc.collect()
free1 = gc.mem_free()
if mode == "import":
    print(json.dumps({"module": free0 - free1}))
elif mode == "verify":
    print(json.dumps({"ok": p256.verify(KEY, MSG, SIG)}))
elif mode == "churn":
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    ok = p256.verify(KEY, MSG, SIG)
    b = gc.mem_alloc()
    gc.enable()
    print(json.dumps({"ok": ok, "allocated": b - a}))
elif mode == "ballast":
    # fill the heap until about argv[3] bytes are free, then verify once
    want = int(sys.argv[3])
    ballast = []
    gc.collect()
    while True:
        extra = gc.mem_free() - want
        if extra < 48:
            break
        try:
            ballast.append(bytearray(min(extra - 40, 2048)))
        except MemoryError:
            break
    gc.collect()
    free = gc.mem_free()
    print(json.dumps({"ok": p256.verify(KEY, MSG, SIG), "free": free}))
elif mode == "time":
    from time import ticks_diff, ticks_us
    us = []
    for _ in range(int(sys.argv[3])):
        t = ticks_us()
        ok = p256.verify(KEY, MSG, SIG)
        us.append(ticks_diff(ticks_us(), t))
        assert ok
    print(json.dumps({"us": us}))
else:
    print(json.dumps({"imported": True}))
'''


def signed_case():
    """A fixed key, an OTA manifest entry's signed bytes and their signature."""
    d = int.from_bytes(hashlib.sha256(b"edgefleet p256 bench").digest(), "big") % p256.N
    key = ec.derive_private_key(d, ec.SECP256R1())
    pub = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    msg = contract.ota_signed_message("app", "1.4.2", 65536, "ab" * 32, 7)
    # RFC 6979 nonces: the same signature on every run, so runs compare
    r, s = utils.decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
    return pub, msg, r.to_bytes(32, "big") + s.to_bytes(32, "big")


def run(port, compiled, script, case_file, mode, *extra, heap=None):
    """(ok, parsed JSON output or the error text) of one run of *script*
    (which imports the compiled SCRIPT from the same folder)."""
    argv, env = command(port, script, compiled, heap=heap, extra_paths=[script.parent])
    out = subprocess.run(argv + [mode, str(case_file)] + [str(e) for e in extra], env=env, capture_output=True,
                         text=True, timeout=600)
    if out.returncode:
        return False, (out.stderr or out.stdout).strip().splitlines()[-1:]
    return True, json.loads(out.stdout.strip().splitlines()[-1])


def smallest_heap(port, compiled, script, case_file, mode, step, high=256 * 1024):
    """The smallest -X heapsize (to *step* bytes) at which *mode* succeeds."""
    def fits(heap):
        ok, out = run(port, compiled, script, case_file, mode, heap=heap)
        return ok and out.get("ok", True) is True

    assert fits(high), f"{port} {mode}: fails even with a {high} byte heap"
    low = step
    assert not fits(low), f"{port} {mode}: succeeds with a {low} byte heap"
    while high - low > step:
        mid = (low + high) // 2 // step * step
        if mid in (low, high):
            break
        if fits(mid):
            high = mid
        else:
            low = mid
    return high


def free_needed(port, compiled, script, case_file, step, high=16384):
    """The least free heap (gc.mem_free() after filling the rest) with which
    one verify succeeds, bisected over the fill target to *step* bytes."""
    def fits(want):
        ok, out = run(port, compiled, script, case_file, "ballast", want)
        return (out["free"] if ok and out["ok"] is True else None), out

    free, out = fits(high)
    assert free is not None, f"{port}: a verify fails with {high} bytes free: {out}"
    low = 0
    assert fits(low)[0] is None, f"{port}: a verify succeeds with nothing free"
    while high - low > step:
        mid = (low + high) // 2 // step * step
        if mid in (low, high):
            break
        got, _ = fits(mid)
        if got is not None:
            high, free = mid, got
        else:
            low = mid
    return free


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=51, help="verifies timed per interpreter (median reported)")
    p.add_argument("--step", type=int, default=64, help="heap bisection resolution in bytes")
    args = p.parse_args()
    pub, msg, sig = signed_case()
    assert p256.verify(pub, msg, sig)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        compiled = compile_device(tmp / "mpy")
        # SCRIPT compiled by mpy-cross too, so that compiling it takes no heap in the measured runs
        (tmp / "p256_bench.py").write_text(SCRIPT)
        subprocess.run([mpy_cross(), "-o", str(tmp / "p256_bench.mpy"), str(tmp / "p256_bench.py")], check=True)
        (tmp / "p256_bench.py").unlink()
        script = tmp / "run_bench.py"
        script.write_text("import p256_bench\n")
        case_file = tmp / "case.json"
        case_file.write_text(json.dumps({"key": pub.hex(), "msg": msg.hex(), "sig": sig.hex()}))

        print(f"p256 verify, {len(msg)}-byte message; machine: {platform.machine()}, "
              f"CPython {platform.python_version()}; p256.py {(ROOT / 'firmware/app/p256.py').stat().st_size} "
              f"bytes, p256.mpy {(compiled / 'p256.mpy').stat().st_size} bytes\n")
        print("| interpreter | verify, median (min-max) of %d | module heap | allocated per verify "
              "| free heap a verify needs | smallest heap: import only | import + verify | difference |" % args.runs)
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for port in ("micropython32", "micropython"):
            binary = find_micropython(port)
            ok, timing = run(port, compiled, script, case_file, "time", args.runs)
            assert ok, timing
            us = timing["us"]
            ok, imported = run(port, compiled, script, case_file, "import")
            assert ok, imported
            ok, churn = run(port, compiled, script, case_file, "churn", heap="16M")  # no GC: room for all
            assert ok and churn["ok"], churn
            base = smallest_heap(port, compiled, script, case_file, "none", args.step)
            peak = smallest_heap(port, compiled, script, case_file, "verify", args.step)
            free = free_needed(port, compiled, script, case_file, 16)
            print(f"| MicroPython {port} (`{binary}`) | {statistics.median(us) / 1000:.1f} ms "
                  f"({min(us) / 1000:.1f}-{max(us) / 1000:.1f}) | {imported['module']:,} B | "
                  f"{churn['allocated']:,} B | {free:,} B | {base:,} B | {peak:,} B | {peak - base:,} B |",
                  flush=True)
        times = timeit.repeat(lambda: p256.verify(pub, msg, sig), number=1, repeat=args.runs)
        print(f"| CPython {platform.python_version()} | {statistics.median(times) * 1000:.1f} ms "
              f"({min(times) * 1000:.1f}-{max(times) * 1000:.1f}) | - | - | - | - | - | - |")
        print(f"\n\"Free heap a verify needs\": the least gc.mem_free() (to about 16 bytes), with the rest of "
              "the heap filled after the import, at which one verify succeeds: its peak of live temporaries "
              "plus what fragmentation of the filled heap wastes. Smallest heaps (`-X heapsize`, bisected to "
              f"{args.step} bytes; the script and p256 both mpy-cross compiled, so nothing is compiled in the heap): "
              "the same script importing p256, without and with one verify; their difference is what the verify "
              "needs beyond the import-only run's own peak (loading the .mpy files and the case).")


if __name__ == "__main__":
    main()

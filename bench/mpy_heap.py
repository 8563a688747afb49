"""The smallest MicroPython heap (``-X heapsize``) with which the unchanged
device app, on MicroPython's unix port booted from the flash image, still
completes a full cycle: boot, telemetry, a cfg applied, a /metrics scrape
and a 64 KiB app-bundle OTA to ``confirmed`` (tools/pylib/heapcycle.py).

For each port (64-bit, and 32-bit: an ESP32's word size) and each way of
carrying the app (``mpy``: compiled modules on littlefs, as the image holds
them; ``frozen``: frozen into the interpreter, built here from
firmware.image's freeze manifest with ../shared/tools/micropython-src), it
bisects between a size that fails and one that passes in --step bytes,
then repeats the cycle --repeat times (--repeat32 on the 32-bit port) at
the minimum found and at one step below and two above it, to show how
stable the edge is. --busy keeps one core busy meanwhile (as under CI).

    .venv/bin/python bench/mpy_heap.py --busy --repeat 10 --repeat32 20

Needs Debian's mosquitto and MicroPython's unix ports (see
../shared/tools/micropython*/README.md); the frozen builds need gcc (and
gcc-multilib for 32-bit). Prints Markdown for docs/benchmarks.md.
"""

import argparse
import contextlib
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools" / "pylib"), str(ROOT / "plugins" / "filter")]

import firmware.sim  # noqa: E402,F401  (the device modules on sys.path)
import heapcycle  # noqa: E402
from broker import Broker  # noqa: E402
from interp import build_frozen, find_micropython  # noqa: E402
from roleacl import render_acl  # noqa: E402
from www import Www  # noqa: E402

KIB = 1024
# (port, build): (a heap that fails, one that passes), in KiB
RANGES = {
    ("micropython32", "mpy"): (64, 160),
    ("micropython32", "frozen"): (32, 128),
    ("micropython", "mpy"): (96, 256),
    ("micropython", "frozen"): (48, 192),
}
WORDS = {"micropython": "x86_64, 8-byte words", "micropython32": "i686, 4-byte words"}


@contextlib.contextmanager
def busy_core(on):
    """One core kept busy by a shell loop, as the suite's other stages do under CI."""
    proc = subprocess.Popen(["sh", "-c", "while :; do :; done"]) if on else None
    try:
        yield
    finally:
        if proc:
            proc.kill()
            proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ports", default="micropython32,micropython")
    p.add_argument("--builds", default="mpy,frozen")
    p.add_argument("--step", type=int, default=4 * KIB)
    p.add_argument("--repeat", type=int, default=5, help="cycles per heap in the table (64-bit)")
    p.add_argument("--repeat32", type=int, help="cycles per heap in the table on the 32-bit port (default --repeat)")
    p.add_argument("--busy", action="store_true", help="keep one core busy while measuring")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        broker = Broker(tmp / "broker", users=heapcycle.USERS,
                        acl=render_acl(heapcycle.SITE, [heapcycle.DEVICE_ID])).start()
        (tmp / "www").mkdir()
        www = Www(tmp / "www")
        runs = [0]
        print(f"machine: {platform.machine()}, Python {platform.python_version()}; one core busy: {args.busy}")
        try:
            for port in args.ports.split(","):
                for build in args.builds.split(","):
                    if build == "frozen":
                        t0 = time.monotonic()
                        binary = build_frozen(tmp / f"frozen-{port}", port)
                        print(f"\nbuilt {binary} in {time.monotonic() - t0:.0f} s")
                    else:
                        binary = find_micropython(port)
                    repeat = args.repeat32 if port == "micropython32" and args.repeat32 else args.repeat

                    def cycle(heap):
                        runs[0] += 1
                        ok, info = heapcycle.run_cycle(broker.port, www, tmp / f"dev{runs[0]}", heap, binary=binary,
                                                       frozen=build == "frozen")
                        print(f"  {port} {build} heap {heap // KIB} KiB: {'ok' if ok else 'FAILED'} "
                              f"({info if not ok else '%.1f s' % info})"[:300], flush=True)
                        return ok

                    print(f"\n## {port} ({WORDS[port]}), app {build}: {binary}")
                    low, high = (k * KIB for k in RANGES[port, build])
                    with busy_core(args.busy):
                        assert cycle(high), f"{high} does not complete the cycle"
                        assert not cycle(low), f"{low} completes the cycle: lower the range"
                        while high - low > args.step:
                            mid = (low + high) // 2 // args.step * args.step
                            if mid in (low, high):
                                break
                            if cycle(mid):
                                high = mid
                            else:
                                low = mid
                        table = []
                        for heap in (high - args.step, high, high + args.step, high + 2 * args.step):
                            table.append((heap, sum(cycle(heap) for _ in range(repeat)), repeat))
                    print(f"\nsmallest heap that completed the cycle: {high} bytes ({high // KIB} KiB)\n")
                    print("| heap | cycles completed |\n|---:|---:|")
                    for heap, passed, n in table:
                        print(f"| {heap // KIB} KiB | {passed}/{n} |", flush=True)
                    results.append((port, build, high, table))
        finally:
            broker.stop()
            www.close()
    print("\n## Summary: first heap that completed the cycle in the bisection, and the repeats\n")
    print("| port | app | edge | " + " | ".join(["repeats at -1, 0, +1, +2 steps"]) + " |\n|---|---|---:|---|")
    for port, build, high, table in results:
        reps = ", ".join(f"{h // KIB}k {p}/{n}" for h, p, n in table)
        print(f"| {port} ({WORDS[port]}) | {build} | {high // KIB} KiB | {reps} |")


if __name__ == "__main__":
    main()

"""The smallest MicroPython heap (``-X heapsize``) with which the unchanged
device app, on MicroPython's unix port booted from the flash image, still
completes a full cycle: boot, telemetry, a cfg applied, a /metrics scrape
and a 64 KiB app-bundle OTA to ``confirmed`` (tools/pylib/heapcycle.py).

Bisects between --low (must fail) and --high (must pass) in --step bytes,
then repeats the cycle --repeat times at the minimum found and at each
step above it, to show how stable the edge is.

    .venv/bin/python bench/mpy_heap.py --low 65536 --high 524288 --step 4096 --repeat 5

Needs Debian's mosquitto and MicroPython's unix port (see
../shared/tools/micropython/README.md). Prints Markdown for docs/benchmarks.md.
"""

import argparse
import pathlib
import platform
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools" / "pylib"), str(ROOT / "plugins" / "filter")]

import firmware.sim  # noqa: E402,F401  (the device modules on sys.path)
import heapcycle  # noqa: E402
from broker import Broker  # noqa: E402
from interp import find_micropython  # noqa: E402
from roleacl import render_acl  # noqa: E402
from www import Www  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--low", type=int, default=64 * 1024)
    p.add_argument("--high", type=int, default=512 * 1024)
    p.add_argument("--step", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        broker = Broker(tmp / "broker", users=heapcycle.USERS,
                        acl=render_acl(heapcycle.SITE, [heapcycle.DEVICE_ID])).start()
        (tmp / "www").mkdir()
        www = Www(tmp / "www")
        runs = [0]

        def cycle(heap):
            runs[0] += 1
            ok, info = heapcycle.run_cycle(broker.port, www, tmp / f"dev{runs[0]}", heap)
            print(f"  heap {heap // 1024} KiB: {'ok' if ok else 'FAILED'} ({info if not ok else '%.1f s' % info})"
                  [:300], flush=True)
            return ok

        try:
            print(f"MicroPython: {find_micropython()}; machine: {platform.machine()}, Python {platform.python_version()}")
            assert cycle(args.high), f"--high {args.high} does not complete the cycle"
            assert not cycle(args.low), f"--low {args.low} completes the cycle: lower it"
            low, high = args.low, args.high
            while high - low > args.step:
                mid = (low + high) // 2 // args.step * args.step
                if mid in (low, high):
                    break
                if cycle(mid):
                    high = mid
                else:
                    low = mid
            print(f"\nsmallest heap that completed the cycle: {high} bytes ({high // 1024} KiB)\n")
            print("| heap | cycles completed |")
            print("|---:|---:|")
            for heap in (high - args.step, high, high + args.step, high + 2 * args.step):
                passed = sum(cycle(heap) for _ in range(args.repeat))
                print(f"| {heap // 1024} KiB | {passed}/{args.repeat} |", flush=True)
        finally:
            broker.stop()
            www.close()


if __name__ == "__main__":
    main()

"""Flashing 8 boards: in parallel versus one after another, and the time to
find that an up-to-date board needs nothing.

Each board is a ROM-protocol peer (tests/flash/rompeer.py) that reads at the
pace of a serial line (--line-baud, 10 bits per byte), so the numbers are
those of boards on UARTs, not of a loopback socket; each board's image is
the real firmware/image build (per-device device.json, NVS and littlefs)
around a stand-in for MicroPython's firmware.bin (--micropython to use the
real one: its app size sets most of the write time). The flashing is
plugins/module_utils/esp32flash with the real esptool, as the esp32_flash
module runs it.

    .venv/bin/python bench/flash.py [--boards 8] [--line-baud 460800] [--micropython firmware.bin]
"""

import argparse
import pathlib
import resource
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins" / "module_utils"), str(ROOT / "tests" / "flash")]

import esp32flash  # noqa: E402
import firmware.image as build  # noqa: E402
import identity  # noqa: E402
from rompeer import RomPeer  # noqa: E402


def stand_in_micropython(app_size):
    """Headers where MicroPython's firmware.bin has them; the app is pseudo-random (compresses like code)."""
    import random
    rng = random.Random(7)
    app = bytes([0xE9]) + bytes(rng.getrandbits(8) if i % 3 else i & 0xFF for i in range(app_size - 1))
    return bytes([0xE9]) + b"B" * (0x7000 - 1) + b"\xff" * 0x8000 + app


def run(n, workers, base, line_baud, peers=None):
    macs = ["24:0a:c4:be:00:%02x" % i for i in range(n)]
    devices = [{"id": identity.device_id("env", m), "mac": m} for m in macs]
    plan = esp32flash.image_planner(build.build_regions, build.flat_image, base, devices, "bench",
                                    {"host": "10.0.0.2", "port": 8883, "tls": True},
                                    {d["id"]: "bench-password-%d" % i for i, d in enumerate(devices)},
                                    ca_pem=b"-----BEGIN CERTIFICATE-----\n", version="1.0.0")
    if peers is None:
        peers = [RomPeer(bytes.fromhex(m.replace(":", "")), line_baud=line_baud).start() for m in macs]
    t0 = time.monotonic()
    results = esp32flash.flash_ports([p.url for p in peers], plan, workers=workers, flash_baud=None)
    elapsed = time.monotonic() - t0
    bad = esp32flash.failures(results)
    if bad:
        raise SystemExit("flashing failed: %s" % bad)
    return elapsed, results, peers


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--boards", type=int, default=8)
    p.add_argument("--line-baud", type=int, default=460800)
    p.add_argument("--app-kib", type=int, default=1536, help="stand-in MicroPython app size (KiB)")
    p.add_argument("--micropython", help="MicroPython's ESP32 firmware.bin instead of the stand-in")
    args = p.parse_args()
    base = pathlib.Path(args.micropython).read_bytes() if args.micropython else stand_in_micropython(args.app_kib * 1024)
    build.compiled_app("1.0.0")  # mpy-cross once, outside the timings (a station does it once per run)

    serial_s, _, serial_peers = run(args.boards, 1, base, args.line_baud)
    parallel_s, results, peers = run(args.boards, args.boards, base, args.line_baud)
    again_s, again, _ = run(args.boards, args.boards, base, args.line_baud, peers)
    one_s, one, _ = run(1, 1, base, args.line_baud, peers[:1])
    for p in serial_peers + peers:
        p.stop()
    assert not any(r["changed"] for r in again + one), "a second run rewrote a board"
    per_board = sorted(r["seconds"] for r in results)
    print("| boards | line baud | one after another s | in parallel s | ratio | per board s (median) "
          "| up-to-date check, all s | up-to-date check, one board s | CPU s | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("| %d | %d | %.1f | %.1f | %.1fx | %.1f | %.2f | %.2f | %.0f | %.0f |" % (
        args.boards, args.line_baud, serial_s, parallel_s, serial_s / parallel_s, per_board[len(per_board) // 2],
        again_s, one_s, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024))


if __name__ == "__main__":
    main()

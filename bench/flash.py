"""Flashing 8 boards: in parallel versus one after another, and the time to
find that an up-to-date board needs nothing.

Each board is a ROM-protocol peer (tools/pylib/rompeer.py) that reads at the
pace of a UART (10 bits per byte; the ROM's 115200 baud until esptool
switches to --flash-baud), so the numbers are those of boards on serial
lines, not of a loopback socket; each board's image is
the real firmware/image build (per-device device.json, NVS and littlefs)
around a stand-in for MicroPython's firmware.bin (--micropython to use the
real one: its app size sets most of the write time). The flashing is
plugins/module_utils/esp32flash with the real esptool, as the esp32_flash
module runs it.

    .venv/bin/python bench/flash.py [--boards 8] [--flash-baud 460800] [--micropython firmware.bin]
"""

import argparse
import pathlib
import resource
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins" / "module_utils"), str(ROOT / "tools" / "pylib")]

import esp32flash  # noqa: E402
import firmware.image as build  # noqa: E402
import identity  # noqa: E402
from rompeer import RomPeer  # noqa: E402
from plugrun import stand_in_micropython  # noqa: E402
import testkeys  # noqa: E402


def run(n, workers, base, flash_baud, peers=None):
    macs = ["24:0a:c4:be:00:%02x" % i for i in range(n)]
    devices = [{"id": identity.device_id("env", m), "mac": m} for m in macs]
    plan = esp32flash.image_planner(build.build_regions, build.flat_image, base, devices, "bench",
                                    {"host": "10.0.0.2", "port": 8883, "tls": True},
                                    {d["id"]: "bench-password-%d" % i for i, d in enumerate(devices)},
                                    ca_pem=b"-----BEGIN CERTIFICATE-----\n", version="1.0.0",
                                    signing_key=testkeys.new_key().public)
    if peers is None:
        peers = [RomPeer(bytes.fromhex(m.replace(":", "")), paced=True).start() for m in macs]
    t0 = time.monotonic()
    results = esp32flash.flash_ports([p.url for p in peers], plan, workers=workers, flash_baud=flash_baud)
    elapsed = time.monotonic() - t0
    bad = esp32flash.failures(results)
    if bad:
        raise SystemExit("flashing failed: %s" % bad)
    return elapsed, results, peers


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--boards", type=int, default=8)
    p.add_argument("--flash-baud", type=int, default=460800, help="the esp32_flash module's flash_baud")
    p.add_argument("--app-kib", type=int, default=1536, help="stand-in MicroPython app size (KiB)")
    p.add_argument("--micropython", help="MicroPython's ESP32 firmware.bin instead of the stand-in")
    args = p.parse_args()
    base = pathlib.Path(args.micropython).read_bytes() if args.micropython else stand_in_micropython(args.app_kib * 1024)
    build.compiled_app("1.0.0")  # mpy-cross once, outside the timings (a station does it once per run)

    serial_s, _, serial_peers = run(args.boards, 1, base, args.flash_baud)
    parallel_s, results, peers = run(args.boards, args.boards, base, args.flash_baud)
    again_s, again, _ = run(args.boards, args.boards, base, args.flash_baud, peers)
    one_s, one, _ = run(1, 1, base, args.flash_baud, peers[:1])
    for p in serial_peers + peers:
        p.stop()
    assert not any(r["changed"] for r in again + one), "a second run rewrote a board"
    per_board = sorted(r["seconds"] for r in results)
    print("| boards | flash baud | one after another s | in parallel s | ratio | per board s (median) "
          "| up-to-date check, all s | up-to-date check, one board s | CPU s | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("| %d | %d | %.1f | %.1f | %.1fx | %.1f | %.2f | %.2f | %.0f | %.0f |" % (
        args.boards, args.flash_baud, serial_s, parallel_s, serial_s / parallel_s, per_board[len(per_board) // 2],
        again_s, one_s, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024))


if __name__ == "__main__":
    main()

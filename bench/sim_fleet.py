"""How many simulated devices one process sustains at the default 5 s publish
interval (1 s sampling), and what they cost.

For each fleet size: start a real Mosquitto on 127.0.0.1 with one user per
device, run the fleet (the unchanged firmware app on the host board layer)
in this process, count the telemetry at a subscriber in a separate process,
and measure this process's CPU time, resident memory and event-loop lag over
a steady window after every device has connected.

    .venv/bin/python bench/sim_fleet.py --counts 250,500,1000,2000 --duration 60

Prints a Markdown table (docs/benchmarks.md keeps the results).
"""

import argparse
import asyncio
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools" / "pylib"), str(ROOT / "plugins" / "filter")]

from firmware import common  # noqa: E402
from firmware.sim import fleet  # noqa: E402  (also puts firmware/app on sys.path)

import procstat  # noqa: E402
import testkeys  # noqa: E402
from broker import Broker  # noqa: E402

KEY = testkeys.new_key()  # the devices' OTA signing public key (throw-away)

COUNTER = r"""
import sys, time, paho.mqtt.client as m
from paho.mqtt.enums import CallbackAPIVersion
n = [0]
c = m.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter", protocol=m.MQTTv311)
c.username_pw_set("telegraf", "tg")
c.on_message = lambda *a: n.__setitem__(0, n[0] + 1)
c.connect("127.0.0.1", int(sys.argv[1]))
c.subscribe("site/bench/+/+/state", 0)
c.loop_start()
for line in sys.stdin:
    print(n[0], flush=True)
"""


async def loop_lag(samples, stop):
    while not stop.is_set():
        t0 = time.monotonic()
        await asyncio.sleep(0.1)
        samples.append(time.monotonic() - t0 - 0.1)


async def measure(count, duration, workdir):
    specs = fleet.generated_specs(count)
    users = {d: "pw" for d, _, _ in specs}
    users["telegraf"] = "tg"
    broker = Broker(workdir / ("broker%d" % count), users=users, extra="max_connections -1\n").start()
    counter = subprocess.Popen([sys.executable, "-c", COUNTER, str(broker.port)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        rss0 = procstat.rss_kib()
        devices = []
        for device_id, kind, mac in specs:
            root = fleet.provision(str(workdir / ("sim%d" % count)), device_id, kind, mac, "bench",
                                   {"host": "127.0.0.1", "port": broker.port}, "pw",
                                   initial_config=common.kind_config(kind, mac), signing_key=KEY.public)
            devices.append(fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind))
        stop = asyncio.Event()
        lag = []
        for d in devices:
            d.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(1 for d in devices if d.device and d.device.online()) < count:
            await asyncio.sleep(0.5)
        online = sum(1 for d in devices if d.device and d.device.online())
        await asyncio.sleep(6)  # warm-up: one publish interval
        lag_task = asyncio.create_task(loop_lag(lag, stop))
        counter.stdin.write("\n")
        counter.stdin.flush()
        n0 = int(counter.stdout.readline())
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(duration)
        cpu1, t1 = time.process_time(), time.monotonic()
        counter.stdin.write("\n")
        counter.stdin.flush()
        n1 = int(counter.stdout.readline())
        rss1 = procstat.rss_kib()
        stop.set()
        await lag_task
        await asyncio.gather(*(d.stop() for d in devices))
        wall = t1 - t0
        lag.sort()
        return {
            "devices": count, "online": online,
            "cpu_pct": 100.0 * (cpu1 - cpu0) / wall,
            "cpu_ms_per_device_s": 1000.0 * (cpu1 - cpu0) / wall / count,
            "rss_mib": rss1 / 1024.0, "kib_per_device": (rss1 - rss0) / count,
            "msgs_per_s": (n1 - n0) / wall, "expected_per_s": count / 5.0,
            "lag_p99_ms": 1000.0 * lag[int(len(lag) * 0.99) - 1] if lag else float("nan"),
        }
    finally:
        counter.kill()
        broker.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="250,500,1000")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size in this process
    args = p.parse_args()
    procstat.raise_fd_limit()
    if not args.one:
        print("machine: %s, %d cores, Python %s, %s" % (platform.machine(), os.cpu_count(),
                                                         platform.python_version(), platform.platform()))
        print()
        print("| devices | online | delivered msg/s (expected) | CPU of the process | CPU ms per device-second "
              "| RSS MiB | KiB per device | loop lag p99 ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            r = asyncio.run(measure(args.one, args.duration, pathlib.Path(tmp)))
            print("| %(devices)d | %(online)d | %(msgs_per_s).1f (%(expected_per_s).1f) | %(cpu_pct).1f%% "
                  "| %(cpu_ms_per_device_s).3f | %(rss_mib).0f | %(kib_per_device).0f | %(lag_p99_ms).1f |" % r,
                  flush=True)
        return
    for count in [int(c) for c in args.counts.split(",")]:
        # one process per size, so that memory figures start from a clean heap
        subprocess.run([sys.executable, __file__, "--one", str(count), "--duration", str(args.duration)],
                       check=True)


if __name__ == "__main__":
    main()

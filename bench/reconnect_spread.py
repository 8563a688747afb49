"""How 1,000 simulated devices come back after a broker restart: the spread
of their reconnects and the peak connects per second the broker sees.

Runs N simulated devices (the unchanged firmware app on the host board
layer, each with its own MQTT user) against a real Mosquitto on 127.0.0.1,
waits until all are online, restarts the broker (stop, then start on the
same port with its persistence), and records when each device's new session
is up. Prints one Markdown row per configuration: the firmware's defaults
(reconnect_spread_s 40, backoff base 2 s) and, with --compare, the previous
firmware's behaviour (first retry within a 1 s window) for contrast.

    .venv/bin/python bench/reconnect_spread.py --devices 1000 --compare
"""

import argparse
import asyncio
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools" / "pylib"), str(ROOT / "plugins" / "filter")]

from firmware.sim import fleet  # noqa: E402  (also puts the device modules on sys.path)

from broker import Broker  # noqa: E402


async def measure(count, workdir, settings, label):
    specs = fleet.generated_specs(count)
    broker = Broker(workdir / "broker", users={d: "pw" for d, _, _ in specs},
                    extra="max_connections -1\n").start()
    devices = []
    for device_id, kind, mac in specs:
        root = fleet.provision(str(workdir / "sim"), device_id, kind, mac, "bench",
                               {"host": "127.0.0.1", "port": broker.port}, "pw",
                               initial_config=fleet.kind_config(kind, mac), settings=settings)
        devices.append(fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind))
    try:
        for d in devices:
            d.start()
        deadline = time.monotonic() + 120

        def settled(d):  # connected, subscribed, announced, self-test done
            return d.device and d.device.online() and d.device.confirmed_event.is_set()

        while sum(1 for d in devices if settled(d)) < count:
            assert time.monotonic() < deadline, "not every device came online"
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        before = [d.device.connects for d in devices]
        t0 = time.monotonic()
        broker.stop()
        broker.start()
        restarted = time.monotonic() - t0
        back = [None] * count
        deadline = time.monotonic() + 300
        while None in back and time.monotonic() < deadline:
            now = time.monotonic() - t0
            for i, d in enumerate(devices):
                if back[i] is None and d.device and d.device.connects > before[i] and d.device.online():
                    back[i] = now
            await asyncio.sleep(0.05)
        done = sorted(t for t in back if t is not None)
        per_second = {}
        for t in done:
            per_second[int(t)] = per_second.get(int(t), 0) + 1
        return {
            "label": label, "devices": count, "back": len(done), "restart_s": restarted,
            "first": done[0], "p50": done[len(done) // 2], "p95": done[int(len(done) * 0.95) - 1], "last": done[-1],
            "peak": max(per_second.values()), "mean": len(done) / max(1.0, done[-1] - done[0]),
        }
    finally:
        await asyncio.gather(*(d.stop() for d in devices))
        broker.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--compare", action="store_true", help="also run the previous firmware's reconnect policy")
    args = p.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    configs = [("firmware defaults (spread 40 s, base 2 s, cap 120 s)", {"watchdog_s": 0})]
    if args.compare:
        configs.append(("previous firmware (first retry in 0-1 s, base 1 s, cap 60 s)",
                        {"watchdog_s": 0, "reconnect_spread_s": 1.0, "backoff_base_s": 1.0, "backoff_cap_s": 60.0}))
    print("| reconnect policy | devices back | broker down s | first s | median s | 95% s | last s "
          "| peak connects/s | mean connects/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, settings in configs:
        with tempfile.TemporaryDirectory() as tmp:
            r = asyncio.run(measure(args.devices, pathlib.Path(tmp), settings, label))
        print("| %(label)s | %(back)d/%(devices)d | %(restart_s).2f | %(first).1f | %(p50).1f | %(p95).1f "
              "| %(last).1f | %(peak)d | %(mean).0f |" % r, flush=True)


if __name__ == "__main__":
    main()

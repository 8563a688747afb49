"""A reconnect storm: 1,000 simulated devices come back after a restart of
the broker as the mosquitto role configures it.

Runs N simulated devices (the unchanged firmware app on the host board
layer, each with its own MQTT user and the role's ACL) against the role's
rendered mosquitto.conf on this machine's Debian Mosquitto
(tools/pylib/rolebroker.py), waits until every device is settled, restarts
the broker (a clean stop, then a start on the same port with its
persistence) and records when each device's new session is up, the broker's
RSS every 0.1 s, and the round trip of a control client in another process
publishing QoS 1 ten times a second (tools/pylib/storm.py). Prints one
Markdown row per reconnect policy: the firmware's defaults and, with
--compare, the previous firmware's (first retry within a 1 s window).

    .venv/bin/python bench/reconnect_spread.py --devices 1000 --compare
"""

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools" / "pylib"), str(ROOT / "plugins" / "filter")]

import procstat  # noqa: E402
import storm  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--compare", action="store_true", help="also run the previous firmware's reconnect policy")
    args = p.parse_args()
    procstat.raise_fd_limit()
    configs = [("firmware defaults (spread 40 s, base 2 s, cap 120 s)", {})]
    if args.compare:
        configs.append(("previous firmware (first retry in 0-1 s, base 1 s, cap 60 s)",
                        {"reconnect_spread_s": 1.0, "backoff_base_s": 1.0, "backoff_cap_s": 60.0}))
    print("| reconnect policy | devices back | broker down s | first s | median s | 95% s | last s "
          "| peak connects/s | broker RSS before / peak MiB | control RTT p50 / p99 / max ms (samples) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, settings in configs:
        with tempfile.TemporaryDirectory() as tmp:
            r = storm.measure(args.devices, pathlib.Path(tmp), settings)
        print(f"| {label} | {r['back']}/{r['devices']} | {r['restart_s']:.2f} | {r['first']:.1f} | {r['p50']:.1f} "
              f"| {r['p95']:.1f} | {r['last']:.1f} | {r['peak_cps']} | {r['rss_before_mib']:.1f} / "
              f"{r['rss_peak_mib']:.1f} | {r['rtt_p50_ms']:.1f} / {r['rtt_p99_ms']:.1f} / {r['rtt_max_ms']:.1f} "
              f"({r['probe_samples']}) |", flush=True)


if __name__ == "__main__":
    main()

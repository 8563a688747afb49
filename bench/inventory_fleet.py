"""How long the mqtt_fleet inventory plugin takes to turn a site's retained
announce and status messages into an inventory, end to end.

For each fleet size: start a real Mosquitto on 127.0.0.1 (user
"controller", no ACL), publish every device's retained announce and status
(ids and MACs from the simulator's generated_specs, the payloads the
firmware publishes) with one paho client at QoS 1 and wait for every
PUBACK, then run the real ``ansible-inventory -i <dir>/mqtt_fleet.yml
--list`` *repeat* times and report the best run: its wall time, of which
the plugin's parse (connect, snapshot, inventory), as the plugin itself
prints it at -vv, and the process's CPU time and maximum resident memory.
For comparison, the best wall time of ``ansible-inventory --graph``, which
parses the same but does not write every host's variables as JSON.

    .venv/bin/python bench/inventory_fleet.py --counts 1000,10000 --repeat 3

Prints a Markdown table (docs/benchmarks.md keeps the results).
"""

import argparse
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools" / "pylib"), str(ROOT / "plugins" / "filter")]

from firmware.sim import fleet  # noqa: E402  (also puts firmware/app and the contract on sys.path)

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

import contract  # noqa: E402
from broker import Broker  # noqa: E402

SITE = "bench"
ANSIBLE_INVENTORY = pathlib.Path(sys.executable).parent / "ansible-inventory"
PARSE_LINE = re.compile(r"mqtt_fleet .*: (\d+) hosts from (\d+) messages .*parse ([0-9.]+) s")


def payloads(device_id, kind, mac, i):
    ip = "10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255)
    fw = "1.%d.0" % (i % 3)
    announce = {"id": device_id, "kind": kind, "mac": mac, "chip": "ESP32-D0WD-V3", "fw": fw, "ip": ip,
                "hostname": device_id + ".local", "metrics": "http://%s:80/metrics" % ip,
                "reset_cause": "power_on", "sensors": ["pzem"]}
    status = {"online": i % 10 != 0, "fw": fw, "cfg_version": 1, "uptime_s": 3600 + i, "rssi": -40 - i % 50,
              "free_heap": 90000, "buffered": 0, "buffer_dropped": 0, "time_synced": True}
    if not status["online"]:
        status = {"online": False}  # the will
    return json.dumps(announce).encode(), json.dumps(status).encode()


def publish_fleet(port, specs, timeout=120.0):
    """Every device's retained announce and status from one client, QoS 1,
    returning once the broker acknowledged all of them."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=paho.MQTTv311)
    c.username_pw_set("controller", "ctl")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = []
        for i, (device_id, kind, mac) in enumerate(specs):
            announce, status = payloads(device_id, kind, mac, i)
            infos.append(c.publish(contract.topic(SITE, device_id, "announce"), announce, qos=1, retain=True))
            infos.append(c.publish(contract.topic(SITE, device_id, "status"), status, qos=1, retain=True))
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
            if not info.is_published():
                raise RuntimeError("the broker did not acknowledge %d retained messages within %ss"
                                   % (len(infos), timeout))
    finally:
        c.disconnect()
        c.loop_stop()


def run_inventory(source, workdir, mode="--list"):
    """One ansible-inventory --list (or --graph): (wall s, parse s, hosts, CPU s, max RSS MiB) of that process."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    out, log, err = workdir / "out.json", workdir / "stdout.txt", workdir / "stderr.txt"
    with open(log, "w") as stdout, open(err, "w") as stderr:
        t0 = time.monotonic()
        proc = subprocess.Popen([str(ANSIBLE_INVENTORY), "-i", str(source), mode, "-vv", "--output", str(out)],
                                cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own CPU time and peak RSS
        wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError("ansible-inventory failed (%d): %s" % (proc.returncode, err.read_text()))
    found = PARSE_LINE.search(log.read_text())
    if not found:
        raise RuntimeError("no mqtt_fleet timing line in the output: %s %s" % (log.read_text()[-2000:],
                                                                               err.read_text()))
    hosts = len(json.loads(out.read_text())["_meta"]["hostvars"]) if mode == "--list" else int(found.group(1))
    return wall, float(found.group(3)), hosts, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def measure(count, repeat, workdir):
    specs = fleet.generated_specs(count)
    # no queue limits: the publisher has up to 1000 QoS 1 messages in flight
    broker = Broker(workdir / ("broker%d" % count), users={"controller": "ctl"},
                    extra="max_queued_messages 0\nmax_inflight_messages 0\n").start()
    try:
        t0 = time.monotonic()
        publish_fleet(broker.port, specs)
        publish_s = time.monotonic() - t0
        source = workdir / ("inv%d" % count)
        source.mkdir()
        (source / "mqtt_fleet.yml").write_text(
            "plugin: edgefleet.site.mqtt_fleet\nsite: %s\nbroker_host: 127.0.0.1\nbroker_port: %d\ntls: false\n"
            "password: ctl\ntimeout: 60\n" % (SITE, broker.port))
        runs = [run_inventory(source, workdir) for _ in range(repeat)]
        wall, parse, hosts, cpu, max_rss_mib = min(runs)
        graph_s = min(run_inventory(source, workdir, "--graph")[0] for _ in range(repeat))
        return {"devices": count, "hosts": hosts, "publish_s": publish_s, "wall_s": wall, "parse_s": parse,
                "cpu_s": cpu, "rss_mib": max_rss_mib, "graph_s": graph_s,
                "walls": ", ".join("%.2f" % r[0] for r in runs)}
    finally:
        broker.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="1000,10000")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size in this process
    args = p.parse_args()
    if args.one:  # one size per process: a fresh broker and heap each
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(args.one, args.repeat, pathlib.Path(tmp))
        print("| %(devices)d | %(hosts)d | %(wall_s).2f | %(parse_s).2f | %(cpu_s).2f | %(rss_mib).0f "
              "| %(graph_s).2f | %(walls)s | %(publish_s).1f |" % r, flush=True)
        return
    print("machine: %s, %d cores, Python %s, %s" % (platform.machine(), os.cpu_count(), platform.python_version(),
                                                     platform.platform()))
    print()
    print("| devices | hosts found | ansible-inventory --list wall s | of which parse s | its CPU s | its max RSS MiB "
          "| --graph wall s | --list wall s of each run | publish s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---:|", flush=True)
    for count in [int(c) for c in args.counts.split(",")]:
        subprocess.run([sys.executable, __file__, "--one", str(count), "--repeat", str(args.repeat)], check=True)


if __name__ == "__main__":
    main()

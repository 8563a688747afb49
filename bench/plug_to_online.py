"""Plug to online and plug to queryable: N boards the inventory has never
seen, through playbooks/flash.yml (identify, register, broker role, flash)
against a converged controller, then booted by the simulator from the bytes
read back from their flash, until each is online on the broker and its
telemetry answers in Prometheus. tools/pylib/plugrun.py says what stands in
for what (the boards are ROM-protocol peers; MicroPython's base image is a
stand-in).

Against the site scenario's controller, converged and left up:

    EDGEFLEET_RUN_ID=dev tools/test.sh ... (or molecule converge -s site), then
    .venv/bin/python bench/plug_to_online.py --inventory ~/.cache/edgefleet/molecule/<run>/site/inventory \\
        --secrets ~/.cache/edgefleet/molecule/<run>/site/secrets --site molecule \\
        --mqtt-port <published 1883> --prom-port <published 9090> --boards 1 8

Each run registers new MACs (a prefix per run) in a temporary station
inventory; the controller's broker keeps their users until site.yml next
runs without them.
"""

import argparse
import json
import pathlib
import random
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools" / "pylib")]

import plugrun  # noqa: E402
from mqttc import Client  # noqa: E402


def prom_count(port, expr):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": expr}))
    result = json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def once(args, n, workdir):
    prefix = "24:0a:c4:%02x:%02x" % (random.randrange(256), random.randrange(256))
    macs = ["%s:%02x" % (prefix, i) for i in range(n)]
    peers = plugrun.plug(macs, args.paced)
    try:
        inv = plugrun.station_inventory(workdir / "station", peers, args.kind, args.mqtt_port,
                                        app_size=args.app_kib * 1024, flash_baud=args.flash_baud)
        plugged = time.monotonic()
        rc, out = plugrun.flash_playbook([args.inventory, inv])
        if rc:
            raise SystemExit("flash.yml failed:\n" + out[-4000:])
        flashed = time.monotonic()
        ids = sorted(plugrun.registered(inv, args.kind))
        pw = (pathlib.Path(args.secrets) / "mqtt" / "controller").read_text().strip()
        listener = Client(args.mqtt_port, user="controller", password=pw).connect_ok()
        listener.subscribe("site/%s/%s/+/status" % (args.site, args.kind))
        sim = plugrun.boot(peers, macs, workdir)
        try:
            online = plugrun.wait_online(listener, ids, 300)
            expr = 'count(edgefleet_telemetry_seq{site="%s",device_id=~"%s"})' % (args.site, "|".join(ids))
            deadline = time.monotonic() + 120
            while prom_count(args.prom_port, expr) < n and time.monotonic() < deadline:
                time.sleep(0.25)
            queryable = time.monotonic()
        finally:
            listener.close()
            sim.terminate()
            sim.communicate(timeout=30)
        if len(online) < n:
            raise SystemExit("only %d of %d boards came online" % (len(online), n))
        return flashed - plugged, max(online.values()) - plugged, queryable - plugged
    finally:
        for p in peers:
            p.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inventory", required=True, help="the converged site's inventory (controller group)")
    p.add_argument("--secrets", required=True, help="that site's secrets directory")
    p.add_argument("--site", required=True)
    p.add_argument("--mqtt-port", type=int, required=True, help="the broker's plain port on 127.0.0.1")
    p.add_argument("--prom-port", type=int, required=True, help="Prometheus on 127.0.0.1")
    p.add_argument("--kind", default="env")
    p.add_argument("--boards", type=int, nargs="+", default=[1, 8])
    p.add_argument("--app-kib", type=int, default=1536, help="stand-in MicroPython app size (KiB)")
    p.add_argument("--paced", action="store_true", help="each board reads like a UART (115200 baud, then "
                   "--flash-baud); default: as fast as the socket (the flashing is then not what a real line takes)")
    p.add_argument("--flash-baud", type=int, default=460800, help="the station's flash_baud")
    args = p.parse_args()
    print("| boards | line | plug to flashed s | plug to online s | plug to queryable s |")
    print("|---:|---|---:|---:|---:|")
    for n in args.boards:
        with tempfile.TemporaryDirectory() as tmp:
            flashed, online, queryable = once(args, n, pathlib.Path(tmp))
        line = "UART, %d baud" % args.flash_baud if args.paced else "socket"
        print("| %d | %s | %.1f | %.1f | %.1f |" % (n, line, flashed, online, queryable), flush=True)


if __name__ == "__main__":
    main()

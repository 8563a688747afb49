"""OTA rollout to a simulated fleet: the ota_rollout action plugin
(playbooks/ota.yml) updates 1,000 simulated devices with a 1 MiB app
bundle, canary 1 + 3 waves (["10%", "30%", "100%"]: 1, 100, 300, 599
devices), a 5 s soak per wave.

Setup: a real Mosquitto 2.0 on 127.0.0.1 (tools/pylib/broker.py) with one
user per device, the controller user and the mosquitto role's real ACL
(roleacl.render_acl), ``max_connections -1`` and the role's log types; the
bundle (firmware/app/ota.pack_bundle of one file of random bytes, 1,048,576
bytes in all) served over HTTP on 127.0.0.1 by Debian's nginx run
unprivileged with a temporary config (--http nginx, the default when
/usr/sbin/nginx exists) or by tools/pylib/www.py (--http www); the
simulated devices (the unchanged firmware app with its real download,
sha256 check, A/B slot, reboot and self-test) in child processes of at
most --per-proc devices (bench/fleetbench.py --serve) at time_scale 0.05
(device timers 20x faster: the self-test timeout of 150 device seconds is
7.5 s), with a light flash-time config: no sensors (``pzem_addresses: []``,
``temperature_zones: 0``), ``sample_interval_s: 30``,
``publish_interval_s: 60`` (device seconds), an SNTP server on 127.0.0.1,
settings ``watchdog_s: 0``, ``selftest_timeout_s: 150``,
``reconnect_spread_s: 5``. Timing starts once a watcher has seen every
device's status online:true.

The rollout: the real ``ansible-playbook playbooks/ota.yml -e '{"ota_image":
..., "ota_waves": ["10%", "30%", "100%"], "ota_soak": 5,
"ota_device_timeout": 120, ...}'``. Reported: the wall clock of
ansible-playbook, the rollout task's duration (JSON callback), per wave the
times from the state file the plugin writes (commanded, last device
confirmed and online on the new version, soak over) and the device-side
phases from the ``ota`` reports (commanded -> downloading -> verifying ->
rebooting -> confirmed, seen by a watcher), the split of the task into
waiting on devices / soak / orchestration, the CPU (user+sys) and peak RSS
of the ansible-playbook process tree (os.wait4), the broker's, simulators'
and HTTP server's CPU and the bytes the HTTP server served.

    .venv/bin/python bench/ota_fleet.py --devices 1000 --soak 5

Prints Markdown tables; every device that did not succeed is listed.
"""

import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import fleetbench as fb  # noqa: E402  (sets sys.path for the project)
from fleetbench import BIN, ROOT  # noqa: E402

import ota  # noqa: E402  (firmware/app)
import rollout  # noqa: E402  (plugins/module_utils)
import testkeys  # noqa: E402  (tools/pylib)

BUNDLE_SIZE = 1048576
NEW = "0.9.0-bench"
WAVES = ["10%", "30%", "100%"]


def make_bundle(size=BUNDLE_SIZE):
    """An app bundle of exactly *size* bytes: one file of random bytes."""
    data = os.urandom(size)
    n = size
    for _ in range(5):
        bundle = ota.pack_bundle(NEW, {"app.bin": data[:n]})
        if len(bundle) == size:
            return bundle
        n -= len(bundle) - size
    raise RuntimeError("could not size the bundle to %d bytes" % size)


def device_phases(watch, command_id):
    """{device: {state: first time seen}} from the ota reports."""
    out = {}
    for t, device, _, report in watch.events_of("ota"):
        if isinstance(report, dict) and report.get("id") == command_id:
            out.setdefault(device, {}).setdefault(report.get("state"), t)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--soak", type=float, default=5.0)
    p.add_argument("--device-timeout", type=float, default=120.0)
    p.add_argument("--time-scale", type=float, default=0.05)
    p.add_argument("--per-proc", type=int, default=500, help="simulated devices per child process")
    p.add_argument("--http", choices=("auto", "nginx", "www"), default="auto")
    args = p.parse_args()
    fb.procstat.raise_fd_limit()
    print(fb.machine_facts())
    specs = fb.fleet.generated_specs(args.devices, mac_prefix=(0x24, 0x0A, 0xC6))
    ids = [d for d, _, _ in specs]
    rid = "bench-%d" % int(time.time())
    bundle = make_bundle()
    with tempfile.TemporaryDirectory(prefix="otabench-") as tmp, contextlib.ExitStack() as cleanup:
        tmp = pathlib.Path(tmp)
        (tmp / "www").mkdir()
        http = fb.http_server(args.http, tmp / "www")
        cleanup.callback(http.close)
        (tmp / "www" / "app.bundle").write_bytes(bundle)
        # signed by a throw-away site key in the inventory's secrets directory, where the rollout checks it
        site_key = testkeys.site_key(tmp / "secrets")
        image = site_key.sign(
            {"version": NEW, "payload": "app", "url": http.url + "/app.bundle", "size": len(bundle),
             "sha256": hashlib.sha256(bundle).hexdigest()})
        plan = rollout.plan_waves(ids, rid, 1, WAVES)
        print("HTTP server: %s; bundle %d bytes; waves (rollout.plan_waves): %s; soak %g s; device_timeout "
              "%g s; devices: time_scale %g, light config, <= %d per child process"
              % (http.name, len(bundle), ", ".join(str(len(w)) for w in plan), args.soak, args.device_timeout,
                 args.time_scale, args.per_proc))
        print(flush=True)
        ntp = fb.NtpServer()
        cleanup.callback(ntp.close)
        broker, facts = fb.start_broker(tmp, ids)
        cleanup.callback(broker.stop)
        watch = fb.Watch(broker.port, channels=("status", "ota"))
        cleanup.callback(watch.close)
        t0 = time.monotonic()
        procs = fb.FleetProcs(tmp / "fleet", specs, broker.port, args.time_scale, ntp.address,
                              per_proc=args.per_proc, settings={"reconnect_spread_s": 5},
                              signing_key=site_key.public)
        cleanup.callback(procs.stop)
        procs.wait_started(300)
        watch.wait_online(ids, 300, procs)
        online_s = time.monotonic() - t0
        time.sleep(3)
        inv = fb.write_inventory(tmp / "inv", broker.port, specs)
        extra = {"ota_image": image, "ota_rollout_id": rid, "ota_canary": 1, "ota_waves": WAVES,
                 "ota_soak": args.soak, "ota_device_timeout": args.device_timeout, "ota_abort_percent": 10,
                 "ota_abort_min_executed": 5}
        b0, s0, h0 = fb.broker_cpu(broker), procs.cpu(), http.cpu()
        run = fb.PlayRun([str(BIN / "ansible-playbook"), str(ROOT / "playbooks" / "ota.yml"), "-i", str(inv),
                          "-e", json.dumps(extra)], timeout=600)
        b1, s1, h1 = fb.broker_cpu(broker), procs.cpu(), http.cpu()
        time.sleep(0.5)
        requests, served, bad = http.served()
        result, task_s, task_start = run.task("Roll out")
        state = json.loads(pathlib.Path(result["state_file"]).read_text())
        phases = device_phases(watch, rollout.command_id(rid, image["sha256"]))
        fw_new = sum(1 for d in ids if (watch.status.get(d) or {}).get("fw") == NEW
                     and (watch.status.get(d) or {}).get("online"))

    if run.returncode != 0:
        print(run.tail(), file=sys.stderr)
    t_task = run.t0_wall + task_start
    devices = state["devices"]
    summary = result.get("summary", {})
    rows = []
    waiting = soak = 0.0
    prev_end = None
    gaps = 0.0
    for i, wave in enumerate(state["waves"]):
        recs = [devices[d] for d in wave]
        ok = sum(1 for r in recs if r["state"] == "succeeded")
        cmd_at = min(r["commanded_at"] for r in recs if r.get("commanded_at")) - t_task
        on_version = max(r["soak_from"] for r in recs if r.get("soak_from")) - t_task
        ended = max(r["ended_at"] for r in recs if r.get("ended_at")) - t_task
        waiting += on_version - cmd_at
        soak += ended - on_version
        gaps += cmd_at - (prev_end if prev_end is not None else 0.0)
        prev_end = ended
        dl = [ph["verifying"] - ph["downloading"] for d in wave for ph in [phases.get(d, {})]
              if "verifying" in ph and "downloading" in ph]
        to_dl = [ph["downloading"] - (devices[d]["commanded_at"]) for d in wave for ph in [phases.get(d, {})]
                 if "downloading" in ph]
        boot = [ph["confirmed"] - ph["rebooting"] for d in wave for ph in [phases.get(d, {})]
                if "confirmed" in ph and "rebooting" in ph]
        to_ok = [r["soak_from"] - r["commanded_at"] for r in recs if r.get("soak_from")]
        rows.append([i, len(wave), ok, "%.2f" % cmd_at, "%.2f" % on_version, "%.2f" % ended, "%.2f" % (ended - cmd_at),
                     "%.2f / %.2f" % (fb.pct(to_dl, 50), fb.pct(to_dl, 100)),
                     "%.2f / %.2f" % (fb.pct(dl, 50), fb.pct(dl, 100)),
                     "%.2f / %.2f" % (fb.pct(boot, 50), fb.pct(boot, 100)),
                     "%.2f / %.2f" % (fb.pct(to_ok, 50), fb.pct(to_ok, 100))])
    tail = task_s - prev_end
    orchestration = gaps + tail
    print("### OTA rollout, %d devices, 1 MiB app bundle (playbooks/ota.yml)" % args.devices)
    print()
    print(fb.table(
        ["devices", "succeeded", "online on %s after" % NEW, "ansible-playbook wall s", "to task start s",
         "rollout task s (JSON)", "waiting on devices s", "soak s (4 waves)", "orchestration s",
         "ansible CPU s (user+sys)", "ansible max RSS MiB", "broker CPU s", "simulators CPU s", "HTTP server CPU s",
         "HTTP requests", "HTTP bytes served", "goal <= 90 s"],
        [[args.devices, summary.get("succeeded", 0), fw_new, "%.2f" % run.wall, "%.2f" % task_start,
          "%.2f" % task_s, "%.2f" % waiting, "%.2f" % soak, "%.2f" % orchestration, "%.2f" % run.cpu,
          "%.0f" % run.maxrss_mib, "%.2f" % (b1 - b0), "%.2f" % (s1 - s0),
          "%.2f" % (h1 - h0) if h1 == h1 else "in this process", requests,
          "{:,}".format(served) + (" (%d not 200)" % bad if bad else ""),
          "met" if run.wall <= 90 else "missed"]]))
    print()
    print("Per wave (times in s from the start of the rollout task; device phases p50 / max, from the devices' "
          "ota reports as a watcher received them):")
    print()
    print(fb.table(["wave", "devices", "succeeded", "commanded at", "last on version at", "soak over at",
                    "wave s", "command -> downloading", "downloading -> verifying (1 MiB)",
                    "rebooting -> confirmed", "command -> on version"], rows))
    print()
    print("waiting on devices = sum over waves of (last device confirmed and online on %s - commanded); soak = "
          "sum of (soak over - last on version); orchestration = task - both (before the first command, between "
          "waves, after the last). By CPU: the ansible-playbook tree used %.2f s CPU, so %.2f s of its %.2f s "
          "wall were spent not computing (waiting)." % (NEW, run.cpu, run.wall - run.cpu, run.wall))
    bad_devices = sorted((d, r) for d, r in devices.items() if r["state"] != "succeeded")
    if bad_devices or run.returncode != 0:
        print()
        print("NOT succeeded: %d (ansible-playbook rc %s; %s)" % (len(bad_devices), run.returncode, result.get("msg")))
        for d, r in bad_devices[:100]:
            print("  %s: %s (%s)" % (d, r["state"], r.get("detail")))
    else:
        print()
        print("all %d devices succeeded (%s)" % (args.devices, result.get("msg")))


if __name__ == "__main__":
    main()

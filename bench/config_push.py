"""Config push to a simulated fleet: the device_config action plugin
(playbooks/configure.yml, one MQTT session, every device's cfg/ack
awaited) at several fleet sizes, and, with --compare, the per-host way
(community.general.mqtt once per host, no confirmation) at 1,000 devices.

For each size: a real Mosquitto 2.0 on 127.0.0.1 (tools/pylib/broker.py)
with one user per device, the controller user and the mosquitto role's
real ACL (roleacl.render_acl), ``max_connections -1`` and the role's log
types; the simulated devices (the unchanged firmware app, time_scale 1.0)
in child processes of at most 2,000 devices (bench/fleetbench.py --serve),
with a light flash-time config: no sensors (``pzem_addresses: []``,
``temperature_zones: 0``), ``sample_interval_s: 30``,
``publish_interval_s: 60``, an SNTP server on 127.0.0.1, settings
``watchdog_s: 0``, ``selftest_timeout_s: 150``, ``reconnect_spread_s: 5``.
Timing starts once a watcher has seen every device's status online:true.

The push: the real ``ansible-playbook playbooks/configure.yml`` with an
inventory as tests/integration/fleetplay.write_inventory writes it and
``device_config_fleet: {publish_interval_s: 50}`` in group_vars/fleet, a
change for every device (expected result: applied). Measured: wall clock of
the ansible-playbook process, the task's duration (JSON callback), the
plugin's own time (its final progress line), the phases inside the task as
a watcher subscribed to every cfg and cfg/ack sees them (first cfg out, last
cfg out, the plugin's "published" line, last ack), CPU (user+sys) and peak
RSS of the ansible-playbook process tree (os.wait4), the broker's and the
simulators' CPU. --profile DIR adds one more push per size under cProfile
(the action's worker and the main process) and prints the top functions.

The per-host way (--compare): a play over the same hosts with
``connection: local`` running community.general.mqtt on each (QoS 1,
retained, as the controller user, the default forks of ansible.cfg)
publishing the same kind of cfg message (whole desired state, a newer
version, so every device applies it again); not confirmed by the play, the
watcher counts the applied acks afterwards.

    .venv/bin/python bench/config_push.py --counts 100,1000,3000,10000 --compare

Prints Markdown tables.
"""

import argparse
import contextlib
import json
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import fleetbench as fb  # noqa: E402  (sets sys.path for the project)
from fleetbench import BIN, ROOT  # noqa: E402

import fleetcfg  # noqa: E402  (plugins/module_utils, on sys.path through firmware.sim)

DESIRED = {"publish_interval_s": 50}
PER_HOST_SETTING = {"publish_interval_s": 45}
FINAL_LINE = re.compile(r"^device_config: (\d+) devices: .*\((\d+\.\d+) s\)$")

PER_HOST_PLAY = """\
- name: Config push, one community.general.mqtt publish per host
  hosts: fleet
  gather_facts: false
  connection: local
  vars:
    ansible_python_interpreter: "{python}"
  tasks:
    - name: Publish this device's retained cfg (QoS 1, no confirmation)
      community.general.mqtt:
        server: 127.0.0.1
        port: "{{{{ edgefleet_broker_port }}}}"
        username: controller
        password: "{{{{ mosquitto_passwords.controller }}}}"
        client_id: "ctl-{{{{ inventory_hostname }}}}"
        topic: >-
          site/{{{{ edgefleet_site }}}}/{{{{ inventory_hostname.split('-')[0] }}}}/{{{{ inventory_hostname }}}}/cfg
        payload: "{{{{ bench_cfg | to_json(sort_keys=true, separators=[',', ':']) }}}}"
        qos: "1"
        retain: true
"""


def device_config_run(inv, broker, procs, watch, profile_dir=None):
    b0, s0 = fb.broker_cpu(broker), procs.cpu()
    argv = [str(BIN / "ansible-playbook"), str(ROOT / "playbooks" / "configure.yml"), "-i", str(inv)]
    if profile_dir is not None:
        argv = fb.profiled_playbook_argv(profile_dir, argv)
    run = fb.PlayRun(argv, timeout=600)
    b1, s1 = fb.broker_cpu(broker), procs.cpu()
    result, task_s, task_start = run.task("Push and confirm")
    own = published_at = None
    for t, line in run.lines:
        m = FINAL_LINE.match(line)
        if m:
            own = float(m.group(2))
        if line.startswith("device_config: published") and published_at is None:
            published_at = t - task_start
    # the phases inside the task, as the broker's subscribers see them: each
    # device's cfg going out (the watcher also subscribes to cfg) and its ack
    t_task = run.t0_wall + task_start
    cfg_out = [t - t_task for t, _, _, v in watch.events_of("cfg") if t >= t_task and isinstance(v, dict)]
    acks = [t - t_task for t, _, _, v in watch.events_of("cfg/ack")
            if t >= t_task and isinstance(v, dict) and v.get("result") == "applied"]
    watch.clear()
    return {"run": run, "result": result, "task_s": task_s, "task_start": task_start, "own_s": own,
            "published_at": published_at, "broker_cpu": b1 - b0, "sim_cpu": s1 - s0,
            "first_cfg": min(cfg_out) if cfg_out else None, "last_cfg": max(cfg_out) if cfg_out else None,
            "last_ack": max(acks) if acks else None}


def per_host_run(tmp, inv, broker, procs, watch, count):
    play = pathlib.Path(tmp) / "per_host.yml"
    play.write_text(PER_HOST_PLAY.format(python=sys.executable))
    version = int(time.time()) - fleetcfg.VERSION_EPOCH + 100
    extra = {"bench_cfg": dict(PER_HOST_SETTING, version=version)}
    b0, s0 = fb.broker_cpu(broker), procs.cpu()
    t_start = time.time()
    run = fb.PlayRun([str(BIN / "ansible-playbook"), str(play), "-i", str(inv), "-e", json.dumps(extra)],
                     timeout=900)
    b1, s1 = fb.broker_cpu(broker), procs.cpu()

    def applied():
        seen = {}
        for t, device, _, ack in watch.events_of("cfg/ack"):
            if isinstance(ack, dict) and ack.get("version") == version and ack.get("result") == "applied":
                seen.setdefault(device, t)
        return seen

    deadline = time.monotonic() + 30
    while len(applied()) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = applied()
    stats = run.stats()
    ok = sum(1 for s in stats.values() if not s.get("failures") and not s.get("unreachable"))
    return {"run": run, "applied": len(seen), "ok_hosts": ok,
            "last_ack_s": (max(seen.values()) - t_start) if seen else float("nan"),
            "broker_cpu": b1 - b0, "sim_cpu": s1 - s0}


def measure(count, args, compare):
    out = {"devices": count}
    specs = fb.fleet.generated_specs(count)
    ids = [d for d, _, _ in specs]
    with tempfile.TemporaryDirectory(prefix="cfgbench-") as tmp, contextlib.ExitStack() as cleanup:
        ntp = fb.NtpServer()
        cleanup.callback(ntp.close)
        broker, facts = fb.start_broker(tmp, ids)
        cleanup.callback(broker.stop)
        out.update(facts)
        watch = fb.Watch(broker.port, channels=("status", "cfg/ack", "cfg"))
        cleanup.callback(watch.close)
        t0 = time.monotonic()
        procs = fb.FleetProcs(pathlib.Path(tmp) / "fleet", specs, broker.port, 1.0, ntp.address,
                              per_proc=args.per_proc, settings={"reconnect_spread_s": 5})
        cleanup.callback(procs.stop)
        out["procs"] = len(procs.procs)
        procs.wait_started(300)
        watch.wait_online(ids, 300, procs)
        out["online_s"] = time.monotonic() - t0
        time.sleep(args.settle)
        out["online"] = watch.online(ids)
        inv = fb.write_inventory(pathlib.Path(tmp) / "inv", broker.port, specs,
                                 group_vars={"fleet": {"device_config_fleet": DESIRED}})
        out["dc"] = device_config_run(inv, broker, procs, watch)
        if args.profile:
            # a second push (another change), under cProfile; not timed
            time.sleep(args.settle)
            fb.write_inventory(inv, broker.port, specs,
                               group_vars={"fleet": {"device_config_fleet": {"publish_interval_s": 40}}})
            prof = pathlib.Path(args.profile) / ("dc-%d" % count)
            prof.mkdir(parents=True, exist_ok=True)
            out["dc_prof"] = device_config_run(inv, broker, procs, watch, profile_dir=prof)
            for f in sorted(prof.glob("worker-*.prof")):
                print("== %s (the action's worker), by cumulative time" % f, file=sys.stderr)
                fb.print_profile(f, 40)
                print("== %s by own time" % f, file=sys.stderr)
                fb.print_profile(f, 25, sort="tottime")
            print("== main process, by own time", file=sys.stderr)
            fb.print_profile(prof / "main.prof", 25, sort="tottime")
        if compare:
            time.sleep(args.settle)
            out["ph"] = per_host_run(tmp, inv, broker, procs, watch, count)
    return out


def fmt(x, digits=1):
    return "n/a" if x is None else ("%.*f" % (digits, x))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="100,1000,3000,10000")
    p.add_argument("--compare", action="store_true", help="also the community.general.mqtt way at --compare-at")
    p.add_argument("--compare-at", type=int, default=1000)
    p.add_argument("--per-proc", type=int, default=2000, help="simulated devices per child process")
    p.add_argument("--profile", metavar="DIR", help="after each timed push, one more under cProfile (profiles "
                   "to DIR, top functions to stderr)")
    p.add_argument("--settle", type=float, default=3.0, help="seconds between everything online and the push")
    args = p.parse_args()
    fb.procstat.raise_fd_limit()
    print(fb.machine_facts())
    print("broker: Mosquitto (tools/pylib/broker.py), users for every device + controller, the role's ACL "
          "(render_acl), extra: max_connections -1 + the role's log types; devices: time_scale 1.0, "
          "light config (no sensors, sample 30 s, publish 60 s), <= %d per child process" % args.per_proc)
    print(flush=True)
    counts = [int(c) for c in args.counts.split(",")]
    results = []
    for count in counts:
        print("measuring %d devices ..." % count, file=sys.stderr, flush=True)
        results.append(measure(count, args, args.compare and count == args.compare_at))
        r = results[-1]
        dc = r["dc"]
        print("  %d: rc %s, %s; wall %.2f s" % (count, dc["run"].returncode, dc["result"].get("msg"),
                                                 dc["run"].wall), file=sys.stderr, flush=True)
        if dc["run"].returncode != 0:
            print(dc["run"].tail(), file=sys.stderr)
    if args.compare and args.compare_at not in counts:
        print("measuring %d devices (compare) ..." % args.compare_at, file=sys.stderr, flush=True)
        results.append(measure(args.compare_at, args, True))

    print("### device_config push with confirmation (playbooks/configure.yml)")
    print()
    rows = []
    for r in results:
        if r["devices"] not in counts:
            continue
        dc = r["dc"]
        s = dc["result"].get("summary", {})
        others = ", ".join("%d %s" % (v, k) for k, v in sorted(s.items()) if v and k != "applied")
        goal = {1000: 3.0, 10000: 30.0}.get(r["devices"])
        rows.append([
            r["devices"], "%d/%d%s" % (s.get("applied", 0), r["devices"], " (%s)" % others if others else ""),
            "%.2f" % dc["run"].wall, "%.2f" % dc["task_start"], "%.2f" % dc["task_s"], fmt(dc["own_s"]),
            "%s / %s / %s / %s" % (fmt(dc["first_cfg"], 2), fmt(dc["last_cfg"], 2), fmt(dc["published_at"], 2),
                                   fmt(dc["last_ack"], 2)),
            "%.2f" % dc["run"].cpu, "%.0f" % dc["run"].maxrss_mib, "%.2f" % dc["broker_cpu"], "%.2f" % dc["sim_cpu"],
            ("<= %g s: wall %s, task %s" % (goal, "met" if dc["run"].wall <= goal else "missed",
                                            "met" if dc["task_s"] <= goal else "missed")) if goal else "-"])
    print(fb.table(["devices", "applied", "ansible-playbook wall s", "to task start s", "task s (JSON)",
                    "action's own s", "in the task: first cfg out / last cfg out / flushed / last ack s",
                    "ansible CPU s (user+sys)", "ansible max RSS MiB", "broker CPU s", "simulators CPU s", "goal"],
                   rows, ["---:"] * 11 + ["---"]))
    print()
    print(fb.table(["devices", "fleet processes", "all online after s", "ACL lines", "ACL render s",
                    "broker start s (incl. password hashing)"],
                   [[r["devices"], r["procs"], "%.1f" % r["online_s"], r["acl_lines"], "%.2f" % r["acl_render_s"],
                     "%.2f" % r["broker_start_s"]] for r in results if r["devices"] in counts]))
    cmp_rows = [r for r in results if "ph" in r]
    if cmp_rows:
        r = cmp_rows[0]
        dc, ph = r["dc"], r["ph"]
        print()
        print("### %d devices: one session (device_config) vs one publish per host (community.general.mqtt, "
              "forks 20)" % r["devices"])
        print()
        s = dc["result"].get("summary", {})
        print(fb.table(
            ["way", "devices", "applied", "confirmed by the play", "ansible-playbook wall s", "ansible CPU s",
             "ansible max RSS MiB", "broker CPU s", "wall ratio"],
            [["device_config (configure.yml)", r["devices"], "%d" % s.get("applied", 0), "yes",
              "%.2f" % dc["run"].wall, "%.2f" % dc["run"].cpu, "%.0f" % dc["run"].maxrss_mib,
              "%.2f" % dc["broker_cpu"], "1.0"],
             ["community.general.mqtt per host", r["devices"],
              "%d (acks seen by the watcher; last %.1f s after start)" % (ph["applied"], ph["last_ack_s"]),
              "no (%d hosts ok)" % ph["ok_hosts"], "%.2f" % ph["run"].wall, "%.2f" % ph["run"].cpu,
              "%.0f" % ph["run"].maxrss_mib, "%.2f" % ph["broker_cpu"], "%.1f" % (ph["run"].wall / dc["run"].wall)]],
            ["---", "---:", "---", "---", "---:", "---:", "---:", "---:", "---:"]))
        if ph["run"].returncode != 0:
            print(ph["run"].tail(), file=sys.stderr)


if __name__ == "__main__":
    main()

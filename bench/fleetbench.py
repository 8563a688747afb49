"""Shared pieces of the control-path benchmarks (bench/config_push.py,
bench/ota_fleet.py): a real Mosquitto with one user per device and the
mosquitto role's real ACL, a simulated fleet in several child processes, a
watcher that counts the devices' retained ``status``, an SNTP server, an
HTTP server for OTA bundles (Debian nginx or tools/pylib/www.py), and one
ansible-playbook run with its wall clock, CPU and peak RSS (os.wait4 on the
playbook: user+sys of it and of every worker it reaped; ru_maxrss is the
largest single process of that tree).

The simulated devices get a light flash-time config (no sensors:
``pzem_addresses: []``, ``temperature_zones: 0``; ``sample_interval_s: 30``,
``publish_interval_s: 60``) and an SNTP server on 127.0.0.1 that answers
(``ntp_server``; without one each device polls an unanswered socket every
50 ms for 2 s every 30 device seconds), so the simulator's CPU goes to the
control path being measured, not to telemetry. Device settings as
tests/integration/simsite.make_site: ``watchdog_s: 0``,
``selftest_timeout_s: 150``, plus ``reconnect_spread_s``.

A fleet child is this file run as (the benchmarks start it themselves)::

    .venv/bin/python bench/fleetbench.py --serve --specs specs.json --first 0 --count 2000 \\
        --port 1883 --workdir /tmp/x --time-scale 1.0 --ntp 127.0.0.1:1234

It provisions its slice of the devices (fleet.provision) into its own
directory, starts them (a few hundred a second), prints ``started N`` and
runs them until its stdin closes or it gets SIGTERM, then stops them.
"""

import argparse
import asyncio
import datetime
import json
import math
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "tools" / "pylib"), str(ROOT / "plugins" / "filter")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from firmware import common  # noqa: E402
from firmware.sim import fleet  # noqa: E402  (also puts firmware/app and plugins/module_utils on sys.path)

import procstat  # noqa: E402
import testkeys  # noqa: E402

BIN = pathlib.Path(sys.executable).parent
SITE = "bench"
DEVICE_PW = "pw"
CONTROLLER_PW = "ctl-pw"
LIGHT_CONFIG = {"pzem_addresses": [], "temperature_zones": 0, "publish_interval_s": 60, "sample_interval_s": 30}
DEVICE_SETTINGS = {"watchdog_s": 0, "selftest_timeout_s": 150}
# the mosquitto role's log types (roles/mosquitto/defaults/main.yml), instead
# of the test broker's "log_type all", which logs every packet to a file
ROLE_LOG_TYPES = "log_type none\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
BROKER_EXTRA = "max_connections -1\n"


# --- facts and formatting ----------------------------------------------------------

def machine_facts():
    try:
        mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=10).stdout
        mosq = mosq.splitlines()[0] if mosq else "?"
    except (OSError, subprocess.SubprocessError):
        mosq = "mosquitto: not found"
    try:
        ansible = subprocess.run([str(BIN / "ansible"), "--version"], capture_output=True, text=True,
                                 timeout=60).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        ansible = "ansible: ?"
    try:
        import paho.mqtt
        paho_v = paho.mqtt.__version__
    except ImportError:
        paho_v = "?"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return ("machine: %s, %d CPUs (os.cpu_count), %.0f GiB, %s; Python %s; %s; %s; paho-mqtt %s"
            % (platform.machine(), os.cpu_count(), mem, platform.platform(), platform.python_version(), mosq,
               ansible, paho_v))


def table(headers, rows, align=None):
    align = align or ["---:"] * len(headers)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(math.ceil(p / 100.0 * len(values))) - 1))]


# --- broker ---------------------------------------------------------------------------

def start_broker(workdir, ids, log_types=ROLE_LOG_TYPES, extra=BROKER_EXTRA):
    """A real Mosquitto with users for every device and the controller, and
    the mosquitto role's real ACL for *ids*. Returns (broker, facts)."""
    from broker import Broker
    from roleacl import render_acl

    procstat.raise_fd_limit()
    t0 = time.monotonic()
    acl = render_acl(SITE, ids)
    t_acl = time.monotonic() - t0
    users = {d: DEVICE_PW for d in ids}
    users["controller"] = CONTROLLER_PW
    t0 = time.monotonic()
    b = Broker(pathlib.Path(workdir) / "broker", users=users, acl=acl, extra=extra + (log_types or ""))
    b.start(timeout=60)
    t_start = time.monotonic() - t0
    return b, {"acl_render_s": t_acl, "acl_lines": acl.count("\n"), "broker_start_s": t_start}


def broker_cpu(b):
    u, s = procstat.cpu_seconds(b.proc.pid)
    return u + s


# --- watcher --------------------------------------------------------------------------

class Watch:
    """The controller user's view, subscribed (QoS 0) before the devices
    start, so it sees each live status rather than a retained burst:
    the last ``status`` of every device, and the arrival time of every
    message on the other *channels* (ota, cfg/ack)."""

    def __init__(self, port, channels=("status",)):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        import contract

        self._contract = contract
        self.status = {}
        self.events = []  # (time.time(), device, channel, decoded payload)
        self.lock = threading.Lock()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-watch-%d" % os.getpid(),
                             protocol=paho.MQTTv311)
        self.c.username_pw_set("controller", CONTROLLER_PW)
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", port, keepalive=60)
        self.c.loop_start()
        self.c.subscribe([("site/%s/+/+/%s" % (SITE, ch), 0) for ch in channels])
        if not subscribed.wait(10):
            raise RuntimeError("watcher: no SUBACK within 10 s")

    def _on_message(self, client, userdata, msg):
        parsed = self._contract.parse_topic(msg.topic)
        if parsed is None:
            return
        try:
            value = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            value = None
        with self.lock:
            if parsed[3] == "status":
                self.status[parsed[2]] = value
            else:
                self.events.append((time.time(), parsed[2], parsed[3], value))

    def online(self, ids=None):
        with self.lock:
            items = list(self.status.items())
        ids = set(ids) if ids is not None else None
        return sum(1 for d, v in items if isinstance(v, dict) and v.get("online") is True
                   and (ids is None or d in ids))

    def wait_online(self, ids, timeout, fleet_procs=None, every=10.0):
        """Wait until every device of *ids* is online; returns seconds taken."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        next_note = t0 + every
        while True:
            n = self.online(ids)
            if n >= len(ids):
                return time.monotonic() - t0
            if fleet_procs is not None:
                fleet_procs.check()
            now = time.monotonic()
            if now >= deadline:
                raise RuntimeError("only %d of %d devices online after %.0f s" % (n, len(ids), timeout))
            if now >= next_note:
                next_note += every
                print("  ... %d of %d devices online (%.0f s)" % (n, len(ids), now - t0), file=sys.stderr,
                      flush=True)
            time.sleep(0.2)

    def events_of(self, channel):
        with self.lock:
            return [e for e in self.events if e[2] == channel]

    def clear(self):
        with self.lock:
            self.events = []

    def close(self):
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


class NtpServer:
    """tools/pylib/ntpfake.NtpServer answering with this host's clock."""

    def __init__(self):
        from ntpfake import NtpServer as Fake
        self.server = Fake(start_epoch=time.time()).start()
        self.address = self.server.address

    def close(self):
        self.server.stop()


# --- the simulated fleet in child processes ---------------------------------------------

class FleetProcs:
    """Simulated devices in child processes of at most *per_proc* devices each."""

    def __init__(self, workdir, specs, port, time_scale, ntp, per_proc=2000, settings=None, rate=400.0,
                 signing_key=None):
        """*signing_key*: the OTA signing public key the devices get in
        device.json (default: a throw-away one; a benchmark that rolls out
        passes its site key's)."""
        self.workdir = pathlib.Path(workdir)
        signing_key = signing_key or testkeys.new_key().public
        self.workdir.mkdir(parents=True, exist_ok=True)
        spec_file = self.workdir / "specs.json"
        spec_file.write_text(json.dumps(specs))
        n = max(1, int(math.ceil(len(specs) / float(per_proc))))
        size = int(math.ceil(len(specs) / float(n)))
        self.procs = []
        self.logs = []
        settings = dict(DEVICE_SETTINGS, **(settings or {}))
        for i in range(n):
            first, count = i * size, min(size, len(specs) - i * size)
            if count <= 0:
                break
            log = open(self.workdir / ("child%d.log" % i), "w")
            self.logs.append(log)
            cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--serve", "--specs", str(spec_file),
                   "--first", str(first), "--count", str(count), "--port", str(port),
                   "--workdir", str(self.workdir / ("child%d" % i)), "--time-scale", str(time_scale),
                   "--ntp", ntp, "--settings", json.dumps(settings), "--rate", str(rate),
                   "--signing-key", signing_key]
            self.procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                               text=True, start_new_session=True))

    def wait_started(self, timeout):
        deadline = time.monotonic() + timeout
        for p in self.procs:
            # a child prints exactly one line once it has started its devices
            result = {}
            t = threading.Thread(target=lambda: result.setdefault("line", p.stdout.readline()), daemon=True)
            t.start()
            t.join(max(0.0, deadline - time.monotonic()))
            line = result.get("line", "")
            if not line.startswith("started"):
                raise RuntimeError("fleet child %d did not start (%r); see %s" % (p.pid, line, self.workdir))

    def check(self):
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError("fleet child %d exited with %s; see %s" % (p.pid, p.returncode, self.workdir))

    def cpu(self):
        return sum(sum(procstat.cpu_seconds(p.pid)) for p in self.procs)

    def stop(self, timeout=30.0):
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        for log in self.logs:
            log.close()


def serve(args):
    """The fleet child: run devices first..first+count of the spec file."""
    logging_setup()
    procstat.raise_fd_limit()
    specs = json.loads(pathlib.Path(args.specs).read_text())[args.first:args.first + args.count]
    settings = json.loads(args.settings)
    sims = []
    for device_id, kind, mac in specs:
        cfg = dict(common.kind_config(kind), **LIGHT_CONFIG)
        cfg["ntp_server"] = args.ntp
        root = fleet.provision(args.workdir, device_id, kind, mac, SITE,
                               {"host": "127.0.0.1", "port": args.port, "keepalive": 60}, DEVICE_PW,
                               initial_config=cfg, settings=settings, signing_key=args.signing_key)
        sims.append(fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind, time_scale=args.time_scale))

    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(sys.stdin.fileno(), 4096) else None)
        batch = max(1, int(args.rate / 10))
        for i in range(0, len(sims), batch):
            for s in sims[i:i + batch]:
                s.start()
            await asyncio.sleep(0.1)
        print("started %d" % len(sims), flush=True)
        await stop.wait()
        try:
            await asyncio.wait_for(asyncio.gather(*(s.stop() for s in sims), return_exceptions=True), 20)
        except asyncio.TimeoutError:
            pass

    asyncio.run(main())


def logging_setup():
    import logging
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


# --- OTA bundle server ----------------------------------------------------------------

class NginxServer:
    """Debian's nginx, unprivileged paths in a temp dir; bytes served from
    its access log ($body_bytes_sent)."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.dir = self.root.parent / "nginx"
        for sub in ("", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        from broker import free_port
        self.port = free_port()
        self.access = self.dir / "access.log"
        user = "user root;\n" if os.geteuid() == 0 else ""
        tmp = self.dir / "tmp"
        conf = f"""{user}worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  log_format bench '$status $body_bytes_sent $request_uri';
  access_log {self.access} bench;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  default_type application/octet-stream;
  sendfile on; tcp_nopush on; keepalive_timeout 5;
  server {{ listen 127.0.0.1:{self.port}; root {self.root}; location / {{ }} }}
}}
"""
        (self.dir / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(["/usr/sbin/nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                      "-e", str(self.dir / "error.log"), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        import socket
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited: %s" % self.proc.stderr.read().decode())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not listen within 10 s")
                time.sleep(0.05)
        self.url = "http://127.0.0.1:%d" % self.port
        self.name = "Debian nginx %s (1 worker, sendfile)" % nginx_version()

    def served(self):
        """(requests, bytes served, non-200 responses)."""
        n = b = bad = 0
        if self.access.exists():
            for line in self.access.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    n += 1
                    b += int(parts[1])
                    bad += parts[0] != "200"
        return n, b, bad

    def pids(self):
        out = [self.proc.pid]
        try:
            out += [int(x) for x in pathlib.Path("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid))
                    .read_text().split()]
        except OSError:
            pass
        return out

    def cpu(self):
        return sum(sum(procstat.cpu_seconds(p)) for p in self.pids())

    def close(self):
        procstat.stop(self.proc, 10)


class WwwServer:
    """tools/pylib/www.Www, with a byte count of what it served."""

    def __init__(self, root):
        from www import Www
        self.www = Www(pathlib.Path(root))
        self.url = self.www.url
        self.name = "tools/pylib/www.py (Python ThreadingHTTPServer in the benchmark process)"
        self.lock = threading.Lock()
        self.bytes = 0
        self.requests = 0
        outer = self
        base = self.www.server.RequestHandlerClass

        class Counting(base):
            def copyfile(self, source, outputfile):
                while True:
                    buf = source.read(65536)
                    if not buf:
                        break
                    outputfile.write(buf)
                    with outer.lock:
                        outer.bytes += len(buf)
                with outer.lock:
                    outer.requests += 1

        self.www.server.RequestHandlerClass = Counting

    def served(self):
        with self.lock:
            return self.requests, self.bytes, 0

    def cpu(self):
        return float("nan")  # threads of this process

    def close(self):
        self.www.close()


def nginx_version():
    try:
        out = subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True, timeout=10).stderr
        return out.strip().split("/")[-1]
    except (OSError, subprocess.SubprocessError):
        return "?"


def http_server(kind, root):
    if kind == "auto":
        kind = "nginx" if os.path.exists("/usr/sbin/nginx") else "www"
    if kind == "nginx":
        try:
            return NginxServer(root)
        except (OSError, RuntimeError) as e:
            print("nginx could not run unprivileged here (%s): using tools/pylib/www.py" % e, file=sys.stderr)
    return WwwServer(root)


# --- inventory and ansible-playbook ----------------------------------------------------------

def write_inventory(path, port, specs, group_vars=None, site_extra=None):
    """As tests/integration/fleetplay.write_inventory: each device a host of
    its kind's group under fleet, the site's vars in group_vars/all."""
    import yaml

    path = pathlib.Path(path)
    kinds = {}
    for device_id, kind, mac in specs:
        kinds.setdefault(kind, {})[device_id] = {"device_mac": mac}
    hosts = {"all": {"children": {"fleet": {"children": {k: {"hosts": h} for k, h in kinds.items()}}}}}
    (path / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
    (path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    site = {"edgefleet_site": SITE, "edgefleet_broker_host": "127.0.0.1", "edgefleet_broker_port": port,
            "edgefleet_fleet_tls": False, "edgefleet_secrets_dir": str(path.parent / "secrets"),
            "mosquitto_passwords": {"controller": CONTROLLER_PW}}
    site.update(site_extra or {})
    (path / "group_vars" / "all" / "site.yml").write_text(yaml.safe_dump(site))
    for group, values in (group_vars or {}).items():
        (path / "group_vars" / ("%s.yml" % group)).write_text(yaml.safe_dump(values))
    return path


def play_env(extra=None):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_JSON_INDENT="0", ANSIBLE_NOCOLOR="1", PYTHONUNBUFFERED="1",
               PATH="%s:%s" % (BIN, os.environ.get("PATH", "")))
    env.update(extra or {})
    return env


class PlayRun:
    """One ansible-playbook process: stdout lines with their arrival time
    (seconds after the start), the JSON result, wall clock, and the
    rusage of its whole process tree from os.wait4."""

    def __init__(self, argv, env=None, timeout=600):
        self.argv = argv
        self.lines = []
        self.stderr = []
        self.t0_wall = time.time()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=str(ROOT), env=play_env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

        def read(stream, out, stamp):
            for line in stream:
                out.append((time.monotonic() - t0, line.rstrip("\n")) if stamp else line)

        readers = [threading.Thread(target=read, args=(proc.stdout, self.lines, True), daemon=True),
                   threading.Thread(target=read, args=(proc.stderr, self.stderr, False), daemon=True)]
        for r in readers:
            r.start()
        waited = {}

        def wait():
            waited["r"] = os.wait4(proc.pid, 0)
            waited["t"] = time.monotonic()

        w = threading.Thread(target=wait, daemon=True)
        w.start()
        w.join(timeout)
        if w.is_alive():
            os.killpg(proc.pid, signal.SIGKILL)
            w.join(30)
            self.timed_out = True
        else:
            self.timed_out = False
        _, status, ru = waited["r"]
        proc.returncode = os.waitstatus_to_exitcode(status)
        for r in readers:
            r.join(30)
        self.returncode = proc.returncode
        self.wall = waited["t"] - t0
        self.cpu = ru.ru_utime + ru.ru_stime
        self.cpu_user, self.cpu_sys = ru.ru_utime, ru.ru_stime
        self.maxrss_mib = ru.ru_maxrss / 1024.0
        self.stdout = "\n".join(line for _, line in self.lines)
        self.data = None
        start = self.stdout.find("\n{")
        start = start + 1 if start >= 0 else (0 if self.stdout.startswith("{") else -1)
        if start >= 0:
            try:
                self.data = json.loads(self.stdout[start:])
            except ValueError:
                pass

    def task(self, name_part):
        """(host result, duration s, start s after the process start) of the
        first task whose name contains *name_part*."""
        if self.data is None:
            raise RuntimeError("no JSON result (rc %s):\n%s\n%s" % (self.returncode, self.stdout[-3000:],
                                                                    "".join(self.stderr)[-3000:]))
        for play in self.data["plays"]:
            for task in play["tasks"]:
                if name_part in task["task"]["name"]:
                    d = task["task"]["duration"]
                    start, end = iso(d["start"]), iso(d["end"])
                    return next(iter(task["hosts"].values())), end - start, start - self.t0_wall
        raise RuntimeError("no task named like %r" % name_part)

    def stats(self):
        return (self.data or {}).get("stats", {})

    def tail(self):
        return "rc %s\n%s\n%s" % (self.returncode, self.stdout[-3000:], "".join(self.stderr)[-3000:])


def iso(text):
    """The JSON callback's times: naive UTC isoformat() + "Z"."""
    value = datetime.datetime.fromisoformat(text.rstrip("Z"))
    return value.replace(tzinfo=datetime.timezone.utc).timestamp()


def profiled_playbook_argv(outdir, argv):
    """*argv* (ansible-playbook and its arguments) run under cProfile: the
    main process and each task's worker (TaskExecutor.run, forked) dump
    their profiles into *outdir* (main.prof, worker-<pid>.prof)."""
    return [sys.executable, str(pathlib.Path(__file__).resolve()), "--profile-play", str(outdir), "--"] + list(argv[1:])


def _profile_play(outdir, args):
    import cProfile
    from ansible.executor import task_executor

    original = task_executor.TaskExecutor.run

    def run(self, *a, **kw):
        prof = cProfile.Profile()
        prof.enable()
        try:
            return original(self, *a, **kw)
        finally:
            prof.disable()
            prof.dump_stats(os.path.join(outdir, "worker-%d.prof" % os.getpid()))

    task_executor.TaskExecutor.run = run
    from ansible.cli.playbook import main as playbook_main
    sys.argv = [str(BIN / "ansible-playbook")] + args
    prof = cProfile.Profile()
    prof.enable()
    try:
        playbook_main()
    finally:
        prof.disable()
        prof.dump_stats(os.path.join(outdir, "main.prof"))


def print_profile(path, limit=25, sort="cumulative", out=sys.stderr):
    import io
    import pstats
    buf = io.StringIO()
    pstats.Stats(str(path), stream=buf).sort_stats(sort).print_stats(limit)
    print(buf.getvalue(), file=out)


def main():
    if len(sys.argv) > 3 and sys.argv[1] == "--profile-play" and sys.argv[3] == "--":
        return _profile_play(sys.argv[2], sys.argv[4:])
    p = argparse.ArgumentParser(description="the fleet child of the control-path benchmarks (see the docstring)")
    p.add_argument("--serve", action="store_true", required=True)
    p.add_argument("--specs", required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--ntp", required=True)
    p.add_argument("--settings", default="{}")
    p.add_argument("--rate", type=float, default=400.0, help="devices started per second")
    p.add_argument("--signing-key", required=True, help="the OTA signing public key for device.json")
    serve(p.parse_args())


if __name__ == "__main__":
    main()

"""Broker load: how many QoS 1 telemetry messages per second the site's
Mosquitto carries from many authenticated devices to one Telegraf-like
subscriber with no loss, for the mosquitto role's configuration and, beside
it, for Mosquitto's stock defaults.

What it measures
    For each point (broker x connections x offered rate) a fresh broker is
    started in a new temporary directory: this machine's Debian Mosquitto
    (/usr/sbin/mosquitto) with the role's rendered mosquitto.conf, password
    file (one user and password per device) and ACL (tools/pylib/rolebroker.py),
    or with Mosquitto's defaults (``stock``: same users and ACL, soft fd
    limit 1024 like a systemd unit without LimitNOFILE). Then:

    * a subscriber process, like Telegraf's mqtt_consumer: user ``telegraf``,
      fixed client id, clean_session=False, ``site/<site>/+/+/state`` at QoS 1,
      a PUBACK for every message. It counts per device the seqs received,
      duplicates and the publish-to-subscriber latency (now - ts, same
      clock). A second connection in the same process, user ``exporter_sys``,
      follows ``$SYS/broker/#`` (publish/messages/dropped, ...);
    * a load generator process (``--generators`` of them): one MQTT
      connection per device, each with its own user and password, clean
      session, keepalive 60, connected at most ``--connect-concurrency`` at
      a time. Once all are connected (or have failed), a token bucket over
      all connections, refilled every 10 ms, offers the target rate: QoS 1
      PUBLISH to the device's own ``site/<site>/<kind>/<id>/state``, a
      telemetry payload (docs/architecture.md, section 3.3; about 360 bytes) with ``device_id``, ``ts``
      and ``seq``; at most ``--window`` unacknowledged publishes per
      connection. It records what it really offered and which publishes
      never got a PUBACK.

    After a warm-up, a measured window of ``--duration`` seconds gives the
    achieved offered rate, the delivered rate at the subscriber, the latency
    percentiles, the CPU of broker, generator and subscriber (from /proc,
    percent of one core, user + system), the broker's CPU per message, the
    time the broker was runnable but waited for a CPU (/proc/<pid>/schedstat:
    high while its CPU is below 100 % means the machine, not the broker,
    was the limit), how busy the whole machine was, and the broker's peak
    RSS (sampled every 0.5 s).
    When the generator stops, it waits for its PUBACKs and the subscriber
    drains; then loss is counted over the whole run: every seq the broker
    acknowledged (PUBACK) that never reached the subscriber. Only 0 passes.
    The ``$SYS`` counters are read from the first update (sys_interval 10 s)
    that arrived after the drain and counts every publish the generators
    got a PUBACK for; a point without one shows its value as "(stale)".

How to run
    .venv/bin/python bench/broker_load.py                 # the full sweep (about 18 min)
    .venv/bin/python bench/broker_load.py --quick         # a smoke run (about 1 min)
    .venv/bin/python bench/broker_load.py --selfcheck     # proves the loss counter can fail
    .venv/bin/python bench/broker_load.py --connections 1000 --rates 5000,20000 \\
        --duration 20 --brokers role,stock --json /tmp/broker_load.json

    The sweep steps the rate up for each connection count and stops at the
    second point where the role's broker does not follow (``--beyond``;
    not following: achieved < 98 % of target, delivered < 98 % of
    achieved, any loss, missing PUBACKs or lost connections); the stock
    broker runs the same points, a second table gives role/stock delivered
    msg/s, and a last list the knee of each (highest rate followed, every
    lower one too). ``--role-set mosquitto_<var>=<value>`` changes a role
    variable (e.g. mosquitto_max_queued_messages) to measure a knob.
    ``--generators 2`` splits the devices over two generator processes;
    on a 2-core machine that adds no CPU, it only spreads the same work.

Why loopback does not distort the figures
    Everything talks over TCP on 127.0.0.1. That removes what a real site
    adds between devices and broker: Wi-Fi and Ethernet latency, bandwidth,
    loss and retransmissions. None of those limits how many messages per
    second the broker can process: at these rates the traffic is a few
    MB/s, far below any LAN; the broker's cost is per message (parse,
    ACL check, routing, one PUBACK in, one out, syscalls). Loopback still
    runs the full kernel TCP stack for every connection, and the broker's
    real single-threaded event loop with the real configuration. What it
    does understate is latency (no network round trip) and what it cannot
    show is behaviour under packet loss or slow links (retransmits, many
    half-open sessions). Loopback is not free either: each send runs the
    receiving side's TCP processing in the sender's context, so most of
    the broker's (and the generator's) CPU is kernel time, as it would be
    on a real NIC. Generator and subscriber share the machine with the
    broker: their CPU is reported so the reader can see whether they, not
    the broker, were the limit.

Limitations
    * Each device publishes far faster than a real one (rate / connections,
      e.g. 20 msg/s instead of one per 5 s): the broker's per-message work
      is the same, its per-connection idle cost is not measured here.
    * Every payload has all three groups (electrical, thermal, status);
      real kinds that lack a group send smaller messages.
    * One subscriber; a real site also has the exporter and controller
      (retained status/announce/cfg traffic) which are not loaded here.
    * No TLS (the role's TLS listener is left out): TLS would add CPU per
      byte on the broker.
    * Loss is counted only for publishes the broker acknowledged; publishes
      whose PUBACK never came are counted separately (PUBACK missing).
    * On a 2-core machine broker, generator and subscriber together need
      more CPU per message than the broker alone; the knee found is the
      machine's. The broker's CPU per message gives the rate it could carry
      on a core of its own; that extrapolation is not a measurement.
    * The machine may be shared: load average at start and end of each
      point and of the measured window is in the JSON, "machine busy" (all
      cores) and the broker's run-queue wait are in the table. Repeat a
      point before trusting a single row.
    * The stock broker at 5,000 connections: about 1,010 connect (soft fd
      limit 1024), the rest are closed before CONNACK and counted; the
      offered rate is then spread over the connected ones.
"""

import argparse
import array
import asyncio
import json
import math
import multiprocessing
import os
import pathlib
import platform
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools" / "pylib"), str(ROOT / "plugins" / "filter"), str(ROOT / "bench")]

from firmware.sim import fleet  # noqa: E402

import mqttwire  # noqa: E402
import procstat  # noqa: E402
from broker import MOSQUITTO  # noqa: E402
from rolebroker import RoleBroker  # noqa: E402

SITE = "bench"
SUBSCRIBER_CLIENT_ID = "telegraf-edgefleet"  # fixed, like Telegraf's client_id setting
KEEPALIVE = 60
PING_EVERY = 25.0  # seconds; a connection idle this long sends PINGREQ (keepalive 60)
TICK = 0.010  # pacing tick (s)
BURST = 0.1  # at most this many seconds of target rate are sent at once after a stall
FOLLOW = 0.98  # achieved >= 98 % of target, delivered >= 98 % of achieved
SHAPE_CHECK_EVERY = 1000  # full json.loads of one message in this many

HEAD_RE = re.compile(rb'\{"device_id": "([^"]+)", "ts": ([0-9.]+), "seq": (\d+)')


# ---------------------------------------------------------------- /proc helpers

def run_queue_wait(pid):
    """Seconds task *pid* has spent runnable but waiting for a CPU
    (/proc/<pid>/schedstat; 0.0 when it is gone). High while CPU use is
    below 100 % means the machine, not the task, was the limit."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def system_cpu():
    """(busy, total) jiffies of all cores together, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


def loadavg():
    """The 1, 5 and 15 minute load averages."""
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def machine_info():
    """Cores, CPU model, Mosquitto, Python and kernel versions, commit and date."""
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=10)
    version = next((ln for ln in (out.stdout + out.stderr).splitlines() if "version" in ln), "unknown").strip()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, timeout=10).stdout.strip()
    return {"cores": os.cpu_count(), "cpu": model, "mosquitto": version, "python": platform.python_version(),
            "kernel": platform.release(), "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def percentile(sorted_values, q):
    """Nearest-rank percentile (q in 0..1) of an already sorted sequence."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(math.ceil(q * len(sorted_values))) - 1)]


# ---------------------------------------------------------------- control channel

class Control:
    """The child's end of its multiprocessing Pipe, read from the event loop.
    A closed pipe (the parent died) reads as ("close",)."""

    def __init__(self, conn):
        self.conn = conn
        self.queue = asyncio.Queue()
        asyncio.get_running_loop().add_reader(conn.fileno(), self._readable)

    def _readable(self):
        try:
            while self.conn.poll():
                self.queue.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self.queue.put_nowait(("close",))

    async def get(self, timeout):
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return ("close",)

    def send(self, *msg):
        self.conn.send(msg)


class Worker:
    """The parent's handle on a child process: start, request/reply with
    timeouts, and a stop that always ends the process."""

    def __init__(self, name, target, spec):
        ctx = multiprocessing.get_context("fork")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, spec), name=name, daemon=True)
        self.proc.start()
        child.close()

    @property
    def pid(self):
        return self.proc.pid

    def send(self, *msg):
        self.conn.send(msg)

    def recv(self, kind, timeout):
        """The next message, which must be of *kind*; raises on timeout or
        when the child died or reported an error."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.poll(min(left, 1.0)):
                if not self.proc.is_alive():
                    raise RuntimeError(f"{self.name} exited (code {self.proc.exitcode})")
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no {kind!r} within {timeout:.0f}s")
                continue
            msg = self.conn.recv()
            if msg[0] == "error":
                raise RuntimeError(f"{self.name} failed: {msg[1]}")
            if msg[0] != kind:
                raise RuntimeError(f"{self.name}: expected {kind!r}, got {msg[0]!r}")
            return msg[1] if len(msg) > 1 else None

    def request(self, kind, *args, timeout):
        """Send (kind, *args) and return the reply of the same kind."""
        self.send(kind, *args)
        return self.recv(kind, timeout)

    def stop(self, timeout=10.0):
        try:
            if self.proc.is_alive():
                self.conn.send(("close",))
        except OSError:
            pass
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


def child_entry(main_coro):
    """Run a child's coroutine; report an exception to the parent instead of
    dying silently."""
    def run(conn, spec):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked from main(), which turns SIGTERM into an exit
        procstat.raise_fd_limit()
        try:
            asyncio.run(main_coro(conn, spec))
        except Exception as exc:  # noqa: BLE001  (reported to the parent, which raises)
            try:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
            except OSError:
                pass
            raise
    return run


# ---------------------------------------------------------------- telemetry payload

class Telemetry:
    """One device's telemetry payloads (docs/architecture.md, section 3.3): constant readings chosen once
    per device, ``ts`` (epoch, microseconds) and ``seq`` new in each."""

    def __init__(self, device_id, rng_seed):
        r = (rng_seed * 2654435761) % 1000 / 1000.0
        self.boot = time.time()
        self.head = b'{"device_id": "%s", "ts": ' % device_id.encode()
        rest = {
            "electrical": {"voltage": {p: round(229.5 + r + i, 1) for i, p in enumerate("abc")},
                           "current": {p: round(3.1 + r + i / 10, 3) for i, p in enumerate("abc")},
                           "power_factor": round(0.9 + r / 20, 2)},
            "thermal": {"temperature_zones": [round(181.25 + r, 2), round(179.5 + r, 2), round(24.0 + r, 2)],
                        "setpoint": 180.0},
            "status": {"operational_state": "running", "wifi_rssi": -60 - int(r * 20), "uptime_seconds": 0},
        }
        body = json.dumps(rest)
        assert body.endswith('"uptime_seconds": 0}}')
        self.tail = (", " + body[1:-len('0}}')]).encode()

    def render(self, seq, ts):
        return b'%s%.6f, "seq": %d%s%d}}' % (self.head, ts, seq, self.tail, int(ts - self.boot))


def check_shape(topic, payload, site):
    """None when *payload* is a telemetry message (docs/architecture.md, section
    3.3) on its
    device's own state topic, else what is wrong."""
    try:
        msg = json.loads(payload)
        dev = msg["device_id"]
        if topic != f"site/{site}/{dev.split('-')[0]}/{dev}/state".encode():
            return f"topic {topic!r} is not {dev}'s state topic"
        if not isinstance(msg["ts"], float) or not isinstance(msg["seq"], int):
            return "ts or seq of the wrong type"
        el, th, st = msg["electrical"], msg["thermal"], msg["status"]
        if set(el["voltage"]) != set("abc") or set(el["current"]) != set("abc") or "power_factor" not in el:
            return "electrical group incomplete"
        if not isinstance(th["temperature_zones"], list) or "setpoint" not in th:
            return "thermal group incomplete"
        if not {"operational_state", "wifi_rssi", "uptime_seconds"} <= set(st):
            return "status group incomplete"
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------- load generator (child process)

_DEVICE_RX = bytearray(65536)  # every device connection reads into this: buffer_updated consumes it at once


class DeviceConnection(asyncio.BufferedProtocol):
    """One device's MQTT session: CONNECT as itself, then QoS 1 telemetry to
    its own state topic, with the packet ids of unacknowledged publishes.
    A buffered protocol: reads land in one shared buffer (no 256 KiB bytes
    object per read, which asyncio's plain Protocol allocates)."""

    def __init__(self, gen, device_id, kind, password, index):
        self.gen = gen
        self.device_id = device_id
        self.connect_bytes = mqttwire.connect_packet(device_id, device_id, password, KEEPALIVE, clean_session=True)
        self.encoder = mqttwire.PublishEncoder(f"site/{SITE}/{kind}/{device_id}/state", qos=1)
        self.telemetry = Telemetry(device_id, index)
        self.index = index
        self.reader = mqttwire.PacketReader()
        self.transport = None
        self.connack = asyncio.get_running_loop().create_future()
        self.alive = False
        self.seq = 0  # last seq issued (the first is 1, like the firmware's per-boot counter)
        self.next_pid = 1
        self.inflight = {}  # packet id -> seq
        self.active = False  # sent something since the last keepalive check

    # asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.connect_bytes)

    def get_buffer(self, sizehint):
        return _DEVICE_RX

    def buffer_updated(self, nbytes):
        buf = _DEVICE_RX
        if nbytes == 4 and buf[0] == 0x40 and not self.reader.partial:  # the usual case: one PUBACK
            self._acked((buf[2] << 8) | buf[3])
            return
        try:
            packets = self.reader.feed(bytes(buf[:nbytes]))
        except mqttwire.ProtocolError as exc:
            self.gen.errors.append(f"{self.device_id}: {exc}")
            self.transport.close()
            return
        for first, body in packets:
            kind = first >> 4
            if kind == mqttwire.PUBACK:
                self._acked((body[0] << 8) | body[1])
            elif kind == mqttwire.CONNACK and not self.connack.done():
                self.connack.set_result(mqttwire.parse_connack(body)[1])

    def connection_lost(self, exc):
        if self.alive:
            self.gen.lost_connections += 1
        self.alive = False
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(f"closed before CONNACK ({exc or 'EOF'})"))
            self.connack.exception()  # the waiter, if any, still gets it

    def _acked(self, pid):
        if self.inflight.pop(pid, None) is None:
            self.gen.unexpected_acks += 1
        else:
            self.gen.acked += 1

    # load
    def publish(self):
        """Issue the next seq (or, under --selfcheck sabotage, skip it or send it twice)."""
        self.seq += 1
        seq = self.seq
        sabotage = self.gen.sabotage
        if sabotage:
            if (seq + self.index) % sabotage["skip_every"] == 0:
                self.gen.skipped += 1  # never sent, yet reported as acknowledged: must show as loss
                return
            if (seq + 3 * self.index) % sabotage["dup_every"] == 0:
                self.gen.duplicated += 1
                self._send(seq)
        self._send(seq)

    def _send(self, seq):
        pid = self.next_pid
        self.next_pid = pid % 65535 + 1
        self.inflight[pid] = seq
        self.transport.write(self.encoder.packet(self.telemetry.render(seq, time.time()), pid))
        self.gen.published += 1
        self.active = True

    def ping_if_idle(self):
        if self.alive and not self.active:
            self.transport.write(mqttwire.PINGREQ_PACKET)
        self.active = False


class Generator:
    """All device connections of one generator process and the paced load."""

    def __init__(self, spec):
        self.spec = spec
        self.sabotage = spec.get("sabotage")
        self.conns = []
        self.failures = {}
        self.errors = []
        self.published = self.acked = self.unexpected_acks = self.lost_connections = 0
        self.skipped = self.duplicated = 0

    async def connect_all(self):
        spec = self.spec
        sem = asyncio.Semaphore(spec["connect_concurrency"])
        t0 = time.monotonic()

        async def one(index, device_id, kind, password):
            async with sem:
                conn = await self._connect(index, device_id, kind, password, spec["connect_timeout"])
            if conn is not None:
                self.conns.append(conn)

        await asyncio.gather(*(one(*d) for d in spec["devices"]))
        self.conns.sort(key=lambda c: c.index)
        return {"connected": len(self.conns), "failed": sum(self.failures.values()), "failures": self.failures,
                "connect_s": time.monotonic() - t0}

    async def _connect(self, index, device_id, kind, password, timeout):
        loop = asyncio.get_running_loop()
        transport = conn = None
        try:
            transport, conn = await asyncio.wait_for(
                loop.create_connection(lambda: DeviceConnection(self, device_id, kind, password, index),
                                       "127.0.0.1", self.spec["port"]), timeout)
            rc = await asyncio.wait_for(conn.connack, timeout)
            if rc != 0:
                raise ConnectionError(f"CONNACK {rc} ({mqttwire.CONNACK_REASONS.get(rc, '?')})")
            conn.alive = True
            return conn
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            reason = "timeout" if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
            self.failures[reason] = self.failures.get(reason, 0) + 1
            if transport is not None:
                transport.abort()
            return None
        finally:
            if conn is not None and conn.connack.done() and not conn.connack.cancelled():
                conn.connack.exception()  # retrieved: no "exception never retrieved" noise

    async def keepalive(self):
        while True:
            await asyncio.sleep(PING_EVERY)
            for conn in self.conns:
                conn.ping_if_idle()

    async def run_load(self, t_go, t_w0, t_w1):
        """Offer spec["rate"] msg/s from t_go to t_w1 over all live
        connections; returns the pacing record."""
        rate, window = self.spec["rate"], self.spec["window"]
        conns = [c for c in self.conns if c.alive]
        ticks = array.array("d")  # (monotonic time, published so far) pairs
        stalls = 0  # ticks that ended with credit left because every window was full
        intervals = array.array("d")
        await asyncio.sleep(max(0.0, t_go - time.monotonic()))
        credit, last, cursor, cap = 0.0, t_go, 0, max(1.0, rate * BURST)
        while conns:
            now = time.monotonic()
            intervals.append(now - last)
            credit = min(cap, credit + rate * (now - last))
            last = now
            if now >= t_w1:
                break
            budget = int(credit)
            if budget:
                sent, cursor = self._send_round_robin(conns, budget, cursor, window)
                credit -= sent
                stalls += sent < budget
            ticks.extend((now, self.published))
            await asyncio.sleep(max(0.0, TICK - (time.monotonic() - now)))
        ticks.extend((time.monotonic(), self.published))
        return ticks, stalls, sorted(intervals)

    @staticmethod
    def _send_round_robin(conns, budget, cursor, window):
        """Send up to *budget* publishes, one per connection per pass, passing
        over connections whose window is full; returns (sent, next cursor)."""
        n, sent = len(conns), 0
        while sent < budget:
            progress = False
            for _ in range(n):
                conn = conns[cursor]
                cursor = cursor + 1 if cursor + 1 < n else 0
                if conn.alive and len(conn.inflight) < window:
                    conn.publish()
                    sent += 1
                    progress = True
                    if sent >= budget:
                        break
            if not progress:
                break
        return sent, cursor

    async def wait_acks(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(c.inflight and c.alive for c in self.conns):
            await asyncio.sleep(0.05)

    def report(self, ticks, stalls, intervals, t_w0, t_w1):
        def published_at(t):
            value = 0
            for i in range(0, len(ticks), 2):
                if ticks[i] > t:
                    break
                value = ticks[i + 1]
            return value
        devices = {c.device_id: (c.seq, sorted(c.inflight.values())) for c in self.conns}
        return {
            "published_window": published_at(t_w1) - published_at(t_w0),
            "published": self.published, "acked": self.acked, "unexpected_acks": self.unexpected_acks,
            "puback_missing": sum(len(c.inflight) for c in self.conns), "lost_connections": self.lost_connections,
            "stall_ticks": stalls, "ticks": len(intervals),
            "tick_p99_ms": 1000 * (percentile(intervals, 0.99) or 0.0),
            "tick_max_ms": 1000 * (intervals[-1] if intervals else 0.0),
            "skipped": self.skipped, "duplicated": self.duplicated, "errors": self.errors[:5],
            "devices": devices,
        }

    async def close(self):
        for conn in self.conns:
            if conn.alive:
                conn.transport.write(mqttwire.DISCONNECT_PACKET)
                conn.transport.close()
        await asyncio.sleep(0.2)


async def generator_main(conn, spec):
    control = Control(conn)
    gen = Generator(spec)
    control.send("connected", await gen.connect_all())
    pinger = asyncio.create_task(gen.keepalive())
    try:
        msg = await control.get(spec["lifetime"])
        if msg[0] != "go":
            return
        _, t_go, t_w0, t_w1 = msg
        ticks, stalls, intervals = await gen.run_load(t_go, t_w0, t_w1)
        await gen.wait_acks(spec["puback_wait"])
        control.send("done", gen.report(ticks, stalls, intervals, t_w0, t_w1))
        await control.get(spec["lifetime"])  # "close"
    finally:
        pinger.cancel()
        await gen.close()
        control.send("closed")


# ---------------------------------------------------------------- subscriber (child process)

class MqttSession(asyncio.BufferedProtocol):
    """A subscriber session: CONNECT, SUBSCRIBE, then hand each PUBLISH to
    on_publish(data, topic_start, topic_end, payload_start, payload_end)
    (positions in *data*, no copies) and PUBACK each QoS 1 one, with one
    write per read."""

    def __init__(self, client_id, user, password, clean_session, topics):
        self.connect_bytes = mqttwire.connect_packet(client_id, user, password, KEEPALIVE, clean_session)
        self.subscribe_bytes = mqttwire.subscribe_packet(1, topics)
        self.rx = bytearray(1 << 18)
        self.partial = b""
        self.ready = asyncio.get_running_loop().create_future()
        self.transport = None
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.connect_bytes)

    def connection_lost(self, exc):
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before SUBACK ({exc or 'EOF'})"))

    def get_buffer(self, sizehint):
        return self.rx

    def buffer_updated(self, nbytes):
        data = self.partial + self.rx[:nbytes] if self.partial else self.rx[:nbytes]
        acks = []
        pos, size = 0, len(data)
        while size - pos >= 2:
            first, i, length, shift = data[pos], pos + 1, 0, 0
            while i < size:
                byte = data[i]
                length |= (byte & 0x7F) << shift
                i += 1
                if byte < 0x80:
                    break
                shift += 7
            else:
                break  # length bytes incomplete
            end = i + length
            if end > size:
                break
            if first >> 4 == mqttwire.PUBLISH:
                topic_end = i + 2 + ((data[i] << 8) | data[i + 1])
                if first & 0x06:
                    acks += (b"\x40\x02", data[topic_end:topic_end + 2])
                    self.on_publish(data, i + 2, topic_end, topic_end + 2, end)
                else:
                    self.on_publish(data, i + 2, topic_end, topic_end, end)
            else:
                self.on_control(first, bytes(data[i:end]))
            pos = end
        self.partial = data[pos:] if pos < size else b""
        if acks:
            self.transport.write(b"".join(acks))

    def on_control(self, first, body):
        kind = first >> 4
        if kind == mqttwire.CONNACK:
            rc = mqttwire.parse_connack(body)[1]
            if rc:
                self.ready.set_exception(ConnectionError(f"CONNACK {rc}"))
            else:
                self.transport.write(self.subscribe_bytes)
        elif kind == mqttwire.SUBACK and not self.ready.done():
            granted = mqttwire.parse_suback(body)[1]
            if 0x80 in granted:
                self.ready.set_exception(ConnectionError(f"SUBACK refused: {granted}"))
            else:
                self.ready.set_result(granted)

    def on_publish(self, data, topic_start, topic_end, payload_start, payload_end):
        """Handle one PUBLISH: every session kind (TelemetrySink, SysMonitor) overrides this."""
        raise NotImplementedError(f"{type(self).__name__} must handle PUBLISH")

    def ping(self):
        if not self.closed:
            self.transport.write(mqttwire.PINGREQ_PACKET)


class TelemetrySink(MqttSession):
    """The Telegraf-like subscriber: per device a bytearray of receipt counts
    indexed by seq; arrival times and latencies of every message."""

    def __init__(self, spec):
        super().__init__(SUBSCRIBER_CLIENT_ID, "telegraf", spec["telegraf_password"], False,
                         [(f"site/{SITE}/+/+/state", 1)])
        self.site = SITE
        self.seen = {}  # device id (bytes) -> bytearray, counts[seq] = receipts (capped at 255)
        self.arrivals = array.array("d")  # monotonic arrival time of each message
        self.latency = array.array("d")  # seconds from ts to arrival
        self.received = self.unique = self.unparsed = 0
        self.shape_ok, self.shape_errors = 0, []
        self.last_arrival = 0.0

    def on_publish(self, data, topic_start, topic_end, payload_start, payload_end):
        now = time.time()
        m = HEAD_RE.match(data, payload_start, payload_end)
        if m is None:
            self.unparsed += 1
            return
        dev, ts, seq = bytes(m.group(1)), float(m.group(2)), int(m.group(3))
        counts = self.seen.get(dev)
        if counts is None:
            counts = self.seen[dev] = bytearray(64)
        if seq >= len(counts):
            counts.extend(bytes(max(seq + 1 - len(counts), len(counts))))
        c = counts[seq]
        if c < 255:
            counts[seq] = c + 1
        if not c:
            self.unique += 1
        self.received += 1
        self.last_arrival = time.monotonic()
        self.arrivals.append(self.last_arrival)
        self.latency.append(now - ts)
        if self.received % SHAPE_CHECK_EVERY == 1:
            problem = check_shape(bytes(data[topic_start:topic_end]), bytes(data[payload_start:payload_end]),
                                  self.site)
            if problem is None:
                self.shape_ok += 1
            elif len(self.shape_errors) < 5:
                self.shape_errors.append(problem)

    def report(self, t_w0, t_w1):
        window = sorted(lat for t, lat in zip(self.arrivals, self.latency) if t_w0 <= t < t_w1)
        return {
            "delivered_window": len(window), "received": self.received, "unique": self.unique,
            "unparsed": self.unparsed, "shape_checked": self.shape_ok + len(self.shape_errors),
            "shape_errors": self.shape_errors,
            "latency_p50_ms": 1000 * percentile(window, 0.50) if window else None,
            "latency_p99_ms": 1000 * percentile(window, 0.99) if window else None,
            "latency_max_ms": 1000 * window[-1] if window else None,
            "seen": {dev.decode(): bytes(counts) for dev, counts in self.seen.items()},
        }


class SysMonitor(MqttSession):
    """The exporter's view of $SYS/broker/#: last value and arrival time of each topic."""

    def __init__(self, spec):
        super().__init__(f"exporter-bench-{os.getpid()}", "exporter_sys", spec["exporter_sys_password"], True,
                         [("$SYS/broker/#", 0)])
        self.values = {}

    def on_publish(self, data, topic_start, topic_end, payload_start, payload_end):
        self.values[bytes(data[topic_start:topic_end]).decode()] = (
            bytes(data[payload_start:payload_end]).decode(errors="replace"), time.monotonic())

    async def after(self, t, min_received, timeout):
        """(values, fresh): fresh once an update arrived after *t* that counts
        at least *min_received* publishes received (everything the generators
        got a PUBACK for). An update that arrives late can still describe
        an earlier moment, so arrival time alone is not enough."""
        deadline = time.monotonic() + timeout
        fresh = False
        while not fresh and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            uptime = self.values.get("$SYS/broker/uptime", ("", 0.0))
            received = self.values.get("$SYS/broker/publish/messages/received", ("0", 0.0))
            fresh = uptime[1] > t and int(received[0] or 0) >= min_received
        return {k: v for k, (v, _) in self.values.items()}, fresh


async def subscriber_main(conn, spec):
    control = Control(conn)
    loop = asyncio.get_running_loop()
    sink, sysmon = TelemetrySink(spec), SysMonitor(spec)
    await asyncio.wait_for(loop.create_connection(lambda: sink, "127.0.0.1", spec["port"]), 10)
    await asyncio.wait_for(sink.ready, 10)
    await asyncio.wait_for(loop.create_connection(lambda: sysmon, "127.0.0.1", spec["port"]), 10)
    await asyncio.wait_for(sysmon.ready, 10)
    control.send("ready")

    async def keepalive():
        while True:
            await asyncio.sleep(PING_EVERY)
            sink.ping()
            sysmon.ping()
    pinger = asyncio.create_task(keepalive())
    try:
        while True:
            msg = await control.get(spec["lifetime"])
            if msg[0] == "status":
                control.send("status", {"received": sink.received, "unique": sink.unique,
                                        "last_arrival": sink.last_arrival, "closed": sink.closed})
            elif msg[0] == "sys":
                control.send("sys", await sysmon.after(*msg[1:]))
            elif msg[0] == "report":
                control.send("report", sink.report(msg[1], msg[2]))
            else:
                break
    finally:
        pinger.cancel()
        for session in (sink, sysmon):
            if not session.closed:
                session.transport.write(mqttwire.DISCONNECT_PACKET)
                session.transport.close()
        await asyncio.sleep(0.1)
        control.send("closed")


# ---------------------------------------------------------------- one point (parent)

def account(gen_reports, seen):
    """Loss, duplicates and strays: every seq a generator reports as
    acknowledged by the broker must have reached the subscriber."""
    lost = dups = unexpected = unacked_delivered = 0
    for report in gen_reports:
        for dev, (last_seq, unacked) in report["devices"].items():
            counts = seen.get(dev, b"")
            got = counts[1:last_seq + 1]
            zero = got.count(0) + max(0, last_seq - len(got))
            unacked_missing = sum(1 for s in unacked if s >= len(counts) or counts[s] == 0)
            lost += zero - unacked_missing
            unacked_delivered += len(unacked) - unacked_missing
            dups += sum(got) - (len(got) - got.count(0))
            unexpected += sum(1 for c in counts[last_seq + 1:] if c) + (1 if counts[:1] not in (b"", b"\0") else 0)
    known = {dev for report in gen_reports for dev in report["devices"]}
    unexpected += sum(sum(1 for c in counts if c) for dev, counts in seen.items() if dev not in known)
    return {"loss": lost, "duplicates": dups, "unexpected": unexpected, "unacked_delivered": unacked_delivered}


class Sampler:
    """CPU snapshots of broker, generators and subscriber, and the broker's peak RSS."""

    def __init__(self, broker, workers):
        self.broker, self.workers = broker, workers
        self.peak_rss_kib = 0

    def sample_rss(self):
        try:
            self.peak_rss_kib = max(self.peak_rss_kib, self.broker.rss_kib())
        except OSError:
            pass

    def snapshot(self):
        pids = {"broker": self.broker.proc.pid, **{name: w.pid for name, w in self.workers.items()}}
        return {"t": time.monotonic(), "broker": procstat.cpu_seconds(self.broker.proc.pid),
                "workers": {name: procstat.cpu_seconds(w.pid) for name, w in self.workers.items()},
                "wait": {name: run_queue_wait(pid) for name, pid in pids.items()},
                "system": system_cpu(), "loadavg": loadavg()}

    def sleep_until(self, t):
        while True:
            now = time.monotonic()
            if now >= t:
                return
            self.sample_rss()
            time.sleep(min(0.5, t - now))


def cpu_percent(before, after):
    """CPU of each process over the window, percent of one core (user + system),
    with the system share apart; and how busy the whole machine was."""
    wall = after["t"] - before["t"]

    def pct(a, b):
        return 100 * (sum(b) - sum(a)) / wall

    def sys_pct(a, b):
        return 100 * (b[1] - a[1]) / wall
    busy = (after["system"][0] - before["system"][0]) / max(1, after["system"][1] - before["system"][1])
    return {"broker": pct(before["broker"], after["broker"]),
            "broker_sys": sys_pct(before["broker"], after["broker"]),
            "workers": {n: pct(before["workers"][n], after["workers"][n]) for n in before["workers"]},
            "workers_sys": {n: sys_pct(before["workers"][n], after["workers"][n]) for n in before["workers"]},
            "run_queue_wait": {n: 100 * (after["wait"][n] - before["wait"][n]) / wall for n in before["wait"]},
            "machine_busy": 100 * busy}


def start_subscriber(broker, service, lifetime):
    sub = Worker("subscriber", child_entry(subscriber_main),
                 {"port": broker.port, "lifetime": lifetime, **{f"{u}_password": p for u, p in service.items()}})
    sub.recv("ready", 30)
    return sub


def start_generators(args, broker, specs, passwords, rate, lifetime, sabotage):
    """Generator processes, devices dealt round-robin, rate split evenly;
    returns (workers, merged connect results) once all have connected or failed."""
    gens = []
    for g in range(args.generators):
        mine = [(i, d, k, passwords[d]) for i, (d, k, _) in enumerate(specs) if i % args.generators == g]
        gens.append(Worker(f"generator{g}", child_entry(generator_main), {
            "port": broker.port, "devices": mine, "rate": rate / args.generators, "window": args.window,
            "connect_concurrency": args.connect_concurrency, "connect_timeout": args.connect_timeout,
            "puback_wait": args.puback_wait, "lifetime": lifetime, "sabotage": sabotage}))
    budget = 60 + 2 * args.connect_timeout * math.ceil(len(specs) / args.connect_concurrency)
    results = [g.recv("connected", budget) for g in gens]
    return gens, {"connected": sum(c["connected"] for c in results), "failed": sum(c["failed"] for c in results),
                  "connect_s": max(c["connect_s"] for c in results),
                  "failures": merge_counts(c["failures"] for c in results)}


def run_load(args, gens, sampler):
    """Start the load, snapshot CPU at both ends of the measured window,
    collect the generators' reports; returns (t_w0, t_w1, before, after, reports)."""
    t_go = time.monotonic() + 0.3
    t_w0, t_w1 = t_go + args.warmup, t_go + args.warmup + args.duration
    for g in gens:
        g.send("go", t_go, t_w0, t_w1)
    sampler.sleep_until(t_w0)
    before = sampler.snapshot()
    sampler.sleep_until(t_w1)
    after = sampler.snapshot()
    reports = [g.recv("done", args.puback_wait + 30) for g in gens]
    return t_w0, t_w1, before, after, reports


def run_point(args, kind, specs, rate, tmp, sabotage=None):
    """One fresh broker, subscriber and generator(s); returns the row dict."""
    passwords = {device_id: secrets.token_urlsafe(12) for device_id, _, _ in specs}
    service = {"telegraf": secrets.token_urlsafe(12), "exporter_sys": secrets.token_urlsafe(12)}
    broker = RoleBroker(tmp / f"{kind}-{len(specs)}-{rate}", SITE, users={**passwords, **service},
                         stock=(kind == "stock"), overrides=None if kind == "stock" else args.overrides)
    workers = {}
    row = {"broker": kind, "connections": len(specs), "target": rate, "loadavg_start": loadavg()}
    lifetime = args.warmup + args.duration + 600  # a child left alone this long exits by itself
    try:
        broker.start()
        sub = workers["subscriber"] = start_subscriber(broker, service, lifetime)
        gens, connected = start_generators(args, broker, specs, passwords, rate, lifetime, sabotage)
        workers.update((g.name, g) for g in gens)
        row.update(connected)
        sampler = Sampler(broker, workers)
        t_w0, t_w1, before, after, reports = run_load(args, gens, sampler)
        row["loadavg_window"] = [before["loadavg"], after["loadavg"]]
        t_gen_end = time.monotonic()
        expected = sum(r["acked"] for r in reports) - sum(r["duplicated"] for r in reports)
        drained = drain(sub, expected, args.drain, sampler)
        sysvals, sys_fresh = None, False
        if args.sys_wait > 0:
            sysvals, sys_fresh = sub.request("sys", max(t_gen_end, drained["t"]), sum(r["acked"] for r in reports),
                                             args.sys_wait, timeout=args.sys_wait + 10)
        sub_report = sub.request("report", t_w0, t_w1, timeout=60)
        row.update(summarise(args, rate, reports, sub_report, cpu_percent(before, after), sampler, sysvals,
                             sys_fresh, drained))
        if sabotage:
            row["sabotage"] = {"skipped": sum(r["skipped"] for r in reports),
                               "duplicated": sum(r["duplicated"] for r in reports)}
    finally:
        for w in workers.values():
            w.stop()
        row["loadavg_end"] = loadavg()
        row["broker_log_warnings"] = log_warnings(broker.log)
        broker.stop()
    return row


def merge_counts(dicts):
    out = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def drain(sub, expected_unique, max_wait, sampler, quiet=2.0):
    """Wait until the subscriber has every acknowledged message, or nothing
    new arrived for *quiet* seconds, or *max_wait* passed."""
    t0 = time.monotonic()
    deadline = t0 + max_wait
    while True:
        status = sub.request("status", timeout=10)
        now = time.monotonic()
        if status["unique"] >= expected_unique:
            return {"complete": True, "drain_s": now - t0, "t": now}
        if now >= deadline or (now - max(t0, status["last_arrival"]) > quiet):
            return {"complete": False, "drain_s": now - t0, "t": now}
        sampler.sleep_until(now + 0.2)


def log_warnings(path, limit=5):
    """Count of the broker log's warning/error lines, and the first few distinct ones."""
    try:
        lines = pathlib.Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return {"count": 0, "first": []}
    hits = [ln.split(": ", 1)[-1] for ln in lines
            if any(w in ln for w in ("Warning", "Error", "Unable", "dropped", "exceeded", "Out of memory"))]
    first = []
    for h in hits:
        text = re.sub(r"\b[a-z][a-z0-9]{1,15}-[0-9a-hjkmnp-tv-z]{8}\b", "<device>", h)
        if text not in first:
            first.append(text)
        if len(first) >= limit:
            break
    return {"count": len(hits), "first": first}


def per_msg(cpu_pct, rate):
    """Microseconds of CPU per message from percent of one core at *rate* msg/s."""
    return 1e4 * cpu_pct / rate if rate else None


def summarise(args, rate, reports, sub_report, cpu, sampler, sysvals, sys_fresh, drained):
    acc = account(reports, sub_report["seen"])
    achieved = sum(r["published_window"] for r in reports) / args.duration
    delivered = sub_report["delivered_window"] / args.duration
    gen_cpu = [cpu["workers"][n] for n in cpu["workers"] if n.startswith("generator")]
    stalls = sum(r["stall_ticks"] for r in reports)
    limited = achieved < FOLLOW * rate
    reason = ""
    if limited:
        reasons = []
        if max(gen_cpu) >= 90:
            reasons.append("generator CPU")
        if stalls > 0.05 * sum(r["ticks"] for r in reports):
            reasons.append("windows full")
        if max(r["tick_p99_ms"] for r in reports) > 5 * TICK * 1000:
            reasons.append("pacing loop late")
        elif max(r["tick_max_ms"] for r in reports) > 1000 * BURST:
            reasons.append(f"generator stalled {max(r['tick_max_ms'] for r in reports):.0f} ms")
        reason = " + ".join(reasons) or "generator"
    puback_missing = sum(r["puback_missing"] for r in reports)
    out = {
        "achieved": achieved, "delivered": delivered, "generator_limited": limited, "limit_reason": reason,
        "published": sum(r["published"] for r in reports), "acked": sum(r["acked"] for r in reports),
        "puback_missing": puback_missing, "unexpected_acks": sum(r["unexpected_acks"] for r in reports),
        "lost_connections": sum(r["lost_connections"] for r in reports),
        "stall_ticks": stalls, "tick_p99_ms": max(r["tick_p99_ms"] for r in reports),
        "tick_max_ms": max(r["tick_max_ms"] for r in reports),
        "received": sub_report["received"], "unique": sub_report["unique"], "unparsed": sub_report["unparsed"],
        "shape_checked": sub_report["shape_checked"], "shape_errors": sub_report["shape_errors"],
        "p50_ms": sub_report["latency_p50_ms"], "p99_ms": sub_report["latency_p99_ms"],
        "max_ms": sub_report["latency_max_ms"],
        "broker_rss_mib": sampler.peak_rss_kib / 1024, "broker_cpu": cpu["broker"],
        "cpu_us_per_msg": {"broker": per_msg(cpu["broker"], achieved),
                           "generators": per_msg(sum(gen_cpu), achieved),
                           "subscriber": per_msg(cpu["workers"]["subscriber"], delivered)},
        "generator_cpu": gen_cpu, "subscriber_cpu": cpu["workers"]["subscriber"],
        "machine_busy": cpu["machine_busy"], "run_queue_wait": cpu["run_queue_wait"],
        "broker_wait": cpu["run_queue_wait"]["broker"], "cpu_system_share": {"broker": cpu["broker_sys"], **cpu["workers_sys"]},
        "drain": drained,
        "generator_errors": [e for r in reports for e in r["errors"]],
        **acc,
    }
    if sysvals:
        out["sys"] = {k.rsplit("$SYS/broker/", 1)[-1]: v for k, v in sysvals.items()
                      if "/publish/messages/" in k or k.endswith(("clients/connected", "heap/maximum",
                                                                 "messages/stored"))}
        out["sys_dropped"] = int(sysvals.get("$SYS/broker/publish/messages/dropped", "0") or 0)
        out["sys_fresh"] = sys_fresh
    follows = (not limited and delivered >= FOLLOW * achieved and acc["loss"] == 0 and puback_missing == 0
               and out["lost_connections"] == 0)
    out["follows"] = follows
    return out


# ---------------------------------------------------------------- output

COLUMNS = ["broker", "conns ok/tried", "target msg/s", "achieved msg/s", "generator limit", "delivered msg/s",
           "loss", "dups", "PUBACK missing", "p50 ms", "p99 ms", "broker RSS MiB", "broker CPU %",
           "broker runq wait %", "broker CPU µs/msg", "gen CPU %", "sub CPU %", "machine busy %", "$SYS dropped"]


def fmt(value, spec="{:.0f}"):
    return "n/a" if value is None else spec.format(value)


def table_row(r):
    if "error" in r:
        return f"| {r['broker']} | -/{r['connections']} | {r['target']} | error: {r['error']} |" + " |" * (len(COLUMNS) - 4)
    limit = "no" if not r["generator_limited"] else f"**yes** ({r['limit_reason']})"
    dropped = "n/a" if "sys_dropped" not in r else f"{r['sys_dropped']}{'' if r['sys_fresh'] else ' (stale)'}"
    cells = [r["broker"], f"{r['connected']}/{r['connections']}", str(r["target"]), fmt(r["achieved"]), limit,
             fmt(r["delivered"]), str(r["loss"]), str(r["duplicates"]), str(r["puback_missing"]),
             fmt(r["p50_ms"], "{:.1f}"), fmt(r["p99_ms"], "{:.1f}"), fmt(r["broker_rss_mib"], "{:.1f}"),
             fmt(r["broker_cpu"]), fmt(r["broker_wait"]), fmt(r["cpu_us_per_msg"]["broker"]), "+".join(fmt(c) for c in r["generator_cpu"]), fmt(r["subscriber_cpu"]),
             fmt(r["machine_busy"]), dropped]
    return "| " + " | ".join(cells) + " |"


def print_table(rows):
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|")
    for r in rows:
        print(table_row(r))


def print_ratios(rows):
    by = {(r["broker"], r["connections"], r["target"]): r for r in rows if "error" not in r}
    pairs = [(k, by[k], by.get(("stock",) + k[1:])) for k in by if k[0] == "role"]
    pairs = [p for p in pairs if p[2] is not None]
    if not pairs:
        return
    print()
    print("| conns | target msg/s | role delivered | stock delivered | role/stock | role loss | stock loss "
          "| stock conns ok |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (_, conns, target), role, stock in sorted(pairs, key=lambda p: p[0][1:]):
        ratio = role["delivered"] / stock["delivered"] if stock["delivered"] else float("inf")
        print(f"| {conns} | {target} | {role['delivered']:.0f} | {stock['delivered']:.0f} | {ratio:.2f} "
              f"| {role['loss']} | {stock['loss']} | {stock['connected']}/{conns} |")


def print_knees(rows):
    """Per broker and connection count: the highest offered rate delivered in
    full with no loss, every lower point too."""
    print()
    groups = {}
    for r in rows:
        groups.setdefault((r["broker"], r["connections"]), []).append(r)
    for (kind, conns), points in groups.items():
        knee, broke = None, None
        for r in sorted(points, key=lambda r: r["target"]):
            if "error" in r or not r["follows"]:
                broke = r
                break
            knee = r["target"]
        if broke is None:
            text = f"followed every point up to {knee} msg/s (knee not reached)"
        else:
            why = broke.get("error") or ", ".join(
                w for w, bad in (("generator limited", broke.get("generator_limited")),
                                 (f"delivered {broke.get('delivered', 0):.0f}",
                                  broke.get("delivered", 0) < FOLLOW * broke.get("achieved", 0)),
                                 (f"loss {broke.get('loss')}", broke.get("loss")),
                                 (f"PUBACK missing {broke.get('puback_missing')}", broke.get("puback_missing")),
                                 (f"{broke.get('lost_connections')} connections lost", broke.get("lost_connections")))
                if bad)
            text = f"knee {knee or 'below ' + str(broke['target'])} msg/s; at {broke['target']}: {why}"
        print(f"- {kind}, {conns} connections: {text}")


def machine_line(m):
    return (f"Machine: {m['cores']} cores, {m['cpu']}, {m['mosquitto']}, Python {m['python']}, "
            f"Linux {m['kernel']}, commit {m['commit']}, {m['date']}")


# ---------------------------------------------------------------- modes

def sweep(args, specs_all, tmp):
    rows = []
    for conns in args.connections:
        specs = specs_all[:conns]
        beyond = None
        for rate in args.rates:
            for kind in args.brokers:
                t0 = time.monotonic()
                try:
                    row = run_point(args, kind, specs, rate, tmp)
                except (RuntimeError, TimeoutError, OSError) as exc:
                    row = {"broker": kind, "connections": conns, "target": rate, "error": str(exc)[:200]}
                row["point_s"] = time.monotonic() - t0
                rows.append(row)
                print(table_row(row), file=sys.stderr, flush=True)
            role = next((r for r in reversed(rows) if r["broker"] == args.brokers[0]), None)
            if role is not None and (("error" in role) or not role["follows"]):
                beyond = 0 if beyond is None else beyond + 1
                if beyond >= args.beyond:
                    break
    return rows


def selfcheck(args, specs_all, tmp):
    """Sabotage: some seqs are never sent yet reported as acknowledged, some
    are sent twice. The subscriber's accounting must find exactly those."""
    sabotage = {"skip_every": 97, "dup_every": 89}
    row = run_point(args, "role", specs_all[:args.connections[0]], args.rates[0], tmp, sabotage=sabotage)
    expected = row["sabotage"]
    ok = (row["loss"] == expected["skipped"] and row["duplicates"] == expected["duplicated"]
          and expected["skipped"] > 0 and expected["duplicated"] > 0 and row["unexpected"] == 0)
    print(f"selfcheck: withheld {expected['skipped']} seqs (reported as acknowledged), sent "
          f"{expected['duplicated']} twice; the subscriber's accounting found loss {row['loss']}, "
          f"duplicates {row['duplicates']}, unexpected {row['unexpected']}: {'PASS' if ok else 'FAIL'}")
    return [row], ok


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--connections", type=ints, default=[1000, 5000], help="comma-separated (default 1000,5000)")
    p.add_argument("--rates", type=ints, default=[5000, 7500, 10000, 12500, 15000, 17500, 20000, 25000, 30000, 40000],
                   help="offered msg/s, ascending; the sweep stops --beyond points after the knee")
    p.add_argument("--brokers", type=lambda s: s.split(","), default=["role", "stock"],
                   help="role,stock (the first one decides where the sweep stops)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per point (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (default 3)")
    p.add_argument("--window", type=int, default=20, help="unacknowledged publishes per connection (default 20)")
    p.add_argument("--generators", type=int, default=1, help="load generator processes (default 1)")
    p.add_argument("--connect-concurrency", type=int, default=200)
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--puback-wait", type=float, default=10.0, help="seconds to wait for PUBACKs after the load")
    p.add_argument("--drain", type=float, default=15.0, help="longest subscriber drain after the load (s)")
    p.add_argument("--sys-wait", type=float, default=22.0,
                   help="longest wait for a $SYS update that covers the whole run (sys_interval is 10 s; 0: skip)")
    p.add_argument("--beyond", type=int, default=1, help="points to run past the first that does not follow")
    p.add_argument("--role-set", action="append", default=[], metavar="VAR=VALUE",
                   help="override a mosquitto role variable for the role broker, like an inventory var "
                        "(e.g. mosquitto_max_queued_messages=100000); repeatable; shown in the output")
    p.add_argument("--json", type=pathlib.Path, help="also write every figure to this JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: 200 connections, 2k and 5k msg/s, 5 s")
    p.add_argument("--selfcheck", action="store_true",
                   help="prove the loss counter can fail (withheld and doubled seqs must be found)")
    args = p.parse_args(argv)
    if args.quick:
        args.connections, args.rates, args.duration, args.warmup, args.beyond = [200], [2000, 5000], 5.0, 1.0, 9
    if args.selfcheck:
        args.connections, args.rates, args.duration, args.warmup = [50], [1000], 4.0, 1.0
    for name in args.brokers:
        if name not in ("role", "stock"):
            p.error(f"unknown broker {name!r}")
    args.overrides = {}
    for item in args.role_set:
        var, sep, value = item.partition("=")
        if not sep or not var.startswith("mosquitto_"):
            p.error(f"--role-set wants mosquitto_<var>=<value>, got {item!r}")
        args.overrides[var] = yaml.safe_load(value)
    return args


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through every finally: workers and brokers are stopped


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    procstat.raise_fd_limit()
    machine = machine_info()
    specs_all = fleet.generated_specs(max(args.connections))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="broker_load-") as tmp:
        if args.selfcheck:
            rows, ok = selfcheck(args, specs_all, pathlib.Path(tmp))
        else:
            rows, ok = sweep(args, specs_all, pathlib.Path(tmp)), True
    runtime = time.monotonic() - t0
    print(machine_line(machine))
    print(f"Each point: {args.warmup:g} s warm-up, {args.duration:g} s measured, QoS 1, window {args.window}, "
          f"{args.generators} generator process(es); run took {runtime / 60:.1f} min.")
    if args.overrides:
        print("Role broker overrides: " + ", ".join(f"{k}={v}" for k, v in args.overrides.items()))
    print()
    print_table(rows)
    if not args.selfcheck:
        print_ratios(rows)
        print_knees(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "args": {k: str(v) if isinstance(v, pathlib.Path)
                                                                      else v for k, v in vars(args).items()},
                                         "runtime_s": runtime, "rows": rows}, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""A reconnect storm on the broker as the mosquitto role configures it.

N simulated devices (the unchanged firmware app on the host board layer,
each with its own MQTT user and the role's ACL) run against a RoleBroker
until every one is settled; the broker is then restarted (a clean stop and a
start on the same port, with its persistence) and the devices come back
with the firmware's own backoff. Measured: when each device's new session is
up (so the peak connects per second and the time until all are back), the
broker's RSS every 0.1 s (its peak), and the round trip of a control client
that publishes QoS 1 to a topic it also reads, ten times a second, from a
separate process (so the devices' event loop cannot delay it), from the
moment it is connected again until the last device is back.

measure() is the whole run; tests/integration/test_reconnect_storm.py
asserts on it and bench/reconnect_spread.py prints it (docs/benchmarks.md)."""

import asyncio
import multiprocessing
import queue
import time

import testkeys
from firmware import common
from firmware.sim import fleet
from rolebroker import RoleBroker

SITE = "storm"
PROBE_TOPIC = f"site/{SITE}/probe/probe-00000000/cfg"  # the controller may write and read any cfg topic
CONTROLLER_PASSWORD = "ctl-storm"
KEY = testkeys.new_key()  # the devices' OTA signing public key (throw-away)


def probe_main(port, stop, out, interval=0.1, timeout=5.0):
    """Control client (a child process): publish, wait for our own message
    back, record (wall time, round trip s); reconnect whenever the broker is
    gone. A round trip that does not complete within *timeout* is recorded
    as *timeout*, so a stall can never look fast."""
    from mqttc import Client, MqttError

    client = None
    n = 0
    while not stop.is_set():
        if client is None:
            try:
                client = Client(port, user="controller", password=CONTROLLER_PASSWORD, client_id="storm-probe")
                client.connect_ok(timeout=1)
                client.subscribe(PROBE_TOPIC, timeout=2)
                out.put(("connected", time.time(), 0.0))
            except (MqttError, RuntimeError, OSError):
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.05)
                continue
        n += 1
        payload = b"probe-%d" % n
        t0 = time.monotonic()
        try:
            client.publish(PROBE_TOPIC, payload, timeout=timeout)
            client.wait_for(lambda m: m.payload == payload, timeout - (time.monotonic() - t0), "the probe back",
                            start=max(0, len(client.history) - 50))
            out.put(("rtt", time.time(), time.monotonic() - t0))
        except (MqttError, RuntimeError, OSError):  # paho raises RuntimeError once disconnected
            if client.client.is_connected():
                out.put(("rtt", time.time(), timeout))
            client.close()
            client = None
            continue
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))
    if client is not None:
        client.close()


class Probe:
    """The control client in its own process; samples() after stop()."""

    def __init__(self, port):
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._out = ctx.Queue()
        self._proc = ctx.Process(target=probe_main, args=(port, self._stop, self._out), daemon=True)
        self.events = []

    def start(self):
        self._proc.start()
        return self

    def drain(self):
        while True:
            try:
                self.events.append(self._out.get_nowait())
            except queue.Empty:
                return self.events

    def stop(self):
        self._stop.set()
        self._proc.join(15)
        if self._proc.is_alive():
            self._proc.kill()
        return self.drain()


def specs_and_users(count):
    specs = fleet.generated_specs(count)
    users = {d: "pw-" + d for d, _, _ in specs}
    users["controller"] = CONTROLLER_PASSWORD
    return specs, users


async def run_storm(broker, specs, workdir, settings=None, settle_timeout=180, back_timeout=300):
    """Run the devices of *specs* on *broker* (already started), restart it,
    and return the figures (a dict; times in seconds after the stop)."""
    devices = []
    for device_id, kind, mac in specs:
        root = fleet.provision(str(workdir / "sim"), device_id, kind, mac, SITE,
                               {"host": "127.0.0.1", "port": broker.port}, broker.users[device_id],
                               initial_config=common.kind_config(kind, mac),
                               settings=dict({"watchdog_s": 0}, **(settings or {})),
                               signing_key=KEY.public)
        devices.append(fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind))
    probe = None
    try:
        for d in devices:
            d.start()
        deadline = time.monotonic() + settle_timeout

        def settled(d):  # connected, subscribed, announced, self-test done
            return d.device and d.device.online() and d.device.confirmed_event.is_set()

        while sum(1 for d in devices if settled(d)) < len(devices):
            if time.monotonic() > deadline:
                raise AssertionError(f"only {sum(1 for d in devices if settled(d))}/{len(devices)} devices settled")
            await asyncio.sleep(0.2)
        probe = Probe(broker.port).start()
        await asyncio.sleep(2)
        rss_before = broker.rss_kib()
        before = [d.device.connects for d in devices]
        t0 = time.monotonic()
        wall0 = time.time()
        broker.stop()
        broker.start()
        restart_s = time.monotonic() - t0
        back = [None] * len(devices)
        rss_peak = broker.rss_kib()
        deadline = time.monotonic() + back_timeout
        while None in back and time.monotonic() < deadline:
            now = time.monotonic() - t0
            for i, d in enumerate(devices):
                if back[i] is None and d.device and d.device.connects > before[i] and d.device.online():
                    back[i] = now
            rss_peak = max(rss_peak, broker.rss_kib())
            await asyncio.sleep(0.1)
        all_back_wall = time.time()
        await asyncio.sleep(1)
        events = probe.stop()
        probe = None
    finally:
        if probe is not None:
            probe.stop()
        await asyncio.gather(*(d.stop() for d in devices))
    done = sorted(t for t in back if t is not None)
    per_second = {}
    for t in done:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    reconnected = [t for kind, t, _ in events if kind == "connected" and t > wall0]
    storm_rtts = [rtt for kind, t, rtt in events
                  if kind == "rtt" and reconnected and reconnected[0] <= t <= all_back_wall]
    rtts = sorted(storm_rtts) or [float("nan")]
    return {
        "devices": len(devices), "back": len(done), "restart_s": restart_s,
        "first": done[0] if done else None, "p50": done[len(done) // 2] if done else None,
        "p95": done[max(0, int(len(done) * 0.95) - 1)] if done else None, "last": done[-1] if done else None,
        "peak_cps": max(per_second.values()) if per_second else 0,
        "mean_cps": len(done) / max(1.0, done[-1] - done[0]) if done else 0,
        "rss_before_mib": rss_before / 1024, "rss_peak_mib": rss_peak / 1024,
        "probe_back_s": (reconnected[0] - wall0) if reconnected else None,
        "probe_samples": len(storm_rtts), "rtt_p50_ms": rtts[len(rtts) // 2] * 1000,
        "rtt_p99_ms": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1000, "rtt_max_ms": rtts[-1] * 1000,
    }


def measure(count, workdir, settings=None):
    """The storm for *count* devices on a fresh role broker in *workdir*
    (device *settings* override the firmware's defaults); run_storm's figures."""
    specs, users = specs_and_users(count)
    broker = RoleBroker(workdir / "broker", SITE, users).start()
    try:
        return asyncio.run(run_storm(broker, specs, workdir, settings))
    finally:
        broker.stop()

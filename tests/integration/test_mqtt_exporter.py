"""roles/mqtt_exporter end to end on this machine: the role's rendered
configs run by Debian's real prometheus-mqtt-exporter (mqtt2prometheus),
against a real Mosquitto with the mosquitto role's ACL, fed by simulated
devices running the firmware app. Every series of docs/metrics.md that the
devices produce appears with its labels and the devices' own values; a
config the exporter refuses is refused by the role's checker first."""

import asyncio
import json
import pathlib
import re
import subprocess
import urllib.request

import pytest

import rolerender
from broker import free_port
from simsite import DEVICES, SERVICE, SITE, online, run_for, topic, watcher
from waits import until, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHECKER = ROOT / "roles" / "mqtt_exporter" / "files" / "mqtt-exporter-check-config"
BINARY = pathlib.Path("/usr/bin/prometheus-mqtt-exporter")
pytestmark = pytest.mark.skipif(not BINARY.exists(), reason="Debian's prometheus-mqtt-exporter is not installed "
                                "(tools/test.sh installs it)")


def render(instance, broker_port, url=None, **overrides):
    variables = rolerender.role_vars("mqtt_exporter", dict({
        "edgefleet_site": SITE, "edgefleet_secrets_dir": "/nonexistent",
        "mqtt_exporter_broker_url": url or f"tcp://127.0.0.1:{broker_port}",
        "_mqtt_exporter_password_telemetry": SERVICE["exporter"],
        "_mqtt_exporter_password_broker": SERVICE["exporter_sys"]}, **overrides))
    return rolerender.render("mqtt_exporter", f"{instance}.yaml.j2", variables)


def check(tmp_path, text):
    conf = tmp_path / "candidate.yaml"
    conf.write_text(text)
    return subprocess.run([str(CHECKER), str(conf)], capture_output=True, text=True, timeout=90)


class Exporter:
    def __init__(self, tmp_path, instance, broker_port):
        self.conf = tmp_path / f"{instance}.yaml"
        self.conf.write_text(render(instance, broker_port))
        self.port = free_port()
        self.log = open(tmp_path / f"{instance}.log", "w")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([str(BINARY), "-config", str(self.conf), "-listen-address", "127.0.0.1",
                                      "-listen-port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def text(self):
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return ""

    def samples(self):
        """{(name, frozenset(labels)): value} of the exporter's /metrics now."""
        text = self.text()
        out = {}
        for line in text.splitlines():
            m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
            if m and not line.startswith("#"):
                labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
                out[(m.group(1), labels)] = float(m.group(3))
        return out

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def exporters(tmp_path):
    started = []

    def make(instance, broker_port):
        e = Exporter(tmp_path, instance, broker_port).start()
        started.append(e)
        return e

    yield make
    for e in started:
        e.stop()


def series(samples, name, **labels):
    want = set(labels.items())
    return {k: v for k, v in samples.items() if k[0] == name and want <= set(k[1])}


@pytest.mark.parametrize("instance", ["telemetry", "broker"])
def test_the_checker_proves_a_real_connection(site, tmp_path, instance):
    """The role's checker passes a config only when the exporter logs in to
    the broker and subscribes with it; the live session (same client id)
    is left alone."""
    b = site.broker
    live = watcher(b, "exporter" if instance == "telemetry" else "exporter_sys", "$SYS/broker/uptime"
                   if instance == "broker" else f"site/{SITE}/+/+/status", client_id=f"edgefleet-exporter-{SITE}-{instance}")
    ok = check(tmp_path, render(instance, b.port))
    assert ok.returncode == 0 and "connected to" in ok.stdout, ok.stdout + ok.stderr
    assert "already connected, closing old connection" not in b.log.read_text(), "the checker took over the live session"
    live.close()
    # a key the exporter does not know: refused while loading
    bad = check(tmp_path, render(instance, b.port).replace("  qos:", "  qos_level:"))
    assert bad.returncode == 1 and "qos_level not found" in bad.stderr, bad.stdout + bad.stderr
    # a config that loads but cannot log in: refused, where the old check (a closed port) passed it
    wrong = check(tmp_path, render(instance, b.port, **{f"_mqtt_exporter_password_{instance}": "not-the-password"}))
    assert wrong.returncode == 1 and "could not connect to mqtt broker" in wrong.stderr, wrong.stdout + wrong.stderr
    closed = check(tmp_path, render(instance, free_port()))
    assert closed.returncode == 1 and "could not connect to mqtt broker" in closed.stderr, closed.stderr


def test_ssl_needs_a_client_certificate_for_the_ca_to_count(broker, tmp_path):
    """mqtt2prometheus 0.1.7 uses ca_cert only when a client certificate is
    set: with the CA alone it cannot verify the site CA's broker certificate
    (the role refuses that setting), with all three it connects."""
    from simsite import SERVICE as users
    from tlsca import make_ca_and_server

    tls = make_ca_and_server(tmp_path / "ca")
    b = broker(users=users, tls=tls)
    url = f"ssl://127.0.0.1:{b.tls_port}"
    ca_only = check(tmp_path, render("broker", b.port, url=url, mqtt_exporter_ca_cert=str(tls["ca"])))
    assert ca_only.returncode == 1 and "certificate signed by unknown authority" in ca_only.stderr, ca_only.stderr
    # any pair the exporter can load will do: this broker does not ask for it
    full = check(tmp_path, render("broker", b.port, url=url, mqtt_exporter_ca_cert=str(tls["ca"]),
                                  mqtt_exporter_client_cert=str(tls["cert"]), mqtt_exporter_client_key=str(tls["key"])))
    assert full.returncode == 0, full.stdout + full.stderr


def test_device_telemetry_state_and_ota_become_labelled_series(site, exporters):
    sims = site(time_scale=0.02)
    b = site.broker
    telemetry = exporters("telemetry", b.port)
    watch = watcher(b, "controller", f"site/{SITE}/+/+/status")
    by_kind = {kind: device_id for device_id, kind, _ in DEVICES}
    psu, oven, env = by_kind["psu"], by_kind["oven"], by_kind["env"]

    async def scenario():
        for device_id, _, _ in DEVICES:
            await online(watch, device_id, timeout=20)

        def have_all():
            s = telemetry.samples()
            return (series(s, "edgefleet_telemetry_voltage_volts", sensor=psu, phase="c")
                    and series(s, "edgefleet_telemetry_temperature_celsius", sensor=oven, zone="2")
                    and series(s, "edgefleet_telemetry_temperature_celsius", sensor=env, zone="0")) and s
        return await until(have_all, 30, "telemetry of every kind in the exporter")

    holder = {}

    async def during():
        holder["samples"] = await scenario()
        holder["text"] = telemetry.text()
    asyncio.run(run_for(sims, 0, during=during))
    s = holder["samples"]
    state_topic = topic(psu, "state")
    for phase in "abc":
        (key, volts), = series(s, "edgefleet_telemetry_voltage_volts", sensor=psu, phase=phase).items()
        assert ("topic", state_topic) in key[1]
        assert 150 < volts < 300, volts  # the simulator's mains
        assert series(s, "edgefleet_telemetry_current_amperes", sensor=psu, phase=phase)
    assert series(s, "edgefleet_telemetry_power_factor", sensor=psu)
    # the oven has three zones and a setpoint; the psu has neither; env has one zone and no meter
    assert sorted(dict(k[1])["zone"] for k in series(s, "edgefleet_telemetry_temperature_celsius", sensor=oven)) \
        == ["0", "1", "2"]
    (_, setpoint), = series(s, "edgefleet_telemetry_setpoint_celsius", sensor=oven).items()
    assert setpoint == 180.0
    assert not series(s, "edgefleet_telemetry_temperature_celsius", sensor=psu)
    assert not series(s, "edgefleet_telemetry_voltage_volts", sensor=env)
    # no sample carries a timestamp: a value the exporter keeps for a quiet
    # device must not turn into one Prometheus rejects as too old
    text = holder["text"]
    stamped = [line for line in text.splitlines() if line.startswith("edgefleet_") and len(line.split()) != 2]
    assert not stamped, stamped
    for device_id, _, _ in DEVICES:
        assert series(s, "edgefleet_telemetry_seq", sensor=device_id)
        (ts,), = [series(s, "edgefleet_telemetry_timestamp_seconds", sensor=device_id).values()]
        assert ts > 1.7e9, ts  # the device's own clock (the simulator's runs fast)
        # the device's own interval, from its status (the firmware default here)
        assert set(series(s, "edgefleet_device_publish_interval_seconds", sensor=device_id).values()) == {5.0}
        assert set(series(s, "edgefleet_telemetry_running", sensor=device_id).values()) <= {0.0, 1.0}
        assert series(s, "edgefleet_telemetry_uptime_seconds", sensor=device_id)
        assert series(s, "edgefleet_telemetry_wifi_rssi_dbm", sensor=device_id)
    # status and ota: online while connected, 0 from the will after the devices stop; an OTA failure is 1
    wait_until(lambda: series(telemetry.samples(), "edgefleet_device_online", sensor=env)
               and all(v == 0 for v in series(telemetry.samples(), "edgefleet_device_online").values()),
               20, "every device offline after the fleet stopped")
    dev = watcher(b, env, f"site/{SITE}/{env.split('-')[0]}/{env}/cfg", password=f"pw-{env}")
    dev.publish(topic(env, "ota"), json.dumps({"id": "r1", "state": "rolled_back", "version": "2.0"}), qos=1)
    wait_until(lambda: set(series(telemetry.samples(), "edgefleet_ota_failed", sensor=env).values()) == {1.0},
               10, "the rollback exported as 1")
    dev.publish(topic(env, "ota"), json.dumps({"id": "r2", "state": "confirmed", "version": "2.0"}), qos=1)
    wait_until(lambda: set(series(telemetry.samples(), "edgefleet_ota_failed", sensor=env).values()) == {0.0},
               10, "a confirmed update exported as 0")
    # heap health from status, as an ESP32 reports it (the simulator has no
    # ESP-IDF heap to read, so this status is written here by hand)
    dev.publish(topic(env, "status"), json.dumps({"online": True, "fw": "2.0", "free_heap": 61234,
                                                  "heap_largest_free": 30016, "idf_largest_free": 17120}),
                qos=1, retain=True)
    heap = {"edgefleet_device_free_heap_bytes": 61234.0, "edgefleet_device_heap_largest_free_block_bytes": 30016.0,
            "edgefleet_device_idf_largest_free_block_bytes": 17120.0}
    wait_until(lambda: all(set(series(telemetry.samples(), name, sensor=env).values()) == {value}
                           for name, value in heap.items()), 10, "the heap figures of status exported")
    # time_synced, a JSON boolean, is 0 or 1 (mqtt2prometheus maps booleans itself)
    for synced, value in ((False, 0.0), (True, 1.0)):
        dev.publish(topic(env, "status"), json.dumps({"online": True, "fw": "2.0", "time_synced": synced}),
                    qos=1, retain=True)
        wait_until(lambda: set(series(telemetry.samples(), "edgefleet_device_online", sensor=env).values())
                   == {1.0}, 10, "online again")
        wait_until(lambda: set(series(telemetry.samples(), "edgefleet_device_time_synced", sensor=env).values())
                   == {value}, 10, f"time_synced {synced} exported as {value}")
    # the retained status a device leaves before an update's reset: offline, with its reason, is 0
    # (and stays 0 while the new image does not come back)
    dev.publish(topic(env, "status"), json.dumps({"online": False, "reason": "updating", "fw": "2.0"}),
                qos=1, retain=True)
    wait_until(lambda: set(series(telemetry.samples(), "edgefleet_device_online", sensor=env).values()) == {0.0},
               10, "the offline status with a reason exported as 0")


def test_broker_sys_metrics(site, exporters):
    b = site.broker
    sysx = exporters("broker", b.port)
    # the broker publishes $SYS every sys_interval (Debian's default config here: 10 s)
    # the first values are the retained ones from before the exporter connected; the next update counts it
    s = wait_until(lambda: any(v >= 1 for v in series(sysx.samples(), "mosquitto_clients_connected").values())
                   and sysx.samples(), 30, "$SYS counters in the exporter, counting the exporter itself")
    for name in ("mosquitto_messages_received_total", "mosquitto_publish_dropped_total", "mosquitto_subscriptions",
                 "mosquitto_retained_messages"):
        assert series(s, name), f"{name} missing from {sorted({k[0] for k in s})}"
    assert series(s, "mqtt2prometheus_connected") == {("mqtt2prometheus_connected", frozenset()): 1.0}

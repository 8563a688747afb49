"""An alert of roles/prometheus from a metric to a webhook, with the real
Debian binaries on 127.0.0.1: Prometheus and Alertmanager run as
subprocesses with the role's rendered prometheus.yml, rules, command-line
arguments and alertmanager.yml (a webhook receiver pointing at a sink in
this test), scraping a small /metrics endpoint that speaks like the MQTT
exporter (`topic` and `sensor` labels). It proves the relabelling of the
edgefleet_telemetry job, the rules, Prometheus's alerting block and
Alertmanager's routing together."""

import http.server
import json
import pathlib
import shlex
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

from rolerender import render, role_vars, value
from waits import wait_until

SITE = "itest"
OFFLINE = "psu-ktcyat68"
ONLINE = "env-yy1ka51y"
PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"

EXPORTER_PAGE = f"""\
# HELP edgefleet_device_online online
# TYPE edgefleet_device_online gauge
edgefleet_device_online{{sensor="online",topic="site/{SITE}/psu/{OFFLINE}/status"}} 0
edgefleet_device_online{{sensor="online",topic="site/{SITE}/env/{ONLINE}/status"}} 1
# HELP received_messages received messages per topic and status
# TYPE received_messages counter
received_messages{{status="success",topic="site/{SITE}/env/{ONLINE}/state"}} 7
received_messages{{status="success",topic="site/{SITE}/env/{ONLINE}/status"}} 1
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class Http:
    """A tiny server on 127.0.0.1: GET /metrics returns *page*; POSTs are kept."""

    def __init__(self, page=""):
        self.posts = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = page.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                outer.posts.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def ready(base):
    try:
        return get(f"http://{base}/-/ready")[0] == 200
    except OSError:
        return False


def role_args(tree, service, replace):
    """The command line the role writes to /etc/default/<service>, with paths moved into the test tree."""
    text = (tree / "etc/default" / service).read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("ARGS=")]
    args = shlex.split(line[len("ARGS="):])[0].split()
    out = []
    for arg in args:
        flag = arg.split("=", 1)[0]
        out.append(f"{flag}={replace[flag]}" if flag in replace else arg)
    return out


@pytest.fixture
def processes():
    started = []
    yield started
    for proc, log in started:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_device_offline_alert_reaches_the_webhook(tmp_path, processes):
    for binary in (PROMETHEUS, ALERTMANAGER):
        if not shutil.which(binary):
            pytest.fail(f"{binary} missing: apt-get install prometheus prometheus-alertmanager")
    exporter, sink = Http(EXPORTER_PAGE), Http()
    started = time.time()
    try:
        prom_addr, am_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        ctx = role_vars("prometheus", {
            "edgefleet_site": SITE,
            "groups": {},
            "_prometheus_group": "root",
            "prometheus_broker_tls_probe": False,
            "prometheus_web_listen_address": prom_addr,
            "prometheus_alertmanager_listen_address": am_addr,
            "prometheus_telemetry_target": exporter.address,
            # nothing listens there: keep the other jobs off real ports of this machine
            "prometheus_mosquitto_target": f"127.0.0.1:{free_port()}",
            "prometheus_node_exporter_listen_address": f"127.0.0.1:{free_port()}",
            "prometheus_scrape_interval": "1s",
            "prometheus_evaluation_interval": "1s",
            "prometheus_alert_device_offline_for": "0s",
            "prometheus_alertmanager_route": {"receiver": "sink", "group_by": ["alertname", "site"],
                                              "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
            "prometheus_alertmanager_receivers": [
                {"name": "sink", "webhook_configs": [{"url": f"http://{sink.address}/alerts", "send_resolved": False}]}],
        })
        tree = tmp_path / "tree"
        for f in value(ctx, "_prometheus_files"):
            dest = tree / f["live"].lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(render("prometheus", f["src"], dict(ctx, _prometheus_service=f["service"])))
        file_sd = tree / value(ctx, "_prometheus_file_sd").lstrip("/")
        file_sd.parent.mkdir(parents=True, exist_ok=True)
        file_sd.write_text(render("prometheus", "edgefleet_devices.yml.j2", ctx))

        am_args = role_args(tree, "prometheus-alertmanager", {
            "--config.file": tree / "etc/prometheus/alertmanager.yml", "--storage.path": tmp_path / "am"})
        prom_args = role_args(tree, "prometheus", {
            "--config.file": tree / "etc/prometheus/prometheus.yml", "--storage.tsdb.path": tmp_path / "tsdb"})
        assert f"--web.listen-address={am_addr}" in am_args and "--cluster.listen-address=" in am_args
        for binary, args, name in ((ALERTMANAGER, am_args, "alertmanager"), (PROMETHEUS, prom_args, "prometheus")):
            log = open(tmp_path / f"{name}.log", "w")
            processes.append((subprocess.Popen([binary, *args], stdout=log, stderr=subprocess.STDOUT), log))

        def logs():
            return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))

        for base in (am_addr, prom_addr):
            try:
                wait_until(lambda: ready(base), timeout=20, what=f"{base}/-/ready", poll=0.2)
            except AssertionError:
                pytest.fail(f"{base} not ready:\n{logs()}")

        # the exporter's topic label became site, kind, device_id and channel
        def offline_series():
            query = urllib.parse.quote('edgefleet_device_online{job="edgefleet_telemetry"}')
            try:
                result = json.loads(get(f"http://{prom_addr}/api/v1/query?query={query}")[1])["data"]["result"]
            except OSError:
                return None
            return sorted((r["metric"] for r in result), key=lambda m: m.get("device_id", "")) or None

        series = wait_until(offline_series, timeout=20, what="the exporter's series in Prometheus", poll=0.2)
        assert series == [
            {"__name__": "edgefleet_device_online", "job": "edgefleet_telemetry", "instance": exporter.address,
             "site": SITE, "kind": "env", "device_id": ONLINE, "channel": "status"},
            {"__name__": "edgefleet_device_online", "job": "edgefleet_telemetry", "instance": exporter.address,
             "site": SITE, "kind": "psu", "device_id": OFFLINE, "channel": "status"},
        ]

        # the last-seen rule runs in the real engine: one series per device,
        # site, kind and device_id only, from the state topic's count (seeded:
        # the count does not change here), none for the device without one
        def last_seen():
            query = urllib.parse.quote("edgefleet:telemetry_last_seen_timestamp_seconds")
            try:
                return json.loads(get(f"http://{prom_addr}/api/v1/query?query={query}")[1])["data"]["result"] or None
            except OSError:
                return None

        (seen,) = wait_until(last_seen, timeout=20, what="the recorded last-seen series", poll=0.2)
        assert seen["metric"] == {"__name__": "edgefleet:telemetry_last_seen_timestamp_seconds",
                                  "site": SITE, "kind": "env", "device_id": ONLINE}
        assert started <= float(seen["value"][1]) <= time.time()

        def delivered():
            return [a for post in sink.posts for a in post["alerts"]
                    if a["labels"]["alertname"] == "EdgefleetDeviceOffline"]

        try:
            alerts = wait_until(delivered, timeout=30, what="the webhook to receive EdgefleetDeviceOffline", poll=0.2)
        except AssertionError:
            pytest.fail(f"no EdgefleetDeviceOffline at the webhook; posts: {sink.posts}\n{logs()}")
        (alert,) = alerts
        assert alert["status"] == "firing"
        labels = alert["labels"]
        assert labels["device_id"] == OFFLINE and labels["kind"] == "psu" and labels["site"] == SITE
        assert labels["severity"] == "warning"
        assert "topic" not in labels and "sensor" not in labels
        assert alert["annotations"]["summary"] == f"Device {OFFLINE} at site {SITE} is offline"
        post = next(p for p in sink.posts if alert in p["alerts"])
        assert post["receiver"] == "sink"
        assert all(a["labels"].get("device_id") != ONLINE for a in delivered())
    finally:
        exporter.close()
        sink.close()

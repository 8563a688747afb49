"""Fixtures for the whole-site verifier: the scenario's site, the credentials
the roles generated on the controller side, Prometheus through its published
port, and the simulated fleet run beside the controller."""

import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

ROOT = pathlib.Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", pathlib.Path(__file__).parents[3]))
sys.path.insert(0, str(ROOT / "tools" / "pylib"))
sys.path.insert(0, str(ROOT / "plugins" / "module_utils"))

SITE = "molecule"
# Run by the fleet container, each with its /metrics on the controller's loopback
FLEET = {"psu-ktcyat68": ("24:0a:c4:12:34:01", 19101), "env-yy1ka51y": ("24:0a:c4:12:34:11", 19102),
         "oven-tvcft64q": ("24:0a:c4:12:34:21", 19103)}
PLAIN_PORT = int(os.environ.get("EDGEFLEET_TEST_MQTT_PORT", "21883"))
PROM_PORT = int(os.environ.get("EDGEFLEET_TEST_PROM_PORT", "29090"))
OTA_PORT = int(os.environ.get("EDGEFLEET_TEST_OTA_PORT", "28080"))
OTAS_PORT = int(os.environ.get("EDGEFLEET_TEST_OTAS_PORT", "28443"))
SCRAPE_INTERVAL_S = 5  # prometheus_scrape_interval in molecule.yml


def ephemeral():
    return pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])


def instance_name():
    out = subprocess.run(["docker", "ps", "--filter", "label=owner=molecule", "--format", "{{.Names}}"],
                         capture_output=True, text=True, check=True).stdout.split()
    run = os.environ.get("EDGEFLEET_RUN_ID", "manual")
    mine = [n for n in out if n.startswith(f"edgefleet-{run}-site-") and not n.endswith("-fleet")]
    assert len(mine) == 1, f"expected one site instance of run {run}, found {out}"
    return mine[0]


@pytest.fixture(scope="session")
def secrets_dir():
    return ephemeral() / "secrets"


@pytest.fixture(scope="session")
def password(secrets_dir):
    def read(user):
        return (secrets_dir / "mqtt" / user).read_text().strip()
    return read


class Prometheus:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path, **params):
        url = f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            body = urllib.request.urlopen(url, timeout=10).read()
        except urllib.error.HTTPError as e:
            body = e.read()
        return json.loads(body)

    def query(self, expr):
        """(status, result list, error) of an instant query now."""
        out = self.api("query", query=expr)
        return out.get("status"), out.get("data", {}).get("result", []), out.get("error")

    def wait(self, expr, predicate=lambda r: r, timeout=60, what=None):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            status, result, error = self.query(expr)
            last = (status, result, error)
            if status == "success" and predicate(result):
                return result
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout}s waiting for {what or expr}: last answer {last}")


@pytest.fixture(scope="session")
def prometheus():
    return Prometheus(PROM_PORT)


@pytest.fixture(scope="session")
def fleet(secrets_dir):
    """The simulated fleet in a container sharing the controller's network
    namespace (as `make lab` runs it): devices reach the broker, and
    Prometheus reaches each device's /metrics, on the controller's 127.0.0.1."""
    name = instance_name()
    devices = {"site": SITE, "broker_host": "127.0.0.1", "broker_port": 1883,
               "devices": [{"id": i, "kind": i.split("-")[0], "mac": mac, "metrics_port": port}
                           for i, (mac, port) in FLEET.items()]}
    (secrets_dir / "sim-fleet.json").write_text(json.dumps(devices, indent=2))
    image = subprocess.run(["docker", "inspect", "-f", "{{.Config.Image}}", name], capture_output=True, text=True,
                           check=True).stdout.strip()
    runner = f"{name}-fleet"
    subprocess.run(["docker", "rm", "-f", runner], capture_output=True)
    subprocess.run(["docker", "run", "-d", "--name", runner, "--label", "owner=molecule", f"--network=container:{name}",
                    "-v", f"{ROOT}:/opt/edgefleet:ro", "-v", f"{secrets_dir}:/secrets:ro", "-w", "/opt/edgefleet",
                    "-e", "PYTHONDONTWRITEBYTECODE=1", image, "python3", "-m", "firmware.sim",
                    "--devices", "/secrets/sim-fleet.json", "--secrets", "/secrets", "--state-dir", "/tmp/sim"],
                   check=True, capture_output=True)
    yield list(FLEET)
    logs = subprocess.run(["docker", "logs", "--tail", "20", runner], capture_output=True, text=True)
    print("fleet container, last lines:\n" + logs.stdout + logs.stderr)
    subprocess.run(["docker", "rm", "-f", runner], capture_output=True)

"""Fixtures for the whole-site verifier: the scenario's site, the credentials
the roles generated on the controller side, Prometheus through its published
port, and the simulated fleet on the controller's plant network."""

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
# what devices dial (edgefleet_controller_address in molecule.yml; the
# controller's alias on its plant network, .config/molecule/config.yml)
CONTROLLER_ADDRESS = "ctl01.molecule.plant"
FLEET_IMAGE = "edgefleet/plant-fleet:latest"  # molecule/images/build-plant-fleet.sh
# Run by the fleet container on the plant, each with its /metrics on <id>.local:<port>
FLEET = {"psu-ktcyat68": ("24:0a:c4:12:34:01", 19101), "env-yy1ka51y": ("24:0a:c4:12:34:11", 19102),
         "oven-tvcft64q": ("24:0a:c4:12:34:21", 19103)}
# the broker's plain listener stays on the controller's loopback: the
# verifier uses the TLS listener through its published port, as the Ansible
# controller's fleet plugins do (the certificate covers 127.0.0.1)
TLS_PORT = int(os.environ.get("EDGEFLEET_TEST_MQTTS_PORT", "28883"))
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


def mqtt(user, password):
    """A connected MQTT client over TLS, trusting the site CA, as *user*."""
    from mqttc import Client
    return Client(TLS_PORT, user=user, password=password,
                  ca_file=str(ephemeral() / "secrets" / "ca" / "ca.crt")).connect_ok()


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


def controller_networks(name):
    out = subprocess.run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", name],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def plant_network(name):
    """The plant network Molecule put the controller on (.config/molecule/config.yml)."""
    plants = [n for n in controller_networks(name) if n.endswith("-plant")]
    assert len(plants) == 1, f"{name} is not on one plant network: {list(controller_networks(name))}"
    return plants[0]


def fleet_runner():
    return f"{instance_name()}-fleet"


@pytest.fixture(scope="session")
def fleet(secrets_dir):
    """The simulated fleet as boards on the plant: its own container on the
    controller's plant network, dialling the device-facing name over TLS
    (MQTT, OTA and NTP), clocks unset at boot, each device answering mDNS
    for <id>.local, where Prometheus scrapes its /metrics (the scenario's
    device_metrics_address). Nothing on the device side uses 127.0.0.1."""
    name = instance_name()
    network = plant_network(name)
    devices = {"site": SITE, "broker_host": CONTROLLER_ADDRESS, "broker_tls_port": 8883,
               "devices": [{"id": i, "kind": i.split("-")[0], "mac": mac, "metrics_port": port}
                           for i, (mac, port) in FLEET.items()]}
    (secrets_dir / "sim-fleet.json").write_text(json.dumps(devices, indent=2))
    # the fleet's image (base image + python3-zeroconf); a no-op when current
    build = subprocess.run(["bash", str(ROOT / "molecule" / "images" / "build-plant-fleet.sh")],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"cannot build the fleet image:\n{build.stdout}{build.stderr}"
    runner = fleet_runner()
    subprocess.run(["docker", "rm", "-f", runner], capture_output=True)
    subprocess.run(["docker", "run", "-d", "--name", runner, "--hostname", "plant-fleet", "--label", "owner=molecule",
                    f"--network={network}", "-v", f"{ROOT}:/opt/edgefleet:ro", "-v", f"{secrets_dir}:/secrets:ro",
                    "-w", "/opt/edgefleet", "-e", "PYTHONDONTWRITEBYTECODE=1", FLEET_IMAGE, "python3", "-m",
                    "firmware.sim", "--devices", "/secrets/sim-fleet.json", "--secrets", "/secrets",
                    "--state-dir", "/tmp/sim", "--tls", "--plant"],
                   check=True, capture_output=True)
    yield list(FLEET)
    logs = subprocess.run(["docker", "logs", "--tail", "20", runner], capture_output=True, text=True)
    print("fleet container, last lines:\n" + logs.stdout + logs.stderr)
    subprocess.run(["docker", "rm", "-f", runner], capture_output=True)

"""Fixtures for the broker verifier: the scenario's site, devices and the
credentials the role generated on the controller side."""

import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", pathlib.Path(__file__).parents[3]))
sys.path.insert(0, str(ROOT / "tools" / "pylib"))

SITE = "molecule"
DEVICE_A = "psu-ktcyat68"
DEVICE_B = "env-yy1ka51y"
PLAIN_PORT = int(os.environ.get("EDGEFLEET_TEST_MQTT_PORT", "21883"))
TLS_PORT = int(os.environ.get("EDGEFLEET_TEST_MQTTS_PORT", "28883"))


def topic(device, channel):
    return f"site/{SITE}/{device.split('-')[0]}/{device}/{channel}"


@pytest.fixture(scope="session")
def secrets_dir():
    return pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "secrets"


@pytest.fixture(scope="session")
def password(secrets_dir):
    def read(user):
        return (secrets_dir / "mqtt" / user).read_text().strip()
    return read


@pytest.fixture
def connect(password):
    """connect(user) -> connected mqttc.Client, closed after the test."""
    from mqttc import Client
    opened = []

    def make(user, port=PLAIN_PORT, pw=None, **kw):
        c = Client(port, user=user, password=pw if pw is not None else password(user), **kw)
        opened.append(c)
        return c.connect_ok()

    yield make
    for c in opened:
        c.close()

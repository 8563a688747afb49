"""The integration tests' site: a real Mosquitto with the mosquitto role's
real ACL, simulated devices provisioned for it, and helpers to watch MQTT
and to wait for conditions (every wait has a deadline; no fixed sleeps).
The ``site`` fixture itself is in conftest.py."""

import asyncio
import json

import firmware.sim  # noqa: F401  (puts firmware/app and the contract on sys.path)
import contract
import identity
from firmware import common
from firmware.sim import fleet
from mqttc import Client as Paho
import testkeys
from roleacl import render_acl
from waits import until  # noqa: F401  (the tests import it from here)

SITE = "it"
SPECS = [("psu", "24:0a:c4:12:34:01"), ("oven", "24:0a:c4:12:34:21"), ("env", "24:0a:c4:12:34:11")]
DEVICES = [(identity.device_id(k, m), k, m) for k, m in SPECS]
WILL = {"online": False, "reason": "connection_lost"}  # the firmware's will, which the broker sends
SERVICE = {"telegraf": "tg-pw", "controller": "ctl-pw", "exporter": "ex-pw", "exporter_sys": "exs-pw"}


def topic(device_id, channel):
    if channel == "#":  # every channel of the device
        return contract.base_topic(SITE, device_id) + "#"
    return contract.topic(SITE, device_id, channel)


def make_site(broker, tmp_path, devices=DEVICES):
    """A broker with users and ACL for *devices* [(id, kind, mac)]; the
    returned make() provisions simulated devices among them. make.key is
    the site's signing key, in <tmp_path>/secrets/signing as the ota_signing
    role keeps it (fleetplay's inventories point there)."""
    users = dict(SERVICE, **{d: f"pw-{d}" for d, _, _ in devices})
    b = broker(users=users, acl=render_acl(SITE, [d for d, _, _ in devices]))
    key = testkeys.site_key(tmp_path / "secrets")

    def make(specs=devices, time_scale=0.02, initial=None, settings=None):
        """Simulated devices for *specs*. At these time scales a fraction of
        a second of real scheduling delay is many device seconds, so the
        watchdog is off unless *settings* turn it on, and the OTA self-test
        gets 150 device seconds (3 s of real time at the default scale)."""
        sims = []
        for device_id, kind, mac in specs:
            cfg = dict(common.kind_config(kind, mac), **(initial or {}))
            root = fleet.provision(str(tmp_path / "sim"), device_id, kind, mac, SITE,
                                   {"host": "127.0.0.1", "port": b.port, "keepalive": 30}, users[device_id],
                                   initial_config=cfg,
                                   settings=dict({"watchdog_s": 0, "selftest_timeout_s": 150}, **(settings or {})),
                                   signing_key=key.public)
            sims.append(fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind, time_scale=time_scale))
        return sims

    make.broker = b
    make.key = key
    return make


def watcher(b, user, pattern, password=None, **kw):
    c = Paho(b.port, user=user, password=password or SERVICE[user], **kw).connect_ok()
    assert c.subscribe(pattern, 1) == [1]
    return c


def payloads(client, channel, device_id=None):
    """Decoded payloads on *channel* (of *device_id*, or of any device) so far."""
    out = []
    for m in client.messages():
        parsed = contract.parse_topic(m.topic)
        if parsed and parsed[3] == channel and (device_id is None or parsed[2] == device_id):
            try:
                out.append(json.loads(m.payload))
            except ValueError:
                out.append(m.payload)
    return out


async def online(client, device_id, count=1, timeout=10.0):
    """Wait until *client* (subscribed to the device's status) has seen
    *count* ``online: true`` statuses of it: the device has subscribed to
    cfg and cmd by then (it publishes online only after its SUBACKs)."""
    def seen():
        return len([p for p in payloads(client, "status", device_id) if isinstance(p, dict) and p.get("online")])
    await until(lambda: seen() >= count, timeout, f"{device_id} online ({count})")


async def run_for(sims, seconds, during=None):
    tasks = [s.start() for s in sims]
    try:
        if during is not None:
            await during()
        else:
            await asyncio.sleep(seconds)
    finally:
        await asyncio.gather(*(s.stop() for s in sims))
    assert all(t.done() for t in tasks)


async def with_fleet(sims, scenario):
    """Run *scenario()* while the simulated devices *sims* run; stop them
    after, whatever happened."""
    tasks = [s.start() for s in sims]
    try:
        return await scenario()
    finally:
        await asyncio.gather(*(s.stop() for s in sims))
        assert all(t.done() for t in tasks)

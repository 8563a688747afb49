"""The integration tests' site: a real Mosquitto with the mosquitto role's
real ACL, simulated devices provisioned for it, and helpers to watch MQTT.
The ``site`` fixture itself is in conftest.py."""

import asyncio
import time

import firmware.sim  # noqa: F401  (puts firmware/app on sys.path)
import identity
from firmware.sim import fleet
from mqttc import Client as Paho
from roleacl import render_acl

SITE = "it"
SPECS = [("psu", "24:0a:c4:12:34:01"), ("oven", "24:0a:c4:12:34:21"), ("env", "24:0a:c4:12:34:11")]
DEVICES = [(identity.device_id(k, m), k, m) for k, m in SPECS]
SERVICE = {"telegraf": "tg-pw", "controller": "ctl-pw", "exporter": "ex-pw"}


def topic(device_id, channel):
    return f"site/{SITE}/{device_id.split('-')[0]}/{device_id}/{channel}"


def make_site(broker, tmp_path):
    users = dict(SERVICE, **{d: f"pw-{d}" for d, _, _ in DEVICES})
    b = broker(users=users, acl=render_acl(SITE, [d for d, _, _ in DEVICES]))

    def make(specs=DEVICES, time_scale=0.02, initial=None):
        sims = []
        for device_id, kind, mac in specs:
            cfg = dict(fleet.kind_config(kind), **(initial or {}))
            root = fleet.provision(str(tmp_path / "sim"), device_id, kind, mac, SITE,
                                   {"host": "127.0.0.1", "port": b.port, "keepalive": 30}, users[device_id],
                                   initial_config=cfg)
            sims.append(fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind, time_scale=time_scale))
        return sims

    make.broker = b
    return make


def watcher(b, user, pattern, **kw):
    c = Paho(b.port, user=user, password=SERVICE[user], **kw).connect_ok()
    assert c.subscribe(pattern, 1) == [1]
    return c


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


def messages(client, topic_filter=None, settle=0.5):
    """Everything the subscriber received, after letting in-flight deliveries land."""
    time.sleep(settle)
    out = []
    while not client.messages.empty():
        m = client.messages.get()
        if topic_filter is None or m.topic.endswith(topic_filter):
            out.append(m)
    return out

"""device_config through a broker restart: the real ansible-playbook
(playbooks/configure.yml) pushes a config to 40 simulated devices (the
unchanged firmware app) on a real Mosquitto with the role's ACL and
persistence, and the broker is restarted (SIGTERM: it publishes every
client's will, saves its retained messages, exits; then starts again on the
same port) at a random moment of the push (seeded, printed): at the
controller's snapshot, after the k-th config or the k-th acknowledgement
passed the broker. Every device must end with the new config applied
and confirmed, the task must not fail nor call any device offline or timed
out, and it must end well inside its timeout."""

import asyncio
import os
import random
import signal
import sys
import time

import pytest

from firmware.sim import fleet
from fleetplay import start_playbook, write_inventory, Play
from simsite import SERVICE, SITE, make_site, payloads, until, watcher, with_fleet

SPECS = fleet.generated_specs(40, mac_prefix=(0x24, 0x0A, 0xC6))
IDS = [d for d, _, _ in SPECS]
TIMEOUT = 30  # the task's timeout (configure.yml's default)

# argv: port, the controller's password, site, moment, the broker's pid. Prints
# "ready" once subscribed, then "frozen <topics seen>" when it stopped the broker.
FREEZER = r"""
import os, signal, sys, threading
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
port, password, site, moment, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
seen, done, subscribed = [], threading.Event(), threading.Event()

def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe([("site/%s/_controller/#" % site, 1), ("site/%s/+/+/cfg" % site, 1),
                      ("site/%s/+/+/cfg/ack" % site, 1)])

def on_subscribe(client, userdata, mid, reason_codes, properties):
    if all(rc.value < 0x80 for rc in reason_codes):
        subscribed.set()

def on_message(client, userdata, msg):
    if done.is_set() or ("/_controller/" in msg.topic and any("/_controller/" in t for t in seen)):
        return  # after the moment, or a later sync of the controller's
    seen.append(msg.topic)
    if len(seen) > moment:
        os.kill(pid, signal.SIGSTOP)
        done.set()

c = paho.Client(CallbackAPIVersion.VERSION2, client_id="freezer", protocol=paho.MQTTv311)
c.username_pw_set("controller", password)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port)
c.loop_start()
if not subscribed.wait(10):
    sys.exit("not subscribed")
print("ready", flush=True)
done.wait()
print("frozen " + " ".join(seen), flush=True)
os._exit(0)
"""


ATTEMPTS = 4  # a push the restart missed is followed by one whose moment is earlier


@pytest.mark.parametrize("seed", [int(os.environ.get("CONFIG_RESTART_SEED", "22")), 5, 11])
def test_a_broker_restart_during_a_push_ends_with_every_device_confirmed(broker, tmp_path, seed):
    """Up to ATTEMPTS pushes, each of a new setting, each with a restart at a
    random moment, until one restart lands inside its push: on a loaded
    machine the broker can pass all 40 acknowledgements before the freezer is
    scheduled, so that push is over first (it reports no outage, and it must
    still be right); the next one's moment is then earlier. Every push must
    end with every device confirmed."""
    rng = random.Random(seed)
    site = make_site(broker, tmp_path, devices=SPECS)
    sims = site(time_scale=0.1)  # telemetry every 0.5 s of real time: 80 messages/s, not 400
    inv = write_inventory(tmp_path / "inv", site.broker, SPECS)

    def restart():
        # SIGTERM while it is stopped, then SIGCONT: it takes the signal before
        # it runs again, so it finishes the round of input it had (what passed
        # before the freeze) and stops: the wills go out, the retained messages
        # are saved; nothing that needs another round trip gets through
        os.kill(site.broker.proc.pid, signal.SIGTERM)
        site.broker.stop()
        site.broker.start()

    async def push(setting, earlier=None):
        """One push of publish_interval_s = *setting*, the broker restarted at
        a random moment of it (before *earlier* when given): (Play, moment,
        seconds)."""
        (inv / "group_vars" / "fleet.yml").write_text(f"device_config_fleet: {{publish_interval_s: {setting}}}\n")
        # every device connected (after a restart they come back spread over
        # a few seconds), and its retained status says so
        await until(lambda: all(s.device is not None and s.device.online() for s in sims), 30,
                    "every device connected")
        ctl = watcher(site.broker, "controller", f"site/{SITE}/+/+/status")
        try:
            await until(lambda: all((payloads(ctl, "status", d) or [{}])[-1].get("online") is True for d in IDS), 30,
                        "every device's retained status online")
        finally:
            ctl.close()
        # the moment, as the k-th event of the push that passes the broker: 0 =
        # the controller's snapshot is done, 1..40 = after that many configs,
        # 41..60 = after 1..20 acknowledgements (each device applies and saves
        # its config first, so 40 of them take tens of milliseconds to pass)
        moment = rng.randrange(0, len(IDS) + len(IDS) // 2 + 1) if earlier is None else rng.randrange(0, earlier)
        freezer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FREEZER, str(site.broker.port), SERVICE["controller"], SITE, str(moment),
            str(site.broker.proc.pid), stdout=asyncio.subprocess.PIPE)
        try:
            assert (await asyncio.wait_for(freezer.stdout.readline(), 10)).split() == [b"ready"]
            started = time.monotonic()
            proc = await start_playbook("configure.yml", inv)
            communicate = asyncio.ensure_future(proc.communicate())
            frozen = asyncio.ensure_future(freezer.stdout.readline())
            await until(lambda: frozen.done() or communicate.done(), 60, f"push event {moment}")
        finally:
            if freezer.returncode is None:
                freezer.kill()
            await freezer.wait()
        await asyncio.to_thread(restart)
        out, err = await asyncio.wait_for(communicate, 120)
        return Play(proc.returncode, out.decode(), err.decode()), moment, time.monotonic() - started

    async def scenario():
        pushes = []
        moment = None
        for setting in range(17, 17 + ATTEMPTS):
            play, moment, wall = await push(setting, earlier=moment)
            pushes.append((setting, play, moment, wall))
            r = play.task("Push and confirm") if play.returncode == 0 else {}
            print(f"seed {seed}: publish_interval_s {setting}: broker restart at push event {moment}, "
                  f"outages {r.get('outages')}, play {wall:.1f} s")
            if play.returncode or r.get("outages"):
                break
        return pushes

    pushes = asyncio.run(with_fleet(sims, scenario))
    by_id = {s.device.id: s.device for s in sims}
    for _setting, play, _moment, wall in pushes:
        assert play.returncode == 0, play
        r = play.task("Push and confirm")
        assert {d: v["result"] for d, v in r["devices"].items()} == {d: "applied" for d in IDS}, \
            {d: v for d, v in r["devices"].items() if v["result"] != "applied"}
        assert r["summary"]["applied"] == len(IDS), r["summary"]
        assert wall < TIMEOUT, f"the play took {wall:.1f} s, its push timeout is {TIMEOUT} s"
    assert pushes[-1][1].task("Push and confirm")["outages"], \
        f"no restart of {ATTEMPTS} landed inside its push: the test proved nothing"
    last = pushes[-1][1].task("Push and confirm")
    assert len(last["outages"]) == 1 and last["outages"][0]["back_after_s"] < 10, last["outages"]
    for d in IDS:
        assert by_id[d].config["version"] == last["devices"][d]["version"], d
        assert by_id[d].config["publish_interval_s"] == pushes[-1][0], d

"""Rotating device MQTT passwords over the air end to end: the real
ansible-playbook (playbooks/rotate.yml, one phase at a time by its tags)
against a real Mosquitto configured by the mosquitto role's own
mosquitto.conf (per-listener password files, the next listener), and
simulated devices running the firmware's own code (rotate.py, control.py).

Between the phases the test does what the play's mosquitto role does on a
site controller (it cannot run here): new password files from the secrets
directory, then SIGHUP (RoleBroker.reload_passwords). That the role's
template puts <user>.next on the next listener is tests/unit/test_rotation.py's.
Every wait has a deadline."""

import asyncio
import json
import os

import pytest

from firmware import common
from firmware.sim import fleet
from fleetplay import run_playbook, write_inventory
from mqttc import Client as Paho
from rolebroker import RoleBroker
import testkeys
from simsite import SERVICE, SITE, online, watcher

SPECS = fleet.generated_specs(3, mac_prefix=(0x24, 0x0A, 0xC9))
IDS = [d for d, _, _ in SPECS]


class Site:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.secrets = tmp_path / "secrets" / "mqtt"
        self.secrets.mkdir(parents=True)
        users = dict(SERVICE, **{d: f"pw-{d}" for d in IDS})
        for d in IDS:  # the current passwords, as the mosquitto role generated them
            (self.secrets / d).write_text(users[d] + "\n")
        self.broker = RoleBroker(tmp_path / "broker", SITE, users).start()
        self.inv = write_inventory(tmp_path / "inv", self.broker, SPECS,
                                   group_vars={"fleet": {"mosquitto_rotation_port": self.broker.rotation_port}})
        self.sims = {}
        key = testkeys.site_key(tmp_path / "secrets")
        for device_id, kind, mac in SPECS:
            root = fleet.provision(str(tmp_path / "sim"), device_id, kind, mac, SITE,
                                   {"host": "127.0.0.1", "port": self.broker.port, "keepalive": 30}, users[device_id],
                                   initial_config=common.kind_config(kind, mac), settings={"watchdog_s": 0},
                                   signing_key=key.public)
            self.sims[device_id] = fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind, time_scale=0.02)
        self.ctl = watcher(self.broker, "controller", f"site/{SITE}/#")

    def secret(self, device, suffix=""):
        return (self.secrets / (device + suffix)).read_text().strip()

    def apply_broker(self):
        """What the play's mosquitto role does: the current passwords on the
        main listeners, <user>.next on the next listener; a reload."""
        users = dict(SERVICE, **{d: self.secret(d) for d in IDS})
        nxt = {d: self.secret(d, ".next") for d in IDS if (self.secrets / (d + ".next")).exists()}
        self.broker.reload_passwords(users, nxt)

    def login(self, device, password, port=None):
        """Whether the broker accepts a CONNECT as *device* with *password*."""
        c = Paho(port or self.broker.port, user=device, password=password)
        try:
            rc = c.connect()
            assert rc is not None, "no CONNACK"
            return not rc.is_failure
        finally:
            c.close()

    def device_file(self, device):
        path = self.sims[device].board.fs.path("rotation.json")
        with open(path) as f:
            return json.load(f)

    def play(self, tags, *extra):
        return run_playbook("rotate.yml", self.inv, "--tags", tags, "-e", "rotate_confirm=true",
                            "-e", "rotate_timeout=15", *extra)

    def close(self):
        self.ctl.close()
        self.broker.stop()


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.close()


async def _acks(site, device):
    return [json.loads(m.payload) for m in site.ctl.messages() if m.topic.endswith(f"/{device}/cmd/ack")]


def test_nothing_happens_without_the_explicit_request(site):
    play = asyncio.run(run_playbook("rotate.yml", site.inv, "--tags", "prepare"))
    assert play.returncode != 0
    assert "Run it with -e rotate_confirm=true" in play.task("Require the explicit request")["msg"]
    assert sorted(p.name for p in site.secrets.iterdir()) == sorted(IDS)


def test_rotation_end_to_end_and_a_device_that_missed_it_keeps_its_old_password(site):
    a, b, away = IDS
    old = {d: site.secret(d) for d in IDS}

    async def scenario():
        for d in (a, b):
            site.sims[d].start()
        try:
            for d in (a, b):
                await online(site.ctl, d, 1, timeout=20)
            prep = await site.play("prepare")
            assert prep.returncode == 0, prep
            new = {d: site.secret(d, ".next") for d in IDS}
            assert all(new[d] != old[d] and len(new[d]) == 32 for d in IDS)
            assert all(old[d] not in prep.stdout + prep.stderr and new[d] not in prep.stdout for d in IDS)
            again = await site.play("prepare", "--check")  # a rerun keeps them
            assert again.task("Make a next password")["changed"] is False
            site.apply_broker()
            await asyncio.sleep(0.3)
            assert site.login(a, new[a], site.broker.rotation_port) and not site.login(a, new[a])

            dry = await site.play("stage,retire", "--check")  # what it would send and retire: nothing happens
            assert dry.task("Send each device its next password")["would_send"] == sorted([a, b]), dry
            assert dry.task("Retire the old password")["retired"] == []  # nobody proved anything yet
            assert await _acks(site, a) == [] and site.secret(a) == old[a]

            play = await site.play("stage,retire")
            assert play.returncode != 0, play  # the last task names the device that missed it
            stage = play.task("Send each device its next password")
            assert stage["devices"][a]["result"] == "proven", stage["devices"]
            assert stage["devices"][b]["result"] == "proven", stage
            assert stage["devices"][away]["result"] == "offline"
            assert stage["missed"] == [away] and stage["proven"] == sorted([a, b])
            retire = play.task("Retire the old password")
            assert retire["retired"] == sorted([a, b]) and retire["missed"] == [away]
            assert away in play.task("Fail when a device missed")["msg"]
            assert all(new[d] not in play.stdout for d in IDS)
            # the proofs came from the next listener: accepted, from the session with the new password
            for d in (a, b):
                [ack] = await _acks(site, d)
                assert ack["result"] == "accepted" and ack["detail"] == f"proven on port {site.broker.rotation_port}"
                assert site.device_file(d)["next"]["password"] == new[d]
            # back on the main listener before the retirement reached the broker: the new password is refused
            # there, and the device falls back to its old one
            for d in (a, b):
                await online(site.ctl, d, 2, timeout=30)
            # the secrets: the new password is the current one for a and b; away keeps its old one and its .next
            assert site.secret(a) == new[a] and not (site.secrets / (a + ".next")).exists()
            assert site.secret(away) == old[away] and site.secret(away, ".next") == new[away]

            site.apply_broker()  # the role's second run: the old passwords are gone from the main listeners
            await asyncio.sleep(0.3)
            assert not site.login(a, old[a]), "the old password still works after retirement"
            assert site.login(a, new[a])
            assert site.login(away, old[away]), "the device that missed the rotation is locked out"

            # the devices reconnect to the main listener with their new password (a broker restart drops them)
            site.broker.stop()  # publishes every device's will: the retained status says offline
            site.broker.start()
            site.ctl.close()
            site.ctl = watcher(site.broker, "controller", f"site/{SITE}/#")
            for d in (a, b):
                await online(site.ctl, d, 1, timeout=60)
                state = site.device_file(d)
                assert state["cur"]["password"] == new[d] and "next" not in state, state
            # the device that was offline comes back, on its old password, until it is rotated or forced
            site.sims[away].start()
            await online(site.ctl, away, 1, timeout=20)
        finally:
            await asyncio.gather(*(s.stop() for s in site.sims.values() if s.board is not None))

    asyncio.run(scenario())


def test_an_unusable_new_password_never_locks_the_device_out(site):
    a = IDS[0]
    old = site.secret(a)

    async def scenario():
        site.sims[a].start()
        try:
            await online(site.ctl, a, 1, timeout=20)
            prep = await site.play("prepare", "--limit", a)
            assert prep.returncode == 0, prep
            # the broker's next listener never learnt the new password (the role did not run)
            play = await site.play("stage,retire", "--limit", a)
            assert play.returncode != 0
            stage = play.task("Send each device its next password")
            r = stage["devices"][a]
            assert r["result"] == "rejected" and "did not work on port" in r["detail"] and "refused" in r["detail"], r
            assert site.secret(a, ".next") not in json.dumps(stage)
            assert play.task("Retire the old password")["missed"] == [a]
            assert site.secret(a) == old
            await online(site.ctl, a, 2, timeout=30)  # back on the main listener with the old password
            # the rejection answered, nothing is left of the rotation on the device
            assert not os.path.exists(site.sims[a].board.fs.path("rotation.json"))
            assert site.login(a, old)
        finally:
            await site.sims[a].stop()

    asyncio.run(scenario())


# --- the site CA ------------------------------------------------------------------------

class TlsSite(Site):
    """The devices on the broker's TLS listener, trusting the old CA; the
    next listener presents a certificate of the next CA (what the site_ca
    role, site_ca_next=true, and the mosquitto role set up), or of *stranger*."""

    def __init__(self, tmp_path, stranger=False):
        import tlsca

        self.tmp = tmp_path
        self.old = tlsca.make_ca_and_server(tmp_path / "old-ca")
        self.new = tlsca.make_ca_and_server(tmp_path / "next-ca")
        self.other = tlsca.make_ca_and_server(tmp_path / "other-ca")
        self.ca_dir = tmp_path / "secrets" / "ca"
        (self.ca_dir / "next").mkdir(parents=True)
        for where, m in ((self.ca_dir, self.old), (self.ca_dir / "next", self.new)):  # the site_ca role's layout
            (where / "ca.crt").write_bytes(m["ca"].read_bytes())
            (where / "ca.key").write_text("stands in for the CA key: the plugin only moves it\n")
        self.secrets = tmp_path / "secrets" / "mqtt"
        self.secrets.mkdir(parents=True)
        users = dict(SERVICE, **{d: f"pw-{d}" for d in IDS})
        self.broker = RoleBroker(tmp_path / "broker", SITE, users, tls=self.old,
                                 rotation_tls=self.other if stranger else self.new).start()
        self.inv = write_inventory(tmp_path / "inv", self.broker, SPECS[:2],
                                   group_vars={"fleet": {"mosquitto_rotation_port": self.broker.rotation_port}})
        key = testkeys.site_key(tmp_path / "secrets")
        self.sims = {}
        for device_id, kind, mac in SPECS[:2]:
            root = fleet.provision(str(tmp_path / "sim"), device_id, kind, mac, SITE,
                                   {"host": "127.0.0.1", "port": self.broker.tls_port, "keepalive": 30, "tls": True},
                                   users[device_id], ca_file=str(self.old["ca"]),
                                   initial_config=common.kind_config(kind, mac), settings={"watchdog_s": 0},
                                   signing_key=key.public)
            self.sims[device_id] = fleet.SimDevice(root, bytes.fromhex(mac.replace(":", "")), kind, time_scale=0.02)
        self.ctl = watcher(self.broker, "controller", f"site/{SITE}/#")

    def restart_broker(self, tls, rotation_tls):
        self.broker.stop()
        self.broker.tls, self.broker.rotation_tls = tls, rotation_tls
        self.broker.start()
        self.ctl.close()
        self.ctl = watcher(self.broker, "controller", f"site/{SITE}/#")

    def board_file(self, device, name):
        with open(self.sims[device].board.fs.path(name), "rb") as f:
            return f.read()

    def play(self, tags, *extra):
        return run_playbook("rotate.yml", self.inv, "--tags", tags, "-e", "rotate_confirm=true", "-e",
                            "rotate_secret=ca", "-e", "rotate_timeout=15", *extra)


@pytest.fixture
def tls_site(tmp_path):
    s = TlsSite(tmp_path, stranger=True)
    yield s
    s.close()


def _fresh_online(site, device, timeout=30):
    async def wait():
        from waits import until
        await until(lambda: any(m.topic.endswith(f"/{device}/status") and not m.retain
                                and json.loads(m.payload).get("online") for m in site.ctl.messages()),
                    timeout, f"{device} online on the main listener")
    return wait()


def test_ca_rotation_proven_on_the_next_listener_never_locks_out_and_promotes_only_with_every_device(tls_site):
    site = tls_site
    a, b = IDS[:2]
    old_ca, new_ca = site.old["ca"].read_bytes(), site.new["ca"].read_bytes()

    async def scenario():
        site.sims[a].start()
        try:
            await online(site.ctl, a, 1, timeout=20)
            # the next listener presents a certificate the new CA did not sign: the proof fails, the device stays
            play = await site.play("stage,retire")
            r = play.task("Send each device its next password")["devices"][a]
            assert r["result"] == "rejected" and "did not work on port" in r["detail"], r
            await online(site.ctl, a, 2, timeout=30)  # back on the main listener, verified with the old CA
            assert site.board_file(a, "ca.crt") == old_ca
            assert (site.ca_dir / "ca.crt").read_bytes() == old_ca  # nothing promoted

            # the next listener as the roles set it up: the next CA's certificate
            site.restart_broker(site.old, site.new)
            await _fresh_online(site, a)
            play = await site.play("stage,retire")
            stage = play.task("Send each device its next password")
            assert stage["devices"][a]["result"] == "proven" and stage["devices"][b]["result"] == "offline", stage
            retire = play.task("Retire the old password")
            assert retire["missed"] == [b] and retire["changed"] is False and "not promoted" in retire["msg"]
            assert (site.ca_dir / "ca.crt").read_bytes() == old_ca, "promoted while a device had not proved it"

            site.sims[b].start()
            await online(site.ctl, b, 1, timeout=20)
            play = await site.play("stage,retire")
            assert play.returncode == 0, play
            stage = play.task("Send each device its next password")
            assert stage["devices"][a]["result"] == "skipped" and stage["devices"][b]["result"] == "proven"
            retire = play.task("Retire the old password")
            assert retire["retired"] == sorted([a, b]) and retire["changed"] is True
            assert (site.ca_dir / "ca.crt").read_bytes() == new_ca and not (site.ca_dir / "next").exists()
            assert (site.ca_dir / "previous").is_dir()
            for d in (a, b):
                assert site.board_file(d, "ca.crt") == old_ca  # still trusts the old CA: the main listener has it

            # retirement reaches the broker: the main listeners' certificate is the new CA's
            site.restart_broker(site.new, site.new)
            for d in (a, b):
                await _fresh_online(site, d)
            await asyncio.sleep(0.5)
        finally:
            await asyncio.gather(*(s.stop() for s in site.sims.values()))
        for d in (a, b):
            assert site.board_file(d, "ca.crt") == new_ca, "the old CA is still on the device"
            state = site.device_file(d)
            assert state["cur"]["ca"] == "ca.crt" and "next" not in state, state

    asyncio.run(scenario())

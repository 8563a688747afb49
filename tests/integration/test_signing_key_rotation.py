"""Rotating the site's OTA signing key end to end: the real ansible-playbook
(playbooks/signing_key.yml) against a real Mosquitto with the mosquitto
role's ACL. The devices are stand-ins in most tests (the last one runs the
firmware's own code): MQTT sessions with each
device's own credentials that publish a retained online status and answer
each signing_key command on cmd/ack as the contract says a device will,
checking the signature with the key they hold (otasign.verify_handover
over contract.key_rotation_message) and then holding the new key.
Every wait has a deadline."""

import asyncio
import json
import os

import pytest

import contract
import otasign
import testkeys
from firmware.sim import fleet
from fleetplay import run_playbook, write_inventory
from mqttc import Client as Paho
from simsite import SITE, make_site

SPECS = fleet.generated_specs(3, mac_prefix=(0x24, 0x0A, 0xC7))
IDS = [d for d, _, _ in SPECS]


class StandInDevice:
    """What the contract asks of a device for signing_key: verify with the
    key it holds, take the new key, answer accepted; else rejected with why."""

    def __init__(self, broker, device_id, holds, online=True):
        self.id, self.holds, self.commands = device_id, holds, []
        self.base = contract.base_topic(SITE, device_id)
        self.c = Paho(broker.port, user=device_id, password=f"pw-{device_id}")
        self.c.client.on_message = self._on_message
        self.c.connect_ok()
        assert self.c.subscribe(self.base + "cmd", 1) == [1]
        self.set_online(online)

    def set_online(self, online):
        self.c.publish(self.base + "status", json.dumps({"online": online, "fw": "0.2.0"}), retain=True)

    def _on_message(self, client, userdata, msg):
        cmd = json.loads(msg.payload)
        self.commands.append(cmd)
        cmd_id, name = contract.check_command(cmd)
        key, signature = contract.check_signing_key_command(cmd)
        if key == self.holds or otasign.verify_handover(self.holds, key, signature):
            self.holds = key
            ack = contract.cmd_ack(cmd_id, name, "accepted")
        else:
            ack = contract.cmd_ack(cmd_id, name, "rejected", "the signature does not verify with the key this device holds")
        client.publish(self.base + "cmd/ack", json.dumps(ack), qos=1)

    def close(self):
        self.c.close()


@pytest.fixture
def rotation_site(broker, tmp_path):
    site = make_site(broker, tmp_path, devices=SPECS)  # site.key: <tmp>/secrets/signing/current.*
    inv = write_inventory(tmp_path / "inv", site.broker, SPECS)
    devices = []

    def device(device_id, holds=None, online=True):
        d = StandInDevice(site.broker, device_id, holds or site.key.public, online)
        devices.append(d)
        return d

    site.device, site.inv, site.signing = device, inv, tmp_path / "secrets" / "signing"
    yield site
    for d in devices:
        d.close()


def rotate(site, *args):
    return asyncio.run(run_playbook("signing_key.yml", site.inv, "-e", "signing_key_timeout=10", *args))


def test_nothing_happens_without_the_explicit_request(rotation_site):
    play = rotate(rotation_site)
    assert play.returncode != 0
    assert "Run it with -e signing_key_rotate=true" in play.task("Require the explicit request")["msg"]
    assert sorted(os.listdir(rotation_site.signing)) == ["current.key", "current.pub"]


def test_every_device_is_handed_over_with_the_old_keys_signature_then_the_key_is_promoted(rotation_site):
    old = rotation_site.key.public
    devices = [rotation_site.device(d) for d in IDS]
    play = rotate(rotation_site, "-e", "signing_key_rotate=true")
    assert play.returncode == 0, play
    new = otasign.current_public_key(str(rotation_site.signing))
    assert new != old
    assert otasign.load_pair(str(rotation_site.signing), "previous")[1] == old
    for d in devices:
        [cmd] = d.commands  # exactly one hand-over each
        assert cmd["cmd"] == "signing_key" and cmd["key"] == new
        assert otasign.verify_handover(old, new, cmd["signature"])  # signed by the key the device held
        assert d.holds == new
    r = play.task("Hand every device over")
    assert r["summary"] == {"accepted": 3} and r["all_accepted"] is True and r["changed"] is True
    assert not (rotation_site.signing / "next.key").exists()
    record = rotation_site.signing / "retired" / f"handover-{new[2:18]}.json"
    assert sorted(json.loads(record.read_text())["devices"]) == sorted(IDS)
    # an image signed from now on verifies with what the devices hold
    key, _ = otasign.load_pair(str(rotation_site.signing), "current")
    signature = otasign.sign_entry(key, "app", "1.0.0", 10, "a" * 64, 0)
    assert all(otasign.verify_entry(d.holds, "app", "1.0.0", 10, "a" * 64, 0, signature) for d in devices)


def test_a_rejection_or_an_offline_device_blocks_the_promotion_and_a_rerun_finishes_the_rest(rotation_site):
    old = rotation_site.key.public
    stranger = testkeys.new_key().public  # a board flashed for another site: the signature cannot verify
    good = rotation_site.device(IDS[0])
    wrong = rotation_site.device(IDS[1], holds=stranger)
    away = rotation_site.device(IDS[2], online=False)
    first = rotate(rotation_site, "-e", "signing_key_rotate=true")
    assert first.returncode != 0, first
    r = first.task("Hand every device over")
    assert r["devices"][IDS[0]]["result"] == "accepted"
    assert r["devices"][IDS[1]] == {"result": "rejected",
                                    "detail": "the signature does not verify with the key this device holds"}
    assert r["devices"][IDS[2]]["result"] == "offline" and away.commands == []
    assert "must not be promoted" in r["msg"]
    assert otasign.current_public_key(str(rotation_site.signing)) == old, "promoted with devices left behind"
    nxt = otasign.load_pair(str(rotation_site.signing), "next")[1]
    assert good.holds == nxt
    # fix them: the stranger is re-flashed with this site's key, the offline one comes back
    wrong.holds = old
    away.set_online(True)
    second = rotate(rotation_site, "-e", "signing_key_rotate=true")
    assert second.returncode == 0, second
    r = second.task("Hand every device over")
    assert r["devices"][IDS[0]]["result"] == "skipped" and r["summary"] == {"accepted": 2, "skipped": 1}
    assert len(good.commands) == 1, "a device that accepted was sent the hand-over again"
    assert otasign.current_public_key(str(rotation_site.signing)) == nxt  # the same next key as the first run
    assert good.holds == wrong.holds == away.holds == nxt


def test_check_mode_sends_and_creates_nothing(rotation_site):
    devices = [rotation_site.device(d) for d in IDS]
    play = rotate(rotation_site, "-e", "signing_key_rotate=true", "--check")
    assert play.returncode == 0, play
    r = play.task("Hand every device over")
    assert r["would_send"] == sorted(IDS) and "nothing was sent" in r["msg"]
    assert all(d.commands == [] for d in devices)
    assert sorted(os.listdir(rotation_site.signing)) == ["current.key", "current.pub"]


def test_with_limit_the_devices_are_handed_over_but_the_key_is_not_promoted(rotation_site):
    old = rotation_site.key.public
    devices = [rotation_site.device(d) for d in IDS]
    play = rotate(rotation_site, "-e", "signing_key_rotate=true", "--limit", IDS[0])
    assert play.returncode != 0
    assert "key is not promoted" in " ".join(play.task("Require the whole fleet")["msg"].split())
    assert otasign.current_public_key(str(rotation_site.signing)) == old
    assert len(devices[0].commands) == 1 and devices[1].commands == [] == devices[2].commands
    finish = rotate(rotation_site, "-e", "signing_key_rotate=true")
    assert finish.returncode == 0, finish
    assert len(devices[0].commands) == 1 and all(d.holds == devices[0].holds for d in devices)
    assert otasign.current_public_key(str(rotation_site.signing)) == devices[0].holds


def test_the_firmware_takes_the_new_key_from_the_playbook(broker, tmp_path):
    """The same rotation against simulated devices that run the firmware's
    own code (otasig): each stores the new key, and an update signed by the
    old key is then refused by the device's own check, one signed by the
    new key accepted."""
    from simsite import online, run_for, watcher

    site = make_site(broker, tmp_path, devices=SPECS)
    inv = write_inventory(tmp_path / "inv", site.broker, SPECS)
    sims = site(SPECS)
    old = site.key
    watch = watcher(site.broker, "controller", f"site/{SITE}/+/+/status")
    holder = {}

    async def scenario():
        for device_id in IDS:
            await online(watch, device_id, timeout=20)
        holder["play"] = await run_playbook("signing_key.yml", inv, "-e", "signing_key_timeout=20",
                                            "-e", "signing_key_rotate=true")

    asyncio.run(run_for(sims, 0, during=scenario))
    watch.close()
    play = holder["play"]
    assert play.returncode == 0, play
    new = otasign.current_public_key(str(tmp_path / "secrets" / "signing"))
    assert new != old.public
    assert play.task("Hand every device over")["summary"] == {"accepted": 3}
    import otasig

    image = {"payload": "app", "version": "1.0.0", "size": 10, "sha256": "a" * 64, "url": "http://ctl:8080/a.bin",
             "id": "o-1", "cmd": "ota"}
    new_key, _ = otasign.load_pair(str(tmp_path / "secrets" / "signing"), "current")
    for sim in sims:
        fs = sim.board.fs
        with fs.open("signing.json", "r") as f:
            assert json.loads(f.read())["key"] == new

        class Holder:  # what otasig reads of a device: its filesystem and device.json
            pass

        d = Holder()
        d.fs = fs
        with fs.open("device.json", "r") as f:
            d.settings = json.loads(f.read())
        assert d.settings["signing_key"] == old.public  # flash-time key, superseded by signing.json
        with pytest.raises(otasig.SignatureError, match="does not verify"):
            otasig.check_update(d, old.sign(image))
        signed_new = dict(image, security_version=0,
                          signature=otasign.sign_entry(new_key, "app", "1.0.0", 10, "a" * 64, 0))
        assert otasig.check_update(d, signed_new) == 0

"""The mqtt_fleet inventory plugin end to end: the real ``ansible-inventory``
(the venv's, with the repository's ansible.cfg) against a real Mosquitto
with the mosquitto role's real ACL. Each device publishes its retained
announce and status as its own MQTT user, so the ACL decides what reaches
the controller; malformed and forged messages come from devices that may
write those topics."""

import asyncio
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mqttc import Client as Paho
from roleacl import render_acl
from simsite import DEVICES, SERVICE, SITE, WILL, online, payloads, run_for, until, watcher

import contract
import identity
import testkeys
from waits import wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent

# devices of the hand-made site: (kind, mac, fw, status); status None: announce only
GOOD = [("psu", "24:0a:c4:00:00:01", "1.4.0", "online"), ("psu", "24:0a:c4:00:00:02", "1.4.0", "online"),
        ("oven", "24:0a:c4:00:00:03", "1.5.0-rc.1", "online"), ("env", "24:0a:c4:00:00:04", "1.4.0", "offline"),
        ("fan", "24:0a:c4:00:00:05", "1.3.2", None)]
# devices whose own retained messages break the contract: (kind, mac, channel, payload maker, reason)
BAD = [
    ("mixer", "24:0a:c4:00:01:01", "announce", lambda d, k, m: b"\x00garbage", "payload is not JSON"),
    ("mixer", "24:0a:c4:00:01:02", "status", lambda d, k, m: b'{"online": "yes"}',
     "status online 'yes' is not true or false"),
    ("mixer", "24:0a:c4:00:01:03", "announce",
     lambda d, k, m: announce(d, k, "24:0a:c4:00:00:01", "1.4.0"), "a foreign or forged device"),
    ("mixer", "24:0a:c4:00:01:04", "announce",
     lambda d, k, m: announce(identity.device_id("psu", "24:0a:c4:00:00:01"), "psu", "24:0a:c4:00:00:01", "1.4.0"),
     "differs from its topic's"),
    ("mixer", "24:0a:c4:00:01:05", "status", lambda d, k, m: b"[true]", "payload is not a JSON object but list"),
]


def announce(device_id, kind, mac, fw, chip="ESP32-D0WD-V3"):
    ip = "10.0.0.%d" % int(mac[-2:], 16)
    return json.dumps({"id": device_id, "kind": kind, "mac": mac, "chip": chip, "fw": fw, "ip": ip,
                       "hostname": device_id + ".local", "metrics": "http://%s:80/metrics" % ip,
                       "reset_cause": "power_on", "sensors": []}).encode()


def status(fw, rssi=-60, buffered=0):
    return json.dumps({"online": True, "fw": fw, "cfg_version": 2, "uptime_s": 42, "rssi": rssi,
                       "free_heap": 90000, "buffered": buffered, "buffer_dropped": 0, "time_synced": True}).encode()


def publish_as(port, device_id, channel, payload, password=None, topic=None):
    """One retained message from the device's own MQTT session."""
    with Paho(port, user=device_id, password=password or "pw-" + device_id).connect_ok() as c:
        c.publish(topic or contract.topic(SITE, device_id, channel), payload, qos=1, retain=True)


def unsafe(value):
    """ansible-inventory marks the plugin's strings untrusted ({"__ansible_unsafe": ...}): the plain values."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: unsafe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsafe(v) for v in value]
    return value


def members(data, group):
    """Every host of *group* and its children."""
    found = set(data.get(group, {}).get("hosts", []))
    for child in data.get(group, {}).get("children", []):
        found |= members(data, child)
    return found


def source(tmp_path, port, name="mqtt_fleet.yml", **options):
    """An inventory directory with one mqtt_fleet source (options as YAML text or values)."""
    directory = tmp_path / ("inv-%d" % len(list(tmp_path.glob("inv-*"))))
    directory.mkdir()
    settings = {"plugin": "edgefleet.site.mqtt_fleet", "site": SITE, "broker_host": "127.0.0.1",
                "broker_port": port, "tls": False, "password": SERVICE["controller"], "timeout": 5}
    settings.update(options)
    lines = []
    for key, value in settings.items():
        if value is None:
            continue
        if isinstance(value, str) and value.startswith("!vault"):
            lines.append("%s: %s" % (key, value))
        else:
            lines.append("%s: %s" % (key, json.dumps(value)))
    (directory / name).write_text("\n".join(lines) + "\n")
    return directory


def ansible_inventory(src, *args, env=None):
    run = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(src), "--list", *args], capture_output=True,
                         text=True, cwd=ROOT, timeout=60,
                         env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                                  **(env or {})))
    data = unsafe(json.loads(run.stdout)) if run.returncode == 0 else None
    return run, data, " ".join(run.stderr.split())  # warnings may wrap


@pytest.fixture
def fleet_site(broker):
    """A broker with the role's real ACL for GOOD and BAD devices, each
    having published its retained messages as itself; returns the broker
    with .ids (kind, mac -> device id)."""
    specs = [(k, m) for k, m, *_ in GOOD + BAD]
    ids = {(k, m): identity.device_id(k, m) for k, m in specs}
    users = dict(SERVICE, **{d: "pw-" + d for d in ids.values()})
    b = broker(users=users, acl=render_acl(SITE, list(ids.values())))
    for kind, mac, fw, state in GOOD:
        device_id = ids[kind, mac]
        publish_as(b.port, device_id, "announce", announce(device_id, kind, mac, fw))
        if state == "online":
            publish_as(b.port, device_id, "status", status(fw, rssi=-75 if kind == "oven" else -55,
                                                            buffered=3 if kind == "oven" else 0))
        elif state == "offline":  # the real will: the session ends without DISCONNECT
            c = Paho(b.port, user=device_id, password="pw-" + device_id)
            c.client.will_set(contract.topic(SITE, device_id, "status"), b'{"online": false}', qos=1, retain=True)
            c.connect_ok()
            c.publish(contract.topic(SITE, device_id, "status"), status(fw), qos=1, retain=True)
            c.client.loop_stop()
            c.client.socket().close()  # power cut: no DISCONNECT
    for kind, mac, channel, make, _ in BAD:
        device_id = ids[kind, mac]
        publish_as(b.port, device_id, channel, make(device_id, kind, mac))
    # the ACL: a device cannot announce in another's name (the broker drops it)
    psu = ids["psu", GOOD[0][1]]
    fan = ids["fan", GOOD[4][1]]
    publish_as(b.port, fan, "announce", announce(psu, "psu", GOOD[0][1], "6.6.6"),
               topic=contract.topic(SITE, psu, "announce"))
    # wait for what the controller would see: the will delivered, every retained message there
    ctl = watcher(b, "controller", f"site/{SITE}/+/+/status")
    env = ids["env", GOOD[3][1]]
    ctl.wait_for(lambda m: m.topic.endswith(env + "/status") and m.payload == b'{"online": false}', 10,
                 "the env device's will")
    ctl.close()
    b.ids = ids
    return b


def test_hosts_vars_and_groups_from_retained_messages(fleet_site, tmp_path):
    ids = fleet_site.ids
    run, data, stderr = ansible_inventory(source(tmp_path, fleet_site.port))
    assert run.returncode == 0, run.stderr
    hostvars = data["_meta"]["hostvars"]
    good = {ids[k, m] for k, m, *_ in GOOD}
    # forged/garbage announces: no host unless the device also has a valid status
    assert set(hostvars) == good, sorted(set(hostvars) ^ good)  # none of BAD's
    psu, oven, env, fan = (ids[k, m] for k, m in [GOOD[0][:2], GOOD[2][:2], GOOD[3][:2], GOOD[4][:2]])
    v = hostvars[psu]
    assert {k: v[k] for k in v if k.startswith("device_") and k not in ("device_announce", "device_status")} == {
        "device_id": psu, "device_kind": "psu", "device_mac": "24:0a:c4:00:00:01", "device_chip": "ESP32-D0WD-V3",
        "device_fw": "1.4.0", "device_ip": "10.0.0.1", "device_online": True, "device_cfg_version": 2,
        "device_uptime_s": 42, "device_rssi": -55, "device_metrics": "http://10.0.0.1:80/metrics",
        "device_offline_reason": None}
    assert v["device_announce"] == json.loads(announce(psu, "psu", "24:0a:c4:00:00:01", "1.4.0"))  # not the fan's
    assert v["device_status"]["free_heap"] == 90000
    assert "ansible_host" not in v
    assert hostvars[env]["device_online"] is False and hostvars[env]["device_status"] == {"online": False}
    assert hostvars[env]["device_fw"] == "1.4.0"  # from the announce: the will has no fw
    assert hostvars[fan]["device_online"] is False and hostvars[fan]["device_status"] == {}
    # groups: fleet > kinds, fw_*, online/offline
    assert set(data["fleet"]["children"]) == {"psu", "oven", "env", "fan"}
    assert members(data, "fleet") == good
    assert members(data, "psu") == {ids[k, m] for k, m, *_ in GOOD if k == "psu"}
    assert members(data, "fw_1_4_0") == {ids[k, m] for k, m, fw, _ in GOOD if fw == "1.4.0"}
    assert members(data, "fw_1_5_0_rc_1") == {oven} and members(data, "fw_1_3_2") == {fan}
    assert members(data, "online") == {ids[k, m] for k, m, _, s in GOOD if s == "online"}
    assert members(data, "offline") == {env, fan}
    # every bad message named with its topic and reason, and no crash
    for kind, mac, channel, _, reason in BAD:
        topic = contract.topic(SITE, ids[kind, mac], channel)
        assert "mqtt_fleet skipped %s: " % topic in stderr, topic
        assert reason in stderr.split("mqtt_fleet skipped %s: " % topic)[1].split("[WARNING]")[0]
    assert "skipped %d messages in all" % len(BAD) not in stderr  # only beyond 20


def test_compose_groups_and_keyed_groups(fleet_site, tmp_path):
    ids = fleet_site.ids
    src = source(tmp_path, fleet_site.port, group="devices",
                 compose={"weak_signal": "device_rssi is not none and device_rssi < -70",
                          "metrics_host": "device_metrics | urlsplit('hostname')"},
                 groups={"buffering": "device_status.buffered | default(0) > 0"},
                 keyed_groups=[{"key": "device_kind", "prefix": "kind"},
                               {"key": "device_status.cfg_version | default('') | string", "prefix": "cfg",
                                "default_value": "none"}],
                 strict=True)
    run, data, stderr = ansible_inventory(src)
    assert run.returncode == 0, run.stderr
    oven = ids["oven", GOOD[2][1]]
    psu = ids["psu", GOOD[0][1]]
    hostvars = data["_meta"]["hostvars"]
    assert hostvars[oven]["weak_signal"] is True and hostvars[psu]["weak_signal"] is False
    assert hostvars[psu]["metrics_host"] == "10.0.0.1"
    assert set(data["devices"]["children"]) == {"psu", "oven", "env", "fan"} and "fleet" not in data
    assert members(data, "buffering") == {oven}
    assert members(data, "kind_psu") == members(data, "psu")
    # the will and a missing status carry no cfg_version: default_value
    assert members(data, "cfg_2") == members(data, "online")
    assert members(data, "cfg_none") == members(data, "offline")


def test_device_data_is_never_a_template(broker, tmp_path):
    kind, mac = "psu", "24:0a:c4:00:00:01"
    device_id = identity.device_id(kind, mac)
    b = broker(users=dict(SERVICE, **{device_id: "pw-" + device_id}), acl=render_acl(SITE, [device_id]))
    publish_as(b.port, device_id, "announce", announce(device_id, kind, mac, "1.0", chip="{{ 6 * 7 }}"))
    src = source(tmp_path, b.port)
    run = subprocess.run([str(BIN / "ansible"), "-i", str(src), device_id, "-m", "ansible.builtin.debug", "-a",
                          "msg={{ device_chip }}"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "msg: '{{ 6 * 7 }}'" in run.stdout and "42" not in run.stdout


def test_more_than_twenty_bad_messages_warn_twenty_then_the_total(broker, tmp_path):
    devices = [identity.device_id("env", "24:0a:c4:00:02:%02x" % i) for i in range(12)]
    b = broker(users=dict(SERVICE, **{d: "pw-" + d for d in devices}), acl=render_acl(SITE, devices))
    for device_id in devices:
        with Paho(b.port, user=device_id, password="pw-" + device_id).connect_ok() as c:
            for channel in ("announce", "status"):
                c.publish(contract.topic(SITE, device_id, channel), b"{not json", qos=1, retain=True)
    run, data, stderr = ansible_inventory(source(tmp_path, b.port))
    assert run.returncode == 0, run.stderr
    assert data["_meta"]["hostvars"] == {}
    assert stderr.count("mqtt_fleet skipped site/") == 20
    assert "mqtt_fleet skipped 24 messages in all (the first 20 are named above)" in stderr


def test_the_real_firmware_announce_and_status(site, tmp_path):
    """The simulated devices (the unchanged firmware app) publish; one loses power."""
    sims = site(time_scale=0.05)
    ctl = watcher(site.broker, "controller", f"site/{SITE}/+/+/status")
    src = source(tmp_path, site.broker.port)
    result = {}

    async def scenario():
        for device_id, _, _ in DEVICES:
            await online(ctl, device_id)
        await sims[2].power_off()  # the broker publishes its will
        await until(lambda: WILL in payloads(ctl, "status", DEVICES[2][0]), 10, "the will")
        result["run"] = await asyncio.to_thread(ansible_inventory, src)

    asyncio.run(run_for(sims, 0, during=scenario))
    ctl.close()
    run, data, stderr = result["run"]
    assert run.returncode == 0, run.stderr
    assert "mqtt_fleet skipped" not in stderr
    hostvars = data["_meta"]["hostvars"]
    assert set(hostvars) == {d for d, _, _ in DEVICES}
    for device_id, kind, mac in DEVICES:
        v = hostvars[device_id]
        assert v["device_kind"] == kind and v["device_mac"] == mac and v["device_id"] == device_id
        assert v["device_fw"] and "fw_" + v["device_fw"].replace(".", "_") in data
        assert v["device_metrics"].startswith("http://") and v["device_announce"]["hostname"] == device_id + ".local"
    on = {d for d, _, _ in DEVICES[:2]}
    assert members(data, "online") == on and members(data, "offline") == {DEVICES[2][0]}
    assert hostvars[DEVICES[2][0]]["device_offline_reason"] == "connection_lost"
    assert {hostvars[d]["device_offline_reason"] for d in on} == {None}
    assert all(hostvars[d]["device_uptime_s"] >= 0 and isinstance(hostvars[d]["device_cfg_version"], int)
               for d in on)


def test_a_device_whose_new_image_never_comes_back_stays_offline_with_the_reason(broker, tmp_path, micropython):
    """The real device app (MicroPython's unix port) takes a signed update,
    leaves its retained status offline with reason ``updating`` and resets
    into an image that never comes back: the fleet inventory keeps it
    offline, with that reason, and on its old version."""
    from unixdev import UnixDevice, app_bundle
    from www import Www

    mac = "24:0a:c4:00:00:31"
    device_id = identity.device_id("psu", mac)
    b = broker(users=dict(SERVICE, **{device_id: "pw-dev"}), acl=render_acl(SITE, [device_id]))
    key = testkeys.TestKey()
    (tmp_path / "www").mkdir()
    www = Www(tmp_path / "www")
    d = UnixDevice(tmp_path / "dev", {"id": device_id, "kind": "psu", "site": SITE, "password": "pw-dev",
                                      "broker": {"host": "127.0.0.1", "port": b.port},
                                      "config": {"publish_interval_s": 1}, "signing_key": key.public_hex},
                   mac, binary=micropython)
    ctl = watcher(b, "controller", f"site/{SITE}/+/+/#")
    try:
        d.start()
        ctl.wait_for(lambda m: m.topic.endswith("/status") and json.loads(m.payload).get("online"), 15, "online")
        d.never_back = True
        artifact = www.publish("app.bin", app_bundle("9.9.9"))
        ctl.publish(contract.topic(SITE, device_id, "cmd"), json.dumps(key.sign_command(
            {"id": "u-1", "cmd": "ota", "payload": "app", "version": "9.9.9", **artifact}, 0)))
        wait_until(lambda: d.exits, 30, "the update's reset")
        run, data, stderr = ansible_inventory(source(tmp_path, b.port))
    finally:
        d.kill()
        ctl.close()
        www.close()
    assert run.returncode == 0, run.stderr
    v = data["_meta"]["hostvars"][device_id]
    assert v["device_online"] is False and v["device_offline_reason"] == "updating", v["device_status"]
    assert v["device_fw"] != "9.9.9" and members(data, "offline") == {device_id}


def test_password_file_and_vault_encrypted_password(broker, tmp_path):
    kind, mac = "psu", "24:0a:c4:00:00:01"
    device_id = identity.device_id(kind, mac)
    b = broker(users=dict(SERVICE, **{device_id: "pw-" + device_id}), acl=render_acl(SITE, [device_id]))
    publish_as(b.port, device_id, "announce", announce(device_id, kind, mac, "1.0"))
    secret = tmp_path / "secrets" / SITE / "mqtt" / "controller"
    secret.parent.mkdir(parents=True)
    secret.write_text(SERVICE["controller"] + "\n")
    run, data, _ = ansible_inventory(source(tmp_path, b.port, password=None, password_file=str(secret)))
    assert run.returncode == 0, run.stderr
    assert list(data["_meta"]["hostvars"]) == [device_id]
    vault_pw = tmp_path / "vault-pw"
    vault_pw.write_text("s3cret-vault\n")
    enc = subprocess.run([str(BIN / "ansible-vault"), "encrypt_string", "--vault-password-file", str(vault_pw),
                          "--name", "password", SERVICE["controller"]], capture_output=True, text=True, check=True,
                         cwd=ROOT, env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
    assert enc.stdout.startswith("password: !vault |")
    src = source(tmp_path, b.port, password=enc.stdout.split(": ", 1)[1].rstrip())
    assert "$ANSIBLE_VAULT;1.1;AES256" in (src / "mqtt_fleet.yml").read_text()
    run, data, _ = ansible_inventory(src, "--vault-password-file", str(vault_pw))
    assert run.returncode == 0, run.stderr
    assert list(data["_meta"]["hostvars"]) == [device_id]


def test_tls_with_the_site_ca(broker, tmp_path):
    from tlsca import make_ca_and_server

    tls = make_ca_and_server(tmp_path / "ca")
    kind, mac = "fan", "24:0a:c4:00:00:05"
    device_id = identity.device_id(kind, mac)
    b = broker(users=dict(SERVICE, **{device_id: "pw-" + device_id}), acl=render_acl(SITE, [device_id]), tls=tls)
    publish_as(b.port, device_id, "announce", announce(device_id, kind, mac, "1.0"))
    run, data, _ = ansible_inventory(source(tmp_path, b.tls_port, tls=None, ca_file=str(tls["ca"])))
    assert run.returncode == 0, run.stderr
    assert list(data["_meta"]["hostvars"]) == [device_id]


def failure(src, *args):
    """ansible-inventory on a source that cannot be parsed: Ansible's own
    behaviour is a warning and an empty inventory; with unparsed_is_failed it fails."""
    run, _, stderr = ansible_inventory(src, *args, env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"})
    assert run.returncode != 0
    assert str(src / "mqtt_fleet.yml") in stderr
    assert "Traceback" not in run.stderr
    return stderr


def test_wrong_password_is_a_clear_error_naming_the_user(broker, tmp_path):
    b = broker(users=SERVICE, acl=render_acl(SITE, []))
    stderr = failure(source(tmp_path, b.port, password="wrong"))
    assert "the broker 127.0.0.1:%d refused user controller: " % b.port in stderr
    stderr = failure(source(tmp_path, b.port, username="telegraf", password="wrong"))
    assert "refused user telegraf" in stderr


def test_unreachable_broker_missing_ca_and_timeout(broker, tmp_path):
    from broker import free_port

    stderr = failure(source(tmp_path, free_port()))
    assert "cannot connect to the broker 127.0.0.1:" in stderr
    stderr = failure(source(tmp_path, 8883, tls=True, ca_file=str(tmp_path / "nope" / "ca.crt")))
    assert "the site CA %s does not exist" % (tmp_path / "nope" / "ca.crt") in stderr
    b = broker(users=SERVICE, acl=render_acl(SITE, []))
    b.pause()  # accepts the TCP connection (the kernel does), answers nothing
    try:
        stderr = failure(source(tmp_path, b.port, timeout=0.5))
    finally:
        b.resume()
    assert "no CONNACK from the broker 127.0.0.1:%d within 0.5 s" % b.port in stderr


def test_a_user_without_the_acl_for_the_snapshot_is_told_why(broker, tmp_path):
    # telegraf may read status but not announce: the broker refuses the subscription
    b = broker(users=SERVICE, acl=render_acl(SITE, []))
    stderr = failure(source(tmp_path, b.port, username="telegraf", password=SERVICE["telegraf"], timeout=2))
    assert "user telegraf needs readwrite on site/%s/_controller/#" % SITE in stderr

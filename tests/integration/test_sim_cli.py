"""python -m firmware.sim as an operator runs it: devices and broker address
from an Ansible inventory, credentials and the site's OTA signing public key
from the secrets directory; stops after --duration or on Ctrl-C (SIGINT),
marking each device offline."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import identity
import testkeys
from mqttc import Client as Paho
from roleacl import render_acl

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEVICES = [("psu", "24:0a:c4:12:34:01"), ("env", "24:0a:c4:12:34:11")]


def make_site(tmp_path, broker):
    ids = [identity.device_id(k, m) for k, m in DEVICES]
    b = broker(users=dict({"controller": "ctl"}, **{i: "pw-" + i for i in ids}), acl=render_acl("cli", ids))
    inv = tmp_path / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    hosts = {"all": {"children": {"controller": {"hosts": {"ctl": {}}},
                                  "fleet": {"hosts": {i: {"device_mac": m} for i, (_, m) in zip(ids, DEVICES)}}}}}
    (inv / "hosts.yml").write_text(json.dumps(hosts))
    (inv / "group_vars" / "all" / "site.yml").write_text(
        json.dumps({"edgefleet_site": "cli", "edgefleet_broker_host": "127.0.0.1", "edgefleet_broker_port": b.port}))
    secrets = tmp_path / "secrets"
    (secrets / "mqtt").mkdir(parents=True)
    for i in ids:
        (secrets / "mqtt" / i).write_text("pw-" + i + "\n")
    testkeys.site_key(secrets)  # <secrets>/signing/current.{key,pub}, as the ota_signing role makes them
    return b, ids, ["--inventory", str(inv), "--secrets", str(secrets), "--state-dir", str(tmp_path / "state")]


def cli(args, **kw):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "firmware.sim", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def last_status(watcher):
    last = {}
    for m in watcher.messages():
        last[m.topic.split("/")[3]] = json.loads(m.payload)["online"]
    return last


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def test_runs_for_duration_and_reports(tmp_path, broker):
    b, ids, args = make_site(tmp_path, broker)
    watcher = Paho(b.port, user="controller", password="ctl").connect_ok()
    watcher.subscribe("site/cli/+/+/status", 1)
    proc = cli(args + ["--duration", "3", "--time-scale", "0.1"])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "running 2 devices" in out and "stopped:" in out
    wait_for(lambda: last_status(watcher) == {i: False for i in ids}, 5,
             "each device to mark itself offline when the simulator stops")
    watcher.close()
    # each device holds the site's public key, as a flashed board does, and nothing of the private key
    public = (tmp_path / "secrets" / "signing" / "current.pub").read_text().strip()
    private = (tmp_path / "secrets" / "signing" / "current.key").read_text()
    for i in ids:
        text = (tmp_path / "state" / i / "device.json").read_text()
        assert json.loads(text)["signing_key"] == public
        assert "PRIVATE" not in text and private not in text


def test_ctrl_c_stops_cleanly(tmp_path, broker):
    b, ids, args = make_site(tmp_path, broker)
    watcher = Paho(b.port, user="controller", password="ctl").connect_ok()
    watcher.subscribe("site/cli/+/+/status", 1)
    proc = cli(args)
    wait_for(lambda: last_status(watcher) == {i: True for i in ids}, 30, "every device online")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "stopped:" in out and "Traceback" not in out
    wait_for(lambda: last_status(watcher) == {i: False for i in ids}, 5, "every device offline after Ctrl-C")
    watcher.close()


def test_too_many_devices_and_missing_credentials_are_refused(tmp_path, broker):
    _b, ids, args = make_site(tmp_path, broker)
    out, _ = cli(args + ["--count", "5"]).communicate(timeout=60)
    assert "--count 5: the inventory" in out and "has only 2 devices" in out
    (tmp_path / "secrets" / "mqtt" / ids[0]).unlink()
    proc = cli(args)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and f"no password for {ids[0]}" in out
    (tmp_path / "secrets" / "signing" / "current.pub").unlink()
    out, _ = cli(args).communicate(timeout=60)
    assert "no OTA signing key in" in out and "current.pub" in out, out


def test_generated_runs_only_the_plugins_devices(tmp_path, broker):
    """--generated leaves out the inventory's named devices (make lab's fleet runs those)."""
    b, ids, args = make_site(tmp_path, broker)
    hosts = json.loads((tmp_path / "inv" / "hosts.yml").read_text())
    hosts["all"]["children"]["fleet"]["hosts"][ids[1]]["device_simulated"] = True
    (tmp_path / "inv" / "hosts.yml").write_text(json.dumps(hosts))
    watcher = Paho(b.port, user="controller", password="ctl").connect_ok()
    watcher.subscribe("site/cli/+/+/status", 1)
    out, _ = cli(args + ["--generated", "--duration", "3", "--time-scale", "0.1"]).communicate(timeout=60)
    assert "running 1 devices" in out, out
    wait_for(lambda: last_status(watcher) == {ids[1]: False}, 5, f"only {ids[1]} to run and stop")
    watcher.close()


def test_device_list_without_ansible_serves_metrics_per_device(tmp_path, broker):
    """--devices: the lab's fleet container has no ansible-inventory; Ansible
    writes the device list, with a /metrics port per device."""
    import urllib.request

    from broker import free_port

    b, ids, args = make_site(tmp_path, broker)
    ports = [free_port() for _ in ids]
    devices = {"site": "cli", "broker_host": "127.0.0.1", "broker_port": b.port,
               "devices": [{"id": i, "kind": k, "mac": m, "metrics_port": p}
                           for i, (k, m), p in zip(ids, DEVICES, ports)]}
    (tmp_path / "devices.json").write_text(json.dumps(devices))
    args = ["--devices", str(tmp_path / "devices.json")] + args[2:]  # no --inventory
    proc = cli(args + ["--duration", "60"])
    try:
        def scraped():
            out = {}
            for i, p in zip(ids, ports):
                try:
                    out[i] = urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=1).read().decode()
                except OSError:
                    return None
            return out
        wait_for(lambda: scraped() and all("edgefleet_mqtt_connected 1" in t for t in scraped().values()), 30,
                 "every device's /metrics, connected")
        for i, text in scraped().items():
            assert f'device_id="{i}"' in text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_a_device_list_entry_that_does_not_match_its_mac_is_refused(tmp_path):
    bad = {"site": "cli", "devices": [{"id": "psu-aaaaaaaa", "kind": "psu", "mac": DEVICES[0][1]}]}
    (tmp_path / "devices.json").write_text(json.dumps(bad))
    proc = cli(["--devices", str(tmp_path / "devices.json"), "--secrets", str(tmp_path)])
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "psu-aaaaaaaa does not match its MAC" in out, out

"""The site's part of the inventory for the playbook tests that flash boards
with playbooks/flash.yml (tools/pylib/plugrun.py writes the station's part):
a controller (never contacted here), the boards as known devices of one kind
with their passwords, plain MQTT on loopback."""

import pathlib

import identity
import plugrun
import yaml


def boards(kind, line):
    """(MACs, device ids) of two boards of *kind*, MACs 24:0a:c4:fe:<line>:01
    and :02 (a *line* of its own per test module)."""
    macs = ["24:0a:c4:fe:%02x:%02x" % (line, i) for i in (1, 2)]
    return macs, [identity.device_id(kind, m) for m in macs]


def plugged(macs):
    """The boards (ROM-protocol peers) for *macs*, for a fixture to yield
    from: stopped after the test."""
    started = plugrun.plug(macs)
    try:
        yield started
    finally:
        for p in started:
            p.stop()


def site_inventory(directory, secrets, kind, boards, host_vars=None):
    """Write the inventory into *directory* for *boards* [(device id, MAC)];
    *host_vars*: {device id: extra host variables}. Returns the directory."""
    directory = pathlib.Path(directory)
    (directory / "group_vars" / "all").mkdir(parents=True)
    devices = {i: dict({"device_mac": m}, **(host_vars or {}).get(i, {})) for i, m in boards}
    hosts = {"all": {"children": {
        "controller": {"hosts": {"ctl01": {"ansible_connection": "local"}}},
        "fleet": {"children": {kind: {"hosts": devices}}}}}}
    (directory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (directory / "group_vars" / "all" / "site.yml").write_text(yaml.safe_dump({
        "edgefleet_site": "plant", "edgefleet_secrets_dir": str(secrets), "edgefleet_broker_host": "127.0.0.1",
        "edgefleet_controller_address": "ctl01.plant.lan",
        "edgefleet_broker_port": 1883, "mosquitto_passwords": {i: "pw-" + i for i, _ in boards}}))
    return directory

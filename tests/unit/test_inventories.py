"""The shipped inventories are consistent: every device host name is the
device id that docs/architecture.md, section 3.1 (device id) derives from its
MAC. The expected ids are computed here from that written rule, independently
of any project code."""

import base64
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def expected_id(kind, mac):
    raw = bytes(int(part, 16) for part in mac.split(":"))
    value = int.from_bytes(hashlib.blake2s(raw, digest_size=5).digest(), "big")
    return kind + "-" + "".join(CROCKFORD[(value >> (35 - 5 * i)) & 31] for i in range(8))


def unsafe(value):
    """ansible-inventory --list wraps values that plugins set as unsafe."""
    return value["__ansible_unsafe"] if isinstance(value, dict) else value


def fleet_hosts(group):
    hosts = dict(group.get("hosts") or {})
    for child in (group.get("children") or {}).values():
        hosts.update(fleet_hosts(child or {}))
    return hosts


INVENTORIES = sorted((ROOT / "inventories").glob("*/hosts.yml"))


@pytest.mark.parametrize("path", INVENTORIES, ids=[p.parent.name for p in INVENTORIES])
def test_device_ids_match_macs(path):
    inv = yaml.safe_load(path.read_text())
    devices = fleet_hosts(inv["all"]["children"]["fleet"])
    assert devices, f"{path}: no devices in group fleet"
    for name, hostvars in devices.items():
        kind = name.split("-")[0]
        assert name == expected_id(kind, hostvars["device_mac"]), f"{path}: {name} does not match its MAC"
    macs = [h["device_mac"].lower() for h in devices.values()]
    assert len(macs) == len(set(macs)), f"{path}: duplicate MACs"


def test_bit_order_agrees_with_rfc4648_base32():
    # A second, independent path: RFC 4648 base32 of the 5 digest bytes is
    # also 8 symbols of 5 bits, most significant first; only the alphabet differs.
    rfc = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    for mac in ("24:0a:c4:12:34:01", "30:ae:a4:07:20:32", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"):
        digest = hashlib.blake2s(bytes(int(p, 16) for p in mac.split(":")), digest_size=5).digest()
        short = base64.b32encode(digest).decode().translate(str.maketrans(rfc, CROCKFORD))
        assert expected_id("psu", mac) == "psu-" + short


@pytest.mark.parametrize("path", INVENTORIES, ids=[p.parent.name for p in INVENTORIES])
def test_inventory_parses_with_ansible(path):
    """ansible-inventory reads the whole inventory (hosts.yml and any plugin
    sources such as the lab's generated sim_fleet): one controller, and every
    fleet host named by the id its MAC gives (computed here independently)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    out = subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-inventory"), "-i", str(path.parent),
                          "--list"], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    inv = json.loads(out.stdout)
    assert len(inv["controller"]["hosts"]) == 1
    fleet = set()
    for child in inv["fleet"]["children"]:
        fleet.update(inv[child]["hosts"])
    assert set(fleet_hosts(yaml.safe_load(path.read_text())["all"]["children"]["fleet"])) <= fleet
    hostvars = inv["_meta"]["hostvars"]
    macs = [unsafe(hostvars[n]["device_mac"]) for n in sorted(fleet)]
    for name, mac in zip(sorted(fleet), macs):
        assert name == expected_id(name.split("-")[0], mac), name
    assert len(macs) == len(set(macs)), "two devices share a MAC"
    controller = inv["controller"]["hosts"][0]
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", hostvars[controller]["edgefleet_site"])


def test_lab_has_a_simulated_fleet_of_200():
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    out = subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-inventory"), "-i",
                          str(ROOT / "inventories" / "lab"), "--list"], capture_output=True, text=True, env=env,
                         cwd=ROOT, check=True)
    hostvars = json.loads(out.stdout)["_meta"]["hostvars"]
    assert sum(1 for v in hostvars.values() if unsafe(v.get("device_simulated")) is True) == 200


@pytest.mark.parametrize("path", INVENTORIES, ids=[p.parent.name for p in INVENTORIES])
def test_secrets_live_outside_the_inventory(path, tmp_path):
    """Ansible parses every file below an inventory directory as inventory, so
    generated passwords kept there would turn into host names. The resolved
    secrets directory must be outside it, and the inventory has no stray hosts."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    bindir = pathlib.Path(sys.executable).parent
    inv = yaml.safe_load(path.read_text())
    controller = next(iter(inv["all"]["children"]["controller"]["hosts"]))
    out = subprocess.run([str(bindir / "ansible"), "-i", str(path.parent), controller, "-m", "ansible.builtin.debug",
                          "-a", "var=edgefleet_secrets_dir"], capture_output=True, text=True, env=env, cwd=ROOT,
                         check=True)
    resolved = pathlib.Path(re.search(r"edgefleet_secrets_dir: (\S+)", out.stdout).group(1)).resolve()
    assert path.parent.resolve() not in [resolved, *resolved.parents], f"{resolved} is inside {path.parent}"
    listing = json.loads(subprocess.run([str(bindir / "ansible-inventory"), "-i", str(path.parent), "--list"],
                                        capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout)
    assert not listing.get("ungrouped", {}).get("hosts"), "hosts outside any group: a stray file was parsed"

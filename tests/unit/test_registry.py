"""plugins/module_utils/registry: new boards join the inventory, known ones
keep their id, and bad input is refused naming the value; the file it
writes is read back by Ansible's own YAML inventory plugin."""

import json
import os
import subprocess
import sys

import identity
import pytest
import registry
import yaml

PSU = identity.device_id("psu", "24:0a:c4:00:00:01")
ENV = identity.device_id("env", "24:0a:c4:00:00:02")


def test_new_boards_are_registered_known_ones_keep_their_id():
    known = {"fan-edez6pps": "24:0a:c4:12:34:31", "lab-controller": ""}
    boards = [{"mac": "24:0A:C4:00:00:01", "kind": "psu", "port": "/dev/edgefleet/slot1"},
              {"mac": "24:0a:c4:12:34:31", "kind": "psu", "port": "/dev/edgefleet/slot2"}]
    devices, result = registry.register({}, known, boards, "2026-11-24")
    assert devices == {PSU: {"mac": "24:0a:c4:00:00:01", "kind": "psu", "registered": "2026-11-24"}}
    assert result == [{"id": PSU, "mac": "24:0a:c4:00:00:01", "kind": "psu", "port": "/dev/edgefleet/slot1", "new": True},
                      {"id": "fan-edez6pps", "mac": "24:0a:c4:12:34:31", "kind": "fan", "port": "/dev/edgefleet/slot2",
                       "new": False}]


def test_render_parse_round_trip_is_deterministic():
    devices, _ = registry.register({}, {}, [{"mac": "24:0a:c4:00:00:02", "kind": "env"},
                                            {"mac": "24:0a:c4:00:00:01", "kind": "psu"}], "2026-11-24")
    text = registry.render(devices)
    assert registry.parse(yaml.safe_load(text), "r.yml") == devices
    assert registry.render(registry.parse(yaml.safe_load(text), "r.yml")) == text
    assert text.index(ENV) < text.index(PSU)


@pytest.mark.parametrize("boards, known, message", [
    ([{"mac": "24:0a:c4:00:00:01", "kind": "PSU", "port": "p1"}], {}, r"boards\[0\] \(port p1\): device kind"),
    ([{"mac": "zz", "kind": "psu", "port": "p1"}], {}, r"boards\[0\] \(port p1\): not a MAC"),
    ([{"mac": "24:0a:c4:00:00:01", "kind": "psu"}], {"x": "nonsense"}, "inventory host x has device_mac 'nonsense'"),
    ([{"mac": "24:0a:c4:00:00:01", "kind": "psu", "port": "p1"}], {PSU: "24:0a:c4:00:00:09"},
     "derives id %s, which inventory host %s already has with MAC 24:0a:c4:00:00:09" % (PSU, PSU)),
])
def test_bad_input_is_refused_naming_the_value(boards, known, message):
    with pytest.raises(registry.RegistryError, match=message):
        registry.register({}, known, boards, "2026-11-24")


@pytest.mark.parametrize("data, message", [
    ({"all": {"hosts": {}}}, "is not a registry file"),
    ({"all": {"children": {"fleet": {"children": {"psu": {"hosts": {PSU: {"device_mac": "24:0a:c4:00:00:02"}}}}}}}},
     "host %s is under kind psu with MAC 24:0a:c4:00:00:02" % PSU),
    ({"all": {"children": {"fleet": {"children": {"env": {"hosts": {PSU: {"device_mac": "24:0a:c4:00:00:01"}}}}}}}},
     "is under kind env"),
])
def test_a_registry_file_not_ours_is_refused(data, message):
    with pytest.raises(registry.RegistryError, match=message):
        registry.parse(data, "inventories/x/registry.yml")


def test_ansible_reads_the_registry_as_part_of_the_inventory(tmp_path):
    """ansible-inventory merges registry.yml with hosts.yml: the new board is a
    fleet host in its kind's group, beside the hand-written devices."""
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    fleet:\n      children:\n        psu:\n          hosts:\n"
        "            psu-ktcyat68: {device_mac: '24:0a:c4:12:34:01'}\n")
    devices, _ = registry.register({}, {"psu-ktcyat68": "24:0a:c4:12:34:01"},
                                   [{"mac": "24:0a:c4:00:00:01", "kind": "psu"}, {"mac": "24:0a:c4:00:00:02", "kind": "env"}],
                                   "2026-11-24")
    (tmp_path / "registry.yml").write_text(registry.render(devices))
    run = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-inventory"), "-i", str(tmp_path), "--list"],
                         capture_output=True, text=True, check=True)
    inv = json.loads(run.stdout)
    assert sorted(inv["psu"]["hosts"]) == sorted(["psu-ktcyat68", PSU]) and inv["env"]["hosts"] == [ENV]
    assert sorted(inv["fleet"]["children"]) == ["env", "psu"]
    assert inv["_meta"]["hostvars"][PSU] == {"device_mac": "24:0a:c4:00:00:01", "device_registered": "2026-11-24"}

"""The device contract (plugins/module_utils: contract, devconfig, identity)
is one source: the firmware, the simulator, the broker's ACL and the
controller-side plugins all take it from there."""

import ast
import pathlib
import subprocess
import sys

import pytest
import yaml

import contract
from firmware import common

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONTRACT_FILES = [ROOT / "plugins" / "module_utils" / f"{m}.py" for m in common.CONTRACT_MODULES]


def test_topics_and_parsing():
    assert contract.topic("lab", "psu-ktcyat68", "cmd/ack") == "site/lab/psu/psu-ktcyat68/cmd/ack"
    assert contract.parse_topic("site/lab/psu/psu-ktcyat68/cfg/ack") == ("lab", "psu", "psu-ktcyat68", "cfg/ack")
    assert contract.parse_topic("site/lab/env/psu-ktcyat68/state") is None  # kind does not match the id
    assert contract.parse_topic("site/lab/psu/psu-ktcyat68/secrets") is None
    with pytest.raises(contract.ContractError, match="unknown channel 'stat'"):
        contract.topic("lab", "psu-ktcyat68", "stat")
    with pytest.raises(contract.ContractError, match="site name"):
        contract.topic("Lab/1", "psu-ktcyat68", "state")


def test_the_brokers_acl_uses_the_contracts_channels():
    internal = yaml.safe_load((ROOT / "roles" / "mosquitto" / "vars" / "main.yml").read_text())
    assert tuple(internal["_mosquitto_device_channels_write"]) == contract.DEVICE_WRITES
    assert tuple(internal["_mosquitto_device_channels_read"]) == contract.DEVICE_READS
    controller = next(u for u in yaml.safe_load((ROOT / "roles" / "mosquitto" / "defaults" / "main.yml").read_text())
                      ["mosquitto_service_users"] if u["name"] == "controller")
    reads = {e["topic"].rsplit("+/+/", 1)[1] for e in controller["acl"] if "read" in e["access"] and "+/+/" in e["topic"]}
    # the controller reads every answer a device gives
    assert {"cfg/ack", "cmd/ack", "ota", "status", "announce"} <= reads
    # and its own sync topic (plugins/module_utils/fleetmqtt.py)
    assert {"access": "readwrite", "topic": "site/{{ mosquitto_site }}/_controller/#"} in controller["acl"]


def test_the_acl_test_helper_renders_the_contracts_channels():
    from roleacl import render_acl

    acl = render_acl("lab", ["psu-ktcyat68"])
    for channel in contract.DEVICE_WRITES:
        assert f"topic write site/lab/psu/psu-ktcyat68/{channel}\n" in acl
    for channel in contract.DEVICE_READS:
        assert f"topic read site/lab/psu/psu-ktcyat68/{channel}\n" in acl


@pytest.mark.parametrize("path", CONTRACT_FILES, ids=[p.stem for p in CONTRACT_FILES])
def test_contract_files_import_nothing(path):
    """They run unchanged on MicroPython and through the collection loader:
    no imports at module level, of siblings or anything else."""
    tree = ast.parse(path.read_text())
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not imports, [ast.dump(n) for n in imports]


def test_controller_side_imports_through_the_in_place_collection():
    """What an action or inventory plugin does: import the contract as
    ansible_collections.edgefleet.site.plugins.module_utils.*, the very files
    the firmware packs."""
    code = ("import sys; sys.path.insert(0, 'collections')\n"
            "from ansible_collections.edgefleet.site.plugins.module_utils import contract, devconfig, identity\n"
            "print(contract.__file__); print(devconfig.__file__); print(identity.device_id('psu', '24:0a:c4:12:34:01'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    first, second, device_id = out.split()
    assert pathlib.Path(first).resolve() == CONTRACT_FILES[0]
    assert pathlib.Path(second).resolve() == CONTRACT_FILES[1]
    assert device_id == "psu-ktcyat68"


@pytest.mark.parametrize("cmd,reason", [
    ({"id": "1", "payload": "app", "version": "2", "url": "http://x/a", "size": 10}, "without sha256"),
    ({"id": "1", "payload": "os", "version": "2", "url": "http://x/a", "size": 10, "sha256": "0" * 64}, "payload"),
    ({"id": "1", "payload": "app", "version": "2", "url": "http://x/a", "size": 0, "sha256": "0" * 64}, "size"),
    ({"id": "1", "payload": "app", "version": "2", "url": "http://x/a", "size": 5, "sha256": "zz"}, "sha256"),
    ({"id": "1", "payload": "app", "version": 2, "url": "http://x/a", "size": 5, "sha256": "0" * 64}, "version"),
    ({"id": "1", "payload": "app", "version": "2", "url": "ftp://x/a", "size": 5, "sha256": "0" * 64}, "url"),
    ({"id": "", "payload": "app", "version": "2", "url": "http://x/a", "size": 5, "sha256": "0" * 64}, "command id"),
    ({"id": "1", "payload": "app", "version": "2", "url": "http://x/a", "size": 5, "sha256": "0" * 64,
      "timeout_s": 0}, "timeout_s"),
])
def test_bad_ota_commands(cmd, reason):
    with pytest.raises(contract.ContractError, match=reason):
        contract.check_ota_command(cmd)


def test_ota_command_round_trip():
    signature = "5a" * 64
    cmd = contract.ota_command("r1-a", "app", "1.2.0", "http://ctl/fw/app-1.2.0.bin", 1024, "AB" * 32, 3, signature, 60)
    assert contract.check_ota_command(cmd) == ("app", "1.2.0", "http://ctl/fw/app-1.2.0.bin", 1024, "ab" * 32, 60)
    assert contract.ota_signed_fields(cmd) == (3, signature)
    for bad in ({"url": "https://ctl/fw/app-1.2.0.bin"}, {"security_version": -1}, {"signature": "5A" * 64}):
        args = dict({"url": "http://ctl/fw/a.bin", "security_version": 3, "signature": signature}, **bad)
        with pytest.raises(contract.ContractError):
            contract.ota_command("r1-a", "app", "1.2.0", args["url"], 1024, "ab" * 32, args["security_version"],
                                 args["signature"])
    assert contract.ota_report("r1-a", "failed", "1.2.0", "x") == {"id": "r1-a", "state": "failed",
                                                                   "version": "1.2.0", "detail": "x"}
    with pytest.raises(contract.ContractError):
        contract.ota_report("r1-a", "done", "1.2.0")


@pytest.mark.parametrize("cmd,reason,cmd_id", [
    ({"id": "c1", "cmd": "selfdestruct"}, "unknown command 'selfdestruct' (known: ota, reboot, signing_key, rotate)", "c1"),
    ({"cmd": "reboot"}, "command id must be a string", None),
    (["reboot"], "must be a JSON object", None),
    ({"id": "x" * 65, "cmd": "reboot"}, "command id", None),
])
def test_commands_are_checked_and_answerable(cmd, reason, cmd_id):
    with pytest.raises(contract.ContractError) as err:
        contract.check_command(cmd)
    assert reason in str(err.value)
    assert contract.command_id_of(cmd) == cmd_id


def test_cmd_ack():
    assert contract.check_command(contract.reboot_command("r-1")) == ("r-1", "reboot")
    assert contract.cmd_ack("r-1", "reboot", "accepted") == {"id": "r-1", "cmd": "reboot", "result": "accepted",
                                                            "detail": None}
    with pytest.raises(contract.ContractError):
        contract.cmd_ack("r-1", "reboot", "ok")

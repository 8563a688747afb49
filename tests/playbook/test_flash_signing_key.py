"""playbooks/flash.yml gives every board the site's OTA signing public key,
and nothing of the private key reaches the flash station or the board: the
real playbook, this machine as the flash station, two ROM-protocol peers as
boards (tools/pylib/rompeer.py) that the inventory already knows, so the
broker role has nothing to do (tools/pylib/plugrun.py stands in the rest).
The key comes from the ota_signing role: created once on the Ansible
controller on the first run, and a key that cannot be used stops the play
before any board is written."""

import json

import otasign
import plugrun

import firmware.image as build
from flashsite import boards, site_inventory

KIND = "env"
MACS, IDS = boards(KIND, 1)


def board_files(peer):
    vfs = build.partition("vfs")
    return build.read_littlefs(bytes(peer.flash[vfs[3]:vfs[3] + vfs[4]]))


def flash(tmp_path, peers, *extra):
    station = plugrun.station_inventory(tmp_path / "station", peers, KIND, 1883)
    inv = tmp_path / "site"
    if not inv.exists():
        site_inventory(inv, tmp_path / "secrets", KIND, list(zip(IDS, MACS)))
    return plugrun.flash_playbook([inv, station], *extra,
                                  env=dict(plugrun.os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json"))


def test_every_board_gets_the_sites_public_key_and_nothing_of_the_private_one(tmp_path, peers):
    rc, out = flash(tmp_path, peers)
    assert rc == 0, out[-6000:]
    signing = tmp_path / "secrets" / "signing"
    public = otasign.current_public_key(str(signing))  # created on the Ansible controller by this first run
    key = otasign.load_private_key(str(signing / "current.key"))
    pem = (signing / "current.key").read_bytes()
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    for peer, device_id in zip(peers, IDS):
        doc = json.loads(board_files(peer)["device.json"])
        assert doc["id"] == device_id and doc["signing_key"] == public
        flash_bytes = bytes(peer.flash)
        assert b"PRIVATE KEY" not in flash_bytes and pem not in flash_bytes and scalar not in flash_bytes
    # what the station was given: the module's arguments, as Ansible recorded them
    result = json.loads(out[out.index("{"):out.rindex("}") + 1])
    flashed = [h for play in result["plays"] for t in play["tasks"] if t["task"]["name"].startswith("Flash every")
               for h in t["hosts"].values()]
    assert flashed and all(h["invocation"]["module_args"]["signing_key"] == public for h in flashed)
    assert "PRIVATE KEY" not in out and pem.decode() not in out
    # a second run: the same key, nothing written
    writes = [sum(1 for c in p.commands() if c.startswith("FLASH")) for p in peers]
    rc, again = flash(tmp_path, peers)
    assert rc == 0, again[-6000:]
    assert otasign.current_public_key(str(signing)) == public
    assert [sum(1 for c in p.commands() if c.startswith("FLASH")) for p in peers] == writes


def test_a_public_key_without_its_private_key_stops_the_play_before_any_board(tmp_path, peers):
    signing = tmp_path / "secrets" / "signing"
    otasign.ensure_key(str(signing))
    (signing / "current.key").unlink()
    rc, out = flash(tmp_path, peers)
    assert rc != 0
    assert "current.pub exists but its private key" in out
    assert not (signing / "current.key").exists(), "a key was generated"
    for peer in peers:
        assert not any(c.startswith("FLASH") for c in peer.commands())

"""playbooks/flash.yml checks flash-time config at the door: a value the
device's own rules (plugins/module_utils/devconfig.py, what the board
applies at boot) would refuse stops the flash before any board is written,
naming the host, the value and the inventory variable. The real playbook,
this machine as the flash station and two ROM-protocol peers as boards
(tools/pylib/rompeer.py) that the inventory already knows."""

import pathlib

import identity
import plugrun
import yaml

from flashsite import boards, site_inventory

KIND = "env"
MACS, IDS = boards(KIND, 2)


def flash_writes(peers):
    return [sum(1 for c in p.commands() if c.startswith("FLASH")) for p in peers]


def run(tmp_path, peers, host_vars=None, station_vars=None, extra=(), secrets=None):
    station = plugrun.station_inventory(tmp_path / "station", peers, KIND, 1883)
    if station_vars:
        hosts = yaml.safe_load((station / "hosts.yml").read_text())
        hosts["all"]["children"]["flash_stations"]["hosts"]["station-test"].update(station_vars)
        (station / "hosts.yml").write_text(yaml.safe_dump(hosts))
    inv = site_inventory(tmp_path / "site", secrets or tmp_path / "secrets", KIND, list(zip(IDS, MACS)), host_vars)
    return plugrun.flash_playbook([inv, station], *extra)


def test_a_host_var_the_device_would_refuse_stops_the_flash_before_any_board_is_written(tmp_path, peers):
    rc, out = run(tmp_path, peers, host_vars={IDS[1]: {"device_flash_config": {"publish_interval_s": 0}}})
    assert rc != 0, out[-4000:]
    assert "device_flash_config (host var of %s)" % IDS[1] in out, out[-4000:]
    assert "publish_interval_s must be between 1 and 3600, got 0" in out
    assert flash_writes(peers) == [0, 0]  # not even the board whose config was fine


def test_a_kind_default_the_device_would_refuse_names_the_station_variable(tmp_path, peers):
    rc, out = run(tmp_path, peers, station_vars={"flash_default_config": {KIND: {"temperature_zones": 9}}})
    assert rc != 0, out[-4000:]
    assert "flash_default_config[%s] (station station-test): temperature_zones must be between 0 and 8, got 9" % KIND \
        in " ".join(out.split()), out[-4000:]
    assert flash_writes(peers) == [0, 0]
    # stopped at the door: no board was even read, nothing registered
    assert not any(p.commands() for p in peers) and not (tmp_path / "station" / "registry.yml").exists()
    # the same inventory with a value the device accepts flashes both
    rc, out = run(tmp_path / "ok", peers, station_vars={"flash_default_config": {KIND: {"temperature_zones": 2}}})
    assert rc == 0, out[-4000:]
    assert all(n > 0 for n in flash_writes(peers))


def test_the_play_keeps_a_used_boards_files_and_says_what_a_factory_reset_would_wipe(tmp_path, peers):
    """flash_factory_reset through the play: check mode and --diff name the
    board whose own files would be wiped, and write nothing; the real run
    wipes them. Without it a re-flash keeps them."""
    import firmware.image as build
    from firmware.sim import fleet

    rc, out = run(tmp_path, peers)
    assert rc == 0, out[-4000:]
    root, _, _ = fleet.boot_from_flash(str(tmp_path / "sim"), bytes(peers[0].flash), identity.parse_mac(MACS[0]))
    (pathlib.Path(root) / "config.json").write_text('{"version": 4}')  # what its app wrote (applied cfg)
    fleet.write_to_flash(root, peers[0].flash)

    def files(peer):
        return build.read_filesystem(bytes(peer.flash))

    secrets = tmp_path / "secrets"  # one site signing key for every run
    rc, out = run(tmp_path / "2", peers, station_vars={"flash_default_config": {KIND: {"temperature_zones": 1}}},
                  secrets=secrets)
    assert rc == 0, out[-4000:]
    assert "config.json" in files(peers[0]) and '"temperature_zones":1' in files(peers[0])["device.json"].decode()
    writes = flash_writes(peers)
    reset = {"flash_factory_reset": True, "flash_default_config": {KIND: {"temperature_zones": 1}}}
    rc, out = run(tmp_path / "check", peers, station_vars=reset, extra=("--check", "--diff"), secrets=secrets)
    assert rc == 0, out[-4000:]
    out = " ".join(out.split())
    assert "%s (MAC %s" % (IDS[0], MACS[0]) in out and "its own files would be wiped (factory reset)" in out, out[-4000:]
    assert "the board's own files are wiped (factory reset)" in out  # --diff
    assert out.count("would be wiped") == 1  # the other board holds its fresh image: nothing of its own
    assert flash_writes(peers) == writes and "config.json" in files(peers[0])
    rc, out = run(tmp_path / "3", peers, station_vars=reset, secrets=secrets)
    assert rc == 0, out[-4000:]
    out = " ".join(out.split())
    assert "its own files wiped (factory reset)" in out
    assert "config.json" not in files(peers[0]) and flash_writes(peers) != writes

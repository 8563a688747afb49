"""The mqtt_fleet inventory plugin's pure logic, without a broker: which
retained announce/status messages become which host variables and groups,
and which are skipped with which reason (the broker side is in
tests/integration/test_mqtt_fleet_inventory.py)."""

import json
import os

import pytest

from ansible_collections.edgefleet.site.plugins.inventory import mqtt_fleet
from ansible_collections.edgefleet.site.plugins.module_utils import fleetmqtt, identity

SITE = "it"
PSU_MAC, OVEN_MAC = "24:0a:c4:12:34:01", "24:0a:c4:12:34:21"
PSU, OVEN = identity.device_id("psu", PSU_MAC), identity.device_id("oven", OVEN_MAC)


def announce(device_id, kind, mac, **over):
    data = {"id": device_id, "kind": kind, "mac": mac, "chip": "ESP32-D0WD-V3", "fw": "1.4.0", "ip": "10.0.0.7",
            "hostname": device_id + ".local", "metrics": "http://10.0.0.7:80/metrics", "reset_cause": "power_on",
            "sensors": ["pzem"]}
    data.update(over)
    return json.dumps(data).encode()


def status(**over):
    data = {"online": True, "fw": "1.4.0", "cfg_version": 3, "uptime_s": 120, "rssi": -61, "free_heap": 91000,
            "buffered": 0, "buffer_dropped": 0, "time_synced": True}
    data.update(over)
    return json.dumps(data).encode()


def msg(device_id, channel, payload):
    return fleetmqtt.Message(device_id, channel, payload, True)


def test_announce_and_status_make_one_host_with_every_var():
    hosts, skipped = mqtt_fleet.fold(SITE, [msg(PSU, "announce", announce(PSU, "psu", PSU_MAC)),
                                            msg(PSU, "status", status())])
    assert skipped == []
    assert hosts == {PSU: {
        "device_id": PSU, "device_kind": "psu", "device_mac": PSU_MAC, "device_chip": "ESP32-D0WD-V3",
        "device_fw": "1.4.0", "device_ip": "10.0.0.7", "device_online": True, "device_cfg_version": 3,
        "device_uptime_s": 120, "device_rssi": -61, "device_metrics": "http://10.0.0.7:80/metrics",
        "device_announce": json.loads(announce(PSU, "psu", PSU_MAC)), "device_status": json.loads(status()),
        "device_offline_reason": None,
    }}
    assert "ansible_host" not in hosts[PSU]


def test_the_will_makes_an_offline_host_whose_fw_comes_from_the_announce():
    hosts, skipped = mqtt_fleet.fold(SITE, [msg(PSU, "status", b'{"online": false}'),
                                            msg(PSU, "announce", announce(PSU, "psu", PSU_MAC, fw="1.3.9"))])
    assert skipped == []
    assert hosts[PSU]["device_online"] is False and hosts[PSU]["device_fw"] == "1.3.9"
    assert hosts[PSU]["device_uptime_s"] is None and hosts[PSU]["device_status"] == {"online": False}
    assert hosts[PSU]["device_offline_reason"] is None  # an old device's will gives no reason


@pytest.mark.parametrize("reason", ["connection_lost", "rebooting", "updating", "shutdown"])
def test_an_offline_status_gives_its_reason_as_a_host_var(reason):
    """A device that said why it went offline (a deliberate reset, an OTA
    whose image never came back, or the broker's will) stays offline with
    that reason; an online one has none."""
    hosts, skipped = mqtt_fleet.fold(SITE, [msg(PSU, "status", json.dumps({"online": False, "reason": reason,
                                                                           "fw": "1.3.9"}).encode()),
                                            msg(OVEN, "status", status(fw="2.0"))])
    assert skipped == []
    assert hosts[PSU]["device_online"] is False and hosts[PSU]["device_offline_reason"] == reason
    assert mqtt_fleet.host_groups(hosts[PSU])[1] == ["fw_1_3_9", "offline"]
    assert hosts[OVEN]["device_offline_reason"] is None


def test_a_device_with_only_one_channel_is_still_a_host():
    hosts, skipped = mqtt_fleet.fold(SITE, [msg(PSU, "announce", announce(PSU, "psu", PSU_MAC)),
                                            msg(OVEN, "status", status(fw="2.0"))])
    assert skipped == []
    assert hosts[PSU]["device_online"] is False and hosts[PSU]["device_status"] == {}
    assert hosts[OVEN]["device_kind"] == "oven" and hosts[OVEN]["device_mac"] is None
    assert hosts[OVEN]["device_fw"] == "2.0" and hosts[OVEN]["device_announce"] == {}


def test_a_non_canonical_mac_is_accepted_and_written_in_the_inventory_form():
    hosts, skipped = mqtt_fleet.fold(SITE, [msg(PSU, "announce", announce(PSU, "psu", "24-0A-C4-12-34-01"))])
    assert skipped == [] and hosts[PSU]["device_mac"] == PSU_MAC


def test_a_later_message_replaces_an_earlier_one_and_an_empty_one_clears_it_silently():
    hosts, skipped = mqtt_fleet.fold(SITE, [
        msg(PSU, "status", status(uptime_s=1)), msg(PSU, "status", status(uptime_s=2)),
        msg(OVEN, "announce", announce(OVEN, "oven", OVEN_MAC)), msg(OVEN, "announce", b""),
        msg("fan-edez6pps", "status", b""),
    ])
    assert skipped == []
    assert hosts[PSU]["device_uptime_s"] == 2
    assert OVEN not in hosts and "fan-edez6pps" not in hosts


FORGED_MAC = "24:0a:c4:12:34:02"  # a real MAC, but of another device id


@pytest.mark.parametrize("device_id,channel,payload,reason", [
    (PSU, "announce", b"\xff\xfe not json", "payload is not JSON"),
    (PSU, "status", b"online", "payload is not JSON"),
    (PSU, "announce", b"[1, 2]", "payload is not a JSON object but list"),
    (PSU, "status", b'"online"', "payload is not a JSON object but str"),
    (PSU, "announce", announce(OVEN, "oven", OVEN_MAC), "announce id 'oven-tvcft64q' differs from its topic's psu-"),
    (PSU, "announce", announce(PSU, "oven", PSU_MAC), "announce kind 'oven' differs from the kind of its id"),
    (PSU, "announce", announce(PSU, "psu", "24:0a:c4:12:34"), "announce mac '24:0a:c4:12:34' is not a MAC"),
    (PSU, "announce", announce(PSU, "psu", 240010012345), "announce mac 240010012345 is not a MAC"),
    (PSU, "announce", announce(PSU, "psu", FORGED_MAC),
     "announce id %s is not the id of its mac %s (that is %s): a foreign or forged device"
     % (PSU, FORGED_MAC, identity.device_id("psu", FORGED_MAC))),
    (PSU, "announce", announce(PSU, "psu", PSU_MAC, fw=14), "announce fw 14 is not a string"),
    ("Psu-ktcyat68", "status", status(), "device kind must be 2-16 of a-z0-9"),
    ("x-ktcyat68", "announce", announce("x-ktcyat68", "x", PSU_MAC), "device kind must be 2-16 of a-z0-9"),
    ("psu-KTCYAT68", "status", status(), "not a device id"),
    (PSU, "status", status(online="yes"), "status online 'yes' is not true or false"),
    (PSU, "status", b'{"online": false, "reason": 7}', "status reason 7 is not a string"),
    (PSU, "status", b"{}", "status online None is not true or false"),
    (PSU, "status", status(fw=1.4), "status fw 1.4 is not a string"),
])
def test_a_message_off_the_contract_is_skipped_with_its_topic_and_reason(device_id, channel, payload, reason):
    hosts, skipped = mqtt_fleet.fold(SITE, [msg(device_id, channel, payload)])
    assert hosts == {}
    assert len(skipped) == 1
    topic, why = skipped[0]
    assert topic == "site/%s/%s/%s/%s" % (SITE, device_id.rpartition("-")[0], device_id, channel)
    assert reason in why


def test_a_skipped_message_leaves_the_devices_good_ones_alone():
    hosts, skipped = mqtt_fleet.fold(SITE, [
        msg(PSU, "announce", announce(PSU, "psu", PSU_MAC)), msg(PSU, "status", status(rssi=-50)),
        msg(PSU, "announce", announce(PSU, "psu", FORGED_MAC)), msg(PSU, "status", b"garbage"),
    ])
    assert [t for t, _ in skipped] == ["site/it/psu/%s/announce" % PSU, "site/it/psu/%s/status" % PSU]
    assert hosts[PSU]["device_mac"] == PSU_MAC and hosts[PSU]["device_rssi"] == -50


def test_other_channels_are_not_this_plugins_business():
    hosts, skipped = mqtt_fleet.fold(SITE, [msg(PSU, "state", b"not json")])
    assert hosts == {} and skipped == []


def test_identity_short8_takes_the_same_value_on_both_blake2s_paths():
    """identity.short8 uses CPython's C BLAKE2s when there is one (the plugin
    checks 10,000 ids); the device and the fallback use the plain-Python one."""
    for i in range(300):
        mac = bytes([0x24, 0x0A, 0xC4, i % 7, i >> 8, i & 255])
        assert identity._digest5(mac) == identity.blake2s(mac, 5)
    for mac in (bytes(6), b"\xff" * 6, os.urandom(6), os.urandom(6)):
        assert identity._digest5(mac) == identity.blake2s(mac, 5)


@pytest.mark.parametrize("fw,group", [
    ("1.4.0", "fw_1_4_0"), ("1.4.0-rc.1+g3e2f", "fw_1_4_0_rc_1_g3e2f"), ("v2_x", "fw_v2_x"),
    ("1.0 beta/ü", "fw_1_0_beta__"),
])
def test_fw_group_replaces_what_a_group_name_cannot_hold(fw, group):
    assert mqtt_fleet.fw_group(fw) == group


def test_host_groups_kind_fw_and_online_state():
    hosts, _ = mqtt_fleet.fold(SITE, [
        msg(PSU, "announce", announce(PSU, "psu", PSU_MAC, fw="1.4.0-rc.1")),
        msg(PSU, "status", status(fw="1.4.0-rc.1")),
        msg(OVEN, "status", b'{"online": false}'),
    ])
    assert mqtt_fleet.host_groups(hosts[PSU]) == ("psu", ["fw_1_4_0_rc_1", "online"])
    assert mqtt_fleet.host_groups(hosts[OVEN]) == ("oven", ["offline"])  # reports no firmware version
    assert mqtt_fleet.host_groups(hosts[OVEN], "devices") == ("oven", ["offline"])


@pytest.mark.parametrize("kind", ["fleet", "online", "offline", "all", "ungrouped"])
def test_a_kind_named_like_another_group_leaves_its_hosts_in_the_parent(kind):
    hostvars = mqtt_fleet.host_vars(kind + "-ktcyat68", kind, None, None, {"online": True})
    assert mqtt_fleet.host_groups(hostvars, "fleet")[0] == "fleet"


def test_skip_warnings_name_the_first_twenty_then_the_total():
    skipped = [("site/it/psu/psu-%08d/status" % i, "status online None is not true or false") for i in range(25)]
    warnings = mqtt_fleet.skip_warnings(skipped)
    assert len(warnings) == 21
    assert warnings[0] == "mqtt_fleet skipped site/it/psu/psu-00000000/status: status online None is not true or false"
    assert "psu-00000019" in warnings[19]
    assert warnings[20] == "mqtt_fleet skipped 25 messages in all (the first 20 are named above)"
    assert len(mqtt_fleet.skip_warnings(skipped[:20])) == 20
    assert mqtt_fleet.skip_warnings([]) == []


OPTIONS = {"site": "it", "broker_host": "127.0.0.1", "broker_port": 1883, "tls": False, "ca_file": None,
           "username": "controller", "password": "pw", "password_file": None, "timeout": 10.0}


def test_connection_settings_from_options(tmp_path):
    assert mqtt_fleet.connection_settings(OPTIONS) == {
        "host": "127.0.0.1", "port": 1883, "username": "controller", "password": "pw", "site": "it", "tls": False,
        "ca_file": None}
    secret = tmp_path / "controller"
    secret.write_text("from-file\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    settings = mqtt_fleet.connection_settings(dict(OPTIONS, password=None, password_file=str(secret), tls=True,
                                                   ca_file=str(ca)))
    assert settings["password"] == "from-file" and settings["tls"] is True and settings["ca_file"] == str(ca)


@pytest.mark.parametrize("over,reason", [
    ({"site": "It/x"}, "site name must be"),
    ({"broker_port": 0}, "broker_port 0 is not a port"),
    ({"tls": True}, "tls needs ca_file"),
    ({"tls": True, "ca_file": "/nonexistent/ca.crt"}, "the site CA /nonexistent/ca.crt does not exist"),
    ({"password": None}, "exactly one of password and password_file"),
    ({"password_file": "/x"}, "exactly one of password and password_file"),
    ({"password": None, "password_file": "/nonexistent/pw"}, "cannot read the password of MQTT user controller"),
    ({"password": ""}, "password of MQTT user controller from password is empty"),
    ({"timeout": 0.0}, "timeout must be positive"),
])
def test_bad_options_name_the_problem(over, reason):
    with pytest.raises(fleetmqtt.FleetMqttError, match=reason):
        mqtt_fleet.connection_settings(dict(OPTIONS, **over))


def test_verify_file_takes_only_mqtt_fleet_files(tmp_path):
    plugin = mqtt_fleet.InventoryModule()
    for name, ok in [("mqtt_fleet.yml", True), ("lab.mqtt_fleet.yaml", True), ("sim_fleet.yml", False),
                     ("mqtt_fleet.json", False)]:
        path = tmp_path / name
        path.write_text("plugin: edgefleet.site.mqtt_fleet\n")
        assert plugin.verify_file(str(path)) is ok, name

"""device_config end to end: the real ansible-playbook (playbooks/configure.yml)
runs the action plugin against a real Mosquitto with the mosquitto role's
ACL, while simulated devices (the unchanged firmware app) apply or refuse
the config. Every wait has a deadline."""

import asyncio
import json

from fleetplay import run_playbook, write_inventory
from simsite import DEVICES, SITE, WILL, online, payloads, topic, until, watcher, with_fleet
from mqttc import Client as Paho

PSU, OVEN, ENV = (d for d, _, _ in DEVICES)


def configs_seen(client):
    return [json.loads(m.payload) for m in client.messages() if m.topic.endswith("/cfg") and m.payload]


async def all_online(ctl):
    for d, _, _ in DEVICES:
        await online(ctl, d)


def test_config_is_applied_confirmed_and_not_sent_again(site, tmp_path):
    sims = site()
    inv = write_inventory(tmp_path / "inv", site.broker, DEVICES,
                          group_vars={"fleet": {"device_config_fleet": {"publish_interval_s": 10}},
                                      "oven": {"device_config_kind": {"setpoint_c": 200}}},
                          host_vars={OVEN: {"device_config": {"setpoint_c": 230}}})
    ctl = watcher(site.broker, "controller", f"site/{SITE}/+/+/status")

    async def scenario():
        await all_online(ctl)
        first = await run_playbook("configure.yml", inv)
        after_first.update({s.device.id: dict(s.device.config) for s in sims})
        cfg_watch = watcher(site.broker, "controller", f"site/{SITE}/+/+/cfg")
        await asyncio.sleep(0.5)  # the retained configs arrive now
        retained = len(configs_seen(cfg_watch))
        second = await run_playbook("configure.yml", inv)
        await asyncio.sleep(0.5)
        resent = len(configs_seen(cfg_watch)) - retained
        (inv / "group_vars" / "fleet.yml").write_text("device_config_fleet: {publish_interval_s: 20}\n")
        third = await run_playbook("configure.yml", inv)
        cfg_watch.close()
        return first, second, third, retained, resent

    after_first = {}
    first, second, third, retained, resent = asyncio.run(with_fleet(sims, scenario))
    assert first.returncode == 0, first
    r1 = first.task("Push and confirm")
    assert r1["changed"] is True
    assert {d: v["result"] for d, v in r1["devices"].items()} == {PSU: "applied", OVEN: "applied", ENV: "applied"}
    assert all(v["changed"] for v in r1["devices"].values())
    assert after_first[OVEN]["setpoint_c"] == 230  # host var over the kind's group var
    assert after_first[PSU]["publish_interval_s"] == 10 and after_first[OVEN]["publish_interval_s"] == 10
    v1 = r1["devices"][PSU]["version"]
    assert all(after_first[d]["version"] == r1["devices"][d]["version"] for d in after_first)
    assert retained == 3

    assert second.returncode == 0, second
    r2 = second.task("Push and confirm")
    assert r2["changed"] is False, r2
    assert {v["result"] for v in r2["devices"].values()} == {"unchanged"}
    assert not any(v["sent"] for v in r2["devices"].values())
    assert resent == 0, "an unchanged config was published again"

    assert third.returncode == 0, third
    r3 = third.task("Push and confirm")
    assert r3["changed"] is True and r3["devices"][PSU]["version"] > v1
    by_id = {s.device.id: s.device for s in sims}
    assert by_id[PSU].config["publish_interval_s"] == 20
    assert by_id[OVEN].config["setpoint_c"] == 230, "the whole desired state is sent, not a patch"


def test_a_rejected_config_is_reported_with_the_devices_reason(site, tmp_path):
    """sample_interval_s 20 passes the controller's check (no publish_interval_s
    in the desired config to compare with), but the device compares it with
    its own publish interval (5 s) and refuses the whole config."""
    sims = site()
    inv = write_inventory(tmp_path / "inv", site.broker, DEVICES,
                          host_vars={ENV: {"device_config": {"sample_interval_s": 20}}})
    ctl = watcher(site.broker, "controller", f"site/{SITE}/+/+/status")

    async def scenario():
        await all_online(ctl)
        strict = await run_playbook("configure.yml", inv)
        tolerant = await run_playbook("configure.yml", inv, "-e", "configure_max_failures=1")
        return strict, tolerant

    strict, tolerant = asyncio.run(with_fleet(sims, scenario))
    assert strict.returncode != 0, strict
    r = strict.task("Push and confirm")
    assert r["failed"] is True and ENV in r["msg"]
    assert r["devices"][ENV]["result"] == "rejected"
    assert "sample_interval_s (20) must not exceed publish_interval_s (5.0)" in r["devices"][ENV]["detail"]
    # nothing desired for them and nothing ever sent: their flash-time config stands
    assert r["devices"][PSU]["result"] == r["devices"][OVEN]["result"] == "unchanged"
    env = next(s.device for s in sims if s.device.id == ENV)
    assert env.config["sample_interval_s"] == 1.0, "a rejected config must not be applied"
    assert tolerant.returncode == 0, tolerant
    assert tolerant.task("Push and confirm")["devices"][ENV]["result"] == "rejected"


def test_offline_devices_are_reported_and_take_the_config_when_back(site, tmp_path):
    sims = site()
    inv = write_inventory(tmp_path / "inv", site.broker, DEVICES,
                          group_vars={"fleet": {"device_config_fleet": {"publish_interval_s": 15}}})
    ctl = watcher(site.broker, "controller", f"site/{SITE}/+/+/status")
    psu = sims[0]  # the simulated devices come in DEVICES order

    async def scenario():
        await all_online(ctl)
        await psu.power_off()  # a power cut: the broker publishes its will (online: false)
        await until(lambda: payloads(ctl, "status", PSU)[-1] == WILL, 10, "psu offline")
        play = await run_playbook("configure.yml", inv)
        psu.start()
        await online(ctl, PSU, count=2)
        await until(lambda: psu.device is not None and psu.device.config["publish_interval_s"] == 15, 10,
                    "the retained config applied after the device came back")
        return play

    play = asyncio.run(with_fleet(sims, scenario))
    assert play.returncode == 0, play
    r = play.task("Push and confirm")
    assert r["devices"][PSU]["result"] == "offline" and r["devices"][PSU]["sent"] is True
    assert r["devices"][OVEN]["result"] == "applied"
    assert r["summary"]["offline"] == 1


def test_check_mode_publishes_nothing_and_diffs_desired_against_reported(site, tmp_path):
    sims = site()
    inv = write_inventory(tmp_path / "inv", site.broker, DEVICES,
                          host_vars={OVEN: {"device_config": {"setpoint_c": 240}}})
    ctl = watcher(site.broker, "controller", f"site/{SITE}/+/+/status")
    # each device's own session sees everything that reaches its cfg and cmd
    listeners = [watcher(site.broker, d, topic(d, "cfg"), password=f"pw-{d}") for d, _, _ in DEVICES]
    for c, (d, _, _) in zip(listeners, DEVICES):
        assert c.subscribe(topic(d, "cmd"), 1) == [1]

    async def scenario():
        await all_online(ctl)
        play = await run_playbook("configure.yml", inv, "--check", "--diff")
        await asyncio.sleep(0.5)
        return play

    play = asyncio.run(with_fleet(sims, scenario))
    assert play.returncode == 0, play
    r = play.task("Push and confirm")
    assert r["changed"] is True and r["would_change"] == [OVEN]
    assert r["devices"][PSU]["result"] == "unchanged"  # nothing desired, nothing sent before
    assert r["devices"][OVEN]["result"] == "would_change" and r["devices"][OVEN]["reported_version"] == 0
    diffs = {d["after_header"].split()[0]: d for d in r["diff"]}
    assert '"setpoint_c": 240' in diffs[OVEN]["after"]
    assert diffs[OVEN]["before"] == "{}\n"  # version 0: nothing applied over the flash-time config
    for c in listeners:
        assert c.messages() == [], f"check mode published: {[m.topic for m in c.messages()]}"
    assert all(s.device.config["version"] == 0 for s in sims)


def test_a_bad_setting_in_inventory_stops_the_run_before_anything_is_published(site, tmp_path):
    sims = site()
    inv = write_inventory(tmp_path / "inv", site.broker, DEVICES,
                          group_vars={"fleet": {"device_config_fleet": {"publish_interval_s": 10}}},
                          host_vars={PSU: {"device_config": {"publish_intervall_s": 10}},
                                     OVEN: {"device_config": {"setpoint_c": 999}}})
    cfg_watch = Paho(site.broker.port, user="controller", password="ctl-pw").connect_ok()
    assert cfg_watch.subscribe(f"site/{SITE}/+/+/cfg", 1) == [1]

    async def scenario():
        return await run_playbook("configure.yml", inv)

    play = asyncio.run(with_fleet(sims, scenario))
    assert play.returncode != 0
    msg = play.task("Push and confirm")["msg"]
    assert "nothing was published" in msg
    assert f"{PSU}: unknown setting(s): publish_intervall_s" in msg and "(from device_config)" in msg
    assert f"{OVEN}: setpoint_c must be between -40 and 400, got 999" in msg
    assert configs_seen(cfg_watch) == []


def test_configure_runs_on_the_fleet_the_broker_knows(site, tmp_path):
    """playbooks/configure.yml with the mqtt_fleet inventory plugin instead of
    a static host list: hosts from the devices' retained announcements, site
    variables and desired config from the inventory directory's group_vars."""
    sims = site()
    inv = write_inventory(tmp_path / "inv", site.broker, [],
                          group_vars={"fleet": {"device_config_fleet": {"publish_interval_s": 12}}})
    (inv / "hosts.yml").unlink()
    (inv / "mqtt_fleet.yml").write_text(
        f"plugin: edgefleet.site.mqtt_fleet\nsite: {SITE}\nbroker_host: 127.0.0.1\nbroker_port: {site.broker.port}\n"
        "tls: false\npassword: ctl-pw\n")
    ctl = watcher(site.broker, "controller", f"site/{SITE}/+/+/status")

    async def scenario():
        await all_online(ctl)
        return await run_playbook("configure.yml", inv)

    play = asyncio.run(with_fleet(sims, scenario))
    assert play.returncode == 0, play
    r = play.task("Push and confirm")
    assert sorted(r["devices"]) == sorted(d for d, _, _ in DEVICES)
    assert {v["result"] for v in r["devices"].values()} == {"applied"}
    assert all(s.device.config["publish_interval_s"] == 12 for s in sims)

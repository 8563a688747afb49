"""ota_rollout end to end: the real ansible-playbook (playbooks/ota.yml) runs
the action plugin against a real Mosquitto with the mosquitto role's ACL and
a real HTTP server, while simulated devices (the unchanged firmware app with
its real OTA, self-test and rollback) update, fail or roll back through the
simulator's fault injection. Every image is signed with the site key of the
test's secrets directory (tools/pylib/testkeys), which the rollout checks
before it commands anyone. Every wait has a deadline."""

import asyncio
import json
import os
import re
import signal
import time

import pytest

import ota
import otasign
import rollout
import testkeys
from firmware.sim import fleet
from fleetplay import run_playbook, start_playbook, write_inventory
from simsite import SITE, make_site, payloads, until, watcher
from rolerender import ROOT, load_file
from www import Www

NEW = "0.9.1"
OTA_FILTERS = load_file(ROOT / "roles" / "ota_server" / "filter_plugins" / "ota_manifest.py")
SPECS = fleet.generated_specs(8, mac_prefix=(0x24, 0x0A, 0xC5))
IDS = [d for d, _, _ in SPECS]


@pytest.fixture
def ota_site(broker, tmp_path):
    return make_site(broker, tmp_path, devices=SPECS)


@pytest.fixture
def site_key(tmp_path):
    """The site signing key in the inventory's secrets directory (<inventory>/../secrets)."""
    return testkeys.site_key(tmp_path / "secrets")


@pytest.fixture
def image(tmp_path, site_key):
    (tmp_path / "www").mkdir()
    server = Www(tmp_path / "www")
    bundle = ota.pack_bundle(NEW, {"device.py": b"# new app\n", "version.txt": NEW.encode()})
    yield site_key.sign(dict(server.publish("app.bundle", bundle), version=NEW, payload="app"))
    server.close()


def inventory(site, tmp_path):
    return write_inventory(tmp_path / "inv", site.broker, SPECS)


def extra(image, rollout_id, **kw):
    """ota.yml's extra vars; image None: none given (ota.yml reads the manifest)."""
    values = dict({"ota_rollout_id": rollout_id, "ota_canary": 1, "ota_waves": [3, "100%"],
                   "ota_soak": 1, "ota_device_timeout": 30, "ota_abort_percent": 30, "ota_abort_min_executed": 3},
                  **kw)
    if image is not None:
        values["ota_image"] = image
    return ["-e", json.dumps(values)]


def plan(rollout_id, waves=(3, "100%"), canary=1):
    return rollout.plan_waves(IDS, rollout_id, canary, list(waves))


def cmd_listeners(site):
    """Each device's own session on its cmd topic (the controller user may
    write cmd, not read it)."""
    return [watcher(site.broker, d, f"site/{SITE}/{d.split('-')[0]}/{d}/cmd", password=f"pw-{d}") for d in IDS]


def commands(listeners):
    """Every ota command the devices' sessions got."""
    return [p for c in listeners for p in payloads(c, "cmd") if isinstance(p, dict) and p.get("cmd") == "ota"]


def assert_signed(cmds, public):
    """Each command is what a device accepts: the contract's checks and a
    signature by the site key over exactly the fields it carries."""
    import contract

    assert cmds
    for cmd in cmds:
        payload, version, url, size, sha256, _ = contract.check_ota_command(cmd)
        security_version, signature = contract.ota_signed_fields(cmd)
        assert url.startswith("http://")
        assert otasign.verify_entry(public, payload, version, size, sha256, security_version, signature), cmd


def started_downloads(ctl):
    """Device id -> how many OTA downloads it started (one per command it took)."""
    counts = {}
    for d in IDS:
        counts[d] = sum(1 for r in payloads(ctl, "ota", d) if r.get("state") == "downloading")
    return counts


async def fleet_running(sims, ctl, scenario):
    tasks = [s.start() for s in sims]
    try:
        await until(lambda: all(any(p.get("online") for p in payloads(ctl, "status", d) if isinstance(p, dict))
                                for d in IDS), 15, "every device online")
        return await scenario()
    finally:
        await asyncio.gather(*(s.stop() for s in sims))
        assert all(t.done() for t in tasks)


def test_rollout_over_three_waves_succeeds_and_a_rerun_commands_nobody(ota_site, image, site_key, tmp_path):
    sims = ota_site()
    inv = inventory(ota_site, tmp_path)
    ctl = watcher(ota_site.broker, "controller", f"site/{SITE}/+/+/status")
    assert ctl.subscribe(f"site/{SITE}/+/+/ota", 1) == [1]
    listeners = cmd_listeners(ota_site)

    async def scenario():
        first = await run_playbook("ota.yml", inv, *extra(image, "r3"))
        second = await run_playbook("ota.yml", inv, *extra(image, "r3"))
        return first, second

    first, second = asyncio.run(fleet_running(sims, ctl, scenario))
    assert first.returncode == 0, first
    r = first.task("Roll out")
    assert [w["size"] for w in r["waves"]] == [1, 3, 4]
    assert [w["devices"] for w in r["waves"]] == plan("r3")
    assert r["summary"] == {"succeeded": 8} and r["aborted"] is None and r["changed"] is True
    assert all(s.device.fw == NEW for s in sims)
    assert "wave 3/3" in first.stdout  # progress printed while it ran
    assert started_downloads(ctl) == {d: 1 for d in IDS}
    assert len(commands(listeners)) == 8
    assert_signed(commands(listeners), site_key.public)
    assert second.returncode == 0, second
    r2 = second.task("Roll out")
    assert r2["changed"] is False and r2["summary"] == {"succeeded": 8}
    assert started_downloads(ctl) == {d: 1 for d in IDS}, "a rerun commanded a device again"


def test_failures_trip_the_abort_in_their_wave_and_later_waves_are_not_commanded(ota_site, image, tmp_path):
    """The second wave's three devices: one gets corrupted downloads (failed),
    one a new app that fails its self-test (rolled back). After the canary,
    a failure among 3 or more executed passes 30%: abort in wave 2; wave 3's
    four devices never get a command (each one's own session on cmd proves it)."""
    waves = plan("ab")
    sims = ota_site()
    by_id = {d: s for (d, _, _), s in zip(SPECS, sims)}
    by_id[waves[1][0]].board.faults.ota_corrupt = True
    by_id[waves[1][1]].board.faults.selftest_fail = True
    inv = inventory(ota_site, tmp_path)
    ctl = watcher(ota_site.broker, "controller", f"site/{SITE}/+/+/status")
    assert ctl.subscribe(f"site/{SITE}/+/+/ota", 1) == [1]
    later = [watcher(ota_site.broker, d, f"site/{SITE}/{d.split('-')[0]}/{d}/cmd", password=f"pw-{d}")
             for d in waves[2]]

    async def scenario():
        return await run_playbook("ota.yml", inv, *extra(image, "ab"))

    play = asyncio.run(fleet_running(sims, ctl, scenario))
    assert play.returncode != 0, play
    r = play.task("Roll out")
    # it trips once 3 have executed: 1 of 3 (33.3%) or 2 of 3-4, whichever order they finish in
    assert r["aborted"]["wave"] == 2  # numbered from 1: the canary is wave 1
    assert re.fullmatch(r"[12] of [34] executed devices failed \((33\.3|66\.7|50\.0)% > 30%\)", r["aborted"]["reason"])
    assert r["devices"][waves[1][0]]["state"] == "failed" and "sha256 mismatch" in r["devices"][waves[1][0]]["detail"]
    assert r["devices"][waves[1][1]]["state"] == "rolled_back"  # a rollback counts as a failure
    assert r["devices"][waves[0][0]]["state"] == "succeeded"
    assert all(r["devices"][d]["state"] == "pending" for d in waves[2])
    for c in later:
        assert c.messages() == [], "a device past the abort was commanded"
    assert all(by_id[d].device.fw != NEW for d in waves[2])
    again = asyncio.run(fleet_running(ota_site(), ctl, lambda: run_playbook("ota.yml", inv, *extra(image, "ab"))))
    assert again.returncode != 0 and "aborted in an earlier run" in again.stdout


def test_a_rollout_killed_mid_wave_resumes_without_commanding_anyone_twice(ota_site, image, tmp_path):
    sims = ota_site()
    inv = inventory(ota_site, tmp_path)
    ctl = watcher(ota_site.broker, "controller", f"site/{SITE}/+/+/status")
    assert ctl.subscribe(f"site/{SITE}/+/+/ota", 1) == [1]
    state_file = rollout.state_path(str(tmp_path / "secrets" / "rollouts"), "kill", image["sha256"])
    waves = plan("kill")

    def commanded():
        try:
            with open(state_file) as f:
                devices = json.load(f)["devices"]
        except (OSError, ValueError):
            return set()
        return {d for d, rec in devices.items() if rec["state"] not in ("pending", "offline")}

    async def scenario():
        proc = await start_playbook("ota.yml", inv, *extra(image, "kill", ota_soak=3), env={"PYTHONUNBUFFERED": "1"})
        # kill it while wave 1 is being updated: commanded, not yet confirmed
        await until(lambda: set(waves[1]) <= commanded(), 60, "wave 1 commanded")
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        killed_with = commanded()
        resumed = await run_playbook("ota.yml", inv, *extra(image, "kill", ota_soak=3))
        return killed_with, resumed

    killed_with, resumed = asyncio.run(fleet_running(sims, ctl, scenario))
    assert set(waves[1]) <= killed_with and not set(waves[2]) & killed_with
    assert resumed.returncode == 0, resumed
    r = resumed.task("Roll out")
    assert r["resumed"] is True and r["summary"] == {"succeeded": 8}, r["devices"]
    assert "resuming from" in resumed.stdout
    assert started_downloads(ctl) == {d: 1 for d in IDS}, "a device was commanded twice"
    assert all(s.device.fw == NEW for s in sims)


def test_check_mode_lists_the_waves_and_commands_nothing(ota_site, image, tmp_path):
    """Also the manifest route: ota.yml finds the image by ota_version in the
    manifest (written by the ota_server role's own filter) at the site
    controller's ota_server_base_url."""
    sims = ota_site()
    base = image["url"].rsplit("/", 1)[0]
    (tmp_path / "www" / "app" / NEW).mkdir(parents=True)
    (tmp_path / "www" / "app.bundle").rename(tmp_path / "www" / "app" / NEW / "app.bundle")
    entries = OTA_FILTERS.edgefleet_ota_entries([{"src": "/build/app.bundle", "version": NEW, "payload": "app"},
                                                 {"src": "/build/old.bundle", "version": "0.9.0", "payload": "app"}],
                                                base, "/srv/ota")
    (tmp_path / "www" / "manifest.json").write_text(OTA_FILTERS.edgefleet_ota_manifest(
        entries, [{"size": image["size"], "sha256": image["sha256"]}, {"size": 1, "sha256": "0" * 64}], base, SITE,
        testkeys.site_key(tmp_path / "secrets").path))
    inv = write_inventory(tmp_path / "inv", ota_site.broker, SPECS, controller={"ota_server_base_url": base})
    ctl = watcher(ota_site.broker, "controller", f"site/{SITE}/+/+/status")
    assert ctl.subscribe(f"site/{SITE}/+/+/ota", 1) == [1]
    listeners = [watcher(ota_site.broker, d, f"site/{SITE}/{d.split('-')[0]}/{d}/cmd", password=f"pw-{d}")
                 for d in IDS]

    async def scenario():
        return await run_playbook("ota.yml", inv, "--check", *extra(None, "chk", ota_version=NEW))

    play = asyncio.run(fleet_running(sims, ctl, scenario))
    assert play.returncode == 0, play
    picked = play.task("Pick the image")["ansible_facts"]["_ota_image"]
    assert (picked["url"], picked["sha256"], picked["version"]) == (image["url"].replace(
        "/app.bundle", f"/app/{NEW}/app.bundle"), image["sha256"], NEW)
    assert (picked["security_version"], picked["signature"]) == (0, image["signature"])
    r = play.task("Roll out")
    assert [w["devices"] for w in r["waves"]] == plan("chk")
    assert "3 wave(s) over 8 device(s) (1, 3, 4)" in r["msg"]
    assert not os.path.exists(r["state_file"])
    for c in listeners:
        assert c.messages() == []


def test_an_inventory_variable_that_does_not_resolve_fails_the_task_by_name(ota_site, image, tmp_path):
    """Before anything is read or commanded: no fleet needs to run."""
    inv = inventory(ota_site, tmp_path)
    play = asyncio.run(run_playbook("ota.yml", inv, "--check", *extra(image, "bad"),
                                    "-e", "edgefleet_secrets_dir={{ no_such_variable }}/x"))
    assert play.returncode != 0, play
    msg = play.task("Roll out")["msg"]
    assert msg.startswith("ota_rollout: inventory variable edgefleet_secrets_dir:") and "no_such_variable" in msg, msg


@pytest.mark.parametrize("tamper, fragment", [
    ("other-key", "does not verify with the site's signing key"),
    ("security_version", "does not verify with the site's signing key"),
    ("size", "does not verify with the site's signing key"),
    ("unsigned", "image app 0.9.1 has no signature"),
    ("no-security-version", "image app 0.9.1 has no security_version"),
])
def test_an_image_the_site_key_did_not_sign_is_refused_before_anyone_is_commanded(ota_site, image, tmp_path,
                                                                                   tamper, fragment):
    """An edited manifest entry, another key's signature, or no signature at
    all: the play fails naming the image, and no device gets a command (each
    one's own session on cmd proves it); no state file is written."""
    bad = dict(image)
    if tamper == "other-key":
        bad = testkeys.new_key().sign(dict(image))
    elif tamper == "security_version":
        bad["security_version"] = 1
    elif tamper == "size":
        bad["size"] += 1
    elif tamper == "unsigned":
        del bad["signature"]
    else:
        del bad["security_version"]
    inv = inventory(ota_site, tmp_path)
    listeners = cmd_listeners(ota_site)
    play = asyncio.run(run_playbook("ota.yml", inv, *extra(bad, "tamper")))
    assert play.returncode != 0, play
    msg = play.task("Roll out")["msg"]
    assert fragment in msg, msg
    if "verify" in fragment:
        assert "nothing was commanded" in msg and str(tmp_path / "secrets" / "signing" / "current.pub") in msg
    for c in listeners:
        assert c.messages() == []
    assert not (tmp_path / "secrets" / "rollouts").exists()


# --- broker restarts, hangs and crash loops: the executor on the real MQTT session --------------------------

def executor(ota_site, image, tmp_path, rid, devices=IDS, **opts):
    """The rollout executor (rolloutrun, what the action plugin runs) on a
    real FleetSession to the test's Mosquitto as the controller user."""
    import fleetmqtt
    import rolloutrun
    from simsite import SERVICE

    session = rolloutrun.fleetmqtt.FleetSession("127.0.0.1", ota_site.broker.port, "controller",
                                                SERVICE["controller"], SITE).connect(5)
    options = dict(rollout_id=rid, device_timeout=60.0, soak=3.0, connect_timeout=5.0, canary=1,
                   max_attempts=3, recommand_after=5.0, outage_grace=30.0, outage_max=60.0)
    options.update(opts)
    rr = rolloutrun.rollout
    run = rolloutrun.RolloutRun(session, options, devices, rr.check_image(image, rid), [3, "100%"],
                                rr.AbortPolicy(30, 3), str(tmp_path / "rollouts" / (rid + ".json")))
    assert fleetmqtt  # the plain import path is on sys.path too
    return run, session


def execute(sims, ctl, run, session, alongside=None):
    """Run the executor *run* in a thread while the simulated fleet runs, and
    *alongside(task)* beside it when given; the wall time it took. The run
    and its session are closed after, whatever happened."""
    async def scenario():
        started = time.monotonic()
        task = asyncio.ensure_future(asyncio.to_thread(run.run))
        if alongside is not None:
            await alongside(task)
        await task
        return time.monotonic() - started

    try:
        return asyncio.run(fleet_running(sims, ctl, scenario))
    finally:
        run.close()
        session.close()


def attempts(result):
    return dict((d, len(rec.get("attempts") or [1])) for d, rec in result["devices"].items())


@pytest.mark.parametrize("seed", [int(os.environ.get("ROLLOUT_RESTART_SEED", "22")), 7])
def test_a_broker_restart_in_every_wave_aborts_nothing_and_every_device_ends_on_the_new_version(
        ota_site, image, tmp_path, seed):
    """A real Mosquitto restarted (SIGTERM: it publishes every client's will,
    then starts again on the same port with its persistence) at a random
    moment of each wave (seeded, printed): every device ends on the new
    version, nothing aborts, each device gets at most max_attempts commands."""
    import random

    rng = random.Random(seed)
    sims = ota_site()
    ctl = watcher(ota_site.broker, "controller", f"site/{SITE}/+/+/status")
    run, session = executor(ota_site, image, tmp_path, "rs%d" % seed)
    restarts = {}

    def restart():
        ota_site.broker.stop()
        ota_site.broker.start()

    async def restarter(task):
        seen = -1
        while not task.done():
            if run.wave is not None and run.wave != seen:
                seen = run.wave
                # a wave lasts its updates (about 1-2 s here) and its 3 s soak
                delay = rng.uniform(0.0, 2.5)
                print("seed %d: wave %d: broker restart %.2f s after the wave started" % (seed, seen + 1, delay))
                await asyncio.sleep(delay)
                if task.done():
                    break
                if run.wave != seen:
                    print("seed %d: wave %d ended first: no restart in it" % (seed, seen + 1))
                    continue
                await asyncio.to_thread(restart)
                restarts[seen + 1] = restarts.get(seen + 1, 0) + 1
            await asyncio.sleep(0.05)

    wall = execute(sims, ctl, run, session, alongside=restarter)
    result = run.report({})
    per_device = attempts(result)
    on_new = sum(1 for s in sims if s.device.fw == NEW)
    print("seed %d: restarts per wave %s, commands per device max %d, on the new version %d/%d, wall %.1f s, "
          "outages %s" % (seed, restarts, max(per_device.values()), on_new, len(sims), wall, result["outages"]))
    assert result["aborted"] is None, result
    assert result["summary"] == {"succeeded": 8}, result["devices"]
    assert on_new == 8
    assert max(per_device.values()) <= 3
    assert sorted(restarts) == [1, 2, 3], restarts
    assert [o["wave"] for o in result["outages"]] == [1, 2, 3]


@pytest.mark.parametrize("fault, detail", [("hang_on", "silent for"), ("crash_on", None)])
def test_a_canary_that_hangs_or_crash_loops_on_the_new_version_fails_inside_its_soak(ota_site, image, tmp_path,
                                                                                      fault, detail):
    """The simulator's fault injection: on the new version the canary's app
    stops dead after 30 device seconds with its connection open (no will
    before 1.5 x keepalive 30 s = 45 s), or crashes after 30 device seconds
    on every boot. Telemetry every 2 device seconds: the controller knows
    it from the status (publish_interval_s) and fails the canary after 2 x 2
    + 5 s of silence, or at its reset, well inside the 40 s soak."""

    sims = ota_site(initial={"publish_interval_s": 2})
    canary = plan("hc")[0][0]
    board = dict(zip(IDS, sims))[canary].board
    setattr(board.faults, fault, NEW)
    ctl = watcher(ota_site.broker, "controller", f"site/{SITE}/+/+/status")
    run, session = executor(ota_site, image, tmp_path, "hc", devices=[canary], soak=40.0)

    took = execute(sims, ctl, run, session)
    rec = run.report({})["devices"][canary]
    print("%s: %s after %.1f s: %s" % (fault, rec["state"], took, rec.get("detail")))
    assert rec["state"] in ("failed", "rolled_back"), rec
    if detail:
        assert detail in rec["detail"], rec
    assert took < 40, "not inside the soak"

"""roles/chrony: the real templates rendered (tools/pylib/rolerender.py) and
checked by Debian's chronyd the way the role checks them (`chronyd -p`),
then served by a real chronyd in the foreground (-x: this machine's clock is
never touched) and asked for the time with the firmware's own SNTP parser;
the metrics writer run against it and its output linted by promtool."""

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest

import sntp
from chronytool import Chronyd, binaries
from rolerender import ROOT, load_file, render, role_vars, value

ROLE = "chrony"
METRICS = ROOT / "roles" / ROLE / "files" / "chrony-metrics"
cidr_problems = load_file(ROOT / "roles" / ROLE / "filter_plugins" / "chrony_allow.py").cidr_problems


def inventory(**overrides):
    ctx = role_vars(ROLE, {"edgefleet_site": "lab", "ansible_facts": {"virtualization_tech_guest": []}})
    ctx.update(overrides)
    return ctx


def conf(tmp_path, **overrides):
    """chrony.conf as the role stages it, its state files under tmp_path."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return render(ROLE, "chrony.conf.j2", inventory(_chrony_state_dir=str(state), **overrides))


def directives(text):
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def parse(tmp_path, text):
    """The role's own check (vars/main.yml _chrony_check_argv) on a staged copy."""
    ctx = inventory(_chrony_staging_dir=str(tmp_path / "staged"))
    argv = value(ctx, "_chrony_check_argv")
    staged = pathlib.Path(argv[-1])
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_text(text)
    assert argv[:3] == ["chronyd", "-p", "-f"]
    return subprocess.run([binaries()[0], *argv[1:]], capture_output=True, text=True, timeout=30)


def udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(port, timeout=2.0):
    """One SNTP query to 127.0.0.1:port: the raw reply, or None when nobody answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(sntp.request(), ("127.0.0.1", port))
        return s.recv(64)
    except socket.timeout:
        return None
    finally:
        s.close()


def metrics(tmp_path, daemon_or_command, upstream):
    out = tmp_path / "edgefleet_chrony.prom"
    command = daemon_or_command if isinstance(daemon_or_command, str) else daemon_or_command.chronyc_command()
    run = subprocess.run([str(METRICS), str(out), str(upstream)], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, CHRONYC=command))
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    if shutil.which("promtool"):
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, number = line.split()
            values[name] = float(number)
    return values


# --- the rendered configuration ----------------------------------------------

def test_defaults_serve_the_private_networks_from_debians_pool_with_a_local_fallback(tmp_path):
    text = conf(tmp_path)
    lines = directives(text)
    assert "pool 2.debian.pool.ntp.org iburst" in lines
    assert not [line for line in lines if line.startswith("server ")]
    assert "local stratum 10" in lines
    assert [line.split()[1] for line in lines if line.startswith("allow ")] == [
        "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    assert "port 123" in lines and "rtcsync" in lines and "makestep 1 3" in lines
    # no directory of files outside the role's control
    assert not [line for line in lines if line.split()[0] in ("confdir", "sourcedir", "include")]
    result = parse(tmp_path, text)
    assert result.returncode == 0, result.stderr


def test_servers_pools_local_and_port_from_the_inventory(tmp_path):
    text = conf(tmp_path, chrony_servers=["ntp1.plant.example", "10.1.0.5 iburst prefer"], chrony_pools=[],
                chrony_local_stratum=0, chrony_allow=["10.20.0.0/16"], chrony_port=1123)
    lines = directives(text)
    assert lines[:2] == ["server ntp1.plant.example iburst", "server 10.1.0.5 iburst prefer"]
    assert not [line for line in lines if line.startswith(("pool ", "local "))]
    assert [line for line in lines if line.startswith("allow ")] == ["allow 10.20.0.0/16"]
    assert "port 1123" in lines
    result = parse(tmp_path, text)
    assert result.returncode == 0, result.stderr


def test_an_air_gapped_site_serves_its_own_clock(tmp_path):
    text = conf(tmp_path, chrony_pools=[], chrony_local_stratum=8)
    lines = directives(text)
    assert not [line for line in lines if line.startswith(("pool ", "server "))]
    assert "local stratum 8" in lines
    assert parse(tmp_path, text).returncode == 0


@pytest.mark.parametrize("breakage,message", [
    ("frobnicate yes\n", "Invalid directive"),
    ("server\n", "Could not parse server directive"),
    ("local stratum 16\n", "Could not parse local directive"),
], ids=["unknown-directive", "server-without-host", "stratum-out-of-range"])
def test_the_check_rejects_a_broken_candidate(tmp_path, breakage, message):
    result = parse(tmp_path, conf(tmp_path) + breakage)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_the_check_does_not_read_allow_so_the_role_does(tmp_path):
    """`chronyd -p` passes a subnet that chronyd refuses at start: the reason
    the role checks chrony_allow itself before anything changes."""
    assert parse(tmp_path, conf(tmp_path, chrony_allow=["10.0.0.0/33"])).returncode == 0
    assert cidr_problems(["10.0.0.0/33"])


@pytest.mark.parametrize("entry,problem", [
    ("10.0.0.0/33", "is not a network"),
    ("192.168.1.10/24", "has host bits set: did you mean 192.168.1.0/24?"),
    ("10.0.0.1", "is not in CIDR form"),
    ("plant/24", "is not a network"),
    (" 10.0.0.0/8", "is not a network"),
    ("10.0.0.0/8\nallow 0.0.0.0/0", "is not a network"),
    (8, "is not in CIDR form"),
])
def test_a_malformed_cidr_is_named(entry, problem):
    found = cidr_problems(["10.0.0.0/8", entry, "fd00::/8"])
    assert len(found) == 1 and str(entry) in found[0] and problem in found[0], found


def test_good_cidrs_pass():
    assert cidr_problems(value(inventory(), "chrony_allow") + ["0.0.0.0/0", "::/0", "10.1.2.3/32"]) == []
    assert cidr_problems("10.0.0.0/8")  # a string, not a list


def test_container_runs_chronyd_without_setting_the_clock(tmp_path):
    ctx = inventory(ansible_facts={"virtualization_tech_guest": ["docker", "container"]})
    assert value(ctx, "chrony_set_system_clock") is False
    assert 'DAEMON_OPTS="-F 1 -x"' in render(ROLE, "chrony.default.j2", ctx)
    dropin = directives(render(ROLE, "systemd-override.conf.j2", ctx))
    assert dropin == ["[Unit]", "ConditionCapability="]
    assert "rtcsync" not in directives(render(ROLE, "chrony.conf.j2", ctx))


def test_a_host_or_vm_sets_its_clock(tmp_path):
    for guest in ([], ["kvm"]):
        ctx = inventory(ansible_facts={"virtualization_tech_guest": guest})
        assert value(ctx, "chrony_set_system_clock") is True
        assert 'DAEMON_OPTS="-F 1"' in render(ROLE, "chrony.default.j2", ctx)
        # Debian's unit as it is: the drop-in has no directive
        assert directives(render(ROLE, "systemd-override.conf.j2", ctx)) == []
    ctx = inventory(ansible_facts={"virtualization_tech_guest": ["container"]}, chrony_set_system_clock=True)
    assert value(ctx, "chrony_set_system_clock") is True  # the inventory decides over the facts


def test_debians_unit_still_has_the_condition_the_dropin_clears():
    unit = pathlib.Path(os.environ.get("EDGEFLEET_CHRONY_ROOT", "/")) / "lib/systemd/system/chrony.service"
    if not unit.exists():
        pytest.skip(f"{unit} is not here")
    assert "ConditionCapability=CAP_SYS_TIME" in unit.read_text()


# --- a real chronyd on the rendered configuration --------------------------------

def serving(tmp_path, name="chronyd", **overrides):
    port = udp_port()
    text = conf(tmp_path, chrony_port=port, **dict({"chrony_pools": [], "chrony_allow": ["127.0.0.0/8"]},
                                                    **overrides))
    return Chronyd(tmp_path, text, name=name), port


def test_the_local_clock_is_served_to_devices(tmp_path):
    daemon, port = serving(tmp_path)
    try:
        daemon.start()
        reply = ask(port)
        assert reply is not None, daemon.log.read_text()
        assert reply[1] == 10  # stratum 10: the local clock
        # the firmware's own parser takes it: the device's clock gets set
        assert abs(sntp.parse(reply) - time.time()) < 5
        values = metrics(tmp_path, daemon, 0)
        assert values["edgefleet_chrony_up"] == 1 and values["edgefleet_chrony_synchronised"] == 1
        assert values["edgefleet_chrony_local_reference"] == 1 and values["edgefleet_chrony_stratum"] == 10
        assert values["edgefleet_chrony_upstream_sources"] == 0
        assert 0 <= values["edgefleet_chrony_reference_age_seconds"] < 5
    finally:
        daemon.stop()


def test_without_a_source_the_devices_are_told_not_synchronised(tmp_path):
    # an upstream that never answers (TEST-NET-1), and no local clock
    daemon, port = serving(tmp_path, chrony_servers=["192.0.2.1"], chrony_local_stratum=0)
    try:
        daemon.start()
        reply = ask(port)
        assert reply is not None and reply[0] >> 6 == 3  # leap indicator: alarm
        with pytest.raises(sntp.SntpError, match="not synchronised"):
            sntp.parse(reply)
        values = metrics(tmp_path, daemon, 1)
        assert values["edgefleet_chrony_up"] == 1 and values["edgefleet_chrony_synchronised"] == 0
        assert values["edgefleet_chrony_upstream_sources"] == 1
        assert "edgefleet_chrony_reference_age_seconds" not in values
    finally:
        daemon.stop()


def test_a_network_not_allowed_gets_no_answer(tmp_path):
    daemon, port = serving(tmp_path, chrony_allow=["10.0.0.0/8"])
    try:
        daemon.start()
        assert ask(port, timeout=1.0) is None
    finally:
        daemon.stop()


def test_synchronised_to_an_upstream_server(tmp_path):
    """A second chronyd, its only source the first one (serving its local
    clock at stratum 8): it serves stratum 9, from upstream, not its own clock."""
    upstream, upstream_port = serving(tmp_path, name="upstream", chrony_local_stratum=8)
    daemon, port = serving(tmp_path, chrony_servers=[f"127.0.0.1 port {upstream_port} iburst minpoll -4 maxpoll -4"])
    try:
        upstream.start()
        daemon.start()
        deadline = time.monotonic() + 30
        while True:
            values = metrics(tmp_path, daemon, 1)
            if values.get("edgefleet_chrony_stratum") == 9 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert values["edgefleet_chrony_synchronised"] == 1, daemon.log.read_text()
        assert values["edgefleet_chrony_stratum"] == 9 and values["edgefleet_chrony_local_reference"] == 0
        assert values["edgefleet_chrony_root_distance_seconds"] < 1
        assert 0 <= values["edgefleet_chrony_reference_age_seconds"] < 10
        assert ask(port)[1] == 9
    finally:
        daemon.stop()
        upstream.stop()


def test_chronyd_down_is_reported(tmp_path):
    chronyc = binaries()[1]
    values = metrics(tmp_path, f"{chronyc} -h {tmp_path}/nobody.sock", 2)
    assert values["edgefleet_chrony_up"] == 0 and "edgefleet_chrony_synchronised" not in values
    assert values["edgefleet_chrony_upstream_sources"] == 2 and values["edgefleet_chrony_metrics_timestamp_seconds"] > 0


def test_the_metrics_unit_passes_the_upstream_count():
    ctx = inventory(chrony_servers=["a.example"], chrony_pools=["b.example", "c.example"])
    unit = render(ROLE, "edgefleet-chrony-metrics.service.j2", ctx)
    assert ("ExecStart=/usr/local/libexec/edgefleet/chrony-metrics "
            "/var/lib/prometheus/node-exporter/edgefleet_chrony.prom 3") in unit


def test_the_metrics_writer_refuses_a_bad_count(tmp_path):
    run = subprocess.run([str(METRICS), str(tmp_path / "x.prom"), "three"], capture_output=True, text=True)
    assert run.returncode == 2 and "UPSTREAM_SOURCES" in run.stderr
    assert not (tmp_path / "x.prom").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))

"""roles/influxdb: the rendered InfluxDB configuration parsed with a real
TOML parser and checked by Debian's own `influxd config` (the role's apply
check), the retention arithmetic the role compares with SHOW RETENTION
POLICIES, and the architecture check run by a real ansible-playbook in check
mode (connection local): InfluxDB 2 on armhf stops before anything changes.

`influxd` comes from PATH, or is unpacked (not installed: no service starts)
from Debian's influxdb package fetched with `apt-get download`; without
either those two tests are skipped with the reason."""

import os
import pathlib
import shutil
import subprocess
import tomllib

import pytest
from rolecheck import check_entry_point
from rolerender import render, role_vars, value

ROOT = pathlib.Path(__file__).resolve().parents[2]
SITE = {"edgefleet_site": "lab", "edgefleet_secrets_dir": "/nonexistent/secrets"}


def ctx(**overrides):
    return role_vars("influxdb", {**SITE, "influxdb_major": "1", **overrides})


def conf(**overrides):
    return render("influxdb", "influxdb.conf.j2", ctx(**overrides))


def test_v1_config_is_toml_with_loopback_auth_and_no_reporting():
    c = tomllib.loads(conf())
    assert c["reporting-disabled"] is True
    assert c["bind-address"] == "127.0.0.1:8088"
    assert c["http"]["bind-address"] == "127.0.0.1:8086"
    assert c["http"]["auth-enabled"] is True
    assert c["http"]["pprof-enabled"] is False
    assert c["meta"]["dir"] == "/var/lib/influxdb/meta"
    assert c["meta"]["retention-autocreate"] is False
    assert c["data"]["dir"] == "/var/lib/influxdb/data"
    assert c["data"]["wal-dir"] == "/var/lib/influxdb/wal"
    assert c["monitor"]["store-enabled"] is False


def test_v1_config_follows_the_listener_variables():
    c = tomllib.loads(conf(influxdb_http_address="0.0.0.0", influxdb_http_port=18086,
                           influxdb_internal_monitoring=True))
    assert c["http"]["bind-address"] == "0.0.0.0:18086"
    assert c["monitor"]["store-enabled"] is True
    c6 = tomllib.loads(conf(influxdb_http_address="::1"))
    assert c6["http"]["bind-address"] == "[::1]:8086"


def test_v2_config_is_toml_on_loopback():
    c = tomllib.loads(render("influxdb", "config.toml.j2", role_vars("influxdb", SITE)))
    assert c == {"bolt-path": "/var/lib/influxdb/influxd.bolt", "engine-path": "/var/lib/influxdb/engine",
                 "http-bind-address": "127.0.0.1:8086", "reporting-disabled": True, "log-level": "info"}


@pytest.mark.parametrize("retention, seconds, go, shard, influxql", [
    ("30d", 2592000, "720h0m0s", "24h0m0s", "30d"),
    ("720h", 2592000, "720h0m0s", "24h0m0s", "720h"),
    ("1h", 3600, "1h0m0s", "1h0m0s", "1h"),
    ("4w", 2419200, "672h0m0s", "24h0m0s", "4w"),
    ("52w", 31449600, "8736h0m0s", "168h0m0s", "52w"),
    ("INF", 0, "0s", "168h0m0s", "INF"),
])
def test_retention_in_the_forms_influxdb_prints(retention, seconds, go, shard, influxql):
    """SHOW RETENTION POLICIES prints Go durations (720h0m0s); the role
    compares those, with InfluxDB's own default shard duration."""
    v = ctx(influxdb_retention=retention)
    assert int(value(v, "_influxdb_retention_seconds")) == seconds
    assert value(v, "_influxdb_retention_go") == go
    assert value(v, "_influxdb_shard_go") == shard
    assert value(v, "_influxdb_retention_influxql") == influxql


@pytest.mark.parametrize("retention", ["30", "0d", "30x", "1.5d", "30m"])
def test_bad_retention_is_flagged_for_the_validation(retention):
    assert int(value(ctx(influxdb_retention=retention), "_influxdb_retention_seconds")) == -1


@pytest.fixture(scope="session")
def influxd(tmp_path_factory):
    found = shutil.which("influxd")
    if found:
        return found
    if not shutil.which("apt-get"):
        pytest.skip("no influxd on PATH and no apt-get to fetch Debian's influxdb package")
    where = tmp_path_factory.mktemp("influxdb-deb")
    got = subprocess.run(["apt-get", "download", "influxdb"], cwd=where, capture_output=True, text=True,
                         timeout=300)
    debs = list(where.glob("influxdb_*.deb"))
    if got.returncode != 0 or not debs:
        pytest.skip(f"no influxd on PATH and `apt-get download influxdb` failed: {got.stderr.strip()[-300:]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(where / "x")], check=True, timeout=120)
    return str(where / "x" / "usr" / "bin" / "influxd")


def influxd_config(influxd, text, tmp_path):
    path = tmp_path / "influxdb.conf"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
    return subprocess.run([influxd, "config", "-config", str(path)], capture_output=True, text=True,
                          timeout=60, env=env)


def test_influxd_accepts_the_rendered_config_as_written(influxd, tmp_path):
    run = influxd_config(influxd, conf(), tmp_path)
    assert run.returncode == 0, run.stderr
    parsed = tomllib.loads(run.stdout)
    assert parsed["http"]["bind-address"] == "127.0.0.1:8086"
    assert parsed["http"]["auth-enabled"] is True
    assert parsed["http"]["suppress-write-log"] is True
    assert parsed["meta"]["retention-autocreate"] is False
    assert parsed["monitor"]["store-enabled"] is False
    assert parsed["data"]["query-log-enabled"] is False


def test_influxd_check_rejects_a_broken_config(influxd, tmp_path):
    """The check the role runs before install fails on a wrong type."""
    broken = conf().replace("auth-enabled = true", 'auth-enabled = "true"')
    run = influxd_config(influxd, broken, tmp_path)
    assert run.returncode != 0
    assert "auth-enabled" in run.stderr


def validate(tmp_path, **extra):
    secrets = tmp_path / "secrets"
    rc, out, changed, raw = check_entry_point(tmp_path, "influxdb", "validate", "pi-controller-7", secrets, extra)
    assert changed is not None, raw[-3000:]
    assert changed == 0, raw[-3000:]
    assert not secrets.exists()
    return rc, out


def test_influxdb2_on_armhf_stops_before_anything_changes(tmp_path):
    rc, out = validate(tmp_path, influxdb_major="2", edgefleet_base_dpkg_architecture="armhf")
    assert rc != 0
    assert "pi-controller-7 installs armhf packages" in out
    assert "dpkg --print-architecture" in out
    assert 'influxdb_major: "1"' in out and "1.6.7" in out
    assert "Nothing was changed" in out


@pytest.mark.parametrize("major, arch", [("2", "arm64"), ("2", "amd64"), ("1", "armhf")])
def test_supported_combinations_pass_the_checks(tmp_path, major, arch):
    rc, out = validate(tmp_path, influxdb_major=major, edgefleet_base_dpkg_architecture=arch)
    assert rc == 0, out[-3000:]

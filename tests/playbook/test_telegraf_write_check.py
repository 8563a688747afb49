"""The telegraf role's converge-time write check (tasks/write_check.yml)
against a real InfluxDB 1.x: Debian's influxd (from PATH, or unpacked from
`apt-get download influxdb`, never installed), started in the foreground by
the test with authentication on, on free loopback ports, in a temporary
directory. ansible-playbook runs the role's credentials and write_check
entry points for real (connection local) and must fail, naming the user,
the database and the HTTP status, on a wrong password (401), a user without
the WRITE grant (403) and a missing database (404); a good user's point is
read back by the role and by the test. InfluxDB 2.x is not available here:
that branch of the task file is not run by these tests."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from influxd import Influx, find_influxd, free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLAY = """
- name: The telegraf role's write check only
  hosts: controller
  gather_facts: false
  tasks:
    - name: Collect the credentials
      ansible.builtin.include_role:
        name: telegraf
        tasks_from: credentials
    - name: Run the write check
      ansible.builtin.include_role:
        name: telegraf
        tasks_from: write_check
"""
ADMIN, ADMIN_PW = "admin", "admin-pw'\\x"
USERS = {"telegraf": ("telegraf-pw", "WRITE"), "grafana": ("grafana-pw", "READ")}
DB = "edgefleet"


@pytest.fixture(scope="module")
def influxd_binary(tmp_path_factory):
    found, why = find_influxd(tmp_path_factory.mktemp("influxdb-deb"))
    if not found:
        pytest.skip(why)
    return found


def points(server, db=DB):
    out = server.query('SELECT "nonce", "user", "host" FROM "edgefleet_write_check"', db=db)
    series = out["results"][0].get("series", [])
    return [dict(zip(s["columns"], v)) for s in series for v in s["values"]]


def quote(pw):
    return pw.replace("\\", "\\\\").replace("'", "\\'")


@pytest.fixture(scope="module")
def influx(influxd_binary, tmp_path_factory):
    server = Influx(influxd_binary, tmp_path_factory.mktemp("influxd"), admin=(ADMIN, ADMIN_PW))
    try:
        # the first user of a server with auth on must be an admin, and needs no login
        server.query(f"CREATE USER \"{ADMIN}\" WITH PASSWORD '{quote(ADMIN_PW)}' WITH ALL PRIVILEGES", user=None)
        server.query(f'CREATE DATABASE "{DB}"')
        for name, (pw, grant) in USERS.items():
            server.query(f"CREATE USER \"{name}\" WITH PASSWORD '{pw}'")
            server.query(f'GRANT {grant} ON "{DB}" TO "{name}"')
        yield server
    finally:
        server.stop()


def play(tmp_path, influx_url, *args, **extra):
    (tmp_path / "play.yml").write_text(PLAY)
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    controller:\n      hosts:\n        ctl01:\n"
        f"          ansible_connection: local\n          ansible_python_interpreter: {sys.executable}\n")
    vars_ = {"edgefleet_site": "lab", "edgefleet_secrets_dir": str(tmp_path / "secrets"),
             "telegraf_influxdb_major": "1", "telegraf_influxdb_url": influx_url,
             "telegraf_influxdb_passwords": {ADMIN: ADMIN_PW, "telegraf": USERS["telegraf"][0],
                                             "grafana": USERS["grafana"][0]},
             "mosquitto_passwords": {"telegraf": "mqtt-pw"}}
    vars_.update(extra)
    run = subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i",
                          str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml"), "-e", json.dumps(vars_), *args],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                              "ANSIBLE_NOCOLOR": "1", "HOME": str(tmp_path)})
    out = run.stdout + run.stderr
    recap = [line for line in out.splitlines() if line.startswith("ctl01") and "ok=" in line]
    # messages as the yaml callback prints them: folded, with '' for '
    return run.returncode, " ".join(out.split()).replace("''", "'"), (recap[-1] if recap else ""), out


def test_telegrafs_credentials_write_and_the_point_is_read_back(tmp_path, influx):
    before = len(points(influx))
    rc, out, recap, raw = play(tmp_path, influx.url)
    assert rc == 0, raw[-4000:]
    assert "InfluxDB write check passed: 'telegraf' wrote edgefleet_write_check" in out, raw[-6000:]
    assert "to database 'edgefleet' and it was read back" in out
    got = points(influx)
    assert len(got) == before + 1
    assert got[-1]["host"] == "ctl01" and got[-1]["user"] == "telegraf"
    assert got[-1]["nonce"] in out
    # a probe, not a change: a second run (secrets directories made) changes nothing
    rc, out, recap, raw = play(tmp_path, influx.url)
    assert rc == 0 and "changed=0" in recap, recap
    assert len(points(influx)) == before + 2
    # no credential in the output
    for secret in (ADMIN_PW, USERS["telegraf"][0]):
        assert secret not in raw


def test_wrong_password_fails_with_401(tmp_path, influx):
    rc, out, _, raw = play(tmp_path, influx.url,
                           telegraf_influxdb_passwords={ADMIN: ADMIN_PW, "telegraf": "not-the-password"})
    assert rc != 0, raw[-3000:]
    assert ("refused a write by user 'telegraf' to database 'edgefleet' on ctl01: HTTP 401 "
            "(authentication failed: the password (1.x) or token (2.x) of 'telegraf'") in out
    assert "authorization failed" in out  # InfluxDB's own words
    assert "Telegraf would drop every batch" in out
    assert "InfluxDB write check passed" not in out
    assert "not-the-password" not in raw


def test_user_without_write_grant_fails_with_403(tmp_path, influx):
    rc, out, _, raw = play(tmp_path, influx.url, telegraf_influxdb_username="grafana")
    assert rc != 0, raw[-3000:]
    assert "refused a write by user 'grafana' to database 'edgefleet' on ctl01: HTTP 403" in out
    assert "'grafana' has no WRITE grant on database 'edgefleet'" in out
    assert "not authorized to write to database" in out


def test_missing_database_fails_with_404(tmp_path, influx):
    rc, out, _, raw = play(tmp_path, influx.url, telegraf_influxdb_database="no_such_db")
    assert rc != 0, raw[-3000:]
    assert "refused a write by user 'telegraf' to database 'no_such_db' on ctl01: HTTP 404" in out
    assert "(database not found: database 'no_such_db' does not exist" in out
    assert 'database not found: "no_such_db"' in out


def test_influxdb_not_answering_fails(tmp_path, influx):
    rc, out, _, raw = play(tmp_path, f"http://127.0.0.1:{free_port()}")
    assert rc != 0, raw[-3000:]
    assert "user 'telegraf' to database 'edgefleet' on ctl01: HTTP -1 (no answer" in out


def test_read_back_with_a_wrong_admin_password_fails(tmp_path, influx):
    rc, out, _, raw = play(tmp_path, influx.url,
                           telegraf_influxdb_passwords={ADMIN: "wrong", "telegraf": USERS["telegraf"][0]})
    assert rc != 0, raw[-3000:]
    assert "accepted the write check of 'telegraf' to database 'edgefleet' (HTTP 204)" in out
    assert "reading it back as 'admin' failed: HTTP 401" in out


def test_check_mode_writes_nothing(tmp_path, influx):
    before = len(points(influx))
    rc, out, recap, raw = play(tmp_path, influx.url, "--check",
                               telegraf_influxdb_passwords={ADMIN: ADMIN_PW, "telegraf": "not-the-password"})
    assert rc == 0, raw[-3000:]
    assert "SKIPPED: InfluxDB write check of user 'telegraf' on database edgefleet" in out
    assert "check mode writes nothing" in out
    assert len(points(influx)) == before


def test_the_check_can_be_turned_off(tmp_path, influx):
    rc, out, _, raw = play(tmp_path, influx.url, telegraf_influxdb_write_check=False,
                           telegraf_influxdb_database="no_such_db")
    assert rc == 0, raw[-3000:]
    assert "InfluxDB write check passed" not in out

"""The chrony role's inventory checks, run by ansible-playbook for real on
this machine (local connection, check mode only): a malformed CIDR in
chrony_allow, a bad upstream entry, or nothing to serve stops the play at
the role's first checks, naming the value, before any task would change
anything; and the whole role passes check mode on a host where chrony is
not installed yet."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLAYBOOK = """
- name: chrony only
  hosts: controller
  gather_facts: false
  roles:
    - role: chrony
"""


def play(tmp_path, *extra, **variables):
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "edgefleet_site": "plant", "edgefleet_secrets_dir": str(tmp_path / "secrets"), **variables}
    (tmp_path / "hosts.yml").write_text(json.dumps({"all": {"children": {"controller": {"hosts": {"ctl01": host}}}}}))
    return subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "--check",
                           "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "site.yml"), *extra],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": "/usr/bin:/bin",
                               "ANSIBLE_NOCOLOR": "1", "HOME": str(tmp_path)})


def stopped_at(run):
    assert run.returncode != 0, "the play passed: " + run.stdout[-2000:]
    recap = re.search(r"ctl01\s+: ok=\d+\s+changed=(\d+)", run.stdout)
    assert recap and recap.group(1) == "0", run.stdout[-3000:]
    return run.stdout


@pytest.mark.parametrize("allow,named", [
    (["10.0.0.0/8", "192.168.1.0/33"], "'192.168.1.0/33' is not a network"),
    (["192.168.10.7/24"], "'192.168.10.7/24' has host bits set: did you mean 192.168.10.0/24?"),
    (["10.0.0.5"], "'10.0.0.5' is not in CIDR form"),
], ids=["prefix", "host-bits", "no-prefix"])
def test_a_malformed_cidr_stops_the_play_naming_it(tmp_path, allow, named):
    out = stopped_at(play(tmp_path, chrony_allow=allow))
    assert "TASK [chrony : Check the served networks]" in out
    assert named in " ".join(out.split()), out[-3000:]
    assert "Nothing was changed." in out


def test_a_bad_upstream_entry_stops_the_play(tmp_path):
    out = stopped_at(play(tmp_path, chrony_servers=["ntp.example.com\nallow 0.0.0.0/0"]))
    assert "TASK [chrony : Check the upstream sources]" in out


def test_nothing_to_serve_stops_the_play(tmp_path):
    out = stopped_at(play(tmp_path, chrony_pools=[], chrony_servers=[], chrony_local_stratum=0))
    assert "TASK [chrony : Require a time to serve]" in out
    assert "has no time to serve" in out


def test_check_mode_passes_before_chrony_is_installed(tmp_path):
    """A fresh host: the role's own "is chrony installed" probe is pointed at
    a path that does not exist (this machine may have chrony), so the
    service tasks and handlers must stay quiet, as on a fresh host."""
    staged = pathlib.Path("/var/lib/edgefleet/staged/chrony")
    existed = staged.exists()
    run = play(tmp_path, "-e", "_chrony_binary=/nonexistent/usr/sbin/chronyd")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "TASK [chrony : Enable and start chrony]" in run.stdout
    assert existed or not staged.exists(), "check mode created the staging tree"

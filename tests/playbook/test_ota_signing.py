"""The ota_signing role with the real ansible-playbook: the site's OTA signing
key created once on the Ansible controller, left alone on every later run,
never regenerated when a file is missing or does not match, and never
anywhere near a target: the inventory's controller host is unreachable (its
SSH port is closed), so one connection attempt would fail the play."""

import os
import pathlib
import re
import stat
import subprocess
import sys

import pytest

import otasign

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLAYBOOK = """
- name: Signing key only
  hosts: controller
  gather_facts: false
  roles:
    - role: ota_signing
  tasks:
    - name: Show the published public key
      ansible.builtin.debug:
        msg: "public={{ ota_signing_public_key }} key={{ ota_signing_key_path }} pub={{ ota_signing_public_key_path }}"
"""


class Site:
    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.secrets = tmp_path / "secrets"
        self.signing = self.secrets / "signing"
        (tmp_path / "play.yml").write_text(PLAYBOOK)

    def inventory(self, secrets=True):
        # a target nobody can reach: port 9 on loopback refuses connections
        host = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 9,
                "ansible_python_interpreter": sys.executable, "edgefleet_site": "plant",
                "edgefleet_controller_address": "ctl01.plant.lan"}
        if secrets:
            host["edgefleet_secrets_dir"] = str(self.secrets)
        inv = self.dir / "hosts.yml"
        inv.write_text("all:\n  children:\n    controller:\n      hosts:\n        ctl01:\n"
                       + "".join(f"          {k}: '{v}'\n" for k, v in host.items()))
        return inv

    def play(self, *extra, ok=True, **inventory):
        run = subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i",
                              str(self.inventory(**inventory)), str(self.dir / "play.yml"), *extra],
                             capture_output=True, text=True, timeout=300, cwd=ROOT,
                             env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": "/usr/bin:/bin",
                                  "ANSIBLE_NOCOLOR": "1", "HOME": str(self.dir)})
        if ok:
            assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        else:
            assert run.returncode != 0, "the play passed: " + run.stdout[-2000:]
        assert "UNREACHABLE" not in run.stdout, "the role tried to reach the target"
        return run

    @staticmethod
    def changed(run):
        return int(re.search(r"ctl01\s+: ok=\d+\s+changed=(\d+)", run.stdout).group(1))

    def public(self):
        return (self.signing / "current.pub").read_text().strip()


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


def test_created_once_then_left_alone_and_published(site):
    first = site.play()
    key = (site.signing / "current.key").read_bytes()
    public = site.public()
    assert otasign.public_key_hex(otasign.load_private_key(str(site.signing / "current.key"))) == public
    assert stat.S_IMODE(os.stat(site.signing / "current.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(site.signing).st_mode) == 0o700
    assert site.changed(first) == 1
    shown = " ".join(first.stdout.split())  # the YAML callback folds long lines
    assert f"public={public} key={site.signing}/current.key pub={site.signing}/current.pub" in shown
    assert b"PRIVATE" not in first.stdout.encode(), "the private key appeared in the output"
    again = site.play()
    assert site.changed(again) == 0
    assert (site.signing / "current.key").read_bytes() == key and site.public() == public


def test_check_mode_on_a_fresh_controller_creates_the_key_as_the_ca_is(site):
    """Like the site CA: the manifest cannot be rendered without it, and it is controller-side only."""
    site.play("--check")
    assert (site.signing / "current.key").exists() and site.public().startswith("04")


def test_a_public_key_without_its_private_key_fails_and_nothing_is_generated(site):
    site.play()
    public = site.public()
    (site.signing / "current.key").unlink()
    run = site.play(ok=False)
    assert "current.pub exists but its private key" in run.stdout and "never regenerated" in run.stdout
    assert not (site.signing / "current.key").exists() and site.public() == public


def test_a_key_that_does_not_match_its_public_file_fails(site):
    site.play()
    other = otasign.public_key_hex(otasign.generate_key())
    (site.signing / "current.pub").write_text(other + "\n")
    run = site.play(ok=False)
    assert "does not match its public key" in run.stdout
    assert site.public() == other


def test_the_secrets_directory_is_required(site):
    run = site.play(ok=False, secrets=False)
    assert "edgefleet_secrets_dir is not set for host ctl01" in run.stdout
    assert not site.secrets.exists()

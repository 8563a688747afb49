"""The ota_server role's own image and manifest tasks (validate.yml and
images.yml, with the ota_signing role before them) under the real
ansible-playbook, on this machine as the "site controller" with its web root
in a temporary directory: the manifest is signed on the Ansible controller
with the site's key (the role filter imports the collection's otasign), its
signatures verify with <secrets>/signing/current.pub, a second run changes
nothing (deterministic signatures), and a bad security_version stops the
play naming the image before anything is written."""

import hashlib
import json
import pathlib
import re
import subprocess
import sys

import otasign
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLAYBOOK = """
- name: The OTA server's images and manifest
  hosts: controller
  gather_facts: false
  tasks:
    - name: The signing key
      ansible.builtin.include_role:
        name: ota_signing
    - name: The role's checks
      ansible.builtin.include_role:
        name: ota_server
        tasks_from: validate
    - name: The role's images and manifest
      ansible.builtin.include_role:
        name: ota_server
        tasks_from: images
"""


class Site:
    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.secrets = tmp_path / "secrets"
        self.www = tmp_path / "www"
        self.images = tmp_path / "build"
        self.images.mkdir()
        (tmp_path / "play.yml").write_text(PLAYBOOK)

    def image(self, name, data):
        (self.images / name).write_bytes(data)
        return str(self.images / name)

    def play(self, images, *extra, ok=True):
        host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                "edgefleet_site": "plant", "edgefleet_secrets_dir": str(self.secrets),
                "edgefleet_controller_address": "ctl01.plant.lan",
                "ota_server_web_root": str(self.www), "ota_server_tls_enabled": False,
                "ota_server_url_host": "10.0.5.2", "ota_server_images": images}
        inv = self.dir / "hosts.yml"
        inv.write_text(yaml.safe_dump({"all": {"children": {"controller": {"hosts": {"ctl01": host}}}}}))
        run = subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv),
                              str(self.dir / "play.yml"), *extra],
                             capture_output=True, text=True, timeout=300, cwd=ROOT,
                             env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": "/usr/bin:/bin",
                                  "ANSIBLE_NOCOLOR": "1", "HOME": str(self.dir)})
        if ok:
            assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        else:
            assert run.returncode != 0, "the play passed: " + run.stdout[-2000:]
        return run

    @staticmethod
    def changed(run):
        return int(re.search(r"ctl01\s+: ok=\d+\s+changed=(\d+)", run.stdout).group(1))

    def manifest(self):
        return json.loads((self.www / "manifest.json").read_text())


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


def test_the_manifest_is_signed_on_the_controller_and_a_rerun_changes_nothing(site):
    app = b"app bundle bytes" * 100
    fw = b"firmware image" * 300
    images = [{"src": site.image("app.bundle", app), "version": "0.9.1", "payload": "app"},
              {"src": site.image("mp.bin", fw), "version": "1.24.1", "payload": "firmware", "security_version": 3}]
    first = site.play(images)
    text = (site.www / "manifest.json").read_text()
    m = json.loads(text)
    public = otasign.current_public_key(str(site.secrets / "signing"))
    assert m["signing_key"] == public and m["base_url"] == "http://10.0.5.2:8080"
    for image, data, sv in zip(m["images"], (app, fw), (0, 3)):
        assert image["url"].startswith("http://10.0.5.2:8080/") and image["security_version"] == sv
        assert (site.www / image["path"].lstrip("/")).read_bytes() == data
        assert otasign.verify_entry(public, image["payload"], image["version"], len(data),
                                    hashlib.sha256(data).hexdigest(), sv, image["signature"])
    assert "PRIVATE KEY" not in first.stdout
    assert not list(site.www.rglob("*.key")), "a key file reached the web root"
    again = site.play(images)
    assert site.changed(again) == 0, again.stdout[-3000:]
    assert (site.www / "manifest.json").read_text() == text


def test_a_bad_security_version_stops_the_play_naming_the_image(site):
    src = site.image("app.bundle", b"x" * 10)
    run = site.play([{"src": src, "version": "0.9.1", "payload": "app", "security_version": -2}], ok=False)
    assert f"item 0 ({src}): security_version must be an integer 0..2147483647" in " ".join(run.stdout.split())
    assert not site.www.exists(), "the web root was created before the check"


def test_an_https_base_url_is_refused(site):
    src = site.image("app.bundle", b"x" * 10)
    run = site.play([{"src": src, "version": "0.9.1", "payload": "app"}],
                    "-e", "ota_server_base_url=https://ctl01:8443", ok=False)
    assert "ota_server_base_url 'https://ctl01:8443' must be http://" in " ".join(run.stdout.split())
    assert not site.www.exists()


def _published(site):
    return {(i["payload"], i["version"]): i for i in site.manifest()["images"]}


def test_an_image_published_with_extra_vars_stays_through_a_plain_run(site):
    # make lab-rollout's sequence: the inventory lists the running image, a run
    # with -e ota_server_images=[the new one] publishes (and the rollout
    # installs) it, then a plain site.yml run must neither drop nor delete it.
    listed = [{"src": site.image("app-1.bundle", b"one" * 100), "version": "1.0.0", "payload": "app"}]
    site.play(listed)
    new = b"two" * 120
    extra = [{"src": site.image("app-2.bundle", new), "version": "2.0.0", "payload": "app"}]
    site.play(listed, "-e", json.dumps({"ota_server_images": extra}))
    text = (site.www / "manifest.json").read_text()
    assert set(_published(site)) == {("app", "1.0.0"), ("app", "2.0.0")}
    check = site.play(listed, "--check", "--diff")
    assert site.changed(check) == 0, check.stdout[-3000:]
    plain = site.play(listed)
    assert site.changed(plain) == 0, plain.stdout[-3000:]
    assert (site.www / "manifest.json").read_text() == text
    assert (site.www / "app/2.0.0/app-2.bundle").read_bytes() == new
    entry = _published(site)[("app", "2.0.0")]
    public = otasign.current_public_key(str(site.secrets / "signing"))
    assert entry["sha256"] == hashlib.sha256(new).hexdigest() and entry["size"] == len(new)
    assert otasign.verify_entry(public, "app", "2.0.0", len(new), entry["sha256"], 0, entry["signature"])


def test_an_image_goes_only_when_removed_by_name(site):
    listed = [{"src": site.image("app-1.bundle", b"one" * 100), "version": "1.0.0", "payload": "app"}]
    extra = [{"src": site.image("app-2.bundle", b"two" * 120), "version": "2.0.0", "payload": "app"}]
    site.play(listed + extra)
    absent = json.dumps({"ota_server_images_absent": [{"payload": "app", "version": "2.0.0"}]})
    removed = site.play(listed, "-e", absent)
    assert site.changed(removed) > 0
    assert set(_published(site)) == {("app", "1.0.0")}
    assert not (site.www / "app/2.0.0").exists(), "the removed image is still served"
    assert (site.www / "app/1.0.0/app-1.bundle").exists()
    again = site.play(listed)
    assert site.changed(again) == 0, again.stdout[-3000:]
    assert set(_published(site)) == {("app", "1.0.0")}


def test_an_image_both_listed_and_absent_stops_the_play_before_any_change(site):
    listed = [{"src": site.image("app-1.bundle", b"one" * 100), "version": "1.0.0", "payload": "app"}]
    site.play(listed)
    text = (site.www / "manifest.json").read_text()
    run = site.play(listed, "-e", json.dumps({"ota_server_images_absent": [{"payload": "app", "version": "1.0.0"}]}),
                    ok=False)
    assert ("ota_server_images_absent: item 0 (payload app version 1.0.0) is also listed in ota_server_images"
            in " ".join(run.stdout.split()))
    assert (site.www / "manifest.json").read_text() == text


def test_a_kept_image_whose_bytes_changed_on_the_server_stops_the_play(site):
    listed = [{"src": site.image("app-1.bundle", b"one" * 100), "version": "1.0.0", "payload": "app"}]
    extra = [{"src": site.image("app-2.bundle", b"two" * 120), "version": "2.0.0", "payload": "app"}]
    site.play(listed + extra)
    text = (site.www / "manifest.json").read_text()
    (site.www / "app/2.0.0/app-2.bundle").write_bytes(b"tampered")
    run = site.play(listed, ok=False)
    out = " ".join(run.stdout.split())
    assert f"the manifest on the server publishes {site.www}/app/2.0.0/app-2.bundle, but" in out
    assert (site.www / "manifest.json").read_text() == text

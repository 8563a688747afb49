"""The artifact cache (edgefleet_base, entry point `artifact`) with real
ansible-playbook runs, connection local: the target is a directory of this
machine. A cached file with the pinned digest is copied; a wrong digest stops
the play and leaves the operator's file alone; a missing file that cannot be
downloaded fails with what to do, or is reported unavailable when the caller
asks to skip. Downloads go to a server on 127.0.0.1 (no internet here)."""

import contextlib
import hashlib
import http.server
import pathlib
import re
import subprocess
import sys
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAYLOAD = b"pretend vendor package bytes\n" * 100
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
PLAYBOOK = """
- name: One artifact
  hosts: controller
  gather_facts: false
  tasks:
    - name: Fetch it through the cache
      ansible.builtin.include_role:
        name: edgefleet_base
        tasks_from: artifact
      vars:
        edgefleet_base_artifact:
          file: "{{ art_file }}"
          url: "{{ art_url }}"
          sha256: "{{ art_sha256 }}"
          dest: "{{ art_dest }}"
    - name: Show the result
      ansible.builtin.debug:
        msg: "RESULT available={{ edgefleet_base_artifact_result.available }} {{ edgefleet_base_artifact_result.reason }}"
"""


@contextlib.contextmanager
def server(files):
    class Handler(http.server.BaseHTTPRequestHandler):
        hits = []

        def do_GET(self):  # noqa: N802 (http.server's name)
            Handler.hits.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d" % httpd.server_address[1], Handler.hits
    finally:
        httpd.shutdown()


class Run:
    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.cache = tmp_path / "cache"
        self.target = tmp_path / "target"
        (tmp_path / "play.yml").write_text(PLAYBOOK)

    def play(self, url, sha256=DIGEST, missing="fail", ok=True):
        inv = self.dir / "hosts.yml"
        inv.write_text(
            "all:\n  children:\n    controller:\n      hosts:\n        ctl01:\n"
            f"          ansible_connection: local\n          ansible_python_interpreter: {sys.executable}\n")
        extra = {"art_file": "vendor_1.0_amd64.deb", "art_url": url, "art_sha256": sha256,
                 "art_dest": str(self.target / "vendor_1.0_amd64.deb"),
                 "edgefleet_base_artifact_cache_dir": str(self.cache), "edgefleet_base_artifact_missing": missing}
        args = [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv),
                str(self.dir / "play.yml")]
        for k, v in extra.items():
            args += ["-e", f"{k}={v}"]
        run = subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=ROOT,
                             env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": "/usr/bin:/bin",
                                  "ANSIBLE_NOCOLOR": "1", "HOME": str(self.dir)})
        out = run.stdout + run.stderr
        assert (run.returncode == 0) == ok, out[-4000:]
        return out


def test_downloaded_once_checked_and_copied(tmp_path):
    r = Run(tmp_path)
    with server({"/vendor.deb": PAYLOAD}) as (base, hits):
        out = r.play(base + "/vendor.deb")
        assert "RESULT available=True" in out
        assert (r.target / "vendor_1.0_amd64.deb").read_bytes() == PAYLOAD
        assert (r.cache / "vendor_1.0_amd64.deb").read_bytes() == PAYLOAD
        r.play(base + "/vendor.deb")
    assert hits == ["/vendor.deb"], "the second run must use the cache, not download again"


def test_download_with_another_digest_is_refused(tmp_path):
    r = Run(tmp_path)
    with server({"/vendor.deb": PAYLOAD + b"tampered"}) as (base, _):
        out = r.play(base + "/vendor.deb", ok=False)
    assert "vendor_1.0_amd64.deb" in out and "docs/air-gapped.md" in out
    assert not (r.cache / "vendor_1.0_amd64.deb").exists()
    assert not r.target.exists()


def test_a_cached_copy_with_another_digest_stops_the_play_and_stays(tmp_path):
    r = Run(tmp_path)
    r.cache.mkdir()
    (r.cache / "vendor_1.0_amd64.deb").write_bytes(b"the operator's newer release")
    out = r.play("", ok=False)
    actual = hashlib.sha256(b"the operator's newer release").hexdigest()
    assert actual in out and DIGEST in out, out[-2000:]
    assert (r.cache / "vendor_1.0_amd64.deb").read_bytes() == b"the operator's newer release"
    assert not r.target.exists()


def test_air_gapped_cache_filled_by_hand(tmp_path):
    r = Run(tmp_path)
    r.cache.mkdir()
    (r.cache / "vendor_1.0_amd64.deb").write_bytes(PAYLOAD)
    out = r.play("")  # no URL at all: the cache is the only source
    assert "RESULT available=True" in out
    assert (r.target / "vendor_1.0_amd64.deb").read_bytes() == PAYLOAD


@pytest.mark.parametrize("missing", ["fail", "skip"])
def test_unreachable_and_not_cached(tmp_path, missing):
    r = Run(tmp_path)
    with server({}) as (base, _):
        out = r.play(base + "/gone.deb", missing=missing, ok=(missing == "skip"))
    assert re.search(r"vendor_1\.0_amd64\.deb is not in the artifact cache", out), out[-2000:]
    assert "HTTP Error 404" in out
    if missing == "skip":
        assert "RESULT available=False" in out
    assert not r.target.exists()


def test_a_bad_pin_is_named(tmp_path):
    r = Run(tmp_path)
    out = r.play("http://127.0.0.1:9/x", sha256="abc", ok=False)
    assert "its sha256 pin 'abc' is not 64 lower-case hex digits" in out

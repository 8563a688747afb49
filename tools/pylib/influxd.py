"""Debian's InfluxDB 1.x for tests: the influxd binary (from PATH, or
unpacked from `apt-get download influxdb`, never installed) and a server run
in the foreground on free loopback ports in a temporary directory, with
authentication on."""

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import procstat


def find_influxd(where):
    """The influxd path, or (None, why not). *where*: a directory for the download."""
    found = shutil.which("influxd")
    if found:
        return found, None
    if not shutil.which("apt-get"):
        return None, "no influxd on PATH and no apt-get to fetch Debian's influxdb package"
    got = subprocess.run(["apt-get", "download", "influxdb"], cwd=where, capture_output=True, text=True,
                         timeout=300)
    debs = list(where.glob("influxdb_*.deb"))
    if got.returncode != 0 or not debs:
        return None, f"no influxd on PATH and `apt-get download influxdb` failed: {got.stderr.strip()[-300:]}"
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(where / "x")], check=True, timeout=120)
    return str(where / "x" / "usr" / "bin" / "influxd"), None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Influx:
    """A foreground influxd with auth on; query() over HTTP as *admin*."""

    def __init__(self, binary, where, admin=("admin", "admin-pw")):
        self.admin = admin
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = where / "influxdb.conf"
        conf.write_text(f"""reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{where}/meta"
[data]
  dir = "{where}/data"
  wal-dir = "{where}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = true
  log-enabled = false
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        self.log_path = where / "influxd.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([binary, "run", "-config", str(conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while not self.ping():
            assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "influxd did not answer /ping within 60 s"
            time.sleep(0.2)

    def ping(self):
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=2) as r:
                return r.status == 204
        except OSError:
            return False

    def query(self, q, user=..., password=None, db=None):
        if user is ...:
            user, password = self.admin
        data = {"q": q, **({"db": db} if db else {})}
        req = urllib.request.Request(self.url + "/query", data=urllib.parse.urlencode(data).encode(), method="POST")
        if user:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            req.add_header("Authorization", "Basic " + token)
        with urllib.request.urlopen(req, timeout=10) as r:
            out = json.load(r)
        errors = [res["error"] for res in out["results"] if "error" in res]
        assert not errors, (q, errors)
        return out

    def stop(self):
        procstat.stop(self.proc, 20)
        self.log.close()

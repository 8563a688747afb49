"""A real Mosquitto broker for tests: started on a free 127.0.0.1 port with
a temporary config, password file (hashed by the project's own filter) and
optional ACL; stopped afterwards. Needs Debian's mosquitto binary."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

import procstat
from edgefleet import mosquitto_passwd_hash

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, workdir, users=None, acl=None, extra="", tls=None):
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.users = dict(users or {})
        self.acl = acl
        self.extra = extra
        self.tls = tls  # {"ca", "cert", "key"} paths: adds a TLS listener on tls_port
        self.tls_port = free_port() if tls else None
        self.proc = None
        self.log = self.dir / "mosquitto.log"

    def _write_config(self):
        lines = [f"listener {self.port} 127.0.0.1", "user root", "persistence true",
                 f"persistence_location {self.dir}/", "autosave_interval 3600", f"log_dest file {self.log}",
                 "log_type all"]
        if self.users:
            pw = self.dir / "passwd"
            pw.write_text("".join(f"{u}:{mosquitto_passwd_hash(p, u, 'test')}\n" for u, p in self.users.items()))
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl = self.dir / "acl"
            acl.write_text(self.acl)
            lines.append(f"acl_file {acl}")
        if self.tls:
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {self.tls['ca']}",
                      f"certfile {self.tls['cert']}", f"keyfile {self.tls['key']}"]
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n" + self.extra)
        return conf

    def start(self, timeout=10):
        conf = self._write_config()
        self.proc = self._popen(conf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()} {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def _popen(self, conf):
        return subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.resume()
            procstat.stop(self.proc, 10)

"""The broker exactly as the mosquitto role configures it, run on this
machine's Debian Mosquitto for tests and benchmarks.

The role's mosquitto.conf is rendered from its template with its defaults
(roleacl.render_conf), then rewritten by the role's own candidate checker
(roles/mosquitto/files/mosquitto-check-config: listeners moved to 127.0.0.1
ports, persistence in a directory of ours). Every limit, the persistence and
autosave settings, the password file format and the ACL stay the role's.
Three things differ, and each is said here: the broker runs as the test's
user (``user root`` instead of ``mosquitto``, so it can write the temporary
directory), logs to a file in that directory, and gets the file-descriptor
limit the role's systemd drop-in sets (``mosquitto_limit_nofile``) through
setrlimit, capped at this process's hard limit (20,000 on the test machine:
plenty for 5,000 clients). The TLS listener is left out unless *tls* material is given.

``stock=True`` gives Mosquitto with its own defaults instead (same users,
same ACL, same listener, persistence on so restarts compare like with like,
and the soft fd limit systemd gives a unit that sets none: 1024), so
benchmarks can show the role's tuning as a ratio."""

import importlib.machinery
import importlib.util
import resource
import signal
import subprocess

import procstat
from broker import MOSQUITTO, Broker, free_port
from edgefleet import mosquitto_passwd_hash
from roleacl import ROLE, render_acl, render_conf, role_context

# The role's own candidate checker, loaded as a module (it has no .py name on targets).
_loader = importlib.machinery.SourceFileLoader("mosquitto_check_config", str(ROLE / "files" / "mosquitto-check-config"))
_spec = importlib.util.spec_from_loader(_loader.name, _loader)
checker = importlib.util.module_from_spec(_spec)
_loader.exec_module(checker)

SYSTEMD_DEFAULT_NOFILE = 1024


class RoleBroker(Broker):
    """RoleBroker(workdir, site, users={user: password}, overrides={role var: value}).

    Device users (``<kind>-<short8>``) get the role's per-device ACL; the
    service users (telegraf, exporter, controller) get theirs. Ports stay the
    same across stop()/start(), and so does the persistence directory: a
    restart is a real restart of the same broker."""

    def __init__(self, workdir, site, users, overrides=None, tls=None, stock=False, rotation_tls=None):
        super().__init__(workdir, users=users, tls=tls)
        self.rotation_tls = rotation_tls or tls  # the next listener's TLS material (a CA rotation's next CA)
        self.site = site
        self.stock = stock
        services = [u["name"] for u in role_context(site, [])["mosquitto_service_users"]]
        self.devices = sorted(u for u in self.users if u not in services)
        self.overrides = dict(overrides or {})
        if not tls:
            self.overrides["mosquitto_tls_enabled"] = False
        self.context = role_context(site, self.devices, self.overrides)
        self.persistence = self.dir / "persistence"
        self.persistence.mkdir(exist_ok=True)
        self.nofile = SYSTEMD_DEFAULT_NOFILE if stock else int(self.context["mosquitto_limit_nofile"])
        # the next listener (rotations): its own password file, {user: password} on top of users
        self.rotation_port = free_port() if str(self.context.get("mosquitto_rotation_enabled")) == "True" else None
        self.next_passwords = {}

    def _write_config(self):
        ctx = self.context
        pw, acl = self.dir / "passwd", self.dir / "acl"
        pw.write_text("".join(f"{u}:{mosquitto_passwd_hash(p, u, 'test', ctx['mosquitto_password_iterations'])}\n"
                              for u, p in self.users.items()))
        acl.write_text(render_acl(self.site, self.devices))
        if self.stock:
            lines = ["user root", f"listener {self.port} 127.0.0.1", "allow_anonymous false", f"password_file {pw}",
                     f"acl_file {acl}", "persistence true", f"persistence_location {self.persistence}/"]
        else:
            ports = iter([self.port] + ([self.tls_port] if self.tls else []) + [self.rotation_port])
            self._write_next()
            path_map = {ctx["_mosquitto_passwd"]: str(pw), ctx["_mosquitto_acl"]: str(acl),
                        ctx["_mosquitto_passwd_next"]: str(self.dir / "passwd-next")}
            if self.tls:
                path_map.update({ctx["_mosquitto_ca"]: self.tls["ca"], ctx["_mosquitto_cert"]: self.tls["cert"],
                                 ctx["_mosquitto_key"]: self.tls["key"]})
                nxt = self.rotation_tls
                path_map.update({ctx["_mosquitto_rotation_ca"]: nxt["ca"], ctx["_mosquitto_rotation_cert"]: nxt["cert"],
                                 ctx["_mosquitto_rotation_key"]: nxt["key"]})
            lines, _ = checker.rewrite(render_conf(self.site, self.devices, self.overrides).splitlines(), path_map,
                                       str(self.persistence), port_source=lambda: next(ports))
            lines = ["user root" if line.startswith("user ") else line for line in lines if line != "log_dest stderr"]
        lines.append(f"log_dest file {self.log}")  # log types stay the role's (or stock's) own
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def _hashed(self, users):
        n = self.context["mosquitto_password_iterations"]
        return "".join(f"{u}:{mosquitto_passwd_hash(p, u, 'test', n)}\n" for u, p in users.items())

    def _write_next(self):
        (self.dir / "passwd-next").write_text(self._hashed(dict(self.users, **self.next_passwords)))

    def reload_passwords(self, users=None, next_passwords=None):
        """New password files (current, next listener's), then SIGHUP: what
        the role's reload does after a password change."""
        if users is not None:
            self.users = dict(users)
        if next_passwords is not None:
            self.next_passwords = dict(next_passwords)
        (self.dir / "passwd").write_text(self._hashed(self.users))
        self._write_next()
        self.proc.send_signal(signal.SIGHUP)

    def _popen(self, conf):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        soft = self.nofile if hard == resource.RLIM_INFINITY else min(self.nofile, hard)

        def limits():  # the soft limit only: raising the hard one needs CAP_SYS_RESOURCE
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=limits)

    def kill(self):
        """A power cut: SIGKILL, so nothing is saved that autosave had not saved."""
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait()

    def rss_kib(self):
        """The broker's resident set size now (KiB)."""
        return procstat.rss_kib(self.proc.pid)

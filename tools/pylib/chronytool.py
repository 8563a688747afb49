"""Debian's chronyd and chronyc for tests (roles/chrony), and a chronyd run
in the foreground on a rendered configuration.

The binaries come from $EDGEFLEET_CHRONY_ROOT when it is set (the chrony
package unpacked there by tools/test.sh, not installed: installing it would
start chronyd on the test machine and replace systemd-timesyncd), else from
an installed chrony. Missing, a test is skipped, except under CI, where it
fails.

A daemon started here never touches this machine's clock: always -x, with
its pid file, drift file and command socket in the test's directory, and
NTP on a port of the test's choosing."""

import os
import pathlib
import shutil
import subprocess
import time

import procstat
import pytest


def _missing(msg):
    if os.environ.get("CI"):
        pytest.fail(msg + ": CI must provide it (tools/test.sh)")
    pytest.skip(msg)


def binaries():
    """(chronyd, chronyc) paths."""
    root = os.environ.get("EDGEFLEET_CHRONY_ROOT")
    if root:
        found = [pathlib.Path(root) / "usr/sbin/chronyd", pathlib.Path(root) / "usr/bin/chronyc"]
        found = [str(p) if p.exists() else None for p in found]
    else:
        found = [shutil.which("chronyd") or ("/usr/sbin/chronyd" if os.path.exists("/usr/sbin/chronyd") else None),
                 shutil.which("chronyc")]
    if None in found:
        _missing("Debian's chrony is not available (EDGEFLEET_CHRONY_ROOT=%s)" % (root or "unset"))
    return tuple(found)


class Chronyd:
    """chronyd -x -d on *conf_text* plus the lines that keep it inside *workdir*."""

    def __init__(self, workdir, conf_text, name="chronyd"):
        self.chronyd, self.chronyc_binary = binaries()
        if os.geteuid() != 0:
            _missing("chronyd runs as root only")
        self.dir = pathlib.Path(workdir) / name
        self.dir.mkdir(mode=0o700, parents=True)
        self.socket = self.dir / "chronyd.sock"
        self.conf = self.dir / "chrony.conf"
        self.conf.write_text(conf_text + "\n# the test's own files\n"
                             f"pidfile {self.dir}/chronyd.pid\n"
                             f"bindcmdaddress {self.socket}\n"
                             "cmdport 0\n")
        self.log = self.dir / "chronyd.log"
        self.proc = None

    def start(self, timeout=10):
        # -x: never the clock of this machine; -u root: no _chrony user needed
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([self.chronyd, "-x", "-d", "-u", "root", "-f", str(self.conf)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.chronyc("tracking").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"chronyd did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        return self

    def chronyc(self, *args):
        return subprocess.run([self.chronyc_binary, "-h", str(self.socket), "-n", "-c", *args],
                              capture_output=True, text=True, timeout=10)

    def chronyc_command(self):
        """The command line for $CHRONYC (the metrics writer)."""
        return f"{self.chronyc_binary} -h {self.socket}"

    def stop(self):
        procstat.stop(self.proc, 5)

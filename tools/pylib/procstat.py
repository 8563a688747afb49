"""Process figures from /proc for tests and benchmarks: resident memory,
CPU time, and the file-descriptor limit a many-connection process needs;
and stopping a child process that tests and benchmarks started."""

import os
import resource
import subprocess


def stop(proc, timeout):
    """Terminate *proc* (a subprocess.Popen) if it still runs, and reap it:
    killed when it has not exited within *timeout* seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_kib(pid="self"):
    """Resident set size of *pid* (default: this process) in KiB; OSError when it is gone."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    """(user, system) CPU seconds of process *pid* ((0.0, 0.0) when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def raise_fd_limit():
    """This process's soft fd limit up to its hard one (thousands of sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

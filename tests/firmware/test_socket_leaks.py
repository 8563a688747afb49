"""Every socket the firmware opens is closed again, on CPython and on
MicroPython's unix port (where ``StreamWriter.close()`` alone closes
nothing). The process's open descriptors are counted from /proc before and
after 20 refused connects, 20 connect/disconnect cycles against a real
Mosquitto, 5 keepalive timeouts, 20 /metrics scrapes and 5 OTA downloads
(plus a 404 and a digest mismatch)."""

import functools
import hashlib
import http.server
import json
import os
import pathlib
import socket
import subprocess
import threading
import time
import urllib.request

from broker import free_port
from fakepeer import FakePeer
from interp import command

DRIVER = pathlib.Path(__file__).parent / "mpy" / "leak_driver.py"
SCRAPES = 20


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def hostile_scrapers(port):
    """Two clients that connect and say nothing, and a third: the server
    (limit 2, read deadline 0.5 s) must close the third at once and the
    two idle ones after the deadline."""
    # the server accepts in connection order and starts their handlers in that
    # order, so the third is the one over the limit
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    t0 = time.monotonic()
    third = socket.create_connection(("127.0.0.1", port))
    third.settimeout(2)
    assert third.recv(100) == b""
    out = {"third_closed_after_s": time.monotonic() - t0}
    for s in idle:
        s.settimeout(3)
        assert s.recv(100) == b""
    out["idle_closed_after_s"] = time.monotonic() - t0
    for s in idle + [third]:
        s.close()
    return out


def silent(conn):
    conn.accept_session()
    while conn.recv_packet(10) is not None:  # never answers PINGREQ
        pass


def test_no_descriptor_survives_its_connection(interp, compiled_device, broker, tmp_path):
    b = broker()
    peer = FakePeer(silent)
    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(20000)
    (www / "ok.bin").write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    metrics_port = free_port()
    argv, env = command(interp, DRIVER, compiled_device)
    env.update(EF_BROKER=str(b.port), EF_REFUSED=str(free_port()), EF_SILENT=str(peer.port),
               EF_METRICS=str(metrics_port), EF_HTTP=f"http://127.0.0.1:{httpd.server_address[1]}",
               EF_SIZE=str(len(data)), EF_SHA256=hashlib.sha256(data).hexdigest(), EF_SCRAPES=str(SCRAPES))
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    counts, phases = {}, {}
    try:
        for expected in ("start", "scrape", "end"):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            info = json.loads(line)
            assert info["phase"] == expected, info
            phases[expected] = info
            counts[expected] = open_fds(proc.pid)
            proc.stdin.write("\n")
            proc.stdin.flush()
            if expected == "scrape":
                idle = hostile_scrapers(metrics_port)
                for _ in range(SCRAPES):
                    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                        assert r.read() == b"up 1\n"
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        proc.kill()
        httpd.shutdown()
        peer.close()
    end = phases["end"]
    assert (end["refused"], end["cycles"], end["keepalive_timeouts"]) == (20, 20, 5), end
    assert (end["scrapes"], end["downloads"], end["failed_downloads"]) == (SCRAPES, 5, 2), end
    # the /metrics server turned the third idle client away at once and timed the other two out
    assert idle["third_closed_after_s"] < 0.3 and idle["idle_closed_after_s"] < 2.0, idle
    assert (end["refused_scrapers"], end["dropped_scrapers"]) == (1, 2), end
    print(f"{interp}: open descriptors {counts}")
    assert counts["scrape"] == counts["start"], f"MQTT connections leaked descriptors: {counts}"
    assert counts["end"] == counts["start"], f"scrapes or downloads leaked descriptors: {counts}"

"""Open and close every kind of connection the firmware makes, many times,
so that the test can count this process's open file descriptors before and
after (an ESP32 has about 10 sockets: one leak per reconnect is fatal).

Runs unchanged under CPython and MicroPython. Between phases it prints
"PHASE <name>" and waits for a line on stdin, so the test counts at rest.

Environment: EF_BROKER (a real broker's port), EF_REFUSED (a closed port),
EF_SILENT (a peer that never answers PINGREQ), EF_METRICS (the port to serve
/metrics on), EF_HTTP (an HTTP server with /ok.bin), EF_SIZE and EF_SHA256
(of /ok.bin).
"""

import asyncio
import json
import os
import sys

import metrics
import mqtt
import netio
import ota


def env(name):
    getenv = getattr(os, "getenv", None) or os.environ.get
    return getenv(name)


async def phase(name, **info):
    await asyncio.sleep(0.05)  # CPython closes an aborted transport's socket on the next loop turn
    print(json.dumps(dict(info, phase=name)))
    try:
        sys.stdout.flush()
    except AttributeError:
        pass
    sys.stdin.readline()


class Sink:
    def __init__(self):
        self.n = 0

    def write(self, data):
        self.n += len(data)


async def connect(host, port, tls, timeout_s):
    return await netio.open_connection(host, port, None, timeout_s)


async def main():
    outcomes = {}
    server = await metrics.Server(lambda: ["up 1"], max_clients=2, timeout_s=0.5).start("127.0.0.1",
                                                                                   int(env("EF_METRICS")))
    await asyncio.sleep(0)
    await phase("start")

    refused = 0
    for _ in range(20):
        try:
            await mqtt.Client("leak", "127.0.0.1", int(env("EF_REFUSED")), timeout_s=2).connect()
        except mqtt.MqttError:
            refused += 1
    outcomes["refused"] = refused

    cycles = 0
    for i in range(20):
        c = mqtt.Client("leak-%d" % i, "127.0.0.1", int(env("EF_BROKER")), timeout_s=5)
        await c.connect()
        await c.publish("leak/t", b"x", 1)
        await c.disconnect()
        cycles += c.lost_reason == "disconnected"
    outcomes["cycles"] = cycles

    timeouts = 0
    for i in range(5):
        c = mqtt.Client("silent-%d" % i, "127.0.0.1", int(env("EF_SILENT")), keepalive=1, timeout_s=2)
        await c.connect()
        reason = await c.wait_closed()
        timeouts += reason.startswith("no PINGRESP")
    outcomes["keepalive_timeouts"] = timeouts

    await phase("scrape", **outcomes)  # the test scrapes /metrics now (the server runs in this loop)
    while server.served < int(env("EF_SCRAPES")):
        await asyncio.sleep(0.01)
    outcomes.update(scrapes=server.served, refused_scrapers=server.refused, dropped_scrapers=server.dropped)

    downloads = 0
    for _ in range(5):
        sink = Sink()
        await ota.download(env("EF_HTTP") + "/ok.bin", connect, int(env("EF_SIZE")), env("EF_SHA256"), sink, 5)
        downloads += sink.n == int(env("EF_SIZE"))
    failed = 0
    for path in ("/missing.bin", "/ok.bin"):  # a 404, and a digest that does not match
        try:
            await ota.download(env("EF_HTTP") + path, connect, int(env("EF_SIZE")), "0" * 64, Sink(), 5)
        except Exception:
            failed += 1
    outcomes["downloads"] = downloads
    outcomes["failed_downloads"] = failed
    await phase("end", **outcomes)
    server.close()


asyncio.run(main())

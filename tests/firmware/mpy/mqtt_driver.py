"""Drive the firmware's MQTT client through a list of steps and print one
JSON line per step and per delivered message. Runs unchanged under CPython
and MicroPython (the protocol tests run it under both, against a scripted
peer in the test process).

Environment: EF_PORT (the peer's port on 127.0.0.1), EF_CLIENT (JSON: the
Client's keyword arguments), EF_STEPS (JSON list of steps, see STEPS).
"""

import asyncio
import json
import os
import sys

import mqtt

try:
    from time import ticks_diff, ticks_ms

    def now_ms():
        return ticks_ms()

    def since(t0):
        return ticks_diff(ticks_ms(), t0)
except ImportError:  # CPython
    import time

    def now_ms():
        return int(time.monotonic() * 1000)

    def since(t0):
        return now_ms() - t0


def env(name, default=None):
    getenv = getattr(os, "getenv", None) or os.environ.get
    value = getenv(name)
    return default if value is None else value


def emit(**kw):
    print(json.dumps(kw))
    try:
        sys.stdout.flush()
    except AttributeError:
        pass


def describe(e):
    return "%s: %s" % (type(e).__name__, e)


class Driver:
    def __init__(self, port, kwargs):
        self.port = port
        self.kwargs = kwargs
        self.raise_in_on_message = False
        self.client = self.make(kwargs)
        self.flood_task = None

    def make(self, kwargs):
        kw = dict(kwargs)
        client_id = kw.pop("client_id", "dev-a")
        will = kw.pop("will", None)
        if will is not None:
            will = (will[0], will[1].encode(), will[2], will[3])
        return mqtt.Client(client_id, "127.0.0.1", self.port, will=will, on_message=self.on_message, **kw)

    def on_message(self, topic, payload, retain):
        emit(msg=topic, size=len(payload), retain=retain)
        if self.raise_in_on_message:
            raise RuntimeError("the app failed on this message")

    def state(self):
        return {"connected": self.client.connected, "lost": self.client.lost_reason}

    async def flood(self, size, max_ms):
        payload = b"x" * size
        t0 = now_ms()
        count = 0
        try:
            while since(t0) < max_ms:
                await self.client.publish("flood/x", payload, 0)
                count += 1
            return {"error": None, "count": count, "ms": since(t0)}
        except Exception as e:
            return {"error": describe(e), "count": count, "ms": since(t0)}

    async def step(self, name, args):
        c = self.client
        if name == "connect":
            return {"session_present": await c.connect()}
        if name == "sub":
            return {"granted": await c.subscribe(args[0], args[1])}
        if name == "pub":
            await c.publish(args[0], b"p" * args[2], args[1], len(args) > 3 and args[3])
            return {}
        if name == "hold":
            await asyncio.sleep_ms(args[0]) if hasattr(asyncio, "sleep_ms") else await asyncio.sleep(args[0] / 1000)
            return {}
        if name == "wait_closed":
            t0 = now_ms()
            reason = await asyncio.wait_for(c.wait_closed(), args[0] / 1000)
            return {"reason": reason, "waited_ms": since(t0)}
        if name == "disconnect":
            await c.disconnect()
            return {}
        if name == "abort":
            t0 = now_ms()
            c.abort()
            return {"abort_ms": since(t0)}
        if name == "flood":
            return await self.flood(args[0], args[1])
        if name == "flood_background":
            self.flood_task = asyncio.create_task(self.flood(args[0], args[1]))
            return {}
        if name == "flood_result":
            return await self.flood_task
        if name == "client":
            self.client = self.make(args[0])
            return {}
        if name == "raise_in_on_message":
            self.raise_in_on_message = True
            return {}
        raise ValueError("unknown step %r" % (name,))

    async def run(self, steps):
        for step in steps:
            name, args = step[0], step[1:]
            t0 = now_ms()
            try:
                result = await self.step(name, args)
                out = {"step": name, "ok": True}
                out.update(result)
            except Exception as e:  # reported, and the next step runs
                out = {"step": name, "ok": False, "error": describe(e)}
            out["ms"] = since(t0)
            out.update(self.state())
            emit(**out)
        emit(step="end")


def main():
    driver = Driver(int(env("EF_PORT")), json.loads(env("EF_CLIENT", "{}")))
    asyncio.run(driver.run(json.loads(env("EF_STEPS"))))


main()

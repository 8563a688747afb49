"""A small asyncio MQTT 3.1.1 client for MicroPython and CPython.

Why our own: the firmware is asyncio-based so that one host process can run
thousands of simulated devices with the very same code. No maintained client
on PyPI runs on both interpreters: umqtt is blocking, mqtt_as (2020 on PyPI)
needs MicroPython's network and machine modules, and aiomqtt/paho are
CPython-only. This one does what a device needs and nothing more: QoS 0 and
1, retained messages, a will, keepalive, TLS through the interpreter's ssl
module. It never reconnects by itself: the application decides when (with
jittered backoff), so a fleet does not reconnect in lockstep.
"""

import asyncio

import mqttpkt as pkt


class MqttError(Exception):
    pass


class ConnectRefused(MqttError):
    def __init__(self, code):
        MqttError.__init__(self, "broker refused the connection: %s (%d)"
                           % (pkt.CONNACK_REASONS.get(code, "unknown"), code))
        self.code = code


class Client:
    def __init__(self, client_id, host, port=1883, user=None, password=None, keepalive=60, will=None,
                 ssl=None, on_message=None, timeout_s=10):
        self.client_id = client_id
        self.host, self.port = host, port
        self.user, self.password = user, password
        self.keepalive = keepalive
        self.will = will  # (topic, payload, qos, retain)
        self.ssl = ssl
        self.on_message = on_message  # callable(topic, payload, retain)
        self.timeout_s = timeout_s
        self.connected = False
        self.lost_reason = None
        self._reader = self._writer = None
        self._tasks = []
        self._pending = {}
        self._next_id = 0
        self._write_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._pong = asyncio.Event()

    def _packet_id(self):
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def connect(self):
        """Open the session; raise ConnectRefused or MqttError on failure."""
        if self.ssl is not None:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ssl), self.timeout_s)
        else:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout_s)
        self._closed = asyncio.Event()
        self.lost_reason = None
        try:
            await self._send(pkt.connect(self.client_id, self.keepalive, self.user, self.password, self.will))
            first, body = await asyncio.wait_for(self._read_packet(), self.timeout_s)
        except Exception as e:
            self._close_transport()
            if isinstance(e, MqttError):
                raise
            raise MqttError("no CONNACK from %s:%d: %r" % (self.host, self.port, e))
        kind = pkt.parse(first, body)
        if kind[0] != "connack":
            self._close_transport()
            raise MqttError("expected CONNACK, got %s" % kind[0])
        if kind[2] != 0:
            self._close_transport()
            raise ConnectRefused(kind[2])
        self.connected = True
        self._tasks = [asyncio.create_task(self._read_loop())]
        if self.keepalive:
            self._tasks.append(asyncio.create_task(self._ping_loop()))
        return kind[1]  # session present

    async def _send(self, data):
        async with self._write_lock:
            self._writer.write(data)
            await self._writer.drain()

    async def _read_packet(self):
        head = await self._reader.readexactly(1)
        length_bytes = bytearray(head)
        while True:
            decoded = pkt.decode_length(length_bytes, 1)
            if decoded is not None:
                break
            length_bytes += await self._reader.readexactly(1)
        length = decoded[0]
        body = await self._reader.readexactly(length) if length else b""
        return head[0], body

    async def _read_loop(self):
        try:
            while True:
                first, body = await self._read_packet()
                kind = pkt.parse(first, body)
                if kind[0] == "publish":
                    _, topic, payload, qos, retain, packet_id = kind
                    if qos == 1:
                        await self._send(pkt.puback(packet_id))
                    if self.on_message is not None:
                        self.on_message(topic, payload, retain)
                elif kind[0] in ("puback", "suback"):
                    waiter = self._pending.pop(kind[1], None)
                    if waiter is not None:
                        waiter[1] = kind
                        waiter[0].set()
                elif kind[0] == "pingresp":
                    self._pong.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._lost("read: %r" % (e,))

    async def _ping_loop(self):
        try:
            while True:
                await asyncio.sleep(self.keepalive / 2)
                self._pong.clear()
                await self._send(pkt.pingreq())
                try:
                    await asyncio.wait_for(self._pong.wait(), self.keepalive / 2)
                except asyncio.TimeoutError:
                    self._lost("no PINGRESP within %ss" % (self.keepalive / 2))
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._lost("ping: %r" % (e,))

    async def _wait_ack(self, packet_id, data, what):
        waiter = [asyncio.Event(), None]
        self._pending[packet_id] = waiter
        try:
            await self._send(data)
            await asyncio.wait_for(waiter[0].wait(), self.timeout_s)
        except asyncio.TimeoutError:
            raise MqttError("no %s for packet %d within %ss" % (what, packet_id, self.timeout_s))
        finally:
            self._pending.pop(packet_id, None)
        if waiter[1] is None:
            raise MqttError("connection lost before %s: %s" % (what, self.lost_reason))
        return waiter[1]

    async def publish(self, topic, payload, qos=0, retain=False):
        """Send; with QoS 1 return only once the broker acknowledged it."""
        if not self.connected:
            raise MqttError("not connected: %s" % self.lost_reason)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if qos == 0:
            await self._send(pkt.publish(topic, payload, 0, retain))
            return
        packet_id = self._packet_id()
        await self._wait_ack(packet_id, pkt.publish(topic, payload, 1, retain, packet_id), "PUBACK")

    async def subscribe(self, topic, qos=1):
        """Subscribe; return the granted QoS (0x80 when the broker refused)."""
        if not self.connected:
            raise MqttError("not connected: %s" % self.lost_reason)
        packet_id = self._packet_id()
        ack = await self._wait_ack(packet_id, pkt.subscribe(packet_id, [(topic, qos)]), "SUBACK")
        return ack[2][0]

    def _lost(self, reason):
        if self.lost_reason is None:
            self.lost_reason = reason
        self.connected = False
        for waiter in self._pending.values():
            waiter[0].set()
        self._pending = {}
        self._close_transport()
        self._closed.set()

    def _close_transport(self):
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass

    def _cancel_tasks(self):
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._tasks = []

    async def disconnect(self):
        """Clean disconnect: the broker discards the will."""
        if self.connected:
            try:
                await self._send(pkt.disconnect())
            except Exception:
                pass
        self._cancel_tasks()
        self._lost("disconnected")

    def abort(self):
        """Drop the connection without DISCONNECT (the broker sends the will)."""
        self._cancel_tasks()
        self._lost("aborted")

    async def wait_closed(self):
        await self._closed.wait()
        return self.lost_reason

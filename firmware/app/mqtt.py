"""A small asyncio MQTT 3.1.1 client for MicroPython and CPython.

Why our own: the firmware is asyncio-based so that one host process can run
thousands of simulated devices with the very same code. No maintained client
on PyPI runs on both interpreters: umqtt is blocking, mqtt_as (2020 on PyPI)
needs MicroPython's network and machine modules, and aiomqtt/paho are
CPython-only. This one does what a device needs and nothing more: QoS 0 and
1, retained messages, a will, keepalive, TLS through the interpreter's ssl
module. It never reconnects by itself: the application decides when (with
jittered backoff), so a fleet does not reconnect in lockstep.

How it stays robust against a broken or hostile peer:
- Each connection is a session object. Its tasks (reader, writer, pinger)
  belong to it and are cancelled when it ends, so nothing of a lost session
  can touch the next one.
- Only the session's writer task touches the socket for writing; callers
  queue packets and wait with a deadline. A peer that stops reading makes
  the deadline (or the keepalive) end the session; ``abort()`` cancels the
  session's tasks and drops the TCP connection at once.
- Every received packet is checked against MQTT 3.1.1 (type, flags,
  lengths, topic, packet id, UTF-8) before it is used, and its announced
  size against ``max_packet_size`` before anything is allocated. Anything
  wrong ends the session with an ``MqttError`` that says what.
- A QoS 1 message is acknowledged only after ``on_message`` returned; if it
  raises, the message is not acknowledged and the session ends. Only a
  persistent session (``clean=False``) makes the broker send it again at
  the next connect; with a clean session it is gone.
"""

import asyncio

import mqttpkt as pkt
import netio

MAX_PACKET_SIZE = 16384  # an ESP32 has about 100 KB of heap for everything


class MqttError(Exception):
    pass


class ConnectRefused(MqttError):
    def __init__(self, code):
        super().__init__("broker refused the connection: %s (%d)" % (pkt.CONNACK_REASONS.get(code, "unknown"), code))
        self.code = code


class _Session:
    """One TCP connection and everything that lives and dies with it."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.tasks = []
        self.pending = {}  # (kind, packet id) -> [Event, result]
        self.outq = []  # [(parts, Event or None)]
        self.wake = asyncio.Event()
        self.closed = asyncio.Event()
        self.pong = asyncio.Event()
        self.lost = None  # the reason, once the session has ended
        self.disconnecting = False


class Client:
    def __init__(self, client_id, host, port=1883, user=None, password=None, keepalive=60, will=None,
                 ssl=None, on_message=None, timeout_s=10, max_packet_size=MAX_PACKET_SIZE, clean=True):
        # everything that goes into CONNECT is checked here, before any I/O;
        # *will* is (topic, payload bytes, qos, retain); *clean* False keeps
        # the broker's session (subscriptions, queued QoS 1) across connections
        self._connect_packet = pkt.connect(client_id, keepalive, user, password, will, clean)
        if not 1 <= max_packet_size <= pkt.MAX_REMAINING:
            raise ValueError("max_packet_size must be 1..%d, got %r" % (pkt.MAX_REMAINING, max_packet_size))
        self.client_id = client_id
        self.host, self.port = host, port
        self.keepalive = keepalive
        self.ssl = ssl
        self.on_message = on_message  # callable(topic, payload, retain)
        self.timeout_s = timeout_s
        self.max_packet_size = max_packet_size
        self._session = None
        self._last_reason = None
        self._next_id = 0

    # --- state -------------------------------------------------------------------
    @property
    def connected(self):
        return self._session is not None and self._session.lost is None

    @property
    def lost_reason(self):
        return self._session.lost if self._session is not None else self._last_reason

    def _live(self):
        s = self._session
        if s is None or s.lost is not None:
            raise MqttError("not connected: %s" % (self.lost_reason,))
        return s

    def _packet_id(self, session, kind):
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if (kind, self._next_id) not in session.pending:
                return self._next_id
        raise MqttError("no free packet id")

    # --- connect -----------------------------------------------------------------
    async def connect(self):
        """Open a session; raise ConnectRefused or MqttError on failure."""
        if self.connected:
            raise MqttError("already connected")
        try:
            reader, writer = await netio.open_connection(self.host, self.port, self.ssl, self.timeout_s)
        except (OSError, asyncio.TimeoutError) as e:
            raise MqttError("cannot connect to %s:%d: %s" % (self.host, self.port, _describe(e)))
        s = _Session(reader, writer)
        self._session = s
        waiter = [asyncio.Event(), None]
        s.pending[("connack", 0)] = waiter
        s.tasks.append(asyncio.create_task(self._writer_loop(s)))
        s.tasks.append(asyncio.create_task(self._reader_loop(s)))
        s.outq.append(((self._connect_packet,), None))
        s.wake.set()
        try:
            await asyncio.wait_for(waiter[0].wait(), self.timeout_s)
        except asyncio.TimeoutError:
            self._end(s, "no CONNACK within %ss" % self.timeout_s)
        except asyncio.CancelledError:
            self._end(s, "cancelled while connecting")
            raise
        if waiter[1] is None:
            raise MqttError("no session with %s:%d: %s" % (self.host, self.port, s.lost))
        session_present, code = waiter[1][1], waiter[1][2]
        if code != 0:
            self._end(s, "refused: %s" % pkt.CONNACK_REASONS.get(code, code))
            raise ConnectRefused(code)
        if self.keepalive:
            s.tasks.append(asyncio.create_task(self._ping_loop(s)))
        return session_present

    # --- sending -----------------------------------------------------------------
    async def _writer_loop(self, s):
        try:
            while True:
                while not s.outq:
                    s.wake.clear()
                    await s.wake.wait()
                parts, done = s.outq[0]  # stays queued while written: _end() wakes its waiter too
                for part in parts:
                    s.writer.write(part)
                await s.writer.drain()
                s.outq.pop(0)
                if done is not None:
                    done.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._end(s, "write: %s" % _describe(e))

    async def _send(self, s, parts, wait=True):
        """Queue a packet (a tuple of byte strings); with *wait*, return once
        it is written, or end the session when that takes longer than the
        timeout (the peer stopped reading)."""
        if s.lost is not None:
            raise MqttError("connection lost: %s" % s.lost)
        done = asyncio.Event() if wait else None
        s.outq.append((parts, done))
        s.wake.set()
        if done is None:
            return
        try:
            await asyncio.wait_for(done.wait(), self.timeout_s)
        except asyncio.TimeoutError:
            self._end(s, "write stalled: the peer read nothing for %ss" % self.timeout_s)
        if s.lost is not None:
            raise MqttError("connection lost: %s" % s.lost)

    async def _request(self, s, kind, packet_id, parts, what):
        """Send a packet and wait for its acknowledgement (matched by type and id)."""
        waiter = [asyncio.Event(), None]
        s.pending[(kind, packet_id)] = waiter
        try:
            await self._send(s, parts, wait=False)
            await asyncio.wait_for(waiter[0].wait(), self.timeout_s)
        except asyncio.TimeoutError:
            self._end(s, "no %s for packet %d within %ss" % (what, packet_id, self.timeout_s))
        finally:
            s.pending.pop((kind, packet_id), None)
        if waiter[1] is None:
            raise MqttError("connection lost before %s: %s" % (what, s.lost))
        return waiter[1]

    async def publish(self, topic, payload, qos=0, retain=False):
        """Send; with QoS 1 return only once the broker acknowledged it."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        pkt.check_topic(topic)
        pkt.check_qos(qos)
        s = self._live()
        if qos == 0:
            await self._send(s, (pkt.publish_header(topic, len(payload), 0, retain), payload))
            return
        packet_id = self._packet_id(s, "puback")
        header = pkt.publish_header(topic, len(payload), 1, retain, packet_id)
        await self._request(s, "puback", packet_id, (header, payload), "PUBACK")

    async def subscribe(self, topic_filter, qos=1):
        """Subscribe; return the granted QoS (0x80 when the broker refused)."""
        pkt.check_filter(topic_filter)
        pkt.check_qos(qos)
        s = self._live()
        packet_id = self._packet_id(s, "suback")
        ack = await self._request(s, "suback", packet_id, (pkt.subscribe(packet_id, [(topic_filter, qos)]),),
                                  "SUBACK")
        codes = ack[2]
        if len(codes) != 1 or (codes[0] != 0x80 and codes[0] > qos):
            self._end(s, "SUBACK for one filter at QoS %d returned %r" % (qos, codes))
            raise MqttError("connection lost: %s" % s.lost)
        return codes[0]

    # --- receiving ---------------------------------------------------------------
    async def _read_packet(self, s):
        """Read and validate one packet; the size is checked before the body
        is read. PUBLISH payloads are read straight into their own buffer."""
        head = await s.reader.readexactly(1)
        length_bytes = bytearray(head)
        while True:
            decoded = pkt.decode_length(length_bytes, 1)
            if decoded is not None:
                break
            length_bytes += await s.reader.readexactly(1)
        length = decoded[0]
        first = head[0]
        kind = pkt.check_header(first, length, self.max_packet_size)
        if kind != pkt.PUBLISH:
            body = await s.reader.readexactly(length) if length else b""
            return pkt.parse(first, body, self.max_packet_size)
        tlen_bytes = await s.reader.readexactly(2)
        qos = (first >> 1) & 3
        tlen = (tlen_bytes[0] << 8) | tlen_bytes[1]
        head_len = 2 + tlen + (2 if qos else 0)
        if head_len > length:
            raise pkt.ProtocolError("PUBLISH topic length %d overruns the packet (%d bytes)" % (tlen, length))
        rest = await s.reader.readexactly(head_len - 2)
        topic, qos, retain, packet_id, end = pkt.parse_publish_head(first, tlen_bytes + rest, length)
        payload = await s.reader.readexactly(length - end) if length > end else b""
        return ("publish", topic, payload, qos, retain, packet_id)

    async def _reader_loop(self, s):
        try:
            packet = await self._read_packet(s)
            if packet[0] != "connack":
                raise pkt.ProtocolError("expected CONNACK, got %s" % packet[0].upper())
            waiter = s.pending.pop(("connack", 0), None)
            if waiter is not None:
                waiter[1] = packet
                waiter[0].set()
            while True:
                packet = await self._read_packet(s)
                kind = packet[0]
                if kind == "publish":
                    _, topic, payload, qos, retain, packet_id = packet
                    if self.on_message is not None:
                        try:
                            self.on_message(topic, payload, retain)
                        except Exception as e:
                            # not acknowledged: a persistent session gets it again at the next connect
                            self._end(s, "on_message failed for %s: %s" % (topic, _describe(e)))
                            return
                    if qos == 1:
                        await self._send(s, (pkt.puback(packet_id),), wait=False)
                elif kind in ("puback", "suback"):
                    waiter = s.pending.pop((kind, packet[1]), None)
                    if waiter is not None:
                        waiter[1] = packet
                        waiter[0].set()
                elif kind == "pingresp":
                    s.pong.set()
                else:
                    raise pkt.ProtocolError("unexpected %s during the session" % kind.upper())
        except asyncio.CancelledError:
            raise
        except EOFError:
            self._end(s, "disconnected" if s.disconnecting else "the peer closed the connection")
        except Exception as e:
            self._end(s, "read: %s" % _describe(e))

    async def _ping_loop(self, s):
        half = self.keepalive / 2
        try:
            while True:
                await asyncio.sleep(half)
                s.pong.clear()
                await self._send(s, (pkt.pingreq(),), wait=False)
                try:
                    await asyncio.wait_for(s.pong.wait(), half)
                except asyncio.TimeoutError:
                    self._end(s, "no PINGRESP within %ss" % half)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._end(s, "ping: %s" % _describe(e))

    # --- ending ------------------------------------------------------------------
    def _end(self, s, reason):
        """End session *s* (once): cancel its tasks, drop the TCP connection,
        wake everybody waiting on it."""
        if s.lost is not None:
            return
        s.lost = reason
        self._last_reason = reason
        current = asyncio.current_task()
        for task in s.tasks:
            if task is not current:
                task.cancel()
        s.tasks = []
        netio.close_now(s.writer)
        for waiter in s.pending.values():
            waiter[0].set()
        s.pending = {}
        for _parts, done in s.outq:
            if done is not None:
                done.set()
        s.outq = []
        s.closed.set()

    async def disconnect(self):
        """Clean disconnect: DISCONNECT (bounded wait), then close. The
        broker discards the will."""
        s = self._session
        if s is None or s.lost is not None:
            return
        s.disconnecting = True
        try:
            await self._send(s, (pkt.disconnect(),))
        except MqttError:
            pass
        self._end(s, "disconnected")

    def abort(self):
        """Drop the connection at once without DISCONNECT (the broker sends the will)."""
        if self._session is not None:
            self._end(self._session, "aborted")

    async def wait_closed(self):
        s = self._session
        if s is not None:
            await s.closed.wait()
        return self.lost_reason


def _describe(e):
    text = str(e)
    name = type(e).__name__
    return "%s: %s" % (name, text) if text else name

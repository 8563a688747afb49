"""A scripted MQTT peer on 127.0.0.1 for protocol tests: it plays the broker
as a test tells it, including everything a broker must not do (truncated,
oversized, wrongly typed or flagged packets, refusals, silence, a peer that
stops reading). Raw bytes on purpose: nothing here validates.
"""

import socket
import struct
import threading
import time


def length(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body=b""):
    return bytes((first,)) + length(len(body)) + body


def connack(code=0, session_present=0, flags=0x20):
    return packet(flags, bytes((session_present, code)))


def suback(packet_id, *codes):
    return packet(0x90, struct.pack("!H", packet_id) + bytes(codes))


def puback(packet_id):
    return packet(0x40, struct.pack("!H", packet_id))


def pingresp():
    return b"\xd0\x00"


def publish(topic, payload=b"", qos=0, packet_id=1, first=None, topic_length=None):
    """A PUBLISH; *topic* is bytes as sent; *topic_length* may lie."""
    body = struct.pack("!H", len(topic) if topic_length is None else topic_length) + topic
    if qos:
        body += struct.pack("!H", packet_id)
    return packet(first if first is not None else 0x30 | (qos << 1), body + payload)


class Conn:
    """One accepted connection, seen from the peer."""

    def __init__(self, sock):
        self.sock = sock
        self.received = []  # (type nibble, flags, body) of each packet read
        self.eof_at = None

    def send(self, data):
        self.sock.sendall(data)

    def _recv_exactly(self, n, deadline):
        data = b""
        while len(data) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if self.eof_at is None:
                    self.eof_at = time.monotonic()
                raise EOFError
            data += chunk
        return data

    def recv_packet(self, timeout=5.0):
        """(type, flags, body) of the next packet; None on EOF or timeout."""
        deadline = time.monotonic() + timeout
        try:
            first = self._recv_exactly(1, deadline)[0]
            n, mult = 0, 1
            while True:
                b = self._recv_exactly(1, deadline)[0]
                n += (b & 0x7F) * mult
                mult *= 128
                if not b & 0x80:
                    break
            body = self._recv_exactly(n, deadline) if n else b""
        except (EOFError, TimeoutError, OSError):
            return None
        pkt = (first >> 4, first & 0x0F, body)
        self.received.append(pkt)
        return pkt

    def accept_session(self, code=0):
        """Read CONNECT, answer CONNACK *code*."""
        pkt = self.recv_packet()
        assert pkt is not None and pkt[0] == 1, f"expected CONNECT, got {pkt}"
        self.send(connack(code))
        return pkt

    def serve(self, duration, on_packet=None):
        """Answer SUBSCRIBE and PINGREQ like a broker for *duration* s or
        until EOF; *on_packet(conn, pkt)* may add behaviour."""
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            pkt = self.recv_packet(max(0.01, deadline - time.monotonic()))
            if pkt is None:
                if self.eof_at is not None:
                    return
                continue
            kind, _, body = pkt
            if on_packet is not None and on_packet(self, pkt):
                continue
            if kind == 8:  # SUBSCRIBE: grant what was asked
                self.send(suback(struct.unpack("!H", body[:2])[0], body[-1]))
            elif kind == 12:  # PINGREQ
                self.send(pingresp())
            elif kind == 3 and (pkt[1] >> 1) & 3 == 1:  # QoS 1 PUBLISH
                tlen = struct.unpack("!H", body[:2])[0]
                self.send(puback(struct.unpack("!H", body[2 + tlen:4 + tlen])[0]))
            elif kind == 14:  # DISCONNECT
                return

    def wait_eof(self, timeout=5.0):
        """Read (and drop) until the client closed the connection; seconds it took, or None."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except (ConnectionResetError, OSError):
                chunk = b""
            if not chunk:
                self.eof_at = self.eof_at or time.monotonic()
                return time.monotonic() - t0
        return None

    def kinds(self):
        return [p[0] for p in self.received]


class FakePeer:
    """Listens on 127.0.0.1; the n-th connection is handed to handlers[n]
    (the last handler takes any further ones). Exceptions in a handler are
    kept and raised by check()."""

    def __init__(self, *handlers, rcvbuf=None):
        self.handlers = handlers
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.threads = []
        self.errors = []
        self.ended = None  # set by the test when the client's process has exited
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        n = 0
        while True:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            conn = Conn(sock)
            self.conns.append(conn)
            handler = self.handlers[min(n, len(self.handlers) - 1)]
            n += 1
            thread = threading.Thread(target=self._run, args=(handler, conn), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run(self, handler, conn):
        try:
            handler(conn)
        except Exception as e:  # reported by check()
            self.errors.append(e)

    def join(self, timeout=10.0):
        """Wait for every handler to finish (they end at EOF or their own deadline)."""
        deadline = time.monotonic() + timeout
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def check(self):
        if self.errors:
            raise self.errors[0]

    def closed_by_client(self, index=0, before=0.3):
        """True when connection *index* saw EOF at least *before* seconds
        before the client's process exited (so the client closed it, not
        the end of the process)."""
        conn = self.conns[index]
        return conn.eof_at is not None and self.ended is not None and conn.eof_at <= self.ended - before

    def close(self):
        self.sock.close()
        for conn in self.conns:
            try:
                conn.sock.close()
            except OSError:
                pass

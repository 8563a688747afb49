"""A minimal MQTT 3.1.1 wire codec for load generators: just the packets a
benchmark needs (CONNECT, CONNACK, PUBLISH QoS 0/1, PUBACK, SUBSCRIBE,
SUBACK, PINGREQ, DISCONNECT), written so the per-message path costs a few
bytes operations and no allocations beyond the packet itself.

No I/O here: the caller owns the sockets (asyncio protocols, raw sockets) and
feeds received bytes to a :class:`PacketReader`. Written from the MQTT 3.1.1
specification (OASIS, 2014), sections 2 and 3."""

import struct

# Control packet types (high nibble of the first byte), section 2.2.1.
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

CONNACK_REASONS = {
    0: "accepted", 1: "unacceptable protocol version", 2: "identifier rejected", 3: "server unavailable",
    4: "bad user name or password", 5: "not authorized",
}

_U16 = struct.Struct(">H")


class ProtocolError(ValueError):
    """The peer sent bytes that are not a well-formed MQTT 3.1.1 packet."""


def remaining_length(n):
    """The variable-length encoding of *n* (section 2.2.3)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def utf8_field(text):
    """A length-prefixed UTF-8 string (section 1.5.3)."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    if len(raw) > 0xFFFF:
        raise ValueError("string field longer than 65535 bytes")
    return _U16.pack(len(raw)) + raw


def connect_packet(client_id, username=None, password=None, keepalive=60, clean_session=True):
    """CONNECT for protocol level 4 (3.1.1), without a will."""
    flags = 0x02 if clean_session else 0
    payload = utf8_field(client_id)
    if username is not None:
        flags |= 0x80
        payload += utf8_field(username)
        if password is not None:
            flags |= 0x40
            payload += utf8_field(password)
    variable = utf8_field("MQTT") + bytes([4, flags]) + _U16.pack(keepalive)
    body = variable + payload
    return b"\x10" + remaining_length(len(body)) + body


def subscribe_packet(packet_id, topics):
    """SUBSCRIBE for [(topic filter, max QoS)]."""
    body = _U16.pack(packet_id) + b"".join(utf8_field(t) + bytes([q]) for t, q in topics)
    return b"\x82" + remaining_length(len(body)) + body


def puback_packet(packet_id):
    return b"\x40\x02" + _U16.pack(packet_id)


_SHORT_LENGTHS = [remaining_length(n) for n in range(16384)]  # one and two byte encodings, precomputed


class PublishEncoder:
    """PUBLISH packets to one topic: the topic field is encoded once, so each
    packet is a header, the packet id and the payload joined."""

    __slots__ = ("qos", "_first", "_topic", "_fixed")

    def __init__(self, topic, qos=1, retain=False):
        if qos not in (0, 1):
            raise ValueError("only QoS 0 and 1 are supported")
        self.qos = qos
        self._first = bytes([0x30 | (qos << 1) | (1 if retain else 0)])
        self._topic = utf8_field(topic)
        self._fixed = len(self._topic) + (2 if qos else 0)

    def packet(self, payload, packet_id=0):
        n = self._fixed + len(payload)
        head = self._first + (_SHORT_LENGTHS[n] if n < 16384 else remaining_length(n)) + self._topic
        if self.qos:
            return head + _U16.pack(packet_id) + payload
        return head + payload


def parse_connack(body):
    """(session_present, return code) of a CONNACK body."""
    if len(body) != 2:
        raise ProtocolError(f"CONNACK body of {len(body)} bytes")
    return bool(body[0] & 1), body[1]


def parse_publish(first, body):
    """(topic bytes, packet id or None, payload) of a PUBLISH; *first* is the
    packet's first byte (QoS in bits 1-2)."""
    qos = (first >> 1) & 3
    tlen = (body[0] << 8) | body[1]
    end = 2 + tlen
    if qos:
        return body[2:end], (body[end] << 8) | body[end + 1], body[end + 2:]
    return body[2:end], None, body[end:]


def parse_suback(body):
    """(packet id, [granted QoS or 0x80 for failure]) of a SUBACK body."""
    return _U16.unpack_from(body)[0], list(body[2:])


class PacketReader:
    """Reassembles packets from a byte stream. feed() returns the complete
    packets now available as (first byte, body bytes); a partial packet is
    kept for the next call."""

    __slots__ = ("partial", "max_packet")

    def __init__(self, max_packet=1 << 20):
        self.partial = b""  # the start of a packet not complete yet
        self.max_packet = max_packet

    def feed(self, data):
        buf = self.partial + data if self.partial else data
        packets = []
        pos, size = 0, len(buf)
        while size - pos >= 2:
            length, mult, i = 0, 1, pos + 1
            while True:
                if i >= size:
                    self.partial = buf[pos:]
                    return packets
                byte = buf[i]
                length += (byte & 0x7F) * mult
                i += 1
                if not byte & 0x80:
                    break
                mult <<= 7
                if mult > 1 << 21:
                    raise ProtocolError("remaining length longer than 4 bytes")
            if length > self.max_packet:
                raise ProtocolError(f"packet of {length} bytes exceeds {self.max_packet}")
            end = i + length
            if end > size:
                break
            packets.append((buf[pos], buf[i:end]))
            pos = end
        self.partial = buf[pos:] if pos < size else b""
        return packets

"""MQTT 3.1.1 packets: encoding and decoding, no I/O.

Used by ``mqtt.py`` (the asyncio client of the firmware and the simulated
fleet). Only what a device needs: CONNECT (with will), CONNACK, PUBLISH
(QoS 0/1, retain), PUBACK, SUBSCRIBE/SUBACK, PINGREQ/PINGRESP, DISCONNECT.
"""

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82  # with the reserved flags 0b0010
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

MAX_REMAINING = 268435455

CONNACK_REASONS = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class ProtocolError(Exception):
    pass


def encode_length(n):
    if not 0 <= n <= MAX_REMAINING:
        raise ProtocolError("remaining length out of range: %d" % n)
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def decode_length(data, offset=1):
    """(length, offset after it) from *data*; None when more bytes are needed."""
    value, mult = 0, 1
    for i in range(4):
        if offset + i >= len(data):
            return None
        byte = data[offset + i]
        value += (byte & 0x7F) * mult
        if not byte & 0x80:
            return value, offset + i + 1
        mult *= 128
    raise ProtocolError("malformed remaining length")


def _str(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    if len(b) > 65535:
        raise ProtocolError("string too long for MQTT (%d bytes)" % len(b))
    return len(b).to_bytes(2, "big") + b


def _packet(first_byte, body):
    return bytes((first_byte,)) + encode_length(len(body)) + body


def check_topic(topic, wildcards=False):
    if not topic or len(topic.encode("utf-8")) > 65535 or "\0" in topic:
        raise ProtocolError("invalid topic %r" % (topic,))
    if not wildcards and ("+" in topic or "#" in topic):
        raise ProtocolError("wildcards are not allowed in a topic name: %r" % (topic,))
    return topic


def connect(client_id, keepalive=60, user=None, password=None, will=None, clean_session=True):
    """*will* = (topic, payload bytes, qos, retain) or None."""
    flags = 0x02 if clean_session else 0
    payload = _str(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _str(check_topic(topic)) + _str(message)
    if user is not None:
        flags |= 0x80
        payload += _str(user)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    if not 0 <= keepalive <= 65535:
        raise ProtocolError("keepalive out of range: %r" % (keepalive,))
    variable = _str("MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big")
    return _packet(CONNECT, variable + payload)


def publish(topic, payload, qos=0, retain=False, packet_id=None, dup=False):
    if qos not in (0, 1):
        raise ProtocolError("QoS %r not supported (0 or 1)" % (qos,))
    first = PUBLISH | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = _str(check_topic(topic))
    if qos:
        if not packet_id or not 0 < packet_id <= 65535:
            raise ProtocolError("QoS 1 needs a packet id 1..65535")
        body += packet_id.to_bytes(2, "big")
    return _packet(first, body + bytes(payload))


def puback(packet_id):
    return bytes((PUBACK, 2)) + packet_id.to_bytes(2, "big")


def subscribe(packet_id, topics):
    """*topics* = [(filter, qos), ...]."""
    body = packet_id.to_bytes(2, "big")
    for topic, qos in topics:
        body += _str(check_topic(topic, wildcards=True)) + bytes((qos,))
    return _packet(SUBSCRIBE, body)


def pingreq():
    return bytes((PINGREQ, 0))


def disconnect():
    return bytes((DISCONNECT, 0))


def parse(first_byte, body):
    """Decode one received packet into a tuple (kind, ...)."""
    kind = first_byte & 0xF0
    if kind == CONNACK:
        if len(body) != 2:
            raise ProtocolError("bad CONNACK length %d" % len(body))
        return ("connack", bool(body[0] & 1), body[1])
    if kind == PUBLISH:
        qos = (first_byte >> 1) & 3
        if qos > 1:
            raise ProtocolError("QoS %d PUBLISH not supported" % qos)
        if len(body) < 2:
            raise ProtocolError("PUBLISH too short")
        tlen = (body[0] << 8) | body[1]
        topic = body[2:2 + tlen].decode("utf-8")
        pos = 2 + tlen
        packet_id = None
        if qos:
            packet_id = (body[pos] << 8) | body[pos + 1]
            pos += 2
        return ("publish", topic, bytes(body[pos:]), qos, bool(first_byte & 1), packet_id)
    if kind == PUBACK:
        return ("puback", (body[0] << 8) | body[1])
    if kind == SUBACK:
        return ("suback", (body[0] << 8) | body[1], list(body[2:]))
    if kind == PINGRESP:
        return ("pingresp",)
    raise ProtocolError("unexpected packet type 0x%02x" % first_byte)

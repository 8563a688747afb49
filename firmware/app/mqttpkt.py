"""MQTT 3.1.1 packets: encoding, decoding and validation, no I/O.

Used by ``mqtt.py`` (the asyncio client of the firmware and the simulated
fleet). Only what a device needs: CONNECT (with will), CONNACK, PUBLISH
(QoS 0/1, retain), PUBACK, SUBSCRIBE/SUBACK, PINGREQ/PINGRESP, DISCONNECT.

Two kinds of error:
- ``ValueError`` for a bad argument of ours (a client id, topic, filter or
  QoS that must never reach the wire): raised before anything is sent;
- ``ProtocolError`` for what the peer sent that MQTT 3.1.1 does not allow
  (wrong type or flags, bad lengths, invalid topic or UTF-8, packet id 0).
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
SUBACK_CODES = (0, 1, 2, 0x80)

# exact remaining length of the fixed-size packets a server may send us
_FIXED_LENGTH = {CONNACK: 2, PUBACK: 2, PINGRESP: 0}
_NAMES = {CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK", SUBACK: "SUBACK", PINGRESP: "PINGRESP"}


class ProtocolError(Exception):
    pass


def encode_length(n):
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError("remaining length out of range: %d" % n)
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
    raise ProtocolError("malformed remaining length (more than 4 bytes)")


# --- strings -------------------------------------------------------------------

def utf8_problem(data):
    """Why *data* is not an MQTT UTF-8 string (section 1.5.3), or None.
    Checked by hand: MicroPython's decode() does not reject every invalid
    sequence, and MQTT also forbids U+0000."""
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b < 0x80:
            if b == 0:
                return "contains U+0000"
            i += 1
            continue
        if 0xC2 <= b <= 0xDF:
            need, low, high = 1, 0x80, 0xBF
        elif 0xE0 <= b <= 0xEF:
            need = 2
            low, high = (0xA0, 0xBF) if b == 0xE0 else (0x80, 0x9F) if b == 0xED else (0x80, 0xBF)
        elif 0xF0 <= b <= 0xF4:
            need = 3
            low, high = (0x90, 0xBF) if b == 0xF0 else (0x80, 0x8F) if b == 0xF4 else (0x80, 0xBF)
        else:
            return "invalid UTF-8 lead byte 0x%02x at %d" % (b, i)
        if i + need >= n:
            return "truncated UTF-8 sequence at %d" % i
        if not low <= data[i + 1] <= high:
            return "invalid UTF-8 continuation at %d" % (i + 1)
        for k in range(2, need + 1):
            if not 0x80 <= data[i + k] <= 0xBF:
                return "invalid UTF-8 continuation at %d" % (i + k)
        i += need + 1
    return None


def _encode(text, what):
    if isinstance(text, str):
        data = text.encode("utf-8")
    elif isinstance(text, (bytes, bytearray)):
        data = bytes(text)
    else:
        raise ValueError("%s must be a string, got %r" % (what, text))
    if len(data) > 65535:
        raise ValueError("%s is %d bytes; MQTT allows 65535" % (what, len(data)))
    problem = utf8_problem(data)
    if problem:
        raise ValueError("%s %r is not a valid MQTT string: %s" % (what, text, problem))
    return data


def _str(data):
    return len(data).to_bytes(2, "big") + data


def _packet(first_byte, body):
    return bytes((first_byte,)) + encode_length(len(body)) + body


def check_client_id(client_id):
    """1 to 65535 bytes of printable UTF-8 (no controls, spaces or wildcards)."""
    data = _encode(client_id, "client id")
    if not data:
        raise ValueError("client id must not be empty")
    for c in data:
        if c <= 0x20 or c == 0x7F or c in (0x23, 0x2B):  # controls, space, '#', '+'
            raise ValueError("client id %r contains a control character, space or wildcard" % (client_id,))
    return data


def check_topic(topic):
    """A topic name to publish to: not empty, no wildcards, valid UTF-8."""
    data = _encode(topic, "topic")
    if not data:
        raise ValueError("topic must not be empty")
    if b"+" in data or b"#" in data:
        raise ValueError("wildcards are not allowed in a topic name: %r" % (topic,))
    return data


def check_filter(topic_filter):
    """A topic filter to subscribe to: '+' fills a whole level, '#' only as the last level."""
    data = _encode(topic_filter, "topic filter")
    if not data:
        raise ValueError("topic filter must not be empty")
    levels = data.split(b"/")
    for i, level in enumerate(levels):
        if b"#" in level and (level != b"#" or i != len(levels) - 1):
            raise ValueError("'#' must be the whole last level of a topic filter: %r" % (topic_filter,))
        if b"+" in level and level != b"+":
            raise ValueError("'+' must fill a whole level of a topic filter: %r" % (topic_filter,))
    return data


def check_qos(qos):
    if qos not in (0, 1) or isinstance(qos, bool):
        raise ValueError("QoS %r not supported (0 or 1)" % (qos,))
    return qos


def check_packet_id(packet_id):
    if not isinstance(packet_id, int) or not 0 < packet_id <= 65535:
        raise ValueError("packet id must be 1..65535, got %r" % (packet_id,))
    return packet_id


# --- outgoing ------------------------------------------------------------------

def connect(client_id, keepalive=60, user=None, password=None, will=None, clean_session=True):
    """*will* = (topic, payload bytes, qos, retain) or None."""
    if not isinstance(keepalive, int) or not 0 <= keepalive <= 65535:
        raise ValueError("keepalive must be 0..65535 seconds, got %r" % (keepalive,))
    flags = 0x02 if clean_session else 0
    payload = _str(check_client_id(client_id))
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (check_qos(qos) << 3) | (0x20 if retain else 0)
        message = bytes(message)
        if len(message) > 65535:
            raise ValueError("will payload is %d bytes; MQTT allows 65535" % len(message))
        payload += _str(check_topic(topic)) + _str(message)
    if user is not None:
        flags |= 0x80
        payload += _str(_encode(user, "user name"))
        if password is not None:
            flags |= 0x40
            pw = password.encode("utf-8") if isinstance(password, str) else bytes(password)
            if len(pw) > 65535:
                raise ValueError("password is longer than 65535 bytes")
            payload += _str(pw)
    elif password is not None:
        raise ValueError("a password needs a user name (MQTT 3.1.1 section 3.1.2.9)")
    variable = _str(b"MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big")
    return _packet(CONNECT, variable + payload)


def publish_header(topic, payload_length, qos=0, retain=False, packet_id=None, dup=False):
    """Fixed and variable header of a PUBLISH; the payload is written after
    it as it is, so a message is never copied into a packet."""
    check_qos(qos)
    topic_bytes = check_topic(topic)
    first = PUBLISH | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup and qos else 0)
    variable = _str(topic_bytes)
    if qos:
        variable += check_packet_id(packet_id).to_bytes(2, "big")
    return bytes((first,)) + encode_length(len(variable) + payload_length) + variable


def publish(topic, payload, qos=0, retain=False, packet_id=None, dup=False):
    payload = bytes(payload)
    return publish_header(topic, len(payload), qos, retain, packet_id, dup) + payload


def puback(packet_id):
    return bytes((PUBACK, 2)) + check_packet_id(packet_id).to_bytes(2, "big")


def subscribe(packet_id, topics):
    """*topics* = [(filter, qos), ...]."""
    if not topics:
        raise ValueError("SUBSCRIBE needs at least one topic filter")
    body = check_packet_id(packet_id).to_bytes(2, "big")
    for topic, qos in topics:
        body += _str(check_filter(topic)) + bytes((check_qos(qos),))
    return _packet(SUBSCRIBE, body)


def pingreq():
    return bytes((PINGREQ, 0))


def disconnect():
    return bytes((DISCONNECT, 0))


# --- incoming ------------------------------------------------------------------

def check_header(first_byte, length, max_size):
    """Validate a received fixed header before its body is read (so nothing
    is allocated for a packet we refuse). Returns the packet type."""
    kind = first_byte & 0xF0
    flags = first_byte & 0x0F
    if kind == PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            raise ProtocolError("PUBLISH with QoS 3 (malformed)")
        if qos == 2:
            raise ProtocolError("QoS 2 PUBLISH, but this client never subscribes with QoS 2")
        if flags & 0x08 and not qos:
            raise ProtocolError("PUBLISH QoS 0 with the DUP flag set")
        if length < 2 + 1 + (2 if qos else 0):
            raise ProtocolError("PUBLISH too short (%d bytes)" % length)
    elif kind in _NAMES:
        if flags:
            raise ProtocolError("%s with reserved flags 0x%x" % (_NAMES[kind], flags))
        if kind in _FIXED_LENGTH and length != _FIXED_LENGTH[kind]:
            raise ProtocolError("%s with remaining length %d (must be %d)"
                                % (_NAMES[kind], length, _FIXED_LENGTH[kind]))
        if kind == SUBACK and length < 3:
            raise ProtocolError("SUBACK too short (%d bytes)" % length)
    else:
        raise ProtocolError("a server must not send packet type 0x%02x" % first_byte)
    if length > max_size:
        raise ProtocolError("%s of %d bytes exceeds the limit of %d" % (_NAMES[kind], length, max_size))
    return kind


def _packet_id(body, offset):
    packet_id = (body[offset] << 8) | body[offset + 1]
    if not packet_id:
        raise ProtocolError("packet id 0")
    return packet_id


def topic_name(data):
    """Validate a received topic name (bytes) and return it as str."""
    if not data:
        raise ProtocolError("PUBLISH with an empty topic")
    problem = utf8_problem(data)
    if problem:
        raise ProtocolError("PUBLISH topic is not valid UTF-8: %s" % problem)
    if b"+" in data or b"#" in data:
        raise ProtocolError("PUBLISH topic with a wildcard")
    return bytes(data).decode("utf-8")


def parse_publish_head(first_byte, body, length):
    """(topic, qos, retain, packet_id, payload offset) of a PUBLISH whose
    *body* holds at least the topic and packet id; *length* is the whole
    remaining length."""
    qos = (first_byte >> 1) & 3
    tlen = (body[0] << 8) | body[1]
    end = 2 + tlen + (2 if qos else 0)
    if end > length:
        raise ProtocolError("PUBLISH topic length %d overruns the packet (%d bytes)" % (tlen, length))
    topic = topic_name(body[2:2 + tlen])
    packet_id = _packet_id(body, 2 + tlen) if qos else None
    return topic, qos, bool(first_byte & 1), packet_id, end


def parse(first_byte, body, max_size=MAX_REMAINING):
    """Decode and validate one received packet into a tuple (kind, ...)."""
    kind = check_header(first_byte, len(body), max_size)
    if kind == CONNACK:
        if body[0] & 0xFE:
            raise ProtocolError("CONNACK with reserved flags 0x%02x" % body[0])
        code = body[1]
        if code not in CONNACK_REASONS:
            raise ProtocolError("CONNACK with unknown return code %d" % code)
        if code and body[0] & 1:
            raise ProtocolError("CONNACK refusal (%d) with session present" % code)
        return ("connack", bool(body[0] & 1), code)
    if kind == PUBLISH:
        topic, qos, retain, packet_id, end = parse_publish_head(first_byte, body, len(body))
        return ("publish", topic, bytes(body[end:]), qos, retain, packet_id)
    if kind == PUBACK:
        return ("puback", _packet_id(body, 0))
    if kind == SUBACK:
        codes = list(body[2:])
        for code in codes:
            if code not in SUBACK_CODES:
                raise ProtocolError("SUBACK with invalid return code 0x%02x" % code)
        return ("suback", _packet_id(body, 0), codes)
    return ("pingresp",)

"""PZEM-004T v3 energy meter over Modbus RTU (UART, 9600 8N1).

One meter measures one phase; a three-phase machine has three meters on one
RS-485/TTL bus at Modbus addresses 1, 2 and 3. This module builds the request
for the ten input registers and decodes the answer; a frame with a bad CRC,
the wrong address or function, or a Modbus exception is refused with the
reason, never half-read.
"""

READ_INPUT_REGISTERS = 0x04
REGISTER_COUNT = 10
RESPONSE_LENGTH = 5 + 2 * REGISTER_COUNT  # addr, fn, count, 20 data bytes, crc lo, crc hi
EXCEPTIONS = {1: "illegal function", 2: "illegal address", 3: "illegal data", 4: "slave error"}


class PzemError(Exception):
    pass


def crc16(data):
    """Modbus CRC-16 (init 0xFFFF, reflected polynomial 0xA001)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def with_crc(frame):
    crc = crc16(frame)
    return bytes(frame) + bytes((crc & 0xFF, crc >> 8))


def read_request(address):
    """The 8-byte request for all ten measurement registers of meter *address*."""
    if not 1 <= address <= 0xF7:
        raise PzemError("Modbus address must be 1..247, got %r" % (address,))
    return with_crc(bytes((address, READ_INPUT_REGISTERS, 0, 0, 0, REGISTER_COUNT)))


def _u16(data, i):
    return (data[i] << 8) | data[i + 1]


def _u32(data, i):
    # 32-bit values: low register first, each register big-endian
    return _u16(data, i) | (_u16(data, i + 2) << 16)


def parse_response(address, frame):
    """Decode an answer to read_request(address) into engineering units."""
    frame = bytes(frame)
    if len(frame) >= 5 and frame[1] == READ_INPUT_REGISTERS | 0x80:
        if crc16(frame[:5]) != 0:
            raise PzemError("exception frame with bad CRC from address %d" % address)
        raise PzemError("meter %d answered Modbus exception %d (%s)"
                        % (address, frame[2], EXCEPTIONS.get(frame[2], "unknown")))
    if len(frame) != RESPONSE_LENGTH:
        raise PzemError("meter %d: expected %d bytes, got %d" % (address, RESPONSE_LENGTH, len(frame)))
    if crc16(frame) != 0:
        raise PzemError("meter %d: CRC mismatch" % address)
    if frame[0] != address or frame[1] != READ_INPUT_REGISTERS or frame[2] != 2 * REGISTER_COUNT:
        raise PzemError("meter %d: unexpected header %s" % (address, frame[:3].hex()))
    d = frame[3:3 + 2 * REGISTER_COUNT]
    return {
        "voltage": _u16(d, 0) / 10.0,
        "current": _u32(d, 2) / 1000.0,
        "power": _u32(d, 6) / 10.0,
        "energy_wh": _u32(d, 10),
        "frequency": _u16(d, 14) / 10.0,
        "power_factor": _u16(d, 16) / 100.0,
        "alarm": _u16(d, 18) == 0xFFFF,
    }


class Pzem:
    """Reads meters through the board layer's UART bus.

    *bus* provides ``async transact(request, response_length, timeout_ms)``
    returning the bytes read (fewer on timeout).
    """

    def __init__(self, bus, timeout_ms=200):
        self.bus = bus
        self.timeout_ms = timeout_ms

    async def read(self, address):
        answer = await self.bus.transact(read_request(address), RESPONSE_LENGTH, self.timeout_ms)
        if not answer:
            raise PzemError("meter %d: no answer within %d ms" % (address, self.timeout_ms))
        return parse_response(address, answer)

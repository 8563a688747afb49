"""DS18B20 temperature sensors on a 1-Wire bus: ROM and scratchpad checks.

The board layer does the bus timing (MicroPython's ``onewire``); this module
checks every ROM code and scratchpad with the Dallas/Maxim CRC-8 and turns
the raw reading into degrees Celsius. A scratchpad that fails its CRC (noise,
a loose wire: all 0xFF) or still holds the power-on value 85.0 C right after
a reset is refused with the reason.
"""

FAMILY_DS18B20 = 0x28
POWER_ON_RAW = 0x0550  # 85.0 C: the register value before the first conversion


class SensorError(Exception):
    pass


def crc8(data):
    """Dallas/Maxim 1-Wire CRC-8 (x^8 + x^5 + x^4 + 1, reflected 0x8C)."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


def check_rom(rom):
    rom = bytes(rom)
    if len(rom) != 8:
        raise SensorError("ROM code must be 8 bytes, got %d" % len(rom))
    if crc8(rom[:7]) != rom[7]:
        raise SensorError("ROM %s: CRC mismatch" % rom.hex())
    if rom[0] != FAMILY_DS18B20:
        raise SensorError("ROM %s: family 0x%02x is not a DS18B20" % (rom.hex(), rom[0]))
    return rom


def temperature(scratchpad, first_read=False):
    """Degrees Celsius from a 9-byte scratchpad (CRC checked)."""
    pad = bytes(scratchpad)
    if len(pad) != 9:
        raise SensorError("scratchpad must be 9 bytes, got %d" % len(pad))
    if crc8(pad[:8]) != pad[8]:
        raise SensorError("scratchpad %s: CRC mismatch" % pad.hex())
    raw = pad[0] | (pad[1] << 8)
    if first_read and raw == POWER_ON_RAW:
        raise SensorError("sensor still holds its power-on value (85.0 C): no conversion yet")
    if raw & 0x8000:
        raw -= 0x10000
    # lower resolutions leave the low bits undefined: mask them
    resolution_bits = 9 + ((pad[4] >> 5) & 3)
    raw &= ~((1 << (12 - resolution_bits)) - 1)
    return raw / 16.0

"""PZEM-004T (Modbus RTU) and DS18B20 (1-Wire) codecs, checked against the
vendors' published vectors."""

import pytest

import ds18b20
import pzem


def frame(address, registers):
    data = b"".join(r.to_bytes(2, "big") for r in registers)
    return pzem.with_crc(bytes((address, 0x04, len(data))) + data)


def test_request_matches_the_pzem_manual():
    # PZEM-004T v3 manual: read all measurements of slave 1 = 01 04 00 00 00 0A 70 0D
    assert pzem.read_request(1) == bytes.fromhex("01040000000a700d")


def test_response_decodes_to_engineering_units():
    # 230.4 V, 12.345 A (32-bit, low word first), 2,650.1 W, 123,456 Wh, 50.0 Hz, pf 0.93, no alarm
    regs = [2304, 12345 & 0xFFFF, 12345 >> 16, 26501 & 0xFFFF, 26501 >> 16, 123456 & 0xFFFF, 123456 >> 16,
            500, 93, 0]
    assert pzem.parse_response(3, frame(3, regs)) == {
        "voltage": 230.4, "current": 12.345, "power": 2650.1, "energy_wh": 123456, "frequency": 50.0,
        "power_factor": 0.93, "alarm": False}


def test_alarm_flag():
    assert pzem.parse_response(1, frame(1, [2200, 0, 0, 0, 0, 0, 0, 500, 100, 0xFFFF]))["alarm"] is True


@pytest.mark.parametrize("mangle,reason", [
    (lambda f: f[:-1], "expected 25 bytes"),
    (lambda f: f[:10] + bytes((f[10] ^ 1,)) + f[11:], "CRC mismatch"),
    (lambda f: pzem.with_crc(bytes((2,)) + f[1:-2]), "unexpected header"),
    (lambda f: b"", "expected 25 bytes"),
])
def test_bad_frames_are_refused_with_a_reason(mangle, reason):
    good = frame(1, [2200, 1000, 0, 2200, 0, 0, 0, 500, 100, 0])
    with pytest.raises(pzem.PzemError) as err:
        pzem.parse_response(1, mangle(good))
    assert reason in str(err.value)


def test_modbus_exception_is_reported():
    with pytest.raises(pzem.PzemError) as err:
        pzem.parse_response(1, pzem.with_crc(bytes((1, 0x84, 2))))
    assert "exception 2 (illegal address)" in str(err.value)


@pytest.mark.parametrize("address", [0, 248, -1])
def test_bad_address(address):
    with pytest.raises(pzem.PzemError):
        pzem.read_request(address)


def test_driver_reads_through_the_bus():
    import asyncio

    class Bus:
        def __init__(self, answer):
            self.answer, self.sent = answer, []

        async def transact(self, request, length, timeout_ms):
            self.sent.append((request, length, timeout_ms))
            return self.answer

    bus = Bus(frame(2, [2300, 500, 0, 1150, 0, 7, 0, 499, 98, 0]))
    reading = asyncio.run(pzem.Pzem(bus).read(2))
    assert reading["voltage"] == 230.0 and reading["current"] == 0.5
    assert bus.sent == [(pzem.read_request(2), 25, 200)]
    with pytest.raises(pzem.PzemError, match="no answer"):
        asyncio.run(pzem.Pzem(Bus(b"")).read(2))


def test_crc8_matches_maxim_application_note_27():
    # AN27 example ROM: family 0x02, serial 0x000001B81C -> CRC 0xA2
    assert ds18b20.crc8(bytes.fromhex("021cb801000000")) == 0xA2


def scratchpad(raw, config=0x7F):
    pad = bytes((raw & 0xFF, (raw >> 8) & 0xFF, 0x4B, 0x46, config, 0xFF, 0x0C, 0x10))
    return pad + bytes((ds18b20.crc8(pad),))


@pytest.mark.parametrize("raw,celsius", [
    # DS18B20 datasheet table 1 (12-bit)
    (0x07D0, 125.0), (0x0550, 85.0), (0x0191, 25.0625), (0x00A2, 10.125), (0x0008, 0.5), (0x0000, 0.0),
    (0xFFF8, -0.5), (0xFF5E, -10.125), (0xFE6F, -25.0625), (0xFC90, -55.0),
])
def test_temperature_table(raw, celsius):
    assert ds18b20.temperature(scratchpad(raw)) == celsius


def test_lower_resolution_masks_undefined_bits():
    # 9-bit resolution: bits 0-2 undefined
    assert ds18b20.temperature(scratchpad(0x0197, config=0x1F)) == 25.0


def test_disconnected_sensor_and_power_on_value_are_refused():
    with pytest.raises(ds18b20.SensorError, match="CRC"):
        ds18b20.temperature(b"\xff" * 9)
    with pytest.raises(ds18b20.SensorError, match="power-on"):
        ds18b20.temperature(scratchpad(0x0550), first_read=True)


def test_rom_checks():
    rom = bytes.fromhex("28ff641d67160400")
    rom = rom[:7] + bytes((ds18b20.crc8(rom[:7]),))
    assert ds18b20.check_rom(rom) == rom
    with pytest.raises(ds18b20.SensorError, match="CRC"):
        ds18b20.check_rom(rom[:7] + bytes((rom[7] ^ 1,)))
    other = bytes.fromhex("021cb801000000a2")
    with pytest.raises(ds18b20.SensorError, match="not a DS18B20"):
        ds18b20.check_rom(other)

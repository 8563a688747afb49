"""The ROM-protocol test peer against the real, unmodified esptool (its
Python API, over socket://, ROM loader without the stub): what esptool
reads and writes is what the peer holds, and the peer's faults surface as
esptool errors. The peer is a stand-in for a board that cannot exist here."""

import hashlib
import random
import struct

import pytest
from esptool.cmds import attach_flash, detect_chip, detect_flash_size, verify_flash, write_flash
from esptool.util import FatalError
from rompeer import RomPeer, mac_efuse_words

MAC = bytes.fromhex("240ac4123401")
APP_OFFSET = 0x10000


@pytest.fixture
def peer():
    started = []

    def make(**kw):
        p = RomPeer(kw.pop("mac", MAC), **kw).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


def image(size, seed=1):
    """Bytes that compress partly, like a real app image, not like zeros."""
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) if i % 8 == 0 else (i // 64) & 0xFF for i in range(size))


def connect(p):
    return detect_chip(p.url, connect_mode="no-reset", connect_attempts=2)


def test_mac_efuse_words_round_trip_as_esptool_reads_them():
    w1, w2 = mac_efuse_words(MAC)
    assert struct.pack(">II", w2, w1)[2:8] == MAC


def test_esptool_detects_an_esp32_rom_and_reads_the_mac(peer):
    p = peer(mac=bytes.fromhex("240ac4abcdef"))
    with connect(p) as esp:
        assert esp.CHIP_NAME == "ESP32" and not esp.IS_STUB
        assert bytes(esp.read_mac()) == bytes.fromhex("240ac4abcdef")
        attach_flash(esp)
        assert detect_flash_size(esp) == "4MB"
    assert p.commands()[0] == "SYNC"
    assert "0x14" in p.commands()  # GET_SECURITY_INFO, refused as by the ESP32 ROM


@pytest.mark.parametrize("compress", [True, False])
def test_written_flash_equals_the_image_byte_for_byte(peer, compress):
    p = peer()
    data = image(150_000)
    with connect(p) as esp:
        attach_flash(esp)
        write_flash(esp, [(APP_OFFSET, data)], flash_size="4MB", compress=compress, no_compress=not compress)
    assert p.flash[APP_OFFSET:APP_OFFSET + len(data)] == data
    assert p.flash[:APP_OFFSET] == b"\xff" * APP_OFFSET  # nothing outside the region changed
    assert ("FLASH_DEFL_DATA" if compress else "FLASH_DATA") in p.commands()
    assert "SPI_FLASH_MD5" in p.commands()  # esptool verified what it wrote


def test_an_up_to_date_board_is_compared_by_digest_not_rewritten(peer):
    p = peer()
    data = image(80_000)
    with connect(p) as esp:
        attach_flash(esp)
        write_flash(esp, [(APP_OFFSET, data)], flash_size="4MB")
    before = len(p.log)
    with connect(p) as esp:
        attach_flash(esp)
        write_flash(esp, [(APP_OFFSET, data)], flash_size="4MB", skip_flashed=True)
    second = [name for name, _ in p.log[before:]]
    assert "SPI_FLASH_MD5" in second
    assert not {"FLASH_BEGIN", "FLASH_DEFL_BEGIN", "FLASH_DATA", "FLASH_DEFL_DATA"} & set(second)


def test_a_corrupted_write_is_caught_by_verification(peer):
    p = peer(corrupt_at=APP_OFFSET + 40_000)
    data = image(80_000)
    with connect(p) as esp:
        attach_flash(esp)
        with pytest.raises(FatalError, match="(?i)md5|hash|verif"):
            write_flash(esp, [(APP_OFFSET, data)], flash_size="4MB")
    assert p.flash[APP_OFFSET:APP_OFFSET + len(data)] != data
    with connect(p) as esp:  # and a separate verify says so too
        with pytest.raises(FatalError):
            verify_flash(esp, [(APP_OFFSET, data)], flash_size="4MB")


def test_a_board_that_drops_mid_write_is_an_error(peer):
    p = peer(drop_after=30_000)
    data = image(120_000)
    with pytest.raises(Exception) as err:
        with connect(p) as esp:
            attach_flash(esp)
            write_flash(esp, [(APP_OFFSET, data)], flash_size="4MB")
    assert p.flash[APP_OFFSET:APP_OFFSET + len(data)] != data
    assert hashlib.md5(p.flash[APP_OFFSET:APP_OFFSET + len(data)]).digest() != hashlib.md5(data).digest()
    assert err.value is not None


def test_the_stub_loader_is_refused(peer):
    """The peer has no RAM to run esptool's stub in: MEM_BEGIN is refused as an unknown command."""
    p = peer()
    with connect(p) as esp:
        with pytest.raises(Exception):
            esp.run_stub()
    assert "0x05" in p.commands()  # MEM_BEGIN

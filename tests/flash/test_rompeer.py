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


@pytest.fixture
def ser2net(tmp_path):
    """Debian's ser2net in RFC 2217 mode in front of a peer on a pty: returns the rfc2217:// URL."""
    import socket
    import subprocess

    import debtool
    from broker import free_port
    from waits import wait_until

    exe = debtool.require("ser2net")
    procs = []

    def answers(port):
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def make(p):
        path = p.start_pty()
        port = free_port()
        cfg = tmp_path / ("ser2net-%d.yaml" % port)
        cfg.write_text("%%YAML 1.1\n---\nconnection: &board\n  accepter: telnet(rfc2217),tcp,127.0.0.1,%d\n"
                       "  connector: serialdev,%s,115200n81,local\n" % (port, path))
        procs.append(subprocess.Popen([exe, "-n", "-d", "-c", str(cfg)], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))
        wait_until(lambda: answers(port), timeout=10, poll=0.05, what="ser2net listening on 127.0.0.1:%d" % port)
        return "rfc2217://127.0.0.1:%d?ign_set_control" % port

    yield make
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_flashing_through_a_real_rfc2217_server(ser2net):
    """The same peer behind a pty, served by Debian's ser2net (RFC 2217): the
    rfc2217:// path of the esp32_flash logic, write then an unchanged second
    run. Small regions: pyserial's RFC 2217 client renegotiates the port
    settings each time esptool changes its read timeout (about 0.3 s per
    command here), which is also what a station on the network sees."""
    import esp32flash
    import identity

    p = RomPeer(MAC)
    url = ser2net(p)
    regions = [(APP_OFFSET, image(4 * 1024)), (0x3F0000, b"per-device".ljust(1024, b"\xff"))]

    def plan(mac):
        return identity.device_id("psu", mac), regions, esp32flash.image_digest(regions)

    try:
        [first] = esp32flash.flash_ports([url], plan, connect_attempts=2)
        [second] = esp32flash.flash_ports([url], plan, connect_attempts=2)
    finally:
        p.stop()
    assert first["error"] is None and first["changed"] and first["mac"] == "24:0a:c4:12:34:01", first
    assert all(p.flash[a:a + len(d)] == d for a, d in regions)
    assert second["error"] is None and not second["changed"], second


def test_a_baud_rate_change_asks_the_rom_for_the_rate_itself(peer):
    """esptool corrects the rate it asks an ESP32 ROM for by the crystal the ROM
    estimates (RTC calibration and the 8 MHz oscillator's eFuse); the peer
    reports a 40 MHz estimate, so the ROM is asked for exactly the rate."""
    p = peer()
    with connect(p) as esp:
        esp.change_baud(460800)
        assert bytes(esp.read_mac()) == MAC  # still talking after the switch
    assert p.bauds == [460800]

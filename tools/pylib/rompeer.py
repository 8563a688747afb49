"""A test peer that speaks the ESP32 ROM bootloader's serial protocol over
TCP (esptool's ``socket://127.0.0.1:<port>``), holding the board's flash in
memory, so that the real, unmodified esptool code path runs in CI.

It is a test fixture, not an emulator: it answers what esptool sends to an
ESP32 (classic) ROM with ``--no-stub`` and refuses the rest the way the ROM
refuses an unknown command (status 1, reason 0x05).

Implemented: SLIP framing; SYNC (eight answers, non-zero value, as the ROM);
READ_REG / WRITE_REG with the chip-detect magic, the eFuse words holding
the MAC, the UART clock divider (crystal estimate), the RTC calibration
and the 8 MHz oscillator's eFuse (the ROM's own crystal estimate, which
esptool uses to correct the rate it asks for) and the SPI peripheral
registers enough for RDID (flash size detection); SPI_ATTACH;
SPI_SET_PARAMS; CHANGE_BAUDRATE (paced peers follow it); FLASH_BEGIN / DATA /
END with esptool's checksum; FLASH_DEFL_BEGIN / DATA / END (zlib);
SPI_FLASH_MD5 (32 hex characters, as the ROM answers); READ_FLASH_SLOW.
Refused: GET_SECURITY_INFO (the ESP32 ROM has none), MEM_* (so no stub
loader), and every stub-only command.

``paced=True`` makes the peer read at the pace of a UART (10 bits per
byte, as 8N1): at the ROM's 115200 baud until esptool's CHANGE_BAUDRATE,
then at the new rate, as a board does. Timings (bench/flash.py) are then
those of a board on a serial line rather than of a loopback socket. By
default the peer reads as fast as the socket delivers.

Faults for tests: ``drop_after`` closes the connection once that many flash
bytes were written in this session (a board unplugged mid-write);
``corrupt_at`` flips one bit of the byte written at that flash address (the
write "succeeds", verification must catch it).
"""

import hashlib
import os
import socket
import struct
import threading
import time
import zlib

CMD = {"FLASH_BEGIN": 0x02, "FLASH_DATA": 0x03, "FLASH_END": 0x04, "SYNC": 0x08, "WRITE_REG": 0x09,
       "READ_REG": 0x0A, "SPI_SET_PARAMS": 0x0B, "SPI_ATTACH": 0x0D, "READ_FLASH_SLOW": 0x0E,
       "CHANGE_BAUDRATE": 0x0F, "FLASH_DEFL_BEGIN": 0x10, "FLASH_DEFL_DATA": 0x11, "FLASH_DEFL_END": 0x12,
       "SPI_FLASH_MD5": 0x13}
NAMES = {v: k for k, v in CMD.items()}

CHIP_DETECT_MAGIC_REG = 0x40001000
ESP32_MAGIC = 0x00F01D83
EFUSE_RD_BASE = 0x3FF5A000
UART_CLKDIV_REG = 0x3FF40014
# The ROM's own estimate of the crystal, which esptool reads before
# CHANGE_BAUDRATE to correct the rate it asks for (the ESP32 ROM derives
# its baud rate from the 8 MHz oscillator's calibration): the RTC
# calibration value (TIMG0 RTCCALICFG1, bits 7..31) and the 8 MHz
# oscillator's factory frequency (eFuse word 4, bits 0..7). Chosen so that
# cali * 15625 * ck8m / 40 is exactly 40 MHz: no correction.
RTC_CALI_REG = 0x3FF5F06C
RTC_CALI_VALUE = 2048
EFUSE_CK8M_FREQ = 50
SPI_BASE = 0x3FF42000
SPI_CMD_REG = SPI_BASE + 0x00
SPI_USR2_REG = SPI_BASE + 0x24
SPI_W0_REG = SPI_BASE + 0x80
SPI_CMD_USR = 1 << 18
SPIFLASH_RDID = 0x9F
SYNC_VALUE = 0x20120707
CHECKSUM_SEED = 0xEF
FLASH_SIZES = {0x100000: 0x14, 0x200000: 0x15, 0x400000: 0x16, 0x800000: 0x17, 0x1000000: 0x18}
ROM_BAUD = 115200
XTAL_HZ = 40_000_000

# ROM error reasons (esptool's FatalError decodes them)
ERR_INVALID_MESSAGE = 0x05
ERR_BAD_DATA_LEN = 0xC0
ERR_BAD_DATA_CHECKSUM = 0xC1
ERR_NOT_IN_FLASH_MODE = 0xC3
ERR_DEFLATE = 0xC9


def slip_encode(payload):
    return b"\xc0" + payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class SlipReader:
    """Frames out of a byte stream; raises EOFError when the stream ends."""

    def __init__(self, recv):
        self._recv = recv
        self._buf = bytearray()

    def frame(self):
        while True:
            start = self._buf.find(b"\xc0")
            if start >= 0:
                end = self._buf.find(b"\xc0", start + 1)
                if end > start + 1:
                    raw = bytes(self._buf[start + 1:end])
                    del self._buf[:end]
                    return raw.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")
                if end == start + 1:  # two delimiters in a row: an empty frame
                    del self._buf[:end]
                    continue
            chunk = self._recv(4096)
            if not chunk:
                raise EOFError
            self._buf += chunk


def esptool_checksum(data):
    c = CHECKSUM_SEED
    for b in data:
        c ^= b
    return c


def mac_efuse_words(mac):
    """eFuse words 1 and 2 as esptool's ESP32ROM.read_mac() reads them back:
    pack('>II', word2, word1)[2:8] is the MAC (the top half of word 2 is the CRC)."""
    if len(mac) != 6:
        raise ValueError("a MAC is 6 bytes, got %r" % (mac,))
    crc = _crc8(mac)
    word2 = (crc << 16) | (mac[0] << 8) | mac[1]
    word1 = struct.unpack(">I", bytes(mac[2:6]))[0]
    return word1, word2


def _crc8(data):
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc >> 1) ^ 0x8C) if crc & 1 else crc >> 1
    return crc


class _FdConn:
    """A pty master as the socket-like object _serve() reads and writes.
    A pty never ends on its own: EIO means the slave side closed."""

    def __init__(self, fd):
        self.fd = fd

    def recv(self, n):
        try:
            return os.read(self.fd, n)
        except OSError:
            return b""

    def sendall(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self):
        pass  # stop() closes both ends


class RomPeer:
    """One board: ``RomPeer(mac).start()``; ``url`` for esptool; ``flash`` its memory."""

    def __init__(self, mac, flash_size=0x400000, drop_after=None, corrupt_at=None, paced=False):
        if flash_size not in FLASH_SIZES:
            raise ValueError("flash_size %#x is not one of %s" % (flash_size, sorted(FLASH_SIZES)))
        self.mac = bytes(mac)
        self.flash = bytearray(b"\xff" * flash_size)
        self.drop_after = drop_after
        self.corrupt_at = corrupt_at
        self.paced = paced
        w1, w2 = mac_efuse_words(self.mac)
        self.regs = {CHIP_DETECT_MAGIC_REG: ESP32_MAGIC, EFUSE_RD_BASE + 4: w1, EFUSE_RD_BASE + 8: w2,
                     EFUSE_RD_BASE + 16: EFUSE_CK8M_FREQ, RTC_CALI_REG: RTC_CALI_VALUE << 7,
                     UART_CLKDIV_REG: round(XTAL_HZ / ROM_BAUD)}
        self.log = []  # (command name, detail) in order, for tests
        self.bauds = []  # rates CHANGE_BAUDRATE switched to, in order
        self._sock = None

    # --- lifecycle --------------------------------------------------------------
    def start(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(4)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def port(self):
        return self._sock.getsockname()[1]

    @property
    def url(self):
        return "socket://127.0.0.1:%d" % self.port

    def start_pty(self):
        """Serve on a pseudo-terminal instead (for ser2net): returns the slave's path."""
        master, slave = os.openpty()
        self._pty = (master, slave)
        threading.Thread(target=self._serve, args=(_FdConn(master),), daemon=True).start()
        return os.ttyname(slave)

    def stop(self):
        if self._sock:
            self._sock.close()
            self._sock = None
        for fd in getattr(self, "_pty", ()):
            try:
                os.close(fd)
            except OSError:
                pass
        self._pty = ()

    def commands(self):
        return [name for name, _ in self.log]

    def _accept(self):
        while self._sock:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    # --- one connection (one esptool session) --------------------------------------
    def _serve(self, conn):
        state = {"written": 0, "write": None, "baud": ROM_BAUD}
        recv = conn.recv
        if self.paced:
            def recv(n, _recv=conn.recv):
                chunk = _recv(min(n, 4096))
                time.sleep(len(chunk) * 10.0 / state["baud"])
                return chunk
        reader = SlipReader(recv)
        try:
            while True:
                frame = reader.frame()
                if len(frame) < 8 or frame[0] != 0x00:
                    continue  # the ROM ignores what is not a request
                _, op, size, chk = struct.unpack("<BBHI", frame[:8])
                data = frame[8:8 + size]
                for val, body in self._handle(op, data, chk, state):
                    conn.sendall(slip_encode(struct.pack("<BBHI", 0x01, op, len(body), val) + body))
                if state.get("drop"):
                    return
        except (EOFError, ConnectionError, OSError):
            return
        finally:
            conn.close()

    def _ok(self, val=0, data=b""):
        return [(val, data + b"\x00\x00\x00\x00")]

    def _err(self, reason, val=0):
        return [(val, bytes([1, reason, 0, 0]))]

    def _handle(self, op, data, chk, state):
        name = NAMES.get(op)
        self.log.append((name or "0x%02x" % op, len(data)))
        if name is None:
            return self._err(ERR_INVALID_MESSAGE)
        if name == "SYNC":
            return self._ok(SYNC_VALUE) * 8
        if name == "READ_REG":
            (addr,) = struct.unpack("<I", data[:4])
            return self._ok(self.regs.get(addr, 0))
        if name == "WRITE_REG":
            addr, value, mask, _delay = struct.unpack("<IIII", data[:16])
            self.regs[addr] = (self.regs.get(addr, 0) & ~mask) | (value & mask)
            if addr == SPI_CMD_REG and value & SPI_CMD_USR:
                self._spi_command()
            return self._ok()
        if name == "CHANGE_BAUDRATE":
            new_baud, _old = struct.unpack("<II", data[:8])
            if not 9600 <= new_baud <= 5_000_000:
                return self._err(ERR_BAD_DATA_LEN)
            answer = self._ok()
            state["baud"] = new_baud  # the answer still goes at the old rate, as the ROM's does
            self.bauds.append(new_baud)
            return answer
        if name in ("SPI_ATTACH", "SPI_SET_PARAMS"):
            return self._ok()
        if name in ("FLASH_BEGIN", "FLASH_DEFL_BEGIN"):
            erase_size, _blocks, _block_size, offset = struct.unpack("<IIII", data[:16])
            if offset + erase_size > len(self.flash):
                return self._err(ERR_BAD_DATA_LEN)
            end = min(len(self.flash), offset + erase_size)
            self.flash[offset:end] = b"\xff" * (end - offset)
            state["write"] = {"offset": offset, "pos": offset,
                              "z": zlib.decompressobj() if name == "FLASH_DEFL_BEGIN" else None}
            return self._ok()
        if name in ("FLASH_DATA", "FLASH_DEFL_DATA"):
            w = state["write"]
            if w is None:
                return self._err(ERR_NOT_IN_FLASH_MODE)
            length, _seq, _, _ = struct.unpack("<IIII", data[:16])
            block = data[16:16 + length]
            if len(block) != length:
                return self._err(ERR_BAD_DATA_LEN)
            if esptool_checksum(block) != chk:
                return self._err(ERR_BAD_DATA_CHECKSUM)
            if w["z"] is not None:
                try:
                    block = w["z"].decompress(block)
                except zlib.error:
                    return self._err(ERR_DEFLATE)
            return self._write(block, state)
        if name in ("FLASH_END", "FLASH_DEFL_END"):
            state["write"] = None
            return self._ok()
        if name == "SPI_FLASH_MD5":
            addr, size, _, _ = struct.unpack("<IIII", data[:16])
            if addr + size > len(self.flash):
                return self._err(ERR_BAD_DATA_LEN)
            return self._ok(0, hashlib.md5(self.flash[addr:addr + size]).hexdigest().encode())
        if name == "READ_FLASH_SLOW":
            addr, size = struct.unpack("<II", data[:8])
            return self._ok(0, bytes(self.flash[addr:addr + size]).ljust(64, b"\xff"))
        return self._err(ERR_INVALID_MESSAGE)

    def _write(self, block, state):
        w = state["write"]
        pos = w["pos"]
        if self.drop_after is not None and state["written"] + len(block) > self.drop_after:
            keep = max(0, self.drop_after - state["written"])
            self.flash[pos:pos + keep] = block[:keep]
            state["drop"] = True  # the board is gone: no answer, the connection closes
            return []
        block = bytearray(block)
        if self.corrupt_at is not None and pos <= self.corrupt_at < pos + len(block):
            block[self.corrupt_at - pos] ^= 0x01
        self.flash[pos:pos + len(block)] = block
        w["pos"] = pos + len(block)
        state["written"] += len(block)
        return self._ok()

    def _spi_command(self):
        command = self.regs.get(SPI_USR2_REG, 0) & 0xFF
        if command == SPIFLASH_RDID:
            # manufacturer 0xEF (Winbond), type 0x40, capacity id from the size
            self.regs[SPI_W0_REG] = 0xEF | (0x40 << 8) | (FLASH_SIZES[len(self.flash)] << 16)
        self.regs[SPI_CMD_REG] = self.regs.get(SPI_CMD_REG, 0) & ~SPI_CMD_USR

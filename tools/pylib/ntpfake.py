"""An SNTP server for tests, on 127.0.0.1: it answers with its own clock,
which runs from a fixed date in 2031, so a device's timestamps show that
they came from this server and not from the host's clock."""

import socket
import struct
import threading
import time

NTP_EPOCH_OFFSET = 2208988800
FAKE_START = 1924992000  # 2031-01-01T00:00:00Z


class NtpServer:
    def __init__(self, start_epoch=FAKE_START):
        self.start_epoch = start_epoch
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.queries = 0
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = None

    def now(self):
        return self.start_epoch + (time.monotonic() - self._t0)

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, daemon=True)
            self._thread.start()
        return self

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                continue
            if len(data) < 48 or data[0] & 7 != 3:
                continue
            self.queries += 1
            now = self.now() + NTP_EPOCH_OFFSET
            seconds, fraction = int(now), int((now % 1) * 2 ** 32)
            reply = bytes((0x24, 2, 6, 0xEC)) + bytes(36) + struct.pack("!II", seconds, fraction)
            self.sock.sendto(reply, peer)

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.sock.close()

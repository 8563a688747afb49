"""A minimal SNTP client (RFC 4330) that does not block the event loop, for
MicroPython and CPython.

Plants are often air-gapped, so the time source is the site's own: the
``ntp_server`` setting, by default the broker's host (the site controller).
The socket is non-blocking and polled between short sleeps, and closed on
every path.
"""

import asyncio
import struct

NTP_EPOCH_OFFSET = 2208988800  # 1900-01-01 to 1970-01-01 in seconds


class SntpError(Exception):
    pass


def request():
    """A client request: LI 0, version 4, mode 3."""
    return b"\x23" + bytes(47)


def parse(packet):
    """Seconds since 1970 from a server reply (transmit timestamp)."""
    if len(packet) < 48:
        raise SntpError("short NTP reply (%d bytes)" % len(packet))
    mode, stratum = packet[0] & 7, packet[1]
    if mode not in (4, 5):
        raise SntpError("not an NTP server reply (mode %d)" % mode)
    if packet[0] >> 6 == 3 or stratum == 0:
        raise SntpError("the NTP server is not synchronised (kiss-o'-death or alarm)")
    seconds, fraction = struct.unpack("!II", packet[40:48])
    if not seconds:
        raise SntpError("NTP reply without a transmit time")
    return seconds - NTP_EPOCH_OFFSET + fraction / 4294967296.0


def split_server(server, default_port=123):
    host, sep, port = server.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return server, default_port


async def query(server, timeout_s=2.0, poll_s=0.05):
    """Ask *server* ("host" or "host:port"); return seconds since 1970."""
    import socket

    host, port = split_server(server)
    address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.sendto(request(), address)
        waited = 0.0
        while True:
            try:
                data = sock.recv(64)
                return parse(data)
            except OSError as e:
                if e.args and e.args[0] not in (11, 35, 110):  # EAGAIN (Linux, lwIP: 11; BSD: 35), ETIMEDOUT
                    raise SntpError("NTP %s:%d: %s" % (host, port, e))
            if waited >= timeout_s:
                raise SntpError("no answer from NTP server %s:%d within %ss" % (host, port, timeout_s))
            await asyncio.sleep(poll_s)
            waited += poll_s
    finally:
        sock.close()

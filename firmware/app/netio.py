"""TCP streams that never leak a socket, on MicroPython and CPython.

An ESP32 has about 10 lwIP sockets, so every connection the firmware opens
(MQTT, OTA download, /metrics) must be closed on every path. The two
interpreters differ where it matters:

- MicroPython's ``StreamWriter.close()`` does nothing; only ``await
  wait_closed()`` closes the socket, and its ``open_connection`` leaks the
  socket it made when it is cancelled (a connect timeout). Here the socket
  is created by us and closed on any failure or cancellation.
- CPython's ``close()`` keeps the socket open until its write buffer
  drains, which never happens when the peer stops reading; ``close_now()``
  aborts the transport instead.
"""

import asyncio
import sys

MICROPYTHON = sys.implementation.name == "micropython"


async def _mp_open(host, port, ssl, timeout_s):
    import errno
    import select
    import socket

    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    sock = socket.socket(ai[0], ai[1], ai[2])
    try:
        sock.setblocking(False)
        try:
            sock.connect(ai[-1])
        except OSError as e:
            if e.errno != errno.EINPROGRESS:  # 115 on Linux, 119 in lwIP
                raise
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        deadline = timeout_s * 1000
        waited = 0
        while True:
            events = poller.poll(0)
            if events:
                if events[0][1] & (select.POLLERR | select.POLLHUP):
                    raise OSError(errno.ECONNREFUSED, "connection to %s:%d refused" % (host, port))
                break
            if waited >= deadline:
                raise OSError(errno.ETIMEDOUT, "connect to %s:%d timed out after %ss" % (host, port, timeout_s))
            await asyncio.sleep_ms(10)
            waited += 10
        poller.unregister(sock)
        if ssl:
            sock = ssl.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            sock.setblocking(False)
        stream = asyncio.StreamWriter(sock)
        return stream, stream
    except BaseException:  # also on cancellation: the socket is ours to close
        sock.close()
        raise


async def open_connection(host, port, ssl=None, timeout_s=10):
    """(reader, writer) connected to host:port; OSError (or TimeoutError)
    when that fails within *timeout_s*; no socket is left behind."""
    if MICROPYTHON:
        return await _mp_open(host, port, ssl, timeout_s)
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ssl), timeout_s)
    except asyncio.TimeoutError:
        raise OSError(110, "connect to %s:%d timed out after %ss" % (host, port, timeout_s))


def close_now(writer):
    """Drop the connection at once, whatever is still unsent (synchronous).
    Tasks still waiting on this stream must be cancelled first."""
    if writer is None:
        return
    try:
        transport = getattr(writer, "transport", None)
        if transport is not None:
            transport.abort()  # CPython
        else:
            writer.s.close()  # MicroPython: Stream.close() is a no-op
    except Exception:
        pass


async def close(writer, timeout_s=2):
    """Close after sending what is buffered (bounded), then free the socket."""
    if writer is None:
        return
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), timeout_s)
    except BaseException as e:
        close_now(writer)
        if isinstance(e, asyncio.CancelledError):
            raise

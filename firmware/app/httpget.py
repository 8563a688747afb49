"""A minimal streaming HTTP/1.0 GET for OTA downloads (MicroPython and
CPython). *connect(host, port, tls, timeout_s)* is the board's
open_connection, so TLS uses the site CA and the simulator can inject
network faults. Every path closes the connection (``netio``): an ESP32 has
about 10 sockets."""

import asyncio

import netio

MAX_HEADER_LINES = 32
MAX_LINE = 1024


class HttpError(Exception):
    pass


def parse_url(url):
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise HttpError("unsupported URL %r (http or https)" % (url,))
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    if not host or (port and not port.isdigit()):
        raise HttpError("bad host or port in URL %r" % (url,))
    return scheme, host, int(port) if port else (443 if scheme == "https" else 80), "/" + path


class Response:
    def __init__(self, reader, writer, status, headers, timeout_s):
        self._reader, self._writer = reader, writer
        self.status, self.headers = status, headers
        self.length = int(headers["content-length"]) if headers.get("content-length", "").isdigit() else None
        self.timeout_s = timeout_s

    async def read(self, n):
        """Up to *n* bytes; b'' at the end. Raises HttpError when the server stalls."""
        try:
            return await asyncio.wait_for(self._reader.read(n), self.timeout_s)
        except asyncio.TimeoutError:
            raise HttpError("download stalled: no data for %ss" % self.timeout_s)

    async def readinto(self, buf):
        """Fill *buf* (a memoryview) with up to len(buf) bytes; 0 at the end.
        On MicroPython the stream reads straight into it, so a download
        allocates nothing per chunk (the heap of an ESP32 fragments)."""
        readinto = getattr(self._reader, "readinto", None)
        try:
            if readinto is not None:
                while True:
                    n = await asyncio.wait_for(readinto(buf), self.timeout_s)
                    if n is not None:  # None: woken, but nothing to read yet
                        return n
            data = await asyncio.wait_for(self._reader.read(len(buf)), self.timeout_s)
        except asyncio.TimeoutError:
            raise HttpError("download stalled: no data for %ss" % self.timeout_s)
        buf[:len(data)] = data
        return len(data)

    def close(self):
        netio.close_now(self._writer)
        self._writer = None


async def _line(reader, timeout_s):
    line = await asyncio.wait_for(reader.readline(), timeout_s)
    if len(line) > MAX_LINE:
        raise HttpError("HTTP header line longer than %d bytes" % MAX_LINE)
    return line


async def get(url, connect, timeout_s=10):
    """Send GET *url*; return a Response (status 200) whose body can be read."""
    scheme, host, port, path = parse_url(url)
    try:
        reader, writer = await connect(host, port, scheme == "https", timeout_s)
    except (OSError, asyncio.TimeoutError) as e:
        raise HttpError("cannot connect to %s:%d: %s" % (host, port, e))
    try:
        writer.write(("GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: edgefleet\r\n\r\n" % (path, host)).encode())
        await asyncio.wait_for(writer.drain(), timeout_s)
        line = await _line(reader, timeout_s)
        parts = line.decode().split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise HttpError("bad status line %r" % (line[:80],))
        status = int(parts[1])
        headers = {}
        for _ in range(MAX_HEADER_LINES):
            h = await _line(reader, timeout_s)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            raise HttpError("more than %d header lines" % MAX_HEADER_LINES)
    except asyncio.TimeoutError:
        netio.close_now(writer)
        raise HttpError("no response from %s:%d within %ss" % (host, port, timeout_s))
    except BaseException:
        netio.close_now(writer)
        raise
    response = Response(reader, writer, status, headers, timeout_s)
    if status != 200:
        response.close()
        raise HttpError("GET %s: HTTP %d" % (url, status))
    return response

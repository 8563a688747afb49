"""A minimal streaming HTTP/1.0 GET for OTA downloads (MicroPython and
CPython). *connect(host, port, tls)* is the board's open_connection, so TLS
uses the site CA and the simulator can inject network faults."""

import asyncio


class HttpError(Exception):
    pass


def parse_url(url):
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise HttpError("unsupported URL %r (http or https)" % (url,))
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    if not host:
        raise HttpError("no host in URL %r" % (url,))
    return scheme, host, int(port) if port else (443 if scheme == "https" else 80), "/" + path


class Response:
    def __init__(self, reader, writer, status, headers, timeout_s):
        self._reader, self._writer = reader, writer
        self.status, self.headers = status, headers
        self.length = int(headers["content-length"]) if "content-length" in headers else None
        self.timeout_s = timeout_s

    async def read(self, n):
        """Up to *n* bytes; b'' at the end. Raises HttpError when the server stalls."""
        try:
            return await asyncio.wait_for(self._reader.read(n), self.timeout_s)
        except asyncio.TimeoutError:
            raise HttpError("download stalled: no data for %ss" % self.timeout_s)

    def close(self):
        try:
            self._writer.close()
        except Exception:
            pass


async def get(url, connect, timeout_s=10):
    scheme, host, port, path = parse_url(url)
    try:
        reader, writer = await asyncio.wait_for(connect(host, port, scheme == "https"), timeout_s)
    except asyncio.TimeoutError:
        raise HttpError("connect to %s:%d timed out" % (host, port))
    writer.write(("GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: edgefleet\r\n\r\n" % (path, host)).encode())
    await writer.drain()
    try:
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        parts = line.decode().split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise HttpError("bad status line %r" % (line,))
        status = int(parts[1])
        headers = {}
        while True:
            h = await asyncio.wait_for(reader.readline(), timeout_s)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
    except asyncio.TimeoutError:
        writer.close()
        raise HttpError("no response from %s:%d within %ss" % (host, port, timeout_s))
    except Exception:
        writer.close()
        raise
    response = Response(reader, writer, status, headers, timeout_s)
    if status != 200:
        response.close()
        raise HttpError("GET %s: HTTP %d" % (url, status))
    return response

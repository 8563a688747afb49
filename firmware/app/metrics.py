"""The ``/metrics`` server: ``serve(host, port, lines_fn)`` is a minimal
HTTP/1.0 server on asyncio that answers GET /metrics with ``lines_fn()``
(a list of lines, as ``metricstext.render_lines`` makes them) and 404
otherwise, with a read deadline and a limit on concurrent clients.

Only this listening part stays in the device's memory; the text is
rendered by ``metricstext``, which the device imports for a scrape only.
"""


MAX_CLIENTS = 2  # an ESP32 has about 10 sockets; scrapers beyond this are turned away at once
READ_TIMEOUT_S = 5
MAX_REQUEST_LINES = 32
MAX_LINE = 1024


class Server:
    """A minimal HTTP/1.0 server for ``GET /metrics``: each request has a
    read deadline and at most MAX_CLIENTS are served at once, so a slow or
    hostile client can neither hold sockets nor wedge the device."""

    def __init__(self, body_fn, max_clients=MAX_CLIENTS, timeout_s=READ_TIMEOUT_S):
        self.body_fn = body_fn
        self.max_clients = max_clients
        self.timeout_s = timeout_s
        self.active = 0
        self.served = 0
        self.refused = 0  # turned away: too many at once
        self.dropped = 0  # timed out, too long, reset
        self._server = None

    async def _request_line(self, reader):
        import asyncio

        request = None
        for _ in range(MAX_REQUEST_LINES):
            line = await asyncio.wait_for(reader.readline(), self.timeout_s)
            if len(line) > MAX_LINE:
                return None
            if request is None:
                request = line
            if not line or line in (b"\r\n", b"\n"):
                return request
        return None

    async def handle(self, reader, writer):
        import netio

        if self.active >= self.max_clients:
            self.refused += 1
            netio.close_now(writer)
            return
        self.active += 1
        try:
            request = await self._request_line(reader)
            parts = request.decode().split() if request else []
            import asyncio

            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                lines = self.body_fn()
                head = ("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                        "Content-Length: %d\r\n\r\n" % sum(len(line) + 1 for line in lines))
            else:
                lines = ["not found"]
                head = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n"
            writer.write(head.encode())
            pending = 0
            for line in lines:  # line by line (no block larger than a line), drained every 512 bytes or so
                writer.write((line + "\n").encode())
                pending += len(line) + 1
                if pending >= 512:
                    pending = 0
                    await asyncio.wait_for(writer.drain(), self.timeout_s)
            await asyncio.wait_for(writer.drain(), self.timeout_s)
            self.served += 1
            await netio.close(writer, self.timeout_s)
        except BaseException as e:  # timeout, reset, garbage, cancellation: drop the connection
            self.dropped += 1
            netio.close_now(writer)
            if not isinstance(e, Exception):
                raise
        finally:
            self.active -= 1

    async def start(self, host, port):
        import asyncio

        self._server = await asyncio.start_server(self.handle, host, port)
        return self

    def close(self):
        if self._server is not None:
            self._server.close()
            self._server = None


async def serve(host, port, body_fn):
    """Start the server; returns it (``close()`` stops it)."""
    return await Server(body_fn).start(host, port)

"""``/metrics`` in the Prometheus text format (version 0.0.4).

``render(values)`` is pure (runs anywhere); ``serve(...)`` is a minimal
HTTP/1.0 server on asyncio that answers GET /metrics and 404 otherwise.
"""


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels):
    if not labels:
        return ""
    return "{" + ",".join('%s="%s"' % (k, _escape(v)) for k, v in labels) + "}"


def render(metrics):
    """*metrics*: [(name, type, help, [(labels tuple, value), ...]), ...]."""
    out = []
    for name, kind, help_text, samples in metrics:
        out.append("# HELP %s %s" % (name, help_text))
        out.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            if value is None:
                continue
            if isinstance(value, bool):
                value = int(value)
            out.append("%s%s %s" % (name, _labels(labels), repr(float(value)) if isinstance(value, float)
                                    else value))
    return "\n".join(out) + "\n"


async def _handle(reader, writer, body_fn):
    try:
        request = await reader.readline()
        while True:  # skip the headers
            line = await reader.readline()
            if not line or line in (b"\r\n", b"\n"):
                break
        parts = request.decode().split()
        if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
            body = body_fn().encode()
            head = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %d\r\n\r\n" % len(body)
        else:
            body = b"not found\n"
            head = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
        writer.write(head.encode() + body)
        await writer.drain()
    finally:
        writer.close()


async def serve(host, port, body_fn):
    """Start the server; returns the asyncio server object."""
    import asyncio

    return await asyncio.start_server(lambda r, w: _handle(r, w, body_fn), host, port)

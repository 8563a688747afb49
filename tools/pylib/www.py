"""A real HTTP(S) server on 127.0.0.1 serving a directory, for OTA tests:
it records the paths requested."""

import hashlib
import http.server
import threading


class Www:
    def __init__(self, root, tls=None):
        self.root = root
        self.requests = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *a):
                outer.requests.append(self.path)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            import ssl

            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(tls["cert"], tls["key"])
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, name, data, digest_of=None):
        """Serve *data* as /name; returns the OTA command fields (url, size,
        sha256 of *digest_of* if given, else of *data*)."""
        (self.root / name).write_bytes(data)
        return {"url": f"{self.url}/{name}", "size": len(data),
                "sha256": hashlib.sha256(digest_of if digest_of is not None else data).hexdigest()}

    def close(self):
        self.server.shutdown()
        self.server.server_close()

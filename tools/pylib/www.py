"""A real HTTP(S) server on 127.0.0.1 serving a directory, for OTA tests:
it records the paths requested."""

import hashlib
import http.server
import threading


class Www:
    def __init__(self, root, tls=None):
        self.root = root
        self.requests = []
        # set cut to a threading.Event to cut every download halfway:
        # midway is set once half is sent, and the connection closes once cut is set
        self.cut = None
        self.midway = threading.Event()
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *a):
                outer.requests.append(self.path)

            def copyfile(self, source, outputfile):
                if outer.cut is None:
                    return super().copyfile(source, outputfile)
                # a download that stops halfway: half the body, then wait
                # until the test lets it go, then the connection closes
                data = source.read()
                outputfile.write(data[:len(data) // 2])
                outputfile.flush()
                outer.midway.set()
                outer.cut.wait(30)
                self.close_connection = True
                return None

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

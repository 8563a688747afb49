"""roles/ota_server: its real templates rendered as Ansible renders them and
checked by the real nginx (`nginx -t` with the role's own check command on a
staging tree, and a real nginx serving on free loopback ports), its
manifest filter (signed with a throw-away key: every signature verifies,
any change to a signed field breaks it, the same images give the same
manifest), and the device's own download code against that server.

Needs Debian's `nginx` on the host (CI installs it; elsewhere the nginx tests
are skipped with the reason)."""

import asyncio
import hashlib
import http.client
import json
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import time

import debtool
import otasign
import pytest
import testkeys
import yaml
from ansible.errors import AnsibleFilterError
from rolerender import ROOT, load_file, render, role_vars, value

ROLE = ROOT / "roles" / "ota_server"


F = load_file(ROLE / "filter_plugins" / "ota_manifest.py")


@pytest.fixture(scope="session")
def nginx():
    return debtool.require("nginx")


@pytest.fixture(scope="session")
def signing(tmp_path_factory):
    """A throw-away site signing key in a secrets directory, as roles/ota_signing makes it."""
    return testkeys.site_key(tmp_path_factory.mktemp("secrets"))


# --- a throw-away site CA and server certificate -------------------------------------

@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """tools/pylib/tlsca's CA and server certificate (localhost, 127.0.0.1), plus a key of no certificate."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from tlsca import make_ca_and_server

    paths = make_ca_and_server(tmp_path_factory.mktemp("pki"))
    other_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {"ca": paths["ca"].read_bytes(), "cert": paths["cert"].read_bytes(), "key": paths["key"].read_bytes(),
            "other_key": other_key, "ca_path": str(paths["ca"])}


# --- the role's staging tree, rendered ------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage(root, pki, **overrides):
    """Render the role's templates into a staging tree under *root*, as the
    role does on the host, and return the rendering context. TLS material is
    staged like the role's copy task; the log directory and web root are
    moved under *root*."""
    root = pathlib.Path(root)
    ctx = role_vars("ota_server", dict({
        "edgefleet_site": "test",
        "edgefleet_controller_address": "ctl01.test.lan",
        "_ota_server_staging_dir": str(root),
        "ota_server_log_dir": str(root / "log"),
        "ota_server_web_root": str(root / "www"),
    }, **overrides))
    (root / "log").mkdir(parents=True, exist_ok=True)
    (root / "www").mkdir(parents=True, exist_ok=True)
    for var, template in (("_ota_server_conf", "edgefleet-ota.conf.j2"),
                          ("_ota_server_listen", "edgefleet-ota-listen.conf.j2"),
                          ("_ota_server_check_conf", "edgefleet-ota-check.conf.j2")):
        live = value(ctx, var)
        dest = pathlib.Path(live if live.startswith(str(root)) else str(root) + live)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(render("ota_server", template, ctx))
    if value(ctx, "ota_server_tls_enabled"):
        tls = root / "etc" / "nginx"
        (tls / value(ctx, "_ota_server_cert_rel")).write_bytes(pki["cert"])
        (tls / value(ctx, "_ota_server_key_rel")).write_bytes(pki["key"])
        os.chmod(tls / value(ctx, "_ota_server_key_rel"), 0o600)
    return ctx


def staged(root, ctx, var):
    return pathlib.Path(str(root) + value(ctx, var))


def role_check(ctx):
    """The role's own check command (edgefleet_base_apply_checks), as run on the host."""
    return subprocess.run(value(ctx, "_ota_server_check_argv"), capture_output=True, text=True)


def dump(nginx, ctx):
    """nginx -T: the whole configuration nginx parsed, includes resolved."""
    run = subprocess.run([nginx, "-T", "-c", value(ctx, "_ota_server_check_conf")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


def directives(text):
    return {line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")}


# --- nginx -t on the staged config ------------------------------------------------------

def test_default_candidate_passes_the_roles_check(nginx, pki, tmp_path):
    ctx = stage(tmp_path, pki)
    argv = value(ctx, "_ota_server_check_argv")
    assert argv[:2] == ["nginx", "-t"] and argv[-1].startswith(str(tmp_path)), argv
    run = role_check(ctx)
    assert run.returncode == 0, run.stderr
    assert "test is successful" in run.stderr


def test_default_listeners_tls_and_hardening(nginx, pki, tmp_path):
    d = directives(dump(nginx, stage(tmp_path, pki)))
    # devices download signed images over plain HTTP on every interface; HTTPS for operators, also everywhere
    assert "listen 0.0.0.0:8080 default_server;" in d
    assert "listen 0.0.0.0:8443 ssl default_server;" in d
    assert sum(1 for line in d if line.startswith("listen ")) == 2
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in d
    assert {"server_tokens off;", "autoindex off;", "ssl_session_tickets off;"} <= d
    assert "application/json json;" in d and "application/octet-stream bin;" in d and "application/x-tar tar;" in d
    # certificate and key relative to the main config's directory: the check reads the staged copies
    assert "ssl_certificate edgefleet/ota-server.crt;" in d
    assert "ssl_certificate_key edgefleet/ota-server.key;" in d
    assert "include edgefleet/ota-listen.conf;" in d


@pytest.mark.parametrize("overrides, present, absent", [
    ({"ota_server_http_address": "127.0.0.1", "ota_server_http_port": 8081},
     ["listen 127.0.0.1:8081 default_server;"], ["listen 0.0.0.0:8080 default_server;"]),
    ({"ota_server_https_address": "::", "ota_server_https_port": 9443},
     ["listen [::]:9443 ssl default_server;"], ["listen 0.0.0.0:8443 ssl default_server;"]),
    ({"ota_server_http_enabled": False},
     ["listen 0.0.0.0:8443 ssl default_server;"], ["listen 0.0.0.0:8080 default_server;"]),
    ({"ota_server_tls_enabled": False},
     ["listen 0.0.0.0:8080 default_server;"],
     ["listen 0.0.0.0:8443 ssl default_server;", "ssl_certificate edgefleet/ota-server.crt;"]),
    ({"ota_server_tls_version": "tlsv1.3"}, ["ssl_protocols TLSv1.3;"], ["ssl_protocols TLSv1.2 TLSv1.3;"]),
], ids=["http-loopback", "https-ipv6", "http-off", "tls-off", "tls13-only"])
def test_listener_and_tls_variables(nginx, pki, tmp_path, overrides, present, absent):
    ctx = stage(tmp_path, pki, **overrides)
    run = role_check(ctx)
    assert run.returncode == 0, run.stderr
    d = directives(dump(nginx, ctx))
    for line in present:
        assert line in d
    for line in absent:
        assert line not in d


# A broken candidate must never reach /etc/nginx: the role's check has to fail.
@pytest.mark.parametrize("breakage, expect", [
    ("cipher", "SSL_CTX_set_cipher_list"),
    ("key-mismatch", "key values mismatch"),
    ("cert-missing", "ota-server.crt"),
    ("bad-directive", "unknown directive"),
    ("listen-clash", "duplicate listen"),
])
def test_broken_candidate_is_refused_by_the_roles_check(nginx, pki, tmp_path, breakage, expect):
    overrides = {"ota_server_tls_ciphers": ["NO-SUCH-CIPHER"]} if breakage == "cipher" else {}
    if breakage == "listen-clash":  # both listeners on one address and port
        overrides = {"ota_server_http_port": 8443}
    ctx = stage(tmp_path, pki, **overrides)
    tls = tmp_path / "etc" / "nginx" / "edgefleet"
    if breakage == "key-mismatch":
        (tls / "ota-server.key").write_bytes(pki["other_key"])
    elif breakage == "cert-missing":  # proves the check reads the STAGED certificate
        (tls / "ota-server.crt").unlink()
    elif breakage == "bad-directive":  # what a bad inventory value in a template would give
        conf = staged(tmp_path, ctx, "_ota_server_conf")
        conf.write_text(conf.read_text().replace("autoindex off;", "autoindex off;\n    no_such_directive on;"))
    run = role_check(ctx)
    assert run.returncode != 0, run.stderr
    assert expect in run.stderr
    assert str(tmp_path) in run.stderr  # the staged config failed, not a live one


def test_server_config_fits_debians_own_nginx_conf(nginx, pki, tmp_path):
    """The live config is Debian's nginx.conf with our file in conf.d (and,
    before the role removes it, Debian's default site): the two must not
    clash. Debian's nginx.conf is copied with /etc/nginx/ moved to the tree."""
    stage(tmp_path, pki)
    etc = tmp_path / "etc" / "nginx"
    main = pathlib.Path("/etc/nginx/nginx.conf").read_text()
    main = main.replace("/etc/nginx/", str(etc) + "/").replace("/run/nginx.pid", str(tmp_path / "nginx.pid"))
    main = main.replace("/var/log/nginx/", str(tmp_path / "log") + "/")
    (etc / "nginx.conf").write_text(main)
    shutil.copy("/etc/nginx/mime.types", etc / "mime.types")
    (etc / "modules-enabled").mkdir()
    (etc / "sites-enabled").mkdir()
    default_site = pathlib.Path("/etc/nginx/sites-available/default")
    if default_site.exists():
        shutil.copy(default_site, etc / "sites-enabled" / "default")
    run = subprocess.run([nginx, "-t", "-c", str(etc / "nginx.conf")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "conf.d/edgefleet-ota.conf" in subprocess.run(
        [nginx, "-T", "-c", str(etc / "nginx.conf")], capture_output=True, text=True).stdout


# --- a real nginx serving the role's config -------------------------------------------------

IMAGES = {  # (payload, version, name): bytes
    ("app", "0.9.0", "app-0.9.0.bundle"): b'{"files":[],"version":"0.9.0"}\n' + bytes(range(256)) * 40,
    ("firmware", "1.24.1", "micropython.bin"): hashlib.sha256(b"seed").digest() * 9000,
    ("firmware", "1.24.2+rc1", "image.tar"): b"tar bytes" * 10,
}


class Server:
    def __init__(self, nginx, root, pki, signing, **overrides):
        self.http_port, self.https_port = free_port(), free_port()
        self.pki, self.signing = pki, signing
        self.ctx = stage(root, pki, ota_server_http_port=self.http_port, ota_server_https_port=self.https_port,
                         ota_server_url_host="127.0.0.1", **overrides)
        base_url = value(self.ctx, "ota_server_base_url")
        web_root = value(self.ctx, "ota_server_web_root")
        images = []
        for (payload, version, name), data in IMAGES.items():
            src = root / "controller" / name
            src.parent.mkdir(exist_ok=True)
            src.write_bytes(data)
            images.append({"src": str(src), "payload": payload, "version": version})
        # what the role's tasks do: place each image, then the manifest from the bytes in place
        self.entries = F.edgefleet_ota_entries(images, base_url, web_root)
        digests = []
        for e in self.entries:
            pathlib.Path(e["dir"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(e["src"], e["dest"])
            data = pathlib.Path(e["dest"]).read_bytes()
            digests.append({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        manifest = F.edgefleet_ota_manifest(self.entries, digests, base_url, "test", signing.path)
        (pathlib.Path(web_root) / "manifest.json").write_text(manifest)
        pathlib.Path(web_root, "app", "0.9.0", ".ansible_tmp_partial").write_bytes(b"half")
        self.proc = subprocess.Popen([nginx, "-c", value(self.ctx, "_ota_server_check_conf"),
                                      "-g", "daemon off; master_process off;"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            self._wait_for_listeners()
        except BaseException:
            self.stop()
            raise

    def _wait_for_listeners(self):
        deadline = time.monotonic() + 10
        while True:  # a condition with a deadline
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            try:
                socket.create_connection(("127.0.0.1", self.https_port), timeout=1).close()
                socket.create_connection(("127.0.0.1", self.http_port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def tls_context(self, **kw):
        ctx = ssl.create_default_context(cafile=self.pki["ca_path"])
        for k, v in kw.items():
            setattr(ctx, k, v)
        return ctx

    def request(self, method, path, tls=True, **kw):
        conn = (http.client.HTTPSConnection("127.0.0.1", self.https_port, context=self.tls_context(), timeout=10)
                if tls else http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10))
        try:
            conn.request(method, path, **kw)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def server(nginx, pki, signing, tmp_path_factory):
    s = Server(nginx, tmp_path_factory.mktemp("ota-server"), pki, signing)
    yield s
    s.stop()


def test_manifest_lists_what_the_server_serves(server):
    """Over plain HTTP (devices) and HTTPS (operators), the same manifest:
    plain http:// URLs on the HTTP listener, and a signature per image that
    verifies with the site's public key over the bytes served."""
    for tls in (True, False):
        status, headers, body = server.request("GET", "/manifest.json", tls=tls)
        assert status == 200 and headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-cache"
        manifest = json.loads(body)
        assert manifest["manifest_version"] == 1 and len(manifest["images"]) == len(IMAGES)
        assert manifest["signing_key"] == server.signing.public
        for image in manifest["images"]:
            assert image["url"] == "http://127.0.0.1:%d%s" % (server.http_port, image["path"])
            status, _, data = server.request("GET", image["path"], tls=tls)
            assert status == 200
            assert len(data) == image["size"] and hashlib.sha256(data).hexdigest() == image["sha256"]
            assert data == IMAGES[(image["payload"], image["version"], image["name"])]
            assert image["security_version"] == 0
            assert otasign.verify_entry(otasign.current_public_key(str(pathlib.Path(server.signing.path).parent)),
                                        image["payload"], image["version"], len(data),
                                        hashlib.sha256(data).hexdigest(), 0, image["signature"])


@pytest.mark.parametrize("path, ctype", [
    ("/app/0.9.0/app-0.9.0.bundle", "application/octet-stream"),
    ("/firmware/1.24.1/micropython.bin", "application/octet-stream"),
    ("/firmware/1.24.2+rc1/image.tar", "application/x-tar"),
    ("/healthz", "text/plain"),
])
def test_types_and_no_server_version(server, path, ctype):
    status, headers, body = server.request("GET", path)
    assert status == 200 and headers["content-type"] == ctype
    assert headers["server"] == "nginx"
    if path == "/healthz":
        assert body == b"ok\n"
    status, headers, body = server.request("HEAD", path)
    assert status == 200 and body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head(server, method):
    for path in ("/manifest.json", "/app/0.9.0/app-0.9.0.bundle", "/healthz"):
        status, _, _ = server.request(method, path, body=b"x")
        assert status == 405, (method, path)


@pytest.mark.parametrize("path", [
    "/", "/app/", "/app/0.9.0/", "/firmware/", "/app/0.9.0/.ansible_tmp_partial", "/app/0.9.0/../0.9.0/x",
    "/other/1.0/x.bin", "/app/0.9.0/sub/x", "/index.html", "/manifest.json/", "/.well-known/x",
])
def test_no_listing_and_nothing_outside_the_layout(server, path):
    status, headers, body = server.request("GET", path)
    assert status in (400, 404), (path, status)
    assert b"Index of" not in body


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_versions(server):
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = server.tls_context(minimum_version=version, maximum_version=version)
        with socket.create_connection(("127.0.0.1", server.https_port), timeout=10) as s, \
                ctx.wrap_socket(s, server_hostname="localhost") as t:
            assert t.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
    # TLSv1.1: the server refuses (an alert from it, not a local refusal)
    ctx = server.tls_context()
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError) as e:
        with socket.create_connection(("127.0.0.1", server.https_port), timeout=10) as s, \
                ctx.wrap_socket(s, server_hostname="localhost"):
            pass
    assert "ALERT" in str(e.value).upper()


def test_tls13_only_refuses_tls12(nginx, pki, signing, tmp_path):
    s = Server(nginx, tmp_path, pki, signing, ota_server_tls_version="tlsv1.3")
    try:
        ctx = s.tls_context(maximum_version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(ssl.SSLError, match="(?i)alert"):
            with socket.create_connection(("127.0.0.1", s.https_port), timeout=10) as sock, \
                    ctx.wrap_socket(sock, server_hostname="localhost"):
                pass
        with socket.create_connection(("127.0.0.1", s.https_port), timeout=10) as sock, \
                s.tls_context().wrap_socket(sock, server_hostname="localhost") as t:
            assert t.version() == "TLSv1.3"
    finally:
        s.stop()


def test_the_devices_own_download_code_gets_each_image(server):
    """firmware/app's ota.download (httpget, HTTP/1.0, streaming, size and
    sha256 checks) over plain HTTP, with the OTA command the manifest gives:
    a command the contract accepts (signed, http://), whose signature the
    device's public key verifies."""
    import contract
    import netio
    import ota

    async def connect(host, port, tls, timeout_s=10):  # the simulator board's open_connection
        assert not tls, "a device downloads over plain HTTP"
        return await netio.open_connection(host, port, None, timeout_s)

    class Sink:
        def __init__(self):
            self.data = bytearray()

        def write(self, b):
            self.data += b

    manifest = json.loads(server.request("GET", "/manifest.json")[2])
    for image in manifest["images"]:
        cmd = contract.ota_command("t-1", image["payload"], image["version"], image["url"], image["size"],
                                   image["sha256"], image["security_version"], image["signature"])
        payload, version, url, size, sha256, timeout_s = contract.check_ota_command(cmd)
        security_version, signature = contract.ota_signed_fields(cmd)
        assert otasign.verify(server.signing.public,
                              contract.ota_signed_message(payload, version, size, sha256, security_version), signature)
        sink = Sink()
        asyncio.run(ota.download(url, connect, size, sha256, sink, timeout_s))
        assert bytes(sink.data) == IMAGES[(image["payload"], image["version"], image["name"])]


# --- the manifest filter --------------------------------------------------------------

BASE = "http://ctl.example:8080"


def test_entries_layout_and_default_name():
    e = F.edgefleet_ota_entries([{"src": "/x/build/app-1.2.0.bundle", "version": "1.2.0", "payload": "app"},
                                 {"src": "/x/fw.bin", "version": "1.24.1", "payload": "firmware",
                                  "name": "micropython.bin"}], BASE, "/var/www/edgefleet-ota/")
    assert e[0] == {"src": "/x/build/app-1.2.0.bundle", "payload": "app", "version": "1.2.0",
                    "name": "app-1.2.0.bundle", "security_version": 0, "dir": "/var/www/edgefleet-ota/app/1.2.0",
                    "dest": "/var/www/edgefleet-ota/app/1.2.0/app-1.2.0.bundle",
                    "path": "/app/1.2.0/app-1.2.0.bundle", "url": BASE + "/app/1.2.0/app-1.2.0.bundle"}
    assert e[1]["dest"] == "/var/www/edgefleet-ota/firmware/1.24.1/micropython.bin"
    assert F.edgefleet_ota_entries([_img(security_version=7)], BASE, "/s")[0]["security_version"] == 7
    assert F.edgefleet_ota_entries([], BASE, "/srv/ota") == []
    assert F.edgefleet_ota_entries(None, BASE, "/srv/ota") == []


def _img(**kw):
    return dict({"src": "/x/a.bin", "version": "1.0.0", "payload": "app"}, **kw)


@pytest.mark.parametrize("images, fragment", [
    ({"src": "/x"}, "must be a list"),
    (["/x/a.bin"], "must be a dict"),
    ([{"version": "1", "payload": "app"}], "has no src"),
    ([_img(payload="bootloader")], "payload must be one of app, firmware"),
    ([_img(version="../1")], "version must be"),
    ([_img(version="1/2")], "version must be"),
    ([_img(version=".hidden")], "version must be"),
    ([_img(version="x" * 33)], "version must be"),
    ([_img(version=1.1)], "quote numbers"),
    ([_img(name="../../etc/passwd")], "file name must be"),
    ([_img(name=".ansible_tmp")], "file name must be"),
    ([_img(src="/x/.hidden")], "file name must be"),
    ([_img(), _img(src="/y/b.bin")], "already given by item 0"),
    ([_img(sha256="ab")], "unknown keys ['sha256']"),
    ([_img(name="n" * 128, version="v" * 32)], "longer than 512"),
    ([_img(security_version=-1)], "item 0 (/x/a.bin): security_version must be an integer 0..2147483647"),
    ([_img(security_version="1")], "security_version must be an integer"),
    ([_img(security_version=1.0)], "security_version must be an integer"),
    ([_img(security_version=True)], "security_version must be an integer"),
    ([_img(security_version=2 ** 31)], "security_version must be an integer"),
])
def test_entries_refuse_bad_images_naming_them(images, fragment):
    with pytest.raises(AnsibleFilterError) as e:
        F.edgefleet_ota_entries(images, "http://" + "h" * 400 + ":8080" if "longer" in fragment else BASE,
                                "/srv/ota")
    assert fragment in str(e.value)


def test_same_version_of_two_payloads_is_fine():
    e = F.edgefleet_ota_entries([_img(), _img(payload="firmware")], BASE, "/srv/ota")
    assert [x["path"] for x in e] == ["/app/1.0.0/a.bin", "/firmware/1.0.0/a.bin"]


@pytest.mark.parametrize("base_url", ["ftp://h:21", "http://h:8080/ota", "http://[::1]:8080", "h:8080", "", None,
                                      "http://h:8080/", "https://h:8443"])
def test_entries_refuse_bad_base_urls(base_url):
    with pytest.raises(AnsibleFilterError, match="ota_server_base_url"):
        F.edgefleet_ota_entries([], base_url, "/srv/ota")


@pytest.mark.parametrize("web_root", ["/", "srv/ota", "", None])
def test_entries_refuse_bad_web_roots(web_root):
    with pytest.raises(AnsibleFilterError, match="ota_server_web_root"):
        F.edgefleet_ota_entries([], BASE, web_root)


def _signed_manifest(signing, entries=None, digests=None):
    entries = entries if entries is not None else F.edgefleet_ota_entries(
        [_img(), _img(payload="firmware", version="1.24.1", name="mp.bin", security_version=5)], BASE, "/s")
    digests = digests if digests is not None else [{"size": 10, "sha256": "a" * 64}, {"size": 20, "sha256": "b" * 64}]
    return entries, digests, F.edgefleet_ota_manifest(entries, digests, BASE, "lab", signing.path)


def test_manifest_is_deterministic_signed_and_each_image_is_an_ota_command(signing):
    import contract

    entries, digests, text = _signed_manifest(signing)
    # the same images give the same bytes on a second run (RFC 6979): the role's copy changes nothing
    assert text == F.edgefleet_ota_manifest(entries, [dict(d) for d in digests], BASE, "lab", signing.path)
    assert text.endswith("}\n")
    m = json.loads(text)
    signatures = [i.pop("signature") for i in m["images"]]
    assert m == {"manifest_version": 1, "site": "lab", "base_url": BASE, "signing_key": signing.public, "images": [
        {"payload": "app", "version": "1.0.0", "name": "a.bin", "path": "/app/1.0.0/a.bin",
         "url": BASE + "/app/1.0.0/a.bin", "size": 10, "sha256": "a" * 64, "security_version": 0},
        {"payload": "firmware", "version": "1.24.1", "name": "mp.bin", "path": "/firmware/1.24.1/mp.bin",
         "url": BASE + "/firmware/1.24.1/mp.bin", "size": 20, "sha256": "b" * 64, "security_version": 5}]}
    for image, signature in zip(m["images"], signatures):
        assert otasign.verify_entry(signing.public, image["payload"], image["version"], image["size"],
                                    image["sha256"], image["security_version"], signature)
        cmd = contract.ota_command("r1-" + image["version"], image["payload"], image["version"], image["url"],
                                   image["size"], image["sha256"], image["security_version"], signature)
        assert contract.check_ota_command(cmd)[:5] == (image["payload"], image["version"], image["url"],
                                                       image["size"], image["sha256"])
        assert contract.ota_signed_fields(cmd) == (image["security_version"], signature)


@pytest.mark.parametrize("field, value", [("payload", "firmware"), ("version", "1.0.1"), ("size", 11),
                                          ("sha256", "c" * 64), ("security_version", 1)])
def test_changing_any_signed_field_of_an_entry_breaks_its_signature(signing, field, value):
    """An edited manifest (or an image swapped on the server) no longer verifies."""
    image = json.loads(_signed_manifest(signing)[2])["images"][0]
    fields = {k: image[k] for k in ("payload", "version", "size", "sha256", "security_version")}
    assert otasign.verify_entry(signing.public, signature=image["signature"], **fields)
    fields[field] = value
    assert not otasign.verify_entry(signing.public, signature=image["signature"], **fields)


def test_the_signature_changes_with_the_bytes_and_the_key(signing):
    entries, digests, text = _signed_manifest(signing)
    changed = F.edgefleet_ota_manifest(entries, [dict(digests[0], sha256="d" * 64), digests[1]], BASE, "lab",
                                       signing.path)
    first, second = json.loads(text)["images"], json.loads(changed)["images"]
    assert first[0]["signature"] != second[0]["signature"] and first[1]["signature"] == second[1]["signature"]
    other = testkeys.site_key(pathlib.Path(signing.path).parent.parent / "other")
    by_other = json.loads(F.edgefleet_ota_manifest(entries, digests, BASE, "lab", other.path))
    assert by_other["signing_key"] == other.public
    image = by_other["images"][0]
    assert not otasign.verify_entry(signing.public, image["payload"], image["version"], image["size"],
                                    image["sha256"], image["security_version"], image["signature"])


def test_empty_manifest_is_valid(signing):
    assert json.loads(F.edgefleet_ota_manifest([], [], BASE, "lab", signing.path)) == {
        "manifest_version": 1, "site": "lab", "base_url": BASE, "images": [], "signing_key": signing.public}


@pytest.mark.parametrize("digest, fragment", [
    ({"size": 0, "sha256": "a" * 64}, "must not be empty"),
    ({"size": True, "sha256": "a" * 64}, "must not be empty"),
    ({"size": 5, "sha256": "A" * 64}, "no sha256"),
    ({"size": 5, "sha256": None}, "no sha256"),
])
def test_manifest_refuses_empty_or_undigested_images(signing, digest, fragment):
    entries = F.edgefleet_ota_entries([_img()], BASE, "/s")
    with pytest.raises(AnsibleFilterError, match=fragment):
        F.edgefleet_ota_manifest(entries, [digest], BASE, "lab", signing.path)
    with pytest.raises(AnsibleFilterError, match="1 entries but 0 digests"):
        F.edgefleet_ota_manifest(entries, [], BASE, "lab", signing.path)


def test_manifest_without_a_usable_signing_key_names_it(tmp_path):
    entries = F.edgefleet_ota_entries([_img()], BASE, "/s")
    digests = [{"size": 1, "sha256": "a" * 64}]
    with pytest.raises(AnsibleFilterError, match="no signing key .*ota_server_signing_key_src"):
        F.edgefleet_ota_manifest(entries, digests, BASE, "lab", "")
    with pytest.raises(AnsibleFilterError, match="cannot read the OTA signing key .*missing.key"):
        F.edgefleet_ota_manifest(entries, digests, BASE, "lab", str(tmp_path / "missing.key"))
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(AnsibleFilterError, match="cert.pem is not a PEM private key"):
        F.edgefleet_ota_manifest(entries, digests, BASE, "lab", str(tmp_path / "cert.pem"))


# --- the role's wiring ------------------------------------------------------------------

def _yaml(*parts):
    return yaml.safe_load((ROLE.joinpath(*parts)).read_text())


def test_depends_on_site_ca_only_with_tls_and_always_on_the_signing_key():
    deps = _yaml("meta", "main.yml")["dependencies"]
    assert deps[0] == {"role": "edgefleet_base"}
    assert deps[1] == {"role": "site_ca", "tags": ["site_ca", "tls"], "when": "ota_server_tls_enabled | bool"}
    assert deps[2] == {"role": "ota_signing", "tags": ["ota_signing"]}
    ctx = role_vars("ota_server", {"edgefleet_site": "test", "ota_signing_key_path": "/s/signing/current.key"})
    assert value(ctx, "ota_server_signing_key_src") == "/s/signing/current.key"


def test_apply_files_modes_and_what_a_change_needs():
    ctx = role_vars("ota_server", {"edgefleet_site": "test"})
    files = {f["live"]: f for f in value(ctx, "_ota_server_files")}
    assert files["/etc/nginx/conf.d/edgefleet-ota.conf"]["apply"] == "reload"
    assert files["/etc/nginx/edgefleet/ota-listen.conf"]["apply"] == "restart"  # a reload cannot always re-bind
    assert files["/etc/nginx/edgefleet/ota-server.crt"]["apply"] == "reload"
    key = files["/etc/nginx/edgefleet/ota-server.key"]
    assert key["mode"] == "0600" and key["private"] and key["apply"] == "reload"
    ctx = role_vars("ota_server", {"edgefleet_site": "test", "ota_server_tls_enabled": False})
    assert [f["live"] for f in value(ctx, "_ota_server_files")] == [
        "/etc/nginx/conf.d/edgefleet-ota.conf", "/etc/nginx/edgefleet/ota-listen.conf"]


def test_images_first_then_the_manifest_then_pruning():
    names = [t["name"] for t in _yaml("tasks", "images.yml")]
    copy, after, manifest, prune = (names.index(n) for n in (
        "Copy the images", "Read the images as the server holds them", "Write the manifest",
        "Remove the images the manifest no longer lists"))
    assert copy < after < manifest < prune
    manifest_task = _yaml("tasks", "images.yml")[manifest]
    assert "_ota_server_after.results" in manifest_task["vars"]["_ota_server_digests"]  # bytes on the server
    assert "ota_server_signing_key_src" in manifest_task["ansible.builtin.copy"]["content"]  # signed by the filter


def test_default_base_url_is_plain_http_whatever_tls_does():
    """Devices download over plain HTTP only (the contract refuses https://),
    from the site's device-facing address, not the controller's inventory
    name (which the plant's DNS need not know)."""
    for tls in (True, False):
        ctx = role_vars("ota_server", {"edgefleet_site": "test", "ota_server_tls_enabled": tls,
                                       "edgefleet_controller_address": "ctl01.plant.lan"})
        assert value(ctx, "ota_server_base_url") == "http://ctl01.plant.lan:8080"
    ctx = role_vars("ota_server", {"edgefleet_site": "test", "edgefleet_controller_address": "fd00::5"})
    assert value(ctx, "ota_server_base_url") == "http://[fd00::5]:8080"
    ctx = role_vars("ota_server", {"edgefleet_site": "test", "ota_server_url_host": "10.1.2.3",
                                   "ota_server_http_port": 80})
    assert value(ctx, "ota_server_base_url") == "http://10.1.2.3:80"


def test_kept_images_are_the_published_ones_not_listed_again_nor_removed(signing):
    entries, digests, text = _signed_manifest(signing)
    # nothing listed: both published images stay, placed as before, with the digests the manifest signed
    kept = F.edgefleet_ota_kept(text, [], [], BASE, "/s")
    assert [(k["payload"], k["version"], k["dest"], k["size"], k["sha256"], k["src"]) for k in kept] == [
        ("app", "1.0.0", "/s/app/1.0.0/a.bin", 10, "a" * 64, None),
        ("firmware", "1.24.1", "/s/firmware/1.24.1/mp.bin", 20, "b" * 64, None)]
    assert kept[1]["security_version"] == 5
    # the same images, listed or kept, in any order, give the same manifest
    assert F.edgefleet_ota_manifest([entries[1]] + kept[:1], [digests[1], digests[0]], BASE, "lab",
                                    signing.path) == text
    # a listed image wins; one named absent goes; no manifest yet: nothing kept
    assert [k["version"] for k in F.edgefleet_ota_kept(text, entries[:1], [], BASE, "/s")] == ["1.24.1"]
    assert F.edgefleet_ota_kept(text, [], [{"payload": "app", "version": "1.0.0"},
                                           {"payload": "firmware", "version": "1.24.1"}], BASE, "/s") == []
    assert F.edgefleet_ota_kept("", [], None, BASE, "/s") == []


@pytest.mark.parametrize("manifest, absent, fragment", [
    ("not json", [], "the manifest on the server (/s/manifest.json) is not a manifest this role wrote"),
    ('{"images": {}}', [], "is not a manifest this role wrote"),
    ('{"images": [{"payload": "app"}]}', [], "lacks 'version'"),
    ('{"images": [{"payload": "app", "version": "1", "name": "a", "size": 0, "sha256": "x"}]}', [],
     "image app 1 has size 0"),
    ("", {"payload": "app"}, "ota_server_images_absent must be a list"),
    ("", [{"payload": "app"}], "ota_server_images_absent: item 0 must be {payload: app|firmware, version:"),
    ("", [{"payload": "app", "version": "1.0.0", "src": "/x"}], "item 0 must be"),
    ("", [{"payload": "app", "version": "../1"}], "item 0 must be"),
    ("", [{"payload": "app", "version": "1.0.0"}], "item 0 (payload app version 1.0.0) is also listed"),
])
def test_kept_refuses_an_unreadable_manifest_or_a_bad_absent_entry(manifest, absent, fragment):
    with pytest.raises(AnsibleFilterError) as e:
        F.edgefleet_ota_kept(manifest, F.edgefleet_ota_entries([_img()], BASE, "/s"), absent, BASE, "/s")
    assert fragment in str(e.value)

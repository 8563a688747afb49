import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
for sub in ("collections", "plugins/filter", "tools/pylib", "tests/firmware/mpy", "tests/firmware", "tests/flash", "plugins/module_utils",
            "firmware/app"):
    path = str(ROOT / sub)
    if path not in sys.path:
        sys.path.insert(0, path)


import pytest  # noqa: E402
from ansible.plugins.loader import init_plugin_loader  # noqa: E402

# Ansible's collection finder, set up the way ansible-playbook does it (with
# ansible.cfg's collections_path), before any test imports
# ansible_collections.edgefleet.site: once a test installs the finder (some
# need Ansible's plugin loader), a collection package imported before it
# without the finder can no longer import its subpackages.
init_plugin_loader([str(ROOT / "collections")])


@pytest.fixture
def broker(tmp_path):
    """broker(users=..., acl=...) -> a started real Mosquitto on 127.0.0.1."""
    from broker import Broker
    started = []

    def make(**kw):
        b = Broker(tmp_path / f"broker{len(started)}", **kw).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def ntp_server():
    """An SNTP server on 127.0.0.1 with a clock of its own (from 2031); call start() to answer."""
    from ntpfake import NtpServer

    server = NtpServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def compiled_device(tmp_path_factory):
    """Every device module compiled by mpy-cross, as the image packs them."""
    from interp import compile_device

    return compile_device(tmp_path_factory.mktemp("mpy"))


def _micropython_or_skip(port):
    from interp import MicroPythonMissing, find_micropython

    try:
        return find_micropython(port)
    except MicroPythonMissing as e:
        pytest.skip(str(e))


@pytest.fixture(params=["cpython", "micropython", "micropython32"])
def interp(request):
    """Run the test under CPython and both builds of MicroPython's unix port
    (64-bit, and 32-bit: an ESP32's word size)."""
    if request.param != "cpython":
        _micropython_or_skip(request.param)
    return request.param


@pytest.fixture(params=["micropython", "micropython32"])
def mp_port(request):
    """Each build of MicroPython's unix port by name (skipped, with the reason, where it is missing)."""
    _micropython_or_skip(request.param)
    return request.param


@pytest.fixture
def micropython(mp_port):
    """The path of each build of MicroPython's unix port in turn (64- and 32-bit)."""
    from interp import find_micropython

    return find_micropython(mp_port)


@pytest.fixture(scope="session")
def frozen_micropython32(tmp_path_factory):
    """MicroPython's 32-bit unix port with the device app frozen in (as an
    ESP32 firmware built from firmware.image's freeze manifest), built once
    per session (about 20 s). Skipped where the MicroPython source or
    gcc-multilib is missing, unless $MICROPYTHON32 is set (CI): then it fails."""
    from interp import MicroPythonMissing, build_frozen

    try:
        return build_frozen(tmp_path_factory.mktemp("frozen32"), "micropython32")
    except MicroPythonMissing as e:
        pytest.skip(str(e))


@pytest.fixture
def www(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a fresh directory (OTA artifacts)."""
    from www import Www

    root = tmp_path / "www"
    root.mkdir()
    server = Www(root)
    yield server
    server.close()

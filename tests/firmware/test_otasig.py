"""What a device accepts (firmware/app/otasig.py), on CPython and on both
builds of MicroPython's unix port: an ota command only when the site's
key signed its entry and its security version is not below the device's
own; a new signing key only from a handover the current key signed.

Each refusal has its own case; every case runs the device's own code (the
image's compiled modules under MicroPython) with real signatures made by
the ``cryptography`` library, as the Ansible controller makes them."""

import json
import os
import subprocess

import pytest

from interp import command
from testkeys import TestKey

DRIVER = os.path.join(os.path.dirname(__file__), "mpy", "otasig_driver.py")
SITE_KEY = TestKey()
OTHER_KEY = TestKey()
NEXT_KEY = TestKey()
BASE = {"id": "r1-0123456789ab", "cmd": "ota", "payload": "app", "version": "1.4.0",
        "url": "http://ctl.plant:8080/app/1.4.0/app.bin", "size": 65536, "sha256": "5e" * 32}


def run_steps(interp, compiled_device, tmp_path, steps, settings=None):
    root = tmp_path / "flash"
    root.mkdir(exist_ok=True)
    job = tmp_path / "steps.json"
    job.write_text(json.dumps({"root": str(root), "steps": steps,
                               "settings": dict({"signing_key": SITE_KEY.public_hex}, **(settings or {}))}))
    argv, env = command(interp, DRIVER, compiled_device)
    env["EF_STEPS"] = str(job)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def check(cmd):
    return {"op": "check", "cmd": cmd}


def changed(field, value, secver=2):
    """A command signed, then *field* changed."""
    return dict(SITE_KEY.sign_command(BASE, secver), **{field: value})


def test_a_signed_entry_is_accepted(interp, compiled_device, tmp_path):
    assert run_steps(interp, compiled_device, tmp_path, [check(SITE_KEY.sign_command(BASE, 2))]) == [["ok", 2]]


REFUSED = {
    "unsigned": (dict(BASE, security_version=0), "unsigned image"),
    "another key": (OTHER_KEY.sign_command(BASE, 2), "does not verify"),
    "payload changed": (changed("payload", "firmware"), "does not verify"),
    "version changed": (changed("version", "1.4.1"), "does not verify"),
    "size changed": (changed("size", 65537), "does not verify"),
    "sha256 changed": (changed("sha256", "5f" * 32), "does not verify"),
    "security_version changed": (changed("security_version", 9), "does not verify"),
    "signature malformed": (changed("signature", "zz" * 64), "signature must be"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_before_anything_is_downloaded(interp, compiled_device, tmp_path, case):
    cmd, reason = REFUSED[case]
    [(result, detail)] = run_steps(interp, compiled_device, tmp_path, [check(cmd)])
    assert result == "refused" and reason in detail, (case, detail)


def test_anti_rollback(interp, compiled_device, tmp_path):
    """Security version 3 confirmed: 2 is refused, 3 and 4 accepted; a
    rolled-back update (never confirmed) does not raise it."""
    steps = [
        check(SITE_KEY.sign_command(BASE, 1)),
        {"op": "confirmed", "last": {"result": "confirmed", "security_version": 3}},
        check(SITE_KEY.sign_command(BASE, 2)),
        check(SITE_KEY.sign_command(BASE, 3)),
        check(SITE_KEY.sign_command(dict(BASE, version="1.3.9"), 4)),  # an old version signed again, higher
        {"op": "confirmed", "last": {"result": "confirmed", "security_version": 1}},  # never lowers it
    ]
    results = run_steps(interp, compiled_device, tmp_path, steps)
    assert results[0] == ["ok", 1]
    assert results[1] == ["ok", 3]
    assert results[2][0] == "refused" and "security version 2 is lower than this device's 3" in results[2][1]
    assert results[3] == ["ok", 3] and results[4] == ["ok", 4]
    assert results[5] == ["ok", 3]


def test_flash_time_security_version_counts(interp, compiled_device, tmp_path):
    results = run_steps(interp, compiled_device, tmp_path, [check(SITE_KEY.sign_command(BASE, 0))],
                        settings={"security_version": 1})
    assert results[0][0] == "refused" and "lower than this device's 1" in results[0][1]


def test_key_rotation(interp, compiled_device, tmp_path):
    """A new key only from a handover the current key signed; after it,
    the old key's images are refused and the new key's accepted."""
    not_a_point = "04" + "11" * 64
    steps = [
        {"op": "hand_over", "cmd": OTHER_KEY.handover("k-1", NEXT_KEY.public_hex)},  # signed by another key
        {"op": "hand_over", "cmd": SITE_KEY.handover("k-2", not_a_point)},  # signed, but not a P-256 point
        {"op": "hand_over", "cmd": SITE_KEY.handover("k-3", NEXT_KEY.public_hex)},
        check(SITE_KEY.sign_command(BASE, 0)),
        check(NEXT_KEY.sign_command(BASE, 0)),
        {"op": "hand_over", "cmd": SITE_KEY.handover("k-4", OTHER_KEY.public_hex)},  # the old key has no say now
        {"op": "hand_over", "cmd": SITE_KEY.handover("k-3", NEXT_KEY.public_hex)},  # the same handover again
    ]
    results = run_steps(interp, compiled_device, tmp_path, steps)
    assert results[0] == ["refused", "handover not signed by this device's current signing key"]
    assert results[1][0] == "refused" and "not a point on the P-256 curve" in results[1][1]
    assert results[2] == ["ok", NEXT_KEY.public_hex]
    assert results[3][0] == "refused" and "does not verify" in results[3][1]
    assert results[4] == ["ok", 0]
    assert results[5] == ["refused", "handover not signed by this device's current signing key"]
    assert results[6] == ["ok", NEXT_KEY.public_hex]


def test_a_board_without_a_key_installs_nothing(interp, compiled_device, tmp_path):
    results = run_steps(interp, compiled_device, tmp_path, [check(SITE_KEY.sign_command(BASE, 0))],
                        settings={"signing_key": None})
    assert results[0][0] == "refused" and "holds no signing key" in results[0][1]

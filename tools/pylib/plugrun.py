"""Plug to dashboard, shared by the site verifier (molecule/site/tests/
test_station_flash.py) and its benchmark (bench/plug_to_online.py): boards
that are ROM-protocol peers on 127.0.0.1, a flash station that is this
machine, playbooks/flash.yml against a converged controller, and the
simulator booting each board from the bytes read back from its flash.

MicroPython's ESP32 firmware.bin cannot be downloaded here: the stand-in has
its layout (image headers at 0x1000 and 0x10000), so the bootloader and
interpreter bytes are fake; partition table, filesystem, app and
device.json are the real build."""

import json
import os
import pathlib
import subprocess
import sys
import time

import yaml

from rompeer import RomPeer

ROOT = pathlib.Path(__file__).resolve().parents[2]


def stand_in_micropython(app_size=0x1000):
    """Image headers where MicroPython's firmware.bin has them, and an app of
    *app_size* bytes that deflates about as machine code does (to about two
    thirds: bytes drawn from a skewed set of 48 values). MicroPython's ESP32
    app is about 1.5 MiB."""
    import random
    rng = random.Random(7)
    vocab = bytes(range(0, 256, 5))[:48]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    app = bytes([0xE9]) + bytes(rng.choices(vocab, weights, k=app_size - 1))
    return bytes([0xE9]) + b"B" * (0x7000 - 1) + b"\xff" * 0x8000 + app


def plug(macs, paced=False):
    """One started peer per MAC ('24:0a:c4:..'); *paced*: each reads like a UART (rompeer)."""
    return [RomPeer(bytes.fromhex(mac.replace(":", "")), paced=paced).start() for mac in macs]


def station_inventory(directory, peers, kind, broker_port, name="station-test", app_size=0x1000,
                      flash_baud=460800, broker_tls=False):
    """A site inventory part for this machine as the flash station; the
    registry lands beside it. The boards run here (simulated), so they reach
    the broker through its port on 127.0.0.1: plain, or with *broker_tls*
    TLS trusting the site CA (whose certificate covers 127.0.0.1)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = directory.parent / "micropython.bin"  # not in the inventory directory: Ansible parses every file there
    base.write_bytes(stand_in_micropython(app_size))
    station = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
               "flash_python": sys.executable, "flash_firmware_src": str(ROOT), "flash_micropython_image": str(base),
               "flash_kind": kind, "flash_ports": [p.url for p in peers], "flash_workers": 8, "flash_baud": flash_baud,
               "flash_broker_host": "127.0.0.1", "flash_broker_port": broker_port, "flash_broker_tls": broker_tls}
    (directory / "hosts.yml").write_text(yaml.safe_dump(
        {"all": {"children": {"flash_stations": {"hosts": {name: station}}}}}))
    return directory


def flash_playbook(inventories, *extra, env=None):
    """(returncode, stdout) of playbooks/flash.yml over *inventories*."""
    env = dict(env or os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_INVENTORY", None)
    cmd = [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), str(ROOT / "playbooks" / "flash.yml")]
    for inv in inventories:
        cmd += ["-i", str(inv)]
    run = subprocess.run(cmd + list(extra), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return run.returncode, run.stdout + run.stderr


def registered(station_dir, kind):
    """{device id: MAC} from the registry the play wrote."""
    data = yaml.safe_load((pathlib.Path(station_dir) / "registry.yml").read_text())
    hosts = data["all"]["children"]["fleet"]["children"][kind]["hosts"]
    return {device: h["device_mac"] for device, h in hosts.items()}


def boot(peers, macs, workdir, duration=120):
    """The simulator running each board from a dump of its flash."""
    workdir = pathlib.Path(workdir)
    args = []
    for peer, mac in zip(peers, macs):
        dump = workdir / ("%s.bin" % mac.replace(":", ""))
        dump.write_bytes(bytes(peer.flash))
        args += ["--flash", "%s=%s" % (dump, mac)]
    return subprocess.Popen([sys.executable, "-m", "firmware.sim", *args, "--state-dir", str(workdir / "sim"),
                             "--duration", str(duration)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_online(listener, ids, timeout):
    """{device id: monotonic time its retained status said online} for *ids*,
    from an MQTT client subscribed to their status topics."""
    online = {}
    deadline = time.monotonic() + timeout
    while len(online) < len(ids) and time.monotonic() < deadline:
        for m in listener.messages("/status"):
            device = m.topic.split("/")[3]
            if device in ids and device not in online and json.loads(m.payload).get("online"):
                online[device] = time.monotonic()
        time.sleep(0.1)
    return online

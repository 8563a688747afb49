"""The site as a plant meets it: the simulated boards run in their own
container on the controller's plant network (conftest.py `fleet`) and know
the controller only by its device-facing name. From there the broker's TLS
listener answers and its plain listener, kept on the controller's
loopback, does not; the boards' clocks start unset and are set from the
controller's chrony; Prometheus scrapes each board at <id>.local, found by
mDNS."""

import json
import subprocess
import time

from conftest import CONTROLLER_ADDRESS, FLEET, SITE, fleet_runner, mqtt

testinfra_hosts = ["ansible://controller"]

CONNECT = ("import socket, sys; s = socket.socket(); s.settimeout(3); "
           "print(s.connect_ex((sys.argv[1], int(sys.argv[2]))))")


def connect_from_the_plant(port):
    """connect_ex's errno of a TCP connection from the fleet container to the
    controller's device-facing name (0: it connected)."""
    out = subprocess.run(["docker", "exec", fleet_runner(), "python3", "-c", CONNECT, CONTROLLER_ADDRESS, str(port)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr  # a name the plant cannot resolve fails here, not as "refused"
    return int(out.stdout)


def test_the_plant_reaches_the_tls_listener_and_not_the_plain_one(fleet):
    assert connect_from_the_plant(8883) == 0
    assert connect_from_the_plant(1883) != 0, "the broker's plain listener answers on the plant network"


def test_the_controller_is_not_on_the_fleet_side_of_127_0_0_1(fleet):
    """The devices dial the name: the broker host in their device.json is the
    controller's address on the plant, and nothing listens for MQTT on the
    fleet container's own loopback."""
    out = subprocess.run(["docker", "exec", fleet_runner(), "python3", "-c", CONNECT, "127.0.0.1", "8883"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and int(out.stdout) != 0, out
    doc = subprocess.run(["docker", "exec", fleet_runner(), "cat", "/secrets/sim-fleet.json"],
                         capture_output=True, text=True, timeout=30)
    assert json.loads(doc.stdout)["broker_host"] == CONTROLLER_ADDRESS


def test_boards_set_their_clock_from_the_controller(fleet, password):
    """Boards boot with the clock unset (as an ESP32 does) and take the time
    from the controller's chrony by its name: every board's status says
    time_synced and its telemetry carries a ts close to the controller's
    clock."""
    # the telegraf user reads state and status (Telegraf itself cannot run here)
    listener = mqtt("telegraf", password("telegraf"))
    try:
        listener.subscribe(f"site/{SITE}/+/+/status")
        listener.subscribe(f"site/{SITE}/+/+/state")
        synced, stamped = set(), {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (synced != set(FLEET) or set(stamped) != set(FLEET)):
            for m in listener.messages():
                device = m.topic.split("/")[3]
                if device not in FLEET:
                    continue
                body = json.loads(m.payload)
                if m.topic.endswith("/status") and body.get("online") and body.get("time_synced"):
                    synced.add(device)
                elif m.topic.endswith("/state") and body.get("ts") is not None:
                    stamped[device] = body["ts"] - time.time()
            time.sleep(0.2)
    finally:
        listener.close()
    assert synced == set(FLEET), f"time_synced: {sorted(synced)} of {sorted(FLEET)}"
    assert set(stamped) == set(FLEET), f"telemetry with a ts: {sorted(stamped)} of {sorted(FLEET)}"
    assert all(abs(skew) < 30 for skew in stamped.values()), stamped


def test_prometheus_scrapes_every_board_by_its_mdns_name(fleet, prometheus):
    fleet_ids = "|".join(FLEET)
    result = prometheus.wait(f'up{{job="edgefleet_devices", device_id=~"{fleet_ids}"}} == 1',
                             lambda r: len(r) == len(FLEET), timeout=120,
                             what="every fleet device's /metrics up")
    assert sorted(r["metric"]["instance"] for r in result) == sorted(
        f"{device}.local:{port}" for device, (_, port) in FLEET.items())

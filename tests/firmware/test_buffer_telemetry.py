"""Offline buffer (file-backed, on the host board's filesystem) and the
telemetry aggregation."""

import pytest

import telemetry
from buffer import OfflineBuffer
from firmware.sim.board import HostFS


def test_buffer_keeps_order_and_survives_a_reboot(tmp_path):
    fs = HostFS(str(tmp_path))
    buf = OfflineBuffer(fs, "buf", capacity=100)
    for i in range(5):
        buf.push(b"m%d" % i)
    seq, payload = buf.peek()
    assert payload == b"m0"
    buf.remove(seq)
    again = OfflineBuffer(fs, "buf", capacity=100)  # after a reset
    out = []
    while (item := again.peek()) is not None:
        out.append(item[1])
        again.remove(item[0])
    assert out == [b"m1", b"m2", b"m3", b"m4"]
    assert again.push(b"next") > seq, "sequence numbers must keep growing after a reboot"


def test_full_buffer_drops_the_oldest_and_counts(tmp_path):
    fs = HostFS(str(tmp_path))
    buf = OfflineBuffer(fs, "buf", capacity=100)
    for i in range(130):
        buf.push(b"%d" % i)
    assert len(buf) == 100 and buf.dropped == 30
    assert buf.peek()[1] == b"30"
    reopened = OfflineBuffer(fs, "buf", capacity=100)
    assert reopened.dropped == 30 and len(reopened) == 100
    smaller = OfflineBuffer(fs, "buf", capacity=10)
    assert len(smaller) == 10 and smaller.dropped == 120 and smaller.peek()[1] == b"120"


def test_remove_only_acknowledges_the_head(tmp_path):
    buf = OfflineBuffer(HostFS(str(tmp_path)), "buf", 5)
    a = buf.push(b"a")
    b = buf.push(b"b")
    buf.remove(b)  # not the oldest: ignored
    assert buf.peek() == (a, b"a") and len(buf) == 2


def test_bad_capacity(tmp_path):
    with pytest.raises(ValueError):
        OfflineBuffer(HostFS(str(tmp_path)), "buf", 0)


def meter(v, i, pf):
    return {"voltage": v, "current": i, "power_factor": pf}


def test_aggregate_three_phases_and_zones():
    agg = telemetry.Aggregator()
    agg.add([meter(230.0, 10.0, 0.9), meter(231.0, 11.0, 0.9), meter(229.0, 9.0, 0.8)], [179.5, 181.0])
    agg.add([meter(232.0, 12.0, 0.9), None, meter(231.0, 11.0, 0.8)], [180.5, None])
    msg = agg.payload("oven-tvcft64q", 1700000000, "run", -60, 42, setpoint=180.0)
    assert msg == {
        "device_id": "oven-tvcft64q", "ts": 1700000000,
        "electrical": {"voltage": {"a": 231.0, "b": 231.0, "c": 230.0},
                       "current": {"a": 11.0, "b": 11.0, "c": 10.0}, "power_factor": 0.86},
        "thermal": {"temperature_zones": [180.0, 181.0], "setpoint": 180.0},
        "status": {"operational_state": "run", "wifi_rssi": -60, "uptime_seconds": 42},
    }
    assert agg.errors == 2 and agg.samples == 2


def test_groups_a_device_lacks_are_left_out():
    agg = telemetry.Aggregator()
    agg.add([], [21.5])
    msg = agg.payload("env-yy1ka51y", 1, "run", -50, 1)
    assert "electrical" not in msg and msg["thermal"] == {"temperature_zones": [21.5]}
    agg.reset()
    assert "thermal" not in agg.payload("env-yy1ka51y", 2, "stop", -50, 2)

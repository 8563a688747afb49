"""A reconnect storm on the role's broker: 1,000 simulated devices with the
firmware's backoff come back after a broker restart, and a control client's
round trip stays under 1 s the whole time (tools/pylib/storm.py measures;
bench/reconnect_spread.py prints the same figures for docs/benchmarks.md)."""

import pytest
import storm


# about 50 s: `make test-slow`, not `make test`
@pytest.mark.slow
def test_1000_devices_come_back_and_the_broker_stays_responsive(tmp_path):
    r = storm.measure(1000, tmp_path)
    print(r)
    assert r["back"] == 1000, r
    assert r["probe_back_s"] is not None and r["probe_back_s"] < 5, r
    # the probe measured all along: ten a second from its reconnect to the last device
    assert r["probe_samples"] >= 5 * (r["last"] - r["probe_back_s"]), r
    assert r["rtt_max_ms"] < 1000, r
    assert r["rss_peak_mib"] < 512, r

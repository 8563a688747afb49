"""Reconnect backoff: bounded, growing, capped, and spread out."""

import random

import pytest

import backoff


def test_window_doubles_up_to_the_cap():
    b = backoff.Backoff(base_s=1, cap_s=60, rand=lambda: 1.0)
    assert [round(b.next_delay(), 3) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    b.reset()
    assert b.next_delay() == 1


def test_delays_stay_inside_the_window():
    b = backoff.Backoff(base_s=0.5, cap_s=30, rand=random.Random(1).random)
    for attempt in range(50):
        window = b.window()
        assert 0 <= b.next_delay() <= window <= 30


def test_a_fleet_does_not_reconnect_in_lockstep():
    """1,000 devices lose the broker at once: their first retries spread over the window."""
    rng = random.Random(7)
    delays = [backoff.Backoff(base_s=2, cap_s=60, rand=rng.random).next_delay() for _ in range(1000)]
    per_100ms = [0] * 20
    for d in delays:
        per_100ms[min(19, int(d / 0.1))] += 1
    assert max(per_100ms) < 100, per_100ms  # no 100 ms slot gets a tenth of the fleet
    assert min(per_100ms) > 0


def test_default_randomness_source_is_used():
    b = backoff.Backoff(base_s=1, cap_s=2)
    assert 0 <= b.next_delay() <= 1


@pytest.mark.parametrize("base,cap", [(0, 1), (2, 1), (-1, 5)])
def test_bad_parameters(base, cap):
    with pytest.raises(ValueError):
        backoff.Backoff(base, cap)

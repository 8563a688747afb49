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


def test_after_a_lost_session_a_fleet_comes_back_spread_over_the_window():
    """A broker restart: 1,000 devices lose their session together. The first
    retry of each is uniform over spread_s, so arrivals spread over more than
    30 s with no second taking more than a small share."""
    rng = random.Random(3)
    delays = [backoff.Backoff(rand=rng.random).after_loss() for _ in range(1000)]
    assert backoff.SPREAD_S >= 30
    assert max(delays) - min(delays) >= 30
    per_second = [0] * int(backoff.SPREAD_S)
    for d in delays:
        per_second[int(d)] += 1
    assert max(per_second) <= 3 * 1000 / backoff.SPREAD_S, per_second


def test_a_failed_retry_after_a_loss_continues_exponentially():
    b = backoff.Backoff(base_s=2, cap_s=120, rand=lambda: 1.0, spread_s=40)
    assert b.after_loss() == 40
    assert [b.next_delay() for _ in range(3)] == [4, 8, 16]


def test_default_randomness_source_is_used():
    b = backoff.Backoff(base_s=1, cap_s=2)
    assert 0 <= b.next_delay() <= 1


@pytest.mark.parametrize("base,cap,spread", [(0, 1, 1), (2, 1, 1), (-1, 5, 1), (1, 5, -1)])
def test_bad_parameters(base, cap, spread):
    with pytest.raises(ValueError):
        backoff.Backoff(base, cap, spread_s=spread)

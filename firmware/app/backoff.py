"""Reconnect delays: exponential backoff with full jitter, and a spread-out
first retry after a lost session.

After a broker restart every device loses its session at the same moment.
If each retried within a second or two, 1,000 devices would hit the broker
in the same second (a reconnect storm: CONNECT, TLS handshakes, retained
messages and subscriptions all at once). So the first retry after a lost
session waits a uniformly random time in [0, spread_s] (40 s by default:
1,000 devices then arrive at about 25 per second). Retries that fail grow
with full jitter: a uniform time in [0, min(cap, base * 2**attempt)].
"""

BASE_S = 2.0
CAP_S = 120.0
SPREAD_S = 40.0


class Backoff:
    def __init__(self, base_s=BASE_S, cap_s=CAP_S, rand=None, spread_s=SPREAD_S):
        if not 0 < base_s <= cap_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s, got %r, %r" % (base_s, cap_s))
        if not 0 <= spread_s:
            raise ValueError("backoff needs spread_s >= 0, got %r" % (spread_s,))
        self.base_s = base_s
        self.cap_s = cap_s
        self.spread_s = spread_s
        self.attempt = 0
        if rand is None:
            import random

            def rand():
                return random.getrandbits(24) / 16777216.0
        self._rand = rand

    def rand(self):
        """A uniform random number in [0, 1) from this backoff's source."""
        return self._rand()

    def window(self):
        """Upper bound of the next delay."""
        if self.attempt >= 30:
            return self.cap_s
        return min(self.cap_s, self.base_s * (1 << self.attempt))

    def next_delay(self):
        """Seconds to wait before the next attempt; grows the window."""
        delay = self._rand() * self.window()
        self.attempt += 1
        return delay

    def after_loss(self):
        """Seconds to wait before the first attempt after a session was lost."""
        self.attempt = 1
        return self._rand() * self.spread_s

    def reset(self):
        """Call after a successful connection."""
        self.attempt = 0

"""Reconnect delays: exponential backoff with full jitter.

After a broker restart every device loses its session at the same moment.
With full jitter each device waits a uniformly random time in
[0, min(cap, base * 2**attempt)], so 1,000 devices spread their reconnects
over the whole window instead of arriving in lockstep.
"""


class Backoff:
    def __init__(self, base_s=1.0, cap_s=60.0, rand=None):
        if not 0 < base_s <= cap_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s, got %r, %r" % (base_s, cap_s))
        self.base_s = base_s
        self.cap_s = cap_s
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

    def reset(self):
        """Call after a successful connection."""
        self.attempt = 0

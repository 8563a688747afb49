"""Plausible factory signals for a simulated device, deterministic per seed.

A machine cycles through run / stop / fault states (a Markov chain with mean
dwell times); three-phase mains around 230 V with slow drift and a little
imbalance; load current that follows the state, with a start-up burst when a
motor starts; power factor lower when idle; oven zones that heat toward their
setpoint with a first-order lag while running and cool toward ambient when
stopped.
"""

import math
import random

from firmware.common import DEFAULT_KIND, KINDS

# state: (mean dwell seconds, {next state: weight})
STATES = {
    "run": (600.0, {"stop": 0.9, "fault": 0.1}),
    "stop": (120.0, {"run": 0.95, "fault": 0.05}),
    "fault": (60.0, {"stop": 1.0}),
}

class Signals:
    def __init__(self, kind, seed, start_time=0.0):
        self.rng = random.Random(seed)
        self.kind = kind
        self.phases, self.zones, self.rated, self.setpoint = KINDS.get(kind, DEFAULT_KIND)
        self.state = "run" if self.rng.random() < 0.7 else "stop"
        self.t = start_time
        self.next_change = start_time + self._dwell(self.state)
        self.burst_until = -1.0
        self.ambient = 22.0 + self.rng.uniform(-2, 2)
        self.temps = [self.ambient + (self.setpoint - self.ambient) * 0.9 if self.setpoint and self.state == "run"
                      else self.ambient for _ in range(self.zones)]
        self.v_offset = [self.rng.uniform(-3, 3) for _ in range(3)]
        self.i_share = [1.0 + self.rng.uniform(-0.06, 0.06) for _ in range(3)]
        self.energy_wh = [self.rng.randrange(10_000, 5_000_000) for _ in range(3)]

    def _dwell(self, state):
        return self.rng.expovariate(1.0 / STATES[state][0])

    def advance(self, now):
        """Move the model to time *now* (seconds)."""
        dt = max(0.0, now - self.t)
        self.t = now
        while now >= self.next_change:
            choices = STATES[self.state][1]
            pick = self.rng.random() * sum(choices.values())
            for nxt, w in choices.items():
                pick -= w
                if pick <= 0:
                    break
            if nxt == "run":
                self.burst_until = self.next_change + self.rng.uniform(2, 6)
            self.state = nxt
            self.next_change += self._dwell(nxt)
        for i in range(self.zones):
            target = (self.setpoint + (i - 1) * 2.0) if (self.setpoint and self.state == "run") else self.ambient
            tau = 300.0 if target > self.temps[i] else 900.0
            self.temps[i] += (target - self.temps[i]) * (1 - math.exp(-dt / tau))
        for p in range(self.phases):
            self.energy_wh[p] += int(self.current(p) * self.voltage(p) * dt / 3600.0)

    def voltage(self, phase):
        drift = 1.5 * math.sin(self.t / 3600.0 * 2 * math.pi)
        return 230.0 + self.v_offset[phase] + drift + self.rng.gauss(0, 0.4)

    def current(self, phase):
        if self.state == "fault":
            return 0.0
        if self.state == "stop":
            return max(0.0, 0.3 + self.rng.gauss(0, 0.03))
        base = self.rated * self.i_share[phase] * (0.75 + 0.1 * math.sin(self.t / 40.0))
        if self.t < self.burst_until:
            base *= 3.0  # motor start
        return max(0.0, base + self.rng.gauss(0, 0.1))

    def power_factor(self):
        if self.state != "run":
            return 0.5 + self.rng.uniform(-0.05, 0.05)
        return min(1.0, 0.88 + self.rng.gauss(0, 0.02))

    def temperature(self, zone):
        return self.temps[zone] + self.rng.gauss(0, 0.15)

    def meter(self, phase):
        v, i, pf = self.voltage(phase), self.current(phase), self.power_factor()
        return {"voltage": v, "current": i, "power": v * i * pf, "energy_wh": self.energy_wh[phase],
                "frequency": 50.0 + self.rng.gauss(0, 0.02), "power_factor": pf, "alarm": False}

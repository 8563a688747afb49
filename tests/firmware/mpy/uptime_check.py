"""boardkit.Uptime over 20 days of ESP32 ticks (which wrap at 2**30 ms,
about 12.4 days; ticks_diff is right only below half of that). Prints the
uptime seen every 6 hours, and what the old formula (one ticks_diff since
boot) would have said at the end. Runs under CPython and MicroPython."""

import json

from boardkit import Uptime

PERIOD = 1 << 30
now = [PERIOD - 3600 * 1000]  # boot an hour before the first wrap


def ticks_ms():
    return now[0] % PERIOD


def ticks_diff(a, b):  # MicroPython's ticks_diff for a 2**30 period
    return ((a - b + PERIOD // 2) % PERIOD) - PERIOD // 2


up = Uptime(ticks_ms, ticks_diff)
boot = ticks_ms()
seen = []
for step in range(20 * 4):  # 20 days, read every 6 hours
    now[0] += 6 * 3600 * 1000
    seen.append(up.seconds())
print(json.dumps({"seen": seen, "naive_end": ticks_diff(ticks_ms(), boot) // 1000}))

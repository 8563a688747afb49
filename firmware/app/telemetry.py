"""Telemetry: samples taken every ``sample_interval_s`` are averaged into one
message every ``publish_interval_s``, in the payload of docs/architecture.md,
section 3.3.
Groups a device does not have (no meters, no temperature zones) are left out.
"""

PHASES = ("a", "b", "c")


def _mean(values):
    return sum(values) / len(values) if values else None


class Aggregator:
    def __init__(self):
        self.reset()

    def reset(self):
        self._voltage = [[], [], []]
        self._current = [[], [], []]
        self._pf = []
        self._temps = []
        self.samples = 0
        self.errors = 0

    def add(self, meters=None, temperatures=None):
        """*meters*: list of PZEM readings (dicts) in phase order, None where a
        meter failed; *temperatures*: list of zone temperatures, None where a
        sensor failed."""
        self.samples += 1
        for i, reading in enumerate((meters or [])[:3]):
            if reading is None:
                self.errors += 1
                continue
            self._voltage[i].append(reading["voltage"])
            self._current[i].append(reading["current"])
            self._pf.append(reading["power_factor"])
        if temperatures:
            while len(self._temps) < len(temperatures):
                self._temps.append([])
            for i, t in enumerate(temperatures):
                if t is None:
                    self.errors += 1
                else:
                    self._temps[i].append(t)

    def payload(self, device_id, ts, operational_state, wifi_rssi, uptime_seconds, setpoint=None):
        """The message for the interval; call reset() after publishing it."""
        msg = {"device_id": device_id, "ts": ts}
        phases = [i for i in range(3) if self._voltage[i]]
        if phases:
            msg["electrical"] = {
                "voltage": {PHASES[i]: round(_mean(self._voltage[i]), 1) for i in phases},
                "current": {PHASES[i]: round(_mean(self._current[i]), 3) for i in phases},
                "power_factor": round(_mean(self._pf), 2),
            }
        if self._temps:
            zones = [_mean(z) for z in self._temps]
            msg["thermal"] = {"temperature_zones": [None if z is None else round(z, 2) for z in zones]}
            if setpoint is not None:
                msg["thermal"]["setpoint"] = setpoint
        msg["status"] = {"operational_state": operational_state, "wifi_rssi": wifi_rssi,
                         "uptime_seconds": uptime_seconds}
        return msg

"""The ``/metrics`` text: the device's metrics in the Prometheus text format
(version 0.0.4).

``render(values)`` is pure (runs anywhere). The device imports this module
for a scrape only and releases it after (``Device.release_modules``): the server
that listens (``metrics.py``) stays, the text it sends is rendered here.
"""


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels):
    if not labels:
        return ""
    return "{" + ",".join('%s="%s"' % (k, _escape(v)) for k, v in labels) + "}"


def render(metrics):
    """*metrics*: [(name, type, help, [(labels tuple, value), ...]), ...]."""
    return "\n".join(render_lines(metrics)) + "\n"


def render_lines(metrics):
    """The exposition as a list of lines (without newlines): the server
    sends them in small pieces, so a scrape needs no large block of heap."""
    out = []
    for name, kind, help_text, samples in metrics:
        out.append("# HELP %s %s" % (name, help_text))
        out.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            if value is None:
                continue
            if isinstance(value, bool):
                value = int(value)
            out.append("%s%s %s" % (name, _labels(labels), repr(float(value)) if isinstance(value, float)
                                    else value))
    return out


def device_lines(dev):
    """The lines of a device's /metrics (*dev*: the running device.Device)."""
    board = dev.board
    info = (("device_id", dev.id), ("kind", dev.kind), ("fw", dev.fw))
    last = dev.last or {}
    elec = last.get("electrical", {})
    zones = last.get("thermal", {}).get("temperature_zones", [])
    return render_lines([
        ("edgefleet_device_info", "gauge", "Device identity.", [(info, 1)]),
        ("edgefleet_uptime_seconds", "gauge", "Seconds since boot.", [((), board.uptime_s())]),
        ("edgefleet_wifi_rssi_dbm", "gauge", "Wi-Fi signal.", [((), board.wifi_rssi())]),
        ("edgefleet_free_heap_bytes", "gauge", "Free heap.", [((), board.free_heap())]),
        ("edgefleet_heap_largest_free_block_bytes", "gauge", "Largest free block of the Python heap.",
         [((), board.heap_largest_free())]),
        ("edgefleet_idf_heap_largest_free_block_bytes", "gauge",
         "Largest free block of ESP-IDF's data heap (TLS needs 16 KiB in one piece).",
         [((), board.idf_largest_free())]),
        ("edgefleet_mqtt_connected", "gauge", "1 while the MQTT session is up.", [((), dev.online())]),
        ("edgefleet_mqtt_connects_total", "counter", "MQTT sessions opened.", [((), dev.connects)]),
        ("edgefleet_telemetry_published_total", "counter", "Telemetry messages acknowledged by the broker.",
         [((), dev.published)]),
        ("edgefleet_buffer_messages", "gauge", "Telemetry messages waiting in flash.", [((), len(dev.buffer))]),
        ("edgefleet_buffer_dropped_total", "counter", "Buffered messages dropped when the buffer was full.",
         [((), dev.buffer.dropped)]),
        ("edgefleet_config_version", "gauge", "Applied config version.", [((), dev.config["version"])]),
        ("edgefleet_sensor_errors_total", "counter", "Failed sensor reads.", [((), dev.sensor_errors)]),
        ("edgefleet_time_synced", "gauge", "1 once the clock was set from NTP.", [((), board.time_synced())]),
        ("edgefleet_voltage_volts", "gauge", "Mean phase voltage of the last interval.",
         [((("phase", p),), v) for p, v in sorted(elec.get("voltage", {}).items())]),
        ("edgefleet_current_amperes", "gauge", "Mean phase current of the last interval.",
         [((("phase", p),), v) for p, v in sorted(elec.get("current", {}).items())]),
        ("edgefleet_power_factor", "gauge", "Mean power factor of the last interval.",
         [((), elec.get("power_factor"))]),
        ("edgefleet_temperature_celsius", "gauge", "Mean zone temperature of the last interval.",
         [((("zone", str(i)),), t) for i, t in enumerate(zones)]),
    ])

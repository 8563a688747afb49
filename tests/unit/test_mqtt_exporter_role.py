"""roles/mqtt_exporter: the real templates rendered (rolerender) and read as
the exporter reads them, checked against payloads the firmware's own
aggregator builds (firmware/app/telemetry.py) and the device config's limits
(plugins/module_utils/devconfig.py); the role's input checks run by a real
ansible-playbook in check mode (connection local). The exporter itself runs
on these configs in tests/integration/test_mqtt_exporter.py."""

import devconfig
import pytest
import telemetry
import yaml

from rolecheck import check_entry_point
from rolerender import render, role_vars

ZONES = devconfig._RULES["temperature_zones"][2]


def config(instance="telemetry", **overrides):
    ctx = role_vars("mqtt_exporter", dict({
        "edgefleet_site": "lab", "edgefleet_secrets_dir": "/nonexistent",
        "_mqtt_exporter_password_telemetry": "pw-t", "_mqtt_exporter_password_broker": "pw-b"}, **overrides))
    return yaml.safe_load(render("mqtt_exporter", f"{instance}.yaml.j2", ctx))


def leaf_paths(node, prefix=""):
    """mqtt_name paths (gojsonq, separator '.', array items as [i]) of every scalar in a payload."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(leaf_paths(v, f"{prefix}.{k}" if prefix else k))
        return out
    if isinstance(node, list):
        out = {}
        for i, v in enumerate(node):
            out.update(leaf_paths(v, f"{prefix}.[{i}]"))
        return out
    return {prefix: node}


def full_state_payload():
    """A state message of a device with everything: three phases and every zone the config allows."""
    agg = telemetry.Aggregator()
    agg.add(meters=[{"voltage": 230.0 + i, "current": 1.5, "power_factor": 0.95} for i in range(3)],
            temperatures=[150.0 + i for i in range(ZONES)])
    msg = agg.payload("oven-tvcft64q", 1795500000.5, "run", -60, 3600, setpoint=180)
    msg["seq"] = 7
    return msg


# --- finding: zones 4-7 never reached Prometheus -------------------------------

def test_every_zone_the_device_config_allows_is_exported():
    zones = sorted(int(m["const_labels"]["zone"]) for m in config()["metrics"]
                   if m["prom_name"] == "edgefleet_telemetry_temperature_celsius")
    assert zones == list(range(ZONES)) and ZONES == 8
    paths = {m["mqtt_name"] for m in config()["metrics"]}
    assert {f"thermal.temperature_zones.[{i}]" for i in range(ZONES)} <= paths


def test_every_value_of_a_full_state_message_is_exported():
    mapped = {m["mqtt_name"] for m in config()["metrics"]}
    missing = set(leaf_paths(full_state_payload())) - mapped - {"device_id"}  # device_id: from the topic
    assert not missing, f"state values with no metric: {sorted(missing)}"


def test_the_zone_count_is_no_role_variable():
    """One number, the contract's: no default may set it again."""
    defaults = role_vars("mqtt_exporter")
    assert not [k for k in defaults if "zone" in k], defaults.keys()


# --- finding: the cache made Prometheus reject samples ------------------------

@pytest.mark.parametrize("instance", ["telemetry", "broker"])
def test_a_value_kept_forever_carries_no_timestamp(instance):
    """cache.timeout -1 keeps the last value of a quiet device (or a steady
    $SYS counter) for good; stamped with its arrival time, Prometheus 2.42
    would drop it at every scrape once it is an hour older than the head."""
    c = config(instance)
    assert c["cache"]["timeout"] == -1  # the retained status must not expire
    stamped = [m["prom_name"] for m in c["metrics"] if not m.get("omit_timestamp")]
    assert not stamped, f"{instance}: metrics exposed with their arrival time: {stamped}"


def test_the_device_clock_and_publish_interval_are_exported():
    metrics = {m["prom_name"]: m["mqtt_name"] for m in config()["metrics"]}
    assert metrics["edgefleet_telemetry_timestamp_seconds"] == "ts"
    assert metrics["edgefleet_device_publish_interval_seconds"] == "publish_interval_s"
    assert "publish_interval_s" in devconfig.DEFAULTS


# --- finding: ssl:// with only a CA never connects ----------------------------

def test_tls_files_go_into_both_configs():
    tls = {"mqtt_exporter_broker_url": "ssl://localhost:8883", "mqtt_exporter_ca_cert": "/etc/ssl/site-ca.crt",
           "mqtt_exporter_client_cert": "/etc/prometheus/exporter.crt",
           "mqtt_exporter_client_key": "/etc/prometheus/exporter.key"}
    for instance in ("telemetry", "broker"):
        mqtt = config(instance, **tls)["mqtt"]
        assert (mqtt["server"], mqtt["ca_cert"], mqtt["client_cert"], mqtt["client_key"]) == tuple(tls.values())
        assert not {"ca_cert", "client_cert", "client_key"} & set(config(instance)["mqtt"])


def validate(tmp_path, **extra):
    rc, out, changed, raw = check_entry_point(tmp_path, "mqtt_exporter", "validate", "ctl01", tmp_path / "secrets",
                                              extra)
    assert changed == 0, raw[-3000:]
    return rc, out


def test_ssl_with_only_a_ca_is_refused_naming_the_url(tmp_path):
    rc, out = validate(tmp_path, mqtt_exporter_broker_url="ssl://localhost:8883",
                       mqtt_exporter_ca_cert="/etc/ssl/site-ca.crt")
    assert rc != 0
    assert "mqtt_exporter_broker_url 'ssl://localhost:8883' for host ctl01 is TLS" in out
    assert "mqtt_exporter_client_cert ('')" in out and "Nothing was changed" in out


def test_ssl_with_ca_and_client_certificate_passes(tmp_path):
    rc, out = validate(tmp_path, mqtt_exporter_broker_url="ssl://localhost:8883",
                       mqtt_exporter_ca_cert="/etc/ssl/site-ca.crt",
                       mqtt_exporter_client_cert="/etc/prometheus/exporter.crt",
                       mqtt_exporter_client_key="/etc/prometheus/exporter.key")
    assert rc == 0, out


def test_the_default_plain_listener_passes(tmp_path):
    rc, out = validate(tmp_path)
    assert rc == 0, out

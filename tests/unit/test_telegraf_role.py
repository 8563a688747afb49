"""roles/telegraf: the real template rendered (rolerender) for InfluxDB 1.x and
2.x and parsed with tomllib; the agent, mqtt_consumer, topic parsing and
outputs checked; the json_v2 mapping checked against payloads built by the
firmware's own aggregator (firmware/app/telemetry.py), with each GJSON path
evaluated on them by a small evaluator of the subset the role uses (dotted
keys and array indexes); and the inflight assertion run by a real
ansible-playbook in check mode (connection local).

Telegraf itself cannot be installed here, so `telegraf config check` does
not run in these tests (the role reports it SKIPPED on such hosts). The
option names are pinned below to what Telegraf v1.39.3 documents (README /
sample.conf of each plugin, docs/CONFIGURATION.md): a renamed or misspelt
option fails here instead of at Telegraf's start."""

import pathlib
import re
import tomllib

import devconfig
import pytest
import telemetry
from rolecheck import check_entry_point
from rolerender import render, role_vars, value

ROOT = pathlib.Path(__file__).resolve().parents[2]
SITE = {"edgefleet_site": "lab", "edgefleet_secrets_dir": "/nonexistent/secrets"}
SECRETS = {"_telegraf_mqtt_password": 'mq"tt\\pw', "_telegraf_influxdb_password": "influx-pw",
           "_telegraf_influxdb_token": "tok-123"}

# Options per table, as Telegraf v1.39.3 documents them (see module doc).
AGENT_OPTIONS = {"interval", "round_interval", "metric_batch_size", "metric_buffer_limit", "collection_jitter",
                 "flush_interval", "flush_jitter", "precision", "omit_hostname"}
MQTT_OPTIONS = {"servers", "topics", "topic_tag", "qos", "persistent_session", "client_id",
                "max_undelivered_messages", "connection_timeout", "max_reconnect_interval", "keepalive",
                "ping_timeout", "username", "password", "tls_ca", "data_format", "topic_parsing", "json_v2"}
TOPIC_PARSING_OPTIONS = {"topic", "measurement", "tags", "fields", "types"}
JSON_V2_OPTIONS = {"measurement_name", "tag", "field"}
JSON_V2_DATASET_OPTIONS = {"path", "rename", "type", "optional"}
JSON_V2_TYPES = {"int", "uint", "float", "string", "bool"}
INFLUXDB_OPTIONS = {"urls", "database", "retention_policy", "skip_database_creation", "timeout", "username",
                    "password", "namepass"}
INFLUXDB_V2_OPTIONS = {"urls", "organization", "bucket", "timeout", "token", "namepass"}
# plugins/inputs/internal/internal.go and plugins/outputs/prometheus_client/
# prometheus_client.go (toml tags) at v1.39.3; namepass and
# startup_error_behavior are plugin options every plugin takes
# (config/config.go: read in buildInput/buildOutput, and listed in
# missingTomlField so no plugin reports them as unknown).
INTERNAL_OPTIONS = {"collect_memstats", "collect_gostats", "per_instance"}
PROMETHEUS_CLIENT_OPTIONS = {"listen", "read_timeout", "write_timeout", "metric_version", "basic_username",
                             "basic_password", "ip_range", "expiration_interval", "path", "collectors_exclude",
                             "string_as_label", "export_timestamp", "metric_types", "name_sanitization",
                             "http_headers", "namepass"}
MQTT_OPTIONS = MQTT_OPTIONS | {"startup_error_behavior"}
# models/running_input.go Init() at v1.39.3
STARTUP_ERROR_BEHAVIORS = {"error", "retry", "ignore", "probe"}


def ctx(major="1", **overrides):
    return role_vars("telegraf", {**SITE, **SECRETS, "telegraf_influxdb_major": major, **overrides})


def conf(major="1", **overrides):
    return tomllib.loads(render("telegraf", "telegraf.conf.j2", ctx(major, **overrides)))


def consumer(c):
    (m,) = c["inputs"]["mqtt_consumer"]
    return m


def test_agent_settings():
    agent = conf()["agent"]
    assert set(agent) <= AGENT_OPTIONS
    assert agent["flush_interval"] == "1s"
    assert agent["precision"] == "1ms"
    assert agent["metric_batch_size"] == 1000
    assert agent["metric_buffer_limit"] == 10000
    assert agent["omit_hostname"] is True
    assert agent["flush_jitter"] == "0s"


def test_mqtt_consumer_options():
    m = consumer(conf())
    assert set(m) <= MQTT_OPTIONS
    assert m["servers"] == ["tcp://127.0.0.1:1883"]
    assert m["topics"] == ["site/lab/+/+/state"]
    assert m["qos"] == 1
    assert m["persistent_session"] is True
    assert m["client_id"] == "edgefleet-telegraf-lab"
    assert m["username"] == "telegraf"
    assert m["password"] == SECRETS["_telegraf_mqtt_password"]
    assert m["max_undelivered_messages"] == 1000
    assert m["topic_tag"] == ""
    assert m["data_format"] == "json_v2"
    assert "tls_ca" not in m
    assert consumer(conf(telegraf_mqtt_tls_ca="/etc/mosquitto/certs/edgefleet-ca.crt"))["tls_ca"] == \
        "/etc/mosquitto/certs/edgefleet-ca.crt"


def parse_topic(rule, topic):
    """mqtt_consumer's topic_parser.go for patterns without '#': a topic of
    the pattern's length whose fixed levels match gets one tag per named
    level of `tags`."""
    pattern, names, levels = rule["topic"].split("/"), rule["tags"].split("/"), topic.split("/")
    if len(levels) != len(pattern) or any(p not in ("+", lv) for p, lv in zip(pattern, levels)):
        return None
    return {n: lv for n, lv in zip(names, levels) if n not in ("_", "")}


def test_topic_parsing_gives_site_kind_and_device_id():
    m = consumer(conf())
    (rule,) = m["topic_parsing"]
    assert set(rule) <= TOPIC_PARSING_OPTIONS
    assert rule["topic"] == m["topics"][0]
    # topic_parser.go refuses tags whose length differs from the topic's
    assert len(rule["tags"].split("/")) == len(rule["topic"].split("/"))
    assert parse_topic(rule, "site/lab/oven/oven-tvcft64q/state") == {
        "site": "lab", "kind": "oven", "device_id": "oven-tvcft64q"}
    assert parse_topic(rule, "site/other/oven/oven-tvcft64q/state") is None
    assert parse_topic(rule, "site/lab/oven/oven-tvcft64q/status") is None


def payloads():
    """The messages the firmware publishes, by its own aggregator: every
    group, no meters, no zones, failed sensors, no clock yet."""
    full = telemetry.Aggregator()
    full.add(meters=[{"voltage": 229.5 + i, "current": 1.25, "power_factor": 0.93} for i in range(3)],
             temperatures=[20.5 + i for i in range(ZONES)])
    env = telemetry.Aggregator()
    env.add(temperatures=[21.0, None])
    psu = telemetry.Aggregator()
    psu.add(meters=[{"voltage": 231.0, "current": 2.0, "power_factor": 0.99}, None, None])
    bare = telemetry.Aggregator()
    out = [
        full.payload("oven-tvcft64q", 1795500000.125, "run", -61, 3600, setpoint=180),
        env.payload("env-yy1ka51y", 1795500001.5, "stop", -70, 12),
        psu.payload("psu-ktcyat68", None, "fault", -55, 5),
        bare.payload("fan-0000abcd", 1795500002, "run", -80, 1),
    ]
    for seq, msg in enumerate(out, 1):
        msg["seq"] = seq
    return out


ZONES = devconfig._RULES["temperature_zones"][2]


def leaf_paths(node, prefix=""):
    """GJSON paths of every scalar in a payload (arrays by index)."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return {prefix: node}
    out = {}
    for k, v in items:
        out.update(leaf_paths(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


MISSING = object()


def gjson(doc, path):
    """The GJSON subset the mapping uses: dot-separated object keys and
    array indexes. Anything else (wildcards, queries, modifiers, escapes)
    is refused so that the role cannot start using syntax this test does
    not model."""
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*", path), path
    node = doc
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def mapping(c):
    (j,) = consumer(c)["json_v2"]
    return j


def test_json_v2_options_and_names():
    j = mapping(conf())
    assert set(j) <= JSON_V2_OPTIONS
    assert j["measurement_name"] == "telemetry"
    for d in j["tag"] + j["field"]:
        assert set(d) <= JSON_V2_DATASET_OPTIONS
        assert "type" not in d or d["type"] in JSON_V2_TYPES
    names = [d["rename"] for d in j["tag"] + j["field"]]
    assert len(names) == len(set(names))


def test_json_v2_maps_every_value_of_the_payload():
    j = mapping(conf())
    mapped = {d["path"] for d in j["tag"] + j["field"]}
    seen = set()
    for msg in payloads():
        seen |= set(leaf_paths(msg))
    assert seen, "no payload"
    assert seen <= mapped, f"payload values with no mapping: {sorted(seen - mapped)}"
    # and nothing the firmware never sends
    assert mapped <= seen, f"mapped paths no payload has: {sorted(mapped - seen)}"
    assert {d["rename"] for d in j["tag"]} == {"device_id"}
    zones = sorted(d["rename"] for d in j["field"] if d["path"].startswith("thermal.temperature_zones."))
    assert zones == sorted(f"temperature_zone_{i}" for i in range(ZONES))


def test_zone_count_is_the_device_config_limit():
    assert int(value(ctx(), "_telegraf_temperature_zones")) == ZONES == 8


def test_each_path_selects_a_value_of_its_type_or_is_optional():
    """Evaluated on every firmware payload: a path either selects a scalar
    (null is ignored by json_v2) whose JSON type fits the declared field
    type, or is missing, and then it must be optional or the whole message
    would be dropped."""
    j = mapping(conf())
    fits = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "string": lambda v: isinstance(v, str)}
    for msg in payloads():
        for d in j["tag"] + j["field"]:
            got = gjson(msg, d["path"])
            if got is MISSING:
                assert d["optional"], f"{d['path']} missing in a {msg['device_id']} message but not optional"
                continue
            assert not isinstance(got, (dict, list)), d["path"]
            if got is not None and "type" in d:
                assert fits[d["type"]](got), (d["path"], d["type"], got)
    required = {d["path"] for d in j["tag"] + j["field"] if not d["optional"]}
    assert required == {"device_id", "seq", "status.operational_state", "status.wifi_rssi",
                        "status.uptime_seconds"}


def test_device_clock_becomes_the_timestamp():
    c = conf()
    ts = [d for d in mapping(c)["field"] if d["path"] == "ts"]
    assert ts == [{"path": "ts", "rename": "ts", "type": "float", "optional": True}]
    (conv,) = c["processors"]["converter"]
    assert conv["namepass"] == ["telemetry"]
    assert conv["fields"] == {"timestamp": ["ts"], "timestamp_format": "unix"}
    assert "timestamp_path" not in mapping(c)


def test_output_influxdb_1():
    c = conf("1")
    assert set(c["outputs"]) == {"influxdb", "prometheus_client"}
    (o,) = c["outputs"]["influxdb"]
    assert set(o) <= INFLUXDB_OPTIONS
    assert o == {"urls": ["http://127.0.0.1:8086"], "database": "edgefleet", "retention_policy": "",
                 "skip_database_creation": True, "timeout": "5s", "username": "telegraf",
                 "password": "influx-pw", "namepass": ["telemetry"]}


def test_output_influxdb_2():
    c = conf("2")
    assert set(c["outputs"]) == {"influxdb_v2", "prometheus_client"}
    (o,) = c["outputs"]["influxdb_v2"]
    assert set(o) <= INFLUXDB_V2_OPTIONS
    assert o == {"urls": ["http://127.0.0.1:8086"], "organization": "edgefleet", "bucket": "edgefleet",
                 "timeout": "5s", "token": "tok-123", "namepass": ["telemetry"]}


def test_output_follows_the_influxdb_role():
    """Same default as the influxdb role (2), and its facts when present."""
    assert value(role_vars("telegraf", SITE), "telegraf_influxdb_major") == "2"
    v = role_vars("telegraf", {**SITE, **SECRETS, "influxdb_major": "1", "influxdb_url": "http://127.0.0.1:18086",
                               "influxdb_database": "site_history"})
    (o,) = tomllib.loads(render("telegraf", "telegraf.conf.j2", v))["outputs"]["influxdb"]
    assert o["urls"] == ["http://127.0.0.1:18086"] and o["database"] == "site_history"


def test_no_top_level_tables_beyond_the_documented_ones():
    assert set(conf()) == {"agent", "inputs", "processors", "outputs"}
    assert set(conf()["inputs"]) == {"mqtt_consumer", "internal"}


def validate(tmp_path, **extra):
    rc, out, changed, raw = check_entry_point(tmp_path, "telegraf", "validate", "ctl01", tmp_path / "secrets", extra)
    assert changed == 0, raw[-3000:]
    return rc, out


def test_read_ahead_beyond_the_broker_inflight_limit_fails(tmp_path):
    rc, out = validate(tmp_path, mosquitto_max_inflight_messages=1000, telegraf_max_undelivered_messages=1001)
    assert rc != 0
    assert "telegraf_max_undelivered_messages (1001)" in out
    assert "assertion: (telegraf_max_undelivered_messages | int) <= (telegraf_broker_max_inflight_messages | int)" in out
    assert "mosquitto_max_inflight_messages (1000" in out
    assert "Nothing was changed" in out


def test_read_ahead_equal_to_the_inflight_limit_passes(tmp_path):
    rc, out = validate(tmp_path, mosquitto_max_inflight_messages=1000, telegraf_max_undelivered_messages=1000)
    assert rc == 0, out[-3000:]


def test_without_the_broker_setting_mosquittos_own_default_is_assumed(tmp_path):
    """Mosquitto's built-in inflight limit is 20: the default read-ahead
    (1000) is refused unless the inventory or the play says otherwise."""
    rc, out = validate(tmp_path)
    assert rc != 0
    assert "mosquitto_max_inflight_messages (20" in out
    assert "assertion: (telegraf_max_undelivered_messages | int) <= (telegraf_broker_max_inflight_messages | int)" in out


# --- the history path loses nothing silently (issue 21) ----------------------

def test_broker_is_retried_at_start_and_after_a_reload():
    """startup_error_behavior is a per-plugin option in v1.39.3 (not an agent
    one): on mqtt_consumer, "retry" keeps Telegraf running while the broker
    does not answer, instead of exiting (the default "error")."""
    c = conf()
    m = consumer(c)
    assert m["startup_error_behavior"] == "retry"
    assert m["startup_error_behavior"] in STARTUP_ERROR_BEHAVIORS
    assert "startup_error_behavior" not in c["agent"]


def test_option_names_of_the_health_plugins():
    c = conf()
    (internal,) = c["inputs"]["internal"]
    assert set(internal) <= INTERNAL_OPTIONS
    (prom,) = c["outputs"]["prometheus_client"]
    assert set(prom) <= PROMETHEUS_CLIENT_OPTIONS
    assert prom["metric_version"] in (1, 2)
    assert set(prom["collectors_exclude"]) <= {"gocollector", "process"}


def glob_match(pattern, name):
    """Telegraf's filter globs (filter/filter.go, gobwas/glob): '*' any run of
    characters, '?' one; no other syntax is used by the role."""
    assert re.fullmatch(r"[A-Za-z0-9_*?]+", pattern), pattern
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), name) is not None


def routed(c, name):
    """The outputs a metric named *name* reaches (namepass only; the role uses no other filter)."""
    out = set()
    for plugin, instances in c["outputs"].items():
        for o in instances:
            if "namepass" not in o or any(glob_match(p, name) for p in o["namepass"]):
                out.add(plugin)
    return out


@pytest.mark.parametrize("major, store", [("1", "influxdb"), ("2", "influxdb_v2")])
def test_telemetry_goes_to_influxdb_only_and_health_to_prometheus_only(major, store):
    c = conf(major)
    assert routed(c, "telemetry") == {store}
    # every measurement inputs.internal emits (plugins/inputs/internal/README.md, v1.39.3)
    for name in ("internal_memstats", "internal_agent", "internal_gather", "internal_write",
                 "internal_mqtt_consumer"):
        assert routed(c, name) == {"prometheus_client"}, name
    # a renamed telemetry measurement follows
    assert routed(conf(major, telegraf_measurement="history"), "history") == {store}


def test_prometheus_endpoint_is_loopback_and_follows_the_variables():
    (prom,) = conf()["outputs"]["prometheus_client"]
    assert prom["listen"] == "127.0.0.1:9273"
    assert prom["path"] == "/metrics"
    (prom,) = conf(telegraf_prometheus_listen_address="::1", telegraf_prometheus_port=19273)["outputs"]["prometheus_client"]
    assert prom["listen"] == "[::1]:19273"
    (internal,) = conf()["inputs"]["internal"]
    assert internal["per_instance"] is False and internal["collect_memstats"] is True


def dropin(**overrides):
    """The drop-in as systemd reads it: sections of key=value lines, '#' comments."""
    text = render("telegraf", "edgefleet.conf.j2", ctx(**overrides))
    sections, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, val = line.partition("=")
        current.setdefault(key, []).append(val)
    return sections


def test_dropin_orders_telegraf_after_the_local_broker_and_never_gives_up():
    d = dropin()
    assert d["Unit"]["After"] == ["mosquitto.service"]
    assert d["Unit"]["Wants"] == ["mosquitto.service"]
    assert "Requires" not in d["Unit"] and "BindsTo" not in d["Unit"]
    assert d["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert d["Service"] == {"Restart": ["always"], "RestartSec": ["10s"]}
    assert dropin(telegraf_restart_sec=30)["Service"]["RestartSec"] == ["30s"]


@pytest.mark.parametrize("servers, local", [
    (["tcp://127.0.0.1:1883"], True),
    (["ssl://localhost:8883"], True),
    (["tcp://[::1]:1883"], True),
    (["tcp://127.0.1.1:1883"], True),
    (["tcp://broker.plant.example:1883"], False),
    (["tcp://127.0.0.1:1883", "tcp://10.0.0.5:1883"], False),
])
def test_broker_on_this_host_follows_the_server_urls(servers, local):
    assert bool(value(ctx(telegraf_mqtt_servers=servers), "telegraf_broker_on_this_host")) is local
    d = dropin(telegraf_mqtt_servers=servers)
    assert ("After" in d["Unit"]) is local and ("Wants" in d["Unit"]) is local
    assert d["Unit"]["StartLimitIntervalSec"] == ["0"]


def test_dropin_is_managed_like_the_config_and_reloaded_with_a_daemon_reload():
    import yaml
    files = {f["live"]: f for f in value(ctx(), "_telegraf_files")}
    d = files["/etc/systemd/system/telegraf.service.d/edgefleet.conf"]
    assert d["apply"] == "reload" and d["mode"] == "0644" and not d.get("private")
    handlers = yaml.safe_load((ROOT / "roles/telegraf/handlers/main.yml").read_text())
    reload = next(h for h in handlers if h["name"] == "Reload Telegraf")
    assert reload["ansible.builtin.systemd_service"]["daemon_reload"] is True
    assert reload["ansible.builtin.systemd_service"]["state"] == "reloaded"


def test_a_telegraf_without_retriable_broker_startup_is_refused(tmp_path):
    rc, out = validate(tmp_path, mosquitto_max_inflight_messages=1000, telegraf_version="1.31.3")
    assert rc != 0
    assert "telegraf_version ('1.31.3') must be 1.32.0 or later" in out
    assert "Nothing was changed" in out


def test_write_check_runs_before_anything_changes_on_the_host():
    import yaml
    tasks = yaml.safe_load((ROOT / "roles/telegraf/tasks/main.yml").read_text())
    names = [t.get("ansible.builtin.import_tasks") or t.get("ansible.builtin.include_role", {}).get("tasks_from")
             or t["name"] for t in tasks]
    assert names.index("write_check.yml") == names.index("credentials.yml") + 1
    assert names.index("write_check.yml") < names.index("install.yml") < names.index("apply")
    check = yaml.safe_load((ROOT / "roles/telegraf/tasks/write_check.yml").read_text())
    (block,) = [t for t in check if "block" in t]
    assert "not ansible_check_mode" in block["when"]

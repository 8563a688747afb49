"""roles/prometheus: the real templates rendered (tools/pylib/rolerender.py)
into a staging tree laid out like the role's, and checked by the real tools
the role runs on the target: promtool check config/rules, amtool
check-config, prometheus-blackbox-exporter --config.check, and promtool's
alert unit tests (tests/unit/prometheus_rules/)."""

import pathlib
import re
import shlex
import shutil
import subprocess

import pytest
import yaml
from ansible.template import trust_as_template

from rolerender import ROOT, _templar, render, role_vars, value

ROLE = "prometheus"
RULE_TESTS = pathlib.Path(__file__).resolve().parent / "prometheus_rules"
TOOLS = ("promtool", "amtool", "prometheus-blackbox-exporter")
DEVICES = ["psu-ktcyat68", "env-yy1ka51y", "oven-tvcft64q"]
DEVICE_ALERTS = {"EdgefleetDeviceOffline", "EdgefleetTelemetryStale", "EdgefleetTemperatureOverSetpoint",
                 "EdgefleetRolloutFailed", "EdgefleetDeviceTlsMemoryLow", "EdgefleetDeviceClockUnset"}
JOBS = ["prometheus", "node", "alertmanager", "edgefleet_telemetry", "mosquitto", "edgefleet_devices", "blackbox_tls",
        "blackbox_influxdb", "telegraf"]
HISTORY_ALERTS = {"EdgefleetInfluxdbDown", "EdgefleetTelegrafDown", "EdgefleetTelegrafWriteErrors",
                  "EdgefleetTelegrafBufferFilling"}


@pytest.fixture(scope="module", autouse=True)
def _tools():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {missing}: apt-get install prometheus prometheus-alertmanager prometheus-blackbox-exporter")


def inventory(**overrides):
    """The role's variables for a small site: three devices, one with its own metrics address."""
    ctx = role_vars(ROLE, {
        "edgefleet_site": "lab",
        "groups": {"fleet": list(DEVICES)},
        "hostvars": {"psu-ktcyat68": {"device_metrics_address": "127.0.0.1:9651"},
                     "env-yy1ka51y": {}, "oven-tvcft64q": {}},
        "site_ca_cert_path": "/nonexistent/controller/ca.crt",
        "_prometheus_group": "prometheus",
        # the whole site: the influxdb and telegraf roles are in the play
        "influxdb_major": "1",
        "influxdb_url": "http://127.0.0.1:8086",
        "telegraf_prometheus_port": 9273,
    })
    ctx.update(overrides)
    return ctx


def stage(tmp_path, ctx):
    """Render every managed file the way the role stages it: <staging dir><live path>."""
    ctx = dict(ctx, _prometheus_staging_dir=str(tmp_path))
    files = value(ctx, "_prometheus_files")
    for f in files:
        dest = tmp_path / f["live"].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if "src" in f:
            dest.write_text(render(ROLE, f["src"], dict(ctx, _prometheus_service=f["service"])))
        else:  # the site CA copy: any PEM text will do, nothing here parses it
            dest.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    file_sd = tmp_path / value(ctx, "_prometheus_file_sd").lstrip("/")
    file_sd.parent.mkdir(parents=True, exist_ok=True)
    file_sd.write_text(render(ROLE, "edgefleet_devices.yml.j2", ctx))
    return ctx, files


def live(tmp_path, path):
    return tmp_path / path.lstrip("/")


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def checks(ctx):
    return [(s["name"], argv) for s in value(ctx, "_prometheus_services") for argv in s["checks"]]


# --- the staged tree passes the checks the role runs -------------------------

def test_staged_tree_passes_the_roles_own_checks(tmp_path):
    ctx, _ = stage(tmp_path, inventory())
    argvs = checks(ctx)
    assert sorted(a[0] for _, a in argvs) == ["amtool", "prometheus-blackbox-exporter", "promtool", "promtool"]
    for service, argv in argvs:
        assert str(tmp_path) in " ".join(argv), f"{service}: {argv} does not check the staged tree"
        result = run(argv)
        assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    # promtool checked the staged rules and discovery file, not live ones
    out = run(["promtool", "check", "config", str(live(tmp_path, "/etc/prometheus/prometheus.yml"))]).stdout
    assert "SUCCESS: 1 rule files found" in out and "16 rules found" in out  # 15 alerts, 1 recording rule
    assert "WARNING" not in out, out


@pytest.mark.parametrize("live_path,breakage", [
    ("/etc/prometheus/prometheus.yml", "scrape_configs: [{job_name: x, scrape_interval: 5q}]\n"),
    ("/etc/prometheus/rules/edgefleet-alerts.yml", "  - name: broken\n    rules: [{alert: X, expr: 'up =='}]\n"),
    ("/etc/prometheus/file_sd/edgefleet_devices.yml", "- targets: ['a:1']\n  labels: {'9bad': x}\n"),
    ("/etc/prometheus/alertmanager.yml", "route: {receiver: nobody-by-that-name}\n"),
    ("/etc/prometheus/blackbox.yml", "  broken:\n    prober: tcp\n    timeout: 5 parsecs\n"),
], ids=["config", "rules", "file_sd", "alertmanager", "blackbox"])
def test_the_checks_reject_a_broken_candidate(tmp_path, live_path, breakage):
    ctx, _ = stage(tmp_path, inventory())
    path = live(tmp_path, live_path)
    text = path.read_text()
    if live_path.endswith("prometheus.yml") or live_path.endswith("alertmanager.yml"):
        text = yaml.safe_dump(yaml.safe_load(text) | yaml.safe_load(breakage))
    elif live_path.endswith("edgefleet_devices.yml"):
        text = breakage
    else:
        text += breakage
    path.write_text(text)
    failed = [argv for _, argv in checks(ctx) if run(argv).returncode != 0]
    assert failed, f"no check rejected the broken {live_path}"


# --- prometheus.yml ----------------------------------------------------------

def prometheus_config(tmp_path, **overrides):
    stage(tmp_path, inventory(**overrides))
    return yaml.safe_load(live(tmp_path, "/etc/prometheus/prometheus.yml").read_text())


def job(config, name):
    return next(j for j in config["scrape_configs"] if j["job_name"] == name)


def test_jobs_globals_rules_and_alerting(tmp_path):
    config = prometheus_config(tmp_path)
    assert [j["job_name"] for j in config["scrape_configs"]] == JOBS
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["global"]["external_labels"] == {"site": "lab"}
    assert config["rule_files"] == ["rules/edgefleet-alerts.yml"]  # relative: the staged copy checks staged rules
    assert config["alerting"]["alertmanagers"] == [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]
    targets = {j["job_name"]: j.get("static_configs", [{}])[0].get("targets") for j in config["scrape_configs"]}
    assert targets["prometheus"] == ["127.0.0.1:9090"]
    assert targets["node"] == ["127.0.0.1:9100"]
    assert targets["alertmanager"] == ["127.0.0.1:9093"]
    assert targets["edgefleet_telemetry"] == ["127.0.0.1:9641"]
    assert targets["mosquitto"] == ["127.0.0.1:9642"]
    assert targets["blackbox_tls"] == ["127.0.0.1:8883"]
    assert job(config, "edgefleet_devices")["file_sd_configs"] == [{"files": ["file_sd/edgefleet_devices.yml"]}]
    assert "remote_write" not in config


def test_wildcard_listeners_are_scraped_on_loopback(tmp_path):
    config = prometheus_config(tmp_path, prometheus_web_listen_address="0.0.0.0:9090",
                               prometheus_alertmanager_listen_address="[::]:9093",
                               prometheus_blackbox_listen_address=":9115", mosquitto_tls_port=18883)
    assert job(config, "prometheus")["static_configs"][0]["targets"] == ["127.0.0.1:9090"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    assert job(config, "blackbox_tls")["relabel_configs"][-1]["replacement"] == "127.0.0.1:9115"
    assert job(config, "blackbox_tls")["static_configs"][0]["targets"] == ["127.0.0.1:18883"]


def relabel(configs, labels):
    """Prometheus's replace and labeldrop actions (anchored RE2 regexes; these
    regexes mean the same in Python's re)."""
    labels = dict(labels)
    for rc in configs:
        action = rc.get("action", "replace")
        regex = re.compile(rc.get("regex", "(.*)"))
        if action == "labeldrop":
            labels = {k: v for k, v in labels.items() if not regex.fullmatch(k)}
            continue
        assert action == "replace", rc
        source = rc.get("separator", ";").join(labels.get(s, "") for s in rc.get("source_labels", []))
        m = regex.fullmatch(source)
        if m:
            labels[rc["target_label"]] = re.sub(r"\$(\d+)", lambda g: m.group(int(g.group(1))) or "",
                                                rc.get("replacement", "$1"))
    return labels


@pytest.mark.parametrize("topic,expected", [
    ("site/lab/psu/psu-ktcyat68/state", {"site": "lab", "kind": "psu", "device_id": "psu-ktcyat68", "channel": "state"}),
    ("site/lab/env/env-yy1ka51y/status",
     {"site": "lab", "kind": "env", "device_id": "env-yy1ka51y", "channel": "status"}),
    ("site/lab/oven/oven-tvcft64q/ota", {"site": "lab", "kind": "oven", "device_id": "oven-tvcft64q", "channel": "ota"}),
    ("site/lab/oven/oven-tvcft64q/cfg/ack",
     {"site": "lab", "kind": "oven", "device_id": "oven-tvcft64q", "channel": "cfg/ack"}),
])
def test_telemetry_topic_becomes_device_labels(tmp_path, topic, expected):
    rules = job(prometheus_config(tmp_path), "edgefleet_telemetry")["metric_relabel_configs"]
    got = relabel(rules, {"__name__": "edgefleet_telemetry_seq", "topic": topic, "sensor": "seq",
                          "job": "edgefleet_telemetry", "instance": "127.0.0.1:9641"})
    assert got == {"__name__": "edgefleet_telemetry_seq", "job": "edgefleet_telemetry",
                   "instance": "127.0.0.1:9641", **expected}


def test_series_of_different_channels_stay_apart(tmp_path):
    """The exporter applies every mapping to every message: the same metric
    name can come from a device's state, status and ota topics at once (and
    its own received_messages counts every topic). What the exporter tells
    apart by topic must stay apart once topic is dropped."""
    rules = job(prometheus_config(tmp_path), "edgefleet_telemetry")["metric_relabel_configs"]
    exposed = []
    for device in DEVICES:
        kind = device.split("-")[0]
        for channel in ("state", "status", "ota"):
            topic = f"site/lab/{kind}/{device}/{channel}"
            for name in ("edgefleet_ota_failed", "edgefleet_device_online", "edgefleet_telemetry_seq"):
                exposed.append({"__name__": name, "topic": topic, "sensor": device})
            exposed.append({"__name__": "received_messages", "topic": topic, "status": "success"})
    kept = [relabel(rules, dict(labels, job="edgefleet_telemetry", instance="127.0.0.1:9641")) for labels in exposed]
    assert all("topic" not in k and "sensor" not in k for k in kept)
    label_sets = [tuple(sorted(k.items())) for k in kept]
    collapsed = len(label_sets) - len(set(label_sets))
    assert not collapsed, f"{collapsed} series collapse into others once topic is dropped"
    ota = [k for k in kept if k["__name__"] == "edgefleet_ota_failed" and k["device_id"] == "psu-ktcyat68"]
    assert sorted(k["channel"] for k in ota) == ["ota", "state", "status"]


def test_broker_job_has_no_device_labels(tmp_path):
    config = prometheus_config(tmp_path)
    rules = job(config, "mosquitto")["metric_relabel_configs"]
    got = relabel(rules, {"__name__": "mosquitto_clients_connected", "topic": "$SYS/broker/clients/connected",
                          "sensor": "clients_connected", "job": "mosquitto", "instance": "127.0.0.1:9642"})
    assert got == {"__name__": "mosquitto_clients_connected", "job": "mosquitto", "instance": "127.0.0.1:9642"}
    assert not {"site", "kind", "device_id"} & {r.get("target_label") for r in rules}


def test_blackbox_tls_probe(tmp_path):
    config = prometheus_config(tmp_path)
    bb = job(config, "blackbox_tls")
    assert bb["metrics_path"] == "/probe"
    assert bb["params"] == {"module": ["edgefleet_broker_tls"]}
    got = relabel(bb["relabel_configs"], {"__address__": "127.0.0.1:8883", "job": "blackbox_tls"})
    assert got == {"__address__": "127.0.0.1:9115", "__param_target": "127.0.0.1:8883",
                   "instance": "127.0.0.1:8883", "job": "blackbox_tls"}
    blackbox = yaml.safe_load(live(tmp_path, "/etc/prometheus/blackbox.yml").read_text())
    module = blackbox["modules"]["edgefleet_broker_tls"]
    assert module["prober"] == "tcp" and module["tcp"]["tls"] is True
    tls = module["tcp"]["tls_config"]
    assert tls["ca_file"] == "/etc/prometheus/edgefleet-ca.crt"
    assert tls["insecure_skip_verify"] is False
    # the name must be one the site_ca role puts in the broker's certificate
    site_ca_names = yaml.safe_load((ROOT / "roles/site_ca/defaults/main.yml").read_text())["site_ca_server_names"]
    assert tls["server_name"] in site_ca_names
    files = {f["live"]: f for f in value(inventory(), "_prometheus_files")}
    assert files["/etc/prometheus/edgefleet-ca.crt"]["copy_src"] == "/nonexistent/controller/ca.crt"


def test_tls_probe_off(tmp_path):
    ctx, files = stage(tmp_path, inventory(prometheus_broker_tls_probe=False))
    config = yaml.safe_load(live(tmp_path, "/etc/prometheus/prometheus.yml").read_text())
    assert "blackbox_tls" not in [j["job_name"] for j in config["scrape_configs"]]
    assert "/etc/prometheus/edgefleet-ca.crt" not in [f["live"] for f in files]
    assert "edgefleet_broker_tls" not in yaml.safe_load(live(tmp_path, "/etc/prometheus/blackbox.yml").read_text())["modules"]
    for _, argv in checks(ctx):
        assert run(argv).returncode == 0, argv
    # mosquitto's switch is the default
    assert value(role_vars(ROLE, {"mosquitto_tls_enabled": False}), "prometheus_broker_tls_probe") is False


def test_remote_write(tmp_path):
    config = prometheus_config(tmp_path, prometheus_remote_write=[{"url": "http://127.0.0.1:8086/api/v1/prom/write?db=x"}])
    assert config["remote_write"] == [{"url": "http://127.0.0.1:8086/api/v1/prom/write?db=x"}]


# --- device discovery --------------------------------------------------------

def test_file_sd_from_inventory(tmp_path):
    stage(tmp_path, inventory())
    groups = yaml.safe_load(live(tmp_path, "/etc/prometheus/file_sd/edgefleet_devices.yml").read_text())
    assert groups == [
        {"targets": ["env-yy1ka51y.local:80"], "labels": {"site": "lab", "kind": "env", "device_id": "env-yy1ka51y"}},
        {"targets": ["oven-tvcft64q.local:80"],
         "labels": {"site": "lab", "kind": "oven", "device_id": "oven-tvcft64q"}},
        {"targets": ["127.0.0.1:9651"], "labels": {"site": "lab", "kind": "psu", "device_id": "psu-ktcyat68"}},
    ]


def test_a_device_without_metrics_address_is_not_scraped(tmp_path):
    """device_metrics_address "" (the sim_fleet plugin's generated devices) means no /metrics to scrape."""
    ctx = inventory()
    ctx["hostvars"] = dict(ctx["hostvars"], **{"env-yy1ka51y": {"device_metrics_address": ""}})
    stage(tmp_path, ctx)
    groups = yaml.safe_load(live(tmp_path, "/etc/prometheus/file_sd/edgefleet_devices.yml").read_text())
    assert [g["labels"]["device_id"] for g in groups] == ["oven-tvcft64q", "psu-ktcyat68"]


def test_file_sd_of_an_empty_fleet_is_valid(tmp_path):
    ctx, _ = stage(tmp_path, inventory(groups={}))
    assert yaml.safe_load(live(tmp_path, "/etc/prometheus/file_sd/edgefleet_devices.yml").read_text()) == []
    for _, argv in checks(ctx):
        assert run(argv).returncode == 0, argv


def test_file_sd_goes_live_without_reload():
    """The discovery file is staged and checked, but is not one of the files
    whose change restarts or reloads Prometheus."""
    files = value(inventory(), "_prometheus_files")
    assert "/etc/prometheus/file_sd/edgefleet_devices.yml" not in [f["live"] for f in files]
    tasks = yaml.safe_load((ROOT / "roles/prometheus/tasks/main.yml").read_text())
    install = next(t for t in tasks if t["name"].startswith("Install the device discovery file"))
    assert "notify" not in install
    assert install["ansible.builtin.copy"]["remote_src"] is True


# --- listeners and command lines ---------------------------------------------

def systemd_args(text):
    """ARGS as Debian's unit passes it: EnvironmentFile unquotes, $ARGS splits at white space."""
    (line,) = [x for x in text.splitlines() if x.startswith("ARGS=")]
    return shlex.split(line[len("ARGS="):])[0].split()


def args_of(tmp_path, service):
    return systemd_args(live(tmp_path, f"/etc/default/{service}").read_text())


def test_listeners_default_to_loopback(tmp_path):
    defaults = yaml.safe_load((ROOT / "roles/prometheus/defaults/main.yml").read_text())
    listeners = {k: v for k, v in defaults.items() if k.endswith("listen_address")}
    assert listeners == {"prometheus_web_listen_address": "127.0.0.1:9090",
                         "prometheus_node_exporter_listen_address": "127.0.0.1:9100",
                         "prometheus_alertmanager_listen_address": "127.0.0.1:9093",
                         "prometheus_blackbox_listen_address": "127.0.0.1:9115"}
    stage(tmp_path, inventory())
    assert "--web.listen-address=127.0.0.1:9090" in args_of(tmp_path, "prometheus")
    assert "--web.listen-address=127.0.0.1:9100" in args_of(tmp_path, "prometheus-node-exporter")
    assert "--web.listen-address=127.0.0.1:9115" in args_of(tmp_path, "prometheus-blackbox-exporter")
    am = args_of(tmp_path, "prometheus-alertmanager")
    assert "--web.listen-address=127.0.0.1:9093" in am
    assert "--cluster.listen-address=" in am  # empty: no gossip listener
    assert "--config.file=/etc/prometheus/blackbox.yml" in args_of(tmp_path, "prometheus-blackbox-exporter")


def test_command_lines_are_accepted_by_the_binaries(tmp_path):
    """Every flag the role writes exists in the installed versions."""
    stage(tmp_path, inventory())
    binaries = {"prometheus": "prometheus", "prometheus-alertmanager": "prometheus-alertmanager",
                "prometheus-blackbox-exporter": "prometheus-blackbox-exporter"}
    for service, binary in binaries.items():
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is not installed")
        result = run([binary, "--help"])
        help_text = result.stdout + result.stderr
        for arg in args_of(tmp_path, service):
            assert "--" + arg[2:].split("=")[0] in help_text, f"{service}: {arg} unknown to {binary}"


def test_retention(tmp_path):
    stage(tmp_path, inventory())
    args = args_of(tmp_path, "prometheus")
    assert "--storage.tsdb.retention.time=15d" in args
    assert "--storage.tsdb.retention.size=2GB" in args
    stage(tmp_path, inventory(prometheus_retention_time="30d", prometheus_retention_size="512MB"))
    args = args_of(tmp_path, "prometheus")
    assert "--storage.tsdb.retention.time=30d" in args and "--storage.tsdb.retention.size=512MB" in args


def warning_task():
    tasks = yaml.safe_load((ROOT / "roles/prometheus/tasks/main.yml").read_text())
    return next(t for t in tasks if t["name"] == "Warn about listeners beyond loopback")


@pytest.mark.parametrize("address,warns", [
    ("127.0.0.1:9090", False), ("127.0.0.53:9090", False), ("localhost:9090", False), ("[::1]:9090", False),
    ("0.0.0.0:9090", True), (":9090", True), ("[::]:9090", True), ("10.20.0.5:9090", True),
])
def test_non_loopback_listener_warns(address, warns):
    task = warning_task()
    assert task["ansible.builtin.debug"]["msg"].lstrip().startswith("WARNING:")
    ctx = inventory(item={"name": "Prometheus", "var": "prometheus_web_listen_address", "address": address})
    assert _templar(ctx).template(trust_as_template("{{ " + task["when"].strip() + " }}")) is warns


def test_no_default_listener_warns():
    task = warning_task()
    ctx = inventory()
    for listener in value(ctx, "_prometheus_listeners"):
        assert _templar(dict(ctx, item=listener)).template(
            trust_as_template("{{ " + task["when"].strip() + " }}")) is False, listener


# --- Alertmanager ------------------------------------------------------------

def test_default_alertmanager_delivers_nowhere_and_says_so(tmp_path):
    ctx, _ = stage(tmp_path, inventory())
    text = live(tmp_path, "/etc/prometheus/alertmanager.yml").read_text()
    assert "delivered NOWHERE" in text
    config = yaml.safe_load(text)
    assert config["route"]["receiver"] == "default"
    assert config["receivers"] == [{"name": "default"}]
    assert value(ctx, "_prometheus_alertmanager_delivers") is False


def test_alertmanager_email_and_webhook(tmp_path):
    ctx, files = stage(tmp_path, inventory(
        prometheus_alertmanager_global={"smtp_smarthost": "mail.example.com:587", "smtp_from": "ef@example.com",
                                        "smtp_auth_username": "ef", "smtp_auth_password": "s3cret"},
        prometheus_alertmanager_route={"receiver": "oncall", "group_by": ["alertname", "site"],
                                       "routes": [{"receiver": "hook", "matchers": ['severity="critical"']}]},
        prometheus_alertmanager_receivers=[
            {"name": "oncall", "email_configs": [{"to": "oncall@example.com", "send_resolved": True}]},
            {"name": "hook", "webhook_configs": [{"url": "http://127.0.0.1:9999/alerts"}]}]))
    path = live(tmp_path, "/etc/prometheus/alertmanager.yml")
    result = run(["amtool", "check-config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 receivers" in result.stdout and "4 inhibit rules" in result.stdout
    config = yaml.safe_load(path.read_text())
    assert config["global"]["resolve_timeout"] == "5m" and config["global"]["smtp_auth_password"] == "s3cret"
    assert "NOWHERE" not in path.read_text()
    assert value(ctx, "_prometheus_alertmanager_delivers") is True
    # it may hold credentials: private, not world-readable
    (am,) = [f for f in files if f["live"] == "/etc/prometheus/alertmanager.yml"]
    assert am["private"] is True and am["mode"] == "0640" and am["group"] == "prometheus"


def test_inhibit_rules_name_real_alerts(tmp_path):
    stage(tmp_path, inventory())
    config = yaml.safe_load(live(tmp_path, "/etc/prometheus/alertmanager.yml").read_text())
    names = set(alerts(tmp_path))
    mentioned = set()
    for rule in config["inhibit_rules"]:
        for m in rule["source_matchers"] + rule["target_matchers"]:
            if m.startswith("alertname"):
                mentioned |= set(m.split('"')[1].split("|"))
    assert mentioned and mentioned <= names


# --- alert rules -------------------------------------------------------------

def rules_file(tmp_path, **overrides):
    stage(tmp_path, inventory(**overrides))
    return live(tmp_path, "/etc/prometheus/rules/edgefleet-alerts.yml")


def alerts(tmp_path, **overrides):
    rules = yaml.safe_load(rules_file(tmp_path, **overrides).read_text())
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def records(tmp_path, **overrides):
    rules = yaml.safe_load(rules_file(tmp_path, **overrides).read_text())
    return {r["record"]: r for g in rules["groups"] for r in g["rules"] if "record" in r}


RECEIVED = 'received_messages{job="edgefleet_telemetry", channel="state", status="success"}'


def last_seen_expr(window):
    return (
        f"( max by (site, kind, device_id) ( changes({RECEIVED}[{window}]) > 0 or "
        f"( ({RECEIVED} unless {RECEIVED} offset {window}) "
        f'and on(job, instance) (up{{job="edgefleet_telemetry"}} offset {window} == 1) ) ) * 0 + time() ) '
        "or edgefleet:telemetry_last_seen_timestamp_seconds "
        f"or (max by (site, kind, device_id) ({RECEIVED}) * 0 + time())")


def test_last_seen_is_recorded_from_the_message_count_not_the_device_clock(tmp_path):
    """When the controller last received telemetry: the exporter's message
    count on the state topic, one series per device, carried forward, and
    recorded before the alert that reads it (same group, earlier)."""
    rules = yaml.safe_load(rules_file(tmp_path).read_text())
    (group,) = [g for g in rules["groups"] if any(r.get("alert") == "EdgefleetTelemetryStale" for r in g["rules"])]
    names = [r.get("record") or r.get("alert") for r in group["rules"]]
    assert names.index("edgefleet:telemetry_last_seen_timestamp_seconds") < names.index("EdgefleetTelemetryStale")
    expr = " ".join(records(tmp_path)["edgefleet:telemetry_last_seen_timestamp_seconds"]["expr"].split())
    assert expr == last_seen_expr("45s")
    assert "timestamp_seconds" not in expr.replace("edgefleet:telemetry_last_seen_timestamp_seconds", "")
    stale = alerts(tmp_path)["EdgefleetTelemetryStale"]["expr"]
    assert "edgefleet_telemetry_timestamp_seconds" not in stale


@pytest.mark.parametrize("scrape,evaluation,window", [
    ("15s", "15s", "45s"), ("30s", "1m", "120s"), ("1m30s", "500ms", "180500ms")])
def test_last_seen_window_spans_two_scrapes_and_an_evaluation(tmp_path, scrape, evaluation, window):
    """Both samples of a change (before, after) must fall in the window of
    some evaluation: 2 scrape intervals + 1 evaluation interval."""
    expr = " ".join(records(tmp_path, prometheus_scrape_interval=scrape, prometheus_evaluation_interval=evaluation)[
        "edgefleet:telemetry_last_seen_timestamp_seconds"]["expr"].split())
    assert expr == last_seen_expr(window)
    result = run(["promtool", "check", "rules", str(rules_file(tmp_path, prometheus_scrape_interval=scrape,
                                                                prometheus_evaluation_interval=evaluation))])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_have_severity_and_name_device_or_site(tmp_path):
    found = alerts(tmp_path)
    assert set(found) == {"EdgefleetDeviceOffline", "EdgefleetTelemetryStale", "EdgefleetTemperatureOverSetpoint",
                          "EdgefleetRolloutFailed", "EdgefleetBrokerDown", "EdgefleetExporterDown",
                          "EdgefleetBrokerDroppingMessages", "EdgefleetCertificateExpiring",
                          "EdgefleetDeviceTlsMemoryLow", "EdgefleetControllerClockUnsynchronised",
                          "EdgefleetDeviceClockUnset"} | HISTORY_ALERTS
    for name, rule in found.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        if name in DEVICE_ALERTS:
            assert "$labels.device_id" in summary and "$labels.site" in summary, name
            assert "site" not in rule["labels"], f"{name} must keep the device's own site label"
        else:
            assert rule["labels"]["site"] == "lab" and "site lab" in summary, name
        assert description.strip(), name


def test_alert_expressions(tmp_path):
    found = alerts(tmp_path)
    assert found["EdgefleetDeviceOffline"]["expr"] == "edgefleet_device_online == 0"
    assert " ".join(found["EdgefleetRolloutFailed"]["expr"].split()) == (
        "(edgefleet_ota_failed == 1) and on(site, kind, device_id) "
        "( min_over_time(edgefleet_ota_failed[1h]) == 0 "
        "or (edgefleet_ota_failed unless edgefleet_ota_failed offset 1h) )")
    assert found["EdgefleetBrokerDroppingMessages"]["expr"] == "increase(mosquitto_publish_dropped_total[5m]) > 0"
    assert " ".join(found["EdgefleetTelemetryStale"]["expr"].split()) == (
        "(edgefleet_device_online == 1) unless on(site, kind, device_id) "
        "( time() - edgefleet:telemetry_last_seen_timestamp_seconds < on(site, kind, device_id) "
        "( 3 * (edgefleet_device_publish_interval_seconds or on(site, kind, device_id) "
        "(edgefleet_device_online * 0 + 5)) + 45 ) )")
    assert found["EdgefleetCertificateExpiring"]["expr"] == "probe_ssl_earliest_cert_expiry - time() < 21 * 86400"
    assert found["EdgefleetDeviceOffline"]["for"] == "2m"


def test_every_alert_waits_before_it_fires(tmp_path):
    """No alert fires on the first evaluation that matches: each has a
    `for` longer than zero (the promtool tests hold that they do not fire
    before it, and that each clears when its cause stops)."""
    seconds = {"s": 1, "m": 60, "h": 3600}
    for name, rule in alerts(tmp_path).items():
        assert "for" in rule, f"{name} has no for"
        m = re.fullmatch(r"([0-9]+)([smh])", str(rule["for"]))
        assert m and int(m.group(1)) * seconds[m.group(2)] > 0, f"{name}: for {rule['for']!r}"


def test_thresholds_are_variables(tmp_path):
    found = alerts(tmp_path, prometheus_alert_temperature_margin_celsius=7.5, prometheus_alert_cert_expiry_days=30,
                   prometheus_alert_telemetry_stale_intervals=4, prometheus_telemetry_publish_interval_seconds=10,
                   prometheus_alert_telemetry_stale_grace_seconds=20, prometheus_alert_device_offline_for="0s",
                   prometheus_alert_broker_down_for="3m", prometheus_alert_rollout_failed_window="6h",
                   prometheus_alert_rollout_failed_for="2m", prometheus_alert_broker_dropping_for="10m")
    assert "(edgefleet_telemetry_setpoint_celsius + 7.5)" in found["EdgefleetTemperatureOverSetpoint"]["expr"]
    assert "< 30 * 86400" in found["EdgefleetCertificateExpiring"]["expr"]
    stale = " ".join(found["EdgefleetTelemetryStale"]["expr"].split())
    assert "( 4 * (edgefleet_device_publish_interval_seconds" in stale and "* 0 + 10)) + 20 )" in stale
    assert "[6h]" in found["EdgefleetRolloutFailed"]["expr"] and "offset 6h" in found["EdgefleetRolloutFailed"]["expr"]
    assert found["EdgefleetRolloutFailed"]["for"] == "2m"
    assert found["EdgefleetBrokerDroppingMessages"]["for"] == "10m"
    assert found["EdgefleetDeviceOffline"]["for"] == "0s"
    assert found["EdgefleetBrokerDown"]["for"] == "3m"
    result = run(["promtool", "check", "rules", str(rules_file(tmp_path))])
    assert result.returncode == 0, result.stdout + result.stderr


def test_time_alert_thresholds_are_variables(tmp_path):
    found = alerts(tmp_path, prometheus_alert_controller_clock_for="30m", prometheus_alert_device_clock_unset_for="1h",
                   prometheus_alert_chrony_metrics_stale_seconds=900)
    assert found["EdgefleetControllerClockUnsynchronised"]["for"] == "30m"
    assert "edgefleet_chrony_metrics_timestamp_seconds > 900" in " ".join(
        found["EdgefleetControllerClockUnsynchronised"]["expr"].split())
    assert found["EdgefleetDeviceClockUnset"]["for"] == "1h"
    assert "for 1h" in found["EdgefleetDeviceClockUnset"]["annotations"]["description"]
    result = run(["promtool", "check", "rules", str(rules_file(tmp_path))])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_use_only_documented_metrics(tmp_path):
    """docs/metrics.md is the metric-name contract."""
    documented = (ROOT / "docs/metrics.md").read_text()
    names = set()
    for rule in list(alerts(tmp_path).values()) + list(records(tmp_path).values()):
        names |= set(re.findall(r"\b((?:edgefleet|mosquitto|mqtt2prometheus|probe|internal)_[a-z0-9_]+"
                                r"|edgefleet:[a-z0-9_]+|received_messages)", rule["expr"]))
    assert {"received_messages", "edgefleet:telemetry_last_seen_timestamp_seconds"} <= names
    missing = sorted(n for n in names if f"`{n}`" not in documented)
    assert not missing, f"metrics not in docs/metrics.md: {missing}"


def promtool_test_files():
    files = sorted(RULE_TESTS.glob("*.test.yml"))
    assert files, f"no promtool test files in {RULE_TESTS}"
    return files


def test_promtool_rule_unit_tests(tmp_path):
    rendered = rules_file(tmp_path)
    work = tmp_path / "unit"
    work.mkdir()
    shutil.copy(rendered, work / rendered.name)
    for f in promtool_test_files():
        shutil.copy(f, work / f.name)
    result = run(["promtool", "test", "rules", *sorted(str(p) for p in work.glob("*.test.yml"))])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test(tmp_path):
    firing, quiet = set(), set()
    for f in promtool_test_files():
        doc = yaml.safe_load(f.read_text())
        assert doc["rule_files"] == ["edgefleet-alerts.yml"]
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = set(alerts(tmp_path))
    assert not names - firing, f"alerts with no firing unit test: {sorted(names - firing)}"
    assert not names - quiet, f"alerts with no not-firing unit test: {sorted(names - quiet)}"
    assert not (firing | quiet) - names, f"unit tests of unknown alerts: {sorted((firing | quiet) - names)}"


# --- the history path (issue 21): Telegraf's health and InfluxDB's probe -----

def test_history_jobs_follow_what_the_site_has(tmp_path):
    """Telegraf scraped and InfluxDB probed only when they are part of the
    site (their roles' variables), Telegraf not where its package could not
    be had (the role's fact telegraf_available false); the staged tree
    passes the role's checks either way."""
    full = prometheus_config(tmp_path / "full")
    assert job(full, "telegraf")["static_configs"] == [{"targets": ["127.0.0.1:9273"]}]
    bare_ctx = inventory()
    for name in ("influxdb_major", "influxdb_url", "telegraf_prometheus_port"):
        bare_ctx.pop(name)
    for ctx, jobs, group in [
        (bare_ctx, [], False),
        (inventory(telegraf_available=False), ["blackbox_influxdb"], True),
        (inventory(telegraf_prometheus_port=19273, telegraf_prometheus_listen_address="::1"),
         ["blackbox_influxdb", "telegraf"], True),
    ]:
        where = tmp_path / str(len(jobs)) / str(id(ctx))
        staged, _ = stage(where, ctx)
        config = yaml.safe_load(live(where, "/etc/prometheus/prometheus.yml").read_text())
        assert [j["job_name"] for j in config["scrape_configs"]] == JOBS[:7] + jobs
        rules = yaml.safe_load(live(where, "/etc/prometheus/rules/edgefleet-alerts.yml").read_text())
        assert ("edgefleet-history" in [g["name"] for g in rules["groups"]]) is group
        for _, argv in checks(staged):
            assert run(argv).returncode == 0, argv
    config = yaml.safe_load(live(where, "/etc/prometheus/prometheus.yml").read_text())
    assert job(config, "telegraf")["static_configs"] == [{"targets": ["[::1]:19273"]}]


def test_history_group_has_the_history_alerts(tmp_path):
    rules = yaml.safe_load(rules_file(tmp_path).read_text())
    [group] = [g for g in rules["groups"] if g["name"] == "edgefleet-history"]
    assert {r["alert"] for r in group["rules"]} == HISTORY_ALERTS
    for r in group["rules"]:
        assert r["for"], r["alert"]


def test_influxdb_probe_config(tmp_path):
    config = prometheus_config(tmp_path, influxdb_url="http://127.0.0.1:18086")
    bb = job(config, "blackbox_influxdb")
    assert bb["metrics_path"] == "/probe" and bb["params"] == {"module": ["edgefleet_influxdb_ping"]}
    assert bb["static_configs"] == [{"targets": ["http://127.0.0.1:18086/ping"]}]
    got = relabel(bb["relabel_configs"], {"__address__": "http://127.0.0.1:18086/ping", "job": "blackbox_influxdb"})
    assert got == {"__address__": "127.0.0.1:9115", "__param_target": "http://127.0.0.1:18086/ping",
                   "instance": "http://127.0.0.1:18086/ping", "job": "blackbox_influxdb"}
    module = yaml.safe_load(live(tmp_path, "/etc/prometheus/blackbox.yml").read_text())["modules"]["edgefleet_influxdb_ping"]
    assert module["prober"] == "http" and module["http"]["valid_status_codes"] == [204]
    # without the influxdb role's URL fact: loopback at its port
    assert value(role_vars(ROLE, {"influxdb_http_port": 18087}), "prometheus_influxdb_ping_url") == \
        "http://127.0.0.1:18087/ping"


def test_buffer_threshold_follows_telegrafs_read_ahead(tmp_path):
    assert float(value(inventory(), "prometheus_alert_telegraf_buffer_ratio")) == 0.05
    found = alerts(tmp_path, telegraf_max_undelivered_messages=4000, telegraf_metric_buffer_limit=10000)
    assert found["EdgefleetTelegrafBufferFilling"]["expr"].rstrip().endswith("> 0.2")


@pytest.fixture(scope="module")
def real_influxd(tmp_path_factory):
    from influxd import Influx, find_influxd
    binary, why = find_influxd(tmp_path_factory.mktemp("influxdb-deb"))
    if not binary:
        pytest.skip(why)
    server = Influx(binary, tmp_path_factory.mktemp("influxd"))
    yield server
    server.stop()


def test_the_probe_against_a_real_influxdb(tmp_path, real_influxd):
    """Debian's blackbox exporter with the rendered blackbox.yml probes a real
    InfluxDB 1.x's /ping through the rendered job's parameters: success
    while it serves, failure once it is stopped."""
    import urllib.parse
    import urllib.request

    from influxd import free_port

    ctx, _ = stage(tmp_path, inventory(influxdb_url=real_influxd.url))
    config = yaml.safe_load(live(tmp_path, "/etc/prometheus/prometheus.yml").read_text())
    bb = job(config, "blackbox_influxdb")
    (target,) = bb["static_configs"][0]["targets"]
    port = free_port()
    exporter = subprocess.Popen(["prometheus-blackbox-exporter",
                                 f"--config.file={live(tmp_path, '/etc/prometheus/blackbox.yml')}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def probe():
        query = urllib.parse.urlencode({"module": bb["params"]["module"][0], "target": target})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{bb['metrics_path']}?{query}", timeout=15) as r:
            text = r.read().decode()
        (line,) = [x for x in text.splitlines() if x.startswith("probe_success ")]
        status = [x for x in text.splitlines() if x.startswith("probe_http_status_code ")]
        return float(line.split()[1]), status

    try:
        import time
        deadline = time.monotonic() + 30
        while True:
            try:
                ok, status = probe()
                break
            except OSError:
                assert exporter.poll() is None and time.monotonic() < deadline, "blackbox exporter did not start"
                time.sleep(0.2)
        assert ok == 1.0 and status == ["probe_http_status_code 204"], status
        real_influxd.stop()
        ok, _ = probe()
        assert ok == 0.0
    finally:
        exporter.terminate()
        exporter.wait(timeout=20)

"""roles/grafana: its real templates rendered with Ansible's templar
(tools/pylib/rolerender.py) and checked with real parsers and tools: Python's
configparser for grafana.ini, PyYAML for the provisioning files, apt-cache
for the apt source and preference, json for the dashboards, promtool for
every PromQL expression of the dashboards, and the role's own provisioning
checker on a staged tree. Also tools/pylib/promqueries.py, which the lead
uses to run the dashboards' queries against a live Prometheus.

Needs on the host: promtool (Debian package prometheus) and apt-cache."""

import configparser
import json
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

import promqueries
from rolerender import render, role_vars, value

# Lookups (password, file) in the role's templates need Ansible's plugin
# loader, which ansible-playbook would have set up: tests/conftest.py sets it
# up for every test.
ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "grafana"
CHECKER = ROLE / "files" / "grafana-check-provisioning"
UIDS = {"edgefleet-fleet", "edgefleet-device", "edgefleet-broker", "edgefleet-ota"}
DATASOURCE_UIDS = {"edgefleet-prometheus", "edgefleet-influxdb"}
# Values a live lab site has, to expand the template variables with.
LIVE_VALUES = {"site": ["lab"], "kind": ["psu", "env", "oven", "fan"], "device_id": "psu-ktcyat68"}
# docs/metrics.md "plus standard ones".
STANDARD_METRICS = re.compile(r"^(up|probe_\w+|node_\w+|mqtt2prometheus_\w+)$")
# fw: edgefleet_device_info's firmware version (docs/metrics.md)
LABELS = {"site", "kind", "device_id", "phase", "zone", "job", "instance", "mode", "fw"}


def grafana_vars(tmp_path, **overrides):
    secrets = tmp_path / "secrets"
    (secrets / "influxdb").mkdir(parents=True, exist_ok=True)
    # where the influxdb role writes them: the 1.x password and the 2.x token
    for name, secret in (("grafana", "pa55-read\n"), ("grafana.token", "s3cr$t-read\n")):
        if not (secrets / "influxdb" / name).exists():
            (secrets / "influxdb" / name).write_text(secret)
    base = {"edgefleet_site": "lab", "edgefleet_secrets_dir": str(secrets),
            "edgefleet_base_dpkg_architecture": "amd64"}
    base.update(overrides)
    return role_vars("grafana", base)


def rendered_yaml(template, variables):
    return yaml.safe_load(render("grafana", template, variables))


def dashboards():
    return {p.name: json.loads(p.read_text()) for p in sorted((ROLE / "files" / "dashboards").glob("*.json"))}


def documented_metrics():
    text = (ROOT / "docs" / "metrics.md").read_text()
    return set(re.findall(r"`((?:edgefleet|mosquitto|mqtt2prometheus|probe)_[a-z0-9_]+|edgefleet:[a-z0-9_]+)`", text))


# --- grafana.ini ----------------------------------------------------------------

def parse_ini(text):
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.read_string(text)
    return parser


def test_grafana_ini_owns_listener_admin_and_calls_home_off(tmp_path):
    ini = parse_ini(render("grafana", "grafana.ini.j2", grafana_vars(tmp_path)))
    assert ini["server"]["http_addr"] == "127.0.0.1"
    assert ini["server"]["http_port"] == "3000"
    assert ini["paths"]["provisioning"] == "/etc/grafana/provisioning"
    assert ini["auth.anonymous"]["enabled"] == "false"
    assert ini["users"]["allow_sign_up"] == "false"
    for key in ("reporting_enabled", "check_for_updates", "check_for_plugin_updates", "feedback_links_enabled"):
        assert ini["analytics"][key] == "false", key
    assert ini["news"]["news_feed_enabled"] == "false"
    assert ini["snapshots"]["external_enabled"] == "false"
    assert ini["plugins"]["preinstall_disabled"] == "true"
    assert ini["plugins"]["public_key_retrieval_disabled"] == "true"
    assert ini["security"]["disable_gravatar"] == "true"
    assert ini["security"]["admin_user"] == "admin"


def test_admin_password_and_secret_key_are_generated_once(tmp_path):
    first = parse_ini(render("grafana", "grafana.ini.j2", grafana_vars(tmp_path)))
    again = parse_ini(render("grafana", "grafana.ini.j2", grafana_vars(tmp_path)))
    password = first["security"]["admin_password"]
    secret = first["security"]["secret_key"]
    assert re.fullmatch(r'"""[A-Za-z0-9]{32}"""', password)
    assert re.fullmatch(r'"""[A-Za-z0-9]{40}"""', secret)
    assert password != secret
    assert again["security"]["admin_password"] == password and again["security"]["secret_key"] == secret
    stored = (tmp_path / "secrets" / "grafana" / "admin").read_text().split()[0]
    assert password == '"""%s"""' % stored


def test_inventory_admin_password_and_listener(tmp_path):
    ini = parse_ini(render("grafana", "grafana.ini.j2", grafana_vars(
        tmp_path, grafana_admin_password="from-vault#;x", grafana_http_addr="0.0.0.0", grafana_http_port=3300)))
    assert ini["security"]["admin_password"] == '"""from-vault#;x"""'
    assert ini["server"]["http_addr"] == "0.0.0.0" and ini["server"]["http_port"] == "3300"
    assert not (tmp_path / "secrets" / "grafana" / "admin").exists()


def test_loopback_api_url_for_the_role_checks(tmp_path):
    assert value(grafana_vars(tmp_path, grafana_http_addr="0.0.0.0"), "_grafana_api_url") == "http://127.0.0.1:3000"
    assert value(grafana_vars(tmp_path, grafana_http_addr="::1"), "_grafana_api_url") == "http://[::1]:3000"


# --- data sources ---------------------------------------------------------------

def test_datasources_influxdb2_flux(tmp_path):
    data = rendered_yaml("datasources.yaml.j2", grafana_vars(tmp_path))
    assert data["apiVersion"] == 1 and data["prune"] is True
    by_uid = {d["uid"]: d for d in data["datasources"]}
    assert set(by_uid) == DATASOURCE_UIDS
    prom = by_uid["edgefleet-prometheus"]
    assert prom["type"] == "prometheus" and prom["access"] == "proxy" and prom["isDefault"] is True
    assert prom["url"] == "http://127.0.0.1:9090"
    assert prom["jsonData"] == {"httpMethod": "POST", "timeInterval": "15s", "prometheusType": "Prometheus"}
    influx = by_uid["edgefleet-influxdb"]
    assert influx["type"] == "influxdb" and influx["url"] == "http://127.0.0.1:8086"
    assert influx["jsonData"] == {"version": "Flux", "organization": "edgefleet", "defaultBucket": "edgefleet"}
    # Grafana expands $VAR in provisioning files: a literal $ is written $$
    assert influx["secureJsonData"] == {"token": "s3cr$$t-read"}
    assert "user" not in influx


def test_datasources_influxdb1_influxql(tmp_path):
    data = rendered_yaml("datasources.yaml.j2", grafana_vars(
        tmp_path, influxdb_major="1", influxdb_database="plant", influxdb_url="http://127.0.0.1:8087"))
    influx = {d["uid"]: d for d in data["datasources"]}["edgefleet-influxdb"]
    assert influx["user"] == "grafana"
    assert influx["url"] == "http://127.0.0.1:8087"
    assert influx["jsonData"] == {"dbName": "plant", "httpMode": "POST"}
    assert influx["secureJsonData"] == {"password": "pa55-read"}


def test_datasource_password_from_the_inventory(tmp_path):
    """influxdb_passwords[grafana] in the inventory wins over the file, as in the influxdb role."""
    variables = grafana_vars(tmp_path, influxdb_major="1", influxdb_passwords={"grafana": "fr0m-vault"})
    data = rendered_yaml("datasources.yaml.j2", variables)
    assert data["datasources"][1]["secureJsonData"] == {"password": "fr0m-vault"}
    assert value(variables, "_grafana_influxdb_password_from_inventory") is True


def test_datasource_secret_from_a_password_lookup_file(tmp_path):
    (tmp_path / "secrets" / "influxdb").mkdir(parents=True)
    (tmp_path / "secrets" / "influxdb" / "grafana").write_text("Abc123 salt=xyz\n")
    data = rendered_yaml("datasources.yaml.j2", grafana_vars(tmp_path, influxdb_major="1"))
    assert data["datasources"][1]["secureJsonData"] == {"password": "Abc123"}


def test_datasources_follow_the_prometheus_role_and_influxdb_can_be_left_out(tmp_path):
    data = rendered_yaml("datasources.yaml.j2", grafana_vars(
        tmp_path, grafana_influxdb_enabled=False, prometheus_web_listen_address="0.0.0.0:9091",
        prometheus_scrape_interval="30s"))
    assert [d["uid"] for d in data["datasources"]] == ["edgefleet-prometheus"]
    assert data["datasources"][0]["url"] == "http://127.0.0.1:9091"
    assert data["datasources"][0]["jsonData"]["timeInterval"] == "30s"


# --- dashboard provider ---------------------------------------------------------

def test_dashboard_provider(tmp_path):
    data = rendered_yaml("dashboards.yaml.j2", grafana_vars(tmp_path))
    assert data["apiVersion"] == 1
    [provider] = data["providers"]
    assert provider["type"] == "file" and provider["folder"] == "edgefleet" and provider["folderUid"] == "edgefleet"
    assert provider["allowUiUpdates"] is False
    assert provider["updateIntervalSeconds"] == 30
    assert provider["options"] == {"path": "/var/lib/grafana/dashboards/edgefleet", "foldersFromFilesStructure": False}


# --- apt source and pin, parsed by apt itself --------------------------------

@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="needs apt-cache")
def test_apt_source_and_preference_parse_with_apt(tmp_path):
    variables = grafana_vars(tmp_path, edgefleet_base_dpkg_architecture="armhf")
    sources = render("grafana", "grafana.sources.j2", variables)
    assert "Signed-By: /etc/apt/keyrings/grafana.asc" in sources.splitlines()
    assert "Architectures: armhf" in sources.splitlines()
    assert "URIs: https://apt.grafana.com" in sources.splitlines()
    (tmp_path / "parts").mkdir()
    (tmp_path / "prefs").mkdir()
    (tmp_path / "parts" / "grafana.sources").write_text(sources)
    (tmp_path / "prefs" / "grafana.pref").write_text(render("grafana", "grafana.pref.j2", variables))
    result = subprocess.run(
        ["apt-cache", "-o", "Dir::Etc::SourceList=/dev/null", "-o", "Dir::Etc::SourceParts=%s" % (tmp_path / "parts"),
         "-o", "Dir::Etc::Preferences=/dev/null", "-o", "Dir::Etc::PreferencesParts=%s" % (tmp_path / "prefs"),
         "policy", "grafana"], capture_output=True, text=True)
    assert result.returncode == 0 and "E:" not in result.stderr, result.stderr


# --- dashboards -----------------------------------------------------------------

def test_dashboards_have_the_fixed_uids():
    found = dashboards()
    assert {d["uid"] for d in found.values()} == UIDS
    for name, dash in found.items():
        assert name == dash["uid"] + ".json"
        assert dash.get("id") is None and dash["title"] and "edgefleet" in dash["tags"]
    assert set(value(role_vars("grafana"), "_grafana_dashboards")) == set(found)


def test_every_panel_names_a_provisioned_datasource(tmp_path):
    provisioned = {d["uid"] for d in rendered_yaml("datasources.yaml.j2", grafana_vars(tmp_path))["datasources"]}
    for name, dash in dashboards().items():
        panels = list(promqueries.iter_panels(dash))
        assert panels, name
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in provisioned, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in provisioned, (name, panel["title"])
                query = target["expr"] if target["datasource"]["type"] == "prometheus" else target["query"]
                assert query.strip(), (name, panel["title"])
        for var in promqueries.template_variables(dash):
            assert var["datasource"] in provisioned, (name, var["name"])


def history_panels(dash):
    return [p for p in promqueries.iter_panels(dash)
            if p["type"] != "row" and p["datasource"]["uid"] == "edgefleet-influxdb"]


def telegraf_columns():
    """Fields and tags of the measurement Telegraf writes (roles/telegraf, rendered)."""
    ctx = role_vars("telegraf", {"edgefleet_site": "lab", "edgefleet_secrets_dir": "/nonexistent"})
    fields = {f["rename"] for f in value(ctx, "_telegraf_fields")}
    tags = {t["rename"] for t in value(ctx, "_telegraf_tags")} | {"site", "kind"}  # + topic_parsing's
    return value(ctx, "telegraf_measurement"), fields, tags


def test_fleet_and_device_dashboards_show_the_history_from_influxdb(tmp_path):
    """Long-range panels on the InfluxDB data source, in InfluxQL (InfluxDB
    1.x), reading the measurement, fields and tags Telegraf writes."""
    measurement, fields, tags = telegraf_columns()
    assert measurement == "telemetry" and {"voltage_a", "temperature_zone_7", "seq"} <= fields
    influx = next(d for d in rendered_yaml("datasources.yaml.j2", grafana_vars(tmp_path, grafana_influxdb_major="1"))
                  ["datasources"] if d["uid"] == "edgefleet-influxdb")
    assert influx["type"] == "influxdb" and "dbName" in influx["jsonData"]  # InfluxQL, not Flux
    for name in ("edgefleet-fleet.json", "edgefleet-device.json"):
        panels = history_panels(dashboards()[name])
        assert len(panels) >= 3, name
        for panel in panels:
            days = re.fullmatch(r"([0-9]+)d", panel.get("timeFrom", ""))
            assert days and int(days.group(1)) >= 7, (name, panel["title"], "not a long range")
            for target in panel["targets"]:
                q = target["query"]
                assert target["datasource"] == {"type": "influxdb", "uid": "edgefleet-influxdb"}
                assert target["rawQuery"] is True and q.startswith("SELECT "), (name, panel["title"])
                assert re.search(r'\bFROM "%s" WHERE ' % measurement, q), (name, panel["title"], q)
                assert "$timeFilter" in q and "GROUP BY time($__interval)" in q, (name, panel["title"])
                used = set(re.findall(r'\b(?:mean|max|min|count|last)\("(\w+)"\)', q))
                assert used and used <= fields, (name, panel["title"], used - fields)
                filtered = set(re.findall(r'"(\w+)" =~ /', q)) | set(re.findall(r', "(\w+)"', q))
                assert filtered <= tags, (name, panel["title"], filtered - tags)
                dash_vars = {v["name"] for v in promqueries.template_variables(dashboards()[name])}
                assert set(re.findall(r"\$(\w+)\$/", q)) <= dash_vars, (name, panel["title"])
    device = " ".join(t["query"] for p in history_panels(dashboards()["edgefleet-device.json"]) for t in p["targets"])
    assert {f"temperature_zone_{i}" for i in range(8)} <= set(re.findall(r'"(\w+)"', device))
    assert '"device_id" =~ /^$device_id$/' in device


@pytest.mark.parametrize("overrides,kept", [
    ({"grafana_influxdb_major": "1"}, True),
    ({"grafana_influxdb_major": "2"}, False),  # Flux: no InfluxQL panels
    ({"grafana_influxdb_major": "1", "grafana_influxdb_enabled": False}, False),
])
def test_the_history_panels_are_staged_only_with_an_influxql_datasource(tmp_path, overrides, kept):
    import edgefleet

    assert value(grafana_vars(tmp_path, **overrides), "_grafana_influxql") is kept
    for name in ("edgefleet-fleet.json", "edgefleet-device.json"):
        text = (ROLE / "files" / "dashboards" / name).read_text()
        stripped = json.loads(edgefleet.dashboard_without_datasource(text, "edgefleet-influxdb"))
        assert not history_panels(stripped) and not [p for p in stripped["panels"] if p["type"] == "row"]
        assert len(stripped["panels"]) == len(json.loads(text)["panels"]) - len(history_panels(json.loads(text))) - 1
    tasks = yaml.safe_load((ROLE / "tasks" / "main.yml").read_text())
    stage = next(t for t in tasks if t["name"] == "Stage the edgefleet dashboards")
    assert "dashboard_without_datasource(_grafana_datasource_uids.influxdb)" in stage["ansible.builtin.copy"]["content"]
    assert "_grafana_influxql" in stage["ansible.builtin.copy"]["content"]


def test_template_variables():
    found = {name: {v["name"]: v for v in promqueries.template_variables(d)} for name, d in dashboards().items()}
    for name in ("edgefleet-fleet.json", "edgefleet-ota.json", "edgefleet-device.json"):
        assert {"site", "kind"} <= set(found[name]), name
        assert found[name]["site"]["label"] == "site" and found[name]["kind"]["label"] == "kind"
        assert found[name]["site"]["multi"] and found[name]["kind"]["include_all"]
    device = found["edgefleet-device.json"]["device_id"]
    assert device["label"] == "device_id" and device["selector"].startswith("edgefleet_device_online")
    assert not device["multi"] and not device["include_all"]
    # every variable a panel uses is defined (or is a Grafana built-in)
    for name, dash in dashboards().items():
        defined = set(found[name])
        for q in promqueries.dashboard_exprs(dash):
            used = {v for v in promqueries.variable_names(q["expr"]) if not v.startswith("__")}
            assert used <= defined, (name, q["panel"], used - defined)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian package prometheus)")
def test_every_dashboard_expression_is_promql(tmp_path):
    rules = []
    origins = []
    for q in promqueries.dashboard_queries():
        rules.append({"record": "edgefleet:dashboard_check:%d" % len(rules),
                      "expr": promqueries.expand(q["expr"], LIVE_VALUES)})
        origins.append("%s / %s" % (q["dashboard"], q["panel"]))
    for path in promqueries.dashboard_files():
        for var in promqueries.template_variables(promqueries.load_dashboard(path)):
            if var["selector"]:
                rules.append({"record": "edgefleet:dashboard_check:%d" % len(rules),
                              "expr": promqueries.expand(var["selector"], LIVE_VALUES)})
                origins.append("%s / variable %s" % (path.name, var["name"]))
    assert len(rules) > 40
    rules_file = tmp_path / "dashboards.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert result.returncode == 0 and "FAILED" not in result.stderr, (result.stderr, origins)
    assert "SUCCESS: %d rules found" % len(rules) in result.stdout


def test_last_report_is_when_the_controller_received_telemetry_not_the_device_clock():
    """How long ago a device reported is Prometheus's record of when the
    controller received its telemetry (roles/prometheus); the device's clock
    (ts: unset until NTP answers, maybe skewed) is no panel's age."""
    ages = {(q["dashboard"], q["panel"], q["ref"]): q["expr"] for q in promqueries.dashboard_queries()
            if "time() -" in q["expr"].replace("time()-", "time() -")}
    assert set(ages) >= {("edgefleet-device", "Last report", "A"), ("edgefleet-fleet", "Reporting (last 60 s)", "A"),
                         ("edgefleet-fleet", "Devices", "B")}
    for where in (("edgefleet-device", "Last report", "A"), ("edgefleet-fleet", "Reporting (last 60 s)", "A"),
                  ("edgefleet-fleet", "Devices", "B")):
        assert "time() - " in ages[where] and promqueries.metric_names(ages[where]) == [
            "edgefleet:telemetry_last_seen_timestamp_seconds"], where
    for q in promqueries.dashboard_queries():
        assert "edgefleet_telemetry_timestamp_seconds" not in q["expr"], (q["dashboard"], q["panel"])


def test_dashboards_use_only_documented_metrics_and_labels():
    documented = documented_metrics()
    assert "edgefleet_device_online" in documented and "mosquitto_clients_connected" in documented
    for q in promqueries.dashboard_queries():
        for metric in promqueries.metric_names(q["expr"]):
            assert metric in documented or STANDARD_METRICS.match(metric), (q["dashboard"], q["panel"], metric)
        assert set(promqueries.label_names(q["expr"])) <= LABELS, (q["dashboard"], q["panel"], q["expr"])
    for path in promqueries.dashboard_files():
        for var in promqueries.template_variables(promqueries.load_dashboard(path)):
            assert set(promqueries.metric_names(var["selector"])) <= documented


# --- the provisioning checker on a staged tree ---------------------------------

def staged_tree(tmp_path, **overrides):
    variables = grafana_vars(tmp_path, **overrides)
    root = tmp_path / "staged"
    for template, live in (("grafana.ini.j2", "/etc/grafana/grafana.ini"),
                           ("datasources.yaml.j2", "/etc/grafana/provisioning/datasources/edgefleet.yaml"),
                           ("dashboards.yaml.j2", "/etc/grafana/provisioning/dashboards/edgefleet.yaml")):
        path = root / live.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render("grafana", template, variables))
    folder = root / "var/lib/grafana/dashboards/edgefleet"
    folder.mkdir(parents=True)
    for name in (ROLE / "files" / "dashboards").glob("*.json"):
        shutil.copy(name, folder / name.name)
    return root, folder


def run_checker(root):
    return subprocess.run(
        ["python3", str(CHECKER), "--root", str(root), "--ini", "/etc/grafana/grafana.ini",
         "--datasources", "/etc/grafana/provisioning/datasources/edgefleet.yaml",
         "--providers", "/etc/grafana/provisioning/dashboards/edgefleet.yaml"], capture_output=True, text=True)


def test_checker_accepts_the_role_output(tmp_path):
    root, _ = staged_tree(tmp_path)
    result = run_checker(root)
    assert result.returncode == 0, result.stderr
    assert "2 data source(s)" in result.stdout


def test_checker_refuses_a_dashboard_with_an_unknown_datasource(tmp_path):
    root, folder = staged_tree(tmp_path, grafana_influxdb_enabled=False)
    extra = json.loads((folder / "edgefleet-fleet.json").read_text())
    extra.update(uid="community-node", title="Node exporter")
    extra["panels"][0]["datasource"] = {"type": "influxdb", "uid": "edgefleet-influxdb"}
    (folder / "community-node.json").write_text(json.dumps(extra))
    result = run_checker(root)
    assert result.returncode == 1
    assert "names data source 'edgefleet-influxdb', which is not provisioned" in result.stderr


def test_checker_refuses_shared_exports_and_duplicate_uids(tmp_path):
    root, folder = staged_tree(tmp_path)
    copy = json.loads((folder / "edgefleet-ota.json").read_text())
    copy["title"] = "Another"
    copy["__inputs"] = [{"name": "DS_PROMETHEUS"}]
    (folder / "copy.json").write_text(json.dumps(copy))
    result = run_checker(root)
    assert result.returncode == 1
    assert "uid 'edgefleet-ota' is also the uid of" in result.stderr
    assert "__inputs" in result.stderr


def test_checker_refuses_broken_provisioning(tmp_path):
    root, folder = staged_tree(tmp_path)
    ds = root / "etc/grafana/provisioning/datasources/edgefleet.yaml"
    ds.write_text(ds.read_text().replace("apiVersion: 1", "apiVersion: 2"))
    (folder / "edgefleet-device.json").write_text("{not json")
    ini = root / "etc/grafana/grafana.ini"
    ini.write_text(ini.read_text().replace("http_port = 3000", "http_port = 3000\nhttp_port = 3001"))
    result = run_checker(root)
    assert result.returncode == 1
    assert "not a provisioning file of apiVersion 1" in result.stderr
    assert "edgefleet-device.json" in result.stderr
    assert "http_port" in result.stderr


# --- tools/pylib/promqueries.py ------------------------------------------------

NESTED = {
    "uid": "x",
    "panels": [
        {"type": "stat", "title": "top", "targets": [{"refId": "A", "expr": "up"}]},
        {"type": "row", "title": "collapsed", "collapsed": True, "panels": [
            {"type": "timeseries", "title": "inner", "datasource": {"uid": "p"},
             "targets": [{"refId": "A", "expr": 'rate(a{kind=~"$kind"}[$__rate_interval])'},
                         {"refId": "B", "expr": ""}, {"refId": "C", "query": "not promql"}]}]},
        {"type": "text", "title": "no targets"},
    ],
    "rows": [{"panels": [{"type": "graph", "title": "legacy", "targets": [{"refId": "A", "expr": "b"}]}]}],
    "templating": {"list": [
        {"name": "site", "type": "query", "query": "label_values(up, site)", "multi": True, "includeAll": True},
        {"name": "kind", "type": "query", "query": {"query": 'label_values(a{site=~"$site"}, kind)', "refId": "v"}},
        {"name": "job", "type": "query", "definition": "label_values(job)"},
        {"name": "env", "type": "custom", "query": "a,b"},
    ]},
}


def test_extracts_nested_and_legacy_panels():
    found = promqueries.dashboard_exprs(NESTED, file="n.json")
    assert [(q["panel"], q["ref"], q["expr"]) for q in found] == [
        ("top", "A", "up"), ("inner", "A", 'rate(a{kind=~"$kind"}[$__rate_interval])'), ("legacy", "A", "b")]
    assert found[1]["datasource"] == "p" and found[0]["file"] == "n.json"


def test_extracts_rules(tmp_path):
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump({"groups": [
        {"name": "g1", "rules": [{"alert": "Down", "expr": "up == 0\n", "for": "1m"},
                                 {"record": "job:up:sum", "expr": "sum by (job) (up)"}]},
        {"name": "g2", "rules": [{"alert": "Other", "expr": "vector(1)"}]}]}))
    found = promqueries.rules_queries(path)
    assert [(q["group"], q["kind"], q["name"], q["expr"]) for q in found] == [
        ("g1", "alert", "Down", "up == 0"), ("g1", "record", "job:up:sum", "sum by (job) (up)"),
        ("g2", "alert", "Other", "vector(1)")]


def test_template_variables_and_label_values():
    found = {v["name"]: v for v in promqueries.template_variables(NESTED)}
    assert (found["site"]["selector"], found["site"]["label"]) == ("up", "site")
    assert (found["kind"]["selector"], found["kind"]["label"]) == ('a{site=~"$site"}', "kind")
    assert (found["job"]["selector"], found["job"]["label"]) == (None, "job")
    assert found["env"]["label"] is None and found["site"]["multi"] and not found["kind"]["multi"]
    assert promqueries.parse_label_values("query_result(up)") is None


def test_expand_variables_and_builtins():
    expr = ('sum(rate(a{site=~"$site", kind=~"${kind}", d=~"[[device_id]]"}[$__rate_interval]))'
            ' / $__range_s + $__interval_ms')
    out = promqueries.expand(expr, {"site": ["lab", "north"], "kind": "psu", "device_id": "psu-1",
                                    "__range": "2h", "__interval": "30s"})
    assert out == 'sum(rate(a{site=~"lab|north", kind=~"psu", d=~"psu-1"}[1m])) / 7200 + 30000'
    assert promqueries.expand("x[$__range]", {}) == "x[1h]"
    assert promqueries.expand("${k:csv} ${k:pipe} ${k:regex}", {"k": ["a", "b.c"]}) == r"a,b.c a|b.c a|b\\.c"


def test_expand_escapes_regex_values_and_leaves_capture_groups():
    out = promqueries.expand('a{x=~"$v"} + label_replace(b, "l", "$1", "m", "(.*)")', {"v": ["a.b", "c(d)"]})
    assert out == r'a{x=~"a\\.b|c\\(d\\)"} + label_replace(b, "l", "$1", "m", "(.*)")'


def test_expand_reports_unknown_variables():
    with pytest.raises(KeyError, match="nope"):
        promqueries.expand('a{x="$nope"}', {})
    assert promqueries.expand('a{x="$nope"}', {}, strict=False) == 'a{x="$nope"}'


def test_metric_and_label_names():
    expr = ('sum by (kind) (rate(edgefleet_telemetry_seq{site=~"$site", kind!="x"}[5m] offset 1m))'
            ' / on (kind) group_left count by (kind) (edgefleet_device_online == bool 1)'
            ' or vector(0) + node_load1 * 1e3 - time() + topk(3, up{job="node"})'
            ' and label_replace(probe_success, "a", "$1", "instance", "(.*)")')
    assert promqueries.metric_names(expr) == [
        "edgefleet_device_online", "edgefleet_telemetry_seq", "node_load1", "probe_success", "up"]
    assert promqueries.label_names(expr) == ["job", "kind", "site"]

"""Item 6's query test: every PromQL expression of the dashboards (the
grafana role's files) and of the alert rules (as the live Prometheus loaded
them) runs against the live test Prometheus, fed by real MQTT traffic from a
simulated fleet and by each device's /metrics. An expression fails the test
when Prometheus answers with an error, or when it returns nothing.

Template variables are expanded to real values: each label_values()
variable gets the values that Prometheus holds for it now.

A dashboard variable that takes one value (the device) is tried with each
device of the simulated fleet: an expression passes when it returns data
for at least one of them (an env sensor has no voltage, an oven does).

An alert's expression is empty while nothing is wrong, so for an alert the
test checks that the full expression evaluates, and that each operand of
its comparisons and set operations (the signal it watches, split at the
top level by PromQL's operator precedence, inside label_replace(); for
absent(x), x) returns
data; scalar operands (thresholds) are exempt, and so are the series in
ABSENT_WHILE_HEALTHY, which do not exist until the first fault; those must
still evaluate."""

import itertools
import json
import re

import pytest
from conftest import FLEET, SITE, mqtt
from promqueries import dashboard_files, dashboard_queries, expand, load_dashboard, metric_names, template_variables

testinfra_hosts = ["ansible://controller"]
# not in the simulated fleet; reports an OTA result once, and a status with
# the heap figures only an ESP32 can read (the simulated boards report none),
# as a real device would
OTA_DEVICE = "fan-edez6pps"
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
# Series that exist only after the first fault, each with why.
ABSENT_WHILE_HEALTHY = {
    "mosquitto_publish_dropped_total": "Mosquitto 2.0 publishes $SYS/broker/publish/messages/dropped only once "
                                       "a message was dropped (checked on Debian's 2.0.11)",
}


@pytest.fixture(scope="module")
def live(fleet, prometheus, password):
    """Prometheus with data from every fleet device, through both paths."""
    device = mqtt(OTA_DEVICE, password(OTA_DEVICE))
    try:
        for state in ("downloading", "verifying", "rebooting", "confirmed"):
            device.publish(f"site/{SITE}/fan/{OTA_DEVICE}/ota",
                           json.dumps({"id": "query-test", "state": state, "version": "1.2.0", "detail": ""}), qos=1)
        device.publish(f"site/{SITE}/fan/{OTA_DEVICE}/status",
                       json.dumps({"online": True, "fw": "1.2.0", "cfg_version": 1, "free_heap": 61234,
                                   "heap_largest_free": 30016, "idf_largest_free": 27120}), qos=1, retain=True)
    finally:
        device.close()
    n = len(FLEET)
    fleet_ids = "|".join(FLEET)

    def every_device(r):
        return r and int(float(r[0]["value"][1])) == n
    # rate() over $__rate_interval (1m) needs two samples of each series in the window, through both paths
    prometheus.wait(f'count(rate(edgefleet_telemetry_seq{{site="{SITE}", device_id=~"{fleet_ids}"}}[1m]) > 0)',
                    every_device, timeout=120, what="telemetry of every fleet device through the exporter, twice")
    prometheus.wait(f'count(up{{job="edgefleet_devices", device_id=~"{fleet_ids}"}} == 1)', every_device,
                    timeout=120, what="every fleet device's /metrics scraped")
    prometheus.wait(f'count(rate(edgefleet_telemetry_published_total{{device_id=~"{fleet_ids}"}}[1m]) > 0)',
                    every_device, timeout=120, what="device counters rising")
    prometheus.wait(f'edgefleet_ota_failed{{device_id="{OTA_DEVICE}"}}', timeout=60, what="the OTA result")
    prometheus.wait(f'edgefleet_device_idf_largest_free_block_bytes{{device_id="{OTA_DEVICE}"}}', timeout=60,
                    what="the heap figures of a status")
    return prometheus


_OPS = [
    [r"\bor\b"],
    [r"\band\b", r"\bunless\b"],
    [r"==", r"!=", r">=", r"<=", r">(?!=)", r"<(?!=)"],
]
_MODIFIERS = re.compile(r"^\s*(?:bool\b\s*)?(?:(?:on|ignoring)\s*\([^)]*\)\s*)?(?:(?:group_left|group_right)"
                        r"(?:\s*\([^)]*\))?\s*)?")


def _top_level_split(expr, patterns):
    """Split *expr* at operators matching *patterns* outside (), {}, [] and strings."""
    regexes = [re.compile(p) for p in patterns]
    parts, depth, start, i, quote = [], 0, 0, 0, None
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and expr[i:i + 2] not in ("=~", "!~"):
            m = next((m for m in (r.match(expr, i) for r in regexes) if m), None)
            if m:
                parts.append(expr[start:i])
                i = start = m.end()
                continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts]


_ABSENT = re.compile(r"^absent\s*\((.*)\)$", re.S)
_LABEL_REPLACE = re.compile(r'^label_replace\s*\((.*),\s*"[^"]*"\s*,\s*"[^"]*"\s*,\s*"[^"]*"\s*,\s*"[^"]*"\s*\)$',
                            re.S)


def signals(expr, level=0):
    """The operands an alert expression watches (see the module docstring)."""
    if level == len(_OPS):
        e = _MODIFIERS.sub("", expr, count=1).strip()
        m = _LABEL_REPLACE.match(e)
        if m and _balanced(m.group(1)):
            return signals(m.group(1))
        # absent(x) has data only while x is missing: x is the signal
        m = _ABSENT.match(e)
        if m and _balanced(m.group(1)):
            return signals(m.group(1))
        while e.startswith("(") and e.endswith(")") and _balanced(e[1:-1]):
            inner = e[1:-1].strip()
            if len(_top_level_split(inner, sum(_OPS, []))) > 1:
                return signals(inner)
            e = inner
        return [e]
    parts = _top_level_split(expr, _OPS[level])
    if len(parts) == 1:
        return signals(expr, level + 1)
    return [s for p in parts for s in signals(p, 0)]


def _balanced(s):
    depth = 0
    for c in s:
        depth += c == "("
        depth -= c == ")"
        if depth < 0:
            return False
    return depth == 0


def test_the_signal_splitter():
    assert signals("edgefleet_device_online == 0") == ["edgefleet_device_online", "0"]
    assert signals('(edgefleet_device_online == 1) unless on(site, kind, device_id) '
                   '(time() - timestamp(edgefleet_telemetry_seq) < 60)') == [
        "edgefleet_device_online", "1", "time() - timestamp(edgefleet_telemetry_seq)", "60"]
    assert signals('a{x=~"1|2"} > on(d) group_left b + 5 or c != 0') == ['a{x=~"1|2"}', "b + 5", "c", "0"]
    assert signals('label_replace(up{job=~"a|b"} == 0, "problem", "down", "", "") or '
                   'label_replace(c == 0, "p", "x", "", "")') == ['up{job=~"a|b"}', "0", "c", "0"]
    assert signals('label_replace(absent(t{job="node"}), "problem", "no_data", "", "") or u == 0') == [
        't{job="node"}', "u", "0"]


def real_values(prom, var):
    """Every value Prometheus holds now for a label_values() variable."""
    if not var["label"]:
        return None
    selector = var["selector"]
    if selector:
        selector = expand(selector, {}, strict=False)
        if "$" in selector:  # chained on another variable: take every series of that metric
            selector = re.sub(r"\{.*\}", "", selector)
    selector = selector or '{%s!=""}' % var["label"]
    query = f'group by ({var["label"]}) ({selector})'
    status, result, error = prom.query(query)
    assert status == "success", (query, error)
    return sorted({r["metric"].get(var["label"]) for r in result if r["metric"].get(var["label"])})


def test_every_dashboard_expression_returns_data(live):
    failures, checked = [], 0
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        choices = {k: [v] for k, v in BUILTINS.items()}
        for var in template_variables(dashboard):
            vals = real_values(live, var)
            assert vals, f"{path.name}: template variable ${var['name']} has no values in the live Prometheus"
            # a multi-value variable takes every value; a single-value one is tried with each simulated
            # device (they have both paths: the exporter and their own /metrics)
            preferred = [v for v in vals if v in FLEET or v in {i.split('-')[0] for i in FLEET} or v == SITE]
            choices[var["name"]] = [vals] if var["multi"] or var["include_all"] else (preferred or vals)
        combos = [dict(zip(choices, c)) for c in itertools.product(*choices.values())]
        for q in dashboard_queries([path]):
            checked += 1
            answers = []
            for values in combos:
                expr = expand(q["expr"], values)
                status, result, error = live.query(expr)
                answers.append((expr, status, result, error))
                if status != "success" or result:
                    break
            expr, status, result, error = answers[-1]
            if status != "success":
                failures.append(f"{path.name} / {q['panel']}: error {error}: {expr}")
            elif not result and not _absent_while_healthy(expr):
                failures.append(f"{path.name} / {q['panel']}: no data for any of {len(combos)} variable values: "
                                f"{answers[0][0]}")
    assert checked > 0
    assert not failures, f"{len(failures)} of {checked} dashboard expressions failed:\n" + "\n".join(failures)


def test_every_alert_expression_evaluates_and_its_signals_return_data(live):
    rules = live.api("rules")
    alerts = [r for g in rules["data"]["groups"] for r in g["rules"] if r["type"] == "alerting"]
    assert len(alerts) >= 7, [a["name"] for a in alerts]
    failures = []
    for alert in alerts:
        status, _, error = live.query(alert["query"])
        if status != "success":
            failures.append(f"{alert['name']}: error {error}: {alert['query']}")
            continue
        for signal in signals(alert["query"]):
            out = live.api("query", query=signal)
            if out.get("status") != "success":
                failures.append(f"{alert['name']}: operand errors ({out.get('error')}): {signal}")
            elif out["data"]["resultType"] != "scalar" and not out["data"]["result"] \
                    and not _absent_while_healthy(signal) and not _needs_older_history(live, signal):
                failures.append(f"{alert['name']}: operand returns nothing: {signal}")
    assert not failures, "\n".join(failures)


def _needs_older_history(live, signal):
    """An operand that looks back further than this scenario has run
    (``x offset 1h``) returns nothing here by nature: it counts as valid when
    the same operand without the offset returns data."""
    base = re.sub(r"\s+offset\s+[0-9smhdwy]+", "", signal)
    if base == signal:
        return False
    out = live.api("query", query=base)
    return out.get("status") == "success" and bool(out["data"]["result"])


def _absent_while_healthy(expr):
    """True when every metric *expr* reads is one of ABSENT_WHILE_HEALTHY (and it has at least one)."""
    names = set(metric_names(expr))
    return bool(names) and names <= set(ABSENT_WHILE_HEALTHY)

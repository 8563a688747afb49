"""The PromQL of the edgefleet dashboards and alert rules, for tests and for
running every expression against a live Prometheus.

    for q in dashboard_queries():                  # every panel target, with where it is
        print(q["file"], q["panel"], q["expr"])
    for q in rules_queries("prometheus.rules.yml"):  # every rule's expr
        ...
    template_variables(load_dashboard(path))       # name, label_values() selector and label
    expand('rate(x{kind=~"$kind"}[$__rate_interval])', {"kind": ["psu", "env"]})
    # -> 'rate(x{kind=~"psu|env"}[1m])'

Grafana's variable syntaxes $var, ${var}, ${var:format} and [[var]] are
expanded the way Grafana's Prometheus data source does: a list value (a
multi-value or "All" variable) becomes a regex alternation a|b with regex
metacharacters escaped for a PromQL string; the built-ins $__rate_interval,
$__interval, $__range (and their _ms/_s forms) come from the values given,
else from BUILTIN_DEFAULTS.

Command line (prints one expanded expression per line, tab-separated from
where it came from):
    python tools/pylib/promqueries.py --var site=lab --var kind=psu,env [--rules FILE] [DASHBOARD.json ...]
"""

import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "roles" / "grafana" / "files" / "dashboards"

# What Grafana would use for a 1 h range on a 15 s scrape interval; callers
# pass their own when it matters.
BUILTIN_DEFAULTS = {"__interval": "15s", "__rate_interval": "1m", "__range": "1h"}

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w|y)$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
# ${name}, ${name:format}, [[name]], [[name:format]], $name (in this order)
_VARIABLE = re.compile(
    r"\$\{(?P<b>\w+)(?::(?P<bf>\w+))?\}|\[\[(?P<s>\w+)(?::(?P<sf>\w+))?\]\]|\$(?P<p>\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>[A-Za-z_]\w*)\s*\)\s*$",
                           re.S)
# Characters Grafana escapes in a value that goes into a PromQL regex string
# (each becomes \\x: one backslash for the regex, doubled for the string).
_REGEX_SPECIAL = re.compile(r"([\\$^*+?.()|{}\[\]'])")


def load_dashboard(path):
    return json.loads(pathlib.Path(path).read_text())


def dashboard_files(directory=DASHBOARD_DIR):
    return sorted(pathlib.Path(directory).glob("*.json"))


def iter_panels(dashboard):
    """Every panel, depth first: top-level panels, panels nested in
    (collapsed) rows, and the panels of the pre-schema-16 "rows" model."""
    def walk(panels):
        for panel in panels or []:
            yield panel
            yield from walk(panel.get("panels"))

    yield from walk(dashboard.get("panels"))
    for row in dashboard.get("rows") or []:
        yield from walk(row.get("panels"))


def dashboard_exprs(dashboard, file=None):
    """[{file, dashboard (uid), panel (title), ref (refId), expr, datasource}]
    for every panel target that carries a PromQL `expr`."""
    found = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                continue
            ds = target.get("datasource") or panel.get("datasource")
            found.append({
                "file": str(file) if file is not None else None,
                "dashboard": dashboard.get("uid"),
                "panel": panel.get("title", ""),
                "ref": target.get("refId", ""),
                "expr": expr,
                "datasource": ds.get("uid") if isinstance(ds, dict) else ds,
            })
    return found


def dashboard_queries(files=None):
    """dashboard_exprs() of every dashboard file (default: the grafana role's)."""
    found = []
    for path in files if files is not None else dashboard_files():
        found.extend(dashboard_exprs(load_dashboard(path), file=path))
    return found


def rules_queries(path):
    """[{file, group, name, kind ('alert' or 'record'), expr}] for every
    rule of a Prometheus rules file."""
    data = yaml.safe_load(pathlib.Path(path).read_text()) or {}
    found = []
    for group in data.get("groups") or []:
        for rule in group.get("rules") or []:
            kind = "alert" if "alert" in rule else "record"
            found.append({"file": str(path), "group": group.get("name", ""), "name": rule.get(kind, ""),
                          "kind": kind, "expr": str(rule.get("expr", "")).strip()})
    return found


def parse_label_values(query):
    """label_values(selector, label) or label_values(label) -> (selector or
    None, label); None for any other variable query."""
    if isinstance(query, dict):  # newer variable editors store {query: ..., refId: ...}
        query = query.get("query", "")
    m = _LABEL_VALUES.match(query or "")
    if not m:
        return None
    return (m.group("selector") or None), m.group("label")


def template_variables(dashboard):
    """[{name, type, query, selector, label, multi, include_all, datasource}]
    of the dashboard's template variables; selector/label from label_values()
    (None when the query is something else)."""
    found = []
    for var in (dashboard.get("templating") or {}).get("list") or []:
        query = var.get("definition") or var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        parsed = parse_label_values(query) if var.get("type") == "query" else None
        ds = var.get("datasource")
        found.append({
            "name": var.get("name"), "type": var.get("type"), "query": query,
            "selector": parsed[0] if parsed else None, "label": parsed[1] if parsed else None,
            "multi": bool(var.get("multi")), "include_all": bool(var.get("includeAll")),
            "datasource": ds.get("uid") if isinstance(ds, dict) else ds,
        })
    return found


def _seconds(duration):
    m = _DURATION.match(str(duration))
    if not m:
        raise ValueError("not a duration: %r" % (duration,))
    return int(m.group(1)) * _SECONDS[m.group(2)]


def _builtins(values):
    out = dict(BUILTIN_DEFAULTS)
    out.update({k: v for k, v in values.items() if k.startswith("__")})
    for name in ("__interval", "__range"):
        seconds = _seconds(out[name])
        out.setdefault(name + "_ms", str(int(seconds * 1000)))
        out.setdefault(name + "_s", str(int(seconds)))
    return out


def regex_escape(value):
    """A value as Grafana writes it into a PromQL regex string."""
    return _REGEX_SPECIAL.sub(r"\\\\\1", str(value))


def format_value(value, fmt=None):
    """A variable's value as Grafana's Prometheus data source interpolates it."""
    if isinstance(value, (list, tuple)):
        values = [str(v) for v in value]
        if fmt == "csv":
            return ",".join(values)
        if fmt == "pipe":
            return "|".join(values)
        if fmt == "raw":
            return ",".join(values)
        if fmt in (None, "regex"):
            return "|".join(regex_escape(v) for v in values)
        raise ValueError("unsupported variable format %r" % fmt)
    if fmt == "regex":
        return regex_escape(value)
    if fmt in (None, "raw", "csv", "pipe", "text"):
        return str(value)
    raise ValueError("unsupported variable format %r" % fmt)


def expand(expr, values, strict=True):
    """*expr* with every template variable replaced from *values* ({name:
    str or list}). Grafana's built-ins come from *values* (keys like
    "__rate_interval") or BUILTIN_DEFAULTS. A name that is all digits ($1 in
    label_replace) is left alone, as Grafana does; any other unknown name
    raises KeyError when *strict*, and is left alone otherwise."""
    builtins = _builtins(values)
    missing = []

    def replace(m):
        name = m.group("b") or m.group("s") or m.group("p")
        fmt = m.group("bf") or m.group("sf")
        if name.startswith("__"):
            if name in builtins:
                return str(builtins[name])
        elif name in values:
            return format_value(values[name], fmt)
        if not name.isdigit():
            missing.append(name)
        return m.group(0)

    out = _VARIABLE.sub(replace, expr)
    if missing and strict:
        raise KeyError("no value for template variable(s) %s in: %s" % (", ".join(sorted(set(missing))), expr))
    return out


def variable_names(expr):
    """The template variables an expression uses (built-ins included)."""
    return sorted({m.group("b") or m.group("s") or m.group("p") for m in _VARIABLE.finditer(expr)
                   if not (m.group("b") or m.group("s") or m.group("p")).isdigit()})


# --- metric names -------------------------------------------------------------
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_MODIFIERS = re.compile(r"\boffset\s+-?\d[0-9a-zA-Z]*|@\s*(?:-?\d+(?:\.\d+)?|start\s*\(\s*\)|end\s*\(\s*\))")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "atan2", "inf", "nan", "Inf", "NaN", "start", "end", "topk", "bottomk", "count_values", "quantile",
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "group", "limitk", "limit_ratio",
}


def metric_names(expr):
    """Metric names of a PromQL expression (template variables expanded or
    not): identifiers that are neither functions, keywords, label names nor
    inside strings, label matchers or range brackets."""
    text = _VARIABLE.sub("1", expr)
    text = _STRING.sub('""', text)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _MODIFIERS.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        rest = text[m.end():].lstrip()
        if rest.startswith("("):  # a function or an aggregation
            continue
        if m.group(0) in _KEYWORDS:
            continue
        names.add(m.group(0))
    return sorted(names)


_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*"')
_GROUP_LABELS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")


def label_names(expr):
    """Label names used in matchers and in by/without/on/ignoring/group_*
    lists."""
    text = _VARIABLE.sub("1", expr)
    names = set()
    for block in _BRACES.findall(text):
        names.update(_MATCHER.findall(block))
    for group in _GROUP_LABELS.findall(_STRING.sub('""', text)):
        names.update(n.strip() for n in group.split(",") if n.strip())
    return sorted(names)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Print the dashboards' (and rules') PromQL, expanded.")
    parser.add_argument("dashboards", nargs="*", help="dashboard JSON files (default: the grafana role's)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=V1[,V2...]",
                        help="a template variable's value(s); a comma makes it a list")
    parser.add_argument("--rules", action="append", default=[], help="a Prometheus rules file")
    parser.add_argument("--selectors", action="store_true", help="also print the label_values() selectors")
    args = parser.parse_args(argv)
    values = {}
    for item in args.var:
        name, _, value = item.partition("=")
        values[name] = value.split(",") if "," in value else value
    files = [pathlib.Path(f) for f in args.dashboards] or dashboard_files()
    for q in dashboard_queries(files):
        print("%s\t%s\t%s" % (pathlib.Path(q["file"]).name, q["panel"], expand(q["expr"], values)))
    if args.selectors:
        for path in files:
            for var in template_variables(load_dashboard(path)):
                if var["selector"]:
                    print("%s\tvariable %s\t%s" % (path.name, var["name"], expand(var["selector"], values)))
    for path in args.rules:
        for q in rules_queries(path):
            print("%s\t%s %s\t%s" % (pathlib.Path(path).name, q["kind"], q["name"], q["expr"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""PromQL of the committed dashboards and alert rules: list it, read metric names out of it.

Used by tests/test_dashboards.py (no root, no Prometheus) and meant for the
integration test that runs every query against a real Prometheus scraping a
running switch:

    from tests.promql import all_queries
    for q in all_queries(switch="sw0", port="web0", rate_interval="1m", interval="15s"):
        result = prometheus_query(q.signal)      # must return data
        assert result, f"{q.source}: {q.name}: {q.signal}"

`expr` is the query as written (alert rules with their threshold); `signal` is
what should return data while the switch runs: for a rule, its expression
without the final comparison (`tapswitch_port_up == 0` -> `tapswitch_port_up`),
otherwise the same as `expr`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator, NamedTuple

import yaml

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
RULE_FILES = ("alerts.yml",)


class Query(NamedTuple):
    source: str     # file name under dashboards/: "tapswitch-port.json", "alerts.yml"
    name: str       # "Panel title [A]", "variable port", or the alert's name
    expr: str       # as written in the file
    signal: str     # what returns data on a running switch (see module doc)


# --- Listing ------------------------------------------------------------------

def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("tapswitch-*.json"))


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel that is not a row, including those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*\w+\s*\)\s*$")


def variable_selector(query: str) -> str | None:
    """`label_values(tapswitch_port_up{switch="$switch"}, port)` -> its series selector."""
    m = _LABEL_VALUES.match(query)
    return m.group("selector") if m else None


def dashboard_queries() -> list[Query]:
    """Panel targets and query variables of every dashboard, unsubstituted."""
    queries = []
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        for var in dashboard.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                selector = variable_selector(var["query"])
                if selector is None:
                    raise ValueError(f"{path.name}: variable {var['name']}: "
                                     f"not label_values(SELECTOR, LABEL): {var['query']!r}")
                queries.append(Query(path.name, f"variable {var['name']}", selector, selector))
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                name = f"{panel['title']} [{target['refId']}]"
                queries.append(Query(path.name, name, target["expr"], target["expr"]))
    return queries


_THRESHOLD = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?[0-9.]+(?:e[-+]?\d+)?\s*$",
                        re.IGNORECASE)


def without_threshold(expr: str) -> str:
    """`rate(x[5m]) > 0` -> `rate(x[5m])`; an expression without one is unchanged."""
    return _THRESHOLD.sub("", expr.strip())


def rule_queries() -> list[Query]:
    """The expression of every alerting and recording rule."""
    queries = []
    for file_name in RULE_FILES:
        doc = yaml.safe_load((DASHBOARDS / file_name).read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                expr = rule["expr"].strip()
                name = rule.get("alert") or rule["record"]
                queries.append(Query(file_name, name, expr, without_threshold(expr)))
    return queries


_VARIABLE = re.compile(r"\$\{(?P<braced>[A-Za-z_]\w*)(?::\w+)?\}|\$(?P<bare>[A-Za-z_]\w*)")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace `$name` / `${name}` as Grafana would; an unknown variable is an error."""
    def value(m: re.Match) -> str:
        name = m.group("braced") or m.group("bare")
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]
    return _VARIABLE.sub(value, expr)


def all_queries(switch: str, port: str, rate_interval: str = "1m", interval: str = "15s") -> list[Query]:
    """Every query of every dashboard (panels and variables) and every alert rule,
    with $switch, $port, $__rate_interval and $__interval substituted: ready for
    Prometheus' /api/v1/query. `switch` and `port` are used verbatim (they are
    matched with =~ in panels, so keep them free of regex metacharacters).
    `interval` is Grafana's step of a panel's range query: no shorter than the
    scrape interval (the data source's), and a query_range of a panel runs at it."""
    values = {"switch": switch, "port": port, "__rate_interval": rate_interval,
              "__interval": interval}
    return [Query(q.source, q.name, substitute(q.expr, values), substitute(q.signal, values))
            for q in dashboard_queries() + rule_queries()]


# --- Metric names -------------------------------------------------------------

_STRING = r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`'
_TOKEN = re.compile(rf"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>{_STRING})
  | (?P<matchers>\{{(?:{_STRING}|[^{{}}"'`])*\}})
  | (?P<variable>\$\{{[^}}]*\}}|\$\w+|\[\[\w+\]\])
  | (?P<range>\[[^\]]*\])
  | (?P<number>0x[0-9a-fA-F]+
      |(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>@(),])
""", re.VERBOSE)

# Words that are never metric names: binary operators, modifiers, special numbers.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# Keywords followed by a parenthesised list of label names.
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*(?:"([^"]*)"|'([^']*)')""")


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) of every token but spaces and comments; raises on anything else."""
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot tokenize {expr[pos:pos + 20]!r} in {expr!r}")
        if m.lastgroup not in ("space", "comment"):
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana template variables allowed).

    An identifier is a metric name unless it is a function or aggregation
    (followed by "(", or by "by"/"without"), a keyword, or a label name in
    by/without/on/ignoring/group_left/group_right (...). Label matchers {...},
    range and subquery selectors [...], strings, numbers, durations and
    template variables are skipped, except a matcher on __name__, which names
    a metric."""
    toks = tokens(expr)
    names: set[str] = set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "matchers":
            names.update(a or b for a, b in _NAME_MATCHER.findall(text))
        elif kind == "ident" and text.lower() in LABEL_LISTS:
            if following == "(":
                i = toks.index(("op", ")"), i + 1)   # label names, never nested
        elif kind == "ident" and text.lower() not in KEYWORDS and not (
                following == "(" or following.lower() in ("by", "without")):
            names.add(text)   # not a function, nor an aggregation: `sum by (...) (...)`
        i += 1
    return names


_COUNTER_FUNCTION = re.compile(r"\b(?:rate|irate|increase)\(\s*([A-Za-z_:][A-Za-z0-9_:]*)")


def counters_under_rate(expr: str) -> list[str]:
    """Metric names that rate(), irate() or increase() is applied to directly."""
    return _COUNTER_FUNCTION.findall(expr)

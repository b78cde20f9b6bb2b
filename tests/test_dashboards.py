"""Dashboards, alert rules and Prometheus/Grafana config in dashboards/ (no root).

The committed dashboard JSON is what dashboards/generate.py produces; every
query names only metrics of dashboards/METRICS.txt (the exporter's contract);
promtool accepts the rules and the example config, and the rules fire when
they should (promtool test rules). Running each query against a live switch
is the integration test's job; it lists them with tests.promql.all_queries().
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.promql import (DASHBOARDS, all_queries, counters_under_rate, dashboard_files,
                    dashboard_queries, load_dashboard, metric_names, panels, rule_queries,
                    substitute, tokens, without_threshold)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
DASHBOARD_NAMES = {"tapswitch-overview.json", "tapswitch-port.json"}


def metrics() -> list[str]:
    return [line.strip() for line in (DASHBOARDS / "METRICS.txt").read_text().splitlines()
            if line.strip()]


def dashboard(name: str) -> dict:
    return load_dashboard(DASHBOARDS / name)


def variables(name: str) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard(name)["templating"]["list"]}


def all_panels():
    return [(path.name, panel) for path in dashboard_files()
            for panel in panels(load_dashboard(path))]


def query_id(q) -> str:
    return f"{q.source}:{q.name}"


# --- The metric list ----------------------------------------------------------

def test_metrics_list_is_unique_and_well_formed():
    names = metrics()
    assert len(names) == len(set(names))
    assert all(METRIC_NAME.match(n) for n in names), names
    assert all(n.startswith(("tapswitch_", "process_")) for n in names)


def test_metrics_list_has_the_design_contract():
    design = {"port_rx_packets_total", "port_rx_bytes_total", "port_rx_errors_total",
              "port_rx_dropped_total", "port_tx_packets_total", "port_tx_bytes_total",
              "port_tx_errors_total", "port_tx_dropped_total", "port_flooded_packets_total",
              "port_up", "port_info", "fdb_entries", "fdb_learned_total", "fdb_moved_total",
              "fdb_aged_total", "fdb_evicted_total", "build_info"}
    assert {f"tapswitch_{n}" for n in design} <= set(metrics())


# --- The generator ------------------------------------------------------------

@pytest.fixture(scope="module")
def generator():
    pytest.importorskip(
        "grafana_foundation_sdk",
        reason="grafana-foundation-sdk not installed: pip install -r dashboards/requirements.txt")
    spec = importlib.util.spec_from_file_location("generate", DASHBOARDS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sdk_is_the_pinned_grafana_11_build(generator):
    from importlib.metadata import version
    pin = (DASHBOARDS / "requirements.txt").read_text()
    pinned = re.search(r"^grafana-foundation-sdk==(\S+)$", pin, re.MULTILINE).group(1)
    assert "!11." in pinned
    assert version("grafana-foundation-sdk") == pinned


def test_committed_json_is_what_the_generator_makes(generator):
    rendered = generator.render_all()
    assert set(rendered) == DASHBOARD_NAMES
    assert {p.name for p in dashboard_files()} == DASHBOARD_NAMES
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text() == text, \
            f"{name} is stale: run python dashboards/generate.py"


def test_generator_output_is_deterministic(generator, tmp_path):
    # Across runs, not only within one: a set of strings, say, is iterated in another order by
    # each process (PYTHONHASHSEED), and two renders in one process agree all the same.
    rendered = generator.render_all()
    for seed in ("1", "2"):
        out = tmp_path / seed
        subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--out", str(out)], check=True,
                       env=dict(os.environ, PYTHONHASHSEED=seed))
        assert {p.name: p.read_text() for p in out.iterdir()} == rendered, f"PYTHONHASHSEED={seed}"


def test_check_flag_fails_on_stale_json(generator, tmp_path):
    script = str(DASHBOARDS / "generate.py")
    run = [sys.executable, script, "--out", str(tmp_path)]
    subprocess.run(run, check=True)
    assert subprocess.run(run + ["--check"]).returncode == 0
    (tmp_path / "tapswitch-port.json").write_text("{}\n")
    check = subprocess.run(run + ["--check"], capture_output=True, text=True)
    assert check.returncode == 1
    assert "tapswitch-port.json" in check.stderr


# --- Dashboards ---------------------------------------------------------------

def test_dashboards_have_stable_uids():
    assert {dashboard(n)["uid"] for n in DASHBOARD_NAMES} == {
        "tapswitch-overview", "tapswitch-port"}


def test_panel_ids_are_unique():
    for name in DASHBOARD_NAMES:
        ids = [p["id"] for p in dashboard(name)["panels"]]
        assert len(ids) == len(set(ids)), name


@pytest.mark.parametrize("source,panel", all_panels(),
                         ids=[f"{s}:{p['title']}" for s, p in all_panels()])
def test_every_panel_has_a_target(source, panel):
    assert panel.get("targets"), f"{source}: {panel['title']} has no query"
    ref_ids = [t["refId"] for t in panel["targets"]]
    assert len(ref_ids) == len(set(ref_ids))
    assert all(t["expr"].strip() for t in panel["targets"])


@pytest.mark.parametrize("source,panel", all_panels(),
                         ids=[f"{s}:{p['title']}" for s, p in all_panels()])
def test_every_panel_queries_the_selected_datasource(source, panel):
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_overview_variables():
    v = variables("tapswitch-overview.json")
    assert v["datasource"]["type"] == "datasource"
    assert v["datasource"]["query"] == "prometheus"
    assert v["switch"]["type"] == "query"
    assert v["switch"]["query"] == "label_values(tapswitch_port_up, switch)"


def test_port_view_variables():
    v = variables("tapswitch-port.json")
    assert list(v) == ["datasource", "switch", "port"]
    assert v["datasource"]["type"] == "datasource"
    assert v["datasource"]["query"] == "prometheus"
    assert v["switch"]["query"] == "label_values(tapswitch_port_up, switch)"
    assert v["port"]["query"] == 'label_values(tapswitch_port_up{switch="$switch"}, port)'
    for name in ("switch", "port"):
        assert v[name]["type"] == "query"
        assert v[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert v["switch"]["multi"] is False   # the port variable's query needs one switch


def test_panel_queries_filter_on_the_variables():
    for q in dashboard_queries():
        if q.name.startswith("variable "):
            continue
        assert '$switch"' in q.expr, q
        if q.source == "tapswitch-port.json":
            assert 'port=~"$port"' in q.expr, q
            # One switch, matched exactly: Grafana does not regex-escape a single-value
            # variable, and switch=~"br.0" would match switch br10 too.
            assert 'switch="$switch"' in q.expr, q


# --- Every query against the metric list -----------------------------------------

QUERIES = dashboard_queries() + rule_queries()


@pytest.mark.parametrize("query", QUERIES, ids=[query_id(q) for q in QUERIES])
def test_query_names_only_exported_metrics(query):
    names = metric_names(query.expr)
    assert names, f"{query_id(query)} names no metric: {query.expr}"
    unknown = names - set(metrics())
    assert not unknown, f"{query_id(query)} names metrics not in METRICS.txt: {unknown}"


@pytest.mark.parametrize("query", QUERIES, ids=[query_id(q) for q in QUERIES])
def test_rate_and_increase_only_over_counters(query):
    for name in counters_under_rate(query.expr):
        assert name.endswith("_total"), f"{query_id(query)}: rate over gauge {name}"


def test_all_queries_substitutes_every_variable():
    queries = all_queries(switch="sw0", port="web0", rate_interval="30s")
    assert len(queries) == len(QUERIES)
    for q in queries:
        assert "$" not in q.expr and "$" not in q.signal, q
    port_view = [q for q in queries if q.source == "tapswitch-port.json"
                 and not q.name.startswith("variable ")]
    assert all('switch="sw0", port=~"web0"' in q.expr for q in port_view)


@needs_promtool
def test_every_query_is_valid_promql(tmp_path):
    """promtool parses each substituted query, as a recording rule."""
    rules = [{"record": f"tapswitch:query:{i}", "expr": q.expr}
             for i, q in enumerate(all_queries(switch="sw0", port="web0"))]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    check = subprocess.run([PROMTOOL, "check", "rules", str(path)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def evaluate(tmp_path, tests: list[dict]) -> None:
    """promtool test rules on `tests` (input series and promql_expr_test), with no rules:
    Prometheus' own engine evaluates each expression at each eval_time."""
    (tmp_path / "none.yml").write_text("groups: []\n")
    (tmp_path / "test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["none.yml"], "evaluation_interval": "15s", "tests": tests}))
    run = subprocess.run([PROMTOOL, "test", "rules", "test.yml"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr


def labels_text(labels: dict) -> str:
    """`{a="1", b="2"}`, as promtool writes a sample's labels."""
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


# Bar panels of counts, and the label and value of the series counted.
BARS = {"Worker restarts [A]": ("queue", "0"), "Config reloads [A]": ("result", "success")}


@needs_promtool
@pytest.mark.parametrize("step", [15, 60])
@pytest.mark.parametrize("panel", sorted(BARS))
def test_one_event_is_one_bar_of_1(tmp_path, panel, step):
    """Scraped every 15 s, Grafana's points `step` s apart (at 7 s past the scrapes, as a
    range query aligned to its step runs): the event between the scrapes at 150 s and
    165 s is one bar of 1, at the one point whose step holds 165 s; every other bar is 0.
    Host b's switch restarted there, from 3 to 0, and counted its event before the scrape:
    that is one bar of 1 too. increase() over $__rate_interval (1m) made 3 or 4 bars of
    1.16 here, and over $__interval (the step) one of 1.16 at 60 s, none at 15 s."""
    [query] = [q for q in all_queries(switch="sw0", port="p0", rate_interval="1m", interval=f"{step}s")
               if q.source == "tapswitch-overview.json" and q.name == panel]
    metric = sorted(metric_names(query.expr))[0]
    label, value = BARS[panel]
    a = {"instance": "a", "job": "tapswitch", "switch": "sw0", label: value}
    b = {**a, "instance": "b"}
    inputs = [series(metric, a, "0x10 1x30"), series(metric, b, "3x10 1x30")]
    checks = []
    for t in range(7, 600, step):
        if t - step < 0:
            continue        # no value a step before: no bar (see since_last_point)
        bar = 1 if t - step < 165 <= t else 0
        checks.append({"expr": query.expr, "eval_time": f"{t}s", "exp_samples": [
            {"labels": labels_text({k: v for k, v in labels.items() if k != "job"}), "value": bar}
            for labels in (a, b)]})
    evaluate(tmp_path, [{"interval": "15s", "input_series": inputs, "promql_expr_test": checks}])


# The labels of each metric's series (README: Metrics); each has `instance` and `job` too.
SERIES_LABELS = {
    "tapswitch_port_rx_missed_total": ("switch", "port"),
    "tapswitch_port_up": ("switch", "port"),
    "tapswitch_port_fdb_entries": ("switch", "port"),
    "tapswitch_port_info": ("switch", "port", "mac", "mtu"),
    "tapswitch_port_": ("switch", "port", "queue"),
    "tapswitch_fdb_": ("switch",),
    "tapswitch_worker_info": ("switch", "queue", "io"),
    "tapswitch_worker_": ("switch", "queue"),
    "tapswitch_config_reloads_total": ("switch", "result"),
    "tapswitch_build_info": ("version",),
    "process_": (),
}


def two_hosts_alike() -> list[dict]:
    """Every metric of METRICS.txt from two scrape targets whose switch, ports and queues
    are named alike (sw0, p0, 0): counters rising, gauges at 1, 15 s apart."""
    inputs = []
    for name in metrics():
        prefix = next(p for p in SERIES_LABELS if name.startswith(p))
        for host in ("a", "b"):
            labels = {"instance": host, "job": "tapswitch"}
            labels.update({label: {"switch": "sw0", "port": "p0"}.get(label, "0")
                           for label in SERIES_LABELS[prefix]})
            inputs.append(series(name, labels, "0+10x40" if name.endswith("_total") else "1x40"))
    return inputs


@needs_promtool
def test_no_panel_adds_up_two_hosts_switches_of_one_name(tmp_path):
    """Two hosts each run a switch sw0 with a port p0: every panel query keeps them apart
    (a series of each, by `instance`); summed by switch and port, they were one."""
    checks = [{"expr": f"count(count by (instance) ({q.expr}))", "eval_time": "5m",
               "exp_samples": [{"labels": "{}", "value": 2}]}
              for q in all_queries(switch="sw0", port="p0", rate_interval="1m", interval="15s")
              if q.source.endswith(".json") and not q.name.startswith("variable ")]
    evaluate(tmp_path, [{"interval": "15s", "input_series": two_hosts_alike(),
                         "promql_expr_test": checks}])


@pytest.mark.parametrize("source,panel", all_panels(),
                         ids=[f"{s}:{p['title']}" for s, p in all_panels()])
def test_every_series_is_labelled_with_its_instance(source, panel):
    """A legend names the scrape target: switch.name is unique per host only."""
    for target in panel["targets"]:
        if target.get("format") == "table":
            hidden = [t["options"]["excludeByName"] for t in panel.get("transformations", [])
                      if t["id"] == "organize"]
            assert not any(h.get("instance") for h in hidden), panel["title"]
        else:
            assert "{{instance}}" in target["legendFormat"], (panel["title"], target["legendFormat"])


def test_substitute_rejects_unknown_variables():
    assert substitute("x[${__rate_interval}]", {"__rate_interval": "1m"}) == "x[1m]"
    with pytest.raises(KeyError):
        substitute('x{a="$nope"}', {})


def test_rule_signal_drops_the_threshold():
    assert without_threshold("tapswitch_port_up == 0") == "tapswitch_port_up"
    assert without_threshold("a / b > 0.9") == "a / b"
    assert without_threshold("rate(x[5m])\n> 0\n") == "rate(x[5m])"
    assert without_threshold("sum(x == bool 0)") == "sum(x == bool 0)"
    for q in rule_queries():
        assert q.signal != q.expr, f"{q.name}: no threshold found in {q.expr!r}"


# --- The tokenizer ------------------------------------------------------------

@pytest.mark.parametrize("expr,names", [
    ("tapswitch_port_up", {"tapswitch_port_up"}),
    ('sum by (switch, port) (rate(a_total{switch=~"$switch", port="x"}[$__rate_interval]))',
     {"a_total"}),
    ("sum(rate(a_total[5m])) without (queue, port) / on (switch) group_left (mac) b",
     {"a_total", "b"}),
    ("8 * rate(a_total[1m:30s] offset 5m) > bool 1e3", {"a_total"}),
    ('count_values("version", a) or vector(0) unless on() absent(b{c="}{[("})',
     {"a", "b"}),
    ('label_replace(a, "dst", "$1", "src", "(.*)") and ignoring (x) b @ start()',
     {"a", "b"}),
    ('{__name__="a_total", port="p"} + topk(${n}, c:recorded:rate5m) * Inf',
     {"a_total", "c:recorded:rate5m"}),
    ("histogram_quantile(0.9, sum without(le) (rate(h_bucket[$__interval])))", {"h_bucket"}),
])
def test_metric_names(expr, names):
    assert metric_names(expr) == names


def test_tokens_skip_matchers_ranges_and_variables():
    kinds = [kind for kind, _ in tokens('rate(x{a="b}"}[$__rate_interval]) > $t')]
    assert kinds == ["ident", "op", "ident", "matchers", "range", "op", "op", "variable"]


def test_tokens_reject_garbage():
    with pytest.raises(ValueError):
        tokens("rate(x[5m]) ; drop table")


# --- Alert rules --------------------------------------------------------------

@needs_promtool
def test_promtool_accepts_the_rules():
    check = subprocess.run([PROMTOOL, "check", "rules", str(DASHBOARDS / "alerts.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@needs_promtool
def test_promtool_accepts_the_example_config():
    check = subprocess.run([PROMTOOL, "check", "config", str(DASHBOARDS / "prometheus.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_example_config_scrapes_the_default_listen_address():
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    [job] = config["scrape_configs"]
    assert job["job_name"] == "tapswitch"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9417"]}]


def test_rules_have_the_specified_durations():
    rules = {r["alert"]: r for g in yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())
             ["groups"] for r in g["rules"]}
    assert rules["TapswitchPortDown"]["for"] == "1m"
    assert rules["TapswitchDropsRising"]["for"] == "5m"
    assert "[5m]" in rules["TapswitchWorkerRestarting"]["expr"]
    assert all(r["annotations"]["summary"] for r in rules.values())


SW = {"switch": "sw0"}
P0 = {**SW, "port": "p0"}


def series(name: str, labels: dict, values: str) -> dict:
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


DROP_REASONS = ("vlan", "acl", "mac_limit", "storm")


def reasons(port: str, values: str = "0x90", rising: str = "") -> list[dict]:
    """The drop reasons' counters of a port (the drops rule subtracts them): all at
    `values` but the one named `rising`, which the caller gives."""
    return [series(f"tapswitch_port_{r}_dropped_total", {**SW, "port": port, "queue": "0"}, values)
            for r in DROP_REASONS if r != rising]


def rising(pair: str, per_minute: int = 10) -> list[dict]:
    """rx counter of port p0 rising, tx flat; port p1 quiet."""
    return [series(f"tapswitch_port_rx_{pair}_total", {**P0, "queue": "0"}, f"0+{per_minute}x20"),
            series(f"tapswitch_port_tx_{pair}_total", {**P0, "queue": "0"}, "0x20"),
            series(f"tapswitch_port_rx_{pair}_total", {**SW, "port": "p1", "queue": "0"}, "0x20"),
            series(f"tapswitch_port_tx_{pair}_total", {**SW, "port": "p1", "queue": "0"}, "0x20")]


# alert -> (input series, [(eval time, labels of the alerts expected to fire)])
FIRING = {
    "TapswitchPortDown": (
        [series("tapswitch_port_up", P0, "1 0 0 0"),
         series("tapswitch_port_up", {**SW, "port": "p1"}, "1 1 1 1")],
        [("1m", []), ("2m", [P0])]),
    "TapswitchDropsRising": (rising("dropped", 600) + reasons("p0") + reasons("p1"),
                             [("3m", []), ("10m", [P0])]),
    "TapswitchErrorsRising": (rising("errors"), [("3m", []), ("10m", [P0])]),
    "TapswitchQueueOverflowing": (
        [series("tapswitch_port_rx_missed_total", P0, "0+10x20"),
         series("tapswitch_port_rx_missed_total", {**SW, "port": "p1"}, "0x20")],
        [("3m", []), ("10m", [P0])]),
    "TapswitchFdbNearlyFull": (
        [series("tapswitch_fdb_entries", SW, "950x10"),
         series("tapswitch_fdb_capacity", SW, "1000x10"),
         series("tapswitch_fdb_entries", {"switch": "sw1"}, "500x10"),
         series("tapswitch_fdb_capacity", {"switch": "sw1"}, "1000x10")],
        [("2m", []), ("6m", [SW])]),
    "TapswitchWorkerRestarting": (
        [series("tapswitch_worker_restarts_total", {**SW, "queue": "0"}, "0 0 0 1 1 1"),
         series("tapswitch_worker_restarts_total", {**SW, "queue": "1"}, "0 0 0 0 0 0")],
        [("2m", []), ("4m", [{**SW, "queue": "0"}])]),
    "TapswitchWorkerDown": (
        [series("tapswitch_worker_up", {**SW, "queue": "0"}, "1 0 0 0")],
        [("1m", []), ("2m", [{**SW, "queue": "0"}])]),
    "TapswitchConfigReloadFailed": (
        [series("tapswitch_config_reloads_total", {**SW, "result": "success"}, "0 1 1 1"),
         series("tapswitch_config_reloads_total", {**SW, "result": "failure"}, "0 0 0 1")],
        [("2m", []), ("3m", [{**SW, "result": "failure"}])]),
}


def test_every_alert_has_a_firing_test():
    assert set(FIRING) == {q.name for q in rule_queries()}


def promtool_test_rules(tmp_path, cases: dict, interval: str) -> None:
    """promtool test rules on a copy of alerts.yml without annotations (promtool
    compares annotations verbatim; `check rules` already validates their templates).
    `cases` is alert -> (input series, [(eval time, labels of the alerts expected to
    fire)]), sampled and evaluated every `interval`."""
    rules = yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())
    severity = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
            severity[rule["alert"]] = rule["labels"]["severity"]
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    tests = [{"interval": interval, "input_series": inputs, "alert_rule_test": [
        {"eval_time": at, "alertname": alert,
         "exp_alerts": [{"exp_labels": {**labels, "severity": severity[alert]}}
                        for labels in firing]}
        for at, firing in checks]}
        for alert, (inputs, checks) in cases.items()]
    (tmp_path / "test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["alerts.yml"], "evaluation_interval": interval, "tests": tests}))
    run = subprocess.run([PROMTOOL, "test", "rules", "test.yml"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_alerts_fire_when_they_should(tmp_path):
    promtool_test_rules(tmp_path, FIRING, "1m")


def on_host(s: dict, host: str) -> dict:
    """An input series of `series`, scraped from target `host`."""
    return {**s, "series": s["series"].replace("{", f'{{instance="{host}",', 1)}


@needs_promtool
def test_alerts_fire_for_each_host_of_switches_named_alike(tmp_path):
    """Two hosts run the same switch sw0 (ports and queues named alike): each alert of
    FIRING fires for each of them, apart (no rule sums `instance` away)."""
    hosts = ("h1:9417", "h2:9417")
    cases = {alert: ([on_host(s, h) for h in hosts for s in inputs],
                     [(at, [{**labels, "instance": h} for h in hosts for labels in firing])
                      for at, firing in checks])
             for alert, (inputs, checks) in FIRING.items()}
    promtool_test_rules(tmp_path, cases, "1m")


def test_every_alert_summary_names_the_host():
    """`tapswitch sw0: port p0 is down` from two hosts read alike."""
    rules = [r for g in yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())["groups"]
             for r in g["rules"]]
    assert [r["alert"] for r in rules if "{{ $labels.instance }}" not in r["annotations"]["summary"]] == []


def burst(metric: str, labels: dict, scrapes: int) -> dict:
    """A counter that rises by 100 (6.7/s) at `scrapes` scrapes 15 s apart after a quiet
    minute, then stays."""
    return series(metric, labels, f"0x4 0+100x{scrapes - 1} {100 * (scrapes - 1)}x60")


# "For 5 minutes" alerts: a burst of 30 s does not fire (a 5-minute rate held it above
# zero for 5 minutes, and it fired after the burst had ended); 6 minutes of it do.
BURSTS = {
    alert: [{**P0, **({} if metric.endswith("missed_total") else {"queue": "0"})}, metric]
    for alert, metric in (("TapswitchDropsRising", "tapswitch_port_rx_dropped_total"),
                          ("TapswitchErrorsRising", "tapswitch_port_tx_errors_total"),
                          ("TapswitchQueueOverflowing", "tapswitch_port_rx_missed_total"))}


def quiet_other_direction(metric: str) -> list[dict]:
    """The other direction's counter, flat (the drops and errors rules add rx and tx)."""
    if metric.endswith("missed_total"):
        return []
    other = metric.replace("_rx_", "_tx_") if "_rx_" in metric else metric.replace("_tx_", "_rx_")
    return [series(other, {**P0, "queue": "0"}, "0x90")] + (reasons("p0") if "dropped" in metric else [])


@needs_promtool
@pytest.mark.parametrize("alert", sorted(BURSTS))
def test_a_short_burst_does_not_fire_a_for_5_minutes_alert(tmp_path, alert):
    labels, metric = BURSTS[alert]
    every_evaluation = [(f"{s}s", []) for s in range(15, 15 * 60, 15)]
    promtool_test_rules(tmp_path, {alert: ([burst(metric, labels, 3)] + quiet_other_direction(metric),
                                           every_evaluation)}, "15s")


@needs_promtool
@pytest.mark.parametrize("alert", sorted(BURSTS))
def test_a_burst_of_6_minutes_fires_a_for_5_minutes_alert(tmp_path, alert):
    labels, metric = BURSTS[alert]
    promtool_test_rules(tmp_path, {alert: ([burst(metric, labels, 25)] + quiet_other_direction(metric),
                                           [("5m", []), ("7m", [P0])])}, "15s")



@needs_promtool
def test_drops_by_design_do_not_fire_the_drops_alert(tmp_path):
    """An uplink's LLDP every 30 s (rx_dropped at 2 a minute), and an ACL dropping 10
    frames/s (counted in acl_dropped and rx_dropped both), for 15 minutes: no alert."""
    trickle = rising("dropped", 2)[:2] + reasons("p0")
    acl = ([series("tapswitch_port_rx_dropped_total", {**P0, "queue": "0"}, "0+600x20"),
            series("tapswitch_port_tx_dropped_total", {**P0, "queue": "0"}, "0x20"),
            series("tapswitch_port_acl_dropped_total", {**P0, "queue": "0"}, "0+600x20")]
           + reasons("p0", rising="acl"))
    for inputs in (trickle, acl):
        promtool_test_rules(tmp_path, {"TapswitchDropsRising": (
            inputs, [(f"{m}m", []) for m in range(1, 16)])}, "1m")


@needs_promtool
@pytest.mark.parametrize("values, at, count", [
    ("2 2 2 3 3 3 3 3", "4m", 1),               # a switch up for less than 5 minutes
    ("2 2 2 3 4 5 5 5 5 5", "6m30s", 3),
    ("0 0 1 0 0 0 0 0 0", "5m30s", 1),          # then the switch restarted, from 0
], ids=["new", "three", "then-reset"])
def test_worker_restarting_counts_restarts_exactly(tmp_path, values, at, count):
    """Scraped every minute, evaluated 30 s after a scrape: increase() extrapolates to the
    window's edges, 1.25 a restart here (1.05 at a 15 s scrape), and three restarts read
    '4 time(s)'. The description counts restarts: the counter now less 5 minutes ago."""
    (tmp_path / "alerts.yml").write_text((DASHBOARDS / "alerts.yml").read_text())
    labels = {**SW, "instance": "h1:9417", "queue": "0"}
    rule = next(r for g in yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())["groups"]
                for r in g["rules"] if r["alert"] == "TapswitchWorkerRestarting")
    test = {"interval": "1m",
            "input_series": [series("tapswitch_worker_restarts_total", labels, values)],
            "alert_rule_test": [{"eval_time": at, "alertname": "TapswitchWorkerRestarting", "exp_alerts": [{
                "exp_labels": {**labels, "severity": rule["labels"]["severity"]},
                "exp_annotations": {
                    "summary": "tapswitch sw0 on h1:9417: worker for queue 0 restarted",
                    "description": f"The supervisor restarted the worker {count} time(s) in 5 minutes; "
                                   "frames on that queue were lost meanwhile."}}]}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["alerts.yml"], "evaluation_interval": "30s", "tests": [test]}))
    run = subprocess.run([PROMTOOL, "test", "rules", "test.yml"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


# --- Grafana provisioning -----------------------------------------------------

def test_datasource_provisioning_points_at_local_prometheus():
    doc = yaml.safe_load(
        (DASHBOARDS / "provisioning/datasources/tapswitch.yaml").read_text())
    assert doc["apiVersion"] == 1
    [ds] = doc["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://localhost:9090"
    assert ds["isDefault"] is True   # the dashboards' $datasource starts on the default
    scrape = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())["global"]
    assert ds["jsonData"]["timeInterval"] == scrape["scrape_interval"]


def test_dashboard_provisioning_loads_json_files():
    doc = yaml.safe_load(
        (DASHBOARDS / "provisioning/dashboards/tapswitch.yaml").read_text())
    assert doc["apiVersion"] == 1
    [provider] = doc["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).is_absolute()


def test_every_word_on_rx_errors_names_the_failed_reads_they_count():
    """A queue whose reads keep failing (EIO, ENOMEM...) counts one rx_errors about a second
    for as long as it lasts (fastpath.c, rx_failed), as the metric's help says: five minutes of
    it fire TapswitchErrorsRising, whose description, like the dashboards' "Errors per second"
    panel, said the errors were truncated or malformed frames only."""
    from tapswitch import metrics as exported
    assert "read failed" in exported.PORT_COUNTERS["rx_errors"][1]
    rules = {r["alert"]: r for g in yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())["groups"]
             for r in g["rules"] if "alert" in r}
    said = [rules["TapswitchErrorsRising"]["annotations"]["description"]]
    said += [p["description"] for _name, p in all_panels() if p.get("title") == "Errors per second"]
    assert len(said) == 1 + len(DASHBOARD_NAMES)
    assert all("rx: truncated or malformed frames, or failed reads;" in text for text in said), said

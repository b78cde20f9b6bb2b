"""Dashboards as code: builds the Grafana dashboards committed beside this file.

    python dashboards/generate.py           # (re)write tapswitch-*.json
    python dashboards/generate.py --check   # exit 1 if the committed JSON is stale

Needs the grafana-foundation-sdk pinned in dashboards/requirements.txt (a
Grafana 11 build). Output is deterministic: stable uids and panel ids, sorted
keys, so the committed JSON diffs cleanly and tests/test_dashboards.py can
compare it with what this file generates.

Every query names only metrics listed in METRICS.txt (the exporter's contract)
and filters with the template variables `$switch` (and `$port`), so the same
expressions run unchanged in the integration test (see tests/promql.py).
Directions are the port's: rx = frames the switch received from the port,
tx = frames it sent out of the port. In traffic graphs tx is drawn below zero.

Every series keeps the scrape's `instance` and names it in its legend: the
switch name is the config's `switch.name`, and two hosts may both run an `sw0`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

HERE = Path(__file__).resolve().parent

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
STEP = "$__interval"      # Grafana's step of the panel's range query, which its points are spaced by
TAGS = ["tapswitch"]
DIRECTIONS = ("rx", "tx")
FDB_EVENTS = ("learned", "moved", "aged", "evicted")
DROP_REASONS = ("vlan", "acl", "mac_limit", "storm")


# --- PromQL -------------------------------------------------------------------

class Q(NamedTuple):
    """One query of a panel: a PromQL expression and its legend."""
    expr: str
    legend: str = ""


def rate(metric: str, sel: str, by: str) -> str:
    """Per-second rate of a counter, summed into one series per `by` labels."""
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{RATE}]))"


def since_last_point(metric: str, sel: str, by: str) -> str:
    """Counts of a counter per point of the graph, one series per `by` labels: its value
    now less its value one step ($__interval) ago. Grafana's points are a step apart, so
    the counts tile the time range: one event is one bar of 1 at any step, and the bars
    add up to exactly what the counter counted. (increase() over a range extrapolates to
    the range's ends -- 1.33 for one event in 1m scraped every 15s --, counts an event in
    every range that holds it when the step is shorter, and misses one that falls between
    two ranges when it is as long.) A counter that fell (its switch restarted, from 0)
    counts its new value; a series with no value a step ago has no point."""
    now, before = f"{metric}{{{sel}}}", f"{metric}{{{sel}}} offset {STEP}"
    return f"sum by ({by}) (\n  ({now} - {before}) >= 0\n  or {now} < {before}\n)"


def legend(by: str, suffix: str = "") -> str:
    """`{{instance}} {{port}} rx` for by="instance, port", suffix "rx"."""
    parts = ["{{" + label.strip() + "}}" for label in by.split(",")]
    if suffix:
        parts.append(suffix)
    return " ".join(parts)


def rx_tx(counter: str, sel: str, by: str, scale: str = "") -> list[Q]:
    """rx and tx series of `tapswitch_port_{rx,tx}_<counter>_total`."""
    return [Q(scale + rate(f"tapswitch_port_{d}_{counter}_total", sel, by), legend(by, d))
            for d in DIRECTIONS]


def of_the_switch(metric_expr: str, sel: str) -> str:
    """Keep a process-wide series (process_*, build_info: no `switch` label)
    only for the scrape targets that export the selected switches."""
    return f"{metric_expr} and on (instance, job) tapswitch_fdb_capacity{{{sel}}}"


# --- Panels: one helper per kind ---------------------------------------------

def targets(queries: list[Q], *, instant: bool = False, as_table: bool = False):
    for i, q in enumerate(queries):
        t = prometheus.Dataquery().expr(q.expr).legend_format(q.legend or "__auto")
        t = t.ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        if instant:
            t = t.instant()
        if as_table:
            t = t.format(pm.PromQueryFormat.TABLE)
        yield t


def _common(panel, title: str, description: str, queries: list[Q], width: int, height: int,
            **target_opts):
    panel = (panel.title(title).description(description).datasource(DATASOURCE)
             .span(width).height(height))
    for t in targets(queries, **target_opts):
        panel = panel.with_target(t)
    return panel


def thresholds(*steps: tuple[float | None, str]):
    return (db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in steps]))


def graph(title: str, unit: str, queries: list[Q], description: str, *, width: int = 12,
          height: int = 8, tx_below: bool = False, bars: bool = False,
          max_: float | None = None) -> timeseries.Panel:
    """Time series; `tx_below` mirrors series whose legend ends in "tx"; `bars` draws
    counts per point (since_last_point), which the legend totals over the time range."""
    calcs = ["sum", "max"] if bars else ["lastNotNull", "max"]
    panel = (_common(timeseries.Panel(), title, description, queries, width, height)
             .unit(unit)
             .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                     .placement(cm.LegendPlacement.BOTTOM).show_legend(True)
                     .calcs(calcs))
             .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                      .sort(cm.SortOrder.DESCENDING))
             .fill_opacity(10))
    if tx_below:
        panel = panel.override_by_regexp(
            "/ tx$/", [dm.DynamicConfigValue(id_val="custom.transform", value="negative-Y")])
    else:
        panel = panel.min(0)
    if max_ is not None:
        panel = panel.max(max_)
    if bars:
        panel = panel.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(60)
    return panel


def single(title: str, unit: str, queries: list[Q], description: str, *, width: int = 6,
           height: int = 8, steps=((None, "green"),), text_mode=cm.BigValueTextMode.AUTO,
           max_: float | None = None) -> stat.Panel:
    """Stat: the last value of each series, coloured by `steps`."""
    panel = (_common(stat.Panel(), title, description, queries, width, height)
             .unit(unit).thresholds(thresholds(*steps))
             .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
             .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
             .graph_mode(cm.BigValueGraphMode.AREA).text_mode(text_mode)
             .min(0))
    if max_ is not None:
        panel = panel.max(max_)
    return panel


def state(title: str, queries: list[Q], description: str, *, width: int = 12, height: int = 8,
          states: dict[str, tuple[str, str]]) -> statetimeline.Panel:
    """State timeline; `states` maps a value to (text, colour)."""
    mapping = dm.ValueMap(options={
        value: dm.ValueMappingResult(text=text, color=color, index=i)
        for i, (value, (text, color)) in enumerate(sorted(states.items()))})
    return (_common(statetimeline.Panel(), title, description, queries, width, height)
            .mappings([mapping]).merge_values(True).show_value(cm.VisibilityMode.AUTO))


def info_table(title: str, queries: list[Q], description: str, *, hide: list[str],
               width: int = 24, height: int = 6) -> table.Panel:
    """Table of the labels of info-style gauges (value always 1)."""
    organize = dm.DataTransformerConfig(id_val="organize", options={
        "excludeByName": {name: True for name in sorted(hide)}})
    return (_common(table.Panel(), title, description, queries, width, height,
                    instant=True, as_table=True)
            .with_transformation(organize))


def unset_as_dash(expr: str, *labels: str) -> str:
    """`expr` with each of `labels` that is empty or absent set to "-"."""
    for label in labels:
        expr = f'label_replace({expr}, "{label}", "-", "{label}", "")'
    return expr


# --- Template variables -------------------------------------------------------

def datasource_variable() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def label_variable(name: str, query: str, *, multi: bool) -> db.QueryVariable:
    """A variable over label values; `multi` adds "All" (matched as `.*`)."""
    var = (db.QueryVariable(name).label(name).datasource(DATASOURCE).query(query)
           .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
           .sort(dm.VariableSort.NATURAL_ASC))
    if multi:
        var = var.multi(True).include_all(True).all_value(".*")
    return var


def switch_variable(*, multi: bool) -> db.QueryVariable:
    return label_variable("switch", "label_values(tapswitch_port_up, switch)", multi=multi)


def port_variable() -> db.QueryVariable:
    return label_variable("port", 'label_values(tapswitch_port_up{switch="$switch"}, port)',
                          multi=True)


# --- Dashboards ---------------------------------------------------------------

Row = tuple[str, list]   # (row title, panel builders)


def assemble(uid: str, title: str, description: str, variables: list, rows: list[Row]):
    """Lay out rows of panels; number panels in order so ids are stable."""
    dash = (db.Dashboard(title).uid(uid).description(description).tags(TAGS)
            .time("now-1h", "now").refresh("30s").timezone("browser")
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .link(db.DashboardLink("tapswitch").type(dm.DashboardLinkType.DASHBOARDS)
                  .tags(TAGS).as_dropdown(False).include_vars(True).keep_time(True)))
    for var in variables:
        dash = dash.with_variable(var)
    for row_title, panels in rows:
        dash = dash.with_row(db.Row(row_title))
        for panel in panels:
            dash = dash.with_panel(panel)
    model = dash.build()
    for panel_id, panel in enumerate(model.panels, start=1):
        panel.id_val = panel_id
    return model


# Rows and panels of both dashboards; `by` is the labels of one series.

def traffic(sel: str, by: str, row_title: str = "Traffic", per: str = "") -> Row:
    """Packets and bits per second, rx up and tx down, one series per `by`."""
    return (row_title, [
        graph(f"Packets per second{per}", "pps", rx_tx("packets", sel, by),
              "Frames received from (rx) and sent to (tx) each port.", tx_below=True),
        graph(f"Bits per second{per}", "bps", rx_tx("bytes", sel, by, scale="8 * "),
              "Bits received from (rx) and sent to (tx) each port.", tx_below=True),
    ])


def drops_and_errors(sel: str, by: str) -> Row:
    per_port = ", ".join(label.strip() for label in by.split(",") if label.strip() != "queue")   # rx_missed has no queue
    return ("Drops and errors", [
        graph("Dropped packets per second", "pps",
              rx_tx("dropped", sel, by)
              + [Q(rate("tapswitch_port_rx_missed_total", sel, per_port), legend(per_port, "rx missed"))],
              "rx: frames read but not forwarded; rx missed: frames the port's host sent "
              "that found its queue full (the worker was behind; counted per port, not per "
              "queue); tx: writes the kernel refused rather than wait (the TAP's send buffer was full).",
              tx_below=True),
        graph("Errors per second", "pps", rx_tx("errors", sel, by),
              "rx: truncated or malformed frames, or failed reads; tx: frames over MTU or failed writes.",
              tx_below=True),
        graph("Drops by reason", "pps",
              [Q(rate(f"tapswitch_port_{reason}_dropped_total", sel, by), f"{reason} " + legend(by))
               for reason in DROP_REASONS],
              "Received frames dropped by a switch feature: VLAN not allowed, ACL, MAC limit, "
              "storm control (each is part of rx dropped)."),
    ])


def flooded(sel: str, by: str, width: int = 12) -> timeseries.Panel:
    return graph("Flooded packets per second", "pps",
                 [Q(rate("tapswitch_port_flooded_packets_total", sel, by), legend(by))],
                 "Frames flooded (sent to the other ports of their VLAN), by the port they were received on.",
                 width=width)


# Overview: every port of the selected switches.

OVERVIEW_SEL = 'switch=~"$switch"'
# One switch of one scrape target: switch names are only unique per host.
SWITCH = "instance, switch"


def flooding(sel: str) -> Row:
    ratio = (f"{rate('tapswitch_port_flooded_packets_total', sel, SWITCH)}\n/\n"
             f"{rate('tapswitch_port_rx_packets_total', sel, SWITCH)}")
    return ("Flooding", [
        graph("Flooding ratio", "percentunit", [Q(ratio, legend(SWITCH))],
              "Share of received frames flooded to the other ports of their VLAN (unknown destination, "
              "broadcast, multicast). High and steady: the FDB is too small or aging too short.",
              max_=1),
        flooded(sel, f"{SWITCH}, port"),
    ])


def fdb(sel: str) -> Row:
    use = f"tapswitch_fdb_entries{{{sel}}}\n/\ntapswitch_fdb_capacity{{{sel}}}"
    return ("FDB (MAC table)", [
        single("FDB use", "percentunit", [Q(use, legend(SWITCH))],
               "Entries / slots (mac_table.size and a quarter more: the size fills 80%). Above 90% "
               "the switch starts to evict entries (fairly, from the port with the most) and floods more.",
               steps=((None, "green"), (0.75, "orange"), (0.9, "red")), max_=1),
        graph("FDB entries", "short",
              [Q(f"tapswitch_fdb_entries{{{sel}}}", legend(SWITCH, "entries")),
               Q(f"tapswitch_fdb_capacity{{{sel}}}", legend(SWITCH, "capacity"))],
              "MAC table entries and the table's capacity.", width=9),
        graph("FDB changes per second", "ops",
              [Q(rate(f"tapswitch_fdb_{event}_total", sel, SWITCH), legend(SWITCH, event))
               for event in FDB_EVENTS],
              "learned: new MAC; moved: MAC seen on another port; aged: not seen for the "
              "aging time; evicted: removed because the table was full.", width=9),
    ])


def health(sel: str) -> Row:
    return ("Health", [
        single("Ports down", "short",
               [Q(f"sum by ({SWITCH}) (tapswitch_port_up{{{sel}}} == bool 0)", legend(SWITCH))],
               "Ports whose TAP or remote interface (a VXLAN port: or its underlay) is down.", width=4,
               steps=((None, "green"), (1, "red"))),
        single("Workers down", "short",
               [Q(f"sum by ({SWITCH}) (tapswitch_worker_up{{{sel}}} == bool 0)", legend(SWITCH))],
               "Worker processes (one per queue) not running.", width=4,
               steps=((None, "green"), (1, "red"))),
        graph("Worker restarts", "short",
              [Q(since_last_point("tapswitch_worker_restarts_total", sel, f"{SWITCH}, queue"),
                 legend(f"{SWITCH}, queue"))],
              "Workers restarted by the supervisor, per queue. A bar is the restarts since the "
              "bar before it (one step of the graph): one restart is one bar of 1, and the "
              "legend's Total is the restarts in the time range.", width=8, bars=True),
        graph("Config reloads", "short",
              [Q(since_last_point("tapswitch_config_reloads_total", sel, f"{SWITCH}, result"),
                 legend(f"{SWITCH}, result"))],
              "Reloads (SIGHUP or tapswitch reload) by result: success or failure. A bar is the "
              "reloads since the bar before it (one step of the graph): one reload is one bar "
              "of 1, and the legend's Total is the reloads in the time range.", width=8, bars=True),
    ])


def control_process(sel: str) -> Row:
    return ("Control process", [
        single("Version", "none",
               [Q(of_the_switch("tapswitch_build_info", sel), "{{version}} {{instance}}")],
               "tapswitch version of the scrape targets.", width=4,
               text_mode=cm.BigValueTextMode.NAME),
        graph("CPU", "percentunit",
              [Q(of_the_switch(f"rate(process_cpu_seconds_total[{RATE}])", sel), "control {{instance}}"),
               Q(rate("tapswitch_worker_cpu_seconds_total", sel, f"{SWITCH}, queue"), "worker " + legend(f"{SWITCH}, queue"))],
              "CPU of the control process and of each queue's worker (the fast path).", width=10),
        graph("Resident memory", "bytes",
              [Q(of_the_switch("process_resident_memory_bytes", sel), "{{instance}}")],
              "Resident memory of the control process.", width=10),
    ])


def overview():
    sel = OVERVIEW_SEL
    return assemble(
        "tapswitch-overview", "tapswitch / Overview",
        "Traffic, drops, flooding, FDB and health of tapswitch switches, all ports.",
        [datasource_variable(), switch_variable(multi=True)],
        [traffic(sel, f"{SWITCH}, port"), drops_and_errors(sel, f"{SWITCH}, port"), flooding(sel),
         fdb(sel), health(sel), control_process(sel)])


# Per-port view: the selected ports of one switch, per port and per queue.

# One switch: matched exactly (Grafana inserts a single-value variable unescaped, so
# switch=~"br.0" would take in switch br10's ports too).
PORT_SEL = 'switch="$switch", port=~"$port"'
# One port of one scrape target: two hosts may each run the switch and name a port alike.
PORT = "instance, port"


def port_state(sel: str) -> Row:
    return ("Port", [
        state("Link state", [Q(f"tapswitch_port_up{{{sel}}}", legend(PORT))],
              "A port is down when its TAP or its remote interface (a VXLAN port: or its underlay) is down.",
              states={"0": ("down", "red"), "1": ("up", "green")}),
        graph("FDB entries on the port", "short",
              [Q(f"tapswitch_port_fdb_entries{{{sel}}}", legend(PORT))],
              "MAC addresses learned behind the port."),
        # Prometheus drops a label whose value is empty, and a table has no
        # column for a label no series carries: "-" stands for "not set".
        info_table("Port info", [Q(unset_as_dash(f"tapswitch_port_info{{{sel}}}", "speed", "remote"))],
                   "MAC, MTU, speed (Mbit/s) and remote interface of each port, and the scrape target (instance) "
                   "it is on; - where not set.",
                   hide=["Time", "Value", "__name__", "job"]),
    ])


def port_view():
    sel = PORT_SEL
    return assemble(
        "tapswitch-port", "tapswitch / Port",
        "One switch's ports: link state, FDB entries, info, and traffic, drops and "
        "errors per port and per queue (worker).",
        [datasource_variable(), switch_variable(multi=False), port_variable()],
        [port_state(sel), traffic(sel, PORT, "Traffic per port", " by port"),
         traffic(sel, f"{PORT}, queue", "Traffic per queue", " by queue"),
         drops_and_errors(sel, f"{PORT}, queue"),
         ("Flooding", [flooded(sel, f"{PORT}, queue", width=24)])])


DASHBOARDS = {
    "tapswitch-overview.json": overview,
    "tapswitch-port.json": port_view,
}


# --- Output -------------------------------------------------------------------

def render(model) -> str:
    return json.dumps(model, cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def stale(directory: Path) -> list[str]:
    """Names of the dashboards in `directory` that differ from the generator's."""
    return [name for name, text in render_all().items()
            if not (directory / name).is_file() or (directory / name).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the JSON in the output directory is not what "
                             "this generator produces")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.out)
        for name in names:
            print(f"{args.out / name}: stale, run python dashboards/generate.py", file=sys.stderr)
        return 1 if names else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (args.out / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

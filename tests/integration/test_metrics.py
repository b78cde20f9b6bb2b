"""The Prometheus exporter end to end: a running switch's /metrics, checked by count, by promtool, by Prometheus.

Each test runs its own switch with /metrics on a free port of 127.0.0.1.
Exact counts come from quiet namespaces (no IPv6, no addresses: the kernel
sends nothing by itself) and frames sent by tests/integration/sendframes.py.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from tests.fastpath_io import auto_backend
from tests.integration import helpers
from tests.integration.prom import free_port, prometheus  # noqa: F401 (prometheus is a fixture)
from tests.promql import DASHBOARDS, all_queries, rule_queries

SENDER = os.path.join(os.path.dirname(__file__), "sendframes.py")
FRAME = 60                      # bytes of a sendframes.py frame: 14 header + 46 payload
BROADCAST = "ff:ff:ff:ff:ff:ff"
MAC_A, MAC_B = "02:aa:00:00:00:01", "02:bb:00:00:00:01"

# `tapswitch ports --json` counter -> metric (DESIGN.md: metrics are contracts).
PORT_METRICS = {
    "rx_packets": "tapswitch_port_rx_packets_total",
    "rx_bytes": "tapswitch_port_rx_bytes_total",
    "rx_errors": "tapswitch_port_rx_errors_total",
    "rx_dropped": "tapswitch_port_rx_dropped_total",
    "rx_missed": "tapswitch_port_rx_missed_total",
    "tx_packets": "tapswitch_port_tx_packets_total",
    "tx_bytes": "tapswitch_port_tx_bytes_total",
    "tx_errors": "tapswitch_port_tx_errors_total",
    "tx_dropped": "tapswitch_port_tx_dropped_total",
    "flooded": "tapswitch_port_flooded_packets_total",
    "vlan_dropped": "tapswitch_port_vlan_dropped_total",
    "acl_dropped": "tapswitch_port_acl_dropped_total",
    "mac_limit_dropped": "tapswitch_port_mac_limit_dropped_total",
    "storm_dropped": "tapswitch_port_storm_dropped_total",
}

# A MAC address in any usual spelling: 02:aa:.., 02-aa-.., 02aa.00.., 02aa00000001.
MAC_LIKE = re.compile(r"(?i)(?:[0-9a-f]{2}[:-]){5}[0-9a-f]{2}|(?:[0-9a-f]{4}\.){2}[0-9a-f]{4}|\b[0-9a-f]{12}\b")


# --- Reading /metrics -----------------------------------------------------------

class Exporter:
    """The /metrics endpoint of one switch."""

    def __init__(self, listen: str):
        self.listen = listen
        self.url = f"http://{listen}/metrics"

    def get(self, accept: str | None = None) -> tuple[str, str]:
        """(Content-Type, body) of one scrape."""
        req = urllib.request.Request(self.url, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.headers.get("Content-Type", ""), r.read().decode()

    def samples(self) -> list:
        """Every sample of one scrape (text format), as prometheus_client parses it."""
        return [s for family in text_string_to_metric_families(self.get()[1]) for s in family.samples]

    def values(self, name: str, by: tuple[str, ...]) -> dict[tuple, float]:
        """Samples of `name` summed into one value per `by` label values."""
        out: dict[tuple, float] = {}
        for s in self.samples():
            if s.name == name:
                key = tuple(s.labels[label] for label in by)
                out[key] = out.get(key, 0) + s.value
        return out

    def port_counters(self) -> dict[str, dict[str, int]]:
        """port -> {rx_packets: .., ..., flooded: ..}, summed over the queue label."""
        out: dict[str, dict[str, int]] = {}
        samples = self.samples()
        for key, metric in PORT_METRICS.items():
            for s in samples:
                if s.name == metric:
                    port = out.setdefault(s.labels["port"], dict.fromkeys(PORT_METRICS, 0))
                    port[key] += int(s.value)
        return out

    def series(self) -> dict[tuple, float]:
        """(name, sorted labels) -> value, for every tapswitch_port_* counter sample."""
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for s in self.samples() if s.name in PORT_METRICS.values()}


def delta(after: dict, before: dict) -> dict[str, dict[str, int]]:
    return {port: {k: after[port][k] - before[port][k] for k in PORT_METRICS} for port in after}


def wait_until(what, predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll what() until predicate(value); return the value, or fail with the last one."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s; last value: {value}")
        time.sleep(interval)


def settled(exporter: Exporter, port: str, key: str, at_least: int) -> dict:
    """Port counters once port's `key` reached at_least, and a moment later (so extras would show)."""
    wait_until(exporter.port_counters, lambda c: c[port][key] >= at_least)
    time.sleep(0.3)
    return exporter.port_counters()


# --- Switches -------------------------------------------------------------------

def quiet_namespace(lab, suffix: str) -> str:
    """A namespace whose kernel sends nothing by itself (no IPv6, no addresses)."""
    ns = lab.netns(suffix, create=True)
    helpers.nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    return ns


def send(ns: str, src: str, dst: str, count: int) -> None:
    helpers.nsexec(ns, sys.executable, SENDER, "eth0", src, dst, count, timeout=60)


def quiet_switch(lab, n: int = 3, queues: int = 2, switch: dict | None = None, **port0):
    """A switch over n quiet namespaces, with `switch` settings added; returns (switch, exporter,
    namespaces, port names)."""
    nss = [quiet_namespace(lab, "abc"[i]) for i in range(n)]
    ports = [{"name": lab.name(f"p{i}"), "netns": ns, "ifname": "eth0"} for i, ns in enumerate(nss)]
    ports[0].update(port0)
    listen = f"127.0.0.1:{free_port()}"
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": queues, "metrics": {"listen": listen},
                                **(switch or {})},
                     "ports": ports})
    return sw, Exporter(listen), nss, [p["name"] for p in ports]


def container_switch(lab, n: int = 2, queues: int = 2):
    """A switch over n containers with addresses (198.18.0.i, fd00::i); returns (switch, exporter, cfg)."""
    ports = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0",
              "addresses": [f"198.18.0.{i + 1}/24", f"fd00::{i + 1}/64"]} for i in range(n)]
    listen = f"127.0.0.1:{free_port()}"
    cfg = {"switch": {"name": lab.name("sw"), "queues": queues, "metrics": {"listen": listen}}, "ports": ports}
    sw = lab.switch(cfg)
    return sw, Exporter(listen), cfg


def ping_loop(lab, ns: str, address: str, seconds: int = 60) -> subprocess.Popen:
    """Ping every 0.1 s in the background (stopped by the lab at the end of the test)."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-q", "-i", "0.1", "-w", str(seconds), address],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(p)
    return p


# --- Format ---------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (apt-get install prometheus)")
def test_metrics_pass_promtool_and_are_served_as_openmetrics_too(lab):
    sw, exporter, cfg = container_switch(lab)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.0.2", count=3)

    content_type, text = exporter.get()
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"promtool check metrics:\n{r.stdout}{r.stderr}"

    exported = {f.name for f in text_string_to_metric_families(text)}
    contract = {line.strip() for line in (DASHBOARDS / "METRICS.txt").read_text().splitlines() if line.strip()}
    # The parser names a counter family without _total; METRICS.txt names samples.
    sample_names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert contract - sample_names == set(), f"in METRICS.txt, not exported; exported families: {sorted(exported)}"

    content_type, om = exporter.get(accept="application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert content_type.startswith("application/openmetrics-text"), content_type
    assert om.endswith("# EOF\n")
    om_names = {s.name for f in openmetrics_families(om) for s in f.samples}   # raises on malformed input
    assert contract - om_names == set()


# --- Counting -------------------------------------------------------------------

def test_unicast_and_broadcast_frames_are_counted_exactly(lab):
    sw, exporter, nss, (a, b, c) = quiet_switch(lab, 3, queues=2)
    # Every port counter has one series per queue.
    queues = exporter.values("tapswitch_port_rx_packets_total", ("port", "queue"))
    assert set(queues) == {(p, q) for p in (a, b, c) for q in ("0", "1")}

    # MAC_B is learned behind port b (one broadcast frame, flooded to a and c).
    send(nss[1], MAC_B, BROADCAST, 1)
    wait_until(lambda: {e["mac"]: e["port"] for e in sw.cli_json("fdb")}, lambda fdb: fdb.get(MAC_B) == b)
    before = settled(exporter, c, "tx_packets", 1)

    n = 500
    send(nss[0], MAC_A, MAC_B, n)
    d = delta(settled(exporter, b, "tx_packets", before[b]["tx_packets"] + n), before)
    assert d[a]["rx_packets"] == n and d[a]["rx_bytes"] == n * FRAME, d[a]
    assert d[b]["tx_packets"] == n and d[b]["tx_bytes"] == n * FRAME, d[b]
    assert d[a]["flooded"] == 0, d[a]
    assert d[c]["tx_packets"] == 0 and d[a]["tx_packets"] == 0, d
    assert all(d[p][k] == 0 for p in (b, c) for k in ("rx_packets", "rx_bytes")), d
    assert all(d[p][k] == 0 for p in (a, b, c) for k in ("rx_errors", "rx_dropped", "tx_errors", "tx_dropped")), d

    before = exporter.port_counters()
    m = 300
    send(nss[0], MAC_A, BROADCAST, m)
    d = delta(settled(exporter, c, "tx_packets", before[c]["tx_packets"] + m), before)
    assert d[a]["flooded"] == m and d[a]["rx_packets"] == m and d[a]["rx_bytes"] == m * FRAME, d[a]
    for p in (b, c):
        assert d[p]["tx_packets"] == m and d[p]["tx_bytes"] == m * FRAME and d[p]["flooded"] == 0, (p, d[p])
    assert d[a]["tx_packets"] == 0, d[a]


def test_ports_json_shows_the_same_numbers_as_metrics(lab):
    sw, exporter, nss, (a, b, c) = quiet_switch(lab, 3, queues=2, mac="02:00:00:00:00:0a", speed=10000, mtu=1400)
    send(nss[1], MAC_B, BROADCAST, 7)            # flooded to a and c; MAC_B learned on b
    wait_until(lambda: {e["mac"] for e in sw.cli_json("fdb")}, lambda macs: MAC_B in macs)
    send(nss[0], MAC_A, MAC_B, 11)               # unicast a -> b
    settled(exporter, b, "tx_packets", 11)

    ports = sw.cli_json("ports")
    metrics = exporter.port_counters()
    assert [p["name"] for p in ports] == [a, b, c]
    for p in ports:
        assert p["counters"] == metrics[p["name"]], p["name"]
    assert metrics[b]["tx_packets"] == 11 and metrics[a]["tx_packets"] == 7     # not a match of zeros

    # Per queue too (rx_missed is the kernel's, per port only).
    per_queue = {key: exporter.values(metric, ("port", "queue")) for key, metric in PORT_METRICS.items()
                 if key != "rx_missed"}
    for p in ports:
        assert len(p["queue_counters"]) == 2
        for q, counters in enumerate(p["queue_counters"]):
            assert counters == {key: int(v[(p["name"], str(q))]) for key, v in per_queue.items()}, (p["name"], q)
    assert sum(q["rx_packets"] for q in ports[0]["queue_counters"]) == 11

    up = exporter.values("tapswitch_port_up", ("port",))
    info = {s.labels["port"]: s.labels for s in exporter.samples() if s.name == "tapswitch_port_info"}
    fdb = exporter.values("tapswitch_port_fdb_entries", ("port",))
    fdb_json = sw.cli_json("fdb")
    for p in ports:
        name = p["name"]
        assert up[(name,)] == (1 if p["state"] == "up" else 0)
        assert info[name]["mac"] == p["mac"] and info[name]["mtu"] == str(p["mtu"])
        assert info[name]["speed"] == ("" if p["speed"] is None else str(p["speed"]))
        assert info[name]["remote"] == (p["remote"] or "")
        assert fdb[(name,)] == sum(1 for e in fdb_json if e["port"] == name)
    assert info[a]["mac"] == "02:00:00:00:00:0a" and info[a]["speed"] == "10000" and info[a]["mtu"] == "1400"


# --- A real Prometheus ----------------------------------------------------------

def test_every_dashboard_and_alert_query_returns_data_from_a_real_prometheus(lab, prometheus):
    sw, exporter, cfg = container_switch(lab, 2, queues=2)
    a_ns, b_ns = (p["netns"] for p in cfg["ports"])
    ping_loop(lab, a_ns, "198.18.0.2")
    server = subprocess.Popen(["ip", "netns", "exec", b_ns, "iperf3", "-s", "-1", "-B", "198.18.0.2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(server)
    prom = prometheus([exporter.listen], rule_files=[str(DASHBOARDS / "alerts.yml")])
    helpers.wait_for("the iperf3 server listening", lambda: helpers.tcp_listening(b_ns, helpers.IPERF3_PORT), within=10)
    client = subprocess.Popen(["ip", "netns", "exec", a_ns, "iperf3", "-c", "198.18.0.2", "-t", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(client)

    switch, port = cfg["switch"]["name"], cfg["ports"][0]["name"]
    # Five scrapes a second apart: every [10s] window holds at least two points.
    prom.wait_for_scrapes('up{job="tapswitch"}', 5)
    assert prom.targets_up()

    queries = all_queries(switch=switch, port=port, rate_interval="10s", interval="1s")
    empty = []
    for q in queries:
        try:
            result = prom.query(q.signal)
        except AssertionError as e:
            empty.append(f"{q.source}: {q.name}: {q.signal!r}: {e}")
            continue
        if not result:
            empty.append(f"{q.source}: {q.name}: {q.signal!r}")
    assert empty == [], f"{len(empty)} of {len(queries)} queries returned nothing:\n" + "\n".join(empty)

    # The ports have no speed or remote, and Prometheus drops empty labels; the
    # "Port info" table still has those columns, with "-".
    [info] = [q for q in queries if q.name == "Port info [A]"]
    rows = [r["metric"] for r in prom.query(info.signal)]
    assert [(r["port"], r["speed"], r["remote"], r["mtu"]) for r in rows] == [(port, "-", "-", "1500")], rows

    # The traffic is in the graphs, not just zeros.
    rx = prom.query(f'sum by (port) (rate(tapswitch_port_rx_packets_total{{switch="{switch}"}}[10s])) > 0')
    assert {r["metric"]["port"] for r in rx} == {p["name"] for p in cfg["ports"]}, rx
    assert client.wait(timeout=30) == 0, "iperf3 failed"

    # Prometheus loaded every alert rule and evaluates it without error.
    def rules():
        return [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    evaluated = wait_until(rules, lambda rs: rs and all(r["health"] != "unknown" for r in rs))
    assert sorted(r["name"] for r in evaluated) == sorted(q.name for q in rule_queries())
    assert [(r["name"], r["health"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []


def test_one_worker_restart_and_one_reload_are_one_bar_each_on_a_real_prometheus(lab, prometheus):
    """The overview's bars of worker restarts and reloads, as Grafana asks Prometheus for them
    (a range query at the panel's step, $__interval, from a start aligned to it): one kill of
    queue 0's worker is one bar of 1 in queue 0's series and nothing in queue 1's, one SIGHUP
    one bar of 1 in the successes, at every step. increase() over $__rate_interval showed
    each as 3 bars of 1.28 at a 1 s step."""
    sw, exporter, _, _ = quiet_switch(lab, 1, queues=2)
    prom = prometheus([exporter.listen])
    prom.wait_for_scrapes('up{job="tapswitch"}', 6)    # a value 5 s (the longest step) before
    start = time.time()
    os.kill(worker_pid(sw, 0), signal.SIGKILL)
    wait_until(lambda: exporter.values("tapswitch_worker_restarts_total", ("queue",)), lambda r: r[("0",)] == 1)
    sw.proc.send_signal(signal.SIGHUP)
    seen = 'tapswitch_worker_restarts_total{queue="0"} == 1 and on (instance) tapswitch_config_reloads_total{result="success"} == 1'
    wait_until(lambda: prom.query(seen), bool, timeout=20)
    time.sleep(6)                                  # and more points after them, at each step
    end = time.time()

    switch = sw.cfg["switch"]["name"]
    for step in (1, 5):
        # Grafana's $__rate_interval at a 1 s scrape: max(step + 1 s, 4 s)
        queries = {q.name: q.expr for q in all_queries(switch=switch, port="-", interval=f"{step}s",
                                                       rate_interval=f"{max(step + 1, 4)}s")}
        bars = {}
        for panel, label in (("Worker restarts [A]", "queue"), ("Config reloads [A]", "result")):
            for s in prom.query_range(queries[panel], start=step * (start // step), end=end, step=step):
                assert s["metric"]["instance"] == exporter.listen, s["metric"]
                bars[s["metric"][label]] = sorted(float(v) for _, v in s["values"] if float(v))
        assert bars == {"0": [1.0], "1": [], "success": [1.0], "failure": []}, f"step {step}s: {bars}"


# --- Labels ---------------------------------------------------------------------

def test_no_mac_address_is_a_label_value_except_port_info_mac(lab):
    sw, exporter, cfg = container_switch(lab, 3, queues=2)
    for j in (2, 3):
        assert helpers.ping(cfg["ports"][0]["netns"], f"198.18.0.{j}")
        assert helpers.ping(cfg["ports"][0]["netns"], f"fd00::{j}")
    fdb = sw.cli_json("fdb")
    assert len(fdb) >= 3
    known = {e["mac"].replace(":", "") for e in fdb} | {p["mac"].replace(":", "") for p in sw.cli_json("ports")}

    offenders = []
    port_macs = {}
    for s in exporter.samples():
        for label, value in s.labels.items():
            if s.name == "tapswitch_port_info" and label == "mac":
                port_macs[s.labels["port"]] = value
                continue
            bare = re.sub(r"[:.-]", "", value.lower())
            if MAC_LIKE.search(value) or any(mac in bare for mac in known):
                offenders.append(f"{s.name}{{{label}={value!r}}}")
    assert offenders == []
    # The one allowed place holds each port's own MAC, as `tapswitch ports` shows it.
    assert port_macs == {p["name"]: p["mac"] for p in sw.cli_json("ports")}


# --- Ports and workers ----------------------------------------------------------

def worker_pid(sw, queue: int) -> int:
    for pid in sw.worker_pids():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if argv[argv.index(b"--queue") + 1] == str(queue).encode():
            return pid
    raise AssertionError(f"no worker for queue {queue} among {sw.worker_pids()}")


def test_port_and_worker_state_and_a_worker_restart(lab):
    sw, exporter, cfg = container_switch(lab, 2, queues=2)
    names = [p["name"] for p in cfg["ports"]]
    assert exporter.values("tapswitch_port_up", ("port",)) == {(n,): 1 for n in names}
    assert exporter.values("tapswitch_worker_up", ("queue",)) == {("0",): 1, ("1",): 1}
    assert exporter.values("tapswitch_worker_restarts_total", ("queue",)) == {("0",): 0, ("1",): 0}
    backends = exporter.values("tapswitch_worker_info", ("queue", "io"))
    assert sorted(q for q, _ in backends) == ["0", "1"] and set(backends.values()) == {1}
    forced = os.environ.get("TAPSWITCH_IO") or "auto"
    if forced == "auto":
        assert {io for _, io in backends} == {auto_backend()}
    else:       # a forced io_uring may be refused (read/write), or read in bursts before 6.7
        allowed = {forced, "readwrite"} | ({"uring-burst"} if forced == "uring" else set())
        assert {io for _, io in backends} <= allowed

    ping_loop(lab, cfg["ports"][0]["netns"], "198.18.0.2")
    ping_loop(lab, cfg["ports"][1]["netns"], "fd00::1")
    time.sleep(0.5)
    history = [exporter.series()]
    os.kill(worker_pid(sw, 0), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        history.append(exporter.series())
        restarts = exporter.values("tapswitch_worker_restarts_total", ("queue",))
        if restarts.get(("0",)) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert restarts == {("0",): 1, ("1",): 0}
    assert exporter.values("tapswitch_worker_up", ("queue",)) == {("0",): 1, ("1",): 1}
    for _ in range(10):                     # traffic flows through the new worker
        time.sleep(0.1)
        history.append(exporter.series())

    backwards = [(key, earlier[key], later.get(key))
                 for earlier, later in zip(history, history[1:]) for key in earlier
                 if later.get(key, -1) < earlier[key]]
    assert backwards == []
    rx = {n: sum(v for (name, labels), v in history[-1].items()
                 if name == "tapswitch_port_rx_packets_total" and ("port", n) in labels) for n in names}
    rx_before = {n: sum(v for (name, labels), v in history[0].items()
                        if name == "tapswitch_port_rx_packets_total" and ("port", n) in labels) for n in names}
    assert all(rx[n] > rx_before[n] for n in names), (rx_before, rx)
    assert exporter.values("tapswitch_port_up", ("port",)) == {(n,): 1 for n in names}


@pytest.mark.parametrize("queue_len, sent, missed", [(64, 200, 200 - 64), (None, 2000, 0)])
def test_a_full_queue_loses_frames_in_the_kernel_and_counts_them_as_rx_missed(lab, queue_len, sent, missed):
    """switch.queue_len frames wait in a port's queue while its worker is stopped; what the host
    sends beyond them is dropped by the kernel and shown as rx_missed. The default (4096) holds
    2000 frames that the kernel's own default (1000) would lose half of."""
    sw, exporter, nss, (a, b) = quiet_switch(lab, 2, queues=1,
                                             switch={"queue_len": queue_len} if queue_len else None)
    for ns in nss:
        assert f" qlen {queue_len or 4096}" in helpers.nsexec(ns, "ip", "-o", "link", "show", "eth0").stdout
    worker = worker_pid(sw, 0)
    os.kill(worker, signal.SIGSTOP)
    try:
        send(nss[0], MAC_A, MAC_B, sent)
        stopped = exporter.port_counters()      # the worker read nothing; the kernel counted the rest
        assert (stopped[a]["rx_packets"], stopped[a]["rx_missed"]) == (0, missed), stopped[a]
    finally:
        os.kill(worker, signal.SIGCONT)
    d = settled(exporter, b, "tx_packets", sent - missed)
    assert (d[a]["rx_packets"], d[a]["rx_missed"], d[b]["tx_packets"]) == (sent - missed, missed, sent - missed), d
    assert d[b]["rx_missed"] == 0 and sw.cli_json("ports")[0]["counters"]["rx_missed"] == missed

    # The TAP goes: its count stays, in /metrics and in `tapswitch ports` (a counter does not go back).
    helpers.nsexec(nss[0], "ip", "link", "del", "eth0")
    wait_until(lambda: exporter.values("tapswitch_port_up", ("port",)), lambda up: up[(a,)] == 0)
    assert exporter.port_counters()[a]["rx_missed"] == missed
    assert sw.cli_json("ports")[0]["counters"]["rx_missed"] == missed


def test_rx_missed_kept_for_a_gone_tap_is_the_latest_any_reader_saw(lab, monkeypatch):
    """A scrape (the metrics thread) and `tapswitch ports` (the control socket's) each read a port's
    rx_missed from the kernel and keep it for when its TAP goes. One that read first but kept last
    put an older, smaller count there: once the TAP went, the port showed that, less than the other
    had shown already (a counter that went back)."""
    import threading

    from tapswitch import linkmon, tap
    from tapswitch.config import loads
    from tapswitch.ports import Port
    from tapswitch.rtnl import Rtnl
    from tapswitch.switch import Switch

    ns = quiet_namespace(lab, "a")
    name = lab.name("p0")
    lab.links.append(name)
    real, read, go = linkmon.tx_dropped, threading.Event(), threading.Event()
    fds = tap.open_queues(name, 1)      # never read: what its host sends past 16 frames is dropped
    try:
        helpers.sh("ip", "link", "set", name, "netns", ns)
        helpers.nsexec(ns, "ip", "link", "set", name, "txqueuelen", "16", "up")
        ifindex = json.loads(helpers.nsexec(ns, "ip", "-j", "link", "show", name).stdout)[0]["ifindex"]
        with Rtnl() as here:
            nsid = linkmon.nsid_of(f"/run/netns/{ns}", here)
        cfg = loads(f"switch: {{name: {lab.name('sw')}}}\nports: [{{name: {name}}}]\n")
        port = Port(index=0, cfg=cfg.ports[0], fds=fds, mac="02:00:00:00:00:01", nspath=f"/run/netns/{ns}",
                    ifindex=ifindex, nsid=nsid)
        sw = Switch(cfg)
        helpers.nsexec(ns, sys.executable, SENDER, name, MAC_A, MAC_B, 20, timeout=60)
        assert sw.rx_missed([port]) == {0: 4}

        # The scrape reads the kernel's count, and is held before it keeps it.
        def held(links, *args, **kw):
            counts = real(links, *args, **kw)
            if threading.current_thread() is not threading.main_thread():
                read.set()
                go.wait(10)
            return counts
        monkeypatch.setattr(linkmon, "tx_dropped", held)
        scrape = threading.Thread(target=sw.rx_missed, args=([port],))
        scrape.start()
        assert read.wait(10)
        helpers.nsexec(ns, sys.executable, SENDER, name, MAC_A, MAC_B, 10, timeout=60)
        assert sw.rx_missed([port]) == {0: 14}      # `tapswitch ports` shows 14
        go.set()
        scrape.join(10)
    finally:
        go.set()
        for fd in fds:
            os.close(fd)                            # the TAP goes
    helpers.wait_for("the TAP gone", lambda: not helpers.link_exists(name, ns))
    assert sw.rx_missed([port]) == {0: 14}


# --- Reloads --------------------------------------------------------------------

def test_config_reloads_count_success_and_failure_from_zero(lab):
    sw, exporter, nss, _ = quiet_switch(lab, 1, queues=1)
    reloads = lambda: exporter.values("tapswitch_config_reloads_total", ("result",))  # noqa: E731
    assert reloads() == {("success",): 0, ("failure",): 0}

    sw.proc.send_signal(signal.SIGHUP)           # the same config: a successful reload
    assert wait_until(reloads, lambda r: r[("success",)] == 1) == {("success",): 1, ("failure",): 0}

    with open(sw.config_path) as f:
        good = f.read()
    with open(sw.config_path, "w") as f:
        f.write(good + "\nbogus_key: 1\n")       # unknown keys are errors
    sw.proc.send_signal(signal.SIGHUP)
    assert wait_until(reloads, lambda r: r[("failure",)] == 1) == {("success",): 1, ("failure",): 1}


def test_a_port_a_reload_could_not_make_again_stays_down_in_port_up(lab):
    """A container's port: the container ends, the port is down (TapswitchPortDown); a reload
    cannot make it again (its namespace is gone). Its tapswitch_port_up went with it, and the
    alert resolved as if it were back; it is 0 until a reload makes it, or one removes it."""
    container = subprocess.Popen(["unshare", "-n", "sleep", "600"], start_new_session=True)
    lab.procs.append(container)
    sw, exporter, nss, names = quiet_switch(lab, 1, queues=1)
    with open(sw.config_path) as f:
        cfg = yaml.safe_load(f)
    held = {"name": lab.name("pk"), "netns": f"pid:{container.pid}", "ifname": "eth0"}
    lab.links.append(held["name"])
    up = lambda: exporter.values("tapswitch_port_up", ("port",))  # noqa: E731

    def reload(ports):
        cfg["ports"] = ports
        with open(sw.config_path, "w") as f:
            yaml.safe_dump(cfg, f)
        return helpers.sh(sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket, check=False)

    assert reload(cfg["ports"] + [held]).returncode == 0
    assert wait_until(up, lambda u: u.get((held["name"],)) == 1)
    container.kill()
    container.wait()
    assert wait_until(up, lambda u: u[(held["name"],)] == 0)       # port.gone
    r = reload(cfg["ports"])                                        # the same config: made again, or not
    assert r.returncode == 1 and f"failed {held['name']}" in r.stdout, r
    time.sleep(0.3)
    assert up() == {(names[0],): 1, (held["name"],): 0}
    assert reload([p for p in cfg["ports"] if p["name"] != held["name"]]).returncode == 0
    assert up() == {(names[0],): 1}


def test_a_mirror_counts_on_when_a_reload_adds_one_before_it(lab):
    """Mirrors take slots in the order of the list: one added before another moves it to the next
    slot, where its counters fell to 0 (Prometheus took it for a restart of the switch)."""
    sw, exporter, nss, names = quiet_switch(lab, 3, queues=1)
    with open(sw.config_path) as f:
        cfg = yaml.safe_load(f)
    tail = {"name": "mtail", "from": [names[0]], "to": names[2], "direction": "rx"}
    copies = lambda: exporter.values("tapswitch_mirror_packets_total", ("mirror",))  # noqa: E731

    def reload(mirrors):
        cfg["mirrors"] = mirrors
        with open(sw.config_path, "w") as f:
            yaml.safe_dump(cfg, f)
        assert sw.cli("reload").stdout.strip() == "reloaded: no port changed"

    reload([tail])
    send(nss[0], MAC_A, BROADCAST, 5)
    wait_until(copies, lambda c: c.get(("mtail",)) == 5)
    reload([{"name": "mhead", "from": [names[1]], "to": names[2], "direction": "rx"}, tail])
    assert copies() == {("mhead",): 0, ("mtail",): 5}
    send(nss[0], MAC_A, BROADCAST, 2)
    assert wait_until(copies, lambda c: c[("mtail",)] >= 7) == {("mhead",): 0, ("mtail",): 7}
    reload([tail])                                # back to slot 0
    assert copies() == {("mtail",): 7}


SLOTS_USED_UP = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "slots_used_up.py"))


def test_a_port_in_a_removed_ports_slot_counts_its_acl_hits_from_zero(lab):
    """Once 256 ports have come and gone, a port a reload adds takes a slot a removed port left.
    Its counters start at 0, its ACL hits too, also when its rules are the removed port's: they
    started at that port's count, a new series that had matched nothing showing 3 hits."""
    nss = [quiet_namespace(lab, s) for s in "abc"]
    acl = [{"match": {"ip_proto": "icmp"}, "action": "drop"}]
    ports = [{"name": lab.name("pa"), "netns": nss[0], "ifname": "eth0", "addresses": ["198.18.21.1/24"], "acl": acl},
             {"name": lab.name("pb"), "netns": nss[1], "ifname": "eth0", "addresses": ["198.18.21.2/24"]}]
    listen = f"127.0.0.1:{free_port()}"
    cfg = {"switch": {"name": lab.name("sw"), "queues": 2, "metrics": {"listen": listen}}, "ports": ports}
    sw = lab.switch(cfg, wrapper=SLOTS_USED_UP)
    exporter = Exporter(listen)
    hits = lambda: exporter.values("tapswitch_acl_hits_total", ("port", "rule"))  # noqa: E731
    assert not helpers.ping(nss[0], "198.18.21.2", count=3)
    assert wait_until(hits, lambda h: h.get((ports[0]["name"], "0"), 0) >= 3)

    new = {"name": lab.name("pc"), "netns": nss[2], "ifname": "eth0", "addresses": ["198.18.21.3/24"], "acl": acl}
    lab.links.append(new["name"])
    cfg["ports"] = [ports[1], new]
    with open(sw.config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    assert sw.cli("reload").stdout.strip() == f"reloaded: added {new['name']}, removed {ports[0]['name']}"
    added = sw.events("port.added")[-1]
    assert added["port"] == new["name"] and added["index"] == 0, added     # the removed port's slot
    time.sleep(0.3)
    assert hits() == {(new["name"], "0"): 0}
    assert exporter.port_counters()[new["name"]]["rx_packets"] == 0
    assert not helpers.ping(nss[2], "198.18.21.2", count=1)
    assert wait_until(hits, lambda h: h[new["name"], "0"] >= 1) == {(new["name"], "0"): 1}


def test_metrics_listen_on_a_scoped_ipv6_link_local_address(lab):
    """[fe80::..%dev]:port binds with dev's scope id (the kernel refuses a link-local bind
    without one: the switch exited 1, "Invalid argument")."""
    ns = lab.netns("m", create=True)
    helpers.nsexec(ns, "ip", "link", "add", "tsmet", "type", "veth", "peer", "name", "tsmet1")
    for dev in ("tsmet", "tsmet1"):
        helpers.nsexec(ns, "ip", "link", "set", dev, "up")
    helpers.wait_for("tsmet's link-local address", lambda: helpers.ipv6_settled(ns, "tsmet"))
    (address,) = (a["local"] for a in json.loads(helpers.nsexec(ns, "ip", "-j", "-6", "addr", "show",
                                                                  "dev", "tsmet", "scope", "link").stdout)[0]["addr_info"])
    listen = f"[{address}%tsmet]:9417"
    sw = lab.switch({"switch": {"name": lab.name("sw"), "metrics": {"listen": listen}},
                     "ports": [{"name": lab.name("p0")}]}, netns=ns)
    assert [e["address"] for e in sw.events("metrics.listening")] == [listen]
    r = helpers.nsexec(ns, "curl", "-sSg", "--max-time", "5", f"http://[{address}%25tsmet]:9417/metrics")
    assert "tapswitch_build_info" in r.stdout


# --- Stopping -------------------------------------------------------------------

SCRAPED_WHILE_STOPPING = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "scraped_while_stopping.py"))


@pytest.mark.parametrize("at", ["ports_closed", "memory_closed"])
def test_a_scrape_served_while_the_switch_stops_is_refused_saying_so(lab, monkeypatch, at):
    """A scrape that came just before a SIGTERM, its thread run once the stop had begun, was
    answered from a switch half undone: 200, and no series of any port or worker (the ports
    closed meanwhile), which Prometheus took for a switch that runs without them, up; or, once
    the stop had closed the shared memory to readers, a 500 and a traceback in the log. It is
    told 503, the switch is stopping, as the control socket's requests are."""
    import threading

    monkeypatch.setenv("TAPSWITCH_TEST_SCRAPE_AT", at)
    ports = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0"} for i in range(2)]
    listen = f"127.0.0.1:{free_port()}"
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 2, "metrics": {"listen": listen}}, "ports": ports},
                    wrapper=SCRAPED_WHILE_STOPPING)
    answer = {}

    def scrape():
        try:
            with urllib.request.urlopen(Exporter(listen).url, timeout=30) as r:
                answer.update(status=r.status, body=r.read().decode())
        except urllib.error.HTTPError as e:
            answer.update(status=e.code, body=e.read().decode())
        except OSError as e:
            answer.update(status=None, body=repr(e))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        helpers.wait_for("the scrape held", lambda: sw.events("test.scrape_held"), within=30)
        assert sw.stop() == 0
    finally:
        scraper.join(60)
    served = sorted({s.name for f in text_string_to_metric_families(answer["body"]) for s in f.samples
                     if s.name.startswith(("tapswitch_port_", "tapswitch_worker_"))}) if answer["status"] == 200 else []
    assert (answer["status"], answer["body"], served) == (503, "the switch is stopping\n", []), answer
    assert "Traceback" not in sw.log()


# --- Start failures -------------------------------------------------------------

def test_metrics_address_in_use_exits_1_naming_it_and_leaves_nothing(lab):
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        ports = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0",
                  "addresses": [f"198.18.0.{i + 1}/24"]} for i in range(2)]
        sw = lab.switch({"switch": {"name": lab.name("sw"), "metrics": {"listen": listen}}, "ports": ports},
                        start=False)
        r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                           capture_output=True, text=True, timeout=30)
    finally:
        taken.close()
    assert r.returncode == 1, r.stderr
    reason = [line for line in r.stderr.splitlines() if line.startswith("tapswitch:")]
    assert len(reason) == 1 and listen in reason[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not any(helpers.link_exists(p["name"]) for p in ports)
    assert helpers.netns_list() & {p["netns"] for p in ports} == set()
    assert not os.path.exists(sw.socket)

"""Metrics: every tapswitch_* metric, read from shared memory at scrape time.

All metrics are declared here. Per-packet counting happens in the fast path;
this collector only sums the (worker, port) slots when Prometheus scrapes.
A MAC address is never a label (a port's own MAC in port_info is config).
"""

import socket
import socketserver
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import tapswitch
from tapswitch.control import AcceptWaits, ControlError

log = structlog.get_logger("tapswitch.metrics")

# Any local user may connect (the default address is 127.0.0.1): a connection costs the
# control process a thread and a descriptor, so what one may hold is bounded.
SCRAPE_TIMEOUT = 10.0   # seconds a client has to send its request, and to take each part of the answer
MAX_SCRAPES = 16        # connections served at once; one more is closed at once (a scraper tries again)
BUSY_LOG_INTERVAL = 60.0

# fast path counter -> (metric name without tapswitch_ and _total, help)
PORT_COUNTERS = {
    "rx_packets": ("port_rx_packets", "Well-formed frames received from the port (those then dropped count in rx_dropped too)."),
    "rx_bytes": ("port_rx_bytes", "Bytes of the frames received from the port."),
    "rx_errors": ("port_rx_errors", "Malformed frames received (runts, bad virtio-net headers, broken 802.1Q tags, bad source MACs), and one each time a queue's read failed."),
    "rx_dropped": ("port_rx_dropped", "Well-formed frames received but not forwarded."),
    "tx_packets": ("port_tx_packets", "Frames sent to the port."),
    "tx_bytes": ("port_tx_bytes", "Bytes of the frames sent to the port."),
    "tx_errors": ("port_tx_errors", "Frames not sent: over the port's MTU, or the write failed."),
    "tx_dropped": ("port_tx_dropped", "Frames not sent: the kernel refused the write rather than wait (the TAP's send buffer was full)."),
    "flooded": ("port_flooded_packets", "Frames received on the port that were flooded (to one port or more; to none: rx_dropped)."),
    # Why frames were dropped on receive (each is counted in rx_dropped too).
    "vlan_dropped": ("port_vlan_dropped", "Frames dropped for a VLAN the port is not in."),
    "acl_dropped": ("port_acl_dropped", "Frames dropped by the port's ACL."),
    "mac_limit_dropped": ("port_mac_limit_dropped", "Frames dropped: a new source MAC over the port's mac_limit."),
    "storm_dropped": ("port_storm_dropped", "Broadcast, multicast or unknown unicast frames over storm control's rate."),
}

MIRROR_COUNTERS = {
    "packets": "Copies sent to the mirror's monitor port.",
    "bytes": "Bytes of the copies sent to the mirror's monitor port.",
    "dropped": "Copies not sent (the monitor port is down, the copy is over its MTU, or the kernel refused the write).",
}

FDB_COUNTERS = {
    "learned": "MAC table entries learned.",
    "moved": "MAC table entries that moved to another port.",
    "aged": "MAC table entries removed by aging.",
    "evicted": "MAC table entries evicted because their bucket was full.",
}


def _family(kind, name: str, doc: str, labels: list[str], rows) -> object:
    """A metric family of `kind` with one sample per (label values, value) row."""
    family = kind(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


class SwitchCollector:
    """Reads one running switch's counters and state at scrape time."""

    def __init__(self, switch):
        self.switch = switch

    def collect(self):
        """Refused (ControlError, served as 503) once the switch stops. A scrape that came just
        before, its thread run once the stop had begun, was answered from a switch half undone:
        no series of any port or worker (closed meanwhile), which Prometheus took for a switch
        running without them; or, the memory closed to readers, a 500 and a traceback. Lost race,
        stated: one let in as the stop begins answers with what it read, as it was then."""
        sw = self.switch
        with sw.shared_readers.reading():     # the stop waits for it before it unmaps the memory
            # Read before asking: the stop says so before it replaces them.
            ports, sup = sw.ports, sw.supervisor
            if sw.stopping or sw.undoing:
                raise ControlError("the switch is stopping")
            yield from self._collect(ports, sup)

    def _collect(self, ports, sup):
        """`ports`: one list for the whole scrape (a reload may swap it meanwhile); `sup`: the
        supervisor, read once (the stop sets it to None once the workers are stopped)."""
        sw = self.switch
        shared, name = sw.shared, sw.name
        per_queue = [(port, q, shared.queue_counters(port.index, q))
                     for port in ports for q in range(sw.queues)]
        for key, (metric, doc) in PORT_COUNTERS.items():
            yield _family(CounterMetricFamily, f"tapswitch_{metric}", doc, ["switch", "port", "queue"],
                          (([name, port.name, str(q)], counts[key]) for port, q, counts in per_queue))
        missed = sw.rx_missed(ports)
        yield _family(CounterMetricFamily, "tapswitch_port_rx_missed",
                      "Frames the port's host sent that found the port's queue full (its worker was behind).",
                      ["switch", "port"], (([name, p.name], missed[p.index]) for p in ports))
        # A port of the config that a reload could not make is down, not gone: its alert holds
        # (a container's port, gone with it, then not made again by a reload, was let go).
        running = {p.name for p in ports}
        unmade = [n for n in sw.unmade if n not in running]     # one a reload under way has made
        yield _family(GaugeMetricFamily, "tapswitch_port_up",
                      "1 if the port's link is up, else 0 (0 too for a port a reload could not make).",
                      ["switch", "port"],
                      [([name, p.name], int(p.up)) for p in ports] + [([name, n], 0) for n in unmade])
        yield _family(GaugeMetricFamily, "tapswitch_port_info", "The port's settings; always 1.",
                      ["switch", "port", "mac", "mtu", "speed", "remote"],
                      (([name, p.name, p.mac, str(p.effective_mtu), str(p.cfg.speed or ""), p.cfg.remote or ""], 1)
                       for p in ports))
        yield _family(GaugeMetricFamily, "tapswitch_port_fdb_entries", "MAC table entries on the port.",
                      ["switch", "port"], (([name, p.name], shared.port_fdb_entries(p.index)) for p in ports))
        yield _family(GaugeMetricFamily, "tapswitch_vxlan_remotes",
                      "Remote hosts a VXLAN port replicates broadcast, multicast and unknown unicast to.", ["switch", "port"],
                      # Read once: port.close() on the control thread sets it to None meanwhile.
                      (([name, p.name], len(t.remotes)) for p in ports if (t := p.tunnel) is not None))
        # By the rules the workers match, not p.cfg's: a reload sets that before it publishes them.
        yield _family(CounterMetricFamily, "tapswitch_acl_hits", "Frames matched by each ACL rule of a port.",
                      ["switch", "port", "rule", "action"],
                      (([name, p.name, str(r), action], hits)
                       for p in ports for r, (action, hits) in enumerate(shared.acl_rule_hits(p.index))))
        mirrors = shared.mirrors()     # by the settings the workers count by, not sw.cfg: a reload
        for key, doc in MIRROR_COUNTERS.items():    # swaps that later, and may move mirrors' slots
            yield _family(CounterMetricFamily, f"tapswitch_mirror_{key}", doc, ["switch", "mirror"],
                          (([name, m], counts[key]) for m, counts in mirrors))
        yield _family(GaugeMetricFamily, "tapswitch_fdb_entries", "MAC table entries.",
                      ["switch"], [([name], shared.fdb_entries())])
        yield _family(GaugeMetricFamily, "tapswitch_fdb_capacity",
                      "MAC table slots: mac_table.size and a quarter more, rounded up to whole buckets of 8.", ["switch"],
                      [([name], shared.fdb_capacity)])
        stats = shared.fdb_stats()
        for key, doc in FDB_COUNTERS.items():
            yield _family(CounterMetricFamily, f"tapswitch_fdb_{key}", doc, ["switch"], [([name], stats[key])])
        workers = sup.workers if sup is not None else []
        yield _family(GaugeMetricFamily, "tapswitch_worker_up", "1 if the worker process of the queue runs.",
                      ["switch", "queue"], (([name, str(w.queue)], int(sup.alive(w))) for w in workers))
        yield _family(GaugeMetricFamily, "tapswitch_worker_info",
                      "The queue's worker: the I/O backend its fast path runs (uring, uring-burst or readwrite).",
                      ["switch", "queue", "io"],
                      (([name, str(w.queue), w.backend], 1) for w in workers if w.backend))
        yield _family(CounterMetricFamily, "tapswitch_worker_restarts", "Worker processes restarted.",
                      ["switch", "queue"], (([name, str(w.queue)], w.restarts) for w in workers))
        yield _family(CounterMetricFamily, "tapswitch_worker_cpu_seconds", "CPU seconds used by the queue's workers.",
                      ["switch", "queue"], (([name, str(w.queue)], sup.cpu_seconds(w)) for w in workers))
        yield _family(CounterMetricFamily, "tapswitch_config_reloads", "Configuration reloads, by result.",
                      ["switch", "result"], (([name, r], n) for r, n in sw.reloads.items()))
        yield _family(GaugeMetricFamily, "tapswitch_build_info", "tapswitch version; always 1.",
                      ["version"], [([tapswitch.__version__], 1)])


class _Handler(WSGIRequestHandler):
    """One connection: a request, within SCRAPE_TIMEOUT, and its answer. A client that stalls
    or goes away is a debug line, not socketserver's traceback (any local user may be one)."""

    timeout = SCRAPE_TIMEOUT

    def handle(self) -> None:
        try:
            super().handle()
        except OSError as e:
            log.debug("metrics.client_gone", error="timed out" if isinstance(e, TimeoutError) else e.strerror or str(e))

    def log_message(self, format, *args) -> None:
        """No line per request."""


class _Server(AcceptWaits, socketserver.ThreadingMixIn, WSGIServer):
    """prometheus_client's server (a thread per connection), with at most MAX_SCRAPES at once."""

    daemon_threads = True

    def __init__(self, family: int, address: tuple, app) -> None:
        self.address_family = family
        self.slots = threading.BoundedSemaphore(MAX_SCRAPES)
        self.busy_logged_at = -BUSY_LOG_INTERVAL
        super().__init__(address, _Handler)
        self.set_app(app)

    def accept_failed(self, error: str, reason: str) -> None:
        log.error("metrics.accept_failed", error=error, reason=reason)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            if time.monotonic() - self.busy_logged_at >= BUSY_LOG_INTERVAL:
                self.busy_logged_at = time.monotonic()
                log.warning("metrics.busy", connections=MAX_SCRAPES, reason="a connection more was closed unserved")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()        # no thread started to release it
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def _app(registry):
    """prometheus_client's WSGI app, but a scrape the switch refuses (it is stopping: ControlError)
    is a 503 saying so, not a 500 and wsgiref's traceback. The answer is made whole before
    anything is sent, so a refused scrape sends none of it."""
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        try:
            return metrics_app(environ, start_response)
        except ControlError as e:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{e}\n".encode()]
    return app


def serve(switch, host: str, port: int):
    """Serve /metrics (text and OpenMetrics) on host:port; return the server to shut down."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(SwitchCollector(switch))
    # The whole address getaddrinfo gives: an IPv6 one carries its scope id ("fe80::1%eth0"),
    # without which the kernel refuses to bind a link-local address.
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server = _Server(family, sockaddr, _app(registry))
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server

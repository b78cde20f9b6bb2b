"""The metrics collector and `tapswitch ports` against a reload in another thread: the
scrape (or the control socket's thread) reads the port list once, whatever the main
thread's reload does to it meanwhile. The metrics server against clients that stall."""

import http.client
import socket
import struct
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
import structlog

from tapswitch import fastpath, metrics, tap
from tapswitch.config import loads
from tapswitch.control import stop_serving
from tapswitch.metrics import SwitchCollector
from tapswitch.ports import Port
from tapswitch.switch import Switch

CONFIG = "switch: {name: rl}\nports: [{name: a}, {name: b}]\n"


class Reloading(Switch):
    """A switch whose reload swaps its port list between any two reads of it: the
    first port list on odd reads, the second on even ones."""

    def __init__(self, cfg, lists):
        super().__init__(cfg)
        self.lists, self.reads = lists, 0

    @property
    def ports(self):
        self.reads += 1
        return self.lists[self.reads % 2]

    @ports.setter
    def ports(self, value):
        pass


def gone_port(index: int, cfg) -> Port:
    """A port whose TAP is gone: its counts are the last ones read, no netlink asked."""
    return Port(index=index, cfg=cfg, fds=[], mac="02:00:00:00:00:0%d" % index, nspath=None,
                ifindex=0, up=False, gone=True, netns_id=tap.UNKNOWN_NETNS, rx_missed=7 + index)


def reloading_switch() -> Reloading:
    cfg = loads(CONFIG)
    before, after = [gone_port(0, cfg.ports[0])], [gone_port(1, cfg.ports[1])]
    sw = Reloading(cfg, [before, after])
    sw.shared = fastpath.Shared.create(1024, 1)
    return sw


def test_a_scrape_reads_the_port_list_once():
    sw = reloading_switch()
    families = {f.name: f for f in SwitchCollector(sw).collect()}
    ports = {s.labels["port"] for f in families.values() for s in f.samples if "port" in s.labels}
    assert len(ports) == 1, f"one scrape saw ports of two lists: {ports}"
    (missed,) = families["tapswitch_port_rx_missed"].samples
    assert missed.value == 7 + {"a": 0, "b": 1}[missed.labels["port"]]


def test_ports_reads_the_port_list_once():
    sw = reloading_switch()
    (info,) = sw.ports_info()
    assert info["counters"]["rx_missed"] == 7 + {"a": 0, "b": 1}[info["name"]]


@pytest.fixture
def served():
    """A switch without ports, its metrics served on an ephemeral port: (host, port)."""
    sw = Switch(loads(CONFIG))
    sw.shared = fastpath.Shared.create(1024, 1)
    server = metrics.serve(sw, "127.0.0.1", 0)
    yield server.server_address[:2]
    stop_serving(server)
    server.server_close()
    sw.shared.close()


def scrape(address) -> bytes:
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        return r.read()


def closed_by_the_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False


@pytest.fixture
def limits(monkeypatch):
    monkeypatch.setattr(metrics._Handler, "timeout", 0.5)
    monkeypatch.setattr(metrics, "MAX_SCRAPES", 3)


def test_a_client_that_sends_nothing_is_let_go(limits, served, capfd):
    """Any local user may connect: one that holds a connection without a request must not
    hold a thread and a descriptor of the control process for ever."""
    with socket.create_connection(served) as idle:
        idle.sendall(b"GET /metr")
        assert closed_by_the_server(idle, 5)
    assert b"tapswitch_fdb_entries" in scrape(served)
    assert "Traceback" not in capfd.readouterr().err


def test_connections_past_max_scrapes_are_closed_unserved_and_a_scrape_goes_once_they_go(limits, served):
    held = [socket.create_connection(served) for _ in range(metrics.MAX_SCRAPES)]
    try:
        with structlog.testing.capture_logs() as logs, socket.create_connection(served) as more:
            assert closed_by_the_server(more, 5)
        # Closed unserved, at once: one served would have been closed too, after its timeout, unsaid.
        assert "metrics.busy" in [e["event"] for e in logs]
    finally:
        for s in held:
            s.close()
    assert b"tapswitch_fdb_entries" in scrape_when_served(served, within=2.0)


def scrape_when_served(address, within: float) -> bytes:
    """A scrape, tried again (as Prometheus does at its next interval) while the server's
    threads have not yet seen their clients go: it closes one more unserved meanwhile."""
    deadline = time.monotonic() + within
    while True:
        try:
            return scrape(address)
        except (http.client.RemoteDisconnected, ConnectionResetError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_client_that_resets_its_connection_is_no_traceback(served, capfd):
    for request in (b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"):
        s = socket.create_connection(served)
        s.sendall(request)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))    # RST on close
        s.close()
    assert b"tapswitch_fdb_entries" in scrape(served)
    time.sleep(0.2)
    assert "Traceback" not in capfd.readouterr().err


@dataclass
class Running:
    """A running port as settings.apply reads one."""
    index: int
    name: str
    up: bool = True
    mtu: int = 0
    frame_max: int = 0


def test_a_scrape_mid_reload_counts_each_mirror_under_its_own_name():
    """A reload publishes the mirrors' new slots, then goes on (making ports, replacing workers)
    before the switch's config is the new one: a scrape meanwhile read the new slots by the old
    config's list, and gave a mirror that moved the counts of the one now in its old slot."""
    from tapswitch import settings

    ports = "ports: [{name: a}, {name: b}, {name: m}]\n"
    tail = "  - {name: mtail, from: [a], to: m}\n"
    before = loads("switch: {name: mi}\n" + ports + "mirrors:\n" + tail)
    after = loads("switch: {name: mi}\n" + ports + "mirrors:\n  - {name: mhead, from: [b], to: m}\n" + tail)
    sw = Switch(before)
    sw.shared = fastpath.Shared.create(1024, 1)
    running = [Running(i, p.name) for i, p in enumerate(before.ports)]
    settings.apply(sw.shared, before, running)
    sw.shared.ptr.mirror_counters[0][0].packets = 5
    settings.apply(sw.shared, after, running)       # sw.cfg is still `before`
    families = {f.name: f for f in SwitchCollector(sw).collect()}
    copies = {s.labels["mirror"]: s.value for s in families["tapswitch_mirror_packets"].samples}
    assert copies == {"mhead": 0, "mtail": 5}
    sw.shared.close()


class Closing(Port):
    """A VXLAN port that port.close(), on the control thread, closes between any two reads of its tunnel."""

    @property
    def tunnel(self):
        tunnel, self.__dict__["_tunnel"] = self.__dict__.get("_tunnel"), None
        return tunnel

    @tunnel.setter
    def tunnel(self, value):
        self.__dict__["_tunnel"] = value


class Stopping(Switch):
    """A switch whose stop lets go of its supervisor after the first read of it: as a scrape
    that came before the stop goes on in its thread while the main thread stops the workers."""

    @property
    def supervisor(self):
        sup, self.__dict__["_supervisor"] = self.__dict__.get("_supervisor"), None
        return sup

    @supervisor.setter
    def supervisor(self, value):
        self.__dict__["_supervisor"] = value


def test_a_scrape_mid_stop_reads_the_supervisor_once():
    """The stop sets the switch's supervisor to None once its workers are stopped, while a scrape
    that came before it may still run: the scrape read it three times, and between two reads
    raised AttributeError ('NoneType' object has no attribute 'alive'): the scrape failed."""
    from tapswitch.supervisor import Supervisor

    sw = Stopping(loads(CONFIG))
    sw.shared = fastpath.Shared.create(1024, 2)
    sw.supervisor = Supervisor(-1, 2)
    families = {f.name: f for f in SwitchCollector(sw).collect()}
    assert [s.value for s in families["tapswitch_worker_up"].samples] == [0, 0]
    assert [s.labels["queue"] for s in families["tapswitch_worker_cpu_seconds"].samples] == ["0", "1"]
    sw.shared.close()


def test_a_scrape_reads_a_vxlan_ports_tunnel_once():
    """A reload removing a VXLAN port sets its tunnel to None while a scrape, in its thread,
    found it set and went to count its remote hosts: AttributeError, and the scrape failed."""
    from types import SimpleNamespace

    cfg = loads(CONFIG)
    sw = Switch(cfg)
    sw.shared = fastpath.Shared.create(1024, 1)
    port = Closing(index=0, cfg=cfg.ports[0], fds=[], mac="02:00:00:00:00:01", nspath=None, ifindex=0,
                   up=False, gone=True, netns_id=tap.UNKNOWN_NETNS)
    port.tunnel = SimpleNamespace(remotes=["198.19.0.2", "198.19.0.3"])
    sw.ports = [port]
    families = {f.name: f for f in SwitchCollector(sw).collect()}
    assert [s.value for s in families["tapswitch_vxlan_remotes"].samples] == [2]
    sw.shared.close()


def test_a_scrape_mid_reload_counts_each_acl_rule_under_its_own_action(monkeypatch):
    """A reload gives a port its new config, publishes its new rules to the workers, then counts
    them from 0: a scrape before the publish gave the new rules' actions the old rules' hits, and
    one just after it gave the new rules the old ones' hits (rule 0 "allow": 5 matches it never had)."""
    from tapswitch import settings

    ports = "ports:\n  - {name: a, acl: [{match: {ip_proto: %s}, action: %s}]}\n  - {name: b}\n"
    before = loads("switch: {name: acl}\n" + ports % ("icmp", "drop"))
    after = loads("switch: {name: acl}\n" + ports % ("tcp", "allow"))
    sw = Switch(before)
    sw.shared = fastpath.Shared.create(1024, 1)
    running = [Running(i, p.name) for i, p in enumerate(before.ports)]
    settings.apply(sw.shared, before, running)
    sw.shared.ptr.acl_hits[0][0][0] = 5
    sw.ports = [gone_port(i, p) for i, p in enumerate(before.ports)]

    def hits():
        families = {f.name: f for f in SwitchCollector(sw).collect()}
        return {(s.labels["rule"], s.labels["action"]): s.value for s in families["tapswitch_acl_hits"].samples}
    assert hits() == {("0", "drop"): 5}
    sw.ports[0].cfg = after.ports[0]            # as Switch.apply does, before settings.apply
    assert hits() == {("0", "drop"): 5}

    real, published = sw.shared.settings_publish, []

    def publish(*args):
        stuck = real(*args)
        published.append(hits())
        return stuck
    monkeypatch.setattr(sw.shared, "settings_publish", publish)
    settings.apply(sw.shared, after, running)
    assert published == [{("0", "allow"): 0}]
    assert hits() == {("0", "allow"): 0}
    sw.shared.close()

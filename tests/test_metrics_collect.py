"""The metrics collector and `tapswitch ports` against a reload in another thread: the
scrape (or the control socket's thread) reads the port list once, whatever the main
thread's reload does to it meanwhile."""

from tapswitch import fastpath, tap
from tapswitch.config import loads
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

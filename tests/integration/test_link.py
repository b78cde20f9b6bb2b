"""Link state: a port follows its TAP; a down port is not flooded to and its MACs are forgotten."""

import json
import os
import sys
import time

import pytest

from tapswitch import switch as switch_mod
from tests.integration import helpers


def wait_state(sw, port: str, state: str, within: float = 2.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if {p["name"]: p["state"] for p in sw.cli_json("ports")}[port] == state:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"port {port} not {state} within {within}s")


def three_containers(lab, switch_makes_them: bool = False):
    nss = [lab.netns(s, create=not switch_makes_them) for s in ("a", "b", "c")]
    ports = [{"name": lab.name(f"p{i}"), "netns": ns, "ifname": "eth0", "addresses": [f"198.18.2.{i + 1}/24"]}
             for i, ns in enumerate(nss)]
    return nss, ports


@pytest.mark.parametrize("switch_makes_them", [False, True], ids=["their-namespaces", "switch-made"])
def test_port_set_down_in_its_container_goes_down_and_comes_back(lab, switch_makes_them):
    # The switch makes a TAP inside a namespace it made itself, and moves it into anyone else's.
    nss, ports = three_containers(lab, switch_makes_them)
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 2}, "ports": ports})
    assert helpers.ping(nss[0], "198.18.2.3")
    c = ports[2]["name"]
    assert any(e["port"] == c for e in sw.cli_json("fdb"))

    helpers.nsexec(nss[2], "ip", "link", "set", "eth0", "down")
    wait_state(sw, c, "down")
    assert not any(e["port"] == c for e in sw.cli_json("fdb"))
    assert sw.events("port.down")
    # Flooding skips the down port: broadcasts from a reach b but not c.
    before = {p["name"]: p["counters"]["tx_packets"] for p in sw.cli_json("ports")}
    helpers.nsexec(nss[0], "python3", helpers_sender(), "eth0", helpers.link_mac(nss[0], "eth0"),
                   "ff:ff:ff:ff:ff:ff", 50)
    after = {p["name"]: p["counters"]["tx_packets"] for p in sw.cli_json("ports")}
    assert after[ports[1]["name"]] - before[ports[1]["name"]] >= 50
    assert after[c] == before[c]

    helpers.nsexec(nss[2], "ip", "link", "set", "eth0", "up")
    wait_state(sw, c, "up")
    assert helpers.ping(nss[0], "198.18.2.3")


def test_container_namespace_deleted_takes_only_its_port_down(lab):
    nss, ports = three_containers(lab)
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1}, "ports": ports})
    assert helpers.ping(nss[0], "198.18.2.3")
    helpers.sh("ip", "netns", "del", nss[2])        # the container died; nothing holds its namespace
    wait_state(sw, ports[2]["name"], "down")
    assert helpers.ping(nss[0], "198.18.2.2")
    states = {p["name"]: p["state"] for p in sw.cli_json("ports")}
    assert states[ports[0]["name"]] == states[ports[1]["name"]] == "up"
    assert sw.stop() == 0


def helpers_sender() -> str:
    import os
    return os.path.join(os.path.dirname(__file__), "sendframes.py")


def test_link_monitor_reads_index_name_state_and_deletion_from_every_namespace(lab):
    """LinkMonitor parses RTM_NEWLINK/RTM_DELLINK itself: what it reports is what `ip` says."""
    from tapswitch import linkmon
    from tapswitch.rtnl import Rtnl

    ns = lab.netns("m", create=True)
    a, b = lab.name("ma"), lab.name("mb")
    monitor = linkmon.LinkMonitor()
    try:
        with Rtnl() as here:
            nsid = linkmon.nsid_of(f"/run/netns/{ns}", here)
        helpers.nsexec(ns, "ip", "link", "add", a, "type", "veth", "peer", "name", b)
        helpers.nsexec(ns, "ip", "link", "set", a, "up")
        helpers.nsexec(ns, "ip", "link", "set", b, "name", "eth7", "up")
        helpers.nsexec(ns, "ip", "link", "set", "eth7", "mtu", "1400", "address", "02:00:5e:00:00:07")
        index = int(helpers.nsexec(ns, "cat", "/sys/class/net/eth7/ifindex").stdout)
        helpers.nsexec(ns, "ip", "link", "del", "eth7")
        events = []
        helpers.wait_for("the deletion's event", lambda: events.extend(monitor.read()) or any(
            e.deleted and e.ifname == "eth7" for e in events))
    finally:
        monitor.close()
    mine = [e for e in events if e.ifindex == index]
    assert mine and all(e.nsid == nsid for e in mine)
    assert mine[0].ifname == b and not mine[0].up
    assert any(e.ifname == "eth7" and e.up and not e.deleted for e in mine)     # both ends up: carrier
    assert any((e.mtu, e.mac) == (1400, "02:00:5e:00:00:07") for e in mine)
    assert mine[-1][:5] == (nsid, index, "eth7", False, True)


def test_link_monitor_reads_addresses_coming_and_going_when_asked(lab):
    """A VXLAN port follows its local address: LinkMonitor(addresses=True) parses RTM_NEWADDR/RTM_DELADDR."""
    from tapswitch import linkmon
    from tapswitch.rtnl import Rtnl

    ns = lab.netns("a", create=True)
    monitor = linkmon.LinkMonitor(addresses=True)
    try:
        with Rtnl() as here:
            nsid = linkmon.nsid_of(f"/run/netns/{ns}", here)
        helpers.nsexec(ns, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        index = int(helpers.nsexec(ns, "cat", "/sys/class/net/d0/ifindex").stdout)
        helpers.nsexec(ns, "ip", "addr", "add", "198.19.7.1/24", "dev", "d0")
        helpers.nsexec(ns, "ip", "addr", "add", "fd00:0f::0:7/64", "dev", "d0", "nodad")
        helpers.nsexec(ns, "ip", "addr", "del", "198.19.7.1/24", "dev", "d0")
        events = []
        helpers.wait_for("the deletion's event", lambda: events.extend(monitor.read()) or any(
            isinstance(e, linkmon.AddressEvent) and e.deleted for e in events))
    finally:
        monitor.close()
    mine = [e for e in events if isinstance(e, linkmon.AddressEvent) and e.ifindex == index]
    assert mine == [linkmon.AddressEvent(nsid, index, "198.19.7.1", False),
                    linkmon.AddressEvent(nsid, index, "fd00:f::7", False),
                    linkmon.AddressEvent(nsid, index, "198.19.7.1", True)]


def test_a_down_or_deletion_the_device_is_no_longer_in_does_not_take_its_port_down(lab):
    """Link events are read late: a reload that removes a port and adds one in a namespace
    made anew reads the removal's events after the new port is up, and the new namespace may
    have the old one's id, its device the old ifindex (seen under load: a false port.down and a
    flushed MAC). So a down or a deletion counts only if the device is down or gone now."""
    from tapswitch import config, fastpath, linkmon
    from tapswitch.ports import Port
    from tapswitch.rtnl import Rtnl
    from tapswitch.switch import Switch

    ns = lab.netns("l", create=True)
    helpers.nsexec(ns, "ip", "link", "add", "t0", "type", "veth", "peer", "name", "t1")
    for dev in ("t0", "t1"):
        helpers.nsexec(ns, "ip", "link", "set", dev, "up")       # both ends up: carrier
    index = int(helpers.nsexec(ns, "cat", "/sys/class/net/t0/ifindex").stdout)
    with Rtnl() as here:
        nsid = linkmon.nsid_of(f"/run/netns/{ns}", here)
    cfg = config.loads("switch: {name: s}\nports: [{name: t0}]\n")
    sw = Switch(cfg)
    sw.shared = fastpath.Shared.create(64, 1)
    try:
        port = Port(index=0, cfg=cfg.ports[0], fds=[], mac=helpers.link_mac(ns, "t0"),
                    nspath=f"/run/netns/{ns}", ifindex=index, nsid=nsid)
        sw.ports = [port]
        for late in (linkmon.LinkEvent(nsid, index, "eth0", False, True),      # the old TAP's deletion
                     linkmon.LinkEvent(nsid, index, "eth0", False, False)):    # and its going down
            sw.link_changed(late)
            assert port.up and port.tap_up
        helpers.nsexec(ns, "ip", "link", "set", "t0", "down")                 # now it is down
        sw.link_changed(linkmon.LinkEvent(nsid, index, "t0", False, False))
        assert not port.up
    finally:
        sw.shared.close()


def test_a_port_follows_the_mtu_and_mac_its_host_gives_its_tap(lab):
    """The hosts raise their MTU to 9000: 4000-byte frames, which MTU 1500 kept out, now cross,
    and `ports` says 9000; a host's new MAC shows there too. Each change is a warning."""
    nss, ports = three_containers(lab)
    sw = lab.switch({"switch": {"name": lab.name("sw")}, "ports": ports[:2]})
    big = ["ping", "-M", "do", "-s", "4000", "-c", "1", "-W", "2", "198.18.2.2"]
    assert helpers.nsexec(nss[0], *big, check=False).returncode != 0
    for ns in nss[:2]:
        helpers.nsexec(ns, "ip", "link", "set", "eth0", "mtu", "9000")
    helpers.nsexec(nss[1], "ip", "link", "set", "eth0", "address", "02:00:5e:00:00:42")
    helpers.wait_for("the new MTU and MAC", lambda: [(p["mtu"], p["mac"]) for p in sw.cli_json("ports")][1]
                     == (9000, "02:00:5e:00:00:42"))
    assert [p["mtu"] for p in sw.cli_json("ports")] == [9000, 9000]
    assert helpers.nsexec(nss[0], *big, check=False).returncode == 0, sw.log()
    assert sorted(e["port"] for e in sw.events("port.mtu_changed")) == sorted(p["name"] for p in ports[:2])
    assert [(e["port"], e["mac"]) for e in sw.events("port.mac_changed")] == [(ports[1]["name"], "02:00:5e:00:00:42")]


def test_tx_dropped_reads_each_links_counter_in_its_namespace_in_batches(lab):
    """linkmon.tx_dropped asks 40 links at once (two batches), in another namespace and in ours:
    each gets its own device's tx_dropped, as `ip -s link` shows it; a missing one is left out."""
    import socket
    import sys

    from tapswitch import linkmon
    from tapswitch.rtnl import Rtnl

    ns = lab.netns("d", create=True)
    helpers.nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    with Rtnl() as here:
        nsid = linkmon.nsid_of(f"/run/netns/{ns}", here)
    links, expected = [], {}
    for i in range(40):             # TAPs with no reader: the kernel drops, and counts, all they send
        dev = f"tq{i}"
        helpers.nsexec(ns, "ip", "tuntap", "add", "dev", dev, "mode", "tap")
        helpers.nsexec(ns, "ip", "link", "set", dev, "up")
        index = int(helpers.nsexec(ns, "cat", f"/sys/class/net/{dev}/ifindex").stdout)
        if i % 13 == 0:
            helpers.nsexec(ns, sys.executable, helpers_sender(), dev, "02:00:00:00:00:01", "02:00:00:00:00:02", i + 3)
        expected[(nsid, index)] = int(helpers.nsexec(ns, "cat", f"/sys/class/net/{dev}/statistics/tx_dropped").stdout)
        links.append((nsid, index))
    lo = (linkmon.OWN_NSID, socket.if_nametoindex("lo"))
    with open("/sys/class/net/lo/statistics/tx_dropped") as f:
        expected[lo] = int(f.read())
    missing = (nsid, max(index for _, index in links) + 1000)
    got = linkmon.tx_dropped(links[:20] + [missing, lo] + links[20:])
    assert sorted(n for link, n in expected.items() if n and link != lo) == [3, 16, 29, 42]   # not all zeros
    assert got == expected


LOG_TICKS = (sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), "log_ticks.py"))


def test_link_events_do_not_speed_up_the_control_loops_maintenance(lab):
    """The control loop wakes for every link event of every namespace it hears, but ages the MAC
    table (and dumps it for shared-mode remotes, and looks for lost ports) once a tick, not once
    a wake-up: a host whose containers' links churn must not cost the switch a sweep an event."""
    nss, ports = three_containers(lab)
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1}, "ports": ports[:2]}, wrapper=LOG_TICKS)
    assert helpers.ping(nss[0], "198.18.2.2")
    a, b = lab.name("ca"), lab.name("cb")
    helpers.nsexec(nss[0], "ip", "link", "add", a, "type", "veth", "peer", "name", b)
    before = len(sw.events("test.aging_step"))
    start = time.monotonic()
    flips = 0
    while time.monotonic() - start < 3.0:          # a few hundred link events in 3 s
        helpers.nsexec(nss[0], "ip", "link", "set", a, "up" if flips % 2 == 0 else "down")
        flips += 1
    took = time.monotonic() - start
    steps = len(sw.events("test.aging_step")) - before
    assert flips >= 30
    assert steps <= took / switch_mod.TICK + 2, f"{steps} aging steps in {took:.1f} s for {flips} link flips"
    assert steps >= 1          # and the ticks go on meanwhile
    assert sw.stop() == 0


def test_link_monitor_asks_its_buffer_past_rmem_max_and_without_cap_net_admin_what_rmem_max_allows():
    """A burst of events (a shared remote's thousands of rules) must fit the link monitor's
    buffer: SO_RCVBUFFORCE gives it linkmon.RCVBUF, past net.core.rmem_max (which caps SO_RCVBUF:
    the 1 MiB it asked was 416 KiB under the kernel's default). Without CAP_NET_ADMIN (of the
    host's user namespace) the kernel refuses that, and the monitor takes what rmem_max allows."""
    from tapswitch import linkmon

    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    ask = ("import socket; from tapswitch import linkmon; "
           "print(linkmon.LinkMonitor(filters=True).sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))")
    without = ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin")
    got = [int(helpers.sh(*prefix, sys.executable, "-c", ask).stdout) for prefix in ((), without)]
    assert got == [2 * linkmon.RCVBUF, 2 * min(linkmon.RCVBUF, rmem_max)]     # the kernel doubles what it is asked


# Run in a namespace of the test's own (no other namespace's events reach the monitor there):
# a burst of link events overruns a monitor given a few events' room, the owner reads (and
# would resync), then a device is made, and the owner reads on for a second.
OVERRUN_THEN_AN_EVENT = """
import json, socket, subprocess, time
from tapswitch import linkmon
monitor = linkmon.LinkMonitor()
monitor.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
subprocess.run(["ip", "-batch", "-"], check=True, text=True,
               input="link add o0 type veth peer name o1\\n" + "link set o0 up\\nlink set o0 down\\n" * 10)
monitor.read()
overrun, monitor.overrun = monitor.overrun, False
subprocess.run(["ip", "link", "add", "o2", "type", "veth", "peer", "name", "o3"], check=True)
later, deadline = [], time.monotonic() + 1
while time.monotonic() < deadline:
    later += [e.ifname for e in monitor.read()]
    time.sleep(0.05)
print(json.dumps({"overrun": overrun, "later": later, "said": monitor.overrun}))
"""


def test_link_monitor_that_lost_events_loses_none_after_the_read_that_says_so_unsaid(lab):
    """The kernel says once that it dropped events for the monitor (ENOBUFS), and drops every
    later one unsaid until the socket's queue is empty: read() drains it before it returns with
    `overrun`, so that the owner's resync comes after all the events lost, and an event after it
    is read (or said lost). (read() returned at the ENOBUFS, the queue full: a device made after
    the resync went unseen, unsaid, as a port's TAP going down, which left the port up.)"""
    ns = lab.netns("o", create=True)
    got = json.loads(helpers.nsexec(ns, sys.executable, "-c", OVERRUN_THEN_AN_EVENT).stdout)
    assert got["overrun"], got
    assert "o2" in got["later"] or got["said"], got


EVENTS_LOST = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "events_lost.py"))


def test_a_port_whose_namespace_left_its_name_alive_follows_its_tap_there(lab, monkeypatch):
    """`ip netns del` takes a container's namespace from its name, and one of that name is made
    again, while a process still runs in the old one: the port is not gone (its TAP is where
    it was, serving that process), so it follows its TAP there -- an MTU its host sets, and,
    its events lost (tests/events_lost.py: as in an overrun), the new MAC at the resync, the
    port staying up and forwarding. (The switch looked at the TAP by the namespace's path: none
    there, or another namespace now, so the MTU went unfollowed and the resync took the port
    down, for good.)"""
    new = "02:00:5e:00:00:53"
    monkeypatch.setenv("TAPSWITCH_TEST_EVENTS_LOST", new)
    nss, ports = three_containers(lab)
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1}, "ports": ports[:2]}, wrapper=EVENTS_LOST)
    b = ports[1]["name"]
    holder = helpers.subprocess.Popen(["ip", "netns", "exec", nss[1], "sleep", "600"])
    lab.procs.append(holder)
    old = ["nsenter", f"--net=/proc/{holder.pid}/ns/net"]
    helpers.wait_for("the holder in the namespace",
                     lambda: os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"))
    helpers.sh("ip", "netns", "del", nss[1])
    helpers.sh("ip", "netns", "add", nss[1])
    helpers.sh(*old, "ip", "link", "set", "eth0", "mtu", "1400")
    helpers.wait_for("the MTU followed", lambda: {p["name"]: p["mtu"] for p in sw.cli_json("ports")}[b] == 1400)
    helpers.sh(*old, "ip", "link", "set", "eth0", "address", new)
    helpers.wait_for("the loss said", lambda: sw.events("link.events_lost"))
    helpers.wait_for("the MAC followed", lambda: {p["name"]: p["mac"] for p in sw.cli_json("ports")}[b] == new)
    assert {p["name"]: p["state"] for p in sw.cli_json("ports")}[b] == "up", sw.log()
    assert not sw.events("port.gone") and not sw.events("port.down"), sw.log()
    assert helpers.ping(nss[0], "198.18.2.2"), sw.log()
    assert sw.stop() == 0
    assert "Traceback" not in sw.log(), sw.log()

"""Switch features end to end (issue 6): VLANs, isolated ports, mirrors, MAC limits, ACLs and storm control, checked by the frames that cross, in real namespaces.

Each test makes its own namespaces and switch (the `lab` fixture), uses
198.18.0.0/15 and fd00::/8 only, and leaves nothing behind.
"""

import json
import os
import struct
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from tests.integration import helpers
from tests.integration.prom import free_port
from tests.integration.test_metrics import Exporter

HERE = os.path.dirname(__file__)
SENDER = os.path.join(HERE, "sendframes.py")
PROBE = os.path.join(HERE, "vlanprobe.py")


def quiet(lab, suffix: str) -> str:
    """A namespace the test made, whose kernel sends nothing by itself (no IPv6)."""
    ns = lab.netns(suffix, create=True)
    helpers.nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    return ns


def port(lab, suffix: str, ns: str, *addresses: str, **settings) -> dict:
    return {"name": lab.name(suffix), "netns": ns, "ifname": "eth0", "addresses": list(addresses), **settings}


def switch(lab, ports: list[dict], queues: int = 2, **rest) -> helpers.Switch:
    return lab.switch({"switch": {"name": lab.name("sw"), "queues": queues}, "ports": ports, **rest})


def counters(sw) -> dict[str, dict]:
    return {p["name"]: p["counters"] for p in sw.cli_json("ports")}


def fdb_ports(sw) -> dict[str, set]:
    by_port: dict[str, set] = {}
    for e in sw.cli_json("fdb"):
        by_port.setdefault(e["port"], set()).add((e["mac"], e["vlan"]))
    return by_port


def tcp_bytes(lab, server_ns: str, client_ns: str, address: str, seconds: int = 2) -> int:
    """Bytes an iperf3 TCP stream from client_ns to address (in server_ns) delivered."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(server)
    helpers.wait_for("the iperf3 server listening", lambda: helpers.tcp_listening(server_ns, helpers.IPERF3_PORT),
                     within=10)
    r = helpers.nsexec(client_ns, "iperf3", "-c", address, "-t", seconds, "-J", timeout=30, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)["end"]["sum_received"]["bytes"]


def has_8021q(ns: str) -> bool:
    """The kernel can make VLAN devices (CONFIG_VLAN_8021Q)."""
    helpers.nsexec(ns, "ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
    r = helpers.nsexec(ns, "ip", "link", "add", "link", "probe0", "name", "probe0.10", "type", "vlan", "id", "10",
                       check=False)
    helpers.nsexec(ns, "ip", "link", "del", "probe0", check=False)
    return r.returncode == 0


# VLANs.

def test_access_ports_on_different_vlans_cannot_talk(lab):
    nss = [quiet(lab, s) for s in ("a", "b", "c")]
    ports = [port(lab, "pa", nss[0], "198.18.10.1/24", vlan=10),
             port(lab, "pb", nss[1], "198.18.10.2/24", vlan=20),
             port(lab, "pc", nss[2], "198.18.10.3/24", vlan=10)]
    sw = switch(lab, ports)
    assert helpers.ping(nss[0], "198.18.10.3")
    assert not helpers.ping(nss[0], "198.18.10.2")
    assert not helpers.ping(nss[1], "198.18.10.3")
    fdb = fdb_ports(sw)
    assert {vlan for _, vlan in fdb[ports[0]["name"]]} == {10}
    assert {vlan for _, vlan in fdb[ports[1]["name"]]} == {20}


def test_ipv6_neighbour_discovery_and_ipv4_multicast_flood_only_their_vlan(lab):
    """Hosts of VLAN 10 and one of VLAN 20 share addresses of one IPv6 prefix and IPv4 subnet.
    What the VLAN 10 hosts send to multicast groups -- neighbour solicitations, MLD and IGMP
    reports, a UDP datagram to 239.1.1.1 -- reaches the other VLAN 10 host, never the VLAN 20
    one, which is sent no frame at all."""
    nss = [lab.netns(s, create=True) for s in ("a", "b", "c")]
    ports = [port(lab, "pa", nss[0], "198.18.15.1/24", "fd00:15::1/64", vlan=10),
             port(lab, "pb", nss[1], "198.18.15.2/24", "fd00:15::2/64", vlan=10),
             port(lab, "pc", nss[2], "198.18.15.3/24", "fd00:15::3/64", vlan=20)]
    sw = switch(lab, ports)
    a, b, c = (p["name"] for p in ports)
    for ns in nss:
        helpers.wait_for("IPv6 duplicate address detection", lambda: helpers.ipv6_settled(ns, "eth0"), within=10)
    assert helpers.ping(nss[0], "fd00:15::2")                   # a neighbour solicitation, multicast
    assert not helpers.ping(nss[0], "fd00:15::3")
    join = ("import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, "
            "socket.inet_aton('239.1.1.1') + socket.inet_aton('198.18.15.2')); time.sleep(1)")
    helpers.nsexec(nss[1], sys.executable, "-c", join)          # an IGMP report from b
    before = counters(sw)[b]["tx_packets"]
    send = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('198.18.15.1')); "
            "[s.sendto(b'x', ('239.1.1.1', 9)) for _ in range(5)]")
    helpers.nsexec(nss[0], sys.executable, "-c", send)
    time.sleep(0.3)
    seen = counters(sw)
    assert seen[b]["tx_packets"] - before >= 5
    assert seen[a]["rx_packets"] > 0 and seen[c]["rx_packets"] > 0   # c's host did send (its own MLD, ND...)
    assert seen[c]["tx_packets"] == 0


def test_trunk_with_vlan_subinterfaces_reaches_access_ports_of_both_vlans(lab):
    trunk_ns = quiet(lab, "t")
    if not has_8021q(trunk_ns):
        pytest.skip("this kernel has no 802.1Q devices (CONFIG_VLAN_8021Q); "
                    "test_trunk_carries_both_vlans_tagged and test_tcp_across_access_and_trunk_ports cover trunks")
    nss = [quiet(lab, s) for s in ("a", "b")]
    ports = [port(lab, "pa", nss[0], "198.18.10.1/24", vlan=10),
             port(lab, "pb", nss[1], "198.18.20.1/24", vlan=20),
             port(lab, "pt", trunk_ns, trunk=[10, 20])]
    switch(lab, ports)
    for vid, address in ((10, "198.18.10.9/24"), (20, "198.18.20.9/24")):
        helpers.nsexec(trunk_ns, "ip", "link", "add", "link", "eth0", "name", f"eth0.{vid}", "type", "vlan", "id", vid)
        helpers.nsexec(trunk_ns, "ip", "addr", "add", address, "dev", f"eth0.{vid}")
        helpers.nsexec(trunk_ns, "ip", "link", "set", f"eth0.{vid}", "up")
    assert helpers.ping(trunk_ns, "198.18.10.1")
    assert helpers.ping(trunk_ns, "198.18.20.1")
    assert tcp_bytes(lab, nss[0], trunk_ns, "198.18.10.1") > 10 * 1024 * 1024


def test_trunk_carries_both_vlans_tagged(lab):
    """The trunk's host asks, tagged for VLAN 10 and for VLAN 20, who has the
    address both access hosts have: each VLAN's host answers, tagged with its VLAN."""
    nss = [quiet(lab, s) for s in ("a", "b", "t")]
    ports = [port(lab, "pa", nss[0], "198.18.10.1/24", vlan=10),
             port(lab, "pb", nss[1], "198.18.10.1/24", vlan=20),
             port(lab, "pt", nss[2], trunk=[10, 20])]
    sw = switch(lab, ports)
    answers = {}
    for vid in (10, 20):
        r = helpers.nsexec(nss[2], sys.executable, PROBE, "eth0", vid, "198.18.10.9", "198.18.10.1", check=False)
        assert r.returncode == 0, f"no answer in VLAN {vid}"
        answers[vid] = json.loads(r.stdout)
    assert answers == {10: {"vid": 10, "mac": helpers.link_mac(nss[0], "eth0")},
                       20: {"vid": 20, "mac": helpers.link_mac(nss[1], "eth0")}}
    # Untagged on a trunk without a native VLAN, and a VLAN it does not carry: dropped, counted.
    before = counters(sw)[ports[2]["name"]]["vlan_dropped"]
    for vid in (0, 30):
        r = helpers.nsexec(nss[2], sys.executable, PROBE, "eth0", vid, "198.18.10.9", "198.18.10.1", check=False)
        assert r.returncode == 1
    assert counters(sw)[ports[2]["name"]]["vlan_dropped"] - before >= 4     # 2 requests or more each


def test_tcp_across_access_and_trunk_ports(lab):
    """Two switches joined trunk to trunk (through a plain Linux bridge, which
    forwards tagged frames as they are): a TCP stream from an access port of
    one to an access port of the other crosses as tagged GSO super-frames --
    pushed on one switch, popped on the other."""
    wire = quiet(lab, "w")
    nss = {s: quiet(lab, s) for s in ("a1", "a2", "b1", "b2")}
    one = switch(lab, [port(lab, "a1", nss["a1"], "198.18.10.1/24", vlan=10),
                       port(lab, "a2", nss["a2"], "198.18.10.3/24", vlan=20),
                       {"name": lab.name("t1"), "netns": wire, "trunk": [10, 20]}])
    lab.switch({"switch": {"name": lab.name("sx"), "queues": 2},
                "ports": [port(lab, "b1", nss["b1"], "198.18.10.2/24", vlan=10),
                          port(lab, "b2", nss["b2"], "198.18.10.4/24", vlan=20),
                          {"name": lab.name("t2"), "netns": wire, "trunk": [10, 20]}]})
    helpers.nsexec(wire, "ip", "link", "add", "br0", "type", "bridge")
    for dev in (lab.name("t1"), lab.name("t2")):
        helpers.nsexec(wire, "ip", "link", "set", dev, "master", "br0")
    helpers.nsexec(wire, "ip", "link", "set", "br0", "up")
    assert helpers.ping(nss["a1"], "198.18.10.2", count=2)        # VLAN 10 across
    assert helpers.ping(nss["a2"], "198.18.10.4", count=2)        # VLAN 20 across
    assert not helpers.ping(nss["a1"], "198.18.10.4")             # VLAN 10 to VLAN 20: no
    before = counters(one)[lab.name("t1")]
    assert tcp_bytes(lab, nss["b1"], nss["a1"], "198.18.10.2") > 10 * 1024 * 1024
    after = counters(one)[lab.name("t1")]
    sent, frames = after["tx_bytes"] - before["tx_bytes"], after["tx_packets"] - before["tx_packets"]
    assert sent / frames > 4 * 1518, "the stream did not cross the trunk as GSO super-frames"
    assert after["tx_errors"] == before["tx_errors"]


def test_tagged_frame_whose_checksum_a_pop_moves_where_a_tap_write_takes_none_is_an_rx_error(lab):
    # The kernel takes a checksum start of 20 (its least: an IPv4 header, not
    # counting the Ethernet one) on the trunk's frame; popped for the access
    # port it was 16, which the TAP write refused (EINVAL): a tx error on
    # every access port of the VLAN, the frame counted in as well formed.
    nss = [quiet(lab, s) for s in ("a", "t")]
    ports = [port(lab, "pa", nss[0], vlan=5), port(lab, "pt", nss[1], trunk=[5])]
    sw = switch(lab, ports)
    pa, pt = ports[0]["name"], ports[1]["name"]
    eth = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:0a") / Dot1Q(vlan=5) / IP(src="198.18.5.1",
                                                                                      dst="198.18.5.2") / TCP()
    header = struct.pack("=BBHHHH", 1, 0, 0, 0, 20, 6)     # NEEDS_CSUM, csum_start 20, csum_offset 6
    helpers.nsexec(nss[1], sys.executable, SENDER, "eth0", "--vnet-frame", (header + bytes(eth)).hex(), 3)
    helpers.wait_for("3 frames in", lambda: sum(counters(sw)[pt][k] for k in ("rx_errors", "rx_packets")) >= 3)
    c = counters(sw)
    assert (c[pt]["rx_errors"], c[pt]["rx_packets"], c[pt]["flooded"]) == (3, 0, 0)
    assert (c[pa]["tx_errors"], c[pa]["tx_packets"]) == (0, 0)


# Isolated ports.

def test_isolated_ports_reach_only_the_shared_port(lab):
    nss = [quiet(lab, s) for s in ("a", "b", "s")]
    ports = [port(lab, "pa", nss[0], "198.18.11.1/24", isolated=True),
             port(lab, "pb", nss[1], "198.18.11.2/24", isolated=True),
             port(lab, "ps", nss[2], "198.18.11.3/24")]
    switch(lab, ports)
    assert helpers.ping(nss[0], "198.18.11.3")
    assert helpers.ping(nss[1], "198.18.11.3")
    assert helpers.ping(nss[2], "198.18.11.1")
    assert not helpers.ping(nss[0], "198.18.11.2")
    assert not helpers.ping(nss[1], "198.18.11.1")


# Mirrors.

def test_monitor_port_sees_the_mirrored_traffic_and_sends_nothing(lab):
    nss = [quiet(lab, s) for s in ("a", "b", "m")]
    ports = [port(lab, "pa", nss[0], "198.18.12.1/24"),
             port(lab, "pb", nss[1], "198.18.12.2/24"),
             port(lab, "pm", nss[2], "198.18.12.9/24")]
    sw = switch(lab, ports, mirrors=[{"name": "span", "from": [ports[0]["name"]], "to": ports[2]["name"]}])
    assert helpers.ping(nss[0], "198.18.12.2")                   # ARP resolved: only ICMP from now on
    dump = subprocess.Popen(["ip", "netns", "exec", nss[2], "tcpdump", "-n", "-l", "-i", "eth0", "-c", "6", "icmp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lab.procs.append(dump)
    while "listening on" not in dump.stderr.readline():       # capturing from here on
        assert dump.poll() is None, "tcpdump ended before capturing"
    assert helpers.ping(nss[0], "198.18.12.2", count=3)
    out, _ = dump.communicate(timeout=10)
    lines = out.splitlines()
    # Both directions of port a: the 3 requests it received and the 3 replies sent to it.
    assert sum("echo request" in line for line in lines) == 3, out
    assert sum("echo reply" in line for line in lines) == 3, out
    # The monitor port only receives: what its host sends goes nowhere.
    assert not helpers.ping(nss[2], "198.18.12.2")
    c = counters(sw)[ports[2]["name"]]
    assert c["rx_dropped"] >= 1 and c["rx_dropped"] == c["rx_packets"]
    assert not any(e["port"] == ports[2]["name"] for e in sw.cli_json("fdb"))


def test_mirror_of_isolated_ports_copies_each_direction_and_counts_what_a_downed_monitor_misses(lab):
    """Two isolated ports are a mirror's sources, both directions. A broadcast from a shared
    port, flooded to both, makes two copies (what each was sent); a broadcast from one of them
    makes one (what it sent: the other isolated port gets no frame, so no copy of one); a
    unicast from one to the other, dropped for their isolation, is copied as it arrived. While
    the monitor port is down its copies count as dropped; once it is up they reach it again."""
    nss = [quiet(lab, s) for s in ("a", "b", "c", "m")]
    ports = [port(lab, "pa", nss[0], isolated=True), port(lab, "pb", nss[1], isolated=True),
             port(lab, "pc", nss[2]), port(lab, "pm", nss[3])]
    a, b, c, m = (p["name"] for p in ports)
    listen = f"127.0.0.1:{free_port()}"
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 2, "metrics": {"listen": listen}},
                     "ports": ports, "mirrors": [{"name": "span", "from": [a, b], "to": m}]})
    exporter = Exporter(listen)
    macs = [helpers.link_mac(ns, "eth0") for ns in nss]

    def mirror() -> dict[str, float]:
        return {key: exporter.values(f"tapswitch_mirror_{key}_total", ("mirror",)).get(("span",), 0)
                for key in ("packets", "dropped")}

    def send(i: int, dst: str) -> tuple[dict, dict]:
        """One frame from host i to dst: (frames each port was sent, the mirror's counts) it added."""
        before = counters(sw), mirror()
        helpers.nsexec(nss[i], sys.executable, SENDER, "eth0", macs[i], dst, 1)
        time.sleep(0.3)
        after = counters(sw), mirror()
        return ({name: after[0][name]["tx_packets"] - before[0][name]["tx_packets"] for name in after[0]},
                {key: after[1][key] - before[1][key] for key in after[1]})

    def state(name: str) -> str:
        return next(p["state"] for p in sw.cli_json("ports") if p["name"] == name)

    broadcast = "ff:ff:ff:ff:ff:ff"
    assert send(2, broadcast) == ({a: 1, b: 1, c: 0, m: 2}, {"packets": 2, "dropped": 0})
    assert send(0, broadcast) == ({a: 0, b: 0, c: 1, m: 1}, {"packets": 1, "dropped": 0})
    send(1, broadcast)                                          # b's MAC learned on b
    assert send(0, macs[1]) == ({a: 0, b: 0, c: 0, m: 1}, {"packets": 1, "dropped": 0})
    assert counters(sw)[a]["rx_dropped"] == 1
    helpers.nsexec(nss[3], "ip", "link", "set", "eth0", "down")
    helpers.wait_for("the monitor port down", lambda: state(m) == "down")
    assert send(2, broadcast) == ({a: 1, b: 1, c: 0, m: 0}, {"packets": 0, "dropped": 2})
    helpers.nsexec(nss[3], "ip", "link", "set", "eth0", "up")
    helpers.wait_for("the monitor port up", lambda: state(m) == "up")
    assert send(2, broadcast) == ({a: 1, b: 1, c: 0, m: 2}, {"packets": 2, "dropped": 0})


# MAC limit.

def test_port_flooding_source_macs_holds_at_its_limit(lab):
    nss = [quiet(lab, s) for s in ("a", "b")]
    ports = [port(lab, "pa", nss[0], mac_limit=10), port(lab, "pb", nss[1])]
    sw = switch(lab, ports)
    a, b = ports[0]["name"], ports[1]["name"]
    before = counters(sw)
    helpers.nsexec(nss[0], sys.executable, SENDER, "eth0", "02:aa:00:00:00:00", "ff:ff:ff:ff:ff:ff", 200,
                   "--vary", "src")
    after = counters(sw)
    learned = fdb_ports(sw).get(a, set())
    # At most one more than the limit: two workers may each let a new MAC in at once (fastpath.h).
    assert 10 <= len(learned) <= 11
    passed = after[b]["tx_packets"] - before[b]["tx_packets"]
    assert passed == len(learned)
    assert after[a]["mac_limit_dropped"] - before[a]["mac_limit_dropped"] == 200 - passed
    # A MAC it has learned still gets through.
    mac = sorted(learned)[0][0]
    helpers.nsexec(nss[0], sys.executable, SENDER, "eth0", mac, "ff:ff:ff:ff:ff:ff", 5)
    assert counters(sw)[b]["tx_packets"] - after[b]["tx_packets"] == 5


def test_mac_limit_counts_no_static_mac_and_frees_room_when_a_mac_moves_away(lab):
    """A port with `mac_limit: 2` and a static MAC: frames from the static MAC and from two
    new MACs cross, a third new MAC's are dropped (mac_limit_dropped); once one of the two
    learned MACs moves to another port, the third one's frames cross."""
    nss = [quiet(lab, s) for s in ("a", "b", "c")]
    ports = [port(lab, "pa", nss[0], mac_limit=2), port(lab, "pb", nss[1]), port(lab, "pc", nss[2])]
    a, b, c = (p["name"] for p in ports)
    static, x, y, z = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03", "02:aa:00:00:00:04"
    sw = switch(lab, ports, static_macs=[{"mac": static, "port": a}])

    def send(ns: str, src: str) -> int:
        """Broadcasts from src on ns's port: how many reached port c."""
        before = counters(sw)[c]["tx_packets"]
        helpers.nsexec(ns, sys.executable, SENDER, "eth0", src, "ff:ff:ff:ff:ff:ff", 3)
        time.sleep(0.3)
        return counters(sw)[c]["tx_packets"] - before

    assert [send(nss[0], mac) for mac in (static, x, y, z)] == [3, 3, 3, 0]
    assert counters(sw)[a]["mac_limit_dropped"] == 3
    assert fdb_ports(sw)[a] == {(static, 1), (x, 1), (y, 1)}
    assert send(nss[1], x) == 3                                 # x moved to b
    assert send(nss[0], z) == 3
    assert fdb_ports(sw)[a] == {(static, 1), (y, 1), (z, 1)}


# ACLs.

def test_icmp_drop_acl_stops_ping_but_not_arp(lab):
    nss = [lab.netns(s, create=True) for s in ("a", "b")]
    ports = [port(lab, "pa", nss[0], "198.18.13.1/24", "fd00:13::1/64",
                  acl=[{"match": {"ip_proto": "icmp"}, "action": "drop"}]),
             port(lab, "pb", nss[1], "198.18.13.2/24", "fd00:13::2/64")]
    sw = switch(lab, ports)
    assert not helpers.ping(nss[0], "198.18.13.2", count=2)
    neigh = helpers.nsexec(nss[0], "ip", "-j", "neigh", "show", "198.18.13.2", "dev", "eth0").stdout
    assert json.loads(neigh)[0].get("lladdr") == helpers.link_mac(nss[1], "eth0")   # ARP crossed
    assert helpers.ping(nss[0], "fd00:13::2")                    # the rule is IPv4's ICMP only
    assert counters(sw)[ports[0]["name"]]["acl_dropped"] >= 2


def test_tcp_acl_drops_qinq_frames_as_it_drops_untagged_ones(lab):
    """A host sends TCP SYNs to port 22 and to port 80 inside double tags (802.1ad then
    802.1Q, and 802.1Q twice), and inside 802.1ad then 802.1Q tagged in its port's own VLAN
    (which the switch pops: the frame leaves with the two tags): the rule `tcp dst_port 22
    drop` holds for the IPv4 and IPv6 packets behind the tags, as for untagged ones; the
    others cross (it had let all through, and then the last kind, whose packet is behind a
    third tag counted from the MACs)."""
    nss = [quiet(lab, s) for s in ("a", "b")]
    ports = [port(lab, "pa", nss[0], vlan=10, acl=[{"match": {"ip_proto": "tcp", "dst_port": 22}, "action": "drop"}]),
             port(lab, "pb", nss[1], vlan=10)]
    sw = switch(lab, ports)
    a, b = ports[0]["name"], ports[1]["name"]
    src, dst = helpers.link_mac(nss[0], "eth0"), helpers.link_mac(nss[1], "eth0")
    packets = [IP(src="198.18.14.1", dst="198.18.14.2"), IPv6(src="fd00:14::1", dst="fd00:14::2")]
    tags = [Dot1AD(vlan=100) / Dot1Q(vlan=200), Dot1Q(vlan=10) / Dot1Q(vlan=200),
            Dot1Q(vlan=10) / Dot1AD(vlan=100) / Dot1Q(vlan=200)]
    before = counters(sw)
    for dport, sent in ((22, 0), (80, 5 * 6)):
        for outer in tags:
            for packet in packets:
                frame = Ether(src=src, dst=dst) / outer / packet / TCP(sport=40000, dport=dport, flags="S")
                helpers.nsexec(nss[0], sys.executable, SENDER, "eth0", "--frame", bytes(frame).hex(), 5)
        time.sleep(0.3)
        after = counters(sw)
        assert after[b]["tx_packets"] - before[b]["tx_packets"] == sent, (dport, after)
    assert after[a]["acl_dropped"] - before[a]["acl_dropped"] == 5 * 6
    assert after[a]["rx_errors"] == before[a]["rx_errors"]


def test_ipv6_fragment_rule_drops_a_datagram_the_kernel_fragments(lab):
    """`{eth_type: ipv6, ip_proto: 44}, drop`: a UDP datagram too big for the MTU, which the
    sender's kernel sends as IPv6 fragments, never reaches the receiver's socket; one that
    fits does. (The rule read the protocol behind the fragment header only, UDP, and let
    every fragment through.)"""
    nss = [lab.netns(s, create=True) for s in ("a", "b")]
    ports = [port(lab, "pa", nss[0], "fd00:17::1/64",
                  acl=[{"match": {"eth_type": "ipv6", "ip_proto": 44}, "action": "drop"}]),
             port(lab, "pb", nss[1], "fd00:17::2/64")]
    sw = switch(lab, ports)
    for ns in nss:
        helpers.wait_for("IPv6 duplicate address detection", lambda: helpers.ipv6_settled(ns, "eth0"), within=10)
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", nss[1], sys.executable, "-c",
         "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('fd00:17::2', 5000)); "
         "s.settimeout(3)\ntry:\n    while True: print(len(s.recv(65536)), flush=True)\nexcept TimeoutError: pass"],
        stdout=subprocess.PIPE, text=True)
    lab.procs.append(receiver)
    helpers.wait_for("the receiver bound", lambda: "5000" in helpers.nsexec(nss[1], "ss", "-Hlun").stdout)
    helpers.nsexec(nss[0], sys.executable, "-c",
                   "import socket, time; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
                   "for n in (100, 4000, 200): s.sendto(bytes(n), ('fd00:17::2', 5000)); time.sleep(0.2)")
    out, _ = receiver.communicate(timeout=15)
    assert out.split() == ["100", "200"], out
    assert counters(sw)[ports[0]["name"]]["acl_dropped"] >= 3          # the 4000 bytes: 3 fragments


def test_tcp_acl_drops_an_ipv6_first_fragment_that_leaves_its_tcp_header_to_the_next(lab):
    """`tcp dst_port 22 drop`: a host sends TCP to port 22 in two IPv6 fragments, the first
    ending inside a destination options header (RFC 7112 says it must carry the whole header
    chain), the second bringing the rest of it and the TCP header; and the same first fragment
    padded, in the frame, with the rest of the header and a TCP header to port 80. The first
    fragments are dropped and counted (both had crossed, and the second fragment, which holds no
    header a rule reads, crosses as any later fragment does: a host that reassembled them got
    the SYN to port 22); a first fragment that carries its headers, to port 80, crosses."""
    nss = [quiet(lab, s) for s in ("a", "b")]
    ports = [port(lab, "pa", nss[0], acl=[{"match": {"ip_proto": "tcp", "dst_port": 22}, "action": "drop"}]),
             port(lab, "pb", nss[1])]
    sw = switch(lab, ports)
    a, b = ports[0]["name"], ports[1]["name"]
    eth = Ether(src=helpers.link_mac(nss[0], "eth0"), dst=helpers.link_mac(nss[1], "eth0"))
    ip6 = IPv6(src="fd00:18::1", dst="fd00:18::2")
    dstopts = bytes([6, 1]) + bytes(14)                 # 16 bytes, TCP next
    syn = {p: bytes(TCP(sport=40000, dport=p, flags="S")) for p in (22, 80)}
    tiny = eth / ip6 / IPv6ExtHdrFragment(nh=60, m=1, id=9) / Raw(dstopts[:8])
    padded = tiny / Raw(dstopts[8:] + syn[80])
    padded[IPv6].plen = 16                             # the packet ends after the first 8 of dstopts
    later = eth / ip6 / IPv6ExtHdrFragment(nh=60, offset=1, id=9) / Raw(dstopts[8:] + syn[22])
    whole = eth / ip6 / IPv6ExtHdrFragment(nh=60, m=1, id=10) / Raw(dstopts + syn[80])

    def sent(frame) -> tuple[int, int]:
        """Frames of 5 copies of `frame` that b got, and that a's ACL dropped."""
        before = counters(sw)
        helpers.nsexec(nss[0], sys.executable, SENDER, "eth0", "--frame", bytes(frame).hex(), 5)
        time.sleep(0.3)
        after = counters(sw)
        assert after[a]["rx_errors"] == before[a]["rx_errors"]
        return (after[b]["tx_packets"] - before[b]["tx_packets"],
                after[a]["acl_dropped"] - before[a]["acl_dropped"])

    assert sent(tiny) == (0, 5)
    assert sent(padded) == (0, 5)
    assert sent(later) == (5, 0)
    assert sent(whole) == (5, 0)


def test_trunk_acl_reads_the_ip_packet_inside_the_tag_in_the_rules_vlan_only(lab):
    """A trunk's rules drop IPv4 to one address in VLAN 20 only, IPv6 to one address in any
    VLAN, and TCP to port 22 (behind IPv6 extension headers too). Tagged frames from the
    trunk's host cross to the access port of their VLAN, or not, as those rules say."""
    nss = [quiet(lab, s) for s in ("a", "b", "t")]
    acl = [{"match": {"vlan": 20, "ip_dst": "198.18.16.2/32"}, "action": "drop"},
           {"match": {"ip_dst": "fd00:16::2/128"}, "action": "drop"},
           {"match": {"ip_proto": "tcp", "dst_port": 22}, "action": "drop"}]
    ports = [port(lab, "pa", nss[0], vlan=10), port(lab, "pb", nss[1], vlan=20),
             port(lab, "pt", nss[2], trunk=[10, 20], acl=acl)]
    sw = switch(lab, ports)
    a, b, t = (p["name"] for p in ports)
    src = helpers.link_mac(nss[2], "eth0")
    to = {10: (a, helpers.link_mac(nss[0], "eth0")), 20: (b, helpers.link_mac(nss[1], "eth0"))}
    ip4 = IP(src="198.18.16.9", dst="198.18.16.2") / UDP(dport=5000)
    cases = [  # (VLAN, packet, crosses)
        (10, ip4, True), (20, ip4, False),
        (10, IP(src="198.18.16.9", dst="198.18.16.3") / UDP(dport=5000), True),
        (20, IP(src="198.18.16.9", dst="198.18.16.3") / UDP(dport=5000), True),
        (10, IPv6(src="fd00:16::9", dst="fd00:16::2") / UDP(dport=5000), False),
        (20, IPv6(src="fd00:16::9", dst="fd00:16::3") / UDP(dport=5000), True),
        (20, IPv6(src="fd00:16::9", dst="fd00:16::3") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
         / TCP(dport=22, flags="S"), False),
        (20, IPv6(src="fd00:16::9", dst="fd00:16::3") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
         / TCP(dport=80, flags="S"), True),
    ]
    dropped = 0
    for vid, packet, crosses in cases:
        name, mac = to[vid]
        before = counters(sw)
        frame = Ether(src=src, dst=mac) / Dot1Q(vlan=vid) / packet
        helpers.nsexec(nss[2], sys.executable, SENDER, "eth0", "--frame", bytes(frame).hex(), 3)
        time.sleep(0.3)
        after = counters(sw)
        got = {n: after[n]["tx_packets"] - before[n]["tx_packets"] for n in (a, b)}
        assert got == {n: 3 if crosses and n == name else 0 for n in (a, b)}, (vid, packet.summary(), got)
        dropped += 0 if crosses else 3
    assert counters(sw)[t]["acl_dropped"] == dropped


# Storm control.

def test_storm_control_holds_a_broadcast_flood_while_unicast_flows(lab):
    nss = [quiet(lab, s) for s in ("a", "b", "c", "d")]
    rate = 200
    ports = [port(lab, "pa", nss[0], storm_control={"broadcast_pps": rate}),
             port(lab, "pb", nss[1]),
             port(lab, "pc", nss[2], "198.18.14.3/24"),
             port(lab, "pd", nss[3], "198.18.14.4/24")]
    sw = switch(lab, ports)
    a, b = ports[0]["name"], ports[1]["name"]
    assert helpers.ping(nss[2], "198.18.14.4")
    pinger = subprocess.Popen(["ip", "netns", "exec", nss[2], "ping", "-i", "0.05", "-c", "30", "-W", "1",
                               "198.18.14.4"], stdout=subprocess.PIPE, text=True)
    lab.procs.append(pinger)
    before = counters(sw)
    start = time.monotonic()
    sent = 40000
    helpers.nsexec(nss[0], sys.executable, SENDER, "eth0", helpers.link_mac(nss[0], "eth0"), "ff:ff:ff:ff:ff:ff",
                   sent, timeout=120)
    elapsed = time.monotonic() - start
    after = counters(sw)
    out, _ = pinger.communicate(timeout=30)
    passed = after[b]["tx_packets"] - before[b]["tx_packets"]
    dropped = after[a]["storm_dropped"] - before[a]["storm_dropped"]
    received = after[a]["rx_packets"] - before[a]["rx_packets"]
    assert received == sent
    assert passed + dropped == sent
    burst = 20                                                  # a tenth of a second's worth
    assert 0.6 * rate * elapsed <= passed <= 1.3 * rate * elapsed + burst, (passed, elapsed)
    assert " 0% packet loss" in out, out                        # unicast elsewhere kept flowing

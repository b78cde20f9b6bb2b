"""What crosses the switch arrives as it was sent, on real traffic: a TCP
stream's bytes (their sha256 at the receiver), UDP datagrams around the MTU
and fragmented ones (IPv4 with DF off), pings at the largest size that fits,
over IPv4 and IPv6, at MTU 1500 and 9000, with one queue and two; through
access ports of a VLAN, a VLAN's tag pushed and popped between two switches,
flooded to access and trunk ports at once, and through a remote port.

A host's UDP leaves with its checksum still to be taken (the TAP offers
checksum offload: the sender's virtio-net header says NEEDS_CSUM), and so
arrives, and a receiver on the same machine never checks it: csumcheck.py
takes it as a NIC would, where the header says, and checks it.

The kernel here has no 802.1Q devices and no VLAN-filtering bridge (both
probed: "Unknown device type", EOPNOTSUPP), so a trunk's tagged frames are
carried between two switches, as in test_features.
"""

import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

from tests.integration import helpers

HERE = os.path.dirname(__file__)
XFER = os.path.join(HERE, "xfer.py")
CSUM = os.path.join(HERE, "csumcheck.py")
IP_UDP = {4: 28, 6: 48}         # IP and UDP headers: an MTU less these is the largest datagram unfragmented


def container(lab, suffix: str, i: int, mtu: int = 1500, **settings) -> dict:
    """A port whose container the switch makes, at 198.18.0.i and fd00::i."""
    return {"name": lab.name(f"p{suffix}"), "netns": lab.name(suffix), "ifname": "eth0", "mtu": mtu,
            "addresses": [f"198.18.0.{i}/24", f"fd00::{i}/64"], **settings}


def addresses(i: int) -> list[tuple[int, str]]:
    return [(4, f"198.18.0.{i}"), (6, f"fd00::{i}")]


def counters(sw) -> dict[str, dict]:
    return {p["name"]: p["counters"] for p in sw.cli_json("ports")}


def started(lab, ns: str, script: str, *argv) -> subprocess.Popen:
    """A receiver (xfer.py or csumcheck.py) in `ns`, once it says it listens."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, script, *map(str, argv)],
                         stdout=subprocess.PIPE, text=True)
    lab.procs.append(p)
    assert p.stdout.readline().strip() == "ready"
    return p


def send(ns: str, *argv) -> str:
    return helpers.nsexec(ns, sys.executable, XFER, *argv, timeout=60).stdout


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)      # as xfer.py makes them


def tcp_intact(lab, src: str, dst: str, address: str, size: int = 4 << 20, port: int = 5001) -> None:
    """`size` random bytes over TCP from src to address (in dst) arrive, all and as sent."""
    r = started(lab, dst, XFER, "tcp-recv", address, port)
    send(src, "tcp-send", address, port, size, port)
    assert r.communicate(timeout=60)[0].split() == [str(size), hashlib.sha256(random_bytes(port, size)).hexdigest()]


def udp_intact(lab, src: str, dst: str, address: str, sizes: list[int], bind: str | None = None) -> None:
    """One UDP datagram of each size from src to address arrives in dst, each as sent (in any order:
    with two queues a fragmented one may pass a whole one)."""
    r = started(lab, dst, XFER, "udp-recv", bind or address, 5002, len(sizes), 1)
    errors = send(src, "udp-send", address, 5002, 3, *sizes)
    got = sorted(tuple(line.split()) for line in r.communicate(timeout=30)[0].splitlines())
    assert got == sorted((str(n), hashlib.sha256(random_bytes(3, n)).hexdigest()) for n in sizes), errors


def checksums_taken(lab, src: str, dst: str, address: str, sizes: list[int], dev: str = "eth0") -> None:
    """UDP datagrams from src arrive in dst with their checksum still to be taken (NEEDS_CSUM, as
    the sender's kernel left it), and the checksum taken where their header says is right."""
    c = started(lab, dst, CSUM, dev, 5003, len(sizes), 1)
    send(src, "udp-send", address, 5003, 1, *sizes)
    assert c.communicate(timeout=30)[0].splitlines() == [f"{n + 8} partial ok" for n in sizes]


def ping(ns: str, address: str, size: int, df: bool = True) -> bool:
    six = ["-6"] if ":" in address else []
    r = helpers.nsexec(ns, "ping", *six, "-c", 1, "-W", 2, *(["-M", "do"] if df else []), "-s", size, address,
                       check=False)
    return r.returncode == 0


@pytest.mark.parametrize("queues", [1, 2])
@pytest.mark.parametrize("mtu", [1500, 9000])
def test_tcp_udp_and_icmp_arrive_intact_over_ipv4_and_ipv6(lab, mtu, queues):
    ports = [container(lab, "a", 1, mtu), container(lab, "b", 2, mtu)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": queues}, "ports": ports})
    a, b = ports[0]["netns"], ports[1]["netns"]
    for family, address in addresses(2):
        largest = mtu - IP_UDP[family]
        assert ping(a, address, largest)                # an echo of a full MTU, and its reply
        assert not ping(a, address, largest + 1)        # the sender's own MTU holds it back
        assert ping(a, address, 3 * mtu, df=False)      # fragmented
        tcp_intact(lab, a, b, address)
        udp_intact(lab, a, b, address, [1, largest - 8, largest - 7, 3 * mtu, 60000])
        checksums_taken(lab, a, b, address, [1, largest - 8])
    c = counters(sw)
    assert all(c[p["name"]][k] == 0 for p in ports for k in ("rx_errors", "rx_dropped", "tx_errors", "tx_dropped"))
    # Nothing but these two ports: what one received, the other sent.
    pa, pb = (p["name"] for p in ports)
    assert (c[pa]["rx_packets"], c[pa]["rx_bytes"]) == (c[pb]["tx_packets"], c[pb]["tx_bytes"])
    assert (c[pb]["rx_packets"], c[pb]["rx_bytes"]) == (c[pa]["tx_packets"], c[pa]["tx_bytes"])


def test_a_frame_over_the_smaller_mtu_is_a_tx_error_of_that_port_and_streams_cross_whole(lab):
    """A port at MTU 9000 and one at 1500: a frame too big for the 1500 port (pinged with DF,
    or a UDP datagram its sender need not fragment) is not sent to it and is one of its
    tx_errors, as the README's tx_errors row says; a full 1500 one crosses, and TCP, whose
    GSO super-frames are measured by their segments, crosses both ways intact."""
    ports = [container(lab, "a", 1, 9000), container(lab, "b", 2, 1500)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 2}, "ports": ports})
    a, b = ports[0]["netns"], ports[1]["netns"]
    pa, pb = (p["name"] for p in ports)
    for family, address in addresses(2):
        largest = 1500 - IP_UDP[family]
        assert helpers.ping(a, address)
        before = counters(sw)
        assert ping(a, address, largest)
        assert not ping(a, address, largest + 1)
        assert not ping(a, address, 4000)
        udp_intact(lab, a, b, address, [1, largest - 8])
        r = started(lab, b, XFER, "udp-recv", address, 5002, 1, 1)
        send(a, "udp-send", address, 5002, 3, 3000)
        assert r.communicate(timeout=30)[0] == ""
        after = counters(sw)
        assert after[pb]["tx_errors"] - before[pb]["tx_errors"] == 3     # two pings, one datagram
        assert after[pa]["rx_dropped"] == before[pa]["rx_dropped"]
        assert after[pa]["tx_errors"] == 0
        tcp_intact(lab, a, b, address)
        tcp_intact(lab, b, a, addresses(1)[family == 6][1])
    c = counters(sw)
    # What a received, b was sent or refused.
    assert c[pa]["rx_packets"] == c[pb]["tx_packets"] + c[pb]["tx_errors"]


@pytest.mark.parametrize("mtu", [1500, 9000])
def test_a_vlans_frames_tagged_across_two_switches_and_flooded_to_access_and_trunk_arrive_intact(lab, mtu):
    """Switch one: access ports a1, a2 in VLAN 10 and a trunk; switch two: access port b1 in
    VLAN 10 and a trunk; the trunks joined by a Linux bridge, which forwards tagged frames as
    they are. a1 to b1 is pushed on one switch and popped on the other, the checksum's start
    moved each time; a broadcast and an IPv6 multicast from a1 go to a2 as they are and to b1
    through the trunks, and from b1 come popped to a1 and a2."""
    wire = lab.netns("w", create=True)
    vlan10 = {"vlan": 10, "mtu": mtu}
    trunk = {"trunk": [10, 20], "mtu": mtu, "netns": wire}
    one = [container(lab, "a1", 1, **vlan10), container(lab, "a2", 2, **vlan10), {"name": lab.name("t1"), **trunk}]
    two = [container(lab, "b1", 3, **vlan10), {"name": lab.name("t2"), **trunk}]
    lab.switch({"switch": {"name": lab.name("sw"), "queues": 2}, "ports": one})
    lab.switch({"switch": {"name": lab.name("sx"), "queues": 2}, "ports": two})
    helpers.nsexec(wire, "ip", "link", "add", "br0", "mtu", mtu, "type", "bridge")
    for dev in (lab.name("t1"), lab.name("t2")):
        helpers.nsexec(wire, "ip", "link", "set", dev, "master", "br0")
    helpers.nsexec(wire, "ip", "link", "set", "br0", "up")
    a1, a2, b1 = one[0]["netns"], one[1]["netns"], two[0]["netns"]

    for family, address in addresses(3):
        largest = mtu - IP_UDP[family]
        helpers.wait_for(f"{address} across the trunks", lambda: helpers.ping(a1, address), within=10)
        assert ping(a1, address, largest)
        tcp_intact(lab, a1, b1, address)
        tcp_intact(lab, b1, a1, addresses(1)[family == 6][1])
        udp_intact(lab, a1, b1, address, [1, largest - 8, 3 * mtu, 60000])
        checksums_taken(lab, a1, b1, address, [1, largest - 8])
        checksums_taken(lab, b1, a1, addresses(1)[family == 6][1], [1, largest - 8])
    for src, dsts in ((a1, (a2, b1)), (b1, (a1, a2))):
        for family, group, bind in ((4, "198.18.0.255", "0.0.0.0"), (6, "ff02::1%eth0", "::")):
            sizes = [1, 1500 - IP_UDP[family] - 8]
            receivers = [started(lab, ns, XFER, "udp-recv", bind, 5002, len(sizes), 1) for ns in dsts]
            checks = [started(lab, ns, CSUM, "eth0", 5002, len(sizes), 1) for ns in dsts]
            send(src, "udp-send", group, 5002, 3, *sizes)
            want = sorted((str(n), hashlib.sha256(random_bytes(3, n)).hexdigest()) for n in sizes)
            for ns, r, c in zip(dsts, receivers, checks):
                assert sorted(tuple(x.split()) for x in r.communicate(timeout=30)[0].splitlines()) == want, (src, ns)
                assert c.communicate(timeout=30)[0].splitlines() == [f"{n + 8} partial ok" for n in sizes], (src, ns)


@pytest.mark.parametrize("mtu", [1500, 9000])
def test_a_remote_ports_traffic_arrives_intact_both_ways(lab, mtu):
    """A container and a host behind a veth attached as a promisc remote port: the host's GSO
    super-frames come in through tc's redirect, the switch's go out through it."""
    sw_ns, out = lab.netns("sw", create=True), lab.netns("out", create=True)
    c1 = lab.netns("c1", create=True)
    helpers.sh("ip", "link", "add", "nic0", "netns", sw_ns, "mtu", mtu, "type", "veth",
               "peer", "name", "eth0", "netns", out, "mtu", mtu)
    helpers.nsexec(sw_ns, "ip", "link", "set", "nic0", "up")
    helpers.nsexec(out, "ip", "addr", "add", "198.18.0.2/24", "dev", "eth0")
    helpers.nsexec(out, "ip", "addr", "add", "fd00::2/64", "dev", "eth0", "nodad")
    helpers.nsexec(out, "ip", "link", "set", "eth0", "up")
    port = container(lab, "c1", 1, mtu)
    port["netns"] = f"/run/netns/{c1}"
    sw = lab.switch({"switch": {"name": lab.name("s"), "queues": 2},
                     "ports": [port, {"name": lab.name("up"), "remote": "nic0", "remote_mode": "promisc"}]},
                    netns=sw_ns)
    for (family, address), (_, back) in zip(addresses(2), addresses(1)):
        largest = mtu - IP_UDP[family]
        helpers.wait_for(f"{address} through the remote port", lambda: helpers.ping(c1, address), within=10)
        tcp_intact(lab, c1, out, address)
        tcp_intact(lab, out, c1, back)
        udp_intact(lab, c1, out, address, [1, largest - 8, 3 * mtu, 60000])
        udp_intact(lab, out, c1, back, [1, largest - 8, 3 * mtu, 60000])
        checksums_taken(lab, c1, out, address, [1, largest - 8])
        checksums_taken(lab, out, c1, back, [1, largest - 8])
    c = counters(sw)
    assert all(c[n][k] == 0 for n in c for k in ("rx_errors", "tx_errors", "tx_dropped"))


def test_small_udp_at_full_rate_is_lost_only_before_the_switch_or_after_it(lab):
    """iperf3 -u with 18-byte datagrams (60-byte frames) faster than its server reads them:
    what the switch read it sent (nothing dropped, refused or in error), and what it did not
    read is counted as rx_missed (a full TAP queue); iperf3's losses beyond those are the
    receiving socket's (its UDP receive buffer errors)."""
    ports = [container(lab, "a", 1), container(lab, "b", 2)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1}, "ports": ports})
    a, b = ports[0]["netns"], ports[1]["netns"]
    pa, pb = (p["name"] for p in ports)
    assert helpers.ping(a, "198.18.0.2")
    before = counters(sw)
    server = subprocess.Popen(["ip", "netns", "exec", b, "iperf3", "-s", "-1", "-B", "198.18.0.2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(server)
    helpers.wait_for("the iperf3 server listening", lambda: helpers.tcp_listening(b, helpers.IPERF3_PORT), within=10)
    r = helpers.nsexec(a, "iperf3", "-c", "198.18.0.2", "-u", "-l", "18", "-b", "0", "-t", "1", "-J", timeout=30)
    sent = json.loads(r.stdout)["end"]["sum"]["packets"]
    server.wait(timeout=10)
    after = counters(sw)
    d = {p: {k: after[p][k] - before[p][k] for k in after[p]} for p in after}
    assert d[pa]["rx_packets"] == d[pb]["tx_packets"] and d[pb]["rx_packets"] == d[pa]["tx_packets"], d
    assert all(d[p][k] == 0 for p in d for k in ("rx_errors", "rx_dropped", "tx_errors", "tx_dropped")), d
    assert d[pa]["rx_packets"] + d[pa]["rx_missed"] >= sent, (sent, d)

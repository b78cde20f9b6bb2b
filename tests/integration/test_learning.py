"""MAC learning at scale, end to end: thousands of hosts behind one port, reached without flooding."""

import os
import sys

from tests.integration import helpers

SENDER = os.path.join(os.path.dirname(__file__), "sendframes.py")
HOSTS = 3000


def quiet_namespace(lab, suffix: str) -> str:
    """A namespace whose kernel sends nothing by itself (no IPv6, no addresses)."""
    ns = lab.netns(suffix, create=True)
    helpers.nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    return ns


def counters(sw) -> dict:
    return {p["name"]: p["counters"] for p in sw.cli_json("ports")}


def test_thousands_of_learned_hosts_are_reached_with_no_flooding(lab):
    nss = [quiet_namespace(lab, s) for s in ("a", "b", "c")]
    ports = [{"name": lab.name(f"p{i}"), "netns": ns, "ifname": "eth0"} for i, ns in enumerate(nss)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 2, "mac_table": {"size": 16384}}, "ports": ports})
    a, b, c = (p["name"] for p in ports)

    # Learning: HOSTS source MACs behind port a (broadcast frames, flooded once each). On a loaded
    # machine the sender can outrun the TAP's queue, and a frame the kernel drops before the switch
    # sees it is not the switch's to learn: the MACs still missing are sent again, a few rounds at most.
    learned: set[str] = set()
    for _ in range(4):
        helpers.nsexec(nss[0], sys.executable, SENDER, "eth0", "02:aa:00:00:00:00", "ff:ff:ff:ff:ff:ff",
                       HOSTS, "--vary", "src", timeout=60)
        learned = {e["mac"] for e in sw.cli_json("fdb") if e["port"] == a and e["mac"].startswith("02:aa:")}
        if len(learned) == HOSTS:
            break
    assert len(learned) == HOSTS, f"{HOSTS - len(learned)} MACs not learned"
    assert not sw.events("fdb.full")        # nothing was evicted to make room

    # Reaching them: unicast from port b to every learned MAC goes to port a only.
    before = counters(sw)
    b_mac = helpers.link_mac(nss[1], "eth0")
    helpers.nsexec(nss[1], sys.executable, SENDER, "eth0", b_mac, "02:aa:00:00:00:00",
                   HOSTS, "--vary", "dst", timeout=60)
    after = counters(sw)
    received = after[b]["rx_packets"] - before[b]["rx_packets"]
    assert received >= 0.99 * HOSTS          # (the kernel may drop a few before the switch, under load)
    assert after[a]["tx_packets"] - before[a]["tx_packets"] == received    # every one went to port a...
    assert after[b]["flooded"] - before[b]["flooded"] == 0                  # ...as known unicast
    assert after[c]["tx_packets"] - before[c]["tx_packets"] == 0


def test_the_link_local_group_is_not_relayed_and_stp_and_above_are(lab):
    """Frames to 01:80:C2:00:00:01..0F (PAUSE, LACP, 802.1X, LLDP) stop at the switch, counted in
    rx_dropped, as at a Linux bridge; :00 (STP: the switch runs none) and :10 are flooded."""
    nss = [quiet_namespace(lab, s) for s in ("a", "b", "c")]
    ports = [{"name": lab.name(f"p{i}"), "netns": ns, "ifname": "eth0"} for i, ns in enumerate(nss)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 2}, "ports": ports})
    a, b, c = (p["name"] for p in ports)
    a_mac = helpers.link_mac(nss[0], "eth0")
    before = counters(sw)
    n = 20
    for group in ("01:80:c2:00:00:01", "01:80:c2:00:00:02", "01:80:c2:00:00:03", "01:80:c2:00:00:0e",
                  "01:80:c2:00:00:0f", "01:80:c2:00:00:00", "01:80:c2:00:00:10"):
        helpers.nsexec(nss[0], sys.executable, SENDER, "eth0", a_mac, group, n, timeout=60)
    helpers.wait_for("every frame read", lambda: counters(sw)[a]["rx_packets"] - before[a]["rx_packets"] == 7 * n)
    after = counters(sw)
    d = {p: {k: after[p][k] - before[p][k] for k in after[p]} for p in (a, b, c)}
    assert (d[a]["rx_dropped"], d[a]["flooded"], d[a]["rx_errors"]) == (5 * n, 2 * n, 0), d[a]
    assert d[b]["tx_packets"] == d[c]["tx_packets"] == 2 * n, d
    assert {e["port"] for e in sw.cli_json("fdb") if e["mac"] == a_mac} == {a}

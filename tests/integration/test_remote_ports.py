"""Remote ports end to end: the switch in its own namespace, a veth "NIC" wired to an outside host."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tapswitch import remote, tc
from tests.integration import helpers

# Sends raw frames from inside a namespace (AF_PACKET).
SENDER = os.path.join(os.path.dirname(__file__), "sendframes.py")
# Runs the switch, killed (SIGKILL) as it is about to add its first tc rule.
KILLED_BEFORE_FIRST_RULE = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "kill_before_first_rule.py"))
# Runs the switch, which deletes a device as it starts: where $TAPSWITCH_TEST_DEVICE_GOES says.
DEVICE_GOES = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "device_goes.py"))


def nic_state(ns: str, dev: str = "nic0") -> dict:
    """Everything a stop must give back: qdiscs, filters, flags, MTU."""
    link = json.loads(helpers.nsexec(ns, "ip", "-j", "link", "show", "dev", dev).stdout)[0]
    qdiscs = helpers.nsexec(ns, "tc", "qdisc", "show", "dev", dev).stdout
    # The kernel numbers actions as they are made: compare rules without their action index.
    filters = [re.sub(r"index \d+ ref \d+ bind \d+", "", helpers.nsexec(ns, "tc", "filter", "show", "dev", dev, where).stdout)
               for where in ("ingress", "egress")]
    return {"flags": sorted(link["flags"]), "mtu": link["mtu"], "promisc": link.get("promiscuity"),
            "qdiscs": qdiscs, "filters": filters}


@pytest.fixture
def site(lab):
    """Namespaces: sw (the switch, with nic0), out (the outside host, eth0 198.18.3.100), c1, c2."""
    sw, out = lab.netns("sw", create=True), lab.netns("out", create=True)
    c1, c2 = lab.netns("c1", create=True), lab.netns("c2", create=True)
    helpers.sh("ip", "link", "add", "nic0", "netns", sw, "type", "veth", "peer", "name", "eth0", "netns", out)
    helpers.nsexec(sw, "ip", "link", "set", "nic0", "up")
    helpers.nsexec(out, "ip", "addr", "add", "198.18.3.100/24", "dev", "eth0")
    helpers.nsexec(out, "ip", "link", "set", "eth0", "up")
    return {"sw": sw, "out": out, "c": [c1, c2]}


def config(lab, site, mode: str, mtu: int | None = None) -> dict:
    ports = [{"name": lab.name(f"p{i}"), "netns": f"/run/netns/{c}", "ifname": "eth0",
              "addresses": [f"198.18.3.{i + 1}/24"]} for i, c in enumerate(site["c"])]
    uplink = {"name": lab.name("up"), "remote": "nic0", "remote_mode": mode}
    if mtu:
        uplink["mtu"] = mtu
    return {"switch": {"name": lab.name("s"), "queues": 1}, "ports": ports + [uplink]}


def wait_port(sw, name: str, state: str, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if {p["name"]: p["state"] for p in sw.cli_json("ports")}[name] == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} not {state} within {within}s")


def test_promisc_uplink_reaches_the_outside_host(lab, site):
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"])
    for c in site["c"]:
        assert helpers.ping(c, "198.18.3.100")
    fdb = {e["mac"]: e["port"] for e in sw.cli_json("fdb")}
    assert fdb[helpers.link_mac(site["out"], "eth0")] == lab.name("up")


def stolen_macs(ns: str, dev: str = "nic0") -> set[str]:
    """The MACs whose frames shared mode's rules on `dev` redirect to the switch (u32 matching
    the destination MAC: its first 2 bytes at -16, the other 4 at -12)."""
    out = helpers.nsexec(ns, "tc", "filter", "show", "dev", dev, "ingress").stdout
    found = re.findall(r"match 0000([0-9a-f]{4})/0000ffff at -16\s+match ([0-9a-f]{8})/ffffffff at -12\s+"
                       r"action order \d+: mirred \(Egress Redirect", out)
    return {":".join(re.findall("..", hi + lo)) for hi, lo in found}


def frames_seen(ns: str, send) -> list[str]:
    """tcpdump's lines (-e: MACs and 802.1Q tags) for the frames of ethertype 0x88b5 that
    eth0 in `ns` received while send() ran."""
    dump = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", "eth0", "-Q", "in", "-e", "-nn", "-l"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while "listening on" not in dump.stderr.readline():     # capturing from here on
            assert dump.poll() is None, "tcpdump ended before capturing"
        send()
        time.sleep(0.3)
    finally:
        dump.terminate()
        out, _ = dump.communicate(timeout=5)
    return [line.split(" ", 1)[1] for line in out.splitlines() if "(0x88b5)" in line]


def test_promisc_trunk_uplink_carries_full_size_tagged_frames_both_ways(lab, site):
    """A remote port that is a trunk: the kernel takes the 802.1Q tag of a frame that comes in
    on IFACE out of it (into the skb) before tc sees it, and a TAP writes it back in front of
    the frame; the switch's frames for IFACE lose theirs at the TAP's ingress and IFACE puts it
    back. Full-size frames of the trunk's VLAN cross both ways, tagged on the wire with their
    priority, untagged on the access port; an untagged frame, in no VLAN of the trunk, does not."""
    # The outside host sends only the test's frames: its IPv6 (router solicitations, MLD
    # reports, untagged) would be counted in the trunk's vlan_dropped beside the one counted.
    helpers.nsexec(site["out"], "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")
    cfg = config(lab, site, "promisc")
    cfg["ports"][0]["vlan"] = 10
    cfg["ports"][-1]["trunk"] = [10]
    sw = lab.switch(cfg, netns=site["sw"])
    access, up = cfg["ports"][0]["name"], cfg["ports"][-1]["name"]
    host, out = site["c"][0], site["out"]
    host_mac, out_mac = helpers.link_mac(host, "eth0"), helpers.link_mac(out, "eth0")
    full = "88b5" + "41" * 1500
    tag = "8100a00a"                       # VLAN 10, PCP 5

    def send(ns: str, frame: str) -> None:
        helpers.nsexec(ns, sys.executable, SENDER, "eth0", "--frame", frame, 1)

    def mac_hex(mac: str) -> str:
        return mac.replace(":", "")

    assert frames_seen(host, lambda: send(out, "ff" * 6 + mac_hex(out_mac) + tag + full)) == [
        f"{out_mac} > ff:ff:ff:ff:ff:ff, ethertype Unknown (0x88b5), length 1514: "]
    assert frames_seen(out, lambda: send(host, mac_hex(out_mac) + mac_hex(host_mac) + full)) == [
        f"{host_mac} > {out_mac}, ethertype 802.1Q (0x8100), length 1518: vlan 10, p 0, ethertype Unknown (0x88b5), "]
    before = {p["name"]: p["counters"] for p in sw.cli_json("ports")}[up]["vlan_dropped"]
    assert frames_seen(host, lambda: send(out, "ff" * 6 + mac_hex(out_mac) + full)) == []
    assert {p["name"]: p["counters"] for p in sw.cli_json("ports")}[up]["vlan_dropped"] == before + 1
    assert {(e["mac"], e["vlan"], e["port"]) for e in sw.cli_json("fdb")} >= {(out_mac, 10, up), (host_mac, 10, access)}


def test_shared_uplink_leaves_the_host_its_own_address(lab, site):
    helpers.nsexec(site["sw"], "ip", "addr", "add", "198.18.3.50/24", "dev", "nic0")
    lab.switch(config(lab, site, "shared"), netns=site["sw"])
    # The containers' rules follow the MAC table once a second: an answer that comes before its
    # container's rule goes to the host (late under load: 2 failures in 20 runs). So each
    # container sends a broadcast, which the switch learns its MAC from (and which leaves no ARP
    # resolution going, as a ping to the outside host would, to fail the next ping), and the
    # test waits for their rules before it pings.
    macs = {helpers.link_mac(c, "eth0") for c in site["c"]}
    for c in site["c"]:
        helpers.nsexec(c, "ping", "-b", "-c", "1", "-W", "1", "198.18.3.255", check=False)
    helpers.wait_for("the containers' MACs redirected to the switch", lambda: macs <= stolen_macs(site["sw"]),
                     within=10)
    assert helpers.ping(site["c"][0], "198.18.3.100")
    assert helpers.ping(site["c"][1], "198.18.3.100")
    # The host keeps using its NIC: the outside host still reaches the host's own address, both ways.
    assert helpers.ping(site["out"], "198.18.3.50")
    assert helpers.ping(site["sw"], "198.18.3.100")


def test_a_shared_ports_thousands_of_rules_made_at_once_lose_the_switch_no_link_event(lab, site):
    """4000 MACs behind another port from the start (static): the shared port's first update adds
    4000 rules while the control loop reads no event, and the kernel tells the switch of each one
    (RTMGRP_TC: 1280 bytes of the link monitor's buffer each). They fit (linkmon.RCVBUF): no event
    is lost, no resync. (The buffer was 2 MiB, where net.core.rmem_max allows that, and 416 KiB
    under the kernel's default: `link.events_lost`, and a resync of every port.)"""
    cfg = config(lab, site, "shared")
    macs = {f"02:00:00:01:{i >> 8:02x}:{i & 0xff:02x}" for i in range(4000)}
    cfg["switch"]["mac_table"] = {"size": 16384}
    cfg["static_macs"] = [{"mac": mac, "port": lab.name("p0")} for mac in sorted(macs)]
    sw = lab.switch(cfg, netns=site["sw"])
    helpers.wait_for("the MACs' rules", lambda: macs <= stolen_macs(site["sw"]), within=30, every=0.5)
    # An event after theirs: the switch that has it has read theirs (or lost them, and said so).
    helpers.nsexec(site["c"][1], "ip", "link", "set", "eth0", "down")
    wait_port(sw, lab.name("p1"), "down", within=15)     # a resync took 5 s here: check_foreign (0.3 s now)
    assert not sw.events("link.events_lost"), sw.events("link.events_lost")
    assert sw.stop() == 0


def test_nic_down_takes_the_port_down_and_traffic_resumes_when_up(lab, site):
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"])
    up = lab.name("up")
    assert helpers.ping(site["c"][0], "198.18.3.100")
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "down")
    wait_port(sw, up, "down")
    assert not helpers.ping(site["c"][0], "198.18.3.100", wait=1)
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "up")
    wait_port(sw, up, "up")
    deadline = time.monotonic() + 5
    while not helpers.ping(site["c"][0], "198.18.3.100", wait=1):
        assert time.monotonic() < deadline, "traffic did not resume"


def test_nic_deleted_and_recreated_is_attached_again(lab, site):
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"])
    up = lab.name("up")
    helpers.nsexec(site["sw"], "ip", "link", "del", "nic0")
    wait_port(sw, up, "down")
    helpers.sh("ip", "link", "add", "nic0", "netns", site["sw"], "type", "veth", "peer", "name", "eth0",
               "netns", site["out"])
    helpers.nsexec(site["out"], "ip", "addr", "add", "198.18.3.100/24", "dev", "eth0")
    helpers.nsexec(site["out"], "ip", "link", "set", "eth0", "up")
    wait_port(sw, up, "up", within=3)
    assert sw.events("remote.returned")
    deadline = time.monotonic() + 5
    while not helpers.ping(site["c"][0], "198.18.3.100", wait=1):
        assert time.monotonic() < deadline, "traffic did not resume on the new NIC"


def test_a_nic_renamed_while_attached_then_deleted_hands_the_port_to_the_device_that_took_its_name(lab, site):
    """nic0 renamed nic9 while attached (the port keeps the device), a new nic0 made and up with
    carrier (its events come while the port has nic9: not its), then nic9 deleted: the port
    attaches the new nic0 at once, and the containers reach the outside host through it. (The
    port stayed down, nic0 unattached, until nic0's next link event, which may never come.)"""
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"])
    up = lab.name("up")
    assert helpers.ping(site["c"][0], "198.18.3.100")
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "down")       # a device up takes no new name
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "name", "nic9")
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic9", "up")
    helpers.sh("ip", "link", "add", "nic0", "netns", site["sw"], "type", "veth", "peer", "name", "eth1",
               "netns", site["out"])
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "up")
    helpers.nsexec(site["out"], "ip", "link", "set", "eth1", "up")
    wait_port(sw, up, "up")
    before = nic_state(site["sw"])              # the new nic0, untouched: the port has nic9
    helpers.nsexec(site["sw"], "ip", "link", "del", "nic9")    # and the outside host's eth0 with it
    helpers.nsexec(site["out"], "ip", "addr", "add", "198.18.3.100/24", "dev", "eth1")
    helpers.wait_for("nic0 attached", lambda: sw.events("remote.returned"))
    wait_port(sw, up, "up")
    helpers.nsexec(site["c"][0], "ip", "neigh", "flush", "all")    # the outside host's MAC is eth1's now
    assert helpers.ping(site["c"][0], "198.18.3.100")
    assert sw.stop() == 0
    assert nic_state(site["sw"]) == before


@pytest.mark.parametrize("mode", ["promisc", "shared"])
def test_a_ports_tap_deleted_gives_the_nic_back_until_a_reload_attaches_it_again(lab, site, mode):
    """The uplink's TAP deleted by hand (port.gone): its rules on the NIC redirected to a device
    that is no more, and in promisc mode the host lost all the NIC's traffic, until a reload or
    the stop. The NIC is given back as a detach gives it (rules, clsact, flags), the host
    reaches the outside host through it again, and the reload that makes the port attaches it."""
    helpers.nsexec(site["sw"], "ip", "addr", "add", "198.18.3.50/24", "dev", "nic0")
    before = nic_state(site["sw"])
    sw = lab.switch(config(lab, site, mode), netns=site["sw"])
    up = lab.name("up")

    def reaches_the_outside_host() -> bool:
        if mode == "shared":     # its rules follow the MAC table once a second (as in the shared test above)
            helpers.nsexec(site["c"][0], "ping", "-b", "-c", "1", "-W", "1", "198.18.3.255", check=False)
            mac = helpers.link_mac(site["c"][0], "eth0")
            helpers.wait_for("the container's MAC redirected", lambda: mac in stolen_macs(site["sw"]), within=10)
        return helpers.ping(site["c"][0], "198.18.3.100")

    assert reaches_the_outside_host()
    assert nic_state(site["sw"]) != before
    helpers.nsexec(site["sw"], "ip", "link", "del", up)
    helpers.wait_for("port.gone", lambda: [e for e in sw.events("port.gone") if e["port"] == up])
    helpers.wait_for("the NIC given back", lambda: nic_state(site["sw"]) == before)
    assert helpers.ping(site["out"], "198.18.3.50")
    assert helpers.ping(site["sw"], "198.18.3.100")
    r = sw.cli("reload")
    assert r.stdout.strip() == f"reloaded: remade {up}", (r, sw.log())
    wait_port(sw, up, "up")
    assert nic_state(site["sw"]) != before
    assert reaches_the_outside_host()
    assert sw.stop(signal.SIGTERM) == 0
    assert nic_state(site["sw"]) == before


def remake_nic(site, name: str = "nic0") -> None:
    """nic0 made again (deleted before), wired to the outside host's eth0 again, down: as `name`."""
    helpers.sh("ip", "link", "add", name, "netns", site["sw"], "type", "veth", "peer", "name", "eth0",
               "netns", site["out"])
    helpers.nsexec(site["out"], "ip", "addr", "add", "198.18.3.100/24", "dev", "eth0")
    helpers.nsexec(site["out"], "ip", "link", "set", "eth0", "up")


def port_of(sw, name: str) -> dict:
    return {p["name"]: p for p in sw.cli_json("ports")}[name]


def test_a_nic_made_again_with_a_users_filter_in_the_reserved_range_is_attached_once_it_goes(lab, site):
    """nic0 deleted and made again with a filter of its user's at a priority tapswitch reserves:
    the attach is refused, said once, and `tapswitch ports` says why the port is down. The filter
    deleted (no event of nic0's), a tick's try attaches it. (It waited for nic0's next link event,
    which may never come: the port stayed down until a reload.)"""
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"])
    up = lab.name("up")
    helpers.nsexec(site["sw"], "ip", "link", "del", "nic0")
    wait_port(sw, up, "down")
    remake_nic(site, "nic0new")         # the filter on it before it is nic0, the switch's to attach
    user = ("dev", "nic0new", "ingress", "prio", "0xc101")
    helpers.nsexec(site["sw"], "tc", "qdisc", "add", "dev", "nic0new", "clsact")
    helpers.nsexec(site["sw"], "tc", "filter", "add", *user, "u32", "match", "u32", "0", "0", "classid", "1:1")
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0new", "name", "nic0")
    helpers.wait_for("remote.attach_failed", lambda: sw.events("remote.attach_failed"))
    time.sleep(2.5)                     # two ticks: tried again, refused again, not said again
    refused = "nic0 has a tc filter that is not tapswitch's at ingress priority 0xc101"
    [failed] = sw.events("remote.attach_failed")
    assert failed["error"].startswith(refused), failed
    assert (port_of(sw, up)["state"], port_of(sw, up)["error"]) == ("down", failed["error"])
    assert not sw.events("remote.returned"), sw.log()
    helpers.nsexec(site["sw"], "tc", "filter", "del", "dev", "nic0", "ingress", "prio", "0xc101")
    helpers.wait_for("remote.returned", lambda: sw.events("remote.returned"), within=5)
    wait_port(sw, up, "up", within=3)
    assert port_of(sw, up)["error"] is None
    assert helpers.wait_for("traffic through the NIC", lambda: helpers.ping(site["c"][0], "198.18.3.100", wait=1))
    assert len(sw.events("remote.attach_failed")) == 1, sw.log()
    assert sw.stop() == 0
    assert "Traceback" not in sw.log(), sw.log()


def test_a_nic_made_again_that_another_running_switch_holds_is_attached_once_that_one_stops(lab, site):
    """nic0 deleted and made again, and attached by switch B before switch A sees it: A's attach
    is refused (B's claim, named by its pid), said once while the tick tries again, and once B
    stops A attaches it. (The third try's look for B's pid, a connection to B's claim that B
    never accepts, waited for room in its queue for good: A's control loop stopped.)"""
    a = lab.switch(config(lab, site, "promisc"), netns=site["sw"])
    up = lab.name("up")
    helpers.nsexec(site["sw"], "ip", "link", "del", "nic0")
    wait_port(a, up, "down")
    b = lab.switch({"switch": {"name": lab.name("b"), "queues": 1},
                    "ports": [{"name": lab.name("bup"), "remote": "nic0", "remote_mode": "promisc"}]},
                   netns=site["sw"], start=False)
    os.kill(a.proc.pid, signal.SIGSTOP)      # A sees nic0's making once B has attached it
    try:
        remake_nic(site)
        b.start()
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    helpers.wait_for("remote.attach_failed", lambda: a.events("remote.attach_failed"))
    time.sleep(3.5)                     # three ticks and more: tried again, refused again, not said again
    [failed] = a.events("remote.attach_failed")
    assert failed["error"] == f"nic0 is attached by another running switch (pid {b.proc.pid})", failed
    assert (port_of(a, up)["state"], port_of(a, up)["error"]) == ("down", failed["error"])
    for state in ("down", "up"):        # A's control loop runs: it follows another port's device
        helpers.nsexec(site["c"][0], "ip", "link", "set", "eth0", state)
        wait_port(a, lab.name("p0"), state)
    assert b.stop() == 0
    helpers.wait_for("remote.returned", lambda: a.events("remote.returned"), within=5)
    wait_port(a, up, "up", within=3)
    assert helpers.wait_for("traffic through the NIC", lambda: helpers.ping(site["c"][0], "198.18.3.100", wait=1))
    assert len(a.events("remote.attach_failed")) == 1, a.log()
    assert a.stop() == 0
    assert "Traceback" not in a.log(), a.log()


def test_a_port_a_reload_adds_on_a_nic_without_carrier_is_down_until_it_has_one(lab, site):
    """As one the start makes: the NIC is up but its cable is out (the veth's peer is down), and
    attaching it in local mode changes nothing that the kernel tells of, so no link event says
    so. The port was up, in `tapswitch ports` and tapswitch_port_up, until the carrier changed."""
    cfg = config(lab, site, "local")
    uplink = cfg["ports"].pop()
    sw = lab.switch(cfg, netns=site["sw"])
    helpers.nsexec(site["out"], "ip", "link", "set", "eth0", "down")
    # The kernel tells of the carrier's loss a moment later (linkwatch): before the port is there.
    helpers.wait_for("nic0 has lost its carrier", lambda: json.loads(helpers.nsexec(
        site["sw"], "ip", "-j", "link", "show", "dev", "nic0").stdout)[0]["operstate"] == "DOWN")
    cfg["ports"].append(uplink)
    with open(sw.config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    assert sw.cli("reload").stdout.strip() == f"reloaded: added {uplink['name']}"
    time.sleep(1.5)                  # a link event that came late would have said so by now
    assert {p["name"]: p["state"] for p in sw.cli_json("ports")}[uplink["name"]] == "down", sw.log()
    helpers.nsexec(site["out"], "ip", "link", "set", "eth0", "up")
    wait_port(sw, uplink["name"], "up", within=3)


def test_a_nic_moved_away_and_back_is_given_back_as_it_was_before_the_start(lab, site):
    """A NIC moved into another namespace keeps the flags and MTU the switch set (the kernel
    takes only its qdiscs); moved back it is attached again, and the stop gives it back what
    it had before the start, not what the switch had set."""
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "mtu", "1400")
    before = nic_state(site["sw"])
    sw = lab.switch(config(lab, site, "promisc", mtu=1500), netns=site["sw"])
    up = lab.name("up")
    away = lab.netns("away", create=True)
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "netns", away)
    wait_port(sw, up, "down")
    helpers.nsexec(away, "ip", "link", "set", "nic0", "netns", site["sw"])
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "up")
    wait_port(sw, up, "up", within=3)
    assert helpers.ping(site["c"][0], "198.18.3.100")
    assert sw.stop(signal.SIGTERM) == 0
    assert nic_state(site["sw"]) == before


def test_a_local_port_follows_the_nics_mac_when_its_user_changes_it(lab, site):
    """A local port without `mac:` has the NIC's MAC and steals the frames for it: its user sets
    another (down, new MAC, up, as a NIC wants it), and the frames for the new one go to the switch
    (flooded to the containers: no one behind it has it), the port shows the new MAC, and the
    stop gives the NIC back. (The rule kept matching the old MAC: the host had the new one's.)"""
    helpers.nsexec(site["sw"], "ip", "addr", "add", "198.18.3.50/24", "dev", "nic0")
    before = nic_state(site["sw"])
    sw = lab.switch(config(lab, site, "local"), netns=site["sw"])
    up, new = lab.name("up"), "02:00:00:00:3a:50"
    was = helpers.link_mac(site["sw"], "nic0")
    assert {p["name"]: p["mac"] for p in sw.cli_json("ports")}[up] == was
    for state in ("down", "address", "up"):
        helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", *((state, new) if state == "address" else (state,)))
    helpers.wait_for("the rules follow", lambda: sw.events("remote.mac_changed"))
    assert [(e["mac"], e["was"], e["port_mac"]) for e in sw.events("remote.mac_changed")] == [(new, was, new)]
    helpers.wait_for("the port's MAC follows", lambda: {p["name"]: p["mac"] for p in sw.cli_json("ports")}[up] == new)
    wait_port(sw, up, "up", within=3)
    heard = helpers.capture(site["c"][0])
    lab.procs.append(heard)
    assert not helpers.ping(site["out"], "198.18.3.50", count=2, wait=1)     # stolen: the host never answers
    assert "198.18.3.100 > 198.18.3.50: ICMP echo request" in helpers.captured(heard)
    assert sw.stop() == 0
    assert nic_state(site["sw"]) == before



def test_a_local_port_that_follows_the_nic_to_a_mac_static_on_another_port_says_so(lab, site):
    """The NIC's user gives it a MAC that `fdb add` put on a container's port: the local port
    follows it, and the entry stays (a static entry holds its MAC against a host's claim), but
    the frames for the NIC's new MAC go to that container's port: said (`fdb.static_held`),
    where only `port.mac_changed` was."""
    sw = lab.switch(config(lab, site, "local"), netns=site["sw"])
    up, p0, new = lab.name("up"), lab.name("p0"), "02:00:00:00:3a:52"
    sw.cli("fdb", "add", new, "--port", p0)
    for state in ("down", "address", "up"):
        helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", *((state, new) if state == "address" else (state,)))
    held = helpers.wait_for("fdb.static_held", lambda: sw.events("fdb.static_held"))
    assert [(e["mac"], e["vlan"], e["port"], e["claimed_by"]) for e in held] == [(new, 1, p0, up)]
    assert {p["name"]: p["mac"] for p in sw.cli_json("ports")}[up] == new
    assert [(e["port"], e["static"]) for e in sw.cli_json("fdb") if e["mac"] == new] == [(p0, True)]

FOLLOW_FAILS = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "follow_fails.py"))


def test_a_local_port_whose_rule_for_the_nics_new_mac_is_refused_once_follows_it_at_a_later_try(lab, site, monkeypatch):
    """The kernel refuses the rule for the NIC's new MAC once (tests/follow_fails.py), as its
    user changes it (live, one event): the failure is logged, and a later try (the next tick)
    moves the rule, as if nothing had failed. (The port kept stealing the old MAC's frames for
    good: it took the new MAC as followed, so neither a tick nor the NIC's next event tried again.)"""
    new = "02:00:00:00:3a:51"
    monkeypatch.setenv("TAPSWITCH_TEST_FOLLOW_FAILS", new)
    before = nic_state(site["sw"])
    sw = lab.switch(config(lab, site, "local"), netns=site["sw"], wrapper=FOLLOW_FAILS)
    up, was = lab.name("up"), helpers.link_mac(site["sw"], "nic0")
    assert stolen_macs(site["sw"]) == {was}
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "address", new)
    helpers.wait_for("the failure said", lambda: sw.events("remote.mac_follow_failed"))
    helpers.wait_for("the rule follows", lambda: stolen_macs(site["sw"]) == {new}, within=5)
    helpers.wait_for("the follow said", lambda: sw.events("remote.mac_changed"))    # just after the rule
    assert [(e["mac"], e["was"], e["port_mac"]) for e in sw.events("remote.mac_changed")] == [(new, was, new)]
    failed = sw.events("remote.mac_follow_failed")
    assert len(failed) == 1 and "Cannot allocate memory" in failed[0]["error"], sw.log()
    helpers.wait_for("the port's MAC follows", lambda: {p["name"]: p["mac"] for p in sw.cli_json("ports")}[up] == new)
    assert sw.stop() == 0
    assert nic_state(site["sw"]) == before


INSTALL_FAILS = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "install_fails.py"))


def test_a_nic_made_again_whose_attach_fails_after_its_flags_are_set_is_tried_once_a_tick(lab, site, monkeypatch, tmp_path):
    """nic0 made again, and every rule refused (tests/install_fails.py): the attach fails after
    it has set nic0's flags (up, promisc), and its undo gives them back. Those flag changes are
    nic0's link events, each of which tried the attach again at once, which failed and flipped
    the flags again: a loop as fast as the kernel answered, nic0 flapping all the while. The tick
    tries again (once a second); once the rules are let in, it attaches."""
    mark = tmp_path / "refused"
    monkeypatch.setenv("TAPSWITCH_TEST_INSTALL_FAILS", str(mark))
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"], wrapper=INSTALL_FAILS)
    up = lab.name("up")
    helpers.nsexec(site["sw"], "ip", "link", "del", "nic0")
    wait_port(sw, up, "down")
    mark.write_text("")
    remake_nic(site)
    helpers.wait_for("remote.attach_failed", lambda: sw.events("remote.attach_failed"))
    time.sleep(2.5)                     # two ticks: tried again, refused again
    tries = len(mark.read_text().splitlines())
    assert 1 <= tries <= 5, f"{tries} attaches tried in 2.5 s"
    mark.unlink()
    helpers.wait_for("remote.returned", lambda: sw.events("remote.returned"), within=5)
    wait_port(sw, up, "up", within=3)
    assert len(sw.events("remote.attach_failed")) == 1, sw.log()
    assert sw.stop() == 0
    assert "Traceback" not in sw.log(), sw.log()


def test_a_nic_made_again_that_refuses_the_ports_mtu_leaves_the_state_file_alone_while_tried_again(lab, site):
    """nic0 made again as a macvlan whose lower device (a veth) is of MTU 1400, the port's `mtu` 1500:
    the attach writes nic0's original to the state file before it sets the MTU, which is
    refused, and its undo writes that nic0 is given back. The tick tried again every second:
    two writes of the state file a second for as long as it lasted. It tries again ever more
    rarely; once the lower device takes the MTU, it attaches."""
    sw = lab.switch(config(lab, site, "promisc", mtu=1500), netns=site["sw"])
    up, state = lab.name("up"), sw.socket + ".state"
    helpers.nsexec(site["sw"], "ip", "link", "del", "nic0")
    wait_port(sw, up, "down")
    helpers.nsexec(site["sw"], "ip", "link", "add", "low0", "mtu", "1400", "type", "veth", "peer", "name", "low1")
    helpers.nsexec(site["sw"], "ip", "link", "set", "low0", "up")
    helpers.nsexec(site["sw"], "ip", "link", "add", "nic0", "link", "low0", "type", "macvlan", "mode", "bridge")
    helpers.wait_for("remote.attach_failed", lambda: sw.events("remote.attach_failed"))
    [failed] = sw.events("remote.attach_failed")
    assert "refused mtu 1500" in failed["error"], failed
    written = set()
    deadline = time.monotonic() + 7.5
    while time.monotonic() < deadline:          # seven ticks and more
        st = os.stat(state)
        written.add((st.st_ino, st.st_mtime_ns))
        time.sleep(0.05)
    tries = len([e for e in sw.events("remote.detached") if e["level"] == "debug"])
    assert tries <= 5, f"{tries} attaches tried, the state file written {len(written)} times in 7.5 s"
    assert not sw.events("remote.detach_failed"), sw.log()
    helpers.nsexec(site["sw"], "ip", "link", "set", "low0", "mtu", "1500")
    helpers.wait_for("remote.returned", lambda: sw.events("remote.returned"), within=40)
    assert link_mtu(site["sw"], "nic0") == 1500
    assert len(sw.events("remote.attach_failed")) == 1, sw.log()
    assert sw.stop() == 0
    assert "Traceback" not in sw.log(), sw.log()


EVENTS_LOST = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "events_lost.py"))


def test_a_local_port_follows_the_nics_new_mac_and_mtu_whose_events_were_lost_at_the_resync(lab, site, monkeypatch):
    """The link monitor loses the NIC's events of its new MAC (tests/events_lost.py: as in an
    overrun, ENOBUFS), and of the new MTU it sets after: the resync after the loss reads the
    NIC's MAC and MTU, and the rule, the port's MAC and MTU follow. (The resync read only up
    or down: the port stole the old MAC's frames until the NIC's next event, maybe never.)"""
    new = "02:00:00:00:3a:52"
    monkeypatch.setenv("TAPSWITCH_TEST_EVENTS_LOST", new)
    sw = lab.switch(config(lab, site, "local"), netns=site["sw"], wrapper=EVENTS_LOST)
    up, was = lab.name("up"), helpers.link_mac(site["sw"], "nic0")
    assert stolen_macs(site["sw"]) == {was}
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "address", new)
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "mtu", "1400")    # its event has the new MAC: lost too
    helpers.wait_for("the loss said", lambda: sw.events("link.events_lost"))
    helpers.wait_for("the rule follows", lambda: stolen_macs(site["sw"]) == {new}, within=5)
    helpers.wait_for("the follow said", lambda: sw.events("remote.mac_changed"))    # just after the rule
    assert [(e["mac"], e["was"], e["port_mac"]) for e in sw.events("remote.mac_changed")] == [(new, was, new)]
    helpers.wait_for("the port's MAC follows", lambda: {p["name"]: p["mac"] for p in sw.cli_json("ports")}[up] == new)
    # Followed before the MAC (Switch.resync_remote) by the resync that saw both; under load a
    # resync can come between the two `ip` commands, and the MTU's lost event makes another.
    helpers.wait_for("the port's MTU follows", lambda: port_mtu(sw, up) == 1400, within=5)
    assert sw.stop() == 0


def test_a_nic_deleted_and_made_again_whose_events_were_lost_is_attached_again_at_the_resync(lab, site, monkeypatch):
    """The link monitor loses the NIC's deletion and its making again, with the same MAC
    (tests/events_lost.py: the events carry it): the resync after the loss finds the port's
    NIC gone and one of its name there, and attaches that, as the events would have had it.
    (The resync only took the port down: the NIC's next events, of another ifindex, were not
    its port's, and the port stayed down for good.)"""
    sw_ns = site["sw"]
    mac = helpers.link_mac(sw_ns, "nic0")
    monkeypatch.setenv("TAPSWITCH_TEST_EVENTS_LOST", mac)
    sw = lab.switch(config(lab, site, "promisc"), netns=sw_ns, wrapper=EVENTS_LOST)
    up = lab.name("up")
    helpers.nsexec(sw_ns, "ip", "link", "del", "nic0")
    helpers.wait_for("the loss said", lambda: sw.events("link.events_lost"))
    helpers.sh("ip", "link", "add", "nic0", "address", mac, "netns", sw_ns, "type", "veth", "peer", "name", "eth0",
               "netns", site["out"])
    helpers.nsexec(site["out"], "ip", "addr", "add", "198.18.3.100/24", "dev", "eth0")
    helpers.nsexec(site["out"], "ip", "link", "set", "eth0", "up")
    helpers.nsexec(sw_ns, "ip", "link", "set", "nic0", "up")
    helpers.wait_for("the new NIC attached", lambda: sw.events("remote.returned"), within=5)
    wait_port(sw, up, "up", within=5)
    assert helpers.wait_for("traffic on the new NIC", lambda: helpers.ping(site["c"][0], "198.18.3.100", wait=1))
    assert sw.stop() == 0


@pytest.mark.parametrize("mode", ["promisc", "local"])
def test_the_stop_leaves_the_flags_the_switch_did_not_set_as_the_nics_user_set_them(lab, site, mode):
    """The NIC's user sets allmulti (a multicast router) and, in local mode, promisc (a capture)
    while it is attached: the switch set neither, so the stop leaves them as its user set them
    (it cleared both); promisc mode's promisc, which the switch set, is given back."""
    sw = lab.switch(config(lab, site, mode), netns=site["sw"])
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "allmulticast", "on")
    if mode == "local":
        helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "promisc", "on")
    assert sw.stop() == 0
    flags = nic_state(site["sw"])["flags"]
    assert "ALLMULTI" in flags
    assert ("PROMISC" in flags) == (mode == "local")


def test_a_local_port_after_a_sigkilled_promisc_run_takes_the_nic_without_its_promisc(lab, site):
    """The dead run put the NIC in promisc; the next start's port is a local one on the NIC's MAC,
    which does not want promisc: the NIC has its own flags back at once, and after the stop."""
    before = nic_state(site["sw"])
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"])
    assert sw.kill() != 0                # and its workers gone with it (PDEATHSIG)
    assert "PROMISC" in nic_state(site["sw"])["flags"]
    sw2 = lab.switch(config(lab, site, "local"), netns=site["sw"])
    assert nic_state(site["sw"])["flags"] == before["flags"]
    assert sw2.stop() == 0
    assert nic_state(site["sw"]) == before


def test_sigterm_restores_the_nic_exactly(lab, site):
    before = nic_state(site["sw"])
    sw = lab.switch(config(lab, site, "promisc", mtu=1400), netns=site["sw"])
    during = nic_state(site["sw"])
    assert during["mtu"] == 1400 and during != before
    assert helpers.ping(site["c"][0], "198.18.3.100")
    assert sw.stop(signal.SIGTERM) == 0
    assert nic_state(site["sw"]) == before


def test_restart_after_sigkill_heals_without_duplicate_rules(lab, site):
    before = nic_state(site["sw"])
    cfg = config(lab, site, "promisc", mtu=1400)
    sw = lab.switch(cfg, netns=site["sw"])
    rules = nic_state(site["sw"])["filters"]
    assert sw.kill() != 0                # and its workers gone with it (PDEATHSIG)
    sw2 = lab.switch(cfg, netns=site["sw"])
    assert nic_state(site["sw"])["filters"] == rules       # same rules, none twice
    assert helpers.ping(site["c"][0], "198.18.3.100")
    assert sw2.stop() == 0
    # The original state, learned from the crashed run's rules, is what comes back.
    assert nic_state(site["sw"]) == before


def test_a_start_after_sigkill_heals_the_nic_its_config_no_longer_names(lab, site):
    """The dead run's NIC is in the state file: the next start, whose config has no port on it,
    removes the dead run's rules and clsact and gives the NIC back its promisc and MTU."""
    before = nic_state(site["sw"])
    cfg = config(lab, site, "promisc", mtu=1400)
    sw = lab.switch(cfg, netns=site["sw"])
    assert sw.kill() != 0                # and its workers gone with it (PDEATHSIG)
    assert nic_state(site["sw"]) != before
    cfg["ports"].pop()                   # no uplink any more
    sw2 = lab.switch(cfg, netns=site["sw"])
    assert [e["remote"] for e in sw2.events("remote.healed")] == ["nic0"]
    assert nic_state(site["sw"]) == before
    assert sw2.stop() == 0
    assert nic_state(site["sw"]) == before


def killed_with_its_nic_renamed(lab, site) -> dict:
    """A switch attached nic0 (promisc, MTU 1400), nic0 was renamed nic9, and the switch was
    killed (SIGKILL); returns its config."""
    cfg = config(lab, site, "promisc", mtu=1400)
    sw = lab.switch(cfg, netns=site["sw"])
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "name", "nic9")
    assert sw.kill() != 0                # and its workers gone with it (PDEATHSIG)
    return cfg


def test_a_start_after_sigkill_heals_the_nic_renamed_while_the_dead_run_ran(lab, site):
    """The dead run's NIC was renamed after it was attached: the next start finds it by the
    ifindex its state file recorded, not by its old name, and gives it back as it was (its
    rules sent every frame to the dead run's TAP, that is nowhere)."""
    before = nic_state(site["sw"])
    cfg = killed_with_its_nic_renamed(lab, site)
    cfg["ports"].pop()                   # no uplink any more
    sw2 = lab.switch(cfg, netns=site["sw"])
    assert sw2.events("remote.healed")
    assert sw2.stop() == 0
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic9", "name", "nic0")
    assert nic_state(site["sw"]) == before


def killed_while_attaching(lab, site, cfg: dict) -> None:
    """Start the switch on `cfg` and kill it (SIGKILL) after it changed the NIC, before its first rule."""
    sw = lab.switch(cfg, netns=site["sw"], wrapper=KILLED_BEFORE_FIRST_RULE, start=False)
    sw.start(expect_ready=False)
    assert sw.proc.wait(timeout=20) != 0, sw.log()
    # Its workers die with it (PDEATHSIG), a moment later: a start meanwhile would meet them.
    # Nothing else runs in the switch's namespace.
    helpers.wait_for("the dead switch's workers gone",
                     lambda: not helpers.sh("ip", "netns", "pids", site["sw"]).stdout.split())
    changed = nic_state(site["sw"])
    assert changed["mtu"] == 1500 and {"UP", "PROMISC"} <= set(changed["flags"]), changed
    assert "clsact" in changed["qdiscs"] and not changed["filters"][0].strip(), changed   # no rule yet


def test_a_start_heals_the_nic_renamed_while_the_dead_run_ran_when_a_new_one_has_its_name(lab, site):
    """The dead run's NIC was renamed (nic9) and another device made under its old name: the
    port that names nic0 again takes the new one; nic9, which no port names, is healed as such
    (its rules sent every frame to the dead run's TAP, that is nowhere), and stays so."""
    before = nic_state(site["sw"])
    cfg = killed_with_its_nic_renamed(lab, site)
    helpers.sh("ip", "link", "add", "nic0", "netns", site["sw"], "type", "veth", "peer", "name", "eth1",
               "netns", site["out"])
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "up")
    sw2 = lab.switch(cfg, netns=site["sw"])
    assert [e["remote"] for e in sw2.events("remote.healed")] == ["nic0"]
    assert nic_state(site["sw"], "nic9") == before
    assert "PROMISC" in nic_state(site["sw"])["flags"]          # the new nic0 is the port's
    assert sw2.stop() == 0
    assert nic_state(site["sw"], "nic9") == before


def test_a_start_heals_the_nic_of_a_run_killed_before_its_first_rule(lab, site):
    """A run killed while attaching the NIC, after it changed it (clsact, MTU, up, promisc) but
    before a rule recorded how it was: the state file did, and the next start, whose config no
    longer names the NIC, gives it back."""
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "down", "mtu", "1400")
    before = nic_state(site["sw"])
    cfg = config(lab, site, "promisc", mtu=1500)
    killed_while_attaching(lab, site, cfg)
    cfg["ports"].pop()                   # no uplink any more
    sw2 = lab.switch(cfg, netns=site["sw"])
    assert [(e["remote"], e["mtu"]) for e in sw2.events("remote.healed")] == [("nic0", 1400)]
    assert nic_state(site["sw"]) == before
    assert sw2.stop() == 0
    assert nic_state(site["sw"]) == before


def test_a_start_that_names_the_nic_of_a_run_killed_before_its_first_rule_restores_it_on_stop(lab, site):
    """The next start attaches the NIC again: it takes the original state the dead run wrote
    down, not the state the dead run left, and gives that back when it stops."""
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "down", "mtu", "1400")
    before = nic_state(site["sw"])
    cfg = config(lab, site, "promisc", mtu=1500)
    killed_while_attaching(lab, site, cfg)
    sw2 = lab.switch(cfg, netns=site["sw"])
    assert helpers.ping(site["c"][0], "198.18.3.100")
    assert sw2.stop() == 0
    assert nic_state(site["sw"]) == before
    assert not os.path.exists(sw2.socket + ".state")


def test_a_failed_start_keeps_the_dead_runs_record_of_a_nic_it_did_not_attach(lab, site):
    """After a run killed while attaching the NIC, a start that names the NIC fails before it
    attaches it (the uplink's TAP name is taken): the dead run's record of how the NIC was stays
    in the state file, so the start after that still gives the NIC back."""
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "down", "mtu", "1400")
    before = nic_state(site["sw"])
    cfg = config(lab, site, "promisc", mtu=1500)
    killed_while_attaching(lab, site, cfg)
    uplink = cfg["ports"][-1]["name"]
    helpers.nsexec(site["sw"], "ip", "link", "add", uplink, "type", "veth", "peer", "name", lab.name("x"))
    failed = lab.switch(cfg, netns=site["sw"], start=False)
    failed.start(expect_ready=False)
    assert failed.proc.wait(timeout=30) == 1, failed.log()
    assert f"a device named {uplink} already exists" in failed.log()
    assert os.path.exists(failed.socket + ".state")
    helpers.nsexec(site["sw"], "ip", "link", "del", uplink)
    sw = lab.switch(cfg, netns=site["sw"])
    assert sw.stop() == 0
    assert nic_state(site["sw"]) == before


@pytest.mark.parametrize("recorded", [False, True], ids=["names-only", "with-original"])
def test_a_start_leaves_a_nic_in_its_dead_runs_state_that_another_running_switch_holds(lab, site, recorded):
    """The state file of a dead run names a NIC that another switch has attached since (an older
    file lists its name only; a newer one also how it was before): the start leaves that
    switch's rules, the NIC's flags and MTU, and its traffic as they are."""
    a = lab.switch(config(lab, site, "promisc", mtu=1400), netns=site["sw"])
    held = nic_state(site["sw"])
    b = lab.switch({"switch": {"name": lab.name("b")}, "ports": [{"name": lab.name("bp")}]}, netns=site["sw"],
                   start=False)
    dead = {"created": [], "remotes": ["nic0"]}
    if recorded:
        ifindex = json.loads(helpers.nsexec(site["sw"], "ip", "-j", "link", "show", "dev", "nic0").stdout)[0]["ifindex"]
        dead["remote_originals"] = {"nic0": {"ifindex": ifindex, "up": False, "promisc": False, "allmulti": False,
                                             "mtu": 1500, "clsact_added": True}}
    with open(b.socket + ".state", "w") as f:
        json.dump(dead, f)
    b.start()
    assert not b.events("remote.healed") and not b.events("remote.stale_removed")
    assert [e["remote"] for e in b.events("remote.left")] == ["nic0"]
    assert nic_state(site["sw"]) == held
    assert helpers.ping(site["c"][0], "198.18.3.100")
    assert b.stop() == 0 and a.stop() == 0


HELD_CHECK_RACE = os.path.join(os.path.dirname(__file__), "..", "held_check_race.py")


def start_held_past_its_check(lab, site):
    """A switch on the NIC (promisc) held just past its check of the NIC (tests/held_check_race.py):
    its claim on the NIC taken, no rule of its own on it yet. Returns it and what lets it go on."""
    race = helpers.tmpdir()
    lab.dirs.append(race)
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"], start=False,
                    wrapper=(sys.executable, HELD_CHECK_RACE, race))
    sw.start(expect_ready=False)
    helpers.wait_for("a start past its check", lambda: os.path.exists(os.path.join(race, "checked")), within=20)
    return sw, lambda: open(os.path.join(race, "go"), "w").close()


def test_a_start_leaves_a_nic_in_its_dead_runs_state_that_another_switch_is_attaching(lab, site):
    """Another switch has claimed the NIC and has no rule on it yet (it is attaching it): the start
    whose dead run's state file names the NIC sees no running switch's rule, but the claim, and
    leaves the NIC alone, naming the holder. (It healed the NIC under the other switch: set it
    down, at the MTU the dead run recorded.)"""
    a, let_go = start_held_past_its_check(lab, site)
    attaching = nic_state(site["sw"])
    b = lab.switch({"switch": {"name": lab.name("b")}, "ports": [{"name": lab.name("bp")}]}, netns=site["sw"],
                   start=False)
    ifindex = json.loads(helpers.nsexec(site["sw"], "ip", "-j", "link", "show", "dev", "nic0").stdout)[0]["ifindex"]
    with open(b.socket + ".state", "w") as f:
        json.dump({"created": [], "remotes": ["nic0"],
                   "remote_originals": {"nic0": {"ifindex": ifindex, "up": False, "promisc": False, "allmulti": False,
                                                 "mtu": 1400, "clsact_added": True}}}, f)
    b.start()
    assert not b.events("remote.healed"), b.log()
    assert [(e["remote"], e["reason"]) for e in b.events("remote.left")] == [
        ("nic0", f"nic0 is attached by another running switch (pid {a.proc.pid})")], b.log()
    assert nic_state(site["sw"]) == attaching
    let_go()
    helpers.wait_for("the other switch attached", lambda: a.events("remote.attached"), within=20)
    helpers.wait_for("traffic through it", lambda: helpers.ping(site["c"][0], "198.18.3.100", wait=1), within=20)
    assert b.stop() == 0 and a.stop() == 0


def test_a_start_stopped_while_it_heals_keeps_what_it_had_not_healed_listed(lab, site):
    """A stop (SIGTERM) while the start waits for the dead run's TAP, which the rules on its NIC
    still send to, to go: what the dead run listed and the start had not yet dealt with (that
    NIC, a namespace) stays in the state file for the next start, not dropped with the failed one's.
    (A NIC another switch holds is told at once, by its claim: no wait.)"""
    lingering = lab.name("tap")
    lab.links.append(lingering)
    helpers.nsexec(site["sw"], "ip", "link", "add", lingering, "type", "veth", "peer", "name", lab.name("tpp"))
    helpers.nsexec(site["sw"], "tc", "qdisc", "add", "dev", "nic0", "clsact")
    helpers.nsexec(site["sw"], "tc", "filter", "add", "dev", "nic0", "ingress", "prio", "0xc105", "u32", "match",
                   "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", lingering,
                   "cookie", tc.COOKIE_MAGIC.hex())
    b = lab.switch({"switch": {"name": lab.name("b")}, "ports": [{"name": lab.name("bp")}]}, netns=site["sw"],
                   start=False)
    dead = {"created": ["tsnoneleft0"], "netns_ids": {"tsnoneleft0": "?"}, "remotes": ["nic0"]}
    with open(b.socket + ".state", "w") as f:
        json.dump(dead, f)
    b.start(expect_ready=False)
    helpers.wait_for("the start's heal", lambda: b.events("control.listening"), within=10, every=0.01)
    b.proc.send_signal(signal.SIGTERM)          # heal waits up to 2 s for a NIC another switch holds
    assert b.stop() == 0, b.log()
    assert not b.events("remote.left"), "the stop came after the heal: nothing under way to test"
    with open(b.socket + ".state") as f:
        kept = json.load(f)
    assert (kept["remotes"], kept["created"], kept["netns_ids"]) == (["nic0"], ["tsnoneleft0"], {"tsnoneleft0": "?"})


def test_a_clean_stop_after_a_reload_dropped_a_nic_the_start_took_over_lists_nothing(lab, site):
    """The start took the NIC over from a dead run; a reload then removed its port, giving the
    NIC back: the clean stop leaves no state file (it kept listing the NIC, for a later start
    to "heal" what was no longer the switch's)."""
    cfg = config(lab, site, "promisc", mtu=1400)
    before = nic_state(site["sw"])
    sw = lab.switch(cfg, netns=site["sw"])
    assert sw.kill() != 0                # and its workers gone with it (PDEATHSIG)
    sw2 = lab.switch(cfg, netns=site["sw"])     # the same socket: takes over nic0
    cfg["ports"].pop()
    with open(sw2.config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    assert "removed" in sw2.cli("reload").stdout
    assert nic_state(site["sw"]) == before
    assert sw2.stop() == 0
    assert not os.path.exists(sw2.socket + ".state")



def test_a_nic_away_when_a_reload_removes_its_port_is_healed_by_the_next_start(lab, site):
    """The NIC is moved into another namespace, with the flags and MTU the switch set, and a
    reload removes its port meanwhile: nothing could give it back then, so the clean stop keeps
    it listed with how it was, and the next start, once it is back, gives it back (the stop
    forgot it: moved back, the NIC kept the switch's promisc and MTU for good)."""
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "mtu", "1400")
    before = nic_state(site["sw"])
    cfg = config(lab, site, "promisc", mtu=1500)
    sw = lab.switch(cfg, netns=site["sw"])
    up = lab.name("up")
    away = lab.netns("away", create=True)
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "netns", away)
    wait_port(sw, up, "down")
    cfg["ports"].pop()
    with open(sw.config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    assert sw.cli("reload").stdout.strip() == f"reloaded: removed {up}"
    assert sw.stop() == 0
    with open(sw.socket + ".state") as f:
        assert json.load(f)["remotes"] == ["nic0"]
    helpers.nsexec(away, "ip", "link", "set", "nic0", "netns", site["sw"])
    sw2 = lab.switch(cfg, netns=site["sw"])
    assert [e["remote"] for e in sw2.events("remote.healed")] == ["nic0"], sw2.log()
    assert sw2.stop() == 0
    assert nic_state(site["sw"]) == before
    assert not os.path.exists(sw2.socket + ".state")

DETACH_FAILS = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "detach_fails.py"))


def test_a_nic_whose_detach_failed_at_the_stop_is_healed_by_the_next_start(lab, site):
    """The stop could not take its rules off the NIC (detach failed, logged): the state file keeps
    the NIC and how it was, so the next start, whose config no longer names it, gives it back."""
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "mtu", "1400")
    before = nic_state(site["sw"])
    cfg = config(lab, site, "promisc", mtu=1500)
    sw = lab.switch(cfg, netns=site["sw"], wrapper=DETACH_FAILS)
    assert sw.stop() == 0, sw.log()
    assert sw.events("remote.detach_failed")
    with open(sw.socket + ".state") as f:
        assert json.load(f)["remotes"] == ["nic0"]
    cfg["ports"].pop()
    sw2 = lab.switch(cfg, netns=site["sw"])
    assert [e["remote"] for e in sw2.events("remote.healed")] == ["nic0"], sw2.log()
    assert sw2.stop() == 0
    assert nic_state(site["sw"]) == before
    assert not os.path.exists(sw2.socket + ".state")


def test_a_nic_another_running_switch_holds_is_refused_and_left_as_it_is(lab, site):
    """Switch B asks for the NIC that switch A has attached: B fails to start (exit 1, naming the
    NIC), and A's rules, the NIC's flags and MTU, and A's traffic stay as they were."""
    a = lab.switch(config(lab, site, "promisc", mtu=1400), netns=site["sw"])
    assert helpers.ping(site["c"][0], "198.18.3.100")
    held = nic_state(site["sw"])
    b = lab.switch({"switch": {"name": lab.name("b")},
                    "ports": [{"name": lab.name("bup"), "remote": "nic0"}]}, netns=site["sw"], start=False)
    b.start(expect_ready=False)
    assert b.proc.wait(timeout=20) == 1, b.log()
    assert "nic0 is attached by another running switch" in b.log(), b.log()
    assert not b.events("remote.stale_removed")
    assert nic_state(site["sw"]) == held
    assert helpers.ping(site["c"][0], "198.18.3.100")
    assert a.stop() == 0


# Runs the switch, held once it has found its remote held by no running switch, until DIR/go.


def test_two_starts_at_once_on_one_nic_one_attaches_it_the_other_exits_1_leaving_it_alone(lab, site):
    """Both found the NIC held by no running switch; the later one's stale-rule removal took the
    earlier one's live rules, and both ran. IFACE's claim, taken before the check, lets one on:
    the other exits 1 naming the NIC and touches nothing of it."""
    before = nic_state(site["sw"])
    first, let_go = start_held_past_its_check(lab, site)
    second = lab.switch({"switch": {"name": lab.name("b")},
                         "ports": [{"name": lab.name("bup"), "remote": "nic0"}]}, netns=site["sw"], start=False)
    second.start(expect_ready=False)
    try:
        second.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"two switches attached nic0:\n{second.log()}")
    assert second.proc.returncode == 1, second.log()
    assert f"nic0 is attached by another running switch (pid {first.proc.pid})" in second.log(), second.log()
    assert "Traceback" not in second.log() and not second.events("remote.stale_removed"), second.log()
    assert nic_state(site["sw"]) == before
    let_go()
    helpers.wait_for("the first start attached", lambda: first.events("remote.attached"), within=20)
    helpers.wait_for("traffic through the first", lambda: helpers.ping(site["c"][0], "198.18.3.100", wait=1),
                     within=20)
    assert not first.events("remote.stale_removed")
    assert first.stop() == 0
    assert nic_state(site["sw"]) == before


# Runs the switch where /proc/sys is read-only, as in a container that is not --privileged
# (under `ip netns exec`, whose mount namespace is the switch's alone).
READ_ONLY_PROC_SYS = ("sh", "-c", 'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"', "sh")


def chatter_heard(site, sw, uplink: str) -> tuple[str, bool]:
    """Once the hosts' IPv6 has settled on the new ports: the uplink TAP's MAC, and whether the
    switch learned it."""
    helpers.wait_for("the container's link-local address", lambda: helpers.ipv6_settled(site["c"][0], "eth0"))
    time.sleep(0.5)
    tap_mac = helpers.link_mac(site["sw"], uplink)
    return tap_mac, tap_mac in {e["mac"] for e in sw.cli_json("fdb")}


def test_the_uplinks_tap_is_no_host_on_the_network(lab, site):
    """The uplink's TAP only carries frames between the switch and the NIC: the host sends
    nothing out of it (no link-local address, DAD, router solicitation, MLD report), so the
    switch learns no phantom host on the uplink and floods no host chatter to the containers.
    A port with neither netns nor remote is the host's own TAP, and left as the kernel makes it.
    (The uplink's name has a dot: /proc/sys keeps it as it is.)"""
    cfg = config(lab, site, "promisc")
    uplink = cfg["ports"][-1]["name"] = lab.name("u.p")
    cfg["ports"].append({"name": lab.name("h")})
    heard = helpers.capture(site["c"][0])
    lab.procs.append(heard)
    sw = lab.switch(cfg, netns=site["sw"])
    tap_mac, learned = chatter_heard(site, sw, uplink)
    assert not learned
    assert tap_mac not in helpers.captured(heard)
    assert helpers.ipv6_disabled(site["sw"], uplink)
    assert not helpers.ipv6_disabled(site["sw"], lab.name("h"))
    helpers.wait_for("the host's own TAP's link-local address", lambda: helpers.ipv6_settled(site["sw"], lab.name("h")))


def test_where_proc_sys_is_read_only_the_uplinks_tap_gets_no_link_local_address(lab, site):
    """disable_ipv6 cannot be written (a container that is not --privileged): the TAP gets no
    link-local address instead, and the host has nothing to send from it either."""
    heard = helpers.capture(site["c"][0])
    lab.procs.append(heard)
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"], wrapper=READ_ONLY_PROC_SYS)
    assert [e["dev"] for e in sw.events("quiet.ipv6_kept")] == [lab.name("up")], sw.log()
    tap_mac, learned = chatter_heard(site, sw, lab.name("up"))
    assert not learned
    assert tap_mac not in helpers.captured(heard)
    assert not helpers.ipv6_disabled(site["sw"], lab.name("up"))
    assert "inet6" not in helpers.nsexec(site["sw"], "ip", "-6", "addr", "show", "dev", lab.name("up")).stdout
    assert helpers.ping(site["c"][0], "198.18.3.100")


def test_a_reload_that_makes_a_port_remote_or_not_turns_its_taps_ipv6_off_or_leaves_it_on(lab, site):
    """A port that becomes remote is made again with IPv6 off on its TAP; one that stops being
    remote is made again as the host's own TAP, with IPv6 as the kernel gives it."""
    cfg = config(lab, site, "promisc")
    cfg["ports"].append({"name": lab.name("h")})
    sw = lab.switch(cfg, netns=site["sw"])
    up, host = lab.name("up"), lab.name("h")
    assert helpers.ipv6_disabled(site["sw"], up) and not helpers.ipv6_disabled(site["sw"], host)
    cfg["ports"][-2].pop("remote_mode")
    cfg["ports"][-1]["remote"] = cfg["ports"][-2].pop("remote")    # nic0 moves from `up` to `h`
    with open(sw.config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    assert "remade" in sw.cli("reload").stdout
    assert not helpers.ipv6_disabled(site["sw"], up) and helpers.ipv6_disabled(site["sw"], host)
    assert helpers.ping(site["c"][0], "198.18.3.100")
    assert sw.stop() == 0
    assert not helpers.link_exists(up, site["sw"]) and not helpers.link_exists(host, site["sw"])


def test_a_remote_that_is_not_ethernet_is_refused_and_left_as_it_is(lab, site):
    """A layer-3 TUN device (no Ethernet header, no MAC) cannot be attached: the start fails
    (exit 1, one line naming it, no traceback) and leaves the device and the switch's
    namespace as they were."""
    helpers.nsexec(site["sw"], "ip", "tuntap", "add", "name", "tun0", "mode", "tun")
    helpers.nsexec(site["sw"], "ip", "link", "set", "tun0", "up")
    before, links = nic_state(site["sw"], "tun0"), helpers.nsexec(site["sw"], "ip", "-br", "link").stdout
    for mode in ("promisc", "local"):
        sw = lab.switch({"switch": {"name": lab.name("s")},
                         "ports": [{"name": lab.name("up"), "remote": "tun0", "remote_mode": mode}]},
                        netns=site["sw"], start=False)
        sw.start(expect_ready=False)
        assert sw.proc.wait(timeout=20) == 1, sw.log()
        assert "remote tun0 is not an Ethernet interface" in sw.log() and "Traceback" not in sw.log(), sw.log()
        assert nic_state(site["sw"], "tun0") == before
        assert helpers.nsexec(site["sw"], "ip", "-br", "link").stdout == links


def test_a_nic_that_goes_while_it_is_attached_fails_the_start_naming_it_and_leaves_nothing(lab, site, monkeypatch):
    """The NIC deleted after the start found it, as its rules are added: the start failed with
    "port P: No such device", as if the port's own TAP had gone. Now the reason names the NIC,
    and the ports made before it (the TAPs in c1 and c2) are gone again, as is the state file."""
    monkeypatch.setenv("TAPSWITCH_TEST_DEVICE_GOES", "nic0@first_rule")
    links = helpers.nsexec(site["sw"], "ip", "-br", "link").stdout
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"], wrapper=DEVICE_GOES, start=False)
    sw.start(expect_ready=False)
    assert sw.proc.wait(timeout=20) == 1, sw.log()
    assert f"tapswitch: port {lab.name('up')}: remote nic0 went away while it was being attached" in sw.log(), sw.log()
    assert "Traceback" not in sw.log()
    assert helpers.nsexec(site["sw"], "ip", "-br", "link").stdout == "\n".join(
        line for line in links.splitlines() if not line.startswith("nic0")) + "\n"
    assert not any(helpers.link_exists("eth0", c) for c in site["c"])
    assert not os.path.exists(sw.socket + ".state")


def test_a_nic_with_a_users_filter_in_the_reserved_range_is_refused_and_left_as_it_is(lab, site):
    """A filter of the NIC's user at a priority tapswitch reserves (0xc101: its unicast rule's):
    the start fails (exit 1, one line naming the NIC, the priority and the range, no traceback)
    and leaves the NIC, its clsact and the user's filter as they were. (It ran, its rule filed in
    the user's u32 hash table ahead of the user's filter; beside other filters of the user's it
    failed with a bare "File exists", "No space left on device" or "Invalid argument".)"""
    helpers.nsexec(site["sw"], "tc", "qdisc", "add", "dev", "nic0", "clsact")
    helpers.nsexec(site["sw"], "tc", "filter", "add", "dev", "nic0", "ingress", "prio", "0xc101",
                   "u32", "match", "u32", "0", "0", "classid", "1:1")
    before = nic_state(site["sw"])
    for mode in ("promisc", "local"):
        sw = lab.switch({"switch": {"name": lab.name("s")},
                         "ports": [{"name": lab.name("up"), "remote": "nic0", "remote_mode": mode}]},
                        netns=site["sw"], start=False)
        sw.start(expect_ready=False)
        assert sw.proc.wait(timeout=20) == 1, sw.log()
        assert ("nic0 has a tc filter that is not tapswitch's at ingress priority 0xc101 (49409), "
                "in the range tapswitch reserves (0xc100-0xc1ff, 49408-49663)") in sw.log(), sw.log()
        assert "Traceback" not in sw.log(), sw.log()
        assert nic_state(site["sw"]) == before


def test_a_users_filter_added_in_the_reserved_range_while_a_shared_port_runs_is_said_and_left_alone(lab, site):
    """The NIC's user adds a filter at a priority tapswitch reserves while a shared port runs
    (a start refuses the NIC with one): a warning names it, and its going is said too; the port
    keeps working, and the stop leaves the user's filter (and the clsact it sits on) as it is.
    (Nothing was said: the next start failed on it.)"""
    sw = lab.switch(config(lab, site, "shared"), netns=site["sw"])
    # the MACs' rules follow the MAC table once a second: the first ARP reply may come before them
    helpers.wait_for("traffic", lambda: helpers.ping(site["c"][0], "198.18.3.100", wait=1), within=10)
    user = ("dev", "nic0", "ingress", "prio", "0xc103")
    for n in (1, 2):
        helpers.nsexec(site["sw"], "tc", "filter", "add", *user, "bpf", "bytecode", "1,6 0 0 0,", "classid", "1:1")
        helpers.wait_for("the warning", lambda: len(sw.events("remote.foreign_filter")) == n)
        if n == 1:
            helpers.nsexec(site["sw"], "tc", "filter", "del", *user)
            helpers.wait_for("its going said", lambda: sw.events("remote.foreign_filter_gone"))
    said = sw.events("remote.foreign_filter")
    assert [(e["remote"], e["prio"], e["kind"], e["handle"]) for e in said] == [("nic0", "0xc103", "bpf", "0x1")] * 2
    assert [e["prio"] for e in sw.events("remote.foreign_filter_gone")] == ["0xc103"]
    helpers.wait_for("traffic beside it", lambda: helpers.ping(site["c"][1], "198.18.3.100", wait=1), within=10)
    assert sw.stop() == 0
    assert "bytecode '1,6 0 0 0'" in helpers.nsexec(site["sw"], "tc", "filter", "show", "dev", "nic0", "ingress").stdout
    assert "clsact" in helpers.nsexec(site["sw"], "tc", "qdisc", "show", "dev", "nic0").stdout


def test_a_promisc_ports_rule_deleted_with_a_users_filter_at_its_priority_is_installed_again(lab, site):
    """The NIC's user adds a u32 filter at the priority of a promisc port's one rule on the NIC
    (it joins the rule's table): told it is in the range tapswitch reserves, they delete it by its
    priority, which deletes the port's rule too. The switch installs it again at the deletion's
    event (remote.rules_lost), and the containers reach the outside host. (The NIC's every frame
    went to the host for good, the port shown up, nothing said.)"""
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"])
    assert helpers.ping(site["c"][0], "198.18.3.100")
    user = ("dev", "nic0", "ingress", "prio", hex(remote.PRIO_PROMISC))
    helpers.nsexec(site["sw"], "tc", "filter", "add", *user, "protocol", "all",
                   "u32", "match", "u32", "0x12345678", "0xffffffff", "at", "0", "classid", "1:1")
    helpers.wait_for("the warning", lambda: sw.events("remote.foreign_filter"))
    helpers.nsexec(site["sw"], "tc", "filter", "del", *user)
    helpers.wait_for("its going said", lambda: sw.events("remote.foreign_filter_gone"))
    helpers.wait_for("the rule installed again", lambda: sw.events("remote.rules_lost"))
    assert [(e["rules"], e["prios"]) for e in sw.events("remote.rules_lost")] == [(1, [hex(remote.PRIO_PROMISC)])]
    assert "cookie 746170737769746368" in helpers.nsexec(site["sw"], "tc", "filter", "show", *user).stdout
    assert helpers.ping(site["c"][1], "198.18.3.100")
    assert sw.stop() == 0
    assert helpers.nsexec(site["sw"], "tc", "filter", "show", "dev", "nic0", "ingress").stdout == ""


def test_the_uplinks_tx_rule_deleted_with_every_filter_on_its_tap_is_installed_again(lab, site):
    """Another deletes every filter on the uplink's TAP (`tc filter del dev TAP ingress`): the
    switch installs its TX rule again at the deletion's event (remote.rules_lost), and the
    containers reach the outside host. (What the switch sent out of the port went nowhere.)"""
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"])
    assert helpers.ping(site["c"][0], "198.18.3.100")
    helpers.nsexec(site["sw"], "tc", "filter", "del", "dev", lab.name("up"), "ingress")
    helpers.wait_for("the rule installed again", lambda: sw.events("remote.rules_lost"))
    assert [e["first"] for e in sw.events("remote.rules_lost")] == ["TX"]
    assert helpers.ping(site["c"][1], "198.18.3.100")
    assert sw.stop() == 0


@pytest.mark.parametrize("dev", ["nic0", "tap"])
def test_a_clsact_deleted_under_a_running_port_is_added_again_with_its_rules(lab, site, dev):
    """Another deletes the clsact qdisc of the NIC or of the uplink's TAP while the port runs
    (`tc qdisc del dev DEV clsact`): the port's rules went with it, and no filter event says so.
    At the qdisc's deletion event the switch adds it again, with the rules (remote.clsact_lost),
    and the containers reach the outside host; the stop leaves the NIC as it was. (Traffic
    stopped for good, the port shown up, nothing said.)"""
    before = nic_state(site["sw"])
    sw = lab.switch(config(lab, site, "promisc"), netns=site["sw"])
    assert helpers.ping(site["c"][0], "198.18.3.100")
    dev = lab.name("up") if dev == "tap" else dev
    helpers.nsexec(site["sw"], "tc", "qdisc", "del", "dev", dev, "clsact")
    helpers.wait_for("the clsact added again", lambda: sw.events("remote.clsact_lost"))
    assert [e["dev"] for e in sw.events("remote.clsact_lost")] == [dev]
    assert "cookie 746170737769746368" in helpers.nsexec(site["sw"], "tc", "filter", "show", "dev", dev, "ingress").stdout
    assert helpers.ping(site["c"][1], "198.18.3.100")
    assert sw.stop() == 0
    assert nic_state(site["sw"]) == before


@pytest.mark.parametrize("mode", remote.MODES)
def test_a_users_filter_added_without_a_priority_while_a_port_runs_is_not_foreign_and_the_next_start_takes_the_nic(
        lab, site, mode):
    """The NIC's user adds a filter without a priority while the port runs: the kernel gives it the
    one below tapswitch's lowest rule there. That was 0xc101 (local, shared) or 0xc105 (promisc):
    the filter landed in the range tapswitch reserves, was said as foreign, and the next start
    refused the NIC. tapswitch's lowest is at 0xc100 now: the filter lands at 0xc0ff (49407), is
    not said, stays through the stop, and the next start takes the NIC beside it. (A filter the
    user adds then inside the range is said: the switch had seen the first one too.)"""
    sw = lab.switch(config(lab, site, mode), netns=site["sw"])
    helpers.nsexec(site["sw"], "tc", "filter", "add", "dev", "nic0", "ingress",
                   "u32", "match", "u32", "0x12345678", "0xffffffff", "at", "0", "classid", "1:1")
    def show():
        return helpers.nsexec(site["sw"], "tc", "filter", "show", "dev", "nic0", "ingress").stdout
    assert "pref 49407 u32" in show(), show()
    inside = ("dev", "nic0", "ingress", "prio", "0xc150")
    helpers.nsexec(site["sw"], "tc", "filter", "add", *inside, "bpf", "bytecode", "1,6 0 0 0,", "classid", "1:1")
    helpers.wait_for("the warning", lambda: sw.events("remote.foreign_filter"))
    helpers.nsexec(site["sw"], "tc", "filter", "del", *inside)
    helpers.wait_for("its going said", lambda: sw.events("remote.foreign_filter_gone"))
    assert [e["prio"] for e in sw.events("remote.foreign_filter")] == ["0xc150"]
    assert sw.stop() == 0
    assert "pref 49407 u32" in show(), show()
    again = lab.switch(config(lab, site, mode), netns=site["sw"])     # ready: the NIC is not refused
    assert not again.events("remote.foreign_filter")
    assert again.stop() == 0
    assert "pref 49407 u32" in show(), show()


# A remote port without `mtu:` leaves IFACE's MTU alone and takes it; with `mtu:`, IFACE has that one.


def set_mtu(site, mtu: int) -> None:
    """The NIC, and the outside host on its wire, at `mtu`."""
    helpers.nsexec(site["sw"], "ip", "link", "set", "nic0", "mtu", str(mtu))
    helpers.nsexec(site["out"], "ip", "link", "set", "eth0", "mtu", str(mtu))


def jumbo_config(lab, site, mode: str, inner_mtu: int, mtu: int | None = None) -> dict:
    """config(), the containers' ports at `inner_mtu`."""
    cfg = config(lab, site, mode, mtu)
    for port in cfg["ports"][:-1]:
        port["mtu"] = inner_mtu
    return cfg


def link_mtu(ns: str, dev: str) -> int:
    return json.loads(helpers.nsexec(ns, "ip", "-j", "link", "show", "dev", dev).stdout)[0]["mtu"]


def port_mtu(sw, name: str) -> int:
    return {p["name"]: p["mtu"] for p in sw.cli_json("ports")}[name]


def crosses(ns: str, address: str, mtu: int) -> bool:
    """A ping of exactly `mtu` bytes of IPv4, not fragmented, gets its answer."""
    r = helpers.nsexec(ns, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(mtu - 28), address, check=False)
    return r.returncode == 0


@pytest.mark.parametrize("mode", ["promisc", "shared"])
@pytest.mark.parametrize("nic_mtu", [9000, 1400])
def test_a_port_without_mtu_leaves_the_nic_its_own_mtu_and_takes_it(lab, site, nic_mtu, mode):
    set_mtu(site, nic_mtu)
    before = nic_state(site["sw"])
    sw = lab.switch(jumbo_config(lab, site, mode, inner_mtu=nic_mtu), netns=site["sw"])
    up = lab.name("up")
    assert link_mtu(site["sw"], "nic0") == nic_mtu
    assert port_mtu(sw, up) == nic_mtu and link_mtu(site["sw"], up) == nic_mtu
    assert crosses(site["c"][0], "198.18.3.100", nic_mtu)
    assert {p["name"]: p["counters"]["tx_errors"] for p in sw.cli_json("ports")}[up] == 0
    assert sw.stop() == 0
    assert nic_state(site["sw"]) == before


def test_a_port_with_mtu_sets_it_on_the_nic_and_gives_the_nics_back_on_stop(lab, site):
    set_mtu(site, 9000)
    before = nic_state(site["sw"])
    sw = lab.switch(jumbo_config(lab, site, "promisc", inner_mtu=1500, mtu=1500), netns=site["sw"])
    up = lab.name("up")
    assert link_mtu(site["sw"], "nic0") == 1500 and port_mtu(sw, up) == 1500
    assert crosses(site["c"][0], "198.18.3.100", 1500)
    assert sw.stop() == 0
    assert nic_state(site["sw"]) == before


def test_a_port_without_mtu_follows_the_nics_mtu_and_leaves_it_as_its_user_set_it(lab, site):
    """The NIC's user changes its MTU while it is attached: the port (its TAP, the fast path)
    follows; the stop leaves the NIC's MTU as its user set it, not as it was at the start."""
    set_mtu(site, 9000)
    sw = lab.switch(jumbo_config(lab, site, "promisc", inner_mtu=9000), netns=site["sw"])
    up = lab.name("up")
    set_mtu(site, 4000)
    helpers.wait_for("the port to follow", lambda: port_mtu(sw, up) == 4000)
    assert link_mtu(site["sw"], up) == 4000
    assert crosses(site["c"][0], "198.18.3.100", 4000)
    assert sw.stop() == 0
    assert link_mtu(site["sw"], "nic0") == 4000


def test_a_start_without_mtu_after_a_sigkilled_run_with_one_gives_the_nic_its_own_back(lab, site):
    """The dead run set the NIC's MTU (`mtu: 1400`); the next start, whose port has no `mtu:`,
    heals it (the dead run's rules recorded 9000) and takes it; its stop leaves it so."""
    set_mtu(site, 9000)
    before = nic_state(site["sw"])
    cfg = config(lab, site, "promisc", mtu=1400)
    sw = lab.switch(cfg, netns=site["sw"])
    assert sw.kill() != 0                # and its workers gone with it (PDEATHSIG)
    assert link_mtu(site["sw"], "nic0") == 1400
    del cfg["ports"][-1]["mtu"]
    sw2 = lab.switch(cfg, netns=site["sw"])
    assert link_mtu(site["sw"], "nic0") == 9000 and port_mtu(sw2, lab.name("up")) == 9000
    assert sw2.stop() == 0
    assert nic_state(site["sw"]) == before


@pytest.mark.parametrize("named", [True, False])
def test_a_start_after_a_sigkilled_run_without_mtu_leaves_the_nics_mtu_alone(lab, site, named):
    """The dead run did not set the NIC's MTU, and recorded none to give back: a start that
    names the NIC with `mtu:` gives back the MTU the NIC had (not 0, nor none) when it stops;
    one whose config does not name it heals the rest and leaves the MTU as it is."""
    set_mtu(site, 9000)
    before = nic_state(site["sw"])
    cfg = config(lab, site, "promisc")
    sw = lab.switch(cfg, netns=site["sw"])
    assert sw.kill() != 0                # and its workers gone with it (PDEATHSIG)
    assert link_mtu(site["sw"], "nic0") == 9000
    if named:
        cfg["ports"][-1]["mtu"] = 1500
    else:
        cfg["ports"].pop()
    sw2 = lab.switch(cfg, netns=site["sw"])
    assert link_mtu(site["sw"], "nic0") == (1500 if named else 9000)
    if not named:
        assert [(e["remote"], e["mtu"]) for e in sw2.events("remote.healed")] == [("nic0", None)]     # no MTU to give back
    assert sw2.stop() == 0
    assert nic_state(site["sw"]) == before


def test_a_reload_that_gives_or_takes_the_mtu_sets_the_nics_or_gives_it_back(lab, site):
    set_mtu(site, 9000)
    before = nic_state(site["sw"])
    cfg = jumbo_config(lab, site, "promisc", inner_mtu=9000)
    sw = lab.switch(cfg, netns=site["sw"])
    up = lab.name("up")

    def reload(mtu: int | None) -> dict:
        if mtu is None:
            cfg["ports"][-1].pop("mtu", None)
        else:
            cfg["ports"][-1]["mtu"] = mtu
        with open(sw.config_path, "w") as f:
            yaml.safe_dump(cfg, f)
        return sw.cli_json("reload")

    assert reload(None)["remade"] == []                 # nothing changed: nothing made again
    assert link_mtu(site["sw"], "nic0") == 9000 and port_mtu(sw, up) == 9000
    assert reload(1500)["remade"] == [up]
    assert link_mtu(site["sw"], "nic0") == 1500 and port_mtu(sw, up) == 1500
    assert crosses(site["c"][0], "198.18.3.100", 1500)
    assert reload(None)["remade"] == [up]
    assert link_mtu(site["sw"], "nic0") == 9000 and port_mtu(sw, up) == 9000
    assert crosses(site["c"][0], "198.18.3.100", 9000)
    assert sw.stop() == 0
    assert nic_state(site["sw"]) == before


def test_reloads_that_remove_and_add_a_remote_port_leave_no_descriptor_behind(lab, site):
    """Each remote port removed by a reload left three descriptors of the control process
    open (the event loop pyroute2 kept for the pool thread that made the port's IPRoute),
    until the garbage collector happened to come by: a switch whose VM ports come and go
    by reload for months ran out of them."""
    cfg = config(lab, site, "promisc")
    sw = lab.switch(cfg, netns=site["sw"])
    uplink = cfg["ports"].pop()

    def reload(ports: list) -> None:
        with open(sw.config_path, "w") as f:
            yaml.safe_dump({**cfg, "ports": ports}, f)
        assert sw.cli("reload").returncode == 0

    def fds() -> int:
        return len(os.listdir(f"/proc/{sw.proc.pid}/fd"))

    reload(cfg["ports"])
    reload(cfg["ports"] + [uplink])
    before = fds()
    for _ in range(6):
        reload(cfg["ports"])
        reload(cfg["ports"] + [uplink])
    # Waited for: the last reload's control connection, and a netlink socket of the ports'
    # threads, may close a moment after the reply (either way around `before`); a leak stays.
    helpers.wait_for("the descriptors back to as many as before", lambda: fds() <= before, within=5)
    assert sw.stop() == 0

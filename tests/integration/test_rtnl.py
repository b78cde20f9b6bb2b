"""tapswitch.rtnl against the kernel: what its requests do is what `ip` then shows."""

import errno
import ipaddress
import json
import os

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from tapswitch import netns
from tapswitch.rtnl import IN6_ADDR_GEN_MODE_NONE, NSID_NONE, Rtnl
from tests.integration import helpers


def rtnl_in(ns: str) -> Rtnl:
    return Rtnl(netns.netlink_socket(f"/run/netns/{ns}"))


def link(ns: str, dev: str) -> dict:
    return json.loads(helpers.nsexec(ns, "ip", "-j", "-d", "link", "show", "dev", dev).stdout)[0]


def index_of(ns: str, dev: str) -> int:
    return int(helpers.nsexec(ns, "cat", f"/sys/class/net/{dev}/ifindex").stdout)


def test_link_set_renames_and_configures_a_device_and_raises_it_in_one_request(lab):
    ns = lab.netns("r", create=True)
    helpers.nsexec(ns, "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb")
    index = index_of(ns, "va")
    with rtnl_in(ns) as there:
        there.link_set(index, up=True, ifname="eth5", address="02:00:00:00:05:05", mtu=1400, txqlen=777)
        got = link(ns, "eth5")
        assert (got["ifindex"], got["address"], got["mtu"], got["txqlen"]) == (index, "02:00:00:00:05:05", 1400, 777)
        assert "UP" in got["flags"]
        there.link_set(index, up=False)
        assert "UP" not in link(ns, "eth5")["flags"]
        with pytest.raises(NetlinkError) as e:
            there.link_set(index + 1000)          # no such device
        assert e.value.code == errno.ENODEV


def test_link_set_moves_a_device_into_another_namespace(lab):
    a, b = lab.netns("a", create=True), lab.netns("b", create=True)
    helpers.nsexec(a, "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb")
    fd = os.open(f"/run/netns/{b}", os.O_RDONLY)
    try:
        with rtnl_in(a) as there:
            there.link_set(index_of(a, "va"), net_ns_fd=fd)
    finally:
        os.close(fd)
    assert not helpers.link_exists("va", a) and helpers.link_exists("va", b)


def test_addr_add_adds_ipv4_and_ipv6_as_ip_does_and_refuses_a_duplicate(lab):
    ns = lab.netns("d", create=True)
    helpers.nsexec(ns, "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb")
    helpers.nsexec(ns, "ip", "link", "set", "va", "up")
    index = index_of(ns, "va")
    with rtnl_in(ns) as there:
        there.addr_add(index, ipaddress.ip_interface("198.18.7.1/24"))
        there.addr_add(index, ipaddress.ip_interface("fd00::7:1/64"), flags=0x02)    # IFA_F_NODAD
        with pytest.raises(NetlinkError) as e:
            there.addr_add(index, ipaddress.ip_interface("198.18.7.1/24"))
        assert e.value.code == errno.EEXIST
    addrs = json.loads(helpers.nsexec(ns, "ip", "-j", "addr", "show", "dev", "va").stdout)[0]["addr_info"]
    v4 = [a for a in addrs if a["family"] == "inet"]
    v6 = [a for a in addrs if a["family"] == "inet6" and a["scope"] == "global"]
    assert [(a["local"], a["prefixlen"]) for a in v4] == [("198.18.7.1", 24)]
    assert [(a["local"], a["prefixlen"]) for a in v6] == [("fd00::7:1", 64)]
    assert not v6[0].get("tentative")                              # no duplicate address detection
    assert "198.18.7.0/24" in helpers.nsexec(ns, "ip", "route", "show", "dev", "va").stdout


def test_addr_gen_mode_none_leaves_a_device_that_comes_up_without_a_link_local_address(lab):
    ns = lab.netns("g", create=True)
    helpers.nsexec(ns, "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb")
    with rtnl_in(ns) as there:
        there.set_addr_gen_mode(index_of(ns, "va"), IN6_ADDR_GEN_MODE_NONE)
    assert link(ns, "va")["inet6_addr_gen_mode"] == "none"
    helpers.nsexec(ns, "ip", "link", "set", "vb", "up")
    helpers.nsexec(ns, "ip", "link", "set", "va", "up")
    helpers.wait_for("vb's link-local address", lambda: "fe80::" in helpers.nsexec(ns, "ip", "-6", "addr", "show", "dev", "vb").stdout)
    assert "inet6" not in helpers.nsexec(ns, "ip", "-6", "addr", "show", "dev", "va").stdout


def test_a_namespace_gets_an_id_once(lab):
    ns = lab.netns("n", create=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        with Rtnl() as here:
            assert here.get_nsid(fd) == NSID_NONE
            here.new_nsid(fd)
            nsid = here.get_nsid(fd)
            assert nsid >= 0
            with pytest.raises(NetlinkError) as e:
                here.new_nsid(fd)
            assert e.value.code == errno.EEXIST
            assert here.get_nsid(fd) == nsid
    finally:
        os.close(fd)
    ids = json.loads(helpers.sh("ip", "-j", "netns", "list-id").stdout or "[]")
    assert {"nsid": nsid, "name": ns} in ids


def test_index_of_asks_on_the_socket_it_is_given_and_says_none_for_no_device():
    """SIOCGIFINDEX on the route socket itself: no descriptor of its own to run out of, as
    if_nametoindex(3) has, and a missing device is None, not an error."""
    import socket

    from tapswitch import rtnl
    with rtnl.route_socket() as sock:
        assert rtnl.index_of(sock, "lo") == socket.if_nametoindex("lo")
        assert rtnl.index_of(sock, "tsnosuchdev0") is None

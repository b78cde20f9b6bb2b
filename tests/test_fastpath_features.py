"""Tests of the fast path's port settings (fastpath.h, "Port settings"), through cffi.

VLANs, isolation, mirrors, MAC limits, ACLs, storm control and the
double-buffered settings, one behaviour per test, with hand-built frames on
SOCK_SEQPACKET socketpairs as in test_fastpath.py. No root needed.
"""

import ipaddress
import random
import socket
import struct
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from tapswitch._fastpath import ffi, lib
from tests.fastpath_io import IO, io_backend  # noqa: F401 (io_backend: every test, both backends)
from tapswitch.fastpath import Shared, mac_bytes
from tests.test_fastpath import BROADCAST, GSO_TCPV4, GSO_TCPV6, MALFORMED, NEEDS_CSUM, VNET, A, B, C, Switch, frame

H = VNET.size             # the virtio-net header before every frame
MACS = H + 12             # where a tag goes: after the two MACs

D = "02:00:00:00:00:0d"
E = "02:00:00:00:00:0e"
MCAST = "01:00:5e:00:00:01"


def tag(vid, ethertype=0x0800, pcp=0):
    """An 802.1Q tag and the ethertype after it."""
    return struct.pack("!HHH", 0x8100, pcp << 13 | vid, ethertype)


def tagged(dst, src, vid, payload=bytes(46), ethertype=0x0800, pcp=0, **vnet):
    """virtio-net header + Ethernet with an 802.1Q tag (as frame(), plus the tag)."""
    plain = frame(dst, src, payload, ethertype, **vnet)
    return plain[:MACS] + tag(vid, ethertype, pcp) + plain[MACS + 2:]


def untag(data):
    """The frame without its tag (header untouched)."""
    return data[:MACS] + data[MACS + 4:]


def l3(packet, **vnet):
    """virtio-net header + a scapy packet (Ether first)."""
    header = VNET.pack(vnet.get("flags", 0), 0, 0, 0, 0, 0)
    return header + bytes(packet)


def vnet_of(data):
    return VNET.unpack(data[:H])


VNET_FIELDS = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")   # vnet_of's order


class Settings:
    """Writes the next settings copy like tapswitch.settings does, from raw values."""

    def __init__(self, shared):
        self.shared = shared
        self.t = shared.settings_next()

    def port(self, p, *, pvid=None, trunk=(), isolated=False, monitor=False, mac_limit=None,
             mirror_rx=0, mirror_tx=0, storm=None, acl=()):
        c = self.t.ports[p]
        flags = 0
        if pvid is not None:
            c.pvid = pvid
        if trunk:
            flags |= lib.TS_PORT_TRUNK
            for v in trunk:
                c.vlans[v // 64] |= 1 << (v % 64)
        if isolated:
            flags |= lib.TS_PORT_ISOLATED
        if monitor:
            flags |= lib.TS_PORT_MONITOR
            c.pvid = 0
        if mac_limit is not None:
            flags |= lib.TS_PORT_MAC_LIMIT
            c.mac_limit = mac_limit
        if storm:
            flags |= lib.TS_PORT_STORM
            for kind, (interval, burst) in storm.items():
                c.storm_interval[kind] = interval
                c.storm_burst[kind] = burst
        if acl:
            flags |= lib.TS_PORT_ACL
            c.acl_rules = len(acl)
            for r, rule in enumerate(acl):
                write_rule(self.t.acl[p][r], **rule)
        c.flags = flags
        c.mirror_rx = mirror_rx
        c.mirror_tx = mirror_tx
        return self

    def mirror(self, m, to):
        self.t.mirrors[m].to = to
        return self

    def publish(self):
        assert self.shared.settings_publish() == 0


def write_rule(r, action="drop", eth_src=None, eth_dst=None, eth_type=None, vlan=None,
               ip_src=None, ip_dst=None, ip_proto=None, src_port=None, dst_port=None):
    match = 0
    r.action = lib.TS_ACL_DROP if action == "drop" else lib.TS_ACL_ALLOW
    for field, value, bit in (("eth_src", eth_src, lib.TS_ACL_ETH_SRC), ("eth_dst", eth_dst, lib.TS_ACL_ETH_DST)):
        if value is not None:
            mac, _, mask = value.partition("/")
            setattr(r, field, list(mac_bytes(mac)))
            setattr(r, field + "_mask", list(mac_bytes(mask or "ff:ff:ff:ff:ff:ff")))
            match |= bit
    if eth_type is not None:
        r.eth_type, match = eth_type, match | lib.TS_ACL_ETH_TYPE
    if vlan is not None:
        r.vlan, match = vlan, match | lib.TS_ACL_VLAN
    for field, value, bit in (("ip_src", ip_src, lib.TS_ACL_IP_SRC), ("ip_dst", ip_dst, lib.TS_ACL_IP_DST)):
        if value is not None:
            net = ipaddress.ip_network(value)
            setattr(r, field, list(net.network_address.packed.ljust(16, b"\0")))
            setattr(r, field + "_mask", list(net.netmask.packed.ljust(16, b"\0")))
            match |= bit | (lib.TS_ACL_IPV4 if net.version == 4 else lib.TS_ACL_IPV6)
    if ip_proto is not None:
        r.ip_proto, match = ip_proto, match | lib.TS_ACL_IP_PROTO
    if src_port is not None:
        r.src_port, match = src_port, match | lib.TS_ACL_SRC_PORT
    if dst_port is not None:
        r.dst_port, match = dst_port, match | lib.TS_ACL_DST_PORT
    r.match = match


@pytest.fixture
def sw():
    s = Switch(n_ports=4)
    yield s
    s.close()


def tcp_payload(data: bytes) -> bytes:
    """data as an IPv4 packet's bytes whose TCP header (after 20 bytes of IP)
    is 32 bytes long, as hdr_len says: the MTU check measures a GSO frame's
    segments by it."""
    return data[:32] + bytes([8 << 4]) + data[33:]


@pytest.fixture
def big():
    s = Switch(n_ports=3, bufsize=1 << 20)
    yield s
    s.close()


def received_all(sw):
    return [sw.received(p) for p in range(len(sw.hosts))]


# Settings copies.

def test_every_port_starts_in_vlan_1_in_both_copies():
    shared = Shared.create(64, 1)
    try:
        for copy in (shared.ptr.settings[0], shared.ptr.settings[1]):
            assert {copy.ports[p].pvid for p in range(lib.TS_MAX_PORTS)} == {1}
            assert {copy.ports[p].flags for p in range(lib.TS_MAX_PORTS)} == {0}
    finally:
        shared.close()


def test_publish_makes_the_next_copy_current(sw):
    before = sw.shared.settings_current()
    Settings(sw.shared).port(1, pvid=10).publish()
    assert sw.shared.settings_current() != before
    assert sw.shared.settings_current().ports[1].pvid == 10
    Settings(sw.shared).publish()                # the next copy starts from the defaults
    assert sw.shared.settings_current() == before
    assert sw.shared.settings_current().ports[1].pvid == 1


def test_worker_uses_new_settings_from_its_next_wake_up(sw):
    f = frame(BROADCAST, A)
    sw.send(0, f)
    assert sw.received(1) == [f]
    sw.drain()
    Settings(sw.shared).port(1, pvid=10).publish()
    sw.send(0, f)
    assert sw.received(1) == []
    assert sw.received(2) == [f]


def test_worker_marks_no_copy_between_wake_ups(sw):
    sw.send(0, frame(BROADCAST, A))
    assert sw.shared.ptr.readers[0].active == 0


def test_publish_waits_for_a_worker_still_in_the_old_copy(sw):
    gen = sw.shared.ptr.settings_gen
    sw.shared.ptr.readers[0].active = (gen & 1) + 1    # as a worker mid-burst in the current copy
    sw.shared.settings_next()
    start = time.monotonic()
    assert sw.shared.settings_publish(50) == 1
    assert time.monotonic() - start >= 0.05
    sw.shared.ptr.readers[0].active = 0
    sw.shared.settings_next()
    assert sw.shared.settings_publish(50) == 0


def test_new_worker_takes_the_marker_over_at_its_first_poll(sw):
    """A worker made while the one it replaces still runs leaves that one's marker (and
    backend) alone; its first poll clears the marker a dead worker left, and says its backend."""
    sw.shared.ptr.readers[0].active = 1          # the running (or dead) worker's, mid-burst
    sw.shared.ptr.readers[0].io = 99
    w = lib.ts_worker_new(sw.shared.ptr, 0, ffi.new("int[]", [-1]), 1, IO())
    try:
        assert sw.shared.ptr.readers[0].active == 1
        assert sw.shared.ptr.readers[0].io == 99
        assert lib.ts_worker_poll(w, 0) == 0
        assert sw.shared.ptr.readers[0].active == 0
        assert sw.shared.ptr.readers[0].io == lib.ts_worker_io(w)
    finally:
        lib.ts_worker_free(w)


# VLANs: access ports.

def test_access_ports_in_different_vlans_do_not_see_each_others_broadcasts(sw):
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=10).port(2, pvid=20).port(3, pvid=20).publish()
    f = frame(BROADCAST, A)
    sw.send(0, f)
    assert received_all(sw) == [[], [f], [], []]
    sw.send(2, frame(BROADCAST, C))
    assert received_all(sw) == [[], [], [], [frame(BROADCAST, C)]]


def test_learning_is_per_vlan(sw):
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=20).publish()
    sw.learn(0, A)
    assert lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(A), 10) == 0
    assert lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(A), 20) == -1
    assert [(mac, vlan, port) for mac, vlan, port, _, _ in sw.shared.fdb_dump()] == [(A, 10, 0)]


def test_unicast_to_a_mac_known_in_another_vlan_is_flooded_in_its_own(sw):
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=20).port(2, pvid=20).port(3, pvid=20).publish()
    sw.learn(0, A)                               # A is in VLAN 10, on port 0
    f = frame(A, B)
    sw.send(1, f)                                # from VLAN 20
    assert received_all(sw) == [[], [], [f], [f]]
    assert sw.counters(1)["flooded"] == 1


def test_unicast_to_a_port_no_longer_in_the_vlan_is_dropped(sw):
    sw.learn(1, B)                               # learned in VLAN 1
    Settings(sw.shared).port(1, pvid=10, trunk=[20]).publish()
    sw.send(0, frame(B, A))
    assert received_all(sw) == [[], [], [], []]
    assert sw.counters(0)["rx_dropped"] == 1


def test_access_port_accepts_its_own_vid_tagged_and_sends_it_untagged(sw):
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=10).port(2, pvid=20).port(3, pvid=20).publish()
    sw.send(0, tagged(BROADCAST, A, 10))
    assert sw.received(1) == [frame(BROADCAST, A)]


def test_access_port_drops_other_vids_and_counts_them(sw):
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=20).publish()
    sw.send(0, tagged(BROADCAST, A, 20))
    assert received_all(sw) == [[], [], [], []]
    c = sw.counters(0)
    assert (c["rx_packets"], c["rx_dropped"], c["vlan_dropped"], c["flooded"]) == (1, 1, 1, 0)
    assert sw.shared.fdb_entries() == 0          # dropped before learning


def test_default_port_drops_tagged_frames_of_other_vlans(sw):
    sw.send(0, tagged(BROADCAST, A, 10))
    assert received_all(sw) == [[], [], [], []]
    assert sw.counters(0)["vlan_dropped"] == 1


def test_priority_tagged_frame_is_in_the_pvid_and_leaves_untagged(sw):
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=10).publish()
    sw.send(0, tagged(BROADCAST, A, 0, pcp=5))
    assert sw.received(1) == [frame(BROADCAST, A)]


def test_priority_tagged_frame_gets_the_vid_on_a_trunk_and_keeps_its_priority(sw):
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10]).publish()
    sw.send(0, tagged(BROADCAST, A, 0, pcp=5))
    assert sw.received(1) == [tagged(BROADCAST, A, 10, pcp=5)]


# VLANs: trunk ports, tag push and pop.

def test_access_to_trunk_pushes_the_tag(sw):
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10, 20]).publish()
    payload = bytes(range(46))
    sw.send(0, frame(BROADCAST, A, payload))
    assert sw.received(1) == [tagged(BROADCAST, A, 10, payload)]
    assert sw.counters(1)["tx_bytes"] == 64


def test_trunk_to_access_pops_the_tag(sw):
    Settings(sw.shared).port(0, pvid=0, trunk=[10, 20]).port(1, pvid=20).port(2, pvid=10).publish()
    payload = bytes(range(46))
    sw.send(0, tagged(BROADCAST, A, 20, payload))
    assert received_all(sw) == [[], [frame(BROADCAST, A, payload)], [], []]


def test_trunk_to_trunk_keeps_the_tag(sw):
    Settings(sw.shared).port(0, pvid=0, trunk=[10, 20]).port(1, pvid=0, trunk=[20]).publish()
    f = tagged(BROADCAST, A, 20, pcp=3)
    sw.send(0, f)
    assert sw.received(1) == [f]


def test_priority_tagged_frame_given_the_vid_keeps_its_dei(sw):
    # The tag's DEI bit (0x1000 of the TCI, beside PCP) is the frame's, as its priority is.
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10]).publish()
    DEI = 0x1000
    sw.send(0, tagged(BROADCAST, A, DEI | 0, pcp=5))
    assert sw.received(1) == [tagged(BROADCAST, A, DEI | 10, pcp=5)]


def test_rx_mirror_gets_a_priority_tag_as_it_came_though_a_trunk_gives_it_the_vid(sw):
    # The mirror's copy is written from the frame's buffer, which the trunk's copy then edits
    # (VID 0 to 10): a queued write (io_uring) must go out before that edit.
    Settings(sw.shared).port(0, pvid=10, mirror_rx=1).port(1, pvid=0, trunk=[10]).port(3, monitor=True) \
        .mirror(0, 3).publish()
    f = tagged(BROADCAST, A, 0, pcp=5)
    sw.send(0, f)
    assert sw.received(3) == [f]
    assert sw.received(1) == [tagged(BROADCAST, A, 10, pcp=5)]


def test_a_flood_that_pops_the_tag_for_one_port_keeps_the_priority_for_the_next(sw):
    """Ports in order: the access port's copy is untagged (the tag popped in place), the trunk
    after it gets the tag back with the frame's own PCP and DEI, as known unicast would."""
    Settings(sw.shared).port(0, pvid=0, trunk=[10]).port(1, pvid=10).port(2, pvid=0, trunk=[10]).publish()
    f = tagged(BROADCAST, A, 10, pcp=5)
    f = f[:MACS + 2] + bytes([f[MACS + 2] | 0x10]) + f[MACS + 3:]       # DEI set too
    sw.send(0, f)
    assert received_all(sw) == [[], [frame(BROADCAST, A)], [f], []]
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=10).port(2, pvid=0, trunk=[10]).publish()
    sw.send(0, tagged(BROADCAST, B, 0, pcp=6))          # a priority tag, from an access port
    assert received_all(sw) == [[], [frame(BROADCAST, B)], [tagged(BROADCAST, B, 10, pcp=6)], []]


def test_trunk_drops_vids_it_does_not_carry(sw):
    Settings(sw.shared).port(0, pvid=0, trunk=[10, 20]).port(1, pvid=30, trunk=[10]).publish()
    sw.send(0, tagged(BROADCAST, A, 30))
    sw.send(0, tagged(BROADCAST, A, 4095))
    assert received_all(sw) == [[], [], [], []]
    assert sw.counters(0)["vlan_dropped"] == 2


def test_trunk_without_native_vlan_drops_untagged_frames(sw):
    Settings(sw.shared).port(0, pvid=0, trunk=[10]).publish()
    sw.send(0, frame(BROADCAST, A))
    assert received_all(sw) == [[], [], [], []]
    assert sw.counters(0)["vlan_dropped"] == 1


def test_native_vlan_is_untagged_on_the_trunk(sw):
    Settings(sw.shared).port(0, pvid=10, trunk=[20]).port(1, pvid=10).port(2, pvid=20).publish()
    sw.send(1, frame(BROADCAST, B))
    assert sw.received(0) == [frame(BROADCAST, B)]
    sw.send(2, frame(BROADCAST, C))
    assert sw.received(0) == [tagged(BROADCAST, C, 20)]
    sw.send(0, frame(BROADCAST, A))              # untagged in: native VLAN 10
    assert received_all(sw) == [[], [frame(BROADCAST, A)], [], []]


def test_flood_gives_each_port_its_own_form(sw):
    Settings(sw.shared).port(0, pvid=0, trunk=[10]).port(1, pvid=10).port(2, pvid=0, trunk=[10]) \
        .port(3, pvid=10).publish()
    f = tagged(BROADCAST, A, 10)
    sw.send(0, f)
    assert received_all(sw) == [[], [untag(f)], [f], [untag(f)]]


def test_push_moves_checksum_start_and_header_length(big):
    Settings(big.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10]).publish()
    payload = tcp_payload(random.Random(3).randbytes(20000))
    f = frame(BROADCAST, A, payload, flags=NEEDS_CSUM, gso_type=GSO_TCPV4, gso_size=1448,
              hdr_len=14 + 20 + 32, csum_start=14 + 20, csum_offset=16)
    big.send(0, f)
    [out] = big.received(1)
    assert vnet_of(out) == (NEEDS_CSUM, GSO_TCPV4, 14 + 4 + 20 + 32, 1448, 14 + 4 + 20, 16)
    assert out[H:MACS] == f[H:MACS] and out[MACS:MACS + 4] == tag(10)[:4] and out[MACS + 4:] == f[MACS:]


def test_pop_moves_checksum_start_and_header_length_back(big):
    Settings(big.shared).port(0, pvid=0, trunk=[10]).port(1, pvid=10).publish()
    payload = tcp_payload(random.Random(4).randbytes(20000))
    f = tagged(BROADCAST, A, 10, payload, ethertype=0x0800, flags=NEEDS_CSUM, gso_type=GSO_TCPV4,
               gso_size=1448, hdr_len=18 + 20 + 32, csum_start=18 + 20, csum_offset=16)
    big.send(0, f)
    [out] = big.received(1)
    assert vnet_of(out) == (NEEDS_CSUM, GSO_TCPV4, 14 + 20 + 32, 1448, 14 + 20, 16)
    assert out[H:] == untag(f)[H:]


def test_push_leaves_an_unset_header_length_and_checksum_alone(sw):
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10]).publish()
    sw.send(0, frame(BROADCAST, A, csum_start=7))    # no NEEDS_CSUM: csum_start means nothing
    [out] = sw.received(1)
    assert vnet_of(out) == (0, 0, 0, 0, 7, 0)


def test_gso_superframe_gets_a_tag_and_loses_it_byte_for_byte(big):
    Settings(big.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10]).port(2, pvid=10).publish()
    big.learn(2, C)
    payload = tcp_payload(random.Random(7).randbytes(65535 - 4))
    f = frame(C, A, payload, flags=NEEDS_CSUM, gso_type=GSO_TCPV4, gso_size=1448,
              hdr_len=14 + 20 + 32, csum_start=14 + 20, csum_offset=16)
    big.send(1, tagged(C, A, 10, payload, ethertype=0x0800, flags=NEEDS_CSUM, gso_type=GSO_TCPV4,
                       gso_size=1448, hdr_len=18 + 20 + 32, csum_start=18 + 20, csum_offset=16))
    assert big.received(2) == [f]


def test_frame_too_long_for_one_more_tag_is_a_tx_error(big):
    Settings(big.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10]).port(2, pvid=10).publish()
    f = frame(BROADCAST, A, bytes(lib.TS_FRAME_MAX - 12 - 14 - 2), gso_type=GSO_TCPV4, gso_size=1448)
    big.send(0, f)
    assert big.received(2) == [f]
    assert big.received(1) == []
    assert big.counters(1)["tx_errors"] == 1


@pytest.mark.parametrize("field", ["csum_start", "hdr_len"])
def test_a_header_offset_one_more_tag_would_take_past_0xffff_is_a_tx_error(field):
    # A pushed tag moves csum_start and hdr_len 4 bytes on: from 0xffff - 3 they would wrap to 0
    # and the trunk get a header that says something else. It gets none (a tx_errors); the access
    # port gets the frame as it came. One byte less takes the tag, and reaches 0xffff.
    s = Switch(n_ports=3, bufsize=1 << 20, mtu=1 << 17)
    try:
        Settings(s.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10]).port(2, pvid=10).publish()
        payload = bytes(65540 - 14)
        if field == "csum_start":       # a checksum the kernel takes anywhere in the frame
            vnet = {"flags": NEEDS_CSUM, "csum_offset": 0}
        else:                           # a hint alone: a GSO frame without a checksum to take
            vnet = {"gso_type": GSO_TCPV4, "gso_size": 1448}
        over = frame(BROADCAST, A, payload, **vnet, **{field: 0xffff - 3})
        at = frame(BROADCAST, A, payload, **vnet, **{field: 0xffff - 4})
        s.send(0, over)
        assert s.received(1) == []
        assert s.counters(1)["tx_errors"] == 1
        assert s.received(2) == [over]
        s.send(0, at)
        [out] = s.received(1)
        assert vnet_of(out)[VNET_FIELDS.index(field)] == 0xffff
        assert out[H:] == tagged(BROADCAST, A, 10, payload)[H:]
        assert s.counters(1)["tx_errors"] == 1
    finally:
        s.close()


def test_tagged_frame_on_a_trunk_may_be_four_bytes_over_the_mtu(sw):
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10]).publish()
    sw.send(0, frame(BROADCAST, A, bytes(1500)))     # 1514 in, 1518 out
    sw.send(0, frame(BROADCAST, A, bytes(1501)))
    assert sw.received(1) == [tagged(BROADCAST, A, 10, bytes(1500))]
    assert sw.counters(1)["tx_errors"] == 1


def with_tags(tags, n):
    """A broadcast from A of an n-byte IPv4 packet behind these tags."""
    plain = frame(BROADCAST, A, bytes(n))
    return plain[:MACS] + tags + plain[MACS:]


S_TAG = struct.pack("!HH", 0x88A8, 100)         # 802.1ad: an ethertype like any other here
C_TAG = tag(200)[:4]


def test_802_1ad_frame_at_the_mtu_takes_the_trunks_tag_too(sw):
    # The tag a trunk gives a frame counts no more against the MTU than the
    # frame's own 802.1ad tag: a 1500-byte packet behind an S-tag reaches the
    # access port and the trunk, one byte more reaches neither.
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10]).port(2, pvid=10).publish()
    sw.send(0, with_tags(S_TAG, 1500))
    sw.send(0, with_tags(S_TAG, 1501))
    assert sw.received(2) == [with_tags(S_TAG, 1500)]
    assert sw.received(1) == [with_tags(tag(10)[:4] + S_TAG, 1500)]
    assert sw.counters(1)["tx_errors"] == 1 and sw.counters(2)["tx_errors"] == 1


def test_802_1ad_and_802_1q_tagged_frame_at_the_mtu_crosses(sw):
    # A QinQ frame (S-tag, then C-tag) of a 1500-byte packet crosses between
    # access ports, as the Linux bridge lets it; a third tag, a trunk's, does not fit.
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10]).port(2, pvid=10).publish()
    sw.send(0, with_tags(S_TAG + C_TAG, 1500))
    sw.send(0, with_tags(S_TAG + C_TAG, 1501))
    assert sw.received(2) == [with_tags(S_TAG + C_TAG, 1500)]
    assert sw.received(1) == []
    assert sw.counters(1)["tx_errors"] == 2 and sw.counters(2)["tx_errors"] == 1


def test_a_port_with_a_frame_max_takes_no_longer_frame_whatever_its_tags(sw):
    # A VXLAN port's tunnel carries frames of frame_max bytes at most, tags and all: an S-tagged
    # frame of a 1500-byte packet (1518 bytes) is within the MTU of 1500 but over the tunnel's 1514,
    # and so is an untagged one that the trunk tags (1518). (They went into the tunnel, and out of the
    # underlay fragmented or not at all.)
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=10).port(2, pvid=0, trunk=[10]).publish()
    sw.shared.set_port(1, lib.TS_PORT_UP, 1500, 1514)
    sw.shared.set_port(2, lib.TS_PORT_UP, 1496, 1514)
    sw.send(0, with_tags(S_TAG, 1500))
    sw.send(0, with_tags(S_TAG, 1496))
    sw.send(0, with_tags(b"", 1497))
    assert sw.received(1) == [with_tags(S_TAG, 1496), with_tags(b"", 1497)]
    assert sw.received(2) == []
    assert sw.counters(1)["tx_errors"] == 1
    assert sw.counters(2)["tx_errors"] == 3
    sw.send(0, with_tags(b"", 1496))
    assert sw.received(2) == [with_tags(tag(10)[:4], 1496)]


def test_a_gso_frame_whose_segments_with_their_tags_are_over_frame_max_is_a_tx_error(big):
    Settings(big.shared).port(0, pvid=10).port(1, pvid=10).port(2, pvid=10).publish()
    big.shared.set_port(1, lib.TS_PORT_UP, 1500, 1514)
    payload = tcp_payload(bytes(8000))

    def gso(tags):      # segments of 20 + 32 + 1448 = 1500 IP bytes behind the tags
        f = frame(BROADCAST, A, payload, flags=NEEDS_CSUM, gso_type=GSO_TCPV4, gso_size=1448,
                  hdr_len=14 + len(tags) + 20 + 32, csum_start=14 + len(tags) + 20, csum_offset=16)
        return f[:MACS] + tags + f[MACS:]
    big.send(0, gso(S_TAG))
    big.send(0, gso(b""))
    assert big.received(1) == [gso(b"")]
    assert big.received(2) == [gso(S_TAG), gso(b"")]
    assert big.counters(1)["tx_errors"] == 1


def test_a_copy_over_the_monitor_ports_frame_max_is_counted_dropped(sw):
    # The copy of a tagged frame keeps its tag: one a VXLAN monitor port's tunnel cannot carry is
    # dropped and counted, as a copy over the monitor port's MTU is.
    Settings(sw.shared).port(0, pvid=0, trunk=[10], mirror_rx=1).port(3, monitor=True).mirror(0, 3).publish()
    sw.shared.set_port(3, lib.TS_PORT_UP, 1500, 1514)
    sw.send(0, with_tags(tag(10)[:4], 1500))
    sw.send(0, with_tags(tag(10)[:4], 1496))
    assert sw.received(3) == [with_tags(tag(10)[:4], 1496)]
    assert sw.shared.mirror_counters(0)["dropped"] == 1
    assert sw.counters(3)["tx_errors"] == 1


@pytest.mark.parametrize("data", [
    frame(BROADCAST, A, b"", ethertype=0x8100)[:H + 16],                       # no room for the tag
    tagged(BROADCAST, A, 10, flags=NEEDS_CSUM, csum_start=16, csum_offset=4),  # checksum starts in the tag
    # A second 802.1Q tag, which popping the first brings to the front: cut, or a checksum starts in it.
    tagged(BROADCAST, A, 10, b"", ethertype=0x8100),
    tagged(BROADCAST, A, 10, b"\x00\x14", ethertype=0x8100),
    tagged(BROADCAST, A, 10, b"\x00\x14\x08", ethertype=0x8100),
    tagged(BROADCAST, A, 10, tag(20)[2:] + bytes(46), ethertype=0x8100, flags=NEEDS_CSUM, csum_start=20,
           csum_offset=4),
    # A checksum a pop would move below 20, where a TAP write takes none (the
    # kernel's least network header): each access port counted a tx error.
    tagged(BROADCAST, A, 10, flags=NEEDS_CSUM, csum_start=23, csum_offset=4),
    tagged(BROADCAST, A, 10, bytes(1000), ethertype=0x86dd, flags=NEEDS_CSUM, gso_type=GSO_TCPV6, gso_size=100,
           csum_start=43, csum_offset=16),
    # Behind two tags, one the pop leaves tagged 20 to 23 bytes in: the tag left is one a second
    # pop (this switch's next hop) could not take off (fuzzing found it going out tagged 21 bytes in).
    tagged(BROADCAST, A, 10, tag(20)[2:] + bytes(46), ethertype=0x8100, flags=NEEDS_CSUM, csum_start=25,
           csum_offset=1),
    # Behind three tags, the frame the pop leaves with two is one the switch refuses: cut in its
    # second tag, or a checksum below 28 (a long fuzzing run sent both out of an access port).
    tagged(BROADCAST, A, 10, tag(20, 0x8100)[2:], ethertype=0x8100),
    tagged(BROADCAST, A, 10, tag(20, 0x8100)[2:] + tag(30)[2:] + bytes(46), ethertype=0x8100, flags=NEEDS_CSUM,
           csum_start=28, csum_offset=4),
], ids=["no room for the tag", "checksum in the tag", "second tag: no TCI", "second tag: no type",
        "second tag: half a type", "checksum in the second tag", "checksum a pop moves below 20",
        "TCPV6 checksum a pop moves below 40", "two tags: checksum the pop leaves tagged below 24",
        "third tag: no TCI", "three tags: checksum the pop leaves below 28"])
def test_broken_tag_is_an_rx_error(sw, data):
    # Port 1 would get the frame with its tag popped: never one whose front tag is broken.
    Settings(sw.shared).port(0, pvid=0, trunk=[10]).port(1, pvid=10).publish()
    sw.send(0, data)
    assert received_all(sw) == [[], [], [], []]
    assert sw.counters(0)["rx_errors"] == 1


def test_a_whole_second_tag_comes_to_the_front_when_the_first_is_popped(sw):
    Settings(sw.shared).port(0, pvid=0, trunk=[10]).port(1, pvid=10).publish()
    data = tagged(BROADCAST, A, 10, tag(20)[2:] + bytes(46), ethertype=0x8100, flags=NEEDS_CSUM, csum_start=28,
                  csum_offset=4)
    sw.send(0, data)
    out = untag(data)
    assert sw.received(1) == [out[:H - 4] + struct.pack("=H", 24) + out[H - 2:]]


def test_behind_three_tags_the_pop_leaves_two_whole_ones(sw):
    Settings(sw.shared).port(0, pvid=0, trunk=[10]).port(1, pvid=10).publish()
    data = tagged(BROADCAST, A, 10, tag(20, 0x8100)[2:] + tag(30)[2:] + bytes(46), ethertype=0x8100,
                  flags=NEEDS_CSUM, csum_start=32, csum_offset=4)
    sw.send(0, data)
    out = untag(data)
    assert sw.received(1) == [out[:H - 4] + struct.pack("=H", 28) + out[H - 2:]]


def test_a_pop_that_takes_the_header_length_below_the_ethernet_header_clears_it(sw):
    # hdr_len 16 is fine tagged; popped, 12 is one a TAP write refuses (EINVAL):
    # 0 says "not given", which it takes.
    Settings(sw.shared).port(0, pvid=0, trunk=[10]).port(1, pvid=10).publish()
    sw.send(0, tagged(BROADCAST, A, 10, hdr_len=16))
    [out] = sw.received(1)
    assert vnet_of(out) == (0, 0, 0, 0, 0, 0)


def test_a_pop_that_takes_the_header_length_to_the_ethernet_header_keeps_it(sw):
    # 18 tagged is 14 popped: the Ethernet header whole, a length a TAP write takes.
    Settings(sw.shared).port(0, pvid=0, trunk=[10]).port(1, pvid=10).publish()
    sw.send(0, tagged(BROADCAST, A, 10, hdr_len=18))
    [out] = sw.received(1)
    assert vnet_of(out) == (0, 0, 14, 0, 0, 0)


def test_static_entry_in_a_vlan_directs_only_that_vlan(sw):
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10, 20]).port(2, pvid=20).publish()
    sw.shared.fdb_add_static(C, 10, 1)
    sw.send(0, frame(C, A))
    assert received_all(sw) == [[], [tagged(C, A, 10)], [], []]


# Isolated ports.

def test_isolated_ports_do_not_flood_to_each_other(sw):
    Settings(sw.shared).port(0, isolated=True).port(1, isolated=True).publish()
    f = frame(BROADCAST, A)
    sw.send(0, f)
    assert received_all(sw) == [[], [], [f], [f]]


def test_isolated_ports_do_not_unicast_to_each_other(sw):
    Settings(sw.shared).port(0, isolated=True).port(1, isolated=True).publish()
    sw.learn(1, B)
    sw.send(0, frame(B, A))
    assert received_all(sw) == [[], [], [], []]
    assert sw.counters(0)["rx_dropped"] == 1


def test_isolated_port_talks_to_a_shared_port_both_ways(sw):
    Settings(sw.shared).port(0, isolated=True).port(1, isolated=True).publish()
    sw.learn(2, C)
    sw.learn(0, A)
    sw.send(0, frame(C, A))
    sw.send(2, frame(A, C))
    assert received_all(sw) == [[frame(A, C)], [], [frame(C, A)], []]


# Mirrors.

def test_rx_mirror_copies_what_arrived_as_it_arrived(sw):
    Settings(sw.shared).port(0, pvid=0, trunk=[10], mirror_rx=1).port(1, pvid=10) \
        .port(3, monitor=True).mirror(0, 3).publish()
    f = tagged(BROADCAST, A, 10)
    sw.send(0, f)
    assert received_all(sw) == [[], [untag(f)], [], [f]]
    assert sw.shared.mirror_counters(0) == {"packets": 1, "bytes": 64, "dropped": 0}
    assert sw.counters(3)["tx_packets"] == 1


def test_rx_mirror_copies_frames_the_switch_then_drops(sw):
    Settings(sw.shared).port(0, pvid=10, mirror_rx=1).port(3, monitor=True).mirror(0, 3).publish()
    f = tagged(BROADCAST, A, 20)                     # not a VLAN of port 0
    sw.send(0, f)
    assert received_all(sw) == [[], [], [], [f]]
    assert sw.counters(0)["vlan_dropped"] == 1


@pytest.mark.parametrize("source", ["01:00:5e:00:00:01", "00:00:00:00:00:00"])
def test_rx_mirror_copies_a_frame_from_a_bad_source_mac(sw, source):
    """Dropped as malformed (rx_errors), but parsed whole: a monitor sees it."""
    Settings(sw.shared).port(0, mirror_rx=1).port(3, monitor=True).mirror(0, 3).publish()
    f = frame(BROADCAST, source)
    sw.send(0, f)
    assert received_all(sw) == [[], [], [], [f]]
    c = sw.counters(0)
    assert (c["rx_errors"], c["rx_packets"], c["flooded"]) == (1, 0, 0)
    assert sw.shared.mirror_counters(0) == {"packets": 1, "bytes": 60, "dropped": 0}
    assert sw.shared.fdb_entries() == 0


@pytest.mark.parametrize("name", ["runt", "bad_gso_type", "csum_beyond_frame", "broken_tag"])
def test_rx_mirror_does_not_copy_a_frame_it_cannot_parse(sw, name):
    bad = dict(MALFORMED, broken_tag=frame(BROADCAST, A, ethertype=0x8100)[:H + 16])
    Settings(sw.shared).port(0, mirror_rx=1).port(3, monitor=True).mirror(0, 3).publish()
    sw.send(0, bad[name])
    assert received_all(sw) == [[], [], [], []]
    assert sw.counters(0)["rx_errors"] == 1
    assert sw.shared.mirror_counters(0) == {"packets": 0, "bytes": 0, "dropped": 0}


def test_rx_mirror_copies_nothing_of_a_port_that_is_down(sw):
    Settings(sw.shared).port(0, mirror_rx=1).port(3, monitor=True).mirror(0, 3).publish()
    sw.shared.set_port(0, lib.TS_PORT_DOWN, 1500)
    sw.send(0, frame(BROADCAST, A))
    sw.send(0, frame(BROADCAST, "01:00:5e:00:00:01"))
    assert received_all(sw) == [[], [], [], []]
    assert sw.shared.mirror_counters(0)["packets"] == 0


def test_a_flood_alone_in_its_vlan_is_rx_dropped(sw):
    Settings(sw.shared).port(0, pvid=10).publish()     # the other ports are in VLAN 1
    sw.send(0, frame(BROADCAST, A))
    assert received_all(sw) == [[], [], [], []]
    c = sw.counters(0)
    assert (c["rx_packets"], c["rx_dropped"], c["flooded"], c["vlan_dropped"]) == (1, 1, 0, 0)


def test_tx_mirror_copies_what_was_sent_as_it_was_sent(sw):
    Settings(sw.shared).port(0, pvid=10).port(1, pvid=0, trunk=[10], mirror_tx=1) \
        .port(2, pvid=10).port(3, monitor=True).mirror(0, 3).publish()
    sw.send(0, frame(BROADCAST, A))
    assert received_all(sw) == [[], [tagged(BROADCAST, A, 10)], [frame(BROADCAST, A)],
                                [tagged(BROADCAST, A, 10)]]
    assert sw.shared.mirror_counters(0)["packets"] == 1


def test_both_directions_of_one_port(sw):
    Settings(sw.shared).port(0, mirror_rx=1, mirror_tx=1).port(3, monitor=True).mirror(0, 3).publish()
    sw.learn(1, B)                                   # flooded to port 0: a tx copy
    sw.send(0, frame(B, A))                          # received on port 0: an rx copy
    assert sw.received(3) == [frame(B, A)]
    assert sw.shared.mirror_counters(0)["packets"] == 2


def test_a_flood_between_sources_is_copied_once_for_each_source_it_passes(sw):
    # README: a broadcast from one `from` port flooded to two others, three copies with `both`:
    # as it arrived on the first (tagged), as each of the others was sent it.
    Settings(sw.shared).port(0, pvid=0, trunk=[10], mirror_rx=1, mirror_tx=1) \
        .port(1, pvid=10, mirror_rx=1, mirror_tx=1).port(2, pvid=0, trunk=[10], mirror_rx=1, mirror_tx=1) \
        .port(3, monitor=True).mirror(0, 3).publish()
    f = tagged(BROADCAST, A, 10)
    sw.send(0, f)
    assert sorted(sw.received(3)) == sorted([f, untag(f), f])
    assert sw.shared.mirror_counters(0)["packets"] == 3


def test_two_mirrors_each_count_their_copies(sw):
    Settings(sw.shared).port(0, mirror_rx=1).port(1, mirror_rx=2).port(2, monitor=True) \
        .port(3, monitor=True).mirror(0, 2).mirror(1, 3).publish()
    sw.send(0, frame(BROADCAST, A))
    sw.send(1, frame(BROADCAST, B))
    sw.send(1, frame(BROADCAST, B))
    assert [len(sw.received(p)) for p in (2, 3)] == [1, 2]
    assert sw.shared.mirror_counters(0)["packets"] == 1
    assert sw.shared.mirror_counters(1)["packets"] == 2


def test_monitor_port_gets_nothing_but_copies(sw):
    Settings(sw.shared).port(3, monitor=True).publish()
    sw.send(0, frame(BROADCAST, A))
    assert sw.received(3) == []
    sw.shared.fdb_add_static(D, 1, 3)               # even a MAC pointed at it
    sw.send(0, frame(D, A))
    assert sw.received(3) == []


def test_frames_from_the_monitor_port_are_dropped_and_not_learned(sw):
    Settings(sw.shared).port(3, monitor=True).publish()
    sw.send(3, frame(BROADCAST, D))
    assert received_all(sw) == [[], [], [], []]
    c = sw.counters(3)
    assert (c["rx_packets"], c["rx_dropped"]) == (1, 1)
    assert sw.shared.fdb_entries() == 0


def test_copy_to_a_monitor_that_is_down_is_counted_dropped(sw):
    Settings(sw.shared).port(0, mirror_rx=1).port(3, monitor=True).mirror(0, 3).publish()
    sw.shared.set_port(3, lib.TS_PORT_DOWN, 1500)
    sw.send(0, frame(BROADCAST, A))
    assert sw.received(3) == []
    assert sw.shared.mirror_counters(0) == {"packets": 0, "bytes": 0, "dropped": 1}


def test_mirror_counters_can_start_again(sw):
    Settings(sw.shared).port(0, mirror_rx=1).port(3, monitor=True).mirror(0, 3).publish()
    sw.send(0, frame(BROADCAST, A))
    sw.shared.reset_mirror_counters(0)
    assert sw.shared.mirror_counters(0) == {"packets": 0, "bytes": 0, "dropped": 0}
    sw.send(0, frame(BROADCAST, A))
    assert sw.shared.mirror_counters(0)["packets"] == 1


# MAC limit.

def test_mac_limit_drops_frames_from_new_sources_beyond_it(sw):
    Settings(sw.shared).port(0, mac_limit=3).publish()
    macs = [f"02:00:00:00:01:{i:02x}" for i in range(5)]
    for mac in macs:
        sw.send(0, frame(BROADCAST, mac))
    assert len(sw.received(1)) == 3
    assert sw.shared.port_fdb_entries(0) == 3
    c = sw.counters(0)
    assert (c["mac_limit_dropped"], c["rx_dropped"], c["flooded"]) == (2, 2, 3)
    assert [lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(m), 1) for m in macs] == [0, 0, 0, -1, -1]


def test_mac_limit_lets_known_sources_through(sw):
    Settings(sw.shared).port(0, mac_limit=1).publish()
    sw.learn(0, A)
    sw.send(0, frame(BROADCAST, B))
    sw.send(0, frame(BROADCAST, A))
    assert sw.received(1) == [frame(BROADCAST, A)]


def test_mac_limit_does_not_count_static_entries(sw):
    Settings(sw.shared).port(0, mac_limit=1).publish()
    sw.shared.fdb_add_static(D, 1, 0)
    sw.shared.fdb_add_static(E, 1, 0)
    assert sw.shared.port_fdb_static(0) == 2
    sw.send(0, frame(BROADCAST, A))
    sw.send(0, frame(BROADCAST, B))
    assert len(sw.received(1)) == 1
    assert sw.shared.port_fdb_entries(0) == 3


def test_mac_moving_into_a_full_port_is_a_new_mac(sw):
    Settings(sw.shared).port(0, mac_limit=1).publish()
    sw.learn(0, A)
    sw.learn(1, B)
    sw.send(0, frame(BROADCAST, B))
    assert lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(B), 1) == 1
    assert sw.counters(0)["mac_limit_dropped"] == 1


def test_a_mac_moving_out_of_a_full_port_makes_room_for_a_new_one(sw):
    Settings(sw.shared).port(0, mac_limit=1).publish()
    sw.learn(0, A)
    sw.send(0, frame(BROADCAST, B))
    assert sw.counters(0)["mac_limit_dropped"] == 1
    sw.learn(1, A)                                   # A moved: port 0 holds none now
    assert sw.shared.port_fdb_entries(0) == 0
    sw.send(0, frame(BROADCAST, B))
    assert lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(B), 1) == 0
    assert sw.counters(0)["mac_limit_dropped"] == 1


def test_a_port_count_left_short_by_a_killed_worker_does_not_wrap(sw):
    """A worker killed between an entry's write and its count's leaves the port's count one
    short (here: written as it would be left). The entry's removal took the count from 0 to
    2^32 - 1, and the port's mac_limit then dropped every new source's frames."""
    Settings(sw.shared).port(0, mac_limit=2).publish()
    sw.learn(0, A)
    sw.shared.ptr.ports[0].fdb_entries = 0          # A's count, never added
    assert sw.shared.fdb_flush(0) == 1
    assert sw.shared.port_fdb_entries(0) == 0
    sw.send(0, frame(BROADCAST, B))
    assert sw.received(1) == [frame(BROADCAST, B)]
    assert sw.counters(0)["mac_limit_dropped"] == 0


def test_a_removal_between_an_entrys_write_and_its_count_leaves_the_count_exact(sw):
    """A flush (or a move) of an entry whose claimer has written its val but not yet added its
    count: the removal's subtract comes first. Held at 0, the count then stayed one high for
    good, with no entry on the port: its mac_limit one lower, for as long as the switch ran."""
    Settings(sw.shared).port(0, mac_limit=1).publish()
    sw.learn(0, A)
    sw.shared.ptr.ports[0].fdb_entries = 0          # the claimer's count, still to come
    assert sw.shared.fdb_flush(0) == 1              # the removal's, first
    assert sw.shared.port_fdb_entries(0) == 0
    sw.shared.ptr.ports[0].fdb_entries = (sw.shared.ptr.ports[0].fdb_entries + 1) % 2**32   # the claimer's
    assert sw.shared.port_fdb_entries(0) == 0 and sw.shared.fdb_entries() == 0
    sw.send(0, frame(BROADCAST, B))
    assert sw.received(1) == [frame(BROADCAST, B)]  # a new source passes the limit of 1


def test_flush_makes_room_under_the_limit(sw):
    Settings(sw.shared).port(0, mac_limit=1).publish()
    sw.learn(0, A)
    sw.shared.fdb_flush(0)
    sw.send(0, frame(BROADCAST, B))
    assert sw.received(1) == [frame(BROADCAST, B)]


def test_static_counts_follow_add_move_and_del():
    shared = Shared.create(64, 1)
    try:
        shared.fdb_add_static(A, 1, 2)
        shared.fdb_add_static(A, 1, 2)               # again: still one
        assert (shared.port_fdb_static(2), shared.port_fdb_entries(2)) == (1, 1)
        shared.fdb_add_static(A, 1, 3)               # moved
        assert (shared.port_fdb_static(2), shared.port_fdb_static(3)) == (0, 1)
        lib.ts_fdb_learn(shared.ptr, 0, mac_bytes(B), 1, 3, 100)
        shared.fdb_add_static(B, 1, 3)               # a learned entry made static
        assert (shared.port_fdb_static(3), shared.port_fdb_entries(3)) == (2, 2)
        shared.fdb_del(A, 1)
        shared.fdb_del(B, 1)
        assert (shared.port_fdb_static(3), shared.port_fdb_entries(3)) == (0, 0)
    finally:
        shared.close()


# ACLs.

def acl_send(sw, acl, packet, port=0, **settings):
    """Port `port` gets `acl`; send the packet from it; True if it was forwarded
    (port 1 is an uplink in VLAN 1 and tagged in 10 and 20)."""
    Settings(sw.shared).port(1, trunk=[10, 20]).port(port, acl=acl, **settings).publish()
    data = l3(packet)
    sw.send(port, data)
    forwarded = any(sw.received(p) for p in range(len(sw.hosts)) if p != port)
    sw.drain()
    return forwarded


def ip4(proto_layer=None, src="198.18.0.1", dst="198.18.0.2"):
    p = Ether(src=A, dst=B) / IP(src=src, dst=dst)
    return p / proto_layer if proto_layer is not None else p


def test_no_rule_matching_allows(sw):
    assert acl_send(sw, [dict(eth_type=0x86DD)], ip4(ICMP()))
    assert sw.counters(0)["acl_dropped"] == 0


def test_drop_rule_drops_and_counts(sw):
    assert not acl_send(sw, [dict(eth_type=0x0800)], ip4(ICMP()))
    c = sw.counters(0)
    assert (c["acl_dropped"], c["rx_dropped"], c["rx_packets"]) == (1, 1, 1)
    assert sw.shared.fdb_entries() == 0          # filtered before learning


def test_first_match_wins_and_each_rule_counts_its_hits(sw):
    acl = [dict(action="allow", ip_src="198.18.0.1/32"), dict(eth_type=0x0800)]
    assert acl_send(sw, acl, ip4(ICMP()))
    assert not acl_send(sw, acl, ip4(ICMP(), src="198.18.0.9"))
    assert not acl_send(sw, acl, ip4(ICMP(), src="198.18.0.9"))
    assert sw.shared.acl_hits(0) == [1, 2]


def test_acl_hits_start_again_from_the_publish_of_new_rules(sw):
    acl_send(sw, [dict(eth_type=0x0800)], ip4(ICMP()))
    sw.shared.reset_acl_hits_at_publish(0)
    assert sw.shared.acl_hits(0) == [1]          # the rules the workers match count on until the publish
    acl_send(sw, [dict(eth_type=0x0800)], ip4(ICMP()))      # publishes, then matches once
    assert sw.shared.acl_hits(0) == [1]


def test_icmp_rule_drops_ping_but_not_arp(sw):
    acl = [dict(ip_proto=1)]
    assert not acl_send(sw, acl, ip4(ICMP()))
    assert acl_send(sw, acl, Ether(src=A, dst=BROADCAST) / ARP(psrc="198.18.0.1", pdst="198.18.0.2"))


@pytest.mark.parametrize("value, matches", [
    ("02:00:00:00:00:0b", True),
    ("02:00:00:00:00:0c", False),
    ("02:00:00:00:00:00/ff:ff:ff:00:00:00", True),
    ("02:00:00:00:00:00/ff:ff:ff:ff:ff:ff", False),
    ("01:00:00:00:00:00/01:00:00:00:00:00", False),   # multicast destinations only
])
def test_eth_dst_with_and_without_mask(sw, value, matches):
    assert acl_send(sw, [dict(eth_dst=value)], ip4(ICMP())) != matches


def test_eth_src(sw):
    assert not acl_send(sw, [dict(eth_src=A)], ip4(ICMP()))
    assert acl_send(sw, [dict(eth_src=C)], ip4(ICMP()))


def test_eth_type_and_ip_fields_are_read_after_the_vlan_tag(sw):
    acl = [dict(eth_type=0x0800, vlan=10, ip_dst="198.18.0.0/24", ip_proto=6, dst_port=80)]
    packet = Ether(src=A, dst=B) / Dot1Q(vlan=10) / IP(src="198.18.0.1", dst="198.18.0.2") / TCP(dport=80)
    assert not acl_send(sw, acl, packet, pvid=0, trunk=[10, 20])
    packet[Dot1Q].vlan = 20
    assert acl_send(sw, acl, packet, pvid=0, trunk=[10, 20])


def two_tags(outer, packet, outer_vid=10, inner_vid=200):
    """From A to B: an 802.1ad S-tag (outer 0x88a8) or an 802.1Q tag (0x8100), an
    802.1Q C-tag behind it, then `packet` (an IP packet)."""
    first = Dot1AD(vlan=outer_vid) if outer == 0x88A8 else Dot1Q(vlan=outer_vid)
    return Ether(src=A, dst=B) / first / Dot1Q(vlan=inner_vid) / packet


IP_OF = {4: IP(src="198.18.0.1", dst="198.18.0.2"),
         6: IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()}


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("outer", [0x88A8, 0x8100], ids=["88a8", "8100"])
@pytest.mark.parametrize("kind, settings", [("access", dict(pvid=10)), ("trunk", dict(trunk=[10, 20]))])
def test_tcp_rule_sees_the_packet_behind_two_tags(sw, version, outer, kind, settings):
    # A QinQ frame carried IPv4 or IPv6 past `tcp dst_port 22 drop`: the
    # ACL read the ethertype after one tag (the inner tag's 0x8100) and took
    # the frame for one that is not IP.
    acl = [dict(ip_proto=6, dst_port=22)]
    assert not acl_send(sw, acl, two_tags(outer, IP_OF[version] / TCP(sport=40000, dport=22, flags="S")), **settings)
    assert acl_send(sw, acl, two_tags(outer, IP_OF[version] / TCP(sport=40000, dport=80, flags="S")), **settings)
    assert sw.shared.acl_hits(0) == [1]
    assert (sw.counters(0)["acl_dropped"], sw.counters(0)["rx_errors"]) == (1, 0)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("vid", [10, 0], ids=["own-vid", "priority"])
def test_qinq_frame_tagged_in_the_ports_own_vlan_is_held_to_the_rules_on_its_packet(sw, version, vid):
    # An access port takes a frame tagged with its own VLAN (or a priority tag) and pops the
    # tag: a QinQ frame behind it left as 88a8/8100/IP. The rules read two tags from the MACs,
    # found a third TPID, took the frame for one that is not IP, and let it past `tcp 22 drop`.
    qinq = Dot1AD(vlan=100) / Dot1Q(vlan=200) / IP_OF[version]
    acl = [dict(ip_proto=6, dst_port=22)]
    assert not acl_send(sw, acl, Ether(src=A, dst=B) / Dot1Q(vlan=vid) / qinq / TCP(dport=22, flags="S"), pvid=10)
    assert acl_send(sw, acl, Ether(src=A, dst=B) / Dot1Q(vlan=vid) / qinq / TCP(dport=80, flags="S"), pvid=10)
    assert not acl_send(sw, [dict(eth_type=IP_ETH_TYPE[version])],
                        Ether(src=A, dst=B) / Dot1Q(vlan=vid) / qinq / UDP(dport=53), pvid=10)
    # The same on a trunk, where the outer tag is the frame's VLAN.
    assert not acl_send(sw, acl, Ether(src=A, dst=B) / Dot1Q(vlan=20) / qinq / TCP(dport=22, flags="S"),
                        pvid=0, trunk=[10, 20])
    assert (sw.counters(0)["acl_dropped"], sw.counters(0)["rx_errors"]) == (3, 0)


IP_ETH_TYPE = {4: 0x0800, 6: 0x86DD}


@pytest.mark.parametrize("outer", [0x88A8, 0x8100], ids=["88a8", "8100"])
def test_eth_type_and_ip_fields_are_the_packets_behind_two_tags(sw, outer):
    packet = two_tags(outer, IP(src="198.18.0.1", dst="198.18.0.2") / UDP(dport=53))
    assert not acl_send(sw, [dict(eth_type=0x0800)], packet, pvid=10)
    assert not acl_send(sw, [dict(ip_dst="198.18.0.0/24")], packet, pvid=10)
    assert acl_send(sw, [dict(eth_type=0x86DD)], packet, pvid=10)


def test_an_802_1ad_rule_still_matches_the_s_tag(sw):
    # eth_type 0x88a8 matched an 802.1ad frame before the ACL read past tags: it still does.
    packet = two_tags(0x88A8, IP(src="198.18.0.1", dst="198.18.0.2") / UDP(dport=53))
    assert not acl_send(sw, [dict(eth_type=0x88A8)], packet, pvid=10)
    assert not acl_send(sw, [dict(eth_type=0x88A8)], Ether(src=A, dst=B) / Dot1Q(vlan=10) / packet[Dot1AD],
                        pvid=0, trunk=[10, 20])
    assert acl_send(sw, [dict(eth_type=0x88A8)], two_tags(0x8100, IP() / UDP()), pvid=10)


def test_vlan_of_a_double_tagged_frame_is_its_outer_802_1q_tags(sw):
    # The frame's VLAN in the switch: the outer 802.1Q tag's VID; an S-tag is
    # no VLAN here (the frame is in the port's), and an inner tag's VID is the customer's.
    packet = IP(src="198.18.0.1", dst="198.18.0.2") / UDP(dport=53)
    assert not acl_send(sw, [dict(vlan=10)], two_tags(0x8100, packet, 10, 20), pvid=0, trunk=[10, 20])
    assert acl_send(sw, [dict(vlan=20)], two_tags(0x8100, packet, 10, 20), pvid=0, trunk=[10, 20])
    assert not acl_send(sw, [dict(vlan=20)], two_tags(0x88A8, packet, 10, 10), pvid=20)
    assert acl_send(sw, [dict(vlan=10)], two_tags(0x88A8, packet, 10, 10), pvid=20)


@pytest.mark.parametrize("outer", [0x88A8, 0x8100], ids=["88a8", "8100"])
def test_a_double_tagged_frame_cut_anywhere_is_judged_by_what_it_holds(sw, outer):
    # Cut in a tag, in the IP header or in TCP's ports: no IP rule matches
    # before the destination port is whole, and nothing counts as malformed
    # but an 802.1Q frame whose 802.1Q tags are cut (malformed_end).
    whole = l3(two_tags(outer, IP(src="198.18.0.1", dst="198.18.0.2") / TCP(dport=22)))
    dport_end = H + 14 + 8 + 20 + 4
    malformed_end = H + 22 if outer == 0x8100 else H + 14
    Settings(sw.shared).port(1, trunk=[10, 20]).port(0, pvid=10, acl=[dict(ip_proto=6, dst_port=22)]).publish()
    for n in range(H + 14, len(whole) + 1):
        sw.send(0, whole[:n])
        forwarded = any(sw.received(p) for p in (1, 2, 3))
        assert forwarded == (malformed_end <= n < dport_end), n
    assert sw.counters(0)["rx_errors"] == malformed_end - H - 14
    assert sw.shared.acl_hits(0) == [len(whole) + 1 - dport_end]


def test_vlan_is_the_frames_vlan_even_untagged(sw):
    assert not acl_send(sw, [dict(vlan=10)], ip4(ICMP()), pvid=10)
    assert acl_send(sw, [dict(vlan=10)], ip4(ICMP()), pvid=20)


@pytest.mark.parametrize("rule, matches", [
    (dict(ip_src="198.18.0.0/24"), True),
    (dict(ip_src="198.18.1.0/24"), False),
    (dict(ip_dst="198.18.0.2/32"), True),
    (dict(ip_src="fd00::/8"), False),              # an IPv6 rule never matches IPv4
    (dict(ip_proto=6, dst_port=443), True),
    (dict(ip_proto=6, dst_port=80), False),
    (dict(ip_proto=6, src_port=40000), True),
    (dict(ip_proto=17, dst_port=443), False),
])
def test_ipv4_fields(sw, rule, matches):
    packet = ip4(TCP(sport=40000, dport=443))
    assert acl_send(sw, [rule], packet) != matches


@pytest.mark.parametrize("first", [0x65, 0x44], ids=["version 6", "header of 16 bytes"])
def test_an_ipv4_header_no_stack_would_take_matches_no_ip_rule(sw, first):
    """A frame of type IPv4 whose header says another version, or a header shorter than 20
    bytes, holds no IPv4 packet (the receiver's stack drops it): a rule on the protocol
    matches nothing in it, as in a frame of another type."""
    packet = bytearray(bytes(ip4(TCP(sport=40000, dport=22))))
    packet[14] = first                      # version and header length
    assert acl_send(sw, [dict(ip_proto=6)], packet)
    assert not acl_send(sw, [dict(ip_proto=6)], ip4(TCP(sport=40000, dport=22)))    # the same, well formed


def ip6(next_header, tail=b"", src="fd00::1", dst="fd00::2"):
    return Ether(src=A, dst=B) / IPv6(src=src, dst=dst, nh=next_header) / Raw(tail)


PORTS = struct.pack("!HH", 40000, 53)      # a TCP or UDP header's first 4 bytes: the ports


@pytest.mark.parametrize("packet, rule", [
    (Ether(src=A, dst=B) / IP(src="198.18.0.1", dst="198.18.0.2", proto=6), dict(ip_proto=6)),
    (Ether(src=A, dst=B) / IP(src="198.18.0.1", dst="198.18.0.2", proto=17) / Raw(PORTS), dict(dst_port=53)),
    (ip6(6), dict(ip_proto=6)),
    (ip6(0, bytes([6, 0, 1, 4, 0, 0, 0, 0])), dict(ip_proto=6)),
    (ip6(17, PORTS), dict(dst_port=53)),
], ids=["ipv4 header", "ipv4 ports", "ipv6 header", "ipv6 extension header", "ipv6 ports"])
def test_a_header_that_ends_where_the_frame_ends_is_read(sw, packet, rule):
    """An IP header, an IPv6 extension header or the ports that end at the frame's last byte
    are in the frame: a rule matches them. One byte less, they are not there to match."""
    assert not acl_send(sw, [rule], packet)
    assert acl_send(sw, [rule], bytes(packet)[:-1])


def test_an_ethertype_behind_a_tag_at_the_frame_s_end_is_read(sw):
    """A rule's eth_type is the one behind an 802.1ad tag, also when it is the frame's last two
    bytes; one byte short, the frame has none there and the rule reads the tag's TPID."""
    packet = bytes(Ether(src=A, dst=B, type=0x88A8) / Dot1AD(vlan=100, type=0x0800))
    assert not acl_send(sw, [dict(eth_type=0x0800)], packet)
    assert acl_send(sw, [dict(eth_type=0x0800)], packet[:-1])


@pytest.mark.parametrize("version, offset", [(4, 1), (4, 0x1000), (6, 1), (6, 0x1000)])
def test_a_later_fragment_holds_no_ports_whatever_bits_its_offset_has(sw, version, offset):
    """A fragment at any offset but 0 carries payload, not a TCP header: a rule on ports does
    not read them in it, be the offset's lowest bit or its highest the one set."""
    ports = Raw(struct.pack("!HH", 40000, 22) + bytes(16))
    if version == 4:
        packet = Ether(src=A, dst=B) / IP(src="198.18.0.1", dst="198.18.0.2", proto=6, frag=offset) / ports
    else:
        packet = Ether(src=A, dst=B) / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(nh=6, offset=offset) / ports
    assert acl_send(sw, [dict(dst_port=22)], packet)
    first = packet.copy()
    first[IP if version == 4 else IPv6ExtHdrFragment].setfieldval("frag" if version == 4 else "offset", 0)
    assert not acl_send(sw, [dict(dst_port=22)], first)


def test_ports_behind_an_ah_header_are_read_at_its_length(sw):
    """AH's length counts 4-byte words less 2 (RFC 4302): 4 is a 24-byte header, 12 of them
    its ICV, and the TCP header's ports start right after it."""
    ah = struct.pack("!BBHII", 6, 4, 0, 0x100, 1) + bytes(range(1, 13))    # next header TCP, 24 bytes
    assert not acl_send(sw, [dict(dst_port=22)], ip6(51, ah + struct.pack("!HH", 40000, 22) + bytes(16)))
    assert acl_send(sw, [dict(dst_port=22)], ip6(51, ah + struct.pack("!HH", 40000, 23) + bytes(16)))


def test_a_rule_on_ip_proto_0_matches_no_frame_that_is_not_ip(sw):
    """ip_proto 0 is IPv6's hop-by-hop header, which a packet with one matches; a frame that
    is not IP (ARP) has no protocol, not protocol 0: the rule passes it."""
    assert acl_send(sw, [dict(ip_proto=0)], Ether(src=A, dst=B) / ARP())
    assert not acl_send(sw, [dict(ip_proto=0)], ip6(0, bytes([6, 0, 1, 4, 0, 0, 0, 0])))


@pytest.mark.parametrize("rule", [dict(dst_port=0), dict(src_port=0)])
def test_a_rule_on_port_0_matches_no_packet_without_ports(sw, rule):
    """A packet with no ports (ICMP) has no port 0 either: a rule on either port passes it."""
    assert acl_send(sw, [rule], ip4(ICMP()))
    assert not acl_send(sw, [rule], ip4(UDP(sport=0, dport=0)))


@pytest.mark.parametrize("rule, matches", [
    (dict(ip_src="fd00::1/128"), True),
    (dict(ip_dst="fd00::/64"), True),
    (dict(ip_dst="fd01::/64"), False),
    (dict(ip_dst="198.18.0.0/15"), False),
    (dict(ip_proto=17, dst_port=53), True),
    (dict(ip_proto=17, src_port=53), False),
])
def test_ipv6_fields(sw, rule, matches):
    packet = Ether(src=A, dst=B) / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5353, dport=53)
    assert acl_send(sw, [rule], packet) != matches


def test_ipv6_upper_layer_is_found_past_extension_headers(sw):
    packet = Ether(src=A, dst=B) / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest()
    assert not acl_send(sw, [dict(ip_proto=58)], packet)


def test_tcp_behind_many_extension_headers_is_still_tcp(sw):
    # The receiver's stack walks them all (a walk that stopped after six let a SYN
    # to port 22 behind seven destination options headers pass a rule dropping it).
    packet = Ether(src=A, dst=B) / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop()
    for _ in range(12):
        packet = packet / IPv6ExtHdrDestOpt()
    packet = packet / TCP(sport=40000, dport=22, flags="S")
    assert not acl_send(sw, [dict(ip_proto=6, dst_port=22)], packet)


def test_later_ipv6_fragment_is_of_its_fragment_headers_protocol(sw):
    # Its payload holds no headers: bytes that look like one are data.
    packet = (Ether(src=A, dst=B) / IPv6(src="fd00::1", dst="fd00::2")
              / IPv6ExtHdrFragment(nh=60, offset=100) / (bytes([17, 0]) + bytes(30)))
    assert not acl_send(sw, [dict(ip_proto=60)], packet)


V6 = IPv6(src="fd00::1", dst="fd00::2")


@pytest.mark.parametrize("proto, packet", [
    (44, V6 / IPv6ExtHdrFragment(m=1, id=5) / UDP(dport=53) / bytes(64)),       # a first fragment
    (44, V6 / IPv6ExtHdrFragment(offset=100, id=5) / bytes(64)),                # a later one
    (44, V6 / IPv6ExtHdrFragment(id=5) / TCP(dport=80)),                        # an atomic one
    (43, V6 / IPv6ExtHdrRouting(addresses=["fd00::3"], segleft=1) / TCP(dport=80)),
    (0, V6 / IPv6ExtHdrHopByHop() / UDP(dport=53)),
    (60, V6 / IPv6ExtHdrDestOpt() / UDP(dport=53)),
])
def test_ip_proto_of_an_ipv6_extension_header_matches_a_packet_that_has_it(sw, proto, packet):
    # `eth_type: ipv6, ip_proto: 44` (drop IPv6 fragments), or 43 (routing headers): the rule
    # read the protocol behind the headers only, and dropped no packet that had one.
    assert not acl_send(sw, [dict(eth_type=0x86DD, ip_proto=proto)], Ether(src=A, dst=B) / packet)
    assert acl_send(sw, [dict(eth_type=0x86DD, ip_proto=proto)], Ether(src=A, dst=B) / V6 / UDP(dport=53))
    assert acl_send(sw, [dict(ip_proto=proto)], ip4(UDP(dport=53)))


def test_an_upper_layer_rule_still_reads_past_the_extension_headers(sw):
    packet = Ether(src=A, dst=B) / V6 / IPv6ExtHdrFragment(m=1, id=5) / TCP(dport=22) / bytes(64)
    assert not acl_send(sw, [dict(ip_proto=6, dst_port=22)], packet)
    assert acl_send(sw, [dict(ip_proto=17)], packet)


def test_non_first_fragment_has_no_ports(sw):
    packet = ip4(UDP(sport=1, dport=53))
    packet[IP].frag = 100
    assert acl_send(sw, [dict(ip_proto=17, dst_port=53)], packet)
    assert not acl_send(sw, [dict(ip_proto=17)], packet)


def first_fragment(nh, tail=b"", m=1):
    """An IPv6 first fragment (offset 0) of fragment header `nh`, its fragmentable part `tail`."""
    return Ether(src=A, dst=B) / V6 / IPv6ExtHdrFragment(nh=nh, m=m, id=7) / Raw(tail)


DSTOPTS_HALF = bytes([6, 1]) + bytes(6)         # the first 8 of a 16-byte destination options header, TCP next
TCP_TO = {port: bytes(TCP(sport=40000, dport=port)) for port in (22, 80)}


def padded_first_fragment():
    """The first fragment of a datagram to TCP port 22 whose payload length ends it after 8 bytes
    of a 16-byte destination options header, padded in the frame with the rest of that header and
    a TCP header to port 80: the receiver's stack trims the padding, and the next fragment brings
    the rest of the header chain and the TCP header to port 22."""
    packet = first_fragment(60, DSTOPTS_HALF + bytes(8) + TCP_TO[80])
    packet[IPv6].plen = 8 + 8
    return packet


@pytest.mark.parametrize("packet", [
    first_fragment(60, DSTOPTS_HALF),
    first_fragment(60),
    first_fragment(6),
    padded_first_fragment(),
], ids=["in an extension header", "before an extension header", "before the tcp header", "padded"])
def test_an_ipv6_first_fragment_cut_short_of_its_headers_matches_every_drop_rule_on_them(sw, packet):
    """RFC 7112: a first fragment carries the whole header chain through the upper layer's
    header. One that stops short leaves the rest to the next fragment, which holds no headers a
    rule reads (a later fragment is its fragment header's protocol, without ports): a host that
    reassembled the two got TCP to port 22 that `tcp dst_port 22 drop` never saw, both
    fragments having passed it. Such a fragment matches every drop rule on ip_proto or ports
    whose other fields match (counted as the rule's hit and acl_dropped), and no allow rule on
    them. The frame's bytes past the IPv6 payload length are no part of the packet."""
    rule = dict(ip_proto=6, dst_port=22)
    assert not acl_send(sw, [rule], packet)
    assert sw.shared.acl_hits(0) == [1]
    assert sw.counters(0)["acl_dropped"] == 1
    assert not acl_send(sw, [dict(ip_proto=17), dict(action="allow")], packet)      # whatever the protocol
    assert not acl_send(sw, [dict(action="allow", ip_proto=6), dict()], packet)
    assert acl_send(sw, [dict(rule, ip_src="fd00::9/128")], packet)                # the other fields still count
    assert acl_send(sw, [dict(eth_type=0x0800)], packet)                           # and rules on none of them
    whole = first_fragment(60, DSTOPTS_HALF + bytes(8) + TCP_TO[80])               # the chain, and port 80
    assert acl_send(sw, [rule], whole)
    assert not acl_send(sw, [dict(ip_proto=6, dst_port=80)], whole)


def test_an_ipv6_first_fragment_cut_short_is_judged_so_by_rules_on_udp_or_a_source_port_alone(sw):
    """UDP's ports cut off are as TCP's: a first fragment of more that ends before them matches
    a drop rule on them. A rule on src_port alone needs the ports as one on dst_port does, and a
    rule on none of ip_proto and ports is read as on any packet: an allow rule on its addresses
    matches it."""
    packet = first_fragment(17)
    assert not acl_send(sw, [dict(ip_proto=17, dst_port=53)], packet)
    assert not acl_send(sw, [dict(src_port=40000)], packet)
    assert acl_send(sw, [dict(action="allow", ip_dst="fd00::2/128"), dict()], packet)


def test_a_middle_ipv6_fragment_is_no_first_fragment_cut_short(sw):
    """A fragment at an offset but 0 with more after it (M=1) holds payload, not headers: it is
    not a first fragment cut short of its TCP header, and a rule on ports does not match it."""
    packet = Ether(src=A, dst=B) / V6 / IPv6ExtHdrFragment(nh=6, offset=100, m=1, id=7) / Raw(bytes(2))
    assert acl_send(sw, [dict(ip_proto=6, dst_port=22)], packet)
    assert acl_send(sw, [dict(ip_proto=17)], packet)


def test_a_first_fragment_whose_chain_ends_at_the_frame_s_end_is_not_cut_short(sw):
    """A first fragment of more whose header chain ends at the frame's last byte, its upper
    layer one without ports (ICMPv6), carries the whole chain: its protocol is read, and a rule
    on another does not match it."""
    packet = first_fragment(58)
    assert not acl_send(sw, [dict(ip_proto=58)], packet)
    assert acl_send(sw, [dict(ip_proto=17)], packet)


def test_an_ipv6_payload_length_of_0_reads_the_packet_to_the_frame_s_end(sw):
    """A payload length of 0 (a jumbogram, or a GSO super-frame over 64 KiB) trims nothing: the
    ports after the IPv6 header are read."""
    packet = ip6(17, PORTS)
    packet[IPv6].plen = 0
    assert not acl_send(sw, [dict(ip_proto=17, dst_port=53)], packet)


def test_an_ipv6_packet_cut_short_that_is_no_fragment_of_more_matches_no_rule_on_ports(sw):
    """An atomic fragment (offset 0, M=0) or an unfragmented packet cut short of its TCP header
    is all there is of its packet: no later fragment completes it, the receiver drops it, and
    a rule on ports does not match it, as before (test_a_header_that_ends_where_the_frame_ends_is_read)."""
    for packet in (first_fragment(6, m=0), ip6(60, DSTOPTS_HALF)):
        assert acl_send(sw, [dict(ip_proto=6, dst_port=22)], packet)


def test_ip_rule_does_not_match_a_frame_that_is_not_ip(sw):
    assert acl_send(sw, [dict(ip_proto=17)], Ether(src=A, dst=BROADCAST) / ARP())


def test_truncated_ip_header_matches_no_ip_rule(sw):
    data = bytes(ip4(UDP(dport=53)))[:14 + 12]
    Settings(sw.shared).port(0, acl=[dict(ip_proto=17)]).publish()
    sw.send(0, VNET.pack(0, 0, 0, 0, 0, 0) + data)
    assert sw.received(1) != []


# Storm control.

def storm(kind, pps, burst):
    interval = 10**9 // pps
    return {kind: (interval, (burst - 1) * interval)}


def test_broadcast_over_its_rate_is_dropped_and_counted(sw):
    Settings(sw.shared).port(0, storm=storm(lib.TS_STORM_BROADCAST, 1, 3)).publish()
    for _ in range(5):
        sw.send(0, frame(BROADCAST, A))
    assert len(sw.received(1)) == 3
    c = sw.counters(0)
    assert (c["storm_dropped"], c["rx_dropped"], c["flooded"]) == (2, 2, 3)


def test_each_kind_has_its_own_bucket(sw):
    Settings(sw.shared).port(0, storm=storm(lib.TS_STORM_BROADCAST, 1, 1)).publish()
    sw.send(0, frame(BROADCAST, A))
    sw.send(0, frame(BROADCAST, A))
    sw.send(0, frame(MCAST, A))
    sw.send(0, frame(D, A))                          # unknown unicast
    assert len(sw.received(1)) == 3


@pytest.mark.parametrize("kind, dst", [
    (lib.TS_STORM_MULTICAST, MCAST),
    (lib.TS_STORM_UNKNOWN_UNICAST, D),
])
def test_multicast_and_unknown_unicast_limits(sw, kind, dst):
    Settings(sw.shared).port(0, storm=storm(kind, 1, 2)).publish()
    for _ in range(4):
        sw.send(0, frame(dst, A))
    assert len(sw.received(1)) == 2


@pytest.mark.parametrize("byte", range(6))
def test_a_group_address_a_bit_short_of_broadcast_is_multicast_to_storm_control(sw, byte):
    """Broadcast is ff:ff:ff:ff:ff:ff, every bit: with one bit clear, in any byte, the address is
    multicast, limited by the multicast rate, not the broadcast one."""
    Settings(sw.shared).port(0, storm=storm(lib.TS_STORM_BROADCAST, 1, 1)).publish()
    near = bytearray(b"\xff" * 6)
    near[byte] = 0xfd if byte == 0 else 0xfe          # the group bit stays set
    dst = ":".join("%02x" % b for b in near)
    sw.send(0, frame(BROADCAST, A))                  # the broadcast bucket's one frame
    for _ in range(2):
        sw.send(0, frame(dst, A))
    assert len(sw.received(1)) == 3
    assert sw.counters(0)["storm_dropped"] == 0


def test_a_frame_storm_control_drops_still_teaches_its_source(sw):
    # As on a hardware switch (and as the README says): learning comes before the flood's limit.
    Settings(sw.shared).port(0, storm=storm(lib.TS_STORM_BROADCAST, 1, 1)).publish()
    sw.send(0, frame(BROADCAST, A))
    sw.send(0, frame(BROADCAST, D))
    assert sw.counters(0)["storm_dropped"] == 1
    assert lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(D), 1) == 0


def test_known_unicast_is_never_limited(sw):
    Settings(sw.shared).port(0, storm=storm(lib.TS_STORM_UNKNOWN_UNICAST, 1, 1)).publish()
    sw.learn(1, B)
    for _ in range(5):
        sw.send(0, frame(B, A))
    assert len(sw.received(1)) == 5


def test_the_rate_refills_over_time(sw):
    # 4 a second: the second frame, sent at once, comes too soon even on a loaded machine (at
    # 20 a second, one 50 ms late passed).
    Settings(sw.shared).port(0, storm=storm(lib.TS_STORM_BROADCAST, 4, 1)).publish()
    sw.send(0, frame(BROADCAST, A))
    sw.send(0, frame(BROADCAST, A))
    assert len(sw.received(1)) == 1
    time.sleep(0.3)                                  # more than 1/4 s
    sw.send(0, frame(BROADCAST, A))
    assert len(sw.received(1)) == 1


def test_workers_of_a_port_share_its_bucket():
    shared = Shared.create(64, 2)
    pairs = [[socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)] for _ in range(2)]
    workers = []
    try:
        for p in range(2):
            shared.set_port(p, lib.TS_PORT_UP, 1500)
        for w in range(2):
            for host, queue in pairs[w]:
                queue.setblocking(False)
                host.setblocking(False)
            fds = ffi.new("int[]", [q.fileno() for _, q in pairs[w]])
            workers.append(lib.ts_worker_new(shared.ptr, w, fds, 2, IO()))
        Settings(shared).port(0, storm=storm(lib.TS_STORM_BROADCAST, 1, 3)).publish()
        for i in range(6):                           # queue 0, then queue 1, of port 0
            w = i % 2
            pairs[w][0][0].send(frame(BROADCAST, A))
            assert lib.ts_worker_poll(workers[w], 100) == 1
        got = 0
        for w in range(2):
            while True:
                try:
                    pairs[w][1][0].recv(2048)
                    got += 1
                except BlockingIOError:
                    break
        assert got == 3
        assert shared.counters(0)["storm_dropped"] == 3
    finally:
        for w in workers:
            lib.ts_worker_free(w)
        for per in pairs:
            for host, queue in per:
                host.close()
                queue.close()
        shared.close()


# Features combined: the order of the rules.

def test_isolation_applies_within_a_vlan(sw):
    Settings(sw.shared).port(0, pvid=10, isolated=True).port(1, pvid=10, isolated=True) \
        .port(2, pvid=10).port(3, pvid=20).publish()
    sw.send(0, frame(BROADCAST, A))
    assert [len(x) for x in received_all(sw)] == [0, 0, 1, 0]


def test_acl_runs_before_the_mac_limit(sw):
    Settings(sw.shared).port(0, mac_limit=1, acl=[dict(eth_src=B)]).publish()
    sw.send(0, frame(BROADCAST, B))                  # dropped by the ACL: uses no room
    sw.send(0, frame(BROADCAST, A))
    assert sw.received(1) == [frame(BROADCAST, A)]
    c = sw.counters(0)
    assert (c["acl_dropped"], c["mac_limit_dropped"]) == (1, 0)

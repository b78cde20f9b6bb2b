"""Tests of the C fast path (fastpath.h), through cffi, with hand-built frames.

Each port is a SOCK_SEQPACKET socketpair: the worker holds the queue end
(O_NONBLOCK, one read = one frame, like a TAP queue), the test holds the host
end. No root needed.
"""

import contextlib
import errno
import mmap
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tapswitch._fastpath import ffi, lib
from tests.fastpath_io import IO, NO_IO_URING, backend_started, io_backend, uring_available  # noqa: F401 (io_backend: every test, every backend)
from tapswitch.fastpath import Shared, mac_bytes
from tests.reads_fail import ReadFaults, trap_reads

VNET = struct.Struct("=BBHHHH")   # flags gso_type hdr_len gso_size csum_start csum_offset
NEEDS_CSUM = 1
GSO_TCPV4 = 1
GSO_UDP = 3                       # UFO
GSO_TCPV6 = 4
GSO_UDP_L4 = 5

A = "02:00:00:00:00:0a"
B = "02:00:00:00:00:0b"
C = "02:00:00:00:00:0c"
BROADCAST = "ff:ff:ff:ff:ff:ff"


def ipv4(proto, transport):
    """An IPv4 packet (198.18.0.1 to .2) of the given protocol around a transport header and payload."""
    return (struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(transport), 1, 0, 64, proto, 0)
            + bytes([198, 18, 0, 1, 198, 18, 0, 2]) + transport)


# 3000 bytes after a TCP or a UDP header, which starts 34 bytes into the frame.
TCP = ipv4(6, struct.pack("!HHIIBBHHH", 40000, 22, 0, 0, 0x50, 0x10, 0xffff, 0, 0) + bytes(3000))
UDP = ipv4(17, struct.pack("!HHHH", 40000, 53, 3008, 0) + bytes(3000))


def frame(dst, src, payload=bytes(46), ethertype=0x0800, *, flags=0, gso_type=0,
          gso_size=0, hdr_len=0, csum_start=0, csum_offset=0):
    """virtio-net header + Ethernet frame."""
    return (VNET.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
            + mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype) + payload)


class Switch:
    """One worker (index 0) over n ports; hosts[p] is the test's end of port p."""

    def __init__(self, n_ports=3, fdb_size=1024, mtu=1500, bufsize=None):
        self.shared = Shared.create(fdb_size, 1)
        self.hosts, self.queues = [], []
        for p in range(n_ports):
            host, queue = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            for sk in (host, queue):
                sk.setblocking(False)
                if bufsize:
                    sk.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
                    sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
            self.hosts.append(host)
            self.queues.append(queue)
            self.shared.set_port(p, lib.TS_PORT_UP, mtu)
        fds = ffi.new("int[]", [q.fileno() for q in self.queues])
        self.worker = lib.ts_worker_new(self.shared.ptr, 0, fds, n_ports, IO())
        assert self.worker != ffi.NULL

    def send(self, port, data):
        """The host on `port` sends data; the worker takes one turn."""
        self.hosts[port].send(data)
        return lib.ts_worker_poll(self.worker, 100)

    def received(self, port):
        frames = []
        while True:
            try:
                frames.append(self.hosts[port].recv(1 << 17))
            except BlockingIOError:
                return frames

    def drain(self):
        for p in range(len(self.hosts)):
            self.received(p)

    def learn(self, port, mac):
        """Make the switch learn mac on port, from a broadcast; drain the flood."""
        assert self.send(port, frame(BROADCAST, mac)) == 1
        self.drain()

    def counters(self, port):
        return self.shared.counters(port)

    def close(self):
        lib.ts_worker_free(self.worker)
        for sk in self.hosts + self.queues:
            sk.close()
        self.shared.close()


@pytest.fixture
def sw():
    s = Switch()
    yield s
    s.close()


class Table:
    """A MAC table in private memory, with a fixed seed: same buckets every run."""

    def __init__(self, size, seed=0x5eed, workers=1):
        self.buf = ffi.new("char[]", lib.ts_shared_size(size))
        self.s = ffi.cast("struct ts_shared *", self.buf)
        assert lib.ts_shared_init(self.s, size, workers, seed) == 0

    def learn(self, mac, port, now=100, writer=0):
        return lib.ts_fdb_learn(self.s, writer, mac_bytes(mac), 0, port, now)

    def lookup(self, mac, vlan=0):
        return lib.ts_fdb_lookup(self.s, mac_bytes(mac), vlan)

    def entries(self):
        return sum(p.fdb_entries for p in self.s.ports)

    def stats(self, slot):
        st = self.s.fdb_stats[slot]
        return (st.learned, st.moved, st.aged, st.evicted)


def host_mac(i, prefix=0x02):
    return ":".join(f"{b:02x}" for b in bytes([prefix, 0, 0]) + i.to_bytes(3, "big"))


# Learning and forwarding. A port with default settings is in VLAN 1, untagged.

def test_source_is_learned_on_ingress_port(sw):
    before = sw.shared.now()
    sw.send(0, frame(BROADCAST, A))
    assert lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(A), 1) == 0
    assert sw.shared.fdb_stats() == {"learned": 1, "moved": 0, "aged": 0, "evicted": 0}
    assert sw.shared.port_fdb_entries(0) == 1
    assert sw.shared.fdb_entries() == 1
    [(mac, vlan, port, static, seen)] = sw.shared.fdb_dump()
    assert (mac, vlan, port, static) == (A, 1, 0, False)
    assert before <= seen <= sw.shared.now()


def test_relearning_on_same_port_changes_nothing(sw):
    sw.learn(0, A)
    sw.learn(0, A)
    assert sw.shared.fdb_stats() == {"learned": 1, "moved": 0, "aged": 0, "evicted": 0}
    assert sw.shared.fdb_entries() == 1


def test_known_unicast_goes_only_to_its_port(sw):
    sw.learn(1, B)
    f = frame(B, A, b"hello".ljust(46, b"."))
    assert sw.send(0, f) == 1
    assert sw.received(1) == [f]
    assert sw.received(0) == [] and sw.received(2) == []
    assert sw.counters(0)["flooded"] == 0
    assert sw.counters(1)["tx_packets"] == 1
    assert sw.counters(2)["tx_packets"] == 1     # only B's learning broadcast


def test_unknown_unicast_is_flooded_to_every_other_up_port(sw):
    f = frame(C, A)
    sw.send(0, f)
    assert sw.received(1) == [f]
    assert sw.received(2) == [f]
    assert sw.received(0) == []                  # never back out of the ingress port
    assert sw.counters(0)["flooded"] == 1
    assert sw.counters(0)["tx_packets"] == 0


def test_broadcast_is_flooded(sw):
    sw.learn(1, B)                               # a known source does not stop flooding
    f = frame(BROADCAST, A, ethertype=0x0806)
    sw.send(0, f)
    assert sw.received(1) == [f] and sw.received(2) == [f] and sw.received(0) == []
    assert sw.counters(0)["flooded"] == 1


@pytest.mark.parametrize("group", ["01:00:5e:00:00:01", "33:33:00:00:00:01"])
def test_multicast_is_flooded(sw, group):
    f = frame(group, A)
    sw.send(0, f)
    assert sw.received(1) == [f] and sw.received(2) == [f] and sw.received(0) == []
    assert sw.counters(0)["flooded"] == 1


def test_destination_on_the_ingress_port_is_not_sent_back_and_is_rx_dropped(sw):
    sw.learn(0, B)
    sw.send(0, frame(B, A))
    assert [sw.received(p) for p in range(3)] == [[], [], []]
    c = sw.counters(0)
    assert (c["rx_packets"], c["rx_dropped"], c["flooded"]) == (2, 1, 1)   # B's broadcast flooded once
    assert sw.counters(1)["tx_packets"] == 1 and sw.counters(2)["tx_packets"] == 1


# The IEEE 802.1 group 01:80:C2:00:00:0X: a bridge relays none of :01..:0F
# (the Linux bridge, group_fwd_mask 0, neither); :00 (STP, none running here)
# and :10 and up are flooded as the Linux bridge with STP off does.

@pytest.mark.parametrize("group, ethertype", [
    ("01:80:c2:00:00:01", 0x8808),     # PAUSE
    ("01:80:c2:00:00:02", 0x8809),     # slow protocols: LACP
    ("01:80:c2:00:00:03", 0x888E),     # 802.1X
    ("01:80:c2:00:00:0e", 0x88CC),     # LLDP
    ("01:80:c2:00:00:0f", 0x0800),
])
def test_link_local_group_is_not_relayed_and_is_rx_dropped(sw, group, ethertype):
    sw.send(0, frame(group, A, ethertype=ethertype))
    assert [sw.received(p) for p in range(3)] == [[], [], []]
    c = sw.counters(0)
    assert (c["rx_packets"], c["rx_dropped"], c["flooded"], c["rx_errors"]) == (1, 1, 0, 0)
    assert sw.counters(1)["tx_packets"] == 0 and sw.counters(2)["tx_packets"] == 0
    assert lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(A), 1) == 0     # its source is learned, as the bridge does


@pytest.mark.parametrize("group", ["01:80:c2:00:00:00", "01:80:c2:00:00:10", "01:80:c2:00:00:21",
                                   "01:80:c2:00:01:01", "01:80:c3:00:00:01"])
def test_stp_and_the_groups_around_the_link_local_ones_are_flooded(sw, group):
    f = frame(group, A, ethertype=0x0026)
    sw.send(0, f)
    assert [sw.received(p) for p in range(3)] == [[], [f], [f]]
    c = sw.counters(0)
    assert (c["rx_dropped"], c["flooded"]) == (0, 1)


def test_mac_move_updates_the_port(sw):
    sw.learn(0, A)
    sw.learn(1, A)
    assert sw.shared.fdb_stats()["moved"] == 1
    assert sw.shared.fdb_stats()["learned"] == 1
    assert (sw.shared.port_fdb_entries(0), sw.shared.port_fdb_entries(1)) == (0, 1)
    f = frame(A, C)
    sw.send(2, f)
    assert sw.received(1) == [f]
    assert sw.received(0) == []


def test_counters_count_ethernet_bytes_without_vnet_header(sw):
    f = frame(BROADCAST, A, bytes(100))          # 114 bytes of Ethernet
    sw.send(0, f)
    assert sw.counters(0)["rx_bytes"] == 114
    assert sw.counters(1)["tx_bytes"] == 114
    assert sw.counters(2)["tx_bytes"] == 114
    assert sw.shared.queue_counters(1, 0) == {
        "rx_packets": 0, "rx_bytes": 0, "rx_errors": 0, "rx_dropped": 0,
        "tx_packets": 1, "tx_bytes": 114, "tx_errors": 0, "tx_dropped": 0, "flooded": 0,
        "vlan_dropped": 0, "acl_dropped": 0, "mac_limit_dropped": 0, "storm_dropped": 0}


# Ports that are down, or not served.

def test_down_port_is_not_flooded_to(sw):
    sw.shared.set_port(2, lib.TS_PORT_DOWN, 1500)
    f = frame(BROADCAST, A)
    sw.send(0, f)
    assert sw.received(1) == [f]
    assert sw.received(2) == []
    assert sw.counters(2)["tx_packets"] == 0


def test_a_flood_that_reaches_no_port_is_rx_dropped_not_flooded(sw):
    sw.shared.set_port(1, lib.TS_PORT_DOWN, 1500)
    sw.shared.set_port(2, lib.TS_PORT_DOWN, 1500)
    for f in (frame(BROADCAST, A), frame("01:00:5e:00:00:01", A), frame(C, A)):
        sw.send(0, f)
    assert [sw.received(p) for p in range(3)] == [[], [], []]
    c = sw.counters(0)
    assert (c["rx_packets"], c["rx_dropped"], c["flooded"]) == (3, 3, 0)


def test_unicast_to_a_down_port_is_rx_dropped(sw):
    sw.learn(2, C)
    sw.shared.set_port(2, lib.TS_PORT_DOWN, 1500)
    sw.send(0, frame(C, A))
    assert [sw.received(p) for p in range(3)] == [[], [], []]
    assert sw.counters(0)["rx_dropped"] == 1
    assert sw.counters(0)["flooded"] == 0


def test_frame_from_a_down_port_is_rx_dropped_and_not_learned(sw):
    sw.shared.set_port(0, lib.TS_PORT_DOWN, 1500)
    sw.send(0, frame(BROADCAST, A, bytes(46)))
    assert [sw.received(p) for p in range(3)] == [[], [], []]
    c = sw.counters(0)
    assert (c["rx_packets"], c["rx_bytes"], c["rx_dropped"], c["flooded"]) == (1, 60, 1, 0)
    assert sw.shared.fdb_entries() == 0


def test_unicast_to_a_port_without_queue_is_rx_dropped(sw):
    sw.shared.set_port(5, lib.TS_PORT_UP, 1500)  # up, but this worker has no fd for it
    sw.shared.fdb_add_static(C, 1, 5)
    sw.send(0, frame(C, A))
    assert [sw.received(p) for p in range(3)] == [[], [], []]
    assert sw.counters(0)["rx_dropped"] == 1


# Malformed frames.

MALFORMED = {
    "runt": frame(BROADCAST, A)[:VNET.size + 13],
    "bad_gso_type": frame(BROADCAST, A, gso_type=2, gso_size=1448),
    "unknown_gso_type": frame(BROADCAST, A, gso_type=6, gso_size=1448),
    "ecn_without_gso_type": frame(BROADCAST, A, gso_type=0x80, gso_size=1448),
    "gso_with_size_0": frame(BROADCAST, A, gso_type=GSO_TCPV4, gso_size=0),
    "csum_beyond_frame": frame(BROADCAST, A, flags=NEEDS_CSUM, csum_start=50, csum_offset=9),
    # Headers a TAP write refuses (EINVAL), so every port it went to counted a tx error:
    "csum_before_20": frame(BROADCAST, A, flags=NEEDS_CSUM, csum_start=19, csum_offset=4),
    "tcpv6_gso_csum_before_40": frame(BROADCAST, A, bytes(1000), 0x86dd, flags=NEEDS_CSUM, gso_type=GSO_TCPV6,
                                      gso_size=100, csum_start=39, csum_offset=16),
    # ... and GSO headers virtio_net_hdr_to_skb refuses, of packets it takes with the right one:
    "gso_size_by_frags": frame(BROADCAST, A, TCP, flags=NEEDS_CSUM, gso_type=GSO_TCPV4, gso_size=0xffff,
                               csum_start=34, csum_offset=16),
    "tcp_gso_csum_not_in_tcp_header": frame(BROADCAST, A, TCP, flags=NEEDS_CSUM, gso_type=GSO_TCPV4, gso_size=1448,
                                            csum_start=34, csum_offset=4),
    "tcp_gso_tcp_header_past_frame": frame(BROADCAST, A, TCP[:39], flags=NEEDS_CSUM, gso_type=GSO_TCPV4,
                                           gso_size=1448, csum_start=34, csum_offset=16),
    "udp_l4_gso_without_csum": frame(BROADCAST, A, UDP, gso_type=GSO_UDP_L4, gso_size=1448),
    "udp_l4_gso_csum_not_in_udp_header": frame(BROADCAST, A, UDP, flags=NEEDS_CSUM, gso_type=GSO_UDP_L4,
                                               gso_size=1448, csum_start=34, csum_offset=16),
    "udp_l4_gso_with_ecn": frame(BROADCAST, A, UDP, flags=NEEDS_CSUM, gso_type=GSO_UDP_L4 | 0x80, gso_size=1448,
                                 csum_start=34, csum_offset=6),
    "udp_l4_gso_over_128_segments": frame(BROADCAST, A, UDP, flags=NEEDS_CSUM, gso_type=GSO_UDP_L4, gso_size=23,
                                          csum_start=34, csum_offset=6),
    # A UFO frame's checksum may be anywhere in its UDP header, but the header (8 bytes) is whole.
    "udp_gso_header_beyond_frame": frame(BROADCAST, A, flags=NEEDS_CSUM, gso_type=GSO_UDP, gso_size=1448,
                                         csum_start=53, csum_offset=0),      # 53+8 == 61
    "hdr_len_inside_ethernet_header": frame(BROADCAST, A, hdr_len=13),
    "hdr_len_beyond_frame": frame(BROADCAST, A, hdr_len=61),
    "unknown_flags": frame(BROADCAST, A, flags=8),
    "multicast_source": frame(BROADCAST, "01:00:5e:00:00:01"),
    "zero_source": frame(BROADCAST, "00:00:00:00:00:00"),
}


@pytest.mark.parametrize("byte", range(6))
def test_a_source_mac_with_any_one_byte_set_is_a_hosts(sw, byte):
    """Only the all-zero source MAC is no host's: one byte set, in any place, makes one, whose
    frame is forwarded and learned, not an rx_errors."""
    mac = bytearray(6)
    mac[byte] = 0x02                                 # unicast in the first byte too
    src = ":".join("%02x" % b for b in mac)
    f = frame(BROADCAST, src)
    assert sw.send(0, f) == 1
    assert sw.received(1) == [f]
    assert sw.counters(0)["rx_errors"] == 0
    assert lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(src), 1) == 0


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_frame_is_rx_error_and_not_forwarded(sw, name):
    assert sw.send(0, MALFORMED[name]) == 1
    assert [sw.received(p) for p in range(3)] == [[], [], []]
    c = sw.counters(0)
    assert (c["rx_errors"], c["rx_packets"], c["rx_bytes"], c["flooded"]) == (1, 0, 0, 0)
    assert sw.shared.fdb_entries() == 0


def test_header_lengths_a_tap_write_takes_are_accepted(sw):
    for f in (frame(BROADCAST, A, hdr_len=14), frame(BROADCAST, A, hdr_len=60),
              frame(BROADCAST, A, flags=NEEDS_CSUM, hdr_len=13, csum_start=20, csum_offset=4)):  # raised to 26
        sw.send(0, f)
        assert sw.received(1) == [f]
    assert sw.counters(0)["rx_errors"] == 0


# The GSO headers of the malformed ones above as a TAP write takes them.
GSO_TAKEN = [
    frame(BROADCAST, A, TCP, flags=NEEDS_CSUM, gso_type=GSO_TCPV4, gso_size=1448, csum_start=34, csum_offset=16),
    frame(BROADCAST, A, TCP[:40], flags=NEEDS_CSUM, gso_type=GSO_TCPV4 | 0x80, gso_size=1448, csum_start=34,
          csum_offset=16),
    frame(BROADCAST, A, TCP, gso_type=GSO_TCPV4, gso_size=1448),      # no checksum: no offset to check
    frame(BROADCAST, A, UDP, flags=NEEDS_CSUM, gso_type=GSO_UDP_L4, gso_size=24, csum_start=34, csum_offset=6),
    frame(BROADCAST, A, UDP[:28], flags=NEEDS_CSUM, gso_type=GSO_UDP_L4, gso_size=1, csum_start=34, csum_offset=6),
    # 128 segments of 24 bytes: as many as the kernel takes (UDP_MAX_SEGMENTS).
    frame(BROADCAST, A, ipv4(17, struct.pack("!HHHH", 40000, 53, 8 + 128 * 24, 0) + bytes(128 * 24)),
          flags=NEEDS_CSUM, gso_type=GSO_UDP_L4, gso_size=24, csum_start=34, csum_offset=6),
]


def test_gso_headers_a_tap_write_takes_are_accepted(sw):
    for f in GSO_TAKEN:
        sw.send(0, f)
        assert sw.received(1) == [f]
    assert sw.counters(0)["rx_errors"] == 0


def test_checksum_ending_at_the_last_byte_is_accepted(sw):
    f = frame(BROADCAST, A, flags=NEEDS_CSUM, csum_start=50, csum_offset=8)  # 50+8+2 == 60
    sw.send(0, f)
    assert sw.received(1) == [f]
    assert sw.counters(0)["rx_errors"] == 0


def test_ufo_udp_header_ending_at_the_last_byte_is_accepted(sw):
    f = frame(BROADCAST, A, flags=NEEDS_CSUM, gso_type=GSO_UDP, gso_size=1448, csum_start=52, csum_offset=0)  # 52+8 == 60
    sw.send(0, f)
    assert sw.received(1) == [f]
    assert sw.counters(0)["rx_errors"] == 0


def test_frame_filling_the_whole_buffer_is_rx_error():
    s = Switch(bufsize=1 << 20)
    try:
        f = frame(BROADCAST, A, bytes(lib.TS_FRAME_MAX - VNET.size - 14))   # may have been cut
        s.send(0, f)
        assert [s.received(p) for p in range(3)] == [[], [], []]
        assert s.counters(0)["rx_errors"] == 1
    finally:
        s.close()


# GSO, MTU, full queues.

def test_gso_superframe_crosses_byte_for_byte():
    s = Switch(bufsize=1 << 20)
    try:
        s.learn(1, B)
        payload = random.Random(7).randbytes(65535)      # IPv4 total length 65535
        f = frame(B, A, payload, flags=NEEDS_CSUM, gso_type=GSO_TCPV4, gso_size=1448,
                  hdr_len=14 + 20 + 32, csum_start=14 + 20, csum_offset=16)
        assert len(f) == VNET.size + 14 + 65535
        assert s.send(0, f) == 1
        assert s.received(1) == [f]
        assert s.counters(1)["tx_bytes"] == 14 + 65535
        assert s.counters(1)["tx_errors"] == 0
    finally:
        s.close()


def test_over_mtu_frame_is_tx_error(sw):
    sw.learn(1, B)
    fits = frame(B, A, bytes(1500))              # 1514 bytes: mtu + 14
    over = frame(B, A, bytes(1501))
    sw.send(0, fits)
    sw.send(0, over)
    assert sw.received(1) == [fits]
    assert sw.counters(1)["tx_errors"] == 1
    assert sw.counters(0)["rx_dropped"] == 0


def test_tagged_frame_may_be_four_bytes_longer(sw):
    # An 802.1ad S-tag crosses this C-VLAN switch as it is; 802.1Q tags on
    # trunk ports: tests/test_fastpath_features.py.
    sw.learn(1, B)
    fits = frame(B, A, bytes(1504), ethertype=0x88a8)
    over = frame(B, A, bytes(1505), ethertype=0x88a8)
    sw.send(0, fits)
    sw.send(0, over)
    assert sw.received(1) == [fits]
    assert sw.counters(1)["tx_errors"] == 1


def test_gso_frame_is_judged_by_gso_size(sw):
    sw.learn(1, B)
    fits = frame(B, A, bytes(3000), gso_type=GSO_TCPV4, gso_size=1500)
    over = frame(B, A, bytes(1000), gso_type=GSO_TCPV4, gso_size=1501)
    sw.send(0, fits)
    sw.send(0, over)
    assert sw.received(1) == [fits]
    assert sw.counters(1)["tx_errors"] == 1


def tcp_gso_frame(dst, src, gso_size, ip_version=4, tag=b""):
    """A TCP GSO super-frame of three segments, as a TAP reads one: IP header,
    TCP header with timestamps (32 bytes), the checksum to fill in from csum_start."""
    ethertype, ip_header = (0x0800, bytes(20)) if ip_version == 4 else (0x86DD, bytes(40))
    tcp_header = bytes(12) + bytes([8 << 4]) + bytes(19)        # data offset 8: 32 bytes
    l3 = 14 + len(tag)
    return (VNET.pack(NEEDS_CSUM, GSO_TCPV4 if ip_version == 4 else GSO_TCPV6, 0, gso_size,
                      l3 + len(ip_header), 16)
            + mac_bytes(dst) + mac_bytes(src) + tag + struct.pack("!H", ethertype)
            + ip_header + tcp_header + bytes(3 * gso_size))


@pytest.mark.parametrize("ip_version, tag", [
    (4, b""),                                   # IPv4: 20 + 32 + 1448 = 1500
    (6, b""),                                   # IPv6: 40 + 32 + 1428 = 1500
    (4, b"\x88\xa8\x00\x64"),                   # behind an 802.1ad tag, carried as it is
])
def test_gso_frame_is_judged_by_its_segments_ip_length(sw, ip_version, tag):
    # Each segment leaves as IP and TCP headers and gso_size bytes of payload:
    # the MTU bounds that, as it bounds a frame sent alone (the kernel's
    # skb_gso_network_seglen), not gso_size alone.
    sw.learn(1, B)
    largest = 1500 - (20 if ip_version == 4 else 40) - 32
    fits = tcp_gso_frame(B, A, largest, ip_version, tag)
    over = tcp_gso_frame(B, A, largest + 1, ip_version, tag)
    sw.send(0, fits)
    sw.send(0, over)
    assert sw.received(1) == [fits]
    assert sw.counters(1)["tx_errors"] == 1


def test_a_gso_frame_whose_checksum_starts_at_its_network_offset_counts_its_udp_header(sw):
    # A UDP_L4 frame whose csum_start is where the packet behind its tags starts (no IP
    # header before the UDP one): each segment is the UDP header and gso_size bytes, which
    # the MTU bounds (8 + 1492 = 1500 fits, 8 + 1493 does not).
    sw.learn(1, B)
    tags = b"\x88\xa8\x00\x64\x81\x00\x00\xc8"           # S-tag, C-tag: the packet starts 22 bytes in

    def udp_gso_frame(gso_size):
        return (VNET.pack(NEEDS_CSUM, GSO_UDP_L4, 0, gso_size, 22, 6)
                + mac_bytes(B) + mac_bytes(A) + tags + struct.pack("!H", 0x0800)
                + struct.pack("!HHHH", 40000, 53, 8 + 2 * gso_size, 0) + bytes(2 * gso_size))
    fits, over = udp_gso_frame(1492), udp_gso_frame(1493)
    sw.send(0, fits)
    sw.send(0, over)
    assert sw.received(1) == [fits]
    assert sw.counters(1)["tx_errors"] == 1


def test_full_queue_drops_without_blocking(sw):
    sw.learn(1, B)
    filler = frame(BROADCAST, C)
    while True:                                  # fill host 1's receive queue
        try:
            sw.queues[1].send(filler)
        except BlockingIOError:
            break
    assert sw.send(0, frame(B, A)) == 1
    c = sw.counters(1)
    assert (c["tx_dropped"], c["tx_packets"], c["tx_errors"]) == (1, 0, 0)
    sw.drain()
    f = frame(B, A)
    sw.send(0, f)
    assert sw.received(1) == [f]                # the dropped one was not held back, to go out once there is room
    assert sw.counters(1)["tx_packets"] == 1


def fail_writes(fd, err):
    """From now on in this process (x86_64), write(2) to fd fails with err (a seccomp filter)."""
    import ctypes

    def insn(code, jt, jf, k):
        return struct.pack("=HBBI", code, jt, jf, k)
    prog = ctypes.create_string_buffer(b"".join([
        insn(0x20, 0, 0, 0),                    # ld [seccomp_data.nr]
        insn(0x15, 0, 3, 1),                    # jeq write, else allow
        insn(0x20, 0, 0, 16),                   # ld [seccomp_data.args[0]] (low half)
        insn(0x15, 0, 1, fd),                   # jeq fd, else allow
        insn(0x06, 0, 0, 0x00050000 | err),     # ret ERRNO(err)
        insn(0x06, 0, 0, 0x7FFF0000),           # ret ALLOW
    ]))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    libc = ctypes.CDLL(None, use_errno=True)
    fprog = Fprog(6, ctypes.addressof(prog))
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):   # NO_NEW_PRIVS, SECCOMP
        raise OSError(ctypes.get_errno(), "seccomp")


@pytest.mark.parametrize("err", [errno.ENOBUFS, errno.EAGAIN, errno.EIO])
def test_a_write_refused_for_want_of_room_is_tx_dropped_any_other_tx_errors(sw, io_backend, err):
    # ENOBUFS says what EAGAIN says: no room in the queue now. The frame is dropped and counted
    # as tx_dropped, as a full queue's; a write failing otherwise is a tx_errors.
    if io_backend != "readwrite":
        pytest.skip("the filter answers write(2), which io_uring's writes are not")
    sw.learn(1, B)
    pid = os.fork()
    if pid == 0:                                # the worker's turn, in a process whose writes to port 1 fail
        try:
            fail_writes(sw.queues[1].fileno(), err)
            os._exit(0 if sw.send(0, frame(B, A)) == 1 else 1)
        finally:
            os._exit(2)
    assert os.waitpid(pid, 0)[1] == 0
    assert sw.received(1) == []
    c = sw.counters(1)
    dropped = err != errno.EIO
    assert (c["tx_dropped"], c["tx_errors"], c["tx_packets"]) == (int(dropped), int(not dropped), 0)


def test_failed_queue_is_counted_once_and_not_polled_again(sw):
    sw.hosts[2].close()                          # the queue's other end is gone: reads return 0
    assert lib.ts_worker_poll(sw.worker, 100) == 0
    assert lib.ts_worker_poll(sw.worker, 50) == 0
    assert sw.counters(2)["rx_errors"] == 1


@contextlib.contextmanager
def reads_failing(sw, q: int, send: bytes | None = None):
    """The worker, forked into a process whose read(2)s of queue q fail (EIO) while the test
    says (ReadFaults, failing at first): yields the faults. The child sends `send` from host 0
    first, if given, then polls until a poll forwards a frame; at the end the reads work again
    and it must have forwarded one (exit 0)."""
    queue = sw.queues[q].fileno()
    faults = ReadFaults(lambda _pid, fd: fd == queue)
    faults.failing.set()
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            socket.send_fds(theirs, [b"L"], [trap_reads()])
            if send is not None:
                sw.hosts[0].send(send)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if lib.ts_worker_poll(sw.worker, 100) > 0:
                    os._exit(0)
            os._exit(1)
        finally:
            os._exit(2)
    try:
        _msg, [listener], _flags, _addr = socket.recv_fds(ours, 16, 1)
        faults.add(listener)
        yield faults
        faults.failing.clear()
        assert os.waitpid(pid, 0)[1] == 0       # it forwarded the frame once its reads worked
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        faults.close()
        ours.close()
        theirs.close()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp filter names x86_64's syscall number")
def test_a_queue_whose_reads_fail_for_a_while_is_read_again_counting_each_failure(sw, io_backend):
    """A read failing otherwise than for a queue that ended or whose TAP was deleted (EIO here;
    ENOMEM, ENOBUFS, EFAULT) may pass: each failure counts one rx_errors, and the queue is
    listened to again after a rest (1 ms, doubling), where it was polled no more, for good."""
    if io_backend != "readwrite":
        pytest.skip("io_uring's reads are no read(2): a seccomp filter cannot fail them")
    sw.learn(1, B)
    f = frame(B, A)
    sw.hosts[0].send(f)
    with reads_failing(sw, 0) as faults:
        deadline = time.monotonic() + 5
        while faults.failed < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert faults.failed >= 4, "the queue was not read again after its read failed"
    assert sw.received(1) == [f]
    assert sw.counters(0)["rx_errors"] == faults.failed


def epoll_watchers(fd):
    """The epoll instances of this process that watch fd (the tfd lines of /proc/self/fdinfo)."""
    found = []
    for name in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{name}") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        if any(line.split()[1] == str(fd) for line in lines if line.startswith("tfd:")):
            found.append(int(name))
    return found


def test_a_queue_that_ended_is_taken_out_of_epoll(sw, io_backend):
    """Level-triggered epoll wakes the worker at once for a queue that ended, as long as it is
    watched: rx_failed takes it out, so that the worker sleeps (it spun, counting nothing more)."""
    if io_backend == "uring":
        pytest.skip("multishot reads are no epoll's: a failed one is not armed again")
    queue = sw.queues[2].fileno()
    assert epoll_watchers(queue) != []
    sw.hosts[2].close()
    assert lib.ts_worker_poll(sw.worker, 100) == 0
    assert epoll_watchers(queue) == []
    assert sw.counters(2)["rx_errors"] == 1


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp filter names x86_64's syscall number")
def test_a_queue_whose_reads_keep_failing_is_read_again_ever_less_often(sw, io_backend):
    """The rest after a failed read doubles at each failure in a row (1, 2, 4 ... ms, up to 1 s):
    a failure that lasts a third of a second costs a few reads, not one a millisecond. (A bound
    on the reads, from the time the failure lasted.)"""
    if io_backend != "readwrite":
        pytest.skip("io_uring's reads are no read(2): a seccomp filter cannot fail them")
    with reads_failing(sw, 0, send=frame(B, A)) as faults:
        began = time.monotonic()
        time.sleep(0.3)
        failed = faults.failed
        took_ms = (time.monotonic() - began) * 1000
    # The reads the rests allow in the time it took (more than 0.3 s on a loaded machine): the
    # first, then one after each rest of 1, 2, 4 ... ms (up to 1 s) that ended within it.
    allowed, rested, rest = 1, 0, 1
    while rested + rest <= took_ms:
        rested += rest
        allowed += 1
        rest = min(2 * rest, 1000)
    assert 1 <= failed <= allowed + 2, f"{failed} failed reads in {took_ms:.0f} ms, rests allow {allowed}"


def test_a_failed_queue_a_later_worker_of_it_meets_again_is_counted_no_more(sw):
    """A reload starts each queue's new worker, handed the queue, while the old one still reads:
    a TAP deleted between the two failed both reads, and counted once in each (2 for the
    queue). The worker that counts it says so in the queue's counters (rx_ended); the next,
    here in a process of its own over the same shared memory, counts it no more. A new port
    in the slot (reset_counters) counts its own."""
    sw.hosts[2].close()
    assert lib.ts_worker_poll(sw.worker, 100) == 0           # the old worker meets it first
    assert sw.counters(2)["rx_errors"] == 1
    pid = os.fork()
    if pid == 0:                                 # the new worker of queue 0, handed the same queues
        try:
            fds = ffi.new("int[]", [q.fileno() for q in sw.queues])
            worker = lib.ts_worker_new(sw.shared.ptr, 0, fds, len(sw.queues), IO())
            polls = [lib.ts_worker_poll(worker, 100), lib.ts_worker_poll(worker, 50)]
            os._exit(0 if polls == [0, 0] else 1)
        finally:
            os._exit(2)
    assert os.waitpid(pid, 0)[1] == 0
    assert sw.counters(2)["rx_errors"] == 1
    sw.shared.reset_counters(2)                  # another port takes the slot: its own queue
    host, queue = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    queue.setblocking(False)
    host.close()
    fds = ffi.new("int[]", [-1, -1, queue.fileno()])
    worker = lib.ts_worker_new(sw.shared.ptr, 0, fds, 3, IO())
    try:
        assert lib.ts_worker_poll(worker, 100) == 0
        assert sw.counters(2)["rx_errors"] == 1
    finally:
        lib.ts_worker_free(worker)
        queue.close()


def test_worker_reports_its_io_backend(sw, io_backend):
    assert lib.ts_worker_io(sw.worker) == IO()
    assert sw.shared.worker_io(0) is None           # in shared memory from its first poll on
    lib.ts_worker_poll(sw.worker, 0)
    assert sw.shared.worker_io(0) == io_backend


def test_auto_io_picks_a_backend_and_bad_io_is_refused():
    # Auto is io_uring with burst reads where io_uring is allowed (fastpath.h, "I/O backends");
    # the test below has it read/write where io_uring is refused.
    assert backend_started(lib.TS_IO_AUTO) == ("uring-burst" if uring_available() else "readwrite")
    assert backend_started(7) is None


BACKEND_WITHOUT_IO_URING = textwrap.dedent("""
    from tapswitch._fastpath import ffi, lib
    from tapswitch.fastpath import Shared
    shared = Shared.create(64, 1)
    fds = ffi.new("int[]", [-1])
    for io in (lib.TS_IO_URING, lib.TS_IO_URING_BURST):
        assert lib.ts_worker_new(shared.ptr, 0, fds, 1, io) == ffi.NULL
        print(ffi.errno)
    print(lib.ts_worker_io(lib.ts_worker_new(shared.ptr, 0, fds, 1, lib.TS_IO_AUTO)))
""")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp filter names x86_64's syscall number")
@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSYS])    # refused by seccomp or sysctl; no io_uring at all
def test_without_io_uring_auto_runs_read_write_and_forced_io_uring_fails(err):
    r = subprocess.run([sys.executable, NO_IO_URING, "--errno", str(err), sys.executable, "-c", BACKEND_WITHOUT_IO_URING],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert [int(x) for x in r.stdout.split()] == [err, err, lib.TS_IO_READWRITE]


def test_burst_reads_register_their_buffers(sw, io_backend):
    """Burst reads read into, and write out of, buffers registered with the ring (READ_FIXED,
    WRITE_FIXED); read/write and multishot reads have no burst buffers to register."""
    burst = lib.ts_worker_io(sw.worker) == lib.TS_IO_URING_BURST
    assert burst == (io_backend == "uring-burst" or (io_backend == "uring" and backend_started(lib.TS_IO_URING) == "uring-burst"))
    assert lib.ts_worker_buffers_registered(sw.worker) == burst


REGISTRY_REFUSED = textwrap.dedent("""
    from tapswitch._fastpath import lib
    from tests.test_fastpath import A, B, GSO_TCPV4, NEEDS_CSUM, Switch, frame
    sw = Switch(bufsize=1 << 20)
    print(lib.ts_worker_io(sw.worker), lib.ts_worker_buffers_registered(sw.worker))
    sw.learn(1, B)
    frames = [frame(B, A, payload=bytes([i]) * 46) for i in range(40)]
    frames.append(frame(B, A, bytes(range(256)) * 256, flags=NEEDS_CSUM, gso_type=GSO_TCPV4,
                        gso_size=1448, hdr_len=14 + 20 + 32, csum_start=14 + 20, csum_offset=16))
    for f in frames:
        sw.hosts[0].send(f)
    got = []
    while lib.ts_worker_poll(sw.worker, 100) > 0:
        got += sw.received(1)
    print(got + sw.received(1) == frames, sw.counters(1)["tx_packets"])
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another uid needs root")
def test_burst_reads_without_a_buffer_registry_forward_through_plain_reads(io_backend):
    """Without CAP_IPC_LOCK and under a 1 MiB RLIMIT_MEMLOCK (room for the ring) the kernel
    refuses to pin the 2 MiB of burst buffers: the worker still runs burst reads, with plain
    reads and writes, and forwards every frame byte for byte. As a uid of its own: the limit
    counts what every process of the user has pinned."""
    if io_backend != "uring-burst":
        pytest.skip("burst reads' buffers: one backend's")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    uid = 3_000_000 + os.getpid() % 1_000_000
    r = subprocess.run(["prlimit", "--memlock=1048576:1048576", "setpriv", f"--reuid={uid}", f"--regid={uid}",
                        "--clear-groups", sys.executable, "-c", REGISTRY_REFUSED],
                       capture_output=True, text=True, timeout=30, cwd=root,
                       env=dict(os.environ, PYTHONPATH=root))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(lib.TS_IO_URING_BURST), "0", "True", "41"]


def test_flood_burst_reaches_every_port_in_order(sw):
    """A burst of floods: each port gets every copy, in the order sent (io_uring: one submission)."""
    frames = [frame(BROADCAST, A, payload=bytes([i]) * 46) for i in range(20)]
    for f in frames:
        sw.hosts[0].send(f)
    while lib.ts_worker_poll(sw.worker, 100) > 0:
        pass
    assert sw.received(1) == frames
    assert sw.received(2) == frames
    assert sw.counters(1)["tx_packets"] == 20 and sw.counters(0)["flooded"] == 20


def restart_worker(sw):
    """A new worker over the same queues, as the supervisor starts after a stop."""
    lib.ts_worker_free(sw.worker)
    sw.worker = lib.ts_worker_new(sw.shared.ptr, 0, ffi.new("int[]", [q.fileno() for q in sw.queues]),
                                  len(sw.queues), IO())
    assert sw.worker != ffi.NULL


def forward_all(sw, port):
    """Poll until nothing comes; what port received."""
    got = []
    while lib.ts_worker_poll(sw.worker, 100) > 0:
        got += sw.received(port)
    return got + sw.received(port)


def test_more_frames_waiting_than_read_buffers_all_get_through(sw):
    """200 frames queued before the worker looks: more than a multishot read has buffers
    for (it ends, is armed again and goes on), or than a burst reads (the next turn does)."""
    sw.learn(1, B)
    frames = [frame(B, A, payload=i.to_bytes(2, "big") * 23) for i in range(200)]
    for f in frames:
        sw.hosts[0].send(f)
    assert forward_all(sw, 1) == frames
    assert sw.counters(0)["rx_packets"] == 200 and sw.counters(0)["rx_errors"] == 0
    assert sw.received(2) == []


def test_drain_forwards_what_was_read_and_leaves_the_rest_queued(sw):
    """ts_worker_drain between polls, with frames arriving: those its reads took go out now,
    the others wait in the queue for the next worker; none lost, none twice, in order."""
    sw.learn(1, B)
    frames = [frame(B, A, payload=i.to_bytes(2, "big") * 23) for i in range(200)]
    for f in frames[:100]:
        sw.hosts[0].send(f)
    polled = lib.ts_worker_poll(sw.worker, 100)
    assert polled > 0
    for f in frames[100:]:
        sw.hosts[0].send(f)
    drained = lib.ts_worker_drain(sw.worker, 1000)
    assert drained >= 0
    got = sw.received(1)
    assert len(got) == polled + drained             # what the drain says it forwarded went out now
    restart_worker(sw)
    got += forward_all(sw, 1)
    assert got == frames
    assert sw.counters(0)["rx_errors"] == 0         # a cancelled read is no error


def test_a_drained_worker_lets_go_of_its_queues_when_freed(sw):
    """Drained and freed, a worker holds its queues no longer: with the test's end closed too, the
    host sees the queue closed at once (io_uring's own teardown would hold them a while longer,
    and with them a removed port's TAP device)."""
    assert lib.ts_worker_poll(sw.worker, 0) == 0
    assert lib.ts_worker_drain(sw.worker, 1000) == 0       # nothing came: nothing to forward
    lib.ts_worker_free(sw.worker)
    sw.worker = ffi.NULL
    for q in sw.queues:
        q.close()
    for host in sw.hosts:
        assert host.recv(64) == b""             # end of file: no one holds the queue end
    sw.queues = []


def sigterm_caught() -> bool:
    """Has this process a handler for SIGTERM, as the kernel sees it?"""
    with open("/proc/self/status") as f:
        cgt = next(line for line in f if line.startswith("SigCgt:")).split()[1]
    return bool(int(cgt, 16) >> (signal.SIGTERM - 1) & 1)


def test_sigterm_ends_run_with_0_and_loses_no_frame(sw):
    """ts_worker_run in a thread; SIGTERM to that thread while frames come: it returns 0, the
    frames it took were forwarded, the rest wait for the next worker; SIGTERM's action is
    the caller's again."""
    sw.learn(1, B)
    frames = [frame(B, A, payload=i.to_bytes(2, "big") * 23) for i in range(200)]
    before = sigterm_caught()
    rc = []

    def run():
        restart_worker(sw)        # its ring in this thread: io_uring's DEFER_TASKRUN wants one issuer
        rc.append(lib.ts_worker_run(sw.worker))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    for f in frames[:100]:
        sw.hosts[0].send(f)
    deadline = time.monotonic() + 5
    got = []
    while len(got) < 100 and time.monotonic() < deadline:    # the first 100 through a running worker
        got += sw.received(1)
        time.sleep(0.01)
    assert got == frames[:100]      # so it runs, with its SIGTERM handler: now the signal
    for f in frames[100:]:
        sw.hosts[0].send(f)
    signal.pthread_kill(t.ident, signal.SIGTERM)
    t.join(5)
    assert not t.is_alive(), "ts_worker_run did not stop on SIGTERM"
    assert rc == [0]
    got += sw.received(1)
    restart_worker(sw)
    got += forward_all(sw, 1)
    assert got == frames
    assert sw.counters(0)["rx_errors"] == 0
    assert sigterm_caught() == before       # ts_worker_run's handler is gone again


def test_poll_without_traffic_times_out(sw):
    start = time.monotonic()
    assert lib.ts_worker_poll(sw.worker, 50) == 0
    assert time.monotonic() - start >= 0.04


# The watchdog: the heartbeat moves every turn, busy or idle.

def test_every_poll_moves_the_heartbeat_and_a_new_worker_carries_it_on(sw):
    """The control process kills a worker whose heartbeat stands still: it moves on a turn that
    forwarded frames and on one whose wait timed out; a restarted worker goes on from the count
    it finds, so its first turn moves it too (a count from 0 might meet the old one's)."""
    beats = [sw.shared.heartbeat(0)]
    sw.send(0, frame(BROADCAST, A))                     # busy
    beats.append(sw.shared.heartbeat(0))
    assert lib.ts_worker_poll(sw.worker, 10) == 0       # idle
    beats.append(sw.shared.heartbeat(0))
    assert beats[1] > beats[0] and beats[2] > beats[1]
    restart_worker(sw)
    assert sw.shared.heartbeat(0) == beats[2]           # made, not yet turning
    assert lib.ts_worker_poll(sw.worker, 0) == 0
    assert sw.shared.heartbeat(0) == beats[2] + 1


def test_an_idle_run_still_turns_every_second(sw):
    """ts_worker_run with nothing to forward waits at most TS_IDLE_WAIT_MS (it waited for good:
    an idle worker's heartbeat stood still, and it would have been taken for hung)."""
    started = threading.Event()
    rc = []

    def run():
        restart_worker(sw)        # its ring in this thread: io_uring's DEFER_TASKRUN wants one issuer
        started.set()
        rc.append(lib.ts_worker_run(sw.worker))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(5)
    time.sleep(0.2)                                     # in its first wait
    first = sw.shared.heartbeat(0)
    time.sleep(2.5 * lib.TS_IDLE_WAIT_MS / 1000)
    moved = sw.shared.heartbeat(0) - first
    signal.pthread_kill(t.ident, signal.SIGTERM)
    t.join(5)
    assert not t.is_alive() and rc == [0]
    assert 2 <= moved <= 4, moved                       # once a wait, not busy polling either


# Busy polling: after a turn that found frames, look again before sleeping.

BUSY_US = 200_000       # far over the config's bound, so that "it looked" is plain in CPU time
# CPU time tells a look from a sleep: a sleep costs microseconds, a look its length, less what
# the VM's host steals meanwhile (up to ~80 % of a 0.2 s look seen here). So a wait looked if it
# took at least this share of the look's length in CPU; one that did not stays far below.
LOOKED_SHARE = 0.2


def test_busy_poll_keeps_looking_after_a_turn_with_frames(sw):
    sw.shared.set_busy_poll(BUSY_US)
    assert sw.send(0, frame(BROADCAST, A)) == 1
    sw.drain()
    cpu, wall = time.thread_time(), time.monotonic()
    assert lib.ts_worker_poll(sw.worker, 20) == 0      # nothing comes: looks for 0.2 s, then waits
    cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
    assert wall >= 0.2
    assert cpu >= 0.2 * LOOKED_SHARE                    # looking, not sleeping


def test_busy_poll_sleeps_at_once_after_a_turn_without_frames(sw):
    sw.shared.set_busy_poll(BUSY_US)
    assert sw.send(0, frame(BROADCAST, A)) == 1
    sw.drain()
    assert lib.ts_worker_poll(sw.worker, 0) == 0        # no wait, so no looking: found nothing
    cpu, wall = time.thread_time(), time.monotonic()
    assert lib.ts_worker_poll(sw.worker, 50) == 0       # an idle worker costs nothing
    cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
    assert wall >= 0.04
    assert cpu < 0.02


def test_without_busy_poll_a_worker_sleeps_at_once(sw):
    assert sw.shared.busy_poll_us == 0
    assert sw.send(0, frame(BROADCAST, A)) == 1
    sw.drain()
    cpu = time.thread_time()
    assert lib.ts_worker_poll(sw.worker, 50) == 0
    assert time.thread_time() - cpu < 0.02


def test_a_frame_that_comes_while_looking_is_forwarded_at_once(sw):
    sw.shared.set_busy_poll(BUSY_US)
    sw.learn(1, B)
    assert sw.send(1, frame(A, B)) == 1                 # a turn with frames (A unknown: flooded)
    sw.drain()
    later = threading.Timer(0.05, sw.hosts[0].send, [frame(B, A)])
    later.start()
    cpu, start = time.thread_time(), time.monotonic()
    try:
        assert lib.ts_worker_poll(sw.worker, 1000) == 1
    finally:
        later.join()
    assert time.monotonic() - start < 0.19              # within the look, not at its end
    assert time.thread_time() - cpu >= 0.05 * LOOKED_SHARE   # found looking (0.05 s), not woken
    assert sw.received(1) == [frame(B, A)]


def _turn_then_wait(sw):
    """A turn that finds a frame, then a wait of 1 ms with nothing coming: the CPU that wait took."""
    assert sw.send(0, frame(BROADCAST, A)) == 1
    sw.drain()
    cpu = time.thread_time()
    assert lib.ts_worker_poll(sw.worker, 1) == 0
    return time.thread_time() - cpu


LOOK_US = 80_000        # a look of 80 ms: plain in CPU time; it pays if a frame comes within 20 ms


def _look_finds_a_frame_after(sw, seconds):
    """A turn that finds a frame, then a wait that another frame ends `seconds` later (found
    looking, or waking the worker once the look is over); then a turn that finds nothing, so
    that the next turn's wait does not look. The frame is forwarded."""
    assert sw.send(0, frame(BROADCAST, A)) == 1
    sw.drain()
    later = threading.Timer(seconds, sw.hosts[1].send, [frame(BROADCAST, B)])
    later.start()
    try:
        assert lib.ts_worker_poll(sw.worker, 1000) == 1
    finally:
        later.join()
    assert sw.received(0) == [frame(BROADCAST, B)]
    sw.drain()
    assert lib.ts_worker_poll(sw.worker, 0) == 0        # no wait, so no look: found nothing


def test_busy_poll_stops_after_empty_looks_and_probes_until_one_finds_a_frame(sw):
    sw.shared.set_busy_poll(LOOK_US)
    for _ in range(lib.TS_LOOK_TRUST):
        assert _turn_then_wait(sw) >= LOOK_US / 1e6 * LOOKED_SHARE    # looked, found nothing
    skipped = [_turn_then_wait(sw) for _ in range(lib.TS_LOOK_PROBE - 1)]
    assert max(skipped) < 0.002                         # stopped looking: sleeps at once
    # The probe: every TS_LOOK_PROBE-th wait looks again; a frame it finds early makes looks pay again.
    _look_finds_a_frame_after(sw, 0.002)
    for _ in range(lib.TS_LOOK_TRUST):
        assert _turn_then_wait(sw) >= LOOK_US / 1e6 * LOOKED_SHARE    # trusted again: looks before every sleep
    assert _turn_then_wait(sw) < 0.002


def test_busy_poll_stops_when_its_looks_find_frames_only_late(sw):
    """A look that finds its frame only after 1/TS_LOOK_QUICK of its length spun longer than the
    wake-up it spared: the frame is forwarded, but the look did not pay, and after TS_LOOK_TRUST
    such looks in a row the worker sleeps at once."""
    sw.shared.set_busy_poll(LOOK_US)
    late = 0.75 * LOOK_US / 1e6                         # 60 ms into an 80 ms look (or after it)
    assert late > LOOK_US / 1e6 / lib.TS_LOOK_QUICK
    for _ in range(lib.TS_LOOK_TRUST):
        _look_finds_a_frame_after(sw, late)
    assert _turn_then_wait(sw) < 0.002                  # stopped looking: sleeps at once


def test_worker_refuses_blocking_fds():
    shared = Shared.create(64, 1)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        fds = ffi.new("int[]", [a.fileno()])
        assert lib.ts_worker_new(shared.ptr, 0, fds, 1, IO()) == ffi.NULL
        assert ffi.errno == 22                   # EINVAL
        a.setblocking(False)
        assert lib.ts_worker_new(shared.ptr, 1, fds, 1, IO()) == ffi.NULL   # one worker: index 0 only
        w = lib.ts_worker_new(shared.ptr, 0, fds, 1, IO())
        assert w != ffi.NULL
        lib.ts_worker_free(w)
    finally:
        a.close()
        b.close()
        shared.close()


# The MAC table: aging, eviction, flushing, static entries.

def test_aging_removes_expired_entries_and_keeps_static(sw):
    sw.learn(0, A)
    sw.shared.fdb_add_static(C, 0, 2)
    [seen] = [e[4] for e in sw.shared.fdb_dump() if e[0] == A]
    buckets = sw.shared.fdb_buckets
    assert sw.shared.fdb_age(seen + 300, 300, 0, buckets) == 0       # not yet
    assert sw.shared.fdb_age(seen + 301, 300, 0, buckets) == 1
    assert lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(A), 0) == -1
    assert lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(C), 0) == 2
    assert sw.shared.fdb_age(seen + 10**6, 300, 0, buckets) == 0      # static never ages
    assert sw.shared.fdb_stats()["aged"] == 1
    assert (sw.shared.port_fdb_entries(0), sw.shared.port_fdb_entries(2)) == (0, 1)


def test_aging_is_incremental_by_bucket():
    t = Table(64)                                # 80 slots: 10 buckets
    assert t.s.fdb_buckets == 10
    for i in range(40):
        t.learn(host_mac(i), 1, now=100)
    n = t.entries()
    removed = [lib.ts_fdb_age(t.s, 1000, 300, b, 1) for b in range(10)]
    assert sum(removed) == n
    assert t.entries() == 0
    assert t.stats(lib.TS_CONTROL)[2] == n       # aged



# Abandoned slots (fastpath.h): a writer killed while it held a slot (key set, val 0).

def slot_of(t: Table, mac: str, vlan: int = 0) -> int:
    key = 1 << 63 | vlan << 48 | int(mac.replace(":", ""), 16)
    [i] = [i for i in range(t.s.fdb_capacity) if t.s.fdb[i].key == key]
    return i


def sweep(t: Table, n: int, turning=()):
    """n whole aging sweeps, one a tick; the workers in `turning` turn once a tick (they beat)."""
    for _ in range(n):
        for w in turning:
            t.s.readers[w].heartbeat += 1
        lib.ts_fdb_age(t.s, 1000, 300, 0, t.s.fdb_buckets)


def test_the_aging_sweep_gives_back_the_slots_killed_writers_left_half_written():
    """A bucket of slots whose writers were killed between claiming a key and writing its
    value (or between a removal's value and key) learned nothing more, for good."""
    t = Table(1)                                 # one bucket of 8
    macs = [host_mac(i) for i in range(lib.TS_FDB_WAYS)]
    for mac in macs:
        assert t.learn(mac, 1, now=990) == 1
    for mac in macs:
        t.s.fdb[slot_of(t, mac)].val = 0         # key set, val 0: held by its dead writer
    assert t.learn(C, 2, now=990) == -1
    sweep(t, 1)
    assert all(t.s.fdb[i].val != 0 and t.s.fdb[i].key != 0 for i in range(8)), "marked, not taken"
    sweep(t, 4)                                  # marked again two epochs on, taken two after that
    assert [(t.s.fdb[i].key, t.s.fdb[i].val) for i in range(8)] == [(0, 0)] * 8
    assert t.learn(C, 2, now=990) == 1
    assert t.lookup(C) == 2
    assert t.s.ports[2].fdb_entries == 1
    assert t.stats(lib.TS_CONTROL)[2] == 0       # not counted as aged


def test_a_half_written_slot_is_left_to_a_writer_still_inside_its_burst():
    """Worker 0 was killed while removing B, worker 1 is slow inside its claim of A: nothing is
    taken while either may still be writing; once worker 0's replacement has claimed its place
    and worker 1 turns again, B's slot comes back and A's entry, finished late, stays."""
    t = Table(1, workers=2)
    assert t.learn(A, 1, now=990) == 1 and t.learn(B, 2, now=990) == 1
    a, b = slot_of(t, A), slot_of(t, B)
    a_val = t.s.fdb[a].val
    t.s.fdb[a].val = 0                           # worker 1: key claimed, val and count not yet
    t.s.ports[1].fdb_entries -= 1
    t.s.fdb[b].val = 0                           # worker 0: val taken, killed before the key
    keys = (t.s.fdb[a].key, t.s.fdb[b].key)
    t.s.readers[0].active = t.s.readers[1].active = 1
    sweep(t, 10)
    assert (t.s.fdb[a].key, t.s.fdb[b].key) == keys
    t.s.readers[0].active = 0                    # worker 0's replacement claims its place
    sweep(t, 10)
    assert (t.s.fdb[a].key, t.s.fdb[b].key) == keys
    t.s.fdb[a].val = a_val                       # worker 1 goes on: its val over the mark,
    t.s.ports[1].fdb_entries += 1                # then its count
    sweep(t, 1, turning=[1])
    assert t.lookup(A) == 1
    sweep(t, 4, turning=[1])
    assert (t.s.fdb[b].key, t.s.fdb[b].val) == (0, 0)
    assert t.lookup(A) == 1 and t.s.fdb[a].val == a_val
    assert t.learn(C, 3, now=990) == 1 and t.lookup(C) == 3
    assert (t.s.ports[1].fdb_entries, t.s.ports[3].fdb_entries) == (1, 1)


def test_a_half_written_slot_is_left_while_a_control_thread_writes_the_table():
    """`fdb add`/`del`/`flush` run in the control socket's threads, beside the sweep."""
    t = Table(1)
    assert t.learn(A, 1, now=990) == 1
    a = slot_of(t, A)
    t.s.fdb[a].val = 0
    t.s.fdb_writing = 1
    sweep(t, 10)
    assert t.s.fdb[a].key != 0
    t.s.fdb_writing = 0
    sweep(t, 5)
    assert (t.s.fdb[a].key, t.s.fdb[a].val) == (0, 0)


def test_a_slot_whose_remover_ends_after_the_mark_is_reused_and_tidied():
    """A live remover clears the key under the sweep's mark: the empty slot, mark and all, is
    claimed as any other (the claimer's val goes over the mark), or tidied by the next sweep."""
    t = Table(1)
    assert t.learn(A, 1, now=990) == 1 and t.learn(B, 1, now=990) == 1
    a, b = slot_of(t, A), slot_of(t, B)
    for i in (a, b):
        t.s.fdb[i].val = 0                       # two removers, between val and key
    sweep(t, 1)
    assert t.s.fdb[a].val != 0 and t.s.fdb[b].val != 0, "marked"
    for i in (a, b):
        t.s.fdb[i].key = 0                       # ... and they go on: key 0, count
    t.s.ports[1].fdb_entries = 0
    assert t.learn(C, 2, now=990) == 1           # into one of the marked empty slots
    assert t.lookup(C) == 2
    sweep(t, 6)
    assert t.lookup(C) == 2
    assert [t.s.fdb[i].val for i in range(8) if t.s.fdb[i].key == 0] == [0] * 7
    assert t.s.ports[2].fdb_entries == 1

def test_a_recount_puts_right_the_counts_writers_killed_between_an_entry_and_its_count_left_off():
    """A worker killed after an entry's write and before its count's left its port one short (a
    claim) or one over (a removal, val taken and key not cleared yet): for good, as the sweep
    cannot tell from a slot whose count it held. ts_fdb_recount counts the table again."""
    t = Table(64)
    for i in range(3):
        assert t.learn(host_mac(i), 1, now=990) == 1
    assert t.learn(A, 2, now=990) == 1 and t.learn(B, 3, now=990) == 1
    t.s.ports[1].fdb_entries -= 1                # a claimer of port 1: val written, count not
    t.s.fdb[slot_of(t, B)].val = 0               # a remover of B: val taken, key and count not
    assert [t.s.ports[p].fdb_entries for p in (1, 2, 3)] == [2, 1, 1]
    assert lib.ts_fdb_recount(t.s, 100) == 0
    assert [t.s.ports[p].fdb_entries for p in (1, 2, 3)] == [3, 1, 0]
    assert t.s.fdb_recounting == 0


def test_a_recount_waits_for_a_worker_inside_a_burst_and_gives_up_at_its_timeout():
    """Worker 1 is inside a burst (its active set) and its heartbeat stands still (stopped): it
    may be between an entry and its count, so the recount counts nothing, and lets learning go
    on. Once it is out of the burst, or turned, the recount is done."""
    t = Table(64, workers=2)
    assert t.learn(A, 1, now=990) == 1
    t.s.ports[1].fdb_entries = 5
    t.s.readers[1].active = 1
    assert lib.ts_fdb_recount(t.s, 20) == -errno.ETIMEDOUT
    assert (t.s.ports[1].fdb_entries, t.s.fdb_recounting) == (5, 0)
    t.s.fdb_writing = 1                          # a control-process thread inside a write: the same
    t.s.readers[1].active = 0
    assert lib.ts_fdb_recount(t.s, 20) == -errno.ETIMEDOUT
    t.s.fdb_writing = 0
    assert lib.ts_fdb_recount(t.s, 20) == 0
    assert t.s.ports[1].fdb_entries == 1


def test_a_recount_counts_no_slot_the_aging_sweep_marked():
    """A half-written slot the sweep marked holds the mark's val (its low bits, read as a port,
    1 or 3), not a valid one: the recount counts it for no port."""
    t = Table(64)
    assert t.learn(A, 1, now=990) == 1 and t.learn(B, 2, now=990) == 1
    b = slot_of(t, B)
    t.s.fdb[b].val = 0                           # a remover of B: val taken, key not
    sweep(t, 1)
    assert t.s.fdb[b].val != 0 and t.s.fdb[b].key != 0, "marked"
    assert lib.ts_fdb_recount(t.s, 100) == 0
    assert [t.s.ports[p].fdb_entries for p in (1, 2, 3)] == [1, 0, 0]


def test_a_recount_is_done_once_a_worker_inside_a_burst_turns():
    """A worker whose active stays set, as it goes from wake-up to wake-up without a pause, is
    out of the burst it was in once its heartbeat moves: the next wake-up sees the flag and
    learns nothing. The recount does not wait for active to fall (it may never, under load)."""
    t = Table(64, workers=2)
    assert t.learn(A, 1, now=990) == 1
    t.s.ports[1].fdb_entries = 5
    t.s.readers[1].active = 1
    result = []
    recount = threading.Thread(target=lambda: result.append(lib.ts_fdb_recount(t.s, 5000)))
    recount.start()
    while recount.is_alive():                    # worker 1 turns, always inside a burst
        t.s.readers[1].heartbeat += 1
        time.sleep(0.001)
    recount.join()
    assert result == [0]
    assert t.s.ports[1].fdb_entries == 1


def test_a_worker_learns_nothing_while_the_table_is_recounted(sw):
    """A wake-up that begins while fdb_recounting is set forwards, floods an unknown source's
    frame and learns nothing: the recount's scan sees no worker's write between an entry and
    its count. The next frame, once it is over, is learned."""
    sw.shared.ptr.fdb_recounting = 1
    assert sw.send(0, frame(BROADCAST, A)) == 1
    assert len(sw.received(1)) == 1 and len(sw.received(2)) == 1
    assert lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(A), 1) == -1
    assert sw.shared.fdb_entries() == 0
    sw.shared.ptr.fdb_recounting = 0
    sw.learn(0, A)
    assert lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(A), 1) == 0
    assert sw.shared.port_fdb_entries(0) == 1


def test_fair_eviction_keeps_established_hosts_of_a_small_port():
    t = Table(64)
    capacity = t.s.fdb_capacity
    assert capacity == 80                        # a quarter more slots than the size
    established = [host_mac(i, 0x06) for i in range(4)]
    for mac in established:
        assert t.learn(mac, 1) == 1
    flood = [host_mac(i) for i in range(1000)]
    for mac in flood:                            # port 0 floods random sources
        assert t.learn(mac, 0, now=200) == 1
        assert t.entries() <= capacity
    for mac in established:
        assert t.lookup(mac) == 1
    newcomers = [host_mac(i, 0x0a) for i in range(8)]
    for mac in newcomers:                        # another port learns: port 0 pays
        assert t.learn(mac, 2, now=300) == 1
    for mac in established:
        assert t.lookup(mac) == 1
    for mac in newcomers:
        assert t.lookup(mac) == 2
    learned = 4 + 1000 + 8
    assert t.stats(0) == (learned, 0, 0, learned - capacity)
    assert t.entries() == capacity
    assert (t.s.ports[1].fdb_entries, t.s.ports[2].fdb_entries) == (4, 8)
    assert t.s.ports[0].fdb_entries == capacity - 12


def test_eviction_takes_the_oldest_of_the_largest_port():
    t = Table(6)                                 # 6 + 1 slots: one bucket of 8
    assert t.s.fdb_buckets == 1
    for i in range(8):
        t.learn(host_mac(i), 0, now=100 + i)
    t.learn(host_mac(100), 1, now=200)           # evicts host 0, seen at 100
    assert t.lookup(host_mac(0)) == -1
    assert all(t.lookup(host_mac(i)) == 0 for i in range(1, 8))
    t.learn(host_mac(1), 0, now=300)             # refresh host 1: host 2 is now the oldest
    t.learn(host_mac(101), 1, now=300)
    assert t.lookup(host_mac(2)) == -1
    assert t.lookup(host_mac(1)) == 0
    assert t.stats(0)[3] == 2


def test_full_table_never_grows():
    t = Table(6)                                 # 6 + 1 slots: one bucket of 8
    assert t.s.fdb_buckets == 1
    for i in range(8):
        assert lib.ts_fdb_add_static(t.s, mac_bytes(host_mac(i)), 0, 1) == 0
    assert lib.ts_fdb_add_static(t.s, mac_bytes(host_mac(8)), 0, 1) == -28   # ENOSPC
    assert t.learn(host_mac(9), 0) == -1         # nothing may be evicted
    assert t.lookup(host_mac(9)) == -1
    assert t.entries() == 8
    assert t.stats(0) == (0, 0, 0, 0)
    out = ffi.new("struct ts_fdb_record[]", 16)
    assert lib.ts_fdb_dump(t.s, out, 16) == 8


@pytest.mark.parametrize("size", [8192, 65536])
def test_table_holds_its_size_in_random_macs(size):
    # Each MAC may go in either of two buckets and moves to make room: the
    # configured size fits with no eviction. (One bucket per MAC lost about
    # 1 % of the keys at half this fill.)
    t = Table(size, seed=size)
    rng = random.Random(size)
    macs = {"02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5)) for _ in range(size)}
    for mac in macs:
        assert t.learn(mac, 1) == 1
    assert t.stats(0)[3] == 0                    # nothing evicted
    assert t.entries() == len(macs)
    assert all(t.lookup(mac) == 1 for mac in macs)
    out = ffi.new("struct ts_fdb_record[]", t.s.fdb_capacity)
    assert lib.ts_fdb_dump(t.s, out, t.s.fdb_capacity) == len(macs)


M64 = (1 << 64) - 1


def buckets_of(t: Table, mac: str, vlan: int = 0) -> tuple[int, int]:
    """The two buckets the table's hash picks for a key (a model of fdb_hash and fdb_pair)."""
    key = 1 << 63 | vlan << 48 | int(mac.replace(":", ""), 16)
    h = key ^ t.s.hash_seed
    h ^= h >> 33
    h = h * 0xff51afd7ed558ccd & M64
    h ^= h >> 33
    h = h * 0xc4ceb9fe1a85ec53 & M64
    h ^= h >> 33
    h2 = (h ^ (h >> 29)) * 0x9e3779b97f4a7c15 & M64
    n = t.s.fdb_buckets
    return (h >> 32) * n >> 32, (h2 >> 32) * n >> 32


def bucket_holding(t: Table, mac: str, vlan: int = 0) -> list[int]:
    """Where the key is, read from the table's slots."""
    key = 1 << 63 | vlan << 48 | int(mac.replace(":", ""), 16)
    return [i // lib.TS_FDB_WAYS for i in range(t.s.fdb_capacity) if t.s.fdb[i].key == key]


def test_a_new_mac_takes_the_emptier_of_its_two_buckets():
    t = Table(60)                                # 75 slots: 10 buckets
    macs = [host_mac(i) for i in range(40)]
    for mac in macs:
        load = [sum(t.s.fdb[b * 8 + i].key != 0 for i in range(8)) for b in range(10)]
        b0, b1 = buckets_of(t, mac)
        assert t.learn(mac, 1) == 1
        assert bucket_holding(t, mac) == [b1 if load[b1] < load[b0] else b0]


def test_a_full_bucket_makes_room_by_moving_an_entry_to_its_other_bucket():
    t = Table(12)                                # 15 slots: 2 buckets
    assert t.s.fdb_buckets == 2
    candidates = [host_mac(i) for i in range(2000)]
    mover = next(m for m in candidates if buckets_of(t, m) == (0, 1))
    stuck = [m for m in candidates if buckets_of(t, m) == (0, 0)]
    assert t.learn(mover, 1) == 1                # both empty: the first bucket
    for mac in stuck[:7]:
        assert t.learn(mac, 1) == 1
    assert bucket_holding(t, mover) == [0] and [bucket_holding(t, m) for m in stuck[:7]] == [[0]] * 7
    newcomer = stuck[7]                          # bucket 0 is full, and its only bucket
    assert t.learn(newcomer, 2) == 1
    assert t.stats(0)[3] == 0                    # nothing evicted...
    assert bucket_holding(t, mover) == [1]       # ...the mover moved
    assert bucket_holding(t, newcomer) == [0]
    assert t.lookup(newcomer) == 2 and t.lookup(mover) == 1
    assert all(t.lookup(m) == 1 for m in stuck[:7])
    assert t.s.ports[1].fdb_entries == 8 and t.s.ports[2].fdb_entries == 1


def test_a_static_entry_is_not_moved_to_make_room():
    t = Table(12)                                # 2 buckets, as above
    candidates = [host_mac(i) for i in range(2000)]
    static = next(m for m in candidates if buckets_of(t, m) == (0, 1))
    stuck = [m for m in candidates if buckets_of(t, m) == (0, 0)]
    assert lib.ts_fdb_add_static(t.s, mac_bytes(static), 0, 3) == 0
    for mac in stuck[:7]:
        assert t.learn(mac, 1) == 1
    assert t.learn(stuck[7], 1) == 1             # room by eviction: the static entry may not move
    assert bucket_holding(t, static) == [0]
    assert t.stats(0)[3] == 1
    assert t.lookup(static) == 3 and t.lookup(stuck[7]) == 1


def test_static_entry_is_not_moved_by_learning():
    t = Table(64)
    assert lib.ts_fdb_add_static(t.s, mac_bytes(A), 0, 3) == 0
    assert t.learn(A, 1) == 0
    assert t.lookup(A) == 3
    assert t.stats(0) == (0, 0, 0, 0)


def test_flush_one_port_keeps_other_ports_and_static(sw):
    sw.learn(0, A)
    sw.learn(0, B)
    sw.learn(1, C)
    sw.shared.fdb_add_static("02:00:00:00:00:5a", 1, 0)
    assert sw.shared.fdb_flush(0) == 2
    look = {m: lib.ts_fdb_lookup(sw.shared.ptr, mac_bytes(m), 1) for m in (A, B, C, "02:00:00:00:00:5a")}
    assert look == {A: -1, B: -1, C: 1, "02:00:00:00:00:5a": 0}
    assert sw.shared.fdb_flush() == 1
    assert sw.shared.fdb_entries() == 1
    assert sw.shared.fdb_stats()["aged"] == 0    # a flush is not aging


def test_vlans_are_separate_keys():
    t = Table(64)
    assert lib.ts_fdb_learn(t.s, 0, mac_bytes(A), 10, 1, 100) == 1
    assert lib.ts_fdb_learn(t.s, 0, mac_bytes(A), 20, 2, 100) == 1
    assert (t.lookup(A, 10), t.lookup(A, 20), t.lookup(A, 0)) == (1, 2, -1)
    assert lib.ts_fdb_learn(t.s, 0, mac_bytes(A), 4096, 1, 100) == -1


def test_del_removes_static_and_learned():
    shared = Shared.create(64, 1)
    try:
        shared.fdb_add_static(A, 0, 1)
        lib.ts_fdb_learn(shared.ptr, 0, mac_bytes(B), 0, 2, 100)
        assert shared.fdb_del(A, 0) is True
        assert shared.fdb_del(B, 0) is True
        assert shared.fdb_del(B, 0) is False
        assert shared.fdb_entries() == 0
    finally:
        shared.close()


def test_fdb_vlans_are_those_the_mac_has_an_entry_in():
    """`fdb del MAC` without a VLAN asks in which VLANs MAC is: static or learned, 1 to 4094."""
    shared = Shared.create(64, 1)
    try:
        shared.fdb_add_static(A, 4094, 1)
        shared.fdb_add_static(A, 1, 1)
        lib.ts_fdb_learn(shared.ptr, 0, mac_bytes(A), 10, 2, 100)
        lib.ts_fdb_learn(shared.ptr, 0, mac_bytes(B), 20, 2, 100)
        assert shared.fdb_vlans(A) == [1, 10, 4094]
        assert shared.fdb_vlans(B) == [20]
        shared.fdb_del(B, 20)
        assert shared.fdb_vlans(B) == []
    finally:
        shared.close()


# Shared memory across mappings and processes.

def test_attached_mapping_sees_the_same_table():
    control = Shared.create(1024, 2)
    worker = Shared.attach(os.dup(control.fd))
    try:
        assert worker.ptr != control.ptr
        assert worker.fdb_size == control.fdb_size == 1024
        assert worker.fdb_capacity == control.fdb_capacity == 1280
        assert lib.ts_fdb_learn(worker.ptr, 1, mac_bytes(A), 0, 4, 100) == 1
        assert lib.ts_fdb_lookup(control.ptr, mac_bytes(A), 0) == 4
        control.set_port(4, lib.TS_PORT_UP, 9000)
        assert (worker.ptr.ports[4].state, worker.ptr.ports[4].mtu) == (lib.TS_PORT_UP, 9000)
        assert control.fdb_stats()["learned"] == 1
        assert control.fdb_dump() == [(A, 0, 4, False, 100)]
    finally:
        worker.close()
        control.close()


def test_two_writers_learning_the_same_new_macs_at_once_leave_one_entry_each():
    """Two processes learn the same 5000 new MACs in lockstep, each from its own port, as
    two workers do when a host's flows land on both queues. Each used to claim a slot of
    its own (a third of the MACs had two entries): counted twice, and a move changed one."""
    n = 5000
    shared = Shared.create(1 << 14, 2)
    steps = mmap.mmap(-1, 16)           # how far each writer has got, shared across fork
    macs = [mac_bytes("02:00:00:%02x:%02x:%02x" % (i >> 16, i >> 8 & 255, i & 255)) for i in range(n)]
    kids = []
    try:
        for writer in (0, 1):
            pid = os.fork()
            if pid == 0:                # the child: learn, one MAC a step, never ahead of the other
                try:
                    mine = Shared.attach(os.dup(shared.fd))
                    step = memoryview(steps).cast("Q")
                    for i, mac in enumerate(macs):
                        while step[1 - writer] < i:
                            pass
                        lib.ts_fdb_learn(mine.ptr, writer, mac, 1, writer + 1, 100)
                        step[writer] = i + 1
                finally:
                    os._exit(0)
            kids.append(pid)
        for pid in kids:
            assert os.waitpid(pid, 0)[1] == 0
        keys = [(mac, vlan) for mac, vlan, *_ in shared.fdb_dump()]
        assert len(keys) == len(set(keys)), f"{len(keys) - len(set(keys))} MACs have two entries"
        assert shared.fdb_entries() == len(keys) == shared.fdb_stats()["learned"]
        assert len(keys) > n * 0.8      # given back by both now and then, not often
    finally:
        shared.close()


def test_attach_refuses_other_memory():
    fd = os.memfd_create("not-tapswitch")
    os.ftruncate(fd, lib.ts_shared_size(64))
    with pytest.raises(ValueError, match="is not tapswitch shared memory"):
        Shared.attach(fd)


def test_attach_says_the_version_of_memory_laid_out_by_another():
    """A switch's shared memory of another TS_VERSION (a worker of an upgrade on a switch
    started before it) is told apart from memory that is not tapswitch's: the worker says
    which versions meet."""
    from tapswitch.fastpath import VersionMismatch
    control = Shared.create(64, 1)
    try:
        control.ptr.version = lib.TS_VERSION + 1
        fd = os.dup(control.fd)
        with pytest.raises(VersionMismatch) as e:
            Shared.attach(fd)
        assert (e.value.found, e.value.ours) == (lib.TS_VERSION + 1, lib.TS_VERSION)
        with pytest.raises(OSError):
            os.fstat(fd)                # closed, as attach takes it
    finally:
        control.close()


CHILD = textwrap.dedent("""
    import sys
    from tapswitch._fastpath import ffi, lib
    from tapswitch.fastpath import Shared, io_backend
    shm, q0, q1 = map(int, sys.argv[1:4])
    assert lib.ts_die_with_parent() == 0
    shared = Shared.attach(shm)
    w = lib.ts_worker_new(shared.ptr, 1, ffi.new("int[]", [q0, q1]), 2, io_backend())
    assert w != ffi.NULL
    handled = 0
    while handled < 1:
        handled += lib.ts_worker_poll(w, 5000)
    lib.ts_worker_free(w)
""")


def test_worker_in_another_process_learns_into_the_parents_table():
    shared = Shared.create(1024, 2)
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    try:
        for p, (host, queue) in enumerate(pairs):
            queue.setblocking(False)
            shared.set_port(p, lib.TS_PORT_UP, 1500)
        q0, q1 = pairs[0][1].fileno(), pairs[1][1].fileno()
        f = frame(BROADCAST, A)
        pairs[0][0].send(f)
        subprocess.run([sys.executable, "-c", CHILD, str(shared.fd), str(q0), str(q1)],
                       pass_fds=[shared.fd, q0, q1], check=True, timeout=30)
        assert lib.ts_fdb_lookup(shared.ptr, mac_bytes(A), 1) == 0
        assert shared.fdb_stats()["learned"] == 1
        assert shared.queue_counters(0, 1)["rx_packets"] == 1
        assert shared.counters(0)["rx_packets"] == 1
        assert pairs[1][0].recv(1 << 16) == f
    finally:
        for host, queue in pairs:
            host.close()
            queue.close()
        shared.close()


# The shared memory's layout (layout_fingerprint) as of the TS_VERSION beside it. A worker the
# running switch starts again after an in-place upgrade reads the old control process's memory
# with the new fast path, and only TS_VERSION tells it the layout is not its own.
LAYOUT = (6, "d1d0fb2c38a3ef94")

# The constants that size the shared memory, or say how the MAC table after it is laid out; the
# struct's array lengths are literals in fastpath.h (cffi's cdef), which these do not follow.
LAYOUT_CONSTANTS = ("TS_MAGIC", "TS_MAX_PORTS", "TS_MAX_WORKERS", "TS_CONTROL", "TS_FDB_WAYS",
                    "TS_MAX_MIRRORS", "TS_MAX_ACL_RULES")
LAYOUT_FDB_SIZES = (1, 8, 1000, 8192, 1 << 20)     # ts_shared_size of these: how the table is sized


def _layout(t) -> str:
    """A C type as cffi lays it out: a struct's size, alignment and each field's offset and
    type, through every struct inside it; an array's length (none: a flexible array member)."""
    if t.kind == "array":
        return f"{_layout(t.item)}[{'' if t.length is None else t.length}]"
    if t.kind == "struct":
        fields = ",".join(f"{name}@{f.offset}:{_layout(f.type)}" for name, f in t.fields)
        return f"{t.cname}({ffi.sizeof(t)}/{ffi.alignof(t)}){{{fields}}}"
    return f"{t.cname}({ffi.sizeof(t)})"


def layout_fingerprint() -> str:
    """16 hex digits of the sha256 of struct ts_shared's layout, the constants that size it and
    ts_shared_size's answers: any change to these changes it."""
    import hashlib
    text = ";".join([_layout(ffi.typeof("struct ts_shared")),
                     *(f"{name}={getattr(lib, name)}" for name in LAYOUT_CONSTANTS),
                     *(f"size({n})={lib.ts_shared_size(n)}" for n in LAYOUT_FDB_SIZES)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_the_shared_memory_layout_changes_only_with_ts_version():
    """A change of struct ts_shared (a field, a struct inside it, a constant that sizes it)
    without a new TS_VERSION would have a worker of the new layout read the old as its own,
    after an in-place upgrade, instead of saying the switch must be restarted."""
    version, recorded = LAYOUT
    found = layout_fingerprint()
    assert lib.TS_VERSION == version, (
        f"TS_VERSION is {lib.TS_VERSION}, LAYOUT records the layout of version {version}: "
        f"record LAYOUT = ({lib.TS_VERSION}, {found!r}) in this file")
    assert found == recorded, (
        f"struct ts_shared's layout changed (fingerprint {found}, not {recorded}) and TS_VERSION "
        f"did not: bump TS_VERSION in fastpath.h and record LAYOUT = ({lib.TS_VERSION + 1}, {found!r}) "
        f"in this file")


def test_magic_and_version_stay_at_the_head_of_the_shared_memory():
    """Where a worker of any version reads them, to find the layout is not its own."""
    fields = dict(ffi.typeof("struct ts_shared").fields)
    assert (fields["magic"].offset, fields["magic"].type.cname) == (0, "uint64_t")
    assert (fields["version"].offset, fields["version"].type.cname) == (8, "uint32_t")

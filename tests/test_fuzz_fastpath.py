"""Hostile frames through the fast path (fastpath.h), through cffi: never a
crash, never a malformed frame forwarded (an rx mirror's copy of a frame
from a bad source MAC aside), never a frame changed but as the fast path says
it changes them.

Hypothesis builds frames -- virtio-net headers with every gso_type and flag,
absurd hdr_len/csum_start/csum_offset/gso_size, runts, broken and priority
802.1Q tags, double (QinQ) tags, IPv4/IPv6 headers with hostile lengths and
extension chains, behind no tag, one or two,
64 KiB frames, frames longer than the fast path's buffer, and plain random
bytes -- and port settings (access and trunk VLANs, isolation, a mirror,
allow-only ACL rules, which make the worker parse L3 without changing where
frames go), and feeds the frames in bursts to one worker over SOCK_SEQPACKET
socketpairs, as tests/test_fastpath.py does.

A model of the switch (below; its rules are the ones fastpath.h and
fastpath.c state, quoted where they are written) says what must come out of
each port: every frame that comes out must be exactly one the model derives
from a frame that went in -- the same bytes, or with its 802.1Q tag pushed,
popped or given its VLAN, and the header's offsets moved by 4 -- and must
pass the fast path's own checks. Counters, mirror counters and the MAC table
must match the model too.

CI runs a bounded number of examples. scripts/fuzz.sh runs this file for as
long as you like against a build of the fast path with AddressSanitizer and
UndefinedBehaviorSanitizer (TAPSWITCH_FUZZ_EXAMPLES sets the examples per run).
"""

import os
import random
import socket
from dataclasses import dataclass, field
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context, event

from tapswitch._fastpath import ffi, lib
from tests.fastpath_io import IO, io_backend  # noqa: F401 (io_backend: every test, both backends)
from tapswitch.fastpath import COUNTERS, MIRROR_COUNTERS, Shared
from tests.test_fastpath import VNET

VNET_LEN = lib.TS_VNET_HDR_LEN
ETH_HLEN = 14
VLAN_HLEN = 4
FRAME_MAX = lib.TS_FRAME_MAX
BURST = lib.TS_BURST
RECV_SIZE = 1 << 17                # more than FRAME_MAX: a received frame is never cut here
SOCKET_BUFFER = 4 << 20            # asked for; the kernel may give less (see Switch.budget)

EXAMPLES = int(os.environ.get("TAPSWITCH_FUZZ_EXAMPLES", "300"))
LONG_RUN = "TAPSWITCH_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(max_examples=EXAMPLES,
                deadline=None if LONG_RUN else timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- The rules, as the fast path states them ---------------------------------
#
# Malformed (fastpath.h: rx_errors "malformed: runt, bad vnet header, bad
# source MAC, bad tag"; "a frame that fills the whole TS_FRAME_MAX buffer may
# have been cut"; fastpath.c: is_parsable, has_host_source, vnet_hdr_is_valid,
# tag_is_whole), judged on the bytes *as the worker read them* (a longer
# frame is cut at TS_FRAME_MAX by its read):
#   - shorter than the virtio-net header plus an Ethernet header (10 + 14);
#   - TS_FRAME_MAX bytes or more (it may have been cut);
#   - a flag other than NEEDS_CSUM (1), DATA_VALID (2), RSC_INFO (4);
#   - gso_type without its ECN bit (0x80) not one of NONE 0, TCPV4 1, UDP 3,
#     TCPV6 4, UDP_L4 5; or ECN alone; or a GSO type with gso_size 0 or
#     0xFFFF (GSO_BY_FRAGS);
#   - NEEDS_CSUM with csum_start below what a TAP write takes (20; 40 for
#     TCPV6 GSO), or csum_start + csum_offset + 2 beyond the Ethernet bytes,
#     or csum_start + the GSO type's TCP (20) or UDP (8) header;
#   - TCP GSO with NEEDS_CSUM and csum_offset not 16; UDP_L4 GSO without
#     NEEDS_CSUM, with csum_offset not 6, with ECN, or of more than 128
#     segments of gso_size after csum_start + 8 (virtio_net_hdr_to_skb);
#   - hdr_len beyond the Ethernet bytes, or 1 to 13 without NEEDS_CSUM;
#   - ethertype 0x8100 and fewer than 18 Ethernet bytes, or NEEDS_CSUM with
#     csum_start inside the MACs or the tag (below 18), or below what a TAP
#     write takes plus the 4 bytes a pop moves it; and for each 802.1Q tag
#     behind it (the type after a tag is 0x8100 again: one that a pop brings
#     nearer the front), 4 more bytes and 4 more before the checksum;
#   - a source MAC that is multicast or zero (the only fault of a frame an rx
#     mirror still copies: fastpath.h, "Mirrors").

VNET_F_NEEDS_CSUM = 1
VNET_F_KNOWN = 1 | 2 | 4
GSO_TYPES = {0, 1, 3, 4, 5}
GSO_ECN = 0x80
ETH_P_8021Q, ETH_P_8021AD = 0x8100, 0x88A8


def vnet(data) -> tuple:
    return VNET.unpack_from(data)


def eth_type(data) -> int:
    return int.from_bytes(data[VNET_LEN + 12:VNET_LEN + 14], "big")


def gso_size_of(data) -> int:
    _flags, gso_type, _hdr_len, gso_size, *_ = vnet(data)
    return gso_size if gso_type & ~GSO_ECN else 0


def is_well_formed(data) -> bool:
    return is_parsable(data) and has_host_source(data)


def is_parsable(data) -> bool:
    """Every rule above but the source MAC's."""
    if len(data) < VNET_LEN + ETH_HLEN or len(data) >= FRAME_MAX:
        return False
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = vnet(data)
    gso = gso_type & ~GSO_ECN
    csum_min = 40 if gso == 4 else 20
    if flags & ~VNET_F_KNOWN:
        return False
    if gso not in GSO_TYPES or (gso == 0 and gso_type != 0) or (gso != 0 and gso_size in (0, 0xFFFF)):
        return False
    thlen = 20 if gso in (1, 4) else 8 if gso else 0
    if flags & VNET_F_NEEDS_CSUM and (csum_start < csum_min
                                      or csum_start + max(csum_offset + 2, thlen) > len(data) - VNET_LEN):
        return False
    if gso in (1, 4) and flags & VNET_F_NEEDS_CSUM and csum_offset != 16:
        return False
    if gso == 5 and (not flags & VNET_F_NEEDS_CSUM or csum_offset != 6 or gso_type != 5
                     or len(data) - VNET_LEN - csum_start - 8 > gso_size * 128):
        return False
    if hdr_len > len(data) - VNET_LEN or (0 < hdr_len < ETH_HLEN and not flags & VNET_F_NEEDS_CSUM):
        return False
    if eth_type(data) == ETH_P_8021Q:
        end = ETH_HLEN + VLAN_HLEN
        while len(data) - VNET_LEN >= end and int.from_bytes(data[VNET_LEN + end - 2:VNET_LEN + end], "big") == ETH_P_8021Q:
            end += VLAN_HLEN
        # a tag's 4 bytes before the checksum for each 802.1Q tag: what each pop leaves is well formed too
        if len(data) - VNET_LEN < end or (flags & VNET_F_NEEDS_CSUM and csum_start < max(end, csum_min + end - ETH_HLEN)):
            return False
    return True


def has_host_source(data) -> bool:
    src = data[VNET_LEN + 6:VNET_LEN + 12]
    return not (src[0] & 1) and src != bytes(6)


def is_link_local_group(dst: bytes) -> bool:
    """fastpath.h: 01:80:C2:00:00:01..0F, "the IEEE 802.1 group a bridge must
    not relay", is dropped (rx_dropped); :00 and :10 and up are flooded."""
    return dst[:5] == bytes.fromhex("0180c20000") and 0x01 <= dst[5] <= 0x0F


def l3_offset(data) -> int:
    """Where the IP header starts: after the MACs, at most two 802.1Q/802.1ad
    tags (each whole, with an ethertype after it) and the ethertype."""
    eth = data[VNET_LEN:]
    off = 12
    for _ in range(2):
        if off + VLAN_HLEN + 2 > len(eth) or int.from_bytes(eth[off:off + 2], "big") not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        off += VLAN_HLEN
    return off + 2


def gso_segment_len(data) -> int:
    """The IP length of a GSO frame's segments (fastpath.h, ts_port.mtu): from
    the IP header (l3_offset) to csum_start, then the TCP header's data offset
    (TCPV4, TCPV6) or 8 (UDP_L4), then gso_size; gso_size alone without
    NEEDS_CSUM, or with csum_start before the IP header."""
    flags, gso_type, _hdr_len, gso_size, csum_start, _csum_offset = vnet(data)
    eth = data[VNET_LEN:]
    l3 = l3_offset(data)
    if not flags & VNET_F_NEEDS_CSUM or csum_start < l3:
        return gso_size
    gso = gso_type & ~GSO_ECN
    length = csum_start - l3 + gso_size
    if gso in (1, 4) and csum_start + 12 < len(eth):
        length += (eth[csum_start + 12] >> 4) * 4
    elif gso == 5:
        length += 8
    return length


def fits(mtu: int, data) -> bool:
    """What a port can carry (fastpath.h, ts_port.mtu): a GSO frame is judged by
    its segments' IP length; any other by its bytes after its tags (two at most)."""
    if gso_size_of(data):
        return gso_segment_len(data) <= mtu
    return len(data) - VNET_LEN - l3_offset(data) <= mtu


@dataclass
class PortConf:
    """A port's settings (struct ts_port_conf), as far as this test uses them."""

    pvid: int = 1
    trunk: frozenset = frozenset()     # tagged VLANs; empty: not a trunk
    isolated: bool = False
    monitor: bool = False
    mirror_rx: bool = False            # mirror 0 copies what the port receives
    mirror_tx: bool = False            # ... and what is sent to it
    acl: tuple = ()                    # allow-only rules: (match, field bytes)

    def in_vlan(self, vlan: int) -> bool:
        return self.pvid == vlan or vlan in self.trunk


def classify(conf: PortConf, data) -> tuple[bool, int]:
    """fastpath.h, VLANs: "a frame tagged with a VID that is one of the port's
    VLANs is in that VLAN; an untagged or priority-tagged (VID 0) frame is in
    the pvid; anything else is dropped"."""
    tagged = eth_type(data) == ETH_P_8021Q
    vid = int.from_bytes(data[VNET_LEN + 14:VNET_LEN + 16], "big") & 0xFFF if tagged else 0
    vlan = vid or conf.pvid
    return vlan != 0 and conf.in_vlan(vlan), vlan


def shift_header(data: bytearray, delta: int) -> None:
    """The tag moved what follows the MACs by delta: so do csum_start (with
    NEEDS_CSUM) and hdr_len (when not 0; one popped below 14 becomes 0)."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = vnet(data)
    if flags & VNET_F_NEEDS_CSUM:
        csum_start = (csum_start + delta) & 0xFFFF
    if hdr_len:
        hdr_len = (hdr_len + delta) & 0xFFFF if delta > 0 or hdr_len + delta >= ETH_HLEN else 0
    VNET.pack_into(data, 0, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def tag_for(data: bytearray, vlan: int, out: PortConf, prio: int, tagged: bool) -> bool:
    """fastpath.h: "a frame leaves untagged in the port's pvid and tagged
    otherwise"; the tag is pushed or popped in place, a priority tag gets the
    VID (PCP kept). A pushed tag carries `prio`, the PCP and DEI bits (as the
    TCI's top byte) of the tag the frame came with. `tagged`: the frame has
    the switch's tag in front now (after a pop, a QinQ frame's second 802.1Q
    tag is in front, and it is the frame's own). Edits data; False if a tag
    was needed and did not fit (then data is as it was); else the frame has
    the switch's tag in front if the port is not in the VLAN untagged."""
    want_tag = out.pvid != vlan
    mac_end = VNET_LEN + 12
    if want_tag == tagged:
        if want_tag:
            tci = int.from_bytes(data[mac_end + 2:mac_end + 4], "big")
            data[mac_end + 2:mac_end + 4] = (tci & 0xF000 | vlan).to_bytes(2, "big")
        return True
    if want_tag:
        _f, _g, hdr_len, _s, csum_start, *_ = vnet(data)
        if len(data) + VLAN_HLEN >= FRAME_MAX or csum_start > 0xFFFF - VLAN_HLEN or hdr_len > 0xFFFF - VLAN_HLEN:
            return False
        data[mac_end:mac_end] = ETH_P_8021Q.to_bytes(2, "big") + (prio << 8 | vlan).to_bytes(2, "big")
        shift_header(data, VLAN_HLEN)
    else:
        del data[mac_end:mac_end + VLAN_HLEN]
        shift_header(data, -VLAN_HLEN)
    return True


@dataclass
class Model:
    """What the switch must do: per-VLAN learning and forwarding over ports
    that are up or down, with the settings of PortConf and mirror 0 to port
    `mirror_to` (None: no mirror)."""

    up: list[bool]
    mtu: list[int]
    conf: list[PortConf]
    mirror_to: int | None = None
    fdb: dict[tuple[bytes, int], int] = field(default_factory=dict)
    counters: list[dict[str, int]] = field(default_factory=list)
    mirror: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MIRROR_COUNTERS, 0))
    stats: dict[str, int] = field(default_factory=lambda: {"learned": 0, "moved": 0})
    out: dict[int, list[bytes]] = field(default_factory=dict)

    def __post_init__(self):
        self.counters = [dict.fromkeys(COUNTERS, 0) for _ in self.up]

    def burst(self, port: int, frames: list[bytes]) -> dict[int, list[bytes]]:
        """One burst read from `port`, as handle_queue handles it: accept (and
        count) every frame, then learn every source, then forward every frame.
        Returns what each port must be sent, in order."""
        self.out = {p: [] for p in range(len(self.up))}
        c, conf = self.counters[port], self.conf[port]
        accepted = []
        for data in frames:
            if not is_parsable(data):
                c["rx_errors"] += 1
                continue
            if not has_host_source(data):
                c["rx_errors"] += 1
                if self.up[port] and conf.mirror_rx:
                    self.copy(data)                 # an rx mirror copies it still
                continue
            c["rx_packets"] += 1
            c["rx_bytes"] += len(data) - VNET_LEN
            if not self.up[port]:
                c["rx_dropped"] += 1
                continue
            if conf.mirror_rx:
                self.copy(data)                     # what arrived, as it arrived
            if conf.monitor:
                c["rx_dropped"] += 1                # a monitor port only receives
                continue
            ok, vlan = classify(conf, data)
            if not ok:
                c["rx_dropped"] += 1
                c["vlan_dropped"] += 1
                continue
            accepted.append((bytearray(data), vlan))    # allow-only ACLs let everything pass
        for data, vlan in accepted:                 # learn after filtering
            key = (bytes(data[VNET_LEN + 6:VNET_LEN + 12]), vlan)
            old = self.fdb.get(key)
            if old is None:
                self.stats["learned"] += 1
            elif old != port:
                self.stats["moved"] += 1
            self.fdb[key] = port
        for data, vlan in accepted:
            dst = bytes(data[VNET_LEN:VNET_LEN + 6])
            tagged = eth_type(data) == ETH_P_8021Q             # as it came, then as edited
            prio = data[VNET_LEN + 14] & 0xF0 if tagged else 0
            to = None if dst[0] & 1 else self.fdb.get((dst, vlan))
            if is_link_local_group(dst):
                c["rx_dropped"] += 1                # for the link, not relayed
            elif to is None:                        # broadcast, multicast, unknown: flood
                reached = [p for p in range(len(self.up))
                           if p != port and self.up[p] and self.should_deliver(port, p, vlan)]
                c["flooded" if reached else "rx_dropped"] += 1      # a flood to no port forwards nothing
                for p in reached:                   # the frame is edited from port to port
                    tagged = self.tx(p, data, vlan, prio, tagged)
            elif to == port:
                c["rx_dropped"] += 1                # it is on the segment it came from
            elif self.up[to] and self.should_deliver(port, to, vlan):
                self.tx(to, data, vlan, prio, tagged)
            else:
                c["rx_dropped"] += 1
        return self.out

    def should_deliver(self, i: int, o: int, vlan: int) -> bool:
        return self.conf[o].in_vlan(vlan) and not (self.conf[i].isolated and self.conf[o].isolated)

    def tx(self, p: int, data: bytearray, vlan: int, prio: int, tagged: bool) -> bool:
        """Send to port p in its form of the VLAN; returns whether the switch's tag is in front now."""
        if not tag_for(data, vlan, self.conf[p], prio, tagged):
            self.counters[p]["tx_errors"] += 1
            return tagged
        if self.xmit(p, data) and self.conf[p].mirror_tx:
            self.copy(data)                         # what was written, as written
        return self.conf[p].pvid != vlan

    def xmit(self, p: int, data) -> bool:
        if not fits(self.mtu[p], data):
            self.counters[p]["tx_errors"] += 1
            return False
        self.out[p].append(bytes(data))             # the harness keeps every queue from filling
        self.counters[p]["tx_packets"] += 1
        self.counters[p]["tx_bytes"] += len(data) - VNET_LEN
        return True

    def copy(self, data) -> None:
        """Mirror 0's copy to its monitor port."""
        to = self.mirror_to
        if to is not None and self.up[to] and self.xmit(to, data):
            self.mirror["packets"] += 1
            self.mirror["bytes"] += len(data) - VNET_LEN
        else:
            self.mirror["dropped"] += 1


# --- The switch under test ---------------------------------------------------

class Switch:
    """One worker over len(up) ports; hosts[p] is the test's end of port p's queue."""

    def __init__(self, up: list[bool], mtu: list[int], conf: list[PortConf], mirror_to: int | None):
        self.shared = Shared.create(8192, 1)        # far more entries than any example learns
        self.hosts, self.queues = [], []
        for p in range(len(up)):
            host, queue = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            for sk in (host, queue):
                sk.setblocking(False)
                for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):   # 32, 33: *BUFFORCE
                    try:
                        sk.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
                    except PermissionError:
                        sk.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            self.hosts.append(host)
            self.queues.append(queue)
            self.shared.set_port(p, lib.TS_PORT_UP if up[p] else lib.TS_PORT_DOWN, mtu[p])
        # What a socket may hold: a message is refused once this much is queued.
        self.budget = min(sk.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) for sk in self.hosts + self.queues)
        self.configure(conf, mirror_to)
        fds = ffi.new("int[]", [q.fileno() for q in self.queues])
        self.worker = lib.ts_worker_new(self.shared.ptr, 0, fds, len(up), IO())
        assert self.worker != ffi.NULL

    def configure(self, conf: list[PortConf], mirror_to: int | None, edit=None) -> None:
        """Publish the ports' settings; `edit(t)`, if given, changes the copy `t` before it
        is published (settings the model has no field for: MAC limits, storm control...)."""
        t = self.shared.settings_next()
        for p, pc in enumerate(conf):
            c = t.ports[p]
            c.pvid = pc.pvid
            flags = 0
            if pc.trunk:
                flags |= lib.TS_PORT_TRUNK
                for v in pc.trunk:
                    c.vlans[v // 64] |= 1 << (v % 64)
            if pc.isolated:
                flags |= lib.TS_PORT_ISOLATED
            if pc.monitor:
                flags |= lib.TS_PORT_MONITOR
            if pc.acl:
                flags |= lib.TS_PORT_ACL
                c.acl_rules = len(pc.acl)
                for r, (match, raw) in enumerate(pc.acl):
                    rule = t.acl[p][r]
                    ffi.memmove(ffi.addressof(rule), raw, ffi.sizeof(rule))
                    rule.match = match
                    rule.action = lib.TS_ACL_ALLOW
            c.flags = flags
            c.mirror_rx = int(pc.mirror_rx)
            c.mirror_tx = int(pc.mirror_tx)
        t.mirrors[0].to = lib.TS_MAX_PORTS + 44 if mirror_to is None else mirror_to
        if edit:
            edit(t)
        assert self.shared.settings_publish(0) == 0

    def poll(self) -> int:
        n = lib.ts_worker_poll(self.worker, 1000)
        assert n > 0, f"ts_worker_poll returned {n}"
        return n

    def feed(self, port: int, frames: list[bytes], copies: int):
        """Send `frames` into `port` and let the worker read them; yields what each poll read
        (a burst), in order. No more is queued at a time than every queue can hold `copies`
        times over, so the worker never drops a frame it sends (tx_dropped)."""
        pending = list(frames)
        while pending:
            queued, cost = [], 0
            for data in pending:
                if queued and (len(queued) == BURST or cost + truesize(data) * copies > self.budget // 2):
                    break
                self.hosts[port].send(data)
                queued.append(data)
                cost += truesize(data) * copies
            pending = pending[len(queued):]
            while queued:
                n = self.poll()
                assert n <= len(queued), f"the worker read {n} frames, {len(queued)} were queued"
                read, queued = queued[:n], queued[n:]
                yield read

    def received(self, port: int) -> list[bytes]:
        frames = []
        while True:
            try:
                frames.append(self.hosts[port].recv(RECV_SIZE))
            except BlockingIOError:
                return frames

    def close(self):
        lib.ts_worker_free(self.worker)
        for sk in self.hosts + self.queues:
            sk.close()
        self.shared.close()


def note(what: str) -> None:
    """Count what an example exercised (pytest --hypothesis-show-statistics)."""
    if currently_in_test_context():
        event(what)


def truesize(data: bytes) -> int:
    """What a queued message costs its socket: the bytes in whole pages, and the skb."""
    return (len(data) + 4095) // 4096 * 4096 + 1024


def run(up, mtu, conf, mirror_to, bursts) -> None:
    """Send each burst into its port, let the worker handle it, and hold every
    output, counter and MAC table entry to the model."""
    model = Model(up, mtu, conf, mirror_to)
    sw = Switch(up, mtu, conf, mirror_to)
    # One frame in may come out once on every port, and on the mirror's port
    # once more, plus once per port it was sent to: the harness sends no more per turn
    # than every queue can hold, so the worker never drops (tx_dropped).
    copies = 2 + len(up) if mirror_to is not None else 1
    try:
        for port, frames in bursts:
            for read in sw.feed(port, frames, copies):     # the model takes each poll's frames as one burst
                if len(read) == BURST:
                    note("a full burst")
                expected = model.burst(port, [d[:FRAME_MAX] for d in read])
                for p in range(len(up)):
                    got = sw.received(p)
                    # (a mirror's copy may have a bad source MAC: the rx mirror copies those too)
                    assert all(is_well_formed(d) or (p == mirror_to and is_parsable(d)) for d in got), \
                        f"port {p} sent a malformed frame"
                    assert got == expected[p], f"port {p}: not what the model sends there"
                    for d in got:
                        note("a GSO frame crossed" if gso_size_of(d) else "a frame crossed")
                        if eth_type(d) == ETH_P_8021Q:
                            note("a tagged frame crossed")
        for p in range(len(up)):
            for name in ("rx_errors", "tx_errors", "vlan_dropped"):
                if model.counters[p][name]:
                    note(f"{name} counted")
            assert sw.shared.queue_counters(p, 0) == model.counters[p], f"port {p}"
        assert sw.shared.mirror_counters(0) == model.mirror
        table = {(bytes.fromhex(mac.replace(":", "")), vlan): port
                 for mac, vlan, port, _static, _seen in sw.shared.fdb_dump()}
        assert table == model.fdb
        stats = sw.shared.fdb_stats()
        assert (stats["learned"], stats["moved"], stats["evicted"]) == (model.stats["learned"], model.stats["moved"], 0)
        assert lib.ts_worker_poll(sw.worker, 0) == 0         # nothing left behind
    finally:
        sw.close()


# --- Frames ------------------------------------------------------------------
#
# Hypothesis draws a few bytes per frame, and Choices turns them into the
# frame's fields (as atheris's FuzzedDataProvider does): one draw per frame
# instead of dozens keeps CI's examples cheap, and Hypothesis still shrinks a
# failure -- towards zero bytes, which Choices reads as the plainest choices.

HOSTS = [bytes([2, 0, 0, 0, 0, i]) for i in range(1, 5)]
MACS = HOSTS + [b"\xff" * 6, bytes.fromhex("01005e000001"), bytes.fromhex("333300000001"), bytes(6),
                bytes.fromhex("0180c2000000"), bytes.fromhex("0180c2000001"), bytes.fromhex("0180c200000e"),
                bytes.fromhex("0180c2000010")]      # STP, PAUSE, LLDP (not relayed), and the first relayed after
VLANS = [1, 2, 3, 4094]
MTUS = [1500, 9000, 65521, 68]
MTU_EDGES = sorted({mtu + ETH_HLEN + d for mtu in MTUS for d in (-1, 0, 1, 3, 4, 5, 7, 8, 9)})   # no tag, one or two
U16_EDGES = [0, 1, 2, 3, 4, 5, 12, 13, 14, 17, 18, 19, 20, 34, 38, 40, 54, 60, 1448, 1500, 1514, 1518, 9000,
             32767, 32768, 65507, 65521, 65530, 65531, 65532, 65535 - 14, 65534, 65535]
LENGTH_EDGES = [0, 1, 13, 14, 15, 17, 18, 19, 46, 60, 64, 1500, 1514, 1518, 1519, 9014, 9018, 65535,
                FRAME_MAX - VNET_LEN - VLAN_HLEN - 1, FRAME_MAX - VNET_LEN - VLAN_HLEN,
                FRAME_MAX - VNET_LEN - 1, FRAME_MAX - VNET_LEN, FRAME_MAX - VNET_LEN + 1,
                FRAME_MAX - VNET_LEN + 60]
GSO_SIZES = sorted({m + d for m in MTUS for d in (-1, 0, 1)} | {1448, 0xFFFF})
TCIS = [0, 1, 2, 3, 4094, 0xA000, 0xE002, 0x1003]   # VIDs of the test's VLANs, priority tags, PCP and DEI bits
ETHERTYPES = [0x0800, 0x86DD, 0x0806, ETH_P_8021AD, ETH_P_8021Q]
INNER_TYPES = [0x0800, 0x86DD, ETH_P_8021Q]      # behind a second tag: a packet, or a third tag
L2_MAX = FRAME_MAX - VNET_LEN - 1               # the longest Ethernet frame the worker accepts
FRAME_CHOICES = 48                              # bytes drawn per frame


class Choices:
    """Decisions read from bytes; past their end every byte reads as 0."""

    def __init__(self, data: bytes):
        self.data, self.i = data, 0

    def byte(self) -> int:
        b = self.data[self.i] if self.i < len(self.data) else 0
        self.i += 1
        return b

    def below(self, n: int) -> int:
        """0..n-1 (from three bytes)."""
        return (self.byte() << 16 | self.byte() << 8 | self.byte()) % n

    def pick(self, seq):
        return seq[self.byte() % len(seq)]

    def u16(self) -> int:
        """An edge value or any value."""
        return self.pick(U16_EDGES) if self.byte() < 128 else self.below(0x10000)


def l3_payload(c: Choices) -> bytes:
    """What follows the ethertype: nothing (random bytes follow), or an IPv4 or
    IPv6 header whose lengths, fragment offsets and extension chain are the
    ACL parser's business."""
    kind = c.byte() % 3
    if kind == 1:
        vihl = c.pick([0x45, 0x46, 0x4F, 0x40, 0x44, c.byte()])
        frag = c.pick([0, 0x4000, 0x2000, 0x0001, 0x1FFF])
        proto = c.pick([6, 17, 1, c.byte()])
        return bytes([vihl, 0]) + bytes(4) + frag.to_bytes(2, "big") + bytes([64, proto]) + bytes(10)
    if kind == 2:
        nexts = [c.pick([0, 43, 44, 51, 60, c.byte()]) for _ in range(c.byte() % 6)]
        head = b"\x60" + bytes(5) + bytes([nexts[0] if nexts else 59, 64]) + bytes(32)
        for i, nh in enumerate(nexts):           # next header, length, 6 bytes
            following = nexts[i + 1] if i + 1 < len(nexts) else c.pick([6, 17, 59])
            rest = c.pick([b"\0\0", b"\0\x08", b"\xff\xf8"]) + bytes(4) if nh == 44 else bytes(6)
            head += bytes([following, c.pick([0, 1, 255, c.byte()])]) + rest
        return head
    return b""


def decode_frame(data: bytes) -> bytes:
    """A virtio-net header and an Ethernet frame. A frame starts valid in every
    field; at a level the first byte picks, each field is instead drawn from
    everything it can hold: frames are accepted and forwarded often enough to
    check what comes out, and refused for every reason, alone or together."""
    c = Choices(data)
    level = c.pick([0, 0, 0, 16, 64, 128, 256])  # of 256: how often a field is hostile

    def hostile() -> bool:
        return c.byte() < level

    flags = c.byte() if hostile() else c.pick([0, 1, 2, 3, 4, 5, 6, 7])
    gso_type = c.byte() if hostile() else c.pick([0, 0, 0, 0, 1, 3, 4, 5, 0x81, 0x83, 0x84, 0x85])
    gso_size = c.u16() if hostile() else (c.pick(GSO_SIZES) if c.byte() < 192 else 1 + c.below(0xFFFF))
    dst = c.pick(MACS) if not hostile() else bytes(c.byte() for _ in range(6))
    src = c.pick(HOSTS) if not hostile() else c.pick(MACS) if c.byte() < 128 else bytes(c.byte() for _ in range(6))
    tci = (c.u16() if hostile() else c.pick(TCIS)) if c.byte() < 96 else None
    ethertype = c.u16() if hostile() else c.pick(ETHERTYPES)
    if hostile():
        length = c.pick(LENGTH_EDGES) if c.byte() < 128 else c.below(L2_MAX + 64)
    else:       # mostly short frames (cheap), some at the edges, a few of any length
        b = c.byte()
        low = ETH_HLEN + VLAN_HLEN
        length = (low + c.below(128 - low) if b < 128 else low + c.below(2048) if b < 192
                  else c.pick([n for n in LENGTH_EDGES + MTU_EDGES if low <= n <= L2_MAX]) if b < 240
                  else low + c.below(L2_MAX - low))
    eth = dst + src
    if tci is not None:
        eth += ETH_P_8021Q.to_bytes(2, "big") + tci.to_bytes(2, "big")
    eth += ethertype.to_bytes(2, "big")
    if ethertype in (ETH_P_8021Q, ETH_P_8021AD) and not hostile():
        # A tag's TCI and the type behind it (QinQ): the ACL reads the packet behind two tags.
        eth += c.pick(TCIS).to_bytes(2, "big") + c.pick(INNER_TYPES).to_bytes(2, "big")
    eth += l3_payload(c)
    if length > len(eth):
        eth += random.Random(c.below(1 << 24)).randbytes(length - len(eth))
    eth = eth[:length]
    # The checksum field starts after the L2 header and ends within the frame
    # (often at its last byte), or one byte past it, or anywhere.
    l2_len = ETH_HLEN + (VLAN_HLEN if tci is not None else 0)
    csum_start = min(0xFFFF, l2_len + c.below(max(1, length - 1 - l2_len)))
    room = max(0, length - 2 - csum_start)
    # Mostly the checksum field of the header a TCP or UDP_L4 GSO type says is there (the only one a TAP write takes).
    field_offset = {1: 16, 4: 16, 5: 6}.get(gso_type & ~GSO_ECN)
    b = c.byte()
    csum_offset = min(0xFFFF, field_offset if field_offset is not None and b < 192
                      else room if b < 224 else c.below(room + 1))
    if hostile():
        if room < 0xFFFF and c.byte() < 128:
            csum_offset = room + 1
        else:
            csum_start, csum_offset = c.u16(), c.u16()
    header = VNET.pack(flags, gso_type, c.u16(), gso_size, csum_start, csum_offset)
    return header + eth


# Empty frames are left out: a TAP never delivers one, and a read of 0 bytes
# is how a SOCK_SEQPACKET queue says it has ended (tests/test_fastpath.py).
decoded = st.binary(min_size=FRAME_CHOICES, max_size=FRAME_CHOICES).map(decode_frame)
frame = st.one_of(decoded, decoded, decoded, st.binary(min_size=1, max_size=300))   # 1 in 4 plain bytes

ACL_RULE = ffi.sizeof("struct ts_acl_rule")


def decode_port(data: bytes, monitor: bool, has_mirror: bool) -> PortConf:
    c = Choices(data)
    if monitor:                                 # fastpath.h: pvid 0, no VLANs
        return PortConf(pvid=0, monitor=True, mirror_tx=c.byte() & 1 == 1)
    trunk = frozenset(v for i, v in enumerate(VLANS) if c.byte() & 1) if c.byte() & 1 else frozenset()
    rules = c.byte() % 4
    return PortConf(
        pvid=c.pick([1, 2, 3, 0] if trunk else [1, 1, 2, 3]),
        trunk=trunk,
        isolated=c.byte() & 1 == 1,
        mirror_rx=has_mirror and c.byte() & 1 == 1,
        mirror_tx=has_mirror and c.byte() & 1 == 1,
        # Allow-only rules on random fields: the worker parses L3 for them and
        # forwards what it would have anyway.
        acl=tuple((c.below(0x800), random.Random(c.below(1 << 24)).randbytes(ACL_RULE)) for _ in range(rules)),
    )


@st.composite
def scenario(draw):
    n = draw(st.integers(2, 4))
    up = draw(st.lists(st.sampled_from([True, True, True, False]), min_size=n, max_size=n))
    mtu = draw(st.lists(st.sampled_from(MTUS[:1] * 3 + MTUS), min_size=n, max_size=n))     # mostly 1500
    # Port settings: the defaults (every port an access port of VLAN 1), or
    # drawn; the last port may be mirror 0's monitor port, or mirror 0 may
    # copy to an ordinary port, or to no port at all.
    mirror = draw(st.sampled_from(["defaults", "monitor", "port", "none"]))
    if mirror == "defaults":
        conf, mirror_to = [PortConf() for _ in range(n)], None
    else:
        mirror_to = n - 1 if mirror == "monitor" else draw(st.integers(0, n - 1)) if mirror == "port" else None
        blobs = draw(st.lists(st.binary(min_size=16, max_size=16), min_size=n, max_size=n))
        conf = [decode_port(b, monitor=(mirror == "monitor" and p == n - 1), has_mirror=mirror != "none")
                for p, b in enumerate(blobs)]
    # A burst repeats its frames up to 12 times: bursts longer than TS_BURST
    # without drawing every frame.
    bursts = draw(st.lists(st.tuples(st.integers(0, n - 1), st.lists(frame, min_size=1, max_size=4),
                                     st.integers(1, 12)),
                           min_size=1, max_size=3))
    return up, mtu, conf, mirror_to, [(port, frames * repeat) for port, frames, repeat in bursts]


@FUZZ
@given(scenario())
def test_hostile_frames_never_crash_and_only_well_formed_ones_cross_as_the_model_says(case):
    run(*case)


def plain(n: int) -> tuple:
    return [True] * n, [1500] * n, [PortConf() for _ in range(n)], None


@settings(FUZZ, max_examples=max(1, EXAMPLES // 3))      # plain bytes are a quarter of the test above, too
@given(st.lists(st.tuples(st.integers(0, 2), st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6)),
                min_size=1, max_size=3))
def test_random_bytes_never_crash(bursts):
    run(*plain(3), bursts)


def valid_frame(dst: bytes, src: bytes, length: int = 60, **fields) -> bytes:
    h = {"flags": 0, "gso_type": 0, "hdr_len": 0, "gso_size": 0, "csum_start": 0, "csum_offset": 0,
         **fields}
    return VNET.pack(*h.values()) + (dst + src + b"\x08\x00").ljust(length, b"\0")[:length]


SOME_FLAGS = [0, 1, 2, 4, 7, 8, 0x10, 0x40, 0x80, 0xFF]
SOME_GSO_TYPES = [0, 1, 2, 3, 4, 5, 6, 0x7F, 0x80, 0x81, 0x85, 0xFF]


def test_every_gso_type_and_every_flag_is_judged_as_the_fast_path_states():
    """Each of the 256 gso_type values with a few flags, each of the 256 flag
    values with a few gso_types, each with gso_size 0, under, at and over the MTU."""
    combos = {(f, g) for f in SOME_FLAGS for g in range(256)} | {(f, g) for f in range(256) for g in SOME_GSO_TYPES}
    frames = [valid_frame(b"\xff" * 6, HOSTS[0], 200, flags=f, gso_type=g, gso_size=size,
                          csum_start=34, csum_offset=16, hdr_len=66)
              for f, g in sorted(combos) for size in (0, 1448, 1500, 1501)]
    up, _mtu, conf, mirror = plain(3)
    run(up, [1500, 1500, 9000], conf, mirror, [(0, frames[i:i + BURST]) for i in range(0, len(frames), BURST)])


def test_lengths_around_the_buffer_with_a_tag_pushed_and_popped():
    """Frames up to and past TS_FRAME_MAX, from an access port to a trunk (tag
    pushed, if it fits) and back (tag popped)."""
    access, trunk = PortConf(pvid=2), PortConf(pvid=0, trunk=frozenset({2}))
    bursts = []
    for length in (VNET_LEN + ETH_HLEN + VLAN_HLEN, 1514 + VNET_LEN, FRAME_MAX - VLAN_HLEN - 1, FRAME_MAX - VLAN_HLEN,
                   FRAME_MAX - 1, FRAME_MAX, FRAME_MAX + 1, FRAME_MAX + 4096):
        eth_length = length - VNET_LEN
        data = valid_frame(HOSTS[1], HOSTS[0], eth_length, flags=1, gso_type=1, gso_size=1448,
                           csum_start=min(eth_length - 2, 0xFFFF), hdr_len=0xFFFF - VLAN_HLEN)
        bursts += [(0, [data]), (1, [tagged_reply(data, 2)])]
    run([True, True], [65521, 65521], [access, trunk], None, bursts)


def test_double_tagged_frames_cut_anywhere_under_rules_that_read_past_the_tags():
    """QinQ frames (an 802.1ad or an 802.1Q tag, then an 802.1Q tag) of IPv4
    and IPv6 TCP, cut at every length, from an access port and a trunk whose
    allow rules read the ethertype and the IP header behind both tags."""
    ipv4 = bytes.fromhex("45000028000100004006") + bytes(2) + bytes([198, 18, 0, 1, 198, 18, 0, 2])
    ipv6 = (bytes.fromhex("6000000000200040") + bytes.fromhex("fd00" + "00" * 13 + "01")
            + bytes.fromhex("fd00" + "00" * 13 + "02") + bytes([6, 0]) + bytes(6))    # hop-by-hop, then TCP
    tcp = bytes.fromhex("9c400016") + bytes(8) + bytes([0x50, 0x02]) + bytes(6)
    reads = (lib.TS_ACL_ETH_TYPE, lib.TS_ACL_IPV4 | lib.TS_ACL_IP_PROTO | lib.TS_ACL_DST_PORT,
             lib.TS_ACL_IPV6 | lib.TS_ACL_IP_SRC | lib.TS_ACL_SRC_PORT)
    acl = tuple((match, bytes(ACL_RULE)) for match in reads)
    conf = [PortConf(pvid=2, acl=acl), PortConf(pvid=1, trunk=frozenset({2}), acl=acl), PortConf(pvid=2)]
    bursts = []
    for port in (0, 1):
        frames = []
        for outer in (ETH_P_8021AD, ETH_P_8021Q):
            for ethertype, packet in ((0x0800, ipv4 + tcp), (0x86DD, ipv6 + tcp)):
                eth = (HOSTS[2] + HOSTS[port] + outer.to_bytes(2, "big") + (2).to_bytes(2, "big")
                       + ETH_P_8021Q.to_bytes(2, "big") + (200).to_bytes(2, "big")
                       + ethertype.to_bytes(2, "big") + packet)
                frames += [VNET.pack(0, 0, 0, 0, 0, 0) + eth[:n] for n in range(ETH_HLEN, len(eth) + 1)]
        bursts += [(port, frames[i:i + BURST]) for i in range(0, len(frames), BURST)]
    run([True] * 3, [1500] * 3, conf, None, bursts)


def tagged_reply(data: bytes, vid: int) -> bytes:
    """The frame the other way (HOSTS[1] to HOSTS[0]), tagged with vid."""
    out = bytearray(data)
    out[VNET_LEN:VNET_LEN + 12] = HOSTS[0] + HOSTS[1]
    out[VNET_LEN + 12:VNET_LEN + 12] = ETH_P_8021Q.to_bytes(2, "big") + vid.to_bytes(2, "big")
    shift_header(out, VLAN_HLEN)
    return bytes(out)


def test_tag_edits_at_every_edge():
    """Untagged, priority-tagged and tagged frames, at lengths around the MTU
    and the buffer, with hdr_len and csum_start around 4 and 0xFFFF, flooded
    between access ports, a trunk and a trunk whose native VLAN it is: each
    one forwarded as it is, pushed, popped, or given its VLAN's VID."""
    conf = [PortConf(pvid=2), PortConf(pvid=0, trunk=frozenset({2, 3})),
            PortConf(pvid=2, trunk=frozenset({3})), PortConf(pvid=3)]
    mtu = [1500, 1500, 9000, 65521]
    tcis = [None, 0x0000, 0xA000, 0x0002, 0xE002, 0x0003]
    lengths = [18, 60, 1514, 1515, 1517, 1518, 1519, 9018, 9019, L2_MAX - 4, L2_MAX - 3, L2_MAX]
    # flags, gso_type, hdr_len, csum_start (None: where the L2 header ends)
    headers = [(0, 0, 0, 0), (0, 0, 3, 0), (0, 0, 4, 0), (0, 0, 5, 0), (0, 0, 0xFFFB, 0), (0, 0, 0xFFFC, 0),
               (0, 0, 0, 0xFFFB), (0, 0, 0, 0xFFFC), (1, 0, 4, None), (1, 0, 0xFFFF, None), (1, 1, 66, None)]
    bursts = []
    for port in range(4):
        frames = []
        for tci in tcis:
            l2_len = ETH_HLEN + (VLAN_HLEN if tci is not None else 0)
            for length in lengths:
                for flags, gso_type, hdr_len, csum_start in headers:
                    eth = b"\xff" * 6 + HOSTS[port]
                    if tci is not None:
                        eth += ETH_P_8021Q.to_bytes(2, "big") + tci.to_bytes(2, "big")
                    eth = (eth + b"\x08\x00").ljust(length, b"\x5a")
                    header = VNET.pack(flags, gso_type, hdr_len, 1448 if gso_type else 0,
                                       l2_len if csum_start is None else csum_start, 0)
                    frames.append(header + eth)
        bursts += [(port, frames[i:i + BURST]) for i in range(0, len(frames), BURST)]
    run([True] * 4, mtu, conf, None, bursts)



# Found by scripts/fuzz.sh (seed 4104074204): a checksum starting inside the
# Ethernet header (NEEDS_CSUM, csum_start 0..13) was accepted untagged, and a
# tag push moved it to 4..17, where the same frame tagged is refused. Now such
# a checksum start is malformed at ingress, so no push can make one.
def test_a_pushed_tag_keeps_the_frame_well_formed():
    conf = [PortConf(pvid=3), PortConf(pvid=1, trunk=frozenset({3}))]
    data = VNET.pack(VNET_F_NEEDS_CSUM, 0, 0, 0, 0, 0) + HOSTS[0] + HOSTS[1] + b"\x08\x00"
    run([True, True], [1500, 1500], conf, None, [(0, [data])])

"""Random and mutated frames through the fast path, many per second, held to
what must hold of every frame whatever the switch decides -- no model.

tests/test_fuzz_fastpath.py checks each frame against a model of the switch,
at a few hundred examples a run. This driver throws frames at one worker
(its Switch harness: SOCK_SEQPACKET socketpairs through cffi) as fast as
Python makes them: plain random bytes; frames built as hosts send them
(virtio-net header, up to four 802.1Q or 802.1ad tags, IPv4, IPv6 or ARP,
TCP or UDP, GSO or not, the checksum where the header says); the
Hypothesis fuzzer's frames drawn from random bytes; and all of these mutated
-- bits flipped, header fields set to edge values, cut short, tags pushed or
popped, bytes inserted -- as are frames the switch sent, so that what it
forwards seeds what comes next. Ports are drawn too: up or down, MTUs, VLANs,
isolation, mirrors, ACL rules that allow or drop, MAC limits, storm control.

After every poll:
  - every frame read is counted once where it came in: rx_errors, or
    rx_packets and then dropped (rx_dropped), flooded, or sent to one port
    (one write, or one tx_errors, on that port);
  - each port got as many frames and bytes as its tx counters say, and no
    write was dropped (the harness sends no more than the queues hold);
  - every frame that came out is one the switch itself takes in (no
    rx_errors when sent back in): the check that found frames behind three
    802.1Q tags sent out of an access port in a form the switch refuses.
After every round of ports: nothing left unread, the MAC table's entries
as many as its ports count and as were learned. A crash, or under
scripts/fuzz.sh a sanitizer report, ends the run.

CI runs TAPSWITCH_FUZZ_FRAMES frames (default below) from a fixed seed, per
I/O backend. scripts/fuzz.sh runs it long with a fresh TAPSWITCH_FUZZ_SEED
each run; a failure names the seed and round (TAPSWITCH_FUZZ_ROUND replays
that round alone).
"""

import os
import random
import struct

from tapswitch._fastpath import lib
from tapswitch.fastpath import MIRROR_COUNTERS
from tests.fastpath_io import io_backend  # noqa: F401 (autouse: every test, every backend)
from tests.test_fuzz_fastpath import (BURST, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, FRAME_CHOICES, FRAME_MAX, GSO_SIZES,
                                      HOSTS, MACS, MTUS, TCIS, U16_EDGES, VLAN_HLEN, VNET, VNET_LEN, PortConf,
                                      Switch, decode_frame, decode_port, has_host_source)

SEED = int(os.environ.get("TAPSWITCH_FUZZ_SEED", "20261207"))
FRAMES = int(os.environ.get("TAPSWITCH_FUZZ_FRAMES", "4000"))
ROUND = os.environ.get("TAPSWITCH_FUZZ_ROUND")     # replay one round of SEED
ROUND_FRAMES = 600                                  # frames per round of ports (far fewer MACs than the table holds)
CORPUS = 512                                        # frames the switch sent, kept to mutate
RX_ONLY = ("rx_packets", "rx_bytes", "rx_errors", "rx_dropped", "flooded",
           "vlan_dropped", "acl_dropped", "mac_limit_dropped", "storm_dropped")
WHY_DROPPED = ("vlan_dropped", "acl_dropped", "mac_limit_dropped", "storm_dropped")

ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806
NEEDS_CSUM, GSO_ECN = 1, 0x80
GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 1, 3, 4, 5


# --- Frames ------------------------------------------------------------------

def ip_packet(rng: random.Random, version: int, proto: int, payload: int) -> tuple[bytes, int]:
    """An IPv4 or IPv6 packet (198.18.0.0/15, fd00::/8) of `proto` around a TCP or UDP header
    and `payload` bytes; and the transport header's offset in it. Its 16-bit lengths stop at
    0xFFFF: the switch reads none of them."""
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", rng.randrange(1024, 65536), 80, 0, 0, 0x50, 0x10, 0xFFFF, 0, 0)
    else:
        l4 = struct.pack("!HHHH", rng.randrange(1024, 65536), 53, min(8 + payload, 0xFFFF), 0)
    l4 += rng.randbytes(payload)
    if version == 4:
        ihl = rng.choice([5, 5, 5, 6, 15])
        head = struct.pack("!BBHHHBBH", 0x40 | ihl, 0, min(4 * ihl + len(l4), 0xFFFF), 1, 0, 64, proto, 0)
        return head + bytes([198, 18, 0, 1, 198, 19, 0, 2]) + bytes(4 * ihl - 20) + l4, 4 * ihl
    head = struct.pack("!IHBB", 6 << 28, min(len(l4), 0xFFFF), proto, 64) + bytes.fromhex("fd00" + "00" * 13 + "01") \
        + bytes.fromhex("fd00" + "00" * 13 + "02")
    return head + l4, 40


def payload_length(rng: random.Random) -> int:
    """Mostly short (cheap), some around the MTUs, a few up to a 64 KiB GSO frame."""
    r = rng.random()
    if r < 0.7:
        return rng.randrange(0, 200)
    if r < 0.9:
        return rng.choice([1400, 1448, 1460, 1480, 1500, 8948, 9000]) + rng.randrange(-8, 9)
    return rng.randrange(200, FRAME_MAX - VNET_LEN - 100)


def built(rng: random.Random) -> bytes:
    """A frame as a host sends it: its tags, a packet, and a virtio-net header that describes
    it (the GSO type of its packet, a checksum at its TCP or UDP header) -- or, now and then,
    one of another packet's."""
    tags = [rng.choice([ETH_P_8021Q, ETH_P_8021Q, ETH_P_8021Q, ETH_P_8021AD])
            for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 4]))]
    dst = rng.choice(MACS if rng.random() < 0.5 else HOSTS)
    eth = dst + (rng.choice(HOSTS) if rng.random() < 0.95 else rng.choice(MACS))
    for tpid in tags:
        eth += struct.pack("!HH", tpid, rng.choice(TCIS))
    kind = rng.choice(["ipv4", "ipv4", "ipv6", "ipv6", "arp", "other"])
    flags = gso_type = gso_size = csum_start = csum_offset = hdr_len = 0
    if kind in ("ipv4", "ipv6"):
        version = 4 if kind == "ipv4" else 6
        proto = rng.choice([6, 6, 17])
        packet, l4 = ip_packet(rng, version, proto, payload_length(rng))
        eth += struct.pack("!H", ETH_P_IP if version == 4 else ETH_P_IPV6) + packet
        csum_start = len(eth) - len(packet) + l4
        csum_offset = 16 if proto == 6 else 6
        flags = NEEDS_CSUM if rng.random() < 0.8 else rng.choice([0, 2])
        if rng.random() < 0.5:
            gso_type = (GSO_TCPV4 if version == 4 else GSO_TCPV6) if proto == 6 else GSO_UDP_L4
            if rng.random() < 0.1:
                gso_type = rng.choice([GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4])  # another packet's
            if proto == 6 and rng.random() < 0.1:
                gso_type |= GSO_ECN
            gso_size = rng.choice(GSO_SIZES) if rng.random() < 0.7 else rng.randrange(1, 0x10000)
        if rng.random() < 0.5:
            hdr_len = csum_start + (20 if proto == 6 else 8)
    else:
        eth += struct.pack("!H", ETH_P_ARP if kind == "arp" else rng.randrange(0x600, 0x10000))
        eth += rng.randbytes(max(0, 60 - len(eth)) + payload_length(rng) // 8)
    if not flags & NEEDS_CSUM:
        csum_start = csum_offset = 0
    return VNET.pack(flags, gso_type, min(hdr_len, 0xFFFF), gso_size, min(csum_start, 0xFFFF), csum_offset) + eth


def u16_edge(rng: random.Random) -> int:
    return rng.choice(U16_EDGES) if rng.random() < 0.7 else rng.randrange(0x10000)


def shift(data: bytearray, delta: int) -> None:
    """Move csum_start (with NEEDS_CSUM) and hdr_len (if set) as a tag pushed or popped does."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack_from(data)
    if flags & NEEDS_CSUM:
        csum_start = (csum_start + delta) & 0xFFFF
    if hdr_len:
        hdr_len = (hdr_len + delta) & 0xFFFF
    VNET.pack_into(data, 0, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three edits of the kinds that found the fast path's bugs before: a header
    field at an edge, a tag more or less (offsets moved with it, or not), a cut, a bit."""
    d = bytearray(data)
    mac_end = VNET_LEN + 2 * 6
    for _ in range(rng.choice([1, 1, 2, 3])):
        what = rng.randrange(10)
        if what == 0 and d:                                  # a bit of the headers
            i = rng.randrange(min(len(d), 128))
            d[i] ^= 1 << rng.randrange(8)
        elif what == 1 and len(d) >= VNET_LEN:               # a virtio-net header field
            field = rng.choice([(0, "B"), (1, "B"), (2, "H"), (4, "H"), (6, "H"), (8, "H")])
            value = rng.randrange(256) if field[1] == "B" else u16_edge(rng)
            struct.pack_into("=" + field[1], d, field[0], value)
        elif what == 2 and len(d) > 1:                       # cut short: in the headers, mostly
            d = d[:rng.randrange(1, min(len(d), mac_end + 7 * VLAN_HLEN) if rng.random() < 0.7 else len(d))]
        elif what == 3 and len(d) >= mac_end:                # push a tag
            d[mac_end:mac_end] = struct.pack("!HH", rng.choice([ETH_P_8021Q, ETH_P_8021AD]), rng.choice(TCIS))
            if rng.random() < 0.7:
                shift(d, VLAN_HLEN)
        elif what == 4 and len(d) >= mac_end + VLAN_HLEN:    # pop what follows the MACs
            del d[mac_end:mac_end + VLAN_HLEN]
            if rng.random() < 0.7:
                shift(d, -VLAN_HLEN)
        elif what == 5 and len(d) >= mac_end + 2:            # a type where a tag or the ethertype is
            i = mac_end + VLAN_HLEN * rng.randrange(5)
            if i + 2 <= len(d):
                struct.pack_into("!H", d, i, rng.choice([ETH_P_8021Q, ETH_P_8021AD, ETH_P_IP, ETH_P_IPV6, 0]))
        elif what == 6 and d:                                # bytes in, anywhere
            i = rng.randrange(len(d) + 1)
            d[i:i] = rng.randbytes(rng.choice([1, 2, 4]))
        elif what == 7:                                      # bytes on the end
            d += rng.randbytes(rng.choice([1, 4, 64]))
        elif what == 8 and len(d) >= mac_end:                # another destination or source
            at = VNET_LEN + rng.choice([0, 6])
            d[at:at + 6] = rng.choice(MACS) if rng.random() < 0.8 else rng.randbytes(6)
        elif what == 9 and len(d) >= VNET_LEN:               # a checksum starting in or near the tags
            d[0] |= NEEDS_CSUM if rng.random() < 0.7 else 0
            struct.pack_into("=H", d, 6, ETH_HLEN + VLAN_HLEN * rng.randrange(6) + rng.randrange(-2, 10))
    return bytes(d) or b"\0"


class Frames:
    """Where frames come from: random bytes, frames built, the Hypothesis fuzzer's frames,
    and mutations of those and of what the switch sent (corpus)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.corpus: list[bytes] = []

    def next(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.1:
            return rng.randbytes(rng.choice([rng.randrange(1, 40), rng.randrange(1, 400)]))
        if r < 0.3:
            return decode_frame(rng.randbytes(FRAME_CHOICES))
        if r < 0.55:
            return built(rng)
        seed = rng.choice(self.corpus) if self.corpus and rng.random() < 0.6 else built(rng)
        return mutate(rng, seed)

    def sent(self, frames: list[bytes]) -> None:
        for data in frames:
            if len(self.corpus) < CORPUS:
                self.corpus.append(data)
            else:
                self.corpus[self.rng.randrange(CORPUS)] = data


# --- Ports -------------------------------------------------------------------

def draw_ports(rng: random.Random):
    """Ports as the Hypothesis fuzzer draws them (decode_port), and settings it has no
    model of: ACL rules that drop, MAC limits, storm control, a frame_max."""
    n = rng.randint(2, 4)
    up = [rng.random() < 0.85 for _ in range(n)]
    mtu = [rng.choice(MTUS[:1] * 3 + MTUS) for _ in range(n)]
    mirror = rng.choice(["defaults", "monitor", "port", "none"])
    if mirror == "defaults":
        return up, mtu, [PortConf() for _ in range(n)], None
    mirror_to = n - 1 if mirror == "monitor" else rng.randrange(n) if mirror == "port" else None
    conf = [decode_port(rng.randbytes(16), monitor=(mirror == "monitor" and p == n - 1), has_mirror=mirror != "none")
            for p in range(n)]
    return up, mtu, conf, mirror_to


def more_settings(rng: random.Random, n: int):
    """An edit for Switch.configure: per port, maybe ACL rules that drop, a MAC limit, storm control."""
    def edit(t):
        for p in range(n):
            c = t.ports[p]
            for r in range(c.acl_rules):
                if rng.random() < 0.3:
                    t.acl[p][r].action = lib.TS_ACL_DROP
            if rng.random() < 0.2:
                c.flags |= lib.TS_PORT_MAC_LIMIT
                c.mac_limit = rng.randrange(4)
            if rng.random() < 0.2:
                # Each kind unlimited, or 1 to 4 frames a round (an interval of 1000 s): what
                # is dropped does not depend on how fast the round runs, so a round replays.
                c.flags |= lib.TS_PORT_STORM
                for kind in range(3):
                    c.storm_interval[kind] = rng.choice([0, 10 ** 12])
                    c.storm_burst[kind] = c.storm_interval[kind] * rng.randrange(4)
    return edit


# --- The checks --------------------------------------------------------------

def counted(sw: Switch, n: int) -> tuple[list[dict], dict]:
    return [sw.shared.queue_counters(p, 0) for p in range(n)], sw.shared.mirror_counters(0)


def check_poll(port: int, read: list[bytes], got: list[list[bytes]], before, after, mirror_to) -> None:
    """What one poll did, from the counters and the frames that came out (see the module's docstring)."""
    n = len(got)
    d = [{k: after[0][p][k] - before[0][p][k] for k in after[0][p]} for p in range(n)]
    mirror = {k: after[1][k] - before[1][k] for k in MIRROR_COUNTERS}
    c = d[port]
    assert c["rx_errors"] + c["rx_packets"] == len(read), f"{len(read)} frames read from port {port}, counted {c}"
    assert c["rx_bytes"] <= sum(max(0, len(f[:FRAME_MAX]) - VNET_LEN) for f in read), f"port {port}: rx_bytes {c}"
    assert c["rx_dropped"] >= sum(c[k] for k in WHY_DROPPED), f"port {port}: a reason to drop not in rx_dropped {c}"
    unicast = c["rx_packets"] - c["rx_dropped"] - c["flooded"]
    writes = sum(d[p]["tx_packets"] + d[p]["tx_errors"] + d[p]["tx_dropped"] for p in range(n))
    assert 0 <= unicast <= writes, f"port {port}: accepted frames neither dropped, flooded nor sent {c}"
    if not c["flooded"] and not any(mirror.values()):
        assert unicast == writes, f"port {port}: {writes} writes for {unicast} frames sent to one port"
    for p in range(n):
        if p != port:
            assert not any(d[p][k] for k in RX_ONLY), f"port {p} counted a frame it did not send: {d[p]}"
        assert d[p]["tx_dropped"] == 0, f"port {p}: a write dropped, the harness kept its queue from filling"
        assert len(got[p]) == d[p]["tx_packets"], f"port {p}: {len(got[p])} frames came out, tx_packets {d[p]}"
        assert sum(len(f) - VNET_LEN for f in got[p]) == d[p]["tx_bytes"], f"port {p}: tx_bytes {d[p]}"
    copies = got[mirror_to] if mirror_to is not None else []
    assert mirror["packets"] <= len(copies), f"mirror: {mirror}, {len(copies)} frames on its port"
    assert mirror["bytes"] <= sum(len(f) - VNET_LEN for f in copies), f"mirror: {mirror}"


def refused(check: Switch, frames: list[bytes]) -> list[bytes]:
    """Of `frames`, those the fast path refuses as malformed, sent into `check`: a switch of one
    port, down, which counts each frame (rx_errors, or rx_packets and rx_dropped) and sends none."""
    suspects, errors = [], check.shared.queue_counters(0, 0)["rx_errors"]
    for read in check.feed(0, frames, 1):
        now = check.shared.queue_counters(0, 0)["rx_errors"]
        if now != errors:
            suspects.append(read)
        errors = now
    # Which frames of a burst that counted errors: one at a time (once feed is done with the queue).
    return [f for read in suspects for f in (read if len(read) == 1 else [f for f in read if refused(check, [f])])]


def check_round(sw: Switch, n: int) -> None:
    assert lib.ts_worker_poll(sw.worker, 0) == 0, "frames left unread"
    table = sw.shared.fdb_dump()
    stats = sw.shared.fdb_stats()
    entries = [sw.shared.port_fdb_entries(p) for p in range(n)]
    assert sum(entries) == len(table), f"ports count {entries} entries, the table holds {len(table)}"
    for p in range(n):
        assert entries[p] == sum(1 for e in table if e[2] == p), f"port {p}: {entries[p]} entries counted"
    assert stats["learned"] == len(table) and stats["evicted"] == 0, f"{stats}, {len(table)} entries"
    for mac, vlan, port, _static, _seen in table:
        assert port < n and 1 <= vlan <= lib.TS_VLAN_MAX, f"entry {mac} vlan {vlan} port {port}"
        assert has_host_source(bytes(VNET_LEN + 6) + bytes.fromhex(mac.replace(":", ""))), f"learned {mac}"


def dump(frames: list[bytes]) -> str:
    return "\n".join(f"  {len(f):6} {f[:96].hex()}" for f in frames[:BURST])


def play(seed: int, r: int, budget: int) -> int:
    """Round r of seed: ports drawn, then frames until `budget`; returns the frames sent."""
    rng = random.Random(f"{seed}:{r}")
    frames = Frames(rng)
    up, mtu, conf, mirror_to = draw_ports(rng)
    n = len(up)
    sw, check = Switch(up, mtu, conf, mirror_to), Switch([False], [65521], [PortConf()], None)
    copies = 2 + n if mirror_to is not None else 1
    sent = 0
    try:
        sw.configure(conf, mirror_to, more_settings(rng, n))
        for p in range(n):
            if rng.random() < 0.2:
                sw.shared.set_port(p, lib.TS_PORT_UP if up[p] else lib.TS_PORT_DOWN, mtu[p],
                                   rng.choice([64, 1518, 1522, 9000]))
        while sent < budget:
            port = rng.randrange(n)
            burst = [frames.next() for _ in range(rng.choice([1, 4, 16, BURST, 2 * BURST]))]
            sent += len(burst)
            before = counted(sw, n)
            for read in sw.feed(port, burst, copies):
                after = counted(sw, n)
                got = [sw.received(p) for p in range(n)]
                try:
                    check_poll(port, read, got, before, after, mirror_to)
                    # (an rx mirror copies a frame from a bad source MAC too: rx_errors, rightly)
                    bad = refused(check, [f for g in got for f in g if has_host_source(f)])
                    if bad:
                        raise AssertionError("the switch sent frames it refuses itself:\n" + dump(bad))
                except AssertionError as e:
                    raise AssertionError(f"{e}\nround {r} of TAPSWITCH_FUZZ_SEED={seed} (again with "
                                         f"TAPSWITCH_FUZZ_ROUND={r}); ports up={up} mtu={mtu} mirror_to={mirror_to}\n"
                                         f"frames read from port {port} (bytes, first 96 in hex):\n"
                                         + dump(read)) from None
                frames.sent([f for g in got for f in g])
                before = after
        check_round(sw, n)
    finally:
        sw.close()
        check.close()
    return sent


def test_random_and_mutated_frames_are_each_counted_and_come_out_as_the_switch_takes_them():
    rounds = [int(ROUND)] if ROUND is not None else range(10 ** 9)
    left = FRAMES
    for r in rounds:
        if left <= 0:
            break
        left -= play(SEED, r, min(ROUND_FRAMES, left))

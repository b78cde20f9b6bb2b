"""The cases (after RFC 2544 and RFC 2889): each is one small function over a system already set up.

A case is declared once in CASES: how many hosts it needs, which system
variants it runs on, what the systems are set up with, and the function. The
function gets (ctx, system, hosts) and returns measurements; it never knows
which system it drives. Adding a case touches nothing else.
"""

import time
from dataclasses import dataclass, field

import traffic
from traffic import RANGE_TOP, eth_frame, learn_all, mac_range, trafgen, udp_frame

HIGHER, LOWER = "higher", "lower"


@dataclass
class Measure:
    metric: str              # e.g. "Mpps, 64 B"
    unit: str
    value: float
    better: str = HIGHER


@dataclass
class Case:
    id: str                  # for --cases
    name: str                # row label in RESULTS.md
    hosts: int
    fn: object               # fn(ctx, system, hosts) -> list[Measure]
    tapswitch_queues: tuple = (1,)   # which tapswitch variants run it
    fdb_size: int = 8192
    reps: int | None = None  # None: ctx.reps
    params: dict = field(default_factory=dict)
    bare: bool = False       # the bare forwarder runs it too (two hosts, no table asked for)
    tools: tuple = ()        # the commands it runs (cc: it sends paced frames, bench/pacer.c)

    def runs_on(self, system) -> bool:
        if system.kind == "bare":
            return self.bare
        return system.kind != "tapswitch" or system.queues in self.tapswitch_queues


@dataclass
class Ctx:
    lab: object
    quick: bool
    reps: int
    tcp_seconds: float
    frame_seconds: float
    sizes: list[int]
    fdb_ns: list[int]          # address counts for the caching case
    learn_n: int               # new addresses for the learning-rate case
    learn_rate_pps: int        # pace of the caching case's learn and reach phases
    search_steps: int = 6      # the throughput case's binary search (THROUGHPUT_STEPS unless --search-steps)
    payload: str = "raw"       # raw (ethertype 0x88b5) | udp: the forwarding-rate frames
    cc: str | None = None      # TCP congestion control of the endpoints (None: their namespace's default)
    cc_used: set = field(default_factory=set)  # what iperf3's senders reported using


def test_frame(ctx: Ctx, a, b, size: int) -> str:
    """The frame of the forwarding-rate runs: IEEE local experimental (the receiver's stack drops it at
    once, so the receiver costs the same little on every system), or IPv4/UDP to the discard port
    (RFC 2544's; the receiver then answers ICMP port unreachable, rate-limited but route-looked-up for
    every frame, in whichever context delivers the frame)."""
    return udp_frame(a, b, size) if ctx.payload == "udp" else eth_frame(b.mac, a.mac, size)


def tcp(ctx: Ctx, system, hosts) -> list[Measure]:
    """TCP goodput host 0 -> host 1, one flow and four (iperf3)."""
    a, b = hosts[0], hosts[1]
    fw = system.forwarding_pids()
    out = []
    for streams in (1, 4):
        cpu0, t0 = traffic.cpu_seconds(fw), time.monotonic()
        r = traffic.iperf3(ctx.lab, a, b, ctx.tcp_seconds, streams, congestion=ctx.cc)
        cpu, wall = traffic.cpu_seconds(fw) - cpu0, time.monotonic() - t0
        ctx.cc_used.add(r["congestion"])
        flows = f"{streams} flow{'s' if streams > 1 else ''}"
        out.append(Measure(f"TCP goodput, {flows}", "Gbit/s", r["bps"] / 1e9))
        if fw:
            out.append(Measure(f"switch CPU while TCP runs, {flows}", "% of a CPU", 100 * cpu / wall, LOWER))
    return out


def frames(ctx: Ctx, system, hosts) -> list[Measure]:
    """Forwarding rate (RFC 2544 26.1 at the generator's full speed): one flow of UDP frames per size."""
    a, b = hosts[0], hosts[1]
    out = []
    for size in ctx.sizes:
        fw = system.forwarding_pids()
        cpu0 = traffic.cpu_seconds(fw)
        s = trafgen(ctx.lab, a, [b], test_frame(ctx, a, b, size), seconds=ctx.frame_seconds)
        cpu1 = traffic.cpu_seconds(fw)
        out.append(Measure(f"forwarding rate, {size} B", "Mpps", s.rate_pps[b.index] / 1e6))
        out.append(Measure(f"loss at full offered rate, {size} B", "%", 100 * s.loss(b.index), LOWER))
        if fw and size == 64:
            out.append(Measure("switch CPU per forwarded frame, 64 B", "µs",
                               1e6 * (cpu1 - cpu0) / max(1, s.received[b.index]), LOWER))
    return out


LIGHT_RATES = (1_000, 10_000, 100_000)     # frames per second: a quiet port, a busy one, a loaded one


def light(ctx: Ctx, system, hosts) -> list[Measure]:
    """CPU at a light load: what the switch's own processes spend forwarding 64 B frames sent evenly
    at a rate far under what it can do -- the price of waking per frame, or of not sleeping. Nothing
    for a switch with no processes of its own (the bridge forwards in the sender's context)."""
    a, b = hosts[0], hosts[1]
    fw = system.forwarding_pids()
    if not fw:
        return []
    out = []
    for rate in LIGHT_RATES:
        cpu0 = traffic.cpu_seconds(fw)
        s = traffic.paced(ctx.lab, a, [b], rate, da=b.mac, sa=a.mac, seconds=ctx.frame_seconds, settle=0)
        cpu = traffic.cpu_seconds(fw) - cpu0
        out.append(Measure(f"switch CPU at {rate // 1000}k frames/s, 64 B", "% of a CPU",
                           100 * cpu / s.seconds, LOWER))
    return out


THROUGHPUT_LOSS = 0.001       # RFC 2544 asks for none; 0.1 %, the bar, forgives a stray frame
THROUGHPUT_STEPS = 6          # binary search: the rate to within 1/64 of the generator's full speed (Ctx.search_steps)


def throughput(ctx: Ctx, system, hosts) -> list[Measure]:
    """Throughput (RFC 2544 26.1): the highest offered rate of 64 B frames forwarded with loss under
    0.1 %, by binary search between nothing and the generator's full speed on this topology."""
    a, b = hosts[0], hosts[1]
    frame = eth_frame(b.mac, a.mac, 64)
    seconds = ctx.frame_seconds
    full = trafgen(ctx.lab, a, [b], frame, seconds=seconds)
    top = full.offered / full.sending
    if full.loss(b.index) < THROUGHPUT_LOSS:
        best, best_loss = full.rate_pps[b.index], full.loss(b.index)    # the generator is the limit
    else:
        lo, hi, best, best_loss = 0.0, top, 0.0, float("nan")
        for _ in range(ctx.search_steps):
            rate = (lo + hi) / 2
            s = traffic.paced(ctx.lab, a, [b], rate, da=b.mac, sa=a.mac, seconds=seconds)
            if s.loss(b.index) < THROUGHPUT_LOSS:
                lo, best, best_loss = rate, s.rate_pps[b.index], s.loss(b.index)
            else:
                hi = rate
    return [Measure("throughput (loss < 0.1 %), 64 B", "Mpps", best / 1e6),
            Measure("loss at that rate, 64 B", "%", 100 * best_loss, LOWER)]


def count(n: int) -> str:
    """An address count as the table says it: 256, 16K, 1536K, 1M, 1000."""
    for shift, unit in ((20, "M"), (10, "K")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def caching(ctx: Ctx, system, hosts) -> list[Measure]:
    """Address caching capacity (RFC 2889 5.7): N source MACs learned on port A, then reached from B;
    every frame the switch did not know its way for is flooded, and so counted at listener C."""
    a, b, c = hosts[0], hosts[1], hosts[2]
    out = []
    first = 1
    for n in ctx.fdb_ns:
        macs, fresh = mac_range(first, n), ("src", first, n)     # fresh addresses for every N
        first += n
        base = system.fdb_count()
        # Learn: N sources on A, all to B (known), paced evenly so that no frame is lost before the switch.
        learn = traffic.paced(ctx.lab, a, [b, c], ctx.learn_rate_pps, da=b.mac, sa=RANGE_TOP,
                              count=n, vary=fresh, settle=0.5)
        learned = system.fdb_count() - base
        # Reach: one frame to each of them from B, at the same pace; floods reach C.
        reach = traffic.paced(ctx.lab, b, [a, c], ctx.learn_rate_pps, da=RANGE_TOP, sa=b.mac,
                              count=n, vary=("dst", *fresh[1:]), settle=0.5)
        flooded = reach.received[c.index]
        held = max(0, reach.offered - flooded)
        # Forwarding rate across N destinations at full speed (the table's cost, cache misses included).
        fwd = trafgen(ctx.lab, b, [a, c], eth_frame(macs, b.mac), seconds=ctx.frame_seconds)
        label = f"{count(n)} MACs"
        out += [
            Measure(f"learned, {label}", "% of N", 100 * learned / n),
            Measure(f"reached without flooding, {label}", "% of N", 100 * held / max(1, reach.offered)),
            Measure(f"flooded to the listener, {label}", "frames", flooded, LOWER),
            Measure(f"learn-phase loss, {label}", "%", 100 * learn.loss(b.index), LOWER),
            Measure(f"forwarding rate to {label}, 64 B", "Mpps", fwd.rate_pps[a.index] / 1e6),
        ]
    return out


def learning(ctx: Ctx, system, hosts) -> list[Measure]:
    """Learning rate (RFC 2889 5.8): new source MACs at the generator's full speed; how many per second
    end up in the table."""
    a, b = hosts[0], hosts[1]
    n = ctx.learn_n
    base = system.fdb_count()
    s = trafgen(ctx.lab, a, [b], eth_frame(b.mac, mac_range(1, n)), count=n, settle=0.5)
    learned = system.fdb_count() - base
    return [Measure("new MACs learned per second", "M/s", learned / s.sending / 1e6),
            Measure("learned of offered at full speed", "%", 100 * learned / n)]


def broadcast(ctx: Ctx, system, hosts) -> list[Measure]:
    """Broadcast forwarding (RFC 2889 5.10): host 0 sends 64 B broadcast frames; every other host listens."""
    a, listeners = hosts[0], hosts[1:]
    s = trafgen(ctx.lab, a, listeners, eth_frame("ff:ff:ff:ff:ff:ff", a.mac), seconds=ctx.frame_seconds)
    rates = sorted(s.rate_pps[h.index] for h in listeners)
    total = sum(s.received.values())
    loss = 1 - total / (s.offered * len(listeners)) if s.offered else float("nan")
    n = len(listeners)
    return [Measure(f"broadcast to {n} ports, per listener (median)", "Mpps", rates[len(rates) // 2] / 1e6),
            Measure(f"broadcast to {n} ports, all listeners", "Mpps", sum(rates) / 1e6),
            Measure(f"broadcast to {n} ports, loss", "%", 100 * max(0.0, loss), LOWER)]


def resources(ctx: Ctx, system, hosts) -> list[Measure]:
    """16 ports (tapswitch: 2 queues, 1M-entry table): time to READY, memory (PSS, every process),
    and CPU per forwarded 64 B frame in the switch's processes and in the whole machine."""
    a, b = hosts[0], hosts[1]
    out = [Measure(f"start to forwarding, {len(hosts)} ports", "s", system.setup_seconds, LOWER)]
    pids = system.pids()
    if pids:
        out.append(Measure(f"memory (PSS, all processes), {len(hosts)} ports", "MB",
                           traffic.pss_bytes(pids) / 1e6, LOWER))
    fw = system.forwarding_pids()
    cpu0, busy0 = traffic.cpu_seconds(fw), traffic.machine_busy_seconds()
    s = trafgen(ctx.lab, a, [b], test_frame(ctx, a, b, 64), seconds=ctx.frame_seconds)
    cpu1, busy1 = traffic.cpu_seconds(fw), traffic.machine_busy_seconds()
    frames_ = max(1, s.received[b.index])
    if fw:
        out.append(Measure("switch CPU per forwarded 64 B frame", "µs", 1e6 * (cpu1 - cpu0) / frames_, LOWER))
    out.append(Measure("machine CPU per forwarded 64 B frame (generator included)", "µs",
                       1e6 * (busy1 - busy0) / frames_, LOWER))
    return out


def cases(ctx: Ctx | None = None) -> list[Case]:
    """Every case, in order; without ctx, for their ids and names (the table sizes are then the least)."""
    fdb_big = max(1 << 20, max(ctx.fdb_ns, default=0), ctx.learn_n) if ctx else 1 << 20
    return [
        Case("tcp", "TCP goodput", 2, tcp, tapswitch_queues=(1, 2), bare=True, tools=("iperf3", "ss")),
        Case("frames", "forwarding rate", 2, frames, bare=True, tools=("trafgen",)),
        Case("throughput", "throughput (RFC 2544)", 2, throughput, bare=True, tools=("trafgen", "cc")),
        Case("light", "light load", 2, light, bare=True, tools=("cc",)),
        Case("caching", "address caching", 3, caching, fdb_size=fdb_big, tools=("trafgen", "cc")),
        Case("learning", "learning rate", 2, learning, fdb_size=fdb_big, tools=("trafgen",)),
        Case("broadcast4", "broadcast, 4 ports", 5, broadcast, tools=("trafgen",)),
        Case("broadcast8", "broadcast, 8 ports", 9, broadcast, tools=("trafgen",)),
        Case("resources", "resources", 16, resources, tapswitch_queues=(2,), fdb_size=1 << 20, tools=("trafgen",)),
    ]


def prepare(ctx: Ctx, case: Case, system, hosts) -> None:
    """Before a case: every host's MAC is in the table (a ping each way)."""
    learn_all(hosts)

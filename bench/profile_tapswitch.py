"""Where the time goes: profile tapswitch's worker during a 64 B run and a TCP run.

    python bench/profile_tapswitch.py [--out bench/out] [--seconds 8]
    (or python bench/run.py --profile, after the comparison)

Writes OUT/PROFILE.md: the worker's top symbols (perf, cpu-clock: this VM has
no hardware counters), syscalls per forwarded frame (raw_syscalls tracepoints),
the average frame size the worker moved during TCP and whether frames over
the MTU reach the receiver (tcpdump -e on its eth1: GSO end to end), where the
worker, the generator and iperf3 ran (CPU placement, and a TCP A/B with
pinning), and what the control process does meanwhile (py-spy, its CPU time).
The traffic of each run is timed; on a busy machine perf's start alone can outlast
it, so a run whose traffic ended before the worker's record is done again with its
traffic twice as long (three tries; the report then says what its figures miss).
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import traffic                              # noqa: E402
from cases import Ctx, test_frame          # noqa: E402
from lab import Lab, nsexec, sh            # noqa: E402
from systems import Tapswitch              # noqa: E402

SYSCALLS = ["raw_syscalls:sys_enter", "syscalls:sys_enter_read", "syscalls:sys_enter_write",
            "syscalls:sys_enter_epoll_wait"]


def perf_works() -> bool:
    return shutil.which("perf") is not None and \
        subprocess.run(["perf", "stat", "-e", "cpu-clock", "true"], capture_output=True).returncode == 0


def py_spy_path() -> str | None:
    """py-spy on PATH, or beside this interpreter: pip installs it into a venv's bin/, which a
    venv's python run without activating the venv does not put on PATH."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))


def top_symbols(data: str, limit: int = 18) -> list[tuple[float, str]]:
    r = sh("perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,symbol", "-g", "none",
           "--percent-limit", "0.8", check=False, timeout=300)
    out = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.+?)\s*$", line)
        if m:
            sym = re.sub(r"(\s+-)+$", "", m.group(4)).strip()
            out.append((float(m.group(1)), f"{sym} ({'kernel' if m.group(3) == 'k' else m.group(2)})"))
    return out[:limit]


# Where a worker's time goes, by what it called: each row a kernel function and the share of the
# worker's samples with it on the stack (what it calls included), as "Where the time goes" in
# RESULTS.md has it. Rows overlap where one calls another ("..." rows are inside the row above).
WORKER_PARTS = [
    ("TAP reads", "tun_chr_read_iter"),
    ("... the copy out", "skb_copy_datagram_iter"),
    ("... freeing the sender's skb", "consume_skb"),
    ("TAP writes", "tun_chr_write_iter"),
    ("... the copy in", "skb_copy_datagram_from_iter"),
    ("... the receiving host's stack", "netif_receive_skb"),
    ("softirqs run on the worker's CPU (timers, the hosts' stacks)", "handle_softirqs"),
    ("waiting for frames (epoll)", "__x64_sys_epoll_pwait"),
]
URING, SYSCALLS_ALL = "__do_sys_io_uring_enter", "entry_SYSCALL_64_after_hwframe"


def inclusive(data: str, symbols: list[str]) -> dict[str, float]:
    """{symbol: % of the samples with it on the stack} (perf report --children); 0.0 when absent."""
    r = sh("perf", "report", "-i", data, "--stdio", "--children", "--sort", "symbol", "-g", "none",
           "--percent-limit", "0", check=False, timeout=300)
    found = {}
    for line in r.stdout.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+[\d.]+%\s+\[.\]\s+(\S+)", line)
        if m and m.group(2) in symbols and m.group(2) not in found:
            found[m.group(2)] = float(m.group(1))
    return {s: found.get(s, 0.0) for s in symbols}


def parts_table(data: str) -> list[str]:
    """The worker's time by part; io_uring's own is its system call less the TAP reads and writes
    it issues, and what is left outside system calls is tapswitch's C (and interrupts taken there)."""
    sh_ = inclusive(data, [sym for _label, sym in WORKER_PARTS] + [URING, SYSCALLS_ALL])
    rows = [(label, f"`{sym}`", sh_[sym]) for label, sym in WORKER_PARTS]
    rows.append(("io_uring's own work", f"`{URING}` less the reads and writes",
                 sh_[URING] - sh_["tun_chr_read_iter"] - sh_["tun_chr_write_iter"]))
    rows.append(("outside system calls (tapswitch's C)", f"100 less `{SYSCALLS_ALL}`", 100 - sh_[SYSCALLS_ALL]))
    return ["| part | kernel function (with what it calls) | % of the worker |", "|---|---|---:|",
            *[f"| {label} | {what} | {pc:.1f} |" for label, what, pc in rows]]


def split_by_comm(data: str) -> list[tuple[float, str]]:
    r = sh("perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "comm", "-g", "none",
           "--percent-limit", "1", check=False, timeout=300)
    return [(float(m.group(1)), m.group(2)) for m in
            (re.match(r"\s+([\d.]+)%\s+(.+?)\s*$", line) for line in r.stdout.splitlines()) if m]


def syscall_counts(pid: int, seconds: float) -> dict[str, int]:
    r = sh("perf", "stat", "-x", ",", "-e", ",".join(SYSCALLS), "-p", pid, "--", "sleep", seconds,
           check=False, timeout=seconds + 30)
    counts = {}
    for line in r.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].strip().isdigit():
            counts[parts[2].split(":")[-1]] = int(parts[0])
    return counts


def switch_counters(sw: Tapswitch) -> dict[str, int]:
    """Frames and bytes the switch sent, all ports (from /metrics: quick, so the window stays tight)."""
    return {"tx_packets": int(sw.metric("tapswitch_port_tx_packets_total")),
            "tx_bytes": int(sw.metric("tapswitch_port_tx_bytes_total"))}


def wait_for_traffic(sw: Tapswitch, before: int, within: float = 30.0) -> None:
    """Wait until the switch has sent 1000 frames more than `before`, its count before the
    generator started: it is sending (its start, iperf3's server's before it, can take a second or
    more on a loaded machine). The lab's own chatter (neighbour discovery) is a few frames."""
    deadline = time.monotonic() + within
    while switch_counters(sw)["tx_packets"] < before + 1000 and time.monotonic() < deadline:
        time.sleep(0.05)


def psr(pid: int) -> str:
    r = sh("ps", "-L", "-o", "psr=", "-p", pid, check=False)
    return ",".join(sorted(set(r.stdout.split()))) or "?"


def in_background(fn, *a, **kw):
    """Run fn in a thread: what it returns goes in box["r"], and when it returned in box["ended"]
    (time.monotonic())."""
    box = {}

    def run():
        try:
            box["r"] = fn(*a, **kw)
        finally:
            box["ended"] = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


class Profiler:
    def __init__(self, lab: Lab, out_dir: str, seconds: float, log=print, cc: str | None = None):
        self.lab, self.out_dir, self.seconds, self.log = lab, out_dir, seconds, log
        self.cc = cc                # the TCP runs' congestion control (None: the endpoints' default)
        self.md: list[str] = []

    def data(self, name: str) -> str:
        return os.path.join(self.lab.dir, name)

    def record(self, pid: int | None, name: str, seconds: float) -> str:
        path = self.data(name)
        target = ["-p", str(pid)] if pid else ["-a"]
        sh("perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-g", *target, "-o", path, "--",
           "sleep", seconds, check=False, timeout=seconds + 60)
        return path

    def while_traffic(self, section, sw: Tapswitch, hosts) -> None:
        """Run `section` until its traffic, which runs for a set time, outlasts its record of the
        worker. Each step before it (perf's start above all) can take a second longer on a loaded
        machine than on an idle one, and a record made after the traffic ended holds no sample of it
        (an idle worker waits in epoll, off the CPU): "TAP reads 0.0 %". Each try runs the traffic
        twice as long as the one before; after the third, the report says its figures miss it."""
        mark = len(self.md)
        for stretch in (1, 2, 4):
            del self.md[mark:]
            if section(sw, hosts, stretch):
                return
            self.log(f"profile: {section.__name__}: the traffic ended before the worker's record did")
        self.md += ["The traffic ended before the worker's record did (a busy machine): the figures above "
                    "miss part of it, or all.", ""]

    def section_frames(self, sw: Tapswitch, hosts, stretch: int = 1) -> bool:
        """64 B frames; whether the traffic ran past the worker's record (the traffic runs `stretch` times
        its usual time)."""
        a, b = hosts[0], hosts[1]
        w = sw.forwarding_pids()[0]
        p = self.seconds / 4
        ctx = Ctx(lab=self.lab, quick=True, reps=1, tcp_seconds=0, frame_seconds=0, sizes=[64], fdb_ns=[],
                  learn_n=0, learn_rate_pps=0)
        before, started = switch_counters(sw)["tx_packets"], time.monotonic()
        t, box = in_background(traffic.trafgen, self.lab, a, [b], test_frame(ctx, a, b, 64),
                               seconds=(self.seconds + 2 * p) * stretch)
        wait_for_traffic(sw, before)
        time.sleep(p)
        c0 = switch_counters(sw)
        sc = syscall_counts(w, p)
        c1 = switch_counters(sw)
        placement = {"worker": psr(w)}
        tg = sh("pgrep", "-x", "trafgen", check=False).stdout.split()
        placement["trafgen"] = ",".join(psr(int(x)) for x in tg) or "?"
        worker_rec = self.record(w, "w64.data", p)
        recorded = time.monotonic()
        all_rec = self.record(None, "all64.data", p)     # may outlast the traffic (the worker's may not)
        t.join()
        sent = box.get("r")
        frames = max(1, c1["tx_packets"] - c0["tx_packets"])
        self.md += ["### 64 B frames, one worker (tapswitch-q1)", ""]
        if sent:
            self.md.append(f"Rate received {sent.rate_pps[b.index] / 1e6:.3f} Mpps, offered "
                           f"{sent.offered / sent.seconds / 1e6:.3f} Mpps, loss {100 * sent.loss(b.index):.1f} %.")
        self.md.append(f"Syscalls of the worker per forwarded frame over {p:g} s ({frames} frames): "
                       + ", ".join(f"{k} {v / frames:.2f}" for k, v in sc.items()) + ".")
        self.md.append(f"CPU placement (psr): {placement}.")
        self.md += ["", "Worker, top symbols (self time):", "", "| % | symbol |", "|---:|---|"]
        self.md += [f"| {pc:.1f} | `{s}` |" for pc, s in top_symbols(worker_rec)]
        self.md += ["", "Worker, by what it called:", "", *parts_table(worker_rec)]
        self.md += ["", "Whole machine, by command:", "", "| % | command |", "|---:|---|"]
        self.md += [f"| {pc:.1f} | {c} |" for pc, c in split_by_comm(all_rec)]
        self.md += [""]
        # trafgen sent until `sent.seconds` after `started`, or a moment before (its exit; the wait for
        # the frames still queued is not in it). It failed: another run would not do better.
        return not sent or recorded < started + sent.seconds

    def section_tcp(self, sw: Tapswitch, hosts, stretch: int = 1) -> bool:
        """TCP, one flow; whether the traffic ran past the worker's record (as section_frames)."""
        a, b = hosts[0], hosts[1]
        w = sw.forwarding_pids()[0]
        p = self.seconds / 4
        ctrl0 = traffic.cpu_seconds([sw.proc.pid])
        before = switch_counters(sw)["tx_packets"]
        t, box = in_background(traffic.iperf3, self.lab, a, b, (self.seconds + 2 * p) * stretch, 1,
                               congestion=self.cc)
        wait_for_traffic(sw, before)
        time.sleep(p)
        c0 = switch_counters(sw)
        sc = syscall_counts(w, p)
        c1 = switch_counters(sw)
        placement = {"worker": psr(w)}
        for name in ("iperf3",):
            placement[name] = ",".join(psr(int(x)) for x in sh("pgrep", "-x", name, check=False).stdout.split())
        dump = {}
        for h, side in ((a, "sender"), (b, "receiver")):
            r = nsexec(h.ns, "timeout", "3", "tcpdump", "-e", "-n", "-i", h.ifname, "-c", "2000", "-s", "96",
                       "tcp", check=False, timeout=10)
            lens = [int(m) for m in re.findall(r"length (\d+):", r.stdout)]
            dump[side] = (len(lens), sum(1 for n in lens if n > 1514), max(lens, default=0))
        worker_rec = self.record(w, "wtcp.data", p)
        recorded = time.monotonic()
        spy = self.py_spy(sw.proc.pid, p)
        t.join()
        ctrl1 = traffic.cpu_seconds([sw.proc.pid])
        res = box.get("r") or {}
        frames = max(1, c1["tx_packets"] - c0["tx_packets"])
        avg = (c1["tx_bytes"] - c0["tx_bytes"]) / frames
        self.md += ["### TCP, one flow (tapswitch-q1, iperf3)", ""]
        if res:
            self.md.append(f"Goodput {res['bps'] / 1e9:.2f} Gbit/s, retransmits {res['retransmits']}.")
        self.md.append(f"Frames the worker forwarded: {frames / p / 1e3:.0f} k/s, average {avg:,.0f} bytes "
                       "(Ethernet, vnet header excluded).")
        self.md.append("Syscalls of the worker per forwarded frame: "
                       + ", ".join(f"{k} {v / frames:.2f}" for k, v in sc.items()) + ".")
        for side, (n, big, mx) in dump.items():
            self.md.append(f"tcpdump -e on the {side}'s eth1: {n} TCP frames, {big} longer than 1514 bytes, "
                           f"longest {mx}.")
        self.md.append(f"CPU placement (psr): {placement}.")
        self.md.append(f"Control process CPU over the whole run: {ctrl1 - ctrl0:.3f} s.")
        self.md += ["", "Worker, top symbols (self time):", "", "| % | symbol |", "|---:|---|"]
        self.md += [f"| {pc:.1f} | `{s}` |" for pc, s in top_symbols(worker_rec)]
        self.md += ["", "Worker, by what it called:", "", *parts_table(worker_rec)]
        self.md += ["", f"Control process (py-spy, {p:g} s): {spy}", ""]
        return not res or recorded < box["ended"]       # iperf3 returns as its client ends

    def py_spy(self, pid: int, seconds: float) -> str:
        spy = py_spy_path()
        if not spy:
            return "py-spy not installed (pip install py-spy)"
        path = self.data("spy.txt")
        r = sh(spy, "record", "-p", pid, "-d", max(1, int(seconds)), "-r", "100", "--format", "raw",
               "-o", path, "--nonblocking", check=False, timeout=seconds + 60)
        if not os.path.exists(path):
            return f"py-spy failed: {r.stderr.strip()[-200:]}"
        stacks = {}
        total = 0
        with open(path) as f:
            for line in f:
                stack, _, n = line.rstrip().rpartition(" ")
                total += int(n)
                leaf = stack.split(";")[-1]
                stacks[leaf] = stacks.get(leaf, 0) + int(n)
        top = sorted(stacks.items(), key=lambda kv: -kv[1])[:4]
        if not total:
            return "no sample off idle: the control process sleeps in select() between its 1 s ticks"
        return f"{total} samples off idle; top leaves: " + "; ".join(f"`{k}` {v}" for k, v in top)

    def section_placement(self, sw: Tapswitch, hosts) -> None:
        """TCP one flow with the worker and iperf3 pinned in different ways (iperf3 -A client,server)."""
        a, b = hosts[0], hosts[1]
        w = sw.forwarding_pids()[0]
        rows = []
        for label, wcpu, aff in (("not pinned", None, None),
                                 ("worker CPU 1, iperf3 client and server CPU 0", 1, "0,0"),
                                 ("worker CPU 0, iperf3 client and server CPU 1", 0, "1,1"),
                                 ("everything on CPU 0", 0, "0,0"),
                                 ("worker CPU 1, client CPU 0, server CPU 1", 1, "0,1")):
            sh("taskset", "-pc", "0-1" if wcpu is None else str(wcpu), w)
            r = traffic.iperf3(self.lab, a, b, self.seconds / 2, 1, affinity=aff, congestion=self.cc)
            rows.append(f"| {label} | {r['bps'] / 1e9:.2f} |")
        sh("taskset", "-pc", "0-1", w)
        self.md += ["### CPU placement, TCP one flow (tapswitch-q1)", "", "| placement | Gbit/s |", "|---|---:|",
                    *rows, ""]

    def run(self) -> None:
        if not perf_works():
            self.md += ["perf is not usable here (apt-get install linux-perf); nothing profiled.", ""]
            return
        sw = Tapswitch(self.lab, 1)
        hosts = self.lab.hosts(2)
        try:
            sw.setup(hosts)
            traffic.learn_all(hosts)
            for section in (self.section_frames, self.section_tcp, self.section_placement):
                self.log(f"profile: {section.__name__}")
                try:
                    if section == self.section_placement:
                        section(sw, hosts)
                    else:
                        self.while_traffic(section, sw, hosts)
                except Exception as e:
                    self.md += [f"{section.__name__} failed: {e}", ""]
        finally:
            sw.teardown()
            self.lab.drop_hosts(hosts)


def run(lab: Lab, ctx, out_dir: str, log=print, seconds: float = 8.0) -> str:
    prof = Profiler(lab, out_dir, seconds, log, cc=ctx.cc if ctx else None)
    prof.md += ["## Where the time goes (measured by bench/profile_tapswitch.py)", ""]
    if shutil.which("perf"):        # else run() says perf is not usable
        prof.md += [f"perf {sh('perf', '--version', check=False).stdout.strip()}, event cpu-clock "
                    "(`perf stat -e instructions true` says <not supported>: no PMU in this VM).", ""]
    prof.run()
    path = os.path.join(out_dir, "PROFILE.md")
    with open(path, "w") as f:
        f.write("\n".join(prof.md) + "\n")
    log(f"wrote {path}")
    return path


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/profile_tapswitch.py")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lab = Lab(f"bn{uuid.uuid4().hex[:4]}")
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        run(lab, None, args.out, seconds=args.seconds)
    except KeyboardInterrupt:
        return 130
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

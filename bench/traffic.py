"""Traffic: trafgen (netsniff-ng) for frames, iperf3 for TCP, and the counters that judge them.

Frame sizes follow RFC 2544: a "64-byte frame" counts the 4-byte FCS that a
TAP or a veth never carries, so trafgen writes size - 4 bytes. Test frames
are IPv4/UDP to the discard port of the receiver (RFC 2544 appendix C), or
IEEE local-experimental (0x88b5) frames when only MACs matter.

trafgen runs with one process (--cpus 1, so on CPU 0), its TX ring and the
qdisc bypassed (its default), and without touching the machine's socket
memory or IRQ settings (--no-sock-mem -Q). The truth for what arrived is the receiving
host's interface counter (/sys/class/net/eth1/statistics/rx_packets inside its
namespace); what was offered is the sending host's tx_packets + tx_dropped
(a TAP or veth whose queue is full drops and counts there).

Paced runs (the throughput case) use bench/pacer.c instead, built with cc on
first use: trafgen's -b sends each second's frames in one burst.
"""

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass

from lab import Host, Lab, nsexec, wait_until

FCS = 4
ETH_P_EXPERIMENTAL = 0x88B5
STEADY = (0.25, 0.95)      # a timed trafgen run's rate is taken from this fraction of it to this one


def udp_frame(src: Host, dst: Host, size: int) -> str:
    """A trafgen packet: one IPv4/UDP frame of `size` bytes (FCS included), src -> dst."""
    pad = size - FCS - 14 - 20 - 8
    if pad < 0:
        raise ValueError(f"frame too small: {size}")
    return (f"{{ eth(da={dst.mac}, sa={src.mac}, type=0x0800), "
            f"ipv4(saddr={src.ip}, daddr={dst.ip}, ttl=64, df), udp(sp=9, dp=9), fill(0x00, {pad}) }}\n")


# Many MACs: trafgen's dinc() on a MAC field counts in its low 32 bits and keeps the top 16 bits of
# the value set just before it (else the device's own, which would make host MACs of the range).
# The hosts' MACs start 02:b5, the ranges 02:b6: they never meet.
RANGE_TOP = "02:b6:00:00:00:00"


def mac_range(first: int, n: int) -> str:
    """n MACs 02:b6:(first as 32 bits) onwards, one per frame, cycling: for eth_frame's da or sa."""
    return f"{RANGE_TOP}@dinc({first}, {first + n - 1})"


def _mac_field(name: str, mac: str) -> str:
    if "@" in mac:
        top, fn = mac.split("@")
        return f"{name}={top}, {name}={fn}"
    return f"{name}={mac}"


def eth_frame(da: str, sa: str, size: int = 64) -> str:
    """A trafgen packet of experimental ethertype; da or sa may be a mac_range()."""
    return (f"{{ eth({_mac_field('da', da)}, {_mac_field('sa', sa)}, type={ETH_P_EXPERIMENTAL:#06x}), "
            f"fill(0x00, {size - FCS - 14}) }}\n")


@dataclass
class Sent:
    """One trafgen run, measured at both ends."""

    offered: int            # sender tx_packets + tx_dropped
    received: dict          # host index -> rx_packets
    seconds: float          # whole run
    rate_pps: dict          # host index -> steady-state received frames/s (middle of the run)
    trafgen_out: str
    sending: float = 0.0    # seconds the generator sent, by its own clock (the run less its start and stop)

    def loss(self, host: int, copies: int = 1) -> float:
        """Fraction of the offered frames that did not arrive at `host`."""
        if self.offered <= 0:
            return float("nan")
        return max(0.0, 1.0 - self.received[host] / (self.offered * copies))


def sending_seconds(trafgen_out: str) -> float | None:
    """How long trafgen sent, from its summary ("0 sec, 511692 usec on CPU0 (262144 packets)", one line
    per CPU, sending at once): its start (the ring, the config) and stop are not in it."""
    times = [int(s) + int(us) / 1e6 for s, us in re.findall(r"(\d+) sec, (\d+) usec on CPU\d+", trafgen_out)]
    return max(times) if times else None


def _tx(h: Host) -> int:
    s = h.stats("tx_packets", "tx_dropped")
    return s["tx_packets"] + s["tx_dropped"]


def trafgen(lab: Lab, sender: Host, receivers: list[Host], packet: str, *, seconds: float | None = None,
            count: int | None = None, rate_pps: int | None = None, settle: float = 0.3) -> Sent:
    """Send `packet` from `sender`: for `seconds`, or `count` frames, at full speed or `rate_pps`."""
    cfg = os.path.join(lab.dir, "trafgen.cfg")
    with open(cfg, "w") as f:
        f.write(packet)
    argv = ["ip", "netns", "exec", sender.ns, "trafgen", "-i", cfg, "-o", sender.ifname,
            "--cpus", "1", "--no-sock-mem", "-Q"]
    if count is not None:
        argv += ["-n", str(count)]
    if rate_pps is not None:
        argv += ["-b", f"{rate_pps}pps"]
    tx0 = _tx(sender)
    rx0 = {h.index: h.stat("rx_packets") for h in receivers}
    t0 = time.monotonic()
    proc = lab.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mid = {}
    if seconds is not None:
        # Steady state: from a quarter into the run to a little before its end.
        time.sleep(seconds * STEADY[0])
        a = (time.monotonic(), {h.index: h.stat("rx_packets") for h in receivers})
        time.sleep(max(0.0, seconds * (STEADY[1] - STEADY[0])))
        b = (time.monotonic(), {h.index: h.stat("rx_packets") for h in receivers})
        mid = {i: (b[1][i] - a[1][i]) / (b[0] - a[0]) for i in b[1]}
        lab.signal(proc, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=(seconds or 0) + 600)
    finally:
        lab.reap(proc)
    elapsed = time.monotonic() - t0
    if proc.returncode not in (0, -signal.SIGINT, 130):
        raise RuntimeError(f"trafgen failed ({proc.returncode}): {out[-800:]}")
    time.sleep(settle)     # what is still queued in the switch arrives
    received = {h.index: h.stat("rx_packets") - rx0[h.index] for h in receivers}
    if not mid:
        mid = {i: n / elapsed for i, n in received.items()}
    return Sent(offered=_tx(sender) - tx0, received=received, seconds=elapsed, rate_pps=mid, trafgen_out=out,
                sending=sending_seconds(out) or elapsed)


PACER_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pacer.c")


def _pacer(lab: Lab) -> str:
    path = os.path.join(lab.dir, "pacer")
    if not os.path.exists(path):
        subprocess.run(["cc", "-O2", "-Wall", "-o", path, PACER_SRC], check=True)
    return path


def paced(lab: Lab, sender: Host, receivers: list[Host], rate_pps: float, *, da: str, sa: str,
          size: int = 64, seconds: float = 3600, count: int = 0, vary: tuple | None = None,
          settle: float = 0.3) -> Sent:
    """Experimental-ethertype frames of `size` bytes da <- sa, sent evenly at `rate_pps` for `seconds`
    or `count` frames; vary=("src"|"dst", first, n) counts that MAC's low 32 bits (as mac_range)."""
    argv = ["ip", "netns", "exec", sender.ns, _pacer(lab), sender.ifname, da, sa,
            str(size), str(rate_pps), str(seconds), str(count), *(str(v) for v in vary or ())]
    tx0 = _tx(sender)
    rx0 = {h.index: h.stat("rx_packets") for h in receivers}
    t0 = time.monotonic()
    proc = lab.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 60 if count == 0 else count / rate_pps * 2 + 60)
    finally:
        lab.reap(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"pacer failed ({proc.returncode}): {out[-800:]}")
    sending = float(out.split()[-1])        # "sent N refused N late N seconds S"
    time.sleep(settle)
    received = {h.index: h.stat("rx_packets") - rx0[h.index] for h in receivers}
    return Sent(offered=_tx(sender) - tx0, received=received, seconds=time.monotonic() - t0,
                rate_pps={i: n / sending for i, n in received.items()}, trafgen_out=out, sending=sending)


def ping(src: Host, dst: Host, count: int = 3) -> bool:
    r = nsexec(src.ns, "ping", "-c", count, "-i", "0.2", "-W", "2", dst.ip, check=False)
    return r.returncode == 0


def learn_all(hosts: list[Host]) -> None:
    """Every host talks once, so every switch has learned every host's MAC before a case starts."""
    first = hosts[0]
    if not wait_until(lambda: ping(first, hosts[1], count=1), 10, interval=0.2):
        raise RuntimeError(f"{first.ns} cannot reach {hosts[1].ip}")
    for h in hosts[1:]:
        if not ping(h, first, count=1):
            raise RuntimeError(f"{h.ns} cannot reach {first.ip}")


def iperf3_seconds(seconds: float) -> int:
    """What iperf3 runs for when asked for `seconds`: its -t takes whole seconds, at least 1."""
    return max(1, round(seconds))


def iperf3(lab: Lab, client: Host, server: Host, seconds: float, streams: int = 1, port: int = 5201,
           affinity: str | None = None, congestion: str | None = None) -> dict:
    """TCP goodput client -> server: bits/s received, retransmits, the client's CPU and the
    congestion control the sender used. affinity: iperf3's -A ("client_cpu,server_cpu");
    congestion: iperf3's -C (None: the client namespace's net.ipv4.tcp_congestion_control)."""
    srv = lab.popen(["ip", "netns", "exec", server.ns, "iperf3", "-s", "-1", "-p", str(port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        up = wait_until(lambda: f":{port} " in nsexec(server.ns, "ss", "-ltnH").stdout, 10)
        if not up:
            raise RuntimeError("iperf3 server did not listen")
        r = nsexec(client.ns, "iperf3", "-c", server.ip, "-p", str(port), "-t", iperf3_seconds(seconds),
                   "-P", str(streams), "-J", *(["-A", affinity] if affinity else []),
                   *(["-C", congestion] if congestion else []),
                   timeout=seconds + 60, check=False)
        res = json.loads(r.stdout or "{}")
        if "error" in res or "end" not in res:
            raise RuntimeError(f"iperf3: {res.get('error', r.stderr.strip()[-400:])}")
        end = res["end"]
        return {"bps": end["sum_received"]["bits_per_second"],
                "retransmits": end["sum_sent"].get("retransmits", 0),
                "cpu_client": end.get("cpu_utilization_percent", {}).get("host_total", float("nan")),
                "congestion": end.get("sender_tcp_congestion", "?")}
    finally:
        lab.reap(srv, timeout=5)


# CPU accounting.

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes and all their threads, in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])     # utime, stime (fields 14, 15)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds spent not idle, all CPUs (from /proc/stat)."""
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    idle = cpu[3] + cpu[4]
    return (sum(cpu[:8]) - idle) / CLK_TCK


def others_busy(seconds: float = 0.3) -> float:
    """CPUs kept busy by anything but the caller over `seconds` while it sleeps (/proc/stat, steal
    included): about 0 on a quiet machine, up to the number of CPUs on a full one."""
    b0 = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - b0) / seconds


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
    return total

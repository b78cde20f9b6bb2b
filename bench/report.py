"""Report: RESULTS.md (medians, ratio against the bridge of the same run, the machine) and results.png."""

import datetime
import os
import platform
import re
import statistics
import subprocess
import sys

import cases as cases_mod
import traffic

BASE = "bridge"


def _version(argv, pattern=r"(\d+\.\d+(\.\d+)?)") -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        m = re.search(pattern, out.stdout + out.stderr)
        return m.group(1) if m else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "-"


def machine(args, started, notes, ctx, systems, cases) -> dict:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import tapswitch
        ts_version = tapswitch.__version__
    except Exception:
        ts_version = "?"
    return {
        "date": datetime.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M"),
        "duration_s": round(datetime.datetime.now().timestamp() - started),
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "command": "python bench/run.py " + " ".join(args),
        "versions": {
            "tapswitch": ts_version,
            "iperf3": _version(["iperf3", "--version"]),
            "trafgen": _version(["trafgen", "--version"]),
            "ovs-vswitchd": _version(["ovs-vswitchd", "--version"]),
        },
        "notes": notes,
        "reps": ctx.reps, "tcp_seconds": ctx.tcp_seconds, "frame_seconds": ctx.frame_seconds,
        "tcp_cc": sorted(ctx.cc_used), "tcp_cc_asked": ctx.cc, "payload": ctx.payload,
        "systems": {s.name: s.label for s in systems},
        "learn_n": ctx.learn_n, "search_steps": ctx.search_steps,
        "table_size": max((c.fdb_size for c in cases if c.id in ("caching", "learning")), default=1 << 20),
    }


FRAMES = {"raw": "Ethernet frame of ethertype 0x88b5 (local experimental: the receiver's stack drops it at once)",
          "udp": "IPv4/UDP frame to the discard port"}


def _steps(n: int) -> str:
    return f"{n} step" + ("s" if n != 1 else "")


def payload(m: dict) -> str:
    """The forwarding-rate frames of a run: raw or udp (runs before this was recorded: from their command)."""
    return m.get("payload") or ("udp" if "--payload udp" in m.get("command", "") else "raw")


def medians(results) -> dict:
    """(case, metric) -> {"unit", "better", "systems": {system: median}, "n": {system: count}}."""
    rows: dict = {}
    for r in results:
        row = rows.setdefault((r["case"], r["metric"]), {"unit": r["unit"], "better": r["better"], "values": {}})
        row["values"].setdefault(r["system"], []).append(r["value"])
    for row in rows.values():
        row["systems"] = {s: statistics.median(v) for s, v in row["values"].items()}
        row["spread"] = {s: (min(v), max(v)) for s, v in row["values"].items()}
    return rows


def fmt(v: float) -> str:
    if v != v:
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a == 0:
        return "0"
    return f"{v:.3f}"


def ratio(v: float, base: float | None) -> str:
    if base is None or base == 0 or v != v or base != base:
        return ""
    return f" ({v / base:.2f}×)"


def table(rows, names, labels) -> list[str]:
    out = ["| case | metric | unit | " + " | ".join(labels[n] for n in names) + " |",
           "|---|---|---|" + "---:|" * len(names)]
    for (case, metric), row in rows.items():
        base = row["systems"].get(BASE)
        cells = []
        for n in names:
            v = row["systems"].get(n)
            # No ratio for losses and frame counts: against the bridge's 0 it says nothing.
            plain = n == BASE or row["unit"] in ("%", "frames")
            cells.append("—" if v is None else fmt(v) + ("" if plain else ratio(v, base)))
        unit = row["unit"] + (" ↓" if row["better"] == "lower" else "")
        out.append(f"| {case} | {metric} | {unit} | " + " | ".join(cells) + " |")
    return out


def interrupted(i: dict) -> str:
    """RESULTS.md's warning of a run stopped early (meta["interrupted"])."""
    return (f"**Partial results: the run was interrupted ({i['signal']}) after {i['runs_done']} of "
            f"{i['runs_planned']} runs** (a run: one repetition of a case on one system). Each cell is the "
            "median of the repetitions that completed, which may be fewer than said below; the repetition "
            "under way was dropped, and the cases not reached have no row.")


def write(out_dir, meta, results, errors, systems, cases) -> None:
    rows = medians(results)
    names = [s.name for s in systems]
    labels = {s.name: s.name for s in systems}
    m = meta
    bare_cases = [c.name for c in cases_mod.cases() if c.bare]
    steady = " to ".join(f"{100 * f:g} %" for f in traffic.STEADY)
    lines = [
        "# tapswitch benchmark" + (" (partial: interrupted)" if "interrupted" in m else ""),
        "",
        *([interrupted(m["interrupted"]), ""] if "interrupted" in m else []),
        f"Run {m['date']} on **{m['cpu']}**, {m['cores']} cores, Linux {m['kernel']}, "
        f"in {m['duration_s']} s: `{m['command']}`.",
        "",
        "Each cell is the median of "
        f"{m['reps']} repetition(s) (systems alternating, order rotated every repetition); "
        "in brackets, the ratio to the Linux bridge measured in the same run. ↓ = lower is better. "
        "— = not run on that system (tapswitch's queue variants run the cases that concern them; the bare "
        f"forwarder only {', '.join(bare_cases[:-1])} and {bare_cases[-1]}).",
        "",
        *table(rows, names, labels),
        "",
        "## Systems",
        "",
        *[f"- **{n}**: {label}" for n, label in m["systems"].items()],
        *([f"- br_netfilter: {m['br_netfilter']}"] if "br_netfilter" in m else []),
        *([f"- TCP congestion control of the iperf3 endpoints: {', '.join(m['tcp_cc'])} "
           + (f"(`--cc {m['tcp_cc_asked']}`)" if m.get("tcp_cc_asked") else "(the machine's default)")]
          if m.get("tcp_cc") else []),
        *[f"- {n}" for n in m["notes"]],
        *([f"- Load average (1 min) before each run: median {m['load']['median']:.2f}, "
           f"min {m['load']['min']:.2f}, max {m['load']['max']:.2f} on {m['cores']} cores "
           "(anything above ~0.5 means other work shared the machine with the bench)"] if "load" in m else []),
        *([f"- Other work on the machine just before each run (CPUs busy over 0.3 s while the bench "
           f"waited, steal included): median {m['others_busy']['median']:.2f}, min "
           f"{m['others_busy']['min']:.2f}, max {m['others_busy']['max']:.2f} of {m['cores']} "
           "(0 is a quiet machine)"] if "others_busy" in m else []),
        "",
        "## Method",
        "",
        "- Topology: one network namespace per host (`eth1`, 198.18.1.0/24, IPv6 off), made fresh "
        "for every case, repetition and system; the switch joins them (tapswitch: TAP ports moved into the "
        "namespaces; bridge: veth pairs into a bridge in a namespace of its own; Open vSwitch: "
        "userspace datapath, ovs-vswitchd in a namespace of its own, internal ports (TAP) moved into the "
        "namespaces; bare: `bench/bare.c`, two TAP "
        "devices with tapswitch's offloads and a read/write loop between them that busy-polls as tapswitch "
        "does, no switching -- the floor "
        "under any userspace switch on TAP ports).",
        f"- TCP: iperf3, {traffic.iperf3_seconds(m['tcp_seconds'])} s per run, host 0 → host 1, MTU 1500, "
        "`-P 1` and `-P 4`"
        + ("; the endpoints' congestion control as under Systems (`--cc` sets it)" if m.get("tcp_cc") else "")
        + "; switch CPU: utime+stime of the forwarding processes over the iperf3 run, divided by its time.",
        f"- Frames: trafgen (netsniff-ng {m['versions']['trafgen']}), `--cpus 1` (CPU 0), TX ring, qdisc "
        f"bypass, one {FRAMES[payload(m)]} repeated at full speed for {m['frame_seconds']:g} s; sizes include the "
        "4-byte FCS that a TAP or veth does not carry (RFC 2544). Received = the receiver's "
        f"`/sys/class/net/eth1/statistics/rx_packets` inside its namespace, rate taken from {steady} of "
        "the run; offered = the sender's tx_packets + tx_dropped. Loss = 1 − received/offered.",
        "- Throughput (RFC 2544 26.1): the highest rate of 64 B frames forwarded with loss under 0.1 %, "
        f"by a binary search ({_steps(m.get('search_steps', cases_mod.THROUGHPUT_STEPS))}; frames sent evenly by "
        "`bench/pacer.c`) between nothing and trafgen's full "
        "speed; a system that loses nothing at full speed is reported at the generator's rate.",
        "- Light load: 64 B frames sent evenly (`bench/pacer.c`) at 1k, 10k and 100k frames/s for "
        f"{m['frame_seconds']:g} s each; the switch's CPU (utime+stime of its forwarding processes) over "
        "that time: what a quiet or busy port costs. The bridge has no processes of its own: —.",
        "- Address caching (RFC 2889 5.7): N source MACs (counting up) sent from host A to B at 100 kpps, evenly (`bench/pacer.c`); "
        "then one frame from B to each; a frame the switch has no entry for is flooded, so the third "
        "host's rx counter counts the misses. Table size "
        f"{cases_mod.count(m.get('table_size', 1 << 20))} entries where the system has a limit "
        "(tapswitch `mac_table.size`, OVS `mac-table-size`; the bridge has none). Then the forwarding "
        "rate of 64 B frames to the N destinations at full speed.",
        f"- Learning rate (RFC 2889 5.8): {cases_mod.count(m['learn_n']) if 'learn_n' in m else 'N'} "
        "new source MACs at the "
        "generator's full speed, the same table size; entries in the table afterwards divided by the time "
        "trafgen sent them (its own count, its start not included).",
        "- Broadcast (RFC 2889 5.10): 64 B broadcast frames from one host, full speed; received per listener.",
        "- Resources: 16 ports; tapswitch with 2 queues and a 1M-entry table. Start to forwarding: "
        "tapswitch from exec to READY=1 (its bytecode compiled first, as an install does); bridge and OVS from the first command to the last port "
        "configured. Memory: PSS from /proc/PID/smaps_rollup summed over the control process and workers "
        "(OVS: ovs-vswitchd + ovsdb-server). CPU per frame: utime+stime of the forwarding processes "
        "(tapswitch workers, ovs-vswitchd) over a 64 B run, divided by frames received; machine CPU: "
        "all non-idle time in /proc/stat, generator and receivers included.",
        "",
        "Raw numbers: `results.json` beside this file. Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
    ]
    if errors:
        lines += ["## Errors", ""] + [f"- {e['case']} / {e['system']} / rep {e['rep'] + 1}: "
                                      f"{e['error'].splitlines()[-1] if e['error'] else '?'}" for e in errors] + [""]
    with open(os.path.join(out_dir, "RESULTS.md"), "w") as f:
        f.write("\n".join(lines))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"bench: results.png skipped: matplotlib is missing ({sys.executable} -m pip install -r "
              "bench/requirements.txt)")
        return
    plot(os.path.join(out_dir, "results.png"), rows, names, meta)


def plot(path, rows, names, meta) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.patches import Patch

    fixed = {"tapswitch-q1": "#1f77b4", "tapswitch-q2": "#6baed6", "bridge": "#7f7f7f", "ovs": "#d62728",
             "bare": "#000000"}
    spare = iter(["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"])
    colors = {n: fixed.get(n) or next(spare, None) for n in names}    # every variant a colour of its own
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5))

    # TCP goodput, grouped bars.
    ax = axes[0]
    tcp = [(k, r) for k, r in rows.items() if k[1].startswith("TCP goodput")]
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        vals = [r["systems"].get(n, 0) for _, r in tcp]
        ax.bar([j + i * width for j in range(len(tcp))], vals, width, label=n, color=colors.get(n))
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(tcp))])
    ax.set_xticklabels([k[1].replace("TCP goodput, ", "") for k, _ in tcp])
    ax.set_ylabel("Gbit/s")
    ax.set_title("TCP goodput (iperf3)")

    # Forwarding rate by frame size.
    ax = axes[1]
    fr = [(int(re.search(r"(\d+) B", k[1]).group(1)), r) for k, r in rows.items()
          if k[0] == "forwarding rate" and k[1].startswith("forwarding rate")]
    fr.sort(key=lambda x: x[0])
    for n in names:
        pts = [(s, r["systems"][n]) for s, r in fr if n in r["systems"]]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=n, color=colors.get(n))
    ax.set_xscale("log", base=2)
    ax.set_xticks([s for s, _ in fr])
    ax.set_xticklabels([str(s) for s, _ in fr], rotation=45)
    ax.set_xlabel("frame size (bytes, FCS included)")
    ax.set_ylabel("Mpps received")
    ax.set_title("Forwarding rate (trafgen, one core)")

    # Ratio to the bridge, higher-is-better headline metrics.
    ax = axes[2]
    heads = [k for k, r in rows.items() if r["better"] == "higher" and BASE in r["systems"]
             and (k[1].startswith("TCP") or k[1] in ("forwarding rate, 64 B", "forwarding rate, 1518 B")
                  or k[1].startswith("throughput") or "per listener" in k[1] or k[1].startswith("new MACs"))]
    others = [n for n in names if n != BASE]
    h = 0.8 / max(1, len(others))
    for i, n in enumerate(others):
        vals = []
        for k in heads:
            v, b = rows[k]["systems"].get(n), rows[k]["systems"][BASE]
            vals.append(v / b if v is not None and b else 0)
        ax.barh([j + i * h for j in range(len(heads))], vals, h, label=n, color=colors.get(n))
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks([j + h * (len(others) - 1) / 2 for j in range(len(heads))])
    ax.set_yticklabels([k[1].replace("broadcast to", "bcast").replace(", per listener (median)", "/listener")
                        for k in heads], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("× Linux bridge (same run)")
    ax.set_title("Ratio to the Linux bridge")

    partial = (f" — PARTIAL: interrupted after {meta['interrupted']['runs_done']} of "
               f"{meta['interrupted']['runs_planned']} runs") if "interrupted" in meta else ""
    fig.suptitle(f"tapswitch bench, {meta['date']}, {meta['cpu']} ×{meta['cores']}, Linux {meta['kernel']}{partial}",
                 fontsize=10, color="#d62728" if partial else "black")
    # One legend for the three panels, below them: none covers a bar or a line.
    fig.legend(handles=[Patch(color=colors[n], label=n) for n in names], loc="lower center",
               ncol=len(names), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _Named:
    def __init__(self, name):
        self.name = name


def main(argv=None) -> int:
    """Render RESULTS.md and results.png again from OUT/results.json: python bench/report.py [OUT]."""
    import argparse
    import json
    p = argparse.ArgumentParser(prog="bench/report.py", description=main.__doc__.split(":")[0])
    p.add_argument("out", nargs="?", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"),
                   help="directory of a run's results.json (default: %(default)s)")
    out_dir = p.parse_args(argv).out
    path = os.path.join(out_dir, "results.json")
    try:
        with open(path) as f:
            data = json.load(f)
        meta, results, errors = data["meta"], data["results"], data["errors"]
        names = list(meta["systems"])
    except OSError as e:
        print(f"bench/report.py: {path}: {e.strerror}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, TypeError) as e:
        print(f"bench/report.py: {path}: not the results.json of a bench run ({type(e).__name__}: {e})",
              file=sys.stderr)
        return 1
    write(out_dir, meta, results, errors, [_Named(n) for n in names], [])
    return 0


if __name__ == "__main__":
    sys.exit(main())

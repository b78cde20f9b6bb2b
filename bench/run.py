"""tapswitch's benchmark: tapswitch, the Linux bridge and Open vSwitch, on one topology, in one run.

    python bench/run.py [--quick] [--systems tapswitch,bridge,ovs,bare] [--out bench/out]

For each case, for each repetition, every system in turn (the order rotates
each repetition) is set up on fresh hosts (namespaces of this run), measured,
and torn down. Results: OUT/RESULTS.md (medians, ratio against the Linux
bridge of the same run, the machine and the date), OUT/results.png, and the
raw measurements in OUT/results.json. Everything the run makes is removed at
the end, on failure, on SIGTERM and on Ctrl-C.

Needs root, iperf3, netsniff-ng (trafgen), iproute2, cc; Open vSwitch is measured
when ovs-vswitchd is installed (--install-ovs apt-gets it), skipped otherwise.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cases as cases_mod     # noqa: E402
import report                 # noqa: E402
import systems as systems_mod  # noqa: E402
import traffic                # noqa: E402
from lab import Lab           # noqa: E402

ALL_SIZES = [64, 128, 256, 512, 1024, 1280, 1518]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (2 s TCP, 1 s per frame size), 1 repetition")
    p.add_argument("--systems", default="tapswitch,bridge,ovs,bare",
                   help="comma-separated: tapswitch (queues 1 and 2), tapswitch-q1, tapswitch-q2, bridge, ovs, "
                   "bare (the bare TAP forwarder, bench/bare.c: two-host cases only)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    p.add_argument("--cases", help="comma-separated subset: tcp, frames, throughput, light, caching, learning, broadcast4, "
                   "broadcast8, resources (default: all)")
    p.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    p.add_argument("--sizes", help="frame sizes, comma-separated (default 64..1518)")
    p.add_argument("--seconds", type=float, help="override every traffic duration (TCP and frames)")
    p.add_argument("--fdb-n", help="address counts for the caching case (default 1024,1048576; --quick 1024,16384)")
    p.add_argument("--learn-n", type=int, help="new MACs for the learning-rate case (default 262144; --quick 16384)")
    p.add_argument("--payload", choices=["raw", "udp"], default="raw",
                   help="forwarding-rate frames: raw (ethertype 0x88b5, default) or IPv4/UDP to port 9")
    p.add_argument("--cc", help="TCP congestion control of the iperf3 endpoints (iperf3 -C), e.g. cubic, bbr "
                   "(default: the machine's, net.ipv4.tcp_congestion_control, which namespaces inherit)")
    p.add_argument("--install-ovs", action="store_true", help="apt-get install openvswitch-switch when missing")
    p.add_argument("--profile", action="store_true",
                   help="then profile tapswitch (perf, syscalls, GSO, CPU placement) into OUT/PROFILE.md")
    p.add_argument("--tag", help="name prefix of everything this run makes (default bn + 4 hex digits)")
    return p.parse_args(argv)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def make_ctx(args, lab) -> cases_mod.Ctx:
    q = args.quick
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ALL_SIZES
    fdb_ns = [int(n) for n in args.fdb_n.split(",")] if args.fdb_n else ([1024, 16384] if q else [1024, 1 << 20])
    return cases_mod.Ctx(
        lab=lab, quick=q, reps=args.reps or (1 if q else 3),
        tcp_seconds=args.seconds or (2.0 if q else 10.0),
        frame_seconds=args.seconds or (1.0 if q else 3.0),
        sizes=sizes, fdb_ns=fdb_ns,
        learn_n=args.learn_n or (16384 if q else 262144),
        learn_rate_pps=100_000,
        payload=args.payload, cc=args.cc,
    )


def check_cc(name: str) -> str | None:
    """None if TCP congestion control `name` can be used here (loading its module if need be), else why not."""
    path = "/proc/sys/net/ipv4/tcp_available_congestion_control"

    def available() -> list[str]:
        with open(path) as f:
            return f.read().split()

    if name not in available():
        try:
            subprocess.run(["modprobe", "-q", f"tcp_{name}"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass                    # no modprobe: what is available is all there is
        if name not in available():
            return f"--cc {name}: not available here (net.ipv4.tcp_available_congestion_control: " \
                   f"{' '.join(available())})"
    return None


def pick_systems(args, lab) -> tuple[list, list[str]]:
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    notes = []
    if "ovs" in names:
        if args.install_ovs and not systems_mod.Ovs.available():
            notes.append(f"Open vSwitch: {systems_mod.Ovs.install()}")
        if not systems_mod.Ovs.available():
            names.remove("ovs")
            notes.append("Open vSwitch: skipped (ovs-vswitchd not installed; --install-ovs installs it)")
    return systems_mod.make(names, lab), notes


def compile_tapswitch() -> None:
    """Write tapswitch's bytecode, as an install does (scripts/install.sh, a wheel): run from
    a source tree under PYTHONDONTWRITEBYTECODE, every start would compile its sources, and
    the start case would time that (~0.09 s here) rather than the switch."""
    import tapswitch
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(tapswitch.__file__)],
                   check=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE=""))


def run_case(ctx, case, systems, results, errors, loads, log) -> None:
    runnable = [s for s in systems if case.runs_on(s)]
    reps = case.reps or ctx.reps
    for rep in range(reps):
        k = rep % len(runnable)
        for system in runnable[k:] + runnable[:k]:        # rotate: no system always first
            hosts = ctx.lab.hosts(case.hosts)
            t0 = time.monotonic()
            loads.append(traffic.others_busy())
            try:
                system.setup(hosts, fdb_size=case.fdb_size)
                cases_mod.prepare(ctx, case, system, hosts)
                for m in case.fn(ctx, system, hosts):
                    results.append({"case": case.name, "metric": m.metric, "unit": m.unit, "better": m.better,
                                    "system": system.name, "rep": rep, "value": m.value})
                log(f"  {case.name} / {system.name} / rep {rep + 1}: {time.monotonic() - t0:.1f} s")
            except KeyboardInterrupt:
                raise
            except Exception as e:
                errors.append({"case": case.name, "system": system.name, "rep": rep, "error": str(e)[-600:]})
                log(f"  {case.name} / {system.name} / rep {rep + 1}: FAILED: {e}")
                traceback.print_exc()
            finally:
                system.teardown()
                ctx.lab.drop_hosts(hosts)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, TAP devices, trafgen)", file=sys.stderr)
        return 1
    if args.cc and (why := check_cc(args.cc)):
        print(f"bench: {why}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    tag = args.tag or f"bn{uuid.uuid4().hex[:4]}"
    lab = Lab(tag)
    signal.signal(signal.SIGTERM, _interrupt)
    results, errors, loads = [], [], []     # loads: CPUs busy with other work just before each run
    started = time.time()

    def log(msg):
        print(msg, flush=True)

    try:
        ctx = make_ctx(args, lab)
        systems, notes = pick_systems(args, lab)
        compile_tapswitch()
        wanted = set(args.cases.split(",")) if args.cases else None
        plan = [c for c in cases_mod.cases(ctx) if wanted is None or c.id in wanted]
        log(f"bench {tag}: systems {', '.join(s.name for s in systems)}; "
            f"cases {', '.join(c.name for c in plan)}; {ctx.reps} repetition(s)")
        for n in notes:
            log(f"  {n}")
        for case in plan:
            log(f"case {case.name}")
            run_case(ctx, case, systems, results, errors, loads, log)
        bridge = next((s for s in systems if s.kind == "bridge"), None)
        meta = report.machine(args=sys.argv[1:] if argv is None else argv, started=started, notes=notes,
                              ctx=ctx, systems=systems, cases=plan)
        if loads:
            meta["others_busy"] = {"min": min(loads), "median": sorted(loads)[len(loads) // 2], "max": max(loads)}
        if bridge is not None:
            meta["br_netfilter"] = f"{bridge.netfilter} in the bridge's namespace"
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"meta": meta, "results": results, "errors": errors}, f, indent=1)
        report.write(args.out, meta, results, errors, systems, plan)
        log(f"wrote {os.path.join(args.out, 'RESULTS.md')}")
        if args.profile:
            import profile_tapswitch
            path = profile_tapswitch.run(lab, ctx, args.out, log)
            with open(path) as src, open(os.path.join(args.out, "RESULTS.md"), "a") as dst:
                dst.write("\n" + src.read())
    except KeyboardInterrupt:
        log("bench: interrupted; cleaning up")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        lab.close()
        left = lab.leftovers()
        if left:
            log(f"bench: left behind: {', '.join(left)}")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

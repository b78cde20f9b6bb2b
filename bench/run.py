"""tapswitch's benchmark: tapswitch, the Linux bridge and Open vSwitch, on one topology, in one run.

    .venv/bin/python bench/run.py [--quick] [--systems tapswitch,bridge,ovs,bare] [--out bench/out]

(the Python tapswitch is installed in: ./scripts/install.sh makes .venv).

For each case, for each repetition, every system in turn (the order rotates
each repetition) is set up on fresh hosts (namespaces of this run), measured,
and torn down. Results: OUT/RESULTS.md (medians, ratio against the Linux
bridge of the same run, the machine and the date), OUT/results.png, and the
raw measurements in OUT/results.json. Everything the run makes is removed at
the end, on failure, on SIGTERM, SIGHUP and Ctrl-C; after such a signal the
outputs hold the repetitions that completed, marked partial, and it exits 130.

Needs root, iperf3, netsniff-ng (trafgen), iproute2, cc; Open vSwitch is measured
when ovs-vswitchd is installed (--install-ovs apt-gets it), skipped otherwise.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cases as cases_mod     # noqa: E402
import lab as lab_mod         # noqa: E402
import report                 # noqa: E402
import traffic                # noqa: E402
from lab import Lab           # noqa: E402

try:
    import tapswitch          # noqa: E402,F401  (the systems drive it; its bytecode is compiled first)
    import systems as systems_mod  # noqa: E402
except ModuleNotFoundError as e:
    sys.exit(f"bench: {e}: run it with the Python tapswitch is installed in, e.g. .venv/bin/python bench/run.py "
             "(./scripts/install.sh makes .venv; then .venv/bin/pip install -r bench/requirements.txt)")

ALL_SIZES = [64, 128, 256, 512, 1024, 1280, 1518]
LAB_TOOLS = ("ip", "ping", "sysctl")       # every case: the hosts' namespaces, and a ping each way first
PACKAGES = {"ip": "iproute2", "ss": "iproute2", "bridge": "iproute2", "ping": "iputils-ping", "sysctl": "procps",
            "pgrep": "procps", "iperf3": "iperf3", "trafgen": "netsniff-ng", "cc": "gcc", "perf": "linux-perf",
            "tcpdump": "tcpdump", "ovs-vswitchd": "openvswitch-switch"}
SIZE_MIN, SIZE_MAX = 64, 1518     # Ethernet's least frame; the hosts' MTU 1500 + header + FCS
FDB_MAX = systems_mod.FDB_MAX     # tapswitch's largest switch.mac_table.size: the table of --fdb-n and --learn-n


def _positive(kind, most=None):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < v < float("inf"):
            raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
        if most is not None and v > most:
            raise argparse.ArgumentTypeError(f"must be at most {most}: {text!r}")
        return v
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _int_list(lo: int, hi: int | None = None):
    """A comma-separated list of whole numbers from lo to hi."""
    def parse(text: str) -> list[int]:
        out = []
        for item in text.split(","):
            try:
                v = int(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a whole number: {item.strip()!r}") from None
            if v < lo or (hi is not None and v > hi):
                raise argparse.ArgumentTypeError(f"{v}: must be from {lo}" + (f" to {hi}" if hi else " up"))
            out.append(v)
        return out
    parse.__name__ = "list"
    return parse


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no name given")
    return names


def _tag(text: str) -> str:
    if why := lab_mod.check_tag(text):
        raise argparse.ArgumentTypeError(why)
    return text


def parse_args(argv=None) -> argparse.Namespace:
    case_ids = [c.id for c in cases_mod.cases()]
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (2 s TCP, 1 s per frame size), 1 repetition")
    p.add_argument("--systems", default="tapswitch,bridge,ovs,bare", type=_names,
                   help=f"comma-separated, of: {systems_mod.NAMES}. The variants set the workers' I/O, CPUs, "
                   "switch.queue_len and switch.busy_poll_us (bench/README.md); bare is the bare TAP forwarder, "
                   "bench/bare.c: two-host cases only (default: %(default)s)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"),
                   help="directory of RESULTS.md, results.json and results.png; what they were is "
                   "replaced (default: %(default)s)")
    p.add_argument("--cases", type=_names, help=f"comma-separated subset of: {', '.join(case_ids)} (default: all)")
    p.add_argument("--reps", type=_positive(int), help="repetitions (default 3, --quick 1)")
    p.add_argument("--sizes", type=_int_list(SIZE_MIN, SIZE_MAX),
                   help=f"frame sizes in bytes, FCS included, comma-separated, each {SIZE_MIN} to {SIZE_MAX} "
                   f"(default {','.join(map(str, ALL_SIZES))})")
    p.add_argument("--seconds", type=_positive(float), help="override every traffic duration (TCP and frames; "
                   "iperf3 runs whole seconds, at least 1)")
    p.add_argument("--fdb-n", type=_int_list(1, FDB_MAX),
                   help=f"address counts for the caching case, each at most {FDB_MAX} (default 1024,1048576; "
                   "--quick 1024,16384)")
    p.add_argument("--learn-n", type=_positive(int, FDB_MAX),
                   help=f"new MACs for the learning-rate case, at most {FDB_MAX} (default 262144; --quick 16384)")
    p.add_argument("--search-steps", type=_positive(int), default=cases_mod.THROUGHPUT_STEPS,
                   help="steps of the throughput case's binary search, each a run of --seconds (default "
                   "%(default)s: the rate to within 1/64 of the generator's full speed; a smoke run needs 1)")
    p.add_argument("--payload", choices=["raw", "udp"], default="raw",
                   help="forwarding-rate frames: raw (ethertype 0x88b5, default) or IPv4/UDP to port 9")
    p.add_argument("--cc", help="TCP congestion control of the iperf3 endpoints (iperf3 -C), e.g. cubic, bbr "
                   "(default: the machine's, net.ipv4.tcp_congestion_control, which namespaces inherit)")
    p.add_argument("--install-ovs", action="store_true", help="apt-get install openvswitch-switch when missing")
    p.add_argument("--profile", action="store_true",
                   help="then profile tapswitch (perf, syscalls, GSO, CPU placement) into OUT/PROFILE.md")
    p.add_argument("--tag", type=_tag, help="name prefix of everything this run makes, at most "
                   f"{lab_mod.TAG_MAX} characters (default bn + 4 hex digits)")
    args = p.parse_args(argv)
    if args.cases and (unknown := [c for c in args.cases if c not in case_ids]):
        p.error(f"--cases: no case {', '.join(map(repr, unknown))} (the cases: {', '.join(case_ids)})")
    if unknown := [n for n in args.systems if not systems_mod.known(n)]:
        p.error(f"--systems: no system {', '.join(map(repr, unknown))} (the systems: {systems_mod.NAMES})")
    if why := next(filter(None, map(systems_mod.out_of_range, args.systems)), None):
        p.error(f"--systems: {why}")
    cpus = sorted(os.sched_getaffinity(0))
    if absent := [n for n in args.systems if (cpu := systems_mod.pinned_cpu(n)) is not None and cpu not in cpus]:
        p.error(f"--systems: {', '.join(absent)}: no such CPU here (this one's: {', '.join(map(str, cpus))})")
    named = [x for n in args.systems for x in (["tapswitch-q1", "tapswitch-q2"] if n == "tapswitch" else [n])]
    if twice := [n for n in dict.fromkeys(named) if named.count(n) > 1]:
        p.error(f"--systems: {', '.join(twice)} named twice (tapswitch is tapswitch-q1 and tapswitch-q2)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out {args.out}: not a directory")
    return args


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP: the run stops, cleans up, and writes what it measured."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signal = signal.Signals(signum).name


def _interrupt(signum, frame):
    raise Interrupted(signum)


def _hangup(signum, frame):
    """The terminal is gone: what the bench still says goes nowhere rather than fail, then it cleans up."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        if os.isatty(fd):
            os.dup2(devnull, fd)
    os.close(devnull)
    raise Interrupted(signum)


def make_ctx(args, lab) -> cases_mod.Ctx:
    q = args.quick

    def given(value, default):
        return default if value is None else value

    return cases_mod.Ctx(
        lab=lab, quick=q, reps=given(args.reps, 1 if q else 3),
        tcp_seconds=given(args.seconds, 2.0 if q else 10.0),
        frame_seconds=given(args.seconds, 1.0 if q else 3.0),
        sizes=given(args.sizes, ALL_SIZES), fdb_ns=given(args.fdb_n, [1024, 16384] if q else [1024, 1 << 20]),
        learn_n=given(args.learn_n, 16384 if q else 262144),
        learn_rate_pps=100_000, search_steps=args.search_steps,
        payload=args.payload, cc=args.cc,
    )


def missing_tools(args) -> str | None:
    """None if every command the chosen cases and systems run is here, else what is missing and
    where Debian has it: found before anything runs, not as a failure of every case that needs it."""
    needed = list(LAB_TOOLS)
    for case in cases_mod.cases():
        if not args.cases or case.id in args.cases:
            needed += case.tools
    for name in args.systems:
        needed += systems_mod.system_class(name).tools
    if args.profile:
        needed += ["perf", "tcpdump"]     # tcpdump: GSO end to end (without it, "0 TCP frames" read as measured)
    if args.install_ovs and "ovs" in args.systems and not systems_mod.Ovs.available() \
            and not all(shutil.which(t) for t in ("apt-get", "apt-cache")):
        return "--install-ovs: no apt-get here (it installs Debian's openvswitch-switch); install Open vSwitch " \
               "with this machine's package manager, or leave --install-ovs out (ovs is then skipped)"
    missing = [t for t in dict.fromkeys(needed) if shutil.which(t) is None]
    # Open vSwitch among others is skipped when missing; alone, the run would measure nothing.
    ovs_only = args.systems == ["ovs"] and not args.install_ovs and not systems_mod.Ovs.available()
    if ovs_only:
        missing.append("ovs-vswitchd")
    if not missing:
        return None
    packages = " ".join(dict.fromkeys(PACKAGES.get(t, t) for t in missing))
    return (f"missing: {', '.join(f'{t} ({PACKAGES.get(t, t)})' for t in missing)}; "
            f"apt-get install {packages}" + (" (or --install-ovs)" if ovs_only else ""))


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
    names = list(args.systems)
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
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(tapswitch.__file__)],
                   check=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE=""))


def run_case(ctx, case, systems, results, errors, loads, log) -> str | None:
    """Every repetition of `case` on every system that runs it; a failure is recorded in errors and
    the run goes on. Returns why the case did not run at all, or None."""
    runnable = [s for s in systems if case.runs_on(s)]
    if not runnable:
        return f"{case.name}: not run (" + (f"not a case for {', '.join(s.name for s in systems)}" if systems
                                            else "no system to run it") + ")"
    reps = case.reps or ctx.reps
    for rep in range(reps):
        k = rep % len(runnable)
        for system in runnable[k:] + runnable[:k]:        # rotate: no system always first
            hosts = []
            t0 = time.monotonic()
            try:
                hosts = ctx.lab.hosts(case.hosts)
                loads.append(traffic.others_busy())
                system.setup(hosts, fdb_size=case.fdb_size)
                cases_mod.prepare(ctx, case, system, hosts)
                measured = [{"case": case.name, "metric": m.metric, "unit": m.unit, "better": m.better,
                             "system": system.name, "rep": rep, "value": m.value}
                            for m in case.fn(ctx, system, hosts)]
                results.extend(measured)        # at once: an interruption takes a repetition whole or not at all
                log(f"  {case.name} / {system.name} / rep {rep + 1}: {time.monotonic() - t0:.1f} s")
            except KeyboardInterrupt:
                raise
            except Exception as e:
                errors.append({"case": case.name, "system": system.name, "rep": rep, "error": str(e)[-600:]})
                log(f"  {case.name} / {system.name} / rep {rep + 1}: FAILED: {e}")
                traceback.print_exc()
            finally:
                try:
                    system.teardown()
                    ctx.lab.drop_hosts(hosts)
                except Exception as e:      # the lab's close() removes what is left
                    errors.append({"case": case.name, "system": system.name, "rep": rep,
                                   "error": f"teardown: {str(e)[-600:]}"})
                    log(f"  {case.name} / {system.name} / rep {rep + 1}: teardown FAILED: {e}")
    return None


@dataclass
class Run:
    """What a run has planned and measured so far: what its outputs are written from."""

    args: list[str]
    out: str
    started: float
    ctx: cases_mod.Ctx | None = None
    systems: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plan: list = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)    # CPUs busy with other work just before each run

    def planned(self) -> int:
        """Repetitions of a case on a system the plan holds."""
        return sum((c.reps or self.ctx.reps) * sum(c.runs_on(s) for s in self.systems) for c in self.plan)

    def done(self) -> int:
        """Repetitions of a case on a system that ended, measured or failed (a teardown's failure
        is no repetition of its own: the one it followed is counted, or was interrupted)."""
        return len({(r["case"], r["system"], r["rep"]) for r in self.results + self.errors
                    if not r.get("error", "").startswith("teardown: ")})


def write_outputs(run: Run, interrupted: str | None = None) -> None:
    """results.json, RESULTS.md and results.png of what the run measured; interrupted (the
    signal's name): the run stopped early, and the outputs say it is partial."""
    meta = report.machine(args=run.args, started=run.started, notes=run.notes, ctx=run.ctx, systems=run.systems,
                          cases=run.plan)
    if run.loads:
        loads = sorted(run.loads)
        meta["others_busy"] = {"min": loads[0], "median": loads[len(loads) // 2], "max": loads[-1]}
    bridge = next((s for s in run.systems if s.kind == "bridge"), None)
    if bridge is not None:
        meta["br_netfilter"] = f"{bridge.netfilter} in the bridge's namespace"
    if interrupted:
        meta["interrupted"] = {"signal": interrupted, "runs_done": run.done(), "runs_planned": run.planned()}
    with open(os.path.join(run.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": run.results, "errors": run.errors}, f, indent=1)
    report.write(run.out, meta, run.results, run.errors, run.systems, run.plan)


def write_partial(run: Run, interrupted: str, log) -> None:
    """After an interruption and the cleanup: the outputs of the repetitions that ended, marked
    partial; none if none ended (what --out held stays); unmarked if every one had ended (the
    signal came as the last was torn down or the outputs were written)."""
    if run.ctx is None or run.done() == 0:
        log(f"bench: no repetition completed; nothing written to {run.out}")
        return
    whole = run.done() == run.planned()
    try:
        write_outputs(run, None if whole else interrupted)
    except Exception as e:          # the exit status still says interrupted; the cleanup is done
        log(f"bench: the partial results could not be written: {e}")
        traceback.print_exc()
        return
    log(f"wrote {os.path.join(run.out, 'RESULTS.md')} " + (f"(every run had ended before the {interrupted})" if whole
        else f"(partial: {run.done()} of {run.planned()} runs, interrupted by {interrupted})"))


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, TAP devices, trafgen)", file=sys.stderr)
        return 1
    if why := missing_tools(args):
        print(f"bench: {why}", file=sys.stderr)
        return 1
    if args.cc and (why := check_cc(args.cc)):
        print(f"bench: {why}", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.out):
            pass        # the outputs can be written there (a read-only mount): found now, not after the run
    except OSError as e:
        print(f"bench: --out {args.out}: {e.strerror}", file=sys.stderr)
        return 2
    tag = args.tag or f"bn{uuid.uuid4().hex[:4]}"
    lab = Lab(tag)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _hangup)
    run = Run(args=sys.argv[1:] if argv is None else argv, out=args.out, started=time.time())
    interrupted = None          # the signal's name
    written = False

    def log(msg):
        print(msg, flush=True)

    try:
        run.ctx = make_ctx(args, lab)
        run.systems, run.notes = pick_systems(args, lab)
        compile_tapswitch()
        run.plan = [c for c in cases_mod.cases(run.ctx) if not args.cases or c.id in args.cases]
        log(f"bench {tag}: systems {', '.join(s.name for s in run.systems)}; "
            f"cases {', '.join(c.name for c in run.plan)}; {run.ctx.reps} repetition(s)")
        for n in run.notes:
            log(f"  {n}")
        for case in run.plan:
            log(f"case {case.name}")
            if why := run_case(run.ctx, case, run.systems, run.results, run.errors, run.loads, log):
                run.notes.append(why)
                log(f"  {why}")
        write_outputs(run)
        written = True
        log(f"wrote {os.path.join(args.out, 'RESULTS.md')}")
        if args.profile:
            import profile_tapswitch
            path = profile_tapswitch.run(lab, run.ctx, args.out, log)
            with open(path) as src, open(os.path.join(args.out, "RESULTS.md"), "a") as dst:
                dst.write("\n" + src.read())
    except KeyboardInterrupt as e:
        interrupted = e.signal if isinstance(e, Interrupted) else "SIGINT"
        log("bench: interrupted; cleaning up")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        lab.close()
        left = lab.leftovers()
        if left:
            log(f"bench: left behind: {', '.join(left)}")
        if interrupted and not written:
            write_partial(run, interrupted, log)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if interrupted:
        return 130
    return 1 if run.errors else 0

if __name__ == "__main__":
    sys.exit(main())

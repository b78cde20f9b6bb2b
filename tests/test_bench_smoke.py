"""Smoke run of the benchmark (bench/run.py): it runs end to end, reports every case, and leaves nothing.

Tiny durations, tapswitch, the Linux bridge and the bare forwarder only, one
frame size, no thresholds: this keeps the bench working, it does not judge speed.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "run.py")
CASES = ["TCP goodput", "forwarding rate", "throughput (RFC 2544)", "light load", "address caching", "learning rate",
         "broadcast, 4 ports", "broadcast, 8 ports", "resources"]

pytestmark = pytest.mark.root


def _missing_tools() -> list[str]:
    return [t for t in ("trafgen", "iperf3", "ip", "ping") if shutil.which(t) is None]


@pytest.fixture
def tag():
    return f"bn{uuid.uuid4().hex[:4]}"


def _processes(tag: str) -> list[str]:
    """Processes a run with this tag started: the tag in their command line (its temporary directory
    holds their configs and programs) or BENCH_LAB=tag in their environment (the lab's, iperf3 too)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:         # gone meanwhile
            continue
        if tag in cmd or f"BENCH_LAB={tag}".encode() in env:
            found.append(f"pid {pid}: {cmd}")
    return found


def _leftovers(tag: str, tmpdir: str | None = None) -> list[str]:
    """What a run with this tag left: namespaces, devices, processes, and its temporary directory
    (a bench run with TMPDIR=tmpdir)."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in ns.splitlines() if line.startswith(tag)]
    found += [m for m in re.findall(r"^\d+: ([^:@]+)", links, re.M) if m.startswith(tag)]
    found += _processes(tag)
    if tmpdir is not None:
        found += glob.glob(os.path.join(tmpdir, f"{tag}-*"))
    return found


def _env(tmpdir) -> dict:
    os.makedirs(tmpdir, exist_ok=True)
    return dict(os.environ, TMPDIR=str(tmpdir))


def _needs_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces and TAP devices")
    if _missing_tools():
        pytest.skip(f"missing: {', '.join(_missing_tools())}")


def test_bench_quick_run_reports_every_case_and_cleans_up(tmp_path, tag):
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces and TAP devices")
    if _missing_tools():
        pytest.skip(f"missing: {', '.join(_missing_tools())}")
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    argv = [sys.executable, BENCH, "--quick", "--systems", "tapswitch,bridge,bare", "--sizes", "64",
            "--seconds", "0.5", "--reps", "1", "--fdb-n", "256", "--learn-n", "1024", "--cc", "reno",
            "--search-steps", "1", "--out", str(out), "--tag", tag]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=ROOT, env=_env(tmp))
    finally:
        left = _leftovers(tag, tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert left == [], f"left behind: {left}"
    results = (out / "RESULTS.md").read_text()
    rows = [line for line in results.splitlines() if line.startswith("| ")]
    for case in CASES:
        assert any(line.startswith(f"| {case} |") for line in rows), f"no row for {case}:\n{results}"
    assert "ratio to the Linux bridge" in results
    # The bare forwarder runs the two-host cases it can (a figure), and no case that needs a table.
    header = [c.strip() for c in rows[0].strip("|").split("|")]

    def column(system):
        return {line.split("|")[2].strip(): line.strip("|").split("|")[header.index(system)].strip()
                for line in rows[1:]}
    cell = column("bare")
    assert re.match(r"\d", cell["TCP goodput, 1 flow"]) and re.match(r"\d", cell["throughput (loss < 0.1 %), 64 B"])
    assert cell["new MACs learned per second"] == "—", results
    # CPU at a light load and while TCP runs: a figure for the forwarders with processes, none for the bridge.
    bridge = column("bridge")
    for metric in ("switch CPU at 10k frames/s, 64 B", "switch CPU while TCP runs, 1 flow"):
        assert re.match(r"\d", cell[metric]) and bridge[metric] == "—", results
    assert re.search(r"\d+ cores, Linux \S+", results)
    # The endpoints' congestion control, as iperf3's senders reported it: the one asked for.
    assert "TCP congestion control of the iperf3 endpoints: reno (`--cc reno`)" in results, results
    assert "one Ethernet frame of ethertype 0x88b5" in results      # the default frames, as the Method says
    # The Method says what ran: the bare forwarder's cases, iperf3's whole seconds, trafgen's rate window.
    assert "the bare forwarder only TCP goodput, forwarding rate, throughput (RFC 2544) and light load" in results
    assert "TCP: iperf3, 1 s per run" in results and "rate taken from 25 % to 95 % of the run" in results
    assert "by a binary search (1 step;" in results, results        # --search-steps: one run, not six
    # How many addresses the learning rate was measured with (--learn-n), and in what table.
    assert "Learning rate (RFC 2889 5.8): 1K new source MACs at the generator's full speed" in results, results
    assert "Table size 1M entries where the system has a limit" in results, results
    # How busy the machine was with other work before each run, in CPUs (of its cores).
    assert re.search(r"Other work on the machine .*: median \d+\.\d\d, min \d+\.\d\d, max \d+\.\d\d of \d+", results)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "results.png").stat().st_size > 0


def test_bench_refuses_a_congestion_control_the_machine_lacks(tmp_path, tag):
    if os.geteuid() != 0:
        pytest.skip("needs root: the bench checks for it first")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, BENCH, "--cases", "tcp", "--cc", "nosuchcc", "--out", str(out),
                        "--tag", tag], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--cc nosuchcc: not available here" in r.stderr
    assert re.search(r"tcp_available_congestion_control: .*\b(reno|cubic)\b", r.stderr), r.stderr
    assert not out.exists() and _leftovers(tag) == []      # it stopped before making anything


def test_profiler_finds_py_spy_beside_the_interpreter_off_path():
    """`.venv/bin/python bench/profile_tapswitch.py` without the venv activated: pip put py-spy in the
    venv's bin/, which is not on PATH; the profiler finds it there rather than report it missing."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.access(beside, os.X_OK):
        pytest.skip("py-spy is not installed beside this interpreter (pip install -r bench/requirements.txt)")
    code = "import sys; sys.path.insert(0, 'bench'); import profile_tapswitch as p; print(p.py_spy_path())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={"PATH": "/nonexistent"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == beside


def _start_and_wait_for_trafgen(tag, out, tmp, *extra):
    """A tiny bench run, in a session of its own as a shell's job; returned once its trafgen floods."""
    p = subprocess.Popen([sys.executable, BENCH, "--systems", "tapswitch-q1", "--cases", "frames", "--sizes", "64",
                          "--reps", "1", "--seconds", "20", "--out", str(out), "--tag", tag, *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env(tmp),
                         start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(" trafgen " in f" {p} " for p in _processes(tag)):
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            pytest.fail(f"no trafgen: {p.communicate()[0][-3000:]}")
        time.sleep(0.2)
    return p


def _gone(tag, tmp, timeout) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _leftovers(tag, tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _reaped(p: subprocess.Popen, tag, tmp) -> list[str]:
    """What an interrupted run left, once it ended (killed if it has not: a test that failed early)."""
    if p.poll() is None:
        p.kill()
        p.wait()
    return _gone(tag, tmp, 5)


def test_bench_hung_up_cleans_up_as_on_sigterm(tmp_path, tag):
    """The terminal or ssh session closes (SIGHUP to the bench): the switch, the flooding trafgen, the
    namespaces and the temporary directory go, as on SIGTERM; the processes it started in sessions of
    their own never see the hangup."""
    _needs_root_and_tools()
    tmp = tmp_path / "tmp"
    p = _start_and_wait_for_trafgen(tag, tmp_path / "out", tmp)
    p.send_signal(signal.SIGHUP)
    try:
        output = p.communicate(timeout=60)[0]
    finally:
        left = _gone(tag, tmp, 5)
    assert p.returncode == 130, output[-3000:]
    assert "interrupted; cleaning up" in output
    assert left == [], f"left behind: {left}"
    # Stopped in its first repetition: nothing measured, nothing written, and it says so.
    assert f"no repetition completed; nothing written to {tmp_path / 'out'}" in output, output[-3000:]
    assert not os.listdir(tmp_path / "out")


def test_bench_interrupted_writes_the_repetitions_that_completed_marked_partial(tmp_path, tag):
    """Ctrl-C (SIGINT) once a repetition has ended, while the next one floods: the bench cleans up as
    before, then writes RESULTS.md, results.json and the plot of the repetitions that ended, marked
    partial, and exits 130 (a run interrupted near its end lost every figure)."""
    _needs_root_and_tools()
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    p = subprocess.Popen([sys.executable, BENCH, "--systems", "bridge", "--cases", "frames", "--sizes", "64",
                          "--reps", "3", "--seconds", "4", "--out", str(out), "--tag", tag],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env(tmp),
                         start_new_session=True)
    lines: list[str] = []
    first_done = threading.Event()

    def read():
        for line in p.stdout:
            lines.append(line)
            if re.search(r"/ bridge / rep \d+: [\d.]+ s$", line):
                first_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first_done.wait(120), "".join(lines)[-3000:]
        # The next repetition under way: its trafgen floods (if it is missed, the one after; three in all).
        deadline = time.monotonic() + 30
        while not any(" trafgen " in f" {c} " for c in _processes(tag)) and time.monotonic() < deadline:
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        left = _reaped(p, tag, tmp)
    output = "".join(lines)
    assert p.returncode == 130, output[-3000:]
    assert left == [], f"left behind: {left}"
    done = re.findall(r"/ bridge / rep (\d+): [\d.]+ s$", output, re.M)
    assert 1 <= len(done) < 3, output[-3000:]
    with open(out / "results.json") as f:
        data = json.load(f)
    assert data["meta"]["interrupted"] == {"signal": "SIGINT", "runs_done": len(done), "runs_planned": 3}
    # The repetitions that ended, each whole; none of the one the interruption stopped.
    assert sorted({r["rep"] + 1 for r in data["results"]}) == sorted(map(int, done)), data["results"]
    assert data["errors"] == []
    results = (out / "RESULTS.md").read_text()
    assert results.startswith("# tapswitch benchmark (partial: interrupted)\n"), results
    assert f"**Partial results: the run was interrupted (SIGINT) after {len(done)} of 3 runs**" in results
    assert re.search(r"^\| forwarding rate \| forwarding rate, 64 B \| Mpps \| \d", results, re.M), results
    assert f"(partial: {len(done)} of 3 runs, interrupted by SIGINT)" in output
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "results.png").stat().st_size > 0


def test_bench_interrupted_after_its_last_repetition_writes_whole_results(tmp_path, tag):
    """SIGTERM once the last repetition has ended (as it is torn down, or the outputs written): every run
    was measured, and the outputs say so, unmarked (they read "Partial results: ... after 1 of 1 runs")."""
    _needs_root_and_tools()
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    p = subprocess.Popen([sys.executable, BENCH, "--systems", "bare", "--cases", "light", "--reps", "1",
                          "--seconds", "0.1", "--out", str(out), "--tag", tag], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env(tmp), start_new_session=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if re.search(r"/ bare / rep 1: [\d.]+ s$", line):
                p.send_signal(signal.SIGTERM)
                break
        lines.append(p.communicate(timeout=60)[0])
    finally:
        left = _reaped(p, tag, tmp)
    output = "".join(lines)
    assert p.returncode == 130, output[-3000:]
    assert left == [], f"left behind: {left}"
    with open(out / "results.json") as f:
        assert "interrupted" not in json.load(f)["meta"]
    results = (out / "RESULTS.md").read_text()
    assert results.startswith("# tapswitch benchmark\n") and "Partial" not in results, results
    assert re.search(r"^\| light load \| switch CPU at 1k frames/s, 64 B \| % of a CPU ↓ \| \d", results, re.M)


def test_bench_killed_outright_leaves_no_process_running(tmp_path, tag):
    """SIGKILL runs no cleanup in the bench: its processes get a parent-death signal, and the lab's
    guard kills what they started (trafgen's workers) and removes the namespaces and the temporary directory."""
    _needs_root_and_tools()
    tmp = tmp_path / "tmp"
    p = _start_and_wait_for_trafgen(tag, tmp_path / "out", tmp)
    p.kill()
    p.communicate(timeout=30)
    left = _gone(tag, tmp, 15)
    assert left == [], f"left behind: {left}"


@pytest.mark.parametrize("argv, message", [
    (["--cases", "nosuch"], "--cases: no case 'nosuch' (the cases: tcp, frames, "),
    (["--cases", "tcp,broadcast"], "--cases: no case 'broadcast' (the cases: tcp, frames, "),
    (["--systems", "tapswitch-q1,nosuch"], "--systems: no system 'nosuch' (the systems: tapswitch (queues 1 and 2), "
     "tapswitch-qN (N queues) then, in this order and each optional, -uring | -uring-burst | -readwrite, -cpuK | "
     "-spread, -qlenL, -busypollU"),
    (["--systems", ","], "argument --systems: no name given"),
    (["--sizes", "abc"], "argument --sizes: not a whole number: 'abc'"),
    (["--sizes", "64,10"], "argument --sizes: 10: must be from 64 to 1518"),
    (["--sizes", "9018"], "argument --sizes: 9018: must be from 64 to 1518"),
    (["--fdb-n", "x"], "argument --fdb-n: not a whole number: 'x'"),
    (["--fdb-n", "0"], "argument --fdb-n: 0: must be from 1 to 16777216"),
    (["--fdb-n", "1024,16777217"], "argument --fdb-n: 16777217: must be from 1 to 16777216"),
    (["--learn-n", "20000000"], "argument --learn-n: must be at most 16777216: '20000000'"),
    (["--reps", "0"], "argument --reps: must be more than 0: '0'"),
    (["--search-steps", "0"], "argument --search-steps: must be more than 0: '0'"),
    (["--seconds", "0"], "argument --seconds: must be more than 0: '0'"),
    (["--seconds", "-1"], "argument --seconds: must be more than 0: '-1'"),
    (["--learn-n", "many"], "argument --learn-n: not a number: 'many'"),
    (["--tag", "bn0123456789a"], "argument --tag: tag 'bn0123456789a': at most 12 characters"),
    (["--tag", "bn/x"], "argument --tag: tag 'bn/x': letters, digits, '_' and '-' only"),
    (["--out", BENCH], f"--out {BENCH}: not a directory"),
    (["--systems", "bridge,tapswitch-q1-cpu4096", "--cases", "light", "--seconds", "0.1"],
     "--systems: tapswitch-q1-cpu4096: no such CPU here (this one's: 0"),
    (["--systems", "tapswitch,bridge,tapswitch-q1,bridge"], "--systems: tapswitch-q1, bridge named twice"),
    (["--systems", "bridge,tapswitch-q0", "--cases", "light", "--seconds", "0.1"],
     "--systems: tapswitch-q0: switch.queues 0: must be from 1 to 16"),
    (["--systems", "bridge,tapswitch-q1-qlen8", "--cases", "light", "--seconds", "0.1"],
     "--systems: tapswitch-q1-qlen8: switch.queue_len 8: must be from 16 to 65536"),
    (["--systems", "bridge,tapswitch-q1-busypoll5000", "--cases", "light", "--seconds", "0.1"],
     "--systems: tapswitch-q1-busypoll5000: switch.busy_poll_us 5000: must be from 0 to 1000"),
])
def test_bench_refuses_bad_options_before_it_runs_anything(tmp_path, argv, message):
    """A wrong option is an error naming what is allowed, and nothing runs: what --out held stays."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "RESULTS.md").write_text("an earlier run\n")
    r = subprocess.run([sys.executable, BENCH, "--out", str(out), *argv], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(os.listdir(out)) == ["RESULTS.md"] and (out / "RESULTS.md").read_text() == "an earlier run\n"


def test_bench_help_shows_the_output_directory_and_the_system_variants():
    r = subprocess.run([sys.executable, BENCH, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env=dict(os.environ, COLUMNS="1000"))        # argparse wraps at hyphens too
    text = " ".join(r.stdout.split())
    assert r.returncode == 0, r.stderr
    assert re.search(r"--out OUT directory of RESULTS.md, results.json and results.png; .*\(default: \S+/bench/out\)",
                     text), text
    for variant in ("-uring | -uring-burst | -readwrite", "-cpuK | -spread", "-qlenL", "-busypollU", "bare-busypollU"):
        assert variant in text, text


def test_bench_without_tapswitch_says_which_python_to_use(tmp_path):
    """Run by an interpreter tapswitch is not installed in (python3 after scripts/install.sh, which
    installs into .venv): one line saying so and how to run it, no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-S", BENCH, "--cases", "tcp", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("bench: No module named 'tapswitch'") and ".venv/bin/python bench/run.py" in r.stderr
    assert not (tmp_path / "out").exists()


def test_bench_notes_a_case_no_chosen_system_runs_and_keeps_the_rest(tmp_path, tag):
    """--systems tapswitch-q2 --cases frames,tcp: the forwarding rate runs on tapswitch's one-queue variant
    only, so it is skipped with a note in the log and RESULTS.md; TCP's figures are written."""
    _needs_root_and_tools()
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    try:
        r = subprocess.run([sys.executable, BENCH, "--systems", "tapswitch-q2", "--cases", "frames,tcp", "--reps", "1",
                            "--seconds", "1", "--cc", "reno", "--out", str(out), "--tag", tag],
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env(tmp))
    finally:
        left = _leftovers(tag, tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert left == [], f"left behind: {left}"
    note = "forwarding rate: not run (not a case for tapswitch-q2)"
    assert note in r.stdout
    results = (out / "RESULTS.md").read_text()
    assert f"- {note}" in results, results
    assert re.search(r"^\| TCP goodput \| TCP goodput, 1 flow \| Gbit/s \| \d", results, re.M), results


def test_bench_reports_a_case_whose_hosts_cannot_be_made_as_failed_and_keeps_the_rest(tmp_path, tag):
    """A failure while the lab makes a case's hosts (here a namespace of that name exists already) fails
    that case like any other: the cases measured before it are still written, and nothing is left."""
    _needs_root_and_tools()
    taken = f"{tag}h2"          # the third host: the address caching case needs it, the forwarding rate not
    subprocess.run(["ip", "netns", "add", taken], check=True)
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    try:
        r = subprocess.run([sys.executable, BENCH, "--systems", "bridge", "--cases", "frames,caching", "--sizes", "64",
                            "--reps", "1", "--seconds", "1", "--fdb-n", "256", "--out", str(out), "--tag", tag],
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env(tmp))
        assert subprocess.run(["ip", "netns", "pids", taken], capture_output=True).returncode == 0, \
            "the bench removed a namespace it did not make"
    finally:
        subprocess.run(["ip", "netns", "del", taken], capture_output=True)
        left = _leftovers(tag, tmp)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert left == [], f"left behind: {left}"
    results = (out / "RESULTS.md").read_text()
    assert re.search(r"^\| forwarding rate \| forwarding rate, 64 B \| Mpps \| \d", results, re.M), results
    assert re.search(rf"^- address caching / bridge / rep 1: .*{taken}", results, re.M), results


OVS_TOOLS = ("ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovsdb-tool", "ovs-appctl")
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


def _needs_ovs() -> None:
    _needs_root_and_tools()
    if not all(shutil.which(t) for t in OVS_TOOLS) or not os.path.exists(OVS_SCHEMA):
        pytest.skip("Open vSwitch is not installed")


def _link(name: str) -> str | None:
    """`IFINDEX MAC` of device `name` in this namespace (which device it is), or None."""
    r = subprocess.run(["ip", "-o", "link", "show", "dev", name], capture_output=True, text=True)
    m = re.match(r"(\d+): .* link/ether (\S+)", r.stdout)
    return f"{m.group(1)} {m.group(2)}" if r.returncode == 0 and m else None


@pytest.fixture
def users_ovs(tmp_path, tag):
    """An Open vSwitch of the machine's own, as its owner runs it, with a userspace bridge: its db,
    sockets and logs in a directory of its own (not the bench's), its datapath's device "ovs-netdev"
    in this namespace. Yields (ovs-vsctl argv, the bridge's name)."""
    _needs_ovs()
    if _link("ovs-netdev") is not None:
        pytest.skip("an Open vSwitch with a userspace bridge runs here already")
    d = str(tmp_path / "users-ovs")
    os.makedirs(d)
    env = dict(os.environ, OVS_RUNDIR=d, OVS_DBDIR=d, OVS_LOGDIR=d, OVS_SYSCONFDIR=d)
    vsctl = ["ovs-vsctl", f"--db=unix:{d}/db.sock", "--timeout=30"]
    bridge = f"u{tag}"
    try:
        subprocess.run(["ovsdb-tool", "create", f"{d}/conf.db", OVS_SCHEMA], check=True, env=env)
        subprocess.run(["ovsdb-server", f"{d}/conf.db", f"--remote=punix:{d}/db.sock", f"--unixctl={d}/db.ctl",
                        f"--pidfile={d}/db.pid", f"--log-file={d}/db.log", "--detach"], check=True, env=env)
        subprocess.run([*vsctl, "--no-wait", "init"], check=True, env=env)
        subprocess.run(["ovs-vswitchd", f"unix:{d}/db.sock", f"--unixctl={d}/vs.ctl", f"--pidfile={d}/vs.pid",
                        f"--log-file={d}/vs.log", "--detach"], check=True, env=env)
        subprocess.run([*vsctl, "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev"],
                       check=True, env=env)
        yield vsctl, bridge
    finally:
        for ctl in ("vs.ctl", "db.ctl"):
            if os.path.exists(f"{d}/{ctl}"):
                subprocess.run(["ovs-appctl", "-t", f"{d}/{ctl}", "exit", *(["--cleanup"] if ctl == "vs.ctl" else [])],
                               capture_output=True, env=env, timeout=30)
        for pidfile in ("vs.pid", "db.pid"):
            try:
                with open(f"{d}/{pidfile}") as f:
                    os.kill(int(f.read()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        for dev in (bridge, "ovs-netdev"):
            subprocess.run(["ip", "link", "del", dev], capture_output=True)


def test_bench_open_vswitch_runs_beside_the_machines_own_and_leaves_it_alone(tmp_path, tag, users_ovs):
    """The machine runs an Open vSwitch of its own with a userspace bridge (its datapath's TAP is
    "ovs-netdev", whatever the instance): the bench's Open vSwitch still measures, and the machine's
    keeps its bridge and its datapath's device, the same one (the bench's ovs-vswitchd made its own
    "ovs-netdev" beside it: Device or resource busy, and every OVS case failed)."""
    vsctl, bridge = users_ovs
    before = _link("ovs-netdev")
    assert before is not None
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    try:
        r = subprocess.run([sys.executable, BENCH, "--systems", "ovs", "--cases", "frames", "--sizes", "64",
                            "--reps", "1", "--seconds", "1", "--out", str(out), "--tag", tag],
                           capture_output=True, text=True, timeout=180, cwd=ROOT, env=_env(tmp))
    finally:
        left = _leftovers(tag, tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert left == [], f"left behind: {left}"
    results = (out / "RESULTS.md").read_text()
    assert re.search(r"^\| forwarding rate \| forwarding rate, 64 B \| Mpps \| \d", results, re.M), results
    assert _link("ovs-netdev") == before
    assert subprocess.run([*vsctl, "br-exists", bridge]).returncode == 0


def test_bench_killed_outright_while_open_vswitch_runs_leaves_no_device(tmp_path, tag):
    """SIGKILL while the bench's Open vSwitch forwards: ovs-vswitchd dies without --cleanup, and its
    TAPs are persistent -- the bridge's own port and the datapath's "ovs-netdev" stayed in the
    machine's namespace, and the next bench's Open vSwitch could not make its own."""
    _needs_ovs()
    if _link("ovs-netdev") is not None:
        pytest.skip("an Open vSwitch with a userspace bridge runs here already")
    tmp = tmp_path / "tmp"
    p = _start_and_wait_for_trafgen(tag, tmp_path / "out", tmp, "--systems", "ovs")
    p.kill()
    p.communicate(timeout=30)
    try:
        left = _gone(tag, tmp, 15)
        stray = _link("ovs-netdev")
    finally:
        subprocess.run(["ip", "link", "del", f"{tag}br"], capture_output=True)
        if stray is not None:
            subprocess.run(["ip", "link", "del", "ovs-netdev"], capture_output=True)
    assert left == [], f"left behind: {left}"
    assert stray is None, f"left behind: {stray}"


def _path_without(tmp_path, *commands) -> str:
    """A PATH of every command of this one but `commands`: a machine these are not installed on."""
    d = tmp_path / "bin"
    d.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            exe = os.path.join(directory, name)
            if name not in commands and not (d / name).exists() and os.access(exe, os.X_OK) \
                    and not os.path.isdir(exe):
                (d / name).symlink_to(exe)
    return str(d)


@pytest.mark.parametrize("argv, message", [
    (["--cases", "frames,tcp"], "bench: missing: iperf3 (iperf3), trafgen (netsniff-ng); "
     "apt-get install iperf3 netsniff-ng\n"),
    (["--cases", "light", "--profile"], "bench: missing: perf (linux-perf), tcpdump (tcpdump); "
     "apt-get install linux-perf tcpdump\n"),
    (["--systems", "ovs", "--cases", "light"], "bench: missing: ovs-vswitchd (openvswitch-switch); "
     "apt-get install openvswitch-switch (or --install-ovs)\n"),
])
def test_bench_without_a_tool_it_needs_says_which_before_it_runs_anything(tmp_path, tag, argv, message):
    """trafgen, iperf3, perf or tcpdump not installed: one line naming each command the chosen cases need and its
    Debian package, exit 1, before anything is made or measured (each case failed in turn with a
    traceback, after its run's seconds; --profile ended a whole run in a traceback; Open vSwitch alone,
    skipped, left no system: an empty RESULTS.md replaced the last one, and the plot ended in a traceback)."""
    _needs_root_and_tools()
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    env = dict(_env(tmp), PATH=_path_without(tmp_path, "trafgen", "iperf3", "perf", "tcpdump", "ovs-vswitchd"))
    r = subprocess.run([sys.executable, BENCH, "--systems", "bridge", "--reps", "1", "--seconds", "1", *argv,
                        "--out", str(out), "--tag", tag], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=env)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stderr == message and r.stdout == ""
    assert not out.exists() and _leftovers(tag, tmp) == []


def test_bench_install_ovs_without_apt_says_so_before_it_runs_anything(tmp_path, tag):
    """--install-ovs where Open vSwitch is missing and apt-get is not installed (not a Debian machine):
    one line saying so, exit 1, before anything is made (a traceback: FileNotFoundError: 'apt-cache')."""
    _needs_root_and_tools()
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    env = dict(_env(tmp), PATH=_path_without(tmp_path, "ovs-vswitchd", "apt-get", "apt-cache"))
    r = subprocess.run([sys.executable, BENCH, "--systems", "bridge,ovs", "--install-ovs", "--cases", "light",
                        "--reps", "1", "--seconds", "0.1", "--out", str(out), "--tag", tag],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stderr == "bench: --install-ovs: no apt-get here (it installs Debian's openvswitch-switch); install " \
        "Open vSwitch with this machine's package manager, or leave --install-ovs out (ovs is then skipped)\n"
    assert r.stdout == "" and not out.exists() and _leftovers(tag, tmp) == []


def test_bench_refuses_an_out_it_cannot_write_before_it_runs_anything(tmp_path, tag):
    """--out a directory on a read-only mount: one line saying so, exit 2, before anything is made
    (the whole run went by, then writing results.json ended in a traceback and every figure was lost)."""
    _needs_root_and_tools()
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", f"{tag}-ro", str(out)], check=True)
    try:
        r = subprocess.run([sys.executable, BENCH, "--systems", "bridge", "--cases", "light", "--reps", "1",
                            "--seconds", "0.1", "--out", str(out), "--tag", tag],
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env(tmp))
    finally:
        subprocess.run(["umount", str(out)], check=True)
        left = _leftovers(tag, tmp)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stderr == f"bench: --out {out}: Read-only file system\n" and r.stdout == ""
    assert left == [], f"left behind: {left}"


def test_bench_runs_a_case_whose_tools_are_here_when_others_are_missing(tmp_path, tag):
    """Without trafgen and iperf3, the light load case (frames sent by bench/pacer.c) still runs."""
    _needs_root_and_tools()
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    env = dict(_env(tmp), PATH=_path_without(tmp_path, "trafgen", "iperf3"))
    try:
        r = subprocess.run([sys.executable, BENCH, "--systems", "bare", "--cases", "light", "--reps", "1",
                            "--seconds", "0.5", "--out", str(out), "--tag", tag],
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    finally:
        left = _leftovers(tag, tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert left == [], f"left behind: {left}"
    assert re.search(r"^\| light load \| switch CPU at 1k frames/s, 64 B \| % of a CPU ↓ \| \d",
                     (out / "RESULTS.md").read_text(), re.M)


def test_profiler_without_perf_says_so_in_its_report(tmp_path):
    """bench/profile_tapswitch.py where perf is not installed: PROFILE.md says perf is not usable, and
    how to get it (it stopped on a traceback: FileNotFoundError: 'perf')."""
    _needs_root_and_tools()
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    env = dict(_env(tmp), PATH=_path_without(tmp_path, "perf"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "profile_tapswitch.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "perf is not usable here (apt-get install linux-perf); nothing profiled." in (out / "PROFILE.md").read_text()
    assert os.listdir(tmp) == []


def test_profiler_says_where_the_workers_time_goes_by_part(tmp_path):
    """bench/profile_tapswitch.py on this machine: for 64 B frames and for TCP, the worker's time
    by part (TAP reads, TAP writes, io_uring's own work, ...), measured by perf's call graphs,
    as RESULTS.md's "Where the time goes" gives it; a worker forwarding spends time in both."""
    _needs_root_and_tools()
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "profile_tapswitch.py"), "--out", str(out),
                        "--seconds", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env(tmp))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (out / "PROFILE.md").read_text()
    tables = report.split("Worker, by what it called:")[1:]
    assert len(tables) == 2, report             # 64 B frames, then TCP
    for table in tables:
        parts = dict(re.findall(r"^\| ([^|]+?) \| [^|]+ \| ([\d.-]+) \|$", table.split("\n\n")[1], re.M))
        assert {"TAP reads", "TAP writes", "io_uring's own work", "outside system calls (tapswitch's C)"} <= set(parts)
        assert float(parts["TAP reads"]) > 0 and float(parts["TAP writes"]) > 0, table
    assert os.listdir(tmp) == []


def test_bench_names_an_address_count_as_it_is():
    """The address caching case's rows name N in K or M only when N is a whole number of them (--fdb-n
    1572864 was labelled 1M MACs, beside a row of --fdb-n 1048576 of the same name)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import cases
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    assert [cases.count(n) for n in (256, 1000, 1024, 16384, 1536 << 10, 1 << 20, 3 << 20, 1048577)] == \
        ["256", "1000", "1K", "16K", "1536K", "1M", "3M", "1048577"]


REPORT = os.path.join(ROOT, "bench", "report.py")


def test_report_renders_a_runs_results_again(tmp_path):
    """`python bench/report.py OUT` writes RESULTS.md again from OUT/results.json (here the one kept in
    bench/, of a run before the method named its address counts)."""
    shutil.copy(os.path.join(ROOT, "bench", "results.json"), tmp_path / "results.json")
    r = subprocess.run([sys.executable, REPORT, str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    results = (tmp_path / "RESULTS.md").read_text()
    assert results.startswith("# tapswitch benchmark\n") and "| case | metric | unit |" in results


@pytest.mark.parametrize("content, message", [
    (None, "results.json: No such file or directory\n"),
    ('{"meta": {}}', "results.json: not the results.json of a bench run (KeyError: 'results')\n"),
])
def test_report_without_a_runs_results_says_so(tmp_path, content, message):
    """A directory holding no run's results.json: one line naming it, exit 1 (a traceback)."""
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    r = subprocess.run([sys.executable, REPORT, str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr == f"bench/report.py: {tmp_path}/{message}"


def test_bench_learning_rate_divides_by_the_time_trafgen_sent_not_its_start(tmp_path, tag):
    """The learning rate is the MACs learned over the time trafgen sent them, by its own count: 1024 new
    MACs go in a few ms, and trafgen's start (its ring, its config; ~50 ms here) counted too, so a
    --learn-n of 16K (--quick's) or 1K came out at a fraction of the rate, and ratios nearer 1."""
    _needs_root_and_tools()
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    try:
        r = subprocess.run([sys.executable, BENCH, "--systems", "bridge", "--cases", "learning", "--learn-n", "1024",
                            "--reps", "1", "--out", str(out), "--tag", tag],
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env(tmp))
    finally:
        left = _leftovers(tag, tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert left == [], f"left behind: {left}"
    with open(out / "results.json") as f:
        value = {x["metric"]: x["value"] for x in json.load(f)["results"]}
    learned = value["learned of offered at full speed"] / 100 * 1024
    assert learned > 0, value
    sending = learned / (value["new MACs learned per second"] * 1e6)
    assert sending < 0.025, f"{learned:.0f} MACs in {1000 * sending:.1f} ms"


def _bench_module(name: str):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))


PACKAGE_UNITS = ("bnpkg-switch.service", "bnpkg-record.service")


def _systemd_root(tmp_path, runs: bool):
    """A directory for `systemctl --root` and dpkg's DPKG_ROOT: the machine a package is installed on,
    systemd running (/run/systemd/system, which systemd makes at boot) or not."""
    if shutil.which("systemctl") is None or shutil.which("deb-systemd-helper") is None:
        pytest.skip("no systemctl or deb-systemd-helper (init-system-helpers)")
    root = tmp_path / "root"
    for d in ("lib/systemd/system", "etc/systemd/system", *(["run/systemd/system"] if runs else [])):
        (root / d).mkdir(parents=True)
    return str(root)


def _postinst(root: str, *argv: str) -> subprocess.CompletedProcess:
    """deb-systemd-helper as a package's postinst runs it, on the machine in root."""
    env = dict(os.environ, DPKG_ROOT=root, DPKG_MAINTSCRIPT_PACKAGE="bnpkg", DPKG_MAINTSCRIPT_NAME="postinst")
    return subprocess.run(["deb-systemd-helper", *argv], env=env, capture_output=True, text=True, timeout=60)


def _install_package(root: str) -> None:
    """The package's units, and what its postinst (dh_installsystemd's) does to them: a new install's
    deb-systemd-helper enable makes their WantedBy links, whatever a mask."""
    for unit in PACKAGE_UNITS:
        (Path(root) / "lib/systemd/system" / unit).write_text(
            "[Unit]\nDescription=a package's service\n[Service]\nExecStart=/bin/true\n"
            "[Install]\nWantedBy=multi-user.target\n")
        assert _postinst(root, "--quiet", "was-enabled", unit).returncode == 0
        r = _postinst(root, "enable", unit)
        assert r.returncode == 0, r.stderr


def _links(root: str) -> list[str]:
    """The units' links in /etc and /run (enabled, masked)."""
    return sorted(str(p.relative_to(root)) for d in ("etc", "run") for p in (Path(root) / d).rglob("*")
                  if p.is_symlink())


def test_bench_install_keeps_a_packages_services_from_starting_and_leaves_them_disabled(tmp_path):
    """--install-ovs on a machine run by systemd: while apt-get runs, the package's services are masked
    for this boot, so its postinst's deb-systemd-invoke start (which starts a unit only if `systemctl
    is-enabled` says enabled) starts none; afterwards they are unmasked and disabled, and nothing of the
    bench's is left (the machine kept an Open vSwitch service running and enabled that the bench never uses)."""
    services = _bench_module("services")
    root = _systemd_root(tmp_path, runs=True)
    assert services.systemd_runs(root)
    with services.held(PACKAGE_UNITS, root=root) as masked:
        _install_package(root)
        during = [services.state(u, root) for u in PACKAGE_UNITS]
    assert during == ["masked-runtime"] * 2 and not any("enabled" in s for s in during), during
    assert masked == list(PACKAGE_UNITS)
    assert [services.state(u, root) for u in PACKAGE_UNITS] == ["enabled"] * 2     # the postinst's links
    services.leave_disabled(PACKAGE_UNITS, root=root)
    assert [services.state(u, root) for u in PACKAGE_UNITS] == ["disabled"] * 2
    assert _links(root) == [] and os.listdir(Path(root) / "run/systemd/system") == []
    # The package's next upgrade keeps them so: its postinst enables only what was-enabled finds enabled.
    assert all(_postinst(root, "--quiet", "was-enabled", u).returncode == 1 for u in PACKAGE_UNITS)


def test_bench_install_leaves_a_unit_masked_before_as_it_was(tmp_path):
    """A service its owner masked for this boot before the bench ran stays masked: the bench unmasks
    only what it masked, and disables nothing masked."""
    services = _bench_module("services")
    root = _systemd_root(tmp_path, runs=True)
    theirs, ours = PACKAGE_UNITS
    subprocess.run(["systemctl", f"--root={root}", "mask", "--runtime", theirs], check=True, capture_output=True)
    with services.held(PACKAGE_UNITS, root=root) as masked:
        _install_package(root)
    assert masked == [ours]
    services.leave_disabled(PACKAGE_UNITS, root=root)
    assert services.state(theirs, root) == "masked-runtime" and services.state(ours, root) == "disabled"


def test_bench_install_without_systemd_running_masks_nothing(tmp_path):
    """Where systemd does not run (a container, a chroot), no package script starts a unit, and a mask
    would make /run/systemd/system, which says systemd runs: nothing is masked; the services are
    still left disabled."""
    services = _bench_module("services")
    root = _systemd_root(tmp_path, runs=False)
    assert not services.systemd_runs(root)
    with services.held(PACKAGE_UNITS, root=root) as masked:
        _install_package(root)
    assert masked == [] and not (Path(root) / "run").exists()
    services.leave_disabled(PACKAGE_UNITS, root=root)
    assert [services.state(u, root) for u in PACKAGE_UNITS] == ["disabled"] * 2 and _links(root) == []


def test_bench_install_leaves_an_open_vswitch_installed_before_alone():
    """Open vSwitch installed before the bench ran: --install-ovs installs nothing and leaves its
    service as it was, enabled or not."""
    _needs_ovs()
    services = _bench_module("services")
    systems = _bench_module("systems")
    before = [services.state(u) for u in systems.Ovs.SERVICES]
    assert systems.Ovs.install() == "already installed"
    assert [services.state(u) for u in systems.Ovs.SERVICES] == before

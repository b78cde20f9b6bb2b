"""Smoke run of the benchmark (bench/run.py): it runs end to end, reports every case, and leaves nothing.

Tiny durations, tapswitch, the Linux bridge and the bare forwarder only, one
frame size, no thresholds: this keeps the bench working, it does not judge speed.
"""

import os
import re
import shutil
import subprocess
import sys
import uuid

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


def _leftovers(tag: str) -> list[str]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in ns.splitlines() if line.startswith(tag)]
    found += [m for m in re.findall(r"^\d+: ([^:@]+)", links, re.M) if m.startswith(tag)]
    return found


def test_bench_quick_run_reports_every_case_and_cleans_up(tmp_path, tag):
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces and TAP devices")
    if _missing_tools():
        pytest.skip(f"missing: {', '.join(_missing_tools())}")
    out = tmp_path / "out"
    argv = [sys.executable, BENCH, "--quick", "--systems", "tapswitch,bridge,bare", "--sizes", "64",
            "--seconds", "0.5", "--reps", "1", "--fdb-n", "256", "--learn-n", "1024", "--cc", "reno",
            "--out", str(out), "--tag", tag]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=ROOT)
    finally:
        left = _leftovers(tag)
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

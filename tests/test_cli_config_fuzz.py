"""`tapswitch check -c FILE` on hostile files: exit 2, FILE:LINE: messages, never a traceback.

tests/test_config.py fuzzes config.loads in-process; this runs the real
command line on files an attacker (or an accident) could hand it: binary
junk, NUL bytes, nesting deep enough to exhaust the parser's recursion,
numbers too big to read, Python tags, and YAML alias bombs ("billion
laughs"), which must fail fast and small. Each check runs in its own process
under a memory and a CPU limit (so a bomb cannot take the machine with it),
all at once to keep the suite quick.
"""

import os
import random
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

MEMORY_LIMIT = 1 << 30        # bytes of address space a check may map
CPU_LIMIT = 4                 # seconds of CPU, then SIGXCPU
FAST_CPU = 3.0                # a bomb must be refused within this much CPU...
SMALL_RSS_KB = 200 * 1024     # ...and this much memory (a plain check: ~1 s, ~50 MB)
WALL_LIMIT = 60.0             # seconds for the whole batch (they share the machine's cores)


def laughs(kind: str, levels: int = 9) -> str:
    """Anchors that each name the previous one 9 times: 9**levels leaves."""
    if kind == "list":
        lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    else:       # merge keys: each mapping merges the previous one 9 times over
        lines = ["a0: &a0 {a: 1, b: 2}"]
        lines += [f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 9)}]}}" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@dataclass
class Case:
    content: bytes
    line: int | None = None   # the line the (first) message must name, when the file has one
    bomb: bool = False        # must fail fast and small


CASES = {
    "binary_junk": Case(b"\xff\xfe" + random.Random(7).randbytes(4096), line=1),   # not UTF-8: "cannot read", at its line
    "nul_byte": Case(b"switch:\n  name: sw\x00\nports: [{name: p}]\n", line=2),
    "deep_flow_nesting": Case(b"switch:\n  name: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", line=2),
    "deep_block_nesting": Case(("switch:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 3000))).encode()),
    "nesting_deeper_than_a_config": Case(b"switch: {name: sw}\nports:\n  - name: p\n    acl: " + b"[" * 300
                                         + b"]" * 300 + b"\n", line=4),
    "number_too_long": Case(b"switch:\n  name: sw\n  queues: " + b"9" * 100_000 + b"\nports: [{name: p}]\n"),
    "numbers_out_of_range": Case(
        ("switch:\n  name: sw\n  queues: " + str(10 ** 4000) + "\n  mac_table: {size: -0x" + "f" * 64
         + ", aging: 1e999999}\nports: [{name: p, mtu: .nan, speed: .inf}]\n").encode(), line=3),
    "python_tag": Case(b"switch:\n  name: sw\n  queues: !!python/object/apply:os.system ['touch pwned']\n"
                       b"ports: [{name: p}]\n", line=3),
    "billion_laughs": Case((laughs("list") + "switch:\n  name: *a9\nports: *a9\n").encode(), bomb=True),
    "billion_laughs_merge_keys": Case((laughs("merge") + "switch:\n  <<: *a9\n  name: sw\nports: [{name: p}]\n")
                                      .encode(), bomb=True),
}

XFAIL: dict[str, str] = {}     # hostile files that are known to get through (none now)


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT, CPU_LIMIT + 1))


@dataclass
class Result:
    path: str
    returncode: int
    stdout: str
    stderr: str
    cpu: float                # seconds, user + system
    max_rss_kb: int


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Result]:
    """Run `python -m tapswitch check -c FILE` on every case at once."""
    d = tmp_path_factory.mktemp("hostile")
    running = {}
    for name, case in CASES.items():
        path = d / f"{name}.yaml"
        path.write_bytes(case.content)
        out, err = open(d / f"{name}.out", "w+"), open(d / f"{name}.err", "w+")
        proc = subprocess.Popen([sys.executable, "-m", "tapswitch", "check", "-c", str(path)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=d, preexec_fn=_limits)
        running[proc.pid] = (name, proc, str(path), out, err)
    done: dict[str, Result] = {}
    deadline = time.monotonic() + WALL_LIMIT
    try:
        while running:
            for pid in list(running):
                _, status, usage = os.wait4(pid, os.WNOHANG)
                if not _:
                    continue
                name, proc, path, out, err = running.pop(pid)
                proc.returncode = os.waitstatus_to_exitcode(status)
                out.seek(0)
                err.seek(0)
                done[name] = Result(path, proc.returncode, out.read(), err.read(),
                                    usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
            assert time.monotonic() < deadline, f"still running after {WALL_LIMIT}s: {[v[0] for v in running.values()]}"
            time.sleep(0.05)
    finally:
        for _name, proc, _path, out, err in running.values():
            proc.kill()
            proc.wait()
        for _pid, (_name, _proc, _path, out, err) in running.items():
            out.close()
            err.close()
    return done


def params():
    for name in CASES:
        marks = [pytest.mark.xfail(reason=XFAIL[name], strict=True)] if name in XFAIL else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(params()))
def test_hostile_file_exits_2_with_located_messages_and_no_traceback(results, name):
    case, r = CASES[name], results[name]
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr and "Exception" not in r.stderr, r.stderr[-2000:]
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines, "no message"
    located = re.compile(re.escape(r.path) + r":\d+: ")
    assert all(located.match(line) for line in lines), lines[:5]
    if case.line is not None:
        assert lines[0].startswith(f"{r.path}:{case.line}: "), lines[0]
    if case.bomb:
        assert r.cpu < FAST_CPU, f"{r.cpu:.1f} s of CPU"
        assert r.max_rss_kb < SMALL_RSS_KB, f"{r.max_rss_kb // 1024} MB"


def test_a_python_tag_runs_nothing(results):
    r = results["python_tag"]
    assert "could not determine a constructor for the tag" in r.stderr
    assert not os.path.exists(os.path.join(os.path.dirname(r.path), "pwned"))      # the check ran in that directory

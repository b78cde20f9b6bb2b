"""How the supervisor hands a queue over from an old worker: real child processes that say
b"D" (drained) on their control socket, or do not, and exit, as a worker does on SIGTERM."""

import calendar
import fcntl
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Callable

import pytest
import structlog

from tapswitch import supervisor
from tests.pidfd_fails import at_the_fd_limit

# A stand-in for the worker's last steps: say b"D" (or nothing) on its socket, then exit 0.
SAY_AND_EXIT = "import os, sys; os.write(int(sys.argv[1]), sys.argv[2].encode()); os._exit(0)"
IGNORE_SIGTERM = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "sys.stdout.write('up'); sys.stdout.flush(); time.sleep(60)")


def _worker(code: str, *args: str, stdout=None) -> supervisor.Worker:
    """A Worker whose process runs code with our socket's other end's fd as its first argument."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno()), *args],
                                pass_fds=[theirs.fileno()], stdout=stdout)
    finally:
        theirs.close()
    w = supervisor.Worker(0)
    w.proc, w.sock, w.pidfd = proc, ours, os.pidfd_open(proc.pid)
    return w


# A stand-in for a worker's start: says it is set up and waits to be let go (b"G"), then exits 0;
# or hangs before it says anything.
SET_UP = "import os, sys; fd = int(sys.argv[1]); os.write(fd, b'R readwrite'); os.read(fd, 16)"
HANGS = "import time; time.sleep(60)"


def _pending(code: str, *args: str) -> supervisor.Pending:
    """A Pending (a worker process not let go yet) running code, as _launch makes them."""
    w = _worker(code, *args)
    os.close(w.pidfd)
    return supervisor.Pending(w.proc, w.sock)


def _gone(pid: int) -> bool:
    """Exited and reaped: no such process (not even a zombie) left."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _exited(w: supervisor.Worker) -> None:
    """Wait until w's process has exited (not reaped: a zombie, as when the supervisor is slow)."""
    assert select.select([w.pidfd], [], [], 10)[0]


def _install(root, fastpath_py: str):
    """A tapswitch package under `root` (for PYTHONPATH) whose fastpath module is `fastpath_py`:
    what the version probe imports, as an install would lay it out."""
    package = root / "tapswitch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "worker.py").write_text("")
    (package / "fastpath.py").write_text(fastpath_py)
    return package


def test_a_worker_that_said_drained_and_exited_before_the_supervisor_looked_counts_as_drained():
    """Both its word and its exit are waiting: the word wins, the queue's new worker may go,
    and the old one is reaped afterwards with no warning."""
    w = _worker(SAY_AND_EXIT, "D")
    _exited(w)
    sup = supervisor.Supervisor(-1, 1)
    with structlog.testing.capture_logs() as logs:
        old = sup._hand_over(w)
        assert old is not None and w.retiring is old.proc
        assert [e["event"] for e in logs] == ["worker.drained"]
        sup._reap_old(w, old)
    assert old.proc.returncode == 0 and w.retiring is None
    assert [e["event"] for e in logs] == ["worker.drained"]
    assert w.pidfd == -1 and w.sock is None and old.sock.fileno() == -1


@pytest.mark.parametrize("said", ["", "x"])
def test_a_worker_that_exited_without_saying_drained_is_reaped_and_not_handed_over(said):
    w = _worker(SAY_AND_EXIT, said)
    _exited(w)
    with structlog.testing.capture_logs() as logs:
        assert supervisor.Supervisor(-1, 1)._hand_over(w) is None
    assert w.proc.returncode == 0 and w.retiring is None
    assert w.cpu_reaped > 0     # its CPU time is kept: the queue's counter never goes back
    assert not logs             # exit 0: nothing to warn of


# A worker that has used some CPU, and on SIGTERM says b"D" and lives on a while (its interpreter's exit).
BUSY_THEN_DRAINS = ("import os, signal, sys, time\n"
                    "fd = int(sys.argv[1])\n"
                    "signal.signal(signal.SIGTERM, lambda *_: os.write(fd, b'D'))\n"
                    "t = time.process_time()\n"
                    "while time.process_time() - t < 0.3: pass\n"
                    "sys.stdout.write('up'); sys.stdout.flush(); time.sleep(60)")


def test_a_drained_worker_not_yet_replaced_counts_its_cpu_once():
    """A drained worker is w.retiring, and still w.proc until its queue's new worker goes: a scrape
    then counted its CPU time twice, and the queue's counter, which never goes back, stayed that
    much too high."""
    w = _worker(BUSY_THEN_DRAINS, stdout=subprocess.PIPE)
    assert w.proc.stdout.read(2) == b"up"
    sup = supervisor.Supervisor(-1, 1)
    used = sup.cpu_seconds(w)
    assert used >= 0.25
    old = sup._hand_over(w)
    assert old is not None and w.retiring is w.proc
    assert sup.cpu_seconds(w) < used + 0.1
    old.proc.kill()
    sup._reap_old(w, old)
    assert used <= sup.cpu_seconds(w) < used + 0.1
    w.proc.stdout.close()


def test_a_worker_that_neither_drains_nor_exits_is_killed_after_the_grace(monkeypatch):
    monkeypatch.setattr(supervisor, "STOP_GRACE", 0.2)
    w = _worker(IGNORE_SIGTERM, stdout=subprocess.PIPE)
    assert w.proc.stdout.read(2) == b"up"           # SIGTERM ignored from here on
    with structlog.testing.capture_logs() as logs:
        assert supervisor.Supervisor(-1, 1)._hand_over(w) is None
    assert w.proc.returncode == -signal.SIGKILL
    assert [e["event"] for e in logs] == ["worker.stop_timeout"]
    w.proc.stdout.close()


def test_a_worker_imports_nothing_from_the_directory_the_switch_was_started_in(tmp_path, monkeypatch):
    """`python -m` puts the current directory first on sys.path, and a worker imports its modules
    as root with every capability (it drops them once its queues are open): a module another
    user left in that directory (/tmp, a home) would run as root. So none is looked for there."""
    from tapswitch import fastpath
    (tmp_path / "argparse.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n"
                                          f"raise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path)
    shared = fastpath.Shared.create(16, 1)
    try:
        sup = supervisor.Supervisor(shared.fd, 1)
        p = sup._spawn(sup.workers[0])
        p.sock.close()                  # not wanted after all: a worker exits 0 without its ports
        assert p.proc.wait(timeout=30) == 0
    finally:
        shared.close()
    assert not (tmp_path / "ran").exists()


@pytest.fixture
def many_fds():
    """Room for fds past select's 1024, as a switch of many ports holds (a port takes one per
    queue): fds moved by high() land there."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"RLIMIT_NOFILE's hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _high(fd: int) -> int:
    """fd moved past 1024 (the original closed)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1500)
    os.close(fd)
    return moved


@pytest.mark.parametrize("said, registered", [("R uring-burst registered", True), ("R uring-burst", False),
                                               ("R registered", False)])
def test_a_worker_is_said_to_have_registered_buffers_only_when_it_says_so(said, registered):
    """After its backend, a worker that set up says "registered" when its burst buffers are
    (worker.backend's registered_buffers); a backend of that name says nothing of them."""
    sup = supervisor.Supervisor(-1, 1)
    p = _pending(SAY_AND_EXIT, said)
    sup._await(sup.workers[0], p)
    assert (p.backend, p.registered) == (said.split()[1], registered)
    p.sock.close()
    p.proc.wait(timeout=10)


def test_start_after_spawn_starts_the_workers_spawned_and_no_others(monkeypatch):
    """spawn() starts every worker's process ahead of the ports; start() hands them those, and
    starts none of its own (a second process for a worker would be left running, unwatched).
    Without spawn(), start() spawns them itself."""
    sup = supervisor.Supervisor(-1, 2)
    launched, went = [], []
    monkeypatch.setattr(supervisor.Supervisor, "_spawn",
                        lambda self, w: launched.append(w.queue) or types.SimpleNamespace(proc=types.SimpleNamespace(pid=0)))
    monkeypatch.setattr(supervisor.Supervisor, "_hand_ports", lambda self, w, p: None)
    monkeypatch.setattr(supervisor.Supervisor, "_await", lambda self, w, p: None)
    monkeypatch.setattr(supervisor.Supervisor, "_go", lambda self, w, p: went.append(w.queue))
    sup.spawn()
    sup.start({})
    assert (launched, went) == ([0, 1], [0, 1])
    sup.start({})
    assert (launched, went) == ([0, 1, 0, 1], [0, 1, 0, 1])


def test_workers_are_awaited_and_handed_over_on_fds_past_1024(many_fds):
    """256 ports of 4 queues hold over 1024 fds: a reload's or a restart's new worker socket and
    pidfd land past them, where select() raised ValueError and the switch stopped with a
    traceback. A worker that says it is set up is seen so; one asked to stop is handed over."""
    sup = supervisor.Supervisor(-1, 1)
    w = _worker(SAY_AND_EXIT, "R uring-burst")
    p = supervisor.Pending(w.proc, socket.socket(fileno=_high(w.sock.detach())))
    sup._await(w, p)
    assert p.backend == "uring-burst"
    p.sock.close()
    w.proc.wait(timeout=10)

    w = _worker(SAY_AND_EXIT, "D")
    _exited(w)
    w.sock, w.pidfd = socket.socket(fileno=_high(w.sock.detach())), _high(w.pidfd)
    assert w.sock.fileno() >= 1024 and w.pidfd >= 1024
    with structlog.testing.capture_logs() as logs:
        old = sup._hand_over(w)
        assert old is not None
        sup._reap_old(w, old)
    assert old.proc.returncode == 0
    assert [e["event"] for e in logs] == ["worker.drained"]


# A stand-in for a worker that cannot go on (worker.fail): says why, then exits 1, reading nothing;
# or once its ports have come, leaving them unread.
FAILS = "import os, sys; os.write(int(sys.argv[1]), b'E' + sys.argv[2].encode()); os._exit(1)"
FAILS_WITH_PORTS = "import os, select, sys; select.select([int(sys.argv[1])], [], []); " + FAILS.split("; ", 1)[1]


def test_a_worker_that_cannot_start_says_why_in_the_start_error():
    """Its ports were sent and never read: its exit leaves ECONNRESET before what it said."""
    w = _worker(FAILS_WITH_PORTS, "cannot start the fast path: Cannot allocate memory")
    p = supervisor.Pending(w.proc, w.sock)
    os.close(w.pidfd)
    p.sock.send(b"P0")                  # its ports (as _hand_ports), unread
    p.proc.wait()
    with pytest.raises(supervisor.WorkerError) as e:
        supervisor.Supervisor(-1, 1)._await(w, p)
    assert str(e.value) == "worker 0 did not start: cannot start the fast path: Cannot allocate memory"


def test_a_worker_whose_fast_path_stopped_says_why_in_worker_exited(monkeypatch):
    monkeypatch.setattr(supervisor.Supervisor, "_launch", lambda self, w: _pending(SET_UP))
    sup = supervisor.Supervisor(-1, 1)
    w = sup.workers[0] = _worker(FAILS, "fast path stopped: Bad file descriptor")
    _exited(w)
    with structlog.testing.capture_logs() as logs:
        sup.exited(w)
    exited = [e for e in logs if e["event"] == "worker.exited"]
    assert exited and exited[0]["exit_code"] == 1, logs
    assert exited[0]["error"] == "fast path stopped: Bad file descriptor"
    sup.stop()


# A stand-in for a worker killed by the signal numbered argv[2] (its default action: it ends).
KILLED_BY = ("import os, signal, sys; n = int(sys.argv[2]); "
             "n == signal.SIGKILL or signal.signal(n, signal.SIG_DFL); os.kill(os.getpid(), n)")


@pytest.mark.parametrize("signum, name", [(signal.SIGSEGV, "SIGSEGV"), (signal.SIGRTMIN + 6, "SIGRTMIN+6"),
                                          (signal.SIGRTMAX, "SIGRTMAX")])
def test_a_worker_killed_by_any_signal_says_which_and_is_restarted(monkeypatch, signum, name):
    """A worker killed by a real-time signal (`kill -40 PID`), which signal.Signals does not name:
    exited() raised ValueError out of the control loop, and the switch ended with a traceback.
    It is said as `kill -l` names it, and restarted as any worker that died."""
    restarted = []
    monkeypatch.setattr(supervisor.Supervisor, "restart", lambda self, w: restarted.append(w))
    sup = supervisor.Supervisor(-1, 1)
    w = sup.workers[0] = _worker(KILLED_BY, str(int(signum)))
    _exited(w)
    with structlog.testing.capture_logs() as logs:
        sup.exited(w)
    assert [(e["event"], e.get("signal")) for e in logs] == [("worker.exited", name)]
    assert restarted == [w] and w.down_error == f"killed by {name}"


def test_a_restart_killed_before_it_set_up_says_by_which_signal(monkeypatch):
    """A restart's process killed while it started (the OOM killer, a user's kill) was said as
    "worker 0 did not start (exit code -9)", in worker.start_failed and in `tapswitch ports`'
    queue line: a number no shell shows, where a worker killed once running is "killed by
    SIGKILL". It says the signal now, as that does."""
    sup = supervisor.Supervisor(-1, 1)
    w = sup.workers[0]
    p = _pending(KILLED_BY, str(int(signal.SIGKILL)))
    assert select.select([p.sock], [], [], 10)[0]       # its end closed the socket
    with pytest.raises(supervisor.WorkerError) as e:
        sup._hear(w, p, said_something=True)
    assert str(e.value) == "worker 0 did not start (killed by SIGKILL)"


# A stand-in for a worker a Python exception stopped: says so as worker.main does (worker.fail,
# the reason and the traceback), then exits 1.
RAISED = ("import socket, sys; from tapswitch import worker; "
          "sys.exit(worker.fail(socket.socket(fileno=int(sys.argv[1])), 0, sys.argv[2], sys.argv[3]))")
TRACE = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nRuntimeError: boom\n'


def test_a_worker_a_python_exception_stopped_says_it_and_its_traceback_in_worker_exited(monkeypatch):
    monkeypatch.setattr(supervisor.Supervisor, "_launch", lambda self, w: _pending(SET_UP))
    sup = supervisor.Supervisor(-1, 1)
    w = sup.workers[0] = _worker(RAISED, "RuntimeError: boom", TRACE)
    _exited(w)
    with structlog.testing.capture_logs() as logs:
        sup.exited(w)
    [exited] = [e for e in logs if e["event"] == "worker.exited"]
    assert (exited["exit_code"], exited["error"], exited["traceback"]) == (1, "RuntimeError: boom", TRACE)
    sup.stop()


def test_a_restart_a_python_exception_stopped_says_it_and_its_traceback_in_worker_start_failed(monkeypatch):
    monkeypatch.setattr(supervisor.Supervisor, "_launch", lambda self, w: _pending(RAISED, "RuntimeError: boom", TRACE))
    sup = supervisor.Supervisor(-1, 1)
    w = sup.workers[0]
    monkeypatch.setattr(supervisor, "SPAWN_TRIES", 1)
    sup.restart(w)
    assert select.select([w.starting.sock], [], [], 10)[0]
    with structlog.testing.capture_logs() as logs:
        assert not sup.ready(w)
    [failed] = [e for e in logs if e["event"] == "worker.start_failed"]
    assert failed["error"] == "worker 0 did not start: RuntimeError: boom" and failed["traceback"] == TRACE
    sup.stop()


def test_a_worker_that_cannot_start_is_tried_again_ever_more_rarely(monkeypatch):
    """The control loop revives a worker that is down on every tick; one that cannot start at all
    (its module broken by an upgrade under the running switch, say) was tried 3 times a tick for
    good: 3 processes and 3 errors a second. Each restart in a row that fails now waits twice as
    long before the next (up to RETRY_MAX), and one that comes up starts the count again."""
    now = [100.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: now[0])
    launches = []

    def launch(self, w):
        launches.append(now[0])
        raise OSError("cannot start")
    monkeypatch.setattr(supervisor.Supervisor, "_launch", launch)
    sup = supervisor.Supervisor(-1, 1)
    w = sup.workers[0]

    def tick():                     # as Switch.maintain_workers, once a second
        for down in sup.down():
            sup.restart(down)
        now[0] += 1.0
    with structlog.testing.capture_logs() as logs:
        for _ in range(120):
            tick()
    tried_at = sorted(set(launches))
    assert len(launches) == supervisor.SPAWN_TRIES * len(tried_at)
    assert [b - a for a, b in zip(tried_at, tried_at[1:])][:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert len(tried_at) <= 9                          # in two minutes, not 120 times
    assert [e["backoff"] for e in logs if e["event"] == "worker.crashing"][:3] == [1.0, 2.0, 4.0]

    monkeypatch.setattr(supervisor.Supervisor, "_launch", lambda self, w: _pending(SET_UP))
    now[0] = w.retry_at
    tick()
    assert w.starting is not None and w.restarts == 0       # started, not waited for
    assert select.select([w.starting.sock], [], [], 10)[0]
    assert sup.ready(w)
    assert w.restarts == 1 and w.failed_starts == 0 and w.retry_at == 0.0
    sup.stop()


STOPPED = "import os, signal; os.kill(os.getpid(), signal.SIGSTOP)"


def _let_go_at_100(monkeypatch):
    """A supervisor of one worker (a stopped process) with a heartbeat of 7, let go at
    monotonic 100 (as _go does): [now] and the heartbeats to move by hand, the supervisor, w."""
    now = [100.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: now[0])
    beats = {0: 7}
    sup = supervisor.Supervisor(-1, 1, heartbeat=beats.get)
    w = _worker(STOPPED)
    sup.workers[0] = w
    w.beat, w.beat_at = sup._heartbeat(w), now[0]
    return now, beats, sup, w


def test_a_worker_that_exited_is_left_to_its_pidfd_however_long_its_heartbeat_stands(monkeypatch):
    """A worker whose process has ended, not reaped yet (exited() does that, from its pidfd),
    has a heartbeat that stands still: it is not found hung, however long that lasts."""
    now, beats, sup, w = _let_go_at_100(monkeypatch)
    os.kill(w.proc.pid, signal.SIGKILL)
    _exited(w)
    for _ in range(int(supervisor.HUNG_AFTER) + 2):     # watched every tick, past HUNG_AFTER
        now[0] += 1.0
        assert sup.hung() == []
    w.proc.wait()
    os.close(w.pidfd)
    w.sock.close()


def test_a_worker_the_watchdog_meant_to_kill_that_ended_otherwise_is_not_said_to_have_hung(monkeypatch):
    """The watchdog's SIGKILL is said as such ("hung: ..."); a worker it found hung that ended
    by another signal meanwhile is said to have ended as it did, nothing more."""
    now, beats, sup, w = _let_go_at_100(monkeypatch)
    w.hung_for = 12.0                                   # as kill_hung sets it
    os.kill(w.proc.pid, signal.SIGTERM)
    os.kill(w.proc.pid, signal.SIGCONT)                 # stopped: the SIGTERM waits for this
    _exited(w)
    sup._died(w)
    assert w.down_error == "killed by SIGTERM"
    assert w.hung_for is None


def test_next_try_is_none_while_every_worker_runs(monkeypatch):
    """next_try bounds the control loop's wait: None (wait for anything else) while every
    worker has a process; the seconds until the first one without is due otherwise."""
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: 100.0)
    sup = supervisor.Supervisor(-1, 2)
    try:
        for w in sup.workers:
            w.pidfd = 1000 + w.queue                    # as if running: only compared here
        assert sup.next_try() is None
        sup.workers[1].pidfd, sup.workers[1].retry_at = -1, 104.0
        assert sup.next_try() == 4.0
    finally:
        for w in sup.workers:
            w.pidfd = -1


def test_a_worker_whose_heartbeat_stands_still_is_found_hung_and_killed(monkeypatch):
    """A stopped (or stuck) worker does not exit: only its heartbeat tells. One that turns is
    never found hung however long it runs; one just let go has HUNG_AFTER seconds for its first
    turn; one whose heartbeat stood still that long is killed, which works on a stopped process,
    and its exit is then seen as any worker's (the pidfd)."""
    now, beats, sup, w = _let_go_at_100(monkeypatch)
    now[0] += supervisor.HUNG_AFTER - 0.5
    assert sup.hung() == []                             # still starting
    for _ in range(60):                                 # a minute of turning: never hung
        beats[0] += 1
        now[0] += 1.0
        assert sup.hung() == []
    for _ in range(int(supervisor.HUNG_AFTER) - 1):     # standing still, watched every tick
        now[0] += 1.0
        assert sup.hung() == []
    now[0] += 1.0
    assert sup.hung() == [w]
    with structlog.testing.capture_logs() as logs:
        sup.kill_hung(w)
    assert [(e["event"], e["log_level"], e["queue"], e["pid"], e["seconds"]) for e in logs] == \
        [("worker.hung", "error", 0, w.proc.pid, supervisor.HUNG_AFTER)]
    _exited(w)                                          # SIGKILL ended it, stopped as it was
    assert sup.hung() == []                             # exited: its pidfd's to tell, not hung
    w.proc.wait()
    assert w.proc.returncode == -signal.SIGKILL
    os.close(w.pidfd)
    w.sock.close()


def _found_hung(monkeypatch):
    """A worker let go at 100 s, found hung by the watchdog HUNG_AFTER ticks later: (sup, w)."""
    now, _beats, sup, w = _let_go_at_100(monkeypatch)
    for _ in range(int(supervisor.HUNG_AFTER)):     # standing still, watched every tick
        now[0] += 1.0
        found = sup.hung()
    assert found == [w]
    return sup, w


def _launch_staying(monkeypatch) -> None:
    """Workers started from now on set up and stay (SET_UP's ends once let go, and its exit 0
    could beat a test's SIGKILL)."""
    monkeypatch.setattr(supervisor.Supervisor, "_launch", lambda self, w: _pending(SET_UP + "; os.read(fd, 16)"))


def _killed_not_by_the_watchdog(sup, w) -> None:
    """w's process killed by SIGKILL from elsewhere (the OOM killer, a user): said as such."""
    os.kill(w.proc.pid, signal.SIGKILL)
    _exited(w)
    sup.exited(w)
    [down] = sup.queues_down()
    assert down["error"] == "killed by SIGKILL"
    sup.stop()


def test_a_worker_the_watchdog_killed_is_said_to_have_hung_not_only_killed_by_sigkill(monkeypatch):
    """`tapswitch ports` said of a worker the watchdog killed "killed by SIGKILL", as of one the
    OOM killer or a user killed; the supervisor knows it hung, and for how long: it says so.
    A worker that dies otherwise after it is let go again is said as ever."""
    sup, w = _found_hung(monkeypatch)
    sup.kill_hung(w)
    _exited(w)
    _launch_staying(monkeypatch)
    sup.exited(w)
    [down] = sup.queues_down()
    assert down["error"] == f"killed by SIGKILL (hung: its heartbeat stood still {supervisor.HUNG_AFTER:g} s)"
    assert select.select([w.starting.sock], [], [], 10)[0] and sup.ready(w)
    _killed_not_by_the_watchdog(sup, w)


def test_a_worker_the_watchdog_killed_that_a_reload_reaped_leaves_its_successor_said_as_any(monkeypatch):
    """A worker the watchdog killed may die late (in the D state, the kill waits for it), and a
    reload that replaces the workers meanwhile stops and reaps it (_hand_over), not exited():
    its hang was kept, and its successor, killed by SIGKILL later (the OOM killer, a user),
    was said to have hung too, for as long as the first had."""
    sup, w = _found_hung(monkeypatch)
    hung = w.proc
    with monkeypatch.context() as m:
        m.setattr(supervisor.os, "kill", lambda pid, sig: None)     # not dead yet: in the D state
        sup.kill_hung(w)
    _launch_staying(monkeypatch)
    assert sup.replace_ports({}) == []
    assert hung.returncode is not None and w.proc is not hung      # reaped by the reload
    _killed_not_by_the_watchdog(sup, w)


def test_the_watchdog_waits_as_long_as_set_and_never_when_off(monkeypatch):
    """switch.watchdog_ms: a stopped worker is found hung after hung_after seconds, not before;
    off (0), never. Heartbeats are still followed while it is off, so setting it again (a
    reload) counts the stand-still from the last move seen, and a longer one spares the worker."""
    now, beats, sup, w = _let_go_at_100(monkeypatch)
    sup.hung_after = 2.0
    now[0] += 1.0
    assert sup.hung() == []
    now[0] += 1.0
    assert sup.hung() == [w]
    sup.hung_after = 0                                  # off: never, however long it stands still
    for _ in range(60):
        now[0] += 1.0
        assert sup.hung() == []
    beats[0] += 1                                       # it turned, once, then stood still
    now[0] += 1.0
    assert sup.hung() == []
    sup.hung_after = 30.0
    for _ in range(29):
        now[0] += 1.0
        assert sup.hung() == []
    sup.hung_after = 3.0                                # shortened: it stood still 29 s already
    now[0] += 1.0
    assert sup.hung() == [w]
    w.proc.kill()
    w.proc.wait()
    os.close(w.pidfd)
    w.sock.close()


def test_only_the_time_the_control_process_watched_counts_as_a_heartbeat_standing_still(monkeypatch):
    """The control process and its workers stopped together (Ctrl-Z and fg, `systemctl freeze`
    and thaw, a paused VM) resume in any order: the control loop, first, read heartbeats that had
    not moved for as long as everything stood still, and killed every healthy worker as hung.
    A look counts at most WATCHED_MAX of stand-still before it: longer, the control process was
    stopped or busy, not watching. A worker that does hang is still found, later."""
    now, beats, sup, w = _let_go_at_100(monkeypatch)
    for _ in range(3):                                  # idle: a turn a second
        beats[0] += 1
        now[0] += 1.0
        assert sup.hung() == []
    now[0] += 0.9                                       # all stopped, the worker's wait nearly over
    now[0] += 60.0                                      # for a minute
    assert sup.hung() == []                             # resumed: the control loop looks first
    now[0] += 1.0
    assert sup.hung() == []                             # the worker not yet run
    beats[0] += 1                                       # its wait timed out: it turns
    now[0] += 0.2
    assert sup.hung() == []
    # One that hangs is found all the same: at HUNG_AFTER watched every tick, and when the
    # control loop looks only every 3 s (busy), after WATCHED_MAX of each gap has added up.
    for step, looks in ((1.0, int(supervisor.HUNG_AFTER)), (3.0, 3)):
        w.beat_at = now[0]
        for _ in range(looks - 1):
            now[0] += step
            assert sup.hung() == []
        now[0] += step
        assert sup.hung() == [w]
    w.proc.kill()
    w.proc.wait()
    os.close(w.pidfd)
    w.sock.close()


@pytest.fixture
def shared():
    """The shared memory of a switch of one queue, whose settings markers the workers set."""
    from tapswitch import fastpath
    shared = fastpath.Shared.create(16, 1)
    yield shared
    shared.close()


def _inside_a_burst(shared) -> None:
    """Worker 0's marker as settings_enter sets it: it reads the current settings copy."""
    shared.ptr.readers[0].active = (shared.ptr.settings_gen & 1) + 1


def test_a_worker_killed_inside_a_burst_leaves_no_marker_for_a_publish_to_wait_for(shared, monkeypatch):
    """A worker killed between settings_enter and settings_leave (SIGKILL under traffic, the
    watchdog) left its marker of the settings copy it read, until its queue's next worker took
    it over at its first poll: while it was held back as one that keeps dying, or failed to
    start, every other publish (a reload, a port's link going up or down) waited for it in vain,
    the control loop held a second each time, and logged settings.readers_stuck. Once it is
    reaped, its marker is cleared."""
    sup = supervisor.Supervisor(shared.fd, 1, release_reader=shared.release_reader)
    monkeypatch.setattr(supervisor.Supervisor, "restart", lambda self, w: None)    # no next worker yet
    w = _worker(HANGS)
    sup.workers[0] = w
    _inside_a_burst(shared)
    os.kill(w.proc.pid, signal.SIGKILL)
    _exited(w)
    sup.exited(w)
    assert shared.ptr.readers[0].active == 0
    assert shared.settings_publish(timeout_ms=200) == 0


def test_a_worker_killed_after_the_grace_of_its_hand_over_leaves_no_marker(shared, monkeypatch):
    """The same for a reload's hand-over whose worker neither drained nor exited (stopped, stuck
    inside a burst): killed once the grace is spent, and its marker cleared before its queue's
    new worker goes."""
    monkeypatch.setattr(supervisor, "STOP_GRACE", 0.2)
    w = _worker(IGNORE_SIGTERM, stdout=subprocess.PIPE)
    assert w.proc.stdout.read(2) == b"up"
    _inside_a_burst(shared)
    sup = supervisor.Supervisor(shared.fd, 1, release_reader=shared.release_reader)
    assert sup._hand_over(w) is None
    assert w.proc.returncode == -signal.SIGKILL
    assert shared.ptr.readers[0].active == 0
    w.proc.stdout.close()


def test_a_drained_workers_reap_leaves_the_marker_of_the_worker_that_replaced_it(shared):
    """A drained worker left its marker itself; the one set once its queue's new worker has gone
    is the new worker's, and stays through the old one's reap."""
    w = _worker(SAY_AND_EXIT, "D")
    _exited(w)
    sup = supervisor.Supervisor(shared.fd, 1, release_reader=shared.release_reader)
    old = sup._hand_over(w)
    assert old is not None
    _inside_a_burst(shared)                 # the new worker, let go, reads the settings
    sup._reap_old(w, old)
    assert shared.ptr.readers[0].active != 0


def test_a_worker_started_on_shared_memory_of_another_version_says_to_restart_the_switch(shared):
    """After an in-place upgrade a worker the running switch starts again is the new worker and
    fast path, on the old control process's shared memory. It said "ValueError: fd 3 is not
    tapswitch shared memory of version 5" and a traceback; it now says which versions meet and
    what to do, and the supervisor holds it back as any worker that cannot start: SPAWN_TRIES
    tries, one worker.crashing, then nothing until down() offers it again."""
    from tapswitch._fastpath import lib
    shared.ptr.version = lib.TS_VERSION + 1         # the switch's: another version than ours
    sup = supervisor.Supervisor(shared.fd, 1)
    w = sup.workers[0]
    with structlog.testing.capture_logs() as logs:
        sup.restart(w)                              # a real worker process, as after a crash
        while w.starting is not None:
            assert select.select([w.starting.sock], [], [], 30)[0]
            assert not sup.ready(w)
    failed = [e for e in logs if e["event"] == "worker.start_failed"]
    assert len(failed) == supervisor.SPAWN_TRIES
    assert failed[0]["error"] == (
        f"worker 0 did not start: the switch's shared memory is of version {lib.TS_VERSION + 1}, "
        f"this worker's fast path of version {lib.TS_VERSION}: the switch was upgraded while it ran; "
        "restart it")
    assert "traceback" not in failed[0]
    assert [e["event"] for e in logs if e["event"] == "worker.crashing"] == ["worker.crashing"]
    assert sup.down() == [] and sup.next_try() > 0
    sup.stop()


def test_a_restart_after_an_upgrade_of_another_version_is_held_back_said_once_and_starts_no_process(
        shared, monkeypatch):
    """The worker a switch restarts after an in-place upgrade would not run on its memory (above):
    SPAWN_TRIES processes and 4 errors every 30 s, until the switch was restarted. Now none is
    started: one worker.start_failed (held), then looks that cost a stat, ever more rarely (up to
    RETRY_MAX); an install that brings the switch's version back lets it start at the next."""
    from tapswitch._fastpath import lib
    shared.ptr.version = lib.TS_VERSION + 1         # the switch's: the fast path on disk is another
    sup = supervisor.Supervisor(shared.fd, 1, version=lib.TS_VERSION + 1)
    w = sup.workers[0]
    spawned = []
    monkeypatch.setattr(supervisor.Supervisor, "_launch",
                        lambda self, w: spawned.append(w) or types.SimpleNamespace(proc=types.SimpleNamespace(pid=0)))
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    waits = []
    with structlog.testing.capture_logs() as logs:
        sup.restart(w)                              # as exited() after the worker died
        for _ in range(8):
            waits.append(sup.next_try())
            now[0] += waits[-1]
            assert sup.down() == [w]
            sup.restart(w)                          # as maintain_workers, once due
    assert spawned == []
    assert [(e["event"], e["held"], e["error"]) for e in logs] == [("worker.start_failed", True, (
        f"worker 0 cannot start: the switch's shared memory is of version {lib.TS_VERSION + 1}, the fast path "
        f"installed now of version {lib.TS_VERSION}: the switch was upgraded while it ran; restart it"))]
    assert waits == [1, 2, 4, 8, 16, supervisor.RETRY_MAX, supervisor.RETRY_MAX, supervisor.RETRY_MAX]
    sup.version = lib.TS_VERSION                    # as if the installed fast path were the switch's again
    now[0] += sup.next_try()
    sup.restart(w)
    assert spawned == [w]


def test_the_fast_path_installed_since_the_start_is_asked_its_version_once(monkeypatch, tmp_path):
    """The file this process loaded the fast path from asks nothing; another (an install since) is
    asked once, in an interpreter started as a worker's is, and what it said kept for that file;
    one that does not load says why."""
    from tapswitch import fastpath
    from tapswitch._fastpath import lib
    monkeypatch.setattr(supervisor, "_probed", {})
    popens = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **kw: popens.append(a) or real_popen(*a, **kw))
    assert supervisor.fast_path_version() == lib.TS_VERSION and popens == []
    monkeypatch.setattr(fastpath, "LOADED", (0, 0))         # the file at PATH is not the one loaded
    assert supervisor.fast_path_version() == lib.TS_VERSION
    assert supervisor.fast_path_version() == lib.TS_VERSION
    assert len(popens) == 1 and popens[0][0][:3] == [sys.executable, "-P", "-c"]
    # An install whose fast path does not load: its module raises, as a missing library does.
    broken = _install(tmp_path, "raise ImportError('liburing.so.2: cannot open shared object file')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(fastpath, "PATH", str(broken / "_fastpath.abi3.so"))    # none there
    assert supervisor.fast_path_version() == \
        "a new worker would not load its fast path: ImportError: liburing.so.2: cannot open shared object file"
    sup = supervisor.Supervisor(-1, 1, version=lib.TS_VERSION)
    assert sup.workers_refused() == supervisor.fast_path_version()
    assert len(popens) == 2


def test_what_the_probe_found_with_no_fast_path_file_is_not_kept_for_good(monkeypatch, tmp_path):
    """With no file at PATH (gone), the probe's answer was kept under file_id None for good: that
    is whatever a worker's import found instead, and a fast path installed since elsewhere on
    sys.path (no file at PATH to say so) was never asked, every worker held back by the old
    answer. It is kept RETRY_MAX seconds, then asked again."""
    from tapswitch import fastpath
    from tapswitch._fastpath import lib
    now = [100.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(supervisor, "_probed", {})
    monkeypatch.setattr(supervisor, "_unanswered", {}, raising=False)
    monkeypatch.setattr(fastpath, "PATH", str(tmp_path / "gone" / "_fastpath.abi3.so"))
    for name, fastpath_py in (("broken", "raise ImportError('No module named tapswitch._fastpath')\n"),
                              ("later", f"class lib:\n    TS_VERSION = {lib.TS_VERSION}\n")):
        _install(tmp_path / name, fastpath_py)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "broken"))
    gone = "a new worker would not load its fast path: ImportError: No module named tapswitch._fastpath"
    assert supervisor.fast_path_version() == gone
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "later"))     # installed since, not at PATH
    assert supervisor.fast_path_version() == gone                   # within RETRY_MAX: as said
    now[0] += supervisor.RETRY_MAX
    assert supervisor.fast_path_version() == lib.TS_VERSION
    assert supervisor.Supervisor(-1, 1, version=lib.TS_VERSION).workers_refused() is None


def test_a_fast_path_that_loads_but_says_no_version_is_one_that_would_not_load(monkeypatch, tmp_path):
    """An install whose worker imports, exits 0, and prints no number (its TS_VERSION is not
    one, or its import prints too) gives no version: its answer is that it would not load,
    as an install that raises says, not an int() of what it printed raised to the caller."""
    from tapswitch import fastpath
    monkeypatch.setattr(supervisor, "_probed", {})
    monkeypatch.setattr(supervisor, "_unanswered", {}, raising=False)
    monkeypatch.setattr(fastpath, "LOADED", (0, 0))         # the file at PATH is not the one loaded
    _install(tmp_path, "class lib:\n    TS_VERSION = 'v2'\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert supervisor.fast_path_version() == "a new worker would not load its fast path: exited with code 0"


def test_a_fast_path_that_does_not_answer_is_asked_once_for_every_worker_due_not_once_each(monkeypatch):
    """The probe of the fast path installed since the start had no answer (READY_TIMEOUT spent,
    the control loop waiting meanwhile): each worker due asked it again, and waited as long,
    one after the other. It is the answer for RETRY_MAX seconds: one wait, every worker held
    back by it; then it is asked again."""
    from tapswitch import fastpath
    from tapswitch._fastpath import lib
    now = [100.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(supervisor, "_probed", {})
    monkeypatch.setattr(supervisor, "_unanswered", {}, raising=False)
    monkeypatch.setattr(fastpath, "LOADED", (0, 0))         # the file at PATH is not the one loaded
    monkeypatch.setattr(supervisor, "VERSION_PROBE", "import time; time.sleep(60)")     # no answer
    monkeypatch.setattr(supervisor, "READY_TIMEOUT", 0.2)
    popens = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **kw: popens.append(a) or real_popen(*a, **kw))
    sup = supervisor.Supervisor(-1, 3, version=lib.TS_VERSION)
    for w in sup.workers:
        w.down_since = time.time()                          # died
    assert sup.down() == sup.workers
    for w in sup.down():
        sup.restart(w)
    assert len(popens) == 1
    assert [w.held for w in sup.workers] == ["a new worker's fast path did not load within 0.2 s"] * 3
    assert sup.down() == []
    now[0] += supervisor.RETRY_MAX
    assert sup.down() == sup.workers
    for w in sup.down():
        sup.restart(w)
    assert len(popens) == 2                                 # asked again, once


def test_a_worker_that_keeps_dying_is_held_back_without_stopping_the_control_loop(monkeypatch):
    """The crash loop's backoff slept inside the control loop (no reload, link event or stop
    served meanwhile). exited() now returns at once; down() offers the worker BACKOFF later, and
    next_try() tells the control loop when to look."""
    sup = supervisor.Supervisor(-1, 1)
    restarted = []
    monkeypatch.setattr(supervisor.Supervisor, "restart", lambda self, w: restarted.append(w))
    w = _worker(SAY_AND_EXIT, "")
    sup.workers[0] = w
    w.recent = [time.monotonic()] * supervisor.RESTART_BURST     # it died that often just now
    _exited(w)
    slept = []
    with structlog.testing.capture_logs() as logs, monkeypatch.context() as m:
        m.setattr(time, "sleep", slept.append)      # a backoff slept here holds the control loop
        sup.exited(w)
    assert slept == []
    assert restarted == [] and w.pidfd == -1
    assert [(e["event"], e["backoff"]) for e in logs if e["log_level"] == "error"] == \
        [("worker.crashing", supervisor.BACKOFF)]
    assert sup.down() == []
    assert 0.5 * supervisor.BACKOFF < sup.next_try() <= supervisor.BACKOFF
    time.sleep(sup.next_try())
    assert sup.down() == [w] and sup.next_try() == 0.0


def _dying(monkeypatch) -> tuple[Callable[[float], float], list[str]]:
    """A supervisor of one worker on a clock moved by hand (monotonic from 100, time.time()
    1796675465 on), whose restarts set up 0.2 s after they are due: die(after), w's next
    process, let go now, dies `after` seconds on, and returns how long w is held back; and
    the `since` of `tapswitch ports` at each hold."""
    now = [100.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(supervisor.time, "time", lambda: 1796675465.0 + now[0])
    monkeypatch.setattr(supervisor.Supervisor, "restart", lambda self, w: None)
    sup = supervisor.Supervisor(-1, 1)
    w = sup.workers[0]
    sinces: list[str] = []

    def die(after: float) -> float:
        p = _worker(SAY_AND_EXIT, "")
        w.proc, w.sock, w.pidfd, w.up_at = p.proc, p.sock, p.pidfd, now[0]
        _exited(w)
        now[0] += after
        sup.exited(w)
        wait = round(max(0.0, w.retry_at - now[0]), 6)
        if wait:
            [down] = sup.queues_down()
            sinces.append(down["since"])
        now[0] += wait + 0.2                    # its restart's process sets up
        sup._restarted(w)
        return wait
    return die, sinces


def test_a_worker_that_dies_at_once_after_each_restart_waits_ever_longer_until_it_runs_a_window(monkeypatch):
    """Held back as one that keeps dying, a worker that died as soon as it was let go was held
    back BACKOFF seconds before each restart for good, each death logged thrice, and its
    `since` that of its last death. Each hold now waits twice as long (up to RETRY_MAX), said
    once a wait (worker.crashing); a death like the last is logged at debug level, and `since`
    is the burst's first death. A few deaths are restarted at once, as before; a worker that
    has run RESTART_WINDOW seconds is held back BACKOFF again, as long as its deaths make a
    crash loop (CRASH_LOOP_RESTARTS restarts within CRASH_LOOP_WINDOW), and one that has run
    past that dies as a first death again."""
    die, sinces = _dying(monkeypatch)
    with structlog.testing.capture_logs() as logs:
        waits = [die(0.01) for _ in range(supervisor.RESTART_BURST + 7)]
    assert waits == [0.0] * supervisor.RESTART_BURST + [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert [e["backoff"] for e in logs if e["event"] == "worker.crashing"] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert [e["log_level"] for e in logs if e["event"] == "worker.exited"] == \
        ["warning"] * (supervisor.RESTART_BURST + 1) + ["debug"] * 6
    assert sinces == [supervisor._utc(1796675465.0 + 100.0)] * 7      # the first death's
    with structlog.testing.capture_logs() as logs:
        assert die(supervisor.RESTART_WINDOW) == supervisor.BACKOFF     # it ran a window, in its crash loop
        assert die(supervisor.CRASH_LOOP_WINDOW) == 0.0                 # past it: restarted at once
        assert [die(0.01) for _ in range(supervisor.RESTART_BURST)] == [0.0] * (supervisor.RESTART_BURST - 1) + [1.0]
    assert [e["log_level"] for e in logs if e["event"] == "worker.exited"] == \
        ["debug"] + ["warning"] * (supervisor.RESTART_BURST + 1)
    assert [(e["backoff"], e["since"]) for e in logs if e["event"] == "worker.crashing"] == \
        [(1.0, sinces[0]), (1.0, sinces[-1])]
    assert sinces[-1] > sinces[0]                       # this burst's first death


def test_worker_crashing_counts_the_restarts_since_it_began_to_keep_dying(monkeypatch):
    """worker.crashing's `restarts` was the deaths in the burst's window (RESTART_WINDOW) but
    one: at the long waits (16, 30 s) the window had emptied and it said 1, then 0. It counts
    the worker's restarts since it began to keep dying (its `since`): each death's but the
    last, one more at each hold; a worker over it (past its crash loop) counts from its next burst."""
    die, _sinces = _dying(monkeypatch)
    with structlog.testing.capture_logs() as logs:
        [die(0.01) for _ in range(supervisor.RESTART_BURST + 6)]
        die(supervisor.RESTART_WINDOW)              # still in its crash loop: one more
        die(supervisor.CRASH_LOOP_WINDOW)           # over it
        [die(0.01) for _ in range(supervisor.RESTART_BURST)]
    held = [e for e in logs if e["event"] == "worker.crashing"]
    assert [(e["backoff"], e["restarts"]) for e in held] == \
        [(2.0 ** i, supervisor.RESTART_BURST + i) for i in range(5)] + [(supervisor.RETRY_MAX, supervisor.RESTART_BURST + 5),
                                                                        (supervisor.BACKOFF, supervisor.RESTART_BURST + 6),
                                                                        (supervisor.BACKOFF, supervisor.RESTART_BURST)]


def test_a_worker_that_dies_every_few_seconds_is_held_back_as_a_crash_loop(monkeypatch):
    """A worker that died every 3 to 9 s (a fast path that crashes on a frame that recurs) made
    no burst (RESTART_BURST restarts within RESTART_WINDOW): it was restarted at once for good,
    each death a warning, and worker.crashing never said. CRASH_LOOP_RESTARTS restarts within
    CRASH_LOOP_WINDOW, whatever their gaps, now make it one that keeps dying: held back 1, 2,
    4 ... RETRY_MAX s as a burst is, each wait said once, since its first death. Dying every
    20 s then (it runs a window between), it is held back BACKOFF before each restart, said
    once, until its deaths make a crash loop no more."""
    die, sinces = _dying(monkeypatch)
    loop = supervisor.CRASH_LOOP_RESTARTS
    with structlog.testing.capture_logs() as logs:
        waits = [die(after) for after in [3.0, 9.0, 5.0, 7.0] * 4]
    assert waits == [0.0] * loop + [1.0, 2.0, 4.0, 8.0, 16.0, supervisor.RETRY_MAX]
    crashing = [e for e in logs if e["event"] == "worker.crashing"]
    assert [(e["backoff"], e["restarts"]) for e in crashing] == \
        [(supervisor.BACKOFF * 2 ** i, loop + i) for i in range(5)] + [(supervisor.RETRY_MAX, loop + 5)]
    assert {e["since"] for e in crashing} == set(sinces) == {supervisor._utc(1796675465.0 + 103.0)}    # the first death's
    assert [e["log_level"] for e in logs if e["event"] == "worker.exited"] == ["warning"] * (loop + 1) + ["debug"] * 5
    with structlog.testing.capture_logs() as logs:
        assert [die(20.0) for _ in range(2 * loop)] == [supervisor.BACKOFF] * 2 * loop
        assert die(supervisor.CRASH_LOOP_WINDOW) == 0.0
    assert [(e["backoff"], e["since"]) for e in logs if e["event"] == "worker.crashing"] == \
        [(supervisor.BACKOFF, sinces[0])]
    assert [e["log_level"] for e in logs if e["event"] == "worker.exited"] == ["debug"] * 2 * loop + ["warning"]


def test_a_burst_is_restart_burst_deaths_within_restart_window_not_a_little_more(monkeypatch):
    """Deaths 2.2 s apart put RESTART_BURST - 1 restarts in RESTART_WINDOW: no burst, and
    fewer than CRASH_LOOP_RESTARTS make no loop, each restarted at once; 1.9 s apart, the
    sixth death is held back."""
    die, _sinces = _dying(monkeypatch)
    assert [die(2.0) for _ in range(supervisor.CRASH_LOOP_RESTARTS)] == [0.0] * supervisor.CRASH_LOOP_RESTARTS
    die, _sinces = _dying(monkeypatch)
    assert [die(1.7) for _ in range(supervisor.RESTART_BURST + 1)] == [0.0] * supervisor.RESTART_BURST + [1.0]


def test_a_burst_after_an_older_death_is_said_from_its_own_first_death(monkeypatch):
    """A death 100 s before a burst is within CRASH_LOOP_WINDOW, and no part of the burst:
    worker.crashing's `since` and `restarts` are the burst's own."""
    die, sinces = _dying(monkeypatch)
    with structlog.testing.capture_logs() as logs:
        die(0.01)                                   # at 100.01
        waits = [die(100.0)] + [die(0.01) for _ in range(supervisor.RESTART_BURST)]   # from 200.21
    assert waits == [0.0] * supervisor.RESTART_BURST + [1.0]
    assert sinces == [supervisor._utc(1796675465.0 + 200.21)]
    assert [e["restarts"] for e in logs if e["event"] == "worker.crashing"] == [supervisor.RESTART_BURST]


def test_a_worker_that_dies_once_an_hour_is_restarted_at_once_each_time(monkeypatch):
    """However many times, deaths an hour apart make no crash loop: each is restarted at once,
    and said at warning level, as a first."""
    die, _sinces = _dying(monkeypatch)
    with structlog.testing.capture_logs() as logs:
        assert [die(3600.0) for _ in range(3 * supervisor.CRASH_LOOP_RESTARTS)] == [0.0] * 3 * supervisor.CRASH_LOOP_RESTARTS
    assert [e for e in logs if e["event"] == "worker.crashing"] == []
    assert {e["log_level"] for e in logs if e["event"] == "worker.exited"} == {"warning"}


def test_a_worker_that_kept_dying_and_ran_a_window_until_a_reload_replaced_it_is_over_it():
    """One that had kept dying (held back) and then ran RESTART_WINDOW seconds no longer keeps
    dying, also when a reload asks it to stop rather than it dying: its successor's death is a
    first, restarted at once, not held back RETRY_MAX seconds."""
    sup = supervisor.Supervisor(-1, 1)
    w = _worker(IGNORE_SIGTERM, stdout=subprocess.PIPE)
    sup.workers[0] = w
    assert w.proc.stdout.read(2) == b"up"
    w.crashes, w.crash_said, w.failing_since = 6, (supervisor.RETRY_MAX, "exited with code 1"), time.time() - 60
    w.up_at = time.monotonic() - supervisor.RESTART_WINDOW
    assert sup._hand_over(w) is None                # killed, its grace spent
    assert (w.crashes, w.crash_said, w.failing_since) == (0, None, None)


def test_a_restart_does_not_wait_for_the_new_process_and_one_that_hangs_starting_is_killed_in_time(monkeypatch):
    """restart() waited for the new process to say it was set up, READY_TIMEOUT seconds a try and
    SPAWN_TRIES tries: the control loop stood still 15 s for a worker that hung while starting
    (0.1-0.2 s for any restart). It now returns at once, leaving the process in w.starting;
    next_try() tells the control loop when it is late; start_timed_out() kills and reaps it and
    tries again, and after SPAWN_TRIES the worker waits (the backoff) as before."""
    monkeypatch.setattr(supervisor, "READY_TIMEOUT", 0.3)
    launched = []

    def launch(self, w):
        launched.append(_pending(HANGS))
        return launched[-1]
    monkeypatch.setattr(supervisor.Supervisor, "_launch", launch)
    sup = supervisor.Supervisor(-1, 1)
    w = sup.workers[0]
    with structlog.testing.capture_logs() as logs:
        for attempt in range(1, supervisor.SPAWN_TRIES + 1):
            if attempt == 1:
                sup.restart(w)
            else:
                sup.start_timed_out(w)      # the last one killed, the next one started
            # Not waited for: it hangs, so a wait would have ended in its kill and a start_failed.
            assert len(launched) == attempt and w.starting is launched[-1]
            assert launched[-1].proc.poll() is None and logs[-1]["event"] == "worker.spawned"
            assert w.pidfd == -1 and sup.down() == [] and sup.late() == []
            assert 0 < sup.next_try() <= supervisor.READY_TIMEOUT
            time.sleep(sup.next_try())
            assert sup.late() == [w]
        sup.start_timed_out(w)
    assert w.starting is None and w.restarts == 0
    assert all(p.proc.returncode == -signal.SIGKILL and _gone(p.proc.pid) for p in launched)
    assert [(e["event"], e.get("attempt")) for e in logs] == \
        [("worker.spawned", 1), ("worker.start_failed", 1), ("worker.spawned", 2), ("worker.start_failed", 2),
         ("worker.spawned", 3), ("worker.start_failed", 3), ("worker.crashing", None)]
    assert "not set up within 0.3 s" in logs[1]["error"]
    assert [e["backoff"] for e in logs if e["event"] == "worker.crashing"] == [supervisor.BACKOFF]
    assert 0 < sup.next_try() <= supervisor.BACKOFF and w.failed_starts == 1


def test_a_restart_under_way_is_killed_by_stop_and_replaced_by_a_reloads_worker(monkeypatch):
    """A worker's restart's process that has not said it is set up is no worker yet: stop() kills
    and reaps it too (it has not asked to die with the switch yet), and a reload's handover kills
    it (it has the old ports) and lets the new process go in its place, counted as the restart."""
    monkeypatch.setattr(supervisor.Supervisor, "_launch", lambda self, w: _pending(HANGS))
    sup = supervisor.Supervisor(-1, 1)
    w = sup.workers[0]
    sup.restart(w)
    starting = w.starting.proc
    sup.stop()
    assert w.starting is None and starting.returncode == -signal.SIGKILL and _gone(starting.pid)

    sup.restart(w)
    starting = w.starting.proc
    monkeypatch.setattr(supervisor.Supervisor, "_launch", lambda self, w: _pending(SET_UP))
    with structlog.testing.capture_logs() as logs:
        sup.replace_ports({})
    assert starting.returncode == -signal.SIGKILL and _gone(starting.pid)
    assert w.starting is None and w.pidfd >= 0 and w.restarts == 1
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == ["worker.restarted", "workers.replaced"]
    w.proc.wait(timeout=10)             # let go (b"G"): it exits 0
    sup.stop()


def _pidfd_open_out_of_fds_once(monkeypatch) -> None:
    """The next pidfd_open runs with RLIMIT_NOFILE lowered to the descriptors in use: EMFILE."""
    real = os.pidfd_open

    def out_of_fds(pid, flags=0):
        monkeypatch.setattr(os, "pidfd_open", real)
        return at_the_fd_limit(real, pid, flags)
    monkeypatch.setattr(os, "pidfd_open", out_of_fds)


def test_a_set_up_worker_that_cannot_be_watched_is_stopped_and_tried_again(monkeypatch):
    """A restart's process (or a reload's) is set up, and its pidfd cannot be opened (EMFILE): the
    OSError went out of the control loop, and the process was left waiting to be let go. It is
    killed and reaped, w keeps no process, and it is another try of the restart (or, in a reload,
    said in its answer, and the control loop restarts it)."""
    launched, fail = [], [True]

    def launch(self, w):
        launched.append(_pending(SET_UP))
        if fail:                        # the pidfd of the process just launched cannot be opened
            _pidfd_open_out_of_fds_once(monkeypatch)
            fail.clear()
        return launched[-1]
    monkeypatch.setattr(supervisor.Supervisor, "_launch", launch)
    sup = supervisor.Supervisor(-1, 1)
    w = sup.workers[0]
    sup.restart(w)
    supervisor.readable([w.starting.sock], 10)
    with structlog.testing.capture_logs() as logs:
        assert sup.ready(w) is False
    first = launched[0].proc
    assert first.returncode is not None and _gone(first.pid)      # killed (or out at its socket's close) and reaped
    assert w.pidfd == -1 and w.proc is None and w.starting is launched[1] and w.starting.attempt == 2
    assert [(e["event"], e.get("error")) for e in logs if e["event"] == "worker.start_failed"] == [
        ("worker.start_failed", "worker 0 could not be started: Too many open files")]
    supervisor.readable([w.starting.sock], 10)
    assert sup.ready(w) is True and w.pidfd >= 0 and w.restarts == 1

    fail.append(True)
    assert sup.replace_ports({}) == ["worker 0 could not be started: Too many open files"]
    assert launched[2].proc.returncode is not None and _gone(launched[2].proc.pid)
    assert w.pidfd == -1 and sup.down() == [w]          # the control loop restarts it at once
    sup.stop()


def test_queues_down_says_each_worker_that_does_not_run_restarting_or_held_back_since_when_and_why(monkeypatch):
    """`tapswitch ports` showed every port up while a queue's worker was dead, restarting or
    held back (it keeps dying): only tapswitch_worker_up and the log said so. queues_down()
    says which queue, in which state, since when, until when it is held back, and why; a
    worker that runs again is none of them."""
    sup = supervisor.Supervisor(-1, 2)
    assert sup.queues_down() == []
    w = _worker(HANGS)
    w.queue = 1
    sup.workers[1] = w
    w.recent = [time.monotonic()] * supervisor.RESTART_BURST     # it died that often just now
    os.kill(w.proc.pid, signal.SIGKILL)
    _exited(w)
    before = time.time()
    sup.exited(w)                                   # held back: not restarted yet
    [held] = sup.queues_down()
    assert (held["queue"], held["state"], held["error"]) == (1, "held back", "killed by SIGKILL")
    since, until = (calendar.timegm(time.strptime(held[k], "%Y-%m-%dT%H:%M:%SZ")) for k in ("since", "until"))
    assert int(before) <= since <= time.time() and 0 <= until - since <= supervisor.BACKOFF + 1
    monkeypatch.setattr(supervisor.Supervisor, "_launch", lambda self, w: _pending(SET_UP))
    w.retry_at = 0.0                                # due
    [due] = sup.queues_down()
    assert (due["state"], due["since"], due["until"]) == ("restarting", held["since"], None)
    sup.restart(w)
    [starting] = sup.queues_down()
    assert (starting["state"], starting["since"], starting["error"]) == ("restarting", held["since"], "killed by SIGKILL")
    assert select.select([w.starting.sock], [], [], 10)[0]
    assert sup.ready(w)
    assert sup.queues_down() == []
    sup.stop()


def test_a_probe_killed_before_it_answers_says_by_which_signal(monkeypatch):
    """It said 'exit code -9', as a restart killed before it set up did."""
    monkeypatch.setattr(supervisor, "VERSION_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert supervisor._probe() == ("a new worker would not load its fast path: killed by SIGKILL", True)

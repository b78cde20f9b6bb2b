"""Supervisor: starts one worker process per queue and restarts any that dies or hangs.

Worker q is handed queue q of every port, over its ready socket. The control
process keeps every fd open, so a restarted worker gets the very same queues
(but a deleted TAP's, dead: _hand_ports); the MAC table and the counters are
in shared memory and survive it. At a start the processes are spawned before
the ports are made (spawn), so their interpreters start while the kernel moves
the ports' devices.

A worker that stops turning its loop (stopped by SIGSTOP or a debugger, or
stuck) does not exit: its pidfd says nothing, and its queue waits for good.
So each worker's heartbeat in shared memory (fastpath.h, "The watchdog") is
read every tick, and a worker whose heartbeat has not moved for hung_after
seconds (switch.watchdog_ms; 0: never) is killed (worker.hung): its exit then
restarts it as any other.

A restart does not wait for the new process: its interpreter takes a tenth of
a second or more to start, and one stuck starting would hold the control
loop READY_TIMEOUT seconds a try. The new process is the worker's start
(Worker.starting), which the control loop watches as it watches the
workers' exits: its ready socket says it is set up (ready), or its deadline
passes (late); meanwhile reloads, link events, a stop and the control socket
are served.

After an in-place upgrade (git pull && ./scripts/install.sh while the switch runs) a worker
started from then on is the new one: if its fast path lays the shared memory out otherwise
(fastpath.h, TS_VERSION) it cannot run on this switch's. Whether one would is known before any
is started (workers_refused): a restart is then held back, said once (restart), and a reload
that would replace the workers is refused (Switch._reload) rather than stop every worker for
new ones that cannot run.
"""

import errno
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import structlog

from tapswitch import fastpath, tap
from tapswitch.config import WATCHDOG_MS
from tapswitch.worker import GROUP_SIGNALS, send_ports, upgraded

log = structlog.get_logger("tapswitch.supervisor")

CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 5.0        # seconds a new worker has to report it is running
RESTART_BURST = 5          # restarts allowed in RESTART_WINDOW before backing off
RESTART_WINDOW = 10.0      # also: seconds a worker held back must then run, to be restarted at once again
                           # (or, while its crash loop lasts, after BACKOFF again: _ran)
CRASH_LOOP_RESTARTS = 10   # restarts allowed in CRASH_LOOP_WINDOW, whatever their gaps, before backing off
CRASH_LOOP_WINDOW = 300.0  # (one that dies every few seconds makes no burst); also: held back while it lasts
BACKOFF = 1.0              # seconds a worker that keeps dying is held back before its restart, at first
SPAWN_TRIES = 3            # attempts to start a worker before the next tick tries again
RETRY_MAX = 30.0           # seconds between those ticks' tries at most, for a worker that never comes up
STOP_GRACE = 1.0           # seconds a worker asked to stop has to hand over what it read, before SIGKILL
# Seconds a running worker's heartbeat may stand still before it is killed, by default: the
# config's (switch.watchdog_ms sets it; it moves every turn, at least once a second: fastpath.h,
# TS_IDLE_WAIT_MS). Said once, there: this module is the control process's, whose config is loaded
# anyway; a worker imports none of it.
HUNG_AFTER = WATCHDOG_MS / 1000
MESSAGE_MAX = 16384        # bytes of one message from a worker: b"E", its reason and traceback (worker.fail) fit
WATCHED_MAX = 2.0          # seconds of stand-still one look (hung) counts at most: past a tick or two
                           # since the last look, the control process was stopped or busy, not watching


# What a worker imports, in a process started as a worker is: the TS_VERSION of the fast path it
# would load. Run only when the file there is not the one this process loaded (fast_path_version).
VERSION_PROBE = "from tapswitch import fastpath, worker; print(fastpath.lib.TS_VERSION)"
_probed: dict[tuple[int, int], int | str] = {}   # a fast path file (file_id) -> what the probe found
# A fast path file (file_id) -> (monotonic until when, why) it could not be asked: each worker due
# (restart) and a reload that adds a port asked it again, each waiting up to READY_TIMEOUT on the
# control loop, every worker held back by it in turn. None (no file at PATH) -> what the probe
# found then: that is no file's answer but whatever a worker's import found instead (another
# install on sys.path, or none), which changes with no file at PATH to say so; kept as long.
_unanswered: dict[tuple[int, int] | None, tuple[float, int | str]] = {}


def fast_path_version() -> int | str:
    """The TS_VERSION of the fast path a worker started now would load, or why it would load
    none (one line). The file this process loaded is ours, and asks nothing; another (an upgrade
    installed since) is asked once: VERSION_PROBE in an interpreter started as a worker's is
    (0.1 s or so), and what it said kept for that file. One that could not be asked (fork
    refused, no answer in READY_TIMEOUT) is asked again RETRY_MAX seconds on, at the first look
    from then: meanwhile that is the answer. So is what it said with no file at PATH (gone, and
    none installed there since): of no file to keep it for."""
    ident = fastpath.file_id(fastpath.PATH)
    if ident is not None and ident == fastpath.LOADED:
        return fastpath.lib.TS_VERSION
    if ident in _probed:
        return _probed[ident]
    if ident in _unanswered and time.monotonic() < _unanswered[ident][0]:
        return _unanswered[ident][1]
    found, answered = _probe()
    if answered and ident is not None:
        _unanswered.pop(ident, None)
        _probed[ident] = found
    else:
        _unanswered[ident] = (time.monotonic() + RETRY_MAX, found)
    return found


def _probe() -> tuple[int | str, bool]:
    """Ask the fast path a worker would load its version (fast_path_version): (the version, or
    why it does not load; True), or (why it could not be asked; False)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)     # as _spawn: a hangup is no answer
    try:
        proc = subprocess.Popen([sys.executable, "-P", "-c", VERSION_PROBE], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        return f"a new worker could not be started: {e.strerror or e}", False
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    try:
        out, err = proc.communicate(timeout=READY_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return f"a new worker's fast path did not load within {READY_TIMEOUT:g} s", False
    if proc.returncode == 0 and out.strip().isdigit():
        found: int | str = int(out)
    else:
        lines = err.strip().splitlines()
        found = f"a new worker would not load its fast path: {lines[-1] if lines else _ended(proc.returncode)}"
    return found, True


def readable(fds: list, timeout: float) -> list:
    """Those of `fds` (fds, or objects with a fileno()) readable, or hung up, within `timeout`
    seconds (none if none is by then). poll, not select: a switch of many ports holds more than
    select's 1024 fds (a port takes one per queue), and select refuses any fd past them."""
    poller = select.poll()
    by_fd = {}
    for f in fds:
        fd = f if isinstance(f, int) else f.fileno()
        by_fd[fd] = f
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _events in poller.poll(max(0.0, timeout) * 1000)]


def _recv(sock: socket.socket, wait: bool = True) -> bytes:
    """One message of a worker's socket; b"" if there is none (wait=False), or it is closed. A
    worker that exited without reading what we sent it leaves ECONNRESET before what it said."""
    flags = 0 if wait else socket.MSG_DONTWAIT
    for _ in range(2):
        try:
            return sock.recv(MESSAGE_MAX, flags)
        except ConnectionResetError:
            flags = socket.MSG_DONTWAIT         # what it said, if it said anything, is there now
        except OSError:
            return b""
    return b""


def _failure(said: bytes) -> tuple[str, str | None]:
    """What a worker's b"E" message says (worker.fail): why it cannot go on, and the traceback
    of the Python exception that stopped it (None if none did)."""
    error, _, trace = said[1:].decode(errors="replace").partition("\0")
    return error, trace or None


def _traceback(trace: str | None) -> dict:
    """The log's field for a worker's traceback: one field, no lines of its own on stderr."""
    return {"traceback": trace} if trace else {}


def _signal_name(signum: int) -> str:
    """A signal's name, as `kill -s` takes it: SIGSEGV; a real-time one SIGRTMIN+N (signal.Signals
    names none of them but SIGRTMIN and SIGRTMAX: a worker killed by one, `kill -40 PID`, raised
    ValueError out of the control loop, which ended the switch); one of neither, `signal N`."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        if signal.SIGRTMIN < signum < signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        return f"signal {signum}"


def _ended(rc: int) -> str:
    """How a worker process ended, from its Popen returncode: one phrase for the user."""
    return f"killed by {_signal_name(-rc)}" if rc < 0 else f"exited with code {rc}"


def _kept_dying(recent: list[float], died: float) -> list[float]:
    """Of a worker's deaths before one at `died` (monotonic, oldest first), those that make it
    one that keeps dying, to be held back; none if they do not. A burst (RESTART_BURST restarts
    within RESTART_WINDOW), or a crash loop: CRASH_LOOP_RESTARTS within CRASH_LOOP_WINDOW,
    whatever their gaps. One that died every 3 to 9 s (a fast path that crashes on a frame
    that recurs) made no burst, and was restarted at once for good, each death a warning; one
    that dies once an hour is restarted at once. The loop's, if both: it began first."""
    loop = [t for t in recent if died - t < CRASH_LOOP_WINDOW]
    if len(loop) >= CRASH_LOOP_RESTARTS:
        return loop
    burst = [t for t in loop if died - t < RESTART_WINDOW]
    return burst if len(burst) >= RESTART_BURST else []


def _utc(t: float) -> str:
    """time.time() `t` as ISO 8601, UTC, to the second: as the log's timestamps read."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _cannot_start(w: "Worker", e: OSError) -> str:
    """Why w's new process could not be started, or watched once set up: one line for the user."""
    return f"worker {w.queue} could not be started: {e.strerror or e}"


class WorkerError(Exception):
    """A worker did not come up; the message is one line for the user, `traceback` the
    worker's, if a Python exception stopped it."""

    def __init__(self, message: str, traceback: str | None = None):
        super().__init__(message)
        self.traceback = traceback


class Worker:
    """One worker process and what it needs to be started again."""

    def __init__(self, queue: int):
        self.queue = queue
        self.proc: subprocess.Popen | None = None
        self.pidfd = -1
        self.restarts = 0
        self.recent: list[float] = []   # monotonic times of its last deaths, within CRASH_LOOP_WINDOW (_kept_dying)
        self.up_at = 0.0                # monotonic: when its process was let go (_go)
        self.crashes = 0                # holds in a row since it kept dying (exited): each waits twice as long
        self.crash_said: tuple[float, str | None] | None = None    # the hold and the death said last,
                                                # while it keeps dying (exited): a death like it is no news
        self.failing_since: float | None = None  # time.time() it began to keep dying, until it runs RESTART_WINDOW
        self.failing_deaths = 0         # its deaths since failing_since (the burst's, and each since)
        self.cpu_reaped = 0.0           # CPU seconds of this queue's workers that have exited
        self.backend: str | None = None  # the fast path's I/O backend: "uring" | "uring-burst" | "readwrite"
        self.registered = False         # its burst buffers are registered with its ring (fastpath.h)
        self.sock: socket.socket | None = None  # the process says b"D" here once drained (_hand_over)
        self.retiring: subprocess.Popen | None = None   # the process it replaces, until reaped
        self.cpu_seen = 0.0             # the most cpu_seconds has said: it never says less
        self.failed_starts = 0          # restarts in a row that did not come up (down waits longer each time)
        self.retry_at = 0.0             # monotonic: down() offers it again from then
        self.beat = 0                   # its heartbeat as last read (hung)
        self.beat_at = 0.0              # monotonic: when the heartbeat was last seen to move, or it was let go
        self.starting: Pending | None = None    # its restart's process, not set up yet (no process meanwhile)
        self.held: str | None = None    # why its restart is held back (workers_refused), as said last
        self.down_since: float | None = None    # time.time() it went down unasked (died, or a reload's process
                                                # did not come up), until a process runs for it again; None: runs
        self.down_error: str | None = None      # why, as said last: how its process ended, or why a restart failed
        self.hung_for: float | None = None      # seconds its heartbeat stood still, once killed for it (kill_hung),
                                                # until its exit is seen (exited, or a reload's _hand_over):
                                                # the SIGKILL then is the watchdog's

    def fileno(self) -> int:
        return self.pidfd


class Pending:
    """A worker process not let go yet (`Supervisor._go`): waiting for its ports, or setting up
    its fast path over them, or set up."""

    def __init__(self, proc: subprocess.Popen, sock: socket.socket):
        self.proc = proc
        self.sock = sock          # its ports go here; it says b"R" + its backend once set up, waits for b"G"
        self.backend: str | None = None
        self.registered = False
        self.attempt = 1          # a restart's: which of its SPAWN_TRIES this is
        self.deadline = 0.0       # a restart's, monotonic: killed if not set up by then (late)


class Old:
    """A worker process asked to stop (`Supervisor._hand_over`), until reaped."""

    def __init__(self, proc: subprocess.Popen, pidfd: int, sock: socket.socket | None, deadline: float):
        self.proc, self.pidfd, self.sock = proc, pidfd, sock
        self.deadline = deadline        # monotonic: SIGKILL if it has not exited by then


class Supervisor:
    """The worker processes of one switch."""

    def __init__(self, shm_fd: int, queues: int, ids: tuple[int, int] | None = None,
                 heartbeat: Callable[[int], int] | None = None, hung_after: float = HUNG_AFTER,
                 release_reader: Callable[[int], None] | None = None, version: int | None = None):
        self.shm_fd = shm_fd
        self.version = version          # the shared memory's TS_VERSION (workers_refused); None: not checked
        self.ids = ids                  # (uid, gid) workers switch to, None: keep ours
        self.heartbeat = heartbeat      # queue -> its worker's heartbeat (Shared.heartbeat); None: no watchdog
        self.hung_after = hung_after    # seconds a heartbeat may stand still (hung); 0: the watchdog is off
        self.release_reader = release_reader    # queue -> clear a dead worker's settings marker (Shared.release_reader;
                                                # the switch's also has the MAC table counted again)
        self.workers = [Worker(q) for q in range(queues)]
        self.port_fds: dict[int, list[int]] = {}   # port index -> fd of each queue
        self.spawned: list[tuple[Worker, Pending]] = []     # by spawn, for start
        self.looked_at = 0.0            # monotonic: hung()'s last look at the heartbeats

    def spawn(self) -> None:
        """Start every worker's process now, before the ports exist; start hands them over."""
        for w in self.workers:
            try:
                p = self._spawn(w)
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    raise           # the switch's reason says which limit, and how to raise it
                raise WorkerError(_cannot_start(w, e)) from None
            self.spawned.append((w, p))
            log.debug("worker.spawned", queue=w.queue, pid=p.proc.pid)

    def start(self, port_fds: dict[int, list[int]]) -> None:
        """Start every worker over `port_fds` (all at once; spawned already, or now) and wait
        until each is running."""
        self.port_fds = port_fds
        if not self.spawned:
            self.spawn()
        pending, self.spawned = self.spawned, []
        try:
            for w, p in pending:
                self._hand_ports(w, p)
            while pending:
                w, p = pending[0]
                self._await(w, p)
                pending.pop(0)
                self._go(w, p)
        finally:
            for w, p in pending:        # a failed start: those not let go yet go now
                self._discard(w, p)
        # Once per start: which I/O backend the fast path got (io_uring may be refused), and
        # whether its buffers are registered (burst reads; refused under RLIMIT_MEMLOCK).
        log.info("worker.backend", backend=",".join(sorted({w.backend or "?" for w in self.workers})),
                 registered_buffers=all(w.registered for w in self.workers))

    def down(self) -> list[Worker]:
        """Workers with no process and none starting (their restart failed, or they are held
        back: exited) whose next try is due: the control loop restarts them."""
        now = time.monotonic()
        return [w for w in self.workers if w.pidfd < 0 and w.starting is None and now >= w.retry_at]

    def late(self) -> list[Worker]:
        """Workers whose restart's process has not said it is set up by its deadline (and has
        not said so since): the control loop calls start_timed_out for each."""
        now = time.monotonic()
        return [w for w in self.workers if w.starting is not None and now >= w.starting.deadline
                and not readable([w.starting.sock], 0)]

    def next_try(self) -> float | None:
        """Seconds until the first worker with no process is due (0: now) -- to restart, or to
        give up on its restart's process -- None if none waits: the control loop waits no
        longer than that."""
        due = [w.starting.deadline if w.starting is not None else w.retry_at
               for w in self.workers if w.pidfd < 0]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _heartbeat(self, w: Worker) -> int:
        return self.heartbeat(w.queue) if self.heartbeat is not None else 0

    def hung(self) -> list[Worker]:
        """Running workers whose heartbeat has not moved for hung_after seconds: stopped (SIGSTOP,
        a debugger) or stuck. The control loop asks at least every tick; each call notes the
        heartbeats it sees move, also while the watchdog is off (hung_after 0: none is hung), so
        that a reload that sets it (or shortens it) counts the stand-still from the last move seen.
        A worker forwarding flat out turns every burst, an idle one every TS_IDLE_WAIT_MS, one
        still starting has hung_after from being let go (_go); one that has exited is left to
        its pidfd (exited).
        Only the time watched counts: a look counts WATCHED_MAX at most of the time since the
        last one (or since the worker was let go). The control process stopped with its workers
        (Ctrl-Z, `systemctl freeze`, a paused VM) may run first when they resume, and find their
        heartbeats as old as the stop; a reload or restart that kept it busy for seconds, the
        same if a worker had no CPU meanwhile. A worker that does hang then is found later."""
        if self.heartbeat is None:
            return []
        now = time.monotonic()
        since, self.looked_at = self.looked_at, now
        found = []
        for w in self.workers:
            if w.pidfd < 0:
                continue
            beat = self.heartbeat(w.queue)
            if beat != w.beat:
                w.beat, w.beat_at = beat, now
                continue
            w.beat_at += max(0.0, now - max(since, w.beat_at) - WATCHED_MAX)     # not watched
            if self.hung_after and now - w.beat_at >= self.hung_after and not readable([w.pidfd], 0):
                found.append(w)
        return found

    def kill_hung(self, w: Worker) -> None:
        """SIGKILL a worker that hung (it works on a stopped process too); its pidfd then says it
        exited, and exited() restarts it: counted in its restarts, and held back if it keeps
        dying. Its unreaped pid cannot have been reused."""
        now = time.monotonic()
        log.error("worker.hung", queue=w.queue, pid=w.proc.pid, seconds=round(now - w.beat_at, 1),
                  heartbeat=w.beat)
        os.kill(w.proc.pid, signal.SIGKILL)
        w.hung_for = round(now - w.beat_at, 1)
        w.beat_at = now         # not again before its exit is seen (one in the D state dies late)

    def _launch(self, w: Worker) -> Pending:
        """Start a process for w's queue over the current ports (w keeps its old one, if any)."""
        p = self._spawn(w)
        self._hand_ports(w, p)
        return p

    def _spawn(self, w: Worker) -> Pending:
        """Start a process for w's queue; it waits for its ports (_hand_ports)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # -P: `-m` would put the current directory first on sys.path, and the worker imports its
        # modules as root with every capability (it drops them once set up): a module another
        # user left where the switch was started (/tmp, a home) would run as root.
        argv = [sys.executable, "-P", "-m", "tapswitch.worker", "--queue", str(w.queue),
                "--shm", str(self.shm_fd), "--ready", str(theirs.fileno())]
        if self.ids is not None:
            argv += ["--user", "%d:%d" % self.ids]
        # The worker starts with the process group's signals blocked (the mask is inherited; the
        # handlers are not), until it ignores them: a terminal's SIGHUP, or Ctrl-C, that comes
        # while its interpreter starts would end it, and with it the start (or the reload).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
        try:
            proc = subprocess.Popen(argv, pass_fds=[self.shm_fd, theirs.fileno()], stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            theirs.close()
        return Pending(proc, ours)

    def _hand_ports(self, w: Worker, p: Pending) -> None:
        """Send p queue w.queue of every current port, but a port whose TAP was deleted (its
        queue is dead: forgotten here, as forget_port). A process that is gone already cannot
        take them: _await finds it so and says how it ended."""
        for index in self._deleted(w.queue):
            self.forget_port(index)
        try:
            send_ports(p.sock, {port: qfds[w.queue] for port, qfds in self.port_fds.items()})
        except OSError:
            pass

    def _deleted(self, queue: int) -> list[int]:
        """The ports not forgotten (forget_port) whose TAP was deleted: one ioctl a port. The
        control loop notices a deleted TAP once a tick (Switch.maintain_ports); a worker that died
        before then -- killed with the TAP's container, say -- was restarted over the dead queue,
        whose read failed again and counted one more rx_errors. A TAP deleted after this look,
        while the process it replaces still reads (a reload), fails both reads, and counts once:
        the fast path's rx_ended (fastpath.h, "The worker")."""
        deleted = []
        for index, qfds in self.port_fds.items():
            try:
                if not tap.attached(qfds[queue]):
                    deleted.append(index)
            except OSError:
                pass            # not known (the kernel says only EBADFD here): handed, as it was
        return deleted

    def _await(self, w: Worker, p: Pending) -> None:
        """Wait until p has set up; if it does not, stop it and raise WorkerError."""
        self._hear(w, p, bool(readable([p.sock], READY_TIMEOUT)))

    def _hear(self, w: Worker, p: Pending, said_something: bool) -> None:
        """Read what p said, once its socket is readable (`said_something`), or take its silence
        as READY_TIMEOUT spent: if it did not say it is set up, stop it and raise WorkerError."""
        # b"R" + the I/O backend [+ b" registered"], or b"E" + why it cannot start (worker.fail)
        said = _recv(p.sock) if said_something else b""
        how = said[1:].decode(errors="replace").split()
        p.backend = how[0] if how else None
        p.registered = "registered" in how[1:]
        if said[:1] != b"R":
            self._discard(w, p)
            if said[:1] == b"E":
                error, trace = _failure(said)
                raise WorkerError(f"worker {w.queue} did not start: {error}", trace)
            if said_something:
                raise WorkerError(f"worker {w.queue} did not start ({_ended(p.proc.returncode)})")
            raise WorkerError(f"worker {w.queue} did not start (not set up within {READY_TIMEOUT:g} s, killed)")

    def _discard(self, w: Worker, p: Pending) -> None:
        """Stop and reap a worker process never let go."""
        p.sock.close()
        if p.proc.returncode is None:
            self._kill_proc(w, p.proc)

    def _go(self, w: Worker, p: Pending) -> None:
        """Make p w's process and let it start forwarding (w's old one has stopped forwarding).
        If p cannot be watched (pidfd_open: EMFILE), p is stopped, w left as it was, and OSError raised."""
        try:
            pidfd = os.pidfd_open(p.proc.pid)
        except OSError:
            self._discard(w, p)
            raise
        w.proc, w.backend, w.registered, w.sock, w.pidfd = p.proc, p.backend, p.registered, p.sock, pidfd
        # Its first turn moves the heartbeat on from here (the last worker's): until then, and
        # hung_after seconds on, it is still starting, not hung.
        w.beat, w.beat_at = self._heartbeat(w), time.monotonic()
        w.up_at = w.beat_at
        try:
            p.sock.send(b"G")
        except OSError:
            pass                     # it died meanwhile: its pidfd says so, and it is started again
        log.debug("worker.started", queue=w.queue, pid=w.proc.pid, ports=len(self.port_fds))

    def _kill(self, w: Worker) -> None:
        self._kill_proc(w, w.proc)

    def _kill_proc(self, w: Worker, proc: subprocess.Popen) -> None:
        """SIGKILL and reap. os.kill, not Popen.kill: that polls first and may reap the worker
        itself (it died of the same group signal), leaving wait4 nothing to wait for. An unreaped
        pid cannot be reused, so signalling it is safe."""
        os.kill(proc.pid, signal.SIGKILL)
        self._reap_proc(w, proc)

    def _hand_over(self, w: Worker) -> Old | None:
        """Ask w's process to stop (SIGTERM) and wait until it has drained -- it says b"D":
        every frame it had read is out and its queues are let go -- or exited; SIGKILL if
        neither within STOP_GRACE seconds. w is left with no process; a drained one is returned,
        still running (its interpreter's exit takes longer than the drain), for _reap_old
        once w's queue has its new worker."""
        proc, pidfd, sock = w.proc, w.pidfd, w.sock
        w.pidfd, w.sock = -1, None
        # Its end is taken here, not by exited(): one the watchdog killed that dies late (the D
        # state) kept its hang, and the next process's SIGKILL (the OOM killer's) was said as it.
        w.hung_for = None
        if proc is None or proc.returncode is not None or pidfd < 0:
            self._close(pidfd, sock)
            return None
        t0 = time.monotonic()
        self._ran(w, t0)        # a reload's new process that dies soon is held back only if this one was
        old = Old(proc, pidfd, sock, t0 + STOP_GRACE)
        os.kill(proc.pid, signal.SIGTERM)
        watch = [pidfd] + ([sock] if sock is not None else [])
        while True:
            ready = readable(watch, old.deadline - time.monotonic())
            if not ready:
                break
            if sock in ready:                   # first: it may have said b"D" and exited since
                try:
                    said = sock.recv(MESSAGE_MAX)
                except OSError:
                    said = b""
                if said[:1] == b"D":
                    w.retiring = proc           # its CPU time still counts until reaped
                    log.debug("worker.drained", queue=w.queue, pid=proc.pid,
                              seconds=round(time.monotonic() - t0, 4))
                    return old
                if not said:
                    watch.remove(sock)          # closed: only its exit is left to wait for
            if pidfd in ready:
                self._reap_old(w, old)          # exited (without a word: an error, or killed)
                self._release(w)
                return None
        self._reap_old(w, old)                  # the grace is spent: SIGKILL
        self._release(w)
        return None

    def _reap_old(self, w: Worker, old: Old) -> None:
        """Wait for a process _hand_over asked to stop until its deadline, then SIGKILL it; reap."""
        killed = not readable([old.pidfd], old.deadline - time.monotonic())
        if killed:
            log.warning("worker.stop_timeout", queue=w.queue, pid=old.proc.pid, grace=STOP_GRACE)
            os.kill(old.proc.pid, signal.SIGKILL)
        rc = self._reap_proc(w, old.proc)
        if w.retiring is old.proc:
            w.retiring = None
        self._close(old.pidfd, old.sock)
        if rc != 0 and not killed:
            log.warning("worker.stopped", queue=w.queue, pid=old.proc.pid, exit_code=rc)

    def _release(self, w: Worker) -> None:
        """w's process is reaped, unasked or undrained, and none runs for its queue yet (its next
        is not let go): let go of the settings copy it marked as read. Killed inside a burst
        (SIGKILL, the watchdog, the grace spent), it left its marker, which only the queue's next
        worker took over, at its first poll: meanwhile every other publish (a reload, a port's
        link going up or down) held the control loop fastpath.PUBLISH_TIMEOUT_MS waiting for it,
        and logged settings.readers_stuck -- a second each time while the worker was held back
        or could not start. Not for a drained process: it left its marker itself, and its successor, let
        go already, may hold its own there now."""
        if self.release_reader is not None:
            self.release_reader(w.queue)

    @staticmethod
    def _close(pidfd: int, sock: socket.socket | None) -> None:
        if pidfd >= 0:
            os.close(pidfd)
        if sock is not None:
            sock.close()

    def _reap(self, w: Worker) -> int:
        """Wait for w's process; keep its CPU time, so the queue's CPU counter never goes backwards."""
        return self._reap_proc(w, w.proc)

    @staticmethod
    def _reap_proc(w: Worker, proc: subprocess.Popen) -> int:
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        w.cpu_reaped += usage.ru_utime + usage.ru_stime
        return proc.returncode

    def cpu_seconds(self, w: Worker) -> float:
        """CPU seconds used by queue w's workers since start, the running ones included.
        Never less than it said before: between a reap and its CPU time being added, the
        process is in neither figure."""
        total = w.cpu_reaped
        # Once each: a drained process is w.retiring, and w.proc too until its successor goes (_go).
        for proc in dict.fromkeys((w.proc, w.retiring)):
            if proc is None or proc.returncode is not None:
                continue        # reaped (its time is in cpu_reaped): its pid may be another's now
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK     # utime, stime
            except OSError:
                pass
        w.cpu_seen = max(w.cpu_seen, total)
        return w.cpu_seen

    def exited(self, w: Worker) -> None:
        """Called when w's pidfd is readable: reap it and start it again, at once or, if it keeps
        dying (_kept_dying), once down() offers it: BACKOFF seconds on, and twice as long each
        time it dies again before it has run RESTART_WINDOW seconds (up to RETRY_MAX), as a
        restart that fails waits (_start_failed); BACKOFF again after one that ran longer, while
        the crash loop's count lasts (_ran). One that died at once after its start was restarted
        a second apart for good: a process, its setup and 3 log lines a second. The wait is said
        (worker.crashing) when it changes, not at each death."""
        if self._died(w):
            # A worker that keeps dying would otherwise spin the control process. It is held back
            # by down(), not by a sleep here: the control loop serves reloads, link events and
            # its socket meanwhile, and restarts it once due (maintain_workers).
            now, wall = time.monotonic(), time.time()
            if w.failing_since is None:     # since the first death of the burst (or loop), kept across restarts
                *before, died = w.recent
                kept = _kept_dying(before, died)        # those deaths, not a hold before, hold it: they began it
                w.failing_since = w.down_since = min(w.down_since or wall, wall - (now - kept[0]))
                w.failing_deaths = len(kept) + 1
            wait = min(RETRY_MAX, BACKOFF * 2 ** w.crashes)
            w.crashes += 1
            w.retry_at = now + wait
            if w.crash_said is None or w.crash_said[0] != wait:
                # Restarted after each of its deaths since it began to keep dying but this one. The
                # burst's window once counted them: empty at the long waits, it said 0 restarts.
                log.error("worker.crashing", queue=w.queue, restarts=w.failing_deaths - 1, backoff=wait,
                          since=_utc(w.failing_since))
            w.crash_said = (wait, w.down_error)
            return
        self.restart(w)

    def _died(self, w: Worker) -> bool:
        """Reap w's process, which exited unasked, and log how (and why, if it said); True if
        it keeps dying (_kept_dying, or it was held back and has not got over it: _ran)."""
        rc = self._reap(w)
        self._release(w)
        said = _recv(w.sock, wait=False) if w.sock is not None else b""
        self._close(w.pidfd, w.sock)
        w.pidfd, w.sock = -1, None
        how = {"signal": _signal_name(-rc)} if rc < 0 else {"exit_code": rc}
        if said[:1] == b"E":
            error, trace = _failure(said)       # its fast path stopped, or an exception: why
            how.update(error=error, **_traceback(trace))
        now = time.monotonic()
        self._ran(w, now)
        if w.failing_since is not None:     # it keeps dying: one more (exited counts the burst's)
            w.failing_deaths += 1
        ended = _ended(rc)
        hung_for, w.hung_for = w.hung_for, None
        if hung_for is not None and rc == -signal.SIGKILL:
            # The watchdog's SIGKILL: "killed by SIGKILL" alone reads as the OOM killer's, or a user's.
            ended += f" (hung: its heartbeat stood still {hung_for:g} s)"
        why = f"{ended}: {how['error']}" if "error" in how else ended
        # Held back as one that keeps dying, a death like the last said is no news (worker.crashing
        # said it): at debug level.
        news = w.crash_said is None or w.crash_said[1] != why
        (log.warning if news else log.debug)("worker.exited", queue=w.queue, pid=w.proc.pid, **how)
        self._went_down(w, why)
        # The deaths _kept_dying may count: the last few, within the longer window.
        w.recent = [t for t in w.recent if now - t < CRASH_LOOP_WINDOW][-max(RESTART_BURST, CRASH_LOOP_RESTARTS):]
        held = bool(_kept_dying(w.recent, now)) or w.crashes > 0
        w.recent.append(now)
        return held

    @staticmethod
    def _ran(w: Worker, until: float) -> None:
        """w's process, let go at w.up_at, ran until `until` (monotonic: it died, or was asked to
        stop): if that was RESTART_WINDOW seconds or more, its next hold waits BACKOFF again, and
        unless its deaths still make a crash loop (_kept_dying: CRASH_LOOP_RESTARTS restarts
        within CRASH_LOOP_WINDOW) it no longer keeps dying, and its next death is a first
        (exited). One that dies every 20 s, say, is held back BACKOFF before each restart, said
        once (worker.crashing), not 1, 2, 4 ... RETRY_MAX s: it runs a window between."""
        if until - w.up_at >= RESTART_WINDOW:
            w.crashes = 0
            if not _kept_dying(w.recent, until):
                w.crash_said, w.failing_since, w.failing_deaths = None, None, 0

    def workers_refused(self) -> str | None:
        """Why a worker started now would not run on the switch's shared memory (one line), None
        if it would: the fast path installed since the switch started (an upgrade) lays it out
        otherwise, or does not load (fast_path_version). None too if the version is not known."""
        if self.version is None:
            return None
        found = fast_path_version()
        if isinstance(found, str):
            return found
        return upgraded(self.version, found, "the fast path installed now") if found != self.version else None

    def restart(self, w: Worker, attempt: int = 1) -> None:
        """Start w again after it died: a new process, w.starting, that the control loop watches
        -- ready() once its socket is readable, start_timed_out() once it is late -- without
        waiting for it here. A process that cannot even be made (fork refused) is tried again
        at once, SPAWN_TRIES tries in all. One that would not run (workers_refused) is not
        started: held back (_hold)."""
        if (why := self.workers_refused()) is not None:
            self._hold(w, why)
            return
        while True:
            try:
                p = self._launch(w)
            except OSError as e:
                if not self._start_failed(w, attempt, str(e)):
                    return
                attempt += 1
                continue
            p.attempt, p.deadline = attempt, time.monotonic() + READY_TIMEOUT
            w.starting = p
            log.debug("worker.spawned", queue=w.queue, pid=p.proc.pid, attempt=attempt)
            return

    def ready(self, w: Worker) -> bool:
        """Called when w's restart's socket is readable: its process says it is set up (let go,
        counted in w's restarts: True) or it ended (another try, or w waits: False)."""
        p, w.starting = w.starting, None
        if not self._heard(w, p, said_something=True):
            return False
        try:
            self._go(w, p)
        except OSError as e:
            if self._start_failed(w, p.attempt, _cannot_start(w, e)):
                self.restart(w, p.attempt + 1)
            return False
        self._restarted(w)
        return True

    def start_timed_out(self, w: Worker) -> None:
        """w's restart's process was not set up within READY_TIMEOUT (late): kill it, and try
        again, or let w wait."""
        p, w.starting = w.starting, None
        self._heard(w, p, said_something=False)

    def _heard(self, w: Worker, p: Pending, said_something: bool) -> bool:
        """_hear w's restart's process: True if it is set up; else that try failed, and the next
        one is started, or w waits (_start_failed)."""
        try:
            self._hear(w, p, said_something)
        except WorkerError as e:
            if self._start_failed(w, p.attempt, str(e), e.traceback):
                self.restart(w, p.attempt + 1)
            return False
        return True

    def _start_failed(self, w: Worker, attempt: int, error: str, trace: str | None = None) -> bool:
        """Try `attempt` of w's restart failed (logged): True if another try is due at once. After
        SPAWN_TRIES, down() offers it again after a wait that doubles with each restart in a row
        that fails (1 s, 2 s, ... RETRY_MAX), as a worker that keeps dying is held back, so that
        one that cannot start (its module or the fast path broken, say) costs no 3 processes and
        3 errors a second for good."""
        log.error("worker.start_failed", queue=w.queue, attempt=attempt, error=error, **_traceback(trace))
        self._went_down(w, error)
        if attempt < SPAWN_TRIES:
            return True
        wait = min(RETRY_MAX, BACKOFF * 2 ** w.failed_starts)
        w.failed_starts += 1
        w.retry_at = time.monotonic() + wait
        log.error("worker.crashing", queue=w.queue, failed_starts=w.failed_starts, backoff=wait)
        return False

    def _hold(self, w: Worker, why: str) -> None:
        """w would not run if started (workers_refused): it gets no process, and down() offers it
        again after a wait that doubles as _start_failed's does (up to RETRY_MAX), where a look
        that finds the same costs a stat. Said once (worker.start_failed, held) while the reason
        lasts: after an upgrade its workers started SPAWN_TRIES processes and logged 4 errors
        every 30 s, until the switch was restarted. Another install that brings the switch's
        version back lets it start at the next look."""
        if why != w.held:
            log.error("worker.start_failed", queue=w.queue, attempt=1, error=f"worker {w.queue} cannot start: {why}",
                      held=True)
        w.held = w.down_error = why
        w.retry_at = time.monotonic() + min(RETRY_MAX, BACKOFF * 2 ** w.failed_starts)
        w.failed_starts += 1

    def _restarted(self, w: Worker) -> None:
        """w, which had died, runs again: counted."""
        w.failed_starts, w.retry_at, w.held = 0, 0.0, None
        w.down_since = w.down_error = None      # but failing_since: it may keep dying (exited)
        w.restarts += 1
        log.info("worker.restarted", queue=w.queue, pid=w.proc.pid, restarts=w.restarts)

    def _went_down(self, w: Worker, error: str | None) -> None:
        """w has no process running, unasked: since the first time it went (a restart that fails
        again keeps it; one that keeps dying, since it began to: failing_since), and why, as said last."""
        if w.down_since is None:
            w.down_since = w.failing_since or time.time()
        w.down_error = error or w.down_error

    def queues_down(self) -> list[dict]:
        """The queues whose worker does not run, for `tapswitch ports` (read in the control
        socket's threads): each queue, "restarting" (its new process is starting, or due at
        once) or "held back" (it keeps dying, or its restarts fail: until `until`), since when
        (ISO 8601, UTC; one that keeps dying, since the first death of it, not its last restart's)
        and why. A worker asked to stop and replaced (a reload) is no worker
        down. Lost race, stated: a worker just gone is "restarting" for the moment between its
        death and its being held back."""
        down = []
        now, wall = time.monotonic(), time.time()
        for w in self.workers:
            since, error, starting, retry_at = w.down_since, w.down_error, w.starting, w.retry_at
            if since is None:
                continue
            held = starting is None and retry_at > now
            down.append({"queue": w.queue, "state": "held back" if held else "restarting",
                         "since": _utc(since), "until": _utc(wall + retry_at - now) if held else None,
                         "error": error})
        return down

    def _cancel_start(self, w: Worker) -> None:
        """Kill and reap w's restart's process, if one is starting."""
        p, w.starting = w.starting, None
        if p is not None:
            self._discard(w, p)

    def replace_ports(self, port_fds: dict[int, list[int]]) -> list[str]:
        """Hand every worker a new set of ports (a port was added or removed).

        The new workers start first and set up while the old ones forward;
        then, one queue at a time, the old worker is asked to stop (SIGTERM:
        frames it had read already -- io_uring reads ahead -- go out rather
        than die with it) and the new one is let go as soon as the old one
        says it has drained; the old ones are reaped at the end. Meanwhile
        frames wait in that queue of each TAP (switch.queue_len frames deep),
        and the other queues flow.

        A worker that had died (restarting, held back, or failing to start)
        gets its new process here too: its restart's process, which has the
        old ports, is killed, and the new one counts as its restart. So does
        one that dies while the new ones start (its exit is logged as
        worker.exited, as the control loop's would have been). One whose
        new process does not come up is left with none, due at once: the
        control loop restarts it. Returns why each of those did not come up.
        """
        self.port_fds = port_fds
        fresh: dict[Worker, Pending | None] = {w: None for w in self.workers}
        retiring: list[tuple[Worker, Old]] = []
        failed: list[str] = []
        why: dict[Worker, str] = {}     # why each worker's new process did not come up
        died = {w for w in self.workers if w.pidfd < 0}
        for w in died:
            self._cancel_start(w)
        try:
            for w in self.workers:
                try:
                    fresh[w] = self._launch(w)
                except OSError as e:
                    why[w] = _cannot_start(w, e)
                    failed.append(why[w])
                    log.error("worker.start_failed", queue=w.queue, attempt=1, error=str(e))
            for w, p in fresh.items():
                if p is None:
                    continue
                try:
                    self._await(w, p)
                except WorkerError as e:
                    why[w] = str(e)
                    failed.append(why[w])
                    log.error("worker.start_failed", queue=w.queue, attempt=1, error=str(e), **_traceback(e.traceback))
                    fresh[w] = None
            for w, p in fresh.items():
                if w.pidfd >= 0 and readable([w.pidfd], 0):
                    # It died during this reload (its pidfd is not watched meanwhile), before it
                    # was asked to stop: a death like any, logged and counted as its restart.
                    # Lost race, stated: one that dies between this look and the SIGTERM is
                    # taken for one that failed to stop (worker.stopped).
                    self._died(w)
                    died.add(w)
                old = self._hand_over(w)
                if old is not None:
                    retiring.append((w, old))
                if p is not None:
                    fresh[w] = None
                    try:
                        self._go(w, p)
                    except OSError as e:      # EMFILE: p is stopped; w has no process now
                        why[w] = _cannot_start(w, e)
                        failed.append(why[w])
                        log.error("worker.start_failed", queue=w.queue, attempt=1, error=str(e))
                        p = None
                    else:
                        if w in died:
                            self._restarted(w)
                if p is None:
                    w.retry_at = 0.0     # down(): restarted as one that died, not waited for here
                    self._went_down(w, why.get(w))
        finally:
            for w, old in retiring:
                self._reap_old(w, old)
            for w, p in fresh.items():  # only if something failed on the way: never let go
                if p is not None:
                    self._discard(w, p)
        log.info("workers.replaced", ports=len(port_fds))
        return failed

    def forget_port(self, index: int) -> None:
        """Port `index` is gone (its device deleted, or moved out of where the config puts it):
        workers started from now on (a restart) do not get its queues. A deleted device's
        queue failed each running worker's read (EBADFD), counted one rx_errors and is polled no
        more by it (fastpath.c, rx_failed; a read failing otherwise is retried);
        a new worker's read would fail and count again (so a restart before the control loop
        has noticed forgets it too: _hand_ports). A reload makes the port again."""
        self.port_fds = {i: fds for i, fds in self.port_fds.items() if i != index}

    def alive(self, w: Worker) -> bool:
        """Running, as far as the control loop knows (it reaps; readers in other threads must not)."""
        return w.proc is not None and w.proc.returncode is None

    def _stop(self, w: Worker) -> None:
        """Stop w at once (SIGKILL)."""
        if w.proc is not None and w.proc.returncode is None:
            self._kill(w)
        self._close(w.pidfd, w.sock)
        w.pidfd, w.sock = -1, None

    def stop(self) -> None:
        """Stop every worker, and those spawned for a start that never came or a restart under way."""
        for w, p in self.spawned:
            self._discard(w, p)
        self.spawned = []
        for w in self.workers:
            self._cancel_start(w)
            self._stop(w)

"""Helpers for integration tests: a tapswitch subprocess, namespaces, and cleanup that always runs."""

import contextlib
import ctypes
import io
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import yaml


def uid(prefix: str = "t") -> str:
    """A short unique tag for names in this test (TAP names are at most 15 chars)."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def wait_for(what: str, fn, within: float = 5.0, every: float = 0.05):
    """fn()'s first true value, polled every `every` s; AssertionError naming `what` after `within` s."""
    deadline = time.monotonic() + within
    while True:
        v = fn()
        if v:
            return v
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        time.sleep(every)


HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_held():
    """Run the block whole: a SIGINT or SIGTERM that comes meanwhile is delivered when it ends
    (as KeyboardInterrupt, under pytest), so what the block starts or removes is all done or
    not begun. Cleanup runs under it: a second Ctrl-C must not leave the rest of it undone.
    A third signal in one block is let through at once, for a cleanup that hangs."""
    if threading.current_thread() is not threading.main_thread():
        yield                       # only the main thread may set handlers; it gets the signals
        return
    came: list[int] = []
    holder = os.getpid()

    def hold(signum, frame):
        if os.getpid() != holder:       # a child forked in the block, no exec: as conftest's _interrupted
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        came.append(signum)
        if len(came) >= 3:
            raise KeyboardInterrupt(f"signal {signum} three times: cleanup left unfinished")

    before = {s: signal.signal(s, hold) for s in HELD_SIGNALS}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        if came:
            signal.raise_signal(came[0])    # as it would have been, now: KeyboardInterrupt, or death


def sh(*argv, check=True, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=check, timeout=timeout,
                          capture_output=True, text=True, **kw)


def nsexec(ns: str, *argv, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *argv, **kw)


def netns_list() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()}


def link_exists(name: str, ns: str | None = None) -> bool:
    argv = ["ip", "link", "show", "dev", name]
    if ns:
        argv = ["ip", "netns", "exec", ns] + argv
    return subprocess.run(argv, capture_output=True).returncode == 0


def link_mac(ns: str, dev: str) -> str:
    info = json.loads(nsexec(ns, "ip", "-j", "link", "show", "dev", dev).stdout)
    return info[0]["address"]


def link_mtu(ns: str, dev: str) -> int:
    info = json.loads(nsexec(ns, "ip", "-j", "link", "show", "dev", dev).stdout)
    return info[0]["mtu"]


def ping(ns: str, address: str, count: int = 1, wait: int = 2) -> bool:
    six = ["-6"] if ":" in address else []
    r = nsexec(ns, "ping", *six, "-c", count, "-W", wait, "-i", "0.2", address, check=False)
    return r.returncode == 0


IPERF3_PORT = 5201      # iperf3's server, unless -p


def tcp_listening(ns: str, port: int) -> bool:
    """Does a socket in `ns` listen on TCP `port` (an iperf3 server, ready for its client)?"""
    return bool(nsexec(ns, "ss", "-Hltn", f"sport = :{port}").stdout.strip())


def capture(ns: str) -> subprocess.Popen:
    """tcpdump (link-level headers) on every device of `ns`, those made after it started too;
    returns once it listens. captured() ends it and gives what it saw."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", "any", "-nn", "-e", "-l"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while "listening on" not in (line := p.stderr.readline()):
        assert line, "tcpdump did not start"
    return p


def captured(p: subprocess.Popen) -> str:
    p.terminate()
    return p.communicate(timeout=5)[0]


def ipv6_settled(ns: str, dev: str) -> bool:
    """Has `dev` a link-local address that is no longer tentative (its duplicate address
    detection done: the host has sent what it sends on a new device, but for later router
    solicitations)?"""
    out = nsexec(ns, "ip", "-6", "addr", "show", "dev", dev, "scope", "link").stdout
    return "fe80::" in out and "tentative" not in out


def ipv6_disabled(ns: str | None, dev: str) -> bool:
    path = f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"
    argv = ["ip", "netns", "exec", ns, "cat", path] if ns else ["cat", path]
    return sh(*argv).stdout.strip() == "1"


class Switch:
    """A `tapswitch run` subprocess, started on a config dict, ready when it says READY=1."""

    def __init__(self, cfg: dict, tmpdir: str, netns: str | None = None, wrapper: tuple = ()):
        self.cfg = cfg
        self.netns = netns        # run the switch inside this namespace
        self.wrapper = list(wrapper)    # a command that execs the switch's (tests/no_io_uring.py)
        self.dir = tmpdir
        self.config_path = os.path.join(tmpdir, "tapswitch.yaml")
        self.socket = cfg.setdefault("switch", {}).setdefault("control", {}).setdefault(
            "socket", os.path.join(tmpdir, "ctl.sock"))
        cfg["switch"].setdefault("metrics", {"listen": ""})
        cfg["switch"].setdefault("log", {"level": "debug", "format": "json"})
        with open(self.config_path, "w") as f:
            yaml.safe_dump(cfg, f)
        self.log_path = os.path.join(tmpdir, "switch.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0, expect_ready: bool = True) -> "Switch":
        notify_path = os.path.join(self.dir, "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(0.2)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        self.log_file = open(self.log_path, "w")
        prefix = (["ip", "netns", "exec", self.netns] if self.netns else []) + self.wrapper
        with interrupts_held():     # a KeyboardInterrupt inside Popen loses the process it started
            self.proc = subprocess.Popen(prefix + [sys.executable, "-m", "tapswitch", "run", "-c", self.config_path],
                                         stdout=self.log_file, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)    # its own process group, as under systemd
        try:
            if expect_ready:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        if "READY=1" in notify.recv(4096).decode():
                            break
                    except socket.timeout:
                        pass
                    if self.proc.poll() is not None:
                        raise AssertionError(f"switch exited ({self.proc.returncode}) before READY:\n{self.log()}")
                    if time.monotonic() > deadline:
                        raise AssertionError(f"switch not ready in {timeout}s:\n{self.log()}")
        finally:
            notify.close()
            os.unlink(notify_path)
        return self

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def events(self, name: str | None = None) -> list[dict]:
        out = []
        for line in self.log().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if name is None or e.get("event") == name:
                out.append(e)
        return out

    def cli(self, *argv) -> subprocess.CompletedProcess:
        """`tapswitch ARGV -s SOCKET`, as the command line runs it (cli.main), in this process:
        the tests read the switch through it hundreds of times, often polling, and a `python -m
        tapswitch` each time cost a start of the interpreter and its imports (0.2-0.4 s) for the
        same code. CalledProcessError when it exits other than 0, as sh(). Tests of the command as
        a process (its exit, its streams) run it with sh()."""
        from tapswitch import cli
        args = [str(a) for a in (*argv, "-s", self.socket)]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(args)
            except SystemExit as e:     # as the interpreter ends on one: a message is printed, and exit 1
                code = e.code
                if isinstance(code, str):
                    print(code, file=sys.stderr)
                    code = 1
        r = subprocess.CompletedProcess(["tapswitch", *args], code or 0, out.getvalue(), err.getvalue())
        r.check_returncode()
        return r

    def cli_json(self, *argv):
        return json.loads(self.cli(*argv, "--json").stdout)

    def worker_pids(self) -> list[int]:
        out = sh("pgrep", "-P", self.proc.pid, "-f", "tapswitch.worker", check=False).stdout
        return [int(p) for p in out.split()]

    def kill(self) -> int:
        """SIGKILL the switch, as a crash, and wait for its workers to die with it (PDEATHSIG,
        a moment later: a start meanwhile would meet them): its exit status."""
        workers = self.worker_pids()
        assert workers, f"no workers found to wait for:\n{self.log()}"
        rc = self.stop(signal.SIGKILL)
        wait_for("the killed switch's workers gone", lambda: all(map(exited, workers)))
        return rc

    def stop(self, sig=signal.SIGTERM, timeout: float = 15.0) -> int:
        """Stop the switch, ready or not (a start cut short too); SIGKILL to its process group
        (the workers with it) if it has not exited in `timeout` s. Its exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)   # not yet reaped: the group is still its
            rc = self.proc.wait()
        self.log_file.close()
        return rc


@contextlib.contextmanager
def fds_to_spare(pid: int, spare: int):
    """Within it, process `pid` may open `spare` more descriptors and no more (its RLIMIT_NOFILE
    lowered), as a switch whose ports have taken the rest. Counted on the lowest of a few looks:
    one taken at a moment it held a descriptor briefly would leave it one more."""
    free = []
    for _ in range(5):
        held = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        now = [fd for fd in range(len(held) + spare + 1) if fd not in held][:spare + 1]
        free = now if not free or now[spare] < free[spare] else free
        time.sleep(0.02)
    was = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (free[spare], was[1]))
    try:
        yield free[spare]
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_NOFILE, was)


def exited(pid: int) -> bool:
    """Has process pid exited (a zombie not yet reaped too)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def hold_queue(switch_pid: int, ifname: str) -> int:
    """A copy, in this process, of one of the switch's queue fds of the TAP named ifname (a dead
    worker's io_uring holds such copies for a moment after it): pidfd_getfd."""
    for fd in os.listdir(f"/proc/{switch_pid}/fd"):
        try:
            with open(f"/proc/{switch_pid}/fdinfo/{fd}") as f:
                info = f.read()
        except OSError:
            continue
        if f"iff:\t{ifname}\n" in info:
            pidfd = os.pidfd_open(switch_pid)
            try:
                copy = ctypes.CDLL(None, use_errno=True).syscall(438, pidfd, int(fd), 0)   # pidfd_getfd
            finally:
                os.close(pidfd)
            assert copy >= 0, os.strerror(ctypes.get_errno())
            return copy
    raise AssertionError(f"no queue of {ifname} in the switch")


def processes_with_env(entry: str) -> list[int]:
    """Processes whose environment holds `entry` ("NAME=value")."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if entry.encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def cleanup(namespaces=(), links=()) -> None:
    """Remove whatever a test may have left, whether or not it passed: the processes in its
    namespaces (a switch's too, whose stop did not end it), the namespaces, the links."""
    present = netns_list()
    for ns in namespaces:
        if ns in present:
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for link in links:
        subprocess.run(["ip", "link", "del", link], capture_output=True)


def tmpdir() -> str:
    return tempfile.mkdtemp(prefix="tapswitch-test-")

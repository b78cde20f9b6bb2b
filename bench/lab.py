"""The bench's lab: its namespaces, hosts and processes, and the cleanup that always runs.

Everything the bench makes is named after one tag (`bn` + 4 hex digits by
default), is registered here the moment it exists, and is removed by
`Lab.close()`, which run.py calls in a `finally` that SIGTERM, SIGHUP and
Ctrl-C also reach. Addresses: 198.18.1.0/24 inside the bench's own namespaces only.

A bench killed outright (SIGKILL, or dead of a bug in the interpreter) runs no
`finally`. For that, every process the lab starts gets SIGKILL when the bench
dies (PR_SET_PDEATHSIG), and a guard process (this file, run as a script)
holds the lab's list of namespaces and process groups: when the bench's end of
its pipe closes, however the bench went, it kills the process groups and
whatever runs in the namespaces (trafgen's workers, which the parent-death
signal does not reach), then removes the namespaces and the temporary directory.
"""

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

SUBNET = "198.18.1"        # /24; host i is SUBNET.(i+1)
IFNAME = "eth1"            # every host's switch port, whatever the system
NAME_MAX = 15              # a device name's bytes (IFNAMSIZ - 1)
SUFFIX_MAX = 3             # the longest suffix a run puts after its tag: h15, p15, o15 (16 hosts)
TAG_MAX = NAME_MAX - SUFFIX_MAX

PR_SET_PDEATHSIG = 1       # linux/prctl.h
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def sh(*argv, check=True, timeout=60, **kw) -> subprocess.CompletedProcess:
    """Run a command, capture its output; raise with its stderr when it fails."""
    argv = [str(a) for a in argv]
    r = subprocess.run(argv, timeout=timeout, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def nsexec(ns: str, *argv, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *argv, **kw)


def netns_list() -> set[str]:
    out = sh("ip", "netns", "list").stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_names() -> set[str]:
    """Devices in the bench's own (the root) namespace."""
    return {link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show").stdout)}


def remove_netns(ns: str) -> None:
    """Kill what runs in namespace ns, then remove it (a process in it can hold it a moment)."""
    if ns not in netns_list():
        return
    for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
        subprocess.run(["kill", "-9", pid], capture_output=True)
    for _ in range(50):
        if sh("ip", "netns", "del", ns, check=False).returncode == 0:
            break
        time.sleep(0.1)


def check_tag(tag: str) -> str | None:
    """None if `tag` can prefix every name of a run, else why not."""
    if not tag or not all(c.isascii() and (c.isalnum() or c in "_-") for c in tag):
        return f"tag {tag!r}: letters, digits, '_' and '-' only"
    if len(tag) > TAG_MAX:
        return (f"tag {tag!r}: at most {TAG_MAX} characters (device names are the tag and up to "
                f"{SUFFIX_MAX} more, at most {NAME_MAX} bytes)")
    return None


def _die_with_parent() -> None:
    """preexec_fn of the lab's processes: SIGKILL when the bench dies (a new session does not
    get the bench's SIGHUP or Ctrl-C). Strictly: when the thread that started it ends, so a
    thread reaps what it starts."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Host:
    """One end point: a namespace whose device IFNAME is plugged into the switch."""

    index: int
    ns: str
    mac: str
    ip: str                 # without prefix length
    ifname: str = IFNAME

    @property
    def cidr(self) -> str:
        return f"{self.ip}/24"

    def stat(self, counter: str) -> int:
        """An interface counter, read inside the host's namespace (the truth for received frames)."""
        r = nsexec(self.ns, "cat", f"/sys/class/net/{self.ifname}/statistics/{counter}")
        return int(r.stdout)

    def stats(self, *counters: str) -> dict[str, int]:
        paths = [f"/sys/class/net/{self.ifname}/statistics/{c}" for c in counters]
        out = nsexec(self.ns, "cat", *paths).stdout.split()
        return dict(zip(counters, map(int, out)))

    def configure(self) -> None:
        """MAC, address and link up on the host's device (the system has put it there)."""
        nsexec(self.ns, "ip", "link", "set", self.ifname, "address", self.mac, "up")
        nsexec(self.ns, "ip", "addr", "replace", self.cidr, "dev", self.ifname)


class Lab:
    """Names, namespaces and processes of one bench run."""

    def __init__(self, tag: str):
        self.tag = tag
        self.dir = tempfile.mkdtemp(prefix=f"{tag}-")
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.cleanups: list = []          # callables, run newest first
        self.guard = subprocess.Popen([sys.executable, os.path.abspath(__file__), self.dir],
                                      stdin=subprocess.PIPE, text=True, start_new_session=True)

    def tell_guard(self, line: str) -> None:
        try:
            self.guard.stdin.write(line + "\n")
            self.guard.stdin.flush()
        except OSError:
            pass                # the guard is gone: the finally still cleans up

    def name(self, suffix: str) -> str:
        """A device or namespace name of this run (devices: at most 15 bytes)."""
        n = f"{self.tag}{suffix}"
        if len(n) > 15:
            raise ValueError(f"name too long: {n}")
        return n

    def netns(self, suffix: str) -> str:
        """A new namespace: loopback up, IPv6 off (no ND/MLD noise in the counters)."""
        ns = self.name(suffix)
        self.tell_guard(f"+ns {ns}")        # before it exists: a kill in between leaves nothing
        try:
            sh("ip", "netns", "add", ns)
        except RuntimeError:
            self.tell_guard(f"-ns {ns}")    # not made: whoever has that name keeps it
            raise
        self.namespaces.append(ns)
        for key in ("all", "default"):
            nsexec(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        nsexec(ns, "ip", "link", "set", "lo", "up")
        return ns

    def hosts(self, n: int) -> list[Host]:
        """n end points h0..h(n-1), each in its own namespace, not yet plugged in."""
        t = int(self.tag[-4:], 16) if all(c in "0123456789abcdef" for c in self.tag[-4:]) else 0
        hosts: list[Host] = []
        try:
            for i in range(n):
                hosts.append(Host(index=i, ns=self.netns(f"h{i}"),
                                  mac=f"02:b5:{t >> 8:02x}:{t & 0xff:02x}:00:{i + 1:02x}", ip=f"{SUBNET}.{i + 1}"))
        except BaseException:
            self.drop_hosts(hosts)      # all or none: the caller has no list to drop
            raise
        return hosts

    def drop_hosts(self, hosts: list[Host]) -> None:
        for h in hosts:
            self.del_netns(h.ns)

    def del_netns(self, ns: str) -> None:
        remove_netns(ns)
        if ns in self.namespaces:
            self.namespaces.remove(ns)
            self.tell_guard(f"-ns {ns}")

    def popen(self, argv, **kw) -> subprocess.Popen:
        """Start a process in a session of its own: Ctrl-C and a hangup reach only the bench, which
        stops it; if the bench dies without stopping it, it gets SIGKILL (and the guard kills its group).
        Its environment carries BENCH_LAB=tag: what a run started can be found by it."""
        env = dict(kw.pop("env", None) or os.environ, BENCH_LAB=self.tag)
        p = subprocess.Popen([str(a) for a in argv], start_new_session=True, preexec_fn=_die_with_parent,
                             env=env, **kw)
        self.procs.append(p)
        self.tell_guard(f"+pg {p.pid}")
        return p

    def signal(self, p: subprocess.Popen, sig: int) -> None:
        """Signal p's whole process group (trafgen's workers are its children)."""
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass

    def reap(self, p: subprocess.Popen, timeout: float = 10.0) -> int:
        """Stop p (SIGTERM, then SIGKILL) and whatever is left of its process group."""
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.signal(p, signal.SIGKILL)
        if p in self.procs:
            self.procs.remove(p)
            self.tell_guard(f"-pg {p.pid}")
        return p.returncode

    def close(self) -> None:
        """Remove everything this run made, whatever state it is in."""
        while self.cleanups:
            fn = self.cleanups.pop()
            try:
                fn()
            except Exception as e:      # keep cleaning: one failure must not leave the rest
                print(f"bench: cleanup {getattr(fn, '__name__', fn)}: {e}")
        for p in list(self.procs):
            self.reap(p, timeout=5)
        for ns in list(self.namespaces):
            self.del_netns(ns)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.guard.stdin is not None and not self.guard.stdin.closed:
            try:
                self.guard.stdin.close()    # nothing left on its list: it exits
            except OSError:
                pass
        try:
            self.guard.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.guard.kill()
            self.guard.wait()

    def leftovers(self) -> list[str]:
        """Namespaces and devices of this run still present (empty after close())."""
        found = [ns for ns in netns_list() if ns.startswith(self.tag)]
        found += [d for d in link_names() if d.startswith(self.tag)]
        return found


def wait_until(pred, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def start_tapswitch(config: str, log_path: str, workdir: str, env: dict | None = None,
                    popen=subprocess.Popen, timeout: float = 30.0) -> tuple[subprocess.Popen, float]:
    """`tapswitch run -c config`, its output into log_path, started by popen (Lab.popen: reaped
    with the lab); returns it and the seconds from exec to its READY=1 on $NOTIFY_SOCKET (a socket
    in workdir). If it exits first, or says nothing within timeout s, it is stopped and
    RuntimeError carries the tail of its log."""
    notify_path = os.path.join(workdir, "notify.sock")
    if os.path.exists(notify_path):
        os.unlink(notify_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(0.2)
    try:
        with open(log_path, "w") as log:
            t0 = time.monotonic()
            proc = popen([sys.executable, "-m", "tapswitch", "run", "-c", config], stdout=log,
                         stderr=subprocess.STDOUT, env=dict(os.environ if env is None else env,
                                                            NOTIFY_SOCKET=notify_path))
        while True:
            try:
                if "READY=1" in notify.recv(4096).decode():
                    return proc, time.monotonic() - t0
            except socket.timeout:
                pass
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                break
    finally:
        notify.close()
        os.unlink(notify_path)
    how = f"exited with {proc.returncode}" if proc.poll() is not None else f"not ready in {timeout:.0f} s"
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with open(log_path) as f:
        raise RuntimeError(f"tapswitch {how}:\n{f.read()[-3000:]}")


def guard(workdir: str) -> None:
    """The guard: reads `+ns NAME`, `-ns NAME`, `+pg PGID`, `-pg PGID` from stdin (the bench's
    Lab); at end of file -- the bench closed it, or died -- removes what is still listed and workdir."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # a session of its own: only a kill meant for it
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    namespaces: list[str] = []
    groups: list[int] = []
    for line in sys.stdin:
        op, _, arg = line.strip().partition(" ")
        items, value = (namespaces, arg) if op[1:] == "ns" else (groups, int(arg))
        if op[0] == "+":
            items.append(value)
        elif value in items:
            items.remove(value)
    for pg in groups:
        try:
            os.killpg(pg, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for ns in namespaces:
        remove_netns(ns)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    guard(sys.argv[1])

"""The systems under test: one class per switch, one interface for all of them.

A system plugs a list of hosts (namespaces made by the lab) into one switch:
`setup(hosts, **opts)` leaves every host with device `eth1` up, with the
host's MAC and address, joined to the switch; `teardown()` removes all the
system made (not the hosts). A case never needs to know which system it
drives: it reads the hosts' counters, and asks the system only for what every
system can say (`fdb_count`, `pids`, `forwarding_pids`).

  Tapswitch  `python -m tapswitch run` on TAP ports moved into the hosts
  Bridge     the Linux bridge in a namespace of its own, veth into the hosts,
             br_netfilter off in that namespace
  Ovs        Open vSwitch's userspace datapath (datapath_type=netdev) with
             internal ports (TAP devices) moved into the hosts; its own
             ovsdb-server and ovs-vswitchd, with db, sockets and logs in a
             temporary directory, ovs-vswitchd in a namespace of its own
  Bare       bench/bare.c: two TAP devices with tapswitch's offloads and a
             read/write loop between them, no switching -- the floor of what
             a userspace switch on TAP ports costs (two-host cases only); it
             busy-polls as long as tapswitch's workers do by default
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import yaml

from tapswitch.config import BUSY_POLL_US, QUEUE_LEN, MacTable, Switch
from lab import Host, Lab, nsexec, sh, start_tapswitch, wait_until
import services

DEFAULT_FDB_SIZE = 8192


class System:
    """What every system offers to the cases."""

    name = "?"             # column in the results
    label = "?"            # for humans
    kind = "?"             # tapswitch | bridge | ovs
    tools: tuple = ()      # the commands it runs, besides the lab's (Open vSwitch's own: Ovs.available)

    def __init__(self, lab: Lab):
        self.lab = lab
        self.hosts: list[Host] = []
        self.setup_seconds = float("nan")   # from start to every port forwarding

    def setup(self, hosts: list[Host], fdb_size: int = DEFAULT_FDB_SIZE) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError

    def fdb_count(self) -> int:
        """Learned entries in the MAC table now."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Every process of the switch (for memory); [] for an in-kernel switch."""
        return []

    def forwarding_pids(self) -> list[int]:
        """The processes that forward frames (for CPU per frame)."""
        return []

    def __repr__(self) -> str:
        return self.name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plug_tap(dev: str, h: Host, ns: str | None = None) -> None:
    """Move TAP device `dev` (in namespace ns, else in the bench's) into host h as its device,
    configured. Its queue is as long as tapswitch's ports' (switch.queue_len's default): the
    kernel's 1000 frames lose frames to scheduling stalls below the forwarder's rate, whichever
    forwarder reads it."""
    sh("ip", *(["-n", ns] if ns else []), "link", "set", dev, "netns", h.ns)
    nsexec(h.ns, "ip", "link", "set", dev, "name", h.ifname, "txqueuelen", str(QUEUE_LEN))
    h.configure()


class Tapswitch(System):
    kind = "tapswitch"
    tools = ("pgrep",)

    def __init__(self, lab: Lab, queues: int = 1, io: str = "", cpu: int | None = None,
                 queue_len: int | None = None, busy_poll_us: int | None = None):
        super().__init__(lab)
        self.queues = queues
        self.io = io            # TAPSWITCH_IO for the workers ("" = the default)
        self.cpu = cpu          # pin every worker to this CPU once ready (None = not pinned;
                                # -1 = "spread": worker q on CPU q % ncpu)
        self.queue_len = queue_len      # switch.queue_len (None = the default)
        self.busy_poll_us = busy_poll_us    # switch.busy_poll_us (None = the default)
        self.name = f"tapswitch-q{queues}" + (f"-{io}" if io else "") + (
            "" if cpu is None else "-spread" if cpu < 0 else f"-cpu{cpu}") + (
            f"-qlen{queue_len}" if queue_len else "") + (
            "" if busy_poll_us is None else f"-busypoll{busy_poll_us}")
        self.label = (f"tapswitch, {queues} queue{'s' if queues > 1 else ''}" + (f", {io} I/O" if io else "")
                      + ("" if cpu is None else ", worker q on CPU q" if cpu < 0 else f", workers on CPU {cpu}")
                      + (f", queues of {queue_len} frames" if queue_len else "")
                      + ("" if busy_poll_us is None else f", busy polling {busy_poll_us} µs"))
        self.proc: subprocess.Popen | None = None
        self.metrics_port = 0

    def config(self, hosts: list[Host], fdb_size: int) -> dict:
        self.metrics_port = _free_port()
        return {
            "switch": {
                "name": self.lab.name(f"q{self.queues}"),
                "queues": self.queues,
                **({"queue_len": self.queue_len} if self.queue_len else {}),
                **({"busy_poll_us": self.busy_poll_us} if self.busy_poll_us is not None else {}),
                "mac_table": {"size": fdb_size, "aging": 300},
                "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
                "control": {"socket": os.path.join(self.lab.dir, "tapswitch.sock")},
                "log": {"level": "info", "format": "json"},
            },
            "ports": [{"name": self.lab.name(f"p{h.index}"), "netns": h.ns, "ifname": h.ifname,
                       "mac": h.mac, "addresses": [h.cidr], "mtu": 1500} for h in hosts],
        }

    def setup(self, hosts: list[Host], fdb_size: int = DEFAULT_FDB_SIZE) -> None:
        self.hosts = hosts
        path = os.path.join(self.lab.dir, "tapswitch.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(self.config(hosts, fdb_size), f)
        self.log_path = os.path.join(self.lab.dir, f"tapswitch-{self.name}.log")
        env = dict(os.environ, TAPSWITCH_IO=self.io) if self.io else None
        self.proc, self.setup_seconds = start_tapswitch(path, self.log_path, self.lab.dir, env=env,
                                                        popen=self.lab.popen)
        if self.cpu is not None:
            ncpu = os.cpu_count() or 1
            for q, pid in enumerate(sorted(self.forwarding_pids())):   # started in queue order
                os.sched_setaffinity(pid, {self.cpu if self.cpu >= 0 else q % ncpu})

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def teardown(self) -> None:
        if self.proc is not None:
            rc = self.lab.reap(self.proc, timeout=15)
            self.proc = None
            if rc not in (0, -signal.SIGTERM):
                print(f"bench: {self.name} exited with {rc}:\n{self.log()}")

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def fdb_count(self) -> int:
        return int(self.metric("tapswitch_fdb_entries"))

    def pids(self) -> list[int]:
        return [self.proc.pid] + self.forwarding_pids()

    def forwarding_pids(self) -> list[int]:
        out = sh("pgrep", "-P", self.proc.pid, "-f", "tapswitch.worker", check=False).stdout
        return [int(p) for p in out.split()]


class Bridge(System):
    name = "bridge"
    label = "Linux bridge + veth"
    kind = "bridge"
    tools = ("bridge",)

    def __init__(self, lab: Lab):
        super().__init__(lab)
        self.ns: str | None = None
        self.netfilter = "?"       # br_netfilter in the bridge's namespace, as found after setup

    def setup(self, hosts: list[Host], fdb_size: int = DEFAULT_FDB_SIZE) -> None:
        """fdb_size is ignored: the bridge's table has no limit unless one is set."""
        self.hosts = hosts
        t0 = time.monotonic()
        self.ns = self.lab.netns("sw")
        # br_netfilter is per namespace on this kernel: off here, the bridge at its fastest.
        nf = "/proc/sys/net/bridge"
        if nsexec(self.ns, "test", "-d", nf, check=False).returncode == 0:
            for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"):
                nsexec(self.ns, "sh", "-c", f"echo 0 > {nf}/{key}")
        self.netfilter = "off" if self.br_netfilter_off() else "ON"
        nsexec(self.ns, "ip", "link", "add", "br0", "type", "bridge")
        for h in hosts:
            nsexec(self.ns, "ip", "link", "add", f"v{h.index}", "type", "veth",
                   "peer", "name", h.ifname, "netns", h.ns)
            nsexec(self.ns, "ip", "link", "set", f"v{h.index}", "master", "br0", "up")
            h.configure()
        nsexec(self.ns, "ip", "link", "set", "br0", "up")
        self.setup_seconds = time.monotonic() - t0

    def br_netfilter_off(self) -> bool:
        nf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        r = nsexec(self.ns, "cat", nf, check=False)
        return r.returncode != 0 or r.stdout.strip() == "0"

    def teardown(self) -> None:
        if self.ns is not None:
            self.lab.del_netns(self.ns)     # takes the veth pairs with it
            self.ns = None

    def fdb_count(self) -> int:
        out = nsexec(self.ns, "bridge", "fdb", "show", "br", "br0", timeout=300).stdout
        return sum(1 for line in out.splitlines() if "permanent" not in line and line.strip())


class Ovs(System):
    name = "ovs"
    label = f"Open vSwitch userspace (netdev), TAP ports of {QUEUE_LEN} frames as tapswitch's"
    kind = "ovs"

    SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"

    def __init__(self, lab: Lab):
        super().__init__(lab)
        self.dir = ""
        self.db: subprocess.Popen | None = None
        self.vswitchd: subprocess.Popen | None = None
        self.bridge = lab.name("br")
        # ovs-vswitchd's namespace. Its devices -- the bridge's own port, and the userspace
        # datapath's, "ovs-netdev" whatever the instance -- are persistent TAPs, which its exit
        # without --cleanup (a SIGKILL) leaves; and an Open vSwitch of the machine's own with a
        # userspace bridge holds an "ovs-netdev" already. In here they never meet, and go with it.
        self.ns: str | None = None

    @classmethod
    def available(cls) -> bool:
        return all(shutil.which(b) for b in ("ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovsdb-tool")) \
            and os.path.exists(cls.SCHEMA)

    PACKAGE = "openvswitch-switch"
    # What the package's postinst enables and starts: the machine's own Open vSwitch (its
    # ovsdb-server and ovs-vswitchd come with openvswitch-switch.service).
    SERVICES = ("openvswitch-switch.service", "ovs-record-hostname.service")

    @staticmethod
    def install() -> str:
        """apt-get the package (no recommends), its services neither started nor left enabled
        (bench/services.py); returns a one-line outcome."""
        if Ovs.available():
            return "already installed"
        ours = not services.package_installed(Ovs.PACKAGE)   # else the machine's: its services are not ours
        policy = sh("apt-cache", "policy", Ovs.PACKAGE, check=False).stdout
        if "Candidate: (none)" in policy or "Candidate:" not in policy:
            sh("apt-get", "update", "-qq", check=False, timeout=600)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        with services.held(Ovs.SERVICES if ours else ()):
            r = sh("apt-get", "install", "-y", "--no-install-recommends", Ovs.PACKAGE,
                   check=False, timeout=900, env=env)
        outcome = "installed" if r.returncode == 0 and Ovs.available() else \
            f"install failed: {r.stderr.strip()[-300:]}"
        if ours and services.package_installed(Ovs.PACKAGE):
            services.leave_disabled(Ovs.SERVICES)
            outcome += f"; its services ({', '.join(Ovs.SERVICES)}) left disabled and not running: the bench " \
                "runs an Open vSwitch of its own (systemctl enable --now openvswitch-switch runs the machine's)"
        return outcome

    def env(self) -> dict:
        d = self.dir
        return dict(os.environ, OVS_RUNDIR=d, OVS_DBDIR=d, OVS_LOGDIR=d, OVS_SYSCONFDIR=d)

    def vsctl(self, *argv, **kw):
        return sh("ovs-vsctl", f"--db=unix:{self.dir}/db.sock", "--timeout=30", *argv, env=self.env(), **kw)

    def appctl(self, *argv, **kw):
        return sh("ovs-appctl", "-t", f"{self.dir}/ovs-vswitchd.ctl", *argv, env=self.env(), **kw)

    def setup(self, hosts: list[Host], fdb_size: int = DEFAULT_FDB_SIZE) -> None:
        self.hosts = hosts
        self.dir = os.path.join(self.lab.dir, "ovs")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        d = self.dir
        self.ns = self.lab.netns("ovs")     # the bench's isolation, not Open vSwitch's start: before t0
        t0 = time.monotonic()
        sh("ovsdb-tool", "create", f"{d}/conf.db", self.SCHEMA, env=self.env())
        self.db = self.lab.popen(["ovsdb-server", f"{d}/conf.db", f"--remote=punix:{d}/db.sock",
                                  f"--unixctl={d}/ovsdb-server.ctl", f"--log-file={d}/ovsdb-server.log",
                                  f"--pidfile={d}/ovsdb-server.pid"],
                                 env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(lambda: os.path.exists(f"{d}/db.sock"), 10):
            raise RuntimeError("ovsdb-server did not start")
        self.vsctl("--no-wait", "init")
        self.vswitchd = self.lab.popen(["ip", "netns", "exec", self.ns,
                                        "ovs-vswitchd", f"unix:{d}/db.sock", f"--unixctl={d}/ovs-vswitchd.ctl",
                                        f"--log-file={d}/ovs-vswitchd.log", f"--pidfile={d}/ovs-vswitchd.pid"],
                                       env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(lambda: os.path.exists(f"{d}/ovs-vswitchd.ctl"), 10):
            raise RuntimeError("ovs-vswitchd did not start")
        self.vsctl("add-br", self.bridge, "--", "set", "bridge", self.bridge, "datapath_type=netdev",
                   f"other_config:mac-table-size={fdb_size}")
        for h in hosts:
            port = self.lab.name(f"o{h.index}")
            self.vsctl("add-port", self.bridge, port, "--", "set", "interface", port, "type=internal")
            _plug_tap(port, h, self.ns)
        self.setup_seconds = time.monotonic() - t0

    def teardown(self) -> None:
        if self.vswitchd is not None:
            self.vsctl("del-br", self.bridge, check=False)
            self.appctl("exit", "--cleanup", check=False)
            self.lab.reap(self.vswitchd, timeout=10)
            self.vswitchd = None
        if self.db is not None:
            self.lab.reap(self.db, timeout=10)
            self.db = None
        # Whatever TAP is left goes with its namespace: the ports in the hosts', the rest in this one.
        if self.ns is not None:
            self.lab.del_netns(self.ns)
            self.ns = None

    def fdb_count(self) -> int:
        out = self.appctl("fdb/stats-show", self.bridge).stdout
        m = re.search(r"Current/maximum MAC entries in the table: (\d+)/", out)
        return int(m.group(1)) if m else 0

    def pids(self) -> list[int]:
        return [p.pid for p in (self.vswitchd, self.db) if p is not None]

    def forwarding_pids(self) -> list[int]:
        return [self.vswitchd.pid] if self.vswitchd is not None else []


class Bare(System):
    name = "bare"
    kind = "bare"
    tools = ("cc",)

    SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bare.c")

    def __init__(self, lab: Lab, busy_poll_us: int | None = None):
        super().__init__(lab)
        # µs it keeps looking after frames before it sleeps: tapswitch's default unless named
        self.busy_poll_us = BUSY_POLL_US if busy_poll_us is None else busy_poll_us
        if busy_poll_us is not None:
            self.name = f"bare-busypoll{busy_poll_us}"
        self.label = ("bare TAP↔TAP forwarder (bench/bare.c: vnet_hdr + TSO, read/write, "
                      f"busy polling {self.busy_poll_us} µs, no switching)")
        self.proc: subprocess.Popen | None = None

    def setup(self, hosts: list[Host], fdb_size: int = DEFAULT_FDB_SIZE) -> None:
        """Two hosts only: it forwards A to B and B to A. fdb_size is ignored (no table)."""
        if len(hosts) != 2:
            raise ValueError(f"bare forwards between two hosts, not {len(hosts)}")
        self.hosts = hosts
        exe = os.path.join(self.lab.dir, "bare")
        if not os.path.exists(exe):
            sh("cc", "-O2", "-Wall", "-o", exe, self.SRC)
        t0 = time.monotonic()
        names = [self.lab.name(f"b{h.index}") for h in hosts]
        self.proc = self.lab.popen([exe, *names, str(self.busy_poll_us)], stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"bare did not start (exit code {self.proc.wait()})")
        for h, dev in zip(hosts, names):
            _plug_tap(dev, h)
        self.setup_seconds = time.monotonic() - t0

    def teardown(self) -> None:
        """Its TAP devices go when it exits, wherever they are."""
        if self.proc is not None:
            self.lab.reap(self.proc)
            self.proc.stdout.close()
            self.proc = None

    def pids(self) -> list[int]:
        return self.forwarding_pids()

    def forwarding_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []


NAMES = ("tapswitch (queues 1 and 2), tapswitch-qN (N queues) then, in this order and each optional, "
         "-uring | -uring-burst | -readwrite, -cpuK | -spread, -qlenL, -busypollU (e.g. tapswitch-q1-uring-cpu1), "
         "bridge, ovs, bare, bare-busypollU")
_TAPSWITCH = re.compile(r"tapswitch-q(\d+)(?:-(uring-burst|uring|readwrite))?(?:-cpu(\d+)|-(spread))?"
                        r"(?:-qlen(\d+))?(?:-busypoll(\d+))?")
_BARE = re.compile(r"bare(?:-busypoll(\d+))?")


def known(name: str) -> bool:
    """`name` is one of NAMES."""
    return name in ("tapswitch", "bridge", "ovs") or bool(_TAPSWITCH.fullmatch(name) or _BARE.fullmatch(name))


def bounds(key: str, model=Switch) -> tuple[int, int]:
    """The least and the most switch.KEY (or KEY of another config model) may be, as tapswitch's config checks it."""
    meta = model.model_fields[key].metadata
    return next(m.ge for m in meta if hasattr(m, "ge")), next(m.le for m in meta if hasattr(m, "le"))


FDB_MAX = bounds("size", MacTable)[1]      # tapswitch's largest switch.mac_table.size


def out_of_range(name: str) -> str | None:
    """Why tapswitch variant `name` asks for queues, a switch.queue_len or a switch.busy_poll_us that
    tapswitch's config refuses, else None: said before the run, not as a failure of each of its cases."""
    m = _TAPSWITCH.fullmatch(name)
    for group, key in ((1, "queues"), (5, "queue_len"), (6, "busy_poll_us")):
        if m and m.group(group) is not None:
            lo, hi = bounds(key)
            if not lo <= int(m.group(group)) <= hi:
                return f"{name}: switch.{key} {int(m.group(group))}: must be from {lo} to {hi}"
    return None


def pinned_cpu(name: str) -> int | None:
    """The CPU a tapswitch-qN-cpuK name pins its workers to, else None."""
    m = _TAPSWITCH.fullmatch(name)
    return int(m.group(3)) if m and m.group(3) else None


def system_class(name: str) -> type[System]:
    """The class of system `name`, one of NAMES."""
    if name == "tapswitch" or _TAPSWITCH.fullmatch(name):
        return Tapswitch
    if _BARE.fullmatch(name):
        return Bare
    return {"bridge": Bridge, "ovs": Ovs}[name]


def make(names: list[str], lab: Lab) -> list[System]:
    """Systems by name: tapswitch (both queue counts), tapswitch-q1, tapswitch-q2, bridge, ovs, bare;
    a tapswitch-qN name may end in -uring, -uring-burst or -readwrite (the workers' I/O backend), -cpuK
    (workers pinned to CPU K) or -spread (worker q on CPU q), -qlenL (switch.queue_len L) and
    -busypollU (switch.busy_poll_us U), e.g. tapswitch-q1-uring-cpu1 or tapswitch-q1-busypoll0; bare may
    end in -busypollU too (plain bare busy-polls as long as tapswitch's default)."""
    out: list[System] = []
    for n in names:
        if n == "tapswitch":
            out += [Tapswitch(lab, 1), Tapswitch(lab, 2)]
        elif m := _TAPSWITCH.fullmatch(n):
            cpu = int(m.group(3)) if m.group(3) else -1 if m.group(4) else None
            out.append(Tapswitch(lab, int(m.group(1)), m.group(2) or "", cpu,
                                 int(m.group(5)) if m.group(5) else None,
                                 int(m.group(6)) if m.group(6) else None))
        elif n == "bridge":
            out.append(Bridge(lab))
        elif n == "ovs":
            out.append(Ovs(lab))
        elif m := _BARE.fullmatch(n):
            out.append(Bare(lab, int(m.group(1)) if m.group(1) else None))
        else:
            raise SystemExit(f"bench: unknown system {n!r} (one of: {NAMES})")
    return out

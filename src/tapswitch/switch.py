"""The switch: starts ports, workers, control socket and metrics; runs the control loop; stops cleanly.

Start order: shared memory, ports (TAP, namespace, addresses), link
monitor, workers, control socket, metrics, then READY=1. Stop undoes it in
reverse. A failed start logs switch.start_failed with its reason and
undoes the same way, so it leaves no device, namespace or socket behind.

The control loop waits on: signals (SIGTERM/SIGINT stop, SIGHUP reload),
worker processes (restart the one that exited; a restarted one's new process
says it is set up, and is let go), link events (port up/down; a VXLAN port's
underlay and its local address too), and a one-second tick for MAC table
aging and the workers' watchdog (kill the one that hung; its exit restarts
it). It never waits for a worker's start but at the switch's start and in a
reload.
"""

import contextlib
import errno
import json
import math
import os
import resource
import selectors
import signal
import socket
import threading
import time
from concurrent import futures

import structlog
from pyroute2.netlink.exceptions import NetlinkError

from tapswitch import config as config_mod
from tapswitch import reload as reload_mod
from tapswitch import fastpath, linkmon, ports, remote, rtnl, settings, tap, tc, vxlan
from tapswitch.control import (RELOAD_WAIT, ControlError, ControlServer, Listing, mac_arg, stop_serving,
                               unicast_mac_arg, vlan_arg)
from tapswitch.log import setup as setup_logging
from tapswitch.netns import Namespaces, NetnsError, name_at
from tapswitch.runstate import RunState
from tapswitch.saidonce import SaidOnce
from tapswitch.supervisor import Supervisor, Worker, WorkerError
from tapswitch.tap import TapError

log = structlog.get_logger("tapswitch.switch")

TICK = 1.0                 # seconds between the control loop's maintenance steps (MAC aging, ports, tunnels)
ATTACH_WAIT_MAX = 30.0     # seconds between a remote port's tries to attach IFACE at most, when each changes it (_attach_wait)
AGING_STEPS = 4            # a full aging pass takes this many ticks
FULL_LOG_INTERVAL = 60.0   # seconds between fdb.full warnings
CAP_KILL, CAP_NET_ADMIN, CAP_SYS_ADMIN = 5, 12, 21


class StartError(Exception):
    """The switch could not start; the message is one line for the user."""


READERS_WAIT = 10.0         # seconds a stop waits for control requests and scrapes still reading the shared memory

STARTUP_ERRORS = (StartError, TapError, ports.PortError, NetnsError, WorkerError, ControlError, OSError)
LOOK_ERRORS = (OSError, NetlinkError)     # a look at a device that could not be made (Switch._link)


def effective_caps() -> int:
    """This process's effective capabilities, a bit for each (CAP_NET_ADMIN...)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))


def port_refused(port, caps: int) -> str | None:
    """Why a process with capabilities `caps` cannot make `port` (config.Port), or None: said
    before anything is made, by the start (preflight) and by a reload that adds the port."""
    # A container given NET_ADMIN alone (README, "Docker") failed at its first such port with
    # "bind /run/netns: Operation not permitted", or "[Errno 1] setns ...", naming no capability.
    if port.netns is not None and not caps & (1 << CAP_SYS_ADMIN):
        return (f"port {port.name}: a port in a network namespace (netns) needs CAP_SYS_ADMIN, "
                f"to enter it and to make a named one")
    return None


def preflight(user: str | int | None, ports=()) -> None:
    """Fail early, with a reason, on what would fail later with a worse one."""
    if not os.path.exists("/dev/net/tun"):
        raise StartError("/dev/net/tun is missing: load the tun module (modprobe tun)")
    caps = effective_caps()
    if not caps & (1 << CAP_NET_ADMIN):
        raise StartError("needs CAP_NET_ADMIN to create TAP devices (run it as root)")
    refused = [why for port in ports if (why := port_refused(port, caps)) is not None]
    if refused:
        raise StartError(refused[0])
    ids = config_mod.worker_ids(user, os.geteuid())
    if ids is not None and ids[0] != os.geteuid() and not caps & (1 << CAP_KILL):
        # Else a stop could not signal them: they would outlive it, holding every port.
        raise StartError(f"the workers run as uid {ids[0]} (switch.user), another user: stopping them "
                         f"needs CAP_KILL, which this process lacks")


def _reason(e: Exception) -> str:
    """A failed start's one line for the user."""
    if isinstance(e, OSError) and e.errno == errno.EMFILE:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return (f"out of file descriptors (the limit is {limit}): a port takes one for each queue, in the switch "
                f"and again in the queue's worker; raise the limit (ulimit -n, or LimitNOFILE= in the service)")
    return str(e)


def _raise_a_bug(made: list, also: list = ()) -> None:
    """What a reload's make of ports gave (each a Port or what stopped it): if one raised what no
    start error is (a bug), every port made (and those in `also`) is closed and that is raised."""
    bugs = [e for e in made if not isinstance(e, (ports.Port, *STARTUP_ERRORS))]
    if bugs:
        for port in [*also, *made]:
            if isinstance(port, ports.Port):
                port.close()
        raise bugs[0]


def _port_reason(name: str, e: Exception) -> str:
    """Why a reload could not make port `name`, from what stopped it: its own line, which names
    the port, or for an OSError that came through (out of descriptors: a socket, an ioctl) one
    that does, as _reason says it: it was "[Errno 24] Too many open files", of no port."""
    if not isinstance(e, OSError):
        return str(e)
    return f"port {name}: {_reason(e) if e.errno == errno.EMFILE else e.strerror or e}"


def _ignore_stop_signals() -> None:
    """While the switch undoes what it made: a second signal must not cut that short."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def _undo_step(step: str, **fields):
    """A step of undoing the switch, which must not cut the rest short: what it raises is logged
    (it may have left something: a worker, a device, a file) and the undo goes on."""
    try:
        yield
    except Exception as e:
        log.error("switch.undo_failed", step=step, error=str(e) or type(e).__name__, **fields)


_notify_failure = SaidOnce()     # (socket, error) of notify()'s failure, until a message gets through


def notify(state: str) -> None:
    """Tell systemd (or whoever set $NOTIFY_SOCKET) about our state. A failure is logged once
    while it lasts (each reload and the stop would say it again), and again once it changes."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        # The socket's making too (EMFILE): a notify that raises cut a reload short, and the
        # stop's undo at its first step, leaving everything.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        sock, error = os.environ["NOTIFY_SOCKET"], str(e)
        if _notify_failure.news((sock, error)):
            log.warning("notify.failed", socket=sock, error=error)
        return
    _notify_failure.over()


class SharedReaders:
    """The threads other than the main one that read the shared memory: control requests
    and scrapes. The stop unmaps it, and a thread still inside a read then (a dump of a
    big MAC table in C, without the GIL) would touch unmapped memory and kill the control
    process before it has undone anything: close() lets no more in and waits for those
    inside to leave."""

    def __init__(self):
        self._cond = threading.Condition()
        self._inside = 0
        self._closed = False

    @contextlib.contextmanager
    def reading(self):
        with self._cond:
            if self._closed:
                raise ControlError("the switch is stopping")
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """False if some were still inside after `timeout` seconds."""
        with self._cond:
            self._closed = True
            return self._cond.wait_for(lambda: self._inside == 0, timeout)


class Switch:
    """One running switch: its config, ports, workers and services."""

    def __init__(self, cfg):
        self.cfg = cfg
        # The file every reload re-reads, as a path from / (`tapswitch reload -c FILE` of another
        # file is told so); None for the demo.
        self.config_file = os.path.abspath(cfg.source) if cfg.source not in ("<demo>", "<string>") else None
        self.name = cfg.switch.name
        self.queues = cfg.switch.queues
        self.ports: list[ports.Port] = []
        self.state = RunState()      # what a start after a crash of this run must heal (runstate.py)
        self.inherited_remotes: set[str] = set()    # a dead run's, named again: healed as attached
        self.unhealed = RunState()   # what the dead run left that the start has not healed yet
        self.namespaces = Namespaces(self.state)
        self.shared: fastpath.Shared | None = None
        self.supervisor: Supervisor | None = None
        self.monitor: linkmon.LinkMonitor | None = None
        self.wake: tuple[socket.socket, socket.socket] | None = None    # run() closes it
        self.control: ControlServer | None = None
        self.metrics_server = None
        self.selector = selectors.DefaultSelector()
        self.watched: dict[int, object] = {}    # queue -> what the selector watches of its worker (_watch)
        self.reloads = {"success": 0, "failure": 0}
        # Ports of the config the last reload could not make: name -> (its config.Port, why). They
        # are down, for metrics and `tapswitch ports`; a new dict each reload (other threads read it).
        self.unmade: dict[str, tuple[object, str]] = {}
        self.stopping = False
        self.undoing = False        # _undo has begun (a stop, or a failed start's)
        self.reload_requested = False
        self.reload_waiters: list[futures.Future] = []    # `tapswitch reload`s waiting for the next reload
        self.aging_cursor = 0
        self.tick_at = 0.0           # monotonic: when the control loop's next tick is due (run)
        # (mac, vlan) -> port slot: the static entries the MAC table holds, the config's and `fdb add`'s.
        self.static_macs: dict[tuple[str, int], int] = {}
        self.cli_macs: dict[tuple[str, int], str] = {}       # (mac, vlan) -> port: from `fdb add`
        # Both are changed by `fdb add`/`del`, in the control socket's threads, and by a reload.
        self.static_lock = threading.Lock()
        self.shared_readers = SharedReaders()       # control requests and scrapes reading the shared memory
        self.slots_used: set[int] = set()     # port table slots used since start
        # Port name -> the MAC its TAP had when a reload took the port away (made again, or out of
        # the config): the port made again without `mac:` gets it back (ports.macs_kept), however
        # many reloads later. This run's only: a new start gives random ones. The latest last
        # (ports.macs_kept: of two that had the same, the latest gets it).
        self.macs_had: dict[str, str] = {}
        self.evicted_seen = 0
        # Port slot -> fdb_epoch when its link going down flushed it: flushed again two epochs on
        # (maintain_fdb), once every burst that saw it up is over.
        self.down_flushes: dict[int, int] = {}
        # A worker was reaped that may have died inside a MAC table write: the ports' entry counts
        # are counted again at the next tick (maintain_fdb), and after, until that is done.
        self.fdb_recount_due = False
        self.fdb_recount_held: int | None = None    # fdb_epoch when a worker inside a burst held it back
        self.tunnel_waits = SaidOnce()           # VXLAN port -> why its gone device cannot be made yet
        # VXLAN port -> the MTU its tunnel carried when the segment's MTUs were set (its making):
        # a reload that keeps its device keeps that (reload.kept_tunnels), whatever its underlay's now.
        self.carried: dict[str, int] = {}
        self.unchecked = SaidOnce()              # port -> why maintain_ports could not tell where its TAP is
        self.unlooked: set[str] = set()          # the ports a look at whose devices failed since the last tick
        self.unlooked_said = SaidOnce()          # port -> that failure, until a look at its devices succeeds
        # Why rx_missed could not read the kernel's counts, until it can: it runs in the control
        # socket's and the scrapes' threads (SaidOnce is thread-safe).
        self.unread = SaidOnce()
        self.full_logged_at = -math.inf

    # Starting.

    def start(self, reload_asked=lambda: False, stop_asked=lambda: False) -> None:
        """Bring everything up, or undo what was done and raise StartError. `reload_asked()`:
        whether a SIGHUP came after the config was read, before start() took SIGHUP over (the
        command line holds it from its start: cli.HeldReload). `stop_asked()`: whether a SIGTERM
        or SIGINT came before start() took them over (cli.HeldStop): KeyboardInterrupt then,
        nothing made, as a stop while starting raises it once what was made is undone."""
        # A stop signal during start must still clean up: raise where start can catch it.
        signal.signal(signal.SIGTERM, self._on_stop_while_starting)
        signal.signal(signal.SIGINT, self._on_stop_while_starting)
        if stop_asked():        # checked once ours take the signals: one that comes after is theirs
            self.stopping = True
            log.info("switch.stopped", switch=self.name, reason="asked to stop before it started")
            raise KeyboardInterrupt
        try:
            # Inside the try: a stop signal from here on is a stop while starting, said (stop()).
            # A reload asked for meanwhile comes once started (the config may have changed since it was read).
            signal.signal(signal.SIGHUP, self._on_reload)
            if reload_asked():
                self.reload_requested = True
            ports.quiet_event_loops()       # out of descriptors, a pyroute2 call says so once, not with tracebacks
            try:
                preflight(self.cfg.switch.user, self.cfg.ports)
                self._start()
                self.inherited_remotes = set()      # every port is up: the dead run's remotes are ours now
                self.wake = socket.socketpair()     # run()'s: the signals' wake-up (made here, so its failure is the start's)
                # From here a stop signal only sets a flag, as SIGHUP does; run() acts on it.
                signal.signal(signal.SIGTERM, self._on_stop)
                signal.signal(signal.SIGINT, self._on_stop)
                if self.stopping:       # asked while starting, its interrupt dropped (see _on_stop_while_starting)
                    raise KeyboardInterrupt
            except STARTUP_ERRORS as e:
                _ignore_stop_signals()      # from here the failure is undone, whatever signal comes
                reason = _reason(e)
                trace = {"traceback": e.traceback} if isinstance(e, WorkerError) and e.traceback else {}
                log.error("switch.start_failed", switch=self.name, error=reason, **trace)
                self._undo()        # raises nothing: a step that fails is logged, the rest still goes
                raise StartError(reason) from None
        except StartError:
            raise
        except BaseException:
            # A stop signal while starting: stopped, as asked. Also one that came as a failed start
            # began to undo, before its handler could ignore it (that handler is cut short).
            self.stop()
            raise
        log.info("switch.ready", switch=self.name, ports=len(self.ports), queues=self.queues)
        notify("READY=1")

    def _start(self) -> None:
        sw = self.cfg.switch
        self.shared = fastpath.Shared.create(sw.mac_table.size, self.queues)
        self._start_services()
        # As made: VXLAN MTUs, and a VXLAN port's remote, its device (which _heal must know).
        self.carried = ports.carried_mtus(self.cfg.ports)
        self.cfg = self.cfg.model_copy(update={"ports": ports.plan(self.cfg.ports, self.cfg.mirrors, self.carried)})
        # The control socket is ours now, so no live switch shares this state: heal a dead run's leftovers.
        self.state.path = sw.control.socket + ".state"
        self._heal(RunState.load(self.state.path))
        self.monitor = linkmon.LinkMonitor(addresses=True, filters=True)     # before the ports: no event is missed
        self.selector.register(self.monitor, selectors.EVENT_READ, ("link", self.monitor))
        # The workers' interpreters start while the ports are made; they get the ports at start().
        self.supervisor = Supervisor(self.shared.fd, self.queues,
                                     config_mod.worker_ids(self.cfg.switch.user, os.geteuid()),
                                     heartbeat=self.shared.heartbeat,
                                     hung_after=self.cfg.switch.watchdog_ms / 1000,
                                     release_reader=self._worker_reaped,
                                     version=self.shared.ptr.version)
        self.supervisor.spawn()
        made = self._add_ports(list(enumerate(self.cfg.ports)))
        self.ports = [p for p in made if isinstance(p, ports.Port)]     # stop() closes them
        failed = [e for e in made if not isinstance(e, ports.Port)]
        if failed:
            raise failed[0]
        settings.apply(self.shared, self.cfg, self.ports)   # VLANs, ACLs, mirrors...: before any worker
        self.install_static_macs()
        # The events of setting the ports up are history. The TAPs were just raised; a remote
        # may have no carrier: ask about those.
        self.monitor.read()
        self.resync_links(taps=False)
        self.supervisor.start({p.index: p.fds for p in self.ports})
        self._watch_workers(True)

    def _heal(self, dead: RunState) -> None:
        """What a run that did not stop left: its remote interfaces that no port names now get
        their state back (those named are healed as they are attached), its namespaces are
        taken over or removed. Then the state file lists this run's."""
        self.unhealed = dead         # each thing healed leaves it; a start that fails keeps the rest listed
        self.state.remotes = sorted({p.remote for p in self.cfg.ports if p.remote})
        self.state.originals, self.inherited_remotes = {}, set()
        if dead.remotes or dead.originals:
            with ports.iproute(None) as ipr:
                self._heal_remotes(ipr, dead)
        self.namespaces.recover(dead, {p.netns for p in self.cfg.ports if p.netns_kind == "name"})

    def _heal_remotes(self, ipr, dead: RunState) -> None:
        """_heal's remote interfaces: those a port names again are left to attach(), the others healed."""
        # A name a port gives again is another device now if the dead run's was renamed since
        # (nic0 renamed nic9, a new nic0 made): the port takes the new one; nic9 is healed here.
        again = {r for r in self.state.remotes if not remote.renamed_since(ipr, r, dead.originals.get(r))}
        # The original state of those named again, as the dead run wrote it down: attach() takes it.
        self.state.originals = {r: o for r, o in dead.originals.items() if r in again}
        self.inherited_remotes = {r for r in dead.remotes if r in again}
        dead.remotes = [r for r in dead.remotes if r not in again]
        for name in list(dead.remotes):
            try:
                remote.heal(ipr, name, dead.originals.get(name))
            except (OSError, NetlinkError) as e:    # left listed, for the next start
                log.error("remote.heal_failed", remote=name, error=str(e))
                continue
            dead.remotes.remove(name)
            dead.originals.pop(name, None)

    def _add_ports(self, wanted: list, config=None, also_running=()) -> list:
        """Make the ports (index, config) in `wanted`: each one's Port, or the exception that
        stopped it. Their settings, MTU and state are written by settings.apply. `config`: the
        config they are of (a reload's new one), by default the switch's. `also_running`: ports a
        reload made already, not yet in self.ports (_put_back)."""
        running = self.ports + list(also_running)
        # Their remotes are listed before they are attached: a crash meanwhile leaves none unlisted.
        # So stay those not given back (a detach that failed keeps the original it did not restore).
        # If the file cannot be written, each port that changes a remote writes it first, or fails.
        self.state.remotes = sorted({p.cfg.remote for p in running if p.cfg.remote}
                                    | {cfg.remote for _index, cfg in wanted if cfg.remote} | set(self.state.originals))
        self.state.try_save()
        # A port may name a namespace that another makes by its path, /run/netns/NAME: netns.Namespaces._name.
        self.namespaces.named = {cfg.netns for _index, cfg in wanted if cfg.netns_kind == "name"}
        # Static MACs as the config makes them, and `fdb add`'s (each kept on its port made again).
        statics = ((config or self.cfg).static_mac_entries()
                   + [(mac, name, vlan) for (mac, vlan), name in self.cli_macs.items()])
        kept = ports.macs_kept([cfg for _index, cfg in wanted], self.macs_had, {p.mac for p in running}, statics)
        made = ports.create_all(wanted, self.queues, self.cfg.switch.queue_len, self.namespaces, kept)
        self.slots_used.update(p.index for p in made if isinstance(p, ports.Port))
        return made

    def _watch_workers(self, on: bool) -> None:
        for w in self.supervisor.workers:
            if on:
                self._watch(w)
            else:
                self._unwatch(w)

    def _watch(self, w: Worker) -> None:
        """Watch w's process for its exit, or its restart's process for its word (ready); a
        worker with neither waits for maintain_workers. Before the supervisor changes w's
        processes, _unwatch: it closes what the selector watched."""
        if w.pidfd >= 0:
            self.watched[w.queue] = w.pidfd
            self.selector.register(w.pidfd, selectors.EVENT_READ, ("worker", w))
        elif w.starting is not None:
            self.watched[w.queue] = w.starting.sock
            self.selector.register(w.starting.sock, selectors.EVENT_READ, ("starting", w))

    def _unwatch(self, w: Worker) -> None:
        watched = self.watched.pop(w.queue, None)
        if watched is not None:
            self.selector.unregister(watched)

    def _start_services(self) -> None:
        """Control socket and metrics first: a clash there is found before any device is made."""
        sw = self.cfg.switch
        try:
            self.control = ControlServer(sw.control.socket, {
                "ports": self._reading(lambda req: self.ports_info()),
                "fdb": self._reading(self.fdb_info),     # the table is copied out before it is sent
                "fdb_flush": self._reading(lambda req: {"flushed": self.fdb_flush(req.get("port"))}),
                "reload": lambda req: self.request_reload(),
                "fdb_add": self._reading(self.fdb_add),
                "fdb_del": self._reading(self.fdb_del),
            })
        except OSError as e:
            raise StartError(f"control: cannot listen on {sw.control.socket}: {e.strerror or e}") from None
        self.control.start()
        address = sw.metrics.address()
        if address is not None:
            from tapswitch import metrics    # only the control process serves metrics
            try:
                self.metrics_server = metrics.serve(self, *address)
            except OSError as e:
                raise StartError(f"metrics: cannot listen on {sw.metrics.listen}: {e.strerror}") from None
            log.info("metrics.listening", address=sw.metrics.listen)

    def _reading(self, handler):
        """A control request's handler, run inside self.shared_readers; refused once the switch
        stops. A request that came just before, its thread run once the stop had begun, was
        served from a switch half undone: `tapswitch fdb` said the table was empty (exit 0), the
        ports closed meanwhile. Lost race, stated: one served as the stop begins sees what it
        read, as it was when it read it."""
        def read(req):
            with self.shared_readers.reading():
                self._refuse_if_stopping()
                return handler(req)
        return read

    def _refuse_if_stopping(self) -> None:
        if self.stopping or self.undoing:
            raise ControlError("the switch is stopping")

    # The control loop.

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        wake_r, wake_w = self.wake
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        self.selector.register(wake_r, selectors.EVENT_READ, ("wake", wake_r))
        try:
            while not self.stopping:
                for key, _ in self.selector.select(self._wait()):
                    self._dispatch(*key.data)
                if self.reload_requested:
                    self.reload_requested = False
                    # Those who asked before this reload reads the config; one who asks meanwhile
                    # may have written another since: the next reload is theirs.
                    waiters, self.reload_waiters = self.reload_waiters, []
                    outcome = self.reload()
                    for waiter in waiters:
                        waiter.set_result(outcome)
                self.maintain_workers()
                now = time.monotonic()
                if now >= self.tick_at:
                    # Once a tick, however many events woke the loop: an aging step and the
                    # shared remotes' table dump each pass cost a sweep of the MAC table.
                    self.tick_at = now + TICK
                    self.maintain_ports()
                    self.maintain_looks()
                    self.maintain_tunnels()
                    self.maintain_remotes()
                    self.maintain_fdb()
                    self.feed_shared_remotes()
        finally:
            signal.set_wakeup_fd(-1)
            self.selector.unregister(wake_r)
            wake_r.close()
            wake_w.close()

    def _wait(self) -> float:
        """Seconds the control loop may wait for events: until the next tick, or less if a worker
        held back (or whose start failed) is due sooner, or a restart's process is late sooner."""
        due = self.supervisor.next_try()
        tick = max(0.0, self.tick_at - time.monotonic())
        return tick if due is None else min(tick, due)

    def _on_stop(self, signum, frame) -> None:
        self.stopping = True

    def _on_stop_while_starting(self, signum, frame) -> None:
        """Stop signal while starting: raise, so that start() undoes what it made. A handler runs
        wherever the main thread is, also inside a finalizer (a weakref callback, a __del__),
        whose exception Python prints and drops: the flag keeps the stop asked for all the same."""
        self.stopping = True
        raise KeyboardInterrupt

    def _on_reload(self, signum, frame) -> None:
        self.reload_requested = True

    def request_reload(self) -> dict:
        """`tapswitch reload`: the control loop reloads; the client waits for the outcome of a
        reload that reads the config after it asked (not of one under way). Refused once the
        switch stops: no reload comes then, and the client waited for it until the switch was gone."""
        outcome = futures.Future()
        self.reload_waiters.append(outcome)
        self._refuse_if_stopping()      # once listed: the stop answers those listed before it began (_undo)
        self.reload_requested = True            # also while starting (no control loop yet): once started
        os.kill(os.getpid(), signal.SIGHUP)     # wakes the control loop
        try:
            return {**outcome.result(RELOAD_WAIT), "config": self.config_file}
        except futures.TimeoutError:
            raise ControlError(f"the reload did not finish within {RELOAD_WAIT:g} s; it goes on") from None

    def _dispatch(self, kind: str, obj) -> None:
        if kind == "wake":
            try:
                while obj.recv(512):
                    pass
            except BlockingIOError:
                pass     # drained: the signal handlers have set their flags
        elif kind in ("worker", "starting"):
            if self.stopping:
                return       # the stop signal went to the whole group: stop() reaps it
            self._unwatch(obj)
            if kind == "worker":
                self.supervisor.exited(obj)     # restarted: its new process is watched from here
            else:
                self.supervisor.ready(obj)      # set up and let go, or another try
            self._watch(obj)
        elif kind == "link":
            for event in obj.read():
                if isinstance(event, linkmon.AddressEvent):
                    self.address_changed(event)
                elif isinstance(event, linkmon.FilterEvent):
                    self.filter_changed(event)
                elif isinstance(event, linkmon.ClsactEvent):
                    self.clsact_deleted(event)
                else:
                    self.link_changed(event)
            if obj.overrun:
                obj.overrun = False
                log.warning("link.events_lost", ports=len(self.ports))
                self.resync_links()

    def link_changed(self, event: linkmon.LinkEvent) -> None:
        """A device changed state; if it is a port's TAP or remote, or a VXLAN port's underlay, follow it."""
        for port in self.ports:
            if port.gone:
                continue                 # down until a reload makes it again
            if port.nsid == event.nsid and port.ifindex == event.ifindex:
                # Events come late: those of a TAP's making (down, then up) after its port was
                # marked up, and a removed port's last ones after a port that a reload made in
                # its place (a new namespace may get the old one's id, its TAP the old ifindex).
                # A "down" or a deletion the device is no longer in is past; one that cannot be
                # told (the kernel could not be asked) is no state: the port keeps its own.
                port.tap_up = event.up or (port.tap_up and self._device_up(port, port.nsid, port.ifindex, True))
                if not event.deleted:
                    self.tap_settings_changed(port, event)
            elif port.remote is not None and event.nsid == linkmon.OWN_NSID and (
                    port.remote_ifindex == event.ifindex
                    # A VXLAN port's device deleted while its attach fails (IFACE not attached): the
                    # tunnel kept its ifindex, and maintain_tunnels never made it again.
                    or (event.deleted and port.tunnel is not None and port.tunnel.ifindex == event.ifindex)
                    or (port.remote_ifindex is None and event.ifname == port.cfg.remote and not event.deleted
                        and self._made_for(port, event.ifindex)
                        # IFACE whose attach fails is tried again by the tick (maintain_remotes), not
                        # by its events: an attach that fails after setting its flags gives them
                        # back, two events, each of which tried again at once, and failed so.
                        and not (port.attach_failed.lasts() and port.attach_failed_index == event.ifindex))):
                self.remote_changed(port, event)
            elif (port.tunnel is not None and event.nsid == linkmon.OWN_NSID
                  and port.tunnel.underlies(event.ifindex, event.ifname)):
                self.underlay_changed(port)
            else:
                continue
            self.set_port_up(port, port.links_up)

    @staticmethod
    def _made_for(port: ports.Port, ifindex: int) -> bool:
        """Is the device at `ifindex` one to attach as the port's IFACE? A VXLAN port's is the
        device its tunnel has now: the events of one that a failed remake made and removed come
        late (attached, it was "no such device"), and another's of that name is not the port's."""
        return port.tunnel is None or port.tunnel.ifindex == ifindex

    def address_changed(self, event: linkmon.AddressEvent) -> None:
        """An address came or went in the switch's namespace: if it is a VXLAN port's local, follow it."""
        if event.nsid != linkmon.OWN_NSID or event.address is None:
            return
        for port in self.ports:
            if port.tunnel is not None and not port.gone and event.address == port.tunnel.local:
                self.underlay_changed(port)
                self.set_port_up(port, port.links_up)

    def filter_changed(self, event: linkmon.FilterEvent) -> None:
        """A tc filter came or went in tapswitch's priorities: if it is not a switch's, on a remote
        port's IFACE, the port says so (RemoteAttachment.check_foreign) and leaves it alone. One
        that is no filter (a priority deleted whole, or every filter) on IFACE or the port's TAP
        may have taken the port's rules with it: check_foreign puts them back."""
        if event.ours or event.nsid != linkmon.OWN_NSID:
            return
        for port in self.ports:
            if port.remote is not None and not port.gone and event.ifindex in (port.remote_ifindex, port.ifindex):
                self.check_foreign(port)

    def clsact_deleted(self, event: linkmon.ClsactEvent) -> None:
        """A clsact qdisc was deleted (`tc qdisc del`): if it is a remote port's IFACE's or its
        TAP's, the port's rules went with it, said by no filter event. The port adds it again,
        and its rules (RemoteAttachment.check_foreign), which looks at what the kernel has now:
        the event of the switch's own deletion (a detach) finds the port detached, or attached
        again, with a clsact of its own."""
        if event.nsid != linkmon.OWN_NSID:
            return
        for port in self.ports:
            if port.remote is not None and not port.gone and event.ifindex in (port.remote_ifindex, port.ifindex):
                self.check_foreign(port)

    @staticmethod
    def check_foreign(port: ports.Port) -> None:
        try:
            port.remote.check_foreign()       # and installs the rules that waited beside one that went
        except (NetlinkError, OSError, tc.TcError) as e:      # IFACE gone meanwhile: its link event says so
            log.error("remote.check_failed", port=port.name, remote=port.cfg.remote, error=str(e))

    def underlay_changed(self, port: ports.Port) -> None:
        """A VXLAN port's underlay device changed state, or its local address came or went. The
        kernel keeps the VXLAN device up with carrier meanwhile (and takes every frame, to send
        none), so the port follows the underlay itself. What the kernel says now decides: events
        come late. A rename of the underlay is noted, and changes nothing: the kernel's device
        is bound to its ifindex (vxlan.Tunnel.bound)."""
        t = port.tunnel
        was = t.underlay_index, t.underlay_name
        try:
            fault = t.underlay_fault()
        except (OSError, NetlinkError) as e:
            log.error("vxlan.underlay_unknown", port=port.name, error=str(e))     # the next event asks again
            return
        if was[0] == t.underlay_index and None not in (was[1], t.underlay_name) and was[1] != t.underlay_name:
            log.info("vxlan.underlay_renamed", port=port.name, dev=t.name, underlay=t.underlay_name, was=was[1])
        if fault is not None and fault != port.underlay_fault:      # down, or down for another reason now
            log.warning("vxlan.underlay_down", port=port.name, dev=port.tunnel.name, reason=fault)
        elif fault is None and not port.underlay_up:
            log.info("vxlan.underlay_up", port=port.name, dev=port.tunnel.name)
        port.underlay_fault = fault
        # The underlay's MTU set lower since the tunnel was made (the port's MTU stays as the start
        # set it): the fast path takes no frame longer than the tunnel carries whole now, and counts
        # it as a tx_error, rather than let the underlay fragment it (IPv4) or lose it (IPv6).
        carries = t.carries()
        if carries is not None and carries != t.frame_max:
            short = carries < port.effective_mtu + vxlan.ETH_HLEN
            (log.warning if short else log.info)(
                "vxlan.underlay_mtu_changed", port=port.name, dev=t.name, underlay=t.underlay_name,
                mtu=t.underlay_mtu, frame_max=carries, was=t.frame_max, port_mtu=port.effective_mtu)
            t.frame_max = carries
            if port in self.ports:        # else not published yet: the reload adding it does (settings.apply)
                self.publish_port(port)

    def tap_settings_changed(self, port: ports.Port, event: linkmon.LinkEvent) -> None:
        """The port's host changed its TAP's MTU or MAC: follow it, as the Linux bridge follows
        its ports' devices (a larger MTU lets larger frames through), with a warning, since the
        config says otherwise (remaking the port, by a reload that changes it, restores the
        config's MTU, and its `mac` if it gives one: else the port keeps its host's MAC, which
        its peers know, ports.macs_kept). What the device has now decides: the events of a
        TAP's own making may come late."""
        if (event.mtu in (None, port.effective_mtu)) and (event.mac in (None, port.mac)):
            return
        try:
            link = self._link(port.nsid, port.ifindex)
        except LOOK_ERRORS as e:
            self._look_failed(port, e)      # the tick looks again (resync_tap)
            return
        if link is not None:         # else gone: its DELLINK or maintain_ports() says so
            self._follow_tap(port, link)

    def _follow_tap(self, port: ports.Port, link) -> None:
        """The TAP's MTU and MAC as the kernel has them (`link`), followed (tap_settings_changed)."""
        mtu, mac = link.get_attr("IFLA_MTU"), link.get_attr("IFLA_ADDRESS")
        if mtu and mtu != port.effective_mtu:
            log.warning("port.mtu_changed", port=port.name, mtu=mtu, was=port.effective_mtu, config=port.cfg.mtu)
            port.mtu = mtu
            self.publish_port(port)
        if mac and mac != port.mac:
            log.warning("port.mac_changed", port=port.name, mac=mac, was=port.mac)
            port.mac = mac
            self._say_static_held(port)

    def _say_static_held(self, port: ports.Port) -> None:
        """The port's new MAC, its host's (or IFACE's, followed), is static on another port in a
        VLAN of this one (`static_macs`, `fdb add`): the entry stays, as it does against the
        frames of a host that claims its MAC (learning), and the frames for this port's host go
        to the entry's port. Said, since nothing else shows it but `tapswitch fdb` beside
        `tapswitch ports`. Not removed, as a reload's `mac:` removes an `fdb add` entry: the
        config is the operator's word, the TAP's MAC its host's, whose user could take any
        port's pinned MAC (a gateway's) away so, and then have it learned on its own port.
        Read without static_lock (an `fdb add` or `del` meanwhile is said or not)."""
        if port.name in self.cfg.monitor_ports():
            return          # in no VLAN: no frame is sent to it by its MAC
        for vlan in sorted(port.cfg.vlans):
            self._static_held(port, vlan, self.static_macs.get((port.mac, vlan)))

    def _static_held(self, port: ports.Port, vlan: int, slot: int | None) -> None:
        """Say fdb.static_held if the entry of the port's MAC in `vlan` is static on `slot`, another port's."""
        names = {p.index: p.name for p in self.ports}
        if slot is not None and slot != port.index and slot in names:
            log.warning("fdb.static_held", mac=port.mac, vlan=vlan, port=names[slot], claimed_by=port.name,
                        reason=f"{port.mac} is the MAC of port {port.name} in VLAN {vlan} now: "
                               f"static on {names[slot]}, its frames go there")

    def remote_changed(self, port: ports.Port, event: linkmon.LinkEvent) -> None:
        """IFACE went, came back, or changed state (a VM restarted, a driver reloaded, a cable)."""
        if event.deleted:
            port.remote_ifindex = None
            port.remote_up = False
            if port.tunnel is None:
                port.remote.gone()        # its rules went with the device; forget them
            else:                         # a VXLAN device never comes back: maintain_tunnels makes another
                port.remote.detach()
                port.tunnel.gone()
                self._attach_over(port)   # one whose attach failed: the next device's is another try
            log.warning("remote.gone", port=port.name, remote=port.cfg.remote)
            if port.tunnel is None and event.ifname != port.cfg.remote:
                # IFACE was renamed while attached (the port keeps the device), and another device
                # may have taken IFACE's name since: its events came while the port had the old
                # one, and it stayed unattached, the port down, until its next event or a reload.
                self.resync_iface(port)
            return
        if port.remote_ifindex is None:
            port.remote_ifindex = event.ifindex
            try:
                port.remote.attach()      # rules and settings again, on the new device
            except Exception as e:
                port.remote_ifindex = None
                # Out of descriptors (an OSError), or refused (IFACE held by another switch that
                # runs, a foreign filter in our priorities, its MTU...): what ends it makes no
                # event of IFACE's (descriptors freed, the other switch stopped, the filter
                # deleted), and the port stayed down, IFACE unattached, until a reload. The tick
                # tries again (maintain_remotes), said once while it fails so (again if why changes).
                self._attach_wait(port, event.ifindex)
                if port.attach_failed.news(str(e)):
                    log.error("remote.attach_failed", port=port.name, remote=port.cfg.remote, error=str(e),
                              reason="tried again every tick until it succeeds" if not port.attach_wait else
                              f"tried again ever more rarely, up to every {ATTACH_WAIT_MAX:g} s, until it succeeds")
                return
            self._attach_over(port)
            log.info("remote.returned", port=port.name, remote=port.cfg.remote)
        # As for the TAP: a "down" from IFACE's making (a VXLAN device is made down) may come
        # after its port was made up; the device says whether it still holds.
        port.remote_up = event.up or (port.remote_up
                                      and self._device_up(port, linkmon.OWN_NSID, port.remote_ifindex, True))
        if port.remote.mtu is None:
            self.remote_mtu_changed(port, event)
        self.remote_mac_changed(port, event)

    @staticmethod
    def _attach_wait(port: ports.Port, ifindex: int) -> None:
        """When the tick tries again to attach IFACE (at `ifindex`), whose attach failed: at the
        next, if the try changed nothing; if it had begun to change IFACE and undid it (its MTU
        refused, a rule refused: RemoteAttachment.undone), after a wait that doubles with each
        such try, ATTACH_WAIT_MAX at most: each wrote the state file twice, and set IFACE's
        flags and gave them back (a peer sees its carrier come and go), once a second for as
        long as it lasted. Another device made under IFACE's name starts over."""
        if not port.remote.undone:
            wait = 0.0
        elif port.attach_failed_index == ifindex:
            wait = min(ATTACH_WAIT_MAX, max(TICK, 2 * port.attach_wait))
        else:
            wait = TICK
        port.attach_failed_index, port.attach_wait, port.attach_at = ifindex, wait, time.monotonic() + wait

    @staticmethod
    def _attach_over(port: ports.Port) -> None:
        """IFACE is attached, or gone again: no try is due."""
        port.attach_failed.over()
        port.attach_failed_index, port.attach_wait, port.attach_at = None, 0.0, 0.0

    def remote_mac_changed(self, port: ports.Port, event: linkmon.LinkEvent | None = None) -> None:
        """IFACE's user gave it another MAC (or it came back with another): the rules that match
        on it follow (RemoteAttachment.follow_iface_mac), and a local port without `mac:`, which
        has IFACE's, gives its TAP the new one, as `tapswitch ports` and port_info show it.
        Without an event: maintain_remotes trying again what the kernel refused (a rule, a flag,
        the TAP's MAC), which is said once, not at every try (again if its reason changes)."""
        att = port.remote
        if att.behind or (event is not None and event.mac not in (None, att.iface_mac)):
            try:
                att.follow_iface_mac()
            except (NetlinkError, OSError, tc.TcError) as e:
                if port.mac_follow_failed.news(f"rules: {e}"):
                    log.error("remote.mac_follow_failed", port=port.name, remote=port.cfg.remote, error=str(e),
                              reason="tried again every tick until it succeeds")
                return
        if att.follows_mac and att.port_mac is not None and att.port_mac != port.mac:
            try:
                att.ipr.link("set", index=port.ifindex, address=att.port_mac)
            except (NetlinkError, OSError) as e:
                if port.mac_follow_failed.news(f"tap: {e}"):
                    log.error("port.mac_follow_failed", port=port.name, remote=port.cfg.remote, mac=att.port_mac,
                              error=str(e), reason="tried again every tick until it succeeds")
                return
            log.info("port.mac_changed", port=port.name, mac=att.port_mac, was=port.mac, remote=port.cfg.remote)
            port.mac = att.port_mac
            self._say_static_held(port)
        port.mac_follow_failed.over()

    def maintain_remotes(self) -> None:
        """A remote port whose following of IFACE's new MAC failed (remote_mac_changed) tries
        again, once a tick: no other event may come (IFACE's MAC changed once), and until it
        succeeds the port steals the frames of the old MAC, not the new one's. So does one whose
        IFACE came back and could not be attached, for want of descriptors or refused
        (remote_changed): IFACE is looked up by its name again, and attached if it is there
        (attach_again). A refused try costs a few netlink requests (IFACE's link, its ingress
        filters), and no wait: RemoteAttachment.attach waits for a dead run's TAP only once."""
        for port in self.ports:
            if port.gone:
                continue
            if port.mac_follow_failed.lasts() and port.remote_ifindex is not None:
                self.remote_mac_changed(port)
            elif port.attach_failed.lasts() and port.remote_ifindex is None and time.monotonic() >= port.attach_at:
                self.attach_again(port)

    def attach_again(self, port: ports.Port) -> None:
        """IFACE, that came back and could not be attached (remote_changed), attached if it is
        there by its name. A look that cannot be made either is that failure still, said already."""
        try:
            link = self._iface_by_name(port)
        except LOOK_ERRORS:
            return
        if link is None or not self._made_for(port, link["index"]):
            self._attach_over(port)          # gone again: its making again is an event, which attaches it
            return
        self.remote_changed(port, self._event_of(link))
        self.set_port_up(port, port.links_up)

    def remote_mtu_changed(self, port: ports.Port, event: linkmon.LinkEvent) -> None:
        """A remote port without `mtu` has IFACE's: when IFACE's user changes it (or IFACE comes
        back with another), the port's TAP and the fast path follow, as they follow the TAP's own.
        What the device has now decides: events come late."""
        if event.mtu in (None, port.effective_mtu):
            return
        try:
            link = self._link(linkmon.OWN_NSID, port.remote_ifindex)
        except LOOK_ERRORS as e:
            self._look_failed(port, e)      # the tick looks again (resync_port)
            return
        mtu = link.get_attr("IFLA_MTU") if link is not None else None
        if not mtu or ports.tap_mtu(mtu) == port.effective_mtu:
            return
        try:
            tap_mtu = ports.set_tap_mtu(port.remote.ipr, port.ifindex, mtu)
        except NetlinkError as e:
            log.error("port.mtu_follow_failed", port=port.name, remote=port.cfg.remote, mtu=mtu, error=str(e))
            return
        log.info("port.mtu_changed", port=port.name, mtu=tap_mtu, was=port.effective_mtu, remote=port.cfg.remote)
        port.mtu = tap_mtu
        self.publish_port(port)

    def resync_links(self, taps: bool = True) -> None:
        """Ask the kernel for the state of every port's devices (at start, or when events were lost)."""
        for port in self.ports:
            if not port.gone:
                self.resync_port(port, taps)
        self.monitor.overrun = False

    def resync_port(self, port: ports.Port, taps: bool = True) -> None:
        """Ask the kernel for the state of the port's devices, and follow it. A device that could
        not be looked at (_look_failed) keeps the state the port had for it."""
        if taps:
            self.resync_tap(port)
        if port.remote is not None:
            self.resync_iface(port)
            try:
                link = self._link(linkmon.OWN_NSID, port.remote_ifindex) if port.remote_ifindex is not None else None
            except LOOK_ERRORS as e:
                self._look_failed(port, e)
            else:
                port.remote_up = link is not None and linkmon.link_up(link["flags"])
                if link is not None:
                    self.check_foreign(port)          # a filter event may have been lost too
                    self.resync_remote(port, link)
        if port.tunnel is not None:
            self.underlay_changed(port)
        self.set_port_up(port, port.links_up)

    def resync_tap(self, port: ports.Port) -> None:
        """The TAP's state, MTU and MAC as the kernel has them now, followed as its lost events
        would have had them (link_changed)."""
        try:
            link = self._link(port.nsid, port.ifindex)
        except LOOK_ERRORS as e:
            self._look_failed(port, e)
            return
        port.tap_up = link is not None and linkmon.link_up(link["flags"])
        if link is not None:
            self._follow_tap(port, link)

    def resync_iface(self, port: ports.Port) -> None:
        """IFACE gone (deleted, moved away), or there again, as the kernel says now, followed as
        its lost event would have had it (remote_changed): else the port of an IFACE made again
        stayed down for good, its new ifindex's events taken for none of its port's. So is a VXLAN
        port's device that went unattached (its attach failing), as its lost deletion would have
        had it: else the tunnel kept its ifindex, and maintain_tunnels never made it again."""
        known = port.remote_ifindex
        if known is None and port.tunnel is not None:
            known = port.tunnel.ifindex
        if known is not None:
            try:
                there = self._link(linkmon.OWN_NSID, known) is not None
            except LOOK_ERRORS as e:
                self._look_failed(port, e)      # not known now: the tick looks again
                return
            if there and known == port.remote_ifindex:
                return
            if not there:
                self.remote_changed(port, linkmon.LinkEvent(linkmon.OWN_NSID, known, port.cfg.remote, False, True))
        try:
            link = self._iface_by_name(port)
        except LOOK_ERRORS as e:
            self._look_failed(port, e)
            return
        if link is not None and self._made_for(port, link["index"]):
            self.remote_changed(port, self._event_of(link))

    @staticmethod
    def _iface_by_name(port: ports.Port):
        """The link message of the device named as the port's IFACE in the switch's namespace,
        or None if there is none. A look that cannot be made raises (LOOK_ERRORS)."""
        with rtnl.Rtnl() as here:
            index = rtnl.index_of(here.sock, port.cfg.remote)
            return here.get_link(index) if index is not None else None

    def resync_remote(self, port: ports.Port, link) -> None:
        """IFACE's MTU and MAC as the kernel has them (`link`), followed as their lost event
        would have had them followed (remote_changed): else the port steals the old MAC's
        frames until IFACE's next event, if one ever comes."""
        event = self._event_of(link)
        if port.remote.mtu is None:
            self.remote_mtu_changed(port, event)
        self.remote_mac_changed(port, event)

    @staticmethod
    def _event_of(link) -> linkmon.LinkEvent:
        """The event the link monitor would have of a device in the switch's namespace as it is
        now (`link`, pyroute2's message): for one whose events were lost."""
        return linkmon.LinkEvent(linkmon.OWN_NSID, link["index"], link.get_attr("IFLA_IFNAME"),
                                 linkmon.link_up(link["flags"]), False, link.get_attr("IFLA_MTU"),
                                 link.get_attr("IFLA_ADDRESS"))

    @staticmethod
    def _link(nsid: int, index: int):
        """The device's link message (pyroute2's ifinfmsg), or None if it or its namespace is gone.
        The namespace by the id the switch's knows it by (linkmon.OWN_NSID: the switch's own), as
        its link events name it, not by its path: `ip netns del` takes that from a namespace that
        a process keeps alive, with the port's TAP in it, and a namespace made again has it next
        (the TAP was looked for in none, or in that one: its MTU went unfollowed, and a resync
        took its port down for good). A look that cannot be made raises (LOOK_ERRORS): no
        descriptor (EMFILE, ENFILE) for the netlink socket says nothing of the device, and was
        taken for it gone: a late "down" brought its port down and flushed its MACs. On a socket
        of ours, not pyroute2's IPRoute, whose asyncio loop, half made there, printed tracebacks."""
        with rtnl.Rtnl() as here:
            return here.get_link(index, None if nsid == linkmon.OWN_NSID else nsid)

    def _device_up(self, port: ports.Port, nsid: int, index: int, unknown: bool) -> bool:
        """Is the port's device at `index` (in the namespace of id `nsid`, as _link) up with
        carrier, as the kernel says now (False: gone)? `unknown` (the state the port has for
        it) if the kernel could not be asked: said once (_look_failed), and the tick looks again."""
        try:
            link = self._link(nsid, index)
        except LOOK_ERRORS as e:
            self._look_failed(port, e)
            return unknown
        return link is not None and linkmon.link_up(link["flags"])

    def _look_failed(self, port: ports.Port, e: Exception) -> None:
        """A look at one of the port's devices could not be made: logged once while it fails with
        the same error; maintain_looks looks again at the next tick."""
        error = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        self.unlooked.add(port.name)
        if self.unlooked_said.news(error, port.name):
            log.warning("port.look_failed", port=port.name, error=error,
                        reason="its devices are looked at again every tick; the port keeps its state meanwhile")

    def maintain_looks(self) -> None:
        """The ports a look at whose devices failed since the last tick (_look_failed) are looked at
        again, as ports whose events were lost are (resync_port): the event that asked for the look
        may not come again. A port looked at in full is said again once its next look fails."""
        failed, self.unlooked = self.unlooked, set()
        for port in self.ports:
            if port.name in failed and not port.gone:
                self.resync_port(port)
        self.unlooked_said.only(self.unlooked)

    def set_port_up(self, port: ports.Port, up: bool) -> None:
        """Skip a down port when flooding and forget its MACs; resume when it is up."""
        if port.up == up:
            return
        port.up = up
        self.publish_port(port)
        if up:
            self.down_flushes.pop(port.index, None)     # what it learns now is its own
            log.info("port.up", port=port.name)
        else:
            flushed = self.shared.fdb_flush(port.index)
            self.down_flushes[port.index] = self.shared.fdb_epoch
            log.warning("port.down", port=port.name, fdb_flushed=flushed)

    def publish_port(self, port: ports.Port) -> None:
        """Write the port's state, MTU and longest frame to the port table, where the workers read them."""
        self.shared.set_port(port.index, fastpath.lib.TS_PORT_UP if port.up else fastpath.lib.TS_PORT_DOWN,
                             port.effective_mtu, port.frame_max)

    def maintain_workers(self) -> None:
        """A worker that hung is killed (its exit restarts it); a restart's process not set up
        in time is killed (another try, or a wait); a worker whose restart failed or held back
        (it keeps dying) gets another go once due."""
        for w in self.supervisor.hung():
            self.supervisor.kill_hung(w)
        for w in self.supervisor.late():
            self._unwatch(w)
            self.supervisor.start_timed_out(w)
            self._watch(w)
        for w in self.supervisor.down():
            self.supervisor.restart(w)
            self._watch(w)

    def maintain_ports(self) -> None:
        """Notice ports whose TAP went, which no link event says (or not so that it can be told
        from a late one): the TAP deleted (with its namespace), moved by its host into another
        namespace, or left in a namespace the switch made that was deleted or replaced under
        its name (`ip netns del`: the TAP keeps it alive, unseen). Such a port is down until a
        reload makes it again where the config says."""
        lost = self.namespaces.lost()
        for ns in lost:
            log.warning("netns.lost", netns=ns.name, reason=ns.what)
        # By the namespace itself, not its name: a reload may have made another under that name
        # meanwhile, and the ports it made there are not lost. (A kernel that cannot tell
        # which namespace a TAP is in: by name.)
        lost_here = {ns.where: ns for ns in lost}
        lost_named = {ns.name: ns for ns in lost}
        unchecked = set()        # the ports whose TAP could not be asked about at this tick
        for port in self.ports:
            if port.gone:
                continue
            try:
                where = tap.device_netns(port.fds[0])
            except OSError as e:
                # Out of descriptors (the ioctl opens one): it raised out of the control loop, and
                # the switch ended. Not known now; the next tick asks again (said once while it lasts).
                error = e.strerror or str(e)
                unchecked.add(port.name)
                if self.unchecked.news(error, port.name):
                    log.warning("port.check_failed", port=port.name, error=error,
                                reason="where its TAP is is asked again every tick")
                continue
            ns = lost_named.get(port.cfg.netns) if where == tap.UNKNOWN_NETNS else lost_here.get(where)
            if where is None:
                reason = "its TAP was deleted (or its namespace went)"
            elif where != port.netns_id:
                reason = "its TAP was moved to another namespace"
            elif ns is not None:
                reason = f"its namespace {ns.name} was {ns.what}"
            else:
                continue
            port.gone = True
            port.tap_up = False
            log.warning("port.gone", port=port.name, netns=port.cfg.netns, reason=reason)
            self.set_port_up(port, False)
            self.supervisor.forget_port(port.index)
            self.give_back_remote(port)
        self.unchecked.only(unchecked)

    @staticmethod
    def give_back_remote(port: ports.Port) -> None:
        """A remote port whose TAP went detaches IFACE, as the stop would: its rules on IFACE
        redirected to a device that is no more (the kernel drops what mirred sends there), and in
        promisc mode the host lost all of IFACE's traffic until a reload or the stop. IFACE's
        user has it back as it was (rules, clsact, the flags and MTU the switch set), and its
        claim is let go; the reload that makes the port again attaches it again. A VXLAN port's
        device is the switch's own: detached, it stays until that reload (or the stop) removes it.
        What the detach could not undo is said; the reload's (or the stop's) detach tries again."""
        if port.remote is None:
            return
        try:
            port.remote.detach()
        except (NetlinkError, OSError, tc.TcError) as e:
            log.error("remote.detach_failed", port=port.name, remote=port.cfg.remote, error=str(e))

    def maintain_tunnels(self) -> None:
        """A VXLAN port whose device went (deleted, or by the kernel with its underlay device) gets
        it again as soon as it can be made: every tick, the reason it cannot logged once."""
        waits = set()            # the ports whose device could not be made at this tick
        for port in self.ports:
            if port.tunnel is None or port.tunnel.ifindex is not None or port.gone:
                continue
            try:
                ports.remake_tunnel(port)
            except ports.PortError as e:
                waits.add(port.name)
                if self.tunnel_waits.news(str(e), port.name):
                    log.warning("vxlan.remake_waits", port=port.name, dev=port.tunnel.name, error=str(e))
                continue
            log.info("vxlan.remade", port=port.name, dev=port.tunnel.name)
            self.underlay_changed(port)       # bound anew, to the device named dev now (up: its link event)
        self.tunnel_waits.only(waits)

    def feed_shared_remotes(self) -> None:
        """Shared-mode remotes steal frames for the MACs behind the other ports: tell them which."""
        shared_ports = [p for p in self.ports if p.remote is not None and p.cfg.remote_mode == "shared"
                        and p.remote_ifindex is not None]
        if not shared_ports:
            return
        entries = self.shared.fdb_dump()
        for port in shared_ports:
            macs = {mac for mac, _vlan, index, _static, _seen in entries if index != port.index}
            try:
                port.remote.update_shared_macs(macs)
            except Exception as e:
                log.error("remote.update_failed", port=port.name, error=str(e))

    def _worker_reaped(self, queue: int) -> None:
        """A worker that exited unasked, or did not drain, is reaped (Supervisor._release): its
        marker of the settings copy it read goes, and the ports' MAC table entry counts are
        counted again (maintain_fdb). Killed between an entry's write and its count's (fastpath.h,
        "Abandoned slots"), it left a port's count one off for good: one short, or one over, which
        held a port with mac_limit one below its limit."""
        self.shared.release_reader(queue)
        self.fdb_recount_due, self.fdb_recount_held = True, None

    def maintain_fdb(self) -> None:
        """Count the ports' entries again if a worker died since (_worker_reaped); one aging step
        over a slice of the MAC table; warn when it is full."""
        shared = self.shared
        if self.fdb_recount_due and self.fdb_recount_held != shared.fdb_epoch:
            # Under static_lock: `fdb add`, `del` and `flush` write the table in the control
            # socket's threads, the recount's count would miss theirs. A worker stopped inside a
            # burst holds it back (a tenth of a second's wait, learning stopped): tried again once
            # the epoch moves (every worker out of a burst since), or the next worker is reaped,
            # not every tick while the worker stays stopped (the watchdog may be off).
            with self.static_lock:
                self.fdb_recount_due = not shared.fdb_recount()
            self.fdb_recount_held = shared.fdb_epoch if self.fdb_recount_due else None
        buckets = shared.fdb_buckets
        step = math.ceil(buckets / AGING_STEPS)
        aged = shared.fdb_age(shared.now(), self.cfg.switch.mac_table.aging, self.aging_cursor, step)
        self.aging_cursor = (self.aging_cursor + step) % buckets
        if aged:
            log.debug("fdb.aged", entries=aged)
        # Lost race, stated, and ended here: a worker checks a frame's port is up before it learns
        # its source (fastpath.c, handle_burst), so one inside a burst from a port as its link went
        # down learned on it after set_port_up's flush, and frames to that MAC were dropped, not
        # flooded, until it aged. Two epochs after the flush that burst is over (fastpath.h,
        # "Abandoned slots"), and a down port learns nothing: a flush then leaves none.
        epoch = shared.fdb_epoch
        for index, flushed_at in list(self.down_flushes.items()):
            if (epoch - flushed_at) % (1 << 32) >= 2:
                del self.down_flushes[index]
                shared.fdb_flush(index)
        evicted = shared.fdb_stats()["evicted"]
        if evicted > self.evicted_seen:
            now = shared.now()
            if now - self.full_logged_at >= FULL_LOG_INTERVAL:
                log.warning("fdb.full", size=shared.fdb_size, evicted=evicted - self.evicted_seen)
                self.full_logged_at = now
            self.evicted_seen = evicted

    def reload(self) -> dict:
        """SIGHUP or `tapswitch reload`: apply what changed in the config file.

        An invalid config, or one that changes a setting fixed at start, or
        one whose new workers would not run (an in-place upgrade:
        _workers_can_start), changes nothing: the error is logged and
        counted, and the switch goes on with the config it has.
        """
        notify("RELOADING=1")
        try:
            return self._reload()
        finally:
            notify("READY=1")

    def _reload(self) -> dict:
        self.maintain_ports()        # what went since the last tick is made again too
        try:
            new = config_mod.load(self.cfg.source if self.cfg.source != "<demo>" else None)
            gone = {p.name for p in self.ports if p.gone}
            # A VXLAN port whose device went and waits to be made again (maintain_tunnels: its
            # underlay back with an MTU too small for the port's) is looked at again, as one whose
            # TAP went is: the reload sets the segment's MTUs from that underlay, and so ends the wait.
            waiting = {p.name for p in self.ports if p.tunnel is not None and p.tunnel.ifindex is None}
            kept = reload_mod.kept_tunnels(self.cfg, new, gone | waiting)
            carried = ports.carried_mtus(new.ports, {name: self.carried[name] for name in kept if name in self.carried})
            new = new.model_copy(update={"ports": ports.plan(new.ports, new.mirrors, carried)})
            plan = reload_mod.plan(self.cfg, new, gone=gone, euid=os.geteuid(),
                                   macs={p.name: p.mac for p in self.ports})
            self._workers_can_start(plan)
        except (config_mod.ConfigError, reload_mod.ReloadRefused) as e:
            errors = e.errors
        except ports.PortError as e:
            errors = [str(e)]
        except OSError as e:
            # Out of descriptors as it looks at the devices before it changes any (a VXLAN port's
            # underlay, for its MTU: ports.carried_mtus' netlink socket): it raised out of the
            # control loop, and the switch ended. Nothing has changed: refused, as a bad config.
            errors = [f"cannot reload now: {_reason(e)}"]
        else:
            failed, troubles = self.apply(plan, new)
            running = {p.name for p in self.ports}
            back = {name for name in failed if name in running}     # put back as they were (apply)
            self.carried = ({p.name: carried[p.name] for p in self.ports if p.name in carried and p.name not in back}
                            | {name: self.carried[name] for name in back if name in self.carried})
            by_name = {p.name: p for p in new.ports}    # each reload tries them again: they are not in self.cfg
            self.unmade = {name: (by_name[name], error) for name, error in failed.items() if name not in back}
            errors = list(failed.values()) + troubles
            self.reloads["failure" if errors else "success"] += 1
            summary = {what: [n for n in names if n not in failed] for what, names in plan.summary().items()}
            summary["failed"] = list(failed)
            log.info("config.reloaded", errors=errors, **summary)
            return {"ok": not errors, "errors": errors, **summary}
        self.reloads["failure"] += 1
        log.error("config.reload_failed", errors=errors)
        return {"ok": False, "errors": errors}

    def _workers_can_start(self, plan: reload_mod.Plan) -> None:
        """ReloadRefused if the plan replaces the workers (a port added or removed: apply) and a
        worker started now would not run: after an in-place upgrade to a fast path of another
        TS_VERSION every worker was stopped for new ones that could not start, and the switch
        forwarded nothing until restarted. Asked before anything is touched: the old workers
        go on forwarding, and the switch runs on as it was."""
        if not plan.ports_changed:
            return
        why = self.supervisor.workers_refused()
        if why is not None:
            raise reload_mod.ReloadRefused([
                f"cannot add, remove or make again a port now: that starts new workers, which would not run: {why}"])

    def apply(self, plan: reload_mod.Plan, new) -> tuple[dict[str, str], list[str]]:
        """Carry out a reload plan; returns {name: error} of the ports that could not be made,
        and what else failed (logged), the switch running on: a worker that did not start (the
        control loop starts it again), a VXLAN port's remote hosts, the state file not written.

        Ports go before ports come: a port made again needs its old device
        gone first (same name, same name inside its namespace). So one whose
        new device the kernel refuses is made again as it was (_put_back).
        """
        troubles = []
        retired = [p for p in self.ports if p.name in plan.remove]
        # Ports taken away to be made again, which _put_back makes as they were if their new
        # device cannot be made: not one whose TAP went, which had nothing left to lose.
        remade = [p for p in retired if not p.gone and p.name in {c.name for c in plan.add}]
        if retired:
            # Under static_lock: an `fdb add` (a control socket thread) that found a retired port
            # before it went wrote its entry on the port's slot after _free_slot gave that to a
            # port this reload adds (it saw no entry there). Now the add is on the port while
            # it is there (its slot held), or finds no such port.
            with self.static_lock:
                for port in retired:
                    self.shared.set_port(port.index, fastpath.lib.TS_PORT_UNUSED, 0)   # no frame goes to it now
                    self.shared.fdb_flush(port.index)
                self.ports = [p for p in self.ports if p.name not in plan.remove]     # readers see old or new
            troubles += self._replace_workers()                                    # they let go of its fds
            # Lost race, stated, and ended here: a worker checks a frame's port is up before it
            # learns the frame's source (fastpath.c, handle_burst), so one inside a burst from a
            # retired port as it went learned on the slot after the flush above; that entry
            # lived until aging, on a slot no port has (or the next port given it). Every worker
            # that could have is reaped now, and the new ones have no queue of these ports: a
            # flush now leaves no learned entry on their slots for good, and so their counts
            # are their static entries (also where a killed worker had left one off).
            with self.static_lock:
                for port in retired:
                    self.shared.fdb_flush(port.index)
                    self.shared.reset_fdb_entries(port.index)
                    self.down_flushes.pop(port.index, None)     # done: not on the port given the slot next
            for port in retired:
                if port.remote is None or not port.remote.follows_mac:     # else IFACE's: it gets IFACE's again
                    self.macs_had.pop(port.name, None)       # listed last: the latest to have it
                    self.macs_had[port.name] = port.mac
                port.close()
                if not ports.wait_gone(port):
                    log.warning("port.device_lingers", port=port.name)     # its remaking will say so
                log.info("port.removed", port=port.name)
            # Not yet the namespace a port made again leaves: it may be put back there.
            self.namespaces.remove_unused({p.netns_path for p in new.ports} | {p.cfg.netns_path for p in remade})
        errors, added, wanted = {}, [], []
        busy = {p.index for p in self.ports}
        caps = effective_caps()
        for pcfg in plan.add:
            # Not tried: a port in a namespace, without CAP_SYS_ADMIN, failed with the kernel's
            # "bind /run/netns: Operation not permitted" or "[Errno 1] setns ...", as the start did.
            if (why := port_refused(pcfg, caps)) is not None:
                errors[pcfg.name] = why
                log.error("port.add_failed", port=pcfg.name, error=why)
                continue
            index = self._free_slot(busy)
            busy.add(index)
            wanted.append((index, pcfg))
        had = set(self.namespaces.created)
        made = self._add_ports(wanted, new)
        _raise_a_bug(made)
        for (_index, pcfg), port in zip(wanted, made):
            if isinstance(port, ports.Port):
                added.append(port)
            else:
                errors[pcfg.name] = _port_reason(pcfg.name, port)
                log.error("port.add_failed", port=pcfg.name, error=errors[pcfg.name])
        back = self._put_back([p for p in remade if p.name in errors], errors, added, new)
        added += back
        # The config the switch runs: the new one, but for the ports put back, which keep their old settings.
        olds = {p.name: p.cfg for p in back}
        new_ports = [olds.get(p.name, p) for p in new.ports]
        applied = new.model_copy(update={"ports": new_ports}) if back else new
        by_name = {p.name: p for p in new.ports}
        # A port that left a VLAN must not keep its MACs there: flushed once its new VLANs apply.
        # So does a port that became a mirror's monitor port: it is in no VLAN.
        monitors = new.monitor_ports() - self.cfg.monitor_ports()
        rezoned = [p for p in self.ports if reload_mod.vlans_changed(p.cfg, by_name[p.name]) or p.name in monitors]
        # A VXLAN port that lost a remote host forgets what it learned: the switch does not know
        # which MACs were behind which host, and those behind the others are learned again.
        unhosted = [p for p in self.ports if p.cfg.vxlan and by_name[p.name].vxlan
                    and set(p.cfg.vxlan.remotes) - set(by_name[p.name].vxlan.remotes)]
        for port in self.ports:
            port.cfg = by_name[port.name]
            if (error := ports.update_tunnel(port)) is not None:
                troubles.append(error)
        for port in unhosted:
            log.info("vxlan.remotes_removed", port=port.name, fdb_flushed=self.shared.fdb_flush(port.index))
        for port in added:
            # As the start asks (resync_links): IFACE may have no carrier already, a VXLAN port's
            # underlay may be down, and no event says so (attaching may change nothing it tells of).
            if port.remote is not None:
                port.remote_up = self._device_up(port, linkmon.OWN_NSID, port.remote_ifindex, port.remote_up)
            if port.tunnel is not None:
                self.underlay_changed(port)
            port.up = port.links_up      # settings.apply publishes it, before the workers see the port
        order = {p.name: i for i, p in enumerate(new.ports)}
        self.ports = sorted(self.ports + added, key=lambda p: order[p.name])
        settings.apply(self.shared, applied, self.ports)      # new ports' and changed ports' settings, before traffic
        for port in rezoned:
            log.info("port.vlans_changed", port=port.name, fdb_flushed=self.shared.fdb_flush(port.index))
        if added:
            troubles += self._replace_workers()
        if new.switch.log != self.cfg.switch.log:
            setup_logging(new.switch.log.level, new.switch.log.format)
        self.supervisor.hung_after = new.switch.watchdog_ms / 1000     # from the next look (hung)
        # Those made for ports that failed go. One a port had before this reload stays while the
        # config names it: what its user runs there is not cut off, and a reload makes the port there again.
        kept = {p.netns_path for p in new.ports if p.netns_path is not None and name_at(p.netns_path) in had}
        self.namespaces.remove_unused({p.cfg.netns_path for p in self.ports} | kept)
        running = {p.name for p in self.ports}
        self.cfg = new.model_copy(update={"ports": [p for p in new_ports if p.name in running]})
        self.install_static_macs()
        if self.state.unsaved:          # by its last save: the file is behind (logged); a later one writes it
            troubles.append(self.state.unsaved)
        return errors, list(dict.fromkeys(troubles))

    def _put_back(self, failed: list[ports.Port], errors: dict[str, str], made: list[ports.Port],
                  new) -> list[ports.Port]:
        """The ports in `failed`, taken away by this reload to be made again, whose new device could
        not be made (the kernel refused an MTU their remote cannot carry, an `ifname` taken in their
        namespace, an address...): made again as they were, with their old config, the MAC
        macs_kept gives them (the one they had), their remote attached again. Returns those made;
        each one's error in `errors` says it was (or why that failed too: it stays down, as
        before). `made`: the ports this reload made, not yet in self.ports. Bad input loses
        nothing: the port was down and detached until the next reload."""
        if not failed:
            return []
        running = self.ports + made
        busy = {p.index for p in running}
        wanted = []
        for port in failed:
            pcfg = port.cfg         # the config it was made with
            # Given to another port by this reload: two ports with one MAC, or one remote (whose
            # claim is ours: "attached by another running switch", of this one).
            taken = next((f"its MAC {pcfg.mac} is port {p.name}'s now" for p in running
                          if pcfg.mac is not None and p.mac == pcfg.mac), None) or next(
                (f"its remote {pcfg.remote} is port {p.name}'s now" for p in running
                 if pcfg.remote is not None and p.cfg.remote == pcfg.remote), None)
            if taken is not None:
                errors[port.name] += f"; not put back: {taken}"
                log.error("port.put_back_failed", port=port.name, error=errors[port.name])
                continue
            index = self._free_slot(busy)
            busy.add(index)
            wanted.append((index, pcfg))
        back = self._add_ports(wanted, new, made) if wanted else []
        _raise_a_bug(back, made)
        for (_index, pcfg), port in zip(wanted, back):
            if isinstance(port, ports.Port):
                errors[pcfg.name] += "; put back with its old settings"
                log.warning("port.put_back", port=pcfg.name, error=errors[pcfg.name])
            else:
                why = _port_reason(pcfg.name, port).removeprefix(f"port {pcfg.name}: ")
                errors[pcfg.name] += f"; putting it back failed too: {why}"
                log.error("port.put_back_failed", port=pcfg.name, error=errors[pcfg.name])
        return [port for port in back if isinstance(port, ports.Port)]

    def _replace_workers(self) -> list[str]:
        """New workers over the current ports; a gone port's dead queues stay out (as forget_port).
        Returns why each that did not come up did not (the control loop starts it again)."""
        self._watch_workers(False)
        failed = self.supervisor.replace_ports({p.index: p.fds for p in self.ports if not p.gone})
        self._watch_workers(True)
        return failed

    def install_static_macs(self) -> None:
        """Make the MAC table's static entries those of the config plus `fdb add`'s, on the ports' current
        slots: only those new, moved (another port, or their port made again on another slot) or gone
        are written; the others are left as they are, their age going on."""
        with self.static_lock:
            self._install_static_macs()

    def _install_static_macs(self) -> None:
        index = {p.name: p.index for p in self.ports}
        wanted = {(mac, vlan): port for mac, port, vlan in self.cfg.static_mac_entries() if port in index}
        # `fdb add`'s go with their port, and with its VLAN or its forwarding (a reload may
        # take either away), as a bridge's static entries do; and when the config gives another
        # port of the VLAN their MAC (`mac:`), which fdb add refuses as check refuses it in
        # static_macs: kept, the entry sent that port's frames to theirs for good. Its `mac:`
        # only: the MAC a host set on its TAP since does not take an operator's entry away.
        kept = {}
        for (mac, vlan), name in self.cli_macs.items():
            if name not in index or self._static_mac_error(self.port_by_name(name), vlan) is not None:
                reason = "the port or its VLAN went"
            else:
                reason = self._mac_owner_error(mac, vlan, self.port_by_name(name))
            if reason is None:
                kept[mac, vlan] = name
            else:
                log.info("fdb.static_removed", mac=mac, vlan=vlan, port=name, reason=reason)
        self.cli_macs = kept
        wanted.update(self.cli_macs)
        for mac, vlan in set(self.static_macs) - set(wanted):
            self.shared.fdb_del(mac, vlan)
        written = []
        for (mac, vlan), port in list(wanted.items()):
            if self.static_macs.get((mac, vlan)) == index[port]:
                continue        # in the table as wanted: written again, its age would start from 0
            try:
                # One there already (static elsewhere, or learned) has its value replaced in place:
                # a frame finds the old entry or the new one, never none.
                self.shared.fdb_add_static(mac, vlan, index[port])
            except OSError as e:
                # Both its buckets hold only static entries, which are never evicted: it stays out.
                log.error("fdb.static_failed", mac=mac, vlan=vlan, port=port, error=e.strerror)
                del wanted[mac, vlan]
                self.cli_macs.pop((mac, vlan), None)
                continue
            written.append((mac, vlan))
        self.static_macs = {key: index[port] for key, port in wanted.items()}
        # A config's entry written now (a start's, a reload's new or moved one) on the MAC that
        # another port of its VLAN has now, its host's or its IFACE's, which check cannot know
        # (`fdb add` refuses such a MAC: _mac_owner_error): said as when the host takes the MAC
        # later (_say_static_held). It was installed unsaid, the host's frames sent to its port.
        monitors = self.cfg.monitor_ports()
        for mac, vlan in written:
            for port in self.ports:
                if port.mac == mac and vlan in port.cfg.vlans and port.name not in monitors:
                    self._static_held(port, vlan, self.static_macs[mac, vlan])

    def fdb_add(self, req: dict) -> dict:
        """`tapswitch fdb add MAC --port P [--vlan V]`: a static entry until the switch stops, or a
        reload takes its port or VLAN away (_install_static_macs)."""
        with self.static_lock:     # on a port as a reload leaves it, and kept by the next one
            return self._fdb_add(req)

    def _fdb_add(self, req: dict) -> dict:
        port = self.port_by_name(req.get("port") or "")
        mac, vlan = self._mac_key(req, port)
        if (error := self._static_mac_error(port, vlan) or self._mac_owner_error(mac, vlan, port, now=True)) is not None:
            raise ControlError(error)
        try:
            self.shared.fdb_add_static(mac, vlan, port.index)
        except OSError as e:
            raise ControlError(f"cannot add {mac} vlan {vlan}: {e.strerror}") from None
        self.cli_macs[mac, vlan] = port.name
        self.static_macs[mac, vlan] = port.index
        log.info("fdb.added", mac=mac, vlan=vlan, port=port.name)
        return {"mac": mac, "vlan": vlan, "port": port.name}

    def fdb_del(self, req: dict) -> dict:
        """`tapswitch fdb del MAC [--vlan V]`: remove an entry, static or learned; without a VLAN,
        the MAC's entry in whatever VLAN it is, if it is in one only."""
        with self.static_lock:
            return self._fdb_del(req)

    def _fdb_del(self, req: dict) -> dict:
        # Absent or null: no port. Any other value names one, or is refused: a falsy one ("", [],
        # false) was taken for none, and deleted the entry in VLAN 1, not the port's.
        port = self.port_by_name(req["port"]) if req.get("port") is not None else None
        if req.get("vlan") is None and port is None:
            mac = unicast_mac_arg(req.get("mac"))
            vlan = self._vlan_of_entry(mac)
        else:
            mac, vlan = self._mac_key(req, port)
        if not self.shared.fdb_del(mac, vlan):
            raise ControlError(f"no entry for {mac} in VLAN {vlan}")
        self.cli_macs.pop((mac, vlan), None)
        self.static_macs.pop((mac, vlan), None)
        log.info("fdb.deleted", mac=mac, vlan=vlan)
        return {"mac": mac, "vlan": vlan}

    def _vlan_of_entry(self, mac: str) -> int:
        """The VLAN of the MAC table's one entry for `mac`, an `fdb del` naming no VLAN: it was
        VLAN 1, and `fdb add M --port P`, which puts M in P's untagged VLAN, could not be undone
        by `fdb del M` on an access port of another. A MAC in several VLANs (a router on a
        trunk) is refused: which entry goes is for the operator to say.
        Lost race, stated: the MAC learned in another VLAN meanwhile (a worker), or the entry
        found aged out (the control loop), leaves `fdb del` that entry to remove, or none ("no entry")."""
        vlans = self.shared.fdb_vlans(mac)
        if not vlans:
            raise ControlError(f"no entry for {mac} in any VLAN")
        if len(vlans) > 1:
            raise ControlError(f"{mac} has entries in VLANs {', '.join(map(str, vlans))}: give --vlan to say which")
        return vlans[0]

    @staticmethod
    def _mac_key(req: dict, port: ports.Port) -> tuple[str, int]:
        mac = unicast_mac_arg(req.get("mac"))
        vlan = req.get("vlan")
        if vlan is None:
            vlan = port.cfg.pvid
            if vlan is None:
                raise ControlError(f"port {port.name} is a trunk without a native VLAN: give --vlan")
        return mac, vlan_arg(vlan)

    def _mac_owner_error(self, mac: str, vlan: int, port: ports.Port, now: bool = False) -> str | None:
        """Why `mac` cannot be static on `port` in `vlan` as check says of static_macs
        (config.mac_clashes): it is another port's `mac` in that VLAN, whose frames the
        entry, never moved by learning, would send to `port`. With `now` (`fdb add`), also the
        MAC that port has now, which check cannot know: the switch's random one, IFACE's, or
        the one its host set (`tapswitch ports` shows it). None if it can be.
        Lost race, stated: a host that sets its TAP's MAC to the entry's after this look keeps
        the entry: a static entry holds its MAC against a host's claim, as against learning."""
        monitors = self.cfg.monitor_ports()
        owner = next((p for p in self.ports if p is not port and (p.cfg.mac == mac or now and p.mac == mac)
                      and vlan in p.cfg.vlans and p.name not in monitors), None)
        if owner is None:
            return None
        return f"{mac} is the MAC of port {owner.name} in VLAN {vlan}: static on {port.name}, its frames would go there"

    def _static_mac_error(self, port: ports.Port, vlan: int) -> str | None:
        """Why a static entry for `port` in `vlan` cannot be (as check says of static_macs), or None."""
        if vlan not in port.cfg.vlans:
            return f"VLAN {vlan} is not a VLAN of port {port.name}"
        mirror = next((m for m in self.cfg.mirrors if m.to == port.name), None)
        if mirror is not None:
            return f"port {port.name} is the monitor port of mirror {mirror.name}: it only receives copies"
        return None

    def _free_slot(self, busy: set[int]) -> int:
        """A port table slot for a new port: a never-used one if any, else a freed one, zeroed;
        one no static entry is on, if any. A reload moves or removes the static entries of the
        ports it removes once its ports are up (install_static_macs): on the slot a new port
        took, they would send it their MACs' frames until then."""
        free = [i for i in range(fastpath.lib.TS_MAX_PORTS) if i not in busy]
        if not free:
            raise ControlError(f"the switch has {fastpath.lib.TS_MAX_PORTS} ports already")
        fresh = [i for i in free if i not in self.slots_used]
        if fresh:
            return fresh[0]
        # Read without static_lock: an `fdb add` or `del` meanwhile is on a port of self.ports,
        # whose slot is busy (apply removes ports under it), or takes an entry out.
        held = set(self.static_macs.values())
        index = min(free, key=lambda i: (i in held, i))
        self.shared.reset_counters(index)
        return index

    # What the control socket serves.

    def port_by_name(self, name: str) -> ports.Port:
        for port in self.ports:
            if port.name == name:
                return port
        raise ControlError(f"no port named {name!r}")

    def ports_info(self) -> list[dict]:
        """Every port of the config: those running, then those the last reload could not make,
        down, with why (`error`), no MAC and counts of 0. A running port's `error` is None, but
        for a remote port whose IFACE came back and could not be attached: why, as
        remote.attach_failed said it last, until a tick's try attaches it (maintain_remotes).
        A running port's `queues_down` are the queues whose worker does not run (restarting, or
        held back), the same on every port: worker q serves queue q of them all; an unmade
        port has no queue to serve: []."""
        ports_now, unmade = self.ports, self.unmade     # each read once: a reload may swap them meanwhile
        sup = self.supervisor       # read once: the stop sets it to None
        queues_down = sup.queues_down() if sup is not None else []
        missed = self.rx_missed(ports_now)
        running = [{
            "name": p.name,
            "state": "up" if p.up else "down",
            "mac": p.mac,
            "mtu": p.effective_mtu,
            "speed": p.cfg.speed,
            "remote": p.cfg.remote,
            "queues": self.queues,
            "counters": {**self.shared.counters(p.index), "rx_missed": missed[p.index]},
            "queue_counters": [self.shared.queue_counters(p.index, q) for q in range(self.queues)],
            "error": p.attach_failed.failure(),
            "queues_down": queues_down,
        } for p in ports_now]
        made = {p.name for p in ports_now}      # one a reload under way has made is in ports_now
        return running + [{
            "name": name,
            "state": "down",
            "mac": None,
            "mtu": pcfg.mtu,
            "speed": pcfg.speed,
            "remote": pcfg.remote,
            "queues": self.queues,
            "counters": dict.fromkeys((*fastpath.COUNTERS, "rx_missed"), 0),
            "queue_counters": [dict.fromkeys(fastpath.COUNTERS, 0) for _ in range(self.queues)],
            "error": error,
            "queues_down": [],
        } for name, (pcfg, error) in unmade.items() if name not in made]

    def rx_missed(self, ports_now: list[ports.Port]) -> dict[int, int]:
        """Frames each of `ports_now` (the port list as the caller read it: a reload in the
        main thread may swap self.ports between two reads) had its host send to a full
        queue, by port index: the TAP's tx_dropped, kept by the kernel (a queue the worker
        is behind on drops there, before the fast path sees the frame). A port whose device
        is gone keeps the most read: a counter does not go back.
        Lost race, stated: a scrape and `tapswitch ports` read in two threads, and the one that read
        first may keep its count last; the device's count never goes back, so the larger is the later."""
        links = {(p.nsid, p.ifindex): p for p in ports_now if not p.gone}
        try:
            counts = linkmon.tx_dropped(list(links))
        except OSError as e:
            # Out of descriptors (the netlink socket): it raised out of `tapswitch ports` (the
            # connection closed, unanswered) and out of a scrape (HTTP 500). The counts read last
            # stand in for the kernel's meanwhile: a counter does not go back.
            self._unread(e.strerror or str(e), len(links))
            counts = {}
        else:
            self._unread(None, len(links))
        for link, n in counts.items():
            links[link].rx_missed = max(links[link].rx_missed, n)
        return {p.index: p.rx_missed for p in ports_now}

    def _unread(self, error: str | None, ports_asked: int) -> None:
        """rx_missed's read of the kernel's counts failed with `error` (None: it did not): said
        once while it fails with the same error, by whichever thread fails first."""
        if error is None:
            self.unread.over()
        elif self.unread.news(error):
            log.warning("port.rx_missed_failed", ports=ports_asked, error=error,
                        reason="each port's rx_missed stays at its last count until the kernel's can be read")

    # One entry of `tapswitch fdb`, as json.dumps writes its dict: mac, vlan, port, age, static.
    FDB_ITEM = '{"mac": "%s", "vlan": %d, "port": %s, "age": %d, "static": %s}'

    def fdb_info(self, req: dict | None = None) -> Listing:
        """The MAC table, or the entries of it a request picks (`port`, `vlan`, `mac`; all given
        must match), sent as it is read: a table of a million entries is some 80 MB of JSON,
        which a reply built whole would hold several times over before sending a byte."""
        req = req or {}
        want_port = self.port_by_name(req["port"]).index if req.get("port") is not None else None
        want_vlan = vlan_arg(req["vlan"]) if req.get("vlan") is not None else None
        want_mac = mac_arg(req["mac"]) if req.get("mac") is not None else None
        records = self.shared.fdb_records()
        if (want_port, want_vlan, want_mac) != (None, None, None):
            records = (r for r in records if (want_mac is None or r[0] == want_mac)
                       and (want_vlan is None or r[1] == want_vlan) and (want_port is None or r[2] == want_port))
        now = self.shared.now()
        names = {p.index: json.dumps(p.name) for p in self.ports}
        # Said in the reply: a switch older than a filter ignores it and sends the whole table.
        applied = [k for k in ("port", "vlan", "mac") if req.get(k) is not None]
        return Listing((self.FDB_ITEM % (mac, vlan, names.get(port) or f'"{port}"', max(0, now - seen),
                                         "true" if static else "false")
                        for mac, vlan, port, static, seen in records), encoded=True, filters=applied or None)

    def fdb_flush(self, port_name: str | None) -> int:
        index = None if port_name is None else self.port_by_name(port_name).index
        with self.static_lock:      # not while the control loop recounts the table (maintain_fdb)
            flushed = self.shared.fdb_flush(index)
        log.info("fdb.flushed", port=port_name or "*", entries=flushed)
        return flushed

    # Stopping.

    def stop(self) -> None:
        """Undo everything start did, in reverse; safe after a partial start."""
        self._undo()
        log.info("switch.stopped", switch=self.name)

    def _undo(self) -> None:
        """stop() without saying the switch stopped: a failed start has said why it ends. Each
        step is taken whatever became of those before it: one that raises is logged
        (switch.undo_failed) and the rest still goes, so that nothing is left that could go."""
        self.undoing = True         # a control request from here on is told the switch is stopping
        _ignore_stop_signals()
        # A `tapswitch reload` that asked before (while another reload ran, or the switch started)
        # waits for a reload that will not come now: told so at once. It waited until the switch
        # had gone, and then said the switch "closed the connection".
        waiters, self.reload_waiters = self.reload_waiters, []
        for waiter in waiters:
            waiter.set_exception(ControlError("the switch is stopping"))
        notify("STOPPING=1")
        if self.metrics_server is not None:
            with _undo_step("metrics"):
                stop_serving(self.metrics_server)
                self.metrics_server.server_close()
            self.metrics_server = None
        control, self.control = self.control, None
        if control is not None:
            with _undo_step("control"):
                control.stop()
        if self.supervisor is not None:
            with _undo_step("workers"):
                self.supervisor.stop()
            self.supervisor = None
        if self.monitor is not None:
            with _undo_step("link_monitor"):
                self.monitor.close()
            self.monitor = None
        attached = {p.cfg.remote for p in self.ports if p.remote is not None}
        closed = []
        for port in reversed(self.ports):
            with _undo_step("port", port=port.name):
                port.close()
                closed.append(port)
        self.ports = []     # a new list: a scrape let in before the stop keeps the one it read
        # A worker killed with io_uring keeps copies of its queues in its ring a moment after it
        # died (ports.wait_gone): the stop ends once the devices are gone, so that a start right
        # after it (`systemctl restart`) finds their names free. One wait for them all.
        deadline = time.monotonic() + ports.GONE_WAIT
        for port in closed:
            with _undo_step("port", port=port.name):
                if not ports.wait_gone(port, max(0.0, deadline - time.monotonic())):
                    log.warning("port.device_lingers", port=port.name)
                log.info("port.removed", port=port.name)
        with _undo_step("state"):
            # Ours are detached; one not given back keeps its original state listed: its detach failed
            # (logged), or it was away in another namespace (remote.gone), also one whose port a reload
            # removed meanwhile; as does a dead run's that this run did not get to attach (a failed
            # start): the next start heals them.
            # A dead run's remote that a port of this run took over and gave back (its attach
            # failed, undone) is healed: not kept, though no port of this run has it attached.
            kept = (self.inherited_remotes - attached - self.state.given_back) | set(self.state.originals)
            dead = self.unhealed
            self.state.remotes = sorted(kept | set(dead.remotes))
            self.state.originals = {**{r: o for r, o in self.state.originals.items() if r in kept},
                                    **{r: o for r, o in dead.originals.items() if r in dead.remotes}}
        with _undo_step("namespaces"):
            self.namespaces.remove_created()
        if self.unhealed.netns:                             # not looked at: for the next start
            with _undo_step("state"):
                self.state.netns.update(self.unhealed.netns)
                self.state.save()
        if self.shared is not None:
            with _undo_step("shared_memory"):
                # The servers are stopped: no request or scrape comes in now, but one may still read.
                if self.shared_readers.close(READERS_WAIT):
                    self.shared.close()
                else:       # left mapped (the process ends soon): unmapped, the reader would crash it
                    log.warning("switch.readers_left", seconds=READERS_WAIT)
            self.shared = None
        if control is not None:
            with _undo_step("control_lock"):
                control.release()        # last: the state file beside the socket is ours until it is let go

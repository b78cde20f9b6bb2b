"""Ports: bring a TAP port up (device, MAC, MTU, namespace, name, addresses, link) and take it down.

The order matters and is the same for every port: open the queues (the
device appears, down, in the switch's namespace, or in the port's when the
switch made that one), move it into its namespace, then name, MAC, MTU,
queue length and up in one request there, then the addresses. Closing the
queue fds removes the device, wherever it is by then. Ports are made
several at once (create_all); their netlink requests go through rtnl.py.

A VXLAN port is a remote port whose IFACE tapswitch makes: the kernel's
VXLAN device (vxlan.py), attached in promisc mode. Its MTU, and that of
every port without one of its own, comes from the underlay (`plan`).
Otherwise a remote port without `mtu` leaves IFACE's MTU alone and takes it.
A remote port's TAP, and a VXLAN device, get IPv6 turned off before they
come up (quiet.py): they carry the switch's frames, not the host's.
"""

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass, field

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tapswitch import linkmon, netns, quiet, remote, rtnl, tap, tc, vxlan
from tapswitch.config import IPV6_MIN_MTU
from tapswitch.remote import RemoteAttachment
from tapswitch.runstate import RunState, SaveError
from tapswitch.saidonce import SaidOnce

log = structlog.get_logger("tapswitch.ports")

IFA_F_NODAD = 0x02
AT_ONCE = 16      # ports create_all makes at the same time
TAP_MTU_MAX = 65521   # a TAP's largest MTU (tun's: 64 KiB less the Ethernet header)
GONE_WAIT = 2.0   # seconds a removed port's device may take to go (wait_gone): a dead worker's io_uring lets go late


class PortError(Exception):
    """A port could not be brought up; the message is one line for the user."""


@dataclass
class Port:
    """A port of the running switch: its slot in the port table and its TAP."""

    index: int                 # slot in the shared port table
    cfg: object                # config.Port
    fds: list[int]             # one per queue; queue q is served by worker q
    mac: str                   # the TAP's, as its host set it last (link events)
    nspath: str | None         # the namespace the TAP lives in; None = the switch's
    ifindex: int               # in that namespace
    up: bool = True            # forwarding: links_up, as the port table has it
    tap_up: bool = True        # TAP admin up and carrier on
    gone: bool = False         # the TAP went: deleted, moved out of its namespace, or that namespace went
    netns_id: tuple[int, int] = tap.UNKNOWN_NETNS   # the namespace the TAP was put in (tap.device_netns)
    nsid: int = -1             # the id of its namespace as seen from the switch's (link events)
    remote: RemoteAttachment | None = None    # remote: IFACE attached through tc
    remote_ifindex: int | None = None         # IFACE's ifindex; None while IFACE is missing
    remote_up: bool = True
    tunnel: vxlan.Tunnel | None = None         # a VXLAN port's device (its remote)
    underlay_fault: str | None = None    # a VXLAN port: why its tunnel cannot carry, as last logged
                                         # (vxlan.underlay_down); None: it can
    # A remote port: why following IFACE's new MAC failed, until it is followed
    # (Switch.remote_mac_changed); while it lasts, each tick tries again.
    mac_follow_failed: SaidOnce = field(default_factory=SaidOnce)
    # A remote port: why attaching IFACE that came back failed (out of descriptors, or refused:
    # held by another switch, a foreign filter...), until it is attached or gone again
    # (Switch.remote_changed); while it lasts, each tick tries again.
    attach_failed: SaidOnce = field(default_factory=SaidOnce)
    attach_failed_index: int | None = None   # IFACE's ifindex whose attach failed, while attach_failed lasts:
                                             # its own link events do not try again, the tick does
    attach_wait: float = 0.0    # seconds the tick waits before it tries again (Switch.remote_changed)
    attach_at: float = 0.0      # monotonic: the tick's next try from then
    mtu: int = 0               # the TAP's, when its host changed it (link events), or, a remote
                               # port without `mtu`, IFACE's it follows; 0: the config's
    rx_missed: int = 0         # the TAP's tx_dropped as last read; kept when the TAP is gone

    @property
    def effective_mtu(self) -> int:
        """The port's MTU: its TAP's, as its host set it last (a remote port without `mtu`: IFACE's);
        the switch sends it no larger frame."""
        return self.mtu or self.cfg.mtu

    @property
    def frame_max(self) -> int:
        """The longest frame, tags and all, the port's link carries (a VXLAN port: its tunnel,
        vxlan.frame_max); 0: no bound but the MTU."""
        return self.tunnel.frame_max if self.tunnel is not None else 0

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def underlay_up(self) -> bool:
        return self.underlay_fault is None

    @property
    def links_up(self) -> bool:
        """What the port's state follows: its TAP, its remote (IFACE, or a VXLAN port's device)
        and a VXLAN port's underlay, which the kernel does not pass on to the VXLAN device."""
        return self.tap_up and self.remote_up and self.underlay_up

    def close(self) -> None:
        """Detach the remote (and remove a VXLAN port's device), then close the queues:
        the kernel removes the TAP with the last one."""
        if self.remote is not None:
            _detach(self.remote)
            self.remote = None
        if self.tunnel is not None:
            _remove_tunnel(self.tunnel)
            self.tunnel = None
        _close(self.fds)
        self.fds = []


def wait_gone(port: Port, timeout: float = GONE_WAIT) -> bool:
    """After close(): wait until the port's TAP device is gone, so that a port made again under
    its names finds them free. The kernel removes the device with the last fd of its queues; a
    worker that died with io_uring leaves copies of them in its ring for a moment more (its
    teardown is deferred). False if the device is still there after `timeout` seconds, or could
    not be looked at in that time.

    On a socket of ours (rtnl): one descriptor, which the queues just closed leave free. At the
    descriptor limit pyroute2's IPRoute could not be made (it takes four), the socket handed to
    it was left open, and the failure was taken for the namespace gone: the port was made again
    at once, beside its old device, and the reload's next open (EMFILE) ended the switch."""
    if port.gone:
        return True
    deadline = time.monotonic() + timeout
    here = None
    try:
        while True:
            try:
                if here is None:
                    here = rtnl.Rtnl(netns.netlink_socket(port.nspath))
                if here.get_link(port.ifindex) is None:
                    return True
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE):
                    return True          # its namespace is gone (ENOENT...), and the device with it
                # Out of descriptors: not known yet; another look once one is free.
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
    finally:
        if here is not None:
            here.close()


def random_mac() -> str:
    """A random locally administered unicast MAC."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def macs_kept(cfgs: list, had: dict[str, str], in_use: set[str],
              statics: Iterable[tuple[str, str, int]] = ()) -> dict[str, str]:
    """The MAC that each port of `cfgs` made again without `mac:` gets back: the one it had when
    it went (`had`, by name), its host's own if the switch followed it (Switch.tap_settings_changed).
    Its peers' neighbour caches hold that one, and no announcement tells them of another: a fresh
    random MAC left them sending to the old one, unanswered, until their entries went stale
    (15 s and more). Not one that another port has (`in_use`) or is given by `mac:` now: two
    ports with one MAC make the switch learn it on whichever sent last. Nor one static on
    another port in a VLAN of the port's (`statics`: mac, port name, vlan), as check refuses a
    port's `mac` there: the static entry, never moved by learning, sent its frames to that port.
    Two ports of `cfgs` that had the same one (a port taken out, its host's MAC then set on
    another's TAP, both made in one reload) both got it: it goes to the one that had it last,
    as `had` lists them (the latest last)."""
    taken = in_use | {c.mac for c in cfgs if c.mac}
    statics = list(statics)
    kept = {}
    for name in reversed(had):
        c = next((c for c in cfgs if c.name == name), None)
        if c is None or c.mac or had[name] in taken:
            continue
        if any(mac == had[name] and port != name and vlan in c.vlans for mac, port, vlan in statics):
            continue
        kept[name] = had[name]
        taken.add(had[name])
    return kept


def iproute(nspath: str | None) -> IPRoute:
    """A netlink route socket in the namespace at `nspath` (None: our own)."""
    if nspath is None:
        return IPRoute()
    return IPRoute(fileno=netns.netlink_socket(nspath).detach())


def _lookup(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise PortError(f"device {name} vanished while being set up")
    return found[0]


def _index(sock, name: str) -> int:
    """_lookup in sock's namespace, by ioctl: a netlink round trip less."""
    index = rtnl.index_of(sock, name)
    if index is None:
        raise PortError(f"device {name} vanished while being set up")
    return index


def _move(here: rtnl.Rtnl, ifindex: int, nspath: str) -> None:
    nsfd = os.open(nspath, os.O_RDONLY | os.O_CLOEXEC)
    try:
        here.link_set(ifindex, net_ns_fd=nsfd)
    finally:
        os.close(nsfd)


def _rtnl_in(nspath: str | None, names: list[str]) -> tuple[rtnl.Rtnl, list[int]]:
    """A route socket in the namespace at nspath (None: ours) and the indexes there of the
    devices `names` (by ioctl: no netlink round trip)."""
    def make():
        sock = rtnl.route_socket()
        try:
            return sock, [_index(sock, n) for n in names]
        except BaseException:
            sock.close()
            raise
    sock, indexes = netns.call_in(nspath, make)
    return rtnl.Rtnl(sock), indexes


def _open(cfg, devname: str, queues: int, inside: str | None) -> list[int]:
    """The port's TAP `devname` and its queue fds, made in the namespace at `inside`
    (None: here)."""
    where = f" in namespace {cfg.netns}" if inside is not None else ""
    return netns.call_in(inside, lambda: tap.open_queues(devname, queues, port=cfg.name, where=where))


def _configure_inside(there: rtnl.Rtnl, cfg, ifindex: int, devname: str, mac: str, queue_len: int) -> None:
    """Name, MAC, MTU, queue length and up in one message (the kernel applies them in that
    order: the rename happens while the TAP is still down), then the addresses."""
    rename = {"ifname": cfg.ifname} if cfg.ifname and cfg.ifname != devname else {}
    try:
        there.link_set(ifindex, up=True, address=mac, mtu=cfg.mtu, txqlen=queue_len, **rename)
    except NetlinkError as e:
        if rename and e.code == errno.EEXIST:
            raise PortError(f"port {cfg.name}: a device named {cfg.ifname} already exists "
                            f"in namespace {cfg.netns}") from None
        raise
    for iface in cfg.addresses:
        try:
            there.addr_add(ifindex, iface, IFA_F_NODAD if iface.version == 6 else 0)
        except NetlinkError as e:
            where = f" in namespace {cfg.netns}" if cfg.netns else ""
            raise PortError(f"port {cfg.name}: cannot add address {iface}{where}: "
                            f"{os.strerror(e.code)}{_address_hint(iface, e.code, cfg.mtu)}") from None


def _address_hint(iface, code: int, mtu: int) -> str:
    """Why the kernel refused an address, where its errno alone does not say."""
    if iface.version == 6 and code == errno.EACCES:
        return " (IPv6 is disabled there: sysctl net.ipv6.conf.all.disable_ipv6 or .default.disable_ipv6)"
    if iface.version == 6 and code == errno.EINVAL and mtu < IPV6_MIN_MTU:
        return f" (IPv6 needs an MTU of {IPV6_MIN_MTU} or more; the port's is {mtu})"
    return ""


def carried_mtus(cfgs: list, known: dict[str, int] | None = None) -> dict[str, int]:
    """name -> the largest MTU each VXLAN port's tunnel carries (untagged), as its underlay's MTU
    says now; `known`'s for a port in it (a running port whose device a reload keeps: what the
    segment's MTUs were set with; its underlay, which may be down or without local meanwhile, is
    not looked at: vxlan.Tunnel.check_kept). PortError for a `dev` no device has, known or not, a
    `local` no device holds (not known), or a remote host that is this one."""
    known = known or {}
    carried = {}
    if not any(c.vxlan for c in cfgs):
        return carried
    with IPRoute() as ipr:
        for c in cfgs:
            if c.vxlan:
                # A kept tunnel's underlay is not looked at: it may be down, or without local, now.
                tunnel = _tunnel(ipr, c)
                try:
                    if c.name in known:
                        tunnel.check_kept()
                        carried[c.name] = known[c.name]
                    else:
                        carried[c.name] = tunnel.carried_mtu()
                except vxlan.VxlanError as e:
                    raise PortError(f"port {c.name}: {e}") from None
    return carried


def plan(cfgs: list, mirrors: list = (), carried: dict[str, int] | None = None) -> list:
    """The ports' configs as they are made: a VXLAN port is a promisc remote port on its device,
    and beside VXLAN ports every MTU fits the narrowest tunnel (vxlan.segment_mtus), the tag of
    what a port sends tagged included (vxlan.sends_tagged: `mirrors` says which ports get copies).
    `carried`: what each VXLAN port's tunnel carries (carried_mtus; by default, as their underlays
    say now). PortError for a port that cannot fit, before anything is made."""
    if not any(c.vxlan for c in cfgs):
        return list(cfgs)
    if carried is None:
        carried = carried_mtus(cfgs)
    tagged = vxlan.sends_tagged({c.name for c in cfgs if c.trunk}, [(m.from_, m.to) for m in mirrors])
    try:
        mtus = vxlan.segment_mtus([vxlan.PortMtu(c.name, c.mtu if c.mtu_given else None, carried.get(c.name), c.mtu,
                                                 tagged=bool(c.vxlan) and c.name in tagged) for c in cfgs])
    except vxlan.VxlanError as e:
        raise PortError(str(e)) from None
    # The segment decides every MTU: given by update (so mtu_given), a remote port's IFACE is set to it.
    return [c.model_copy(update={"mtu": mtu, **_as_remote(c)}) if c.mtu != mtu or c.vxlan or not c.mtu_given else c
            for c, mtu in zip(cfgs, mtus)]


def sets_remote_mtu(cfg) -> bool:
    """Does the switch set IFACE's MTU (to the port's)? Only if the config (or a VXLAN
    segment, `plan`) gives one; else IFACE keeps its own and the port takes it."""
    return cfg.mtu_given


def _as_remote(cfg) -> dict:
    """A VXLAN port's settings as a remote port: its device, promisc."""
    return {"remote": vxlan.device_name(cfg.name), "remote_mode": "promisc"} if cfg.vxlan else {}


def create(index: int, cfg, queues: int, queue_len: int, namespaces, kept_mac: str | None = None) -> Port:
    """Make port `cfg` ready for forwarding, with `queues` queues of `queue_len` frames each
    (switch.queue_len), or raise PortError leaving nothing behind. `kept_mac`: its MAC if the
    config gives none, instead of a random one (macs_kept).

    A namespace created for it stays in `namespaces.created` for the caller
    to remove.
    """
    try:
        return _create(index, cfg, queues, queue_len, namespaces, kept_mac)
    except SaveError as e:      # what it was about to make could not be written down first: not made
        raise PortError(f"port {cfg.name}: {e}") from None
    except OSError as e:
        # Its container's process ended (pid:N, /proc/N/ns/net), or `ip netns del` came, after
        # ensure() found the namespace: each later step that enters it says only ENOENT and a path.
        if e.errno in (errno.ENOENT, errno.ESRCH) and cfg.netns_path is not None and _gone(cfg.netns_path):
            raise PortError(f"port {cfg.name}: network namespace {cfg.netns} went away "
                            f"while the port was being made") from None
        raise


def _gone(nspath: str) -> bool:
    """Is the namespace at `nspath` known to be gone? Not if that cannot be told (EMFILE):
    the step's own error is said then."""
    try:
        return not netns.is_netns(nspath)
    except OSError:
        return False


def _create(index: int, cfg, queues: int, queue_len: int, namespaces, kept_mac: str | None) -> Port:
    nspath = namespaces.ensure(cfg)
    # In a namespace the switch made (and removes), the TAP is made inside: moving a device
    # between namespaces costs the kernel a grace period, ~20 ms a port here. In anyone
    # else's, it is made here and moved, because a queue fd opened inside would keep that
    # namespace alive after its owner deleted it.
    inside = nspath if nspath is not None and cfg.netns in namespaces.created else None
    devname = (cfg.ifname or cfg.name) if inside else cfg.name
    fds = _open(cfg, devname, queues, inside)
    attachment = tunnel = None
    try:
        if cfg.vxlan:      # make the VXLAN device, then attach it as any remote, promisc
            tunnel = _make_tunnel(cfg)
            cfg = cfg.model_copy(update=_as_remote(cfg))
        mac = cfg.mac or _default_mac(cfg, kept_mac)
        with rtnl.Rtnl() as here:
            if cfg.remote:     # its TAP (and VXLAN device) only carry frames: no host there (quiet.py)
                quiet.silence(here, _index(here.sock, cfg.name), cfg.name)
                if tunnel is not None:
                    quiet.silence(here, tunnel.ifindex, tunnel.name)
            if nspath is not None and inside is None:
                try:
                    _move(here, _index(here.sock, cfg.name), nspath)
                except NetlinkError as e:
                    if e.code == errno.EEXIST:
                        raise PortError(f"port {cfg.name}: a device named {cfg.name} already exists "
                                        f"in namespace {cfg.netns}") from None
                    raise
            nsid = linkmon.nsid_of(nspath, here)
        there, (ifindex, lo) = _rtnl_in(nspath, [devname, "lo"])
        with there:
            if inside is not None:
                there.link_set(lo, up=True)
            _configure_inside(there, cfg, ifindex, devname, mac, queue_len)
        # Before the remote is attached, which is the last step: a failure (EMFILE: the ioctl
        # opens a descriptor) is undone by the handlers below, which do not detach.
        netns_id = tap.device_netns(fds[0]) or tap.UNKNOWN_NETNS
        if cfg.remote:
            attachment, remote_ifindex = _attach(cfg, namespaces.state)
    except (NetlinkError, tc.TcError) as e:
        detail = _why(e, cfg, tunnel)       # before the tunnel goes: it may tell
        _close(fds)
        _remove_tunnel(tunnel)
        raise PortError(f"port {cfg.name}: {detail}") from None
    except vxlan.VxlanError as e:
        _close(fds)
        _remove_tunnel(tunnel)
        raise PortError(str(e)) from None
    except BaseException:
        _close(fds)
        _remove_tunnel(tunnel)
        raise
    port = Port(index=index, cfg=cfg, fds=fds, mac=mac, nspath=nspath, ifindex=ifindex, nsid=nsid, netns_id=netns_id)
    if attachment is not None:
        port.remote, port.remote_ifindex = attachment, remote_ifindex
        if attachment.mtu is None:      # the port takes IFACE's MTU (its TAP has it: _attach)
            port.mtu = tap_mtu(attachment.iface_mtu)
    log.info("port.added", port=cfg.name, index=index, mac=mac, mtu=port.effective_mtu,
             netns=cfg.netns, ifname=cfg.ifname or cfg.name, queues=queues, queue_len=queue_len)
    port.tunnel = tunnel
    return port


def _why(e: NetlinkError | tc.TcError, cfg, tunnel: vxlan.Tunnel | None) -> str:
    """create()'s reason for a netlink or tc step that failed: the kernel's errno, unless more is known."""
    if tunnel is not None and isinstance(e, NetlinkError) and e.code == errno.EADDRINUSE:
        return vxlan.port_in_use(tunnel.dstport)   # the kernel binds it as the device comes up
    # Deleted (or renamed, moved) after the start found it: the kernel says only ENODEV.
    if tunnel is not None and not _exists_here(tunnel.name):    # the kernel deletes it with its underlay
        try:
            fault = tunnel.underlay_fault()
        except (NetlinkError, OSError):
            fault = None
        return f"VXLAN device {tunnel.name} went away while it was being attached" + (f" ({fault})" if fault else "")
    if tunnel is None and cfg.remote and not _exists_here(cfg.remote):
        return f"remote {cfg.remote} went away while it was being attached"
    return os.strerror(e.code) if isinstance(e, NetlinkError) and e.code else str(e)


def create_all(wanted: list[tuple[int, object]], queues: int, queue_len: int, namespaces,
               kept_macs: dict[str, str] | None = None) -> list:
    """create() for each (index, cfg) in `wanted`, up to AT_ONCE ports at a time; returns, in
    the same order, each port's Port or the exception that stopped it. `kept_macs`: port name ->
    the MAC it gets back if the config gives none (macs_kept).

    Most of a port's time is the kernel's: moving its TAP into a namespace waits for an RCU
    grace period (~20 ms a port here, one after the other; 16 moves side by side take 0.3 s
    instead of 0.4), and while one port waits, the others' netlink round trips go on.
    If the caller is interrupted meanwhile (a stop signal), the ports under way are
    finished, every port made is closed, and the interrupt goes on.
    """
    pool = futures.ThreadPoolExecutor(max_workers=AT_ONCE, thread_name_prefix="port")
    made, every = [], []    # every: each Port made, also one whose future an interrupt kept from `made`

    def make(index: int, cfg) -> Port:
        port = create(index, cfg, queues, queue_len, namespaces, kept_macs.get(cfg.name) if kept_macs else None)
        every.append(port)
        return port

    try:
        for index, cfg in wanted:
            made.append(pool.submit(make, index, cfg))
        futures.wait(made)
    except BaseException:
        _close_when_made(pool, every)
        raise
    pool.shutdown()
    return [f.exception() or f.result() for f in made]


def _close_when_made(pool: futures.ThreadPoolExecutor, every: list) -> None:
    """Let no port that is still waiting start, wait for those under way, however many more stop
    signals come, and close every port made. A stop signal's KeyboardInterrupt may land inside
    pool.submit() after the port was queued: so the ports are counted as they are made, not by
    the futures that got back to the caller."""
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            break
        except KeyboardInterrupt:
            continue
    for port in every:
        while True:
            try:
                port.close()
                break
            except KeyboardInterrupt:
                continue


def _tunnel(ipr: IPRoute, cfg) -> vxlan.Tunnel:
    v = cfg.vxlan
    return vxlan.Tunnel(ipr, cfg.name, v.vni, v.local, v.remotes, v.dstport, v.dev)


def _make_tunnel(cfg) -> vxlan.Tunnel:
    """The port's VXLAN device, with its remote hosts (vxlan.Tunnel.create)."""
    ipr = IPRoute()     # kept for the life of the device: remote updates, removal
    try:
        tunnel = _tunnel(ipr, cfg)
        tunnel.create()
    except BaseException:
        ipr.close()
        raise
    _let_go_here(ipr)
    return tunnel


def remake_tunnel(port: Port) -> None:
    """A VXLAN port whose device went (vxlan.Tunnel.gone): make it again, with IPv6 off before it
    comes up, as create() does, and up; its link event then attaches it (Switch.remote_changed).
    PortError while it cannot be made (its underlay is not back yet, or, back, carries less
    than the port's MTU, which was set at start; its UDP port is taken)."""
    tunnel = port.tunnel

    def silence(ifindex: int) -> None:
        with rtnl.Rtnl() as here:
            quiet.silence(here, ifindex, tunnel.name)

    try:
        tunnel.create(mtu=port.cfg.mtu, before_up=silence)
    except vxlan.VxlanError as e:
        raise PortError(str(e)) from None
    except (NetlinkError, OSError) as e:
        raise PortError(f"port {port.name}: {os.strerror(e.code) if isinstance(e, NetlinkError) else e}") from None


def update_tunnel(port: Port) -> str | None:
    """After a reload: give a VXLAN port's device the remote hosts of its new config, touching
    nothing else (a change of vni, local, dstport or dev makes the port again, or waits for a
    restart). Returns why that failed (logged; the next reload tries again), or None."""
    t, v = port.tunnel, port.cfg.vxlan
    if t is None or v is None:
        return None
    if (t.vni, t.local, t.dstport, t.dev) != (v.vni, str(v.local), v.dstport, v.dev):
        log.warning("vxlan.restart_needed", port=port.name, detail="only remotes change by reload")
    try:
        t.update_remotes(v.remotes)
    except vxlan.VxlanError as e:
        error = str(e)
    except NetlinkError as e:       # removing a host's entries
        error = f"port {port.name}: cannot update its remote hosts: {os.strerror(e.code) if e.code else e}"
    else:
        return None
    log.error("vxlan.update_failed", port=port.name, error=error)
    return error


def _undo(step, ipr: IPRoute, event: str, **fields) -> None:
    """A stop step that must not cut the stop short: log what may be left, close its netlink socket."""
    try:
        step()
    except Exception as e:
        log.error(event, error=str(e), **fields)
    finally:
        ipr.close()


def _remove_tunnel(tunnel: vxlan.Tunnel | None) -> None:
    if tunnel is not None:
        _undo(tunnel.remove, tunnel.ipr, "vxlan.remove_failed", port=tunnel.port, dev=tunnel.name)


def _default_mac(cfg, kept_mac: str | None) -> str:
    """A port's MAC when none is given: IFACE's in local mode (as the seed does), else the one
    it had before it was made again (`kept_mac`), else random."""
    if cfg.remote:
        with IPRoute() as ipr:
            if not ipr.link_lookup(ifname=cfg.remote):
                raise PortError(f"port {cfg.name}: remote {cfg.remote} does not exist")
            try:
                remote.refuse_unless_ethernet(ipr, cfg.remote)     # before the port's TAP is made
            except tc.TcError as e:
                raise PortError(f"port {cfg.name}: {e}") from None
            if cfg.remote_mode == "local":
                return remote.default_mac(ipr, cfg.remote)
    return kept_mac or random_mac()


def _exists_here(name: str) -> bool:
    """Is there a device `name` in the switch's namespace? True when that cannot be told (out
    of descriptors): only a failure's reason asks, and it must not fail in its turn."""
    try:
        with rtnl.Rtnl() as here:
            return rtnl.index_of(here.sock, name) is not None
    except OSError:
        return True


def tap_mtu(iface_mtu: int) -> int:
    """The MTU of a remote port's TAP that takes IFACE's: IFACE's, as far as a TAP goes."""
    return min(iface_mtu, TAP_MTU_MAX)


def set_tap_mtu(ipr: IPRoute, tap_ifindex: int, iface_mtu: int) -> int:
    """Give a remote port's TAP (in the switch's namespace) IFACE's MTU; returns the TAP's."""
    mtu = tap_mtu(iface_mtu)
    ipr.link("set", index=tap_ifindex, mtu=mtu)
    return mtu


def _attach(cfg, state: RunState) -> tuple[RemoteAttachment, int]:
    """Steer IFACE's frames into the port's TAP and the TAP's out of IFACE (tc clsact + mirred).
    IFACE's original state goes to the run's state file first. A local port without `mac:`
    has IFACE's MAC (its TAP was given it), and follows it (RemoteAttachment.follows_mac)."""
    ipr = IPRoute()     # kept for the life of the attachment: shared mode updates, detach
    try:
        mtu = cfg.mtu if sets_remote_mtu(cfg) else None
        att = RemoteAttachment(ipr, cfg.name, cfg.remote, cfg.remote_mode, cfg.mac, cfg.allmulti, mtu, state)
        att.attach()
        try:
            if mtu is None:      # the TAP takes IFACE's MTU, as attach() left it
                set_tap_mtu(ipr, _lookup(ipr, cfg.name), att.iface_mtu)
            index = _lookup(ipr, cfg.remote)
        except BaseException:
            att.detach()
            raise
    except BaseException:
        ipr.close()
        raise
    _let_go_here(ipr)
    return att, index


def _let_go_here(ipr: IPRoute) -> None:
    """This thread (one of create_all's) is done with `ipr`, which the control loop's thread
    uses and closes from now on. pyroute2 0.9 keeps an event loop (an epoll and a socket
    pair) for the thread that made an IPRoute, closed only by a close() in that thread: so
    each remote or VXLAN port that a reload removed or remade left three descriptors open,
    until the garbage collector came by. This thread closes its loop now, as pyroute2 does
    after each call from a thread that did not make the IPRoute."""
    if getattr(ipr.asyncore.local, "keep_event_loop", False):
        del ipr.asyncore.local.keep_event_loop
        ipr._cleanup_transport()


class _Loop(asyncio.SelectorEventLoop):
    """The event loop pyroute2 makes for each call from a thread other than its IPRoute's (the
    control loop's, on a remote port's). Out of descriptors, asyncio's was left half made (its
    epoll, not its self-pipe): it held the epoll until the garbage collector came by, and its
    __del__, closing a self-pipe it did not have, printed 'Exception ignored ... _ssock'
    tracebacks, two for each attach of a remote port tried. This one closes what it made, and
    is closed."""

    def __init__(self, selector=None) -> None:
        try:
            super().__init__(selector)
        except BaseException:
            for made in (getattr(self, "_ssock", None), getattr(self, "_csock", None),
                         getattr(self, "_selector", None)):
                if made is not None:
                    made.close()
            self._closed = True
            raise


class _LoopPolicy(asyncio.DefaultEventLoopPolicy):
    _loop_factory = _Loop


def quiet_event_loops() -> None:
    """pyroute2's event loops, in this process, are _Loops (asyncio.new_event_loop makes them)."""
    asyncio.set_event_loop_policy(_LoopPolicy())


def _detach(att: RemoteAttachment) -> None:
    _undo(att.detach, att.ipr, "remote.detach_failed", tap=att.tap_ifname, remote=att.remote_ifname)


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

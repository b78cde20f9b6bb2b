"""Ports: bring a TAP port up (device, MAC, MTU, namespace, name, addresses, link) and take it down.

The order matters and is the same for every port: open the queues (the
device appears, down, in the switch's namespace), set MAC and MTU, move it
into its namespace, rename it there, add addresses, set it up. Closing the
queue fds removes the device, wherever it is by then.
"""

import contextlib
import os
from dataclasses import dataclass, field

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tapswitch import netns, tap

log = structlog.get_logger("tapswitch.ports")

IFA_F_NODAD = 0x02


class PortError(Exception):
    """A port could not be brought up; the message is one line for the user."""


@dataclass
class Port:
    """A port of the running switch: its slot in the port table and its TAP."""

    index: int                 # slot in the shared port table
    cfg: object                # config.Port
    fds: list[int]             # one per queue; queue q is served by worker q
    mac: str
    nspath: str | None         # the namespace the TAP lives in; None = the switch's
    ifindex: int               # in that namespace
    up: bool = True            # TAP admin up and carrier on
    gone: bool = False         # the TAP device was deleted (its namespace died)
    nsid: int = -1             # the id of its namespace as seen from the switch's (link events)
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.cfg.name

    def close(self) -> None:
        """Close the queues; the kernel removes the TAP device with the last one."""
        _close(self.fds)
        self.fds = []


def random_mac() -> str:
    """A random locally administered unicast MAC."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


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


def _move(ipr: IPRoute, ifindex: int, nspath: str) -> None:
    nsfd = os.open(nspath, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ipr.link("set", index=ifindex, net_ns_fd=nsfd)
    finally:
        os.close(nsfd)


def _configure_inside(ipr: IPRoute, cfg, ifindex: int) -> int:
    """Rename, address and raise the TAP inside its namespace; return its ifindex."""
    if cfg.ifname and cfg.ifname != cfg.name:
        if ipr.link_lookup(ifname=cfg.ifname):
            raise PortError(f"port {cfg.name}: {cfg.ifname} already exists in namespace {cfg.netns}")
        ipr.link("set", index=ifindex, ifname=cfg.ifname)
    for iface in cfg.addresses:
        extra = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
        ipr.addr("add", index=ifindex, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra)
    ipr.link("set", index=ifindex, state="up")
    return ifindex


def create(index: int, cfg, queues: int, namespaces) -> Port:
    """Make port `cfg` ready for forwarding, or raise PortError leaving nothing behind.

    A namespace created for it stays in `namespaces.created` for the caller
    to remove.
    """
    fds = tap.open_queues(cfg.name, queues)
    try:
        mac = cfg.mac or random_mac()
        with IPRoute() as ipr:
            ifindex = _lookup(ipr, cfg.name)
            ipr.link("set", index=ifindex, address=mac, mtu=cfg.mtu)
            nspath = namespaces.ensure(cfg)
            if nspath is not None:
                _move(ipr, ifindex, nspath)
        with iproute(nspath) as ipr:
            if nspath is not None:
                ifindex = _lookup(ipr, cfg.name)
                if cfg.netns in namespaces.created:
                    ipr.link("set", index=_lookup(ipr, "lo"), state="up")
            ifindex = _configure_inside(ipr, cfg, ifindex)
    except NetlinkError as e:
        _close(fds)
        raise PortError(f"port {cfg.name}: {os.strerror(e.code) if e.code else e}") from None
    except BaseException:
        _close(fds)
        raise
    log.info("port.added", port=cfg.name, index=index, mac=mac, mtu=cfg.mtu,
             netns=cfg.netns, ifname=cfg.ifname or cfg.name, queues=queues)
    return Port(index=index, cfg=cfg, fds=fds, mac=mac, nspath=nspath, ifindex=ifindex)


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

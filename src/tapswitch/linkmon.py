"""Link monitor: follows the link state of port devices over RTMGRP_LINK, in every namespace, from one socket.

The socket lives in the switch's own namespace and listens to all peer
namespaces (NETLINK_LISTEN_ALL_NSID); the kernel tags each message with the
nsid of the namespace it came from. Nothing is held open inside a
container's namespace, so a container that dies takes its namespace (and
the TAP in it) with it, and the monitor sees the TAP go.

A namespace that dies is different: the kernel forgets its nsid before it
tears its devices down, so no event reaches us; tap.attached() notices
instead (see Switch.maintain_ports).

TAP devices report operstate UNKNOWN, so "up" here is IFF_UP and
IFF_LOWER_UP (carrier), as the seed's tap_link_update reads it.

Asked to (`addresses=True`), the same socket also hears addresses come and
go (RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR): a VXLAN port cannot carry
without its `local` address, and the kernel keeps the VXLAN device up with
carrier when the address goes.

Asked to (`filters=True`), it also hears tc filters come and go (RTMGRP_TC)
in tapswitch's priorities on a clsact ingress: a remote port's IFACE may get
one of its user's there while attached (RemoteAttachment.check_foreign); and
a clsact qdisc deleted (ClsactEvent), which takes tapswitch's rules with it.

tx_dropped() reads the ports' kernel counters the same way, from the
switch's namespace by nsid (IFLA_TARGET_NETNSID): what a port's full queue
lost before the switch read it.
"""

import errno
import ipaddress
import os
import socket
import struct
from typing import NamedTuple

from pyroute2.netlink.exceptions import NetlinkError

from tapswitch import tc
from tapswitch.rtnl import NLM_F_REQUEST, NLMSG_ERROR, NLMSG_HDR, NSID_NONE, Rtnl, messages, route_socket

RTMGRP_LINK, RTMGRP_TC, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x8, 0x10, 0x100
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_DELQDISC = 37
RTM_NEWTFILTER, RTM_DELTFILTER = 44, 45
TCMSG = struct.Struct("B3xiIII")        # struct tcmsg: family, index, handle, parent, info
IFINFO = struct.Struct("BxHiII")        # struct ifinfomsg: family, type, index, flags, change
IFADDR = struct.Struct("BBBBI")         # struct ifaddrmsg: family, prefix length, flags, scope, index
RTATTR = struct.Struct("HH")            # struct rtattr: length, type
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_STATS64 = 23
IFLA_TARGET_NETNSID = 46
STATS64_TX_DROPPED = 7 * 8      # struct rtnl_link_stats64: the 8th u64
STATS_BATCH = 32                # links asked at once
SOL_NETLINK = 270
NETLINK_LISTEN_ALL_NSID = 8
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
OWN_NSID = -1            # events from the switch's own namespace carry no peer id
RECV_SIZE = 1 << 16
# The kernel holds events for the socket up to its receive buffer, and drops the rest (ENOBUFS:
# overrun, a full resync). The switch's own tc rules come as events too (RTMGRP_TC), while the
# control loop is busy making them: a shared-mode remote whose MAC set changes all at once adds
# and removes up to tc.U32_NODE_MAX rules in one update (adds go first, into the free handles),
# 4095 events of 1280 bytes (what the kernel charges for one, measured): 5.2 MB. Each tick updates
# every shared remote before the loop reads. So 16 MiB (the kernel doubles what it is asked for:
# socket(7)), three such updates: a limit, not memory held; only events waiting take it.
# SO_RCVBUF is capped at net.core.rmem_max (212992 by default: 416 KiB, 332 events);
# SO_RCVBUFFORCE is not, with CAP_NET_ADMIN, which the switch has.
RCVBUF = 8 << 20
SO_RCVBUFFORCE = 33      # asm-generic/socket.h; Python's socket module does not name it


class LinkEvent(NamedTuple):
    nsid: int            # OWN_NSID for the switch's own namespace
    ifindex: int
    ifname: str | None
    up: bool             # IFF_UP and carrier
    deleted: bool        # RTM_DELLINK
    mtu: int | None = None      # IFLA_MTU
    mac: str | None = None      # IFLA_ADDRESS, as aa:bb:cc:dd:ee:ff


class AddressEvent(NamedTuple):
    nsid: int            # OWN_NSID for the switch's own namespace
    ifindex: int         # the device that holds it, or held it
    address: str | None  # IFA_LOCAL, else IFA_ADDRESS: this host's address, as ipaddress spells it
    deleted: bool        # RTM_DELADDR


class FilterEvent(NamedTuple):
    nsid: int            # OWN_NSID for the switch's own namespace
    ifindex: int
    prio: int            # in tapswitch's range (tc.PRIO_FIRST..PRIO_LAST): no other is reported
    ours: bool           # tapswitch's (its cookie): a rule of a running switch, this one's or another's
    deleted: bool        # RTM_DELTFILTER


class ClsactEvent(NamedTuple):
    """A clsact qdisc deleted (RTM_DELQDISC), by `tc qdisc del`: every filter on it went too,
    and no RTM_DELTFILTER says so. (A device deleted, or moved away, takes its qdiscs unsaid.)"""

    nsid: int            # OWN_NSID for the switch's own namespace
    ifindex: int


def link_up(flags: int) -> bool:
    return bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)


def _attr(data: bytes, at: int, end: int, want: int) -> bytes | None:
    """The payload of link attribute `want` among those in data[at:end], or None."""
    while at + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, at)
        if length < RTATTR.size or at + length > end:
            return None
        if kind == want:
            return data[at + RTATTR.size:at + length]
        at += (length + 3) & ~3
    return None


def ifname(data: bytes, at: int, end: int) -> str | None:
    """IFLA_IFNAME among the link attributes in data[at:end], or None. Parsed here rather
    than by pyroute2's ifinfmsg: a start's few hundred events cost it ~20 ms."""
    value = _attr(data, at, end, IFLA_IFNAME)
    return None if value is None else value.split(b"\0", 1)[0].decode(errors="replace")


def mtu_and_mac(data: bytes, at: int, end: int) -> tuple[int | None, str | None]:
    """IFLA_MTU and an Ethernet IFLA_ADDRESS among the link attributes in data[at:end]."""
    mtu, mac = _attr(data, at, end, IFLA_MTU), _attr(data, at, end, IFLA_ADDRESS)
    return (struct.unpack("I", mtu)[0] if mtu is not None and len(mtu) == 4 else None,
            mac.hex(":") if mac is not None and len(mac) == 6 else None)


def address(data: bytes, at: int, end: int) -> str | None:
    """The host's address (IFA_LOCAL, else IFA_ADDRESS: a point-to-point one's is the peer's)
    among the address attributes in data[at:end], as ipaddress spells it, or None."""
    value = _attr(data, at, end, IFA_LOCAL) or _attr(data, at, end, IFA_ADDRESS)
    return str(ipaddress.ip_address(value)) if value is not None and len(value) in (4, 16) else None


def tx_dropped(links: list[tuple[int, int]], timeout: float = 1.0) -> dict[tuple[int, int], int]:
    """The kernel's tx_dropped counter of each link (nsid, ifindex), asked from the switch's
    namespace (RTM_GETLINK, with IFLA_TARGET_NETNSID for another namespace's link). A TAP
    counts there the frames its host sent that found the queue full. A link the kernel
    does not know (its namespace died) is left out."""
    out: dict[tuple[int, int], int] = {}
    with route_socket() as sock:
        sock.settimeout(timeout)
        for first in range(0, len(links), STATS_BATCH):     # a batch's answers fit the socket's buffer
            seqs = range(first + 1, min(first + STATS_BATCH, len(links)) + 1)     # link i is seq i + 1
            sock.send(b"".join(_getlink(seq, *links[seq - 1]) for seq in seqs))
            answered = 0
            while answered < len(seqs):
                try:
                    data = sock.recv(RECV_SIZE)
                except OSError:              # timed out: what did not answer is left out
                    break
                for seq, stats in _answers(data, seqs):
                    answered += 1
                    if stats is not None and len(stats) >= STATS64_TX_DROPPED + 8:
                        out[links[seq - 1]] = struct.unpack_from("Q", stats, STATS64_TX_DROPPED)[0]
    return out


def _getlink(seq: int, nsid: int, index: int) -> bytes:
    target = b"" if nsid == OWN_NSID else RTATTR.pack(8, IFLA_TARGET_NETNSID) + struct.pack("i", nsid)
    body = IFINFO.pack(0, 0, index, 0, 0) + target
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body


def _answers(data: bytes, seqs: range):
    """(seq, IFLA_STATS64 payload or None for an error) of each answer to one of `seqs` in a
    datagram (a late answer to an earlier batch is not one of them)."""
    for offset, length, kind, seq in messages(data):
        if seq in seqs and kind == RTM_NEWLINK:
            yield seq, _attr(data, offset + NLMSG_HDR.size + IFINFO.size, offset + length, IFLA_STATS64)
        elif seq in seqs and kind == NLMSG_ERROR:
            yield seq, None


def nsid_of(nspath: str | None, here: Rtnl) -> int:
    """The id under which the switch's namespace knows the namespace at nspath (assigned if
    needed); here: a route socket in the switch's namespace."""
    if nspath is None:
        return OWN_NSID
    fd = os.open(nspath, os.O_RDONLY | os.O_CLOEXEC)
    try:
        nsid = here.get_nsid(fd)
        if nsid == NSID_NONE:
            try:
                here.new_nsid(fd)                    # let the kernel pick a free id
            except NetlinkError as e:
                if e.code != errno.EEXIST:           # else someone (another port) just gave it one
                    raise
            nsid = here.get_nsid(fd)
    finally:
        os.close(fd)
    return nsid


class LinkMonitor:
    """One netlink socket subscribed to link events of every namespace."""

    def __init__(self, addresses: bool = False, filters: bool = False) -> None:
        """addresses: report AddressEvents too, beside LinkEvents; filters: FilterEvents."""
        self.overrun = False     # events were lost (ENOBUFS): the owner must re-read link state
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:      # without CAP_NET_ADMIN: as much as rmem_max lets us have
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        groups = (RTMGRP_LINK | (RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR if addresses else 0)
                  | (RTMGRP_TC if filters else 0))
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_LISTEN_ALL_NSID, 1)
            self.sock.bind((0, groups))
        except PermissionError:
            self.sock.close()
            raise PermissionError("listening to the link events of every namespace needs CAP_NET_BROADCAST") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[LinkEvent | AddressEvent | FilterEvent | ClsactEvent]:
        """Drain the waiting link (and address, filter) events. Events lost (`overrun`), it
        drains the socket all the same: the kernel says so once, and drops every later event
        unsaid until the queue is empty. The owner's resync, after this, covers them all."""
        events = []
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(RECV_SIZE, socket.CMSG_SPACE(4))
            except BlockingIOError:
                return events
            except OSError as e:
                self.overrun = True
                if e.errno == errno.ENOBUFS:     # the kernel dropped events for us: read on
                    continue
                return events
            nsid = OWN_NSID
            for level, kind, value in ancdata:
                if level == SOL_NETLINK and kind == NETLINK_LISTEN_ALL_NSID:
                    nsid = struct.unpack("i", value[:4])[0]
            for offset, length, kind, _seq in messages(data):
                if kind in (RTM_NEWLINK, RTM_DELLINK) and length >= NLMSG_HDR.size + IFINFO.size:
                    deleted = kind == RTM_DELLINK
                    _family, _type, index, flags, _change = IFINFO.unpack_from(data, offset + NLMSG_HDR.size)
                    attrs = offset + NLMSG_HDR.size + IFINFO.size, offset + length
                    events.append(LinkEvent(nsid, index, ifname(data, *attrs), not deleted and link_up(flags),
                                            deleted, *mtu_and_mac(data, *attrs)))
                elif kind in (RTM_NEWADDR, RTM_DELADDR) and length >= NLMSG_HDR.size + IFADDR.size:
                    _family, _prefix, _flags, _scope, index = IFADDR.unpack_from(data, offset + NLMSG_HDR.size)
                    attrs = offset + NLMSG_HDR.size + IFADDR.size, offset + length
                    events.append(AddressEvent(nsid, index, address(data, *attrs), kind == RTM_DELADDR))
                elif kind in (RTM_NEWTFILTER, RTM_DELTFILTER) and length >= NLMSG_HDR.size + TCMSG.size:
                    _family, index, _handle, parent, info = TCMSG.unpack_from(data, offset + NLMSG_HDR.size)
                    if parent == tc.INGRESS and tc.PRIO_FIRST <= info >> 16 <= tc.PRIO_LAST:
                        ours = tc.parse_filter(data[offset:offset + length]).ours
                        events.append(FilterEvent(nsid, index, info >> 16, ours, kind == RTM_DELTFILTER))
                elif kind == RTM_DELQDISC and length >= NLMSG_HDR.size + TCMSG.size:
                    _family, index, handle, parent, _info = TCMSG.unpack_from(data, offset + NLMSG_HDR.size)
                    if handle == tc.CLSACT_HANDLE and parent == tc.CLSACT_PARENT:   # an ingress qdisc's too
                        events.append(ClsactEvent(nsid, index))

    def close(self) -> None:
        self.sock.close()


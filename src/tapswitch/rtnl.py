"""The few route-netlink requests a port's set-up and the control loop's looks at a device make, on a plain socket.

pyroute2's IPRoute (0.9) runs an asyncio loop under its synchronous API: opening
one costs ~1 ms here and each request ~0.5 ms, and a port's set-up opened two
and made five or six requests -- most of the control process's CPU time in the
port phase of a start. This sends pyroute2's own messages (ifinfmsg, ifaddrmsg,
nsidmsg) one at a time on a socket of ours and reads the kernel's answer;
a refusal raises pyroute2's NetlinkError, as IPRoute does.
"""

import errno
import fcntl
import ipaddress
import socket
import struct

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR, nlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_GETNSID, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNSID
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.nsidmsg import nsidmsg

NLMSG_HDR = struct.Struct("=IHHII")      # length, type, flags, sequence number, port id
LINK_ATTRS = {"address": "IFLA_ADDRESS", "mtu": "IFLA_MTU", "txqlen": "IFLA_TXQLEN",
              "ifname": "IFLA_IFNAME", "net_ns_fd": "IFLA_NET_NS_FD"}
NSID_NONE = -1
IN6_ADDR_GEN_MODE_NONE = 1               # <linux/if_link.h>: no link-local address (quiet.py)
SIOCGIFINDEX = 0x8933
IFREQ = struct.Struct("16si20x")         # struct ifreq: name, ifindex (the union's first int)


def index_of(sock: socket.socket, name: str) -> int | None:
    """The index of device `name` in sock's namespace, or None if there is none. SIOCGIFINDEX
    on a socket already open: if_nametoindex(3) opens one of its own, and says "no such
    device" for every failure, a process out of descriptors included."""
    try:
        return IFREQ.unpack(fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, IFREQ.pack(name.encode(), 0)))[1]
    except OSError as e:
        if e.errno == errno.ENODEV:
            return None
        raise


def messages(data: bytes):
    """(offset, length, type, sequence number) of each whole netlink message in a datagram."""
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, kind, _flags, seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > len(data):
            return
        yield offset, length, kind, seq
        offset += (length + 3) & ~3


def route_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's namespace (datagram, as pyroute2 wants it too)."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)


class Rtnl:
    """A NETLINK_ROUTE socket (ours, or `sock`: one made in another namespace) that makes one
    request at a time and waits for its answer."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock or route_socket()
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def link_set(self, index: int, up: bool | None = None, **attrs) -> None:
        """RTM_NEWLINK on device `index`: LINK_ATTRS by their keyword; up=True/False sets IFF_UP.
        The kernel applies them in its order (net_ns_fd first, then name, MAC, MTU, state)."""
        msg = ifinfmsg()
        msg["index"] = index
        if up is not None:
            msg["change"] = IFF_UP
            msg["flags"] = IFF_UP if up else 0
        msg["attrs"] = [(LINK_ATTRS[k], v) for k, v in attrs.items()]
        self._request(msg, RTM_NEWLINK)

    def get_link(self, index: int, nsid: int | None = None) -> ifinfmsg | None:
        """Device `index`'s link message (pyroute2's ifinfmsg, decoded), or None if there is none
        (ENODEV); any other failure raises, as the others do. nsid: the device is in the
        namespace this socket's knows by that id (IFLA_TARGET_NETNSID, pyroute2's
        IFLA_IF_NETNSID), not in this socket's; None too once no namespace has that id (EINVAL)."""
        msg = ifinfmsg()
        msg["index"] = index
        if nsid is not None:
            msg["attrs"] = [("IFLA_IF_NETNSID", nsid)]
        try:
            reply = self._request(msg, RTM_GETLINK, NLM_F_REQUEST)
        except NetlinkError as e:
            if e.code == errno.ENODEV or (e.code == errno.EINVAL and nsid is not None):
                return None
            raise
        link = ifinfmsg(reply)
        link.decode()
        return link

    def set_addr_gen_mode(self, index: int, mode: int) -> None:
        """IFLA_AF_SPEC/AF_INET6/IFLA_INET6_ADDR_GEN_MODE of device `index`, as
        `ip link set addrgenmode` does (it is read as the device comes up)."""
        msg = ifinfmsg()
        msg["index"] = index
        msg["attrs"] = [("IFLA_AF_SPEC", {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", mode)]})]})]
        self._request(msg, RTM_NEWLINK)

    def addr_add(self, index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
                 flags: int = 0) -> None:
        """Add `iface` (address/prefix) to device `index`, as `ip address add` does."""
        msg = ifaddrmsg()
        msg["index"] = index
        msg["family"] = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        msg["prefixlen"] = iface.network.prefixlen
        msg["flags"] = flags
        msg["attrs"] = [("IFA_ADDRESS", str(iface.ip))]
        if iface.version == 4:
            msg["attrs"].append(("IFA_LOCAL", str(iface.ip)))
        self._request(msg, RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)

    def get_nsid(self, fd: int) -> int:
        """The id under which this socket's namespace knows the namespace open at fd (NSID_NONE: none yet)."""
        msg = nsidmsg()
        msg["attrs"] = [("NETNSA_FD", fd)]
        reply = nsidmsg(self._request(msg, RTM_GETNSID, NLM_F_REQUEST))
        reply.decode()
        nsid = reply.get_attr("NETNSA_NSID")
        return NSID_NONE if nsid is None or nsid >= 1 << 31 else nsid

    def new_nsid(self, fd: int) -> None:
        """Have the kernel give the namespace open at fd a free id (EEXIST: it has one)."""
        msg = nsidmsg()
        msg["attrs"] = [("NETNSA_NSID", 0xFFFFFFFF), ("NETNSA_FD", fd)]
        self._request(msg, RTM_NEWNSID)

    def _request(self, msg: nlmsg, kind: int, flags: int = NLM_F_REQUEST | NLM_F_ACK) -> bytes | None:
        """Send msg; the kernel's reply (a whole message), or None for a plain ack."""
        self.seq += 1
        msg["header"]["type"] = kind
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = self.seq
        msg.encode()
        self.sock.send(msg.data)
        while True:
            data = self.sock.recv(65536)
            for offset, length, kind_in, seq in messages(data):
                if seq != self.seq:
                    continue
                if kind_in != NLMSG_ERROR:
                    return data[offset:offset + length]
                code = struct.unpack_from("=i", data, offset + NLMSG_HDR.size)[0]
                if code:
                    raise NetlinkError(-code)
                return None

"""quiet: the host sends nothing out of the devices that only carry the switch's frames.

A remote port's TAP stays in the switch's namespace, up, only so that tc can
move frames between it and IFACE (remote.py); a VXLAN port has such a TAP and
the kernel's VXLAN device too. Left as the kernel makes them, the host takes
them for interfaces of its own: with IPv6 on, it gives each a link-local
address and sends duplicate address detection, router solicitations and MLD
reports out of it. Out of the TAP, that goes into the switch, which learns
the TAP's MAC on the port and floods the host's chatter to every other port;
out of a VXLAN device, to every remote host, whose switches do the same. A
phantom host on the segment.

So IPv6 is turned off on them before they come up: the per-device sysctl
`disable_ipv6`, which leaves the host nothing to send there. Where
/proc/sys is read-only (a container that is not --privileged), netlink's
`IFLA_INET6_ADDR_GEN_MODE = none` is what can be done instead: no link-local
address, so no DAD, router solicitation or MLD report for its groups, but a
host that forwards IPv6 still reports its all-routers groups there.

IPv4 needs nothing: the devices have no IPv4 address, so the host sends no
IPv4 out of them on its own. It would if someone gave them one (by hand, or
a DHCP client that takes every interface) or a program joined a multicast
group on them: that makes them a host again, on purpose.

A port with neither netns nor remote is never touched: its TAP is the host's.
"""

import errno
import os

import structlog
from pyroute2.netlink.exceptions import NetlinkError

from tapswitch import rtnl

log = structlog.get_logger("tapswitch.quiet")

SYSCTL = "/proc/sys/net/ipv6/conf/{}/disable_ipv6"     # the device's name as it is, dots too


def silence(here: rtnl.Rtnl, ifindex: int, ifname: str) -> None:
    """Turn IPv6 off on device `ifname` (`ifindex` in here's namespace, which is the calling
    thread's), before it comes up: disable_ipv6, else no link-local address."""
    try:
        with open(SYSCTL.format(ifname), "w") as f:
            f.write("1")
        return
    except OSError as e:  # /proc/sys read-only (EROFS: a container), not mounted, not ours to write
        error = os.strerror(e.errno) if e.errno else str(e)
    try:
        here.set_addr_gen_mode(ifindex, rtnl.IN6_ADDR_GEN_MODE_NONE)
    except NetlinkError as e:
        if e.code != errno.EAFNOSUPPORT:
            raise
        return      # no IPv6 on it (a kernel without IPv6, an MTU under 1280): nothing to send
    log.info("quiet.ipv6_kept", dev=ifname, error=error,
             detail="cannot set disable_ipv6; the device gets no link-local address instead")

"""vxlan: a port's kernel VXLAN device — made for the port, told its remote hosts, and removed with it.

No tunnelling code of our own. For `ports[].vxlan` tapswitch makes a kernel
VXLAN device (`device_name(port)`), and the switch attaches it like any
`remote:` IFACE, in promisc mode (remote.py): what the kernel decapsulates
enters the port, what the switch sends on the port is encapsulated by the
kernel. tapswitch learns the MACs behind the port and floods like on any
other port.

Head-end replication: the device's FDB holds one all-zeros entry per remote
host (`bridge fdb append 00:00:00:00:00:00 dst R dev VX`), so a broadcast,
or a frame for a MAC the kernel does not know, goes once to each remote host.

The kernel's own learning stays on: from each frame it decapsulates, the
device notes which host the source MAC lives behind, and sends unicast for
that MAC to that host only. With learning off every unicast frame would go
to every remote host, and each of them would flood it to its own ports as
an unknown destination. (tapswitch still learns the MAC on the VXLAN port.)

MTU: VXLAN costs 50 bytes over IPv4 (outer IPv4 20, UDP 8, VXLAN 8, the
inner Ethernet header 14), 70 over IPv6 (outer IPv6 40), and a trunk VXLAN
port 4 more: it sends the frames of its tagged VLANs with their 802.1Q tag,
inside the tunnel; so does a VXLAN port that is the monitor port of a mirror of
a trunk: the copies keep the trunk's tags (`sends_tagged`). A frame the underlay cannot carry is fragmented by the
kernel over IPv4 (every full-size frame in two) and lost over IPv6, so the
port MTU derives from the underlay's, and every port in the segment must fit
in it (`segment_mtus`): a port without `mtu:` gets the tunnel's, a port
whose `mtu:` is larger is refused at start. A port's MTU counts what follows
a frame's tags, so a frame with more of them than the port leaves room for
(an 802.1ad frame, a QinQ frame on a trunk, a mirror's copy of a tagged
frame) could still overflow: the fast path takes no frame longer than the
tunnel carries whole (`frame_max`), and counts it as a tx_error. That bound follows the
underlay's MTU as it is now (`Tunnel.carries`, Switch.underlay_changed): one lowered after
the start leaves the ports' MTUs as set, but not the frames that no longer fit uncounted.
GSO frames cross whole: the kernel segments them after encapsulation.

A device left by a run that did not stop (SIGKILL) is found by its alias
(`ALIAS_PREFIX`) and replaced; a device of that name that is not ours is an
error, never touched.

The kernel deletes a VXLAN device with its `dev`: when the underlay device
goes, so does the port's device, and the switch makes it again once the
underlay is back (Switch.maintain_tunnels), as it does one deleted by hand.

An underlay that goes down, or loses `local`, leaves the VXLAN device up
with carrier: the kernel takes every frame and sends none (no route, or no
source address). So the port follows its underlay itself: it is down while
`underlay_fault` says why the tunnel cannot carry (the underlay device,
`dev` or the one holding `local`, down or gone; `local` no device's, or an
IPv6 one that duplicate address detection has not cleared), and up again when
it can (Switch.underlay_changed, on the link monitor's events).

Which device is the underlay is what the kernel uses. Given `dev`, the
device is bound to `dev`'s ifindex when it is made (`Tunnel.bound`), and
sends through that device whatever it is called later: a rename changes
nothing, and a device that takes the name `dev` meanwhile is not the
underlay. Only a device made again (its underlay deleted, then a device
named `dev` back) binds anew, by name. Without `dev`, the kernel routes from
`local`: the underlay is whichever device holds `local` now, and the devices the
routes to the remote hosts leave through (`_routed`: `local` on `lo`, say) bound
its MTU too; their state is not followed (vxlan.underlay_routed says so: give dev).

The decisions are pure functions (`device_name`, `overhead`,
`carried_mtu`, `frame_max`, `sends_tagged`, `segment_mtus`, `remotes_diff`, `underlay_fault`); `Tunnel`
acts on the kernel through pyroute2.
"""

from __future__ import annotations

import errno
import ipaddress
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import structlog
from pyroute2.netlink.exceptions import NetlinkError

from tapswitch.linkmon import link_up

log = structlog.get_logger("tapswitch.vxlan")

IFA_F_DADFAILED, IFA_F_OPTIMISTIC, IFA_F_TENTATIVE = 0x08, 0x04, 0x40     # linux/if_addr.h
SUFFIX = "-vx"               # device_name(): the port's name and this, when it fits
IFNAMSIZ = 15                # bytes in an interface name, without the NUL
ALL_ZEROS = "00:00:00:00:00:00"
ALIAS_PREFIX = "tapswitch vxlan port "   # the device's alias: this and the port's name
DSTPORT = 4789               # IANA's VXLAN port
ETH_HLEN, UDP_HLEN, VXLAN_HLEN = 14, 8, 8
VLAN_HLEN = 4                # the 802.1Q tag a trunk VXLAN port's frames cross with (segment_mtus)
IP_HLEN = {4: 20, 6: 40}
MTU_MAX = 65535              # the largest MTU an underlay (veth, loopback-like) can have
LEARNING = True              # the kernel learns which host a MAC is behind (see the module doc)


class VxlanError(Exception):
    """A VXLAN port cannot be made as configured; the message is one line for the user."""


# Deciding (pure). ---------------------------------------------------------


def device_name(port: str) -> str:
    """The VXLAN device of port `port`: `port-vx`, or, for a long port name, its
    first 9 characters, 4 hex digits of its CRC-32 and `vx` (15 in all; two long names alike in
    those may meet there, which config.port_clashes refuses)."""
    if len((port + SUFFIX).encode()) <= IFNAMSIZ:
        return port + SUFFIX
    head = port.encode()[:9].decode(errors="ignore")
    return f"{head}{zlib.crc32(port.encode()) & 0xFFFF:04x}vx"


def family(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return ipaddress.ip_address(str(address)).version


def overhead(local: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """Bytes VXLAN adds to a frame on an underlay of `local`'s family: 50 (IPv4) or 70 (IPv6)."""
    return ETH_HLEN + VXLAN_HLEN + UDP_HLEN + IP_HLEN[family(local)]


def carried_mtu(underlay_mtu: int, local) -> int:
    """The largest port MTU whose frames, encapsulated, still fit the underlay's MTU."""
    return underlay_mtu - overhead(local)


def frame_max(underlay_mtu: int, local) -> int:
    """The longest frame, its Ethernet header and tags and all, that crosses the tunnel whole: the
    underlay's MTU less the outer headers (IP, UDP, VXLAN). The port's MTU counts what follows a
    frame's tags (two at most), so a frame with more tags than the port's MTU leaves room for (an
    802.1ad frame, a copy of a tagged frame) would overflow the underlay: the fast path drops it,
    a tx_error (ts_port.frame_max)."""
    return underlay_mtu - (overhead(local) - ETH_HLEN)


@dataclass(frozen=True)
class PortMtu:
    """What segment_mtus needs to know of a port."""

    name: str
    mtu: int | None          # as configured; None when the config does not say
    carried: int | None = None   # a VXLAN port: the largest MTU its tunnel carries (untagged)
    default: int = 1500      # a port's MTU when neither the config nor a tunnel says
    tagged: bool = False     # a VXLAN port that sends tagged frames (sends_tagged): they cross with the tag

    @property
    def room(self) -> int | None:
        """A VXLAN port: the largest MTU its tunnel carries as the port sends: behind the
        802.1Q tag of a trunk (a port's MTU counts what follows the tags, the tunnel all)."""
        if self.carried is None:
            return None
        return self.carried - VLAN_HLEN if self.tagged else self.carried

    def behind_tag(self) -> str:
        return " behind the 802.1Q tag the port sends (a trunk, or a trunk's monitor port)" if self.tagged else ""


def segment_mtus(ports: Sequence[PortMtu]) -> list[int]:
    """The MTU of every port when some are VXLAN ports, or VxlanError for a port that cannot fit.

    All ports are one segment: a frame from any port may have to cross any
    tunnel. So a port without an MTU of its own takes the smallest tunnel's
    (as Flannel does for its containers), and a configured MTU larger than
    a tunnel carries is refused, naming both. A VXLAN port's own `mtu:`, when
    smaller than its underlay carries, is what its tunnel carries. The tunnel
    of a VXLAN port that sends tagged frames (a trunk, or a trunk's monitor
    port: sends_tagged) carries 4 bytes less: the 802.1Q tag of its frames.
    """
    tunnels = [p for p in ports if p.carried is not None]
    if not tunnels:
        return [p.mtu if p.mtu is not None else p.default for p in ports]
    for p in tunnels:
        if p.mtu is not None and p.mtu > p.room:
            raise VxlanError(f"port {p.name}: mtu {p.mtu} cannot cross its underlay, "
                             f"which carries at most {p.room}{p.behind_tag()}")
    # A VXLAN port's own mtu, smaller than its underlay carries, is what its TAP takes from the
    # switch: a larger frame from another port is dropped there (tx_errors), so it bounds them too.
    narrowest = min(tunnels, key=lambda p: p.mtu or p.room)
    limit = narrowest.mtu or narrowest.room
    why = (f"whose mtu is {limit}" if narrowest.mtu
           else f"whose underlay carries at most {limit}{narrowest.behind_tag()}")
    out = []
    for p in ports:
        if p.mtu is None:
            out.append(limit)
            continue
        if p.mtu > limit:
            raise VxlanError(f"port {p.name}: mtu {p.mtu} cannot cross VXLAN port {narrowest.name}, {why}")
        out.append(p.mtu)
    return out


def sends_tagged(trunks: Iterable[str], mirrors: Iterable[tuple[Iterable[str], str]]) -> set[str]:
    """The ports the switch may send a frame whose own 802.1Q tag is in it, given the trunk ports and
    each mirror's (sources, monitor port): a trunk (the frames of its tagged VLANs), and the monitor
    port of a mirror of a trunk (a copy is the frame as the trunk received or sent it, tag and all).
    A VXLAN port among them is `PortMtu.tagged`: its tunnel carries the tag too."""
    trunks = set(trunks)
    return trunks | {to for sources, to in mirrors if trunks.intersection(sources)}


def port_in_use(dstport: int) -> str:
    """Why a VXLAN device could not come up with EADDRINUSE: the kernel binds its UDP port then."""
    return (f"UDP port {dstport} (vxlan.dstport) is in use on this host, by another program "
            f"or another VXLAN device that cannot share it")


def normalise(addresses: Iterable) -> list[str]:
    """Addresses in their canonical spelling, duplicates dropped, first ones first."""
    out: list[str] = []
    for a in addresses:
        s = str(ipaddress.ip_address(str(a)))
        if s not in out:
            out.append(s)
    return out


def remotes_diff(current: Iterable, wanted: Iterable) -> tuple[list[str], list[str]]:
    """(to remove, to add) to go from the `current` remote hosts to the `wanted` ones;
    hosts in both are left alone, whatever their spelling."""
    cur, new = normalise(current), normalise(wanted)
    return [r for r in cur if r not in new], [r for r in new if r not in cur]


def dad_state(flags: int) -> str | None:
    """What an address's flags (IFA_FLAGS) say of IPv6 duplicate address detection, if they say
    the host cannot send from it: "tentative" (under way: a second or more after the address
    is added, or its device comes up) or "failed" (another host has it: for good). An
    optimistic address (optimistic_dad), tentative too, is usable meanwhile."""
    if flags & IFA_F_DADFAILED:
        return "failed"
    if flags & IFA_F_TENTATIVE and not flags & IFA_F_OPTIMISTIC:
        return "tentative"
    return None


def underlay_fault(local: str, underlay: str | None, up: bool | None, held: bool,
                   dad: str | None = None) -> str | None:
    """Why a tunnel from `local` cannot carry now, or None when it can. `underlay`: the underlay
    device's name (the one the tunnel is bound to, or `dev`; else the device holding `local`;
    None: neither); `up`: it is up with carrier (None: it is gone); `held`: a device of this
    host holds `local`; `dad`: local's dad_state. What the device says comes first: an IPv6
    underlay that goes down loses its addresses with it."""
    if underlay is not None and up is None:
        return f"underlay device {underlay} is gone"
    if underlay is not None and not up:
        return f"underlay device {underlay} is down"
    if not held:
        return f"no device holds the local address {local}"
    if dad == "tentative":
        return f"the local address {local} is tentative (duplicate address detection under way)"
    if dad == "failed":
        return f"the local address {local} is another host's too (duplicate address detection failed)"
    return None


# Acting on the kernel. ----------------------------------------------------


def _strerror(e: NetlinkError) -> str:
    return errno.errorcode.get(e.code, str(e.code)) + ": " + (e.args[1] if len(e.args) > 1 else str(e))


def _find_underlay(ipr, dev: str | None, local: str, remotes: Iterable[str] = ()) -> tuple[int, str, int]:
    """(ifindex, name, MTU) of the underlay: `dev`, else the device that holds `local`.
    `local` must be this host's either way: the kernel sends nothing from an address it does
    not have (every frame a tx error on the device), and the others' replies would go nowhere.
    No remote host may be this one: what the tunnel sent there would come back to the switch
    on the VXLAN port, and its own ports' MACs be learned there."""
    found = ipr.link_lookup(ifname=dev) if dev is not None else []
    if dev is not None and not found:
        raise VxlanError(f"underlay device {dev} does not exist")
    held = _held(ipr, local)
    if local not in held:
        raise VxlanError(f"no device holds the local address {local}: it is not this host's")
    _none_held(held, remotes)
    index = found[0] if dev is not None else held[local]
    link = ipr.link("get", index=index)[0]
    name, mtu = link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU")
    if dev is None:      # the kernel sends by the routes to the remote hosts: their devices bound it too
        name, mtu = _narrowest(name, mtu, _routed(ipr, local, remotes))
    return index, name, mtu


def _none_held(held: dict[str, int], remotes: Iterable[str]) -> None:
    """VxlanError for the first remote host that is this one (a device here holds it, `held`)."""
    mine = [r for r in remotes if r in held]
    if mine:
        raise VxlanError(f"remote {mine[0]} is this host's (a device here holds it): list the other hosts only")


def _routed(ipr, local: str, remotes: Iterable[str]) -> dict[int, tuple[str, int]]:
    """ifindex -> (name, MTU) of each device the kernel routes a remote host through from `local`,
    the route's own `mtu` if smaller: without dev, the devices the tunnel's packets leave through,
    which need not hold `local` (a VTEP address on `lo` or a dummy device, routed through the
    NIC). A remote host the kernel has no route to now is left out: nothing goes there."""
    out: dict[int, tuple[str, int]] = {}
    for r in remotes:
        try:
            route = ipr.route("get", dst=r, src=local)[0]
            oif = route.get_attr("RTA_OIF")
            if oif is None:
                continue
            link = ipr.link("get", index=oif)[0]
        except NetlinkError as e:      # no route (ENETUNREACH...), or its device gone since (ENODEV)
            log.debug("vxlan.route_unknown", remote=r, error=_strerror(e))
            continue
        metrics = route.get_attr("RTA_METRICS")
        mtus = [m for m in (link.get_attr("IFLA_MTU"), metrics.get_attr("RTAX_MTU") if metrics else None) if m]
        name, was = out.get(oif, (link.get_attr("IFLA_IFNAME"), min(mtus)))
        out[oif] = name, min([was, *mtus])
    return out


def _narrowest(name: str, mtu: int, routed: dict[int, tuple[str, int]]) -> tuple[str, int]:
    """(name, MTU) of the device of the smallest MTU: the one holding local (`name`, `mtu`) or
    one the tunnel is routed through (`routed`); the holder's when they tie."""
    for other, other_mtu in routed.values():
        if other_mtu < mtu:
            name, mtu = other, other_mtu
    return name, mtu


def _addresses(ipr, local: str) -> dict[str, tuple[int, int]]:
    """This host's addresses of `local`'s family, each with the index of the device that holds
    it and its flags (IFA_FLAGS, else the message's 8 bits). IFA_LOCAL, else IFA_ADDRESS:
    a point-to-point address (`ip addr add A peer B`) has the host's A in IFA_LOCAL and
    the peer's B in IFA_ADDRESS."""
    held = {}
    for a in ipr.get_addr(family=2 if family(local) == 4 else 10):
        flags = a.get_attr("IFA_FLAGS")
        held.setdefault(str(ipaddress.ip_address(a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"))),
                        (a["index"], a["flags"] if flags is None else flags))
    return held


def _held(ipr, local: str) -> dict[str, int]:
    """This host's addresses of `local`'s family, each with the index of the device that holds it."""
    return {address: index for address, (index, _flags) in _addresses(ipr, local).items()}


def is_left(ipr, index: int) -> bool:
    """Is the device at `index` a port's VXLAN device made by tapswitch (by its alias)?"""
    link = ipr.link("get", index=index)[0]
    return ((link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "") == "vxlan"
            and (link.get_attr("IFLA_IFALIAS") or "").startswith(ALIAS_PREFIX))


class Tunnel:
    """The VXLAN device of one port. underlay() and create(), then update_remotes() any
    number of times, then remove(). `ipr` is the switch's namespace; the caller closes it."""

    def __init__(self, ipr, port: str, vni: int, local, remotes: Iterable = (), dstport: int = DSTPORT,
                 dev: str | None = None):
        self.ipr = ipr
        self.port = port
        self.name = device_name(port)
        self.vni = vni
        self.local = str(ipaddress.ip_address(str(local)))
        self.wanted = normalise(remotes)      # what the config asks for
        self.remotes: list[str] = []          # what the device has
        self.dstport = dstport
        self.dev = dev
        self.ifindex: int | None = None
        self.bound: int | None = None             # given dev: the ifindex the device is bound to (create)
        self.underlay_index: int | None = None    # the underlay device's, as underlay_fault() last found it
        self.underlay_name: str | None = None     # and its name then
        self.underlay_mtu: int | None = None      # and its MTU then (without dev: or a routed device's, smaller)
        self.routed: set[int] = set()             # without dev: the devices routing the remote hosts then (_routed)
        self.frame_max = 0           # the longest frame it carries whole (frame_max), as made (create)

    @property
    def alias(self) -> str:
        return ALIAS_PREFIX + self.port

    def underlay(self) -> tuple[str, int]:
        """(name, MTU) of the device under the tunnel."""
        _index, name, mtu = _find_underlay(self.ipr, self.dev, self.local, self.wanted)
        return name, mtu

    def carried_mtu(self) -> int:
        return carried_mtu(self.underlay()[1], self.local)

    def check_kept(self) -> None:
        """What underlay() refuses of the config, for a tunnel a reload keeps (what it carries is
        known): `dev` no device's name (renamed for good: the config must say the new one), or a
        remote host that is this one. Not `local` held: gone meanwhile, the port is down, saying
        why (underlay_fault), and the reload need not wait for it."""
        if self.dev is not None and not self.ipr.link_lookup(ifname=self.dev):
            raise VxlanError(f"underlay device {self.dev} does not exist")
        _none_held(_held(self.ipr, self.local), self.wanted)

    def underlay_fault(self) -> str | None:
        """Why the tunnel cannot carry now (see the function of that name), or None, as the kernel
        says now. Notes the underlay device's ifindex and name: its link events are the tunnel's
        (underlies). Given dev, the underlay is the device the tunnel is bound to, whatever its
        name now; while there is no tunnel, the device named dev, which create() would bind to."""
        holder, flags = _addresses(self.ipr, self.local).get(self.local, (None, 0))
        if self.bound is not None:
            index = self.bound
        elif self.dev is not None:
            index = next(iter(self.ipr.link_lookup(ifname=self.dev)), None)
        else:
            index = holder
        if index != self.underlay_index:
            self.underlay_name = self.underlay_mtu = None
        self.underlay_index = index
        # Bound: if it went since (the kernel deletes the tunnel with it), by the name it last had.
        name, up = (self.underlay_name or self.dev) if self.bound is not None else self.dev, None
        if index is not None:
            try:
                link = self.ipr.link("get", index=index)[0]
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise
                if self.dev is None:         # the device holding local went since, and local with it
                    holder = None
            else:                            # (else it went since: dev is gone)
                name, up = link.get_attr("IFLA_IFNAME"), link_up(link["flags"])
                self.underlay_name, self.underlay_mtu = name, link.get_attr("IFLA_MTU")
                if self.dev is None:         # routed through others, their MTU bounds the tunnel too
                    routed = _routed(self.ipr, self.local, self.wanted)
                    self.routed = set(routed)
                    self.underlay_mtu = _narrowest(name, self.underlay_mtu, routed)[1]
        return underlay_fault(self.local, name, up, holder is not None, dad_state(flags))

    def carries(self) -> int | None:
        """The longest frame the tunnel carries whole now (frame_max), by its underlay's MTU as
        underlay_fault() last found it; None: no device, or no underlay seen."""
        if self.ifindex is None or self.underlay_mtu is None:
            return None
        return frame_max(self.underlay_mtu, self.local)

    def underlies(self, ifindex: int, ifname: str | None) -> bool:
        """Is the device of this link event (in the switch's namespace) the tunnel's underlay, or,
        while no device is bound (the tunnel went with its dev), `dev` coming back under a new
        ifindex? A bound tunnel's underlay is its device by ifindex: another that takes the
        name `dev` is not."""
        return (ifindex == self.underlay_index or ifindex in self.routed
                or (self.bound is None and self.dev is not None and ifname == self.dev))

    def create(self, mtu: int | None = None, before_up=None) -> int:
        """Make the device (down; attaching it raises it) with one all-zeros FDB entry per remote host.
        A device made again: `mtu`, the port's, which the underlay must carry (the segment's MTUs
        were set at start), and `before_up(ifindex)`, given, what must be done before the device
        comes up, which it then does here (see below). Returns its ifindex. On failure nothing is
        left (no vxlan.removed said: vxlan.created was not)."""
        ipr = self.ipr
        self._remove_stale()
        link = {}
        try:
            under_index, under_name, under_mtu = _find_underlay(ipr, self.dev, self.local, self.wanted)
        except VxlanError as e:      # as create's other reasons: naming the port
            raise VxlanError(f"port {self.port}: {e}") from None
        # Attaching gives the device the port's MTU, which the kernel refuses over what `dev` carries,
        # and a frame no underlay carries is fragmented (IPv4) or lost (IPv6): wait for one that does.
        if mtu is not None and carried_mtu(under_mtu, self.local) < mtu:
            raise VxlanError(f"port {self.port}: underlay device {under_name} carries at most "
                             f"{carried_mtu(under_mtu, self.local)}, less than the port's mtu {mtu} "
                             f"(set at start: give {under_name} its MTU back, or reload or restart the switch)")
        if self.dev is not None:     # bound to it; else the route to each remote host decides
            link["vxlan_link"] = under_index
        where = "vxlan_local" if family(self.local) == 4 else "vxlan_local6"
        try:
            ipr.link("add", ifname=self.name, kind="vxlan", vxlan_id=self.vni, vxlan_port=self.dstport,
                     vxlan_learning=int(LEARNING), **{where: self.local}, **link)
        except NetlinkError as e:
            if e.code == errno.EEXIST and ipr.link_lookup(ifname=self.name):
                raise VxlanError(f"port {self.port}: a device named {self.name} already exists "
                                 f"(not made by tapswitch)") from None
            if e.code == errno.EEXIST:      # the kernel allows one device per VNI and UDP port
                raise VxlanError(f"port {self.port}: VNI {self.vni} on UDP port {self.dstport} is taken "
                                 f"by another VXLAN device") from None
            raise VxlanError(f"port {self.port}: cannot make VXLAN device {self.name}: {_strerror(e)}") from None
        try:
            self.ifindex = ipr.link_lookup(ifname=self.name)[0]
            self.bound = link.get("vxlan_link")
            self.frame_max = frame_max(under_mtu, self.local)
            ipr.link("set", index=self.ifindex, ifalias=self.alias)
            self._apply(*remotes_diff([], self.wanted))
            if before_up is not None:
                before_up(self.ifindex)
                # The kernel binds the UDP port as the device comes up. Up here, not at its attach:
                # one taken meanwhile failed the attach, whose undo's link events attached it again
                # at once, and again, an error logged each time, until the port was free.
                ipr.link("set", index=self.ifindex, state="up")
        except NetlinkError as e:
            self.remove(said=False)
            if e.code == errno.EADDRINUSE:
                raise VxlanError(f"port {self.port}: {port_in_use(self.dstport)}") from None
            raise
        except BaseException:
            self.remove(said=False)
            raise
        log.info("vxlan.created", port=self.port, dev=self.name, vni=self.vni, local=self.local,
                 dstport=self.dstport, underlay=under_name, remotes=len(self.remotes))
        if self.dev is None:
            self._say_routed(under_index)
        return self.ifindex

    def _say_routed(self, holder: int) -> None:
        """Without dev, the remote hosts routed through devices other than the one holding local (a
        VTEP address on `lo`): the tunnel's MTU heeds them (_routed), but the port's state follows
        the holder, which stays up when they go down: say so, and that dev would follow them."""
        routed = _routed(self.ipr, self.local, self.wanted)
        others = sorted(name for index, (name, _mtu) in routed.items() if index != holder)
        if others:
            try:
                holder_name = self.ipr.link("get", index=holder)[0].get_attr("IFLA_IFNAME")
            except NetlinkError:     # gone since: the port goes down for it, and says so
                return
            log.warning("vxlan.underlay_routed", port=self.port, dev=self.name, local=self.local, holder=holder_name,
                        routed=others, detail=f"the port is down only while {holder_name} or local is; "
                                              f"give vxlan.dev ({others[0]}) to follow the device the tunnel sends through")

    def _remove_stale(self) -> None:
        """A device of our name left by a run that did not stop: ours by its alias, so remove it."""
        found = self.ipr.link_lookup(ifname=self.name)
        if not found:
            return
        link = self.ipr.link("get", index=found[0])[0]
        kind = (link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "")
        if kind != "vxlan" or link.get_attr("IFLA_IFALIAS") != self.alias:
            raise VxlanError(f"port {self.port}: a device named {self.name} already exists "
                             f"(not made by tapswitch)")
        self.ipr.link("del", index=found[0])
        log.warning("vxlan.stale_removed", port=self.port, dev=self.name)

    def gone(self) -> None:
        """The device went: deleted, or by the kernel with its underlay `dev` (and its FDB with it).
        Forget it; create() makes it again, with the remote hosts wanted then, bound to the
        device named `dev` then."""
        self.ifindex = None
        self.bound = None
        self.remotes = []

    def update_remotes(self, remotes: Iterable) -> tuple[list[str], list[str]]:
        """Replicate to exactly these hosts: add the new ones, then remove those gone (and
        what the kernel learned behind them). Hosts in both are not touched. Returns (removed, added).
        While the device is gone, only noted: create() gives them to it."""
        self.wanted = normalise(remotes)
        if self.ifindex is None:
            return [], []
        removed, added = remotes_diff(self.remotes, self.wanted)
        self._apply(removed, added)
        if removed or added:
            log.info("vxlan.remotes_updated", port=self.port, dev=self.name, added=added, removed=removed,
                     remotes=len(self.remotes))
        return removed, added

    def _apply(self, removed: list[str], added: list[str]) -> None:
        for r in added:
            try:
                self.ipr.fdb("append", ifindex=self.ifindex, lladdr=ALL_ZEROS, dst=r)
            except NetlinkError as e:
                raise VxlanError(f"port {self.port}: cannot add remote host {r}: {_strerror(e)}") from None
            self.remotes.append(r)
        for r in removed:
            for mac in self._macs_behind(r):
                self._quietly_del(mac, r)
            self.remotes.remove(r)

    def _macs_behind(self, remote: str) -> list[str]:
        """FDB entries pointing at `remote`: its all-zeros entry and what the kernel learned there."""
        macs = []
        for e in self.ipr.fdb("dump", ifindex=self.ifindex):
            dst = e.get_attr("NDA_DST")
            if e["ifindex"] == self.ifindex and dst and str(ipaddress.ip_address(dst)) == remote:
                macs.append(e.get_attr("NDA_LLADDR"))
        return macs or [ALL_ZEROS]

    def _quietly_del(self, mac: str, remote: str) -> None:
        try:
            self.ipr.fdb("del", ifindex=self.ifindex, lladdr=mac, dst=remote)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.ENODEV):
                raise

    def remove(self, said: bool = True) -> None:
        """Delete the device (its FDB and tc filters go with it); one already gone is fine.
        `said`: logged (not for one that create() did not finish)."""
        if self.ifindex is None:
            return
        try:
            self.ipr.link("del", index=self.ifindex)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
        if said:
            log.info("vxlan.removed", port=self.port, dev=self.name)
        self.ifindex = None
        self.bound = None
        self.remotes = []

"""remote: a port's TAP attached to an existing interface (NIC, VM tap, veth) through tc clsact + mirred.

This is the seed's `remote=` feature (rte_eth_tap.c: tap_flow_implicit_create
and its implicit rules LOCAL_MAC, BROADCAST, BROADCASTV6, PROMISC, ALLMULTI,
TX; tap_ioctl(..., LOCAL_AND_REMOTE)), with three modes:

- promisc (a switch uplink): everything arriving on IFACE goes to the port;
  the host no longer sees it.
- local (the seed's rules): frames for the port's MAC are stolen; broadcast
  and IPv6 multicast (33:33) are mirrored, the host keeps a copy;
  `allmulti` adds all multicast (mirror).
- shared: the host keeps using IFACE and its address; frames for the MACs
  living behind the switch's other ports are stolen, broadcast and multicast
  mirrored. The MAC list follows the MAC table (`update_shared_macs`).

In every mode, what the switch writes into the TAP (the TAP's ingress) is
redirected to IFACE's egress (TX).

The rules are decided by pure functions (`rules_for`, `diff`,
`iface_flags`); `RemoteAttachment` acts on the kernel, through `tc` for
filters and pyroute2 for IFACE's flags and MTU. IFACE's MTU is the switch's
to set only when the port's config gives one (`mtu`); else IFACE keeps its
own, the port takes it (`iface_mtu`), and the MTU recorded as IFACE's
original is 0: nothing to give back. IFACE's state before it is changed is
written down twice: in the run's state file (runstate.py), before anything
is touched, and in the cookie of every rule. `heal` gives back an
IFACE a dead run attached and the new run does not (the state file lists them).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import structlog
from pyroute2.netlink.exceptions import NetlinkError

from tapswitch import tc, vxlan
from tapswitch.tc import MacMatch

if TYPE_CHECKING:
    from tapswitch.runstate import Original, RunState

log = structlog.get_logger("tapswitch.remote")

MODES = ("promisc", "local", "shared")
HELD_WAIT = 2.0     # seconds a dead run's TAP may take to go (a dying worker's io_uring holds its queues)

Where = Literal["remote", "tap"]  # a rule's device: IFACE, or the port's TAP
Action = Literal["redirect", "mirror"]  # mirred egress redirect (steal) or mirror (copy)

BROADCAST = MacMatch("ff:ff:ff:ff:ff:ff")
IPV6_MULTICAST = MacMatch("33:33:00:00:00:00", "ff:ff:00:00:00:00")
MULTICAST = MacMatch("01:00:00:00:00:00", "01:00:00:00:00:00")

# One priority per implicit rule, in the order a frame meets them; the first
# match decides (mirred's pipe ends classification too), so a broadcast frame
# is mirrored once, by BROADCAST, not again by ALLMULTI. (Unicast and broadcast
# never match the same frame: their order is free.)
#
# Each device's lowest rule sits at the bottom of tapswitch's range, in every
# mode and from the first rule installed (rules_for lists it first): the TAP's
# TX, IFACE's PROMISC or BROADCAST (the one rule local and shared mode always
# have). The kernel gives a filter added without a priority the one below the
# lowest on its hook: beside these, 0xC0FF, outside the range, not a foreign
# filter there (a lowest rule at 0xC101, as before, gave it 0xC100: inside).
PRIO_TX = tc.PRIO_FIRST + 0  # on the TAP
PRIO_PROMISC = tc.PRIO_FIRST + 0  # promisc mode's only rule on IFACE
PRIO_BROADCAST = tc.PRIO_FIRST + 0  # local and shared mode's lowest on IFACE
PRIO_UNICAST = tc.PRIO_FIRST + 1  # LOCAL_MAC, SHARED_MAC (one node per MAC)
PRIO_BROADCASTV6 = tc.PRIO_FIRST + 3
PRIO_ALLMULTI = tc.PRIO_FIRST + 4


@dataclass(frozen=True)
class Rule:
    """One implicit rule: on `where`'s ingress, frames matching `match` (None:
    every frame) are redirected or mirrored to `target`'s egress."""

    name: str  # LOCAL_MAC | SHARED_MAC | BROADCAST | BROADCASTV6 | ALLMULTI | PROMISC | TX
    where: Where  # whose ingress the filter sits on
    match: MacMatch | None
    action: Action
    target: Where  # whose egress mirred sends the frame to
    prio: int


def _steal(name: str, match: MacMatch | None, prio: int) -> Rule:
    return Rule(name, "remote", match, "redirect", "tap", prio)


def _copy(name: str, match: MacMatch, prio: int) -> Rule:
    return Rule(name, "remote", match, "mirror", "tap", prio)


TX = Rule("TX", "tap", None, "redirect", "remote", PRIO_TX)


def is_unicast(mac: str) -> bool:
    return not tc.mac_bytes(mac)[0] & 1


def rules_for(mode: str, port_mac: str | None, allmulti: bool, shared_macs: Iterable[str] = ()) -> list[Rule]:
    """The rules a remote port needs, in priority order: each device's first is at the bottom
    of tapswitch's range (see the priorities above), and is installed first."""
    if mode == "promisc":
        rules = [_steal("PROMISC", None, PRIO_PROMISC)]
    elif mode == "local":
        if port_mac is None:
            raise ValueError("local mode needs the port's MAC")
        rules = [
            _copy("BROADCAST", BROADCAST, PRIO_BROADCAST),
            _steal("LOCAL_MAC", MacMatch(port_mac), PRIO_UNICAST),
            _copy("BROADCASTV6", IPV6_MULTICAST, PRIO_BROADCASTV6),
        ]
        if allmulti:
            rules.append(_copy("ALLMULTI", MULTICAST, PRIO_ALLMULTI))
    elif mode == "shared":
        # only unicast MACs can live behind a port; one spelling, one rule each
        macs = sorted({MacMatch(m) for m in shared_macs if is_unicast(m)}, key=lambda m: m.dst)
        rules = [_copy("BROADCAST", BROADCAST, PRIO_BROADCAST)]
        rules += [_steal("SHARED_MAC", m, PRIO_UNICAST) for m in macs]
        rules.append(_copy("ALLMULTI", MULTICAST, PRIO_ALLMULTI))  # IPv6 multicast included
    else:
        raise ValueError(f"unknown remote mode {mode!r} (one of {', '.join(MODES)})")
    return [TX] + rules


def diff(old: Iterable[Rule], new: Iterable[Rule]) -> tuple[list[Rule], list[Rule]]:
    """(to remove, to add) to go from `old` to `new`; rules in both are left alone."""
    old, new = list(old), list(new)
    keep_old, keep_new = set(old), set(new)
    return [r for r in old if r not in keep_new], [r for r in new if r not in keep_old]


def iface_flags(mode: str, port_mac: str | None, iface_mac: str, allmulti: bool) -> dict[str, bool]:
    """Flags IFACE must have while attached; a flag not named is left as it is.

    promisc mode wants every frame. shared mode (and local mode with a `mac:`
    other than IFACE's) steals frames for MACs that are not IFACE's: a real
    NIC drops those in its unicast filter before tc sees them, unless promisc.
    """
    flags = {}
    if mode in ("promisc", "shared") or (mode == "local" and port_mac is not None
                                         and MacMatch(port_mac).dst != MacMatch(iface_mac).dst):
        flags["promisc"] = True
    if allmulti:
        flags["allmulti"] = True
    return flags


# Acting on the kernel. ----------------------------------------------------

_FLAG_BITS = {"up": tc.IFF_UP, "promisc": tc.IFF_PROMISC, "allmulti": tc.IFF_ALLMULTI}


def _link(ipr, index: int):
    return ipr.link("get", index=index)[0]


# linux/if_arp.h: link types. Ethernet is that of NICs, veths, TAPs, bridges, bonds, VXLAN.
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772


def not_ethernet(ifi_type: int) -> str | None:
    """Why a device of this link type cannot be attached (None: it can). The rules match the
    destination MAC 14 bytes before the network header, and the port sends Ethernet frames
    out of it: on loopback, a tunnel or a layer-3 device neither means anything."""
    if ifi_type == ARPHRD_ETHER:
        return None
    if ifi_type == ARPHRD_LOOPBACK:
        return "is the loopback device, not an Ethernet interface"
    return f"is not an Ethernet interface (link type {ifi_type})"


def refuse_unless_ethernet(ipr, remote_ifname: str) -> None:
    """Raise TcError, touching nothing, if IFACE is not an Ethernet interface."""
    why = not_ethernet(_link(ipr, tc.index_of(ipr, remote_ifname))["ifi_type"])
    if why is not None:
        raise tc.TcError(f"remote {remote_ifname} {why}")


def default_mac(ipr, remote_ifname: str) -> str:
    """IFACE's MAC: a local-mode port's MAC unless `mac:` is given."""
    return _link(ipr, tc.index_of(ipr, remote_ifname)).get_attr("IFLA_ADDRESS").lower()


def _observe(ipr, index: int) -> tc.DeviceState:
    link = _link(ipr, index)
    flags = link["flags"]  # promisc/allmulti as set by users, not by packet sockets
    return tc.DeviceState(up=bool(flags & tc.IFF_UP), promisc=bool(flags & tc.IFF_PROMISC),
                          allmulti=bool(flags & tc.IFF_ALLMULTI), mtu=link.get_attr("IFLA_MTU"))


def _set_flags(ipr, index: int, wanted: dict[str, bool]) -> None:
    if not wanted:
        return
    mask = sum(_FLAG_BITS[k] for k in wanted)
    flags = sum(_FLAG_BITS[k] for k, on in wanted.items() if on)
    ipr.link("set", index=index, flags=flags, mask=mask)


def _restore(ipr, index: int, original: tc.DeviceState, flags: Iterable[str] = tuple(_FLAG_BITS)) -> None:
    """Give IFACE back the MTU (if the run set it: not 0) and those of its flags before it was
    attached that are named in `flags` (default: all, for a dead run's, whose settings are unknown)."""
    now = _observe(ipr, index)
    if original.mtu and now.mtu != original.mtu:
        ipr.link("set", index=index, mtu=original.mtu)
    _set_flags(ipr, index, {k: getattr(original, k) for k in flags if getattr(now, k) != getattr(original, k)})


def changed_flags(original: tc.DeviceState, wanted: dict[str, bool]) -> frozenset[str]:
    """The flags attaching changed: those it sets (`wanted`) to other than IFACE had. Only these
    are given back on stop: a flag the switch left alone is its user's, set or cleared meanwhile
    (allmulti for a multicast router, promisc for a capture) as the MTU of a port without `mtu`."""
    return frozenset(k for k, on in wanted.items() if getattr(original, k) != on)


SIOCGSKNS = 0x894C  # linux/sockios.h: a socket's network namespace, as a descriptor


def netns_id(ipr) -> int:
    """The network namespace of `ipr`'s socket (IFACE's): its inode, as /proc/PID/ns/net shows it."""
    fd = fcntl.ioctl(ipr.fileno(), SIOCGSKNS)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


class Claimed(tc.TcError):
    """IFACE claimed by another switch that runs (claim); `pid` is that switch's, None if unknown."""

    def __init__(self, ifname: str, pid: int | None):
        super().__init__(f"{ifname} is attached by another running switch" + (f" (pid {pid})" if pid else ""))
        self.pid = pid


def claim(netns: int, ifindex: int, ifname: str, pid: int | None = None) -> socket.socket:
    """IFACE's claim: a listening socket bound to the abstract address
    `tapswitch/remote/NETNS/IFINDEX` (IFACE's namespace, by inode, and ifindex: one device), which
    the kernel lets go of with the socket, however the switch ends (no file to leave behind).
    Claimed (a TcError) naming IFACE and the holder's pid if another switch holds it; `pid`, the
    holder's as an earlier try found it, is named if this one cannot learn it (_holder_pid).
    (Abstract addresses are those of the namespace of the thread that binds them: the switch's
    own, where IFACE is.)

    It is taken before IFACE's rules are looked at (held_by) and held while the port is attached:
    two switches starting at once on IFACE each found no rule of a running switch, and the later
    one's stale-rule removal took the earlier one's live rules."""
    address = f"\0tapswitch/remote/{netns}/{ifindex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(address)
        sock.listen(1)
        return sock
    except OSError as e:
        sock.close()
        if e.errno != errno.EADDRINUSE:
            raise
    raise Claimed(ifname, _holder_pid(address) or pid)


def _holder_pid(address: str) -> int | None:
    """The pid of the switch that holds the claim at `address`: a listening socket's peer
    credentials are its own. None if not learned. The holder never accepts: each look's
    connection stays in its queue until it ends, and one past the queue's room (two) is
    refused (EAGAIN), without waiting: a blocking one waited for room for good, and a port
    whose IFACE another switch holds tries again every tick (Switch.maintain_remotes): its
    third try stopped the control loop."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as peer:
            peer.connect(address)
            return struct.unpack("3i", peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    except OSError:
        return None


def _gone(e: Exception) -> bool:
    """The device (ENODEV) or its clsact qdisc (EINVAL, ENOENT) went away under us: nothing left to undo."""
    return isinstance(e, NetlinkError) and e.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL)


def _said(rule: Rule):
    """How a rule's coming and going is logged: a shared-mode MAC's follows the MAC table, each
    MAC learned and aged behind the other ports (a line a second, for good, on a busy LAN), so
    it is a debug line, as `fdb.aged` is; the implicit rules' come with attaching and detaching."""
    return log.debug if rule.name == "SHARED_MAC" else log.info


class RemoteAttachment:
    """One port's TAP attached to IFACE. attach() then detach(); detach()
    leaves IFACE's qdiscs, filters, the flags attach() changed and MTU as attach() found them."""

    def __init__(self, ipr, tap_ifname: str, remote_ifname: str, mode: str = "promisc",
                 port_mac: str | None = None, allmulti: bool = False, mtu: int | None = None,
                 state: RunState | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown remote mode {mode!r} (one of {', '.join(MODES)})")
        self.ipr = ipr
        self.tap_ifname = tap_ifname
        self.remote_ifname = remote_ifname
        self.mode = mode
        self.port_mac = port_mac
        self.follows_mac = mode == "local" and port_mac is None    # the port's MAC is IFACE's, as it changes
        self.allmulti = allmulti
        self.mtu = mtu          # IFACE's while attached; None: IFACE keeps its own (iface_mtu)
        self.iface_mtu = 0      # IFACE's MTU as attach() left it: the port's when `mtu` is None
        self.state = state  # the run's state file: IFACE's original goes there before IFACE changes
        self.kind = "u32"
        self.rules: list[Rule] = []
        self.shared_macs: frozenset[str] = frozenset()
        self.left_out = 0    # shared mode: rules that found no free u32 handle at the last update
        self.foreign: dict[int, tc.TcFilter] = {}    # prio -> a filter of another's there (check_foreign)
        self._held_back: set[int] = set()   # prios with one of those where the kernel refused a rule of ours
        self.attached = False
        self.undone = False      # the last attach() failed after it had begun to change IFACE, and undid it
        self._index: dict[str, int] = {}  # "tap" | "remote" -> ifindex
        self._cookie: dict[str, bytes] = {}
        self._clsact_ours: dict[str, bool] = {}
        self._handles: dict[Rule, int] = {}
        self._original: tc.DeviceState | None = None  # IFACE before we came
        self._changed: frozenset[str] = frozenset(_FLAG_BITS)  # IFACE's flags that detach() gives back
        self._left: Original | None = None  # (ifindex, original) of an IFACE that went (gone())
        self._iface_mac = ""     # IFACE's MAC whose flags and rules are in place
        self._flags: dict[str, bool] = {}    # iface_flags() as the port last set them on IFACE
        self.behind = False      # a follow_iface_mac failed: IFACE's MAC is not followed yet
        self._claim: tuple[int, socket.socket] | None = None   # (IFACE's ifindex, its claim) while attached
        self._holder: dict[int, int | None] = {}    # IFACE's ifindex -> the pid of the switch that claimed it (claim)
        self._held_past_wait: int | None = None     # IFACE's ifindex, if held_by found it held past HELD_WAIT

    # Attaching. -----------------------------------------------------------

    def attach(self) -> None:
        """Remove stale tapswitch rules, set IFACE up (MTU, flags), install clsact and rules.
        Calling it again (IFACE came back, or a restart) starts over from what the kernel has."""
        try:
            self._attach()
        except BaseException:
            # Had it begun to change IFACE (its original written to the state file, then its
            # MTU, its flags)? Its undo has then changed it back, and written the file again: a
            # try that costs that much is not made every tick (Switch.remote_changed).
            self.undone = self.attached
            try:
                self.detach(said=False)
            except Exception as e:  # keep the first error; say what is left behind
                log.error("remote.detach_failed", tap=self.tap_ifname, remote=self.remote_ifname, error=str(e))
            raise
        self.undone = False

    def _attach(self) -> None:
        ipr = self.ipr
        if not self.attached:
            # The clsact an earlier attach() added went at its detach() (or gone(); one left
            # holds another's filters now). One there now is another's (IFACE's user's), until
            # ensure_clsact below says otherwise: an attach() that fails before it leaves it.
            self._clsact_ours = {}
        self._changed = frozenset(_FLAG_BITS)    # until IFACE has the port's flags: all, as heal() gives back
        self._index = {"tap": tc.index_of(ipr, self.tap_ifname), "remote": tc.index_of(ipr, self.remote_ifname)}
        refuse_unless_ethernet(ipr, self.remote_ifname)
        self._take_claim()
        self._refuse_if_held()
        remote = self._index["remote"]
        tc.refuse_foreign(ipr, remote, self.remote_ifname)
        # Before anything changes, IFACE's original state goes to the state file: a run killed
        # from here on leaves it there, rules or not.
        self._original = self._original_of(remote)
        if self.state is not None:
            self.state.record_original(self.remote_ifname, (remote, self._original))
        self.attached = True  # from here on, detach() has something to undo
        # A run killed before detach() left its filters (so may an earlier attach() of ours, if IFACE
        # went away meanwhile); their cookies say how the TAP was before it.
        recovered = {where: tc.remove_stale(ipr, name).state
                     for where, name in (("tap", self.tap_ifname), ("remote", self.remote_ifname))}
        recovered["remote"] = self._original = self._settle_mtu(remote, self._original)
        self.rules, self._handles, self.left_out = [], {}, 0
        self.foreign, self._held_back = {}, set()     # refuse_foreign found none
        for where, index in self._index.items():
            added = tc.ensure_clsact(ipr, index)
            self._clsact_ours[where] = added or bool(recovered[where] and recovered[where].clsact_added)
        for where, index in self._index.items():
            before = recovered[where] or _observe(ipr, index)
            self._cookie[where] = replace(before, clsact_added=self._clsact_ours[where]).cookie()
        self.kind = "flower" if tc.flower_supported(ipr, remote) else "u32"

        self._iface_mac = default_mac(ipr, self.remote_ifname)
        self.shared_macs = self._not_host(self.shared_macs)
        if self.follows_mac:
            self.port_mac = self._iface_mac  # the port takes IFACE's MAC (the seed's default)
        # IFACE gets the flags it had before any run (a dead run's, or ours before IFACE went and
        # came back, may be on it), but for those the port wants; detach() gives back only those.
        self.behind = False
        self._flags = iface_flags(self.mode, self.port_mac, self._iface_mac, self.allmulti)
        wanted = {**self._flags, "up": True}
        _set_flags(ipr, remote, {**{k: getattr(self._original, k) for k in _FLAG_BITS}, **wanted})
        self._changed = changed_flags(self._original, wanted)

        self._install(rules_for(self.mode, self.port_mac, self.allmulti, self.shared_macs))
        log.info("remote.attached", tap=self.tap_ifname, remote=self.remote_ifname, mode=self.mode,
                 kind=self.kind, port_mac=self.port_mac, rules=len(self.rules), mtu=self.iface_mtu)

    def _settle_mtu(self, index: int, original: tc.DeviceState) -> tc.DeviceState:
        """Give IFACE the port's `mtu`; without one, leave IFACE its own, but for one a dead run
        set (its recorded original has an MTU): that one is given back. Returns the original
        detach() restores: without `mtu`, with MTU 0 (IFACE's MTU is not the switch's to give
        back, whatever its user sets meanwhile), also in the state file: written before the
        MTU changes when the switch sets it, after, when it gives it back."""
        own = _observe(self.ipr, index).mtu
        if not original.mtu:      # recorded by a run that left IFACE's MTU alone: IFACE's own is its original
            original = replace(original, mtu=own)
        if self.mtu is not None:
            self._record(index, original)
            self._set_mtu(index, self.mtu, own)
            self.iface_mtu = self.mtu
            return original
        self._set_mtu(index, original.mtu, own)
        self.iface_mtu = original.mtu
        original = replace(original, mtu=0)
        self._record(index, original)
        return original

    def _set_mtu(self, index: int, mtu: int, now: int) -> None:
        if mtu == now:
            return
        try:
            self.ipr.link("set", index=index, mtu=mtu)
        except NetlinkError as e:     # over the device's maximum (a NIC's, a macvlan's lower device's)
            raise tc.TcError(f"remote {self.remote_ifname} refused mtu {mtu}: "
                             f"{os.strerror(e.code) if e.code else e}") from None

    def _record(self, index: int, original: tc.DeviceState) -> None:
        if self.state is not None and self.state.originals.get(self.remote_ifname) != (index, original):
            self.state.record_original(self.remote_ifname, (index, original))

    def _original_of(self, index: int) -> tc.DeviceState:
        """IFACE before any run changed it: as a dead run's rules recorded it in their cookies, else
        as this run had it before IFACE went and came back (gone()), else as its state file did (a
        run killed before its first rule), else as it is now."""
        found = next((f.state for f in tc.tapswitch_filters(self.ipr, index) if f.state is not None), None)
        if found is None and (found := recorded_for(self._left, index)) is not None:
            # IFACE left the namespace meanwhile (gone()), and the kernel dropped its qdiscs: a
            # clsact on it now is another's (its user put it there since), not ours to remove.
            found = replace(found, clsact_added=not tc.has_clsact(self.ipr, index))
        if found is None and self.state is not None:
            found = recorded_for(self.state.originals.get(self.remote_ifname), index)
        if found is None:
            found = replace(_observe(self.ipr, index), clsact_added=not tc.has_clsact(self.ipr, index))
        return found

    def _take_claim(self) -> None:
        """Claim IFACE (claim()), unless this attachment holds its claim already (attach() again)."""
        index = self._index["remote"]
        if self._claim is not None and self._claim[0] == index:
            return
        self._let_go()
        try:
            self._claim = (index, claim(netns_id(self.ipr), index, self.remote_ifname, self._holder.get(index)))
        except Claimed as e:
            self._holder = {index: e.pid}
            raise

    def _let_go(self) -> None:
        if self._claim is not None:
            self._claim[1].close()
            self._claim = None

    def _refuse_if_held(self) -> None:
        """IFACE attached by another switch that runs (its rules send to a TAP that is there) is
        not ours to take, nor to strip when we stop: refuse, touching nothing. A dead run's
        TAP may linger a moment after it: its rules are stale once the TAP has gone. Waited for
        once: IFACE held past it is a running switch's, and the next try (the switch's next tick,
        Switch.maintain_remotes) looks without a wait, which would stop the control loop each time."""
        remote = self._index["remote"]
        deadline = time.monotonic() + (0 if self._held_past_wait == remote else HELD_WAIT)
        while (held := tc.held_by(self.ipr, remote, self._index["tap"])) is not None:
            if time.monotonic() >= deadline:
                self._held_past_wait = remote
                try:
                    name = self.ipr.get_links(held)[0].get_attr("IFLA_IFNAME")
                except (NetlinkError, IndexError):
                    name = f"ifindex {held}"
                raise tc.TcError(f"{self.remote_ifname} is attached by another running switch "
                                 f"(its tapswitch rules send frames to {name})")
            time.sleep(0.05)
        self._held_past_wait = None

    @property
    def iface_mac(self) -> str:
        """IFACE's MAC, as attach() or follow_iface_mac() last read it."""
        return self._iface_mac

    def follow_iface_mac(self) -> bool:
        """IFACE's user gave it another MAC while attached: the rules that match on it follow,
        new ones first (no gap). A local port without `mac:` has IFACE's: its LOCAL_MAC rule
        steals frames for the new one; shared mode steals none for it (it is the host's), and
        may for the old one, if the MAC table puts it behind another port. IFACE's flags follow
        too (local mode with `mac:` needs promisc only while IFACE's MAC is another). What the
        kernel says now decides: events come late. True if the MAC changed.

        The MAC counts as followed (iface_mac) only once its flags and rules are in place: a
        step the kernel refuses raises, with `behind` set, and the next call (the switch's
        next tick, or IFACE's next event) takes it up from where it stopped."""
        if not self.attached:
            return False
        mac = _link(self.ipr, self._index["remote"]).get_attr("IFLA_ADDRESS").lower()
        if mac == self._iface_mac and not self.behind:
            return False
        self.behind = True
        port_mac = mac if self.follows_mac else self.port_mac
        wanted = iface_flags(self.mode, port_mac, mac, self.allmulti)
        # Only the flags the port wants now and did not, or wanted and does not: IFACE's user
        # may have set it down to change its MAC (a NIC wants that), and up is theirs meanwhile.
        before = self._flags
        give_back = {k: getattr(self._original, k) for k in before if k not in wanted and k in self._changed}
        take = {k: on for k, on in wanted.items() if before.get(k) != on}
        _set_flags(self.ipr, self._index["remote"], {**give_back, **take})
        self._changed = (self._changed - give_back.keys()) | changed_flags(self._original, take)
        self._flags = wanted
        shared_macs = self._not_host(self.shared_macs, mac)
        self._install(rules_for(self.mode, port_mac, self.allmulti, shared_macs))
        was, self._iface_mac, self.port_mac, self.shared_macs = self._iface_mac, mac, port_mac, shared_macs
        self.behind = False
        if was == mac:       # back to the MAC it had before a follow that failed: nothing changed
            return False
        log.warning("remote.mac_changed", tap=self.tap_ifname, remote=self.remote_ifname, mac=mac, was=was,
                    port_mac=self.port_mac if self.mode == "local" else None)
        return True

    def update_shared_macs(self, macs: Iterable[str]) -> None:
        """shared mode: steal frames for exactly these MACs (those behind the switch's other ports)."""
        if self.mode != "shared":
            raise ValueError(f"update_shared_macs in {self.mode} mode")
        self.shared_macs = self._not_host(macs)
        if self.attached:
            self._install(rules_for(self.mode, self.port_mac, self.allmulti, self.shared_macs))

    def _not_host(self, macs: Iterable[str], host: str | None = None) -> frozenset[str]:
        # never steal the host's own address (IFACE's, or the one it is taking), whatever the MAC table says
        host = self._iface_mac if host is None else host
        return frozenset(m for m in (MacMatch(m).dst for m in macs) if m != host)

    def check_foreign(self) -> None:
        """Filters of another's in the priorities tapswitch reserves, on IFACE's ingress. A start
        refuses IFACE with one (tc.refuse_foreign); one that IFACE's user adds while the port is
        attached is said once, naming it (`remote.foreign_filter`, a warning: the next start will
        refuse IFACE while it is there), and its going too (`remote.foreign_filter_gone`). It is
        never touched: the port keeps its rules, and adds those the kernel takes beside it (_install).
        The rules that waited beside one that went are installed now: in local mode no update
        would come to add them (the rule for IFACE's new MAC, held back, stayed missing for good).
        So are those of the port's that went with it, on IFACE or its TAP (_forget_lost), and with
        the clsact qdisc they sat on (_clsact_again)."""
        if not self.attached:
            return
        for where, index in self._index.items():
            if not tc.has_clsact(self.ipr, index):
                self._clsact_again(where, index)
        filters = {where: tc.dump(self.ipr, index) for where, index in self._index.items()}
        released = self._note_foreign(filters["remote"])
        if self._forget_lost(filters) or released:
            self._install(rules_for(self.mode, self.port_mac, self.allmulti, self.shared_macs))

    def _clsact_again(self, where: str, index: int) -> None:
        """The clsact qdisc of IFACE or the TAP, deleted by another (`tc qdisc del dev IFACE
        clsact`, as a tool that loaded a bpf program there may clean up), and every rule on it
        with it: a clsact again, the port's now (the stop removes it, if it holds no filter then,
        and so does a start after a crash: the rules' cookies say so), for _forget_lost to put
        the rules back on. (The port lost IFACE's frames for good, or the TAP's, said by nothing.)"""
        tc.ensure_clsact(self.ipr, index)      # TcError if an ingress qdisc took its place: said by the caller
        self._clsact_ours[where] = True
        state = tc.DeviceState.from_cookie(self._cookie[where])
        self._cookie[where] = replace(state, clsact_added=True).cookie()
        log.warning("remote.clsact_lost", tap=self.tap_ifname, remote=self.remote_ifname, dev=self._name(where),
                    reason="its clsact qdisc deleted by another, with tapswitch's rules on it: added again")

    def _forget_lost(self, filters: dict[str, list[tc.TcFilter]]) -> list[Rule]:
        """The port's rules that the kernel (the dump of each device, `filters`) no longer has,
        forgotten so that _install adds them again. A filter is deleted with its priority: `tc
        filter del dev IFACE ingress pref N`, the way to delete the user's filter there that
        remote.foreign_filter asks to move, deleted the port's rules at N too (a user's u32 filter
        shares their table), and `tc filter del dev IFACE ingress` all of them. The port then lost
        those frames for good (promisc mode: all of them), while it said nothing and showed up."""
        there = {(where, f.prio, f.node) for where, found in filters.items()
                 for f in found if f.ours and f.chain == 0}
        lost = [r for r in self.rules if (r.where, r.prio, self._handles[r]) not in there]
        if lost:
            gone = set(lost)
            self.rules = [r for r in self.rules if r not in gone]
            for rule in lost:
                self._handles.pop(rule)
            log.warning("remote.rules_lost", tap=self.tap_ifname, remote=self.remote_ifname, rules=len(lost),
                        prios=sorted({hex(r.prio) for r in lost}), first=lost[0].name,
                        reason="deleted by another (with their priority, or every filter, or their clsact qdisc): "
                               "installed again")
        return lost

    def _note_foreign(self, filters: list[tc.TcFilter] | None = None) -> set[int]:
        """check_foreign's look (at `filters`, IFACE's dump, or a new one), and what it says; the
        priorities whose rules waited and may go in now."""
        if filters is None:
            filters = tc.dump(self.ipr, self._index["remote"])
        found = tc.foreign_filters(filters)
        for prio, f in found.items():
            if prio not in self.foreign:
                log.warning("remote.foreign_filter", tap=self.tap_ifname, remote=self.remote_ifname,
                            prio=hex(prio), kind=f.kind, handle=tc.handle_str(f),
                            reserved=f"{tc.PRIO_FIRST:#x}-{tc.PRIO_LAST:#x}",
                            reason="a filter that is not tapswitch's in the priorities tapswitch reserves: "
                                   "move it to another priority (a start refuses IFACE while it is there)")
        for prio in self.foreign.keys() - found.keys():
            log.info("remote.foreign_filter_gone", tap=self.tap_ifname, remote=self.remote_ifname, prio=hex(prio))
        self.foreign = found
        released = self._held_back - found.keys()     # its priority is ours again
        self._held_back -= released
        return released

    def _install(self, wanted: list[Rule]) -> None:
        """Go from self.rules to `wanted`: add the new rules first (no gap), then remove the old.
        A rule the kernel refuses at a priority where a filter of another's sits (check_foreign:
        a bpf filter, say, where ours are u32) waits, with every other of that priority, until it
        goes; the others are installed as ever."""
        remove, add = diff(self.rules, wanted)
        free: dict[tuple[str, int], Iterator[int]] = {}     # (where, prio) -> its free handles, in order
        left_out = []
        for rule in add:
            if rule.where == "remote" and rule.prio in self._held_back:
                continue
            key = (rule.where, rule.prio)
            if key not in free:
                taken = {h for r, h in self._handles.items() if (r.where, r.prio) == key}
                free[key] = (h for h in range(1, tc.U32_NODE_MAX + 1) if h not in taken)
            handle = next(free[key], None)
            if handle is None:
                left_out.append(rule)
                continue
            f = self._filter(rule, handle)
            try:
                tc.add_filter(self.ipr, f, self._cookie[rule.where])
            except NetlinkError as e:
                if rule.where != "remote":
                    raise
                self._note_foreign()        # not check_foreign: no _install inside this one
                if rule.prio not in self.foreign:
                    raise
                self._held_back.add(rule.prio)
                log.warning("remote.rules_held_back", tap=self.tap_ifname, remote=self.remote_ifname,
                            prio=hex(rule.prio), first=str(rule.match or "all"),
                            error=os.strerror(e.code) if e.code else str(e),
                            reason="the kernel refuses tapswitch's rules beside the filter of another's there")
                continue
            self._handles[rule] = handle
            self.rules.append(rule)
            _said(rule)("rule.installed", rule=rule.name, dev=self._name(rule.where), prio=hex(rule.prio),
                        handle=handle, match=str(rule.match or "all"), action=rule.action,
                        target=self._name(rule.target), kind=self.kind)
        self._remove(remove)
        self.rules.sort(key=lambda r: (r.prio, r.match.dst if r.match else ""))
        # Said when it changes, not at every update (once a second, for each MAC left out).
        if len(left_out) != self.left_out:
            self.left_out = len(left_out)
            if left_out:
                log.warning("remote.rules_full", tap=self.tap_ifname, remote=self.remote_ifname,
                            left_out=len(left_out), first=str(left_out[0].match), limit=tc.U32_NODE_MAX)
            else:
                log.info("remote.rules_fit", tap=self.tap_ifname, remote=self.remote_ifname)

    def _filter(self, rule: Rule, handle: int) -> tc.Filter:
        return tc.Filter(self._index[rule.where], rule.prio, handle, rule.match, rule.action,
                         self._index[rule.target], self.kind)

    def _name(self, where: str) -> str:
        return self.tap_ifname if where == "tap" else self.remote_ifname

    def _remove(self, rules: Iterable[Rule]) -> None:
        """Remove these rules: IFACE's first (stop stealing), then the TAP's; each device's at once."""
        rules = set(rules)
        for where in ("remote", "tap"):
            here = [r for r in self.rules if r in rules and r.where == where]
            if not here:
                continue
            try:
                tc.delete_filters(self.ipr, self._index[where], {(r.prio, self._handles[r]) for r in here})
            except NetlinkError as e:
                if not _gone(e):
                    raise
            gone = set(here)
            self.rules = [r for r in self.rules if r not in gone]
            for rule in here:
                _said(rule)("rule.removed", rule=rule.name, dev=self._name(where), prio=hex(rule.prio),
                            handle=self._handles.pop(rule), match=str(rule.match or "all"))

    # Detaching. -----------------------------------------------------------

    def detach(self, said: bool = True) -> None:
        """Remove exactly what attach() added and give IFACE back its flags and MTU, then let go
        of IFACE's claim. A device that has gone meanwhile is skipped. Not `said`: the undo of
        an attach() that failed, whose failure is what is said (a remote port whose IFACE came
        back tries again every tick while it fails: a `remote.detached` each time), logged at
        debug level."""
        try:
            self._detach(said)
        finally:
            self._let_go()

    def _detach(self, said: bool) -> None:
        if not self.attached:
            return
        self._remove(self.rules)         # stop stealing first: IFACE's rules, then TX
        for where, index in self._index.items():
            if self._clsact_ours.get(where):
                self._quietly(tc.remove_clsact, self.ipr, index)
        if self._original is not None:
            self._quietly(_restore, self.ipr, self._index["remote"], self._original, self._changed)
        if self.state is not None:
            self.state.record_original(self.remote_ifname, None)     # given back: nothing to heal
        self._left = None
        self.attached = False
        (log.info if said else log.debug)("remote.detached", tap=self.tap_ifname, remote=self.remote_ifname)

    def gone(self) -> None:
        """IFACE left the switch's namespace: deleted, or moved into another one (the kernel then
        drops its qdiscs and every filter on them, and keeps the flags and MTU we set). Detach
        what is left (the TAP's rule), but keep IFACE's original, here and in the state file:
        moved back, it is the same device (same ifindex) with our flags and MTU still on it, and
        the attach() that follows must take what it had before us, not those."""
        original = (self._index["remote"], self._original) if self.attached and self._original else None
        self.detach()
        if original is not None:
            self._left = original
            if self.state is not None:
                try:
                    self.state.record_original(self.remote_ifname, original)
                except OSError:     # the file full (logged): kept in memory, the next save writes it
                    pass

    @staticmethod
    def _quietly(fn, *args) -> None:
        try:
            fn(*args)
        except NetlinkError as e:
            if not _gone(e):
                raise


# Healing what a dead run left. -------------------------------------------


def recorded_for(recorded: Original | None, index: int) -> tc.DeviceState | None:
    """The original state a state file recorded for IFACE, if it is of this device (an IFACE
    deleted and made again since has another ifindex, and its own state)."""
    if recorded is None or recorded[0] != index:
        return None
    return recorded[1]


def heal(ipr, ifname: str, recorded: Original | None = None) -> None:
    """IFACE, attached by a run that did not stop (SIGKILL, crash) and named by no port of the
    new run: remove the dead run's rules, its clsact qdisc if it added it, and give IFACE back
    the flags and MTU the rules recorded (or, killed before its first rule, its state file:
    `recorded`), as detach() would have. (A port that names IFACE again heals it in attach().)
    A VXLAN port's device the dead run made is removed. IFACE held by another switch that runs
    is not touched; one that is gone has nothing left to heal. IFACE renamed since is known by
    the ifindex `recorded` gives (the kernel gives no other device that ifindex meanwhile).

    Like attach(), it claims IFACE (the device it heals: made again since, the new one) before
    it looks at its rules, and lets go when done: a switch that holds the claim is attaching
    IFACE or has it attached, maybe with no rule of its own yet, and the heal leaves it alone
    (else it took that switch's rules as the dead run's, or gave IFACE flags back under it)."""
    index = _index_or_none(ipr, ifname)
    if recorded is not None and index != recorded[0] and _exists(ipr, recorded[0]):
        index = recorded[0]
    if index is None:
        return
    try:
        held = claim(netns_id(ipr), index, ifname)
    except tc.TcError as e:
        log.info("remote.left", remote=ifname, reason=str(e))
        return
    try:
        _heal(ipr, ifname, index, recorded)
    finally:
        held.close()


def _heal(ipr, ifname: str, index: int, recorded: Original | None) -> None:
    deadline = time.monotonic() + HELD_WAIT      # the dead run's TAP may linger a moment
    while tc.held_by(ipr, index, 0) is not None:
        if time.monotonic() >= deadline:
            log.info("remote.left", remote=ifname, reason="attached by another running switch")
            return
        time.sleep(0.05)
    if vxlan.is_left(ipr, index):
        ipr.link("del", index=index)
        log.warning("vxlan.stale_removed", dev=ifname, reason="no port of this run names it")
        return
    original = tc.remove_stale(ipr, index).state or recorded_for(recorded, index)
    if original is None:
        return                       # no rule of a dead run, no state it wrote down: nothing to give back
    try:
        if original.clsact_added:
            tc.remove_clsact(ipr, index)
        _restore(ipr, index, original)
    except NetlinkError as e:
        if not _gone(e):
            raise
    log.warning("remote.healed", remote=ifname, promisc=original.promisc, allmulti=original.allmulti,
                mtu=original.mtu or None, reason="attached by a run that did not stop; no port of this run names it")


def renamed_since(ipr, ifname: str, recorded: Original | None) -> bool:
    """The device a dead run attached as IFACE (the ifindex `recorded` gives) is there under
    another name, renamed since: a port that names IFACE now means the device so named, or
    none, not it. It is healed as a device no port names (heal)."""
    return recorded is not None and _index_or_none(ipr, ifname) != recorded[0] and _exists(ipr, recorded[0])


def _index_or_none(ipr, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _exists(ipr, index: int) -> bool:
    try:
        _link(ipr, index)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise
        return False
    return True

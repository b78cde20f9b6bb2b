"""tc: the one place that talks tc netlink — clsact qdiscs and tapswitch's mirred filters (u32 or flower).

What a filter is here
---------------------
Every tapswitch filter sits on a device's clsact *ingress* hook, matches on
the destination MAC (exact, masked, or every frame) and carries one `mirred`
action that sends the frame to another device's *egress*: `redirect` (the
frame is stolen) or `mirror` (a copy; the frame goes on to the host).
`remote.py` decides which filters a port needs; this module only builds and
sends them.

How tapswitch recognises its own filters
----------------------------------------
- Priorities 0xC100–0xC1FF (`PRIO_FIRST`..`PRIO_LAST`) are ours. The kernel
  gives a filter added without a priority one below the lowest on its hook
  (0xC000 on an empty one): each device's lowest rule of ours is at
  PRIO_FIRST (remote.py), so beside them that is 0xC0FF, outside the range.
  (A lowest rule above PRIO_FIRST gave it a priority inside, where it is a
  foreign filter.) User filters with the usual small numbers run before ours.
- The mirred action carries a cookie (`TCA_ACT_COOKIE`, shown by
  `tc filter show` as `cookie 746170737769746368…`): the magic `tapswitch`,
  then a version byte, then the *original* state of the device the filter
  sits on (up, promisc, allmulti, whether tapswitch added the clsact qdisc,
  MTU). A filter is tapswitch's only when prio and cookie both say so; a
  user's filter in our range is never touched, and an attach refuses a device
  that has one (`refuse_foreign`): ours would share its priority, where the
  kernel refuses them or files them in the user's u32 hash table.
  One that comes while the device is attached is said, and left alone
  (`foreign_filters`, RemoteAttachment.check_foreign).
- So a start after a crash (SIGKILL) finds the stale filters, removes them
  (`remove_stale`) and learns from their cookies how to leave the device
  when it stops: the kernel kept the state for us.
- u32 filters get node ids we choose (`handle` 1..0xFFF); the kernel adds
  its own hash-table id on top, so deletion goes through a dump. Deleting
  the last node of a u32 priority leaves an empty hash table behind; we
  delete the whole (then empty) priority too, so `tc filter show` looks as
  before.

pyroute2 0.9.7 workarounds (all here, nowhere else)
---------------------------------------------------
- Its u32 key parser indexes a 256-entry array by offset, so the negative
  offsets we need (the destination MAC is at -14 at ingress) are mangled,
  and its decoder reads keys four bytes off (upstream #859, #646). We build
  the whole TCA_OPTIONS ourselves (`u32_options`, `flower_options`), byte
  for byte as iproute2 does, and send it as opaque data in `_TcRequest`.
- It has no flower module: same path.
- It does not know TCA_ACT_COOKIE: dumps are re-read from the raw message
  bytes (`parse_filter`).
- Its sync `nlm_request()` fails in 0.9.7 (KeyError 'nlm_generator'):
  requests go through `nlm_request_batch()`.
"""

from __future__ import annotations

import errno
import struct
import threading
from dataclasses import dataclass

import structlog
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELTFILTER, RTM_NEWTFILTER

log = structlog.get_logger("tapswitch.tc")

# clsact hooks (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / _EGRESS)).
INGRESS = 0xFFFFFFF2
EGRESS = 0xFFFFFFF3
CLSACT_HANDLE = 0xFFFF0000
CLSACT_PARENT = 0xFFFFFFF1  # TC_H_CLSACT (= TC_H_INGRESS): where a clsact (or ingress) qdisc hangs

PRIO_FIRST = 0xC100  # tapswitch's priority range, first..last
PRIO_LAST = 0xC1FF
PROBE_PRIO = PRIO_LAST
PROBE_CHAIN = 0x7453  # a chain no filter jumps to: the probe never sees a frame
U32_NODE_MAX = 0xFFF  # u32 node ids are 12 bits

COOKIE_MAGIC = b"tapswitch"
COOKIE_VERSION = 1

ETH_P_ALL = 0x0003
EXACT = "ff:ff:ff:ff:ff:ff"

# linux/pkt_cls.h, linux/rtnetlink.h, linux/tc_act/tc_mirred.h
TCA_KIND, TCA_OPTIONS, TCA_CHAIN = 1, 2, 11
TCA_ACT_KIND, TCA_ACT_OPTIONS, TCA_ACT_COOKIE = 1, 2, 6
TCA_MIRRED_PARMS = 2
TCA_EGRESS_REDIR, TCA_EGRESS_MIRROR = 1, 2
TC_ACT_PIPE, TC_ACT_STOLEN = 3, 4
TCA_U32_SEL, TCA_U32_ACT = 5, 7
TC_U32_TERMINAL = 1
TCA_FLOWER_ACT, TCA_FLOWER_KEY_ETH_DST, TCA_FLOWER_KEY_ETH_DST_MASK, TCA_FLOWER_FLAGS = 3, 4, 5, 22
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

IFF_UP, IFF_PROMISC, IFF_ALLMULTI = 0x1, 0x100, 0x200

DST_MAC_OFFSET = -14  # the destination MAC, relative to the network header at ingress

# mirred action name -> (eaction, control action after it)
_MIRRED = {
    "redirect": (TCA_EGRESS_REDIR, TC_ACT_STOLEN),
    "mirror": (TCA_EGRESS_MIRROR, TC_ACT_PIPE),
}


class TcError(Exception):
    """A tc operation that cannot be done without touching what is not ours."""


# Values. ------------------------------------------------------------------


def mac_bytes(mac: str) -> bytes:
    octets = mac.split(":")
    if len(octets) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(o, 16) for o in octets)


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


@dataclass(frozen=True)
class MacMatch:
    """Frames whose destination MAC, masked, equals `dst`."""

    dst: str
    mask: str = EXACT

    def __post_init__(self) -> None:
        # one spelling per address: lower case, two digits per octet
        object.__setattr__(self, "dst", mac_str(mac_bytes(self.dst)))
        object.__setattr__(self, "mask", mac_str(mac_bytes(self.mask)))

    def __str__(self) -> str:
        return self.dst if self.mask == EXACT else f"{self.dst}/{self.mask}"


@dataclass(frozen=True)
class Filter:
    """One tapswitch filter: on `ifindex`'s ingress, frames matching `match`
    (None: every frame) are redirected or mirrored to `target`'s egress."""

    ifindex: int
    prio: int
    handle: int  # u32: node id 1..0xFFF; flower: the filter handle
    match: MacMatch | None
    action: str  # "redirect" | "mirror"
    target: int  # ifindex
    kind: str = "u32"  # "u32" | "flower"


@dataclass(frozen=True)
class DeviceState:
    """What a device looked like before tapswitch touched it; travels in the cookie."""

    up: bool
    promisc: bool
    allmulti: bool
    mtu: int                    # 0: the run did not set the MTU (a remote port without `mtu`): none to give back
    clsact_added: bool = False  # tapswitch added the clsact qdisc (so it may remove it)

    _BITS = ("up", "promisc", "allmulti", "clsact_added")

    def cookie(self) -> bytes:
        bits = sum(1 << i for i, name in enumerate(self._BITS) if getattr(self, name))
        return COOKIE_MAGIC + struct.pack(">BBI", COOKIE_VERSION, bits, self.mtu)

    @classmethod
    def from_cookie(cls, cookie: bytes) -> DeviceState | None:
        """The state in a tapswitch cookie; None when the cookie is not one we can read."""
        if not cookie.startswith(COOKIE_MAGIC) or len(cookie) != len(COOKIE_MAGIC) + 6:
            return None
        version, bits, mtu = struct.unpack(">BBI", cookie[len(COOKIE_MAGIC):])
        if version != COOKIE_VERSION:
            return None
        return cls(mtu=mtu, **{name: bool(bits >> i & 1) for i, name in enumerate(cls._BITS)})


def is_tapswitch_cookie(cookie: bytes) -> bool:
    return cookie.startswith(COOKIE_MAGIC)


# Encoding (pure). ---------------------------------------------------------


def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    """One netlink attribute: header, payload, padding to 4 bytes."""
    header = struct.pack("=HH", 4 + len(payload), kind | (NLA_F_NESTED if nested else 0))
    return header + payload + b"\0" * (-len(payload) % 4)


@dataclass(frozen=True)
class U32Key:
    """One u32 key: the 32-bit word at `off` (bytes from the network header,
    signed), masked with `mask`, must equal `val`."""

    mask: int
    val: int
    off: int


def u32_keys(match: MacMatch | None) -> list[U32Key]:
    """The u32 keys for a destination MAC match at ingress.

    Like iproute2's `match ether dst`, bytes are packed into 4-byte-aligned
    words: the MAC at -14..-9 becomes the low half of the word at -16 and the
    whole word at -12. Words whose mask is zero are left out; a match on
    nothing (None, or an all-zero mask) is iproute2's `match u32 0 0`.
    """
    if match is None:
        return [U32Key(0, 0, 0)]
    words: dict[int, list[int]] = {}  # aligned offset -> [mask, val]
    for i, (v, m) in enumerate(zip(mac_bytes(match.dst), mac_bytes(match.mask))):
        if not m:
            continue
        off = DST_MAC_OFFSET + i
        base = off & ~3  # floor to a multiple of 4, also for negative offsets
        shift = 8 * (3 - (off - base))
        word = words.setdefault(base, [0, 0])
        word[0] |= m << shift
        word[1] |= (v & m) << shift
    keys = [U32Key(mask, val, off) for off, (mask, val) in sorted(words.items())]
    return keys or [U32Key(0, 0, 0)]


def u32_selector(keys: list[U32Key]) -> bytes:
    """struct tc_u32_sel and its keys: mask and value in network order, offsets signed, host order."""
    sel = struct.pack("=BBBxHHhhI", TC_U32_TERMINAL, 0, len(keys), 0, 0, 0, 0, 0)
    for k in keys:
        sel += struct.pack(">II", k.mask, k.val) + struct.pack("=ii", k.off, 0)
    return sel


def mirred_action(action: str, target: int, cookie: bytes) -> bytes:
    """TCA_*_ACT: one mirred action at order 1, egress redirect (stolen) or mirror (pipe)."""
    eaction, control = _MIRRED[action]
    parms = struct.pack("=IIiiiiI", 0, 0, control, 0, 0, eaction, target)  # struct tc_mirred
    act = nla(TCA_ACT_KIND, b"mirred\0") + nla(TCA_ACT_OPTIONS, nla(TCA_MIRRED_PARMS, parms), nested=True)
    return nla(1, act + nla(TCA_ACT_COOKIE, cookie))


def u32_options(match: MacMatch | None, action: str, target: int, cookie: bytes) -> bytes:
    """TCA_OPTIONS of a u32 filter, attribute for attribute as iproute2 sends it."""
    return nla(TCA_U32_ACT, mirred_action(action, target, cookie)) + nla(
        TCA_U32_SEL, u32_selector(u32_keys(match)))


def flower_options(match: MacMatch | None, action: str, target: int, cookie: bytes) -> bytes:
    """TCA_OPTIONS of a flower filter (eth_dst + mask, mirred), as iproute2 sends it."""
    keys = b""
    if match is not None:
        keys = nla(TCA_FLOWER_KEY_ETH_DST, mac_bytes(match.dst)) + nla(
            TCA_FLOWER_KEY_ETH_DST_MASK, mac_bytes(match.mask))
    acts = nla(TCA_FLOWER_ACT, mirred_action(action, target, cookie))
    return keys + acts + nla(TCA_FLOWER_FLAGS, struct.pack("=I", 0))


_OPTIONS = {"u32": u32_options, "flower": flower_options}


class _TcRequest(nlmsg):
    """A tcmsg whose options are opaque bytes we encoded ourselves (see the module doc)."""

    fields = (
        ("family", "B"),
        ("pad1", "B"),
        ("pad2", "H"),
        ("index", "i"),
        ("handle", "I"),
        ("parent", "I"),
        ("info", "I"),
    )
    nla_map = (
        (TCA_KIND, "TCA_KIND", "asciiz"),
        (TCA_OPTIONS, "TCA_OPTIONS", "cdata"),
        (TCA_CHAIN, "TCA_CHAIN", "uint32"),
    )


def _info(prio: int) -> int:
    return (prio << 16) | struct.unpack("=H", struct.pack(">H", ETH_P_ALL))[0]


def filter_request(f: Filter, cookie: bytes, chain: int = 0) -> nlmsg:
    """The RTM_NEWTFILTER request for `f` (header type/flags set, not yet encoded)."""
    msg = _TcRequest()
    msg["index"] = f.ifindex
    msg["handle"] = f.handle
    msg["parent"] = INGRESS
    msg["info"] = _info(f.prio)
    options = _OPTIONS[f.kind](f.match, f.action, f.target, cookie)
    msg["attrs"] = [("TCA_KIND", f.kind), ("TCA_OPTIONS", options)]
    if chain:
        msg["attrs"].append(("TCA_CHAIN", chain))
    msg["header"]["type"] = RTM_NEWTFILTER
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return msg


def delete_request(ifindex: int, prio: int, kind: str, handle: int = 0, chain: int = 0,
                   parent: int = INGRESS) -> nlmsg:
    """RTM_DELTFILTER for one filter, or (handle 0) for the whole priority."""
    msg = _TcRequest()
    msg["index"] = ifindex
    msg["handle"] = handle
    msg["parent"] = parent
    msg["info"] = _info(prio)
    msg["attrs"] = [("TCA_KIND", kind)]
    if chain:
        msg["attrs"].append(("TCA_CHAIN", chain))
    msg["header"]["type"] = RTM_DELTFILTER
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    return msg


# Decoding (pure). ---------------------------------------------------------


def parse_attrs(buf: bytes) -> list[tuple[int, bytes]]:
    """A chain of netlink attributes as (type without flags, payload)."""
    out, pos = [], 0
    while pos + 4 <= len(buf):
        length, kind = struct.unpack_from("=HH", buf, pos)
        if length < 4:
            break
        out.append((kind & NLA_TYPE_MASK, bytes(buf[pos + 4:pos + length])))
        pos += (length + 3) & ~3
    return out


@dataclass(frozen=True)
class TcFilter:
    """A filter as the kernel dumps it (any owner)."""

    ifindex: int
    parent: int
    prio: int
    kind: str
    handle: int  # the kernel's handle (u32: htid:hash:node)
    chain: int
    cookies: tuple[bytes, ...]
    targets: tuple[int, ...] = ()   # its mirred actions' devices; 0 for one unregistered since

    @property
    def node(self) -> int:
        """The handle we chose: the u32 node id, or flower's handle."""
        return self.handle & U32_NODE_MAX if self.kind == "u32" else self.handle

    @property
    def is_entry(self) -> bool:
        """A real filter, not a priority's header line or a u32 hash table."""
        return self.handle != 0 and (self.kind != "u32" or self.node != 0)

    @property
    def in_range(self) -> bool:
        return PRIO_FIRST <= self.prio <= PRIO_LAST

    @property
    def ours(self) -> bool:
        return self.in_range and self.is_entry and any(is_tapswitch_cookie(c) for c in self.cookies)

    @property
    def state(self) -> DeviceState | None:
        for c in self.cookies:
            s = DeviceState.from_cookie(c)
            if s is not None:
                return s
        return None


_ACT_ATTR = {"u32": TCA_U32_ACT, "flower": TCA_FLOWER_ACT}


def parse_filter(raw: bytes) -> TcFilter:
    """One RTM_NEWTFILTER message (nlmsghdr included) from a dump."""
    _family, ifindex, handle, parent, info = struct.unpack_from("=B3xiIII", raw, 16)
    attrs = parse_attrs(raw[36:])
    kind, chain, cookies, targets = "", 0, [], []
    for t, payload in attrs:
        if t == TCA_KIND:
            kind = payload.rstrip(b"\0").decode()
        elif t == TCA_CHAIN:
            (chain,) = struct.unpack("=I", payload[:4])
    for t, payload in attrs:
        if t != TCA_OPTIONS or kind not in _ACT_ATTR:
            continue
        for ot, acts in parse_attrs(payload):
            if ot != _ACT_ATTR[kind]:
                continue
            for _order, act in parse_attrs(acts):
                act_attrs = parse_attrs(act)
                cookies += [p for at, p in act_attrs if at == TCA_ACT_COOKIE]
                if (TCA_ACT_KIND, b"mirred\0") in act_attrs:
                    targets += [struct.unpack_from("=IIiiiiI", parms)[6]      # struct tc_mirred's ifindex
                                for at, options in act_attrs if at == TCA_ACT_OPTIONS
                                for pt, parms in parse_attrs(options) if pt == TCA_MIRRED_PARMS and len(parms) >= 28]
    return TcFilter(ifindex, parent, info >> 16, kind, handle, chain, tuple(cookies), tuple(targets))


# Acting on the kernel. ----------------------------------------------------


def _send(ipr, msg: nlmsg) -> None:
    ipr.nlm_request_batch([msg])


def _raw(msg) -> bytes:
    return bytes(msg.data[msg.offset:msg.offset + msg.length])


def index_of(ipr, dev: int | str) -> int:
    if isinstance(dev, int):
        return dev
    found = ipr.link_lookup(ifname=dev)
    if not found:
        raise TcError(f"no such device: {dev}")
    return found[0]


def qdisc_kinds(ipr, ifindex: int) -> dict[int, str]:
    """handle -> kind of the device's qdiscs."""
    return {q["handle"]: q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index=ifindex)
            if q["index"] == ifindex}


def has_clsact(ipr, ifindex: int) -> bool:
    return qdisc_kinds(ipr, ifindex).get(CLSACT_HANDLE) == "clsact"


def ensure_clsact(ipr, ifindex: int) -> bool:
    """Add a clsact qdisc when the device has none; True when we added it."""
    kind = qdisc_kinds(ipr, ifindex).get(CLSACT_HANDLE)
    if kind == "clsact":
        return False
    if kind is not None:
        # an `ingress` qdisc holds the same handle; replacing it would drop the user's filters
        name = ipr.get_links(ifindex)[0].get_attr("IFLA_IFNAME")
        raise TcError(f"{name} has an {kind!r} qdisc where clsact must go (tapswitch does not replace "
                      f"it, nor the filters on it: move them to a clsact qdisc, or remove it)")
    ipr.tc("add", "clsact", index=ifindex)
    log.debug("tc.clsact_added", ifindex=ifindex)
    return True


def remove_clsact(ipr, ifindex: int) -> bool:
    """Remove the clsact qdisc if it holds no filter at all (ours or anyone's); True if removed."""
    if not has_clsact(ipr, ifindex):
        return False
    if dump(ipr, ifindex, INGRESS) or dump(ipr, ifindex, EGRESS):
        return False
    ipr.tc("del", "clsact", index=ifindex)
    log.debug("tc.clsact_removed", ifindex=ifindex)
    return True


def dump(ipr, ifindex: int, parent: int = INGRESS) -> list[TcFilter]:
    """Every filter on one clsact hook, priorities' header lines and u32 hash tables included."""
    return [parse_filter(_raw(m)) for m in ipr.get_filters(index=ifindex, parent=parent)
            if m["index"] == ifindex]


def tapswitch_filters(ipr, ifindex: int) -> list[TcFilter]:
    """tapswitch's filters on the device's ingress (prio in range and our cookie)."""
    return [f for f in dump(ipr, ifindex) if f.ours]


def add_filter(ipr, f: Filter, cookie: bytes) -> None:
    if not PRIO_FIRST <= f.prio <= PRIO_LAST:
        raise ValueError(f"prio {f.prio:#x} outside tapswitch's range")
    _send(ipr, filter_request(f, cookie))


def _drop_empty_prios(ipr, ifindex: int, prios: set[tuple[int, int]]) -> None:
    """Delete priorities (prio, chain) of ours left with only an empty u32 hash table: the one
    the kernel made with our first filter there. A priority with another table (a user's
    `handle 5: u32 divisor 16`, empty or not) is not ours to delete."""
    filters = dump(ipr, ifindex)
    for prio, chain in prios:
        here = [f for f in filters if f.prio == prio and f.chain == chain]
        tables = [f for f in here if f.handle != 0]      # besides the priority's header line
        if here and all(not f.is_entry for f in here) and len(tables) <= 1:
            _send(ipr, delete_request(ifindex, prio, here[0].kind, 0, chain))


def delete_filters(ipr, ifindex: int, which: set[tuple[int, int]]) -> int:
    """Delete our filters (prio, our handle) from the device's ingress; how many were there.
    One dump finds the kernel's handles of all of them: a dump per filter would make removing
    n filters cost n dumps of up to n filters each (a shared-mode remote with thousands of MACs)."""
    found = [f for f in tapswitch_filters(ipr, ifindex) if f.chain == 0 and (f.prio, f.node) in which]
    for f in found:
        _send(ipr, delete_request(ifindex, f.prio, f.kind, f.handle))
    if found:
        _drop_empty_prios(ipr, ifindex, {(f.prio, 0) for f in found})
    return len(found)


@dataclass(frozen=True)
class Stale:
    """What remove_stale found and removed on one device."""

    removed: tuple[TcFilter, ...]
    state: DeviceState | None  # the device's state before the crashed run, from the cookies


def foreign_filters(filters: list[TcFilter]) -> dict[int, TcFilter]:
    """The priorities in our range where a filter that is not tapswitch's sits, each with the
    first such filter: one without our cookie, or a u32 hash table besides the one the kernel
    makes with a priority's first filter (a user's `handle 5: u32 divisor 16`). A dead run's
    emptied priorities are not among them."""
    # Each (prio, chain)'s tables gathered once: looked up per filter, a shared-mode remote's
    # thousands of filters in one priority took seconds (the resync's check_foreign).
    tables: dict[tuple[int, int], list[TcFilter]] = {}
    for g in filters:
        if g.handle != 0 and not g.is_entry:
            tables.setdefault((g.prio, g.chain), []).append(g)
    found: dict[int, TcFilter] = {}
    for f in filters:
        if not f.in_range or f.prio in found:
            continue
        here = tables.get((f.prio, f.chain), [])
        if f.is_entry and not f.ours:
            found[f.prio] = f
        elif len(here) > 1:
            found[f.prio] = here[-1]      # the root table comes first in a dump
    return dict(sorted(found.items()))


def handle_str(f: TcFilter) -> str:
    """A filter's handle as `tc filter show` spells it (u32: htid:hash:node, zeros left out)."""
    if f.kind != "u32":
        return f"{f.handle:#x}"
    table, bucket, node = f.handle >> 20, f.handle >> 12 & 0xFF, f.handle & U32_NODE_MAX
    return (f"{table:x}:" if table else "") + (f"{bucket:x}" if bucket else "") + (f":{node:x}" if node else "")


def refuse_foreign(ipr, ifindex: int, ifname: str) -> None:
    """Raise TcError, touching nothing, if a filter that is not ours sits in our priority range on
    the device's ingress: ours would share its priority (the kernel refuses them, EEXIST, ENOSPC
    or EINVAL, or puts them in the user's u32 table) or, at another one, run before or after it."""
    prio = next(iter(foreign_filters(dump(ipr, ifindex))), None)     # the lowest
    if prio is not None:
        raise TcError(f"{ifname} has a tc filter that is not tapswitch's at ingress priority {prio:#x} "
                      f"({prio}), in the range tapswitch reserves ({PRIO_FIRST:#x}-{PRIO_LAST:#x}, "
                      f"{PRIO_FIRST}-{PRIO_LAST}): move it to another priority")


def held_by(ipr, dev: int | str, mine: int) -> int | None:
    """A device other than `mine` that tapswitch filters on `dev` send frames to: the TAP of
    another switch that has `dev` attached and runs. A dead run's filters send to nowhere
    (0): its TAP went with its process, and the kernel forgets a mirred target that goes."""
    index = index_of(ipr, dev)
    return next((t for f in tapswitch_filters(ipr, index) for t in f.targets if t not in (0, mine)), None)


def remove_stale(ipr, dev: int | str) -> Stale:
    """Remove tapswitch filters left on the device by a run that did not stop
    (SIGKILL, crash), and the empty u32 priorities they leave in our range.
    Filters that are not ours, in our range or not, are never touched."""
    index = index_of(ipr, dev)
    stale = tapswitch_filters(ipr, index)
    for f in stale:
        _send(ipr, delete_request(index, f.prio, f.kind, f.handle, f.chain))
    # empty u32 priorities in our range: ours from before, or just emptied
    _drop_empty_prios(ipr, index, {(f.prio, f.chain) for f in dump(ipr, index) if f.in_range})
    state = next((f.state for f in stale if f.state is not None), None)
    if stale:
        log.warning("remote.stale_removed", dev=dev, ifindex=index, filters=len(stale),
                    prios=sorted({f"{f.prio:#x}" for f in stale}))
    return Stale(tuple(stale), state)


# Flower or u32. -----------------------------------------------------------

_flower: bool | None = None  # probed once per process: the kernel's classifiers do not change
_flower_lock = threading.Lock()  # remote ports are made several at once (ports.create_all)


def probe(ipr, ifindex: int, kind: str) -> bool:
    """Can the kernel add a `kind` filter? Tried on the device's clsact ingress,
    in a chain no filter jumps to (so no frame ever meets it), then removed.
    It carries our cookie, so a crash in between leaves nothing remove_stale misses."""
    f = Filter(ifindex, PROBE_PRIO, 1, None, "mirror", ifindex, kind)
    try:
        _send(ipr, filter_request(f, COOKIE_MAGIC, chain=PROBE_CHAIN))
    except NetlinkError as e:
        if e.code in (errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL):  # ENOENT: "TC classifier not found"
            log.debug("tc.probe_failed", kind=kind, ifindex=ifindex, error=str(e))
            return False
        raise
    _send(ipr, delete_request(ifindex, PROBE_PRIO, kind, 0, PROBE_CHAIN))
    return True


def flower_supported(ipr, ifindex: int) -> bool:
    """Whether to use flower (else u32). The device must have clsact. Probed
    once per process and logged once: `tc.flower` or `tc.u32`."""
    global _flower
    with _flower_lock:
        if _flower is None:
            _flower = probe(ipr, ifindex, "flower")
            if _flower:
                log.info("tc.flower", reason="flower classifier available")
            else:
                log.info("tc.u32", reason="no flower classifier in this kernel")
        return _flower

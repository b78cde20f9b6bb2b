"""Configuration: the YAML file's schema, its strict validation, and errors located as FILE:LINE: key.path.

The schema is declared as frozen pydantic models (unknown keys and wrong types
are errors; a string is never coerced into an int, `true` is not an int), so a
reload can diff two Configs field by field. What pydantic cannot see is
done here by hand, each in one place:

- the line of every key: the YAML is composed into nodes first, and each key
  path is mapped to its line (`_lines`); an error's `loc` is looked up there,
  falling back to the nearest enclosing key that is in the file;
- duplicate keys in a mapping, which PyYAML would silently collapse (`_lines`);
- clashes between ports (`port_clashes`, and one MAC on two ports of a VLAN: `mac_clashes`),
  reported even when other ports are
  invalid, so that a single `tapswitch check` shows every error at once;
- references to ports (`reference_errors`: mirrors and static MACs name
  ports, and a static MAC's VLAN must be one of its port's), found the same way;
- settings written on a monitor port that it would ignore (`monitor_port_settings`).

Errors that one rule finds together at several keys (a LocatedErrors) are
reported each at its own key, relative to where the rule ran.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import importlib.resources
import ipaddress
import os
import posixpath
import pwd
import re
import signal
import socket
import stat
import sys
import time
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tapswitch import vxlan as tunnel

DEMO = "<demo>"
Located = tuple[tuple, str, int | None]  # (pydantic-style loc, message, line if known already)
SOCKET_DIR = "/run/tapswitch"
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 for the NUL
PATH_MAX = 4095  # bytes of a path the kernel takes, without the NUL
NAME_MAX = 255  # bytes of one name in it


class ConfigError(Exception):
    """A configuration that cannot be used; `errors` holds every problem found."""

    def __init__(self, errors: list[str]):
        super().__init__(errors)
        self.errors = errors  # each "FILE:LINE: key.path: message"

    def __str__(self) -> str:
        return "\n".join(self.errors)


# --- Value rules (one function per rule, named after it) ---------------------


def _is_interface_name(value: str) -> str:
    """Linux dev_valid_name(): 1..15 bytes, no '/', ':' or whitespace (as the kernel's isspace()
    has it: byte 0xa0 too), not '.' or '..'; not 'all' or 'default' (the names of
    /proc/sys/net/*/conf/'s defaults); and no '%', which the kernel would replace with a number."""
    if not 1 <= len(value.encode()) <= 15:
        raise ValueError("an interface name is 1 to 15 bytes long")
    if value in (".", ".."):
        raise ValueError("an interface name cannot be '.' or '..'")
    if value in ("all", "default"):  # the kernel refuses them (EINVAL): run could only call them taken
        raise ValueError(f"an interface cannot be named {value!r}: the kernel keeps it for /proc/sys/net/*/conf/{value}")
    if any(c in "/:\0" or c.isspace() for c in value):
        raise ValueError("an interface name has no '/', ':', NUL or whitespace")
    # The kernel reads the name byte by byte, and its isspace() takes 0xa0 (Latin-1's no-break
    # space) for one: a character whose UTF-8 holds that byte (à, Ġ...) is refused (EINVAL).
    spaced = next((c for c in value if 0xA0 in c.encode()), None)
    if spaced is not None:
        raise ValueError(f"an interface name has no {spaced!r}: the kernel reads byte 0xa0 of its UTF-8 "
                         f"({spaced.encode().hex(' ')}) as whitespace")
    if "%" in value:  # the kernel reads eth%d as "the next free ethN"
        raise ValueError("an interface name has no '%' (the kernel numbers a name with %d itself)")
    return value


def _is_watchdog(value: int) -> int:
    """0 turns the watchdog off; else it must wait longer than a worker that is fine sleeps."""
    if 0 < value < WATCHDOG_MIN_MS:
        raise ValueError(f"must be 0 (off) or at least {WATCHDOG_MIN_MS}: a worker that is fine "
                         "goes up to 1000 ms between heartbeats")
    return value


def _is_switch_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", value):
        raise ValueError("a switch name is 1 to 32 of A-Z a-z 0-9 _ . -")
    return value


def _is_user(value: Any) -> str | int:
    """A user name this machine knows, or a uid."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 4294967294:
            raise ValueError("a uid is 0 to 4294967294")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a user name or a uid")
    try:
        pwd.getpwnam(value)
    except KeyError:
        raise ValueError(f"no such user: {value!r}") from None
    return value


def worker_ids(user: str | int | None, euid: int) -> tuple[int, int] | None:
    """(uid, gid) the workers run as, or None to keep the switch's: `user`, else nobody
    when the switch runs as root (a uid 0 without capabilities still owns root's files)."""
    if user is None:
        if euid != 0:
            return None
        user = "nobody"
    try:
        p = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
    except KeyError:
        if isinstance(user, int):
            return user, user
        return None         # no nobody here: the default keeps the switch's uid
    return p.pw_uid, p.pw_gid


def _is_netns(value: str) -> str:
    """A netns is a name (as `ip netns` knows it), an absolute path, or pid:N."""
    if value.startswith("pid:"):
        if not re.fullmatch(r"pid:[1-9][0-9]{0,9}", value):
            raise ValueError("pid:N needs a positive process id, as in pid:1234")
        return value
    if value.startswith("/"):
        if "\0" in value:
            raise ValueError("a netns path has no NUL")
        if len(value.encode()) > PATH_MAX or any(len(part.encode()) > NAME_MAX for part in value.split("/")):
            # no file has such a path (ENAMETOOLONG): the start said the namespace does not exist
            raise ValueError(f"a netns path is at most {PATH_MAX} bytes, each name in it at most {NAME_MAX}")
        # normpath keeps a leading "//" (POSIX leaves its meaning open); on Linux it is "/"
        return "/" + posixpath.normpath(value).lstrip("/")
    if "/" in value:
        raise ValueError("a netns is a name (no '/'), an absolute path, or pid:N")
    if not 1 <= len(value.encode()) <= 255 or value in (".", ".."):
        raise ValueError("a netns name is 1 to 255 bytes and not '.' or '..'")
    if any(c in ":\0" or c.isspace() for c in value):
        raise ValueError("a netns name has no ':', NUL or whitespace")
    return value


MAC_READ_AS_A_NUMBER = "YAML read this one as a number"


def _mac_octets(value: Any) -> bytes:
    """The six octets of aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff."""
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 12:34:56:00:00:10 as a base-60 number (and 0x... as hex).
        raise ValueError(f'a MAC address is six hex octets in quotes, as in "02:00:00:00:00:10" '
                         f"({MAC_READ_AS_A_NUMBER})")
    if not isinstance(value, str):
        raise ValueError(f"expected a MAC address string, got {_kind(value)}")
    if not re.fullmatch(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}", value):
        raise ValueError("a MAC address is six hex octets, as in 02:00:00:00:00:10")
    return bytes.fromhex(value.replace(":", "").replace("-", ""))


def _mac_str(octets: bytes) -> str:
    return ":".join(f"{b:02x}" for b in octets)


def mac_address(value: Any) -> str:
    """A MAC written as the config writes one (aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff), lower-case
    with colons; ValueError if it is not one. `tapswitch fdb add|del` read theirs so."""
    return _mac_str(_mac_octets(value))


def _unicast_mac(value: Any, what: str) -> str:
    octets = _mac_octets(value)
    if octets[0] & 1:
        raise ValueError(f"{what} must be unicast (the first octet is odd: multicast)")
    if not any(octets):
        raise ValueError(f"{what} cannot be 00:00:00:00:00:00")
    return _mac_str(octets)


def _is_unicast_mac(value: Any) -> str:
    """aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff, unicast, not zero; returned lower-case with colons."""
    return _unicast_mac(value, "a port MAC address")


def _is_static_mac(value: Any) -> str:
    return _unicast_mac(value, "a static MAC")


def _is_mac_match(value: Any) -> str:
    """A MAC to match (any: multicast too), optionally masked: 01:00:5e:00:00:00/ff:ff:ff:80:00:00."""
    if isinstance(value, str) and "/" in value:
        mac, mask = (_mac_octets(part) for part in value.split("/", 1))
        if any(m & ~k for m, k in zip(mac, mask)):
            raise ValueError(f"{_mac_str(mac)} has bits outside its mask {_mac_str(mask)}")
        return f"{_mac_str(mac)}/{_mac_str(mask)}"
    return _mac_str(_mac_octets(value))


def mac_and_mask(value: str) -> tuple[bytes, bytes]:
    """The octets of a validated MAC match and of its mask (all ones if none was given)."""
    mac, _, mask = value.partition("/")
    return _mac_octets(mac), _mac_octets(mask) if mask else b"\xff" * 6


ETH_TYPES = {"ipv4": 0x0800, "ipv6": 0x86DD, "arp": 0x0806}
IP_ETH_TYPE = {4: 0x0800, 6: 0x86DD}
IP_PROTOS = {"icmp": 1, "icmpv6": 58, "tcp": 6, "udp": 17}
PORT_PROTOS = (6, 17)  # the protocols whose src_port/dst_port an ACL reads


def _named_number(value: Any, key: str, names: dict[str, int], number: str, example: str,
                  lo: int, hi: int, show=str) -> int:
    """A number lo..hi, or one of `names`: the rule of eth_type and ip_proto."""
    if isinstance(value, str):
        if value in names:
            return names[value]
        raise ValueError(f"{key} is a number {number} or one of {', '.join(names)}; got {value!r}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an {key} ({example}), got {_kind(value)}")
    if not lo <= value <= hi:
        raise ValueError(f"an {key} is {show(lo)} to {show(hi)}, got {show(value)}")
    return value


def _is_eth_type(value: Any) -> int:
    """An ethertype, a number 0x0600..0xffff or ipv4, ipv6, arp."""
    if value == 0x8100 and not isinstance(value, bool):
        raise ValueError("0x8100 is the VLAN tag, not a payload's type: match on vlan")
    return _named_number(value, "eth_type", ETH_TYPES, "like 0x0800", "0x0800, ipv4...",
                         0x0600, 0xFFFF, show=lambda v: f"{v:#06x}")


def _is_ip_proto(value: Any) -> int:
    """An IP protocol, a number 0..255 or icmp, icmpv6, tcp, udp."""
    return _named_number(value, "ip_proto", IP_PROTOS, "0 to 255", "tcp, 17...", 0, 255)


def _is_prefix(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IPv4 or IPv6 prefix (an address alone is a /32 or /128), no host bits set."""
    if not isinstance(value, str):
        raise ValueError(f"expected a prefix string like 198.18.0.0/24, got {_kind(value)}")
    try:
        return ipaddress.ip_network(value)
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"not an IPv4 or IPv6 prefix: {value!r}") from None
    raise ValueError(f"{value} has host bits set: the prefix is {network}")


def _is_mirror_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", value):
        raise ValueError("a mirror name is 1 to 32 of A-Z a-z 0-9 _ . -")
    return value


# Every host's on the link, whatever the prefix: /31 and /32 have no subnet broadcast address,
# and 255.255.255.255/32 passed as a host's own (what is sent to it goes to every host).
LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _is_interface_address(value: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An address with its prefix length, as in 198.18.0.10/24 or fd00::10/64."""
    if not isinstance(value, str):
        raise ValueError(f"expected an address string like 198.18.0.10/24, got {_kind(value)}")
    if "/" not in value:
        raise ValueError("an address needs its prefix length, as in 198.18.0.10/24")
    try:
        address = ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(f"not an IPv4 or IPv6 address with prefix length: {value!r}") from None
    if address.ip.is_multicast or address.ip.is_unspecified or address.ip == LIMITED_BROADCAST:
        raise ValueError(f"{address.ip} is not a unicast address")
    if address.version == 6 and address.ip.is_loopback:     # EADDRNOTAVAIL on any other device
        raise ValueError(f"{address.ip} is IPv6's loopback address: the kernel gives it to lo only")
    network = address.network
    if network.version == 4 and network.prefixlen <= 30 and address.ip == network.broadcast_address:
        # The kernel takes it, but what is sent to it goes to every host of the subnet: no
        # host's address. (/31 and /32 have no broadcast address: RFC 3021.)
        raise ValueError(f"{address.ip} is the broadcast address of {network}, not a unicast address")
    if "%" in value:     # ipaddress takes fe80::1%eth0/64, and the port would get fe80::1/64
        raise ValueError(f"an address is set on its port's device: no %scope, as in {address.ip}/{address.network.prefixlen}")
    return address


def _is_host_address(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A unicast IPv4 or IPv6 address without prefix length, as in 198.19.0.1 or fd00::1."""
    if not isinstance(value, str):
        raise ValueError(f"expected an address string like 198.19.0.1, got {_kind(value)}")
    if "/" in value:
        raise ValueError("an underlay address has no prefix length, as in 198.19.0.1")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"not an IPv4 or IPv6 address: {value!r}") from None
    if address.is_multicast or address.is_unspecified or address == LIMITED_BROADCAST:
        raise ValueError(f"{address} is not a unicast address")
    if "%" in value:     # ipaddress takes fe80::1%eth0, which no device's address equals
        raise ValueError("an underlay address has no %scope: the underlay device is vxlan.dev")
    return address


def _parse_listen(value: str) -> tuple[str, int] | None:
    """'host:port' or '[v6]:port' → (host, port); '' → None (metrics disabled)."""
    if value == "":
        return None
    m = re.fullmatch(r"\[([^\]]+)\]:([0-9]{1,5})|([^:\[\]]+):([0-9]{1,5})", value)
    if not m:
        raise ValueError('expected "host:port" ("[::1]:9417" for IPv6), or "" to disable')
    host, port = (m[1], m[2]) if m[1] is not None else (m[3], m[4])
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {int(port)} is not in 1..65535")
    if m[1] is not None:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address inside brackets: {host!r}") from None
        if address.is_link_local and address.scope_id is None:     # the kernel refuses to bind it
            raise ValueError(f"a link-local address needs the device it is on: [{host}%eth0]:{port}")
    elif not re.fullmatch(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*", host):
        raise ValueError(f"not an IPv4 address or host name: {host!r}")
    elif re.fullmatch(r"[0-9.]+", host):      # no host name is all numbers: the resolver would say so at start
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"not an IPv4 address (four numbers 0 to 255, as in 127.0.0.1): {host!r}") from None
    return host, int(port)


def _is_listen(value: str) -> str:
    _parse_listen(value)
    return value


def _is_socket_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("the control socket path must be absolute")
    if value.endswith("/"):
        raise ValueError("the control socket path names a file, not a directory (it ends in '/')")
    if "\0" in value or len(value.encode()) > SUN_PATH_MAX:
        raise ValueError(f"a unix socket path is at most {SUN_PATH_MAX} bytes, without NUL")
    return value


IfName = Annotated[str, AfterValidator(_is_interface_name)]
SwitchName = Annotated[str, AfterValidator(_is_switch_name)]
User = Annotated[str | int, PlainValidator(_is_user)]
Netns = Annotated[str, AfterValidator(_is_netns)]
Mac = Annotated[str, PlainValidator(_is_unicast_mac)]
StaticMacAddress = Annotated[str, PlainValidator(_is_static_mac)]
MacMatch = Annotated[str, PlainValidator(_is_mac_match)]  # "mac" or "mac/mask", lower-case
EthType = Annotated[int, PlainValidator(_is_eth_type)]
IpProto = Annotated[int, PlainValidator(_is_ip_proto)]
Prefix = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, PlainValidator(_is_prefix)]
VlanId = Annotated[int, Field(ge=1, le=4094)]
MirrorName = Annotated[str, AfterValidator(_is_mirror_name)]

MAX_ACL_RULES = 64  # per port: the fast path's TS_MAX_ACL_RULES
MAX_MIRRORS = 16  # the fast path's TS_MAX_MIRRORS
IPV6_MIN_MTU = 1280  # a device with a smaller MTU has no IPv6 (RFC 8200)
STORM_PPS_MAX = 100_000_000
Address = Annotated[
    ipaddress.IPv4Interface | ipaddress.IPv6Interface, PlainValidator(_is_interface_address)
]
HostAddress = Annotated[ipaddress.IPv4Address | ipaddress.IPv6Address, PlainValidator(_is_host_address)]


# --- Schema ------------------------------------------------------------------


# Frames a port's TAP queue holds while its worker is busy (the device's txqueuelen).
# The kernel's default, 1000, lasts ~3 ms at a worker's 64 B rate here: shorter than
# the stalls a preempted worker (a VM's vCPU, the scheduler) sees, which then lose
# frames below the rate the worker sustains (bench/HISTORY.md, "Queue length: 1000 →
# 4096 frames").
QUEUE_LEN = 4096

# After a turn that found frames, a worker looks again for this long before it sleeps:
# a frame that comes meanwhile costs no wake-up (see "Busy polling" in fastpath.h).
BUSY_POLL_US = 50

# A running worker whose heartbeat stands still this long is killed and restarted (supervisor.py,
# hung). A worker that is fine turns at least every TS_IDLE_WAIT_MS (1000 ms, fastpath.h "The
# watchdog"), and the stand-still the control process measures never exceeds that plus the
# worker's own delay: the least watchdog leaves it a second more, for a slow turn or a busy CPU.
WATCHDOG_MS = 5000
WATCHDOG_MIN_MS = 2000
WATCHDOG_MAX_MS = 3_600_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class MacTable(_Model):
    size: int = Field(8192, ge=16, le=16_777_216)  # entries
    aging: int = Field(300, ge=10, le=86_400)  # seconds


class Metrics(_Model):
    listen: Annotated[str, AfterValidator(_is_listen)] = "127.0.0.1:9417"  # "" disables

    def address(self) -> tuple[str, int] | None:
        """(host, port) to serve /metrics on, IPv6 without brackets; None when disabled."""
        return _parse_listen(self.listen)


class Control(_Model):
    socket: Annotated[str, AfterValidator(_is_socket_path)]  # always filled: see Switch


class Log(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"  # auto = console on a TTY, JSON otherwise


class Switch(_Model):
    name: SwitchName
    queues: int = Field(1, ge=1, le=16)  # TAP queues per port = worker processes
    queue_len: int = Field(QUEUE_LEN, ge=16, le=65536)  # frames each queue holds for its worker
    busy_poll_us: int = Field(BUSY_POLL_US, ge=0, le=1000)  # µs a worker keeps looking before it sleeps
    # ms a worker's heartbeat may stand still before it is killed and restarted; 0: never
    watchdog_ms: Annotated[int, Field(ge=0, le=WATCHDOG_MAX_MS), AfterValidator(_is_watchdog)] = WATCHDOG_MS
    mac_table: MacTable = MacTable()
    metrics: Metrics = Metrics()
    control: Control  # socket defaults to /run/tapswitch/<name>.sock
    log: Log = Log()
    user: User | None = None  # workers run as this user; default: nobody when run as root

    @model_validator(mode="before")
    @classmethod
    def _control_socket_defaults_to_the_name(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # reported as a type error
        control = data.get("control", {})
        if isinstance(control, dict) and "socket" not in control:
            name = data.get("name")
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name):
                name = "tapswitch"  # switch.name is reported; control must not be, too
            data = {**data, "control": {**control, "socket": f"{SOCKET_DIR}/{name}.sock"}}
        return data


class Vxlan(_Model):
    """A VXLAN port: the kernel's VXLAN device, attached like a remote port in promisc mode."""

    vni: int = Field(ge=0, le=16_777_215)  # VXLAN network identifier (24 bits)
    local: HostAddress  # this host's underlay address; its family is the underlay's
    remotes: list[HostAddress] = Field([], max_length=1024)  # the other hosts' underlay addresses
    dstport: int = Field(tunnel.DSTPORT, ge=1, le=65535)  # UDP port, the same on every host
    dev: IfName | None = None  # the underlay device; default: the one holding `local`

    @field_validator("remotes")
    @classmethod
    def _remotes_are_other_hosts_of_one_family(cls, value: list, info: ValidationInfo) -> list:
        local = info.data.get("local")
        problems: list[tuple[tuple, str]] = []
        seen = set()
        for i, address in enumerate(value):
            if local is not None and address.version != local.version:
                problems.append(((i,), f"remote {address} is IPv{address.version}, local {local} is IPv{local.version}"))
            elif address == local:
                problems.append(((i,), f"remote {address} is this host (local)"))
            elif address in seen:
                problems.append(((i,), f"remote {address} is listed twice"))
            seen.add(address)
        if problems:
            raise LocatedErrors(problems)
        return value

    @model_validator(mode="after")
    def _link_local_has_its_device(self) -> Vxlan:
        # The kernel refuses it without ("Local interface required for link-local local/remote
        # addresses", EINVAL). Link-local remote hosts it takes, beside any local.
        if self.local.version == 6 and self.local.is_link_local and self.dev is None:
            raise LocatedErrors([(("local",), f"{self.local} is link-local: it needs vxlan.dev, the device "
                                              f"it is on (the kernel makes no VXLAN device from it without)")])
        return self

    @property
    def overhead(self) -> int:
        """Bytes VXLAN adds on this underlay: 50 over IPv4, 70 over IPv6."""
        return tunnel.overhead(self.local)


class LocatedErrors(ValueError):
    """Errors one rule found together, each at its own key: `clashes` holds (loc, message),
    loc relative to where the rule ran (a field, a model)."""

    def __init__(self, clashes: list[tuple[tuple, str]]):
        super().__init__("; ".join(f"{_key_path(loc)}: {msg}" for loc, msg in clashes))
        self.clashes = clashes


class StormControl(_Model):
    """Frames per second a port may send of each kind the switch floods; absent: no limit."""

    broadcast_pps: int | None = Field(None, ge=1, le=STORM_PPS_MAX)
    multicast_pps: int | None = Field(None, ge=1, le=STORM_PPS_MAX)
    unknown_unicast_pps: int | None = Field(None, ge=1, le=STORM_PPS_MAX)


class AclMatch(_Model):
    """What an ACL rule matches: every field given must match (none given: every frame)."""

    eth_src: MacMatch | None = None  # "mac" or "mac/mask"
    eth_dst: MacMatch | None = None
    eth_type: EthType | None = None  # the payload's, behind its VLAN's tag and up to two more 802.1Q/802.1ad tags
    vlan: VlanId | None = None  # the frame's VLAN in the switch (outer 802.1Q tag, or the port's untagged)
    ip_src: Prefix | None = None
    ip_dst: Prefix | None = None
    ip_proto: IpProto | None = None
    src_port: int | None = Field(None, ge=0, le=65535)  # TCP or UDP
    dst_port: int | None = Field(None, ge=0, le=65535)

    # As in Port: each rule reads the fields declared above it, and stays
    # silent about a field that failed (absent from info.data).

    @field_validator("eth_src")
    @classmethod
    def _source_can_match(cls, value: str) -> str:
        # The fast path counts a frame from a multicast or zero source MAC as an rx error before
        # any rule sees it (fastpath.c, has_host_source): a rule on such sources matches nothing.
        mac, mask = mac_and_mask(value)
        if mac[0] & mask[0] & 1:
            raise ValueError(f"{value} matches only multicast sources: a frame from one is an rx error, "
                             f"which no rule sees")
        if not any(mac) and mask == b"\xff" * 6:
            raise ValueError("00:00:00:00:00:00 is no source: a frame from it is an rx error, which no rule sees")
        return value

    @field_validator("ip_src", "ip_dst")
    @classmethod
    def _prefix_can_match(cls, value: Any, info: ValidationInfo) -> Any:
        eth_type = info.data.get("eth_type")
        if eth_type is not None and eth_type != IP_ETH_TYPE[value.version]:
            raise ValueError(f"an IPv{value.version} prefix never matches eth_type {eth_type:#06x}")
        src = info.data.get("ip_src")
        if info.field_name == "ip_dst" and src is not None and src.version != value.version:
            raise ValueError(f"ip_dst is IPv{value.version} and ip_src IPv{src.version}: no packet has both")
        return value

    @field_validator("ip_proto")
    @classmethod
    def _proto_can_match(cls, value: int, info: ValidationInfo) -> int:
        eth_type = info.data.get("eth_type")
        if eth_type is not None and eth_type not in IP_ETH_TYPE.values():
            raise ValueError(f"ip_proto needs an IP packet, and eth_type {eth_type:#06x} is neither IPv4 nor IPv6")
        version = _ip_version(info.data.get("ip_src"), info.data.get("ip_dst"), eth_type, None)
        if value == IP_PROTOS["icmp"] and version == 6:
            raise ValueError("icmp is IPv4's; IPv6 has icmpv6")
        if value == IP_PROTOS["icmpv6"] and version == 4:
            raise ValueError("icmpv6 is IPv6's; IPv4 has icmp")
        return value

    @field_validator("src_port", "dst_port")
    @classmethod
    def _ports_need_tcp_or_udp(cls, value: int, info: ValidationInfo) -> int:
        if "ip_proto" in info.data and info.data["ip_proto"] not in PORT_PROTOS:
            raise ValueError(f"{info.field_name} needs ip_proto tcp or udp")
        return value

    @property
    def ip_version(self) -> int | None:
        """4 or 6 when only packets of that IP version can match, else None."""
        return _ip_version(self.ip_src, self.ip_dst, self.eth_type, self.ip_proto)


def _ip_version(ip_src, ip_dst, eth_type, ip_proto) -> int | None:
    for prefix in (ip_src, ip_dst):
        if prefix is not None:
            return prefix.version
    for version, value in IP_ETH_TYPE.items():
        if eth_type == value:
            return version
    return {IP_PROTOS["icmp"]: 4, IP_PROTOS["icmpv6"]: 6}.get(ip_proto)


class AclRule(_Model):
    match: AclMatch
    action: Literal["allow", "drop"]


class Port(_Model):
    name: IfName  # the TAP device
    netns: Netns | None = None  # a name, an absolute path, or pid:N
    ifname: IfName | None = None  # rename inside the netns
    addresses: list[Address] = []
    mac: Mac | None = None  # lower-case with colons
    mtu: int = Field(1500, ge=68, le=65521)
    speed: int | None = Field(None, gt=0)  # Mbit/s, reported only
    remote: IfName | None = None  # existing interface to attach
    remote_mode: Literal["promisc", "local", "shared"] = "promisc"
    allmulti: bool = False
    vxlan: Vxlan | None = None  # a VXLAN port: the tunnel's settings
    vlan: VlanId | None = None  # access VLAN, untagged; on a trunk, its native VLAN
    trunk: list[VlanId] | None = None  # VLANs carried 802.1Q-tagged
    isolated: bool = False  # exchanges no frame with another isolated port
    mac_limit: int | None = Field(None, ge=1, le=16_777_216)  # learned MACs at most
    storm_control: StormControl | None = None
    acl: list[AclRule] = []  # on ingress, first match wins, default allow

    # Field validators run only on keys present in the file, after the fields
    # declared above them; a field that failed is absent from info.data, and
    # then the dependent rule stays silent rather than report a second error.

    @field_validator("name", "ifname")
    @classmethod
    def _is_not_loopback(cls, value: str | None) -> str | None:
        # Every namespace has its lo from its start: the TAP cannot take that name, there or here.
        if value == "lo":
            raise ValueError("lo is the loopback device, in every namespace: a TAP cannot be named so")
        return value

    @field_validator("ifname")
    @classmethod
    def _ifname_requires_netns(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and "netns" in info.data and info.data["netns"] is None:
            raise ValueError("ifname renames the port inside its netns: it requires netns")
        return value

    @field_validator("remote")
    @classmethod
    def _remote_excludes_netns(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("netns") is not None:
            raise ValueError("remote and netns are mutually exclusive")
        if value is not None and info.data.get("addresses"):
            raise ValueError(f"a remote port has no addresses: its TAP only carries frames between "
                             f"the switch and {value}, and what the switch sends it leaves through "
                             f"{value} (give the address to {value}, or to a port without remote)")
        return value

    @field_validator("remote")
    @classmethod
    def _remote_is_not_loopback(cls, value: str | None) -> str | None:
        # attached, it would send all of the host's loopback traffic into the switch
        if value == "lo":
            raise ValueError("lo is the loopback device; a remote is an Ethernet interface (NIC, VM tap, veth)")
        return value

    @field_validator("vxlan")
    @classmethod
    def _vxlan_excludes_netns_and_remote(cls, value: Vxlan | None, info: ValidationInfo) -> Vxlan | None:
        if value is not None:
            for other in ("netns", "remote"):
                if info.data.get(other) is not None:
                    raise ValueError(f"vxlan and {other} are mutually exclusive")
            if info.data.get("addresses"):
                raise ValueError("a VXLAN port has no addresses: its TAP only carries frames between "
                                 "the switch and the tunnel (give the address to a port without vxlan)")
        return value

    @field_validator("remote_mode", "allmulti")
    @classmethod
    def _only_with_remote(cls, value: Any, info: ValidationInfo) -> Any:
        if "remote" in info.data and info.data["remote"] is None:
            raise ValueError(f"{info.field_name} applies to a remote port: it requires remote")
        return value

    @field_validator("addresses")
    @classmethod
    def _addresses_are_listed_once(cls, value: list, info: ValidationInfo) -> list:
        first, errors = {}, []
        for j, iface in enumerate(value):
            if iface.ip in first:       # the kernel takes an address once, whatever its prefix
                errors.append(((j,), f"{iface.ip} is listed twice (first at addresses[{first[iface.ip]}])"))
            first.setdefault(iface.ip, j)
        if errors:
            raise LocatedErrors(errors)
        return value

    @field_validator("mtu")
    @classmethod
    def _mtu_carries_ipv6_addresses(cls, value: int, info: ValidationInfo) -> int:
        six = [j for j, iface in enumerate(info.data.get("addresses", [])) if iface.version == 6]
        if six and value < IPV6_MIN_MTU:    # the kernel gives such a device no IPv6 at all
            raise ValueError(f"IPv6 needs an MTU of {IPV6_MIN_MTU} or more, and addresses[{six[0]}] "
                             f"({info.data['addresses'][six[0]]}) is IPv6")
        return value

    @field_validator("trunk")
    @classmethod
    def _trunk_vlans_are_tagged_once(cls, value: list[int], info: ValidationInfo) -> list[int]:
        if not value:
            raise ValueError("a trunk carries at least one VLAN (no trunk: leave the key out)")
        native, first, errors = info.data.get("vlan"), {}, []
        for j, vid in enumerate(value):
            if vid in first:
                errors.append(((j,), f"VLAN {vid} is listed twice (first at trunk[{first[vid]}])"))
            elif vid == native:
                errors.append(((j,), f"VLAN {vid} is the native VLAN (vlan), untagged: it cannot be tagged too"))
            first.setdefault(vid, j)
        if errors:
            raise LocatedErrors(errors)
        return value

    @field_validator("acl")
    @classmethod
    def _acl_fits_the_port(cls, value: list[AclRule], info: ValidationInfo) -> list[AclRule]:
        if len(value) > MAX_ACL_RULES:
            raise ValueError(f"at most {MAX_ACL_RULES} rules per port (the fast path's bound), got {len(value)}")
        if "vlan" not in info.data or "trunk" not in info.data:
            return value  # the port's VLANs are wrong: reported there
        vlans = _vlans_of(info.data["vlan"], info.data["trunk"])
        errors = [((j, "match", "vlan"), f"VLAN {rule.match.vlan} is not a VLAN of this port ({_describe(vlans)})")
                  for j, rule in enumerate(value) if rule.match.vlan is not None and rule.match.vlan not in vlans]
        if errors:
            raise LocatedErrors(errors)
        return value

    @property
    def pvid(self) -> int | None:
        """The VLAN the port carries untagged: `vlan`, else 1 -- unless it is a trunk (then none)."""
        return _pvid_of(self.vlan, self.trunk)

    @property
    def vlans(self) -> frozenset[int]:
        """Every VLAN the port is in: its untagged one and its trunk's."""
        return _vlans_of(self.vlan, self.trunk)

    @property
    def netns_kind(self) -> Literal["name", "path", "pid"] | None:
        if self.netns is None:
            return None
        if self.netns.startswith("pid:"):
            return "pid"
        return "path" if self.netns.startswith("/") else "name"

    @property
    def netns_path(self) -> str | None:
        """The file that names the netns: /run/netns/NAME, the path, or /proc/N/ns/net."""
        kind = self.netns_kind
        if kind == "name":
            return f"/run/netns/{self.netns}"
        if kind == "pid":
            return f"/proc/{self.netns[4:]}/ns/net"
        return self.netns

    @property
    def mtu_given(self) -> bool:
        """The file sets mtu (else a port next to a VXLAN port takes the tunnel's)."""
        return "mtu" in self.model_fields_set

    @property
    def inner_name(self) -> str:
        """The interface's name where it lives (inside its netns, if any)."""
        return self.ifname or self.name


def _pvid_of(vlan: int | None, trunk: list[int] | None) -> int | None:
    if vlan is not None:
        return vlan
    return None if trunk else 1


def _vlans_of(vlan: int | None, trunk: list[int] | None) -> frozenset[int]:
    pvid = _pvid_of(vlan, trunk)
    return frozenset(trunk or ()) | ({pvid} if pvid is not None else set())


def _describe(vlans: frozenset[int]) -> str:
    return "its VLANs: " + ", ".join(map(str, sorted(vlans))) if vlans else "it is in no VLAN"


class Mirror(_Model):
    """Port mirroring (SPAN): copies of what `from` ports receive and/or send, to the `to` port."""

    name: MirrorName  # in metric labels
    from_: list[IfName] = Field(alias="from", min_length=1)  # the source ports
    to: IfName  # the monitor port: receives the copies, and only them
    direction: Literal["rx", "tx", "both"] = "both"  # what the sources receive, send, or both

    @field_validator("from_")
    @classmethod
    def _sources_are_distinct(cls, value: list[str]) -> list[str]:
        first, errors = {}, []
        for j, name in enumerate(value):
            if name in first:
                errors.append(((j,), f"{name!r} is listed twice (first at from[{first[name]}])"))
            first.setdefault(name, j)
        if errors:
            raise LocatedErrors(errors)
        return value

    @field_validator("to")
    @classmethod
    def _monitor_is_not_a_source(cls, value: str, info: ValidationInfo) -> str:
        if value in info.data.get("from_", []):
            raise ValueError(f"{value!r} is also a source (from): a monitor port only receives")
        return value

    @property
    def rx(self) -> bool:
        return self.direction in ("rx", "both")

    @property
    def tx(self) -> bool:
        return self.direction in ("tx", "both")


class StaticMac(_Model):
    """A MAC table entry that is never aged, never moved by learning, and survives a flush."""

    mac: StaticMacAddress
    port: IfName
    vlan: VlanId | None = None  # default: the port's untagged VLAN (Port.pvid)


class PortClash(LocatedErrors):
    """Parts that are each valid but do not fit together: ports that clash, a
    mirror or static MAC naming a port that is not there or cannot have it."""


class Config(_Model):
    switch: Switch
    ports: list[Port] = Field(min_length=1, max_length=256)
    mirrors: list[Mirror] = []
    static_macs: list[StaticMac] = []
    _source: str = PrivateAttr("<string>")
    _lines: dict = PrivateAttr(default_factory=dict)    # key path -> line (loads), for where()

    @field_validator("mirrors")
    @classmethod
    def _mirrors_fit_the_fast_path(cls, value: list[Mirror]) -> list[Mirror]:
        if len(value) > MAX_MIRRORS:
            raise ValueError(f"at most {MAX_MIRRORS} mirrors (the fast path's bound), got {len(value)}")
        return value

    def model_post_init(self, context: Any) -> None:
        self._source = (context or {}).get("source", "<string>")

    @property
    def source(self) -> str:
        """Where this config was read from: a path, "<demo>" or "<string>"."""
        return self._source

    def where(self, loc: tuple, message: str) -> str:
        """A problem with the key at `loc`, worded as a config error: FILE:LINE: key.path: message."""
        return f"{self._source}:{_line(self._lines, loc)}: {_key_path(loc)}: {message}"

    @model_validator(mode="after")
    def _ports_do_not_clash(self) -> Config:
        clashes = port_clashes(list(enumerate(self.ports)))
        clashes += underlay_clashes(list(enumerate(self.ports)))
        clashes += tunnel_mtu_clashes(list(enumerate(self.ports)), list(enumerate(self.mirrors)))
        clashes += reference_errors(list(enumerate(self.ports)), {p.name for p in self.ports},
                                    list(enumerate(self.mirrors)), list(enumerate(self.static_macs)))
        clashes += mac_clashes(list(enumerate(self.ports)), self.monitor_ports(), list(enumerate(self.static_macs)))
        clashes += static_mac_room(len(self.static_macs), self.switch.mac_table.size)
        clashes += monitor_port_settings([(i, p.name, {k: getattr(p, k) for k in p.model_fields_set})
                                          for i, p in enumerate(self.ports)], _monitors((i, m.to) for i, m in enumerate(self.mirrors)))
        if clashes:
            raise PortClash(clashes)
        return self

    def monitor_ports(self) -> set[str]:
        """The ports that mirrors send their copies to."""
        return {m.to for m in self.mirrors}

    def static_mac_entries(self) -> list[tuple[str, str, int]]:
        """(mac, port name, vlan) of each static MAC, vlan defaulted to its port's untagged VLAN."""
        pvid = {p.name: p.pvid for p in self.ports}
        return [(s.mac, s.port, s.vlan if s.vlan is not None else pvid[s.port]) for s in self.static_macs]


IDENTITY = ("name", "netns", "ifname", "remote", "vxlan")  # the Port keys that port_clashes reads


def port_clashes(ports: list[tuple[int, Port]]) -> list[tuple[tuple, str]]:
    """(loc, message) for every port that clashes with an earlier one, given (index, port) pairs."""
    clashes = []
    by_port = dict(ports)
    identity = {i: netns_identity(p.netns_path) for i, p in ports if p.netns is not None}
    by_name: dict[str, int] = {}  # TAP name → first port index
    by_inner: dict[tuple[tuple, str], int] = {}  # (netns_identity, name inside) → first port index
    by_remote: dict[tuple, int] = {}  # device_identity of the remote → first port index
    for i, port in ports:
        if port.name in by_name:
            first = by_name[port.name]
            clashes.append((("ports", i, "name"), f"duplicate port name {port.name!r} (first at ports[{first}])"))
        by_name.setdefault(port.name, i)
        if port.netns is not None:  # in the host's netns the name rule above already holds
            key = (identity[i], port.inner_name)
            if key in by_inner:
                where = ("ports", i, "ifname" if port.ifname else "name")
                first = by_inner[key]
                clashes.append((where, f"{port.inner_name!r} is already in netns {port.netns!r} "
                                       f"(ports[{first}]{_same_netns(port, by_port[first])})"))
            by_inner.setdefault(key, i)
        if port.remote is not None:
            key = device_identity(port.remote)
            if key in by_remote:
                first = by_remote[key]
                same = "" if by_port[first].remote == port.remote else f", whose remote {by_port[first].remote!r} is the same device"
                clashes.append((("ports", i, "remote"), f"{port.remote!r} is already attached by ports[{first}]{same}"))
            by_remote.setdefault(key, i)
    by_vni: dict[tuple[int, int, int], int] = {}  # the kernel takes one device per VNI, UDP port and family
    for i, port in ports:
        if port.vxlan is not None:
            key = (port.vxlan.vni, port.vxlan.dstport, port.vxlan.local.version)
            if key in by_vni:
                clashes.append((("ports", i, "vxlan", "vni"), f"VNI {key[0]} on UDP port {key[1]} over IPv{key[2]} "
                                                              f"is already ports[{by_vni[key]}]'s"))
            by_vni.setdefault(key, i)
    by_tunnel: dict[str, int] = {}  # VXLAN device name → first port index
    for i, port in ports:
        if port.vxlan is not None:
            device = tunnel.device_name(port.name)
            if device in by_tunnel:     # two long names alike in their first 9 bytes and CRC-32's low 16 bits
                clashes.append((("ports", i, "vxlan"), f"its device {device!r} is also ports[{by_tunnel[device]}]'s (that "
                                                       f"of a name over {tunnel.IFNAMSIZ - len(tunnel.SUFFIX)} bytes is its "
                                                       f"first 9 bytes and 4 hex digits of its CRC-32); rename one of them"))
            by_tunnel.setdefault(device, i)
    # A TAP moved into a namespace (one the switch did not make) enters it under its port name and
    # is renamed there: another port's ifname of that name would meet it, or not, as the ports'
    # set-ups, made side by side, happen to interleave.
    entering = {(identity[i], p.name): i for i, p in ports if p.netns is not None and p.inner_name != p.name}
    for i, port in ports:  # once every name is known: a remote may name a later port
        other = entering.get((identity[i], port.ifname)) if port.netns is not None else None
        if other is not None and other != i:
            same = _same_netns(port, by_port[other])
            clashes.append((("ports", i, "ifname"), f"{port.ifname!r} is the name ports[{other}]'s TAP{same and same + ','} "
                                                    f"enters netns {port.netns!r} under, before its rename; rename one of them"))
        if port.remote in by_name:
            first = by_name[port.remote]
            clashes.append((("ports", i, "remote"), f"{port.remote!r} is the TAP of ports[{first}]; a port cannot attach a port"))
        if port.remote in by_tunnel:
            first = by_tunnel[port.remote]
            clashes.append((("ports", i, "remote"), f"{port.remote!r} is the VXLAN device of ports[{first}]"))
        if port.vxlan is not None and tunnel.device_name(port.name) in by_name:
            other = by_name[tunnel.device_name(port.name)]
            clashes.append((("ports", i, "vxlan"), f"its device {tunnel.device_name(port.name)!r} "
                                                   f"is the name of ports[{other}]; rename one of them"))
    return clashes


UNDERLAY_KEYS = ("name", "remote", "remote_mode", "mac", "vxlan")  # what underlay_clashes reads


def underlay_clashes(ports: list[tuple[int, Port]]) -> list[tuple[tuple, str]]:
    """(loc, message) for every remote port whose IFACE is a VXLAN port's underlay (`vxlan.dev`)
    and whose rules would take the tunnel's packets from the host: in promisc mode every frame
    arriving on IFACE goes to the switch, in local mode without `mac:` every frame for IFACE's
    MAC (the port's). The kernel then decapsulates nothing: the tunnel carries nothing in, both
    ports up, and the remote hosts' UDP lands on the segment as frames of the underlay. Shared
    mode, or local mode with a MAC of the port's own, leaves the host its own unicast."""
    underlays = {}     # device_identity of a vxlan.dev -> first VXLAN port's index
    for i, port in ports:
        if port.vxlan is not None and port.vxlan.dev is not None:
            underlays.setdefault(device_identity(port.vxlan.dev), i)
    clashes = []
    for i, port in ports:
        if port.remote is None or (first := underlays.get(device_identity(port.remote))) is None:
            continue
        if port.remote_mode == "promisc":
            how = "in promisc mode every frame arriving on it goes to the switch"
        elif port.remote_mode == "local" and port.mac is None:
            how = "in local mode without mac the port takes its MAC, and every frame for that MAC goes to the switch"
        else:
            continue
        clashes.append((("ports", i, "remote"), f"{port.remote!r} is the underlay of ports[{first}]'s VXLAN tunnel "
                                                f"(vxlan.dev): {how}, the tunnel's packets too, and the tunnel would "
                                                f"carry nothing in (use remote_mode shared, or local with a mac)"))
    return clashes


def netns_identity(path: str) -> tuple:
    """What tells one namespace from another, given the path of its file: the (device, inode) of
    the file there -- the namespace's own, through a bind mount or /proc/PID/ns/net -- else the
    path with its directories' symlinks resolved. Two netns written otherwise can so be one
    namespace: x and /var/run/netns/x (/var/run is /run), pid:N and the name its namespace was
    given, two processes of one container; what the ports make there meets all the same."""
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except OSError:
        pass
    head, name = os.path.split(path)
    try:
        return os.path.realpath(head), name
    except OSError:         # a directory not ours to read (/proc/1/ns, without CAP_SYS_PTRACE)
        return (path,)


def device_identity(name: str) -> tuple:
    """What tells one device of the switch's namespace from another, given a name of it: its
    index, when there is one by that name (an altname, `ip link property add dev eth1 altname
    uplink`, is another name of the same device), else the name."""
    try:
        return ("index", socket.if_nametoindex(name))
    except OSError:
        return ("name", name)


def _same_netns(port: Port, other: Port) -> str:
    """What says that two ports' netns, written otherwise, are one namespace ("" if written alike)."""
    if port.netns_path == other.netns_path:
        return ""
    return f", whose netns {other.netns!r} is the same namespace"


def mac_clashes(ports: list[tuple[int, Port]], monitors: Iterable[str] = (),
                statics: list[tuple[int, StaticMac]] = ()) -> list[tuple[tuple, str]]:
    """(loc, message) for every port whose mac is an earlier port's in a VLAN of both, and
    every static MAC that is a port's mac in that port's VLAN but on another port, given
    (index, port) and (index, static MAC) pairs: the MAC table holds a (MAC, VLAN) on one
    port, so the switch would move it to whichever of the two sent last, or keep it static
    where the port's frames never are. A monitor port (a mirror's `to`) is in no VLAN: what
    it sends is dropped, never learned."""
    clashes = []
    first: dict[str, list[tuple[int, Port]]] = {}
    for i, port in ports:
        if port.mac is None or port.name in monitors:
            continue
        for j, other in first.get(port.mac, []):
            shared = port.vlans & other.vlans
            if shared:
                clashes.append((("ports", i, "mac"), f"{port.mac} is also the MAC of ports[{j}], and both are "
                                                     f"in VLAN {min(shared)}: the switch can learn it on one port only"))
                break
        first.setdefault(port.mac, []).append((i, port))
    by_name = {p.name: p for _, p in ports}
    for i, s in statics:
        on = by_name.get(s.port)
        vlan = s.vlan if s.vlan is not None else on.pvid if on is not None else None
        for j, port in first.get(s.mac, []):
            if port.name != s.port and vlan in port.vlans:
                clashes.append((("static_macs", i, "mac"), f"{s.mac} is the MAC of ports[{j}] ({port.name!r}) in "
                                                           f"VLAN {vlan}: static on {s.port!r}, its frames would go there"))
    return clashes


def tunnel_mtu_clashes(ports: list[tuple[int, Port]], mirrors: list[tuple[int, Mirror]] = ()) -> list[tuple[tuple, str]]:
    """(loc, message) for every mtu that no underlay could carry across a VXLAN port of the
    switch, given (index, port) pairs and the (index, mirror) pairs (a trunk's monitor port
    sends tagged frames, as a trunk does).

    The underlay's MTU is known only at start (and checked then); here, the
    largest an underlay can have, less the VXLAN overhead, is the bound, and
    a VXLAN port's own mtu, which bounds the others' as the start has it
    (tunnel.segment_mtus).
    """
    tunnels = [(i, p) for i, p in ports if p.vxlan is not None]
    if not tunnels:
        return []
    tagged = tunnel.sends_tagged({p.name for _, p in ports if p.trunk}, [(m.from_, m.to) for _, m in mirrors])

    def room(p: Port) -> int:        # tagged frames cross with their 802.1Q tag (tunnel.segment_mtus)
        return tunnel.MTU_MAX - p.vxlan.overhead - (tunnel.VLAN_HLEN if p.name in tagged else 0)

    def carried(p: Port) -> int:
        return min(room(p), p.mtu) if p.mtu_given else room(p)

    i_min, narrowest = min(tunnels, key=lambda t: carried(t[1]))
    limit = carried(narrowest)
    kind = " trunk" if narrowest.trunk else " trunk's monitor port" if narrowest.name in tagged else ""
    across = (f"VXLAN, whose mtu is {limit}" if limit < room(narrowest)
              else f"IPv{narrowest.vxlan.local.version} VXLAN{kind} (at most {limit})")
    return [(("ports", i, "mtu"), f"mtu {p.mtu} cannot cross {'this port' if i == i_min else f'ports[{i_min}]'}'s "
                                  f"{across}") for i, p in ports if p.mtu_given and p.mtu > limit]


def static_mac_room(statics: int, size: int) -> list[tuple[tuple, str]]:
    """(loc, message) if there are more static MACs than the MAC table holds: static entries
    are never evicted, so the rest could not be placed."""
    if statics <= size:
        return []
    return [(("static_macs",), f"{statics} static MACs, more than switch.mac_table.size ({size}) holds")]


def reference_errors(ports: list[tuple[int, Port]], names: set[str], mirrors: list[tuple[int, Mirror]],
                     statics: list[tuple[int, StaticMac]]) -> list[tuple[tuple, str]]:
    """(loc, message) for every mirror or static MAC that names a port that is not
    there or cannot have it. `names` holds every port name in the file; `ports`
    the ports whose VLAN keys are valid, given as (index, port) pairs."""
    errors = []
    by_name = {p.name: p for _, p in ports}
    first_name: dict[str, int] = {}
    monitor_of = _monitors((i, m.to) for i, m in mirrors)
    for i, m in mirrors:
        if m.name in first_name:
            errors.append((("mirrors", i, "name"), f"duplicate mirror name {m.name!r} (first at mirrors[{first_name[m.name]}])"))
        first_name.setdefault(m.name, i)
        for j, source in enumerate(m.from_):
            if source not in names:
                errors.append((("mirrors", i, "from", j), f"no port named {source!r}"))
        if m.to not in names:
            errors.append((("mirrors", i, "to"), f"no port named {m.to!r}"))
    for i, m in mirrors:  # once every monitor is known: a mirror may name a later one's
        for j, source in enumerate(m.from_):
            if source in monitor_of and source != m.to:
                errors.append((("mirrors", i, "from", j),
                               f"{source!r} is the monitor port of mirrors[{monitor_of[source]}]: it only receives"))
    first_entry: dict[tuple[str, int], int] = {}
    for i, s in statics:
        if s.port not in names:
            errors.append((("static_macs", i, "port"), f"no port named {s.port!r}"))
            continue
        if s.port in monitor_of:
            errors.append((("static_macs", i, "port"),
                           f"{s.port!r} is the monitor port of mirrors[{monitor_of[s.port]}]: it only receives"))
            continue
        port = by_name.get(s.port)
        if port is None:
            continue  # its VLAN keys are wrong: reported there
        vlan = s.vlan if s.vlan is not None else port.pvid
        if vlan is None:
            errors.append((("static_macs", i, "port"), f"port {s.port!r} is a trunk without a native VLAN: give vlan"))
            continue
        if vlan not in port.vlans:
            errors.append((("static_macs", i, "vlan"), f"VLAN {vlan} is not a VLAN of port {s.port!r} ({_describe(port.vlans)})"))
            continue
        if (s.mac, vlan) in first_entry:
            errors.append((("static_macs", i, "mac"),
                           f"{s.mac} in VLAN {vlan} is already static_macs[{first_entry[s.mac, vlan]}]"))
        first_entry.setdefault((s.mac, vlan), i)
    return errors


# What a monitor port does not do as a switch port, and so what each of these Port keys
# would act on: the fast path drops what it sends before its VLAN, ACL, MAC limit or storm
# control is read (fastpath.c, rx_accept), and sends it the mirrors' copies as they are.
MONITOR_IGNORES = {
    "vlan": "it is in no VLAN; each copy leaves it tagged or not as its source port had the frame",
    "trunk": "it is in no VLAN; each copy leaves it tagged or not as its source port had the frame",
    "isolated": "it exchanges no frame with any port, isolated or not: it gets the mirrors' copies only",
    "mac_limit": "what it sends is dropped, never learned",
    "storm_control": "what it sends is dropped, never flooded",
    "acl": "what it sends is dropped, never filtered",
}


def _monitors(tos: Iterable[tuple[int, str]]) -> dict[str, int]:
    """monitor port -> the first mirror sending to it, given (index, to) of each mirror."""
    first: dict[str, int] = {}
    for i, to in tos:
        first.setdefault(to, i)
    return first


def _asks_nothing(value: Any, default: Any) -> bool:
    """A setting's value that sets nothing: its default, or a mapping of limits all unset
    (`storm_control: {}`, as a model or as the YAML's dict)."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return value == default or (isinstance(value, dict) and all(v is None for v in value.values()))


def monitor_port_settings(ports: list[tuple[int, Any, dict]], monitors: dict[str, int]) -> list[tuple[tuple, str]]:
    """(loc, message) for every key of MONITOR_IGNORES written on a monitor port with
    another value than its default, given (index, name, {key written: value}) of each port.

    Accepted, such a key would be silently ignored, where its writer believes it
    holds. A key left out, or written as its default (`isolated: false`, `acl: []`) or
    with nothing in it (`storm_control: {}`), asks for nothing and is no error.
    """
    errors = []
    for i, name, written in ports:
        if not isinstance(name, str) or name not in monitors:
            continue
        for key, reason in MONITOR_IGNORES.items():
            if key in written and not _asks_nothing(written[key], Port.model_fields[key].default):
                errors.append((("ports", i, key), f"{key} has no effect on a monitor port ({name!r} is "
                                                  f"mirrors[{monitors[name]}]'s): {reason}"))
    return errors


# --- Loading -----------------------------------------------------------------


MAX_CONFIG_BYTES = 16 * 2**20  # a config of 256 ports with every key is under 1 MiB


WRITER_WAIT = 2.0      # seconds load waits for a writer that has the config open to close it
WRITER_POLL = 0.02


def _lease(fd: int) -> bool | None:
    """Take a read lease on the file open at fd: True, held; False, another process has the file
    open for writing; None, no lease can be had (not the file's owner and no CAP_LEASE, leases
    off, a filesystem without them): who writes cannot be told. A writer that opens the file
    while the lease is held waits until it is let go (_unlease); the kernel signals the holder
    then, with SIGURG, ignored (its default SIGIO would end the process)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        return False if e.errno == errno.EAGAIN else None
    return True


def _unlease(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:
        pass


def _read_written(f, path: str) -> bytes:
    """The file's bytes once no other process has it open for writing: a config being written
    (an editor saving it in place, `cat > FILE`, a copy) is read whole, not cut where the writer
    had got to, which may parse as a config with fewer ports or other values (a reload would
    apply it). A writer that keeps it open WRITER_WAIT seconds is a ConfigError. The bytes are
    read under a read lease: no writer can open the file meanwhile."""
    deadline = time.monotonic() + WRITER_WAIT
    while (held := _lease(f.fileno())) is False:
        if time.monotonic() >= deadline:
            raise ConfigError([f"{path}:0: -: cannot read: another process has it open for writing "
                               f"(still after {WRITER_WAIT:g} s): try again once that process has closed it, or "
                               "write a new file and rename it over this one"])
        time.sleep(WRITER_POLL)
    try:
        return f.read(MAX_CONFIG_BYTES + 1)
    finally:
        if held:
            _unlease(f.fileno())


def load(path: str | None) -> Config:
    """The config in the file at `path`, or the built-in demo when None; raises ConfigError."""
    if path is None:
        text = importlib.resources.files("tapswitch").joinpath("demo.yaml").read_text("utf-8")
        return loads(text, DEMO)
    try:
        # O_NONBLOCK: opening a FIFO waits for a writer; it is to be refused, not waited for.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # Checked on the fd, before open() takes it: open() refuses a directory naming it by the
        # fd's number ("Is a directory: 3"), and leaves the fd open (one more at every reload).
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError([f"{path}:0: -: cannot read: not a regular file"])
        with open(fd, "rb") as f:
            raw = _read_written(f, path)
    except OSError as e:
        if e.errno == errno.ENXIO and _is_socket(path):       # open() says "No such device or address"
            raise ConfigError([f"{path}:0: -: cannot read: not a regular file"]) from None
        raise ConfigError([f"{path}:0: -: cannot read: {e.strerror or e}"]) from None    # the reason in words: the path is said already
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}:0: -: cannot read: larger than {MAX_CONFIG_BYTES // 2**20} MiB"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = _line_at(_line_ends(raw[:e.start].decode("utf-8")), e.start) + 1
        raise ConfigError([f"{path}:{line}: -: cannot read: not UTF-8: byte 0x{raw[e.start]:02x}"]) from None
    return loads(text, path)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def loads(text: str, source: str = "<string>") -> Config:
    """The config in `text` (named `source` in errors); raises ConfigError with every error found."""
    root, data, (lines, errors, numbers) = _parse(text, source)
    if root is None:
        raise ConfigError([f"{source}:1: -: empty config: expected a mapping with switch and ports"])
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:{lines[()]}: -: the top level must be a mapping, got {_kind(data)}"])

    located: list[Located] = list(errors)
    try:
        config = Config.model_validate(data, context={"source": source})
    except ValidationError as e:
        config = None
        located += _from_pydantic(e) + _keys_not_names(root, e)
        if not any(isinstance(x.get("ctx", {}).get("error"), PortClash) for x in e.errors()):
            located += [(loc, msg, None) for loc, msg in port_clashes(_identity_views(data.get("ports")))]
            located += [(loc, msg, None) for loc, msg in underlay_clashes(_port_views(data.get("ports"), UNDERLAY_KEYS))]
            located += [(loc, msg, None) for loc, msg in tunnel_mtu_clashes(_port_views(data.get("ports"), MTU_KEYS),
                                                                             _valid_items(Mirror, data.get("mirrors")))]
            located += [(loc, msg, None) for loc, msg in mac_clashes(_port_views(data.get("ports"), MAC_KEYS),
                                                                      _monitors_written(data),
                                                                      _valid_items(StaticMac, data.get("static_macs")))]
            located += [(loc, msg, None) for loc, msg in _references(data)]
            located += [(loc, msg, None) for loc, msg in _monitor_settings(data)]
        located += [(loc, msg, None) for loc, msg in _acl_vlans(data)]
    # A number YAML 1.1 reads in octal or base 60, beside what the key says of the value it
    # got, unless that says it already (a MAC address read as a number).
    said = {_str(loc) for loc, msg, _ in located if MAC_READ_AS_A_NUMBER in msg}
    located += [n for n in numbers if _str(n[0]) not in said]
    if located:
        numbered = [(line or _line(lines, loc), _key_path(loc), msg) for loc, msg, line in located]
        numbered = list(dict.fromkeys(numbered))    # _acl_vlans repeats what a port's own check said
        numbered.sort(key=lambda n: n[0])  # file order; pydantic's order within a line
        raise ConfigError([f"{source}:{line}: {path}: {msg}" for line, path, msg in numbered])
    config._lines = lines
    return config


def _parse(text: str, source: str) -> tuple[yaml.Node | None, Any, tuple]:
    """The document's root node (None when empty), its Python value, and _lines of it;
    a YAML error is a ConfigError."""
    try:
        loader = _Loader(text)
        try:
            try:
                root = loader.get_single_node()
            except RecursionError:      # where composing got to: the line where the nesting got too deep
                line = _line_at(_line_ends(text), loader.index) + 1
                raise ConfigError([f"{source}:{line}: -: YAML: nested too deeply"]) from None
            if root is None:
                return None, None, _lines(None)
            _count_file_lines(root, text)
            _check_depth(root, source)
            _check_expansion(root, source)
            _resolve_merge_keys(root, source)
            found = _lines(root)
            try:
                return root, loader.construct_document(root), found
            except _Unconvertible as e:
                path = _path_to(root, e.node)
                raise ConfigError([f"{source}:{e.node.start_mark.line + 1}: {_key_path(path or ())}: "
                                   f"YAML: {e.problem}"]) from None
        finally:
            loader.dispose()
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = _line_at(_line_ends(text), mark.index) + 1 if mark else 0      # as _count_file_lines has it
        problem = ": ".join(str(p) for p in (e.context, e.problem) if p) or "invalid YAML"
        if "'\\t'" in str(e.problem):       # PyYAML takes a tab for no whitespace in indents, and after ':'
            problem += f" (column {mark.column + 1}: indent and separate with spaces, not tabs)"
        raise ConfigError([f"{source}:{line}: -: YAML: {problem}"]) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        line = _line_at(_line_ends(text), e.position) + 1
        raise ConfigError([f"{source}:{line}: -: YAML: character #x{e.character:04x} is not allowed"]) from None
    except RecursionError:
        raise ConfigError([f"{source}:0: -: YAML: nested too deeply"]) from None
    except Exception as e:  # noqa: BLE001 -- a mapping's keys are hashed outside _Loader.construct_object
        raise ConfigError([f"{source}:0: -: YAML: cannot convert a value: {type(e).__name__}: {e}"]) from None


# Line breaks as editors, `grep -n` and compilers count them; YAML 1.1 (and PyYAML) count
# U+0085, U+2028 and U+2029 too, which none of them does.
_LINE_BREAK = re.compile("\r\n|\r|\n")
_UNICODE_BREAK = re.compile("[\x85\u2028\u2029]")


def _line_ends(text: str) -> list[int]:
    """Where each line of `text` ends (the index after its break), for _line_at."""
    return [m.end() for m in _LINE_BREAK.finditer(text)]


def _line_at(ends: list[int], index: int) -> int:
    """The 0-based line of the character at `index`, given _line_ends."""
    return bisect.bisect_right(ends, index)


def _count_file_lines(root: yaml.Node, text: str) -> None:
    """Make every node's marks say the line that an editor shows it on: PyYAML counts U+0085
    (NEL), U+2028 and U+2029 as line breaks, so one of them in a string or a comment (pasted
    from a web page, a word processor) moved every error after it one line down."""
    if not _UNICODE_BREAK.search(text):
        return              # PyYAML's lines are the file's
    ends = _line_ends(text)
    for node in _each_node(root):
        for mark in (node.start_mark, node.end_mark):
            mark.line = _line_at(ends, mark.index)


def _each_node(root: yaml.Node):
    """Every node of the document once (aliases share nodes, and may make loops), each before
    its children are read: what the caller changes in a node's value is what is walked."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, yaml.SequenceNode):
            stack += node.value
        elif isinstance(node, yaml.MappingNode):
            stack += [v for _, v in node.value] + [k for k, _ in node.value]


class _Unconvertible(Exception):
    """A node whose value YAML cannot build (`problem` says why), for its line and key path."""

    def __init__(self, node: yaml.Node, problem: str):
        super().__init__(problem)
        self.node, self.problem = node, problem


class _Loader(yaml.SafeLoader):
    """SafeLoader, whose conversions raise _Unconvertible naming the node that failed: PyYAML's
    constructors raise what the conversion raises (ValueError for the date 2001-13-45, for
    an !!int abc, for a number of more than 4300 digits...), which names no place in the file."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (_Unconvertible, RecursionError):
            raise
        except yaml.constructor.ConstructorError as e:       # an unknown tag (!!python/object...)
            raise _Unconvertible(node, e.problem) from None
        except Exception as e:  # noqa: BLE001 -- whatever the conversion raised
            raise _Unconvertible(node, f"cannot read {_written(node)} as {_TAG_KINDS.get(node.tag, node.tag)}: "
                                       f"{_conversion_problem(node, e)}") from None


_TAG_KINDS = {
    "tag:yaml.org,2002:int": "an integer", "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean", "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date", "tag:yaml.org,2002:binary": "binary",
    "tag:yaml.org,2002:str": "a string",
}


def _written(node: yaml.Node, limit: int = 40) -> str:
    """A node as the file writes it, cut short."""
    if not isinstance(node, yaml.ScalarNode):
        return "this value"
    text = node.value if len(node.value) <= limit else node.value[:limit] + "..."
    return repr(text)


def _conversion_problem(node: yaml.Node, error: Exception) -> str:
    """Why a conversion failed, in the file's terms: Python's words for an integer too long
    to read name sys.set_int_max_str_digits(), which a config's writer cannot call."""
    digits = len(re.sub(r"[^0-9]", "", node.value)) if isinstance(node, yaml.ScalarNode) else 0
    if node.tag == _INT and isinstance(error, ValueError) and digits > sys.get_int_max_str_digits() > 0:
        return f"{digits} digits, more than an integer may have ({sys.get_int_max_str_digits()})"
    return str(error) or type(error).__name__


def _path_to(root: yaml.Node, target: yaml.Node) -> tuple | None:
    """The key path of `target` in the document (list items by index, keys as written), the
    first one found when aliases share it; None if it is not there."""
    seen: set[int] = set()
    stack: list[tuple[tuple, yaml.Node]] = [((), root)]
    while stack:
        path, node = stack.pop()
        if node is target:
            return path
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack += [(path + (i,), item) for i, item in reversed(list(enumerate(node.value)))]
        elif isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):
                written = key.value if isinstance(key, yaml.ScalarNode) else "?"
                stack += [(path + (written,), value), (path + (written,), key)]
    return None


_MERGE = "tag:yaml.org,2002:merge"


def _resolve_merge_keys(root: yaml.Node, source: str) -> None:
    """Replace each `<<: *a` or `<<: [*a, *b]` with the keys it merges, in place, as
    YAML's merge key type says: the keys written beside it win, then the first map's.

    PyYAML 6.0.4 would let the last map win when its key strings are not the
    same object in memory (`mtu` from two anchors, not `x`); done here, no
    merge key is left for it. A second `<<` in one mapping (a duplicate key)
    and a merge of something other than mappings are errors at the `<<`.
    """
    resolved: set[int] = set()

    def resolve(node: yaml.MappingNode, busy: set[int]) -> None:
        if id(node) in resolved or id(node) in busy:
            return
        busy.add(id(node))
        written, merged = [], []
        first = None
        for key, value in node.value:
            if key.tag != _MERGE:
                written.append((key, value))
                continue
            line = key.start_mark.line + 1
            if first is not None:
                raise ConfigError([f"{source}:{line}: -: YAML: a second merge key '<<' in one mapping (first at "
                                   f"line {first}); merge several with <<: [*a, *b]"])
            first = line
            maps = value.value if isinstance(value, yaml.SequenceNode) else [value]
            if not all(isinstance(m, yaml.MappingNode) for m in maps):
                raise ConfigError([f"{source}:{line}: -: YAML: a merge key '<<' takes a mapping or a list "
                                   f"of mappings (an alias of one, as in <<: *base)"])
            for m in maps:
                resolve(m, busy)
                merged += m.value
        taken = {(k.tag, k.value) for k, _ in written if isinstance(k, yaml.ScalarNode)}
        for key, value in merged:
            if isinstance(key, yaml.ScalarNode) and (key.tag, key.value) not in taken:
                taken.add((key.tag, key.value))
                written.append((key, value))
        node.value = written
        resolved.add(id(node))

    for node in _each_node(root):
        if isinstance(node, yaml.MappingNode) and any(key.tag == _MERGE for key, _ in node.value):
            resolve(node, set())


MAX_DEPTH = 32      # mappings and lists inside one another: a config's deepest value, ports[].acl[].match.vlan, is 6 down


def _check_depth(root: yaml.Node, source: str) -> None:
    """Refuse a document nested deeper than any config is, at the line and key where it goes
    too deep: what reads it further (PyYAML's constructor, pydantic, _check_expansion) recurses,
    and its RecursionError would say no line."""
    deepest: dict[int, int] = {}    # node → the deepest it was looked into from: aliases share nodes
    stack: list[tuple[yaml.Node, tuple, frozenset]] = [(root, (), frozenset())]
    while stack:
        node, path, above = stack.pop()
        if id(node) in above or deepest.get(id(node), -1) >= len(path):
            continue                # an alias inside its own anchor, or a node seen as deep already
        deepest[id(node)] = len(path)
        if len(path) > MAX_DEPTH:
            raise ConfigError([f"{source}:{node.start_mark.line + 1}: {_key_path(path[:MAX_DEPTH])}: "
                               f"nested more than {MAX_DEPTH} deep: no key of a config is"])
        above = above | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            stack += [(item, path + (i,), above) for i, item in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            stack += [(value, path + (key.value if isinstance(key, yaml.ScalarNode) else "?",), above)
                      for key, value in node.value]


MAX_ALIAS_EXPANSION = 100_000   # nodes that aliases may add to a document


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse an alias bomb (billion laughs, with lists or merge keys) before anything is built.

    Composing shares an aliased node; building it (and PyYAML's merge-key
    flattening) copies it every time. Count the nodes the document stands
    for, each aliased node as often as it is used: linear in the nodes
    written, thanks to the memo, whatever they would expand to.
    """
    memo: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = memo.get(id(node))
        if known is not None:
            return known
        memo[id(node)] = 1               # an alias cycle counts once
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            n = 1
        memo[id(node)] = n
        return n

    expanded = size(root)
    if expanded - len(memo) > MAX_ALIAS_EXPANSION:
        raise ConfigError([f"{source}:{root.start_mark.line + 1}: -: YAML: aliases expand to "
                           f"{expanded:,} nodes, more than {MAX_ALIAS_EXPANSION:,} (an alias bomb?)"])


VLAN_KEYS = ("name", "vlan", "trunk")   # what reference_errors and the ACLs' VLAN check read of a port
MTU_KEYS = ("name", "mtu", "vxlan", "trunk")     # what tunnel_mtu_clashes reads
MAC_KEYS = ("name", "mac", "vlan", "trunk")     # what mac_clashes reads


def _port_views(ports: Any, keys: tuple[str, ...]) -> list[tuple[int, Port]]:
    """(index, port) for each port built from `keys` alone, where those are valid.

    A check that reads only these keys so finds its errors in ports whose other
    keys (mac, acl...) are wrong, beside those errors.
    """
    return _valid_items(Port, [{k: v for k, v in raw.items() if k in keys} if isinstance(raw, dict) else raw
                               for raw in (ports if isinstance(ports, list) else [])])


def _identity_views(ports: Any) -> list[tuple[int, Port]]:
    """The ports as port_clashes reads them: each from IDENTITY, or, where one of those keys
    is wrong (a remote `lo`, a netns no name can be), from its name alone. Its TAP has that
    name all the same: a later port of the name is a duplicate, and a remote naming it names a TAP."""
    ports = ports if isinstance(ports, list) else []
    views = dict(_port_views(ports, IDENTITY))
    views.update((i, port) for i, port in _port_views(ports, ("name",)) if i not in views)
    return sorted(views.items())


def _references(data: dict) -> list[tuple[tuple, str]]:
    """reference_errors over the parts of a config that failed elsewhere: every
    port name written, the ports whose VLAN keys are valid, the valid mirrors
    and static MACs."""
    ports = data.get("ports") if isinstance(data.get("ports"), list) else []
    names = {raw["name"] for raw in ports if isinstance(raw, dict) and isinstance(raw.get("name"), str)}
    views = _port_views(ports, VLAN_KEYS)
    mirrors, statics = _valid_items(Mirror, data.get("mirrors")), _valid_items(StaticMac, data.get("static_macs"))
    errors = reference_errors(views, names, mirrors, statics)
    # A mirror or static MAC wrong elsewhere still names ports: those must be there.
    for key, valid, fields in (("mirrors", mirrors, ("from", "to")), ("static_macs", statics, ("port",))):
        items = data.get(key) if isinstance(data.get(key), list) else []
        for i in sorted(set(range(len(items))) - {i for i, _ in valid}):
            for field in fields if isinstance(items[i], dict) else ():
                named = items[i].get(field)
                for loc, name in ([((key, i, field, j), n) for j, n in enumerate(named)] if isinstance(named, list)
                                  else [((key, i, field), named)]):
                    if isinstance(name, str) and name not in names:
                        errors.append((loc, f"no port named {name!r}"))
    return errors


def _monitors_written(data: dict) -> dict[str, int]:
    """_monitors of a config that failed elsewhere: every mirror's `to` written as a string
    makes a monitor port, whatever else is wrong with the mirror."""
    mirrors = data.get("mirrors") if isinstance(data.get("mirrors"), list) else []
    return _monitors((i, m["to"]) for i, m in enumerate(mirrors) if isinstance(m, dict) and isinstance(m.get("to"), str))


def _monitor_settings(data: dict) -> list[tuple[tuple, str]]:
    """monitor_port_settings over a config that failed elsewhere."""
    monitors = _monitors_written(data)
    ports = data.get("ports") if isinstance(data.get("ports"), list) else []
    return monitor_port_settings([(i, raw.get("name"), raw) for i, raw in enumerate(ports) if isinstance(raw, dict)],
                                 monitors)


def _acl_vlans(data: dict) -> list[tuple[tuple, str]]:
    """ACL rules that match a VLAN their port is not in, found in a config that failed
    elsewhere: a port's own check runs only once all its rules are valid."""
    ports = data.get("ports") if isinstance(data.get("ports"), list) else []
    errors = []
    for i, view in _port_views(ports, VLAN_KEYS):
        for j, rule in _valid_items(AclRule, ports[i].get("acl")):
            if rule.match.vlan is not None and rule.match.vlan not in view.vlans:
                errors.append((("ports", i, "acl", j, "match", "vlan"),
                               f"VLAN {rule.match.vlan} is not a VLAN of this port ({_describe(view.vlans)})"))
    return errors


def _valid_items(model: type[_Model], items: Any) -> list[tuple[int, Any]]:
    """(index, model) for each item of a list that is a valid `model` on its own."""
    valid = []
    for i, raw in enumerate(items if isinstance(items, list) else []):
        try:
            valid.append((i, model.model_validate(raw)))
        except ValidationError:
            pass
    return valid


def _lines(root: yaml.Node | None) -> tuple[dict[tuple, int], list[Located], list[Located]]:
    """{key path: 1-based line} for every key and list item, the duplicate keys found,
    and the numbers YAML 1.1 reads in a base nobody meant (see _number_problem).

    Merge keys are resolved by then (_resolve_merge_keys): a merged key has
    the line where its map writes it. The map's paths are tuples of strings (a list index as its decimal
    string), so that a pydantic loc matches whatever the key's YAML type. A
    node an alias shares is visited under each path that reaches it; an alias
    inside its own anchor ends there.
    """
    lines: dict[tuple, int] = {}
    duplicates: list[Located] = []
    numbers: list[Located] = []
    if root is None:
        return lines, duplicates, numbers
    lines[()] = root.start_mark.line + 1
    # (path, node, the nodes above it, kept: False under a key YAML discards for a duplicate)
    stack: list[tuple[tuple, yaml.Node, frozenset, bool]] = [((), root, frozenset(), True)]
    while stack:
        path, node, above, kept = stack.pop()
        if id(node) in above:
            continue
        above = above | {id(node)}
        if isinstance(node, yaml.ScalarNode):
            problem = _number_problem(node) if kept else None
            if problem:
                numbers.append((path, problem, node.start_mark.line + 1))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                if kept:
                    lines.setdefault(_str(path + (i,)), item.start_mark.line + 1)
                stack.append((path + (i,), item, above, kept))
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            last: dict[tuple, yaml.Node] = {}  # the value YAML keeps
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                    continue  # a complex key, or a merge of no mapping: PyYAML refuses them
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    message = f"duplicate key (first at line {first[key.tag, key.value]}); YAML keeps only the last"
                    duplicates.append((path + (key.value,), message, line))
                    stack.append((path + (key.value,), last[path + (key.value,)], above, False))
                first.setdefault((key.tag, key.value), line)
                if kept:
                    lines[_str(path + (key.value,))] = line
                last[path + (key.value,)] = value
            stack += [(p, v, above, kept) for p, v in last.items()]
    return lines, duplicates, numbers


_INT = "tag:yaml.org,2002:int"


def _number_problem(node: yaml.ScalarNode) -> str | None:
    """What is wrong with an unquoted integer that YAML 1.1 reads in octal (010 is 8) or
    in base 60 (1:0:0 is 3600): a user means neither. None for the others."""
    if node.tag != _INT or node.style is not None:
        return None
    digits = node.value.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    if re.fullmatch(r"0[0-7]+", digits):
        return (f"YAML 1.1 reads {node.value} as the octal number {sign * int(digits, 8)}: "
                "write it without the leading zero")
    if ":" in digits:
        value = 0
        for part in digits.split(":"):
            value = value * 60 + int(part)
        return (f"YAML 1.1 reads {node.value} as a base-60 number ({sign * value}): "
                "write the number meant, or quote it")
    return None


def _from_pydantic(error: ValidationError) -> list[Located]:
    """(loc, message) for each pydantic error; LocatedErrors (a PortClash...) expand to one each."""
    located = []
    for e in error.errors(include_url=False):
        if e["type"] == "invalid_key":
            continue            # a key that is no string: _keys_not_names, at its line
        loc = _loc(e)
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, LocatedErrors):
            located += [(loc + sub, msg, None) for sub, msg in cause.clashes]
        else:
            located.append((loc, _message(e), None))
    return located


def _loc(e: dict) -> tuple:
    """A pydantic error's loc, without the names of the validators it went through."""
    return tuple(x for x in e["loc"] if not (isinstance(x, str) and "[" in x))


_STR = "tag:yaml.org,2002:str"


def _keys_not_names(root: yaml.Node, error: ValidationError) -> list[Located]:
    """(loc, message, line) for each key that YAML reads as no string (`on:` is true, `5:`,
    `~:`), in each mapping where pydantic found one: its loc holds the key as Python has it
    (true as 1, null as 'None'), which names no key of the file, and no line."""
    located = []
    mappings = dict.fromkeys(_loc(e)[:-1] for e in error.errors() if e["type"] == "invalid_key")
    for path in mappings:
        node = _node_at(root, path)
        seen = set()
        for key, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if isinstance(key, yaml.ScalarNode) and key.tag not in (_STR, _MERGE) and (key.tag, key.value) not in seen:
                seen.add((key.tag, key.value))
                written = key.value or "null"
                located.append((path + (written,), f"unknown key: YAML reads {written} as "
                                                   f"{_TAG_KINDS.get(key.tag, key.tag)}, and every key here is a name",
                                key.start_mark.line + 1))
    return located


def _node_at(root: yaml.Node, path: tuple) -> yaml.Node | None:
    """The node at a key path (list items by index, keys by their text; YAML keeps a
    duplicate key's last value), or None."""
    node = root
    for x in path:
        if isinstance(node, yaml.SequenceNode) and isinstance(x, int) and 0 <= x < len(node.value):
            node = node.value[x]
        elif isinstance(node, yaml.MappingNode):
            values = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(x)]
            if not values:
                return None
            node = values[-1]
        else:
            return None
    return node


_EXPONENT = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+")


def _message(e: dict) -> str:
    """pydantic's message, said in YAML's words."""
    kind = _kind(e.get("input"))
    expected = {
        "int_type": "an integer",
        "string_type": "a string",
        "bool_type": "true or false",
        "dict_type": "a mapping",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
        "list_type": "a list",
    }.get(e["type"])
    if e["type"] == "extra_forbidden":
        return "unknown key"
    if e["type"] == "missing":
        return "required key is missing"
    if e["type"] == "int_type" and isinstance(e.get("input"), str) and re.fullmatch(r"[-+]?0[0-9_]+", e["input"]):
        # 08 and 09 are not octal, so YAML 1.1 leaves them strings
        return f"expected an integer, got string {e['input']!r}: write the number without a leading zero (and without quotes)"
    if e["type"] == "int_type" and isinstance(e.get("input"), str) and _EXPONENT.fullmatch(e["input"]):
        # YAML 1.1 reads 9e3 (and 1.5e3) as a string, where other YAML, and JSON, read a number
        value = float(e["input"])
        digits = f", as in {int(value)}" if value.is_integer() and abs(value) < 1e18 else ""
        return (f"expected an integer, got string {e['input']!r} (YAML 1.1 reads a number with an exponent "
                f"as a string): write the integer's digits{digits}")
    if e["type"] == "string_type" and kind in ("integer", "number", "boolean"):
        return f"expected a string, got {kind} (quote it)"
    if expected:
        return f"expected {expected}, got {kind}"
    ctx = e.get("ctx", {})
    bounds = {
        "greater_than_equal": "must be at least {ge}",
        "less_than_equal": "must be at most {le}",
        "greater_than": "must be greater than {gt}",
        "less_than": "must be less than {lt}",
        "too_short": "needs at least {min_length} item(s), got {actual_length}",
        "too_long": "takes at most {max_length} items, got {actual_length}",
        "literal_error": "must be one of {expected}",
    }.get(e["type"])
    if bounds:
        return bounds.format(**ctx)
    if e["type"] == "value_error":
        return str(ctx["error"])
    return e["msg"][0].lower() + e["msg"][1:]


def _kind(value: Any) -> str:
    """A YAML value's type, as a user would name it."""
    for types, name in (
        (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
        (type(None), "null"), (list, "list"), (dict, "mapping"), (bytes, "binary"),
    ):
        if isinstance(value, types):
            return name
    return type(value).__name__  # date, datetime, set


def _key_path(loc: tuple) -> str:
    """('ports', 2, 'mac') → 'ports[2].mac'; the whole document is '-'."""
    path = ""
    for x in loc:
        path += f"[{x}]" if isinstance(x, int) else (f".{x}" if path else str(x))
    return path or "-"


def _line(lines: dict[tuple, int], loc: tuple) -> int:
    """The line of `loc` in the file, else of its nearest enclosing key that is there."""
    path = _str(loc)
    while path not in lines and path:
        path = path[:-1]
    return lines.get(path, 0)


def _str(path: tuple) -> tuple[str, ...]:
    return tuple(str(x) for x in path)

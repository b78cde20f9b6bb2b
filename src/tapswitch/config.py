"""Configuration: the YAML file's schema, its strict validation, and errors located as FILE:LINE: key.path.

The schema is declared as frozen pydantic models (unknown keys and wrong types
are errors; a string is never coerced into an int, `true` is not an int), so a
reload can diff two Configs field by field. Three things pydantic cannot see
are done here by hand, each in one place:

- the line of every key: the YAML is composed into nodes first, and each key
  path is mapped to its line (`_lines`); an error's `loc` is looked up there,
  falling back to the nearest enclosing key that is in the file;
- duplicate keys in a mapping, which PyYAML would silently collapse (`_lines`);
- clashes between ports (`port_clashes`), reported even when other ports are
  invalid, so that a single `tapswitch check` shows every error at once.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import posixpath
import re
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


class ConfigError(Exception):
    """A configuration that cannot be used; `errors` holds every problem found."""

    def __init__(self, errors: list[str]):
        super().__init__(errors)
        self.errors = errors  # each "FILE:LINE: key.path: message"

    def __str__(self) -> str:
        return "\n".join(self.errors)


# --- Value rules (one function per rule, named after it) ---------------------


def _is_interface_name(value: str) -> str:
    """Linux dev_valid_name(): 1..15 bytes, no '/', ':' or whitespace, not '.' or '..'."""
    if not 1 <= len(value.encode()) <= 15:
        raise ValueError("an interface name is 1 to 15 bytes long")
    if value in (".", ".."):
        raise ValueError("an interface name cannot be '.' or '..'")
    if any(c in "/:\0" or c.isspace() for c in value):
        raise ValueError("an interface name has no '/', ':', NUL or whitespace")
    return value


def _is_switch_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", value):
        raise ValueError("a switch name is 1 to 32 of A-Z a-z 0-9 _ . -")
    return value


def _is_netns(value: str) -> str:
    """A netns is a name (as `ip netns` knows it), an absolute path, or pid:N."""
    if value.startswith("pid:"):
        if not re.fullmatch(r"pid:[1-9][0-9]{0,9}", value):
            raise ValueError("pid:N needs a positive process id, as in pid:1234")
        return value
    if value.startswith("/"):
        if "\0" in value:
            raise ValueError("a netns path has no NUL")
        return posixpath.normpath(value)
    if "/" in value:
        raise ValueError("a netns is a name (no '/'), an absolute path, or pid:N")
    if not 1 <= len(value.encode()) <= 255 or value in (".", ".."):
        raise ValueError("a netns name is 1 to 255 bytes and not '.' or '..'")
    if any(c in ":\0" or c.isspace() for c in value):
        raise ValueError("a netns name has no ':', NUL or whitespace")
    return value


def _is_unicast_mac(value: Any) -> str:
    """aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff, unicast, not zero; returned lower-case with colons."""
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 12:34:56:00:00:10 as a base-60 number.
        raise ValueError('quote the MAC address ("02:00:00:00:00:10"); YAML read it as a number')
    if not isinstance(value, str):
        raise ValueError(f"expected a MAC address string, got {_kind(value)}")
    if not re.fullmatch(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}", value):
        raise ValueError("a MAC address is six hex octets, as in 02:00:00:00:00:10")
    octets = bytes.fromhex(value.replace(":", "").replace("-", ""))
    if octets[0] & 1:
        raise ValueError("a port MAC address must be unicast (the first octet is odd: multicast)")
    if not any(octets):
        raise ValueError("a port MAC address cannot be 00:00:00:00:00:00")
    return ":".join(f"{b:02x}" for b in octets)


def _is_interface_address(value: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An address with its prefix length, as in 198.18.0.10/24 or fd00::10/64."""
    if not isinstance(value, str):
        raise ValueError(f"expected an address string like 198.18.0.10/24, got {_kind(value)}")
    if "/" not in value:
        raise ValueError("an address needs its prefix length, as in 198.18.0.10/24")
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(f"not an IPv4 or IPv6 address with prefix length: {value!r}") from None


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
    if address.is_multicast or address.is_unspecified:
        raise ValueError(f"{address} is not a unicast address")
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
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address inside brackets: {host!r}") from None
    elif not re.fullmatch(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*", host):
        raise ValueError(f"not an IPv4 address or host name: {host!r}")
    return host, int(port)


def _is_listen(value: str) -> str:
    _parse_listen(value)
    return value


def _is_socket_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("the control socket path must be absolute")
    if "\0" in value or len(value.encode()) > SUN_PATH_MAX:
        raise ValueError(f"a unix socket path is at most {SUN_PATH_MAX} bytes, without NUL")
    return value


IfName = Annotated[str, AfterValidator(_is_interface_name)]
SwitchName = Annotated[str, AfterValidator(_is_switch_name)]
Netns = Annotated[str, AfterValidator(_is_netns)]
Mac = Annotated[str, PlainValidator(_is_unicast_mac)]
Address = Annotated[
    ipaddress.IPv4Interface | ipaddress.IPv6Interface, PlainValidator(_is_interface_address)
]
HostAddress = Annotated[ipaddress.IPv4Address | ipaddress.IPv6Address, PlainValidator(_is_host_address)]


# --- Schema ------------------------------------------------------------------


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
    mac_table: MacTable = MacTable()
    metrics: Metrics = Metrics()
    control: Control  # socket defaults to /run/tapswitch/<name>.sock
    log: Log = Log()

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
        seen = set()
        for address in value:
            if local is not None and address.version != local.version:
                raise ValueError(f"remote {address} is IPv{address.version}, local {local} is IPv{local.version}")
            if address == local:
                raise ValueError(f"remote {address} is this host (local)")
            if address in seen:
                raise ValueError(f"remote {address} is listed twice")
            seen.add(address)
        return value

    @property
    def overhead(self) -> int:
        """Bytes VXLAN adds on this underlay: 50 over IPv4, 70 over IPv6."""
        return tunnel.overhead(self.local)


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

    # Field validators run only on keys present in the file, after the fields
    # declared above them; a field that failed is absent from info.data, and
    # then the dependent rule stays silent rather than report a second error.

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
        return value

    @field_validator("vxlan")
    @classmethod
    def _vxlan_excludes_netns_and_remote(cls, value: Vxlan | None, info: ValidationInfo) -> Vxlan | None:
        if value is not None:
            for other in ("netns", "remote"):
                if info.data.get(other) is not None:
                    raise ValueError(f"vxlan and {other} are mutually exclusive")
        return value

    @field_validator("remote_mode", "allmulti")
    @classmethod
    def _only_with_remote(cls, value: Any, info: ValidationInfo) -> Any:
        if "remote" in info.data and info.data["remote"] is None:
            raise ValueError(f"{info.field_name} applies to a remote port: it requires remote")
        return value

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


class PortClash(ValueError):
    """Ports that are each valid but cannot live together; `clashes` holds (loc, message)."""

    def __init__(self, clashes: list[tuple[tuple, str]]):
        super().__init__("; ".join(f"{_key_path(loc)}: {msg}" for loc, msg in clashes))
        self.clashes = clashes


class Config(_Model):
    switch: Switch
    ports: list[Port] = Field(min_length=1, max_length=256)
    _source: str = PrivateAttr("<string>")

    def model_post_init(self, context: Any) -> None:
        self._source = (context or {}).get("source", "<string>")

    @property
    def source(self) -> str:
        """Where this config was read from: a path, "<demo>" or "<string>"."""
        return self._source

    @model_validator(mode="after")
    def _ports_do_not_clash(self) -> Config:
        clashes = port_clashes(list(enumerate(self.ports))) + tunnel_mtu_clashes(self.ports)
        if clashes:
            raise PortClash(clashes)
        return self


IDENTITY = ("name", "netns", "ifname", "remote", "vxlan")  # the Port keys that port_clashes reads


def port_clashes(ports: list[tuple[int, Port]]) -> list[tuple[tuple, str]]:
    """(loc, message) for every port that clashes with an earlier one, given (index, port) pairs."""
    clashes = []
    by_name: dict[str, int] = {}  # TAP name → first port index
    by_inner: dict[tuple[str, str], int] = {}  # (netns path, name inside) → first port index
    by_remote: dict[str, int] = {}
    for i, port in ports:
        if port.name in by_name:
            first = by_name[port.name]
            clashes.append((("ports", i, "name"), f"duplicate port name {port.name!r} (first at ports[{first}])"))
        by_name.setdefault(port.name, i)
        if port.netns is not None:  # in the host's netns the name rule above already holds
            key = (port.netns_path, port.inner_name)
            if key in by_inner:
                where = ("ports", i, "ifname" if port.ifname else "name")
                clashes.append((where, f"{port.inner_name!r} is already in netns {port.netns!r} (ports[{by_inner[key]}])"))
            by_inner.setdefault(key, i)
        if port.remote is not None:
            if port.remote in by_remote:
                first = by_remote[port.remote]
                clashes.append((("ports", i, "remote"), f"{port.remote!r} is already attached by ports[{first}]"))
            by_remote.setdefault(port.remote, i)
    by_tunnel = {tunnel.device_name(p.name): i for i, p in ports if p.vxlan is not None}
    for i, port in ports:  # once every name is known: a remote may name a later port
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


def tunnel_mtu_clashes(ports: list[Port]) -> list[tuple[tuple, str]]:
    """(loc, message) for every mtu that no underlay could carry across a VXLAN port of the switch.

    The underlay's MTU is known only at start (and checked then); here, the
    largest an underlay can have, less the VXLAN overhead, is the bound.
    """
    tunnels = [(i, p) for i, p in enumerate(ports) if p.vxlan is not None]
    if not tunnels:
        return []
    i_min, narrowest = min(tunnels, key=lambda t: -t[1].vxlan.overhead)
    limit = tunnel.MTU_MAX - narrowest.vxlan.overhead
    across = f"IPv{narrowest.vxlan.local.version} VXLAN (at most {limit})"
    return [(("ports", i, "mtu"), f"mtu {p.mtu} cannot cross {'this port' if i == i_min else f'ports[{i_min}]'}'s "
                                  f"{across}") for i, p in enumerate(ports) if p.mtu_given and p.mtu > limit]


# --- Loading -----------------------------------------------------------------


def load(path: str | None) -> Config:
    """The config in the file at `path`, or the built-in demo when None; raises ConfigError."""
    if path is None:
        text = importlib.resources.files("tapswitch").joinpath("demo.yaml").read_text("utf-8")
        return loads(text, DEMO)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}:0: -: cannot read: {e}"]) from None
    return loads(text, path)


def loads(text: str, source: str = "<string>") -> Config:
    """The config in `text` (named `source` in errors); raises ConfigError with every error found."""
    root, data = _parse(text, source)
    if root is None:
        raise ConfigError([f"{source}:1: -: empty config: expected a mapping with switch and ports"])
    lines, errors = _lines(root)
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:{lines[()]}: -: the top level must be a mapping, got {_kind(data)}"])

    located: list[Located] = list(errors)
    try:
        config = Config.model_validate(data, context={"source": source})
    except ValidationError as e:
        config = None
        located += _from_pydantic(e)
        if not any(isinstance(x.get("ctx", {}).get("error"), PortClash) for x in e.errors()):
            located += [(loc, msg, None) for loc, msg in port_clashes(_identities(data.get("ports")))]
    if located:
        numbered = [(line or _line(lines, loc), _key_path(loc), msg) for loc, msg, line in located]
        numbered.sort(key=lambda n: n[0])  # file order; pydantic's order within a line
        raise ConfigError([f"{source}:{line}: {path}: {msg}" for line, path, msg in numbered])
    return config


def _parse(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The document's root node (None when empty) and its Python value; a YAML error is a ConfigError."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            return root, loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        problem = ": ".join(str(p) for p in (e.context, e.problem) if p) or "invalid YAML"
        raise ConfigError([f"{source}:{line}: -: YAML: {problem}"]) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError([f"{source}:{line}: -: YAML: character #x{e.character:04x} is not allowed"]) from None
    except RecursionError:
        raise ConfigError([f"{source}:0: -: YAML: nested too deeply"]) from None
    except Exception as e:  # noqa: BLE001 -- PyYAML's constructors raise what the conversion
        # raises: ValueError for the date 2001-13-45, IndexError for an empty !!int...
        raise ConfigError([f"{source}:0: -: YAML: cannot convert a value: {type(e).__name__}: {e}"]) from None


def _identities(ports: Any) -> list[tuple[int, Port]]:
    """Each port built from the keys that say where it lives, when those are valid.

    Clashes depend on these keys only, so they are found in ports whose
    other keys (mac, mtu...) are wrong, beside those errors.
    """
    identities = []
    for i, raw in enumerate(ports if isinstance(ports, list) else []):
        if isinstance(raw, dict):
            try:
                identities.append((i, Port.model_validate({k: v for k, v in raw.items() if k in IDENTITY})))
            except ValidationError:
                pass
    return identities


def _lines(root: yaml.Node | None) -> tuple[dict[tuple, int], list[Located]]:
    """{key path: 1-based line} for every key and list item, and the duplicate keys found.

    The map's paths are tuples of strings (a list index as its decimal
    string), so that a pydantic loc matches whatever the key's YAML type.
    Each node is visited once: an alias shares its anchor's lines, and a
    recursive alias ends.
    """
    lines: dict[tuple, int] = {}
    duplicates: list[Located] = []
    if root is None:
        return lines, duplicates
    lines[()] = root.start_mark.line + 1
    seen: set[int] = set()
    stack: list[tuple[tuple, yaml.Node]] = [((), root)]
    while stack:
        path, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines.setdefault(_str(path + (i,)), item.start_mark.line + 1)
                stack.append((path + (i,), item))
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            last: dict[tuple, yaml.Node] = {}  # the value YAML keeps, and its key's line
            merged: list[yaml.Node] = []
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge":
                    merged += value.value if isinstance(value, yaml.SequenceNode) else [value]
                    continue
                if not isinstance(key, yaml.ScalarNode):
                    continue  # a complex key: PyYAML rejects it when constructing
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    message = f"duplicate key (first at line {first[key.tag, key.value]}); YAML keeps only the last"
                    duplicates.append((path + (key.value,), message, line))
                first.setdefault((key.tag, key.value), line)
                lines[_str(path + (key.value,))] = line
                last[path + (key.value,)] = value
            stack += last.items()
            for value in merged:  # `<<: *anchor`: keys written here win over merged ones
                if isinstance(value, yaml.MappingNode):
                    for key, inner in value.value:
                        if isinstance(key, yaml.ScalarNode) and _str(path + (key.value,)) not in lines:
                            lines[_str(path + (key.value,))] = key.start_mark.line + 1
                            stack.append((path + (key.value,), inner))
    return lines, duplicates


def _from_pydantic(error: ValidationError) -> list[Located]:
    """(loc, message) for each pydantic error; a PortClash expands to one per clash."""
    located = []
    for e in error.errors(include_url=False):
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and "[" in x))
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, PortClash):
            located += [(loc + sub, msg, None) for sub, msg in cause.clashes]
        else:
            located.append((loc, _message(e), None))
    return located


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

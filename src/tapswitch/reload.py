"""Reload: what a new config changes in a running switch, decided without touching anything.

plan(old, new) compares two validated configs. Ports are matched by name:
a port whose device settings changed (namespace, name inside it, addresses,
MAC, MTU, remote), or whose device is gone, is made again; one whose other
settings changed keeps its device and only has its fast path settings
rewritten; an untouched port is not touched at all. Settings fixed at start (the switch's name, queues and
their length, MAC table size, control socket, metrics address) cannot change
by reload: such a config is refused as a whole, and the switch keeps the old
one.
"""

from dataclasses import dataclass, field

from tapswitch.config import worker_ids

# Port keys that are properties of the device: changing one means making the port again.
DEVICE_KEYS = ("netns", "ifname", "addresses", "mac", "mtu", "remote", "remote_mode", "allmulti")

# Switch keys fixed for the life of the process.
FIXED_KEYS = (("name",), ("queues",), ("queue_len",), ("mac_table", "size"), ("control", "socket"),
              ("metrics", "listen"), ("user",))


class ReloadRefused(Exception):
    """The new config is valid but cannot be applied while running; nothing changes.
    `errors` holds one FILE:LINE: key.path: message for each key that cannot change."""

    def __init__(self, errors: list[str]):
        super().__init__(errors)
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(self.errors)


@dataclass(frozen=True)
class Plan:
    remove: tuple[str, ...] = ()        # names of ports to take away (incl. those made again)
    add: tuple = ()                     # config.Port of ports to make (new, or made again)
    update: tuple[str, ...] = ()        # ports that keep their device but have new settings
    unchanged: tuple[str, ...] = ()
    switch_changed: bool = False        # live switch settings (aging, log, mirrors, static MACs...)
    notes: list = field(default_factory=list)

    @property
    def ports_changed(self) -> bool:
        return bool(self.remove or self.add)

    def summary(self) -> dict:
        return {"added": [p.name for p in self.add if p.name not in self.remove],
                "removed": [n for n in self.remove if n not in {p.name for p in self.add}],
                "remade": [p.name for p in self.add if p.name in self.remove],
                "updated": list(self.update)}


def _get(model, path: tuple[str, ...]):
    for key in path:
        model = getattr(model, key)
    return model


def _fixed_changed(old, new, path: tuple[str, ...], euid: int) -> bool:
    """Does a setting fixed at start differ? The workers' user by whom they run as: `nobody`
    written out is the default's (as root), a uid its user's name."""
    if path == ("user",):
        return worker_ids(old.user, euid) != worker_ids(new.user, euid)
    return _get(old, path) != _get(new, path)


def _device_changed(before, after, mac_now: str | None = None) -> bool:
    """Does the port need a new device? Any device key (but a `mac` that only writes out the MAC
    its device has now, `mac_now`), `mtu` given or not on a remote port, or the VXLAN tunnel other
    than its remotes (those are updated in place)."""
    if before.mac != after.mac and not _mac_written_out(before, after, mac_now):
        return True
    if any(getattr(before, k) != getattr(after, k) for k in DEVICE_KEYS if k != "mac"):
        return True
    if after.remote and before.mtu_given != after.mtu_given:    # IFACE set to `mtu`, or left its own
        return True
    return _tunnel_changed(before, after)


def _mac_written_out(before, after, mac_now: str | None) -> bool:
    """Does the config now give the port, by `mac:`, the MAC its TAP has (as `tapswitch ports`
    shows it: the switch's random one, or one its host set)? Nothing of the device changes then:
    it was made again, its container's routes gone and what it had learned forgotten, to end with
    the same MAC. Not a remote or VXLAN port's: there `mac:` also decides what IFACE's rules do."""
    return (before.mac is None and after.mac is not None and after.mac == mac_now
            and before.remote is None and after.remote is None)


def _tunnel_changed(before, after) -> bool:
    """Does the port need another VXLAN device (or none, or one where it had none)? Its remote
    hosts are updated in place."""
    if (before.vxlan is None) != (after.vxlan is None):
        return True
    return before.vxlan is not None and (before.vxlan.model_dump(exclude={"remotes"})
                                         != after.vxlan.model_dump(exclude={"remotes"}))


def kept_tunnels(old, new, gone=frozenset()) -> set[str]:
    """The VXLAN ports whose tunnel a reload from `old` to `new` leaves as it was (its remote hosts
    apart): what it carries is what the segment's MTUs were set with, not what its underlay
    carries now. Its underlay's MTU changed since (the ports' MTUs are set at start, as the README
    says), a reload gave every port without `mtu:` another MTU, and made them all again, whatever
    it changed. `gone`: the ports looked at again all the same (their TAP went, or their VXLAN
    device went and waits to be made again: Switch._reload)."""
    new_ports = {p.name: p for p in new.ports}
    return {p.name for p in old.ports
            if p.vxlan is not None and p.name in new_ports and p.name not in gone
            and not _tunnel_changed(p, new_ports[p.name])}


def vlans_changed(before, after) -> bool:
    """Is the port in other VLANs, or carries it another one untagged? Its VLANs as the fast
    path has them, not as written: `vlan: 1` written out is the default's, and a trunk's
    VLANs listed in another order are the same VLANs."""
    return (before.pvid, before.vlans) != (after.pvid, after.vlans)


def plan(old, new, gone=frozenset(), euid: int = 0, macs=None) -> Plan:
    """The changes that turn a switch running `old` (as user id `euid`) into one running `new`.
    The ports named in `gone` lost their device (deleted, or its namespace went): those still in
    `new` are made again. `macs`: the MAC each running port's device has now (_mac_written_out)."""
    macs = macs or {}
    fixed = [("switch",) + path for path in FIXED_KEYS if _fixed_changed(old.switch, new.switch, path, euid)]
    if fixed:
        raise ReloadRefused([new.where(loc, "cannot change while running (restart the switch)") for loc in fixed])
    old_ports = {p.name: p for p in old.ports}
    new_ports = {p.name: p for p in new.ports}
    remove, add, update, unchanged = [], [], [], []
    for name, p in old_ports.items():
        if name not in new_ports:
            remove.append(name)
    for name, p in new_ports.items():
        before = old_ports.get(name)
        if before is None:
            add.append(p)
        elif name in gone or _device_changed(before, p, macs.get(name)):
            remove.append(name)
            add.append(p)
        elif before != p:
            update.append(name)
        else:
            unchanged.append(name)
    old_rest = old.model_dump(exclude={"ports"})
    new_rest = new.model_dump(exclude={"ports"})
    return Plan(remove=tuple(remove), add=tuple(add), update=tuple(update), unchanged=tuple(unchanged),
                switch_changed=old_rest != new_rest)

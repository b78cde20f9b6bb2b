"""Port settings: a validated config written into the fast path's settings (VLANs, isolation, MAC limits, storm control, ACLs, mirrors).

Control process only. `apply(shared, cfg, ports)` fills the settings copy
the workers do not read (fastpath.h, "Settings updates") from `cfg` for the
running `ports` -- every port slot, every mirror, from scratch -- publishes
it, then writes each port's MTU and link state. It is idempotent: call it at
start and again on every reload. Static MACs are not settings: the switch
installs them (Config.static_mac_entries) with Shared.fdb_add_static.

What each config key becomes is decided by the pure functions below
(`port_conf`, `acl_rule`, `storm_timing`, `mirror_masks`); `apply` only
writes their results.
"""

import zlib

import structlog

from tapswitch import config as config_mod
from tapswitch.fastpath import ffi, lib

log = structlog.get_logger("tapswitch.settings")

STORM_KINDS = (  # config key -> the fast path's kind
    ("broadcast_pps", lib.TS_STORM_BROADCAST),
    ("multicast_pps", lib.TS_STORM_MULTICAST),
    ("unknown_unicast_pps", lib.TS_STORM_UNKNOWN_UNICAST),
)
STORM_BURST_SECONDS = 0.1   # a burst of a tenth of a second's worth passes at once...
STORM_BURST_MIN = 8         # ...and at least 8 frames (fewer only if the rate is lower)


# --- Decisions (pure) --------------------------------------------------------


def storm_timing(pps: int) -> tuple[int, int]:
    """(interval, burst tolerance) in ns for a rate of `pps` frames a second:
    GCRA lets min(pps, max(8, pps/10)) frames through at once, then one per interval."""
    interval = 10**9 // pps
    burst = min(pps, max(STORM_BURST_MIN, int(pps * STORM_BURST_SECONDS)))
    return interval, (burst - 1) * interval


def vlan_words(vlans) -> list[int]:
    """The 64 words of a VLAN bitmap (bit v of word v // 64 for VLAN v)."""
    words = [0] * 64
    for v in vlans:
        words[v // 64] |= 1 << (v % 64)
    return words


def mirror_masks(cfg) -> dict[str, tuple[int, int]]:
    """port name -> (mirror_rx, mirror_tx): bit m for cfg.mirrors[m]."""
    masks: dict[str, tuple[int, int]] = {}
    for m, mirror in enumerate(cfg.mirrors):
        for name in mirror.from_:
            rx, tx = masks.get(name, (0, 0))
            masks[name] = (rx | (mirror.rx << m), tx | (mirror.tx << m))
    return masks


def port_conf(pcfg, monitor: bool, mirror_rx: int = 0, mirror_tx: int = 0) -> dict:
    """The fields of a struct ts_port_conf for port config `pcfg` (ACL rules apart)."""
    flags = 0
    conf = {"pvid": pcfg.pvid or 0, "mirror_rx": mirror_rx, "mirror_tx": mirror_tx, "mac_limit": 0,
            "acl_rules": len(pcfg.acl), "storm_interval": [0, 0, 0], "storm_burst": [0, 0, 0],
            "vlans": [0] * 64}
    if pcfg.trunk:
        flags |= lib.TS_PORT_TRUNK
        conf["vlans"] = vlan_words(pcfg.trunk)
    if pcfg.isolated:
        flags |= lib.TS_PORT_ISOLATED
    if monitor:
        # In no VLAN: nothing but the mirrors' copies is sent to it, and what it sends is dropped.
        flags |= lib.TS_PORT_MONITOR
        flags &= ~lib.TS_PORT_TRUNK
        conf["pvid"], conf["vlans"] = 0, [0] * 64
    if pcfg.mac_limit is not None:
        flags |= lib.TS_PORT_MAC_LIMIT
        conf["mac_limit"] = pcfg.mac_limit
    if pcfg.acl:
        flags |= lib.TS_PORT_ACL
    storm = pcfg.storm_control
    if storm is not None:
        for key, kind in STORM_KINDS:
            pps = getattr(storm, key)
            if pps is not None:
                flags |= lib.TS_PORT_STORM
                conf["storm_interval"][kind], conf["storm_burst"][kind] = storm_timing(pps)
    conf["flags"] = flags
    return conf


def acl_rule(rule) -> dict:
    """The fields of a struct ts_acl_rule for one config.AclRule."""
    m = rule.match
    match = 0
    fields = {"action": lib.TS_ACL_DROP if rule.action == "drop" else lib.TS_ACL_ALLOW}
    for key, bit in (("eth_src", lib.TS_ACL_ETH_SRC), ("eth_dst", lib.TS_ACL_ETH_DST)):
        value = getattr(m, key)
        if value is not None:
            mac, mask = config_mod.mac_and_mask(value)
            fields[key], fields[key + "_mask"] = list(mac), list(mask)
            match |= bit
    for key, bit in (("eth_type", lib.TS_ACL_ETH_TYPE), ("vlan", lib.TS_ACL_VLAN),
                     ("ip_proto", lib.TS_ACL_IP_PROTO), ("src_port", lib.TS_ACL_SRC_PORT),
                     ("dst_port", lib.TS_ACL_DST_PORT)):
        value = getattr(m, key)
        if value is not None:
            fields[key] = value
            match |= bit
    for key, bit in (("ip_src", lib.TS_ACL_IP_SRC), ("ip_dst", lib.TS_ACL_IP_DST)):
        prefix = getattr(m, key)
        if prefix is not None:
            fields[key] = list(prefix.network_address.packed.ljust(16, b"\0"))
            fields[key + "_mask"] = list(prefix.netmask.packed.ljust(16, b"\0"))
            match |= bit
    version = m.ip_version
    if version == 4:
        match |= lib.TS_ACL_IPV4
    elif version == 6:
        match |= lib.TS_ACL_IPV6
    fields["match"] = match
    return fields


def mirror_id(name: str) -> int:
    """The id a mirror slot carries: a slot given to another mirror starts counting afresh, and a
    mirror found in another slot than before carries its counts there."""
    return zlib.crc32(name.encode()) or 1


# --- Acting: the settings copy -------------------------------------------------


def _write(struct, fields: dict) -> None:
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(struct, key)[0:len(value)] = value
        else:
            setattr(struct, key, value)


def _acl_bytes(settings, index: int) -> bytes:
    n = settings.ports[index].acl_rules
    return bytes(ffi.buffer(settings.acl[index], n * ffi.sizeof("struct ts_acl_rule")))


def apply(shared, cfg, ports) -> int:
    """Make the fast path's settings those of `cfg` for the running `ports` (each
    with .index, .name, .up, .mtu and .frame_max), and set each port's MTU, longest frame and state; slots of no
    running port become unused. Returns the workers that were still reading the
    old settings when publishing gave up waiting (0, unless a worker is stuck)."""
    by_name = {p.name: p for p in cfg.ports}
    missing = [port.name for port in ports if port.name not in by_name]
    if missing:
        raise ValueError(f"running ports missing from the config: {', '.join(missing)}")
    index = {port.name: port.index for port in ports}
    monitors = cfg.monitor_ports()
    masks = mirror_masks(cfg)

    old = shared.settings_current()
    new = shared.settings_next()
    for port in ports:
        pcfg = by_name[port.name]
        _write(new.ports[port.index], port_conf(pcfg, port.name in monitors, *masks.get(port.name, (0, 0))))
        for r, rule in enumerate(pcfg.acl):
            ffi.memmove(new.acl[port.index] + r, bytes(ffi.sizeof("struct ts_acl_rule")), ffi.sizeof("struct ts_acl_rule"))
            _write(new.acl[port.index][r], acl_rule(rule))
    for m, mirror in enumerate(cfg.mirrors):
        new.mirrors[m].to = index.get(mirror.to, lib.TS_MAX_PORTS)   # not running: copies count as dropped
        new.mirrors[m].id = mirror_id(mirror.name)
    acl_changed = [port.index for port in ports if _acl_bytes(old, port.index) != _acl_bytes(new, port.index)]
    storm_changed = [(i, kind) for i in range(lib.TS_MAX_PORTS) for _, kind in STORM_KINDS
                     if (old.ports[i].storm_interval[kind], old.ports[i].storm_burst[kind])
                     != (new.ports[i].storm_interval[kind], new.ports[i].storm_burst[kind])]
    # Only a limit this config sets or lowers forgets what a port learned over it: workers
    # learning at the same instant may hold a port one MAC a queue over an unchanged limit.
    limit_changed = {port.index for port in ports if old.ports[port.index].mac_limit != new.ports[port.index].mac_limit}
    # A mirror that changed slots (one before it in the list came or went) counts on from what it
    # had counted in its old slot, read before the workers move to the new settings; a slot that
    # holds a new mirror counts from 0.
    was_in = {old.mirrors[m].id: m for m in range(lib.TS_MAX_MIRRORS) if old.mirrors[m].id}
    mirrors_changed = {m: was_in.get(new.mirrors[m].id) for m in range(lib.TS_MAX_MIRRORS)
                       if old.mirrors[m].id != new.mirrors[m].id}
    mirrors_counted = {m: shared.mirror_counters(m) for m in mirrors_changed.values() if m is not None}

    for i in acl_changed:
        shared.reset_acl_hits_at_publish(i)

    shared.set_busy_poll(cfg.switch.busy_poll_us)
    stuck = shared.settings_publish()
    if stuck:
        log.warning("settings.readers_stuck", workers=stuck)

    for i, kind in storm_changed:     # no worker reads the old rate now
        shared.reset_storm(i, kind)
    shared.set_mirrors([mirror.name for mirror in cfg.mirrors],
                       {m: mirrors_counted.get(was) for m, was in mirrors_changed.items()})
    running = {port.index for port in ports}
    for port in ports:       # settings first: a port is never up with another port's settings
        shared.set_port(port.index, lib.TS_PORT_UP if port.up else lib.TS_PORT_DOWN,
                        port.mtu or by_name[port.name].mtu,    # the TAP's, if its host changed it
                        port.frame_max)
    for slot in range(lib.TS_MAX_PORTS):
        if slot not in running and shared.port_state(slot)[0] != lib.TS_PORT_UNUSED:
            shared.set_port(slot, lib.TS_PORT_UNUSED, 0)
    for port in ports:       # a lowered limit holds at once
        limit = by_name[port.name].mac_limit
        if port.index not in limit_changed:
            continue
        learned = shared.port_fdb_entries(port.index) - shared.port_fdb_static(port.index)
        if limit is not None and learned > limit:
            log.info("fdb.flushed", port=port.name, entries=shared.fdb_flush(port.index), reason="mac_limit")
    log.debug("settings.applied", ports=len(ports), mirrors=len(cfg.mirrors))
    return stuck

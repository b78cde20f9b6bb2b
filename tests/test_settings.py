"""Tests for tapswitch.settings: what each config key becomes in the fast path's settings, and apply()."""

import textwrap
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether

from tapswitch import settings
from tapswitch._fastpath import ffi, lib
from tapswitch.config import loads
from tapswitch.fastpath import Shared, mac_bytes
from tests.test_fastpath import BROADCAST, VNET, A, B, Switch, frame
from tests.test_fastpath_features import tagged


@dataclass
class Port:
    """What apply() reads of a running tapswitch.ports.Port."""
    index: int
    name: str
    up: bool = True
    mtu: int = 0        # its TAP's, if its host changed it
    frame_max: int = 0  # a VXLAN port's: the longest frame its tunnel carries


def config(ports: str, rest: str = "") -> object:
    return loads("switch: {name: sw0}\nports:\n" + textwrap.indent(textwrap.dedent(ports), "  ")
                 + textwrap.dedent(rest))


def running(cfg, down=()) -> list[Port]:
    return [Port(i, p.name, p.name not in down) for i, p in enumerate(cfg.ports)]


@pytest.fixture
def shared():
    s = Shared.create(1024, 2)
    yield s
    s.close()


def conf(shared, index):
    return shared.settings_current().ports[index]


def vlans_of(c) -> set[int]:
    return {v for v in range(4096) if c.vlans[v // 64] >> (v % 64) & 1}


# Decisions.

@pytest.mark.parametrize("pps, interval, burst", [
    (1, 10**9, 1), (5, 2 * 10**8, 5), (50, 2 * 10**7, 8), (1000, 10**6, 100), (10**6, 1000, 10**5),
])
def test_storm_timing(pps, interval, burst):
    assert settings.storm_timing(pps) == (interval, (burst - 1) * interval)


def test_a_port_without_settings_takes_the_short_path():
    cfg = config("- name: a\n")
    c = settings.port_conf(cfg.ports[0], monitor=False)
    assert (c["pvid"], c["flags"], c["mirror_rx"], c["mirror_tx"]) == (1, 0, 0, 0)


def test_mirror_masks_give_each_mirror_its_bit():
    cfg = config("- name: a\n- name: b\n- name: m\n", """\
        mirrors:
          - {name: s0, from: [a], to: m, direction: rx}
          - {name: s1, from: [a, b], to: m, direction: tx}
          - {name: s2, from: [b], to: m}
        """)
    assert settings.mirror_masks(cfg) == {"a": (0b001, 0b010), "b": (0b100, 0b110)}


def test_acl_rule_fields():
    cfg = config("""\
        - name: a
          acl:
            - match: {eth_dst: "01:00:5e:00:00:00/ff:ff:ff:80:00:00", ip_src: 198.18.0.0/15, ip_proto: udp, dst_port: 53}
              action: drop
            - match: {ip_dst: fd00::/8}
              action: allow
        """)
    first, second = (settings.acl_rule(r) for r in cfg.ports[0].acl)
    assert first["match"] == (lib.TS_ACL_ETH_DST | lib.TS_ACL_IP_SRC | lib.TS_ACL_IPV4 | lib.TS_ACL_IP_PROTO
                              | lib.TS_ACL_DST_PORT)
    assert (first["action"], first["ip_proto"], first["dst_port"]) == (lib.TS_ACL_DROP, 17, 53)
    assert bytes(first["eth_dst"]) == mac_bytes("01:00:5e:00:00:00")
    assert bytes(first["eth_dst_mask"]) == mac_bytes("ff:ff:ff:80:00:00")
    assert bytes(first["ip_src"]) == bytes([198, 18, 0, 0]) + bytes(12)
    assert bytes(first["ip_src_mask"]) == bytes([255, 254, 0, 0]) + bytes(12)
    assert (second["match"], second["action"]) == (lib.TS_ACL_IP_DST | lib.TS_ACL_IPV6, lib.TS_ACL_ALLOW)
    assert bytes(second["ip_dst_mask"]) == b"\xff" + bytes(15)


def test_icmp_rule_is_ipv4_only():
    cfg = config("- name: a\n  acl: [{match: {ip_proto: icmp}, action: drop}]\n")
    assert settings.acl_rule(cfg.ports[0].acl[0])["match"] == lib.TS_ACL_IP_PROTO | lib.TS_ACL_IPV4


# apply().

def test_vlans_of_access_trunk_and_native(shared):
    cfg = config("- {name: a, vlan: 10}\n- {name: t, trunk: [20, 4094]}\n- {name: n, vlan: 30, trunk: [20]}\n- {name: d}\n")
    settings.apply(shared, cfg, running(cfg))
    a, t, n, d = (conf(shared, i) for i in range(4))
    assert (a.pvid, a.flags, vlans_of(a)) == (10, 0, set())
    assert (t.pvid, t.flags, vlans_of(t)) == (0, lib.TS_PORT_TRUNK, {20, 4094})
    assert (n.pvid, n.flags, vlans_of(n)) == (30, lib.TS_PORT_TRUNK, {20})
    assert (d.pvid, d.flags) == (1, 0)


def test_features_become_flags_and_values(shared):
    cfg = config("""\
        - name: a
          isolated: true
          mac_limit: 7
          storm_control: {multicast_pps: 1000}
          acl: [{match: {eth_type: arp}, action: drop}]
        """)
    settings.apply(shared, cfg, running(cfg))
    c = conf(shared, 0)
    assert c.flags == lib.TS_PORT_ISOLATED | lib.TS_PORT_MAC_LIMIT | lib.TS_PORT_STORM | lib.TS_PORT_ACL
    assert (c.mac_limit, c.acl_rules) == (7, 1)
    assert list(c.storm_interval) == [0, 10**6, 0]
    assert list(c.storm_burst) == [0, 99 * 10**6, 0]
    rule = shared.settings_current().acl[0][0]
    assert (rule.match, rule.eth_type, rule.action) == (lib.TS_ACL_ETH_TYPE, 0x0806, lib.TS_ACL_DROP)


def test_mirrors_and_monitor_port(shared):
    cfg = config("- {name: a, vlan: 10}\n- {name: b}\n- {name: m}\n",
                 "mirrors:\n  - {name: span, from: [a, b], to: m, direction: rx}\n")
    settings.apply(shared, cfg, running(cfg))
    a, b, m = (conf(shared, i) for i in range(3))
    assert (a.mirror_rx, a.mirror_tx, b.mirror_rx) == (1, 0, 1)
    assert (m.flags, m.pvid) == (lib.TS_PORT_MONITOR, 0)
    assert shared.settings_current().mirrors[0].to == 2


def test_ports_are_found_by_name_whatever_their_slot(shared):
    cfg = config("- {name: a, vlan: 10}\n- {name: b, vlan: 20}\n")
    settings.apply(shared, cfg, [Port(7, "b"), Port(3, "a")])
    assert (conf(shared, 3).pvid, conf(shared, 7).pvid) == (10, 20)
    assert conf(shared, 0).pvid == 1


def test_state_and_mtu_follow_the_running_ports(shared):
    cfg = config("- {name: a, mtu: 9000}\n- {name: b}\n")
    shared.set_port(5, lib.TS_PORT_UP, 1500)            # a slot of a port gone by reload
    settings.apply(shared, cfg, running(cfg, down={"b"}))
    assert shared.port_state(0) == (lib.TS_PORT_UP, 9000)
    assert shared.port_state(1) == (lib.TS_PORT_DOWN, 1500)
    assert shared.port_state(5)[0] == lib.TS_PORT_UNUSED


def test_a_running_port_missing_from_the_config_is_a_caller_error(shared):
    cfg = config("- name: a\n")
    with pytest.raises(ValueError, match="missing from the config: zz"):
        settings.apply(shared, cfg, [Port(0, "a"), Port(1, "zz")])


def test_apply_again_changes_nothing(shared):
    cfg = config("- {name: a, trunk: [10], acl: [{match: {vlan: 10}, action: drop}]}\n- {name: m}\n",
                 "mirrors:\n  - {name: s, from: [a], to: m}\n")
    size = 2 * ffi.sizeof("struct ts_port_conf")
    settings.apply(shared, cfg, running(cfg))
    first = shared.settings_current()
    ports, acl = bytes(ffi.buffer(first.ports, size)), bytes(ffi.buffer(first.acl[0], 128))
    settings.apply(shared, cfg, running(cfg))
    again = shared.settings_current()
    assert again != first                                        # the other copy...
    assert bytes(ffi.buffer(again.ports, size)) == ports         # ...with the same content
    assert bytes(ffi.buffer(again.acl[0], 128)) == acl
    assert (again.mirrors[0].to, again.mirrors[0].id) == (first.mirrors[0].to, first.mirrors[0].id)


def test_busy_poll_reaches_the_workers_and_follows_a_reload(shared):
    assert shared.busy_poll_us == 0                 # fresh memory: never look again
    cfg = config("- name: a\n")
    settings.apply(shared, cfg, running(cfg))
    assert shared.busy_poll_us == 50                # the default
    cfg = loads("switch: {name: sw0, busy_poll_us: 0}\nports: [{name: a}]\n")
    settings.apply(shared, cfg, running(cfg))
    assert shared.busy_poll_us == 0


def test_a_removed_setting_is_gone(shared):
    cfg = config("- {name: a, vlan: 10, isolated: true, mac_limit: 3}\n")
    settings.apply(shared, cfg, running(cfg))
    cfg = config("- {name: a}\n")
    settings.apply(shared, cfg, running(cfg))
    assert (conf(shared, 0).pvid, conf(shared, 0).flags) == (1, 0)


def test_acl_hits_start_again_only_where_the_acl_changed(shared):
    acl = "acl: [{match: {eth_type: arp}, action: drop}]"
    cfg = config(f"- {{name: a, {acl}}}\n- {{name: b, {acl}}}\n")
    settings.apply(shared, cfg, running(cfg))
    shared.ptr.acl_hits[0][0][0] = 5
    shared.ptr.acl_hits[1][1][0] = 3
    settings.apply(shared, cfg, running(cfg))
    assert (shared.acl_hits(0), shared.acl_hits(1)) == ([5], [3])
    cfg = config(f"- {{name: a, acl: [{{match: {{eth_type: ipv4}}, action: drop}}]}}\n- {{name: b, {acl}}}\n")
    settings.apply(shared, cfg, running(cfg))
    assert (shared.acl_hits(0), shared.acl_hits(1)) == ([0], [3])


def test_mirror_counters_start_again_when_the_slot_holds_another_mirror(shared):
    ports = "- {name: a}\n- {name: m}\n"
    cfg = config(ports, "mirrors:\n  - {name: s, from: [a], to: m}\n")
    settings.apply(shared, cfg, running(cfg))
    shared.ptr.mirror_counters[1][0].packets = 4
    settings.apply(shared, cfg, running(cfg))
    assert shared.mirror_counters(0)["packets"] == 4
    cfg = config(ports, "mirrors:\n  - {name: t, from: [a], to: m}\n")
    settings.apply(shared, cfg, running(cfg))
    assert shared.mirror_counters(0)["packets"] == 0


def test_a_mirror_that_changes_slots_counts_on(shared):
    """A mirror added before another, removed, or the list reordered: the mirrors that stay go on
    from their counts in their new slots (a counter that drops to 0 is a reset to Prometheus)."""
    ports = "- {name: a}\n- {name: b}\n- {name: m}\n"
    s = "  - {name: s, from: [a], to: m}\n"
    t = "  - {name: t, from: [b], to: m}\n"
    cfg = config(ports, "mirrors:\n" + s)
    settings.apply(shared, cfg, running(cfg))
    shared.ptr.mirror_counters[0][0].packets = 4
    shared.ptr.mirror_counters[1][0].bytes = 240
    cfg = config(ports, "mirrors:\n" + t + s)         # s is in slot 1 now
    settings.apply(shared, cfg, running(cfg))
    assert shared.mirror_counters(1) == {"packets": 4, "bytes": 240, "dropped": 0}
    assert shared.mirror_counters(0) == {"packets": 0, "bytes": 0, "dropped": 0}      # t: new
    shared.ptr.mirror_counters[1][1].packets += 1     # s's copies in its new slot add up
    shared.ptr.mirror_counters[0][0].packets += 2     # t's
    assert (shared.mirror_counters(0)["packets"], shared.mirror_counters(1)["packets"]) == (2, 5)
    cfg = config(ports, "mirrors:\n" + s + t)         # swapped
    settings.apply(shared, cfg, running(cfg))
    assert (shared.mirror_counters(0)["packets"], shared.mirror_counters(1)["packets"]) == (5, 2)
    cfg = config(ports, "mirrors:\n" + t)             # s removed: t back in slot 0
    settings.apply(shared, cfg, running(cfg))
    assert shared.mirror_counters(0)["packets"] == 2
    cfg = config(ports, "mirrors:\n" + s + t)         # s again: a new mirror, from 0
    settings.apply(shared, cfg, running(cfg))
    assert (shared.mirror_counters(0)["packets"], shared.mirror_counters(1)["packets"]) == (0, 2)


def test_lowered_mac_limit_flushes_the_port(shared):
    cfg = config("- {name: a}\n- {name: b}\n")
    settings.apply(shared, cfg, running(cfg))
    for i in range(5):
        lib.ts_fdb_learn(shared.ptr, 0, mac_bytes(f"02:00:00:00:00:{i:02x}"), 1, 0, 100)
    lib.ts_fdb_learn(shared.ptr, 0, mac_bytes("02:00:00:00:01:00"), 1, 1, 100)
    shared.fdb_add_static("02:00:00:00:02:00", 1, 0)
    cfg = config("- {name: a, mac_limit: 5}\n- {name: b, mac_limit: 1}\n")
    settings.apply(shared, cfg, running(cfg))
    assert (shared.port_fdb_entries(0), shared.port_fdb_entries(1)) == (6, 1)   # at the limit: kept
    cfg = config("- {name: a, mac_limit: 4}\n- {name: b, mac_limit: 1}\n")
    settings.apply(shared, cfg, running(cfg))
    assert (shared.port_fdb_entries(0), shared.port_fdb_static(0)) == (1, 1)    # static entries stay


def test_a_reload_that_keeps_a_ports_mac_limit_keeps_what_it_learned(shared):
    """Workers learning at the same instant may take a port one MAC a queue over its limit (README):
    a reload that leaves the limit as it was does not forget the port's MACs for that."""
    cfg = config("- {name: a, mac_limit: 4}\n- {name: b}\n")
    settings.apply(shared, cfg, running(cfg))
    for i in range(5):              # one over: two queues learned at once
        lib.ts_fdb_learn(shared.ptr, 0, mac_bytes(f"02:00:00:00:00:{i:02x}"), 1, 0, 100)
    assert shared.port_fdb_entries(0) == 5
    settings.apply(shared, cfg, running(cfg))
    assert shared.port_fdb_entries(0) == 5
    cfg = config("- {name: a, mac_limit: 4}\n- {name: b, vlan: 20}\n")    # another port's change
    settings.apply(shared, cfg, running(cfg))
    assert shared.port_fdb_entries(0) == 5
    cfg = config("- {name: a, mac_limit: 3}\n- {name: b, vlan: 20}\n")    # lowered: forgotten
    settings.apply(shared, cfg, running(cfg))
    assert shared.port_fdb_entries(0) == 0


# apply() end to end: frames through a worker.

@pytest.fixture
def sw():
    s = Switch(n_ports=4)
    yield s
    s.close()


def test_configured_vlans_carry_frames(sw):
    cfg = config("- {name: a, vlan: 10}\n- {name: b, vlan: 20}\n- {name: t, trunk: [10, 20]}\n- {name: c, vlan: 10}\n")
    settings.apply(sw.shared, cfg, running(cfg))
    sw.send(0, frame(BROADCAST, A))
    assert [sw.received(p) for p in range(4)] == [[], [], [tagged(BROADCAST, A, 10)], [frame(BROADCAST, A)]]


def storm_rate(sw, pps: int):
    """Apply a config whose port a lets through `pps` broadcasts a second."""
    cfg = config(f"- {{name: a, storm_control: {{broadcast_pps: {pps}}}}}\n- {{name: b}}\n- {{name: c}}\n- {{name: d}}\n")
    settings.apply(sw.shared, cfg, running(cfg))


def broadcasts_passed(sw, n: int) -> int:
    """Send n broadcasts into port a: how many port b got."""
    for _ in range(n):
        sw.send(0, frame(BROADCAST, A))
    return len(sw.received(1))


def test_a_raised_storm_rate_holds_at_once(sw):
    # At 1 frame/s the bucket runs a second ahead: the new rate must not wait for it.
    storm_rate(sw, 1)
    assert broadcasts_passed(sw, 2) == 1
    storm_rate(sw, 1000)
    assert broadcasts_passed(sw, 50) == 50
    storm_rate(sw, 1000)      # unchanged: the bucket goes on as it was
    assert broadcasts_passed(sw, 200) < 200


def test_a_lowered_storm_rate_holds_from_the_next_frame(sw):
    # Mid-burst at 1000/s (a burst of 100 passes at once), a reload to 10/s: from the next frame
    # on, 8 pass at once (the burst at 10/s), then none until the new interval.
    storm_rate(sw, 1000)
    assert broadcasts_passed(sw, 50) == 50
    storm_rate(sw, 10)
    assert broadcasts_passed(sw, 50) == 8
    assert sw.counters(0)["storm_dropped"] == 42


def test_configured_icmp_acl_drops_ping_not_arp(sw):
    cfg = config("- {name: a, acl: [{match: {ip_proto: icmp}, action: drop}]}\n- {name: b}\n- {name: c}\n- {name: d}\n")
    settings.apply(sw.shared, cfg, running(cfg))
    header = VNET.pack(0, 0, 0, 0, 0, 0)
    sw.send(0, header + bytes(Ether(src=A, dst=B) / IP(src="198.18.0.1", dst="198.18.0.2") / ICMP()))
    assert sw.received(1) == []
    sw.send(0, header + bytes(Ether(src=A, dst=BROADCAST) / ARP(psrc="198.18.0.1", pdst="198.18.0.2")))
    assert len(sw.received(1)) == 1
    assert sw.shared.acl_hits(0) == [1]
    assert sw.counters(0)["acl_dropped"] == 1


def test_an_acl_rule_a_reload_took_away_drops_nothing(sw):
    """A port's rules past its count stay in the settings copies (apply writes only the
    config's): the count alone says which the worker matches. A rule a reload took away drops
    nothing any more, in either copy."""
    ports = "- {{name: a, acl: [{}]}}\n- {{name: b}}\n- {{name: c}}\n- {{name: d}}\n"
    arp, icmp = "{match: {eth_type: arp}, action: drop}", "{match: {ip_proto: icmp}, action: drop}"
    ping = VNET.pack(0, 0, 0, 0, 0, 0) + bytes(Ether(src=A, dst=B) / IP(src="198.18.0.1", dst="198.18.0.2") / ICMP())
    cfg = config(ports.format(f"{arp}, {icmp}"))
    for _ in range(2):                                  # both copies hold the ICMP rule
        settings.apply(sw.shared, cfg, running(cfg))
    sw.send(0, ping)
    assert [sw.received(p) for p in range(4)] == [[], [], [], []]
    cfg = config(ports.format(arp))
    for _ in range(2):
        settings.apply(sw.shared, cfg, running(cfg))
        sw.send(0, ping)
        assert [len(sw.received(p)) for p in range(4)] == [0, 1, 1, 1]     # B unknown: flooded
    assert sw.counters(0)["acl_dropped"] == 1

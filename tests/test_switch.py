"""The switch's control plane, without devices: a Switch over its shared memory and hand-made ports."""

import json
import threading

from tapswitch import config, control, fastpath, settings
from tapswitch.control import ControlServer
from tapswitch.ports import Port
from tapswitch.switch import Switch


def make_switch() -> Switch:
    cfg = config.loads("switch: {name: s}\nports: [{name: p0}, {name: p1}]\n")
    sw = Switch(cfg)
    sw.shared = fastpath.Shared.create(1024, 1)
    sw.ports = [Port(index=i, cfg=c, fds=[], mac=f"02:00:00:00:01:0{i}", nspath=None, ifindex=0)
                for i, c in enumerate(cfg.ports)]
    return sw


def test_fdb_add_while_a_reload_rewrites_the_static_entries_waits_for_it(monkeypatch):
    """`tapswitch fdb add` is served in a thread of the control socket while a reload rewrites the
    static entries: the add waits for the reload, and the entry stays. (It changed the reload's
    dict under its iteration: "dictionary changed size during iteration" stopped the switch.)"""
    sw = make_switch()
    try:
        for i in range(4):
            sw.fdb_add({"mac": f"02:00:00:00:00:0{i}", "port": "p1"})
        check, racer = sw._static_mac_error, []

        def racing(port, vlan):              # the reload is under way: an add comes meanwhile
            if not racer:
                racer.append(threading.Thread(target=sw.fdb_add, args=({"mac": "02:00:00:00:00:99", "port": "p0"},)))
                racer[0].start()
                racer[0].join(0.5)
            return check(port, vlan)
        monkeypatch.setattr(sw, "_static_mac_error", racing)
        sw.install_static_macs()
        racer[0].join()
        assert sw.cli_macs[("02:00:00:00:00:99", 1)] == "p0"
        assert ("02:00:00:00:00:99", 1, 0, 1) in {entry[:4] for entry in sw.shared.fdb_dump()}
    finally:
        sw.shared.close()


def test_a_port_in_a_used_slot_counts_its_acl_hits_from_zero():
    """Once every slot has been used, a port a reload adds takes one a removed port left: its
    ACL hits start at 0, as its other counters do, also under the removed port's rules (they
    started at its count), and whatever the removed port's rules had counted before a change."""
    rule = "{{match: {{ip_proto: tcp, dst_port: {}}}, action: drop}}"
    def ports_cfg(*ports):
        return config.loads("switch: {name: s}\nports:\n" + "".join(f"  - {p}\n" for p in ports))
    cfg = ports_cfg(f"{{name: p0, acl: [{rule.format(23)}]}}", "{name: p1}")
    sw = Switch(cfg)
    sw.shared = fastpath.Shared.create(1024, 2)
    sw.ports = [Port(index=i, cfg=c, fds=[], mac=f"02:00:00:00:01:0{i}", nspath=None, ifindex=0)
                for i, c in enumerate(cfg.ports)]
    try:
        settings.apply(sw.shared, cfg, sw.ports)
        sw.shared.ptr.acl_hits[1][0][0] = 5             # worker 1 counts p0's rule
        cfg = ports_cfg(f"{{name: p0, acl: [{rule.format(22)}]}}", "{name: p1}")
        for port in sw.ports:
            port.cfg = cfg.ports[port.index]
        settings.apply(sw.shared, cfg, sw.ports)        # a new rule: its hits start again
        sw.shared.ptr.acl_hits[1][0][0] += 3
        sw.shared.ptr.counters[1][0].rx_packets = 8
        assert sw.shared.acl_hits(0) == [3]
        # p0 goes and p2 comes, with p0's rules, in one reload (Switch.apply): p2 gets p0's slot.
        cfg = ports_cfg("{name: p1}", f"{{name: p2, acl: [{rule.format(22)}]}}")
        sw.slots_used = set(range(fastpath.lib.TS_MAX_PORTS))
        kept = [sw.ports[1]]
        index = sw._free_slot({p.index for p in kept})
        assert index == 0
        sw.ports = kept + [Port(index=index, cfg=cfg.ports[1], fds=[], mac="02:00:00:00:01:02", nspath=None,
                                ifindex=0)]
        settings.apply(sw.shared, cfg, sw.ports)
        assert sw.shared.counters(0)["rx_packets"] == 0
        assert sw.shared.acl_hits(0) == [0]
        sw.shared.ptr.acl_hits[0][0][0] += 1
        assert sw.shared.acl_hits(0) == [1]
    finally:
        sw.shared.close()


def test_fdb_of_a_table_of_hundreds_of_thousands_of_macs_reaches_the_client(tmp_path):
    """`tapswitch fdb` on a large table (mac_table.size goes to 16M; the bench runs 1M): 300k
    entries are some 25 MB of JSON. The whole table comes back, its first bytes at once. (The
    client read at most 16 MiB of a reply, and said "the switch ... closed the connection" from
    about 200k entries on; the switch built the whole reply, several times its size, before
    sending a byte, past the client's 5 s from about a million.)"""
    sw = make_switch()
    sw.shared.close()
    sw.shared = fastpath.Shared.create(2**20, 1)
    n = 300_000
    for i in range(n):
        fastpath.lib.ts_fdb_add_static(sw.shared.ptr, b"\x02\x00" + i.to_bytes(4, "big"), 1, i % 2)
    server = ControlServer(str(tmp_path / "s.sock"), {"fdb": lambda req: sw.fdb_info()})
    server.start()
    try:
        entries = control.request(server.path, "fdb")
        assert len(entries) == n
        assert {e["mac"] for e in entries} == {f"02:00:{i >> 24:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
                                               for i in range(n)}
        assert entries[0].keys() == {"mac", "vlan", "port", "age", "static"}
        assert {(e["vlan"], e["static"]) for e in entries} == {(1, True)}
        assert {e["port"] for e in entries} == {"p0", "p1"}
    finally:
        server.stop()
        sw.shared.close()


def test_fdb_reply_is_the_line_json_dumps_of_the_entries_would_be():
    """The switch writes each entry from a format, not through a dict and json.dumps (a third of
    the time: 12 s for a million entries before): byte for byte what json.dumps wrote, for a
    port name JSON escapes and for a port slot no port has."""
    cfg = config.loads("switch: {name: s}\nports: [{name: 'p\"0\\'}, {name: 'pé1'}]\n")
    sw = Switch(cfg)
    sw.shared = fastpath.Shared.create(1024, 1)
    sw.ports = [Port(index=i, cfg=c, fds=[], mac=f"02:00:00:00:01:0{i}", nspath=None, ifindex=0)
                for i, c in enumerate(cfg.ports)]
    try:
        for i, port in enumerate((0, 1, 7)):
            fastpath.lib.ts_fdb_learn(sw.shared.ptr, fastpath.lib.TS_CONTROL, bytes([2, 0, 0, 0, 0xab, i]), 4094, port,
                                      fastpath.lib.ts_now())
        fastpath.lib.ts_fdb_add_static(sw.shared.ptr, bytes([2, 0, 0, 0, 0xcd, 0xef]), 1, 1)
        reply = b"".join(sw.fdb_info().chunks())
        names = {0: 'p"0\\', 1: "pé1", 7: "7"}
        now = sw.shared.now()
        entries = [{"mac": mac, "vlan": vlan, "port": names[port], "age": max(0, now - seen), "static": static}
                   for mac, vlan, port, static, seen in sw.shared.fdb_dump()]
        assert reply == json.dumps({"ok": True, "result": entries}).encode() + b"\n"
        assert {(e["mac"], e["port"]) for e in entries} == {("02:00:00:00:ab:00", 'p"0\\'), ("02:00:00:00:ab:01", "pé1"),
                                                            ("02:00:00:00:ab:02", "7"), ("02:00:00:00:cd:ef", "pé1")}
    finally:
        sw.shared.close()

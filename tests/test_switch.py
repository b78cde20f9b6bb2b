"""The switch's control plane, without devices: a Switch over its shared memory and hand-made ports."""

import contextlib
import errno
import json
import os
import resource
import socket
import subprocess
import sys
import threading

import pytest
import structlog

from tapswitch import cli, config, control, fastpath, settings
from tapswitch import switch as switch_mod
from tapswitch.control import ControlServer
from tapswitch.ports import Port
from tapswitch.saidonce import SaidOnce
from tapswitch.switch import Switch

OLD_SWITCH = os.path.join(os.path.dirname(__file__), "old_switch.py")


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


def test_a_static_entry_on_a_ports_mac_is_said_held_only_in_the_ports_vlans_and_not_for_a_monitor_port():
    """fdb.static_held says a port's MAC is static on another port in a VLAN of the port's: when
    the config's entry is written on it (install_static_macs) or its MAC changes (_say_static_held).
    Not for an entry in a VLAN the port is not in (no frame of its host's is sent there), and
    not for a mirror's monitor port, which no frame is sent to by its MAC."""
    sw = make_switch()
    try:
        sw.cfg = config.loads(
            "switch: {name: s}\nports: [{name: p0}, {name: p1, vlan: 1, trunk: [20]}, {name: p2}]\n"
            "mirrors: [{name: m, from: [p0], to: p2}]\nstatic_macs:\n"
            "  - {mac: '02:00:00:00:01:00', port: p1, vlan: 20}\n  - {mac: '02:00:00:00:01:00', port: p1}\n"
            "  - {mac: '02:00:00:00:01:02', port: p1}\n  - {mac: '02:00:00:00:01:09', port: p1}\n")
        sw.ports = [Port(index=i, cfg=c, fds=[], mac=f"02:00:00:00:01:0{i}", nspath=None, ifindex=0)
                    for i, c in enumerate(sw.cfg.ports)]
        with structlog.testing.capture_logs() as logs:
            sw.install_static_macs()                     # p0's MAC in VLAN 1 said; in 20 (p0 is in 1 only)
                                                         # and the monitor port's MAC not
            sw.ports[2].mac = "02:00:00:00:01:09"        # the monitor port takes p1's pinned MAC
            sw._say_static_held(sw.ports[2])
            sw.ports[0].mac = "02:00:00:00:01:09"        # p0 does: said
            sw._say_static_held(sw.ports[0])
        assert [(e["mac"], e["vlan"], e["port"], e["claimed_by"]) for e in logs if e["event"] == "fdb.static_held"] \
            == [("02:00:00:00:01:00", 1, "p1", "p0"), ("02:00:00:00:01:09", 1, "p1", "p0")]
    finally:
        sw.shared.close()


def test_installing_the_static_entries_again_writes_only_those_that_changed(monkeypatch):
    """A reload installs the static entries again: one in the table as wanted is not written
    (its `seen`, the age `fdb` shows, would start again); one moved, on a port now on another
    slot, removed by `fdb del`, or new is; one no longer wanted goes."""
    sw = make_switch()
    try:
        sw.cfg = config.loads("switch: {name: s}\nports: [{name: p0}, {name: p1}]\nstatic_macs:\n"
                              + "".join(f"  - {{mac: '02:00:00:00:00:0{i}', port: p{i % 2}}}\n" for i in range(4)))
        sw.install_static_macs()
        sw.fdb_add({"mac": "02:00:00:00:00:09", "port": "p0"})
        sw.fdb_del({"mac": "02:00:00:00:00:03"})
        written = []
        add = sw.shared.fdb_add_static
        monkeypatch.setattr(sw.shared, "fdb_add_static", lambda mac, vlan, port: (written.append(mac),
                                                                                  add(mac, vlan, port)))
        sw.install_static_macs()
        assert written == ["02:00:00:00:00:03"]         # only the one `fdb del` took out
        # 00:00 moves to p1; p1 is made again on slot 2 (01:..., 02:00... on p0 stay); 02 goes.
        sw.cfg = config.loads("switch: {name: s}\nports: [{name: p0}, {name: p1}]\nstatic_macs:\n"
                              "  - {mac: '02:00:00:00:00:00', port: p1}\n  - {mac: '02:00:00:00:00:01', port: p1}\n"
                              "  - {mac: '02:00:00:00:00:03', port: p1}\n")
        sw.ports[1] = Port(index=2, cfg=sw.cfg.ports[1], fds=[], mac="02:00:00:00:01:02", nspath=None, ifindex=0)
        written.clear()
        sw.install_static_macs()
        assert sorted(written) == ["02:00:00:00:00:00", "02:00:00:00:00:01", "02:00:00:00:00:03"]
        assert sorted(e[:4] for e in sw.shared.fdb_dump()) == [
            ("02:00:00:00:00:00", 1, 2, True), ("02:00:00:00:00:01", 1, 2, True),
            ("02:00:00:00:00:03", 1, 2, True), ("02:00:00:00:00:09", 1, 0, True)]
    finally:
        sw.shared.close()


@pytest.mark.parametrize("port", ["", False, 0, [], {}])
def test_fdb_del_naming_a_port_that_is_none_is_refused_and_deletes_nothing(port):
    """A request's `port` that names no port is refused, however falsy: `[]`, `false`, `0`, `""`
    were taken for no port, and the entry in VLAN 1 (not the port's) was deleted."""
    sw = make_switch()
    try:
        sw.fdb_add({"mac": "02:00:00:00:00:01", "port": "p0"})
        with pytest.raises(control.ControlError, match="no port named"):
            sw.fdb_del({"mac": "02:00:00:00:00:01", "vlan": 1, "port": port})
        assert [e[:4] for e in sw.shared.fdb_dump()] == [("02:00:00:00:00:01", 1, 0, True)]
    finally:
        sw.shared.close()


def test_a_port_added_once_every_slot_was_used_takes_one_no_static_entry_is_on():
    """A removed port's static entries stay on its slot until the reload's ports are up: a port
    the reload adds on that slot would get their MACs' frames meanwhile. It takes another freed
    one if there is one."""
    sw = make_switch()
    try:
        sw.fdb_add({"mac": "02:00:00:00:00:01", "port": "p0"})
        sw.slots_used = set(range(fastpath.lib.TS_MAX_PORTS))
        busy = {1} | set(range(3, fastpath.lib.TS_MAX_PORTS))       # p0 (slot 0) removed, slot 2 freed before
        assert sw._free_slot(busy) == 2
        assert sw._free_slot(busy | {2}) == 0       # none other: that one
    finally:
        sw.shared.close()


def test_fdb_add_on_a_port_a_reload_removes_never_lands_on_the_port_that_takes_its_slot(monkeypatch):
    """`tapswitch fdb add MAC --port p0`, served in a thread of the control socket, found p0 just
    before a reload (the control loop's thread) removed it; the reload took no lock then, and
    gave p0's slot to the port it added, p2 (no static entry on it yet: _free_slot). The add
    then wrote its entry on that slot: p2 got the MAC's frames until the reload's end. The
    reload now removes ports under static_lock: the add is on p0 while p0 is there (and its
    slot is held: another goes to p2), or finds no p0."""
    from tapswitch import ports as ports_mod
    from tapswitch import reload as reload_mod
    sw = make_switch()
    try:
        sw.slots_used = set(range(fastpath.lib.TS_MAX_PORTS))     # no fresh slot: a freed one is taken
        sw.supervisor = type("NoWorkers", (), {"hung_after": 0})()
        monkeypatch.setattr(sw, "_replace_workers", lambda: [])
        monkeypatch.setattr(ports_mod, "wait_gone", lambda port: True)
        monkeypatch.setattr(sw, "_add_ports", lambda wanted, config=None: [
            Port(index=i, cfg=c, fds=[], mac=f"02:00:00:00:01:0{i}", nspath=None, ifindex=0) for i, c in wanted])
        new = config.loads("switch: {name: s}\nports: [{name: p1}, {name: p2}]\n")
        plan = reload_mod.plan(sw.cfg, new)
        # The reload goes on until it waits for the add (static_lock): only then does the add write.
        inside, waited = threading.Event(), threading.Event()

        class Watched:
            def __init__(self):
                self.lock = threading.Lock()

            def __enter__(self):
                if not self.lock.acquire(blocking=False):
                    waited.set()
                    self.lock.acquire()

            def __exit__(self, *exc):
                self.lock.release()
        sw.static_lock = Watched()
        check = sw._static_mac_error

        def found_p0(port, vlan):            # the add has its port: the reload starts
            inside.set()
            assert waited.wait(60)
            return check(port, vlan)
        monkeypatch.setattr(sw, "_static_mac_error", found_p0)
        landed = []
        add = sw.shared.fdb_add_static
        monkeypatch.setattr(sw.shared, "fdb_add_static", lambda mac, vlan, index: (
            landed.append([p.name for p in sw.ports if p.index == index]), add(mac, vlan, index)))
        adder = threading.Thread(target=sw.fdb_add, args=({"mac": "02:00:00:00:00:09", "port": "p0"},))
        adder.start()
        assert inside.wait(60)
        sw.apply(plan, new)
        adder.join()
        assert landed == [["p0"]]
        assert {p.name: p.index for p in sw.ports} == {"p1": 1, "p2": 2}
        assert [e[:4] for e in sw.shared.fdb_dump()] == []     # gone with p0
    finally:
        sw.shared.close()


def reload_removing_p0(sw: Switch, monkeypatch, while_workers_go=lambda: None):
    """Switch.apply of a reload that removes p0 and adds p2, without devices or workers:
    while_workers_go() runs as the workers the removal replaces are stopped."""
    from tapswitch import ports as ports_mod
    from tapswitch import reload as reload_mod
    sw.slots_used = set(range(fastpath.lib.TS_MAX_PORTS))     # no fresh slot: a freed one is taken
    sw.supervisor = type("NoWorkers", (), {"hung_after": 0})()
    replaced = []

    def replace_workers():
        if not replaced:
            while_workers_go()
        replaced.append(True)
        return []
    monkeypatch.setattr(sw, "_replace_workers", replace_workers)
    monkeypatch.setattr(ports_mod, "wait_gone", lambda port: True)
    monkeypatch.setattr(sw, "_add_ports", lambda wanted, config=None: [
        Port(index=i, cfg=c, fds=[], mac=f"02:00:00:00:01:0{i}", nspath=None, ifindex=0) for i, c in wanted])
    new = config.loads("switch: {name: s}\nports: [{name: p1}, {name: p2}]\n")
    assert sw.apply(reload_mod.plan(sw.cfg, new), new) == ({}, [])


def test_a_mac_a_worker_learns_on_a_port_as_a_reload_removes_it_does_not_outlive_the_port(monkeypatch):
    """A worker checks that a frame's port is up before it learns its source (handle_burst): one
    inside a burst from p0 as a reload removed p0 learned the source on p0's slot after the
    reload had flushed it. The entry lived until aging: `fdb` listed it, fdb_entries counted it,
    and p2, given the slot, got that MAC's frames. The reload flushes the slot again once the
    workers that served p0 are gone."""
    sw = make_switch()
    try:
        late = "02:00:00:00:00:77"

        def late_learn():     # the worker's burst ends after the flush, before it stops
            assert fastpath.lib.ts_fdb_learn(sw.shared.ptr, 0, fastpath.mac_bytes(late), 1, 0,
                                             sw.shared.now()) == 1
        reload_removing_p0(sw, monkeypatch, late_learn)
        assert {p.name: p.index for p in sw.ports} == {"p1": 1, "p2": 0}
        assert sw.shared.fdb_dump() == []
        assert fastpath.lib.ts_fdb_lookup(sw.shared.ptr, fastpath.mac_bytes(late), 1) == -1     # flooded
        assert (sw.shared.ptr.ports[0].fdb_entries, sw.shared.fdb_entries()) == (0, 0)
    finally:
        sw.shared.close()


def test_a_mac_a_worker_learns_on_a_port_as_its_link_goes_down_is_flushed_once_that_burst_is_over():
    """A worker inside a burst from p0 as p0's link went down learned a source on p0 after
    set_port_up had flushed it: frames to that MAC were dropped (its port down), not flooded to
    where the host may be now, until it aged. The control loop flushes p0 again two epochs on
    (fastpath.h, "Abandoned slots"), once that burst is over, and not before."""
    sw = make_switch()
    try:
        p0, reader = sw.ports[0], sw.shared.ptr.readers[0]
        late = fastpath.mac_bytes("02:00:00:00:00:77")
        # The worker beat since the epoch last moved, then went into a burst from p0, which it saw
        # up: the epoch moves once more (the beat), then waits for the burst.
        reader.heartbeat += 1
        reader.active = 1
        sw.set_port_up(p0, False)
        for _ in range(3):
            sw.maintain_fdb()           # the burst goes on
        assert sw.shared.fdb_epoch == 1
        assert fastpath.lib.ts_fdb_learn(sw.shared.ptr, 0, late, 1, 0, sw.shared.now()) == 1
        reader.active = 0               # the burst is over
        for _ in range(2):
            sw.maintain_fdb()
        assert sw.shared.fdb_dump() == []
        assert fastpath.lib.ts_fdb_lookup(sw.shared.ptr, late, 1) == -1
        assert sw.shared.fdb_entries() == 0
    finally:
        sw.shared.close()


def test_a_recount_a_worker_inside_a_burst_holds_back_is_tried_again_once_the_epoch_moves():
    """A worker reaped unasked (Supervisor._release) may have left a port's count one off: the
    next tick counts the MAC table again. Another worker stopped inside a burst holds that back
    (the recount waits a tenth of a second for it, learning stopped): tried once, then not at
    every tick while the worker stays so (with the watchdog off, for good), tried again once
    another worker is reaped, and done at the tick after the epoch moves."""
    sw = make_switch()
    sw.shared.close()
    sw.shared = fastpath.Shared.create(1024, 2)
    try:
        assert fastpath.lib.ts_fdb_learn(sw.shared.ptr, 0, fastpath.mac_bytes("02:00:00:00:00:77"), 1, 0,
                                         sw.shared.now()) == 1
        sw.shared.ptr.ports[0].fdb_entries = 0      # worker 0, killed before its count
        recount, tries = sw.shared.fdb_recount, []
        sw.shared.fdb_recount = lambda: tries.append(1) or recount(timeout_ms=10)
        sw.shared.ptr.readers[1].active = 1         # worker 1, stopped inside a burst
        sw._worker_reaped(0)
        for _ in range(3):
            sw.maintain_fdb()
        assert (tries, sw.shared.port_fdb_entries(0)) == ([1], 0)
        sw._worker_reaped(0)                        # another worker reaped: tried again
        sw.maintain_fdb()
        assert (tries, sw.shared.port_fdb_entries(0)) == ([1, 1], 0)
        sw.shared.ptr.readers[1].active = 0         # it runs again
        for _ in range(2):
            sw.maintain_fdb()
        assert (tries, sw.shared.port_fdb_entries(0), sw.fdb_recount_due) == ([1, 1, 1], 1, False)
        sw.maintain_fdb()
        assert len(tries) == 3
    finally:
        sw.shared.close()


def test_what_a_port_learns_once_its_link_is_up_again_is_not_flushed():
    """The flush that follows a link's going down is dropped when it comes up again: what the
    port learns from then on is its own."""
    sw = make_switch()
    try:
        p0 = sw.ports[0]
        sw.set_port_up(p0, False)
        sw.set_port_up(p0, True)
        assert fastpath.lib.ts_fdb_learn(sw.shared.ptr, 0, fastpath.mac_bytes("02:00:00:00:00:77"), 1, 0,
                                         sw.shared.now()) == 1
        for _ in range(3):
            sw.maintain_fdb()
        assert [e[:3] for e in sw.shared.fdb_dump()] == [("02:00:00:00:00:77", 1, 0)]
    finally:
        sw.shared.close()


def test_a_port_in_a_used_slot_counts_its_mac_table_entries_from_what_is_there(monkeypatch):
    """A worker killed between an entry's removal and its count's left p0's count one over
    (fastpath.h, "Abandoned slots"): once p0 is removed its slot holds no learned entry, and its
    count is its static entries again, so that tapswitch_fdb_entries and the next port on the
    slot (its mac_limit, fair eviction) do not inherit a ghost. Its static entry stays counted
    until the reload takes it away."""
    sw = make_switch()
    try:
        sw.fdb_add({"mac": "02:00:00:00:00:09", "port": "p0"})
        sw.shared.ptr.ports[0].fdb_entries += 1         # one over, for good
        reload_removing_p0(sw, monkeypatch)
        assert sw.shared.fdb_dump() == []
        assert (sw.shared.ptr.ports[0].fdb_entries, sw.shared.ptr.ports[0].fdb_static) == (0, 0)
        assert sw.shared.fdb_entries() == 0
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


# --- `tapswitch fdb` on a large table, and its filters ------------------------------------

FDB_COLUMNS = ["MAC", "VLAN", "PORT", "AGE", "STATIC"]


def fdb_mac(i: int) -> str:
    return f"02:00:{i >> 24:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def fill_fdb(sw: Switch, n: int) -> dict[tuple[str, int], tuple[str, int, bool]]:
    """n entries: learned on p0 and p1 and on a port slot no port has (listed by its number),
    in VLANs 1-3, seen up to 999 s ago; every 7th static. {(mac, vlan): (port, age, static)}."""
    now = fastpath.lib.ts_now()         # seconds since boot: maybe not 1000 yet
    names = {0: "p0", 1: "p1", 5: "5"}
    expected = {}
    for i in range(n):
        mac, vlan, port = fdb_mac(i), 1 + i % 3, (0, 1, 5)[i % 3 if i % 11 == 0 else i % 2]
        if i % 7 == 0:
            assert fastpath.lib.ts_fdb_add_static(sw.shared.ptr, bytes.fromhex(mac.replace(":", "")), vlan, port) == 0
            expected[mac, vlan] = (names[port], 0, True)
        else:
            age = i % min(1000, now + 1)
            assert fastpath.lib.ts_fdb_learn(sw.shared.ptr, fastpath.lib.TS_CONTROL, bytes.fromhex(mac.replace(":", "")),
                                             vlan, port, now - age) == 1
            expected[mac, vlan] = (names[port], age, False)
    return expected


@contextlib.contextmanager
def serving_fdb(sw: Switch, tmp_path):
    server = ControlServer(str(tmp_path / "s.sock"), {"fdb": sw.fdb_info, "fdb_flush":
                                                      lambda req: {"flushed": sw.fdb_flush(req.get("port"))}})
    server.start()
    try:
        yield server.path
    finally:
        server.stop()


# Runs a command and prints its peak RSS (kB) on stderr's last line. The command's, not the
# test's: a process forked from the test starts as large as it is, and Linux counts that in.
MEASURED = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")


def run_cli(*argv) -> tuple[int, str, str, int]:
    """`tapswitch ARGV` as a process of its own: exit code, stdout, stderr, peak RSS in kB."""
    r = subprocess.run([sys.executable, "-c", MEASURED, sys.executable, "-m", "tapswitch", *argv],
                       capture_output=True, text=True, timeout=120)
    err, _, rss = r.stderr.rpartition("\n")[0].rpartition("\n")
    return r.returncode, r.stdout, err, int(rss)


def check_ages(entries: dict, expected: dict) -> None:
    """Every entry as filled; the learned ones as much older as the seconds since the filling
    began, a static one (seen when it was added) at most that."""
    assert {k: (p, s) for k, (p, _, s) in entries.items()} == {k: (p, s) for k, (p, _, s) in expected.items()}
    [since] = {entries[k][1] - age for k, (_, age, static) in expected.items() if not static}
    assert 0 <= since < 60
    assert {entries[k][1] for k, (_, _, static) in expected.items() if static} <= set(range(since + 1))


def test_fdb_lists_a_table_of_200k_entries_whole_sorted_and_in_little_memory(tmp_path):
    """`tapswitch fdb` of 200k entries prints every one, sorted by port, VLAN and MAC, laid out
    as table() lays out a table, and `--json` the same entries as print(json.dumps(..., indent=2))
    would: in some 40 MB, not 200 (the client read the whole reply, json.loads it into a dict an
    entry, sorted them and built one string of the table: at a million entries 1 GB and 20 s)."""
    n = 200_000
    sw = make_switch()
    sw.shared.close()
    sw.shared = fastpath.Shared.create(2**19, 1)
    try:
        expected = fill_fdb(sw, n)
        with serving_fdb(sw, tmp_path) as path:
            code, out, err, rss_table = run_cli("fdb", "-s", path)
            assert (code, err) == (0, "")
            rows = [line.split() for line in out.splitlines()[1:]]
            assert len(rows) == n
            check_ages({(m, int(v)): (p, int(a), s == "yes") for m, v, p, a, s in rows}, expected)
            ordered = sorted(rows, key=lambda r: (r[2], int(r[1]), r[0]))
            assert rows == ordered
            assert out == cli.table(ordered, FDB_COLUMNS) + "\n"     # the columns as wide as their widest cell
            assert rows[0][:3] == ["02:00:00:00:00:0b", "3", "5"]     # "5" (a port slot, no name) before "p0"

            code, out, err, rss_json = run_cli("fdb", "--json", "-s", path)
            assert (code, err) == (0, "")
            entries = json.loads(out)
            assert len(entries) == n
            assert {tuple(e) for e in entries} == {("mac", "vlan", "port", "age", "static")}
            check_ages({(e["mac"], e["vlan"]): (e["port"], e["age"], e["static"]) for e in entries}, expected)
            assert out == json.dumps(entries, indent=2) + "\n"
        assert rss_table < 80_000, f"{rss_table} kB for the table"
        assert rss_json < 60_000, f"{rss_json} kB for --json"
    finally:
        sw.shared.close()


def test_fdb_port_vlan_and_mac_list_only_the_entries_that_match_each(tmp_path, capsys):
    sw = make_switch()
    try:
        expected = fill_fdb(sw, 300)
        with serving_fdb(sw, tmp_path) as path:
            capsys.readouterr()             # the server's log line
            def listed(*argv) -> set:
                assert cli.main(["fdb", *argv, "--json", "-s", path]) == cli.EXIT_OK
                return {(e["mac"], e["vlan"], e["port"]) for e in json.loads(capsys.readouterr().out)}

            def want(fn) -> set:
                return {(m, v, p) for (m, v), (p, _, _) in expected.items() if fn(m, v, p)}

            assert listed() == want(lambda m, v, p: True)
            assert listed("--port", "p1") == want(lambda m, v, p: p == "p1") != set()
            assert listed("--vlan", "2") == want(lambda m, v, p: v == 2) != set()
            assert listed("--port", "p0", "--vlan", "3") == want(lambda m, v, p: (p, v) == ("p0", 3)) != set()
            assert listed("--mac", "02-00-00-00-00-2A") == {("02:00:00:00:00:2a", 1, "p0")}
            assert listed("--mac", "02:00:00:00:00:2a", "--vlan", "2") == set()
            assert listed("--vlan", "4094") == set()

            assert cli.main(["fdb", "--port", "p1", "-s", path]) == cli.EXIT_OK
            lines = capsys.readouterr().out.splitlines()
            assert lines[0].split() == FDB_COLUMNS
            assert {line.split()[2] for line in lines[1:]} == {"p1"}
            assert len(lines) == 1 + len(want(lambda m, v, p: p == "p1"))

            with pytest.raises(SystemExit) as e:
                cli.main(["fdb", "--port", "p9", "-s", path])
            assert str(e.value).startswith("tapswitch: no port named 'p9'")
            # A VLAN or MAC that is none the command line refuses itself (test_cli); the switch
            # too, for any other client.
            for fields, error in (({"vlan": 0}, "VLAN must be 1-4094, not 0"),
                                  ({"mac": "02:00"}, "not a MAC address: '02:00'")):
                with pytest.raises(control.ControlError) as e:
                    list(control.request_listing(path, "fdb", **fields))
                assert str(e.value).startswith(error)

            # A filter before an action is the listing's: `fdb --port p0 flush` flushes nothing
            # (it flushed every port's entries: flush's --port, not given, overwrote it).
            assert cli.main(["fdb", "--port", "p0", "flush", "-s", path]) == cli.EXIT_CONFIG
            assert "--port before `flush`" in capsys.readouterr().err
            assert listed() == want(lambda m, v, p: True)
    finally:
        sw.shared.close()


def test_a_filtered_fdb_listing_says_which_filters_the_switch_applied(tmp_path, capsys):
    """The switch says in its reply which filters picked the entries: a client can tell it from
    a switch older than them, which ignores them and sends the whole table. A whole table's
    reply opens as it did (an older client reads it as it comes); a filtered one is still the
    line json.dumps writes (an older client reads it whole)."""
    sw = make_switch()
    try:
        expected = fill_fdb(sw, 300)
        with serving_fdb(sw, tmp_path) as path:
            capsys.readouterr()             # the server's log line
            def reply(request: dict) -> bytes:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(path)
                    s.sendall(json.dumps(request).encode() + b"\n")
                    return s.makefile("rb").readline()

            line = reply({"cmd": "fdb", "port": "p1", "vlan": 2})
            assert line.startswith(b'{"ok": true, "filters": ["port", "vlan"], "result": [{"mac": ')
            want = {(m, v, p) for (m, v), (p, _, _) in expected.items() if (p, v) == ("p1", 2)}
            answer = json.loads(line)
            assert {(e["mac"], e["vlan"], e["port"]) for e in answer.pop("result")} == want != set()
            assert answer == {"ok": True, "filters": ["port", "vlan"]}
            assert json.loads(reply({"cmd": "fdb", "mac": "02-00-00-00-00-2A"}))["filters"] == ["mac"]
            assert reply({"cmd": "fdb"}).startswith(control.LISTING_HEAD)

            listing = control.request_listing(path, "fdb", port="p1", vlan=2)
            assert {(e["mac"], e["vlan"], e["port"]) for batch in listing for e in batch} == want
            assert listing.filters == ["port", "vlan"]
            assert {(e["mac"], e["vlan"], e["port"]) for e in control.request(path, "fdb", port="p1", vlan=2)} == want

            assert cli.main(["fdb", "--port", "p1", "--vlan", "2", "-s", path]) == cli.EXIT_OK
            out, err = capsys.readouterr()
            assert (len(out.splitlines()), err) == (1 + len(want), "")
    finally:
        sw.shared.close()


@contextlib.contextmanager
def old_switch(tmp_path, n: int):
    """tests/old_switch.py serving a MAC table of n entries: its socket's path."""
    path = str(tmp_path / "old.sock")
    server = subprocess.Popen([sys.executable, OLD_SWITCH, path, str(n)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "listening\n"
        yield path
    finally:
        server.kill()
        server.wait()
        server.stdout.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def test_ports_of_a_switch_of_an_older_tapswitch_shows_what_it_has_and_dashes_for_the_rest(tmp_path):
    """tapswitch upgraded, the switch it had started running on, from before rx_missed and a port's
    error: `tapswitch ports` shows its columns, "-" for those it lacks (it ended in a KeyError's
    traceback), and --json its reply as it is."""
    with old_switch(tmp_path, 0) as path:
        code, out, err, _ = run_cli("ports", "-s", path)
        assert (code, err) == (0, "")
        rows = [line.split() for line in out.splitlines()]
        header = rows[0]
        assert [r[0] for r in rows[1:]] == ["p0", "p1"]
        p1 = dict(zip(header, rows[2]))
        assert (p1["STATE"], p1["MTU"], p1["RX-MISSED"], p1["RX-PACKETS"], p1["FLOODED"]) == ("up", "1500", "-", "7", "15")
        code, out, err, _ = run_cli("ports", "--json", "-s", path)
        assert (code, json.loads(out)[1]["counters"].get("rx_missed")) == (0, None)


def test_fdb_filters_on_a_switch_of_an_older_tapswitch_list_only_the_entries_that_match(tmp_path):
    """tapswitch upgraded, the switch it had started running on: that switch ignores --port,
    --vlan and --mac and sends its whole table. The client picks the entries itself then, and
    says why on stderr (it printed the whole table as if it were the entries asked for)."""
    with old_switch(tmp_path, 10_000) as path:
        code, out, err, _ = run_cli("fdb", "--json", "-s", path)
        assert (code, err) == (0, "")
        table = json.loads(out)
        assert len(table) == 10_000

        def check(*argv, picks) -> int:
            code, out, err, _ = run_cli("fdb", *argv, "--json", "-s", path)
            picked = [e for e in table if picks(e)]
            assert (code, json.loads(out)) == (0, picked)
            ignored = " ".join(f"--{k}" for k in ("port", "vlan", "mac") if f"--{k}" in argv)
            assert err == (f"tapswitch: the switch on {path} runs an older tapswitch, which ignores {ignored}: "
                           f"it sent its whole MAC table, picked here; restart the switch to have it pick the entries")
            return len(picked)

        assert check("--port", "p1", picks=lambda e: e["port"] == "p1") == 5000
        assert check("--vlan", "3", "--port", "p0", picks=lambda e: (e["port"], e["vlan"]) == ("p0", 3)) > 0
        assert check("--mac", "02-00-00-00-00-2A", picks=lambda e: e["mac"] == "02:00:00:00:00:2a") == 1
        assert check("--vlan", "2", "--mac", "02:00:00:00:00:2a", picks=lambda e: False) == 0

        code, out, err, _ = run_cli("fdb", "--port", "p0", "--vlan", "2", "-s", path)
        assert (code, "older tapswitch" in err) == (0, True)
        rows = [line.split() for line in out.splitlines()]
        assert rows[0] == FDB_COLUMNS
        assert len(rows) == 1 + len([e for e in table if (e["port"], e["vlan"]) == ("p0", 2)])
        assert {(r[2], r[1]) for r in rows[1:]} == {("p0", "2")}

        for argv, error in ((["--vlan", "0"], "argument --vlan: VLAN must be 1-4094, not 0"),
                            (["--mac", "02:00"], "argument --mac: not a MAC address: '02:00'")):
            code, out, err, _ = run_cli("fdb", *argv, "-s", path)
            assert (code, out) == (2, "")
            assert f": error: {error}" in err.splitlines()[-1]


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


def test_notify_logs_a_failure_once_while_it_lasts(tmp_path, monkeypatch):
    """$NOTIFY_SOCKET naming a socket that is gone: notify.failed was logged at every reload
    (RELOADING=1, READY=1) and at the stop. Now once while the same failure lasts; again
    once it changes, or after a message got through."""
    path = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setattr(switch_mod, "_notify_failure", SaidOnce())
    refused, gone = os.strerror(errno.ECONNREFUSED), os.strerror(errno.ENOENT)

    def listening() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        return s

    with structlog.testing.capture_logs() as logs:
        with listening() as s:
            switch_mod.notify("READY=1")
            assert s.recv(64) == b"READY=1"
        for state in ("RELOADING=1", "READY=1"):     # closed, its file left: refused
            switch_mod.notify(state)
        os.unlink(path)
        for state in ("RELOADING=1", "READY=1", "STOPPING=1"):     # gone
            switch_mod.notify(state)
        with listening() as s:                       # back: said, and a failure after it is logged again
            switch_mod.notify("READY=1")
            assert s.recv(64) == b"READY=1"
        os.unlink(path)
        for state in ("RELOADING=1", "READY=1"):
            switch_mod.notify(state)
    failed = [e for e in logs if e["event"] == "notify.failed"]
    assert [(e["socket"], e["error"]) for e in failed] == [
        (path, f"[Errno {errno.ECONNREFUSED}] {refused}"), (path, f"[Errno {errno.ENOENT}] {gone}"),
        (path, f"[Errno {errno.ENOENT}] {gone}")]


def test_notify_out_of_descriptors_logs_and_raises_nothing(tmp_path, monkeypatch):
    """No descriptor left for notify's socket (EMFILE, as when a start fails out of them): it is
    a failure to notify like any other, logged. (It raised: the stop's undo ended at its first
    step, leaving every device, namespace and the socket, and a reload's ended the switch.)"""
    path = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setattr(switch_mod, "_notify_failure", SaidOnce())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    taken = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s, structlog.testing.capture_logs() as logs:
        s.bind(path)
        try:
            taken.append(os.open("/dev/null", os.O_RDONLY))
            resource.setrlimit(resource.RLIMIT_NOFILE, (taken[0] + 16, hard))
            with contextlib.suppress(OSError):
                while True:
                    taken.append(os.open("/dev/null", os.O_RDONLY))
            switch_mod.notify("STOPPING=1")
        finally:
            for fd in taken:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        switch_mod.notify("STOPPING=1")         # descriptors again: it gets through
        assert s.recv(64) == b"STOPPING=1"
    failed = [e for e in logs if e["event"] == "notify.failed"]
    assert [(e["socket"], e["error"]) for e in failed] == [(path, f"[Errno {errno.EMFILE}] {os.strerror(errno.EMFILE)}")]

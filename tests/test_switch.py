"""The switch's control plane, without devices: a Switch over its shared memory and hand-made ports."""

import threading

from tapswitch import config, fastpath
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

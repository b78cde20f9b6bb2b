"""Static MACs: from the config and from `tapswitch fdb add|del`; never aged, moved or flushed."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from tapswitch import control
from tests.integration import helpers

SENDER = os.path.join(os.path.dirname(__file__), "sendframes.py")
STATIC = "02:00:00:00:99:01"


def quiet_site(lab):
    nss = [lab.netns(s, create=True) for s in ("a", "b", "c")]
    for ns in nss:
        helpers.nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    ports = [{"name": lab.name(f"p{i}"), "netns": ns, "ifname": "eth0"} for i, ns in enumerate(nss)]
    return nss, ports


def tx(sw) -> dict:
    return {p["name"]: p["counters"]["tx_packets"] for p in sw.cli_json("ports")}


def test_static_mac_from_the_config_forwards_and_stays_put(lab):
    nss, ports = quiet_site(lab)
    a, b, c = (p["name"] for p in ports)
    sw = lab.switch({"switch": {"name": lab.name("sw")}, "ports": ports,
                     "static_macs": [{"mac": STATIC, "port": c}]})
    entry = [e for e in sw.cli_json("fdb") if e["mac"] == STATIC]
    assert entry == [{"mac": STATIC, "vlan": 1, "port": c, "age": entry[0]["age"], "static": True}]
    before = tx(sw)
    helpers.nsexec(nss[0], sys.executable, SENDER, "eth0", helpers.link_mac(nss[0], "eth0"), STATIC, 100)
    after = tx(sw)
    assert after[c] - before[c] == 100 and after[b] == before[b]      # known unicast, not flooded
    # Learning does not move it: frames from port b with that source MAC leave it on port c.
    helpers.nsexec(nss[1], sys.executable, SENDER, "eth0", STATIC, "ff:ff:ff:ff:ff:ff", 10)
    assert [e["port"] for e in sw.cli_json("fdb") if e["mac"] == STATIC] == [c]
    # A flush keeps it.
    sw.cli("fdb", "flush")
    assert [e["port"] for e in sw.cli_json("fdb") if e["mac"] == STATIC] == [c]


def test_fdb_add_and_del_from_the_command_line(lab):
    nss, ports = quiet_site(lab)
    b = ports[1]["name"]
    sw = lab.switch({"switch": {"name": lab.name("sw")}, "ports": ports})
    out = sw.cli("fdb", "add", "02:00:00:00:99:02", "--port", b).stdout
    assert out.strip() == f"added 02:00:00:00:99:02 vlan 1 on {b} (static)"
    assert [(e["port"], e["static"]) for e in sw.cli_json("fdb") if e["mac"] == "02:00:00:00:99:02"] == [(b, True)]
    assert sw.cli("fdb", "del", "02:00:00:00:99:02").stdout.strip() == "deleted 02:00:00:00:99:02 vlan 1"
    assert not [e for e in sw.cli_json("fdb") if e["mac"] == "02:00:00:00:99:02"]
    # A MAC that is no entry's is a command line it cannot parse (2); what only the switch knows, 1.
    for bad, code, message in ((["fdb", "add", "01:00:5e:00:00:01", "--port", b], 2, "is not a unicast address"),
                               (["fdb", "add", "nonsense", "--port", b], 2, "not a MAC address"),
                               (["fdb", "add", "02:00:00:00:99:03", "--port", "nope"], 1, "no port named"),
                               (["fdb", "del", "02:00:00:00:99:04"], 1, "no entry for")):
        r = subprocess.run([sys.executable, "-m", "tapswitch", *bad, "-s", sw.socket],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == code and message in r.stderr, (bad, r.stderr)
    # The switch refuses them too, for any other client.
    for mac, message in (("01:00:5e:00:00:01", "is not a unicast address"), ("nonsense", "not a MAC address")):
        with pytest.raises(control.ControlError, match=message):
            control.request(sw.socket, "fdb_add", mac=mac, port=b, vlan=None)


def test_fdb_add_refuses_a_monitor_port_and_a_reload_drops_an_entry_whose_vlan_the_port_left(lab):
    """As check refuses static_macs on a monitor port, so does fdb add; and a port moved to
    another VLAN by reload loses the command line's static entries in the old one."""
    nss, ports = quiet_site(lab)
    a, b, c = (p["name"] for p in ports)
    cfg = {"switch": {"name": lab.name("sw")}, "ports": ports, "mirrors": [{"name": "m", "from": [a], "to": c}]}
    sw = lab.switch(cfg)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "fdb", "add", "02:00:00:00:99:05", "--port", c,
                        "-s", sw.socket], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and f"port {c} is the monitor port of mirror m: it only receives" in r.stderr, r.stderr
    assert not [e for e in sw.cli_json("fdb") if e["mac"] == "02:00:00:00:99:05"]

    sw.cli("fdb", "add", "02:00:00:00:99:06", "--port", b)
    ports[1]["vlan"] = 20
    with open(sw.config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    assert sw.cli("reload").stdout.strip() == f"reloaded: updated {b}"
    assert not [e for e in sw.cli_json("fdb") if e["mac"] == "02:00:00:00:99:06"], sw.cli_json("fdb")
    assert [(e["mac"], e["vlan"]) for e in sw.events("fdb.static_removed")] == [("02:00:00:00:99:06", 1)]


def test_fdb_add_refuses_another_ports_mac_in_its_vlan_as_check_refuses_it(lab):
    """Static on port c, port a's `mac` would send a's frames to c for good (learning never
    moves it): check refuses it in static_macs, and fdb add does too; in a VLAN port a is not
    in, and on port a itself, it is an entry like any other."""
    nss, ports = quiet_site(lab)
    own = "02:00:00:00:99:0c"
    ports[0].update(mac=own, trunk=[10], vlan=1)
    a, b, c = (p["name"] for p in ports)
    ports[2].update(trunk=[10, 20], vlan=1)
    sw = lab.switch({"switch": {"name": lab.name("sw")}, "ports": ports})
    for vlan in ("1", "10"):
        r = tapswitch("fdb", "add", own, "--port", c, "--vlan", vlan, "-s", sw.socket, check=False)
        assert r.returncode == 1, r
        assert f"{own} is the MAC of port {a} in VLAN {vlan}: static on {c}, its frames would go there" in r.stderr, r
    assert not [e for e in sw.cli_json("fdb") if e["mac"] == own and e["static"]]
    sw.cli("fdb", "add", own, "--port", c, "--vlan", "20")
    sw.cli("fdb", "add", own, "--port", a, "--vlan", "10")
    assert sorted((e["port"], e["vlan"]) for e in sw.cli_json("fdb") if e["static"]) == [(a, 10), (c, 20)]



def test_a_reload_that_gives_another_port_the_mac_of_an_fdb_add_entry_removes_the_entry(lab):
    """fdb add refuses a MAC that is another port's `mac` in the VLAN; a reload that gave port
    a, by `mac:`, the MAC of fdb add's entry on port c kept the entry: frames to a went to c
    for good, and a's host was reached no more. The entry goes (fdb.static_removed), as one
    whose port or VLAN went; one in a VLAN port a is not in stays."""
    nss, ports = quiet_site(lab)
    a, b, c = (p["name"] for p in ports)
    ports[2].update(trunk=[20], vlan=1)
    cfg = {"switch": {"name": lab.name("sw")}, "ports": ports}
    sw = lab.switch(cfg)
    mac = "02:00:00:00:99:0d"
    sw.cli("fdb", "add", mac, "--port", c)
    sw.cli("fdb", "add", mac, "--port", c, "--vlan", "20")
    ports[0]["mac"] = mac
    with open(sw.config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    assert sw.cli("reload").stdout.strip() == f"reloaded: remade {a}"
    assert helpers.link_mac(nss[0], "eth0") == mac
    assert [(e["port"], e["vlan"]) for e in sw.cli_json("fdb") if e["mac"] == mac and e["static"]] == [(c, 20)]
    assert [(e["mac"], e["vlan"], e["reason"]) for e in sw.events("fdb.static_removed")] == [
        (mac, 1, f"{mac} is the MAC of port {a} in VLAN 1: static on {c}, its frames would go there")]
    helpers.nsexec(nss[0], sys.executable, SENDER, "eth0", mac, "ff:ff:ff:ff:ff:ff", 1)     # a's host speaks
    assert [e["port"] for e in sw.cli_json("fdb") if e["mac"] == mac and e["vlan"] == 1] == [a]
    before = tx(sw)
    helpers.nsexec(nss[1], sys.executable, SENDER, "eth0", helpers.link_mac(nss[1], "eth0"), mac, 20)
    after = tx(sw)
    assert after[c] == before[c] and after[a] - before[a] == 20     # to a, its MAC's port, not to c

def tapswitch(*argv, check=True) -> subprocess.CompletedProcess:
    return helpers.sh(sys.executable, "-m", "tapswitch", *argv, check=check)


def test_fdb_add_and_del_read_a_mac_as_the_config_does(lab):
    """aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff, as static_macs: in the config; nothing else."""
    nss, ports = quiet_site(lab)
    b = ports[1]["name"]
    sw = lab.switch({"switch": {"name": lab.name("sw")}, "ports": ports})
    assert sw.cli("fdb", "add", "02-00-00-00-99-0A", "--port", b).stdout == f"added 02:00:00:00:99:0a vlan 1 on {b} (static)\n"
    assert sw.cli("fdb", "del", "02-00-00-00-99-0a").stdout == "deleted 02:00:00:00:99:0a vlan 1\n"
    for bad in ("020000009908", "02:00-00:00:99:08", "02.00.00.00.99.08"):
        r = tapswitch("fdb", "add", bad, "--port", b, "-s", sw.socket, check=False)
        assert r.returncode == 2 and f"error: argument mac: not a MAC address: '{bad}'" in r.stderr, r
    assert not [e for e in sw.cli_json("fdb") if e["static"]]


def test_fdb_actions_take_the_switch_options_after_the_action_as_before_it(lab):
    """-s, -c and --json go before the action or after it; the actions print their result as JSON."""
    nss, ports = quiet_site(lab)
    b = ports[1]["name"]
    sw = lab.switch({"switch": {"name": lab.name("sw")}, "ports": ports})
    mac = "02:00:00:00:99:0b"
    added = tapswitch("fdb", "add", mac, "--port", b, "-c", sw.config_path, "--json").stdout
    assert json.loads(added) == {"mac": mac, "vlan": 1, "port": b}
    assert json.loads(tapswitch("fdb", "--json", "-c", sw.config_path, "del", mac).stdout) == {"mac": mac, "vlan": 1}
    assert tapswitch("fdb", "flush", "-c", sw.config_path).stdout.startswith("flushed ")
    assert set(json.loads(tapswitch("fdb", "-s", sw.socket, "flush", "--json").stdout)) == {"flushed"}
    assert set(json.loads(tapswitch("fdb", "--json", "flush", "--port", b, "-s", sw.socket).stdout)) == {"flushed"}


def test_a_static_mac_that_finds_no_room_is_logged_and_the_switch_runs_on(lab):
    """Static entries are never evicted: once `fdb add` has filled the table with them, a reload
    that brings a config static MAC cannot place it. It is logged, and the switch runs on (it
    died of the OSError, with every port)."""
    nss, ports = quiet_site(lab)
    a, b, c = (p["name"] for p in ports)
    cfg = {"switch": {"name": lab.name("sw"), "mac_table": {"size": 16}}, "ports": ports}
    sw = lab.switch(cfg)
    added = 0
    for i in range(256):        # until every slot is static: 16 and a quarter, in three buckets of 8
        r = tapswitch("fdb", "add", f"02:00:00:00:98:{i:02x}", "--port", b, "-s", sw.socket, check=False)
        assert r.returncode == 0 or "No space left on device" in r.stderr, r.stderr
        added += r.returncode == 0
        if added == 24:
            break
    assert added == 24
    cfg["static_macs"] = [{"mac": "02:00:00:00:99:0c", "port": c}]
    with open(sw.config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    sw.cli("reload")
    assert sw.proc.poll() is None, sw.log()
    [failed] = sw.events("fdb.static_failed")
    assert (failed["mac"], failed["vlan"], failed["port"]) == ("02:00:00:00:99:0c", 1, c)
    assert not [e for e in sw.cli_json("fdb") if e["mac"] == "02:00:00:00:99:0c"]
    assert {p["name"]: p["state"] for p in sw.cli_json("ports")} == {a: "up", b: "up", c: "up"}


def statics(sw) -> dict:
    """(mac, vlan) -> (port, age) of the static entries."""
    return {(e["mac"], e["vlan"]): (e["port"], e["age"]) for e in sw.cli_json("fdb") if e["static"]}


def test_a_reload_leaves_the_static_entries_it_does_not_change_as_they_are(lab):
    """A reload writes only the static entries it changes: one it leaves (the config's, and
    `fdb add`'s) keeps its age, which went back to 0 as every one was installed again. One whose
    port changed moves, also to a port made again on another slot; one taken out goes."""
    nss, ports = quiet_site(lab)
    a, b, c = (p["name"] for p in ports)
    kept, moved, remade, removed, cli_kept = (f"02:00:00:00:97:0{i}" for i in range(1, 6))
    cfg = {"switch": {"name": lab.name("sw")}, "ports": ports,
           "static_macs": [{"mac": kept, "port": a}, {"mac": moved, "port": a},
                           {"mac": remade, "port": c}, {"mac": removed, "port": b}]}
    sw = lab.switch(cfg)
    sw.cli("fdb", "add", cli_kept, "--port", b)
    # Aged 2 s or more: one installed again by the reload would be younger than it was.
    before = helpers.wait_for("static entries 2 s old", lambda: (lambda s: s if min(
        age for _port, age in s.values()) >= 2 else None)(statics(sw)), within=15)
    cfg["static_macs"] = [{"mac": kept, "port": a}, {"mac": moved, "port": b}, {"mac": remade, "port": c}]
    ports[2]["mtu"] = 1400          # a device setting: port c is made again, on another slot
    with open(sw.config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    assert sw.cli("reload").stdout.strip() == f"reloaded: remade {c}"
    after = statics(sw)
    assert set(after) == {(kept, 1), (moved, 1), (remade, 1), (cli_kept, 1)}, after
    for mac, port in ((kept, a), (cli_kept, b)):
        assert after[mac, 1][0] == port and after[mac, 1][1] >= before[mac, 1][1], (mac, before, after)
    assert after[moved, 1][0] == b and after[remade, 1][0] == c, after
    # Where the listing says: frames to the one moved go to port b alone, and to port c's to c.
    for mac, port in ((moved, b), (remade, c)):
        was = tx(sw)
        helpers.nsexec(nss[0], sys.executable, SENDER, "eth0", helpers.link_mac(nss[0], "eth0"), mac, 20)
        now = helpers.wait_for(f"20 frames to {mac} out of {port}", lambda: (lambda t: t if t[port] - was[port] >= 20
                                                                              else None)(tx(sw)))
        assert {name: now[name] - was[name] for name in (b, c) if now[name] != was[name]} == {port: 20}, (mac, was, now)


def test_a_static_mac_of_the_config_removed_by_fdb_del_comes_back_at_the_next_reload(lab):
    """Left out by `fdb del`, it is not in the table as the config wants it: the reload writes
    it again, also with nothing else changed."""
    nss, ports = quiet_site(lab)
    c = ports[2]["name"]
    sw = lab.switch({"switch": {"name": lab.name("sw")}, "ports": ports, "static_macs": [{"mac": STATIC, "port": c}]})
    sw.cli("fdb", "del", STATIC)
    assert STATIC not in {mac for mac, _vlan in statics(sw)}
    assert sw.cli("reload").stdout.strip() == "reloaded: no port changed"
    assert statics(sw)[STATIC, 1][0] == c


def test_fdb_del_without_a_vlan_removes_the_macs_entry_in_the_one_vlan_it_is_in(lab):
    """`fdb add M --port P` puts M in P's untagged VLAN, and `fdb del M` looked in VLAN 1 only:
    on an access port of VLAN 10 it said "no entry for M in VLAN 1" and removed nothing. It
    removes M's entry in whatever VLAN it is, static or learned; a MAC in several VLANs is
    refused, naming them, and nothing is removed; --vlan says which."""
    nss, ports = quiet_site(lab)
    ports[0]["vlan"] = 10
    ports[1].update(trunk=[10, 20], vlan=1)
    a, b, c = (p["name"] for p in ports)
    sw = lab.switch({"switch": {"name": lab.name("sw")}, "ports": ports})
    mac = "02:00:00:00:99:21"
    assert sw.cli("fdb", "add", mac, "--port", a).stdout == f"added {mac} vlan 10 on {a} (static)\n"
    assert sw.cli("fdb", "del", mac).stdout == f"deleted {mac} vlan 10\n"
    assert not [e for e in sw.cli_json("fdb") if e["mac"] == mac]
    # A learned one, as a host of VLAN 10 sends it.
    learned = "02:00:00:00:99:22"
    helpers.nsexec(nss[0], sys.executable, SENDER, "eth0", learned, "ff:ff:ff:ff:ff:ff", 1)
    helpers.wait_for("the MAC learned", lambda: [(e["vlan"], e["static"]) for e in sw.cli_json("fdb")
                                                 if e["mac"] == learned] == [(10, False)])
    assert json.loads(tapswitch("fdb", "del", learned, "--json", "-s", sw.socket).stdout) == {"mac": learned, "vlan": 10}
    assert not [e for e in sw.cli_json("fdb") if e["mac"] == learned]
    # In two VLANs: which one is the operator's to say.
    sw.cli("fdb", "add", mac, "--port", b, "--vlan", "20")
    sw.cli("fdb", "add", mac, "--port", b, "--vlan", "10")
    r = tapswitch("fdb", "del", mac, "-s", sw.socket, check=False)
    assert r.returncode == 1 and r.stderr == f"tapswitch: {mac} has entries in VLANs 10, 20: give --vlan to say which\n", r
    assert sorted(e["vlan"] for e in sw.cli_json("fdb") if e["mac"] == mac) == [10, 20]
    assert sw.cli("fdb", "del", mac, "--vlan", "20").stdout == f"deleted {mac} vlan 20\n"
    assert sw.cli("fdb", "del", mac).stdout == f"deleted {mac} vlan 10\n"
    r = tapswitch("fdb", "del", mac, "-s", sw.socket, check=False)
    assert r.returncode == 1 and r.stderr == f"tapswitch: no entry for {mac} in any VLAN\n", r
    assert [e["vlan"] for e in sw.events("fdb.deleted") if e["mac"] == mac] == [10, 20, 10]


def test_fdb_add_refuses_the_mac_another_port_has_now(lab):
    """fdb add refused another port's `mac:`, but not the MAC a port without one has (random,
    as `tapswitch ports` shows it) or its host set: static on another port, it sent that port's
    host's frames there, unreached. Refused as the `mac:` is; on its own port, or in a VLAN
    the port is not in, it is an entry like any other. A host that sets a static entry's MAC
    later leaves the entry where it is, also through a reload."""
    nss, ports = quiet_site(lab)
    ports[2].update(trunk=[20], vlan=1)
    a, b, c = (p["name"] for p in ports)
    cfg = {"switch": {"name": lab.name("sw")}, "ports": ports}
    sw = lab.switch(cfg)
    mac_a = {p["name"]: p["mac"] for p in sw.cli_json("ports")}[a]
    assert mac_a == helpers.link_mac(nss[0], "eth0")
    r = tapswitch("fdb", "add", mac_a, "--port", c, "-s", sw.socket, check=False)
    assert r.returncode == 1, r
    assert r.stderr == f"tapswitch: {mac_a} is the MAC of port {a} in VLAN 1: static on {c}, its frames would go there\n"
    assert not [e for e in sw.cli_json("fdb") if e["mac"] == mac_a and e["static"]]
    sw.cli("fdb", "add", mac_a, "--port", c, "--vlan", "20")
    sw.cli("fdb", "add", mac_a, "--port", a)
    assert sorted((e["port"], e["vlan"]) for e in sw.cli_json("fdb") if e["mac"] == mac_a and e["static"]) == [
        (a, 1), (c, 20)]
    # The MAC b's host sets, once the switch has followed it.
    host_set = "02:00:00:00:99:23"
    helpers.nsexec(nss[1], "ip", "link", "set", "eth0", "address", host_set)
    helpers.wait_for("b's new MAC", lambda: {p["name"]: p["mac"] for p in sw.cli_json("ports")}[b] == host_set)
    r = tapswitch("fdb", "add", host_set, "--port", c, "-s", sw.socket, check=False)
    assert r.returncode == 1, r
    assert f"{host_set} is the MAC of port {b} in VLAN 1: static on {c}, its frames would go there" in r.stderr, r
    # A static entry's MAC set by a host later: the entry stays, and a reload keeps it.
    pinned = "02:00:00:00:99:24"
    sw.cli("fdb", "add", pinned, "--port", c)
    helpers.nsexec(nss[0], "ip", "link", "set", "eth0", "address", pinned)
    helpers.wait_for("a's new MAC", lambda: {p["name"]: p["mac"] for p in sw.cli_json("ports")}[a] == pinned)
    assert sw.cli("reload").stdout.strip() == "reloaded: no port changed"
    assert [(e["port"], e["vlan"]) for e in sw.cli_json("fdb") if e["mac"] == pinned and e["static"]] == [(c, 1)]
    assert not sw.events("fdb.static_removed")


def test_a_host_that_sets_a_static_entrys_mac_is_warned_of_and_the_entry_stays(lab):
    """A host that set on its TAP a MAC static on another port (`fdb add` or `static_macs`)
    left the entry where it was, said by nothing but `port.mac_changed`: its frames went to
    the entry's port, unseen unless `tapswitch fdb` was read beside `tapswitch ports`. It is
    said now (`fdb.static_held`); the entry stays, as it does against the host's frames. On the
    host's own port, or in a VLAN it is not in, the entry is no one else's: nothing is said."""
    nss, ports = quiet_site(lab)
    ports[2].update(trunk=[20], vlan=1)
    a, b, c = (p["name"] for p in ports)
    pinned, configured, elsewhere, own = "02:00:00:00:99:31", "02:00:00:00:99:32", "02:00:00:00:99:33", "02:00:00:00:99:34"
    sw = lab.switch({"switch": {"name": lab.name("sw")}, "ports": ports,
                     "static_macs": [{"mac": configured, "port": c}]})
    sw.cli("fdb", "add", pinned, "--port", c)
    sw.cli("fdb", "add", elsewhere, "--port", c, "--vlan", "20")
    sw.cli("fdb", "add", own, "--port", b)

    def host_sets(ns: str, port: str, mac: str) -> None:
        helpers.nsexec(ns, "ip", "link", "set", "eth0", "address", mac)
        helpers.wait_for(f"{port}'s new MAC", lambda: {p["name"]: p["mac"] for p in sw.cli_json("ports")}[port] == mac)

    for ns, port, mac in ((nss[1], b, own), (nss[0], a, elsewhere), (nss[0], a, pinned), (nss[1], b, configured)):
        host_sets(ns, port, mac)
    held = helpers.wait_for("two fdb.static_held", lambda: (lambda e: len(e) >= 2 and e)(sw.events("fdb.static_held")))
    assert [(e["mac"], e["vlan"], e["port"], e["claimed_by"], e["reason"]) for e in held] == [
        (pinned, 1, c, a, f"{pinned} is the MAC of port {a} in VLAN 1 now: static on {c}, its frames go there"),
        (configured, 1, c, b, f"{configured} is the MAC of port {b} in VLAN 1 now: static on {c}, its frames go there")]
    assert sorted((e["mac"], e["vlan"], e["port"]) for e in sw.cli_json("fdb") if e["static"]) == [
        (pinned, 1, c), (configured, 1, c), (elsewhere, 20, c), (own, 1, b)]
    assert not sw.events("fdb.static_removed")


def test_a_static_mac_a_reload_adds_on_the_mac_a_host_has_now_is_warned_of(lab):
    """`fdb add` refuses a MAC another port's host has now, and a host that sets a static
    entry's MAC later is warned of (`fdb.static_held`); but a reload that added `static_macs`
    on the MAC a host had set already (which check cannot know) installed it unsaid: the host's
    frames went to the entry's port, said by nothing. It is said as the other order is; an
    entry the reload leaves as it was is not said again."""
    nss, ports = quiet_site(lab)
    a, b, c = (p["name"] for p in ports)
    cfg = {"switch": {"name": lab.name("sw")}, "ports": ports}
    sw = lab.switch(cfg)
    taken = "02:00:00:00:99:41"
    helpers.nsexec(nss[0], "ip", "link", "set", "eth0", "address", taken)
    helpers.wait_for(f"{a}'s new MAC", lambda: {p["name"]: p["mac"] for p in sw.cli_json("ports")}[a] == taken)
    cfg["static_macs"] = [{"mac": taken, "port": c}]
    with open(sw.config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    sw.cli("reload")
    assert [(e["mac"], e["vlan"], e["port"], e["claimed_by"]) for e in sw.events("fdb.static_held")] == \
        [(taken, 1, c, a)]
    assert [(e["port"], e["static"]) for e in sw.cli_json("fdb") if e["mac"] == taken] == [(c, True)]
    sw.cli("reload")
    assert len(sw.events("fdb.static_held")) == 1

"""Tests for tapswitch.config: the schema, its defaults, and FILE:LINE: key.path errors."""

import ipaddress
import os
import pwd
import socket
import subprocess
import textwrap
import threading

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tapswitch import config
from tapswitch.config import ConfigError, load, loads

SWITCH = "switch:\n  name: sw0\n"


def errors_of(text: str, source: str = "t.yaml") -> list[str]:
    """The errors `loads` reports for `text` (dedented); fails if it loads."""
    with pytest.raises(ConfigError) as info:
        loads(textwrap.dedent(text), source)
    return info.value.errors


def one_error(text: str) -> str:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


def with_port(port_lines: str) -> str:
    """A config with one port, whose keys start on line 4."""
    return SWITCH + "ports:\n  - " + textwrap.indent(textwrap.dedent(port_lines), "    ").lstrip()


# --- Valid configs ------------------------------------------------------------


def test_full_config_loads_with_defaults_filled():
    cfg = loads(textwrap.dedent("""\
        switch:
          name: sw0
          queues: 2
          metrics: {listen: "127.0.0.1:9417"}
        ports:
          - name: web0
            netns: web
            ifname: eth1
            addresses: [198.18.0.10/24, fd00::10/64]
            mac: "02:00:00:00:00:10"
            mtu: 9000
            speed: 10000
          - name: up0
            remote: eth1
            remote_mode: local
            allmulti: true
        """), "full.yaml")
    assert cfg.source == "full.yaml"
    assert cfg.switch.queues == 2
    assert (cfg.switch.mac_table.size, cfg.switch.mac_table.aging) == (8192, 300)
    assert cfg.switch.control.socket == "/run/tapswitch/sw0.sock"
    assert (cfg.switch.log.level, cfg.switch.log.format) == ("info", "auto")
    web, up = cfg.ports
    assert web.addresses == [ipaddress.ip_interface("198.18.0.10/24"), ipaddress.ip_interface("fd00::10/64")]
    assert (web.mtu, web.speed, web.remote, web.remote_mode, web.allmulti) == (9000, 10000, None, "promisc", False)
    assert web.inner_name == "eth1"
    assert (up.netns, up.mtu, up.remote, up.remote_mode, up.allmulti) == (None, 1500, "eth1", "local", True)
    assert up.inner_name == "up0"


def test_minimal_config_fills_every_default():
    cfg = loads("switch: {name: s}\nports: [{name: p}]\n")
    assert cfg.switch.model_dump() == {
        "name": "s", "queues": 1, "queue_len": 4096, "busy_poll_us": 50, "watchdog_ms": 5000,
        "mac_table": {"size": 8192, "aging": 300},
        "metrics": {"listen": "127.0.0.1:9417"},
        "control": {"socket": "/run/tapswitch/s.sock"},
        "log": {"level": "info", "format": "auto"},
        "user": None,
    }
    assert cfg.source == "<string>"


def test_demo_loads():
    cfg = load(None)
    assert cfg.source == "<demo>"
    assert cfg.switch.name == "demo" and cfg.switch.queues == 1
    assert [(p.name, p.netns, p.ifname, [str(a) for a in p.addresses]) for p in cfg.ports] == [
        ("ts-demo-a", "ts-demo-a", "eth0", ["198.18.0.1/24"]),
        ("ts-demo-b", "ts-demo-b", "eth0", ["198.18.0.2/24"]),
    ]


@pytest.mark.parametrize("name", ["example.yaml", "containers.yaml"])
def test_shipped_examples_load(name):
    import pathlib
    path = pathlib.Path(__file__).parent.parent / "config" / name
    assert load(str(path)).source == str(path)


def test_models_are_frozen():
    cfg = loads("switch: {name: s}\nports: [{name: p}]\n")
    # Each model, the nested ones too: a reload diffs two Configs field by field.
    for model, key, value in ((cfg.switch, "queues", 4), (cfg.switch.log, "level", "debug"),
                              (cfg.ports[0], "mtu", 9000), (cfg, "ports", [])):
        with pytest.raises(pydantic.ValidationError, match="frozen"):
            setattr(model, key, value)
    assert cfg == loads("switch: {name: s}\nports: [{name: p}]\n")


def test_switch_user_is_a_known_name_or_a_uid():
    assert loads("switch: {name: s, user: daemon}\nports: [{name: p}]\n").switch.user == "daemon"
    assert loads("switch: {name: s, user: 4242}\nports: [{name: p}]\n").switch.user == 4242
    assert loads("switch: {name: s}\nports: [{name: p}]\n").switch.user is None
    assert one_error("switch:\n  name: s\n  user: nosuchuser-ts\nports: [{name: p}]\n") \
        == "t.yaml:3: switch.user: no such user: 'nosuchuser-ts'"
    assert one_error("switch:\n  name: s\n  user: -1\nports: [{name: p}]\n") \
        == "t.yaml:3: switch.user: a uid is 0 to 4294967294"


def test_workers_run_as_nobody_by_default_when_the_switch_is_root():
    nobody = pwd.getpwnam("nobody")
    assert config.worker_ids(None, 0) == (nobody.pw_uid, nobody.pw_gid)
    assert config.worker_ids(None, 1000) is None            # not root: nothing to give up
    daemon = pwd.getpwnam("daemon")
    assert config.worker_ids("daemon", 0) == (daemon.pw_uid, daemon.pw_gid)
    assert config.worker_ids(4242, 0) == (4242, 4242)        # a uid with no passwd entry
    assert config.worker_ids(daemon.pw_uid, 0) == (daemon.pw_uid, daemon.pw_gid)


def test_mac_is_normalised_to_lower_case_with_colons():
    cfg = loads(with_port('name: p\nmac: "02-AB-00-00-00-10"\n'))
    assert cfg.ports[0].mac == "02:ab:00:00:00:10"


# --- Unknown keys and types ---------------------------------------------------


def test_unknown_top_level_key_is_located():
    assert one_error(SWITCH + "ports: [{name: p}]\nextra: 1\n") == "t.yaml:4: extra: unknown key"


def test_unknown_switch_key_is_located():
    assert one_error("switch:\n  name: s\n  qeues: 2\nports: [{name: p}]\n") == "t.yaml:3: switch.qeues: unknown key"


def test_unknown_nested_switch_key_is_located():
    text = "switch:\n  name: s\n  mac_table:\n    size: 64\n    agin: 30\nports: [{name: p}]\n"
    assert one_error(text) == "t.yaml:5: switch.mac_table.agin: unknown key"


def test_unknown_port_key_is_located():
    assert one_error(with_port("name: p\nnetns: x\nmtuu: 1500\n")) == "t.yaml:6: ports[0].mtuu: unknown key"


def test_source_is_not_a_config_key():
    assert one_error(SWITCH + "ports: [{name: p}]\nsource: x\n") == "t.yaml:4: source: unknown key"


def test_wrong_type_is_located():
    assert one_error(with_port("name: p\naddresses: 198.18.0.1/24\n")) == "t.yaml:5: ports[0].addresses: expected a list, got string"


def test_string_for_int_is_rejected():
    assert one_error('switch:\n  name: s\n  queues: "2"\nports: [{name: p}]\n') == "t.yaml:3: switch.queues: expected an integer, got string"


def test_boolean_for_int_is_rejected():
    assert one_error(with_port("name: p\nmtu: true\n")) == "t.yaml:5: ports[0].mtu: expected an integer, got boolean"


def test_number_for_name_asks_for_quotes():
    assert one_error("switch:\n  name: 1234\nports: [{name: p}]\n") == "t.yaml:2: switch.name: expected a string, got integer (quote it)"


def test_switch_name_too_long():
    name = "s" * 33
    assert one_error(f"switch:\n  name: {name}\nports: [{{name: p}}]\n") == "t.yaml:2: switch.name: a switch name is 1 to 32 of A-Z a-z 0-9 _ . -"


def test_port_name_too_long():
    assert one_error(with_port("name: abcdefghijklmnop\n")) == "t.yaml:4: ports[0].name: an interface name is 1 to 15 bytes long"


@pytest.mark.parametrize("name", ['"a/b"', '"a b"', '"a:b"', '"."', '".."', '""'])
def test_bad_interface_names_are_rejected(name):
    assert one_error(with_port(f"name: {name}\n")).startswith("t.yaml:4: ports[0].name: an interface name ")


def test_value_out_of_range_is_located():
    text = "switch:\n  name: s\n  queues: 17\n  queue_len: 8\n  mac_table: {size: 8, aging: 300}\nports: [{name: p}]\n"
    assert errors_of(text) == [
        "t.yaml:3: switch.queues: must be at most 16",
        "t.yaml:4: switch.queue_len: must be at least 16",
        "t.yaml:5: switch.mac_table.size: must be at least 16",
    ]


def test_busy_poll_is_bounded_and_may_be_off():
    assert loads("switch: {name: s, busy_poll_us: 0}\nports: [{name: p}]\n").switch.busy_poll_us == 0
    text = "switch:\n  name: s\n  busy_poll_us: 1001\nports: [{name: p}]\n"
    assert errors_of(text) == ["t.yaml:3: switch.busy_poll_us: must be at most 1000"]
    text = "switch:\n  name: s\n  busy_poll_us: -1\nports: [{name: p}]\n"
    assert errors_of(text) == ["t.yaml:3: switch.busy_poll_us: must be at least 0"]


@pytest.mark.parametrize("value", [0, 2000, 3_600_000])
def test_watchdog_may_be_off_or_long_enough(value):
    assert loads(f"switch: {{name: s, watchdog_ms: {value}}}\nports: [{{name: p}}]\n").switch.watchdog_ms == value


@pytest.mark.parametrize("value, message", [
    # A worker that is fine goes a second between heartbeats: a shorter watchdog kills it.
    ("1", "must be 0 (off) or at least 2000: a worker that is fine goes up to 1000 ms between heartbeats"),
    ("1999", "must be 0 (off) or at least 2000: a worker that is fine goes up to 1000 ms between heartbeats"),
    ("3600001", "must be at most 3600000"),
    ("-1", "must be at least 0"),
    ("2.5", "expected an integer, got number"),
    ("'5000'", "expected an integer, got string"),
])
def test_watchdog_out_of_bounds_is_an_error_at_its_line(value, message):
    text = f"switch:\n  name: s\n  queues: 1\n  watchdog_ms: {value}\nports: [{{name: p}}]\n"
    assert errors_of(text) == [f"t.yaml:4: switch.watchdog_ms: {message}"]


def test_check_refuses_a_watchdog_too_short(tmp_path, capsys):
    from tapswitch import cli
    path = tmp_path / "sw.yaml"
    path.write_text("switch:\n  name: sw0\n  watchdog_ms: 1000\nports: [{name: p}]\n")
    assert cli.main(["check", "-c", str(path)]) == cli.EXIT_CONFIG
    assert capsys.readouterr().err == (f"{path}:3: switch.watchdog_ms: must be 0 (off) or at least 2000: "
                                       "a worker that is fine goes up to 1000 ms between heartbeats\n")


def test_literal_choice_is_enforced():
    assert one_error("switch:\n  name: s\n  log: {level: loud}\nports: [{name: p}]\n") == (
        "t.yaml:3: switch.log.level: must be one of 'debug', 'info', 'warning' or 'error'"
    )


def test_no_ports_is_an_error():
    assert one_error(SWITCH + "ports: []\n") == "t.yaml:3: ports: needs at least 1 item(s), got 0"


def test_missing_required_port_name_points_at_the_port():
    text = SWITCH + "ports:\n  - name: a\n  - netns: x\n    mtu: 1500\n"
    assert one_error(text) == "t.yaml:5: ports[1].name: required key is missing"


def test_missing_switch_points_at_the_top():
    assert one_error("# a comment\nports: [{name: p}]\n") == "t.yaml:2: switch: required key is missing"


# --- Ports and their rules ----------------------------------------------------


def test_duplicate_port_names():
    text = SWITCH + "ports:\n  - name: a\n  - name: b\n  - name: a\n"
    assert one_error(text) == "t.yaml:6: ports[2].name: duplicate port name 'a' (first at ports[0])"


def test_same_inner_name_in_the_same_netns_clashes_whatever_the_netns_form():
    text = SWITCH + "ports:\n  - {name: a, netns: x, ifname: eth0}\n  - {name: b, netns: /run/netns/x, ifname: eth0}\n"
    assert one_error(text) == "t.yaml:5: ports[1].ifname: 'eth0' is already in netns '/run/netns/x' (ports[0])"
    for path in ("//run/netns/x", "/run//netns/./x/", "/run/netns/../netns/x"):
        assert one_error(text.replace("/run/netns/x", path)) == (
            "t.yaml:5: ports[1].ifname: 'eth0' is already in netns '/run/netns/x' (ports[0])")


def test_an_ifname_that_is_another_ports_name_in_the_same_netns_clashes():
    """That port's TAP enters the namespace under its name before its rename: the two met, or
    not, as the threads making them interleaved (a start failed one time in five here)."""
    text = SWITCH + "ports:\n  - {name: a, netns: pid:4194307, ifname: b}\n  - {name: b, netns: pid:4194307, ifname: eth9}\n"
    assert one_error(text) == ("t.yaml:4: ports[0].ifname: 'b' is the name ports[1]'s TAP enters netns 'pid:4194307' "
                               "under, before its rename; rename one of them")
    # Pids over any pid_max (2**22): no process has them, so they are two namespaces (pid:7 and
    # pid:8, kernel threads, are both the host's one: netns_identity).
    fine = SWITCH + "ports:\n  - {name: a, netns: pid:4194307, ifname: b}\n  - {name: b, netns: pid:4194308, ifname: eth9}\n"
    assert [p.inner_name for p in loads(fine).ports] == ["b", "eth9"]


def test_same_inner_name_in_one_netns_reached_by_two_paths_clashes(tmp_path):
    """/var/run/netns/x is /run/netns/x (/var/run is a symlink to /run): check passed two ports
    with ifname eth0 there, one writing x, the other the path; run made the first, then failed
    at the second ('a device named eth0 already exists'), exit 1."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    text = SWITCH + f"ports:\n  - {{name: a, netns: {tmp_path}/real/ns, ifname: eth0}}\n" \
                    f"  - {{name: b, netns: {tmp_path}/link/ns, ifname: eth0}}\n"
    assert one_error(text) == (f"t.yaml:5: ports[1].ifname: 'eth0' is already in netns '{tmp_path}/link/ns' "
                               f"(ports[0], whose netns '{tmp_path}/real/ns' is the same namespace)")
    assert len(loads(text.replace("ifname: eth0}\n", "ifname: eth1}\n", 1)).ports) == 2


def test_same_inner_name_in_the_netns_of_two_processes_in_one_namespace_clashes():
    """pid:N of two processes of one container (or a pid and the name its namespace was given)
    is one namespace: what two ports name alike there meets, as a TAP entering under the name
    another port renames its TAP to does."""
    with subprocess.Popen(["sleep", "60"]) as child:
        try:
            text = SWITCH + (f"ports:\n  - {{name: a, netns: 'pid:{os.getpid()}', ifname: eth0}}\n"
                             f"  - {{name: b, netns: 'pid:{child.pid}', ifname: eth0}}\n"
                             f"  - {{name: c, netns: 'pid:{child.pid}', ifname: a}}\n")
            assert errors_of(text) == [
                f"t.yaml:5: ports[1].ifname: 'eth0' is already in netns 'pid:{child.pid}' "
                f"(ports[0], whose netns 'pid:{os.getpid()}' is the same namespace)",
                f"t.yaml:6: ports[2].ifname: 'a' is the name ports[0]'s TAP, whose netns 'pid:{os.getpid()}' is the "
                f"same namespace, enters netns 'pid:{child.pid}' under, before its rename; rename one of them"]
        finally:
            child.kill()


def test_same_inner_name_in_different_netns_is_fine():
    cfg = loads(SWITCH + "ports:\n  - {name: a, netns: x, ifname: eth0}\n  - {name: b, netns: y, ifname: eth0}\n")
    assert [p.inner_name for p in cfg.ports] == ["eth0", "eth0"]


def test_port_name_equal_to_another_ports_remote():
    text = SWITCH + "ports:\n  - name: a\n  - name: b\n    remote: a\n"
    assert one_error(text) == "t.yaml:6: ports[1].remote: 'a' is the TAP of ports[0]; a port cannot attach a port"


def test_two_ports_cannot_attach_the_same_remote():
    text = SWITCH + "ports:\n  - {name: a, remote: eth1}\n  - {name: b, remote: eth1}\n"
    assert one_error(text) == "t.yaml:5: ports[1].remote: 'eth1' is already attached by ports[0]"


def test_two_ports_cannot_attach_one_device_by_two_of_its_names(monkeypatch):
    """An altname (`ip link property add dev up0 altname uplink`) is another name of the same
    device: check passed remote: up0 and remote: uplink, and run failed at the second, saying
    uplink was 'attached by another running switch' (its own pid), exit 1."""
    names = {"up0": 7, "uplink": 7, "up1": 8}

    def if_nametoindex(name):
        if name not in names:
            raise OSError(19, "No such device")
        return names[name]

    monkeypatch.setattr(config.socket, "if_nametoindex", if_nametoindex)
    text = SWITCH + "ports:\n  - {name: a, remote: up0}\n  - {name: b, remote: uplink}\n  - {name: c, remote: up1}\n"
    assert one_error(text) == "t.yaml:5: ports[1].remote: 'uplink' is already attached by ports[0], whose remote 'up0' is the same device"
    assert len(loads(text.replace("uplink", "up2")).ports) == 3       # no device of that name here: a name apart


def test_duplicate_yaml_key_is_located():
    text = with_port('name: p\nmac: "02:00:00:00:00:01"\nmtu: 1500\nmac: "02:00:00:00:00:02"\n')
    assert one_error(text) == "t.yaml:7: ports[0].mac: duplicate key (first at line 5); YAML keeps only the last"


def test_duplicate_top_level_key_is_located():
    assert one_error(SWITCH + "ports: [{name: p}]\nswitch: {name: t}\n") == (
        "t.yaml:4: switch: duplicate key (first at line 1); YAML keeps only the last"
    )


def test_bad_mac():
    assert one_error(with_port('name: p\nmac: "02:00:00:00:00"\n')) == (
        "t.yaml:5: ports[0].mac: a MAC address is six hex octets, as in 02:00:00:00:00:10"
    )


def test_multicast_mac():
    assert one_error(with_port('name: p\nmac: "01:00:5e:00:00:01"\n')) == (
        "t.yaml:5: ports[0].mac: a port MAC address must be unicast (the first octet is odd: multicast)"
    )


def test_zero_mac():
    assert one_error(with_port('name: p\nmac: "00:00:00:00:00:00"\n')) == (
        "t.yaml:5: ports[0].mac: a port MAC address cannot be 00:00:00:00:00:00"
    )


def test_unquoted_mac_read_as_base60_number_asks_for_quotes():
    assert one_error(with_port("name: p\nmac: 12:34:56:00:00:10\n")) == (
        't.yaml:5: ports[0].mac: a MAC address is six hex octets in quotes, as in "02:00:00:00:00:10" '
        "(YAML read this one as a number)"
    )


def test_bad_address():
    assert one_error(with_port("name: p\nnetns: x\naddresses: [198.18.0.1/24, 198.18.0.300/24]\n")) == (
        "t.yaml:6: ports[0].addresses[1]: not an IPv4 or IPv6 address with prefix length: '198.18.0.300/24'"
    )


def test_address_needs_a_prefix_length():
    assert one_error(with_port("name: p\nnetns: x\naddresses: [fd00::1]\n")) == (
        "t.yaml:6: ports[0].addresses[0]: an address needs its prefix length, as in 198.18.0.10/24"
    )


def test_an_address_listed_twice_is_an_error_whatever_its_prefix():
    """The kernel would refuse the second at start ("File exists"): say it at check."""
    text = with_port("name: p\nnetns: x\naddresses:\n  - 198.18.0.1/24\n  - fd00::1/64\n  - 198.18.0.1/16\n")
    assert one_error(text) == "t.yaml:9: ports[0].addresses[2]: 198.18.0.1 is listed twice (first at addresses[0])"


def test_an_ipv6_address_on_a_port_under_1280_bytes_is_an_error():
    """The kernel gives a device under IPv6's minimum MTU no IPv6: the start failed "Invalid argument"."""
    text = with_port("name: p\nnetns: x\naddresses: [198.18.0.1/24, fd00::1/64]\nmtu: 1279\n")
    assert one_error(text) == (
        "t.yaml:7: ports[0].mtu: IPv6 needs an MTU of 1280 or more, and addresses[1] (fd00::1/64) is IPv6")
    assert loads(with_port("name: p\nnetns: x\naddresses: [fd00::1/64]\nmtu: 1280\n"), "t.yaml").ports[0].mtu == 1280
    assert loads(with_port("name: p\nnetns: x\naddresses: [198.18.0.1/24]\nmtu: 576\n"), "t.yaml").ports[0].mtu == 576


def test_address_on_its_own_line_is_located():
    text = with_port("name: p\nnetns: x\naddresses:\n  - 198.18.0.1/24\n  - 7\n")
    assert one_error(text) == "t.yaml:8: ports[0].addresses[1]: expected an address string like 198.18.0.10/24, got integer"


def test_netns_and_remote_together():
    assert one_error(with_port("name: p\nnetns: x\nremote: eth1\n")) == (
        "t.yaml:6: ports[0].remote: remote and netns are mutually exclusive"
    )


def test_a_remote_or_vxlan_port_takes_no_addresses():
    """Their TAPs carry frames between the switch and IFACE or the tunnel: the host could send
    out of one, but what the switch sends it leaves through IFACE, and IPv6 is off there."""
    assert one_error(with_port("name: p\naddresses: [198.18.0.1/24]\nremote: eth1\n")) == (
        "t.yaml:6: ports[0].remote: a remote port has no addresses: its TAP only carries frames between "
        "the switch and eth1, and what the switch sends it leaves through eth1 (give the address to eth1, "
        "or to a port without remote)")
    vxlan = "vxlan: {vni: 5, local: 198.18.0.1, remotes: [198.18.0.2]}\n"
    assert one_error(with_port("name: p\naddresses: [fd00::1/64]\n" + vxlan)) == (
        "t.yaml:6: ports[0].vxlan: a VXLAN port has no addresses: its TAP only carries frames between "
        "the switch and the tunnel (give the address to a port without vxlan)")
    assert loads(with_port("name: p\naddresses: [198.18.0.1/24]\n"), "t.yaml").ports[0].addresses


def test_loopback_as_remote():
    assert one_error(with_port("name: p\nremote: lo\n")) == (
        "t.yaml:5: ports[0].remote: lo is the loopback device; a remote is an Ethernet interface (NIC, VM tap, veth)"
    )


@pytest.mark.parametrize("port, key", [("name: lo\n", "name"), ("name: p\nnetns: n\nifname: lo\n", "ifname")])
def test_loopback_as_a_ports_name(port, key):
    """check passed it; run made the other ports, then failed: 'a device named lo already exists'."""
    assert one_error(with_port(port)).endswith(
        f"ports[0].{key}: lo is the loopback device, in every namespace: a TAP cannot be named so")


def test_ifname_without_netns():
    assert one_error(with_port("name: p\nifname: eth0\n")) == (
        "t.yaml:5: ports[0].ifname: ifname renames the port inside its netns: it requires netns"
    )


def test_remote_mode_without_remote():
    assert one_error(with_port("name: p\nremote_mode: local\n")) == (
        "t.yaml:5: ports[0].remote_mode: remote_mode applies to a remote port: it requires remote"
    )


def test_allmulti_without_remote():
    assert one_error(with_port("name: p\nallmulti: true\n")) == (
        "t.yaml:5: ports[0].allmulti: allmulti applies to a remote port: it requires remote"
    )


def test_speed_must_be_positive():
    assert one_error(with_port("name: p\nspeed: 0\n")) == "t.yaml:5: ports[0].speed: must be greater than 0"


@pytest.mark.parametrize("netns, kind, path", [
    ("web", "name", "/run/netns/web"),
    ("/proc/1234/ns/net", "path", "/proc/1234/ns/net"),
    ("/run/netns//web/", "path", "/run/netns/web"),
    ("pid:1234", "pid", "/proc/1234/ns/net"),
])
def test_netns_forms(netns, kind, path):
    port = loads(with_port(f"name: p\nnetns: {netns}\n")).ports[0]
    assert (port.netns_kind, port.netns_path) == (kind, path)


def test_no_netns_has_no_kind_or_path():
    port = loads(with_port("name: p\n")).ports[0]
    assert (port.netns, port.netns_kind, port.netns_path) == (None, None, None)


@pytest.mark.parametrize("netns", ["pid:abc", "pid:0", "pid:", "pid:-1"])
def test_netns_bad_pid_is_rejected(netns):
    assert one_error(with_port(f'name: p\nnetns: "{netns}"\n')) == (
        "t.yaml:5: ports[0].netns: pid:N needs a positive process id, as in pid:1234"
    )


@pytest.mark.parametrize("netns", ["/" + "/".join(["a" * 255] * 15) + "/" + "b" * 255,    # 4096 bytes
                                   "/run/netns/" + "a" * 256])
def test_netns_path_no_file_can_have_is_rejected(netns):
    """The kernel refuses such a path (ENAMETOOLONG): the start said the namespace does not exist."""
    assert one_error(with_port(f"name: p\nnetns: {netns}\n")) == (
        "t.yaml:5: ports[0].netns: a netns path is at most 4095 bytes, each name in it at most 255"
    )
    assert loads(with_port(f"name: p\nnetns: {netns[:-1]}\n")).ports[0].netns == netns[:-1]   # a byte less is fine


def test_netns_relative_path_is_rejected():
    assert one_error(with_port("name: p\nnetns: run/netns/x\n")) == (
        "t.yaml:5: ports[0].netns: a netns is a name (no '/'), an absolute path, or pid:N"
    )


# --- VLANs, isolation, limits, storm control, ACLs (ports[]) -------------------


FEATURES = """\
    switch: {name: sw0}
    ports:
      - name: a
        vlan: 10
        isolated: true
        mac_limit: 100
        storm_control: {broadcast_pps: 1000, unknown_unicast_pps: 500}
      - name: up
        trunk: [10, 20]
        vlan: 30
        acl:
          - match: {eth_type: ipv4, ip_proto: icmp}
            action: drop
          - match: {eth_dst: "01:00:5e:00:00:00/ff:ff:ff:80:00:00", vlan: 20}
            action: allow
          - match: {ip_dst: fd00::/8, ip_proto: tcp, dst_port: 22, src_port: 40000}
            action: drop
          - match: {eth_src: "02-00-00-00-00-0A", eth_type: 0x88b5}
            action: drop
      - name: tap
    mirrors:
      - name: span0
        from: [a, up]
        to: tap
        direction: rx
      - {name: span1, from: [up], to: tap}
    static_macs:
      - {mac: "02:00:00:00:00:01", port: a}
      - {mac: "02:00:00:00:00:02", port: up, vlan: 20}
      - {mac: "02:00:00:00:00:03", port: up}
    """


def test_feature_keys_load():
    cfg = loads(textwrap.dedent(FEATURES))
    a, up, tap = cfg.ports
    assert (a.vlan, a.trunk, a.isolated, a.mac_limit) == (10, None, True, 100)
    assert (a.storm_control.broadcast_pps, a.storm_control.multicast_pps, a.storm_control.unknown_unicast_pps) == (1000, None, 500)
    assert (up.vlan, up.trunk, up.isolated, up.mac_limit, up.storm_control) == (30, [10, 20], False, None, None)
    icmp, mcast, ssh, local = (rule.match for rule in up.acl)
    assert [rule.action for rule in up.acl] == ["drop", "allow", "drop", "drop"]
    assert (icmp.eth_type, icmp.ip_proto, icmp.ip_version) == (0x0800, 1, 4)
    assert (mcast.eth_dst, mcast.vlan, mcast.ip_version) == ("01:00:5e:00:00:00/ff:ff:ff:80:00:00", 20, None)
    assert (ssh.ip_dst, ssh.ip_proto, ssh.dst_port, ssh.src_port, ssh.ip_version) == (
        ipaddress.ip_network("fd00::/8"), 6, 22, 40000, 6)
    assert (local.eth_src, local.eth_type) == ("02:00:00:00:00:0a", 0x88B5)
    assert (tap.vlan, tap.trunk, tap.acl) == (None, None, [])


def test_feature_keys_default_to_off():
    port = loads(with_port("name: p\n")).ports[0]
    assert (port.vlan, port.trunk, port.isolated, port.mac_limit, port.storm_control, port.acl) == (
        None, None, False, None, None, [])


@pytest.mark.parametrize("keys, pvid, vlans", [
    ("", 1, {1}),
    ("vlan: 10\n", 10, {10}),
    ("trunk: [10, 20]\n", None, {10, 20}),
    ("trunk: [10, 20]\nvlan: 30\n", 30, {10, 20, 30}),
])
def test_untagged_vlan_and_every_vlan_of_a_port(keys, pvid, vlans):
    port = loads(with_port("name: p\n" + keys)).ports[0]
    assert (port.pvid, port.vlans) == (pvid, frozenset(vlans))


@pytest.mark.parametrize("vlan, message", [
    (0, "must be at least 1"),
    (4095, "must be at most 4094"),
    ('"10"', "expected an integer, got string"),
])
def test_vlan_range(vlan, message):
    assert one_error(with_port(f"name: p\nvlan: {vlan}\n")) == f"t.yaml:5: ports[0].vlan: {message}"


def test_trunk_vlan_range_is_located_at_the_item():
    text = with_port("name: p\ntrunk:\n  - 10\n  - 5000\n")
    assert one_error(text) == "t.yaml:7: ports[0].trunk[1]: must be at most 4094"


def test_trunk_needs_a_vlan():
    assert one_error(with_port("name: p\ntrunk: []\n")) == (
        "t.yaml:5: ports[0].trunk: a trunk carries at least one VLAN (no trunk: leave the key out)")


def test_trunk_vlan_listed_twice_is_located_at_the_second():
    text = with_port("name: p\ntrunk:\n  - 10\n  - 20\n  - 10\n")
    assert one_error(text) == "t.yaml:8: ports[0].trunk[2]: VLAN 10 is listed twice (first at trunk[0])"


def test_native_vlan_cannot_also_be_tagged():
    assert one_error(with_port("name: p\nvlan: 10\ntrunk: [20, 10]\n")) == (
        "t.yaml:6: ports[0].trunk[1]: VLAN 10 is the native VLAN (vlan), untagged: it cannot be tagged too")


@pytest.mark.parametrize("key", ["mac_limit: 0", "storm_control: {broadcast_pps: 0}"])
def test_limits_are_at_least_1(key):
    assert one_error(with_port(f"name: p\n{key}\n")).endswith("must be at least 1")


def test_storm_control_rejects_unknown_kinds():
    assert one_error(with_port("name: p\nstorm_control: {arp_pps: 10}\n")) == (
        "t.yaml:5: ports[0].storm_control.arp_pps: unknown key")


def test_isolated_is_a_boolean():
    assert one_error(with_port("name: p\nisolated: 1\n")) == (
        "t.yaml:5: ports[0].isolated: expected true or false, got integer")


def acl(*rules: str) -> str:
    """A one-port config whose ACL is `rules` (each a flow mapping); rule j is on line 6 + j."""
    return with_port("name: p\ntrunk: [10, 20]\nvlan: 1\nacl:\n" + "".join(f"  - {r}\n" for r in rules))


def acl_error(rule: str) -> str:
    return one_error(acl(rule))


def test_acl_rule_needs_match_and_action():
    assert errors_of(acl("{}")) == [
        "t.yaml:8: ports[0].acl[0].match: required key is missing",
        "t.yaml:8: ports[0].acl[0].action: required key is missing",
    ]


def test_acl_empty_match_matches_everything():
    [rule] = loads(acl("{match: {}, action: drop}")).ports[0].acl
    assert rule.match == config.AclMatch()


def test_acl_action_is_allow_or_drop():
    assert acl_error("{match: {}, action: deny}") == "t.yaml:8: ports[0].acl[0].action: must be one of 'allow' or 'drop'"


def test_acl_match_rejects_unknown_fields():
    assert acl_error("{match: {tcp_flags: 2}, action: drop}") == "t.yaml:8: ports[0].acl[0].match.tcp_flags: unknown key"


def test_at_most_64_acl_rules_per_port():
    text = acl(*["{match: {}, action: allow}"] * 65)
    assert one_error(text) == "t.yaml:7: ports[0].acl: at most 64 rules per port (the fast path's bound), got 65"
    assert len(loads(acl(*["{match: {}, action: allow}"] * 64)).ports[0].acl) == 64


def test_acl_vlan_must_be_one_of_the_ports():
    text = acl("{match: {}, action: allow}", "{match: {vlan: 30}, action: drop}")
    assert one_error(text) == "t.yaml:9: ports[0].acl[1].match.vlan: VLAN 30 is not a VLAN of this port (its VLANs: 1, 10, 20)"


def test_acl_vlan_is_reported_beside_another_rules_error():
    """A port's VLAN check of its rules runs only once all of them are valid: the rest are
    checked on their own, so that one run reports both errors, and each once."""
    text = acl("{match: {vlan: 30}, action: drop}", "{match: {ip_proto: icmp, ip_src: 'fd00::/8'}, action: drop}")
    assert errors_of(text) == [
        "t.yaml:8: ports[0].acl[0].match.vlan: VLAN 30 is not a VLAN of this port (its VLANs: 1, 10, 20)",
        "t.yaml:9: ports[0].acl[1].match.ip_proto: icmp is IPv4's; IPv6 has icmpv6"]
    text = acl("{match: {vlan: 30}, action: drop}") + "  - {name: q, vlan: 7, acl: [{match: {vlan: 5}, action: drop}]}\n"
    assert errors_of(text) == [
        "t.yaml:8: ports[0].acl[0].match.vlan: VLAN 30 is not a VLAN of this port (its VLANs: 1, 10, 20)",
        "t.yaml:9: ports[1].acl[0].match.vlan: VLAN 5 is not a VLAN of this port (its VLANs: 7)"]


@pytest.mark.parametrize("value, expected", [
    ("ipv4", 0x0800), ("ipv6", 0x86DD), ("arp", 0x0806), ("0x88b5", 0x88B5), ("2048", 0x0800),
])
def test_eth_type_by_name_or_number(value, expected):
    assert loads(acl(f"{{match: {{eth_type: {value}}}, action: drop}}")).ports[0].acl[0].match.eth_type == expected


@pytest.mark.parametrize("value, message", [
    ("0x8100", "0x8100 is the VLAN tag, not a payload's type: match on vlan"),
    ("0x05dc", "an eth_type is 0x0600 to 0xffff, got 0x05dc"),
    ("ip", "eth_type is a number like 0x0800 or one of ipv4, ipv6, arp; got 'ip'"),
    ("true", "expected an eth_type (0x0800, ipv4...), got boolean"),
])
def test_bad_eth_type(value, message):
    assert acl_error(f"{{match: {{eth_type: {value}}}, action: drop}}") == f"t.yaml:8: ports[0].acl[0].match.eth_type: {message}"


@pytest.mark.parametrize("value, expected", [("icmp", 1), ("icmpv6", 58), ("tcp", 6), ("udp", 17), ("132", 132)])
def test_ip_proto_by_name_or_number(value, expected):
    assert loads(acl(f"{{match: {{ip_proto: {value}}}, action: drop}}")).ports[0].acl[0].match.ip_proto == expected


@pytest.mark.parametrize("value, message", [
    ("256", "an ip_proto is 0 to 255, got 256"),
    ("sctp", "ip_proto is a number 0 to 255 or one of icmp, icmpv6, tcp, udp; got 'sctp'"),
])
def test_bad_ip_proto(value, message):
    assert acl_error(f"{{match: {{ip_proto: {value}}}, action: drop}}") == f"t.yaml:8: ports[0].acl[0].match.ip_proto: {message}"


@pytest.mark.parametrize("match, key, message", [
    ("{dst_port: 80}", "dst_port", "dst_port needs ip_proto tcp or udp"),
    ("{ip_proto: icmp, src_port: 80}", "src_port", "src_port needs ip_proto tcp or udp"),
    ("{ip_src: fd00::/8, ip_proto: icmp}", "ip_proto", "icmp is IPv4's; IPv6 has icmpv6"),
    ("{eth_type: ipv4, ip_proto: icmpv6}", "ip_proto", "icmpv6 is IPv6's; IPv4 has icmp"),
    ("{eth_type: arp, ip_proto: udp}", "ip_proto", "ip_proto needs an IP packet, and eth_type 0x0806 is neither IPv4 nor IPv6"),
    ("{eth_type: ipv6, ip_src: 198.18.0.0/15}", "ip_src", "an IPv4 prefix never matches eth_type 0x86dd"),
    ("{ip_src: 198.18.0.0/15, ip_dst: fd00::/8}", "ip_dst", "ip_dst is IPv6 and ip_src IPv4: no packet has both"),
    ("{ip_dst: 198.18.0.1/15}", "ip_dst", "198.18.0.1/15 has host bits set: the prefix is 198.18.0.0/15"),
    ("{ip_dst: 198.18.0.300}", "ip_dst", "not an IPv4 or IPv6 prefix: '198.18.0.300'"),
    ('{eth_dst: "01:00:5e:00:00:01/ff:ff:ff:00:00:00"}', "eth_dst", "01:00:5e:00:00:01 has bits outside its mask ff:ff:ff:00:00:00"),
    ('{eth_src: "02:00:00:00:00/ff:ff:ff:00:00:00"}', "eth_src", "a MAC address is six hex octets, as in 02:00:00:00:00:10"),
    # A frame from a multicast or zero source is an rx error before the ACL (rx_accept).
    ('{eth_src: "01:00:5e:00:00:01"}', "eth_src",
     "01:00:5e:00:00:01 matches only multicast sources: a frame from one is an rx error, which no rule sees"),
    ('{eth_src: "ff:ff:ff:ff:ff:ff"}', "eth_src",
     "ff:ff:ff:ff:ff:ff matches only multicast sources: a frame from one is an rx error, which no rule sees"),
    ('{eth_src: "01:00:00:00:00:00/01:00:00:00:00:00"}', "eth_src", "01:00:00:00:00:00/01:00:00:00:00:00 matches "
     "only multicast sources: a frame from one is an rx error, which no rule sees"),
    ('{eth_src: "00:00:00:00:00:00"}', "eth_src",
     "00:00:00:00:00:00 is no source: a frame from it is an rx error, which no rule sees"),
])
def test_acl_match_that_can_never_match_is_an_error(match, key, message):
    assert acl_error(f"{{match: {match}, action: drop}}") == f"t.yaml:8: ports[0].acl[0].match.{key}: {message}"


@pytest.mark.parametrize("value", ['"00:00:00:00:00:00/ff:ff:ff:00:00:00"', '"00:00:00:00:00:00/01:00:00:00:00:00"',
                                   '"02:00:00:00:00:01"'])
def test_acl_eth_src_may_match_a_host_source(value):
    """A masked zero MAC matches host sources too (a whole OUI's, every unicast one)."""
    assert loads(acl(f"{{match: {{eth_src: {value}}}, action: drop}}")).ports[0].acl[0].match.eth_src


def test_acl_address_alone_is_a_host_prefix():
    match = loads(acl("{match: {ip_src: 198.18.0.7, ip_dst: 198.18.0.8}, action: drop}")).ports[0].acl[0].match
    assert (match.ip_src, match.ip_dst) == (ipaddress.ip_network("198.18.0.7/32"), ipaddress.ip_network("198.18.0.8/32"))


@pytest.mark.parametrize("value, octets", [
    ('"02:00:00:00:00:0b"', (bytes.fromhex("02000000000b"), b"\xff" * 6)),
    ('"ff:ff:ff:ff:ff:ff"', (b"\xff" * 6, b"\xff" * 6)),
    ('"01:00:00:00:00:00/01:00:00:00:00:00"', (bytes.fromhex("010000000000"), bytes.fromhex("010000000000"))),
])
def test_acl_mac_match_may_be_any_mac_and_masked(value, octets):
    match = loads(acl(f"{{match: {{eth_dst: {value}}}, action: drop}}")).ports[0].acl[0].match
    assert config.mac_and_mask(match.eth_dst) == octets


# --- Mirrors and static MACs (top level) --------------------------------------


def mirrored(mirrors: str, statics: str = "") -> str:
    """Ports a (access 10), b (trunk 10, 20), m, n; then `mirrors` (the first on line 9) and `statics`."""
    text = SWITCH + "ports:\n  - {name: a, vlan: 10}\n  - {name: b, trunk: [10, 20]}\n  - {name: m}\n  - {name: n}\n"
    text += "mirrors:\n" + "".join(f"  - {m}\n" for m in mirrors.split(";") if m) if mirrors else ""
    text += "static_macs:\n" + "".join(f"  - {s}\n" for s in statics.split(";") if s) if statics else ""
    return text


def test_mirror_direction_defaults_to_both():
    [m] = loads(mirrored("{name: s, from: [a, b], to: m}")).mirrors
    assert (m.name, m.from_, m.to, m.direction, m.rx, m.tx) == ("s", ["a", "b"], "m", "both", True, True)
    assert loads(mirrored("{name: s, from: [a], to: m, direction: tx}")).mirrors[0].rx is False


def test_config_names_its_monitor_ports():
    cfg = loads(mirrored("{name: s, from: [a], to: m};{name: t, from: [b], to: m}"))
    assert cfg.monitor_ports() == {"m"}


def test_mirror_needs_sources():
    assert errors_of(mirrored("{name: s, to: m};{name: t, from: [], to: m}")) == [
        "t.yaml:9: mirrors[0].from: required key is missing",
        "t.yaml:10: mirrors[1].from: needs at least 1 item(s), got 0",
    ]


def test_mirror_from_is_spelled_from():
    assert errors_of(mirrored("{name: s, from_: [a], to: m}")) == [
        "t.yaml:9: mirrors[0].from: required key is missing",
        "t.yaml:9: mirrors[0].from_: unknown key",
    ]


@pytest.mark.parametrize("mirror, message", [
    ("{name: s, from: [a, x], to: m}", "t.yaml:9: mirrors[0].from[1]: no port named 'x'"),
    ("{name: s, from: [a], to: x}", "t.yaml:9: mirrors[0].to: no port named 'x'"),
    ("{name: s, from: [a, m], to: m}", "t.yaml:9: mirrors[0].to: 'm' is also a source (from): a monitor port only receives"),
    ("{name: s, from: [a, b, a], to: m}", "t.yaml:9: mirrors[0].from[2]: 'a' is listed twice (first at from[0])"),
    ("{name: s, from: [a], to: m, direction: in}", "t.yaml:9: mirrors[0].direction: must be one of 'rx', 'tx' or 'both'"),
    ("{name: 's 1', from: [a], to: m}", "t.yaml:9: mirrors[0].name: a mirror name is 1 to 32 of A-Z a-z 0-9 _ . -"),
])
def test_bad_mirror(mirror, message):
    assert one_error(mirrored(mirror)) == message


def test_monitor_port_cannot_be_another_mirrors_source():
    assert one_error(mirrored("{name: s, from: [a], to: m};{name: t, from: [m], to: n}")) == (
        "t.yaml:10: mirrors[1].from[0]: 'm' is the monitor port of mirrors[0]: it only receives")


def test_duplicate_mirror_names():
    assert one_error(mirrored("{name: s, from: [a], to: m};{name: s, from: [b], to: m}")) == (
        "t.yaml:10: mirrors[1].name: duplicate mirror name 's' (first at mirrors[0])")


def test_at_most_16_mirrors():
    many = ";".join(f"{{name: s{i}, from: [a], to: m}}" for i in range(17))
    assert one_error(mirrored(many)) == "t.yaml:8: mirrors: at most 16 mirrors (the fast path's bound), got 17"


def test_static_macs_default_to_the_ports_untagged_vlan():
    cfg = loads(mirrored("", '{mac: "02:00:00:00:00:01", port: a};{mac: "02:00:00:00:00:02", port: b, vlan: 20};'
                             '{mac: "02-00-00-00-00-0A", port: m}'))
    assert cfg.static_macs[0].vlan is None
    assert cfg.static_mac_entries() == [("02:00:00:00:00:01", "a", 10), ("02:00:00:00:00:02", "b", 20),
                                        ("02:00:00:00:00:0a", "m", 1)]


@pytest.mark.parametrize("static, message", [
    ('{mac: "02:00:00:00:00:01", port: x}', "t.yaml:9: static_macs[0].port: no port named 'x'"),
    ('{mac: "02:00:00:00:00:01", port: a, vlan: 20}', "t.yaml:9: static_macs[0].vlan: VLAN 20 is not a VLAN of port 'a' (its VLANs: 10)"),
    ('{mac: "02:00:00:00:00:01", port: b}', "t.yaml:9: static_macs[0].port: port 'b' is a trunk without a native VLAN: give vlan"),
    ('{mac: "01:00:5e:00:00:01", port: a}', "t.yaml:9: static_macs[0].mac: a static MAC must be unicast (the first octet is odd: multicast)"),
    ('{mac: "02:00:00:00:00:01", port: a, vlan: 0}', "t.yaml:9: static_macs[0].vlan: must be at least 1"),
    ('{mac: "02:00:00:00:00:01"}', "t.yaml:9: static_macs[0].port: required key is missing"),
])
def test_bad_static_mac(static, message):
    assert one_error(mirrored("", static)) == message


def test_same_static_mac_twice_in_one_vlan():
    text = mirrored("", '{mac: "02:00:00:00:00:01", port: b, vlan: 10};{mac: "02:00:00:00:00:01", port: a}')
    assert one_error(text) == "t.yaml:10: static_macs[1].mac: 02:00:00:00:00:01 in VLAN 10 is already static_macs[0]"


def test_same_static_mac_in_two_vlans_is_fine():
    text = mirrored("", '{mac: "02:00:00:00:00:01", port: b, vlan: 10};{mac: "02:00:00:00:00:01", port: b, vlan: 20}')
    assert len(loads(text).static_macs) == 2


def test_more_static_macs_than_the_mac_table_holds():
    """Static entries are never evicted: more of them than mac_table.size cannot all be placed
    (run failed at start, and a reload killed the switch)."""
    statics = ";".join(f'{{mac: "02:00:00:00:01:{i:02x}", port: m}}' for i in range(17))
    text = mirrored("", statics).replace("name: sw0\n", "name: sw0\n  mac_table: {size: 16}\n")
    assert one_error(text) == "t.yaml:9: static_macs: 17 static MACs, more than switch.mac_table.size (16) holds"
    assert len(loads(text.replace(statics.split(";")[-1], "").replace("  - \n", "")).static_macs) == 16


def test_static_mac_on_a_monitor_port():
    text = mirrored("{name: s, from: [a], to: m}", '{mac: "02:00:00:00:00:01", port: m}')
    assert one_error(text) == "t.yaml:11: static_macs[0].port: 'm' is the monitor port of mirrors[0]: it only receives"


def monitored(settings: str, mirrors: str = "{name: s, from: [a], to: m}") -> str:
    """mirrored(mirrors), with `settings` written on port m (ports[2], line 6)."""
    return mirrored(mirrors).replace("{name: m}", "{name: m" + (", " + settings if settings else "") + "}")


@pytest.mark.parametrize("key, value, reason", [
    ("vlan", "10", "it is in no VLAN; each copy leaves it tagged or not as its source port had the frame"),
    ("vlan", "1", "it is in no VLAN; each copy leaves it tagged or not as its source port had the frame"),
    ("trunk", "[10, 20]", "it is in no VLAN; each copy leaves it tagged or not as its source port had the frame"),
    ("isolated", "true", "it exchanges no frame with any port, isolated or not: it gets the mirrors' copies only"),
    ("mac_limit", "4", "what it sends is dropped, never learned"),
    ("storm_control", "{broadcast_pps: 100}", "what it sends is dropped, never flooded"),
    ("acl", "[{match: {eth_type: arp}, action: drop}]", "what it sends is dropped, never filtered"),
])
def test_a_setting_a_monitor_port_would_ignore_is_refused(key, value, reason):
    """A monitor port gets nothing but copies and sends nothing into the switch: a setting that acts
    on what a port sends or receives as a switch port would be silently ignored (check said ok)."""
    assert one_error(monitored(f"{key}: {value}")) == (
        f"t.yaml:6: ports[2].{key}: {key} has no effect on a monitor port ('m' is mirrors[0]'s): {reason}")


def test_every_ignored_setting_of_a_monitor_port_is_reported_at_its_own_line():
    text = SWITCH + textwrap.dedent("""\
        ports:
          - {name: a}
          - name: m
            netns: ids
            vlan: 10
            acl:
              - {match: {}, action: drop}
        mirrors:
          - {name: s, from: [a], to: m}
        """)
    assert [e.split(": ")[:2] for e in errors_of(text)] == [["t.yaml:7", "ports[1].vlan"], ["t.yaml:8", "ports[1].acl"]]


def test_a_monitor_port_named_by_a_later_mirror_is_refused_its_settings_too():
    text = monitored("isolated: true", "{name: s, from: [a], to: n};{name: t, from: [b], to: m}")
    assert one_error(text) == ("t.yaml:6: ports[2].isolated: isolated has no effect on a monitor port "
                               "('m' is mirrors[1]'s): it exchanges no frame with any port, isolated or not: "
                               "it gets the mirrors' copies only")


def test_a_monitor_ports_ignored_settings_are_reported_beside_other_errors():
    text = monitored("mac_limit: 4").replace("{name: a, vlan: 10}", "{name: a, vlan: 10, mtu: big}")
    assert errors_of(text) == [
        "t.yaml:4: ports[0].mtu: expected an integer, got string",
        "t.yaml:6: ports[2].mac_limit: mac_limit has no effect on a monitor port ('m' is mirrors[0]'s): "
        "what it sends is dropped, never learned",
    ]


def test_a_monitor_port_may_write_out_the_defaults_that_ask_for_nothing():
    m = loads(monitored("isolated: false, acl: [], vlan: null, mac_limit: null, storm_control: null")).ports[2]
    assert (m.isolated, m.acl, m.vlan, m.trunk, m.mac_limit, m.storm_control) == (False, [], None, None, None, None)


@pytest.mark.parametrize("storm", ["{}", "{broadcast_pps: null}"])
def test_a_monitor_port_may_write_storm_control_with_no_limit(storm):
    """storm_control with every limit unset asks for nothing, as storm_control: null does; with
    the rest of the config wrong too (the check over the YAML's own dicts), the same."""
    assert loads(monitored(f"storm_control: {storm}")).ports[2].storm_control is not None
    text = monitored(f"storm_control: {storm}").replace("{name: a, vlan: 10}", "{name: a, vlan: 10, mtu: big}")
    assert errors_of(text) == ["t.yaml:4: ports[0].mtu: expected an integer, got string"]


@pytest.mark.parametrize("settings", [
    'netns: ids, ifname: eth1, addresses: [198.18.0.9/24, "fd00::9/64"], mac: "02:00:00:00:00:09", mtu: 9000, speed: 1000',
    "remote: eth9, remote_mode: local, allmulti: true, mtu: 1500",
    "vxlan: {vni: 9, local: 198.19.0.1, remotes: [198.19.0.2]}",
])
def test_a_monitor_port_takes_the_settings_of_its_device(settings):
    """What makes and attaches the device the copies leave through: the switch honours it."""
    assert loads(monitored(settings)).monitor_ports() == {"m"}


def test_references_are_checked_beside_other_errors():
    text = SWITCH + textwrap.dedent("""\
        ports:
          - {name: a, mtu: big}
          - {name: b, vlan: 10}
        mirrors:
          - {name: s, from: [a, x], to: b}
        static_macs:
          - {mac: "02:00:00:00:00:01", port: b, vlan: 20}
        """)
    assert errors_of(text) == [
        "t.yaml:4: ports[0].mtu: expected an integer, got string",
        "t.yaml:5: ports[1].vlan: vlan has no effect on a monitor port ('b' is mirrors[0]'s): it is in no VLAN; "
        "each copy leaves it tagged or not as its source port had the frame",
        "t.yaml:7: mirrors[0].from[1]: no port named 'x'",
        "t.yaml:9: static_macs[0].port: 'b' is the monitor port of mirrors[0]: it only receives",
    ]


def test_same_features_load_equal():
    assert loads(textwrap.dedent(FEATURES)) == loads(textwrap.dedent(FEATURES))


# --- Switch sections ----------------------------------------------------------


@pytest.mark.parametrize("listen, address", [
    ('""', None),
    ('"127.0.0.1:9417"', ("127.0.0.1", 9417)),
    ('"[::1]:9417"', ("::1", 9417)),
    ('"[fe80::1%eth0]:9417"', ("fe80::1%eth0", 9417)),   # the scope: the device to bind on
    ('"localhost:80"', ("localhost", 80)),
])
def test_metrics_listen_parsing(listen, address):
    cfg = loads(f"switch:\n  name: s\n  metrics: {{listen: {listen}}}\nports: [{{name: p}}]\n")
    assert cfg.switch.metrics.address() == address


def test_metrics_listen_defaults_to_localhost():
    assert loads("switch: {name: s}\nports: [{name: p}]\n").switch.metrics.address() == ("127.0.0.1", 9417)


def test_metrics_listen_bad_port_is_rejected():
    assert one_error('switch:\n  name: s\n  metrics: {listen: "127.0.0.1:70000"}\nports: [{name: p}]\n') == (
        "t.yaml:3: switch.metrics.listen: port 70000 is not in 1..65535"
    )


def test_metrics_listen_link_local_without_its_device_is_rejected():
    assert one_error('switch:\n  name: s\n  metrics: {listen: "[fe80::1]:9417"}\nports: [{name: p}]\n') == (
        "t.yaml:3: switch.metrics.listen: a link-local address needs the device it is on: [fe80::1%eth0]:9417"
    )


@pytest.mark.parametrize("listen", ["9417", "::1:9417", "127.0.0.1:", "[nope]:9417", "a b:1"])
def test_metrics_listen_malformed_is_rejected(listen):
    assert one_error(f'switch:\n  name: s\n  metrics: {{listen: "{listen}"}}\nports: [{{name: p}}]\n').startswith(
        "t.yaml:3: switch.metrics.listen: "
    )


@pytest.mark.parametrize("host", ["999.1.1.1", "1234", "127.1"])
def test_metrics_listen_all_numbers_is_an_ipv4_address_or_nothing(host):
    """No host name is all numbers: the start failed, 'Name or service not known' (or bound
    1234 as 0.0.4.210, as inet_aton reads it)."""
    assert one_error(f'switch:\n  name: s\n  metrics: {{listen: "{host}:9417"}}\nports: [{{name: p}}]\n') == (
        f"t.yaml:3: switch.metrics.listen: not an IPv4 address (four numbers 0 to 255, as in 127.0.0.1): {host!r}"
    )


def test_control_socket_default_is_derived_from_the_switch_name():
    assert loads("switch: {name: edge-1}\nports: [{name: p}]\n").switch.control.socket == "/run/tapswitch/edge-1.sock"
    assert loads("switch: {name: e, control: {}}\nports: [{name: p}]\n").switch.control.socket == "/run/tapswitch/e.sock"


def test_control_socket_can_be_set():
    cfg = loads("switch: {name: s, control: {socket: /tmp/s.sock}}\nports: [{name: p}]\n")
    assert cfg.switch.control.socket == "/tmp/s.sock"


def test_control_socket_must_be_absolute():
    assert one_error("switch:\n  name: s\n  control:\n    socket: s.sock\nports: [{name: p}]\n") == (
        "t.yaml:4: switch.control.socket: the control socket path must be absolute"
    )


def test_bad_switch_name_does_not_also_blame_the_control_socket():
    assert errors_of("switch: {queues: 1}\nports: [{name: p}]\n") == ["t.yaml:1: switch.name: required key is missing"]


# --- Whole documents ----------------------------------------------------------


def test_several_errors_reported_together_in_file_order():
    text = """\
        switch:
          name: sw0
          queues: "2"
        ports:
          - name: a
            mac: "01:00:00:00:00:01"
          - name: a
            remote_mode: local
          - name: b
            bogus: 1
        """
    assert errors_of(text) == [
        "t.yaml:3: switch.queues: expected an integer, got string",
        "t.yaml:6: ports[0].mac: a port MAC address must be unicast (the first octet is odd: multicast)",
        "t.yaml:7: ports[1].name: duplicate port name 'a' (first at ports[0])",
        "t.yaml:8: ports[1].remote_mode: remote_mode applies to a remote port: it requires remote",
        "t.yaml:10: ports[2].bogus: unknown key",
    ]


def test_config_error_str_joins_errors():
    error = ConfigError(["a:1: x: one", "a:2: y: two"])
    assert str(error) == "a:1: x: one\na:2: y: two"


def test_yaml_syntax_error_is_located():
    assert one_error("switch:\n  name: [sw0\nports: []\n") == (
        "t.yaml:3: -: YAML: while parsing a flow sequence: expected ',' or ']', but got ':'"
    )


def test_yaml_tab_is_located_to_its_column_and_said_to_be_one():
    """PyYAML says "found character '\\t' that cannot start any token", which a tab in an editor does not show."""
    assert one_error("switch:\n  name:\tsw0\nports: [{name: p}]\n") == (
        "t.yaml:2: -: YAML: while scanning for the next token: found character '\\t' that cannot start any token "
        "(column 8: indent and separate with spaces, not tabs)"
    )


def test_yaml_forbidden_character_is_located():
    assert one_error(SWITCH + "ports: [{name: \x07}]\n") == "t.yaml:3: -: YAML: character #x0007 is not allowed"


@pytest.mark.parametrize("brk", ["\x85", "\u2028", "\u2029"])
def test_lines_are_the_files_whatever_yaml_11_takes_for_a_line_break(brk):
    """YAML 1.1 reads U+0085, U+2028 and U+2029 as line breaks, which no editor, `grep -n` or
    `sed -n` does: one of them in a string (pasted from a web page) said every error after it
    one line further down than it is."""
    text = f'switch:\n  name: "sw{brk}0"\n  queues: x\nports: [{{name: p0, bogus: 1}}]\n'
    assert errors_of(text) == ["t.yaml:2: switch.name: a switch name is 1 to 32 of A-Z a-z 0-9 _ . -",
                               "t.yaml:3: switch.queues: expected an integer, got string",
                               "t.yaml:4: ports[0].bogus: unknown key"]
    assert one_error(f'switch:\n  name: "sw{brk}0"\nports: [{{name: p0}}\n') == (
        "t.yaml:4: -: YAML: while parsing a flow sequence: expected ',' or ']', but got '<stream end>'")


def test_a_lone_carriage_return_ends_a_line_as_in_an_editor():
    """Lines ended by '\r' alone (or '\r\r\n', a file made CRLF twice) are lines to an editor
    that reads them, as to YAML: errors say the line it shows."""
    assert one_error("switch:\r  name: sw0\r  bogus: 1\rports: [{name: p0}]\r") == "t.yaml:3: switch.bogus: unknown key"
    assert one_error("switch:\r\n  name: sw0\r\n  bogus: 1\r\nports: [{name: p0}]\r\n") == (
        "t.yaml:3: switch.bogus: unknown key")
    assert one_error("switch:\r  name: sw0\rports: [{name: \x07}]\r") == "t.yaml:3: -: YAML: character #x0007 is not allowed"


def test_nesting_too_deep_to_parse_is_located_where_it_got_too_deep():
    """It said line 0: the RecursionError named no place."""
    assert one_error(SWITCH + "ports: " + "[" * 100_000 + "]" * 100_000 + "\n") == "t.yaml:3: -: YAML: nested too deeply"
    text = "switch:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 3000))
    line = int(one_error(text).split(":")[1])
    assert 100 < line < 3000 and one_error(text) == f"t.yaml:{line}: -: YAML: nested too deeply"


def test_nesting_deeper_than_any_config_is_located_at_its_key():
    """Deep enough to make what reads a document after YAML recurse too far (it said line 0),
    not too deep for YAML: said at the line and key where it goes deeper than a config does."""
    text = with_port("name: p0\nacl:\n" + "".join("  " * i + "- \n" for i in range(40)))
    assert one_error(text) == (f"t.yaml:36: ports[0].acl{'[0]' * 29}: nested more than {config.MAX_DEPTH} deep: "
                               "no key of a config is")
    assert one_error(with_port("name: p0\nacl: " + "[" * 300 + "]" * 300 + "\n")).startswith(
        f"t.yaml:5: ports[0].acl{'[0]' * 29}: nested more than")


def test_an_alias_shared_widely_is_looked_into_once_per_depth():
    """_check_depth runs before the alias bomb check: a bomb passes through it in no time."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    assert "an alias bomb" in one_error("\n".join(lines) + "\nswitch:\n  name: *a9\nports: *a9\n")


def test_yaml_value_that_cannot_be_converted_is_located_at_its_key():
    assert one_error(SWITCH + "ports: [{name: p, speed: 2001-13-45}]\n") == (
        "t.yaml:3: ports[0].speed: YAML: cannot read '2001-13-45' as a date: month must be in 1..12"
    )
    assert one_error(SWITCH + "  queues: !!int two\nports: [{name: p}]\n") == (
        "t.yaml:3: switch.queues: YAML: cannot read 'two' as an integer: invalid literal for int() with base 10: 'two'"
    )


def test_yaml_number_too_long_is_located_without_python_advice():
    error = one_error(with_port("name: p\nmtu: " + "1" * 5000 + "\n"))
    assert error.startswith("t.yaml:5: ports[0].mtu: YAML: cannot read '1111")
    assert error.endswith(": 5000 digits, more than an integer may have (4300)")


def test_yaml_unknown_tag_is_located_at_its_key():
    assert one_error(with_port("name: p\nmtu: !!python/object/apply:os.system [id]\n")) == (
        "t.yaml:5: ports[0].mtu: YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'"
    )


def test_yaml_with_two_documents_is_an_error():
    assert one_error(SWITCH + "ports: [{name: p}]\n---\nswitch: {}\n") == (
        "t.yaml:4: -: YAML: expected a single document in the stream: but found another document"
    )


def test_empty_file():
    assert one_error("") == "t.yaml:1: -: empty config: expected a mapping with switch and ports"


def test_comments_only_is_empty():
    assert one_error("# nothing here\n\n") == "t.yaml:1: -: empty config: expected a mapping with switch and ports"


def test_top_level_must_be_a_mapping():
    assert one_error("\n- switch\n- ports\n") == "t.yaml:2: -: the top level must be a mapping, got list"


def test_one_mac_on_two_ports_of_a_vlan_is_a_clash():
    text = """\
        switch: {name: sw0}
        ports:
          - {name: a, mac: "02:00:00:00:00:01", vlan: 10}
          - {name: b, mac: "02-00-00-00-00-01", vlan: 20}
          - {name: c, mac: "02:00:00:00:00:01", trunk: [20, 30], mtu: 1}
          - {name: m, mac: "02:00:00:00:00:01"}
          - {name: d, mac: "02:00:00:00:00:01"}
        mirrors: [{name: span, from: [b], to: m}]
        """
    # b is in another VLAN than a; m is a monitor port (in no VLAN), so d, in VLAN 1, clashes with no
    # port; c's mtu fails, and its MAC is still said
    assert errors_of(text) == [
        "t.yaml:5: ports[2].mtu: must be at least 68",
        "t.yaml:5: ports[2].mac: 02:00:00:00:00:01 is also the MAC of ports[1], and both are in VLAN 20: "
        "the switch can learn it on one port only",
    ]
    assert one_error(text.replace("mtu: 1", "mtu: 1500")).startswith("t.yaml:5: ports[2].mac: 02:00:00:00:00:01 is also")


def test_a_static_mac_that_is_another_ports_mac_in_its_vlan_is_a_clash():
    text = """\
        switch: {name: sw0}
        ports:
          - {name: a, mac: "02:00:00:00:00:01"}
          - {name: b, vlan: 20}
          - {name: c, mtu: 1}
        static_macs:
          - {mac: "02:00:00:00:00:01", port: b}
          - {mac: "02:00:00:00:00:01", port: c}
        """
    # on b, in VLAN 20 (a is in VLAN 1), it is fine; c's mtu fails, and its static MAC is still said
    assert errors_of(text) == [
        "t.yaml:5: ports[2].mtu: must be at least 68",
        "t.yaml:8: static_macs[1].mac: 02:00:00:00:00:01 is the MAC of ports[0] ('a') in VLAN 1: static on 'c', "
        "its frames would go there",
    ]
    assert one_error(text.replace("mtu: 1", "mtu: 1500")).startswith("t.yaml:8: static_macs[1].mac: 02:00:00:00:00:01 is")
    assert loads(textwrap.dedent(text).replace("port: c", "port: a").replace("mtu: 1", "mtu: 1500"))    # on its own port


@pytest.mark.parametrize("written, hint", [("9e3", ", as in 9000"), ("1.5e3", ", as in 1500"), ("1e400", "")])
def test_an_integer_written_with_an_exponent_says_yaml_read_it_as_a_string(written, hint):
    """It said 'expected an integer, got string' of a number written unquoted."""
    assert one_error(with_port(f"name: p\nmtu: {written}\n")) == (
        f"t.yaml:5: ports[0].mtu: expected an integer, got string {written!r} (YAML 1.1 reads a number with "
        f"an exponent as a string): write the integer's digits{hint}")


def test_key_yaml_reads_as_no_string_is_an_unknown_key_at_its_line():
    text = "switch:\n  name: sw0\n  on: 1\nports:\n  - name: p\n    5: x\n    ~: y\n"
    assert errors_of(text) == [
        "t.yaml:3: switch.on: unknown key: YAML reads on as a boolean, and every key here is a name",
        "t.yaml:6: ports[0].5: unknown key: YAML reads 5 as an integer, and every key here is a name",
        "t.yaml:7: ports[0].~: unknown key: YAML reads ~ as null, and every key here is a name",
    ]


def test_merge_key_lines_point_at_the_anchor():
    text = "base: &b {name: s, qeues: 1}\nswitch:\n  <<: *b\nports: [{name: p}]\n"
    assert errors_of(text) == ["t.yaml:1: switch.qeues: unknown key", "t.yaml:1: base: unknown key"]


def test_unreadable_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load(str(missing))
    assert info.value.errors == [f"{missing}:0: -: cannot read: No such file or directory"]


def test_load_reports_the_file_name(tmp_path):
    path = tmp_path / "sw.yaml"
    path.write_text("switch:\n  name: sw0\n  queues: 0\nports: [{name: p}]\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.errors == [f"{path}:3: switch.queues: must be at least 1"]



@pytest.mark.parametrize("ports, summary", [(1, "1 port"), (2, "2 ports")])
def test_check_says_ok_with_the_switch_and_its_port_count(tmp_path, capsys, ports, summary):
    from tapswitch import cli
    path = tmp_path / "sw.yaml"
    path.write_text("switch: {name: sw0}\nports: [" + ", ".join(f"{{name: p{i}}}" for i in range(ports)) + "]\n")
    assert cli.main(["check", "-c", str(path)]) == cli.EXIT_OK
    assert capsys.readouterr().out == f"{path}: ok, switch sw0, {summary}\n"


@pytest.mark.parametrize("command", [["reload"], ["ports"], ["fdb"], ["fdb", "flush"]])
def test_a_client_given_a_bad_config_says_where_and_exits_2(tmp_path, capsys, command):
    """`tapswitch reload -c FILE` takes the control socket from FILE: a FILE with errors gets them
    reported (FILE:LINE: key.path), exit 2, no traceback, and no switch is asked."""
    from tapswitch import cli
    path = tmp_path / "sw.yaml"
    path.write_text("switch:\n  name: sw0\n  bogus: 1\nports: [{name: p}]\n")
    with pytest.raises(SystemExit) as info:
        cli.main(command[:1] + ["-c", str(path)] + command[1:])
    assert info.value.code == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"{path}:3: switch.bogus: unknown key" in err and "give the socket with -s" in err
    with pytest.raises(SystemExit) as info:
        cli.main(command[:1] + ["-c", str(tmp_path / "missing.yaml")] + command[1:])
    assert info.value.code == cli.EXIT_CONFIG
    assert f"{tmp_path / 'missing.yaml'}:0: -: cannot read: " in capsys.readouterr().err

# --- Nothing but ConfigError --------------------------------------------------

KEYS = ["switch", "ports", "name", "queues", "queue_len", "busy_poll_us", "watchdog_ms", "mac_table", "size", "aging",
        "metrics", "listen",
        "control", "socket", "log", "level", "format", "netns", "ifname", "addresses", "mac",
        "mtu", "speed", "remote", "remote_mode", "allmulti",
        "vlan", "trunk", "isolated", "mac_limit", "storm_control", "broadcast_pps", "acl", "match",
        "action", "eth_src", "eth_dst", "eth_type", "ip_src", "ip_proto", "dst_port", "mirrors", "from",
        "to", "direction", "static_macs", "port"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.sampled_from(["pid:1", "pid:x", "/run/netns/a", "198.18.0.1/24", "fd00::1/64", "[::1]:9417",
                     "02:00:00:00:00:01", "01:00:00:00:00:01", "eth0", "promisc", "", "info",
                     "drop", "allow", "icmp", "ipv6", "both", "198.18.0.0/15", "ff:ff:ff:00:00:00/ff:ff:ff:00:00:00"]),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers()), inner, max_size=5),
    ),
    max_leaves=25,
)


def only_config_errors(text: str) -> None:
    try:
        loads(text)
    except ConfigError as e:
        assert e.errors and all(isinstance(x, str) and x.startswith("<string>:") for x in e.errors)


@settings(max_examples=200, deadline=None)
@given(DOCUMENTS)
def test_random_documents_raise_only_config_error(document):
    import yaml
    only_config_errors(yaml.safe_dump(document))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("ab0:-[]{},&*!|>'\"#%@`?\n\t ") + KEYS + ["\u2028", "\x85", "  - ", ": ", "<<", "!!int ", "!!float ", "!!binary ", "!!timestamp ", "2001-13-45", "!!set ", "? "]), max_size=60).map("".join))
def test_random_yaml_ish_text_raises_only_config_error(text):
    only_config_errors(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_config_error(data):
    only_config_errors(data.decode("utf-8", errors="replace"))
    only_config_errors(data.decode("latin-1"))


# --- What YAML 1.1 does to what was written ------------------------------------


def test_a_merge_key_is_overridden_by_the_keys_written_beside_it():
    cfg = loads(textwrap.dedent("""\
        switch: {name: sw0}
        ports:
          - &base {name: p0, netns: n0, mtu: 1400}
          - <<: *base
            name: p1
            netns: n1
        """))
    assert [(p.name, p.netns, p.mtu) for p in cfg.ports] == [("p0", "n0", 1400), ("p1", "n1", 1400)]


def test_of_two_merged_maps_the_first_wins_whatever_its_keys():
    # PyYAML 6.0.4 alone lets the second win for some keys (mtu), not others (x)
    text = textwrap.dedent("""\
        switch: {name: sw0}
        ports:
          - &a {name: p0, mtu: 9000, netns: na}
          - &b {name: p1, mtu: 1400, netns: nb, vlan: 5}
          - <<: [*a, *b]
            name: p2
        """)
    cfg = loads(text)
    assert (cfg.ports[2].mtu, cfg.ports[2].netns, cfg.ports[2].vlan) == (9000, "na", 5)


def test_merge_keys_first_map_wins_and_errors_name_the_merged_key():
    errors = errors_of("""\
        switch: {name: sw0}
        a: &a {mtu: 99999, netns: na}
        b: &b {mtu: 1400, netns: nb, vlan: 0}
        ports:
          - <<: [*a, *b]
            name: p0
        """)
    # mtu comes from a (first), vlan from b; both are wrong, at the lines they are written
    assert errors == ["t.yaml:2: ports[0].mtu: must be at most 65521", "t.yaml:2: a: unknown key",
                      "t.yaml:3: ports[0].vlan: must be at least 1", "t.yaml:3: b: unknown key"]


@pytest.mark.parametrize("written, key, message", [
    ("mtu: 01500", "ports[0].mtu", "YAML 1.1 reads 01500 as the octal number 832: write it without the leading zero"),
    ("vlan: 010", "ports[0].vlan", "YAML 1.1 reads 010 as the octal number 8: write it without the leading zero"),
    ("mtu: 1:0:0", "ports[0].mtu", "YAML 1.1 reads 1:0:0 as a base-60 number (3600): write the number meant, or quote it"),
    ("vlan: 08", "ports[0].vlan", "expected an integer, got string '08': write the number without a leading zero (and without quotes)"),
    ("vlan: '010'", "ports[0].vlan", "expected an integer, got string '010': write the number without a leading zero (and without quotes)"),
])
def test_a_number_yaml_reads_in_octal_or_base_60_is_an_error(written, key, message):
    assert one_error(with_port(f"name: p0\n{written}\n")) == f"t.yaml:5: {key}: {message}"


def test_a_number_in_a_list_is_located_at_its_item():
    assert one_error(with_port("name: p0\ntrunk: [10, 020]\n")) == (
        "t.yaml:5: ports[0].trunk[1]: YAML 1.1 reads 020 as the octal number 16: write it without the leading zero")


def test_zero_hex_and_quoted_numbers_are_fine():
    cfg = loads(with_port('name: p0\nvlan: 0x10\nmtu: 1500\n') + "static_macs: [{mac: '02:00:00:00:00:01', port: p0, vlan: 0x10}]\n")
    assert (cfg.ports[0].vlan, cfg.static_macs[0].vlan) == (16, 16)


def test_a_duplicate_inside_a_key_yaml_discards_is_reported_too():
    errors = errors_of("""\
        switch:
          name: a
          name: b
        switch: {name: sw0}
        ports: [{name: p0}]
        """)
    assert errors == ["t.yaml:3: switch.name: duplicate key (first at line 2); YAML keeps only the last",
                      "t.yaml:4: switch: duplicate key (first at line 1); YAML keeps only the last"]


def test_an_item_shared_by_an_alias_has_its_key_lines_under_both_paths():
    errors = errors_of("""\
        switch: {name: sw0}
        ports:
          - &p {name: p0,
                mtu: 99999}
          - *p
        """)
    assert "t.yaml:4: ports[0].mtu: must be at most 65521" in errors
    assert "t.yaml:4: ports[1].mtu: must be at most 65521" in errors


# --- Errors found beside others ---------------------------------------------------


def test_references_are_checked_in_items_wrong_elsewhere():
    errors = errors_of("""\
        switch: {name: sw0}
        ports: [{name: a}, {name: b}]
        mirrors:
          - {name: m, from: [nope], to: b, direction: sideways}
        static_macs:
          - {mac: "02:00:00:00:00:01", port: ghost, vlan: 0}
        """)
    assert errors == ["t.yaml:4: mirrors[0].direction: must be one of 'rx', 'tx' or 'both'",
                      "t.yaml:4: mirrors[0].from[0]: no port named 'nope'",
                      "t.yaml:6: static_macs[0].vlan: must be at least 1",
                      "t.yaml:6: static_macs[0].port: no port named 'ghost'"]


def test_a_duplicate_port_name_is_found_beside_an_error_in_the_first_ports_netns_or_remote():
    """The first port of a name, refused for its remote (`lo`) or netns, was left out of the
    duplicate check: the second of that name was said only once the first was fixed."""
    errors = errors_of("""\
        switch: {name: sw0}
        ports:
          - {name: a, remote: lo}
          - {name: b, netns: "bad ns"}
          - {name: a}
          - {name: b, netns: web}
          - {name: c, remote: a}
        """)
    assert errors == [
        "t.yaml:3: ports[0].remote: lo is the loopback device; a remote is an Ethernet interface (NIC, VM tap, veth)",
        "t.yaml:4: ports[1].netns: a netns name has no ':', NUL or whitespace",
        "t.yaml:5: ports[2].name: duplicate port name 'a' (first at ports[0])",
        "t.yaml:6: ports[3].name: duplicate port name 'b' (first at ports[1])",
        "t.yaml:7: ports[4].remote: 'a' is the TAP of ports[0]; a port cannot attach a port",
    ]


def test_the_vxlan_mtu_bound_is_checked_beside_other_errors():
    errors = errors_of("""\
        switch: {name: sw0}
        ports:
          - {name: v9, vxlan: {vni: 2, local: 198.19.0.1}, mtu: 65486}
          - {name: v10, mtu: 65486}
          - {name: v11, mtu: 0}
        """)
    assert [e.split(": ")[:2] for e in errors] == [["t.yaml:3", "ports[0].mtu"], ["t.yaml:4", "ports[1].mtu"],
                                                   ["t.yaml:5", "ports[2].mtu"]], errors


def test_every_bad_vxlan_remote_is_reported():
    errors = errors_of("""\
        switch: {name: sw0}
        ports:
          - name: vx0
            vxlan: {vni: 1, local: 198.19.0.1, remotes: ["fd00::2", 198.19.0.1, 198.19.0.3, 198.19.0.3]}
        """)
    assert errors == ["t.yaml:4: ports[0].vxlan.remotes[0]: remote fd00::2 is IPv6, local 198.19.0.1 is IPv4",
                      "t.yaml:4: ports[0].vxlan.remotes[1]: remote 198.19.0.1 is this host (local)",
                      "t.yaml:4: ports[0].vxlan.remotes[3]: remote 198.19.0.3 is listed twice"]


def test_two_vxlan_ports_whose_long_names_give_one_device_clash():
    """A name too long for `NAME-vx` gives its first 9 bytes and 4 hex digits of its CRC-32: these
    two give vxlanport7ba4vx both. check passed them; run failed at whichever came second ('a
    device named vxlanport7ba4vx already exists (not made by tapswitch)'), exit 1."""
    errors = errors_of("""\
        switch: {name: sw0}
        ports:
          - {name: vxlanport001623, vxlan: {vni: 1, local: 198.18.9.1}}
          - {name: vxlanport008000, vxlan: {vni: 2, local: 198.18.9.1}}
        """)
    assert errors == ["t.yaml:4: ports[1].vxlan: its device 'vxlanport7ba4vx' is also ports[0]'s (that of a name over "
                      "12 bytes is its first 9 bytes and 4 hex digits of its CRC-32); rename one of them"]


def test_two_vxlan_ports_on_one_vni_and_udp_port_clash():
    errors = errors_of("""\
        switch: {name: sw0}
        ports:
          - {name: vx1, vxlan: {vni: 7, local: 198.19.0.1}}
          - {name: vx2, vxlan: {vni: 7, local: 198.19.0.1}}
          - {name: vx3, vxlan: {vni: 7, local: 198.19.0.1, dstport: 4790}}
          - {name: vx4, vxlan: {vni: 7, local: "fd00::1"}}
        """)
    assert errors == ["t.yaml:4: ports[1].vxlan.vni: VNI 7 on UDP port 4789 over IPv4 is already ports[0]'s"]


# --- Values run would refuse -------------------------------------------------------


@pytest.mark.parametrize("port, key", [("name: p%d", "name"), ("{name: p0, netns: n, ifname: eth%d}", "ifname")])
def test_an_interface_name_with_a_percent_sign_is_refused(port, key):
    assert one_error(with_port(port)).endswith(
        f"ports[0].{key}: an interface name has no '%' (the kernel numbers a name with %d itself)")


@pytest.mark.parametrize("name", ["all", "default"])
@pytest.mark.parametrize("port, key", [("name: {}", "name"), ("{{name: p0, netns: n, ifname: {}}}", "ifname"),
                                       ("{{name: p0, remote: {}}}", "remote")])
def test_all_and_default_are_refused_as_interface_names(port, key, name):
    """The kernel refuses them (EINVAL, /proc/sys/net/*/conf/{all,default} are its own): run
    said 'a device named all already exists', in a namespace it had just made empty."""
    assert one_error(with_port(port.format(name))).endswith(
        f"ports[0].{key}: an interface cannot be named {name!r}: the kernel keeps it for "
        f"/proc/sys/net/*/conf/{name}")


@pytest.mark.parametrize("port, key", [("name: pà", "name"), ("{name: p0, netns: n, ifname: ethà}", "ifname"),
                                       ("{name: p0, remote: upà}", "remote")])
def test_an_interface_name_with_a_byte_the_kernel_takes_for_whitespace_is_refused(port, key):
    """The kernel's isspace() reads byte 0xa0 as a space, and à is c3 a0 in UTF-8: check passed
    `name: pà`, and run made the other ports, then failed saying 'a device named pà already
    exists' (TUNSETIFF: EINVAL). Other letters pass, as the kernel has them."""
    assert one_error(with_port(port)).endswith(
        f"ports[0].{key}: an interface name has no 'à': the kernel reads byte 0xa0 of its UTF-8 (c3 a0) as whitespace")
    assert loads(with_port("name: pé\n")).ports[0].name == "pé"


def test_a_control_socket_path_ending_in_a_slash_is_refused():
    assert one_error("switch: {name: sw0, control: {socket: /tmp/x/}}\nports: [{name: p0}]\n") == (
        "t.yaml:1: switch.control.socket: the control socket path names a file, not a directory (it ends in '/')")


@pytest.mark.parametrize("address", ["ff02::1/64", "224.0.0.1/4", "0.0.0.0/8", "255.255.255.255/32"])
def test_a_port_address_must_be_unicast(address):
    assert one_error(with_port(f"name: p0\nnetns: n\naddresses: ['{address}']\n")).endswith(
        f"ports[0].addresses[0]: {address.split('/')[0]} is not a unicast address")


@pytest.mark.parametrize("address", ["::1/128", "::1/64"])
def test_the_ipv6_loopback_address_is_refused_on_a_port(address):
    """check passed it; the kernel refuses it on any device but lo ('Cannot assign loopback
    address on this device'), and run made the other ports, then failed at this one, exit 1."""
    assert one_error(with_port(f"name: p0\nnetns: n\naddresses: ['{address}']\n")).endswith(
        "ports[0].addresses[0]: ::1 is IPv6's loopback address: the kernel gives it to lo only")
    loads(with_port("name: p0\nnetns: n\naddresses: ['127.0.0.2/8', '::2/128']\n"), "t.yaml")    # the kernel takes them


def test_a_port_address_that_is_its_subnets_broadcast_is_refused():
    """The README says unicast; 198.18.0.255/24 passed `check`, and the port's host got the
    subnet's broadcast address for its own. /31 and /32 have no broadcast address: they pass."""
    assert one_error(with_port("name: p0\nnetns: n\naddresses: ['198.18.0.255/24']\n")).endswith(
        "ports[0].addresses[0]: 198.18.0.255 is the broadcast address of 198.18.0.0/24, not a unicast address")
    for fine in ("198.18.0.1/31", "198.18.0.255/32", "198.18.0.254/24", "fd00::ffff/112"):
        loads(with_port(f"name: p0\nnetns: n\naddresses: ['{fine}']\n"), "t.yaml")


def test_an_underlay_address_must_be_unicast():
    """255.255.255.255, the limited broadcast address, passed as a VXLAN port's local and remote."""
    assert errors_of(with_port("name: p0\nvxlan: {vni: 1, local: 255.255.255.255, remotes: [255.255.255.255]}\n")) == [
        f"t.yaml:5: ports[0].vxlan.{key}: 255.255.255.255 is not a unicast address" for key in ("local", "remotes[0]")]


def test_an_address_with_a_scope_is_refused():
    """ipaddress takes fe80::1%eth0: a port got fe80::1/64, its %eth0 dropped unsaid, and a VXLAN
    port's start failed ('no device holds the local address fe80::1%eth0')."""
    assert one_error(with_port("name: p0\nnetns: n\naddresses: ['fe80::1%eth0/64']\n")) == (
        "t.yaml:6: ports[0].addresses[0]: an address is set on its port's device: no %scope, as in fe80::1/64")
    assert errors_of(with_port("name: p0\nvxlan: {vni: 1, local: 'fe80::1%eth0', remotes: ['fe80::2%1']}\n")) == [
        f"t.yaml:5: ports[0].vxlan.{key}: an underlay address has no %scope: the underlay device is vxlan.dev"
        for key in ("local", "remotes[0]")]


# --- Files ------------------------------------------------------------------------


def test_a_file_that_is_not_regular_or_too_large_is_refused_without_reading_it_all(tmp_path):
    with pytest.raises(ConfigError) as info:
        load("/dev/zero")
    assert info.value.errors == ["/dev/zero:0: -: cannot read: not a regular file"]
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(config.MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigError) as info:
        load(str(big))
    assert info.value.errors == [f"{big}:0: -: cannot read: larger than 16 MiB"]


def test_a_directory_is_refused_as_not_a_regular_file_and_holds_no_descriptor(tmp_path):
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(3):               # a reload after the file was replaced by a directory, again and again
        with pytest.raises(ConfigError) as info:
            load(str(tmp_path))
        assert info.value.errors == [f"{tmp_path}:0: -: cannot read: not a regular file"]
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.parametrize("text, line", [
    (b"switch:\n  name: caf\xe9\nports: [{name: p0}]\n", 2),
    (b"switch:\r  name: sw0\rports: [{name: p\xe90}]\r", 3),     # lines ended by lone carriage returns
])
def test_bytes_that_are_not_utf8_are_located_at_their_line(tmp_path, text, line):
    path = tmp_path / "t.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.errors == [f"{path}:{line}: -: cannot read: not UTF-8: byte 0xe9"]


def test_the_octal_reading_is_said_beside_the_key_refusing_the_value_it_gave():
    assert errors_of(with_port("name: p0\nmtu: 0100\n")) == [
        "t.yaml:5: ports[0].mtu: must be at least 68",
        "t.yaml:5: ports[0].mtu: YAML 1.1 reads 0100 as the octal number 64: write it without the leading zero"]


def test_two_merge_keys_in_one_mapping_are_a_duplicate_key():
    assert errors_of("""\
        switch: {name: sw0}
        ports:
          - &p {name: a, vlan: 10}
          - &q {name: c, vlan: 30}
          - {<<: *p,
             <<: *q, name: b}
        """) == ["t.yaml:6: -: YAML: a second merge key '<<' in one mapping (first at line 5); "
                 "merge several with <<: [*a, *b]"]


def test_a_merge_of_no_mapping_is_an_error_at_the_merge():
    assert errors_of("""\
        switch:
          name: sw0
          mac_table: {size: &n 8192}
        ports:
          - name: a
          - name: b
            <<: *n
        """) == ["t.yaml:7: -: YAML: a merge key '<<' takes a mapping or a list of mappings "
                 "(an alias of one, as in <<: *base)"]


def test_a_fifo_is_refused_at_once_not_waited_for(tmp_path):
    fifo = tmp_path / "t.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        load(str(fifo))             # no writer: a blocking open would wait for ever
    assert info.value.errors == [f"{fifo}:0: -: cannot read: not a regular file"]


def test_a_unix_socket_is_refused_as_not_a_regular_file(tmp_path):
    """open() fails on one with ENXIO: it said 'cannot read: No such device or address'."""
    path = tmp_path / "t.yaml"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(ConfigError) as info:
            load(str(path))
    assert info.value.errors == [f"{path}:0: -: cannot read: not a regular file"]


FULL = "switch: {name: sw0}\nports:\n  - name: p0\n    vlan: 20\n  - name: p1\n    vlan: 20\n"
CUT = FULL.index("20") + 1       # "vlan: 2" of the first port, the second not written yet


def test_a_file_being_written_is_read_once_its_writer_has_closed_it(tmp_path):
    """An editor saving in place, `cat > FILE` or a copy has written part of the file: cut there,
    this one is a valid config of one port in VLAN 2. It is read once written whole."""
    path = tmp_path / "t.yaml"
    writer = open(path, "w")
    writer.write(FULL[:CUT])
    writer.flush()

    def finish():
        writer.write(FULL[CUT:])
        writer.close()

    timer = threading.Timer(0.3, finish)
    timer.start()
    try:
        cfg = load(str(path))
    finally:
        timer.join()
    assert [(p.name, p.vlan) for p in cfg.ports] == [("p0", 20), ("p1", 20)]


def test_a_file_its_writer_keeps_open_is_refused_not_read_cut(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "WRITER_WAIT", 0.2)
    path = tmp_path / "t.yaml"
    with open(path, "w") as writer:
        writer.write(FULL[:CUT])
        writer.flush()
        with pytest.raises(ConfigError) as info:
            load(str(path))
    # Said alike by a start, `check` and a reload: "then reload" told `check`'s user, or a start's,
    # of a switch that did not run.
    assert info.value.errors == [f"{path}:0: -: cannot read: another process has it open for writing "
                                 "(still after 0.2 s): try again once that process has closed it, or "
                                 "write a new file and rename it over this one"]
    assert [p.vlan for p in load(str(path)).ports] == [2]       # closed: read as it is

"""Tests for tapswitch.config: the schema, its defaults, and FILE:LINE: key.path errors."""

import ipaddress
import textwrap

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
        "name": "s", "queues": 1,
        "mac_table": {"size": 8192, "aging": 300},
        "metrics": {"listen": "127.0.0.1:9417"},
        "control": {"socket": "/run/tapswitch/s.sock"},
        "log": {"level": "info", "format": "auto"},
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
    with pytest.raises(Exception):
        cfg.switch.queues = 4
    assert cfg == loads("switch: {name: s}\nports: [{name: p}]\n")


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
    text = "switch:\n  name: s\n  queues: 17\n  mac_table: {size: 8, aging: 300}\nports: [{name: p}]\n"
    assert errors_of(text) == [
        "t.yaml:3: switch.queues: must be at most 16",
        "t.yaml:4: switch.mac_table.size: must be at least 16",
    ]


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


def test_same_inner_name_in_different_netns_is_fine():
    cfg = loads(SWITCH + "ports:\n  - {name: a, netns: x, ifname: eth0}\n  - {name: b, netns: y, ifname: eth0}\n")
    assert [p.inner_name for p in cfg.ports] == ["eth0", "eth0"]


def test_port_name_equal_to_another_ports_remote():
    text = SWITCH + "ports:\n  - name: a\n  - name: b\n    remote: a\n"
    assert one_error(text) == "t.yaml:6: ports[1].remote: 'a' is the TAP of ports[0]; a port cannot attach a port"


def test_two_ports_cannot_attach_the_same_remote():
    text = SWITCH + "ports:\n  - {name: a, remote: eth1}\n  - {name: b, remote: eth1}\n"
    assert one_error(text) == "t.yaml:5: ports[1].remote: 'eth1' is already attached by ports[0]"


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
        't.yaml:5: ports[0].mac: quote the MAC address ("02:00:00:00:00:10"); YAML read it as a number'
    )


def test_bad_address():
    assert one_error(with_port("name: p\nnetns: x\naddresses: [198.18.0.1/24, 198.18.0.300/24]\n")) == (
        "t.yaml:6: ports[0].addresses[1]: not an IPv4 or IPv6 address with prefix length: '198.18.0.300/24'"
    )


def test_address_needs_a_prefix_length():
    assert one_error(with_port("name: p\nnetns: x\naddresses: [fd00::1]\n")) == (
        "t.yaml:6: ports[0].addresses[0]: an address needs its prefix length, as in 198.18.0.10/24"
    )


def test_address_on_its_own_line_is_located():
    text = with_port("name: p\nnetns: x\naddresses:\n  - 198.18.0.1/24\n  - 7\n")
    assert one_error(text) == "t.yaml:8: ports[0].addresses[1]: expected an address string like 198.18.0.10/24, got integer"


def test_netns_and_remote_together():
    assert one_error(with_port("name: p\nnetns: x\nremote: eth1\n")) == (
        "t.yaml:6: ports[0].remote: remote and netns are mutually exclusive"
    )


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


def test_netns_relative_path_is_rejected():
    assert one_error(with_port("name: p\nnetns: run/netns/x\n")) == (
        "t.yaml:5: ports[0].netns: a netns is a name (no '/'), an absolute path, or pid:N"
    )


# --- Switch sections ----------------------------------------------------------


@pytest.mark.parametrize("listen, address", [
    ('""', None),
    ('"127.0.0.1:9417"', ("127.0.0.1", 9417)),
    ('"[::1]:9417"', ("::1", 9417)),
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


@pytest.mark.parametrize("listen", ["9417", "::1:9417", "127.0.0.1:", "[nope]:9417", "a b:1"])
def test_metrics_listen_malformed_is_rejected(listen):
    assert one_error(f'switch:\n  name: s\n  metrics: {{listen: "{listen}"}}\nports: [{{name: p}}]\n').startswith(
        "t.yaml:3: switch.metrics.listen: "
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


def test_yaml_forbidden_character_is_located():
    assert one_error(SWITCH + "ports: [{name: \x07}]\n") == "t.yaml:3: -: YAML: character #x0007 is not allowed"


def test_yaml_value_that_cannot_be_converted_is_an_error():
    assert one_error(SWITCH + "ports: [{name: p, speed: 2001-13-45}]\n") == (
        "t.yaml:0: -: YAML: cannot convert a value: ValueError: month must be in 1..12"
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


def test_merge_key_lines_point_at_the_anchor():
    text = "base: &b {name: s, qeues: 1}\nswitch:\n  <<: *b\nports: [{name: p}]\n"
    assert errors_of(text) == ["t.yaml:1: switch.qeues: unknown key", "t.yaml:1: base: unknown key"]


def test_unreadable_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load(str(missing))
    [error] = info.value.errors
    assert error.startswith(f"{missing}:0: -: cannot read: ")


def test_load_reports_the_file_name(tmp_path):
    path = tmp_path / "sw.yaml"
    path.write_text("switch:\n  name: sw0\n  queues: 0\nports: [{name: p}]\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.errors == [f"{path}:3: switch.queues: must be at least 1"]


# --- Nothing but ConfigError --------------------------------------------------

KEYS = ["switch", "ports", "name", "queues", "mac_table", "size", "aging", "metrics", "listen",
        "control", "socket", "log", "level", "format", "netns", "ifname", "addresses", "mac",
        "mtu", "speed", "remote", "remote_mode", "allmulti"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.sampled_from(["pid:1", "pid:x", "/run/netns/a", "198.18.0.1/24", "fd00::1/64", "[::1]:9417",
                     "02:00:00:00:00:01", "01:00:00:00:00:01", "eth0", "promisc", "", "info"]),
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

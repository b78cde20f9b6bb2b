"""The documentation against the code, so that neither moves alone: README.md's YAML
examples pass `tapswitch check`, its config tables name every key of the schema with
its default (or say it is required), its limits and the keys it requires or excludes, its command table is the command line's, its metric table is what the
collector exports (name, type, labels, and a HELP that names the causes its row names),
the log events it quotes are logged, TAPSWITCH_IO's values are the fast path's, the drops alert
names what rx_dropped counts, and config/example.yaml ("every key") shows every key and its limits;
its Performance table is bench/RESULTS.md's top table and it names HISTORY.md's latest full run,
the defaults and the supervisor's numbers it states are the code's, and its Tests section names
what scripts/test.sh installs.

No root: the collector reads a shared-memory table of a switch that never starts.
"""

import argparse
import os
import pathlib
import re
import stat
import time
import typing

import pytest
import yaml
from pydantic import BaseModel

from tapswitch import cli, config, control, fastpath, remote
from tapswitch.metrics import SwitchCollector
from tapswitch.switch import Switch

ROOT = pathlib.Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
SRC = ROOT / "src" / "tapswitch"


def section(title: str) -> str:
    """README's text under heading `title`, up to the next heading of its level or above
    (a `#` line inside a code block is a comment, not a heading)."""
    out, level, fenced = None, 0, False
    for line in README.splitlines():
        fenced ^= line.startswith("```")
        heading = re.match(r"(#+) (.*)", line) if not fenced else None
        if out is None:
            if heading and heading[2] == title:
                out, level = [], len(heading[1])
        elif heading and len(heading[1]) <= level:
            break
        else:
            out.append(line)
    assert out is not None, title
    return "\n".join(out)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in `text` whose first cell names something in
    backticks (not the headers, nor the rules); a `\\|` in a cell is no border."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| `"):
            rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


# --- YAML examples --------------------------------------------------------------

def yaml_blocks() -> list[tuple[int, str]]:
    """(line, text) of every ```yaml block of README.md."""
    return [(README[:m.start()].count("\n") + 2, m[1])
            for m in re.finditer(r"^```yaml\n(.*?)^```", README, re.M | re.S)]


FRAGMENT_SWITCH = "switch: {name: readme}\n"


@pytest.mark.parametrize("line,text", yaml_blocks(), ids=[f"README.md:{n}" for n, _ in yaml_blocks()])
def test_every_yaml_example_of_the_readme_passes_check(tmp_path, capsys, line, text):
    """A block without `switch:` is a fragment of a config (its ports, mirrors, static MACs):
    it is checked with a switch named for it. Anything else is checked as written."""
    keys = set(yaml.safe_load(text))
    if "switch" not in keys:
        assert keys <= {"ports", "mirrors", "static_macs"}, keys
        text = FRAGMENT_SWITCH + text
    path = tmp_path / f"README-{line}.yaml"
    path.write_text(text)
    code = cli.main(["check", "-c", str(path)])
    assert code == cli.EXIT_OK, capsys.readouterr().err


def test_the_readme_has_complete_yaml_examples_not_only_fragments():
    assert sum("switch" in yaml.safe_load(text) for _, text in yaml_blocks()) >= 3


# --- Config keys ----------------------------------------------------------------

def models_in(annotation, suffix: str = ""):
    """(model, "[]" if in a list else "") for each config section an annotation holds."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, suffix
    for arg in typing.get_args(annotation):
        yield from models_in(arg, "[]" if typing.get_origin(annotation) is list else suffix)


def schema(model: type[BaseModel] = config.Config, prefix: str = "") -> dict[str, object]:
    """{key path: default} of every key of the config file (`ports[].vxlan.vni`); required: ..."""
    out = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{field.alias or name}"
        out[path] = ... if field.is_required() else field.default
        for inner, suffix in models_in(field.annotation):
            out.update(schema(inner, f"{path}{suffix}."))
    return out


def plain(path: str) -> str:
    return path.replace("[]", "")


def documented_keys() -> dict[str, str]:
    """{key path without []: its row's text} of the README's config tables; `ports[].mac`,
    `mtu`, `speed` is three keys of one row, and `vxlan.vni` stands for `ports[].vxlan.vni`."""
    rows = {}
    for cells in table_rows(section("Configuration")) + table_rows(section("Several hosts")):
        named = [plain(k) for k in re.findall(r"`([^`]+)`", cells[0])]
        if not re.match(r"(switch|ports|mirrors|static_macs|vxlan)\b", named[0]):
            continue
        base = named[0].rpartition(".")[0]
        for key in [named[0]] + [f"{base}.{k}" for k in named[1:]]:
            rows[re.sub(r"^vxlan\.", "ports.vxlan.", key)] = " ".join(cells[1:])
    return rows


def row_of(path: str, rows: dict[str, str]) -> str | None:
    """The row that documents `path`: its own, else its nearest parent's."""
    key = plain(path)
    while key and key not in rows:
        key = key.rpartition(".")[0]
    return rows.get(key)


def names(word: str, text: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(word)}(?![\w.])", text) is not None


def test_the_readme_config_tables_name_every_key_and_only_keys():
    keys, rows = schema(), documented_keys()
    assert set(rows) - {plain(k) for k in keys} == set()
    acl = section("VLANs, isolation, mirroring, limits, ACLs, storm control")
    undocumented = []
    for path in keys:
        if plain(path) in rows or any(plain(k).startswith(plain(path) + ".") for k in keys):
            continue        # a row of its own, or a section (switch:, ports:...) of keys checked here
        # A key without a row is named in its parent's (`{mac, port, vlan}`, `level`); the
        # ACL's match fields are listed in their section.
        leaf = path.rpartition(".")[2]
        row = acl if path.startswith("ports[].acl[].match.") else row_of(path, rows)
        if row is None or not names(leaf, row):
            undocumented.append(path)
    assert undocumented == []


# A config leaving out each key that has a row of its own and no default in the schema.
LEFT_OUT = {
    "switch.name": "switch: {}\nports: [{name: a}]\n",
    "switch.control.socket": "switch: {name: s, control: {}}\nports: [{name: a}]\n",    # from switch.name
    "ports[].name": "switch: {name: s}\nports: [{mtu: 1500}]\n",
    "ports[].vxlan.vni": "switch: {name: s}\nports: [{name: v, vxlan: {local: 198.19.0.1}}]\n",
    "ports[].vxlan.local": "switch: {name: s}\nports: [{name: v, vxlan: {vni: 1}}]\n",
}


def test_every_key_without_a_default_is_probed():
    rows = documented_keys()
    assert {path for path, default in schema().items() if default is ... and plain(path) in rows} == set(LEFT_OUT)


@pytest.mark.parametrize("path", sorted(LEFT_OUT))
def test_the_readme_config_tables_say_which_keys_are_required(path):
    """A config without `switch.name` failed "required key is missing", where the README's row
    said nothing of it (nor of `ports[].name`, `vxlan.vni`, `vxlan.local`)."""
    try:
        config.loads(LEFT_OUT[path])
        required = False
    except config.ConfigError as e:
        assert f": {path.replace('[]', '[0]')}: required key is missing" in str(e)
        required = True
    assert names("required", row_of(path, documented_keys())) == required


# A port giving a key without the one it requires, or beside one it excludes: (key, the other
# key, "requires" or "excludes") -> the port. Even written as their defaults (`allmulti: false`).
DEPENDS = {
    ("ports[].ifname", "netns", "requires"): "{name: a, ifname: eth0}",
    ("ports[].remote_mode", "remote", "requires"): "{name: a, remote_mode: promisc}",
    ("ports[].allmulti", "remote", "requires"): "{name: a, allmulti: false}",
    ("ports[].remote", "netns", "excludes"): "{name: a, remote: eth1, netns: n}",
    ("ports[].vxlan", "netns", "excludes"): "{name: a, netns: n, vxlan: {vni: 1, local: 198.19.0.1}}",
    ("ports[].vxlan", "remote", "excludes"): "{name: a, remote: eth1, vxlan: {vni: 1, local: 198.19.0.1}}",
}


@pytest.mark.parametrize("key,other,how", sorted(DEPENDS), ids=[f"{k} {h} {o}" for k, o, h in sorted(DEPENDS)])
def test_the_readme_config_tables_say_what_a_key_requires_or_excludes(key, other, how):
    """A port with `ifname` and no `netns` failed "it requires netns", with `remote_mode` or
    `allmulti` and no `remote` "it requires remote", where their rows said neither."""
    with pytest.raises(config.ConfigError) as e:
        config.loads(f"switch: {{name: s}}\nports: [{DEPENDS[key, other, how]}]\n")
    assert f": {key.replace('[]', '[0]')}: " in str(e.value) and other in str(e.value)
    row = row_of(key, documented_keys())
    assert f"`{other}`" in row and how.rstrip("s") in row, f"{key}'s row does not say it {how} {other}"


# A config whose name at `path` is none that may be: the error says what a name may be.
BAD_NAMES = {
    "switch.name": "switch: {name: a b}\nports: [{name: a}]\n",
    "ports[].name": "switch: {name: s}\nports: [{name: abcdefghijklmnop}]\n",
    "ports[].netns": "switch: {name: s}\nports: [{name: a, netns: ..}]\n",
    "mirrors[].name": "switch: {name: s}\nports: [{name: a}, {name: m}]\nmirrors: [{name: a b, from: [a], to: m}]\n",
}


@pytest.mark.parametrize("path", sorted(BAD_NAMES))
def test_the_readme_config_tables_say_what_a_name_may_be(path):
    """A mirror's name is held to 1 to 32 of A-Z a-z 0-9 _ . -, as a switch's is, and its row
    did not say so."""
    with pytest.raises(config.ConfigError) as e:
        config.loads(BAD_NAMES[path])
    rule = re.search(r"1 to \d+ (of [^:;]*|bytes)", str(e.value))
    assert rule and f": {path.replace('[]', '[0]')}: " in str(e.value), str(e.value)
    assert rule[0] in row_of(path, documented_keys()).replace("`", "")


def said(value) -> str:
    return str(value).lower()


def test_the_readme_config_tables_state_every_default():
    """Each key whose default is a value (not "none", not an empty list, not a section) has
    that value in the row that documents it."""
    rows = documented_keys()
    missing = []
    for path, default in schema().items():
        if default in (None, ..., []) or isinstance(default, BaseModel):
            continue
        row = row_of(path, rows)
        if row is None or "default" not in row or not names(said(default), row.lower()):
            missing.append(f"{path} (default {default!r})")
    assert missing == []


BOUNDS = ("ge", "gt", "le", "max_length")     # pydantic's, as Field(ge=1, le=16) records them


def bounds(field) -> list[int]:
    """The numbers a key's value (or its list's length) is held to: Field(ge=..., le=...,
    max_length=...) on the key, or on the type it may be besides None (`vlan: VlanId | None`).
    Not those of a list's items (`trunk`'s VLAN ids: the `vlan` row's)."""
    metadata = list(field.metadata)
    for arg in typing.get_args(field.annotation):
        for m in getattr(arg, "__metadata__", ()):
            metadata += getattr(m, "metadata", [])
    return [getattr(m, b) for m in metadata for b in BOUNDS if getattr(m, b, None) is not None]


def keys_and_fields(model: type[BaseModel] = config.Config, prefix: str = ""):
    """(key path, field) of every key of the config file, as schema() walks them."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{field.alias or name}"
        yield path, field
        for inner, suffix in models_in(field.annotation):
            yield from keys_and_fields(inner, f"{path}{suffix}.")


def test_the_readme_config_tables_state_every_bound():
    """A key with a row of its own has its limits in it: `switch.queue_len` (16–65536),
    `busy_poll_us` (0–1000), `ports[].mtu` (68–65521), `vxlan.dstport` (1–65535) and
    `vxlan.remotes` (at most 1024) had none, and a config past them failed `check` on a
    limit the reference did not give."""
    rows = documented_keys()
    missing = [f"{path} ({n})" for path, field in keys_and_fields() if plain(path) in rows
               for n in bounds(field) if not names(str(n), rows[plain(path)])]
    assert missing == []


def test_the_annotated_example_shows_every_key():
    """config/example.yaml says it has every key, with its default and its limits."""
    text = (ROOT / "config" / "example.yaml").read_text()
    leaves = {path.rpartition(".")[2].rstrip("[]") for path in schema()}
    assert sorted(k for k in leaves if not re.search(rf"\b{k}:", text)) == []


def example_notes(key: str) -> str:
    """What config/example.yaml says beside `key:` wherever it is written: the line, the comment
    lines right above it, and those below it that go on its comment (indented past the key)."""
    lines = (ROOT / "config" / "example.yaml").read_text().splitlines()
    notes = []
    for i, line in enumerate(lines):
        if re.search(rf"(?<![\w.]){key}:", line):
            first, last = i, i + 1
            while first > 0 and lines[first - 1].lstrip().startswith("#"):
                first -= 1
            while last < len(lines) and re.match(r" {%d,}#" % (line.index(key) + 2), lines[last]):
                last += 1
            notes += lines[first:last]
    return "\n".join(notes).replace("..", " to ")       # 1..16


def test_the_annotated_example_states_every_bound():
    """config/example.yaml says it has every key "with its default and its limits": mac_limit,
    storm_control's rates, speed, the VXLAN keys and the ACL's ports had no limits there. A
    key's limits are said beside it, or beside its section's key (`storm_control:`, "each")."""
    missing = []
    for path, field in keys_and_fields():
        keys = [k.rstrip("[]") for k in path.split(".")[-2:]]
        notes = "\n".join(example_notes(k) for k in keys)
        missing += [f"{path} ({n})" for n in bounds(field) if not names(str(n), notes)]
    assert missing == []


def test_the_annotated_example_states_every_default():
    """As the README's tables do (test_the_readme_config_tables_state_every_default): log.format's
    default (auto) and isolated's (false) were not in the example."""
    missing = []
    for path, field in keys_and_fields():
        default = None if field.is_required() else field.default
        if default in (None, []) or isinstance(default, BaseModel):
            continue
        notes = "\n".join(example_notes(k.rstrip("[]")) for k in path.split(".")[-2:]).lower()
        if "default" not in notes or not names(said(default), notes):
            missing.append(f"{path} (default {default!r})")
    assert missing == []


# --- Command line ---------------------------------------------------------------

def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands() -> dict[str, argparse.ArgumentParser]:
    """{"": the tapswitch parser (its own options: --version), "run": its parser, ...,
    "fdb flush": its parser, ...}"""
    out = {"": cli.build_parser()}
    for name, parser in subparsers(cli.build_parser()).items():
        out[name] = parser
        out.update({f"{name} {action}": p for action, p in subparsers(parser).items()})
    return out


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}


CLIENT_OPTIONS = {"-s", "--socket", "-c", "--config", "--json"}     # the prose after the table names them


def command_table() -> dict[str, str]:
    """{"fdb add": "tapswitch fdb add MAC --port P [--vlan V]", ...} of README's command table."""
    out = {}
    for cells in table_rows(section("Command line")):
        usage = re.fullmatch(r"`tapswitch ([^`]*)`", cells[0])
        if usage:
            words = [w for w in usage[1].split() if re.fullmatch(r"[a-z]+", w)]
            out[" ".join(words)] = usage[1]
    return out


def test_the_readme_command_table_lists_every_command_and_only_those():
    assert set(command_table()) == set(commands())


@pytest.mark.parametrize("command", sorted(commands()))
def test_the_readme_names_every_option_of_a_command_and_only_its_options(command):
    """The client options (-s, -c, --json), which every command but run and check takes,
    are described once, after the table; every other option is in its command's row (the
    options of tapswitch itself, --version, in a row of their own)."""
    parser, usage = commands()[command], command_table()[command]
    named = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", usage))
    assert named - options(parser) == set(), "in the README, not in the parser"
    client = command not in ("", "run", "check")
    unnamed = [a.option_strings for a in parser._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction)
               and not (client and set(a.option_strings) <= CLIENT_OPTIONS)
               and not set(a.option_strings) & named]
    assert unnamed == [], "in the parser, not in the README"
    if client:
        assert CLIENT_OPTIONS <= options(parser)


def test_fdb_adds_help_says_what_a_reload_takes_away_as_the_readme_does():
    """`tapswitch fdb add --help` said an entry is "kept until the switch stops", where a reload
    that takes its port away, or its VLAN (Switch._install_static_macs), removes it, as the
    README's row says."""
    row = next(r[1] for r in table_rows(section("Command line")) if r[0].startswith("`tapswitch fdb add"))
    assert "until a reload takes its port away, or the port's VLAN" in row
    help_text = commands()["fdb add"].description
    assert "until the switch stops, or a reload takes its port or VLAN away" in help_text


def test_the_readme_says_which_macs_the_command_line_refuses():
    """`fdb add` and `del` refuse a MAC that is not unicast (control.unicast_mac_arg); the
    listing's `--mac` picks entries by any MAC (control.mac_arg). The README's row said the
    listing's `--mac` was refused as well when not unicast."""
    row = next(r[1] for r in table_rows(section("Command line")) if r[0].startswith("`tapswitch fdb add"))
    with pytest.raises(argparse.ArgumentTypeError):
        cli.entry_mac("01:00:5e:00:00:01")
    assert cli.mac("01:00:5e:00:00:01") == "01:00:5e:00:00:01"
    assert "the listing's `--mac` may be any MAC, multicast too" in row


def test_the_readme_describes_the_client_options():
    prose = section("Command line")
    assert "`-s SOCKET`" in prose and "`-c FILE`" in prose
    assert "`-s`, `-c` and `--json` after the action as before it" in prose


# --- Metrics --------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[str, tuple[str, ...], str]]:
    """{sample name: (type, labels, help)} of every family the collector yields."""
    sw = Switch(config.loads("switch: {name: docs}\nports: [{name: a}]\n"))
    sw.shared = fastpath.Shared.create(1024, 1)
    try:
        families = list(SwitchCollector(sw).collect())
    finally:
        sw.shared.close()
    return {f.name + ("_total" if f.type == "counter" else ""): (f.type, tuple(f._labelnames), f.documentation)
            for f in families}


def metric_table() -> dict[str, tuple[str, tuple[str, ...], str]]:
    """{name: (type, labels, meaning)} of README's metric table; `_acl_dropped_total` after
    `tapswitch_port_vlan_dropped_total` is `tapswitch_port_acl_dropped_total`."""
    out = {}
    for cells in table_rows(section("Metrics")):
        names = re.findall(r"`([^`]+)`", cells[0])
        if not names or not names[0].startswith("tapswitch_"):
            continue
        stem = re.match(r"tapswitch_[a-z]+_", names[0])[0]
        labels = tuple(label.strip() for label in cells[2].split(",") if label.strip())
        for name in names:
            out[stem + name[1:] if name.startswith("_") else name] = (cells[1].split()[0], labels, cells[3])
    return out


def test_the_readme_metric_table_is_what_the_collector_exports(exported):
    table = metric_table()
    assert set(table) == set(exported)
    assert {n: t[:2] for n, t in table.items()} == {n: e[:2] for n, e in exported.items()}


def test_the_metrics_the_dashboards_may_use_are_exported(exported):
    listed = {line.strip() for line in (ROOT / "dashboards" / "METRICS.txt").read_text().splitlines()}
    assert {n for n in listed if n.startswith("tapswitch_")} - set(exported) == set()


def test_rx_errors_help_names_what_the_readme_counts_there(exported):
    """The HELP a scraper shows and the README's table name the same malformed frames."""
    help_text = exported["tapswitch_port_rx_errors_total"][2]
    meaning = metric_table()["tapswitch_port_rx_errors_total"][2]
    for kind in ("runts", "virtio-net headers", "802.1Q tags", "source MACs"):
        assert kind in meaning and kind in help_text, kind


# What a metric's HELP and its README row both say: the causes an operator reads the metric
# by. A HELP that leaves one out sends the reader of /metrics looking elsewhere.
HELP_AGREES_WITH_README = {
    "tapswitch_port_rx_errors_total": ["runts", "virtio-net header", "802.1Q tag", "source MAC", "read failed"],
    "tapswitch_port_rx_dropped_total": ["not forwarded"],
    "tapswitch_port_rx_missed_total": ["queue full"],
    "tapswitch_port_tx_errors_total": ["MTU", "write failed"],
    "tapswitch_port_tx_dropped_total": ["refused the write", "send buffer was full"],
    "tapswitch_port_flooded_packets_total": ["flooded", "rx_dropped"],
    "tapswitch_port_vlan_dropped_total": ["VLAN"],
    "tapswitch_port_acl_dropped_total": ["ACL"],
    "tapswitch_port_mac_limit_dropped_total": ["mac_limit"],
    "tapswitch_port_storm_dropped_total": ["storm control"],
    "tapswitch_port_up": ["could not make"],
    "tapswitch_mirror_dropped_total": ["monitor port is down", "over its MTU", "refused the write"],
    "tapswitch_fdb_capacity": ["mac_table.size and a quarter more, rounded up to whole buckets of 8"],
    "tapswitch_fdb_evicted_total": ["bucket was full"],
    "tapswitch_worker_info": ["uring-burst", "readwrite"],
    "tapswitch_vxlan_remotes": ["broadcast, multicast and unknown unicast"],
}


@pytest.mark.parametrize("metric", sorted(HELP_AGREES_WITH_README))
def test_a_metrics_help_names_what_its_readme_row_names(exported, metric):
    help_text = exported[metric][2].lower()
    meaning = metric_table()[metric][2].replace("`", "").lower()
    for phrase in HELP_AGREES_WITH_README[metric]:
        assert phrase.lower() in meaning, f"README's {metric} row does not say {phrase!r}"
        assert phrase.lower() in help_text, f"# HELP {metric} does not say {phrase!r}"


def test_the_fdb_capacity_row_gives_the_slots_the_table_has():
    """tapswitch_fdb_capacity is a quarter more than mac_table.size in whole buckets of 8: the
    row said a quarter more, and a table of 16 has 24 slots, not 20 (the FdbNearlyFull alert
    and the FDB use panel divide by the metric, an operator who sizes the table by the row)."""
    meaning = metric_table()["tapswitch_fdb_capacity"][2].replace("`", "")
    examples = re.findall(r"size: (\d+) makes (\d+); the default (\d+), (\d+)", meaning)
    assert examples, f"the row's worked examples: {meaning!r}"
    ((size, slots, default, default_slots),) = examples
    assert int(default) == config.MacTable().size
    for entries, capacity in ((size, slots), (default, default_slots)):
        shared = fastpath.Shared.create(int(entries), 1)
        try:
            assert shared.fdb_capacity == int(capacity), entries
        finally:
            shared.close()


# --- Log events -----------------------------------------------------------------

def logged_events() -> set[str]:
    """Every `noun.verb` event the control process logs."""
    events = set()
    for path in SRC.glob("*.py"):
        events |= set(re.findall(r"""\(\s*["']([a-z_]+\.[a-z_0-9]+)["']""", path.read_text()))
    return events


def test_every_log_event_the_readme_quotes_is_logged():
    events = logged_events()
    nouns = {e.split(".")[0] for e in events} - {"tapswitch"}
    keys = {p.replace("[]", "") for p in schema()} | {p.replace("ports[].", "") for p in schema()}
    keys |= {p.replace("switch.", "", 1) for p in keys}
    quoted = set(re.findall(r"`([a-z_]+\.[a-z_0-9]+)`", README))
    claimed = {q for q in quoted if q.split(".")[0] in nouns and q not in keys}
    assert claimed, "no event found in the README: the pattern is wrong"
    assert sorted(claimed - events) == []


# --- Reload -----------------------------------------------------------------------

def test_the_settings_a_reload_refuses_are_the_ones_the_readme_lists():
    from tapswitch.reload import FIXED_KEYS
    prose = re.sub(r"\s+", " ", section("Command line"))
    m = re.search(r"An invalid config, or one that changes (.*?), changes nothing", prose)
    assert m, "the README's sentence on what a reload cannot change"
    listed = {tuple(re.sub(r"^switch\.", "", key).split(".")) for key in re.findall(r"`([^`]+)`", m[1])}
    assert listed == set(FIXED_KEYS)


def test_the_readme_names_every_setting_whose_change_makes_a_port_again():
    """reload.DEVICE_KEYS, and a VXLAN port's tunnel: the README said `remote…`, and a reload
    that set `allmulti` made the port again (its device went and came back) unannounced."""
    from tapswitch.reload import DEVICE_KEYS
    prose = re.sub(r"\s+", " ", section("Command line"))
    m = re.search(r"a port whose device settings changed \((.*?)\) is made again", prose)
    assert m, "the README's sentence on what a reload makes again"
    assert re.findall(r"`([^`]+)`", m[1]) == [*DEVICE_KEYS, "vxlan", "remotes"]


def test_the_readme_says_which_reloads_an_in_place_upgrade_refuses():
    """After an in-place upgrade to a fast path of another version, a reload that starts new
    workers is refused (Switch._workers_can_start, by Plan.ports_changed): the README said one
    that adds or removes a port, and "other reloads apply as ever", but a port made again (a
    device setting changed, or its TAP gone) starts new workers too, and is refused as well."""
    from tapswitch import reload as reload_mod
    old = config.loads("switch: {name: s}\nports: [{name: a}, {name: b}]\n")
    remade = reload_mod.plan(old, config.loads("switch: {name: s}\nports: [{name: a, mtu: 9000}, {name: b}]\n"))
    gone = reload_mod.plan(old, old, gone={"a"})
    updated = reload_mod.plan(old, config.loads("switch: {name: s}\nports: [{name: a, vlan: 2}, {name: b}]\n"))
    assert remade.ports_changed and gone.ports_changed and not updated.ports_changed
    quickstart = re.sub(r"\s+", " ", section("Quickstart"))
    assert "A reload that adds or removes a port, or makes one again" in quickstart
    row = " ".join(r[1] for r in table_rows(section("Command line")) if r[0] == "`tapswitch reload`")
    assert "one that adds, removes or makes again a port after an in-place upgrade" in row


# --- Alerts -----------------------------------------------------------------------

def test_the_readme_alert_table_is_the_alert_rules():
    rules = yaml.safe_load((ROOT / "dashboards" / "alerts.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r}
    table = {re.findall(r"`([^`]+)`", cells[0])[0] for cells in table_rows(section("Prometheus"))}
    assert table == alerts


def test_the_drops_alert_names_the_causes_of_rx_dropped_the_readme_names():
    """TapswitchDropsRising's description is what an operator paged reads first: it named neither
    the IEEE 802.1 group addresses the switch never relays nor a monitor port's frames, both
    rx_dropped in the README's table."""
    rules = yaml.safe_load((ROOT / "dashboards" / "alerts.yml").read_text())
    description, = [r["annotations"]["description"] for group in rules["groups"] for r in group["rules"]
                    if r.get("alert") == "TapswitchDropsRising"]
    meaning = metric_table()["tapswitch_port_rx_dropped_total"][2]
    for cause in ("down", "isolated", "flood", "came", "01:80:C2:00:00:01", "monitor port"):
        assert cause in meaning and cause in description, cause


# --- Control socket -----------------------------------------------------------------

def test_the_readme_says_the_mode_of_the_directories_made_for_the_socket(tmp_path):
    """The README said the directories made for the control socket were "mode 0755 ... whatever
    the umask": under a umask of 077 they are 0700, as mkdir makes them (what no umask changes is
    that no one but root may write in them)."""
    row = dict((r[0], r[1]) for r in table_rows(section("Configuration")))["`switch.control.socket`"]
    path = tmp_path / "a" / "b" / "sw.sock"
    old = os.umask(0o077)
    try:
        control._make_dir(str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o755 & ~0o077
    assert "mode 0755 less the umask" in row


# --- Remote ports -------------------------------------------------------------------

def test_the_readme_mode_table_says_which_modes_put_iface_in_promiscuous_mode():
    """`shared` puts IFACE in promiscuous mode (a NIC's unicast filter would drop the frames
    for the MACs behind the switch before tc saw them), and its row did not say so: a user
    sharing a laptop's NIC with its containers found the NIC promiscuous, unexplained."""
    rows = {row[0].strip("`"): row[1] for row in table_rows(section("Attach a NIC or a VM"))
            if row[0].strip("`") in remote.MODES}
    assert set(rows) == set(remote.MODES)
    for mode, arriving in rows.items():
        promisc = remote.iface_flags(mode, None, "02:00:00:00:00:01", False).get("promisc", False)
        assert ("IFACE is put in promiscuous mode" in arriving) == promisc, mode


# --- Environment ------------------------------------------------------------------

def test_the_readme_names_every_value_tapswitch_io_takes():
    """`TAPSWITCH_IO=uring-burst` and `auto` were taken and never named, and the README did not
    say that any other value fails the start."""
    assert set(re.findall(r"`TAPSWITCH_IO=([a-z-]+)`", README)) == set(fastpath.IO_BACKENDS)


def test_the_readme_names_the_counters_of_ports_json():
    """`tapswitch ports --json` holds exactly the keys the README lists, and its `counters` are
    keys too: a script reading `flooded` (not the metric's `flooded_packets`) or `rx_missed`
    had only the output itself to learn them from."""
    prose = re.sub(r"\s+", " ", section("Command line"))
    m = re.search(r"a port's `counters` are (.*?) \(", prose)
    assert m, "the README's sentence on the counters of `ports --json`"
    assert set(re.findall(r"`([a-z_]+)`", m[1])) == {*fastpath.COUNTERS, "rx_missed"}


def test_the_readme_names_the_keys_and_states_of_queues_down_and_quotes_its_lines_as_ports_prints_them():
    """`tapswitch ports --json`'s `queues_down` (the queues whose worker does not run) holds
    objects of exactly the keys the README lists, in the states it names, and the lines the
    README quotes are those `tapswitch ports` prints for them."""
    from tapswitch import supervisor
    row = " ".join(r[1] for r in table_rows(section("Command line")) if r[0].startswith("`tapswitch ports"))
    m = re.search(r"`queues_down` .*?each `\{([^}]*)\}`", row)
    assert m, "the README's sentence on the keys of `queues_down`"
    sup = supervisor.Supervisor(-1, 2)
    w = sup.workers[1]
    w.down_since, w.down_error = 1796675465.0, "killed by SIGKILL"      # 2026-12-07T20:31:05Z
    [restarting] = sup.queues_down()
    assert set(re.findall(r'"([a-z_]+)"', m[1])) == set(restarting)
    w.retry_at, w.down_error = time.monotonic() + 60, "exited with code 1"
    [held] = sup.queues_down()
    assert {restarting["state"], held["state"]} == {"restarting", "held back"}
    assert f"`state` `{restarting['state']}` or `{held['state']}`" in row
    quoted = re.findall(r"`(queue 1: worker [^`]*)`", row)
    assert quoted[0] == cli.queue_down_line(restarting)
    held["until"] = "2026-12-07T20:31:06Z"      # the README's: a second on, not for good
    assert quoted[1:] == [cli.queue_down_line(held)]



def test_the_ports_row_states_how_long_a_held_back_worker_waits_as_the_supervisor_does():
    """The `tapswitch ports` row said a held-back worker waits "1 s, then twice as long, up to
    30 s, each time a restart fails or is held back": since a crash loop (CRASH_LOOP_RESTARTS
    restarts within CRASH_LOOP_WINDOW) holds back a worker that ran RESTART_WINDOW seconds
    between deaths BACKOFF each time (supervisor._ran), not twice as long, it said otherwise
    than "How it works" and the supervisor. Its numbers are the supervisor's."""
    from tapswitch import supervisor
    row = re.sub(r"\s+", " ", " ".join(r[1] for r in table_rows(section("Command line"))
                                       if r[0].startswith("`tapswitch ports")))
    assert "each time a restart fails or is held back" not in row
    assert (f"the switch waits before the next, {supervisor.BACKOFF:g} s, then twice as long, up to "
            f"{supervisor.RETRY_MAX:g} s, each time a restart fails or the worker dies again within "
            f"{supervisor.RESTART_WINDOW:g} s of its restart; one that runs {supervisor.RESTART_WINDOW:g} s "
            f"or more between deaths waits {supervisor.BACKOFF:g} s each time while its crash loop lasts "
            f"({supervisor.CRASH_LOOP_RESTARTS} restarts within {supervisor.CRASH_LOOP_WINDOW:g} s)") in row

# --- Performance -------------------------------------------------------------------

RESULTS = (ROOT / "bench" / "RESULTS.md").read_text()
HISTORY = (ROOT / "bench" / "HISTORY.md").read_text()


def results_table() -> dict[str, dict[str, str]]:
    """{metric: {system: cell}} of RESULTS.md's table at the top (the latest full run's)."""
    lines = [line for line in RESULTS.split("\n## ")[0].splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].split("|")[1:-1]]
    out = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        out[cells[1]] = dict(zip(head[3:], cells[3:]))
    return out


def numbers(cell: str) -> list[str]:
    """The figures of a cell as written ("0.600 Mpps (1.27×)": ["0.600", "1.27"]), ratios too."""
    return re.findall(r"\d[\d,]*(?:\.\d+)?", cell.replace(",", ""))


def same(readme: str, results: str) -> bool:
    """`readme` is `results` rounded to as many decimals as the README writes."""
    decimals = len(readme.partition(".")[2])
    return round(float(results), decimals) == float(readme)


# The README's rows: (its label, the RESULTS.md metric, the tapswitch column it quotes).
PERFORMANCE_ROWS = [
    ("TCP, 1 flow, 1 queue", "TCP goodput, 1 flow", "tapswitch-q1"),
    ("TCP, 4 flows, 2 queues", "TCP goodput, 4 flows", "tapswitch-q2"),
    ("64 B throughput (RFC 2544", "throughput (loss < 0.1 %), 64 B", "tapswitch-q1"),
    ("64 B at the generator's full speed", "forwarding rate, 64 B", "tapswitch-q1"),
    ("worker CPU per forwarded 64 B frame", "switch CPU per forwarded frame, 64 B", "tapswitch-q1"),
    ("new MACs learned per second", "new MACs learned per second", "tapswitch-q1"),
    ("start to READY", "start to forwarding, 16 ports", "tapswitch-q2"),
    ("memory (PSS", "memory (PSS, all processes), 16 ports", "tapswitch-q2"),
]


def performance_rows() -> dict[str, list[str]]:
    """{first cell: the other cells} of the README's table under "Performance"."""
    rows = {}
    for line in section("Performance").splitlines():
        if line.startswith("| ") and not line.startswith(("| case", "|---")):
            cells = [c.strip() for c in line.split("|")[1:-1]]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize("label,metric,column", PERFORMANCE_ROWS)
def test_the_readme_performance_table_is_the_results_tables(label, metric, column):
    """Each figure of the README's table (tapswitch, bridge, bare, Open vSwitch) is RESULTS.md's
    top table's, rounded as the README writes it, ratios included: a new full run in RESULTS.md
    and a README still on the run before are told apart."""
    [cells] = [c for name, c in performance_rows().items() if name.startswith(label)]
    results = results_table()[metric]
    for cell, system in zip(cells, [column, "bridge", "bare", "ovs"]):
        got = numbers(cell)
        if not got:
            continue
        want = numbers(results[system])
        assert len(got) <= len(want) and all(same(g, w) for g, w in zip(got, want)), (label, system, cell)


def test_the_readme_performance_light_load_and_table_ratio_rows_are_the_results_tables():
    """The light-load row (1k / 10k / 100k frames/s) and the 1M-against-1K ratio, computed."""
    rows, results = performance_rows(), results_table()
    [light] = [c for name, c in rows.items() if name.startswith("worker CPU at 1k")]
    for cell, system in zip(light, ["tapswitch-q1", "bridge", "bare", "ovs"]):
        got = numbers(cell)
        if got:
            want = [numbers(results[f"switch CPU at {n} frames/s, 64 B"][system])[0] for n in ("1k", "10k", "100k")]
            assert all(same(g, w) for g, w in zip(got, want)) and len(got) == 3, (system, cell)
    [fdb] = [c for name, c in rows.items() if name.startswith("64 B to 1M")]
    rate = {n: float(numbers(results[f"forwarding rate to {n} MACs, 64 B"]["tapswitch-q1"])[0]) for n in ("1M", "1K")}
    assert same(numbers(fdb[0])[0], str(rate["1M"] / rate["1K"]))


def test_the_readme_says_which_run_the_performance_table_is():
    """The README dates its table; RESULTS.md's top table is that run."""
    m = re.search(r"^Run (\d{4}-\d\d-\d\d \d\d:\d\d)", RESULTS, re.M)
    assert m and f"the full run of {m[1]}" in re.sub(r"\s+", " ", section("Performance"))


def test_the_readme_performance_section_names_the_latest_full_run():
    """HISTORY.md's newest "Against the targets: ... full run" section is the latest full run,
    newer than RESULTS.md's table; the README spoke of the table's run as the latest and of
    64 B against Open vSwitch as short of 2× after runs that put it on the line."""
    m = re.search(r"^## Against the targets: .*full run.*\((\d{4}-\d\d-\d\d) (\d\d:\d\d), ([0-9a-f]{7})\)",
                  HISTORY, re.M)
    assert m, "HISTORY.md's latest full run"
    prose = re.sub(r"\s+", " ", section("Performance"))
    assert f"{m[1]} {m[2]} on the code of {m[3]}" in prose


def test_the_readme_performance_section_states_the_defaults_it_names():
    """Busy polling's default and the queue length the bench gives Open vSwitch are the config's."""
    prose = re.sub(r"\s+", " ", section("Performance"))
    assert f"(`switch.busy_poll_us`, default {config.BUSY_POLL_US} µs)" in prose
    assert f"tapswitch's queue length ({config.QUEUE_LEN} frames)" in prose


def test_how_it_works_states_the_supervisors_and_the_watchdogs_numbers():
    """The restart, back-off, watchdog and aging figures "How it works" gives are the code's."""
    from tapswitch import supervisor, switch
    prose = re.sub(r"\s+", " ", section("How it works"))
    assert f"not set up within {supervisor.READY_TIMEOUT:g} seconds" in prose
    assert (f"({supervisor.RESTART_BURST} restarts within {supervisor.RESTART_WINDOW:g} seconds, or "
            f"{supervisor.CRASH_LOOP_RESTARTS} restarts within {supervisor.CRASH_LOOP_WINDOW:g} seconds whatever the gaps") in prose
    assert (f"one that runs {supervisor.RESTART_WINDOW:g} seconds is held back a second again when it next dies while its "
            f"crash loop lasts (its last {supervisor.CRASH_LOOP_RESTARTS} restarts within "
            f"{supervisor.CRASH_LOOP_WINDOW:g} seconds)") in prose
    words = {1: "a", 3: "three"}
    assert (f"is held back before its next restart, {words[int(supervisor.BACKOFF)]} second, and twice as long "
            f"each time it dies again before it has run {supervisor.RESTART_WINDOW:g} seconds, "
            f"up to {supervisor.RETRY_MAX:g} seconds") in prose
    assert f"{words[supervisor.SPAWN_TRIES]} tries in all" in prose
    assert f"at most {supervisor.RETRY_MAX:g} seconds" in prose
    assert f"({config.WATCHDOG_MS // 1000} seconds by default" in prose
    assert f"at most {supervisor.WATCHED_MAX:g} seconds of any stretch" in prose
    assert f"three of its passes (some {3 * switch.AGING_STEPS * switch.TICK:g} seconds)" in prose


def test_the_bench_readme_says_how_long_the_run_of_results_took():
    """bench/README.md said a full run takes ~30 min; RESULTS.md's took 1529 s (~26 min)."""
    took = re.search(r"^Run .* in (\d+) s:", RESULTS, re.M)[1]
    bench = (ROOT / "bench" / "README.md").read_text()
    m = re.search(r"~(\d+) min with Open vSwitch \(RESULTS\.md: (\d+) s\)", bench)
    assert m and m[2] == took and int(m[1]) == round(int(took) / 60)

# --- Tests -------------------------------------------------------------------------

def test_the_readme_tests_section_names_every_tool_the_test_script_installs():
    """scripts/test.sh runs as root on Debian and apt-gets these; the README said only that the
    integration tests need root."""
    script = (ROOT / "scripts" / "test.sh").read_text()
    tools = re.search(r"^tools=\(([^)]*)\)", script, re.M)[1].split()
    prose = re.sub(r"\s+", " ", section("Tests"))
    assert [t for t in tools if not re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", prose)] == []
    assert "root on Debian" in prose

"""The control socket of a real switch, spoken to directly: bad requests, as no CLI would send them."""

import json
import random
import socket

from tapswitch import control
from tests.integration import helpers
from tests.integration.test_switch import containers

STATIC_MAC = "02:00:00:00:ee:01"     # `fdb add`'s entry, on the first port: what a refused fdb_del keeps
NEW_MAC = "02:00:00:00:ee:02"        # what a refused fdb_add does not add

# Values of the wrong JSON type for any field (NaN and the infinities as json.dumps writes them:
# NaN, Infinity); RAW_NUMBERS: numbers as JSON text, as Python's json reads them.
WRONG_TYPES = [[], ["x"], {}, {"name": "x"}, True, False, 1.5, 0, -1, 10 ** 30, -(10 ** 30), 2 ** 64,
               json.loads("NaN"), float("inf"), float("-inf")]
RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-0", "1" + "0" * 200]


def not_a_port(port: str) -> list:
    return ["", "nosuchport", port + "x", port.upper(), " " + port, port + "\n", "\x00", "\ud800",
            "x" * 5000, [port], {"name": port}]


NOT_A_VLAN = [0, 4095, 4096, -1, "1", "", 1.0, True, [1], {"vlan": 1}]
NOT_A_MAC = ["", "02:00:00:00:00", "02:00:00:00:00:zz", "02:00:00:00:00:10:11", "0200.0000.0010",
             "02:00-00:00:00:10", "\ud800", "m" * 5000, 0x020000000010, [STATIC_MAC], {"mac": STATIC_MAC}]
NOT_UNICAST = ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"]


def ask(path: str, data: bytes, shut: bool = False) -> list[bytes]:
    """Send `data` on one connection (then say no more, if `shut`) and read until the switch
    closes it: its lines. A connection the switch keeps open fails the test (the timeout)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(1 << 16):
            reply += chunk
    return reply.splitlines(keepends=True)


def refusals(port: str) -> list[tuple[str, bytes]]:
    """Requests every one of which the switch refuses, each with the words (|) one of which its
    error must name; `port` is a port of the switch."""
    good = {"fdb_add": {"mac": NEW_MAC, "port": port, "vlan": 1},
            "fdb_del": {"mac": STATIC_MAC, "vlan": 1, "port": port}}
    bad = {"port": not_a_port(port) + WRONG_TYPES, "vlan": NOT_A_VLAN + WRONG_TYPES,
           "mac": NOT_A_MAC + WRONG_TYPES}
    out = []

    def refused(word: str, req: dict):
        out.append((word, json.dumps(req).encode() + b"\n"))

    for cmd, fields in good.items():
        for field in fields:
            for value in bad[field]:
                refused(field, {"cmd": cmd, **fields, field: value})
        for value in NOT_UNICAST:
            refused("unicast", {"cmd": cmd, **fields, "mac": value})
        refused("mac", {"cmd": cmd, **{k: v for k, v in fields.items() if k != "mac"}})     # missing
    refused("port", {"cmd": "fdb_add", "mac": NEW_MAC, "vlan": 1})
    # fdb_add with unknown fields, and its port not among them: still refused
    refused("port", {"cmd": "fdb_add", "mac": NEW_MAC, "prt": port, "colour": "blue"})
    for field in bad:           # the listing's filters (null, or absent: no filter)
        for value in bad[field]:
            refused(field, {"cmd": "fdb", field: value})
    for value in bad["port"]:   # fdb_flush's port (null, or absent: every port's)
        refused("port", {"cmd": "fdb_flush", "port": value})
    for cmd in [None, "", "nosuch", "PORTS", "ports ", "fdb-add", "__init__", "get", 1, True, ["ports"],
                {"cmd": "ports"}]:
        refused("cmd" if not isinstance(cmd, str) else "command", {"cmd": cmd})
    refused("cmd", {"command": "ports"})
    for token in RAW_NUMBERS:   # parsed as JSON allows, refused as a field's value
        out.append(("vlan", b'{"cmd": "fdb", "vlan": %s}\n' % token.encode()))
        out.append(("port", b'{"cmd": "fdb_flush", "port": %s}\n' % token.encode()))
        out.append(("cmd", b'{"cmd": %s}\n' % token.encode()))
    out.append(("json", b'{"cmd": "fdb", "vlan": 1' + b"0" * 5000 + b"}\n"))     # more digits than int() reads
    # Nested deep, just within what the parser takes, and just beyond: its repr in the error too.
    for depth in range(940, 1000, 3):
        out.append(("port|nested", b'{"cmd": "fdb_flush", "port": ' + b"[" * depth + b"]" * depth + b"}\n"))
    # Not a request at all.
    for line in [b"\n", b"   \n", b"\xff\xfe\n", b'{"cmd": "ports"\xff}\n', b"[]\n", b"null\n", b'"ports"\n',
                 b"1\n", b"{\n", b'{"cmd": "ports"} {"cmd": "ports"}\n', b'{"cmd": "ports",}\n',
                 b"\x00\n", '{"cmd": "ports"}\u2028\n'.encode(), b"[" * 5000 + b"\n"]:
        out.append(("json|empty", line))
    # Several fields wrong at once, of any command that changes or picks: drawn, the same each run.
    draw = random.Random(8)
    for _ in range(150):
        cmd = draw.choice(["fdb_add", "fdb_del", "fdb_flush", "fdb"])
        fields = dict(good.get(cmd, {"port": port}))
        wrong = draw.sample(sorted(fields) if cmd != "fdb" else sorted(bad),
                            draw.randint(1, 2 if cmd != "fdb_flush" else 1))
        for field in wrong:
            fields[field] = draw.choice(bad[field])
        fields.update(draw.choice([{}, {"colour": "blue"}, {"port ": port, "Mac": NEW_MAC}]))
        refused("|".join(wrong), {"cmd": cmd, **{k: v for k, v in fields.items() if cmd != "fdb" or k in wrong}})
    return out


def not_refused(lines: list[bytes], words: list[str]) -> str | None:
    """Why `lines` is not one error reply naming one of `words`, or None if it is."""
    if len(lines) != 1 or not lines[0].endswith(b"\n"):
        return "not one line"
    try:
        reply = json.loads(lines[0])
    except ValueError:
        return "not JSON"
    if not isinstance(reply, dict) or reply.get("ok") is not False or not isinstance(reply.get("error"), str):
        return "not an error"
    if not any(word.lower() in reply["error"].lower() for word in words):
        return f"does not name {' or '.join(words)}"
    return None


def test_bad_requests_are_refused_with_a_reason_and_change_nothing(lab):
    """Every command with each field missing, of the wrong type, out of range, not a port; not
    JSON, not a request: an error reply naming what is wrong, never a traceback, a hung
    connection, or a change to the MAC table or the ports; the switch forwards and answers on."""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg)
    a, b = cfg["ports"][0], cfg["ports"][1]
    assert helpers.ping(a["netns"], "198.18.0.2") and helpers.ping(b["netns"], "198.18.0.1")
    sw.cli("fdb", "add", STATIC_MAC, "--port", a["name"])

    def table():
        return sorted((e["mac"], e["vlan"], e["port"], e["static"]) for e in sw.cli_json("fdb"))

    def ports():
        return [{k: v for k, v in p.items() if k not in ("counters", "queue_counters")} for p in sw.cli_json("ports")]

    fdb_before, ports_before = table(), ports()
    assert (STATIC_MAC, 1, a["name"], True) in fdb_before and len(fdb_before) >= 3

    cases = refusals(a["name"])
    random.Random(8).shuffle(cases)     # requests in no order a handler could lean on
    wrong = []
    for words, line in cases:
        lines = ask(sw.socket, line)
        if (why := not_refused(lines, words.split("|"))) is not None:
            wrong.append(f"{line[:100]!r}: {why}: {b''.join(lines)[:200]!r}")
        if table() != fdb_before:
            wrong.append(f"{line[:120]!r}: changed the MAC table: {table()} (was {fdb_before})")
            fdb_before = table()
    assert wrong == [], "\n".join(wrong)
    assert ports() == ports_before
    assert "Traceback" not in sw.log()
    assert helpers.ping(a["netns"], "198.18.0.2")
    assert sw.cli("ports").returncode == 0


def test_one_request_per_connection_however_it_comes(lab):
    """A line without its newline, then EOF, is served; a second request on the connection is
    not read (one per connection: control.py); a connection closed unasked is closed back; a
    line longer than a request may be is refused saying so, and its client reads that. None
    hangs, and the switch answers on."""
    sw = lab.switch(containers(lab, 2, queues=1))
    served = ask(sw.socket, b'{"cmd": "ports"}', shut=True)
    assert len(served) == 1 and json.loads(served[0])["ok"] is True
    helpers.wait_for("a learned entry", lambda: sw.cli_json("fdb"))
    two = ask(sw.socket, b'{"cmd": "fdb"}\n{"cmd": "fdb_flush"}\n', shut=True)
    assert len(two) == 1 and json.loads(two[0])["result"]      # the listing; the flush never came
    assert sw.cli_json("fdb")
    assert ask(sw.socket, b"", shut=True) == []
    whole = b'{"cmd": "fdb_flush", "port": "' + b"x" * (control.MAX_REQUEST - 32) + b'"}'
    assert len(whole) == control.MAX_REQUEST        # all a request may be, and EOF: read, and refused for its port
    assert json.loads(ask(sw.socket, whole, shut=True)[0])["error"].startswith("no port named 'xxx")
    for size in (control.MAX_REQUEST + 1, 10 * control.MAX_REQUEST):
        lines = ask(sw.socket, b'{"cmd": "fdb_flush", "port": "' + b"x" * size + b'"}\n')
        assert len(lines) == 1 and json.loads(lines[0]) == {
            "ok": False, "error": f"a request is one line of at most {control.MAX_REQUEST} bytes; this one is longer"}
    assert sw.cli_json("fdb")                           # none of it flushed the table
    assert "Traceback" not in sw.log()
    assert sw.cli("ports").returncode == 0


def test_fields_a_command_does_not_know_are_ignored_and_null_filters_pick_nothing(lab):
    """What control.py promises a client newer than the switch: unknown fields are let be (a
    listing says which filters it applied); a reload with them is a reload, which changes
    nothing when the config has not changed."""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.0.2")
    ports = [p["name"] for p in sw.cli_json("ports")]
    fdb = sorted(e["mac"] for e in sw.cli_json("fdb"))
    assert ports == [p["name"] for p in cfg["ports"]] and fdb
    junk = {"colour": "blue", "Port": "x", "": None, "cmd ": "fdb_flush", "nested": {"a": [1, None, 1.5]}}
    assert [p["name"] for p in control.request(sw.socket, "ports", **junk)] == ports
    for filters in ({}, {"port": None, "vlan": None, "mac": None}):
        reply = json.loads(ask(sw.socket, json.dumps({"cmd": "fdb", **junk, **filters}).encode() + b"\n")[0])
        assert "filters" not in reply and sorted(e["mac"] for e in reply["result"]) == fdb
    assert control.request(sw.socket, "reload", **junk)["ok"] is True
    assert [p["name"] for p in sw.cli_json("ports")] == ports and sorted(e["mac"] for e in sw.cli_json("fdb")) == fdb
    assert "Traceback" not in sw.log()
    assert helpers.ping(cfg["ports"][1]["netns"], "198.18.0.1")

"""The control socket's server: answering, and stopping without waiting out serve_forever's poll."""

import contextlib
import errno
import json
import os
import select
import shutil
import socket
import socketserver
import stat
import subprocess
import tempfile
import threading
import time

import pytest
import structlog

from tapswitch import control
from tapswitch.control import ControlError, ControlServer, stop_serving

LONG_POLL = 60          # serve_forever's poll: a stop that waited it out would take this long


@pytest.fixture
def scratch():
    """mkdtemp() for a test: short paths (a unix socket's is at most 107 bytes, which tmp_path's
    may pass), removed with what is left in them afterwards, whatever became of the test."""
    made = []

    def mkdtemp() -> str:
        made.append(tempfile.mkdtemp())
        return made[-1]
    yield mkdtemp
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def ask(path: str, request: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(request)
        return json.loads(s.makefile().readline())


def test_stop_does_not_wait_for_the_poll_and_an_empty_connection_is_no_error(scratch, capfd):
    path = os.path.join(scratch(), "ctl.sock")
    server = ControlServer(path, {"echo": lambda r: r["x"]})
    server.thread = threading.Thread(target=server.serve_forever, args=(LONG_POLL,), daemon=True)
    server.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)                       # and close, saying nothing
    assert ask(path, b'{"cmd": "echo", "x": 7}\n') == {"ok": True, "result": 7}
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < LONG_POLL / 2
    assert not server.thread.is_alive() and not os.path.exists(path)
    assert "Traceback" not in capfd.readouterr().err
    server.release()
    os.rmdir(os.path.dirname(path))


def test_stop_serving_a_tcp_server_on_every_address():
    server = socketserver.TCPServer(("0.0.0.0", 0), socketserver.StreamRequestHandler)
    thread = threading.Thread(target=server.serve_forever, args=(LONG_POLL,), daemon=True)
    thread.start()
    start = time.monotonic()
    stop_serving(server)
    assert time.monotonic() - start < LONG_POLL / 2
    thread.join(5)
    assert not thread.is_alive()
    server.server_close()


def serve(path: str) -> ControlServer:
    server = ControlServer(path, {"echo": lambda r: r["x"]})
    server.start()
    assert ask(path, b'{"cmd": "echo", "x": 1}\n') == {"ok": True, "result": 1}
    return server


@contextlib.contextmanager
def serving():
    """serve() at a socket in a directory of its own, stopped and taken away after; its path.
    The log may hold no traceback."""
    path = os.path.join(tempfile.mkdtemp(), "ctl.sock")
    server = serve(path)
    try:
        yield path
    finally:
        server.stop()
        server.release()
        os.rmdir(os.path.dirname(path))


def test_the_directories_made_for_the_socket_go_when_the_switch_is_done(scratch):
    root = scratch()
    path = os.path.join(root, "run", "tapswitch", "sw.sock")
    server = serve(path)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) & 0o755 == 0o755
    server.stop()
    assert os.path.isdir(os.path.dirname(path))       # stop() leaves them: state may live beside the socket
    server.release()
    assert os.listdir(root) == []                     # both made, both gone; the one that was there stays
    os.rmdir(root)


def test_a_directory_that_was_there_or_is_not_empty_stays(scratch):
    there = scratch()
    server = serve(os.path.join(there, "sw.sock"))
    server.stop()
    server.release()
    assert os.path.isdir(there) and os.listdir(there) == []
    os.rmdir(there)

    root = scratch()
    made = os.path.join(root, "tapswitch")
    server = serve(os.path.join(made, "a.sock"))
    other = serve(os.path.join(made, "b.sock"))       # a second switch in the directory the first made
    server.stop()
    server.release()
    assert sorted(os.listdir(made)) == ["b.sock", "b.sock.lock"]     # the other's socket keeps it
    other.stop()
    other.release()                                # it did not make it: it stays
    assert os.listdir(made) == []
    os.rmdir(made)
    os.rmdir(root)


def test_a_failed_bind_takes_the_directories_it_made_with_it(scratch):
    root = scratch()
    path = os.path.join(root, "made", "x" * 120 + ".sock")     # past AF_UNIX's 108 bytes
    with pytest.raises(OSError):
        ControlServer(path, {})
    assert os.listdir(root) == []
    os.rmdir(root)


def test_a_socket_directory_that_cannot_be_made_whole_leaves_none_of_its_parents(scratch):
    """mkdir failing part of the way down (here ENOSPC: a tmpfs with inodes for two directories
    more) left the parents it had made, as os.makedirs does: the start failed, and its
    directories stayed."""
    root = scratch()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nr_inodes=3,size=1m", "tsctl", root], check=True)
    try:
        with pytest.raises(OSError) as raised:
            ControlServer(os.path.join(root, "a", "b", "c", "sw.sock"), {})
        assert raised.value.errno == errno.ENOSPC
        assert os.listdir(root) == []
    finally:
        subprocess.run(["umount", root], check=True)


def gated_server(path: str, gate: threading.Event, **more) -> ControlServer:
    """A server whose "wait" command answers once `gate` is set (or after 5 s)."""
    server = ControlServer(path, {"wait": lambda r: gate.wait(5), **more})
    server.start()
    return server


def test_a_switch_that_does_not_answer_is_a_control_error_naming_it(monkeypatch):
    monkeypatch.setattr(control, "CLIENT_TIMEOUT", 0.3)
    path = os.path.join(tempfile.mkdtemp(), "ctl.sock")
    gate = threading.Event()
    server = gated_server(path, gate)
    try:
        with pytest.raises(ControlError) as e:
            control.request(path, "wait")
        assert str(e.value) == f"no answer from the switch on {path} within 0.3 s"
    finally:
        gate.set()
        server.stop()
        server.release()
        os.rmdir(os.path.dirname(path))


def test_a_reload_is_waited_for_longer_than_the_switch_waits_for_it(monkeypatch):
    """The switch answers a reload when it is done, or after RELOAD_WAIT: the client waits longer."""
    monkeypatch.setattr(control, "CLIENT_TIMEOUT", 0.3)
    monkeypatch.setattr(control, "RELOAD_WAIT", 1.0)
    path = os.path.join(tempfile.mkdtemp(), "ctl.sock")
    server = ControlServer(path, {"reload": lambda r: time.sleep(0.8) or {"ok": True}})
    server.start()
    try:
        assert control.request(path, "reload") == {"ok": True}
    finally:
        server.stop()
        server.release()
        os.rmdir(os.path.dirname(path))


def logged(logs: list, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(logs) < n and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_client_that_stalls_or_goes_away_is_a_log_line_not_a_traceback(monkeypatch, capfd):
    monkeypatch.setattr(control._Handler, "timeout", 0.3)
    path = os.path.join(tempfile.mkdtemp(), "ctl.sock")
    gate = threading.Event()
    server = gated_server(path, gate)
    try:
        with structlog.testing.capture_logs() as logs:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                s.sendall(b'{"cmd": "wait"}')          # no newline: the request never ends
                logged(logs, 1)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                s.sendall(b'{"cmd": "wait"}\n')        # and gone before the answer
            gate.set()
            logged(logs, 2)
            assert ask(path, b'{"cmd": "wait"}\n') == {"ok": True, "result": True}    # still serving
        events = [(e["event"], e["log_level"]) for e in logs]
        assert events == [("control.client_timed_out", "warning"), ("control.client_gone", "debug")], logs
    finally:
        gate.set()
        server.stop()
        server.release()
        os.rmdir(os.path.dirname(path))
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("flushed, text", [(0, "flushed 0 entries"), (1, "flushed 1 entry"), (2, "flushed 2 entries")])
def test_fdb_flush_says_how_many_entries_went(monkeypatch, capsys, flushed, text):
    from tapswitch import cli
    monkeypatch.setattr(cli, "_request", lambda args, cmd, **kw: {"flushed": flushed})
    assert cli.main(["fdb", "flush", "-s", "/nonexistent.sock"]) == cli.EXIT_OK
    assert capsys.readouterr().out == text + "\n"


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_a_socket_directory_others_may_write_to_is_refused_before_anything_is_made(mode):
    """The switch, as root, writes its state file beside the socket: a symlink another user
    planted there would have it overwrite any file."""
    root = tempfile.mkdtemp()
    os.chmod(root, mode)
    try:
        with pytest.raises(ControlError) as e:
            ControlServer(os.path.join(root, "sw.sock"), {})
        assert str(e.value).startswith(f"control socket {root}/sw.sock: {root} is writable by its group or "
                                       f"by others (mode {mode:04o}); another user could replace the socket")
        if not mode & stat.S_ISVTX:      # nor may one above, unless sticky (see below)
            with pytest.raises(ControlError):
                ControlServer(os.path.join(root, "made", "sw.sock"), {})
        assert os.listdir(root) == []
    finally:
        os.rmdir(root)


def test_a_socket_directory_may_be_made_in_a_sticky_one_such_as_tmp():
    root = tempfile.mkdtemp()
    os.chmod(root, 0o1777)
    path = os.path.join(root, "made", "sw.sock")
    try:
        server = serve(path)
        server.stop()
        server.release()
        assert os.listdir(root) == []
    finally:
        os.rmdir(root)


def test_a_socket_directory_of_another_user_is_refused():
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    root = tempfile.mkdtemp()
    os.chown(root, 65534, 65534)
    try:
        with pytest.raises(ControlError) as e:
            ControlServer(os.path.join(root, "sw.sock"), {})
        assert f"{root} belongs to uid 65534;" in str(e.value)
    finally:
        os.rmdir(root)


def test_another_users_symlink_on_the_way_to_the_socket_is_refused():
    """/tmp/x -> a directory of root's passed, as its target is root's: but the symlink, in a
    sticky directory, is its owner's to remove and make again, pointing at a directory of
    their own once the switch has looked, where they plant <socket>.state.tmp -> any file."""
    if os.geteuid() != 0:
        pytest.skip("lchown needs root")
    root, target = tempfile.mkdtemp(), tempfile.mkdtemp()
    os.chmod(root, 0o1777)
    link = os.path.join(root, "x")
    os.symlink(target, link)
    os.lchown(link, 65534, 65534)
    try:
        with pytest.raises(ControlError) as e:
            ControlServer(os.path.join(link, "sw.sock"), {})
        assert f"{link} is a symlink of uid 65534;" in str(e.value)
        assert os.listdir(target) == []
    finally:
        shutil.rmtree(root)
        shutil.rmtree(target)       # and what a switch that was let listen there left


def test_a_socket_directory_another_user_makes_while_the_switch_looks_is_refused(monkeypatch):
    """In a sticky directory (/tmp) another user may make the socket's directory after the
    switch has found it missing and before it makes it: the switch found it there, took it
    for one a switch made meanwhile, and bound and wrote its state file in it."""
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    root = tempfile.mkdtemp()
    os.chmod(root, 0o1777)
    theirs = os.path.join(root, "made")
    mkdir = os.mkdir

    def made_first_by_them(name, *args, **kwargs):
        mkdir(name, 0o777)
        os.chown(name, 65534, 65534)
        return mkdir(name, *args, **kwargs)

    monkeypatch.setattr(control.os, "mkdir", made_first_by_them)
    try:
        with pytest.raises(ControlError) as e:
            ControlServer(os.path.join(theirs, "sw.sock"), {})
        assert f"{theirs} belongs to uid 65534;" in str(e.value)
        assert os.listdir(theirs) == []
    finally:
        shutil.rmtree(root)


def test_a_socket_directory_another_user_makes_after_a_stopping_switch_took_it_away_is_refused(monkeypatch):
    """The directory was there (another switch's, made for it), and looked at; that switch,
    stopping, removes it before the lock is taken in it, and the switch makes it again: in a
    sticky directory (/tmp) another user may make it first, which the switch took for one made
    meanwhile by a switch, and bound and wrote its state file in it."""
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    root = tempfile.mkdtemp()
    os.chmod(root, 0o1777)
    theirs = os.path.join(root, "made")
    os.mkdir(theirs, 0o755)         # the stopping switch's, root's
    lock = control._lock
    calls = []

    def taken_away_then_made_by_them(path):
        calls.append(path)
        if len(calls) == 1:
            os.rmdir(theirs)            # the other switch's release()
            os.mkdir(theirs, 0o777)     # and another user's, at once
            os.chmod(theirs, 0o777)
            os.chown(theirs, 65534, 65534)
            raise FileNotFoundError(2, "No such file or directory")
        return lock(path)

    monkeypatch.setattr(control, "_lock", taken_away_then_made_by_them)
    try:
        with pytest.raises(ControlError) as e:
            server = ControlServer(os.path.join(theirs, "sw.sock"), {})
            server.server_close()
            server.release()
        assert f"{theirs} belongs to uid 65534;" in str(e.value)
        assert os.listdir(theirs) == []
    finally:
        shutil.rmtree(root)


def test_the_directories_made_for_the_socket_are_writable_by_root_alone_whatever_the_umask():
    """os.makedirs made the parents 0777 less the umask: under a umask of 0, /tmp/a of
    /tmp/a/b/sw.sock was writable by anyone, who could put a directory of their own for b."""
    root = tempfile.mkdtemp()
    os.chmod(root, 0o1777)
    path = os.path.join(root, "a", "b", "sw.sock")
    old = os.umask(0)
    try:
        server = serve(path)
        os.umask(old)
        for directory in (os.path.join(root, "a"), os.path.join(root, "a", "b")):
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o755, directory
        server.stop()
        server.release()
        assert os.listdir(root) == []
    finally:
        os.umask(old)
        shutil.rmtree(root)


def test_a_request_nested_too_deep_for_the_json_parser_is_an_error_reply(capfd):
    """json.loads raises RecursionError, not ValueError, on a deep enough nesting."""
    with serving() as path:
        reply = ask(path, b"[" * 60_000 + b"\n")      # within MAX_REQUEST
        assert reply == {"ok": False, "error": "a request is a JSON object with a \"cmd\" string, not nested this deep"}
        assert ask(path, b'{"cmd": "echo", "x": 2}\n') == {"ok": True, "result": 2}
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("line, error", [
    (b"\n", 'an empty request: a request is a JSON object with a "cmd" string'),
    (b"  \t \n", 'an empty request: a request is a JSON object with a "cmd" string'),
    (b"{\n", "a request is one line of JSON, not this: Expecting property name enclosed in double quotes: "
              "line 2 column 1 (char 2)"),
    (b'{"cmd": "echo"} {"cmd": "echo"}\n', "a request is one line of JSON, not this: Extra data: line 1 column 17 "
                                          "(char 16)"),
    (b'{"cmd": "echo", "x": "\xff"}\n', "a request is JSON in UTF-8: invalid start byte at byte 22"),
    (b"\xff\xfe\n", "a request is JSON in UTF-8: invalid start byte at byte 0"),     # not UTF-16's BOM either
])
def test_a_request_that_is_not_json_is_an_error_reply_saying_so(line, error, capfd):
    """The parser's own words alone ("Expecting value: line 2 column 1 (char 1)", "'utf-16-le'
    codec can't decode byte 0x0a") did not say that the request was not JSON."""
    with serving() as path:
        assert ask(path, line) == {"ok": False, "error": error}
        assert ask(path, b'{"cmd": "echo", "x": 2}\n') == {"ok": True, "result": 2}
    assert "Traceback" not in capfd.readouterr().err


def test_a_request_longer_than_a_request_may_be_is_an_error_reply_saying_so(capfd):
    """Cut at MAX_REQUEST, the rest of it unread: the reply was the parser's ("Unterminated
    string"), and the switch closed the connection on what was left unread, which reset it:
    the client, still writing or reading, lost the reply (EPIPE, ECONNRESET)."""
    def line(size: int) -> bytes:      # a request of `size` bytes, its newline too
        head = b'{"cmd": "echo", "x": "'
        return head + b"x" * (size - len(head) - 3) + b'"}\n'
    with serving() as path:
        assert ask(path, line(control.MAX_REQUEST))["ok"] is True
        for size in (control.MAX_REQUEST + 1, 10 * control.MAX_REQUEST):
            assert ask(path, line(size)) == {"ok": False, "error": f"a request is one line of at most "
                                                                   f"{control.MAX_REQUEST} bytes; this one is longer"}
        assert ask(path, b'{"cmd": "echo", "x": 2}\n') == {"ok": True, "result": 2}
    assert "Traceback" not in capfd.readouterr().err


@contextlib.contextmanager
def answering(*answers, piece: int = 0):
    """A socket whose listener answers each connection, in turn, with the next of `answers`
    (in pieces of `piece` bytes, each sent on its own, if given) and closes it; its path."""
    path = os.path.join(tempfile.mkdtemp(), "other.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()

        def answer_each():
            for answer in answers:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(4096)
                    for i in range(0, len(answer), piece or len(answer) or 1):
                        conn.sendall(answer[i:i + (piece or len(answer))])
                        if piece and i // piece % 256 == 255:
                            time.sleep(0.001)       # let the reader read what came
        thread = threading.Thread(target=answer_each, daemon=True)
        thread.start()
        try:
            yield path
        finally:
            thread.join(5)
            os.unlink(path)
            os.rmdir(os.path.dirname(path))


@pytest.mark.parametrize("answer", [b"hello\n", b"[1]\n", b'{"ok": true}\n', b'{"ok": false, "error": 3}\n',
                                    b"[" * 5000 + b"\n"])
def test_a_socket_that_is_not_a_switchs_is_a_control_error_naming_it(answer):
    """-s names another program's socket, or one another user put in the switch's place;
    for a request, and for a listing read as it comes."""
    with answering(answer, answer) as path:
        for ask in (lambda: control.request(path, "ports"), lambda: list(control.request_listing(path, "fdb"))):
            with pytest.raises(ControlError) as e:
                ask()
            assert str(e.value) == f"{path} did not answer as a switch does: is it a tapswitch control socket?"


@pytest.mark.parametrize("answer", [b'{"ok": true, "result": [{"a": }]}\n', b'{"ok": true, "result": 3}\n',
                                    b'{"ok": true, "result": [1, 2}\n', b'{"ok": true, "filters": [3], "result": []}\n',
                                    b'{"ok": true, "filters": ["port", "result": [{}]}\n'])
def test_a_listing_that_is_no_list_is_a_control_error(answer):
    with answering(answer) as path:
        with pytest.raises(ControlError) as e:
            list(control.request_listing(path, "fdb"))
        assert str(e.value) == f"{path} did not answer as a switch does: is it a tapswitch control socket?"


def test_a_listing_is_read_as_it_comes_however_it_is_cut():
    """request_listing decodes the items of a reply as they arrive, a list of them at a time,
    wherever the reply's pieces end: the same items as the whole reply's json.loads."""
    items = [{"mac": f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", "vlan": 1 + i % 4094, "port": "p[}0,\"{x",
              "age": i, "static": i % 2 == 0} for i in range(300)]
    reply = json.dumps({"ok": True, "result": items}).encode() + b"\n"
    empty = json.dumps({"ok": True, "result": []}).encode() + b"\n"
    filtered = json.dumps({"ok": True, "filters": ["port", "vlan"], "result": items}).encode() + b"\n"
    for piece in (1, 7, 1000, 0):
        with answering(reply, empty, filtered, piece=piece) as path:
            listing = control.request_listing(path, "fdb")
            batches = list(listing)
            assert [item for batch in batches for item in batch] == items
            assert piece != 1 or len(batches) > 1       # not read whole before it was decoded
            assert listing.filters is None
            assert list(control.request_listing(path, "fdb")) == []
            listing = control.request_listing(path, "fdb", port="p", vlan=1)
            batches = list(listing)
            assert [item for batch in batches for item in batch] == items
            assert piece != 1 or len(batches) > 1
            assert listing.filters == ["port", "vlan"]


def test_a_listing_waits_for_a_reader_that_stops_reading_longer_than_the_timeout(monkeypatch):
    """`tapswitch fdb --json | less`: the client writes each part of the MAC table as it comes,
    and stops reading while the pager waits for its user. The switch waits for it as long as it
    stays connected (it gave up after the 5 s timeout, and the listing was cut short)."""
    monkeypatch.setattr(control._Handler, "timeout", 0.3)
    items = [{"mac": f"02:00:00:00:{i >> 8 & 255:02x}:{i & 255:02x}", "vlan": 1, "port": "p", "age": i,
              "static": False} for i in range(20000)]      # some 1.5 MB: more than the socket holds
    path = os.path.join(tempfile.mkdtemp(), "ctl.sock")
    server = ControlServer(path, {"fdb": lambda r: control.Listing(iter(items))})
    server.start()
    try:
        got = []
        for n, batch in enumerate(control.request_listing(path, "fdb")):
            got += batch
            if n == 0:
                time.sleep(1.0)         # the pager: the switch's writes wait meanwhile
        assert got == items
    finally:
        server.stop()
        server.release()
        os.rmdir(os.path.dirname(path))


def test_a_switch_lost_in_the_middle_of_a_listing_or_saying_no_is_a_control_error():
    reply = json.dumps({"ok": True, "result": [{"mac": "02:00:00:00:00:01"}] * 5000}).encode() + b"\n"
    with answering(reply[:len(reply) // 2], b'{"ok": false, "error": "no port named \'x\'"}\n', b"") as path:
        listing = control.request_listing(path, "fdb")
        assert next(listing)[0] == {"mac": "02:00:00:00:00:01"}     # what came is read before the end
        with pytest.raises(ControlError) as e:
            list(listing)
        assert str(e.value) == f"the switch on {path} closed the connection"
        with pytest.raises(ControlError) as e:
            list(control.request_listing(path, "fdb", port="x"))
        assert str(e.value) == "no port named 'x'"
        with pytest.raises(ControlError) as e:
            list(control.request_listing(path, "fdb"))
        assert str(e.value) == f"the switch on {path} closed the connection"


def dead_socket(path: str) -> None:
    """The socket a switch killed by SIGKILL leaves: bound, nobody listening."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()


def test_without_s_the_only_running_switch_is_found_beside_a_dead_ones_socket(monkeypatch, capsys):
    """A dead switch's socket is no running switch: `tapswitch ports` talks to the live one
    (it said "several switches are running", exit 1)."""
    from tapswitch import cli
    directory = tempfile.mkdtemp()
    monkeypatch.setattr(cli, "SOCKET_DIR", directory)
    dead_socket(os.path.join(directory, "dead.sock"))
    live = os.path.join(directory, "live.sock")
    server = ControlServer(live, {"fdb": lambda r: []})
    server.start()
    try:
        assert cli.main(["fdb", "--json"]) == cli.EXIT_OK
        assert capsys.readouterr().out.splitlines()[-1] == "[]"     # after the server's log line
    finally:
        server.stop()
        server.release()
        os.unlink(os.path.join(directory, "dead.sock"))
        os.rmdir(directory)


def test_without_s_only_a_dead_switchs_socket_says_no_switch_is_running(monkeypatch, capsys):
    from tapswitch import cli
    directory = tempfile.mkdtemp()
    monkeypatch.setattr(cli, "SOCKET_DIR", directory)
    dead = os.path.join(directory, "dead.sock")
    dead_socket(dead)
    try:
        with pytest.raises(SystemExit) as e:
            cli.main(["ports"])
        assert e.value.code == f"tapswitch: no switch is running (none answers on {dead}: left by a switch that died); give one with -s"
        assert capsys.readouterr().out == ""
    finally:
        os.unlink(dead)
        os.rmdir(directory)



@pytest.mark.parametrize("what", ["a regular file", "a directory", "a dead switch's socket"])
def test_a_socket_path_nobody_listens_on_says_what_is_there_not_connection_refused(scratch, capsys, what):
    """`tapswitch ports -s PATH`: the kernel refuses a connection alike to a socket nobody listens
    on and to a path that is no socket at all (the config file given to -s, say), and the command
    said "cannot reach the switch on PATH: Connection refused" for each."""
    from tapswitch import cli
    path = os.path.join(scratch(), "ctl.sock")
    if what == "a regular file":
        open(path, "w").close()
    elif what == "a directory":
        os.mkdir(path)
    else:
        dead_socket(path)
    said = (f"tapswitch: no switch is running on {path} (nobody listens on the socket: left by a switch that died)"
            if what == "a dead switch's socket" else
            f"tapswitch: {path} is not a socket: give the switch's control socket (switch.control.socket)")
    for argv in (["ports"], ["fdb"], ["fdb", "--json"], ["fdb", "flush"], ["reload"]):
        with pytest.raises(SystemExit) as e:
            cli.main([*argv, "-s", path])
        assert e.value.code == said, argv
    assert capsys.readouterr().out == ""

def test_a_second_switch_on_a_socket_is_refused_by_its_lock_naming_the_holder():
    path = os.path.join(tempfile.mkdtemp(), "ctl.sock")
    server = serve(path)
    try:
        with pytest.raises(ControlError) as e:
            ControlServer(path, {})
        assert str(e.value) == f"another tapswitch is running on control socket {path} (pid {os.getpid()})"
        assert sorted(os.listdir(os.path.dirname(path))) == ["ctl.sock", "ctl.sock.lock"]    # the first's, as they were
        assert ask(path, b'{"cmd": "echo", "x": 3}\n') == {"ok": True, "result": 3}
    finally:
        server.stop()
        server.release()
        os.rmdir(os.path.dirname(path))


def test_a_switch_that_stopped_holds_its_socket_until_it_lets_go(scratch):
    """Between stop() (the socket is gone) and release() the switch still writes its state file
    beside the socket: a switch starting meanwhile must not take the socket, nor that state."""
    path = os.path.join(scratch(), "ctl.sock")
    server = serve(path)
    server.stop()
    assert not os.path.exists(path)
    with pytest.raises(ControlError) as e:
        ControlServer(path, {})
    assert "another tapswitch is running" in str(e.value)
    server.release()
    assert os.listdir(os.path.dirname(path)) == []
    after = serve(path)                 # let go: the next one takes it
    after.stop()
    after.release()
    os.rmdir(os.path.dirname(path))


def test_the_socket_and_lock_file_a_killed_switch_left_are_taken(scratch):
    path = os.path.join(scratch(), "ctl.sock")
    dead_socket(path)
    with open(path + ".lock", "w") as f:
        f.write("4194305\n")            # no process holds the lock: it died with its switch
    server = serve(path)
    with open(path + ".lock") as f:
        assert f.read() == f"{os.getpid()}\n"
    server.stop()
    server.release()
    assert os.listdir(os.path.dirname(path)) == []
    os.rmdir(os.path.dirname(path))


def test_a_lock_let_go_while_it_is_taken_is_taken_again_at_its_path(scratch, monkeypatch):
    """The holder unlinks its lock file, then lets go: one who had opened that file meanwhile gets
    the lock on a file no longer at the path, which another start would not see; it opens again."""
    path = os.path.join(scratch(), "ctl.sock")
    first = serve(path)
    first.stop()
    real_flock, calls = control.fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            first.release()              # after the second start opened the file, before it locks
        return real_flock(fd, op)
    monkeypatch.setattr(control.fcntl, "flock", flock)
    second = ControlServer(path, {})
    assert len(calls) == 2
    assert os.path.samestat(os.fstat(second.lock), os.stat(path + ".lock"))
    second.server_close()
    os.unlink(path)
    second.release()
    os.rmdir(os.path.dirname(path))


def test_a_socket_path_too_long_for_unix_sockets_is_a_control_error_saying_so():
    path = "/tmp/" + "x" * 120 + ".sock"
    with pytest.raises(ControlError) as e:
        control.request(path, "ports")
    assert str(e.value) == f"cannot reach the switch on {path}: AF_UNIX path too long"


@pytest.mark.parametrize("argv", [["ports", "-s", ""], ["fdb", "flush", "-s", ""], ["reload", "-c", ""]])
def test_an_empty_socket_or_config_path_is_a_usage_error_not_no_option(monkeypatch, capsys, argv):
    """`tapswitch ports -s "$SOCK"` with SOCK unset must not talk to whichever switch runs."""
    from tapswitch import cli
    monkeypatch.setattr(cli, "_request", lambda args, cmd, **kw: pytest.fail("a switch was asked"))
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == cli.EXIT_CONFIG       # argparse's usage error
    out, err = capsys.readouterr()
    assert out == "" and "an empty path" in err


def test_a_request_that_trickles_in_is_given_up_on_after_the_timeout_in_all(monkeypatch, capfd):
    """The timeout bounded each read of the request, not the whole of it: a client that sent
    a byte at a time, each within the timeout, held the connection's thread for as long as it
    went on, through MAX_SKIPPED bytes once the line was too long. The switch gives up on it
    (control.client_timed_out) once the timeout has passed in all, and answers others meanwhile."""
    monkeypatch.setattr(control._Handler, "timeout", 0.5)
    path = os.path.join(tempfile.mkdtemp(), "ctl.sock")
    server = serve(path)
    try:
        for head in (b'{"cmd": "echo", "x": "', b"x" * (control.MAX_REQUEST + 1)):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                s.sendall(head)
                closed = False
                deadline = time.monotonic() + 10     # 20 timeouts: never, before
                while not closed and time.monotonic() < deadline:
                    try:
                        s.sendall(b"x")
                    except (BrokenPipeError, ConnectionResetError):
                        closed = True
                        break
                    closed = bool(select.select([s], [], [], 0.1)[0])     # its close (EOF) reads
                assert closed, "the switch still reads the request after 10 s"
            assert ask(path, b'{"cmd": "echo", "x": 2}\n') == {"ok": True, "result": 2}
    finally:
        server.stop()
        server.release()
        os.rmdir(os.path.dirname(path))
    assert "Traceback" not in capfd.readouterr().err

"""The control socket's server: answering, and stopping without waiting out serve_forever's poll."""

import json
import os
import socket
import socketserver
import tempfile
import threading
import time

from tapswitch.control import ControlServer, stop_serving

LONG_POLL = 60          # serve_forever's poll: a stop that waited it out would take this long


def ask(path: str, request: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(request)
        return json.loads(s.makefile().readline())


def test_stop_does_not_wait_for_the_poll_and_an_empty_connection_is_no_error(capfd):
    path = os.path.join(tempfile.mkdtemp(), "ctl.sock")
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

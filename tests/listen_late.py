"""Listen on the control socket late: `python tests/listen_late.py PYTHON -m tapswitch ARGS...`
runs `tapswitch ARGS...` in this process, which waits half a second between binding the control
socket and listening on it (a control process that a busy host did not run just then)."""

import socketserver
import time

from in_process import run

_server_activate = socketserver.UnixStreamServer.server_activate


def _activate_late(self) -> None:
    time.sleep(0.5)
    _server_activate(self)


if __name__ == "__main__":
    run(lambda: setattr(socketserver.UnixStreamServer, "server_activate", _activate_late))

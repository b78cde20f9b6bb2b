"""Stop the switch just as its control socket comes up: `python tests/stop_as_control_listens.py
PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this process, which sends itself SIGTERM
once the control socket is bound, as it starts to listen on it (a `systemctl stop` that
comes then)."""

import os
import signal

from in_process import run

from tapswitch import control

_server_activate = control.ControlServer.server_activate


def _activate_as_stopped(self) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    _server_activate(self)


if __name__ == "__main__":
    run(lambda: setattr(control.ControlServer, "server_activate", _activate_as_stopped))

"""Stop the switch just as its start fails: `python tests/stop_as_start_fails.py PYTHON -m
tapswitch ARGS...` runs `tapswitch ARGS...` in this process, which sends itself SIGTERM as it
logs switch.start_failed, as a `systemctl stop` would that comes while the journal is slow to
take that line."""

import os
import signal

from in_process import run

from tapswitch import switch


class _StopAsItFails:
    """switch's logger, but for switch.start_failed: SIGTERM first."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def error(self, event, **kw):
        if event == "switch.start_failed":
            os.kill(os.getpid(), signal.SIGTERM)
        return self.real.error(event, **kw)


if __name__ == "__main__":
    run(lambda: setattr(switch, "log", _StopAsItFails(switch.log)))

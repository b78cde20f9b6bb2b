"""Send the switch a stop signal before it has started to start: `python tests/stop_early.py
SIGNAL WHEN PYTHON -m tapswitch run -c CONFIG` runs `tapswitch run -c CONFIG` in this process,
which signals itself (SIGNAL: SIGTERM or SIGINT) when WHEN is `imports`, as it imports the
switch (the ~0.3 s of imports before Switch.start), WHEN `read`, once it has read CONFIG, or,
WHEN `taken`, just after the switch took the stop signals over, before it makes anything."""

import os
import signal
import sys

from in_process import run

from tapswitch import config, ports


class _SignalOnImport:
    """A finder that finds nothing: it signals as the switch's module is imported."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def find_spec(self, name, path=None, target=None):
        if name == "tapswitch.switch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), self.signum)
        return None


def _signal_once_read(signum: int) -> None:
    real = config.load

    def load(path, *args, **kw):
        cfg = real(path, *args, **kw)
        config.load = real
        os.kill(os.getpid(), signum)
        return cfg
    config.load = load


def _signal_once_taken(signum: int) -> None:
    real = ports.quiet_event_loops

    def quiet(*args, **kw):
        ports.quiet_event_loops = real
        os.kill(os.getpid(), signum)
        return real(*args, **kw)
    ports.quiet_event_loops = quiet


if __name__ == "__main__":
    signum, when = signal.Signals[sys.argv.pop(1)], sys.argv.pop(1)
    if when == "imports":
        run(lambda: sys.meta_path.insert(0, _SignalOnImport(signum)))
    elif when == "read":
        run(lambda: _signal_once_read(signum))
    else:
        run(lambda: _signal_once_taken(signum))

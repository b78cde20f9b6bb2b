"""Stop the switch as a finalizer runs: `python tests/stop_in_a_finalizer.py PYTHON -m tapswitch
ARGS...` runs `tapswitch ARGS...` in this process, which sends itself SIGTERM once its ports are
made, from an object's __del__ that then runs on a while: the signal's handler runs inside it, as
it did inside a WeakSet's weakref callback (whose exceptions Python prints and drops) during a
start that a `systemctl stop` came to."""

import os
import signal
import time

from in_process import run

from tapswitch import ports

_create_all = ports.create_all


class _StopsAsItGoes:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):        # the handler runs here: at a sleep it cut short, or after one
            time.sleep(0.001)


def _create_all_then_stop(*args, **kw):
    made = _create_all(*args, **kw)
    _StopsAsItGoes()                # made and let go at once: its __del__ runs here
    return made


if __name__ == "__main__":
    run(lambda: setattr(ports, "create_all", _create_all_then_stop))

"""Run the switch as the first of two starts racing for one remote: `python
tests/held_check_race.py DIR PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this
process, held once it has found its remote held by no running switch (the first held_by that
says so): it makes DIR/checked, and goes on when DIR/go exists (or after 20 s). So another
start can pass the same check meanwhile, and attach the remote before this one goes on."""

import os
import sys
import time

from in_process import run

from tapswitch import tc


def hold(directory: str) -> None:
    real_held_by, held = tc.held_by, []

    def held_by(*args, **kw):
        found = real_held_by(*args, **kw)
        if found is None and not held:
            held.append(True)
            open(os.path.join(directory, "checked"), "w").close()
            deadline = time.monotonic() + 20
            while not os.path.exists(os.path.join(directory, "go")) and time.monotonic() < deadline:
                time.sleep(0.02)
        return found
    tc.held_by = held_by


if __name__ == "__main__":
    hold(sys.argv.pop(1))
    run(lambda: None)

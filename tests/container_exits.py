"""Have a container's process end while the switch makes its port: `python
tests/container_exits.py PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this process,
which kills the process $TAPSWITCH_TEST_CONTAINER_PID (SIGKILL) and waits for its namespace to
go, just as the TAP of the port in that namespace (`netns: pid:N`) is to be moved into it."""

import os
import signal
import time

from in_process import run

from tapswitch import netns, ports

_move = ports._move


def _move_as_it_exits(here, ifindex: int, nspath: str) -> None:
    pid = int(os.environ["TAPSWITCH_TEST_CONTAINER_PID"])
    if nspath == f"/proc/{pid}/ns/net":
        os.kill(pid, signal.SIGKILL)
        while netns.is_netns(nspath):
            time.sleep(0.01)
    _move(here, ifindex, nspath)


if __name__ == "__main__":
    run(lambda: setattr(ports, "_move", _move_as_it_exits))

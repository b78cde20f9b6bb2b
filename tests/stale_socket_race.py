"""Run the switch as one of two starts racing for the socket a killed switch left: `python
tests/stale_socket_race.py first|second DIR PYTHON -m tapswitch ARGS...` runs `tapswitch
ARGS...` in this process, held when it is about to remove a stale socket (the first unlink of
a socket): the first until DIR/go exists, having made DIR/first-held; the second makes DIR/go,
then waits until the first listens. So both have found the socket stale before either removes
it, and the second removes it after the first listens on its own, as the unlucky start would.
A start that does not get that far (it is refused before) is not held; the first, not let go,
goes on after 20 s."""

import os
import socket
import stat
import sys
import time

from tapswitch import cli


def _wait(what, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not what() and time.monotonic() < deadline:
        time.sleep(0.02)


def _listens(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def hold(role: str, directory: str) -> None:
    real_unlink, held = os.unlink, []

    def unlink(path, *args, **kw):
        try:
            is_socket = stat.S_ISSOCK(os.lstat(path).st_mode)
        except (OSError, TypeError):
            is_socket = False
        if is_socket and not held:
            held.append(path)
            if role == "first":
                open(os.path.join(directory, "first-held"), "w").close()
                _wait(lambda: os.path.exists(os.path.join(directory, "go")))
            else:
                open(os.path.join(directory, "go"), "w").close()
                _wait(lambda: _listens(path))
        return real_unlink(path, *args, **kw)
    os.unlink = unlink


if __name__ == "__main__":
    role, directory, *args = sys.argv[1:]
    if role not in ("first", "second") or args[1:3] != ["-m", "tapswitch"]:
        sys.exit(f"usage: {sys.argv[0]} first|second DIR PYTHON -m tapswitch ARGS...")
    hold(role, directory)
    sys.exit(cli.main(args[3:]))

"""Make a step of the switch's undo raise: `python tests/undo_step_fails.py PYTHON -m tapswitch
ARGS...` runs `tapswitch ARGS...` in this process, where what $TAPSWITCH_TEST_UNDO_FAILS says
raises once it has done its work:
- link_monitor: closing the link monitor, each time (OSError EIO);
- port:NAME: closing port NAME (a RuntimeError, as a bug would);
- netns: removing the first namespace removed (a RuntimeError)."""

import errno
import os

from in_process import run

from tapswitch import linkmon, netns, ports


def _raising_after(owner, name: str, exc, only=lambda self, *args: True) -> None:
    real = getattr(owner, name)

    def raises(self, *args, **kw):
        real(self, *args, **kw)
        if only(self, *args):
            raise exc(self, *args)
    setattr(owner, name, raises)


def _break(what: str) -> None:
    if what == "link_monitor":
        _raising_after(linkmon.LinkMonitor, "close", lambda self: OSError(errno.EIO, os.strerror(errno.EIO)))
    elif what == "netns":
        first = []
        _raising_after(netns.Namespaces, "_remove", lambda self, name: RuntimeError(f"a bug removing {name}"),
                       lambda self, name: not first and not first.append(name))
    else:
        port = what.removeprefix("port:")
        _raising_after(ports.Port, "close", lambda self: RuntimeError(f"a bug closing {port}"),
                       lambda self: self.name == port)


if __name__ == "__main__":
    run(lambda: _break(os.environ["TAPSWITCH_TEST_UNDO_FAILS"]))

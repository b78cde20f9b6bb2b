"""Run the switch out of file descriptors just when it opens a namespace it made, to hold it:
`python tests/hold_fails.py PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this
process, with RLIMIT_NOFILE lowered to the descriptors in use during each Namespaces._hold,
so that its open fails with EMFILE, as when the ports made at once have taken the rest."""

import os
import resource

from in_process import run

from tapswitch import netns

_hold = netns.Namespaces._hold


def _out_of_fds(self, name, ident):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.close(lowest)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
    try:
        return _hold(self, name, ident)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    run(lambda: setattr(netns.Namespaces, "_hold", _out_of_fds))

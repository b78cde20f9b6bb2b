"""Have the kernel refuse every tc rule while a file is there: `python tests/install_fails.py
PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this process, where each rule the switch
adds while the file $TAPSWITCH_TEST_INSTALL_FAILS exists fails as a refused one does (NetlinkError
ENOMEM), and adds a line to that file: a remote's attach that fails after IFACE's flags are set
(_install), and how often it was tried."""

import errno
import os

from in_process import run
from pyroute2.netlink.exceptions import NetlinkError

from tapswitch import tc


def _refused_while(mark: str):
    real = tc.add_filter

    def add_filter(ipr, f, cookie):
        try:
            fd = os.open(mark, os.O_WRONLY | os.O_APPEND)      # not made if it is not there
        except FileNotFoundError:
            return real(ipr, f, cookie)
        try:
            os.write(fd, b"refused\n")
        finally:
            os.close(fd)
        raise NetlinkError(errno.ENOMEM, os.strerror(errno.ENOMEM))
    tc.add_filter = add_filter


if __name__ == "__main__":
    run(lambda: _refused_while(os.environ["TAPSWITCH_TEST_INSTALL_FAILS"]))

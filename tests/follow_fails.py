"""Have the kernel refuse, once, the first tc rule for a MAC: `python tests/follow_fails.py
PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this process, where the first rule the
switch adds that matches the MAC $TAPSWITCH_TEST_FOLLOW_FAILS fails as a refused one does
(NetlinkError ENOMEM): a remote port's rules following IFACE's new MAC (follow_iface_mac)."""

import errno
import os

from in_process import run
from pyroute2.netlink.exceptions import NetlinkError

from tapswitch import tc


def _refused_once(mac: str):
    real = tc.add_filter

    def add_filter(ipr, f, cookie):
        if f.match is not None and f.match.dst == tc.MacMatch(mac).dst:
            tc.add_filter = real
            raise NetlinkError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        return real(ipr, f, cookie)
    tc.add_filter = add_filter


if __name__ == "__main__":
    run(lambda: _refused_once(os.environ["TAPSWITCH_TEST_FOLLOW_FAILS"]))

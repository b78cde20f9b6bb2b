"""Run the switch with every tc rule's removal refused (EBUSY), as a kernel that will not let go
would: `python tests/detach_fails.py PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in
this process. A remote's detach then fails: its rules stay on IFACE, its flags and MTU as the
switch set them."""

import errno

from in_process import run
from pyroute2.netlink.exceptions import NetlinkError

from tapswitch import tc


def _refused(*_args, **_kw) -> int:
    raise NetlinkError(errno.EBUSY, "refused by tests/detach_fails.py")


if __name__ == "__main__":
    run(lambda: setattr(tc, "delete_filters", _refused))

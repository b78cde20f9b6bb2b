"""Run the switch with every tc rule's removal refused (EBUSY), as a kernel that will not let go
would: `python tests/detach_fails.py PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in
this process. A remote's detach then fails: its rules stay on IFACE, its flags and MTU as the
switch set them."""

import errno
import sys

from pyroute2.netlink.exceptions import NetlinkError

from tapswitch import cli, tc


def _refused(*_args, **_kw) -> bool:
    raise NetlinkError(errno.EBUSY, "refused by tests/detach_fails.py")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[1:3] != ["-m", "tapswitch"]:
        sys.exit(f"usage: {sys.argv[0]} PYTHON -m tapswitch ARGS...")
    tc.delete_filter = _refused
    sys.exit(cli.main(args[3:]))

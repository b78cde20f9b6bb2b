"""Run `PYTHON -m tapswitch ARGS...` (as the integration tests' wrapper: this file, then the
switch's command) as on a kernel without netns cookies (before Linux 5.14), where
SO_NETNS_COOKIE fails, so that `netns.cookie` cannot tell one namespace from another and says
None, as the identity a namespace being made gets does."""

import errno
import os

from in_process import run

from tapswitch import netns


def no_cookie() -> int:
    raise OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))


if __name__ == "__main__":
    run(lambda: setattr(netns, "_own_cookie", no_cookie))

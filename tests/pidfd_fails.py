"""Run the switch out of file descriptors just when it opens a new worker's pidfd, once:
`python tests/pidfd_fails.py PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this
process. While the file $TAPSWITCH_TEST_PIDFD_FAILS names exists, the next pidfd_open runs with
RLIMIT_NOFILE lowered to the descriptors in use, so that it fails with EMFILE, as when the ports
a reload adds have taken the rest; that call removes the file."""

import os
import resource

_pidfd_open = os.pidfd_open


def at_the_fd_limit(call, *args):
    """call(*args) with RLIMIT_NOFILE lowered to the descriptors in use: a descriptor it opens
    fails with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.close(lowest)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
    try:
        return call(*args)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _out_of_fds(pid, flags=0):
    try:
        os.unlink(os.environ["TAPSWITCH_TEST_PIDFD_FAILS"])
    except FileNotFoundError:
        return _pidfd_open(pid, flags)
    return at_the_fd_limit(_pidfd_open, pid, flags)


if __name__ == "__main__":
    from in_process import run
    run(lambda: setattr(os, "pidfd_open", _out_of_fds))

"""Refuse the fork of a switch's second worker: `python tests/worker_fork_refused.py PYTHON -m
tapswitch ARGS...` runs `tapswitch ARGS...` in this process, in which the Popen of the worker of
queue 1 fails with EAGAIN, as a fork over RLIMIT_NPROC or the pid limit of a cgroup does."""

import errno
import os
import subprocess

from in_process import run

from tapswitch import supervisor


class _Spawner:
    """The supervisor's subprocess module, but for the Popen of queue 1's worker."""

    def __getattr__(self, name):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(argv, **kw):
        if argv[1:4] == ["-P", "-m", "tapswitch.worker"] and argv[argv.index("--queue") + 1] == "1":
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return subprocess.Popen(argv, **kw)


if __name__ == "__main__":
    run(lambda: setattr(supervisor, "subprocess", _Spawner()))

"""What the integration tests' wrappers share: `python tests/WRAPPER.py PYTHON -m tapswitch
ARGS...` (the wrapper, then the command the tests would run) runs `tapswitch ARGS...` in
the wrapper's own process, once the wrapper has changed what it changes."""

import os
import subprocess
import sys

from tapswitch import cli


def run(change) -> None:
    """change(), then `tapswitch ARGS...`; exits with its exit code."""
    args = sys.argv[1:]
    if args[1:3] != ["-m", "tapswitch"]:
        sys.exit(f"usage: {sys.argv[0]} PYTHON -m tapswitch ARGS...")
    change()
    sys.exit(cli.main(args[3:]))


def swap_workers(script: str, mark: str, once: bool = False) -> None:
    """While the file $`mark` names exists, the supervisor starts each worker as `python -P
    script --worker WHAT ARGS...`, WHAT what the file says, ARGS the worker's own; `once`: the
    first such worker removes the file, and those after it are as any worker."""
    from tapswitch import supervisor

    class Spawner:
        """The supervisor's subprocess module, but for the workers' Popen."""

        def __getattr__(self, name):
            return getattr(subprocess, name)

        @staticmethod
        def Popen(argv, **kw):
            if argv[1:4] == ["-P", "-m", "tapswitch.worker"]:
                try:
                    with open(os.environ[mark]) as f:
                        what = f.read().strip()
                    if once:
                        os.unlink(os.environ[mark])
                except FileNotFoundError:
                    pass
                else:
                    argv = [argv[0], "-P", os.path.abspath(script), "--worker", what, *argv[4:]]
            return subprocess.Popen(argv, **kw)

    supervisor.subprocess = Spawner()

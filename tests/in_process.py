"""What the integration tests' wrappers share: `python tests/WRAPPER.py PYTHON -m tapswitch
ARGS...` (the wrapper, then the command the tests would run) runs `tapswitch ARGS...` in
the wrapper's own process, once the wrapper has changed what it changes."""

import sys

from tapswitch import cli


def run(change) -> None:
    """change(), then `tapswitch ARGS...`; exits with its exit code."""
    args = sys.argv[1:]
    if args[1:3] != ["-m", "tapswitch"]:
        sys.exit(f"usage: {sys.argv[0]} PYTHON -m tapswitch ARGS...")
    change()
    sys.exit(cli.main(args[3:]))

"""Run the switch as a crash would stop it while attaching a remote: `python
tests/kill_before_first_rule.py PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...`
in this process, which kills itself (SIGKILL) when it is about to add its first tc
rule: IFACE has its clsact, MTU and flags, and no rule records how it was."""

import os
import signal
import sys

from tapswitch import cli, tc


def _killed(*_args, **_kw) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[1:3] != ["-m", "tapswitch"]:
        sys.exit(f"usage: {sys.argv[0]} PYTHON -m tapswitch ARGS...")
    tc.add_filter = _killed
    sys.exit(cli.main(args[3:]))

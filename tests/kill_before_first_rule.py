"""Run the switch as a crash would stop it while attaching a remote: `python
tests/kill_before_first_rule.py PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...`
in this process, which kills itself (SIGKILL) when it is about to add its first tc
rule: IFACE has its clsact, MTU and flags, and no rule records how it was."""

import os
import signal

from in_process import run

from tapswitch import tc


def _killed(*_args, **_kw) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    run(lambda: setattr(tc, "add_filter", _killed))

"""Log every maintenance step of the control loop: `python tests/log_ticks.py PYTHON -m
tapswitch ARGS...` runs `tapswitch ARGS...` in this process, with Switch.maintain_fdb (an
aging step over a slice of the MAC table) logging `test.aging_step` before it runs, so that
a test can count how often the loop sweeps the table."""

import structlog
from in_process import run

from tapswitch import switch

_maintain_fdb = switch.Switch.maintain_fdb


def _logged(self):
    structlog.get_logger("tapswitch.test").info("test.aging_step")
    return _maintain_fdb(self)


if __name__ == "__main__":
    run(lambda: setattr(switch.Switch, "maintain_fdb", _logged))

"""Make every worker a switch starts stop on a Python exception once let go: `python
tests/worker_keeps_raising.py PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this
process. While the file $TAPSWITCH_TEST_WORKER_KEEPS_RAISING names exists, each worker the
switch starts sets up, says so, and raises RuntimeError as soon as it is let go to forward
(tests/worker_raises.py's "run"): a worker that dies at once after its start, every time, as
one with a fault in its loop. Remove the file, and the workers started from then on are as
any worker. Its command line says `worker_keeps_raising.py --worker`."""

import os
import sys

MARK = "TAPSWITCH_TEST_WORKER_KEEPS_RAISING"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))     # a worker runs with -P
        from worker_raises import raising_worker
        sys.exit(raising_worker(sys.argv[2], sys.argv[3:]))
    from in_process import run, swap_workers

    run(lambda: swap_workers(__file__, MARK))

"""Make the workers a switch starts slow to start, or hang while starting: `python
tests/worker_start_hangs.py PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this
process. While the file $TAPSWITCH_TEST_WORKER_START names exists, each worker the switch
starts waits, in its interpreter's start (before it has asked to die with the switch), as
many seconds as the file said when it was started, or for good if it said "hang", and then
starts as any worker: as one stuck in its imports (a hung filesystem) or slow to start (a
loaded machine). Its command line says `worker_start_hangs.py --worker`."""

import sys
import time

MARK = "TAPSWITCH_TEST_WORKER_START"


def slow_worker(wait: str, argv: list[str]) -> int:
    """A worker (argv: its arguments) that waits `wait` seconds ("hang": for good) first."""
    time.sleep(3600 if wait == "hang" else float(wait or 0))
    from tapswitch import worker
    return worker.main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(slow_worker(sys.argv[2], sys.argv[3:]))
    from in_process import run, swap_workers

    run(lambda: swap_workers(__file__, MARK))

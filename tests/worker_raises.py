"""Make a worker a switch starts stop on a Python exception: `python tests/worker_raises.py
PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this process. While the file
$TAPSWITCH_TEST_WORKER_RAISES names exists, the next worker the switch starts removes it and
raises RuntimeError: where the file says, "start" while it sets its fast path up (before it
says it is set up), "run" once it is let go to forward. Workers started after it are as any
worker. Its command line says `worker_raises.py --worker`."""

import sys

MARK = "TAPSWITCH_TEST_WORKER_RAISES"
MESSAGE = "forced by tests/worker_raises.py"


class _Lib:
    """The fast path's lib, but for ts_worker_run, which raises."""

    def __init__(self, lib):
        self._lib = lib

    def __getattr__(self, name):
        return getattr(self._lib, name)

    @staticmethod
    def ts_worker_run(w):
        raise RuntimeError(MESSAGE)


def raising_worker(where: str, argv: list[str]) -> int:
    """A worker (argv: its arguments) that raises RuntimeError at `where`: "start" or "run"."""
    from tapswitch import fastpath, worker
    if where == "start":
        def io_backend():
            raise RuntimeError(MESSAGE)
        fastpath.io_backend = io_backend
    else:
        fastpath.lib = _Lib(fastpath.lib)
    return worker.main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(raising_worker(sys.argv[2], sys.argv[3:]))
    from in_process import run, swap_workers

    run(lambda: swap_workers(__file__, MARK, once=True))

"""Worker process: runs the C fast path over queue q of every port, until killed.

Started by the supervisor as `python -m tapswitch.worker`, with the shared
memory fd, its queue fds and a ready pipe passed down. Imports only the fast
path: no pyroute2, no prometheus_client here. It holds no state of its own:
the MAC table and the counters live in shared memory, so SIGTERM (the default
action) or SIGKILL stops it and a restarted worker carries on where it was.
"""

import argparse
import os
import signal
import sys

from tapswitch import fastpath


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tapswitch-worker")
    p.add_argument("--queue", type=int, required=True)
    p.add_argument("--shm", type=int, required=True, help="fd of the shared memory")
    p.add_argument("--ready", type=int, required=True, help="fd to write one byte to once running")
    p.add_argument("--port", action="append", default=[], metavar="INDEX:FD",
                   help="this worker's queue fd of port INDEX")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Ctrl-C reaches the whole process group; the control process decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lib, ffi = fastpath.lib, fastpath.ffi
    if lib.ts_die_with_parent() != 0:
        return 1          # the control process is already gone
    shared = fastpath.Shared.attach(args.shm)
    queue_fds = {int(i): int(fd) for i, fd in (p.split(":") for p in args.port)}
    n = max(queue_fds, default=-1) + 1
    fds = ffi.new("int[]", [queue_fds.get(i, -1) for i in range(n)] or [-1])
    w = lib.ts_worker_new(shared.ptr, args.queue, fds, n)
    if w == ffi.NULL:
        print(f"worker {args.queue}: cannot start the fast path", file=sys.stderr)
        return 1
    os.write(args.ready, b"R")
    os.close(args.ready)
    rc = lib.ts_worker_run(w)
    print(f"worker {args.queue}: fast path stopped: {os.strerror(-rc)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

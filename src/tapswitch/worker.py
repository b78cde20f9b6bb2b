"""Worker process: runs the C fast path over queue q of every port, until stopped.

Started by the supervisor as `python -m tapswitch.worker`, with the shared
memory fd and a ready socket passed down; its queue fds come over that
socket (at a start, the process is spawned before the ports are made, so its
interpreter starts while they are). It sets its fast path up, says so on the
socket, and forwards once told to (on a reload, the worker it replaces
forwards until then). Imports only the fast
path: no pyroute2, no prometheus_client here. It holds no state of its own:
the MAC table and the counters live in shared memory, so a restarted worker
carries on where it was. SIGTERM stops it between bursts: it forwards every
frame it has read (io_uring reads ahead of the worker), leaves the rest in
the queues for the next worker and exits 0 (the supervisor's way, on a
reload); it says b"D" on the socket once drained, so that the worker replacing
it goes without waiting for this interpreter's exit. SIGKILL stops it at
once: what it had read is lost. A worker that cannot start, or whose fast path
stops on an error, says why on the socket (b"E" + the reason) and exits 1: the
control process logs it, in the log's format (fail); one started on shared memory
of another version than its fast path's (the switch upgraded in place while it ran)
says so, and to restart the switch (upgraded). So does one that a Python
exception stops, its type and message the reason, its traceback said after it
(main): not Python's traceback on stderr, among the switch's JSON lines.

Once its fast path is set up, a worker gives up every capability for good
and becomes the user `switch.user` names (nobody by default, when the switch
runs as root): drop_privileges. From then on it only reads and writes fds it
already holds; a uid 0 without capabilities would still own root's files. It
is not dumpable: no other process of its user may trace it or open its fds. It
leaves the host's network namespace too, for an empty one of its own: the
worker reads frames any container sends, and one that took it over would
otherwise reach the host's networks and its services on 127.0.0.1.
"""

import argparse
import ctypes
import errno
import os
import signal
import socket
import sys
import traceback

# linux/prctl.h and linux/capability.h
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CLONE_NEWNET = 0x40000000                     # linux/sched.h
# Why unshare(CLONE_NEWNET) may refuse, the worker staying in the switch's namespace: no CAP_SYS_ADMIN,
# no namespace more allowed (user.max_net_namespaces), none in this kernel (no CONFIG_NET_NS).
UNSHARE_REFUSED = frozenset({errno.EPERM, errno.ENOSPC, errno.EINVAL})
_LINUX_CAPABILITY_VERSION_3 = 0x20080522      # two data structs: capabilities 0-31, 32-63
CAP_LIMIT = 64


class _CapHeader(ctypes.Structure):           # struct __user_cap_header_struct
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):             # struct __user_cap_data_struct
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_privileges(ids: tuple[int, int] | None = None) -> None:
    """Give up every capability and become user:group `ids` (None: stay), for
    good; raise OSError if the kernel refuses.

    - no_new_privs: no execve can grant anything again (without it, root's
      execve refills the permitted set from the bounding set);
    - a network namespace of its own, empty (not even lo up): the queue fds
      it holds stay on their devices wherever it is, and nothing else it
      could open (a socket to 127.0.0.1, to the host's networks, an abstract
      unix socket) is the host's. This takes CAP_SYS_ADMIN, which the switch
      has for ports in namespaces; without it (UNSHARE_REFUSED) the worker
      stays where it is;
    - the bounding set is emptied when we may (that takes CAP_SETPCAP, which
      a systemd unit's bounding set usually leaves out: no_new_privs covers it);
    - no supplementary groups, then the gid and the uid, real, effective and
      saved (this takes CAP_SETGID and CAP_SETUID, so it comes before capset);
    - ambient, effective, permitted and inheritable sets become empty (capset
      may always lower them);
    - not dumpable, last (a change of uid makes it what fs.suid_dumpable says,
      1 on some hosts): no other process of its user may trace it, read its
      memory or open what it holds (/proc/PID/fd: the shared memory, the
      queues). The change of uid alone does not do it where suid_dumpable is 1,
      nor where the workers stay root (switch.user: 0, or no user nobody), and
      that user may be any other service's too. Root with CAP_SYS_PTRACE still
      may (the bench's /proc/PID/smaps_rollup); anyone may read /proc/PID/stat
      (the supervisor's CPU time). No core dump either.
    A change of uid clears the parent-death signal: the caller asks for it again.
    capset and setresuid change the calling thread only (glibc's wrappers and
    Python's call every thread): a worker has no other thread.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4

    def check(rc: int, what: str) -> None:
        if rc != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{what}: {os.strerror(e)}")

    check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.unshare(CLONE_NEWNET) != 0 and ctypes.get_errno() not in UNSHARE_REFUSED:
        check(-1, "unshare(CLONE_NEWNET)")
    for cap in range(CAP_LIMIT):
        if prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break   # EINVAL: past the kernel's last capability; EPERM: no CAP_SETPCAP
    check(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    if ids is not None:
        uid, gid = ids
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    empty = (_CapData * 2)()
    check(libc.capset(ctypes.byref(header), empty), "capset")
    check(prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tapswitch-worker")
    p.add_argument("--queue", type=int, required=True)
    p.add_argument("--shm", type=int, required=True, help="fd of the shared memory")
    p.add_argument("--ready", type=int, required=True,
                   help="socket (SOCK_SEQPACKET): the queue fds come here (receive_ports); b'R' + the "
                        "backend (+ b' registered': its buffers are) goes back once set up; forwarding "
                        "starts on b'G'; b'D' once stopped by SIGTERM and drained")
    p.add_argument("--user", metavar="UID:GID", help="run as this user and group once set up")
    return p.parse_args(argv)


# Signals that reach the whole process group, workers too (Ctrl-C, a terminal's hangup), which
# only the control process acts on: a worker ignores them.
GROUP_SIGNALS = {signal.SIGINT, signal.SIGHUP}

PORTS_PER_MESSAGE = 128     # queue fds in one message (the kernel takes up to 253)


def send_ports(sock: socket.socket, fds: dict[int, int]) -> None:
    """Hand a worker its queue fds (port index -> fd), PORTS_PER_MESSAGE at a time: each
    message is b"p" + the ports' indexes ("3,4,9"), with their fds; the last says b"P"."""
    items = sorted(fds.items())
    for at in range(0, max(len(items), 1), PORTS_PER_MESSAGE):
        part = items[at:at + PORTS_PER_MESSAGE]
        last = at + PORTS_PER_MESSAGE >= len(items)
        socket.send_fds(sock, [(b"P" if last else b"p") + ",".join(str(i) for i, _ in part).encode()],
                        [fd for _, fd in part])


def receive_ports(sock: socket.socket) -> dict[int, int] | None:
    """The queue fds send_ports hands over; None, keeping none of them, if the socket closed
    first (not wanted after all) or something else came."""
    fds: dict[int, int] = {}
    while True:
        msg, got, _flags, _addr = socket.recv_fds(sock, 4096, PORTS_PER_MESSAGE)
        indexes = [int(i) for i in msg[1:].split(b",") if i]
        if not msg or msg[:1] not in b"pP" or len(indexes) != len(got):
            for fd in [*got, *fds.values()]:
                os.close(fd)
            return None
        fds.update(zip(indexes, got))
        if msg[:1] == b"P":
            return fds


REASON_MAX = 1024       # bytes of a reason said on the ready socket (supervisor.MESSAGE_MAX holds it)
TRACEBACK_MAX = 8192    # bytes of a traceback said after it: its last ones (the frames nearest the raise)


def fail(ready: socket.socket, queue: int, reason: str, trace: str = "") -> int:
    """Say why this worker cannot go on (exit code 1): on the ready socket, so that the control
    process logs it as a field of worker.start_failed or worker.exited (a line of ours on stderr
    would be plain text among the JSON lines of a switch that logs JSON); on stderr only if the
    control process cannot hear it. The message is b"E" + the reason, and for an exception
    b"\0" + its traceback (the control process logs it as the field `traceback`)."""
    said = b"E" + reason.replace("\0", " ").encode(errors="replace")[:REASON_MAX]
    if trace:
        said += b"\0" + trace.encode(errors="replace")[-TRACEBACK_MAX:]
    try:
        ready.send(said)
    except OSError:
        print(f"worker {queue}: {reason}" + (f"\n{trace}" if trace else ""), file=sys.stderr)
    return 1


def upgraded(found: int, ours: int, whose: str = "this worker's fast path") -> str:
    """Why a worker cannot run on its switch's shared memory of another version (fastpath.h,
    TS_VERSION `found`) than its fast path's (`ours`, `whose`): the switch was upgraded in place
    (git pull && ./scripts/install.sh) while it ran, and a worker it started again (one that
    died) is the new one. It never will run there: the switch's control process is the old one
    until restarted. The supervisor says the same before it starts one (workers_refused)."""
    return (f"the switch's shared memory is of version {found}, {whose} of version "
            f"{ours}: the switch was upgraded while it ran; restart it")


def main(argv: list[str] | None = None) -> int:
    """Run the worker (exit code: 0 stopped, 1 failed). A Python exception is a failure as
    fail says one: its type and message the reason, its traceback after it."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Ctrl-C and a terminal's hangup reach the whole process group; the control process decides
    # when workers stop (SIGHUP is its reload: the workers it keeps go on forwarding). They come
    # blocked (Supervisor._spawn): ignored, one that came meanwhile is let go of.
    for sig in GROUP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)
    ready = socket.socket(fileno=args.ready)
    try:
        return _run(args, ready)
    except Exception as e:
        reason = f"{type(e).__qualname__}: {e}" if str(e) else type(e).__qualname__
        return fail(ready, args.queue, reason, traceback.format_exc())


def _run(args: argparse.Namespace, ready: socket.socket) -> int:
    """Set the fast path up over the ports that come on `ready`, and forward until stopped."""
    from tapswitch import fastpath     # here: a module that fails to load is said as any failure
    lib, ffi = fastpath.lib, fastpath.ffi
    if lib.ts_die_with_parent() != 0:
        return 1          # the control process is already gone
    try:
        shared = fastpath.Shared.attach(args.shm)
    except fastpath.VersionMismatch as e:
        return fail(ready, args.queue, upgraded(e.found, e.ours))
    try:
        io = fastpath.io_backend()
    except ValueError as e:
        return fail(ready, args.queue, str(e))
    queue_fds = receive_ports(ready)
    if queue_fds is None:
        return 0          # let go of before it had ports (a start that failed)
    n = max(queue_fds, default=-1) + 1
    fds = ffi.new("int[]", [queue_fds.get(i, -1) for i in range(n)] or [-1])
    w = lib.ts_worker_new(shared.ptr, args.queue, fds, n, io)
    if w == ffi.NULL and io in (lib.TS_IO_URING, lib.TS_IO_URING_BURST):
        # io_uring refused (seccomp, kernel.io_uring_disabled): read/write, as worker.backend will say.
        w = lib.ts_worker_new(shared.ptr, args.queue, fds, n, lib.TS_IO_READWRITE)
    if w == ffi.NULL:
        return fail(ready, args.queue, f"cannot start the fast path: {os.strerror(ffi.errno)}")
    ids = tuple(int(x) for x in args.user.split(":")) if args.user else None
    try:
        drop_privileges(ids)
    except OSError as e:
        return fail(ready, args.queue, f"cannot drop privileges: {e}")
    if ids is not None and lib.ts_die_with_parent() != 0:
        return 1          # asked again: a new uid cleared it (and the parent may be gone meanwhile)
    how = fastpath.IO_NAMES[lib.ts_worker_io(w)] + (" registered" if lib.ts_worker_buffers_registered(w) else "")
    # Go when told: on a reload the worker this one replaces forwards until then.
    try:
        ready.send(b"R" + how.encode())   # set up, and how
        if ready.recv(16) != b"G":
            return 0      # not wanted after all (the control process let go of us)
    except OSError:
        return 0          # the same, the control process gone (stopped while starting)
    rc = lib.ts_worker_run(w)      # until SIGTERM (0: every frame it read was forwarded) or an error
    if rc == 0:
        lib.ts_worker_free(w)       # lets go of its queues (a removed port's device goes with us)
        try:
            ready.send(b"D")            # drained: the next worker may go before we have exited
        except OSError:
            pass          # the control process stopped listening: it waits for our exit instead
        return 0
    return fail(ready, args.queue, f"fast path stopped: {os.strerror(-rc)}")


if __name__ == "__main__":
    sys.exit(main())

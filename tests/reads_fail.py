"""Make read(2) fail for a while, for real: a seccomp filter hands every read(2) of the
process that installs it (trap_reads) to a listener, and ReadFaults, in another process,
answers them: the ones it is told to fail return an errno while `failing` is set, every
other read goes on as if no filter were there. A plain seccomp filter (tests/no_io_uring.py)
answers the same way for good; this one can stop. io_uring's reads are no read(2): no
filter sees them. x86_64 only (the filter names the syscall by number).

As a wrapper, `python tests/reads_fail.py PYTHON -m tapswitch ARGS...` runs `tapswitch
ARGS...` in this process; while the file $TAPSWITCH_TEST_READS_FAIL names exists, each worker
the switch starts traps its reads once set up to (its imports done), and hands the listener to
the unix socket whose path the file holds before it runs (`reads_fail.py --worker`)."""

import ctypes
import errno
import fcntl
import os
import select
import socket
import struct
import sys
import threading

MARK = "TAPSWITCH_TEST_READS_FAIL"
NR_READ, NR_SECCOMP = 0, 317                    # x86_64
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_RET_USER_NOTIF, SECCOMP_RET_ALLOW = 0x7FC00000, 0x7FFF0000
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100           # _IOWR('!', 0, struct seccomp_notif), 80 bytes
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101           # _IOWR('!', 1, struct seccomp_notif_resp), 24 bytes
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
NOTIF = struct.Struct("=QIIiIQ6Q")              # id, pid, flags, seccomp_data (nr, arch, ip, args)
RESP = struct.Struct("=QqiI")                   # id, val, error, flags


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def trap_reads() -> int:
    """From now on every read(2) of this process (and of its children) waits for a listener's
    answer: the listener's fd."""
    def insn(code, jt, jf, k):
        return struct.pack("=HBBI", code, jt, jf, k)
    prog = ctypes.create_string_buffer(b"".join([
        insn(0x20, 0, 0, 0),                        # ld [seccomp_data.nr]
        insn(0x15, 0, 1, NR_READ),                  # jeq read
        insn(0x06, 0, 0, SECCOMP_RET_USER_NOTIF),   # ret USER_NOTIF
        insn(0x06, 0, 0, SECCOMP_RET_ALLOW),        # ret ALLOW
    ]))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fprog = _Fprog(4, ctypes.addressof(prog))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    fd = libc.syscall(ctypes.c_long(NR_SECCOMP), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                      ctypes.c_long(SECCOMP_FILTER_FLAG_NEW_LISTENER), ctypes.byref(fprog))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "seccomp")
    return fd


class ReadFaults:
    """Answers, in a thread, the reads trapped behind each listener given (add): a read for
    which fails(pid, fd) is true fails with `err` while `failing` is set (counted in `failed`),
    any other goes on."""

    def __init__(self, fails, err: int = errno.EIO):
        self.fails, self.err = fails, err
        self.failing = threading.Event()
        self.failed = 0
        self.listeners: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def add(self, listener: int) -> None:
        self.listeners = [*self.listeners, listener]

    def close(self) -> None:
        """Stop answering, and close the listeners: a read trapped from now on fails (ENOSYS)."""
        self._stop.set()
        self._thread.join()
        for fd in self.listeners:
            os.close(fd)

    def _serve(self) -> None:
        while not self._stop.is_set():
            listeners = self.listeners
            if not listeners:
                self._stop.wait(0.05)
                continue
            ready, _, _ = select.select(listeners, [], [], 0.05)
            for fd in ready:
                self._answer(fd)

    def _answer(self, listener: int) -> None:
        req = bytearray(NOTIF.size)
        try:
            fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, req)
        except OSError:
            return              # ENOENT: its reader was killed meanwhile
        nid, pid, _flags, _nr, _arch, _ip, fd, *_ = NOTIF.unpack(req)
        fail = self.failing.is_set() and self.fails(pid, fd & 0xFFFFFFFF)
        if fail:
            resp = RESP.pack(nid, 0, -self.err, 0)
        else:
            resp = RESP.pack(nid, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)
        try:
            fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, bytearray(resp))
        except OSError:
            return              # ENOENT: the same
        if fail:
            self.failed += 1


def is_tap_queue(pid: int, fd: int) -> bool:
    """fd of process pid is a TAP queue (opened from /dev/net/tun)."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/net/tun"
    except OSError:
        return False


def failing_worker(where: str, argv: list[str]) -> int:
    """A worker (argv: its arguments) whose reads are trapped, the listener sent to `where`."""
    from tapswitch import fastpath, worker     # noqa: F401 (imported before its reads are trapped)
    listener = trap_reads()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(where)
        socket.send_fds(s, [b"L"], [listener])
    os.close(listener)
    return worker.main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(failing_worker(sys.argv[2], sys.argv[3:]))
    from in_process import run, swap_workers

    run(lambda: swap_workers(__file__, MARK))

"""Run a command where io_uring is refused, as Docker's default seccomp profile
refuses it: `python tests/no_io_uring.py [--errno N] COMMAND...` installs a
seccomp filter answering io_uring_setup with errno N (default EPERM; ENOSYS
is a kernel without io_uring) and execs COMMAND, which keeps the filter, as do
its children. x86_64 only (the filter names the syscall by number)."""

import ctypes
import errno
import os
import struct
import sys

NR_IO_URING_SETUP = 425          # x86_64
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x00050000, 0x7FFF0000


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def refuse_io_uring(err: int = errno.EPERM) -> None:
    def insn(code, jt, jf, k):
        return struct.pack("=HBBI", code, jt, jf, k)
    prog = ctypes.create_string_buffer(b"".join([
        insn(0x20, 0, 0, 0),                        # ld [seccomp_data.nr]
        insn(0x15, 0, 1, NR_IO_URING_SETUP),        # jeq io_uring_setup
        insn(0x06, 0, 0, SECCOMP_RET_ERRNO | err),  # ret ERRNO(err)
        insn(0x06, 0, 0, SECCOMP_RET_ALLOW),        # ret ALLOW
    ]))
    libc = ctypes.CDLL(None, use_errno=True)
    fprog = _Fprog(4, ctypes.addressof(prog))
    if (libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            or libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0):
        raise OSError(ctypes.get_errno(), "seccomp")


if __name__ == "__main__":
    args = sys.argv[1:]
    err = errno.EPERM
    if args[:1] == ["--errno"]:
        err, args = int(args[1]), args[2:]
    refuse_io_uring(err)
    os.execvp(args[0], args)

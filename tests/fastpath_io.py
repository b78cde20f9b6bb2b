"""The fast path's I/O backends, for tests: `io_backend` (autouse where
imported) runs each test once per backend, with $TAPSWITCH_IO set, and
`IO()` is what a test passes to ts_worker_new. io_uring is skipped where the
kernel refuses it (seccomp, kernel.io_uring_disabled)."""

import os

import pytest

from tapswitch import fastpath
from tapswitch._fastpath import ffi, lib


NO_IO_URING = os.path.join(os.path.dirname(__file__), "no_io_uring.py")   # runs a command without io_uring


def backend_started(io: int) -> str | None:
    """The backend a worker asked for `io` starts on here ("readwrite", "uring",
    "uring-burst"), or None when ts_worker_new refuses (io_uring refused)."""
    shared = fastpath.Shared.create(8, 1)
    try:
        w = lib.ts_worker_new(shared.ptr, 0, ffi.new("int[]", [-1]), 1, io)
        if w == ffi.NULL:
            return None
        started = lib.ts_worker_io(w)
        lib.ts_worker_free(w)
        return fastpath.IO_NAMES[started]
    finally:
        shared.close()


# The most a worker pins for its burst buffers (fastpath.c registers TS_BURST strides of
# TS_HEADROOM + TS_FRAME_MAX, each rounded up to 64 bytes).
BURST_BUFFERS_MAX = lib.TS_BURST * (lib.TS_HEADROOM + lib.TS_FRAME_MAX + 64)


def uring_available() -> bool:
    return backend_started(lib.TS_IO_URING) is not None


def auto_backend() -> str:
    """The backend TS_IO_AUTO picks on this machine (burst reads, read/write where io_uring
    is refused; fastpath.h, "I/O backends")."""
    return backend_started(lib.TS_IO_AUTO)


@pytest.fixture(params=["readwrite", "uring", "uring-burst"], autouse=True)
def io_backend(request, monkeypatch):
    if request.param.startswith("uring") and not uring_available():
        pytest.skip("io_uring refused by this kernel")
    monkeypatch.setenv(fastpath.IO_ENV, request.param)
    return request.param


def IO() -> int:
    return fastpath.io_backend(os.environ)

"""fastpath_build.py -- builds tapswitch._fastpath (cffi) from fastpath/fastpath.h and .c.

The header is the single source of the ABI: cdef reads it from its "/* cffi:"
marker line up to the final #endif. setup.py names this file in cffi_modules:
`pip install -e .` (or `pip install .`) compiles it.
"""

import os

import cffi

# Relative to this file, not to the cwd: pip builds from elsewhere.
FASTPATH_DIR = os.path.join(os.path.dirname(__file__) or ".", "fastpath")
HEADER = os.path.join(FASTPATH_DIR, "fastpath.h")
SOURCE = os.path.join(FASTPATH_DIR, "fastpath.c")
IO_URING = os.path.join(FASTPATH_DIR, "io_uring.c")   # the io_uring backend (liburing)


def cdef_text(header: str) -> str:
    """The declarations cffi reads: from the marker comment "/* cffi: ..."
    (kept, so the comment stays whole) up to, not including, the final #endif."""
    lines = header.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("/* cffi:"))
    end = max(i for i, line in enumerate(lines) if line.startswith("#endif"))
    return "\n".join(lines[start:end])


with open(HEADER) as f:
    _cdef = cdef_text(f.read())

ffibuilder = cffi.FFI()
ffibuilder.cdef(_cdef)
ffibuilder.set_source(
    "tapswitch._fastpath",
    '#include "fastpath.h"',
    sources=[SOURCE, IO_URING],
    libraries=["uring"],
    include_dirs=[FASTPATH_DIR],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
)

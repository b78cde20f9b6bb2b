#!/usr/bin/env bash
# Fuzz the fast path for a long time under AddressSanitizer and
# UndefinedBehaviorSanitizer.
#
# Builds a sanitizer variant of the cffi extension (tapswitch._fastpath) into
# a temporary directory -- never over the in-tree .so -- next to a copy of the
# Python package, and runs tests/test_fuzz_fastpath.py against it, run after
# run with a fresh Hypothesis seed, until the time is up or a run fails. A
# sanitizer report aborts the run and names the line; a model mismatch is
# shrunk by Hypothesis and kept in .hypothesis/ (the next plain pytest run
# replays it).
#
#   scripts/fuzz.sh [SECONDS [EXAMPLES_PER_RUN]]     defaults: 3600 and 20000
#
# Needs gcc with libasan/libubsan (Debian: gcc) and the test dependencies
# (pip install -e '.[test]'). No root needed. PYTHON picks the interpreter
# (default: .venv/bin/python if there is one, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-3600}
examples=${2:-20000}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
libasan=$(gcc -print-file-name=libasan.so)
[ -e "$libasan" ] || { echo "fuzz.sh: no libasan.so from gcc (apt-get install gcc)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/tapswitch-fuzz.XXXXXX")
keep=0
cleanup() { if [ "$keep" = 1 ]; then echo "fuzz.sh: logs kept in $work" >&2; else rm -rf "$work"; fi; }
trap cleanup EXIT

# The package, as plain files: the sanitized extension goes beside them.
mkdir -p "$work/tapswitch"
cp src/tapswitch/*.py src/tapswitch/*.yaml "$work/tapswitch/"
"$PYTHON" - "$work" <<'PY'
import importlib.util
import sys

import cffi

work = sys.argv[1]
spec = importlib.util.spec_from_file_location("fastpath_build", "src/tapswitch/fastpath_build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
ffi = cffi.FFI()
ffi.cdef(build.cdef_text(open(build.HEADER).read()))
ffi.set_source("tapswitch._fastpath", '#include "fastpath.h"', sources=[build.SOURCE],
               include_dirs=[build.FASTPATH_DIR],
               extra_compile_args=["-O1", "-g", "-fno-omit-frame-pointer", "-std=gnu11", *sanitizers],
               extra_link_args=sanitizers)
print("fuzz.sh: built", ffi.compile(tmpdir=work, verbose=False))
PY

export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"
# Python itself is not instrumented: the ASan runtime must be loaded first.
export LD_PRELOAD="$libasan${LD_PRELOAD:+ $LD_PRELOAD}"
# Every Python allocation through malloc, so that ASan also guards the buffers
# the test hands to C (MACs, records, settings).
export PYTHONMALLOC=malloc
# Python's own allocations look like leaks at exit: leaks are not the question here.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:symbolize=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export TAPSWITCH_FUZZ_EXAMPLES="$examples"

"$PYTHON" -c '
import sys, tapswitch._fastpath as m
if not m.__file__.startswith(sys.argv[1]):
    sys.exit(f"fuzz.sh: would test {m.__file__}, not the sanitized build")
print("fuzz.sh: testing", m.__file__)' "$work"

deadline=$((SECONDS + seconds))
run=0
while [ "$SECONDS" -lt "$deadline" ]; do
  run=$((run + 1))
  seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
  echo "fuzz.sh: run $run, seed $seed, $examples examples per test, $((deadline - SECONDS)) s left"
  if ! "$PYTHON" -m pytest -q -x -p no:cacheprovider --hypothesis-seed="$seed" \
       tests/test_fuzz_fastpath.py >"$work/run-$run.log" 2>&1; then
    keep=1
    tail -n 80 "$work/run-$run.log"
    echo "fuzz.sh: run $run failed (seed $seed); again with:" >&2
    echo "  TAPSWITCH_FUZZ_EXAMPLES=$examples PYTHONPATH=$work LD_PRELOAD=$libasan PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 \\" >&2
    echo "    $PYTHON -m pytest -x --hypothesis-seed=$seed tests/test_fuzz_fastpath.py" >&2
    exit 1
  fi
  tail -n 1 "$work/run-$run.log"
done
echo "fuzz.sh: $run runs, no failure"

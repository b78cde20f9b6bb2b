#!/usr/bin/env bash
# Fuzz the fast path for a long time under AddressSanitizer and
# UndefinedBehaviorSanitizer.
#
# Copies the package and the tests into a temporary directory, builds there a
# sanitizer variant of the cffi extension (tapswitch._fastpath) -- never over
# the in-tree .so -- and runs tests/test_fuzz_fastpath.py (frames checked
# against a model) and tests/test_fuzz_fastpath_bytes.py (random and mutated
# frames, many more, checked by what holds of every frame) against it, run
# after run with a fresh seed, until the time is up or a run fails. The copy
# keeps a long run consistent while the tree changes. A sanitizer report
# aborts the run and names the line; a frame the model disagrees with is
# shrunk by Hypothesis; the random driver names its seed and round. On
# failure the directory is kept: its log, its .hypothesis/ database, and the
# command that repeats the run.
#
#   scripts/fuzz.sh [SECONDS [EXAMPLES_PER_RUN [FRAMES_PER_RUN]]]     defaults: 3600, 20000 and 300000
#
# Needs gcc with libasan/libubsan (Debian: gcc) and the test dependencies
# (pip install -e '.[test]'). No root needed. PYTHON picks the interpreter
# (default: .venv/bin/python if there is one, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-3600}
examples=${2:-20000}
frames=${3:-300000}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=$PWD/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
libasan=$(gcc -print-file-name=libasan.so)
[ -e "$libasan" ] || { echo "fuzz.sh: no libasan.so from gcc (apt-get install gcc)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/tapswitch-fuzz.XXXXXX")
keep=0
cleanup() { if [ "$keep" = 1 ]; then echo "fuzz.sh: kept $work" >&2; else rm -rf "$work"; fi; }
trap cleanup EXIT

# The package as plain files (the sanitized extension goes beside them), and the tests.
mkdir -p "$work/tapswitch" "$work/tests/integration"
cp src/tapswitch/*.py src/tapswitch/*.yaml "$work/tapswitch/"
cp -r src/tapswitch/fastpath "$work/tapswitch/"
cp tests/*.py "$work/tests/"
# tests/conftest.py imports tests.integration.helpers (its teardowns hold interrupts).
cp tests/integration/__init__.py tests/integration/helpers.py "$work/tests/integration/"

# The extension as fastpath_build.py makes it (same sources, libraries and
# warnings), with the sanitizers and debug information instead of -O2.
"$PYTHON" - "$work" <<'PY'
import importlib.util
import os
import sys

work = sys.argv[1]
spec = importlib.util.spec_from_file_location("fastpath_build", os.path.join(work, "tapswitch", "fastpath_build.py"))
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

ffi = build.ffibuilder
# cffi keeps set_source()'s arguments here; compile() reads them.
module, source, source_extension, kwds = ffi._assigned_source
sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
kwds = dict(kwds)
kwds["extra_compile_args"] = [a for a in kwds.get("extra_compile_args", []) if not a.startswith("-O")] \
    + ["-O1", "-g", "-fno-omit-frame-pointer", *sanitizers]
kwds["extra_link_args"] = [*kwds.get("extra_link_args", []), *sanitizers]
ffi._assigned_source = (module, source, source_extension, kwds)
print("fuzz.sh: built", ffi.compile(tmpdir=work, verbose=False))
PY

cd "$work"
export PYTHONPATH="$work"
# Python itself is not instrumented: the ASan runtime must be loaded first.
export LD_PRELOAD="$libasan${LD_PRELOAD:+ $LD_PRELOAD}"
# Every Python allocation through malloc, so that ASan also guards the buffers
# the test hands to C (MACs, records, settings).
export PYTHONMALLOC=malloc
# Python's own allocations look like leaks at exit: leaks are not the question here.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:symbolize=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export TAPSWITCH_FUZZ_EXAMPLES="$examples"
export TAPSWITCH_FUZZ_FRAMES="$frames"

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
  echo "fuzz.sh: run $run, seed $seed, $examples examples per test, $frames random frames, $((deadline - SECONDS)) s left"
  if ! TAPSWITCH_FUZZ_SEED="$seed" "$PYTHON" -m pytest -q -x -p no:cacheprovider --hypothesis-seed="$seed" \
       --hypothesis-show-statistics tests/test_fuzz_fastpath.py tests/test_fuzz_fastpath_bytes.py >"run-$run.log" 2>&1; then
    keep=1
    tail -n 80 "run-$run.log"
    echo "fuzz.sh: run $run failed (seed $seed); again with:" >&2
    echo "  cd $work && TAPSWITCH_FUZZ_EXAMPLES=$examples TAPSWITCH_FUZZ_FRAMES=$frames TAPSWITCH_FUZZ_SEED=$seed \\" >&2
    echo "    PYTHONPATH=$work LD_PRELOAD=$libasan PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 \\" >&2
    echo "    $PYTHON -m pytest -x --hypothesis-seed=$seed tests/test_fuzz_fastpath.py tests/test_fuzz_fastpath_bytes.py" >&2
    exit 1
  fi
  grep -E "passing examples" "run-$run.log" || true
  tail -n 1 "run-$run.log"
done
echo "fuzz.sh: $run runs, no failure"

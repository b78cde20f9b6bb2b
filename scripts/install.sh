#!/usr/bin/env bash
# Install tapswitch on Debian, as root: the system packages it needs, a
# virtualenv in .venv with tapswitch built into it (the C fast path is
# compiled here), and the `tapswitch` command in /usr/local/bin.
#   --no-link   leave /usr/local/bin/tapswitch as it is (scripts/test.sh: the
#               tests run this clone's .venv, not the tapswitch the system runs)
# Run again, it brings the same install up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
link=yes
for arg in "$@"; do
  case $arg in
    --no-link) link=no ;;
    *) echo "usage: $0 [--no-link]" >&2; exit 2 ;;
  esac
done

need=(iproute2 gcc liburing-dev)   # liburing: the fast path's io_uring backend
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
python3 - <<'PY' 2>/dev/null || need+=(python3-dev)
import os, sysconfig
assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
PY
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
modprobe tun 2>/dev/null || true

# A .venv without pip (what `python3 -m venv` leaves when it is cut short, or when it ran
# without python3-venv) is made again: pip is what the rest needs.
.venv/bin/python -m pip --version >/dev/null 2>&1 || python3 -m venv --clear .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
# Bytecode now, as a non-editable install would: the first start (or every one, under
# PYTHONDONTWRITEBYTECODE) need not compile the sources (imports 0.62 -> 0.55 s here).
.venv/bin/python -m compileall -q src/tapswitch
if [ "$link" = no ]; then
  echo "tapswitch installed: $PWD/.venv/bin/tapswitch"
  exit 0
fi
ln -sf "$PWD/.venv/bin/tapswitch" /usr/local/bin/tapswitch
echo "tapswitch installed: /usr/local/bin/tapswitch -> $PWD/.venv/bin/tapswitch"

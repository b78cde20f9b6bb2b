#!/usr/bin/env bash
# Install what the tests use (as root, on Debian) and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k fdb -x
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install.sh --no-link     # this clone's .venv; the system's tapswitch command is left alone
tools=(iproute2 iputils-ping iperf3 netsniff-ng tcpdump curl prometheus procps util-linux strace qemu-system-x86 busybox-static cpio linux-perf zstd)
missing=()
for p in "${tools[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' -r dashboards/requirements.txt -r bench/requirements.txt
exec .venv/bin/python -m pytest -q -rs tests "$@"

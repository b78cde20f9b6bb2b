#!/usr/bin/env bash
# Install tapswitch on Debian, as root: the system packages it needs, a
# virtualenv in .venv with tapswitch built into it (the C fast path is
# compiled here), and the `tapswitch` command in /usr/local/bin.
#   --no-link   leave /usr/local/bin/tapswitch as it is (scripts/test.sh: the
#               tests run this clone's .venv, not the tapswitch the system runs)
#   --uninstall take away what this clone installed (uninstall below)
#   --purge     with --uninstall: /etc/tapswitch/tapswitch.yaml too
#   DESTDIR=DIR (environment) /usr/local/bin, /etc and /run are under DIR, and
#               systemd is left alone (tests/test_shipping.py)
# Run again, it brings the same install up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: $0 [--no-link] | $0 --uninstall [--purge]" >&2; exit 2; }
link=yes uninstall=no purge=no
for arg in "$@"; do
  case $arg in
    --no-link) link=no ;;
    --uninstall) uninstall=yes ;;
    --purge) purge=yes ;;
    *) usage ;;
  esac
done
[ "$uninstall/$link" = yes/no ] && usage
[ "$uninstall/$purge" = no/yes ] && usage
destdir=${DESTDIR:-}
bin=$destdir/usr/local/bin/tapswitch            # what the unit's ExecStart runs
units=$destdir/etc/systemd/system                 # where the README's commands put the unit
unit=$units/tapswitch.service
etc=$destdir/etc/tapswitch
config=$etc/tapswitch.yaml
rundir=$destdir/run/tapswitch                     # its RuntimeDirectory, kept when it stops
# systemd is told only when it runs the machine (sd_booted(3)), never for a DESTDIR.
systemd=no
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then systemd=yes; fi

# Take away what install.sh and the README's service commands made, and nothing else: the
# service, its unit and the link when the link is this clone's (the unit runs whatever the
# link names), the config with --purge only, the clone's .venv and build outputs. A switch
# started by hand from this clone is the user's: it is named and nothing is removed, since
# a switch whose .venv is gone may not import what its stop needs, and would leave its
# devices behind. Run again, it finds nothing more to do.
uninstall() {
  local clone target="" ours=no linked=no pid p running=() kept=()
  clone=$(pwd -P)
  if [ -L "$bin" ] || [ -e "$bin" ]; then
    linked=yes
    target=$(readlink -f "$bin" || readlink "$bin" || true)
    case $target in "$clone"/*) ours=yes ;; esac
  fi

  for maps in /proc/[0-9]*/maps; do
    pid=${maps#/proc/}; pid=${pid%/maps}
    grep -qF -e " $clone/.venv/" -e " $clone/src/" "$maps" 2>/dev/null || continue
    # The service's switch is stopped below, through systemd.
    if [ $systemd/$ours = yes/yes ] && grep -qE '/tapswitch\.service$' "/proc/$pid/cgroup" 2>/dev/null; then
      continue
    fi
    running+=("$pid")
  done
  if [ ${#running[@]} -gt 0 ]; then
    echo "tapswitch runs from $clone, started by hand: stop it (Ctrl-C, or kill -TERM PID)," \
         "then uninstall again. Nothing was removed." >&2
    for pid in "${running[@]}"; do
      echo "  $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)" >&2
    done
    exit 1
  fi

  if [ $ours = yes ]; then
    if [ $systemd = yes ] && [ -e "$unit" ]; then
      systemctl disable --now tapswitch.service     # SIGTERM: the switch removes what it made
    fi
    # Enabled where no systemd runs (a container, an image being built): the links by hand.
    for p in "$units"/*.wants/tapswitch.service "$units"/*.requires/tapswitch.service; do
      if [ -L "$p" ]; then rm -f "$p"; echo "removed $p"; fi
    done
    if [ -e "$unit" ]; then
      rm -f "$unit"; echo "removed $unit"
      if [ $systemd = yes ]; then
        systemctl daemon-reload
        systemctl reset-failed tapswitch.service 2>/dev/null || true
      fi
    fi
    if rmdir "$rundir" 2>/dev/null; then echo "removed $rundir"; fi     # if empty: a clean stop
    rm -f "$bin"; echo "removed $bin"
  elif [ $linked = yes ]; then
    kept+=("$bin: it is not this clone's (-> ${target:-?})")
    if [ -e "$unit" ]; then kept+=("$unit: it runs $bin"); fi
  elif [ -e "$unit" ]; then
    kept+=("$unit: no $bin says it is this clone's")
  fi

  if [ $purge = yes ] && [ $linked/$ours = yes/no ]; then
    if [ -e "$config" ]; then kept+=("$config: the tapswitch $bin names may run it"); fi
  elif [ $purge = yes ]; then
    if [ -e "$unit.d" ]; then rm -rf "$unit.d"; echo "removed $unit.d"; fi
    if [ -e "$config" ]; then rm -f "$config"; echo "removed $config"; fi
    if [ -d "$etc" ]; then
      if rmdir "$etc" 2>/dev/null; then echo "removed $etc"
      else kept+=("$etc: it holds files tapswitch did not put there"); fi
    fi
  else
    if [ -e "$unit.d" ]; then kept+=("$unit.d: your settings for the service (--purge removes them)"); fi
    if [ -e "$config" ]; then kept+=("$config: your config (--purge removes it)"); fi
  fi

  # In the clone: what `pip install -e .` and compileall made.
  for p in .venv src/tapswitch.egg-info src/tapswitch/_fastpath.abi3.so; do
    if [ -e "$p" ] || [ -L "$p" ]; then rm -rf "$p"; echo "removed $clone/$p"; fi
  done
  find src/tapswitch -name __pycache__ -type d -prune -exec rm -rf {} +

  for p in "${kept[@]}"; do echo "kept $p"; done
  echo "tapswitch uninstalled from $clone (the Debian packages install.sh needed stay)"
}
if [ "$uninstall" = yes ]; then
  uninstall
  exit 0
fi

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
# Safe while a switch runs from this clone: the build's copy into src/tapswitch/ (distutils'
# copy_file) unlinks the old _fastpath.abi3.so before it writes the new one, so the switch's
# processes keep the file they mapped, and a build that fails ends before the copy and leaves
# the old one (tests/test_shipping.py). A copy with cp would write into the mapped file.
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
# Bytecode now, as a non-editable install would: the first start (or every one, under
# PYTHONDONTWRITEBYTECODE) need not compile the sources (imports 0.62 -> 0.55 s here).
.venv/bin/python -m compileall -q src/tapswitch
if [ "$link" = no ]; then
  echo "tapswitch installed: $PWD/.venv/bin/tapswitch"
  exit 0
fi
mkdir -p "$(dirname "$bin")"
ln -sf "$PWD/.venv/bin/tapswitch" "$bin"
echo "tapswitch installed: $bin -> $PWD/.venv/bin/tapswitch"

"""The machine's services a package the bench installs would run: kept from starting, left disabled.

`apt-get install openvswitch-switch` on a machine run by systemd enables the package's
services and starts them (its postinst: `deb-systemd-helper enable`, then `deb-systemd-invoke
start`, which starts a unit only if `systemctl is-enabled` says enabled), and they start again
at every boot. The bench runs an Open vSwitch of its own and uses none of them. So when the
bench installs the package (`--install-ovs`), while apt-get runs the services are masked for
this boot only (`systemctl mask --runtime`: a link in /run, which a reboot does not keep,
whatever becomes of the bench), and nothing starts them; afterwards they are unmasked and
disabled: as before the package came, neither running nor enabled. A package that was installed
before the bench ran is not the bench's: its services are not touched.

`root` is systemctl's --root: the tests do the same in a directory of their own.
"""

import contextlib
import os
import shutil
import subprocess


def _systemctl(*argv: str, root: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *([f"--root={root}"] if root else []), *argv],
                          capture_output=True, text=True, timeout=60)


def package_installed(package: str) -> bool:
    """dpkg has `package` installed (configured: its postinst has run)."""
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.split()[-1:] == ["installed"]


def systemd_runs(root: str | None = None) -> bool:
    """systemd is the init (sd_booted: /run/systemd/system exists). Without it nothing is masked:
    a mask would make the directory, and every package script would take systemd for running."""
    return shutil.which("systemctl") is not None and os.path.isdir(os.path.join(root or "/", "run/systemd/system"))


def state(unit: str, root: str | None = None) -> str:
    """What `systemctl is-enabled` says of unit: enabled, disabled, static, masked-runtime, ...;
    "" for a unit that is not there."""
    lines = _systemctl("is-enabled", "--", unit, root=root).stdout.split()
    return lines[-1] if lines else ""


@contextlib.contextmanager
def held(units: tuple[str, ...], root: str | None = None):
    """While the body runs, units are masked for this boot, so nothing starts them (those masked
    already stay as they are); afterwards unmasked. Yields the units it masked."""
    masked: list[str] = []
    if systemd_runs(root):
        for unit in units:
            if not state(unit, root).startswith("masked") \
                    and _systemctl("mask", "--runtime", "--", unit, root=root).returncode == 0:
                masked.append(unit)
    try:
        yield masked
    finally:
        if masked:
            _systemctl("unmask", "--runtime", "--", *masked, root=root)


def leave_disabled(units: tuple[str, ...], root: str | None = None) -> list[str]:
    """Disable those of units that are enabled (a masked unit is left as it is), and stop any that
    runs; returns the units it disabled or stopped."""
    if shutil.which("systemctl") is None:
        return []
    enabled = [u for u in units if state(u, root) in ("enabled", "enabled-runtime")]
    if enabled:
        _systemctl("disable", "--", *enabled, root=root)
    running = []
    if systemd_runs(root) and root is None:
        running = [u for u in units if _systemctl("is-active", "--quiet", "--", u).returncode == 0]
        if running:
            _systemctl("stop", "--", *running)
    return list(dict.fromkeys(enabled + running))

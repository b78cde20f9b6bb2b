"""A tiny QEMU guest for integration tests: a Debian cloud kernel, a busybox initramfs, one virtio-net NIC on a tap.

The guest is built from Debian packages only:

- the kernel of `linux-image-cloud-amd64` (the versioned package it depends
  on, fetched with `apt-get download` and unpacked with `dpkg-deb` into a
  cache directory, kept between runs: only its vmlinuz and the virtio-net
  modules are kept);
- busybox from `busybox-static`, packed with `cpio` into an initramfs whose
  /init loads the virtio-net modules, brings eth0 up and runs the test's
  shell script, then powers off.

Facts measured on these machines: /dev/kvm exists but is paravirtual and
hangs stock kernels, so the guest runs under TCG (`-accel tcg`), and boots to
a working eth0 in about 3 s. With `script=no`, QEMU leaves its tap down: the
test (or tapswitch, attaching it as a remote port) brings it up.

The serial console (ttyS0) goes to a file; the test reads it for what the
script prints, e.g. `PING-OK`.
"""

import glob
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

CACHE = os.environ.get("TAPSWITCH_TEST_CACHE", "/var/cache/tapswitch-test")
KERNEL_PACKAGE = "linux-image-cloud-amd64"   # a metapackage: depends on the current versioned image
BUSYBOX = "/bin/busybox"                     # from busybox-static
QEMU = "qemu-system-x86_64"
# virtio-net is a module in Debian's cloud kernel; each needs the ones before it.
MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
           "failover", "net_failover", "virtio_net")


class GuestError(AssertionError):
    """The guest could not be built, or did not say what the test waited for."""


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel image and the modules the guest loads, in load order."""

    package: str
    vmlinuz: str
    modules: tuple[str, ...]


def _run(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)


def kernel_package() -> str:
    """The versioned kernel package that linux-image-cloud-amd64 points at now (apt's candidate)."""
    r = _run("apt-cache", "show", "--no-all-versions", KERNEL_PACKAGE)
    m = re.search(r"^Depends:.*?\b(linux-image-[0-9][^ ,(]*)", r.stdout, re.M)
    if r.returncode != 0 or not m:
        raise GuestError(f"apt-cache cannot resolve {KERNEL_PACKAGE}: {r.stderr.strip() or 'no Depends'}")
    return m[1]


def _cached(cache: str, package: str) -> Kernel | None:
    d = os.path.join(cache, package)
    vmlinuz = os.path.join(d, "vmlinuz")
    modules = tuple(os.path.join(d, f"{m}.ko") for m in MODULES)
    if all(os.path.exists(p) for p in (vmlinuz,) + modules):
        return Kernel(package, vmlinuz, modules)
    return None


def _any_cached(cache: str) -> Kernel | None:
    """The newest complete kernel in the cache (when apt cannot be asked)."""
    found = [k for p in sorted(glob.glob(os.path.join(cache, "linux-image-*")), reverse=True)
             if (k := _cached(cache, os.path.basename(p)))]
    return found[0] if found else None


def _download(package: str, into: str) -> str:
    """apt-get download the package into `into`; refresh apt's lists once if the mirror moved on."""
    for attempt in range(2):
        r = _run("apt-get", "download", "-q", package, cwd=into, timeout=300)
        debs = glob.glob(os.path.join(into, f"{package}_*.deb"))
        if r.returncode == 0 and debs:
            return debs[0]
        if attempt == 0:
            _run("apt-get", "update", "-qq", timeout=300)
    raise GuestError(f"apt-get download {package} failed: {r.stderr.strip()[-500:]}")


def _unpack_module(found: str, dest: str) -> None:
    if found.endswith(".ko.xz"):
        with lzma.open(found) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    elif found.endswith(".ko.zst"):
        with open(dest, "wb") as out:
            r = subprocess.run(["zstd", "-dc", found], stdout=out, stderr=subprocess.PIPE)
        if r.returncode != 0:
            raise GuestError(f"cannot decompress {found} (is zstd installed?)")
    else:
        shutil.copyfile(found, dest)


def kernel(cache: str = CACHE) -> Kernel:
    """The guest's kernel and modules, downloaded and unpacked once into `cache`."""
    os.makedirs(cache, exist_ok=True)
    try:
        package = kernel_package()
    except GuestError:
        _run("apt-get", "update", "-qq", timeout=300)
        try:
            package = kernel_package()
        except GuestError:
            fallback = _any_cached(cache)
            if fallback:
                return fallback
            raise
    if found := _cached(cache, package):
        return found
    work = tempfile.mkdtemp(prefix=".unpack-", dir=cache)
    try:
        deb = _download(package, work)
        root = os.path.join(work, "root")
        r = _run("dpkg-deb", "-x", deb, root)
        if r.returncode != 0:
            raise GuestError(f"dpkg-deb -x {deb}: {r.stderr.strip()}")
        out = os.path.join(work, "out")
        os.mkdir(out)
        images = glob.glob(os.path.join(root, "boot", "vmlinuz-*"))
        if not images:
            raise GuestError(f"{package} has no /boot/vmlinuz-*")
        shutil.copyfile(images[0], os.path.join(out, "vmlinuz"))
        ko = {}
        for path in glob.glob(os.path.join(root, "lib", "modules", "*", "kernel", "**", "*.ko*"), recursive=True):
            ko.setdefault(re.sub(r"\.ko(\.xz|\.zst)?$", "", os.path.basename(path)), path)
        for m in MODULES:
            if m not in ko:
                raise GuestError(f"{package} has no module {m}")
            _unpack_module(ko[m], os.path.join(out, f"{m}.ko"))
        try:
            os.rename(out, os.path.join(cache, package))
        except OSError:
            pass   # another run unpacked it meanwhile
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found = _cached(cache, package)
    if found is None:
        raise GuestError(f"{package} did not unpack into {cache}")
    return found


INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {modules}; do
    insmod /lib/modules/$m.ko || echo "GUEST-MODULE-FAILED $m"
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
ip link set lo up
ip link set eth0 up
echo GUEST-UP
{script}
echo GUEST-DONE
poweroff -f
"""


def initramfs(path: str, kern: Kernel, script: str) -> str:
    """Write an uncompressed newc initramfs to `path`: busybox, the modules, and an /init
    that loads them, raises eth0 (and lo) and runs `script` (busybox sh), then powers off."""
    with tempfile.TemporaryDirectory(prefix="initramfs-") as root:
        for d in ("bin", "lib/modules"):
            os.makedirs(os.path.join(root, d))
        shutil.copy(BUSYBOX, os.path.join(root, "bin", "busybox"))
        for ko in kern.modules:
            shutil.copy(ko, os.path.join(root, "lib", "modules"))
        init = os.path.join(root, "init")
        with open(init, "w") as f:
            f.write(INIT.format(modules=" ".join(MODULES), script=script))
        os.chmod(init, 0o755)
        names = []
        for d, dirs, files in os.walk(root):
            rel = os.path.relpath(d, root)
            names += [os.path.normpath(os.path.join(rel, n)) for n in dirs + files]
        with open(path, "wb") as out:
            r = subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=root,
                               input="\n".join(["."] + names).encode(), stdout=out, stderr=subprocess.PIPE)
        if r.returncode != 0:
            raise GuestError(f"cpio: {r.stderr.decode().strip()}")
    return path


class VM:
    """A QEMU guest whose one NIC is the tap `tap` (created by QEMU unless it exists), console in a file.
    With `netns`, QEMU runs in that network namespace, and so its tap is made there."""

    def __init__(self, kern: Kernel, initrd: str, tap: str, mac: str, workdir: str,
                 netns: str | None = None, memory: int = 256):
        self.console_path = os.path.join(workdir, "console.log")
        self.qemu_log_path = os.path.join(workdir, "qemu.log")
        self.tap = tap
        self.netns = netns
        self.argv = (["ip", "netns", "exec", netns] if netns else []) + [
            QEMU, "-accel", "tcg", "-m", str(memory), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{self.console_path}",
            "-kernel", kern.vmlinuz, "-initrd", initrd,
            "-append", "console=ttyS0 panic=-1 loglevel=4 tsc=reliable mitigations=off",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
        ]
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self) -> "VM":
        open(self.console_path, "w").close()
        self._qemu_log = open(self.qemu_log_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._qemu_log,
                                     stderr=subprocess.STDOUT)
        return self

    def console(self) -> str:
        with open(self.console_path, errors="replace") as f:
            return f.read()

    def wait_for_tap(self, timeout: float = 10.0) -> None:
        """Until QEMU has made its tap."""
        deadline = time.monotonic() + timeout
        show = ["ip"] + (["-n", self.netns] if self.netns else []) + ["link", "show", "dev", self.tap]
        while subprocess.run(show, capture_output=True).returncode != 0:
            self._check_running()
            if time.monotonic() > deadline:
                raise GuestError(f"QEMU did not create tap {self.tap} in {timeout}s\n{self._logs()}")
            time.sleep(0.05)

    def wait_for(self, *texts: str, timeout: float = 60.0) -> str:
        """The console once any of `texts` is on it; GuestError with the console if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.console()
            if any(t in out for t in texts):
                return out
            if self.proc.poll() is not None:
                out = self.console()   # the last lines may have landed as QEMU exited
                if any(t in out for t in texts):
                    return out
                raise GuestError(f"QEMU exited ({self.proc.returncode}) before {' or '.join(texts)}\n{self._logs()}")
            if time.monotonic() > deadline:
                raise GuestError(f"no {' or '.join(texts)} on the guest console in {timeout}s\n{self._logs()}")
            time.sleep(0.05)

    def wait(self, timeout: float = 30.0) -> int:
        """Until the guest has powered off (QEMU exits)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GuestError(f"the guest did not power off in {timeout}s\n{self._logs()}") from None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._qemu_log.close()

    def _check_running(self) -> None:
        if self.proc.poll() is not None:
            raise GuestError(f"QEMU exited ({self.proc.returncode})\n{self._logs()}")

    def _logs(self) -> str:
        with open(self.qemu_log_path, errors="replace") as f:
            qemu = f.read()
        return f"--- qemu ---\n{qemu}--- console ---\n{self.console()}"

"""Network namespaces the ports live in: resolve them, create missing named ones, remove those on stop.

A port's `netns:` is a name (/run/netns/NAME, created when missing and then
owned by the switch), a path (/proc/PID/ns/net, a bind mount) or `pid:N`.
Only namespaces the switch created are removed again.

Nothing here forks: the control process has threads (control socket,
metrics), and a fork of a threaded process can hang on a lock some other
thread held. A namespace is entered by a short-lived thread instead
(setns changes only the calling thread), which makes what is needed there
(a netlink socket, a new namespace) and ends.
"""

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import socket
import threading

import structlog

from tapswitch import rtnl

log = structlog.get_logger("tapswitch.netns")

RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703     # linux/nsfs.h: _IO(0xb7, 0x3)
MS_REC, MS_BIND, MS_SHARED = 0x4000, 0x1000, 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(Exception):
    """A namespace could not be found or made; the message is one line for the user."""


def is_netns(path: str) -> bool:
    """Is the file at `path` a network namespace (nsfs), not a plain file or directory?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False            # ENOTTY: not an nsfs file
    finally:
        os.close(fd)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _in_thread(fn):
    """Run fn() in a new thread (which may change its own namespaces) and return its result."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:   # handed back to the caller's thread
            out["error"] = e

    t = threading.Thread(target=target, name="netns")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _enter(nspath: str) -> None:
    fd = os.open(nspath, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns {nspath}")
    finally:
        os.close(fd)


def call_in(nspath: str | None, fn):
    """fn() run in the network namespace at nspath (None: this thread's, here)."""
    if nspath is None:
        return fn()

    def inside():
        _enter(nspath)
        return fn()
    return _in_thread(inside)


def netlink_socket(nspath: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket (datagram, as pyroute2 wants it) in the namespace at nspath."""
    return call_in(nspath, rtnl.route_socket)


def create(name: str) -> str:
    """Create the named namespace /run/netns/NAME, as `ip netns add` does; return its path."""
    os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
    # /run/netns must be a shared mount, so namespaces mounted on it are seen by every mount namespace.
    if _libc.mount(b"", RUN_DIR.encode(), b"none", MS_SHARED | MS_REC, None) != 0:
        _check(_libc.mount(RUN_DIR.encode(), RUN_DIR.encode(), b"none", MS_BIND | MS_REC, None), "bind /run/netns")
        _check(_libc.mount(b"", RUN_DIR.encode(), b"none", MS_SHARED | MS_REC, None), "share /run/netns")
    path = os.path.join(RUN_DIR, name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

    def make():
        _check(_libc.unshare(CLONE_NEWNET), "unshare")
        _check(_libc.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net".encode(), path.encode(),
                           b"none", MS_BIND, None), f"mount {path}")
    try:
        _in_thread(make)
    except OSError:
        os.unlink(path)
        raise
    return path


def remove(name: str) -> None:
    """Remove the named namespace, as `ip netns del` does."""
    path = os.path.join(RUN_DIR, name)
    if _libc.umount2(path.encode(), MNT_DETACH) != 0 and ctypes.get_errno() != errno.EINVAL:
        _check(-1, f"umount {path}")
    os.unlink(path)


class Namespaces:
    """The namespaces of one switch run, and which of them it created.

    The names it created are also written to a state file, so that a start
    after a crash (SIGKILL, power loss) knows which namespaces were the dead
    run's to remove (`recover`).
    """

    def __init__(self, state_path: str | None = None) -> None:
        self.created: list[str] = []
        self.state_path = state_path
        self.lock = threading.Lock()      # ports are made several at once (ports.create_all)

    def recover(self, wanted: set) -> None:
        """Take over what a dead run left: namespaces still named in the config stay ours, others go."""
        if not self.state_path or not os.path.exists(self.state_path):
            return
        try:
            with open(self.state_path) as f:
                left = json.load(f)["created"]
        except (OSError, ValueError, KeyError) as e:
            log.warning("netns.state_unreadable", path=self.state_path, error=str(e))
            left = []
        for name in left:
            if not os.path.exists(os.path.join(RUN_DIR, name)):
                continue
            if name in wanted:
                self.created.append(name)
                log.info("netns.adopted", netns=name)
            else:
                self._remove(name)
        self._save()

    def ensure(self, port) -> str | None:
        """Return the path of `port`'s namespace, creating a missing named one."""
        path = port.netns_path
        if path is None:
            return None
        with self.lock:
            return self._ensure(port, path)

    def _ensure(self, port, path: str) -> str:
        if os.path.exists(path):
            if not is_netns(path):
                stale = " (a stale file? the namespace it named is gone)" if port.netns_kind == "name" else ""
                raise NetnsError(f"port {port.name}: {path} is not a network namespace{stale}")
            return path
        if port.netns_kind != "name":
            raise NetnsError(f"port {port.name}: network namespace {port.netns} does not exist")
        try:
            create(port.netns)
        except OSError as e:
            raise NetnsError(f"port {port.name}: cannot create network namespace {port.netns}: {e}") from None
        self.created.append(port.netns)
        self._save()
        log.info("netns.created", netns=port.netns)
        return path

    def _save(self) -> None:
        if not self.state_path:
            return
        if not self.created:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state_path)
            return
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"created": self.created}, f)
        os.replace(tmp, self.state_path)

    def remove_unused(self, in_use: set) -> None:
        """Remove the namespaces this run created that no port uses any more."""
        for name in [n for n in self.created if n not in in_use]:
            self.created.remove(name)
            self._remove(name)
        self._save()

    def _remove(self, name: str) -> None:
        try:
            remove(name)
            log.info("netns.removed", netns=name)
        except OSError as e:
            log.warning("netns.remove_failed", netns=name, error=str(e))

    def remove_created(self) -> None:
        """Remove every namespace this run created, newest first."""
        while self.created:
            self._remove(self.created.pop())
        self._save()

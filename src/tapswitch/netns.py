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

import ctypes
import errno
import fcntl
import os
import socket
import stat
import struct
import threading
from dataclasses import dataclass

import structlog

from tapswitch import rtnl
from tapswitch.runstate import UNKNOWN, Identity, RunState

log = structlog.get_logger("tapswitch.netns")

RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703     # linux/nsfs.h: _IO(0xb7, 0x3)
MS_REC, MS_BIND, MS_SHARED = 0x4000, 0x1000, 1 << 20
MNT_DETACH = 2
SO_NETNS_COOKIE = 71       # asm-generic/socket.h (Linux 5.14)
BOOT_ID = "/proc/sys/kernel/random/boot_id"
OWN = "/proc/self/ns/net"    # the main thread's: the switch's namespace

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(Exception):
    """A namespace could not be found or made; the message is one line for the user."""


@dataclass(frozen=True)
class Lost:
    """A namespace this run made that is no longer at its name: `ip netns del` (a TAP in it
    keeps it alive, unseen), or replaced by another of that name."""

    name: str
    what: str                       # "deleted", or "replaced by another namespace of that name"
    where: tuple[int, int]          # the namespace itself, as tap.device_netns names a TAP's


# What open() says of a path with no file there to be a namespace: none (a pid gone, a stale
# name), or a socket; and what NS_GET_NSTYPE says of an open file that is no nsfs file.
NOT_THERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ESRCH, errno.ENXIO, errno.ENODEV, errno.ELOOP,
                       errno.ENAMETOOLONG})
NOT_NSFS = frozenset({errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS})


def is_netns(path: str) -> bool:
    """Is the file at `path` a network namespace (nsfs), not a plain file or directory?
    OSError if that cannot be told: out of descriptors or memory (EMFILE, ENFILE, ENOMEM), not
    ours to open (EACCES). "No" then would be a guess, and its callers act on it: a namespace
    said to be none, its mount taken for create()'s placeholder file."""
    try:
        # O_NONBLOCK: a FIFO's open waits for a writer, for good (the start, a reload's control
        # loop); opened so, it is one more file that is no nsfs file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in NOT_THERE:
            return False
        raise
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError as e:
        if e.errno in NOT_NSFS:
            return False
        raise
    finally:
        os.close(fd)


def name_at(path: str) -> str | None:
    """The name of the named namespace at `path` (/run/netns/NAME, or another way there), else None."""
    head, name = os.path.split(path)
    return name if os.path.realpath(head) == os.path.realpath(RUN_DIR) else None


def is_own(path: str) -> bool:
    """Is the namespace at `path` the one the switch runs in?"""
    there, here = os.stat(path), os.stat(OWN)
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)


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


def create(name: str, made=lambda ident: None) -> str:
    """Create the named namespace /run/netns/NAME, as `ip netns add` does; return its path.
    made(identity) is called once the namespace exists and before it is at its name (its
    `cookie`, or None without cookies): what it writes down then, a kill cannot outrun."""
    os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
    # /run/netns must be a shared mount, so namespaces mounted on it are seen by every mount namespace.
    if _libc.mount(b"", RUN_DIR.encode(), b"none", MS_SHARED | MS_REC, None) != 0:
        _check(_libc.mount(RUN_DIR.encode(), RUN_DIR.encode(), b"none", MS_BIND | MS_REC, None), "bind /run/netns")
        _check(_libc.mount(b"", RUN_DIR.encode(), b"none", MS_SHARED | MS_REC, None), "share /run/netns")
    path = os.path.join(RUN_DIR, name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

    def make():
        _check(_libc.unshare(CLONE_NEWNET), "unshare")
        made(_identity(_own_cookie))
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


def _is_placeholder(path: str) -> bool:
    """Is the file at `path` what create() mounts a namespace on: empty, regular, not yet mounted?
    (A namespace mounted there is empty and regular too.) OSError if that cannot be told (is_netns)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0 and not is_netns(path)


def cookie(path: str) -> Identity | None:
    """Which namespace is at `path`, for all time: this boot's id and the kernel's cookie of the
    namespace, which no other gets while the machine is up (its inode number goes to the next
    namespace made once it is freed). None if no namespace is there, or the kernel has no
    cookies (before Linux 5.14); OSError if whether one is there cannot be told (is_netns)."""
    if not is_netns(path):
        return None
    return _identity(lambda: call_in(path, _own_cookie))


def _own_cookie() -> int:
    """The netns cookie of the calling thread's namespace (OSError before Linux 5.14)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        return struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def _identity(read_cookie) -> Identity | None:
    """"BOOT_ID:COOKIE" of the namespace whose cookie read_cookie() reads, or None without cookies."""
    try:
        value = read_cookie()
        with open(BOOT_ID) as f:
            return f"{f.read().strip()}:{value}"
    except OSError:
        return None


class Namespaces:
    """The namespaces of one switch run, and which of them it created.

    The names it created, and the identity of each (`cookie`), are kept in
    the run's state file (runstate.py), written before each is made, so that
    a start after a crash (SIGKILL, power loss) knows which namespaces were
    the dead run's to remove (`recover`). While it runs, the switch holds
    each namespace it made open, so the inode at its name is that
    namespace's for as long as it lives, and no other can have it. A
    namespace is removed only if the one at its name is still the one the
    switch made: `ip netns del` and `ip netns add` of the same name give the
    user's namespace, never the switch's.
    """

    def __init__(self, state: RunState | None = None) -> None:
        self.state = state if state is not None else RunState()
        self.held: dict[str, int] = {}    # name -> an open fd of the namespace made (or taken over)
        self.unreported: list[Lost] = []  # lost as a port was made under its name again: lost() says so
        # The names the ports being made give their namespaces (set before they are made): a path
        # /run/netns/NAME to one of them is that namespace, made by whichever port comes first.
        self.named: set[str] = set()
        self.lock = threading.Lock()      # ports are made several at once (ports.create_all)

    @property
    def created(self) -> list[str]:
        """The names of the namespaces this run created, oldest first."""
        return list(self.state.netns)

    def recover(self, dead: RunState, wanted: set) -> None:
        """Take over what a dead run left: namespaces still named in the config stay ours, others go.
        A name whose file is only the placeholder made before the namespace (the run was killed
        in between) is removed, so that the namespace can be made; the identity of one killed
        once it was mounted was written down before (create's `made`). One that now names another
        namespace than the dead run made is left alone, as is one the dead run could not tell
        for sure. Each name done leaves `dead`: a start that fails meanwhile keeps the rest listed."""
        for name, ident in list(dead.netns.items()):
            self._recover(name, ident, wanted)     # NetnsError: this name, and the rest, stay in `dead`
            del dead.netns[name]
        self.state.save()

    def _recover(self, name: str, ident: Identity | None, wanted: set) -> None:
        path = os.path.join(RUN_DIR, name)
        if not os.path.lexists(path):
            return
        try:
            placeholder = not is_netns(path) and (ident is None or _is_placeholder(path))
            theirs = not placeholder and ident not in (None, UNKNOWN) and cookie(path) == ident
        except OSError as e:
            # Out of descriptors, say: what is at the name is not known, so nothing is done to it
            # (unlinked as a placeholder, it could be a namespace's mount), and it stays listed.
            raise NetnsError(f"cannot tell what {path} is, a namespace a run that did not stop made: "
                             f"{e.strerror or e}") from None
        if placeholder:
            # Killed before the namespace was mounted on its file (after it wrote down its identity, or before).
            self._unlink_placeholder(name)
        elif ident is None or ident == UNKNOWN:
            log.warning("netns.left", netns=name, reason="the dead run could not tell which namespace it made "
                        "(no netns cookie before Linux 5.14, or an older version killed as it made it): it may be someone else's")
        elif not theirs:
            log.warning("netns.left", netns=name, reason="not the namespace the dead run made")
        elif name in wanted:
            self._hold(name, ident)
            log.info("netns.adopted", netns=name)
        else:
            self._remove_at(name)

    def ensure(self, port) -> str | None:
        """Return the path of `port`'s namespace, creating a missing named one."""
        path = port.netns_path
        if path is None:
            return None
        with self.lock:
            return self._ensure(port, path, self._name(port))

    def _name(self, port) -> str | None:
        """The name under which `port`'s namespace is made if it is missing: its netns if that is
        a name, or NAME for a path /run/netns/NAME when a port being made names NAME (ports in
        one namespace, one naming it by name, the other by path: in whichever order they are
        made, it is one namespace, the switch's); else None: the namespace must exist."""
        if port.netns_kind == "name":
            return port.netns
        if port.netns_kind == "path" and (name := name_at(port.netns)) in self.named:
            return name
        return None

    def _ensure(self, port, path: str, name: str | None) -> str:
        if name in self.held and (what := self._whereabouts(name)) is not None:
            # Made by this run, deleted or replaced since (in a reload, say): not ours now, nor
            # are its ports still in it; one of that name is made again, or is the user's.
            self.unreported.append(self._lose(name, what))
            del self.state.netns[name]
            self.state.save()
        try:
            os.stat(path)
            exists = True
        except PermissionError as e:    # there, but not ours to open: "does not exist" would mislead
            ptrace = " (another process's namespace needs CAP_SYS_PTRACE)" if path.startswith("/proc/") else ""
            raise NetnsError(f"port {port.name}: cannot open network namespace {port.netns}: "
                             f"{e.strerror}{ptrace}") from None
        except OSError:
            exists = False
        if exists:
            try:
                found = is_netns(path)
            except OSError as e:        # EMFILE, say: "is not a network namespace" would be a guess
                raise NetnsError(f"port {port.name}: cannot check that {port.netns} is a network namespace: "
                                 f"{e.strerror or e}") from None
            if not found:
                stale = " (a stale file? the namespace it named is gone)" if port.netns_kind == "name" else ""
                raise NetnsError(f"port {port.name}: {path} is not a network namespace{stale}")
            if is_own(path):        # a host process's pid, or a container's pid since reused by one
                raise NetnsError(f"port {port.name}: {port.netns} is the switch's own network namespace, "
                                 f"not a container's (a port there has no netns)")
            return path
        if name is None:
            raise NetnsError(f"port {port.name}: network namespace {port.netns} does not exist")
        # Listed before it is made: a run killed while making it leaves a name the next start knows;
        # and with its identity before it is at that name: one killed after, a namespace it knows.
        self.state.netns[name] = None
        self.state.save()

        def made(ident: Identity | None) -> None:
            self.state.netns[name] = ident
            self.state.save()
        try:
            create(name, made)
        except OSError as e:
            del self.state.netns[name]
            self.state.save()
            raise NetnsError(f"port {port.name}: cannot create network namespace {name}: {e.strerror or e}") from None
        try:
            self._hold(name, cookie(path) or UNKNOWN)
        except OSError as e:            # EMFILE, say: made, and not to be left unlisted
            remove(name)
            del self.state.netns[name]
            self.state.save()
            raise NetnsError(f"port {port.name}: cannot open network namespace {name}: {e.strerror or e}") from None
        self.state.save()
        log.info("netns.created", netns=name)
        return path

    def _hold(self, name: str, ident: Identity | None) -> None:
        """Keep namespace `name` open while the run lasts, and list it with its identity."""
        self.held[name] = os.open(os.path.join(RUN_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
        self.state.netns[name] = ident

    def _release(self, name: str) -> None:
        fd = self.held.pop(name, None)
        if fd is not None:
            os.close(fd)

    def _lose(self, name: str, what: str) -> Lost:
        """Let go of namespace `name`, which `what` became of; say which namespace it was."""
        held = os.fstat(self.held[name])
        self._release(name)
        return Lost(name, what, (held.st_dev, held.st_ino))

    def _whereabouts(self, name: str) -> str | None:
        """What became of namespace `name` this run made and holds: None if it is still at its
        name, else "deleted" or "replaced by another namespace of that name"."""
        try:
            now = os.stat(os.path.join(RUN_DIR, name))
        except FileNotFoundError:
            return "deleted"
        held = os.fstat(self.held[name])
        return None if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino) else \
            "replaced by another namespace of that name"

    def lost(self) -> list[Lost]:
        """The namespaces this run created that went from their name since the last call:
        deleted (`ip netns del`: a TAP in it keeps it alive, unseen), or replaced by another of
        the same name. They are no longer the switch's, to remove or to make TAPs in; a port
        made since under that name (in a reload) is in another namespace than theirs."""
        with self.lock:
            gone, self.unreported = self.unreported, []
            for name in [n for n in self.state.netns if n in self.held]:     # not those being made
                what = self._whereabouts(name)
                if what is not None:
                    gone.append(self._lose(name, what))
                    del self.state.netns[name]
            if gone:
                self.state.try_save()
        return gone

    def remove_unused(self, in_use: set) -> None:
        """Remove the namespaces this run created that no port uses any more. `in_use`: the
        ports' netns paths, since a port may name a namespace by its path (/run/netns/NAME)."""
        used = {name_at(path) for path in in_use if path is not None}
        for name in [n for n in self.created if n not in used]:
            self.state.netns.pop(name)
            self._remove(name)
        self.state.try_save()

    def _remove(self, name: str) -> None:
        """Remove namespace `name` this run made, if it is still the one at that name."""
        if name not in self.held:
            return              # listed, never made
        what = self._whereabouts(name)
        self._release(name)
        if what == "deleted":
            log.info("netns.gone", netns=name, reason="deleted by someone else")
        elif what is not None:
            log.warning("netns.left", netns=name, reason="another namespace has its name now; it is not the switch's")
        else:
            self._remove_at(name)

    def _remove_at(self, name: str) -> None:
        try:
            remove(name)
            log.info("netns.removed", netns=name)
        except OSError as e:
            log.warning("netns.remove_failed", netns=name, error=str(e))

    def _unlink_placeholder(self, name: str) -> None:
        try:
            os.unlink(os.path.join(RUN_DIR, name))
            log.info("netns.removed", netns=name, reason="the placeholder of a namespace the dead run did not finish")
        except OSError as e:
            log.warning("netns.remove_failed", netns=name, error=str(e))

    def remove_created(self) -> None:
        """Remove every namespace this run created, newest first."""
        while self.state.netns:
            name, _ident = self.state.netns.popitem()
            try:
                self._remove(name)
            except Exception as e:      # the others still go
                log.warning("netns.remove_failed", netns=name, error=str(e) or type(e).__name__)
        self.state.save()

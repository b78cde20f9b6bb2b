"""The run's state file, `<control socket>.state`: what a start after a crash must heal.

It lists the named namespaces the run created, each with its identity (the
boot's id and the kernel's cookie of the namespace, which no other namespace
gets while the machine is up: one of that name made by someone else since is
not the switch's, even when it got the freed namespace's inode number), and
the remote interfaces it attached (tc rules, promisc, MTU), each with its
ifindex and its state before the run changed it (the same `tc.DeviceState`
its rules' cookies carry: a run killed before its first rule left no
cookie). Each is written down before it is made, so a run killed half-way
leaves nothing unlisted. The next start reads the dead run's list
(`load`), heals it (netns.Namespaces.recover, remote.heal), then the file
holds the new run's. It is removed when it lists nothing: after a clean stop.

A write that fails (/run full, an I/O error) is logged (`runstate.save_failed`)
and leaves the state right in memory, for the next save to write. What must be
written down before it is made (a namespace, a remote's state) is then not
made (SaveError); what is forgotten (`try_save`) only leaves the file listing
more than there is, which a start heals as it heals the rest: what is not
there, or not the dead run's, is left alone.
"""

import contextlib
import json
import os
import threading
from dataclasses import asdict

import structlog

from tapswitch.tc import DeviceState

log = structlog.get_logger("tapswitch.runstate")

Identity = str      # a namespace's "BOOT_ID:COOKIE" (netns.cookie), or UNKNOWN
UNKNOWN = "?"       # made, but not known for sure (no netns cookie before Linux 5.14; an older file's inode)
Original = tuple[int, DeviceState]   # a remote interface's ifindex, and its state before the run changed it


def _is_netns_name(name) -> bool:
    """A name `ip netns` could have made under /run/netns: no path of another file."""
    return (isinstance(name, str) and 0 < len(name.encode()) <= 255 and name not in (".", "..")
            and not any(c in "/\0" for c in name))


def _is_ifname(name) -> bool:
    """A name the kernel could give a device (dev_valid_name)."""
    return (isinstance(name, str) and 0 < len(name.encode()) <= 15 and name not in (".", "..")
            and not any(c in "/:\0" or c.isspace() for c in name))


def _original(o: dict) -> Original:
    """A remote interface's state as save() wrote it down (ValueError if it is not)."""
    values = (o["ifindex"], o["up"], o["promisc"], o["allmulti"], o["mtu"], o["clsact_added"])
    if [type(v) for v in values] != [int, bool, bool, bool, int, bool]:
        raise ValueError(f"not the state of an interface: {o!r}")
    return values[0], DeviceState(*values[1:])


class SaveError(OSError):
    """The state file could not be written; the message is one line for the user."""

    def __str__(self) -> str:
        return self.strerror


class RunState:
    """What one run has made that outlives its process if it is killed."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.netns: dict[str, Identity | None] = {}   # namespace created -> its identity (None while made)
        self.remotes: list[str] = []                   # remote interfaces attached (or about to be)
        self.originals: dict[str, Original] = {}       # remote interface -> as it was before attach() changed it
        self.given_back: set[str] = set()              # remote interfaces this run's detach() gave back (not saved)
        self.lock = threading.Lock()                   # ports are made several at once
        self.unsaved: str | None = None                # why the last save failed (the file is behind), or None

    @classmethod
    def load(cls, path: str) -> "RunState":
        """What a dead run left at `path` (nothing if there is no file)."""
        state = cls(path)
        try:
            with open(path) as f:
                data = json.load(f)
            ids = data.get("netns_ids", {})
            bad = [name for name in data["created"] if not _is_netns_name(name)]
            if bad:
                raise ValueError(f"not namespace names: {bad!r}")
            # An identity of another form (an inode: any later namespace may have it) is no proof.
            state.netns = {name: ids[name] if isinstance(ids.get(name), str) else UNKNOWN if name in ids else None
                           for name in data["created"]}
            remotes, originals = data.get("remotes", []), data.get("remote_originals", {})
            if not isinstance(remotes, list) or not all(map(_is_ifname, [*remotes, *originals])):
                raise ValueError(f"not interface names: {remotes!r}, {list(originals)!r}")
            state.remotes = list(remotes)
            state.originals = {name: _original(o) for name, o in originals.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("runstate.unreadable", path=path, error=str(e))
            state.netns, state.remotes, state.originals = {}, [], {}
        return state

    def save(self) -> None:
        """Write it down (atomically); remove the file when there is nothing to list. SaveError
        (logged) if it cannot be written."""
        if not self.path:
            return
        with self.lock:
            try:
                self._write()
            except OSError as e:
                self.unsaved = f"cannot write the state file {self.path}: {e.strerror or e}"
                log.error("runstate.save_failed", path=self.path, error=e.strerror or str(e))
                raise SaveError(e.errno, self.unsaved) from None
            self.unsaved = None

    def try_save(self) -> None:
        """save() after something listed went: a failure is logged, and the next save writes it."""
        with contextlib.suppress(SaveError):
            self.save()

    def _write(self) -> None:
        # Copies first (each a single step the GIL does not cut): a port made in another
        # thread may add to them meanwhile, under its own lock.
        netns, remotes, originals = dict(self.netns), list(self.remotes), dict(self.originals)
        if not netns and not remotes and not originals:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({"created": list(netns),
                           "netns_ids": {n: i for n, i in netns.items() if i is not None},
                           "remotes": remotes,
                           "remote_originals": {n: {"ifindex": i, **asdict(s)}
                                                for n, (i, s) in originals.items()}}, f)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)           # a full filesystem keeps no half-written file
            raise

    def record_original(self, remote: str, original: Original | None) -> None:
        """Write down a remote interface's state before this run changes it (None: forget it,
        once it is given back); attach() calls it before it touches the interface."""
        with self.lock:
            if original is None:
                self.originals.pop(remote, None)
                self.given_back.add(remote)
            else:
                self.originals[remote] = original
                self.given_back.discard(remote)
        if original is None:
            self.try_save()
        else:
            self.save()

"""fastpath.py -- the Python handle on the C fast path: shared memory and its readers.

`Shared` maps the region laid out in fastpath/fastpath.h (port table,
port settings, counters, MAC table): the control process creates it, worker
processes attach to its memfd. Worker processes import this module, so it
imports nothing beyond os, mmap, errno, struct and the compiled cffi module.
(What goes into the settings is tapswitch.settings's business, in the
control process; this module only hands out the copy to write.)
"""

import errno
import mmap
import os
import struct

from tapswitch import _fastpath
from tapswitch._fastpath import ffi, lib


def file_id(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at path now; None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


# The file this process loaded the fast path from (PATH, as it was then). An in-place upgrade
# (install.sh) builds a new file under that name, and leaves ours to the processes that have it
# mapped: a worker started from then on loads the new one (supervisor.fast_path_version).
PATH = _fastpath.__file__
LOADED = file_id(PATH)

COUNTERS = ("rx_packets", "rx_bytes", "rx_errors", "rx_dropped",
            "tx_packets", "tx_bytes", "tx_errors", "tx_dropped", "flooded",
            # why rx_dropped (each is also in it)
            "vlan_dropped", "acl_dropped", "mac_limit_dropped", "storm_dropped")
FDB_STATS = ("learned", "moved", "aged", "evicted")
MIRROR_COUNTERS = ("packets", "bytes", "dropped")
PUBLISH_TIMEOUT_MS = 1000   # a live worker leaves the old settings within one burst
RECOUNT_TIMEOUT_MS = 100    # fdb_recount's wait for the workers' bursts: one, at most, each

# struct ts_fdb_record, as struct reads it: mac, vlan, port, is_static, seen.
FDB_RECORD = struct.Struct("=6sHHHI")
if FDB_RECORD.size != ffi.sizeof("struct ts_fdb_record"):
    raise ImportError("FDB_RECORD does not match struct ts_fdb_record of fastpath.h")

# The worker's I/O backend (fastpath.h, "I/O backends"): TAPSWITCH_IO in the
# environment picks one; unset or "auto", io_uring with burst reads, the
# cheapest per frame in the bench's A/B (AUTO_IO in fastpath.c), or read/write
# where io_uring is refused.
IO_ENV = "TAPSWITCH_IO"
IO_BACKENDS = {"auto": lib.TS_IO_AUTO, "readwrite": lib.TS_IO_READWRITE, "uring": lib.TS_IO_URING,
               "uring-burst": lib.TS_IO_URING_BURST}
IO_NAMES = {lib.TS_IO_READWRITE: "readwrite", lib.TS_IO_URING: "uring", lib.TS_IO_URING_BURST: "uring-burst"}
ACL_ACTIONS = {lib.TS_ACL_ALLOW: "allow", lib.TS_ACL_DROP: "drop"}


def io_backend(environ=os.environ) -> int:
    """TS_IO_* from $TAPSWITCH_IO; ValueError naming the choices if it is none of them."""
    name = environ.get(IO_ENV, "") or "auto"
    try:
        return IO_BACKENDS[name]
    except KeyError:
        raise ValueError(f"{IO_ENV}={name!r}: expected one of {', '.join(IO_BACKENDS)}") from None


def mac_bytes(mac: str) -> bytes:
    """"aa:bb:cc:dd:ee:ff" -> 6 bytes."""
    b = bytes.fromhex(mac.replace(":", ""))
    if len(b) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return b


class VersionMismatch(ValueError):
    """The shared memory is a switch's, laid out by another version of fastpath.h (its
    TS_VERSION, `found`) than this process's fast path (`ours`): a worker a switch restarts
    after an in-place upgrade meets its old control process's. Only the magic and the version
    are read from it: they stay at the head of struct ts_shared in every version."""

    def __init__(self, found: int, ours: int):
        super().__init__(f"tapswitch shared memory of version {found}, not {ours}")
        self.found, self.ours = found, ours


class Shared:
    """The switch's shared memory. `fd` is the memfd to pass to workers (None in
    one attached: closed once mapped); `ptr` is a `struct ts_shared *`."""

    def __init__(self, fd: int):
        self.fd = fd
        self._mm = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED)
        self._buf = ffi.from_buffer(self._mm)
        self.ptr = ffi.cast("struct ts_shared *", self._buf)
        # Control process: counts at the last reset of a slot whose meaning
        # changed (a port's ACL, a mirror), subtracted from what workers wrote.
        self._acl_base: dict[int, list[int]] = {}
        # A port's base for the rules of the next settings (reset_acl_hits_at_publish): (the settings_gen
        # they are current from, base). A reader takes it from the publish on, as the workers do.
        self._acl_next: dict[int, tuple[int, list[int]]] = {}
        # The mirror in each slot by name, and each slot's base: replaced as one (set_mirrors), so
        # that a reader (a scrape) never sees a mirror with another slot's counts.
        self._mirrors: tuple[tuple[str, ...], dict[int, dict[str, int]]] = ((), {})

    @classmethod
    def create(cls, fdb_size: int, n_workers: int) -> "Shared":
        """A new, initialised region for a MAC table of >= fdb_size entries."""
        size = lib.ts_shared_size(fdb_size)
        if not size:
            raise ValueError(f"MAC table size out of range: {fdb_size}")
        fd = os.memfd_create("tapswitch", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            self = cls(fd)
        except BaseException:
            os.close(fd)
            raise
        seed = int.from_bytes(os.urandom(8), "little")
        rc = lib.ts_shared_init(self.ptr, fdb_size, n_workers, seed)
        if rc:
            self.close()
            raise ValueError(f"bad shared memory parameters: fdb_size={fdb_size} n_workers={n_workers}")
        return self

    @classmethod
    def attach(cls, fd: int) -> "Shared":
        """Map a region another process created (its memfd, inherited).
        Takes ownership of fd, and closes it once mapped: the mapping outlives
        it, and mmap holds a dup of its own (for mmap.size(), which nothing here
        calls). A worker so holds the memfd once, not twice. VersionMismatch if it
        is laid out by another version of the fast path; ValueError if it is not
        tapswitch's."""
        try:
            self = cls(fd)
        finally:
            os.close(fd)
        self.fd = None
        if self.ptr.magic == lib.TS_MAGIC and self.ptr.version != lib.TS_VERSION:
            found = self.ptr.version
            self.close()
            raise VersionMismatch(found, lib.TS_VERSION)
        if self.ptr.magic != lib.TS_MAGIC or len(self._mm) < lib.ts_shared_size(self.ptr.fdb_size):
            self.close()
            raise ValueError(f"fd {fd} is not tapswitch shared memory of version {lib.TS_VERSION}")
        return self

    def close(self) -> None:
        """Unmap and close the fd (one created). Workers made over ptr must be freed first."""
        if self._mm is None:
            return
        self.ptr = None
        ffi.release(self._buf)
        self._mm.close()
        self._mm = None
        if self.fd is not None:
            os.close(self.fd)

    # Ports and counters.

    def set_port(self, index: int, state: int, mtu: int, frame_max: int = 0) -> None:
        """`frame_max`: the longest frame, tags and all, the port's link carries; 0: no bound but `mtu`."""
        port = self.ptr.ports[index]
        port.mtu = mtu          # before state: a port is never seen up with a stale MTU
        port.frame_max = frame_max
        port.state = state

    def reset_counters(self, index: int) -> None:
        """Zero a port slot's counters, its ACL hits and rx_ended included, before a new port takes it (no
        worker serves it then): the new port's count from 0, whatever its rules (the same
        rules as the slot's last port's are no change of rules to settings.apply). Its MAC table
        count is not here: the reload that removed its last port counted it afresh then
        (reset_fdb_entries)."""
        self._acl_base.pop(index, None)     # before the hits: a late reader never sees them negative
        self._acl_next.pop(index, None)
        hits = ffi.sizeof("uint64_t") * lib.TS_MAX_ACL_RULES
        for w in range(lib.TS_MAX_WORKERS):
            ffi.memmove(ffi.addressof(self.ptr.counters[w][index]), bytes(ffi.sizeof("struct ts_counters")),
                        ffi.sizeof("struct ts_counters"))
            ffi.memmove(self.ptr.acl_hits[w][index], bytes(hits), hits)

    def port_state(self, index: int) -> tuple[int, int]:
        """(state, mtu) of a port slot."""
        port = self.ptr.ports[index]
        return port.state, port.mtu

    def queue_counters(self, port: int, worker: int) -> dict[str, int]:
        c = self.ptr.counters[worker][port]
        return {name: getattr(c, name) for name in COUNTERS}

    def counters(self, port: int) -> dict[str, int]:
        """Summed over every worker slot (a slot keeps counting across restarts)."""
        total = dict.fromkeys(COUNTERS, 0)
        for w in range(lib.TS_MAX_WORKERS):
            c = self.ptr.counters[w][port]
            for name in COUNTERS:
                total[name] += getattr(c, name)
        return total

    # The MAC table.

    @property
    def fdb_size(self) -> int:
        """Entries the table was made to hold (mac_table.size)."""
        return self.ptr.fdb_size

    @property
    def fdb_capacity(self) -> int:
        """Slots: a quarter more than fdb_size, so that fdb_size entries fit, rounded up to whole
        buckets of TS_FDB_WAYS."""
        return self.ptr.fdb_capacity

    @property
    def fdb_buckets(self) -> int:
        return self.ptr.fdb_buckets

    def fdb_stats(self) -> dict[str, int]:
        """Summed over the workers' slots and the control process's."""
        total = dict.fromkeys(FDB_STATS, 0)
        for slot in range(lib.TS_CONTROL + 1):
            st = self.ptr.fdb_stats[slot]
            for name in FDB_STATS:
                total[name] += getattr(st, name)
        return total

    def port_fdb_entries(self, index: int) -> int:
        """The port's MAC table entries, as counted: the count is read as signed, below 0 as 0
        (fastpath.c, port_count_sub)."""
        n = self.ptr.ports[index].fdb_entries
        return n if n < 1 << 31 else 0

    def port_fdb_static(self, index: int) -> int:
        """Of the port's entries, how many are static (the MAC limit counts the others)."""
        return self.ptr.ports[index].fdb_static

    def reset_fdb_entries(self, index: int) -> None:
        """Count a port slot's MAC table entries afresh as its static entries: only once no
        learned entry can be on it (no worker serves the slot, and it was flushed since the last
        one that did was reaped) and under the switch's static_lock (nothing else writes its
        count then). A count a killed worker left one off (fastpath.h, "Abandoned slots") is
        right again, and a port given the slot next counts from what is there."""
        port = self.ptr.ports[index]
        port.fdb_entries = port.fdb_static

    def fdb_recount(self, timeout_ms: int = RECOUNT_TIMEOUT_MS) -> bool:
        """Count each port's MAC table entries from the table again (fastpath.h, "Abandoned
        slots"): a count a worker killed between an entry's write and its count's left one off is
        right again. Learning stops meanwhile (milliseconds for a table of a million). False if a
        worker stayed inside a burst for timeout_ms (stopped): nothing counted, try again later.
        Only with every other control-process writer of the table kept out: the switch's
        static_lock held, in its control loop."""
        rc = lib.ts_fdb_recount(self.ptr, timeout_ms)
        if rc not in (0, -errno.ETIMEDOUT):
            raise OSError(-rc, f"fdb_recount: {os.strerror(-rc)}")
        return rc == 0

    def fdb_entries(self) -> int:
        return sum(n for p in self.ptr.ports if (n := p.fdb_entries) < 1 << 31)     # as port_fdb_entries

    def fdb_dump(self) -> list[tuple[str, int, int, bool, int]]:
        """Live entries as (mac, vlan, port, static, seen)."""
        return list(self.fdb_records())

    def fdb_records(self):
        """fdb_dump's entries, copied from the table now (16 bytes an entry), made into tuples one
        at a time as they are iterated: a table of millions is never millions of tuples at once."""
        out = ffi.new("struct ts_fdb_record[]", self.fdb_capacity)
        n = lib.ts_fdb_dump(self.ptr, out, self.fdb_capacity)
        # Read by struct, not field by field through cffi: a tenth of the time, for millions.
        return ((mac.hex(":"), vlan, port, bool(static), seen)
                for mac, vlan, port, static, seen in FDB_RECORD.iter_unpack(ffi.buffer(out, n * FDB_RECORD.size)))

    def fdb_flush(self, port: int | None = None) -> int:
        """Remove learned entries (of one port, or all); returns how many."""
        return lib.ts_fdb_flush(self.ptr, -1 if port is None else port)

    def fdb_age(self, now: int, aging: int, first: int, n: int) -> int:
        """Age n buckets from bucket `first`; returns entries removed."""
        return lib.ts_fdb_age(self.ptr, now, aging, first, n)

    @property
    def fdb_epoch(self) -> int:
        """The aging sweep's epoch (fastpath.h, "Abandoned slots"): fdb_age moves it on once every
        worker has been outside a burst since it last moved, so two moves after a moment every
        burst under way at that moment is over."""
        return self.ptr.fdb_epoch

    def fdb_add_static(self, mac: str, vlan: int, port: int) -> None:
        rc = lib.ts_fdb_add_static(self.ptr, mac_bytes(mac), vlan, port)
        if rc < 0:
            raise OSError(-rc, f"fdb_add_static {mac} vlan {vlan}: {os.strerror(-rc)}")

    def fdb_vlans(self, mac: str) -> list[int]:
        """The VLANs in which the table has an entry for `mac`, in order: a lookup in each of
        1-4094 (some milliseconds), not a copy of the table, which may hold millions."""
        key = mac_bytes(mac)
        return [vlan for vlan in range(1, lib.TS_VLAN_MAX + 1) if lib.ts_fdb_lookup(self.ptr, key, vlan) >= 0]

    def fdb_del(self, mac: str, vlan: int) -> bool:
        """True if an entry was removed, False if there was none."""
        rc = lib.ts_fdb_del(self.ptr, mac_bytes(mac), vlan)
        if rc == -errno.ENOENT:
            return False
        if rc < 0:
            raise OSError(-rc, f"fdb_del {mac} vlan {vlan}: {os.strerror(-rc)}")
        return True

    # Port settings (double-buffered: fastpath.h, "Settings updates").

    def worker_io(self, worker: int) -> str | None:
        """The I/O backend worker `worker` runs ("readwrite", "uring" or "uring-burst"), None before its first poll."""
        return IO_NAMES.get(self.ptr.readers[worker].io)

    def heartbeat(self, worker: int) -> int:
        """Turns of worker `worker`'s loop so far (fastpath.h, "The watchdog"): it moves at
        least once a second while the worker runs, busy or idle."""
        return self.ptr.readers[worker].heartbeat

    def release_reader(self, worker: int) -> None:
        """Clear worker `worker`'s marker of the settings copy it reads (fastpath.h, "Settings
        updates"), which one killed inside a burst leaves: only once its process is reaped and
        none runs for its queue yet (Supervisor._release says why)."""
        self.ptr.readers[worker].active = 0

    def settings_current(self):
        """The `struct ts_settings *` workers use now. Read it, never write it."""
        return lib.ts_settings_current(self.ptr)

    def settings_next(self):
        """The other copy, reset to the defaults (every port in VLAN 1, no
        feature, no mirror; ACL rules left as they were, unused): fill it,
        then settings_publish()."""
        t = lib.ts_settings_next(self.ptr)
        lib.ts_settings_default(t)
        return t

    def settings_publish(self, timeout_ms: int = PUBLISH_TIMEOUT_MS) -> int:
        """Make the copy from settings_next() current; returns the number of
        workers still reading the old one after timeout_ms (0 normally)."""
        stuck = lib.ts_settings_publish(self.ptr, timeout_ms)
        for port, (_gen, base) in list(self._acl_next.items()):
            self._acl_base[port] = base     # before it leaves _acl_next: a reader finds it in one or the other
            del self._acl_next[port]
        return stuck

    # Counters of the features (summed over the workers' slots).

    def acl_hits(self, port: int) -> list[int]:
        """Matches of each of the port's ACL rules, in rule order."""
        return [hits for _action, hits in self.acl_rule_hits(port)]

    def acl_rule_hits(self, port: int) -> list[tuple[str, int]]:
        """(action, matches) of each of the port's ACL rules, in rule order: the rules the workers
        match now (a reload's from its publish on), each counted from its base, read as one."""
        gen = self.ptr.settings_gen
        current = self.ptr.settings[gen & 1]
        staged = self._acl_next.get(port)
        base = staged[1] if staged is not None and staged[0] == gen else self._acl_base.get(port, [])
        hits = []
        for r in range(current.ports[port].acl_rules):
            n = sum(self.ptr.acl_hits[w][port][r] for w in range(self.ptr.n_workers))
            hits.append((ACL_ACTIONS[current.acl[port][r].action], n - (base[r] if r < len(base) else 0)))
        return hits

    def _acl_sums(self, port: int) -> list[int]:
        return [sum(self.ptr.acl_hits[w][port][r] for w in range(self.ptr.n_workers))
                for r in range(lib.TS_MAX_ACL_RULES)]

    def reset_acl_hits_at_publish(self, port: int) -> None:
        """The port's rules change with the next settings_publish: count their hits from 0 from
        then on, as the workers match them; until then the old ones count on. Lost race, stated:
        what the old rules match between this call and the workers' move (a burst per queue at
        most) counts for the new ones."""
        self._acl_next[port] = ((self.ptr.settings_gen + 1) & 0xFFFFFFFF, self._acl_sums(port))

    def reset_storm(self, port: int, kind: int) -> None:
        """The port's rate of this kind changed: its bucket starts full at the new rate
        (its theoretical arrival time, run ahead at the old rate, would hold the
        new one back for up to a second)."""
        self.ptr.storm[port].tat[kind] = 0

    def _mirror_sums(self, mirror: int) -> dict[str, int]:
        total = dict.fromkeys(MIRROR_COUNTERS, 0)
        for w in range(self.ptr.n_workers):
            c = self.ptr.mirror_counters[w][mirror]
            for name in MIRROR_COUNTERS:
                total[name] += getattr(c, name)
        return total

    def mirror_counters(self, mirror: int, base: dict | None = None) -> dict[str, int]:
        """packets, bytes and dropped copies of mirror slot `mirror`."""
        slot_base = (self._mirrors[1] if base is None else base).get(mirror, {})
        return {k: v - slot_base.get(k, 0) for k, v in self._mirror_sums(mirror).items()}

    def mirrors(self) -> list[tuple[str, dict[str, int]]]:
        """(name, mirror_counters) of each mirror, in slot order, as set_mirrors last placed them."""
        names, base = self._mirrors
        return [(name, self.mirror_counters(m, base)) for m, name in enumerate(names)]

    def set_mirrors(self, names, moved: dict[int, dict[str, int] | None]) -> None:
        """Slot m holds mirror names[m] now; each slot in `moved` holds another mirror than before,
        which counts from 0, or, one that was in another slot, on from what it had counted
        there (moved[m], its mirror_counters then)."""
        base = dict(self._mirrors[1])
        for m, counted in moved.items():
            counted = counted or {}
            base[m] = {k: v - counted.get(k, 0) for k, v in self._mirror_sums(m).items()}
        self._mirrors = (tuple(names), base)

    def reset_mirror_counters(self, mirror: int) -> None:
        """The mirror slot holds another mirror now: count from 0 again."""
        self.set_mirrors(self._mirrors[0], {mirror: None})

    def set_busy_poll(self, us: int) -> None:
        """switch.busy_poll_us for every worker, from its next turn."""
        lib.ts_set_busy_poll(self.ptr, us)

    @property
    def busy_poll_us(self) -> int:
        return self.ptr.busy_poll_us

    @staticmethod
    def now() -> int:
        return lib.ts_now()

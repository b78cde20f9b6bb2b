"""fastpath.py -- the Python handle on the C fast path: shared memory and its readers.

`Shared` maps the region laid out in fastpath/fastpath.h (port table,
counters, MAC table): the control process creates it, worker processes attach
to its memfd. Worker processes import this module, so it imports nothing
beyond os, mmap, errno and the compiled cffi module.
"""

import errno
import mmap
import os

from tapswitch._fastpath import ffi, lib

COUNTERS = ("rx_packets", "rx_bytes", "rx_errors", "rx_dropped",
            "tx_packets", "tx_bytes", "tx_errors", "tx_dropped", "flooded")
FDB_STATS = ("learned", "moved", "aged", "evicted")


def mac_bytes(mac: str) -> bytes:
    """"aa:bb:cc:dd:ee:ff" -> 6 bytes."""
    b = bytes.fromhex(mac.replace(":", ""))
    if len(b) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return b


def mac_str(b) -> str:
    return ":".join(f"{x:02x}" for x in bytes(b))


class Shared:
    """The switch's shared memory. `fd` is the memfd to pass to workers;
    `ptr` is a `struct ts_shared *`."""

    def __init__(self, fd: int):
        self.fd = fd
        self._mm = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED)
        self._buf = ffi.from_buffer(self._mm)
        self.ptr = ffi.cast("struct ts_shared *", self._buf)

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
        Takes ownership of fd: close() closes it."""
        self = cls(fd)
        if self.ptr.magic != lib.TS_MAGIC or self.ptr.version != lib.TS_VERSION \
                or len(self._mm) < lib.ts_shared_size(self.ptr.fdb_capacity):
            self.close()
            raise ValueError(f"fd {fd} is not tapswitch shared memory of version {lib.TS_VERSION}")
        return self

    def close(self) -> None:
        """Unmap and close the fd. Workers made over ptr must be freed first."""
        if self._mm is None:
            return
        self.ptr = None
        ffi.release(self._buf)
        self._mm.close()
        self._mm = None
        os.close(self.fd)

    # Ports and counters.

    def set_port(self, index: int, state: int, mtu: int) -> None:
        port = self.ptr.ports[index]
        port.mtu = mtu          # before state: a port is never seen up with a stale MTU
        port.state = state

    def reset_counters(self, index: int) -> None:
        """Zero a port slot's counters before a new port takes it (no worker serves it then)."""
        for w in range(lib.TS_MAX_WORKERS):
            ffi.memmove(ffi.addressof(self.ptr.counters[w][index]), bytes(ffi.sizeof("struct ts_counters")),
                        ffi.sizeof("struct ts_counters"))

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
    def fdb_capacity(self) -> int:
        return self.ptr.fdb_capacity

    def fdb_stats(self) -> dict[str, int]:
        """Summed over the workers' slots and the control process's."""
        total = dict.fromkeys(FDB_STATS, 0)
        for slot in range(lib.TS_CONTROL + 1):
            st = self.ptr.fdb_stats[slot]
            for name in FDB_STATS:
                total[name] += getattr(st, name)
        return total

    def port_fdb_entries(self, index: int) -> int:
        return self.ptr.ports[index].fdb_entries

    def fdb_entries(self) -> int:
        return sum(p.fdb_entries for p in self.ptr.ports)

    def fdb_dump(self) -> list[tuple[str, int, int, bool, int]]:
        """Live entries as (mac, vlan, port, static, seen)."""
        out = ffi.new("struct ts_fdb_record[]", self.fdb_capacity)
        n = lib.ts_fdb_dump(self.ptr, out, self.fdb_capacity)
        return [(mac_str(ffi.buffer(r.mac)), r.vlan, r.port, bool(r.is_static), r.seen)
                for r in out[0:n]]

    def fdb_flush(self, port: int | None = None) -> int:
        """Remove learned entries (of one port, or all); returns how many."""
        return lib.ts_fdb_flush(self.ptr, -1 if port is None else port)

    def fdb_age(self, now: int, aging: int, first: int, n: int) -> int:
        """Age n buckets from bucket `first`; returns entries removed."""
        return lib.ts_fdb_age(self.ptr, now, aging, first, n)

    def fdb_add_static(self, mac: str, vlan: int, port: int) -> None:
        rc = lib.ts_fdb_add_static(self.ptr, mac_bytes(mac), vlan, port)
        if rc < 0:
            raise OSError(-rc, f"fdb_add_static {mac} vlan {vlan}: {os.strerror(-rc)}")

    def fdb_del(self, mac: str, vlan: int) -> bool:
        """True if an entry was removed, False if there was none."""
        rc = lib.ts_fdb_del(self.ptr, mac_bytes(mac), vlan)
        if rc == -errno.ENOENT:
            return False
        if rc < 0:
            raise OSError(-rc, f"fdb_del {mac} vlan {vlan}: {os.strerror(-rc)}")
        return True

    @staticmethod
    def now() -> int:
        return lib.ts_now()

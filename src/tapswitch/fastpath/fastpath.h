/* fastpath.h -- the per-packet half of tapswitch: shared memory layout,
 * MAC learning table and the worker loop.
 *
 * This header is the ABI that cffi reads (keep it free of preprocessor
 * logic below the "cffi:" line: cffi's cdef parser sees only plain
 * declarations) and the design note of the fast path.
 *
 * What maps to what
 * -----------------
 * The control process (Python) allocates one shared memory region (a memfd)
 * laid out as `struct ts_shared` followed by the MAC table, and passes it to
 * every worker process together with the worker's TAP queue fds. Worker q
 * owns queue q of every port: fds[p] is queue q of port p, or -1.
 *
 *   ts_shared.ports[p]          port table        written by: control process
 *   ts_shared.counters[w][p]    per (worker,port) written by: worker w only
 *   ts_shared.fdb_stats[w]      per worker        written by: worker w only
 *   ts_shared.fdb_stats[TS_CONTROL]               written by: control process
 *   ts_shared.ports[p].fdb_entries                every writer, atomically
 *   fdb entries                 MAC table         every worker (learning),
 *                                                 control (aging, flushing)
 *
 * Counters are single-writer and 64-byte aligned: no atomics and no false
 * sharing on the per-packet path. A reader (the metrics collector) sums the
 * workers' slots and may see a count one burst old; it never sees a count go
 * backwards, because a restarted worker keeps writing into the same slot.
 *
 * The MAC table
 * -------------
 * Maps (MAC, VLAN) to (port, last seen). It is a fixed array of buckets of
 * TS_FDB_WAYS entries; an entry lives only in the bucket its key hashes to
 * (keyed by a per-switch random seed, so a remote host cannot aim its source
 * MACs at one bucket it chose in advance). The table never grows: a bucket
 * that is full evicts, fairly, the entry whose port holds the most entries
 * (oldest first among those), as Open vSwitch does to defend against MAC
 * flooding attacks. Static entries are never evicted, aged or moved.
 *
 * Thread-safety. Entries are two 64-bit words written with atomic
 * operations; nothing takes a lock. `key` is claimed with a compare-and-swap
 * from 0, `val` is replaced with a compare-and-swap from the value the writer
 * read, so every change of an entry has exactly one winner, and only the
 * winner adjusts the per-port entry counts. A slot whose key is set and whose
 * val is 0 belongs to the writer that put it there (the claimer, until it
 * writes val; a remover, which then clears key; an evictor, which then writes
 * the new key and val): everyone else skips it. A val carries a 14-bit tag of
 * its key's hash, so a reader that raced with the slot's reuse takes another
 * key's value for its own only if the two tags collide (1 in 16384).
 * Lost races, stated:
 *   - two workers learning the same new MAC at once may each claim a slot;
 *     lookups return the first, the other ages out;
 *   - a reader may see a key whose value is not yet written (val == 0) and
 *     treat it as a miss: the frame is flooded once;
 *   - aging may remove an entry refreshed a moment before; it is relearned
 *     from the next frame.
 *
 * Time is CLOCK_MONOTONIC in whole seconds (ts_now()), the same in every
 * process. Workers refresh `seen` at most once a second per entry, so a
 * steady flow does not write the shared cache line per packet.
 *
 * The worker
 * ----------
 * ts_worker_poll() is one turn of the loop: wait on epoll (level-triggered,
 * no busy polling), then for each ready queue read a burst of frames until
 * the queue is empty or the burst is full, and for each frame:
 *   parse (virtio-net header + Ethernet) -> learn the source -> look up the
 *   destination -> send to its port, or flood to every other port that is up
 *   -> count.
 * Frames carry the 12-byte virtio-net header (host byte order, the TAP
 * default); GSO super-frames (up to 64 KiB) are written out byte for byte.
 * Writes never block: the fds are O_NONBLOCK, a full queue drops the frame
 * and counts it (tx_dropped). A frame that fills the whole TS_FRAME_MAX
 * buffer may have been cut, and counts as rx_errors. A queue whose read fails
 * (or ends) counts one rx_errors and is no longer polled: the control process
 * restarts the worker with fresh queues.
 * No allocation, no logging, no Python per packet.
 */
#ifndef TAPSWITCH_FASTPATH_H
#define TAPSWITCH_FASTPATH_H

#include <stdint.h>
#include <stddef.h>

/* cffi: everything below is read by cffi's cdef (no #if, no macros with
 * expressions). */

#define TS_MAGIC 0x7473776974636801
#define TS_VERSION 1
#define TS_MAX_PORTS 256       /* port index 0..255 */
#define TS_MAX_WORKERS 16      /* switch.queues upper bound */
#define TS_CONTROL 16          /* fdb_stats slot of the control process */
#define TS_FDB_WAYS 8          /* entries per bucket */
#define TS_BURST 32            /* frames read from one queue per turn */
#define TS_VNET_HDR_LEN 12     /* struct virtio_net_hdr_v1 (num_buffers incl.) */
#define TS_FRAME_MAX 65600     /* vnet header + 64 KiB GSO frame + tags */

/* ts_port.state */
#define TS_PORT_UNUSED 0       /* no port in this slot */
#define TS_PORT_DOWN 1         /* configured, link down: not flooded to, frames to it dropped */
#define TS_PORT_UP 2

/* Port table entry. Written by the control process, read by workers. */
struct ts_port {
    uint32_t state;            /* TS_PORT_* */
    uint32_t mtu;              /* L3 MTU: frames over mtu+14 (+4 if tagged), or GSO frames
                                  with gso_size over mtu, are tx_errors */
    uint32_t fdb_entries;      /* MAC table entries on this port (atomic, all writers) */
    uint32_t reserved[13];     /* room for VLAN, limits, ACLs; keeps 64 bytes */
};

/* Per (worker, port) counters. Single writer: worker w. */
struct ts_counters {
    uint64_t rx_packets;       /* frames read from the port, accepted */
    uint64_t rx_bytes;         /* their Ethernet bytes (no virtio-net header) */
    uint64_t rx_errors;        /* malformed: runt, bad vnet header, bad source MAC */
    uint64_t rx_dropped;       /* well formed but not forwarded: port down, dst down */
    uint64_t tx_packets;       /* frames written to the port */
    uint64_t tx_bytes;
    uint64_t tx_errors;        /* over MTU, or the write failed */
    uint64_t tx_dropped;       /* the port's queue was full (EAGAIN/ENOBUFS) */
    uint64_t flooded;          /* frames received here that were flooded */
    uint64_t reserved[7];      /* keeps 128 bytes, two cache lines */
};

/* MAC table counters, one slot per writer. */
struct ts_fdb_stats {
    uint64_t learned;          /* new entries */
    uint64_t moved;            /* an entry's port changed */
    uint64_t aged;             /* removed by aging (control slot) */
    uint64_t evicted;          /* replaced because the bucket was full */
    uint64_t reserved[4];
};

/* One MAC table entry: two words, each written atomically.
 * key: 0 = empty; else bit 63 set | vlan << 48 | MAC as a 48-bit big-endian number.
 * val: 0 = not yet written; else bits 0..15 port, bit 16 static, bit 17 valid,
 *      bits 18..31 tag (low 14 bits of the key's hash), bits 32..63 last seen
 *      (ts_now()). VLAN is 0..4095. */
struct ts_fdb_entry {
    uint64_t key;
    uint64_t val;
};

/* A copy of one entry, for the control process (tapswitch fdb, metrics). */
struct ts_fdb_record {
    uint8_t mac[6];
    uint16_t vlan;
    uint16_t port;
    uint16_t is_static;
    uint32_t seen;
};

struct ts_shared {
    uint64_t magic;            /* TS_MAGIC once initialised */
    uint32_t version;          /* TS_VERSION */
    uint32_t n_workers;
    uint32_t fdb_buckets;      /* buckets of TS_FDB_WAYS entries */
    uint32_t fdb_capacity;     /* fdb_buckets * TS_FDB_WAYS */
    uint64_t hash_seed;        /* random per switch */
    uint64_t reserved[4];      /* header is 64 bytes, so counters start 64-byte aligned */
    struct ts_port ports[256];
    struct ts_counters counters[16][256];
    struct ts_fdb_stats fdb_stats[17];
    struct ts_fdb_entry fdb[];  /* fdb_capacity entries */
};

/* Shared memory. */
size_t ts_shared_size(uint32_t fdb_size);           /* bytes for a table of >= fdb_size entries */
int ts_shared_init(struct ts_shared *s, uint32_t fdb_size, uint32_t n_workers, uint64_t hash_seed);
                                                    /* on zeroed memory; 0 or -EINVAL */
uint32_t ts_now(void);                              /* CLOCK_MONOTONIC seconds */

/* Learning. Returns 1 if a new entry was made, 2 if moved, 0 if refreshed or
 * unchanged (static), -1 if not learned (bucket full of static entries, bad
 * arguments, or four races lost in a row). writer: worker index or TS_CONTROL. */
int ts_fdb_learn(struct ts_shared *s, int writer, const uint8_t *mac, uint16_t vlan,
                 uint16_t port, uint32_t now);

/* Lookup. Port of (mac, vlan), or -1. */
int ts_fdb_lookup(const struct ts_shared *s, const uint8_t *mac, uint16_t vlan);

/* Static entries (control process). add: 0, -EINVAL, or -ENOSPC when the
 * bucket holds only static entries (a full bucket evicts a learned one, fairly).
 * del removes the entry, static or learned: 0, -EINVAL or -ENOENT. */
int ts_fdb_add_static(struct ts_shared *s, const uint8_t *mac, uint16_t vlan, uint16_t port);
int ts_fdb_del(struct ts_shared *s, const uint8_t *mac, uint16_t vlan);

/* Flushing and aging (control process). Both return entries removed; only
 * aging counts them (as `aged` in fdb_stats[TS_CONTROL]): a flush is an
 * operator's or a link's decision, not a host gone quiet. Static entries stay.
 * An entry expires when now - seen > aging.
 * ts_fdb_age scans n_buckets buckets from first_bucket (wrapping), so the
 * control process can age incrementally. port < 0 flushes every port. */
uint32_t ts_fdb_flush(struct ts_shared *s, int port);
uint32_t ts_fdb_age(struct ts_shared *s, uint32_t now, uint32_t aging,
                    uint32_t first_bucket, uint32_t n_buckets);

/* Copy up to max live entries into out; returns the number copied. */
uint32_t ts_fdb_dump(const struct ts_shared *s, struct ts_fdb_record *out, uint32_t max);

/* The worker. fds[p] is this worker's queue of port p, or -1; nfds <= TS_MAX_PORTS.
 * The fds must be O_NONBLOCK and deliver one frame (virtio-net header first)
 * per read, as a TAP queue or a SOCK_SEQPACKET socket does. ts_worker_new
 * copies fds (the caller keeps them open) and returns NULL with errno set
 * (EINVAL: bad arguments, or an fd that is not O_NONBLOCK). ts_worker_poll
 * returns -EINTR when a signal interrupts the wait; ts_worker_run retries. */
struct ts_worker;
struct ts_worker *ts_worker_new(struct ts_shared *s, int worker, const int *fds, int nfds);
int ts_worker_poll(struct ts_worker *w, int timeout_ms);  /* frames handled, or -errno */
int ts_worker_run(struct ts_worker *w);                   /* polls until a fatal error: -errno */
void ts_worker_free(struct ts_worker *w);

/* Ask the kernel to kill this process when its parent dies. 0 or -errno. */
int ts_die_with_parent(void);

#endif

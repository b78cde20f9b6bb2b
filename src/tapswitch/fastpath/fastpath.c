/* fastpath.c -- the per-packet half of tapswitch: MAC table, port settings and worker loop.
 *
 * fastpath.h is the design note (layout, who writes what, the races); this
 * file follows its sections: shared memory, the MAC table (learning, lookup,
 * static entries, flushing and aging), the settings copies, then the worker
 * (frames, VLANs, ACLs, storm control, mirrors, and the loop).
 */
#define _GNU_SOURCE
#include "fastpath.h"
#include "io_uring.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

/* The layout promises of the header: counters never share a cache line with
 * anything another process writes. */
_Static_assert(offsetof(struct ts_shared, ports) == 64, "header is 64 bytes");
_Static_assert(sizeof(struct ts_port) == 64, "a port is 64 bytes");
_Static_assert(sizeof(struct ts_counters) == 128, "counters are two cache lines");
_Static_assert(offsetof(struct ts_shared, counters) % 64 == 0, "counters are 64-byte aligned");
_Static_assert(offsetof(struct ts_shared, fdb_stats) % 64 == 0, "fdb_stats are 64-byte aligned");
_Static_assert(sizeof(struct ts_fdb_stats) == 64, "fdb_stats are one cache line");
_Static_assert(offsetof(struct ts_shared, fdb) % 64 == 0, "buckets are 64-byte aligned");
_Static_assert(sizeof(struct ts_fdb_record) == 16, "records are 16 bytes");
_Static_assert(sizeof(struct ts_counters) == 128, "counters stay two cache lines");
_Static_assert(offsetof(struct ts_shared, readers) % 64 == 0 && sizeof(struct ts_reader) == 64,
               "each worker's reader marker has its own cache line");
_Static_assert(offsetof(struct ts_shared, storm) % 64 == 0 && sizeof(struct ts_storm) == 64,
               "each port's storm buckets have their own cache line");
_Static_assert(offsetof(struct ts_shared, mirror_counters) % 64 == 0
               && sizeof(struct ts_mirror_counters) == 64, "mirror counters are one cache line");
_Static_assert(offsetof(struct ts_shared, acl_hits) % 64 == 0, "ACL hits are 64-byte aligned");
_Static_assert(offsetof(struct ts_shared, settings) % 64 == 0, "settings are 64-byte aligned");
_Static_assert(offsetof(struct ts_port_conf, vlans) == 64, "a port's hot settings are one cache line");
_Static_assert(sizeof(struct ts_acl_rule) == 128, "an ACL rule is two cache lines");
_Static_assert(TS_MAX_MIRRORS <= 16, "mirror masks are 16 bits");

/* ---------------------------------------------------------------- Shared memory. */

#define FDB_SIZE_MAX 0xccccccc0u   /* keeps fdb_capacity (5/4 of it) within 32 bits */

/* Buckets for a table that holds fdb_size entries: a quarter more slots than
 * that, so that fdb_size entries fill it to 80 %, where two choices and one
 * displacement step (see fdb_put) place every key. */
static uint32_t fdb_buckets_for(uint32_t fdb_size)
{
    uint64_t slots = (uint64_t)fdb_size + fdb_size / 4;
    return (uint32_t)((slots + TS_FDB_WAYS - 1) / TS_FDB_WAYS);
}

size_t ts_shared_size(uint32_t fdb_size)
{
    if (fdb_size > FDB_SIZE_MAX)
        return 0;
    return sizeof(struct ts_shared)
         + (size_t)fdb_buckets_for(fdb_size) * TS_FDB_WAYS * sizeof(struct ts_fdb_entry);
}

int ts_shared_init(struct ts_shared *s, uint32_t fdb_size, uint32_t n_workers, uint64_t hash_seed)
{
    if (!s || fdb_size == 0 || fdb_size > FDB_SIZE_MAX
        || n_workers == 0 || n_workers > TS_MAX_WORKERS)
        return -EINVAL;
    s->version = TS_VERSION;
    s->n_workers = n_workers;
    s->fdb_size = fdb_size;
    s->fdb_buckets = fdb_buckets_for(fdb_size);
    s->fdb_capacity = s->fdb_buckets * TS_FDB_WAYS;
    s->hash_seed = hash_seed;
    s->settings_gen = 0;
    ts_settings_default(&s->settings[0]);
    ts_settings_default(&s->settings[1]);
    /* Last: a process that sees the magic sees the fields above. */
    __atomic_store_n(&s->magic, TS_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

uint32_t ts_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint32_t)t.tv_sec;
}

void ts_set_busy_poll(struct ts_shared *s, uint32_t us)
{
    __atomic_store_n(&s->busy_poll_us, us, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------- The MAC table. */

#define VLAN_MAX 4095
#define KEY_USED (1ULL << 63)
#define VAL_PORT_MASK 0xffffULL
#define VAL_STATIC (1ULL << 16)
#define VAL_VALID (1ULL << 17)
#define VAL_TAG_SHIFT 18
#define VAL_TAG_MASK 0x3fffULL
#define PUT_ATTEMPTS 4              /* lost races before learning gives up on a frame */
#define MARK 0x1ULL                 /* a val of the aging sweep's: a half-written slot's mark */
#define MARK_AGAIN 0x2ULL           /* its second mark */
#define MARK_EPOCHS 2               /* epochs from a mark to the next step (see "Abandoned slots") */

static uint64_t load(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static void store(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* On failure *expected becomes the current value. */
static bool cas(uint64_t *p, uint64_t *expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(p, expected, desired, false,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

static uint64_t fdb_key(const uint8_t *mac, uint16_t vlan)
{
    uint64_t k = KEY_USED | (uint64_t)vlan << 48;
    for (int i = 0; i < 6; i++)
        k |= (uint64_t)mac[i] << (40 - 8 * i);
    return k;
}

/* Seeded multiply-xorshift (murmur3's finaliser over key ^ seed): a remote
 * host that does not know the seed cannot choose MACs that share a bucket. */
static uint64_t fdb_hash(const struct ts_shared *s, uint64_t key)
{
    uint64_t h = key ^ s->hash_seed;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_tag(uint64_t h)
{
    return h & VAL_TAG_MASK;
}

/* fastrange: 32 bits of hash scaled to the bucket count. */
static struct ts_fdb_entry *bucket_at(const struct ts_shared *s, uint32_t x)
{
    uint64_t b = ((uint64_t)x * s->fdb_buckets) >> 32;
    return (struct ts_fdb_entry *)&s->fdb[b * TS_FDB_WAYS];
}

/* A key's two buckets: one from the hash's high half, one from a remix of the
 * hash. The same bucket twice is possible (always, with one bucket). */
struct fdb_pair {
    struct ts_fdb_entry *b[2];
};

static struct fdb_pair fdb_pair(const struct ts_shared *s, uint64_t h)
{
    uint64_t h2 = (h ^ (h >> 29)) * 0x9e3779b97f4a7c15ULL;
    return (struct fdb_pair){ { bucket_at(s, (uint32_t)(h >> 32)),
                                bucket_at(s, (uint32_t)(h2 >> 32)) } };
}

static uint64_t make_val(uint16_t port, bool is_static, uint32_t seen, uint64_t tag)
{
    return (uint64_t)seen << 32 | tag << VAL_TAG_SHIFT | VAL_VALID
         | (is_static ? VAL_STATIC : 0) | port;
}

static uint16_t val_port(uint64_t v) { return (uint16_t)(v & VAL_PORT_MASK); }
static uint32_t val_seen(uint64_t v) { return (uint32_t)(v >> 32); }
static bool val_static(uint64_t v) { return v & VAL_STATIC; }
static bool val_valid(uint64_t v) { return v & VAL_VALID; }

/* A value written for the key with this tag (not 0, not another key's). */
static bool val_is_for(uint64_t v, uint64_t tag)
{
    return val_valid(v) && ((v >> VAL_TAG_SHIFT) & VAL_TAG_MASK) == tag;
}

static void port_count_add(struct ts_shared *s, uint16_t port)
{
    __atomic_add_fetch(&s->ports[port].fdb_entries, 1, __ATOMIC_RELAXED);
}

/* Exact, as the adds are: a count may go below 0 for a moment, when an
 * entry's removal comes between its claimer's val and its count (a move, a
 * flush of an entry just learned), and the claimer's add then brings it back.
 * So it is read as signed, and below 0 as 0 (port_entries): a worker killed
 * between an entry's write and its count's (SIGKILL, the watchdog) leaves
 * the port one short, and the entry's removal would otherwise read as 2^32 - 1,
 * and a port with mac_limit drop the frames of every new source for good.
 * (Held at 0 here instead, that race left the count one high for good.) */
static void port_count_sub(struct ts_shared *s, uint16_t port)
{
    __atomic_sub_fetch(&s->ports[port].fdb_entries, 1, __ATOMIC_RELAXED);
}

/* A port's MAC table entries, as counted: below 0 is 0 (see port_count_sub). */
static uint32_t port_entries(const struct ts_shared *s, uint16_t port)
{
    int32_t n = (int32_t)__atomic_load_n(&s->ports[port].fdb_entries, __ATOMIC_RELAXED);
    return n > 0 ? (uint32_t)n : 0;
}

/* Static entries per port: only the control process makes or removes them. */
static void static_count_add(struct ts_shared *s, uint16_t port)
{
    __atomic_add_fetch(&s->ports[port].fdb_static, 1, __ATOMIC_RELAXED);
}

static void static_count_sub(struct ts_shared *s, uint16_t port)
{
    __atomic_sub_fetch(&s->ports[port].fdb_static, 1, __ATOMIC_RELAXED);
}

static bool writer_is_valid(int writer)
{
    return writer >= 0 && writer <= TS_CONTROL;
}

/* The first slot holding key with a value written for it, or NULL. */
static struct ts_fdb_entry *fdb_find(struct ts_fdb_entry *b, uint64_t key, uint64_t tag,
                                     uint64_t *val)
{
    for (int i = 0; i < TS_FDB_WAYS; i++) {
        if (load(&b[i].key) != key)
            continue;
        uint64_t v = load(&b[i].val);
        if (val_is_for(v, tag)) {
            *val = v;
            return &b[i];
        }
        /* val not valid: being claimed or removed (or its writer died, and
         * the aging sweep marked it); a miss (header, lost races). */
    }
    return NULL;
}

/* The key's entry in either of its buckets, the first bucket first. */
static struct ts_fdb_entry *fdb_locate(const struct fdb_pair *p, uint64_t key, uint64_t tag,
                                       uint64_t *val)
{
    struct ts_fdb_entry *e = fdb_find(p->b[0], key, tag, val);
    if (!e && p->b[1] != p->b[0])
        e = fdb_find(p->b[1], key, tag, val);
    return e;
}

/* Remove the entry whose value the caller read as v. Returns 1 if this
 * caller won the removal, 0 if the entry changed meanwhile. */
static uint32_t fdb_remove(struct ts_shared *s, struct ts_fdb_entry *e, uint64_t v)
{
    if (!cas(&e->val, &v, 0))
        return 0;
    /* key set, val 0: the slot is ours until we clear the key. */
    store(&e->key, 0);
    port_count_sub(s, val_port(v));
    return 1;
}

/* Learning. */

/* Replace e's value v (the key's current entry) by nv. Returns 0 if refreshed
 * or left alone, 2 if the port changed, -1 if e stopped being the key's entry
 * (aged, flushed, evicted) before we could write it. */
static int fdb_update(struct ts_shared *s, struct ts_fdb_entry *e, uint64_t v, uint64_t nv)
{
    uint64_t tag = (nv >> VAL_TAG_SHIFT) & VAL_TAG_MASK;
    do {
        /* Static entries are never moved by learning. */
        if (val_static(v) && !val_static(nv))
            return 0;
        /* First try the common case: no change to the MAC table. `seen` moves
         * at most once a second, so a steady flow does not write the line. */
        if (val_port(v) == val_port(nv) && val_static(v) == val_static(nv)
            && val_seen(v) >= val_seen(nv))
            return 0;
        if (cas(&e->val, &v, nv)) {
            if (val_port(v) == val_port(nv))
                return 0;
            port_count_sub(s, val_port(v));
            port_count_add(s, val_port(nv));
            return 2;
        }
    } while (val_is_for(v, tag));
    return -1;
}

/* Take an empty slot of bucket b for key; the slot, or NULL if b is full. */
static struct ts_fdb_entry *fdb_claim(struct ts_shared *s, struct ts_fdb_entry *b, uint64_t key,
                                      uint64_t nv)
{
    for (int i = 0; i < TS_FDB_WAYS; i++) {
        uint64_t empty = 0;
        if (load(&b[i].key) != 0 || !cas(&b[i].key, &empty, key))
            continue;
        /* key set, val 0: the slot is ours, nobody else writes its val. */
        store(&b[i].val, nv);
        port_count_add(s, val_port(nv));
        return &b[i];
    }
    return NULL;
}

static int free_slots(const struct ts_fdb_entry *b)
{
    int n = 0;
    for (int i = 0; i < TS_FDB_WAYS; i++)
        n += load(&b[i].key) == 0;
    return n;
}

/* Take an empty slot in the emptier of the key's buckets (the first on a tie),
 * else in the other; the slot, or NULL if both are full. */
static struct ts_fdb_entry *fdb_claim_pair(struct ts_shared *s, const struct fdb_pair *p,
                                           uint64_t key, uint64_t nv)
{
    if (p->b[1] == p->b[0])
        return fdb_claim(s, p->b[0], key, nv);
    int second = free_slots(p->b[1]) > free_slots(p->b[0]);
    struct ts_fdb_entry *e = fdb_claim(s, p->b[second], key, nv);
    return e ? e : fdb_claim(s, p->b[!second], key, nv);
}

/* We have just put a new key in slot `mine` (value nv), having found no entry
 * for it: another writer may have done the same at the same moment. Both
 * wrote their value before they look here, and the fence orders that write
 * before this scan, so at least one of two such writers sees the other's
 * entry. Who sees one gives its own back (both may: the key is relearned from
 * its next frame), except that a static entry stays and removes a learned
 * copy. Without this, the copies lived on side by side: counted twice, and
 * one left on the old port when the other moved. True if ours went. */
static bool fdb_drop_twin(struct ts_shared *s, const struct fdb_pair *p,
                          struct ts_fdb_entry *mine, uint64_t key, uint64_t nv)
{
    uint64_t tag = (nv >> VAL_TAG_SHIFT) & VAL_TAG_MASK;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (int j = 0; j < 2; j++) {
        if (j == 1 && p->b[1] == p->b[0])
            break;
        struct ts_fdb_entry *b = p->b[j];
        for (int i = 0; i < TS_FDB_WAYS; i++) {
            if (&b[i] == mine || load(&b[i].key) != key)
                continue;
            uint64_t v = load(&b[i].val);
            if (!val_is_for(v, tag))
                continue;
            if (val_static(nv) && !val_static(v)) {
                fdb_remove(s, &b[i], v);
                continue;
            }
            return fdb_remove(s, mine, nv);
        }
    }
    return false;
}

#define DISPLACE_CANDIDATES 4       /* entries of a full bucket tried for a move */

/* Bucket b is full: move one of its learned entries to that entry's other
 * bucket, if that has room, so that b has a free slot. The entry is copied first and the
 * original removed after, so a reader finds one or the other, or, in the
 * instant between scanning the two buckets, neither (a miss: flooded once).
 * Returns true if b has a free slot now. */
static bool fdb_displace(struct ts_shared *s, struct ts_fdb_entry *b)
{
    for (int i = 0; i < DISPLACE_CANDIDATES; i++) {
        uint64_t k = load(&b[i].key), v = load(&b[i].val);
        if (k == 0)
            return true;                /* freed meanwhile */
        uint64_t h = fdb_hash(s, k);
        if (!val_is_for(v, hash_tag(h)) || val_static(v))
            continue;                   /* being claimed or removed; static entries stay put
                                         * (a copy would count twice when ts_fdb_del met both) */
        struct fdb_pair p = fdb_pair(s, h);
        struct ts_fdb_entry *other = p.b[0] == b ? p.b[1] : p.b[0];
        struct ts_fdb_entry *copy;
        if (other == b || !(copy = fdb_claim(s, other, k, v)))
            continue;
        if (fdb_remove(s, &b[i], v))
            return true;
        /* The original changed while we copied it (refreshed, moved, aged):
         * it stays, and our copy goes unless it has changed too. */
        fdb_remove(s, copy, v);
    }
    return false;
}

/* Both of the key's buckets are full: replace, fairly, a learned entry of the
 * port that holds the most entries, the oldest among them -- Open vSwitch's
 * defence against MAC flooding: a flooding port evicts its own entries, not
 * its neighbours'. Returns 1 if replaced, 0 if nothing here may be evicted,
 * -1 if a race was lost (a slot was freed or the victim changed): try again. */
static int fdb_evict(struct ts_shared *s, struct ts_fdb_stats *st, const struct fdb_pair *p,
                     uint64_t key, uint64_t nv, struct ts_fdb_entry **placed)
{
    struct ts_fdb_entry *victim = NULL;
    uint64_t victim_val = 0;
    uint32_t most = 0;

    for (int j = 0; j < 2; j++) {
        if (j == 1 && p->b[1] == p->b[0])
            break;
        struct ts_fdb_entry *b = p->b[j];
        for (int i = 0; i < TS_FDB_WAYS; i++) {
            if (load(&b[i].key) == 0)
                return -1;
            uint64_t v = load(&b[i].val);
            if (!val_valid(v) || val_static(v))
                continue;
            uint32_t n = port_entries(s, val_port(v));
            if (!victim || n > most || (n == most && val_seen(v) < val_seen(victim_val))) {
                victim = &b[i];
                victim_val = v;
                most = n;
            }
        }
    }
    if (!victim)
        return 0;
    if (!cas(&victim->val, &victim_val, 0))
        return -1;
    /* key set, val 0: the slot is ours; give it to the new key. */
    port_count_sub(s, val_port(victim_val));
    store(&victim->key, key);
    store(&victim->val, nv);
    port_count_add(s, val_port(nv));
    st->evicted++;
    *placed = victim;
    return 1;
}

/* Put key -> nv: update the key's entry, else take an empty slot in one of its
 * two buckets, else make one by moving an entry to its other bucket, else
 * evict. Returns 1 new, 2 moved, 0 refreshed or unchanged (or a new entry
 * given back: another writer put the key at the same moment), -1 not stored.
 * Evictions are counted in st; the caller counts the rest. */
static int fdb_put(struct ts_shared *s, struct ts_fdb_stats *st, uint64_t key, uint64_t h,
                   uint64_t nv)
{
    struct fdb_pair p = fdb_pair(s, h);
    bool displaced = false;

    for (int attempt = 0; attempt < PUT_ATTEMPTS; attempt++) {
        uint64_t v;
        struct ts_fdb_entry *e = fdb_locate(&p, key, hash_tag(h), &v);
        if (e) {
            int r = fdb_update(s, e, v, nv);
            if (r >= 0)
                return r;
            continue;
        }
        struct ts_fdb_entry *mine = fdb_claim_pair(s, &p, key, nv);
        if (mine)
            return fdb_drop_twin(s, &p, mine, key, nv) ? 0 : 1;
        /* One displacement per put: a full table under a MAC flood does not
         * pay for more. */
        if (!displaced) {
            displaced = true;
            if (fdb_displace(s, p.b[0]) || (p.b[1] != p.b[0] && fdb_displace(s, p.b[1])))
                continue;
        }
        int r = fdb_evict(s, st, &p, key, nv, &mine);
        if (r > 0)
            return fdb_drop_twin(s, &p, mine, key, nv) ? 0 : 1;
        if (r == 0)
            return -1;
    }
    return -1;
}

static int fdb_learn(struct ts_shared *s, int writer, const uint8_t *mac, uint16_t vlan,
                     uint16_t port, uint32_t now)
{
    struct ts_fdb_stats *st = &s->fdb_stats[writer];
    uint64_t key = fdb_key(mac, vlan), h = fdb_hash(s, key);
    int r = fdb_put(s, st, key, h, make_val(port, false, now, hash_tag(h)));
    if (r == 1)
        st->learned++;
    else if (r == 2)
        st->moved++;
    return r;
}

/* A control-process thread inside a MAC table write: the aging sweep's epoch
 * waits for it (see "Abandoned slots"). Not the workers', which a burst covers. */
static void control_write_begin(struct ts_shared *s)
{
    __atomic_add_fetch(&s->fdb_writing, 1, __ATOMIC_SEQ_CST);
}

static void control_write_end(struct ts_shared *s)
{
    __atomic_sub_fetch(&s->fdb_writing, 1, __ATOMIC_SEQ_CST);
}

/* The workers learn through fdb_learn, inside a burst; this is the others' way in. */
int ts_fdb_learn(struct ts_shared *s, int writer, const uint8_t *mac, uint16_t vlan,
                 uint16_t port, uint32_t now)
{
    if (!writer_is_valid(writer) || vlan > VLAN_MAX || port >= TS_MAX_PORTS)
        return -1;
    control_write_begin(s);
    int r = fdb_learn(s, writer, mac, vlan, port, now);
    control_write_end(s);
    return r;
}

/* Lookup. */

int ts_fdb_lookup(const struct ts_shared *s, const uint8_t *mac, uint16_t vlan)
{
    if (vlan > VLAN_MAX)
        return -1;
    uint64_t key = fdb_key(mac, vlan), h = fdb_hash(s, key), v;
    struct fdb_pair p = fdb_pair(s, h);
    if (!fdb_locate(&p, key, hash_tag(h), &v))
        return -1;
    return val_port(v);
}

/* Static entries. */

int ts_fdb_add_static(struct ts_shared *s, const uint8_t *mac, uint16_t vlan, uint16_t port)
{
    if (vlan > VLAN_MAX || port >= TS_MAX_PORTS)
        return -EINVAL;
    uint64_t key = fdb_key(mac, vlan), h = fdb_hash(s, key), old = 0;
    struct fdb_pair p = fdb_pair(s, h);
    /* The static entry this one replaces, if any: learning never changes a
     * static value, so what we read stays until our put replaces it. */
    bool was_static = fdb_locate(&p, key, hash_tag(h), &old) && val_static(old);
    control_write_begin(s);
    int r = fdb_put(s, &s->fdb_stats[TS_CONTROL], key, h,
                    make_val(port, true, ts_now(), hash_tag(h)));
    control_write_end(s);
    if (r < 0)
        return -ENOSPC;
    if (was_static)
        static_count_sub(s, val_port(old));
    static_count_add(s, port);
    return 0;
}

int ts_fdb_del(struct ts_shared *s, const uint8_t *mac, uint16_t vlan)
{
    if (vlan > VLAN_MAX)
        return -EINVAL;
    uint64_t key = fdb_key(mac, vlan), h = fdb_hash(s, key), v;
    struct fdb_pair p = fdb_pair(s, h);
    struct ts_fdb_entry *e;
    uint32_t removed = 0;
    control_write_begin(s);
    /* Every copy: a lost learning race, or a move, may have made two. */
    while ((e = fdb_locate(&p, key, hash_tag(h), &v))) {
        uint32_t r = fdb_remove(s, e, v);
        if (r && val_static(v))
            static_count_sub(s, val_port(v));
        removed += r;
    }
    control_write_end(s);
    return removed ? 0 : -ENOENT;
}

/* Flushing and aging. A value is only ever valid in a slot whose key is set,
 * so these read val alone. */

uint32_t ts_fdb_flush(struct ts_shared *s, int port)
{
    uint32_t removed = 0;
    control_write_begin(s);
    for (uint32_t i = 0; i < s->fdb_capacity; i++) {
        uint64_t v = load(&s->fdb[i].val);
        if (!val_valid(v) || val_static(v) || (port >= 0 && val_port(v) != port))
            continue;
        removed += fdb_remove(s, &s->fdb[i], v);
    }
    control_write_end(s);
    return removed;
}

static bool has_expired(uint64_t v, uint32_t now, uint32_t aging)
{
    return (int64_t)now - (int64_t)val_seen(v) > (int64_t)aging;
}

/* Abandoned slots (see the header): the epoch, and the marks. */

/* Move fdb_epoch on if every write in flight when it last moved has ended,
 * or will never end: each worker has been outside a burst since (active seen
 * 0 now, or its heartbeat moved: it beats between bursts), and no
 * control-process thread is inside a write now. A worker killed inside a
 * burst holds it until it is reaped (the control process clears its active)
 * or its replacement claims its slot (active 0). */
static void fdb_epoch_advance(struct ts_shared *s)
{
    uint64_t beat[TS_MAX_WORKERS];
    uint32_t n = s->n_workers < TS_MAX_WORKERS ? s->n_workers : TS_MAX_WORKERS;
    if (__atomic_load_n(&s->fdb_writing, __ATOMIC_SEQ_CST) != 0)
        return;
    for (uint32_t w = 0; w < n; w++) {
        struct ts_reader *r = &s->readers[w];
        /* active before heartbeat: a worker that beats and enters a burst
         * between the two loads is then recorded with that burst's beat (it
         * beats before each wake-up's bursts), so the next epoch waits for
         * that burst too. The other order records the beat before it, and
         * lets the epoch after move on while that burst still writes. */
        uint32_t active = __atomic_load_n(&r->active, __ATOMIC_SEQ_CST);
        beat[w] = __atomic_load_n(&r->heartbeat, __ATOMIC_SEQ_CST);
        if (active != 0 && beat[w] == r->epoch_beat)
            return;             /* inside the burst it was in then, perhaps */
    }
    for (uint32_t w = 0; w < n; w++)
        s->readers[w].epoch_beat = beat[w];
    __atomic_store_n(&s->fdb_epoch, s->fdb_epoch + 1, __ATOMIC_RELEASE);
}

static uint64_t make_mark(uint32_t epoch, bool again)
{
    return (uint64_t)epoch << 32 | (again ? MARK_AGAIN : 0) | MARK;
}

static uint32_t mark_epoch(uint64_t v) { return (uint32_t)(v >> 32); }

/* One step for slot e, whose val the sweep read as v (not valid): mark a
 * half-written slot, mark it again, or take it back. Every step is a
 * compare-and-swap of val from what we read: a writer that holds the slot
 * writes over a mark (or clears the key under it), never the other way round. */
static void fdb_repair(struct ts_fdb_entry *e, uint64_t v, uint32_t epoch)
{
    uint64_t k = load(&e->key);
    if (k == 0) {
        /* A remover cleared the key under our mark: tidy the empty slot (a
         * claimer that took it meanwhile writes its val over ours anyway). */
        if (v != 0)
            cas(&e->val, &v, 0);
        return;
    }
    if (v == 0) {
        cas(&e->val, &v, make_mark(epoch, false));      /* half-written: a live writer's, or not */
        return;
    }
    if (epoch - mark_epoch(v) < MARK_EPOCHS)
        return;                 /* a writer that held it then may not be done yet */
    if (!(v & MARK_AGAIN)) {
        /* Its writer then is done or dead; a claimer of the emptied slot may hold it now. */
        cas(&e->val, &v, make_mark(epoch, true));
        return;
    }
    /* Its writer is dead: nobody else writes a slot whose key is set and whose
     * val is not valid, so it is ours now, as a remover's. */
    if (cas(&e->val, &v, 0))
        store(&e->key, 0);
}

uint32_t ts_fdb_age(struct ts_shared *s, uint32_t now, uint32_t aging,
                    uint32_t first_bucket, uint32_t n_buckets)
{
    uint32_t buckets = s->fdb_buckets, removed = 0;
    if (buckets == 0)
        return 0;               /* not initialised */
    if (n_buckets > buckets)
        n_buckets = buckets;
    fdb_epoch_advance(s);
    uint32_t epoch = s->fdb_epoch;
    for (uint32_t j = 0; j < n_buckets; j++) {
        uint64_t b = ((uint64_t)first_bucket + j) % buckets;
        struct ts_fdb_entry *e = &s->fdb[b * TS_FDB_WAYS];
        for (int i = 0; i < TS_FDB_WAYS; i++) {
            uint64_t v = load(&e[i].val);
            if (!val_valid(v))
                fdb_repair(&e[i], v, epoch);
            else if (!val_static(v) && has_expired(v, now, aging))
                removed += fdb_remove(s, &e[i], v);
        }
    }
    s->fdb_stats[TS_CONTROL].aged += removed;
    return removed;
}

/* Recounting (see "Abandoned slots"). */

static uint64_t now_ns(void);

/* Wait, up to deadline, until every worker has left the burst it was in when fdb_recounting
 * was set -- its active seen 0, or its heartbeat moved on (it beats between wake-ups; the
 * next one sees the flag) -- and no control-process thread writes the table. */
static bool learning_stopped(struct ts_shared *s, uint64_t deadline)
{
    uint64_t beat[TS_MAX_WORKERS];
    bool busy[TS_MAX_WORKERS];
    uint32_t n = s->n_workers < TS_MAX_WORKERS ? s->n_workers : TS_MAX_WORKERS;
    for (uint32_t w = 0; w < n; w++) {
        /* active before heartbeat, as fdb_epoch_advance reads them. */
        busy[w] = __atomic_load_n(&s->readers[w].active, __ATOMIC_SEQ_CST) != 0;
        beat[w] = __atomic_load_n(&s->readers[w].heartbeat, __ATOMIC_SEQ_CST);
    }
    for (;;) {
        bool out = __atomic_load_n(&s->fdb_writing, __ATOMIC_SEQ_CST) == 0;
        for (uint32_t w = 0; w < n; w++) {
            if (busy[w] && (__atomic_load_n(&s->readers[w].active, __ATOMIC_SEQ_CST) == 0
                            || __atomic_load_n(&s->readers[w].heartbeat, __ATOMIC_SEQ_CST) != beat[w]))
                busy[w] = false;
            out = out && !busy[w];
        }
        if (out)
            return true;
        if (now_ns() >= deadline)
            return false;
        struct timespec pause = { .tv_nsec = 20000 };
        nanosleep(&pause, NULL);
    }
}

int ts_fdb_recount(struct ts_shared *s, uint32_t timeout_ms)
{
    uint32_t count[TS_MAX_PORTS] = { 0 };
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
    /* Sequentially consistent, as a worker's active and its read of the flag are: either it
     * sees the flag, or we see it inside a burst and wait for it. */
    __atomic_store_n(&s->fdb_recounting, 1, __ATOMIC_SEQ_CST);
    if (!learning_stopped(s, deadline)) {
        __atomic_store_n(&s->fdb_recounting, 0, __ATOMIC_RELEASE);
        return -ETIMEDOUT;
    }
    /* Nobody writes the table now: each entry is counted, and a half-written slot (its
     * dead writer's, val not valid) counts for no port. */
    for (uint32_t i = 0; i < s->fdb_capacity; i++) {
        uint64_t v = load(&s->fdb[i].val);
        if (val_valid(v))
            count[val_port(v)]++;
    }
    for (int p = 0; p < TS_MAX_PORTS; p++)
        __atomic_store_n(&s->ports[p].fdb_entries, count[p], __ATOMIC_RELAXED);
    __atomic_store_n(&s->fdb_recounting, 0, __ATOMIC_RELEASE);
    return 0;
}

uint32_t ts_fdb_dump(const struct ts_shared *s, struct ts_fdb_record *out, uint32_t max)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->fdb_capacity && n < max; i++) {
        uint64_t k = load(&s->fdb[i].key), v = load(&s->fdb[i].val);
        if (k == 0 || !val_is_for(v, hash_tag(fdb_hash(s, k))))
            continue;
        struct ts_fdb_record *r = &out[n++];
        for (int j = 0; j < 6; j++)
            r->mac[j] = (uint8_t)(k >> (40 - 8 * j));
        r->vlan = (uint16_t)((k >> 48) & VLAN_MAX);
        r->port = val_port(v);
        r->is_static = val_static(v);
        r->seen = val_seen(v);
    }
    return n;
}

/* ---------------------------------------------------------------- Settings. */

void ts_settings_default(struct ts_settings *t)
{
    memset(t->ports, 0, sizeof t->ports);
    memset(t->mirrors, 0, sizeof t->mirrors);
    for (int p = 0; p < TS_MAX_PORTS; p++)
        t->ports[p].pvid = 1;
}

struct ts_settings *ts_settings_next(struct ts_shared *s)
{
    return &s->settings[(s->settings_gen + 1) & 1];
}

const struct ts_settings *ts_settings_current(const struct ts_shared *s)
{
    return &s->settings[__atomic_load_n(&s->settings_gen, __ATOMIC_ACQUIRE) & 1];
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int readers_of(const struct ts_shared *s, uint32_t copy)
{
    int n = 0;
    for (uint32_t w = 0; w < s->n_workers; w++)
        if (__atomic_load_n(&s->readers[w].active, __ATOMIC_SEQ_CST) == copy + 1)
            n++;
    return n;
}

int ts_settings_publish(struct ts_shared *s, uint32_t timeout_ms)
{
    uint32_t gen = s->settings_gen, old = gen & 1;
    /* Sequentially consistent, as the readers' marker and re-check are: either
     * a reader sees the new generation, or we see it in the old copy. */
    __atomic_store_n(&s->settings_gen, gen + 1, __ATOMIC_SEQ_CST);
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
    int busy;
    while ((busy = readers_of(s, old)) && now_ns() < deadline) {
        struct timespec pause = { .tv_nsec = 20000 };
        nanosleep(&pause, NULL);
    }
    return busy;
}

/* ---------------------------------------------------------------- The worker. */

#define ETH_HLEN 14
#define ETH_ALEN 6
#define VLAN_HLEN 4
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86dd
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88a8
#define VLAN_VID_MASK 0x0fff
#define BUF_STRIDE ((TS_HEADROOM + TS_FRAME_MAX + 63) & ~63)
/* What TS_IO_AUTO runs where io_uring is allowed (read/write where it is
 * refused): TS_IO_URING_BURST, TS_IO_URING or TS_IO_READWRITE. Burst reads
 * cost the least CPU per 64 B frame in the bench's A/B on the AMD EPYC and
 * the Intel Xeon of kernel v1272 (bench/HISTORY.md, "The I/O backend on
 * kernel v1272"); read/write won by 3 % on the Xeon of kernel v1252 ("The
 * default I/O backend on this machine"), multishot reads on the EPYC of
 * kernel v782 ("Multishot reads"). */
#define AUTO_IO TS_IO_URING_BURST
#define RX_BUFFERS 64               /* multishot reads: the worker's provided buffers */
#define RX_BATCH RX_BUFFERS         /* multishot reads: completions taken at once */
#define RX_ROUND_MAX 256            /* multishot reads: frames in one settings entry */
#define STOP_CHECK_TURNS 64         /* ts_worker_run: turns between looks for a pending SIGTERM */
#define DRAIN_TIMEOUT_MS 500        /* ts_worker_run: the longest wait for cancelled reads to end */
#define STORM_ATTEMPTS 4            /* lost races on a storm bucket before the frame counts as excess */
#define RX_RETRY_FIRST_MS 1         /* a queue whose read failed: listened to again after this, */
#define RX_RETRY_MAX_MS 1000        /* doubled at each failure in a row, up to this (see rx_failed) */

/* struct virtio_net_hdr, in the host's byte order (the TAP default). The
 * TAPs' header is these 10 bytes, not virtio 1.0's 12 (num_buffers, which a
 * TAP never uses): for a longer header the kernel zeroes the rest on every
 * read and skips it on every write, ~1.5 % of a 64 B frame's time. */
struct vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
};
_Static_assert(sizeof(struct vnet_hdr) == TS_VNET_HDR_LEN, "virtio-net header is 10 bytes");

#define VNET_F_NEEDS_CSUM 1
#define VNET_F_KNOWN (1 | 2 | 4)    /* NEEDS_CSUM, DATA_VALID, RSC_INFO */
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV4 1
#define VNET_GSO_UDP 3
#define VNET_GSO_TCPV6 4
#define VNET_GSO_UDP_L4 5
#define VNET_GSO_TYPE_MASK 0x7f    /* gso_type without its ECN flag, 0x80 */

/* One received frame: virtio-net header, then Ethernet. */
struct frame {
    uint8_t *buf;               /* TS_HEADROOM into its buffer when read; moves 4 bytes
                                   back on a tag push, forward on a pop */
    uint32_t len;               /* bytes from buf, header included */
    uint16_t gso_size;          /* 0 unless a GSO super-frame */
    uint16_t vlan;              /* its VLAN in the switch, once classified */
    uint8_t prio;               /* PCP and DEI (the tag's top 4 bits) as it came; 0 untagged */
    bool tagged;                /* an 802.1Q tag follows the MACs (now, in buf) */
    bool accepted;
};

struct ts_worker {
    struct ts_shared *s;
    struct ts_counters *counters;   /* s->counters[worker], indexed by port */
    struct ts_mirror_counters *mirror_counters;      /* s->mirror_counters[worker] */
    uint64_t (*acl_hits)[TS_MAX_ACL_RULES];          /* s->acl_hits[worker], by port */
    struct ts_reader *reader;       /* &s->readers[worker] */
    const struct ts_settings *set;  /* the copy entered for this wake-up */
    uint64_t now_ns;                /* storm control's clock, read once a wake-up; 0 = not yet */
    int worker;
    int epfd;
    int nfds;
    int fds[TS_MAX_PORTS];          /* -1: no queue of that port */
    uint8_t *buffers;               /* TS_BURST * BUF_STRIDE bytes (not with multishot reads) */
    struct frame burst[TS_BURST];
    struct epoll_event events[TS_MAX_PORTS];
    int io;                         /* TS_IO_READWRITE, TS_IO_URING (multishot reads) or TS_IO_URING_BURST */
    struct ts_ring *ring;           /* TS_IO_URING: queued writes, batched reads; else NULL */
    bool multishot;                 /* TS_IO_URING: every queue has a multishot read (6.7+) */
    bool stopping;                  /* multishot: reads cancelled (ts_worker_drain), none armed again */
    int rx_armed;                   /* multishot: queues whose read has not ended */
    const sigset_t *wait_mask;      /* the signal mask while waiting (ts_worker_run), or NULL */
    bool claimed;                   /* readers[worker] is ours: see claim() */
    bool learning;                  /* this wake-up learns sources: no recount stops it (settings_enter) */
    bool found;                     /* the last turn found frames: look again before sleeping */
    uint8_t look_trust;             /* looks that may not pay before it stops looking (TS_LOOK_TRUST) */
    uint8_t look_skipped;           /* sleeps without a look since it stopped (TS_LOOK_PROBE) */
    uint8_t rx_want[TS_MAX_PORTS];  /* TS_IO_URING, burst reads: reads on the queue's next turn */
    uint8_t rx_fails[TS_MAX_PORTS]; /* failed reads of the queue in a row (its retry's backoff) */
    uint64_t rx_retry[TS_MAX_PORTS];/* now_ns() when a queue resting after a failed read is
                                       listened to again; 0: listening (or gone for good) */
    int rx_resting;                 /* queues with an rx_retry set */
    struct ts_ring_done done[TS_RING_ENTRIES];
    struct ts_ring_rx rx[RX_BATCH]; /* TS_IO_URING, multishot: frames as they were read */
};

/* Frames. */

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint8_t *eth_hdr(const struct frame *f) { return f->buf + TS_VNET_HDR_LEN; }
static const uint8_t *eth_dst(const struct frame *f) { return eth_hdr(f); }
static const uint8_t *eth_src(const struct frame *f) { return eth_hdr(f) + ETH_ALEN; }
static uint32_t eth_len(const struct frame *f) { return f->len - TS_VNET_HDR_LEN; }

/* The ethertype after the MACs: 0x8100 for a tagged frame. */
static uint16_t eth_type(const struct frame *f) { return be16(eth_hdr(f) + 2 * ETH_ALEN); }

/* The ethertype after the switch's 802.1Q tag, if the frame has one: the
 * payload's, or the TPID of a tag behind it (QinQ: see acl_l3_offset). */
static uint16_t inner_type(const struct frame *f)
{
    return be16(eth_hdr(f) + 2 * ETH_ALEN + (f->tagged ? VLAN_HLEN : 0));
}

static uint16_t tag_vid(const struct frame *f)
{
    return be16(eth_hdr(f) + ETH_HLEN) & VLAN_VID_MASK;
}

static bool is_multicast(const uint8_t *mac)
{
    return mac[0] & 1;
}

static bool is_broadcast(const uint8_t *mac)
{
    return (mac[0] & mac[1] & mac[2] & mac[3] & mac[4] & mac[5]) == 0xff;
}

static bool is_zero(const uint8_t *mac)
{
    return !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]);
}

/* 01:80:C2:00:00:01..0F, the IEEE 802.1 group a bridge must not relay (802.1Q
 * 8.6.3): PAUSE (:01), slow protocols such as LACP (:02), 802.1X (:03), LLDP
 * (:0E)... The Linux bridge forwards none of them (group_fwd_mask 0, and never
 * PAUSE); it does forward :00 (STP BPDUs) when STP is off, and :10 and up. */
static bool is_link_local_group(const uint8_t *mac)
{
    return mac[0] == 0x01 && mac[1] == 0x80 && mac[2] == 0xc2 && !(mac[3] | mac[4])
        && mac[5] >= 0x01 && mac[5] <= 0x0f;
}

static bool port_is_up(const struct ts_worker *w, int p)
{
    return __atomic_load_n(&w->s->ports[p].state, __ATOMIC_RELAXED) == TS_PORT_UP;
}

static bool can_send_to(const struct ts_worker *w, int p)
{
    return w->fds[p] >= 0 && port_is_up(w, p);
}

/* The least csum_start a TAP write takes (virtio_net_hdr_to_skb, 6.11+): the
 * transport header, counted from the frame's first byte, is behind at least
 * an IPv4 header, an IPv6 one for TCPV6 GSO. (The kernel does not count the
 * Ethernet header: a real checksum starts 14 bytes later still.) */
static uint32_t csum_start_min(const struct vnet_hdr *h)
{
    return (h->gso_type & VNET_GSO_TYPE_MASK) == VNET_GSO_TCPV6 ? 40 : 20;
}

/* The virtio-net header is one the kernel would accept on our write. Sets
 * f->gso_size for a GSO frame. */
static bool vnet_hdr_is_valid(struct frame *f)
{
    struct vnet_hdr h;
    memcpy(&h, f->buf, sizeof h);
    uint8_t gso = h.gso_type & VNET_GSO_TYPE_MASK;

    if (h.flags & ~VNET_F_KNOWN)
        return false;
    if (gso != VNET_GSO_NONE && gso != VNET_GSO_TCPV4 && gso != VNET_GSO_UDP
        && gso != VNET_GSO_TCPV6 && gso != VNET_GSO_UDP_L4)
        return false;
    /* The ECN flag qualifies a GSO type; alone it is none (the kernel agrees). */
    if (gso == VNET_GSO_NONE && h.gso_type != VNET_GSO_NONE)
        return false;
    /* 0xffff is GSO_BY_FRAGS, which the kernel keeps for itself. */
    if (gso != VNET_GSO_NONE && (h.gso_size == 0 || h.gso_size == 0xffff))
        return false;
    /* A checksum starts where the kernel takes one (at L4, in practice) and ends
     * inside the frame, and so does a GSO frame's TCP or UDP header; so a tag
     * pushed in front of it keeps the frame well formed. */
    uint32_t thlen = gso == VNET_GSO_TCPV4 || gso == VNET_GSO_TCPV6 ? 20 : gso != VNET_GSO_NONE ? 8 : 0;
    if ((h.flags & VNET_F_NEEDS_CSUM)
        && (h.csum_start < csum_start_min(&h)
            || (uint32_t)h.csum_start + (h.csum_offset + 2u > thlen ? h.csum_offset + 2u : thlen) > eth_len(f)))
        return false;
    /* What else virtio_net_hdr_to_skb refuses of a GSO header (a TAP write's
     * EINVAL, a tx_errors on every port the frame went to): a TCP checksum not
     * in the TCP header's checksum field; UDP_L4 without its UDP checksum, with
     * the ECN flag, or of more than 128 segments. */
    if ((gso == VNET_GSO_TCPV4 || gso == VNET_GSO_TCPV6) && (h.flags & VNET_F_NEEDS_CSUM) && h.csum_offset != 16)
        return false;
    if (gso == VNET_GSO_UDP_L4
        && (!(h.flags & VNET_F_NEEDS_CSUM) || h.csum_offset != 6 || h.gso_type != VNET_GSO_UDP_L4
            || eth_len(f) - h.csum_start - 8 > (uint32_t)h.gso_size * 128))
        return false;
    /* Not checked: that a GSO frame's packet is of its GSO type. With
     * NEEDS_CSUM a TAP write takes any (TCPV4 on IPv6 or ARP, TCPV6 on IPv4,
     * behind tags or not: 6.18). Without it, it refuses (EINVAL) one that the
     * flow dissector, through tags, PPPoE, IP-in-IP, GRE and IPv6 extension
     * headers, finds not of the type: too big a parse to copy here, for
     * frames no kernel sends (its GSO frames say NEEDS_CSUM). Such a frame is
     * forwarded, a tx_errors on each port it is sent to. */
    /* hdr_len, the headers' length (a hint): 0, or past the Ethernet header and
     * inside the frame -- the kernel raises one short of the checksum's end. */
    if (h.hdr_len > eth_len(f) || (h.hdr_len && h.hdr_len < ETH_HLEN && !(h.flags & VNET_F_NEEDS_CSUM)))
        return false;
    f->gso_size = gso != VNET_GSO_NONE ? h.gso_size : 0;
    return true;
}

/* An 802.1Q tag is whole, with an ethertype after it, and a checksum does
 * not start inside it, nor where, moved 4 bytes back by a pop, the kernel
 * takes none (so the tag can be popped: a checksum 20 bytes in, taken
 * tagged, went out of every access port as a refused write, a tx_errors
 * each); and so is every 802.1Q tag behind it, each of which a pop brings one
 * tag nearer the front, with 4 more bytes before the checksum for each: the
 * frame a pop leaves is one this check takes (21 bytes in behind two tags
 * went out of an access port tagged, 17 bytes in once that tag is popped too;
 * three tags, cut in the third or a checksum 28 bytes in, went out of an
 * access port with two, cut in the second or 24 bytes in). A real frame's
 * checksum starts behind its tags and an IP header, never so early. */
static bool tag_is_whole(const struct frame *f)
{
    struct vnet_hdr h;
    memcpy(&h, f->buf, sizeof h);
    uint32_t end = ETH_HLEN, tags = 0;
    do {
        end += VLAN_HLEN;
        tags += VLAN_HLEN;
        if (eth_len(f) < end)
            return false;
    } while (be16(eth_hdr(f) + end - 2) == ETH_P_8021Q);
    return !(h.flags & VNET_F_NEEDS_CSUM)
        || (h.csum_start >= end && h.csum_start >= csum_start_min(&h) + tags);
}

/* Malformed frames are counted as rx_errors and go no further: those we
 * cannot parse, and those from a source MAC no host may have.
 * A frame we can parse, and write out as it is: not a runt, not cut at our
 * buffer's end, a virtio-net header the kernel would take, whole 802.1Q tags. */
static bool is_parsable(struct frame *f)
{
    if (f->len < TS_VNET_HDR_LEN + ETH_HLEN || f->len >= TS_FRAME_MAX)
        return false;
    if (!vnet_hdr_is_valid(f))
        return false;
    return eth_type(f) != ETH_P_8021Q || tag_is_whole(f);
}

/* A source MAC a host may have: not multicast, not zero. */
static bool has_host_source(const struct frame *f)
{
    return !is_multicast(eth_src(f)) && !is_zero(eth_src(f));
}

static bool is_tpid(uint16_t type)
{
    return type == ETH_P_8021Q || type == ETH_P_8021AD;
}

/* Where the IP header starts when the type at `off` (after the MACs, or
 * after a tag) is followed by at most two more 802.1Q or 802.1ad tags (QinQ)
 * and the ethertype. */
static uint32_t l3_offset_from(const struct frame *f, uint32_t off)
{
    for (int tags = 0; tags < 2 && off + VLAN_HLEN + 2 <= eth_len(f); tags++) {
        if (!is_tpid(be16(eth_hdr(f) + off)))
            break;
        off += VLAN_HLEN;
    }
    return off + 2;
}

/* Where the IP header of the frame as it is written starts: after the MACs,
 * its tags (two at most) and the ethertype. The MTU check reads it there. */
static uint32_t l3_offset(const struct frame *f)
{
    return l3_offset_from(f, 2 * ETH_ALEN);
}

/* The IP length of each segment a GSO frame leaves as, as the kernel measures
 * it against an MTU (skb_gso_network_seglen): the IP header (up to csum_start,
 * where TCP or UDP starts), the TCP header (its data offset) or UDP_L4's
 * 8 bytes, and gso_size bytes (UFO's gso_size holds its UDP header). Without
 * a checksum start the headers are unknown: gso_size alone. */
static uint32_t gso_segment_len(const struct frame *f)
{
    struct vnet_hdr h;
    memcpy(&h, f->buf, sizeof h);
    uint32_t l3 = l3_offset(f), l4 = h.csum_start, len = f->gso_size;
    if (!(h.flags & VNET_F_NEEDS_CSUM) || l4 < l3)
        return len;
    len += l4 - l3;
    uint8_t gso = h.gso_type & VNET_GSO_TYPE_MASK;
    if ((gso == VNET_GSO_TCPV4 || gso == VNET_GSO_TCPV6) && l4 + 12 < eth_len(f))
        len += (uint32_t)(eth_hdr(f)[l4 + 12] >> 4) * 4;
    else if (gso == VNET_GSO_UDP_L4)
        len += 8;
    return len;
}

/* What the port can carry: a GSO frame leaves as segments of IP length
 * gso_segment_len(); any other frame as itself, whose bytes after its
 * 802.1Q/802.1ad tags (two at most: the tag a trunk gives an 802.1ad frame
 * counts no more than the frame's own) are the MTU's. A port whose link
 * carries frames of a bounded length, tags and all (frame_max: a VXLAN
 * port's tunnel), takes none longer: its tags do not fit in the MTU there,
 * and the underlay would fragment or drop the frame unseen. */
static bool fits_port(const struct ts_port *port, const struct frame *f)
{
    uint32_t mtu = __atomic_load_n(&port->mtu, __ATOMIC_RELAXED);
    uint32_t max = __atomic_load_n(&port->frame_max, __ATOMIC_RELAXED);
    uint32_t l3 = l3_offset(f);
    uint32_t len = f->gso_size ? gso_segment_len(f) : eth_len(f) - l3;
    return len <= mtu && (!max || l3 + len <= max);
}

/* VLANs. */

static bool port_in_vlan(const struct ts_port_conf *pc, uint16_t vlan)
{
    if (pc->pvid == vlan)
        return true;
    return (pc->flags & TS_PORT_TRUNK) && (pc->vlans[vlan >> 6] >> (vlan & 63) & 1);
}

/* The frame's VLAN: its tag's VID, or the port's pvid when it has no tag or a
 * priority tag (VID 0). False if the port is not in that VLAN. */
static bool classify(const struct ts_port_conf *pc, struct frame *f)
{
    f->tagged = eth_type(f) == ETH_P_8021Q;
    f->prio = f->tagged ? eth_hdr(f)[ETH_HLEN] & 0xf0 : 0;
    uint16_t vid = f->tagged ? tag_vid(f) : 0;
    f->vlan = vid ? vid : pc->pvid;
    return f->vlan != 0 && port_in_vlan(pc, f->vlan);
}

/* The headers moved by `delta` bytes after the MACs: so did the checksum
 * start and the header length (0 = not given, stays 0). A header length a pop
 * takes below the Ethernet header's becomes 0: the kernel refuses a write
 * with one of 1 to 13, and it is only a hint. */
static void vnet_hdr_shift(struct frame *f, int delta)
{
    struct vnet_hdr h;
    memcpy(&h, f->buf, sizeof h);
    if (h.flags & VNET_F_NEEDS_CSUM)
        h.csum_start = (uint16_t)(h.csum_start + delta);
    if (h.hdr_len)
        h.hdr_len = (uint16_t)(delta > 0 || h.hdr_len + delta >= ETH_HLEN ? h.hdr_len + delta : 0);
    memcpy(f->buf, &h, sizeof h);
}

/* Insert a tag after the MACs, in place: the virtio-net header and the MACs
 * move into the headroom. The tag carries the frame's priority as it came
 * (a flood may have popped its tag for an earlier port). False if the frame
 * is too long to take one more tag (or its header's offsets would overflow). */
static bool tag_push(struct frame *f, uint16_t vid)
{
    struct vnet_hdr h;
    memcpy(&h, f->buf, sizeof h);
    if (f->len + VLAN_HLEN >= TS_FRAME_MAX || h.csum_start > 0xffff - VLAN_HLEN
        || h.hdr_len > 0xffff - VLAN_HLEN)
        return false;
    memmove(f->buf - VLAN_HLEN, f->buf, TS_VNET_HDR_LEN + 2 * ETH_ALEN);
    f->buf -= VLAN_HLEN;
    f->len += VLAN_HLEN;
    uint8_t *tag = eth_hdr(f) + 2 * ETH_ALEN;
    tag[0] = ETH_P_8021Q >> 8;
    tag[1] = ETH_P_8021Q & 0xff;
    tag[2] = (uint8_t)(f->prio | vid >> 8);
    tag[3] = (uint8_t)vid;
    vnet_hdr_shift(f, VLAN_HLEN);
    f->tagged = true;
    return true;
}

/* Remove the tag after the MACs, in place. */
static void tag_pop(struct frame *f)
{
    memmove(f->buf + VLAN_HLEN, f->buf, TS_VNET_HDR_LEN + 2 * ETH_ALEN);
    f->buf += VLAN_HLEN;
    f->len -= VLAN_HLEN;
    vnet_hdr_shift(f, -VLAN_HLEN);
    f->tagged = false;
}

/* Give the frame the form port o carries its VLAN in: untagged in o's pvid,
 * tagged with the VLAN otherwise (a priority tag gets the VID; PCP and DEI
 * are kept, also in a tag pushed again after an earlier port's pop).
 * False if a tag was needed and did not fit. */
static bool tag_for(struct frame *f, const struct ts_port_conf *o)
{
    bool want_tag = o->pvid != f->vlan;
    if (want_tag == f->tagged) {
        /* First try the common case: the frame is already in the right form. */
        if (want_tag && tag_vid(f) != f->vlan) {
            uint8_t *tci = eth_hdr(f) + ETH_HLEN;
            tci[0] = (uint8_t)((tci[0] & 0xf0) | f->vlan >> 8);
            tci[1] = (uint8_t)f->vlan;
        }
        return true;
    }
    if (want_tag)
        return tag_push(f, f->vlan);
    tag_pop(f);
    return true;
}

/* ACLs. */

/* The IP header fields a rule may match, parsed at most once per frame. */
struct l3 {
    int version;                /* -1 not parsed yet, 0 not IP, 4, 6 */
    uint8_t proto;              /* IPv4 protocol, IPv6 upper-layer next header */
    uint64_t exthdrs;           /* IPv6: bit n for each extension header n walked past
                                   (0, 43, 44, 51, 60: all below 64) */
    bool has_ports;             /* TCP or UDP, first fragment, ports present */
    bool cut;                   /* IPv6 first fragment of more (offset 0, M=1) that ends before
                                   its header chain or its TCP or UDP ports do (RFC 7112) */
    uint16_t sport, dport;
    const uint8_t *src, *dst;   /* 4 or 16 bytes */
};

#define IPPROTO_HOPOPTS 0
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_AH 51
#define IPPROTO_DSTOPTS 60

/* The extension headers parse_ipv6 walks past. */
static bool is_ipv6_exthdr(uint8_t next)
{
    return next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_FRAGMENT
        || next == IPPROTO_AH || next == IPPROTO_DSTOPTS;
}

static void parse_ports(struct l3 *l3, const uint8_t *p, uint32_t off, uint32_t len)
{
    if ((l3->proto == IPPROTO_TCP || l3->proto == IPPROTO_UDP) && off + 4 <= len) {
        l3->has_ports = true;
        l3->sport = be16(p + off);
        l3->dport = be16(p + off + 2);
    }
}

static void parse_ipv4(struct l3 *l3, const uint8_t *p, uint32_t off, uint32_t len)
{
    if (off + 20 > len || p[off] >> 4 != 4)
        return;
    uint32_t ihl = (p[off] & 0xf) * 4u;
    if (ihl < 20 || off + ihl > len)
        return;
    l3->version = 4;
    l3->proto = p[off + 9];
    l3->src = p + off + 12;
    l3->dst = p + off + 16;
    if (!(be16(p + off + 6) & 0x1fff))     /* ports are in the first fragment only */
        parse_ports(l3, p, off + ihl, len);
}

static void parse_ipv6(struct l3 *l3, const uint8_t *p, uint32_t off, uint32_t len)
{
    if (off + 40 > len || p[off] >> 4 != 6)
        return;
    l3->version = 6;
    l3->src = p + off + 8;
    l3->dst = p + off + 24;
    /* The packet ends where its payload length says (0: a jumbogram, to the frame's end):
     * the receiver's stack trims the bytes after it, so headers read there are not the
     * packet's (a first fragment padded with a TCP header to port 80, its real one to port
     * 22 in the next fragment, passed `dst_port: 22, drop`). */
    uint32_t payload = be16(p + off + 4);
    if (payload && off + 40 + payload < len)
        len = off + 40 + payload;
    uint8_t next = p[off + 6];
    bool first = true, more = false;
    off += 40;
    /* Every extension header, however many, as the receiver's stack walks them
     * (ipv6_skip_exthdr): a walk that gave up after a few would take the next
     * header for the upper layer, and a TCP or UDP packet behind more of them
     * would pass every rule on its protocol or ports. Each header moves at
     * least 8 bytes on, so the frame's length bounds the walk. */
    while (first && off + 8 <= len) {
        uint8_t header = next;
        if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS) {
            next = p[off];
            off += (p[off + 1] + 1u) * 8;
        } else if (next == IPPROTO_FRAGMENT) {
            /* A later fragment's payload holds no headers: its next header is the protocol. */
            first = !(be16(p + off + 2) & 0xfff8);
            more |= first && (be16(p + off + 2) & 1);
            next = p[off];
            off += 8;
        } else if (next == IPPROTO_AH) {
            next = p[off];
            off += (p[off + 1] + 2u) * 4;
        } else {
            break;
        }
        l3->exthdrs |= 1ULL << header;      /* walked past: one of the five above, all below 64 */
    }
    l3->proto = next;
    if (first)
        parse_ports(l3, p, off, len);
    /* A first fragment must carry the whole header chain, through the upper layer's header
     * (RFC 7112). One that stops short -- in an extension header, or before the ports --
     * leaves the rest to the next fragment, which holds no headers a rule reads: a host that
     * reassembled the two got a packet its rules never saw. Which one, the rules cannot
     * tell (acl_rule_matches). */
    if (more && (is_ipv6_exthdr(next) || off > len
                 || ((next == IPPROTO_TCP || next == IPPROTO_UDP) && !l3->has_ports)))
        l3->cut = true;
}

/* Where a rule reads the packet: behind the switch's own 802.1Q tag, if the
 * frame has one (the tag of its VLAN, which an access port pops), and two
 * more 802.1Q or 802.1ad tags at most (QinQ). So what a host gets through
 * the switch with at most two tags before its packet -- QinQ, also sent
 * tagged in the port's own VLAN -- is held to the rules on that packet:
 * counted from the MACs, that packet was behind a third tag, and passed
 * every IP rule (an access port in VLAN 10 took 8100(10)/88a8/8100/IPv4
 * past `tcp dst_port 22 drop`, and sent it on as 88a8/8100/IPv4). */
static uint32_t acl_l3_offset(const struct frame *f)
{
    return l3_offset_from(f, 2 * ETH_ALEN + (f->tagged ? VLAN_HLEN : 0));
}

/* A rule's eth_type and IP fields are the payload's, behind the frame's
 * tags: an 802.1ad or a second 802.1Q tag hides no packet from a rule. An
 * 802.1ad rule (0x88a8) still matches the S-tag itself, the first type after
 * the switch's own 802.1Q tag, as it did before rules read past it. */
static bool eth_type_matches(const struct frame *f, uint16_t want)
{
    uint16_t type = inner_type(f);
    /* First try the common case: no tag behind the switch's, type is the payload's. */
    if (type == want)
        return true;
    return is_tpid(type) && be16(eth_hdr(f) + acl_l3_offset(f) - 2) == want;
}

static void parse_l3(const struct frame *f, struct l3 *l3)
{
    const uint8_t *p = eth_hdr(f);
    uint32_t off = ETH_HLEN + (f->tagged ? VLAN_HLEN : 0);
    uint16_t type = inner_type(f);
    if (is_tpid(type)) {        /* a tag behind the switch's (QinQ): the packet is behind it */
        off = acl_l3_offset(f);
        type = be16(p + off - 2);
    }
    l3->version = 0;
    if (type == ETH_P_IP)
        parse_ipv4(l3, p, off, eth_len(f));
    else if (type == ETH_P_IPV6)
        parse_ipv6(l3, p, off, eth_len(f));
}

static bool masked_equal(const uint8_t *value, const uint8_t *want, const uint8_t *mask, int n)
{
    for (int i = 0; i < n; i++)
        if ((value[i] & mask[i]) != want[i])
            return false;
    return true;
}

static bool acl_rule_matches(const struct ts_acl_rule *r, const struct frame *f, struct l3 *l3)
{
    uint32_t m = r->match;
    if ((m & TS_ACL_ETH_DST) && !masked_equal(eth_dst(f), r->eth_dst, r->eth_dst_mask, ETH_ALEN))
        return false;
    if ((m & TS_ACL_ETH_SRC) && !masked_equal(eth_src(f), r->eth_src, r->eth_src_mask, ETH_ALEN))
        return false;
    if ((m & TS_ACL_ETH_TYPE) && !eth_type_matches(f, r->eth_type))
        return false;
    if ((m & TS_ACL_VLAN) && f->vlan != r->vlan)
        return false;
    if (!(m & TS_ACL_L3))
        return true;
    /* Parse L3/L4 only for a rule that needs them, and once per frame. */
    if (l3->version < 0)
        parse_l3(f, l3);
    if (l3->version == 0)
        return false;
    if (((m & TS_ACL_IPV4) && l3->version != 4) || ((m & TS_ACL_IPV6) && l3->version != 6))
        return false;
    int alen = l3->version == 4 ? 4 : 16;
    if ((m & TS_ACL_IP_SRC) && !masked_equal(l3->src, r->ip_src, r->ip_src_mask, alen))
        return false;
    if ((m & TS_ACL_IP_DST) && !masked_equal(l3->dst, r->ip_dst, r->ip_dst_mask, alen))
        return false;
    /* An IPv6 first fragment cut short of its headers (struct l3's cut) has a protocol and
     * ports no rule can read, which its next fragment completes: it matches every drop rule
     * that needs them, and no allow rule, so that cutting the headers off evades neither
     * (`tcp dst_port 22 drop` passed one whose TCP header was in the next fragment). */
    if (l3->cut && (m & (TS_ACL_IP_PROTO | TS_ACL_SRC_PORT | TS_ACL_DST_PORT)))
        return r->action == TS_ACL_DROP;
    /* ip_proto is the upper layer's, or an IPv6 extension header the packet has: a rule on
     * 44 (fragment) or 43 (routing) matched only the odd later fragment, the first fragment
     * and every unfragmented packet with such a header passing `ip_proto: 44, drop`. */
    if ((m & TS_ACL_IP_PROTO) && l3->proto != r->ip_proto
        && !(r->ip_proto < 64 && (l3->exthdrs >> r->ip_proto & 1)))
        return false;
    if ((m & (TS_ACL_SRC_PORT | TS_ACL_DST_PORT)) && !l3->has_ports)
        return false;
    if ((m & TS_ACL_SRC_PORT) && l3->sport != r->src_port)
        return false;
    if ((m & TS_ACL_DST_PORT) && l3->dport != r->dst_port)
        return false;
    return true;
}

/* First match wins; no match allows. */
static bool acl_allows(struct ts_worker *w, int in, const struct ts_port_conf *pc,
                       const struct frame *f)
{
    const struct ts_acl_rule *rules = w->set->acl[in];
    struct l3 l3 = { .version = -1 };
    int n = pc->acl_rules < TS_MAX_ACL_RULES ? pc->acl_rules : TS_MAX_ACL_RULES;
    for (int r = 0; r < n; r++) {
        if (acl_rule_matches(&rules[r], f, &l3)) {
            w->acl_hits[in][r]++;
            return rules[r].action != TS_ACL_DROP;
        }
    }
    return true;
}

/* Storm control. */

static uint64_t worker_now_ns(struct ts_worker *w)
{
    if (!w->now_ns)
        w->now_ns = now_ns();
    return w->now_ns;
}

static int storm_kind(const uint8_t *dst)
{
    if (!is_multicast(dst))
        return TS_STORM_UNKNOWN_UNICAST;
    return is_broadcast(dst) ? TS_STORM_BROADCAST : TS_STORM_MULTICAST;
}

/* GCRA: a frame conforms unless it comes more than storm_burst before its
 * theoretical arrival time; each conforming frame moves that time one
 * interval on. The bucket is the port's, shared by its workers. */
static bool storm_allows(struct ts_worker *w, int in, const struct ts_port_conf *pc,
                         const uint8_t *dst)
{
    int kind = storm_kind(dst);
    uint64_t interval = pc->storm_interval[kind];
    if (!interval)
        return true;
    uint64_t now = worker_now_ns(w), *tatp = &w->s->storm[in].tat[kind];
    uint64_t tat = load(tatp);
    for (int attempt = 0; attempt < STORM_ATTEMPTS; attempt++) {
        uint64_t t = tat > now ? tat : now;
        if (t - now > pc->storm_burst[kind])
            return false;
        if (cas(tatp, &tat, t + interval))
            return true;
    }
    return false;   /* the port's other workers took the tokens meanwhile */
}

/* Receiving, learning, sending. */

/* A queue whose read failed (res: -errno, or 0: it ended). Level-triggered
 * epoll (or a multishot read armed again) would wake us again at once, as
 * long as the failure lasts: the queue stops being listened to, and each
 * failure counts one rx_errors.
 * - Gone for good: its TAP was deleted (-EBADFD: the queue is detached, no
 *   read of it can succeed again) or it ended (0). The control process marks
 *   the port gone (Switch.maintain_ports) and gives the workers it starts
 *   later none of its queues; a worker handed the queue before its TAP went
 *   (a reload's new one, started while the old one reads on) meets it too,
 *   and finds it counted (counters.rx_ended, set by the worker that counted
 *   it): it counts once a queue.
 * - Anything else (-EIO, -ENOMEM, -ENOBUFS under memory pressure, -EFAULT)
 *   may pass, and nothing else would ever listen again: the worker is not
 *   restarted for it. The queue rests RX_RETRY_FIRST_MS, doubled at each
 *   failure in a row up to RX_RETRY_MAX_MS, then is listened to again
 *   (rx_retry_due); a read that succeeds ends the row. A failure that lasts
 *   costs a wake-up and counts one rx_errors a second. */
static bool rx_gone(int32_t res)
{
    return res == 0 || res == -EBADFD;
}

static void rx_failed(struct ts_worker *w, int in, int32_t res)
{
    struct ts_counters *c = &w->counters[in];
    if (!rx_gone(res) || !c->rx_ended)
        c->rx_errors++;
    if (!w->multishot)
        epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->fds[in], NULL);
    if (rx_gone(res)) {
        c->rx_ended = 1;
        return;
    }
    unsigned shift = w->rx_fails[in] < 10 ? w->rx_fails[in] : 10;
    uint64_t ms = (uint64_t)RX_RETRY_FIRST_MS << shift;
    if (ms > RX_RETRY_MAX_MS)
        ms = RX_RETRY_MAX_MS;
    if (w->rx_fails[in] < UINT8_MAX)
        w->rx_fails[in]++;
    w->rx_retry[in] = now_ns() + ms * 1000000;
    w->rx_resting++;
}

/* A read of queue `in` succeeded: a failure after it starts a new row. */
static void rx_worked(struct ts_worker *w, int in)
{
    if (w->rx_fails[in])
        w->rx_fails[in] = 0;
}

static void rx_rearm(struct ts_worker *w, int in);

/* Listen again to the resting queues whose time came. Returns the poll's
 * wait: timeout_ms (-1: for good), or less, in ms, if the next resting
 * queue's time comes sooner. */
static int rx_retry_due(struct ts_worker *w, int timeout_ms)
{
    uint64_t now = now_ns(), next = 0;
    for (int in = 0; in < w->nfds && w->rx_resting; in++) {
        uint64_t at = w->rx_retry[in];
        if (!at)
            continue;
        if (at > now) {
            next = !next || at < next ? at : next;
            continue;
        }
        w->rx_retry[in] = 0;
        w->rx_resting--;
        if (w->multishot) {
            if (!w->stopping)
                rx_rearm(w, in);
        } else {
            struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)in };
            if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->fds[in], &ev) < 0)
                rx_failed(w, in, -errno);    /* (ENOMEM, ENOSPC: a later try) */
        }
    }
    if (!next)
        return timeout_ms;
    int wait = (int)((next - now + 999999) / 1000000);
    return timeout_ms >= 0 && timeout_ms < wait ? timeout_ms : wait;
}

/* io_uring: rx_want[in] reads of queue `in` in one submission, each one frame
 * or -EAGAIN. The next turn asks for twice what this one got (2..TS_BURST),
 * so a queue that yields a frame per wake-up (TCP) does not pay for 32 reads. */
static int rx_burst_ring(struct ts_worker *w, int in)
{
    uint8_t *bufs[TS_BURST] = { 0 };
    int32_t res[TS_BURST];
    int want = w->rx_want[in], n = 0;
    int32_t failed = 1;             /* the failure of a read, if one failed (else > 0) */
    for (int i = 0; i < want; i++)
        bufs[i] = w->buffers + (size_t)i * BUF_STRIDE + TS_HEADROOM;
    if (ts_ring_read(w->ring, in, bufs, TS_FRAME_MAX, want, res) < 0)
        return 0;   /* nothing submitted; level-triggered epoll wakes us again */
    for (int i = 0; i < want; i++) {
        if (res[i] > 0) {
            w->burst[n].buf = bufs[i];
            w->burst[n].len = (uint32_t)res[i];
            n++;
        } else if (res[i] != -EAGAIN && res[i] != -EINTR) {
            failed = res[i];
        }
    }
    if (n)
        rx_worked(w, in);
    if (failed <= 0)
        rx_failed(w, in, failed);
    want = 2 * n;
    w->rx_want[in] = (uint8_t)(want < 2 ? 2 : want > TS_BURST ? TS_BURST : want);
    return n;
}

/* Read up to TS_BURST frames from queue `in`, until it is empty. */
static int rx_burst(struct ts_worker *w, int in)
{
    if (w->ring)
        return rx_burst_ring(w, in);

    int n = 0;
    while (n < TS_BURST) {
        struct frame *f = &w->burst[n];
        f->buf = w->buffers + (size_t)n * BUF_STRIDE + TS_HEADROOM;
        ssize_t r = read(w->fds[in], f->buf, TS_FRAME_MAX);
        if (r > 0) {
            f->len = (uint32_t)r;
            n++;
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        rx_failed(w, in, r < 0 ? -errno : 0);
        break;
    }
    if (n)
        rx_worked(w, in);
    return n;
}

/* Sending. A frame goes to a port, and for a mirror m (or -1) as a copy:
 * write it now (read/write, or when the caller needs the outcome), or queue
 * it (io_uring: the whole burst's writes, flood copies included, go out in
 * one submission at flush()). Either way count_sent() counts the outcome. */

#define NO_MIRROR (-1)

/* Count a write of len bytes (virtio-net header included) to port out. */
static bool count_sent(struct ts_worker *w, int out, int m, uint32_t len, int32_t res)
{
    struct ts_counters *c = &w->counters[out];
    bool ok = res == (int32_t)len;
    if (ok) {
        c->tx_packets++;
        c->tx_bytes += len - TS_VNET_HDR_LEN;
    } else if (res == -EAGAIN || res == -EWOULDBLOCK || res == -ENOBUFS) {
        c->tx_dropped++;            /* the queue is full: drop, never block (nor retry) */
    } else {
        c->tx_errors++;             /* over MTU, short or failed write */
    }
    if (m != NO_MIRROR) {
        struct ts_mirror_counters *mc = &w->mirror_counters[m];
        if (ok) {
            mc->packets++;
            mc->bytes += len - TS_VNET_HDR_LEN;
        } else {
            mc->dropped++;
        }
    }
    return ok;
}

/* Submit the queued writes and count them (io_uring; nothing to do otherwise).
 * Lost count, stated: a submit that fails (never seen: the ring is reaped
 * empty at every flush) leaves its writes uncounted. */
static void flush(struct ts_worker *w)
{
    if (!w->ring || !ts_ring_queued(w->ring))
        return;
    int n = ts_ring_flush(w->ring, w->done);
    for (int i = 0; i < n; i++) {
        uint64_t tag = w->done[i].tag;
        count_sent(w, (int)(tag & 0xffff), (int)((tag >> 16) & 0xff) - 1, (uint32_t)(tag >> 32),
                   w->done[i].res);
    }
}

/* Write the frame as it is, now; true if the port took it. */
static bool xmit_now(struct ts_worker *w, int out, const struct frame *f, int m)
{
    if (!fits_port(&w->s->ports[out], f))
        return count_sent(w, out, m, f->len, -EMSGSIZE);
    /* Header and frame, byte for byte: GSO frames cross unchanged. */
    ssize_t r = write(w->fds[out], f->buf, f->len);
    return count_sent(w, out, m, f->len, r < 0 ? -errno : (int32_t)r);
}

/* Write the frame as it is: now, or queued until flush() (io_uring). The
 * frame's buffer must not change until then: see tx(). */
static void xmit(struct ts_worker *w, int out, const struct frame *f, int m)
{
    if (!w->ring) {
        xmit_now(w, out, f, m);
        return;
    }
    if (!fits_port(&w->s->ports[out], f)) {
        count_sent(w, out, m, f->len, -EMSGSIZE);
        return;
    }
    uint64_t tag = (uint64_t)f->len << 32 | (uint64_t)(m + 1) << 16 | (uint64_t)out;
    if (!ts_ring_write(w->ring, out, f->buf, f->len, tag)) {
        flush(w);                   /* the ring is full: send what it holds */
        ts_ring_write(w->ring, out, f->buf, f->len, tag);
    }
}

/* A copy for each mirror in the mask, to its monitor port, as the frame is now. */
static void mirror(struct ts_worker *w, uint16_t mirrors, const struct frame *f)
{
    for (; mirrors; mirrors &= (uint16_t)(mirrors - 1)) {
        int m = __builtin_ctz(mirrors);
        uint32_t to = w->set->mirrors[m].to;
        if (to < TS_MAX_PORTS && can_send_to(w, (int)to))
            xmit(w, (int)to, f, m);
        else
            w->mirror_counters[m].dropped++;
    }
}

/* tag_for() will edit the frame in place for port o. */
static bool tag_changes(const struct frame *f, const struct ts_port_conf *o)
{
    bool want_tag = o->pvid != f->vlan;
    return want_tag != f->tagged || (want_tag && tag_vid(f) != f->vlan);
}

/* Send to port `out` (settings o) in the form it carries the frame's VLAN in. */
static void tx(struct ts_worker *w, int out, const struct ts_port_conf *o, struct frame *f)
{
    /* Queued writes of this buffer read it at flush: send them before editing it. */
    if (w->ring && tag_changes(f, o))
        flush(w);
    if (!tag_for(f, o)) {
        w->counters[out].tx_errors++;
        return;
    }
    if (!o->mirror_tx) {
        xmit(w, out, f, NO_MIRROR);
        return;
    }
    /* Mirrors copy what the port took: that takes the write's outcome now. */
    flush(w);
    if (xmit_now(w, out, f, NO_MIRROR))
        mirror(w, o->mirror_tx, f);
}

/* Count a frame in; only frames accepted from an up port, in one of its
 * VLANs, allowed by its ACL go further. An rx mirror copies what the port
 * sent while up, also what is dropped here -- but a frame we cannot parse,
 * which we do not write anywhere. */
static bool rx_accept(struct ts_worker *w, int in, const struct ts_port_conf *pc, struct frame *f)
{
    struct ts_counters *c = &w->counters[in];
    if (!is_parsable(f)) {
        c->rx_errors++;
        return false;
    }
    if (!has_host_source(f)) {
        c->rx_errors++;
        if (pc->mirror_rx && port_is_up(w, in))
            mirror(w, pc->mirror_rx, f);
        return false;
    }
    c->rx_packets++;
    c->rx_bytes += eth_len(f);
    if (!port_is_up(w, in)) {
        c->rx_dropped++;
        return false;
    }
    if (pc->mirror_rx)
        mirror(w, pc->mirror_rx, f);    /* what arrived, as it arrived */
    if (pc->flags & TS_PORT_MONITOR) {
        c->rx_dropped++;                /* a monitor port only receives */
        return false;
    }
    if (!classify(pc, f)) {
        c->rx_dropped++;
        c->vlan_dropped++;
        return false;
    }
    if ((pc->flags & TS_PORT_ACL) && !acl_allows(w, in, pc, f)) {
        c->rx_dropped++;
        c->acl_dropped++;
        return false;
    }
    return true;
}

/* A new source MAC may be learned on a port with a MAC limit while the port
 * holds fewer learned entries than the limit (lost race: see the header). */
static bool mac_limit_allows(const struct ts_shared *s, int in, const struct ts_port_conf *pc,
                             const struct frame *f)
{
    /* First try the common case: the source is known on this port already. */
    if (ts_fdb_lookup(s, eth_src(f), f->vlan) == in)
        return true;
    uint32_t entries = port_entries(s, (uint16_t)in);
    uint32_t statics = __atomic_load_n(&s->ports[in].fdb_static, __ATOMIC_RELAXED);
    return entries <= statics || entries - statics < pc->mac_limit;
}

/* Learn the source in the frame's VLAN; false if the port's MAC limit drops the frame. */
static bool learn(struct ts_worker *w, int in, const struct ts_port_conf *pc, struct frame *f,
                  uint32_t now)
{
    if ((pc->flags & TS_PORT_MAC_LIMIT) && !mac_limit_allows(w->s, in, pc, f)) {
        w->counters[in].rx_dropped++;
        w->counters[in].mac_limit_dropped++;
        return false;
    }
    /* Not while the control process recounts the table: learned from a later frame. */
    if (w->learning)
        fdb_learn(w->s, w->worker, eth_src(f), f->vlan, (uint16_t)in, now);
    return true;
}

/* A port (settings o) may get a frame of this VLAN from a port with settings
 * i: it is in the VLAN, and the two ports are not both isolated. */
static bool should_deliver(const struct ts_port_conf *i, const struct ts_port_conf *o,
                           uint16_t vlan)
{
    return port_in_vlan(o, vlan) && !(i->flags & o->flags & TS_PORT_ISOLATED);
}

/* Broadcast, multicast and unknown unicast: every other port of the VLAN that is up.
 * A flood that finds no such port forwards nothing: rx_dropped, not flooded. */
static void flood(struct ts_worker *w, int in, const struct ts_port_conf *pc, struct frame *f)
{
    const struct ts_port_conf *ports = w->set->ports;
    uint16_t vlan = f->vlan;
    int sent = 0;
    for (int p = 0; p < w->nfds; p++) {
        if (p != in && can_send_to(w, p) && should_deliver(pc, &ports[p], vlan)) {
            tx(w, p, &ports[p], f);
            sent++;
        }
    }
    if (sent)
        w->counters[in].flooded++;
    else
        w->counters[in].rx_dropped++;
}

static void forward(struct ts_worker *w, int in, const struct ts_port_conf *pc, struct frame *f)
{
    const uint8_t *dst = eth_dst(f);
    int out = -1;
    if (!is_multicast(dst)) {
        out = ts_fdb_lookup(w->s, dst, f->vlan);
    } else if (is_link_local_group(dst)) {
        w->counters[in].rx_dropped++;   /* PAUSE, LACP, 802.1X, LLDP...: for the link, not relayed */
        return;
    }
    if (out < 0) {
        if ((pc->flags & TS_PORT_STORM) && !storm_allows(w, in, pc, dst)) {
            w->counters[in].rx_dropped++;
            w->counters[in].storm_dropped++;
            return;
        }
        flood(w, in, pc, f);
    } else if (out == in) {
        /* The destination is on the segment the frame came from: it has it already. */
        w->counters[in].rx_dropped++;
    } else if (can_send_to(w, out) && should_deliver(pc, &w->set->ports[out], f->vlan)) {
        tx(w, out, &w->set->ports[out], f);
    } else {
        w->counters[in].rx_dropped++;   /* its port is down, not served here, or isolated */
    }
}

/* One queue's turn: receive a burst -> classify and filter -> learn sources
 * -> look up destinations and send -> count (counting happens where each
 * fate is decided). handle_burst() does all but the receiving, for a burst
 * w->burst[0..n) of queue `in` read by either way of reading. */
static int handle_burst(struct ts_worker *w, int in, int n, uint32_t now)
{
    const struct ts_port_conf *pc = &w->set->ports[in];
    for (int i = 0; i < n; i++)
        w->burst[i].accepted = rx_accept(w, in, pc, &w->burst[i]);
    /* Learn after filtering, so malformed or filtered frames cannot poison the table. */
    for (int i = 0; i < n; i++)
        if (w->burst[i].accepted)
            w->burst[i].accepted = learn(w, in, pc, &w->burst[i], now);
    for (int i = 0; i < n; i++)
        if (w->burst[i].accepted)
            forward(w, in, pc, &w->burst[i]);
    flush(w);   /* before the next burst reuses the buffers */
    return n;
}

static int handle_queue(struct ts_worker *w, int in, uint32_t now)
{
    return handle_burst(w, in, rx_burst(w, in), now);
}

/* Multishot reads: arm queue `in` again (its read ended: buffers ran out, or
 * the kernel ended it); the SQE goes out with the next enter. */
static void rx_rearm(struct ts_worker *w, int in)
{
    if (!ts_ring_rx_arm(w->ring, in)) {
        flush(w);                   /* the submission queue was full of writes */
        if (!ts_ring_rx_arm(w->ring, in))
            return;
    }
    w->rx_armed++;
}

/* Multishot reads: the completions w->rx[0..n), in order; a run of frames of
 * one queue is a burst. Buffers go back to the kernel once their burst's
 * writes are done. A read that ended for want of buffers is armed again; one
 * that failed counts an rx_errors and stays off, as rx_failed() says: for
 * good if the queue's device is gone (or it ended), else for a while. */
static int handle_rx(struct ts_worker *w, int n, uint32_t now)
{
    uint16_t bids[TS_BURST];
    int frames = 0;
    for (int i = 0; i < n;) {
        int in = w->rx[i].file, k = 0;
        for (; i < n && w->rx[i].file == in && k < TS_BURST; i++) {
            const struct ts_ring_rx *rx = &w->rx[i];
            if (rx->res > 0) {
                w->burst[k].buf = ts_ring_rx_buf(w->ring, rx->bid);
                w->burst[k].len = (uint32_t)rx->res;
                bids[k++] = rx->bid;
                rx_worked(w, in);
            }
            if (rx->more)
                continue;
            w->rx_armed--;
            bool again = rx->res > 0 || rx->res == -ENOBUFS || rx->res == -EAGAIN || rx->res == -EINTR;
            if (again && !w->stopping)
                rx_rearm(w, in);
            else if (!again && !(w->stopping && rx->res == -ECANCELED))
                rx_failed(w, in, rx->res);
        }
        frames += handle_burst(w, in, k, now);
        for (int j = 0; j < k; j++)
            ts_ring_rx_recycle(w->ring, bids[j]);
        ts_ring_rx_commit(w->ring);
    }
    return frames;
}

/* Enter the current settings copy for one wake-up (see "Settings updates"). */
static void settings_enter(struct ts_worker *w)
{
    uint32_t gen = __atomic_load_n(&w->s->settings_gen, __ATOMIC_ACQUIRE);
    for (;;) {
        __atomic_store_n(&w->reader->active, (gen & 1) + 1, __ATOMIC_SEQ_CST);
        uint32_t again = __atomic_load_n(&w->s->settings_gen, __ATOMIC_SEQ_CST);
        if (again == gen)
            break;
        gen = again;    /* a publish came in between: the copy we marked may be rewritten */
    }
    w->set = &w->s->settings[gen & 1];
    /* After active, as the recount sets the flag before it reads active ("Abandoned slots"). */
    w->learning = !__atomic_load_n(&w->s->fdb_recounting, __ATOMIC_SEQ_CST);
}

static void settings_leave(struct ts_worker *w)
{
    __atomic_store_n(&w->reader->active, 0, __ATOMIC_RELEASE);
    w->set = NULL;
}

/* Set by SIGTERM while ts_worker_run runs. */
static volatile sig_atomic_t stop_asked;

/* epoll_wait, waiting again when interrupted until timeout_ms is spent: an
 * io_uring ring torn down in this process (by a worker freed before, as the
 * tests do) interrupts the task's waits for a while (the kernel's teardown
 * queues work to it with TWA_SIGNAL). Signal handlers still run at once;
 * SIGTERM in ts_worker_run ends the wait. */
static int wait_ready(struct ts_worker *w, int timeout_ms)
{
    uint64_t deadline = timeout_ms < 0 ? 0 : now_ns() + (uint64_t)timeout_ms * 1000000;
    for (;;) {
        int n = epoll_pwait(w->epfd, w->events, TS_MAX_PORTS, timeout_ms, w->wait_mask);
        if (n >= 0 || errno != EINTR || (w->wait_mask && stop_asked))
            return n < 0 ? -errno : n;
        if (timeout_ms > 0) {
            uint64_t t = now_ns();
            timeout_ms = t >= deadline ? 0 : (int)((deadline - t + 999999) / 1000000);
        }
    }
}

static int wait_multishot(struct ts_worker *w, int timeout_ms)
{
    return ts_ring_rx_wait(w->ring, w->rx, RX_BATCH, timeout_ms, timeout_ms ? w->wait_mask : NULL);
}

/* Whether to look before this wait: after a turn that found frames, while
 * looks pay, or as the probe of every TS_LOOK_PROBE-th wait once they
 * stopped paying (see "Busy polling"). */
static bool look_now(struct ts_worker *w)
{
    if (!w->found)
        return false;
    if (w->look_trust)
        return true;
    if (++w->look_skipped < TS_LOOK_PROBE)
        return false;
    w->look_skipped = 0;
    return true;
}

/* A look ended: it paid (a frame within 1/TS_LOOK_QUICK of its length), or not. */
static void look_ended(struct ts_worker *w, bool paid)
{
    if (paid)
        w->look_trust = TS_LOOK_TRUST;
    else if (w->look_trust)
        w->look_trust--;
}

/* wait(w, timeout_ms), after looking again with no timeout for up to
 * busy_poll_us if look_now(). The looking adds to a finite timeout_ms; it
 * ends at a frame, or an error. */
static int wait_busy(struct ts_worker *w, int timeout_ms, int (*wait)(struct ts_worker *, int))
{
    uint32_t us = __atomic_load_n(&w->s->busy_poll_us, __ATOMIC_RELAXED);
    if (us && timeout_ms != 0 && look_now(w)) {
        uint64_t start = now_ns(), len = (uint64_t)us * 1000;
        do {
            int n = wait(w, 0);
            if (n > 0)
                look_ended(w, now_ns() - start <= len / TS_LOOK_QUICK);
            if (n != 0)
                return n;
        } while (now_ns() - start < len);
        look_ended(w, false);
    }
    return wait(w, timeout_ms);
}

static int poll_multishot(struct ts_worker *w, int timeout_ms)
{
    int n = wait_busy(w, timeout_ms, wait_multishot);
    w->found = n > 0;
    if (n <= 0)
        return n;
    uint32_t now = ts_now();
    int frames = 0;
    w->now_ns = 0;
    settings_enter(w);
    for (;;) {
        frames += handle_rx(w, n, now);
        /* A full batch: more is likely at hand (read while the writes went out). */
        if (n < RX_BATCH || frames >= RX_ROUND_MAX)
            break;
        n = ts_ring_rx_wait(w->ring, w->rx, RX_BATCH, 0, NULL);
        if (n <= 0)
            break;
    }
    settings_leave(w);
    return frames;
}

/* Take readers[worker] over, at the first poll: not at ts_worker_new, since a
 * worker may be made while the one it replaces still runs (and reads settings
 * under its marker). A worker that died between enter and leave left its
 * marker: ours now. */
static void claim(struct ts_worker *w)
{
    __atomic_store_n(&w->reader->active, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&w->reader->io, (uint32_t)w->io, __ATOMIC_RELAXED);
    w->claimed = true;
}

/* One more turn: the control process's watchdog sees this worker alive
 * (see "The watchdog"). Single writer: a plain add, stored whole. Release
 * (a plain store on x86 as relaxed is): the aging sweep that sees it move
 * sees the last burst's table writes done (see "Abandoned slots"). */
static void beat(struct ts_worker *w)
{
    __atomic_store_n(&w->reader->heartbeat, w->reader->heartbeat + 1, __ATOMIC_RELEASE);
}

int ts_worker_poll(struct ts_worker *w, int timeout_ms)
{
    if (!w->claimed)
        claim(w);
    beat(w);
    if (w->rx_resting)              /* (a read failed a moment ago: rx_failed) */
        timeout_ms = rx_retry_due(w, timeout_ms);
    if (w->multishot)
        return poll_multishot(w, timeout_ms);
    int n = wait_busy(w, timeout_ms, wait_ready);
    if (n <= 0) {
        w->found = false;
        return n;
    }
    uint32_t now = ts_now();
    int frames = 0;
    w->now_ns = 0;
    settings_enter(w);
    for (int i = 0; i < n; i++)
        frames += handle_queue(w, (int)w->events[i].data.u32, now);
    settings_leave(w);
    w->found = frames > 0;
    return frames;
}

int ts_worker_drain(struct ts_worker *w, int timeout_ms)
{
    if (!w->multishot || w->stopping || !w->claimed)
        return 0;                   /* (never polled: its reads were never submitted) */
    w->stopping = true;
    if (!ts_ring_rx_cancel(w->ring)) {
        flush(w);
        ts_ring_rx_cancel(w->ring);
    }
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;
    int frames = 0;
    while (w->rx_armed > 0) {
        uint64_t t = now_ns();
        if (t >= deadline)
            return -ETIMEDOUT;
        int n = ts_ring_rx_wait(w->ring, w->rx, RX_BATCH, (int)((deadline - t + 999999) / 1000000), NULL);
        if (n < 0)
            return n;
        w->now_ns = 0;
        settings_enter(w);
        frames += handle_rx(w, n, ts_now());
        settings_leave(w);
    }
    return frames;
}

static void on_stop(int sig)
{
    (void)sig;
    stop_asked = 1;
}

/* SIGTERM, pending but blocked: the check of a busy worker, which may not
 * wait (and so take the signal) for a long while. */
static bool term_pending(void)
{
    sigset_t pending;
    return sigpending(&pending) == 0 && sigismember(&pending, SIGTERM);
}

int ts_worker_run(struct ts_worker *w)
{
    /* SIGTERM is blocked but while waiting (as pselect does): it ends a wait,
     * never a burst, and cannot slip in between the check and the wait. */
    sigset_t term, old, waiting;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    struct sigaction sa = { .sa_handler = on_stop }, old_sa;
    sigemptyset(&sa.sa_mask);
    stop_asked = 0;
    if (sigaction(SIGTERM, &sa, &old_sa) < 0)
        return -errno;
    pthread_sigmask(SIG_BLOCK, &term, &old);
    waiting = old;
    sigdelset(&waiting, SIGTERM);
    w->wait_mask = &waiting;
    int r = 0;
    for (unsigned turn = 1; !stop_asked; turn++) {
        r = ts_worker_poll(w, TS_IDLE_WAIT_MS);     /* idle, it still turns: the heartbeat */
        if (r < 0 && r != -EINTR)
            break;
        r = 0;
        if (turn % STOP_CHECK_TURNS == 0 && term_pending())
            break;
    }
    w->wait_mask = NULL;
    if (r == 0) {
        int d = ts_worker_drain(w, DRAIN_TIMEOUT_MS);
        r = d < 0 ? d : 0;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);  /* a SIGTERM still pending runs on_stop now */
    sigaction(SIGTERM, &old_sa, NULL);
    stop_asked = 0;
    return r;
}

struct ts_worker *ts_worker_new(struct ts_shared *s, int worker, const int *fds, int nfds, int io)
{
    if (!s || __atomic_load_n(&s->magic, __ATOMIC_ACQUIRE) != TS_MAGIC
        || s->version != TS_VERSION || worker < 0 || (uint32_t)worker >= s->n_workers
        || nfds < 0 || nfds > TS_MAX_PORTS || (nfds > 0 && !fds)
        || io < TS_IO_AUTO || io > TS_IO_URING_BURST) {
        errno = EINVAL;
        return NULL;
    }
    /* A blocking queue would stall every port of this worker. */
    for (int p = 0; p < nfds; p++) {
        if (fds[p] < 0)
            continue;
        int fl = fcntl(fds[p], F_GETFL);
        if (fl < 0)
            return NULL;
        if (!(fl & O_NONBLOCK)) {
            errno = EINVAL;
            return NULL;
        }
    }

    struct ts_worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->s = s;
    w->counters = s->counters[worker];
    w->mirror_counters = s->mirror_counters[worker];
    w->acl_hits = s->acl_hits[worker];
    w->reader = &s->readers[worker];
    w->worker = worker;
    w->look_trust = TS_LOOK_TRUST;
    w->nfds = nfds;
    w->epfd = -1;
    /* The backend (see "I/O backends" in fastpath.h). TS_IO_URING: io_uring
     * with multishot reads where the kernel has them (6.7+), else burst reads;
     * TS_IO_URING_BURST: burst reads always; both fail when io_uring is refused
     * (missing, seccomp, sysctl). Auto is AUTO_IO, or read/write where that is
     * refused. */
    int want = io == TS_IO_AUTO ? AUTO_IO : io;
    if (want == TS_IO_URING || want == TS_IO_URING_BURST) {
        w->ring = ts_ring_new(fds, nfds);
        if (!w->ring && io != TS_IO_AUTO)
            goto fail;
    }
    if (w->ring && want == TS_IO_URING) {
        int e = ts_ring_rx_start(w->ring, RX_BUFFERS, BUF_STRIDE, TS_HEADROOM, TS_FRAME_MAX);
        w->multishot = e == 0;
        if (e < 0 && io == TS_IO_AUTO) {
            ts_ring_free(w->ring);
            w->ring = NULL;
        } else if (e < 0 && e != -EOPNOTSUPP) {
            errno = -e;
            goto fail;
        }
    }
    w->io = !w->ring ? TS_IO_READWRITE : w->multishot ? TS_IO_URING : TS_IO_URING_BURST;
    /* Multishot reads need neither: they fill the ring's buffers, and say themselves what came. */
    if (!w->multishot && (!(w->buffers = malloc((size_t)TS_BURST * BUF_STRIDE))
                          || (w->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0))
        goto fail;
    /* Burst reads read into w->buffers and write out of them: registered, the
     * kernel copies to and from their pages through its own mapping, not as a
     * user copy (refused, under RLIMIT_MEMLOCK without CAP_IPC_LOCK: plain). */
    if (w->ring && !w->multishot)
        (void)ts_ring_buffers(w->ring, w->buffers, (size_t)TS_BURST * BUF_STRIDE);
    memset(w->rx_want, TS_BURST, sizeof w->rx_want);
    for (int p = 0; p < TS_MAX_PORTS; p++)
        w->fds[p] = p < nfds ? fds[p] : -1;
    for (int p = 0; p < nfds; p++) {
        if (fds[p] < 0)
            continue;
        if (w->multishot) {
            w->rx_armed += ts_ring_rx_arm(w->ring, p);     /* nfds <= TS_MAX_PORTS = the SQ's size */
            continue;
        }
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)p };
        if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fds[p], &ev) < 0)
            goto fail;
    }
    return w;

fail:;
    int saved = errno;
    ts_worker_free(w);
    errno = saved;
    return NULL;
}

void ts_worker_free(struct ts_worker *w)
{
    if (!w)
        return;
    if (w->epfd >= 0)
        close(w->epfd);
    /* Nothing in flight (burst reads never wait; multishot reads were
     * drained): the queues go now, not with the ring's deferred teardown. */
    if (w->ring && (!w->multishot || (w->stopping && w->rx_armed == 0)))
        ts_ring_release_files(w->ring);
    ts_ring_free(w->ring);
    free(w->buffers);
    free(w);
}

int ts_worker_io(const struct ts_worker *w)
{
    return w->io;
}

int ts_worker_buffers_registered(const struct ts_worker *w)
{
    return w->ring && ts_ring_buffers_registered(w->ring);
}

int ts_die_with_parent(void)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
        return -errno;
    /* The parent died before the prctl: no signal will ever come. */
    if (getppid() == 1)
        return -ESRCH;
    return 0;
}

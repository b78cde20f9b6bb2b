/* fastpath.c -- the per-packet half of tapswitch: MAC table and worker loop.
 *
 * fastpath.h is the design note (layout, who writes what, the races); this
 * file follows its sections: shared memory, the MAC table (learning, lookup,
 * static entries, flushing and aging), then the worker.
 */
#define _GNU_SOURCE
#include "fastpath.h"

#include <errno.h>
#include <fcntl.h>
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

/* ---------------------------------------------------------------- Shared memory. */

#define FDB_SIZE_MAX 0xfffffff8u   /* keeps fdb_capacity within 32 bits */

static uint32_t fdb_buckets_for(uint32_t fdb_size)
{
    return (uint32_t)(((uint64_t)fdb_size + TS_FDB_WAYS - 1) / TS_FDB_WAYS);
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
    s->fdb_buckets = fdb_buckets_for(fdb_size);
    s->fdb_capacity = s->fdb_buckets * TS_FDB_WAYS;
    s->hash_seed = hash_seed;
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

/* ---------------------------------------------------------------- The MAC table. */

#define VLAN_MAX 4095
#define KEY_USED (1ULL << 63)
#define VAL_PORT_MASK 0xffffULL
#define VAL_STATIC (1ULL << 16)
#define VAL_VALID (1ULL << 17)
#define VAL_TAG_SHIFT 18
#define VAL_TAG_MASK 0x3fffULL
#define PUT_ATTEMPTS 4              /* lost races before learning gives up on a frame */

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

/* fastrange: the high 32 bits of the hash scaled to the bucket count. */
static struct ts_fdb_entry *fdb_bucket(const struct ts_shared *s, uint64_t h)
{
    uint64_t b = ((h >> 32) * (uint64_t)s->fdb_buckets) >> 32;
    return (struct ts_fdb_entry *)&s->fdb[b * TS_FDB_WAYS];
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

static void port_count_sub(struct ts_shared *s, uint16_t port)
{
    __atomic_sub_fetch(&s->ports[port].fdb_entries, 1, __ATOMIC_RELAXED);
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
        /* val == 0: being claimed or removed; a miss (header, lost races). */
    }
    return NULL;
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

/* Take an empty slot of bucket b for key. */
static bool fdb_claim(struct ts_shared *s, struct ts_fdb_entry *b, uint64_t key, uint64_t nv)
{
    for (int i = 0; i < TS_FDB_WAYS; i++) {
        uint64_t empty = 0;
        if (load(&b[i].key) != 0 || !cas(&b[i].key, &empty, key))
            continue;
        /* key set, val 0: the slot is ours, nobody else writes its val. */
        store(&b[i].val, nv);
        port_count_add(s, val_port(nv));
        return true;
    }
    return false;
}

/* The bucket is full: replace, fairly, a learned entry of the port that holds
 * the most entries, the oldest among them -- Open vSwitch's defence against
 * MAC flooding: a flooding port evicts its own entries, not its neighbours'.
 * Returns 1 if replaced, 0 if nothing here may be evicted, -1 if a race was
 * lost (a slot was freed or the victim changed): try again. */
static int fdb_evict(struct ts_shared *s, struct ts_fdb_stats *st, struct ts_fdb_entry *b,
                     uint64_t key, uint64_t nv)
{
    struct ts_fdb_entry *victim = NULL;
    uint64_t victim_val = 0;
    uint32_t most = 0;

    for (int i = 0; i < TS_FDB_WAYS; i++) {
        if (load(&b[i].key) == 0)
            return -1;
        uint64_t v = load(&b[i].val);
        if (!val_valid(v) || val_static(v))
            continue;
        uint32_t n = __atomic_load_n(&s->ports[val_port(v)].fdb_entries, __ATOMIC_RELAXED);
        if (!victim || n > most || (n == most && val_seen(v) < val_seen(victim_val))) {
            victim = &b[i];
            victim_val = v;
            most = n;
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
    return 1;
}

/* Put key -> nv in its bucket: update the key's entry, else take an empty
 * slot, else evict. Returns 1 new, 2 moved, 0 refreshed or unchanged, -1 not
 * stored. Evictions are counted in st; the caller counts the rest. */
static int fdb_put(struct ts_shared *s, struct ts_fdb_stats *st, uint64_t key, uint64_t h,
                   uint64_t nv)
{
    struct ts_fdb_entry *b = fdb_bucket(s, h);

    for (int attempt = 0; attempt < PUT_ATTEMPTS; attempt++) {
        uint64_t v;
        struct ts_fdb_entry *e = fdb_find(b, key, hash_tag(h), &v);
        if (e) {
            int r = fdb_update(s, e, v, nv);
            if (r >= 0)
                return r;
            continue;
        }
        if (fdb_claim(s, b, key, nv))
            return 1;
        int r = fdb_evict(s, st, b, key, nv);
        if (r > 0)
            return 1;
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

int ts_fdb_learn(struct ts_shared *s, int writer, const uint8_t *mac, uint16_t vlan,
                 uint16_t port, uint32_t now)
{
    if (!writer_is_valid(writer) || vlan > VLAN_MAX || port >= TS_MAX_PORTS)
        return -1;
    return fdb_learn(s, writer, mac, vlan, port, now);
}

/* Lookup. */

int ts_fdb_lookup(const struct ts_shared *s, const uint8_t *mac, uint16_t vlan)
{
    if (vlan > VLAN_MAX)
        return -1;
    uint64_t key = fdb_key(mac, vlan), h = fdb_hash(s, key), v;
    if (!fdb_find(fdb_bucket(s, h), key, hash_tag(h), &v))
        return -1;
    return val_port(v);
}

/* Static entries. */

int ts_fdb_add_static(struct ts_shared *s, const uint8_t *mac, uint16_t vlan, uint16_t port)
{
    if (vlan > VLAN_MAX || port >= TS_MAX_PORTS)
        return -EINVAL;
    uint64_t key = fdb_key(mac, vlan), h = fdb_hash(s, key);
    int r = fdb_put(s, &s->fdb_stats[TS_CONTROL], key, h,
                    make_val(port, true, ts_now(), hash_tag(h)));
    return r < 0 ? -ENOSPC : 0;
}

int ts_fdb_del(struct ts_shared *s, const uint8_t *mac, uint16_t vlan)
{
    if (vlan > VLAN_MAX)
        return -EINVAL;
    uint64_t key = fdb_key(mac, vlan), h = fdb_hash(s, key), v;
    struct ts_fdb_entry *b = fdb_bucket(s, h), *e;
    uint32_t removed = 0;
    /* Every copy: a lost learning race may have made two. */
    while ((e = fdb_find(b, key, hash_tag(h), &v)))
        removed += fdb_remove(s, e, v);
    return removed ? 0 : -ENOENT;
}

/* Flushing and aging. A value is only ever valid in a slot whose key is set,
 * so these read val alone. */

uint32_t ts_fdb_flush(struct ts_shared *s, int port)
{
    uint32_t removed = 0;
    for (uint32_t i = 0; i < s->fdb_capacity; i++) {
        uint64_t v = load(&s->fdb[i].val);
        if (!val_valid(v) || val_static(v) || (port >= 0 && val_port(v) != port))
            continue;
        removed += fdb_remove(s, &s->fdb[i], v);
    }
    return removed;
}

static bool has_expired(uint64_t v, uint32_t now, uint32_t aging)
{
    return (int64_t)now - (int64_t)val_seen(v) > (int64_t)aging;
}

uint32_t ts_fdb_age(struct ts_shared *s, uint32_t now, uint32_t aging,
                    uint32_t first_bucket, uint32_t n_buckets)
{
    uint32_t buckets = s->fdb_buckets, removed = 0;
    if (buckets == 0)
        return 0;               /* not initialised */
    if (n_buckets > buckets)
        n_buckets = buckets;
    for (uint32_t j = 0; j < n_buckets; j++) {
        uint64_t b = ((uint64_t)first_bucket + j) % buckets;
        struct ts_fdb_entry *e = &s->fdb[b * TS_FDB_WAYS];
        for (int i = 0; i < TS_FDB_WAYS; i++) {
            uint64_t v = load(&e[i].val);
            if (val_valid(v) && !val_static(v) && has_expired(v, now, aging))
                removed += fdb_remove(s, &e[i], v);
        }
    }
    s->fdb_stats[TS_CONTROL].aged += removed;
    return removed;
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

/* ---------------------------------------------------------------- The worker. */

#define ETH_HLEN 14
#define ETH_ALEN 6
#define VLAN_HLEN 4
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88a8

/* struct virtio_net_hdr_v1, in the host's byte order (the TAP default). */
struct vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers;
};
_Static_assert(sizeof(struct vnet_hdr) == TS_VNET_HDR_LEN, "virtio-net header is 12 bytes");

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
    uint8_t *buf;
    uint32_t len;               /* bytes read, header included */
    uint16_t gso_size;          /* 0 unless a GSO super-frame */
    bool accepted;
};

struct ts_worker {
    struct ts_shared *s;
    struct ts_counters *counters;   /* s->counters[worker], indexed by port */
    int worker;
    int epfd;
    int nfds;
    int fds[TS_MAX_PORTS];          /* -1: no queue of that port */
    uint8_t *buffers;               /* TS_BURST * TS_FRAME_MAX bytes */
    struct frame burst[TS_BURST];
    struct epoll_event events[TS_MAX_PORTS];
};

static const uint8_t *eth_dst(const struct frame *f) { return f->buf + TS_VNET_HDR_LEN; }
static const uint8_t *eth_src(const struct frame *f) { return eth_dst(f) + ETH_ALEN; }
static uint32_t eth_len(const struct frame *f) { return f->len - TS_VNET_HDR_LEN; }

static uint16_t eth_type(const struct frame *f)
{
    const uint8_t *t = eth_dst(f) + 2 * ETH_ALEN;
    return (uint16_t)(t[0] << 8 | t[1]);
}

static bool is_multicast(const uint8_t *mac)
{
    return mac[0] & 1;
}

static bool is_zero(const uint8_t *mac)
{
    return !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]);
}

static bool port_is_up(const struct ts_worker *w, int p)
{
    return __atomic_load_n(&w->s->ports[p].state, __ATOMIC_RELAXED) == TS_PORT_UP;
}

static bool can_send_to(const struct ts_worker *w, int p)
{
    return w->fds[p] >= 0 && port_is_up(w, p);
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
    if (gso != VNET_GSO_NONE && h.gso_size == 0)
        return false;
    if ((h.flags & VNET_F_NEEDS_CSUM)
        && (uint32_t)h.csum_start + h.csum_offset + 2 > eth_len(f))
        return false;
    f->gso_size = gso != VNET_GSO_NONE ? h.gso_size : 0;
    return true;
}

/* Malformed frames are counted as rx_errors and go no further: runts, frames
 * that may have been cut at our buffer's end, bad virtio-net headers, and
 * source MACs no host may have (multicast, zero). */
static bool is_well_formed(struct frame *f)
{
    if (f->len < TS_VNET_HDR_LEN + ETH_HLEN || f->len >= TS_FRAME_MAX)
        return false;
    if (!vnet_hdr_is_valid(f))
        return false;
    return !is_multicast(eth_src(f)) && !is_zero(eth_src(f));
}

/* What the port can carry: a GSO frame leaves as gso_size segments; any other
 * frame as itself, with room for one 802.1Q/802.1ad tag. */
static bool fits_port(const struct ts_port *port, const struct frame *f)
{
    uint32_t mtu = __atomic_load_n(&port->mtu, __ATOMIC_RELAXED);
    if (f->gso_size)
        return f->gso_size <= mtu;
    uint16_t type = eth_type(f);
    bool tagged = type == ETH_P_8021Q || type == ETH_P_8021AD;
    return eth_len(f) <= mtu + ETH_HLEN + (tagged ? VLAN_HLEN : 0);
}

/* Read up to TS_BURST frames from queue `in`, until it is empty. */
static int rx_burst(struct ts_worker *w, int in)
{
    int n = 0;
    while (n < TS_BURST) {
        struct frame *f = &w->burst[n];
        ssize_t r = read(w->fds[in], f->buf, TS_FRAME_MAX);
        if (r > 0) {
            f->len = (uint32_t)r;
            n++;
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        /* A queue that fails or ends would wake us forever: count it once and
         * stop listening; the control process restarts the worker. */
        w->counters[in].rx_errors++;
        epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->fds[in], NULL);
        break;
    }
    return n;
}

/* Count a frame in; only accepted frames from an up port go further. */
static bool rx_accept(struct ts_worker *w, int in, struct frame *f)
{
    struct ts_counters *c = &w->counters[in];
    if (!is_well_formed(f)) {
        c->rx_errors++;
        return false;
    }
    c->rx_packets++;
    c->rx_bytes += eth_len(f);
    if (!port_is_up(w, in)) {
        c->rx_dropped++;
        return false;
    }
    return true;
}

static void tx(struct ts_worker *w, int out, const struct frame *f)
{
    struct ts_counters *c = &w->counters[out];
    if (!fits_port(&w->s->ports[out], f)) {
        c->tx_errors++;
        return;
    }
    /* Header and frame, byte for byte: GSO frames cross unchanged. */
    ssize_t r = write(w->fds[out], f->buf, f->len);
    if (r == (ssize_t)f->len) {
        c->tx_packets++;
        c->tx_bytes += eth_len(f);
    } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
        c->tx_dropped++;            /* the queue is full: drop, never block */
    } else {
        c->tx_errors++;
    }
}

/* Broadcast, multicast and unknown unicast: every other port that is up. */
static void flood(struct ts_worker *w, int in, const struct frame *f)
{
    w->counters[in].flooded++;
    for (int p = 0; p < w->nfds; p++)
        if (p != in && can_send_to(w, p))
            tx(w, p, f);
}

static void forward(struct ts_worker *w, int in, const struct frame *f)
{
    int out = is_multicast(eth_dst(f)) ? -1 : ts_fdb_lookup(w->s, eth_dst(f), 0);
    if (out < 0)
        flood(w, in, f);
    else if (out == in)
        ;   /* the destination is on the segment the frame came from: it has it already */
    else if (can_send_to(w, out))
        tx(w, out, f);
    else
        w->counters[in].rx_dropped++;   /* its port is down, or not served here */
}

/* One queue's turn: receive a burst -> learn sources -> look up destinations
 * and send -> count (counting happens where each fate is decided). */
static int handle_queue(struct ts_worker *w, int in, uint32_t now)
{
    int n = rx_burst(w, in);
    for (int i = 0; i < n; i++)
        w->burst[i].accepted = rx_accept(w, in, &w->burst[i]);
    /* Learn after filtering, so malformed frames cannot poison the table. */
    for (int i = 0; i < n; i++)
        if (w->burst[i].accepted)
            fdb_learn(w->s, w->worker, eth_src(&w->burst[i]), 0, (uint16_t)in, now);
    for (int i = 0; i < n; i++)
        if (w->burst[i].accepted)
            forward(w, in, &w->burst[i]);
    return n;
}

int ts_worker_poll(struct ts_worker *w, int timeout_ms)
{
    int n = epoll_wait(w->epfd, w->events, TS_MAX_PORTS, timeout_ms);
    if (n < 0)
        return -errno;
    uint32_t now = ts_now();
    int frames = 0;
    for (int i = 0; i < n; i++)
        frames += handle_queue(w, (int)w->events[i].data.u32, now);
    return frames;
}

int ts_worker_run(struct ts_worker *w)
{
    for (;;) {
        int r = ts_worker_poll(w, -1);
        if (r < 0 && r != -EINTR)
            return r;
    }
}

struct ts_worker *ts_worker_new(struct ts_shared *s, int worker, const int *fds, int nfds)
{
    if (!s || __atomic_load_n(&s->magic, __ATOMIC_ACQUIRE) != TS_MAGIC
        || s->version != TS_VERSION || worker < 0 || (uint32_t)worker >= s->n_workers
        || nfds < 0 || nfds > TS_MAX_PORTS || (nfds > 0 && !fds)) {
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
    w->worker = worker;
    w->nfds = nfds;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->buffers = malloc((size_t)TS_BURST * TS_FRAME_MAX);
    if (w->epfd < 0 || !w->buffers)
        goto fail;
    for (int i = 0; i < TS_BURST; i++)
        w->burst[i].buf = w->buffers + (size_t)i * TS_FRAME_MAX;
    for (int p = 0; p < TS_MAX_PORTS; p++)
        w->fds[p] = p < nfds ? fds[p] : -1;
    for (int p = 0; p < nfds; p++) {
        if (fds[p] < 0)
            continue;
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
    free(w->buffers);
    free(w);
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

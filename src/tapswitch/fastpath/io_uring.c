/* io_uring.c -- the worker's io_uring backend: a burst of reads, or a
 * burst's writes (unicast and flood copies), in one io_uring_enter each.
 * io_uring.h says what a caller must keep; fastpath.h, "I/O backends", why. */
#define _GNU_SOURCE
#include "io_uring.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>

/* Debian 12's headers (6.1) predate multishot reads (6.7). */
#ifndef IORING_OP_READ_MULTISHOT
#define IORING_OP_READ_MULTISHOT 49
#endif

#define RX_GROUP 0                  /* the provided-buffer group of the multishot reads */
#define RX_TAG (1ULL << 63)         /* user_data of a read; writes' tags never set it */

struct ts_ring {
    struct io_uring ring;
    unsigned queued;            /* writes in the submission queue, not yet submitted */
    _Bool fixed;                /* files registered: SQEs name them by index */
    int fds[TS_RING_FILES];     /* otherwise, by fd */
    /* The burst buffers, registered (ts_ring_buffers): reads into them and
     * writes out of them are READ_FIXED and WRITE_FIXED. */
    const uint8_t *fbase;
    size_t flen;
    /* Multishot reads (ts_ring_rx_start): the buffers, their ring, and rx
     * completions reaped while waiting for writes, kept for the next peek. */
    struct io_uring_buf_ring *br;
    uint8_t *bufs;
    unsigned nbuf, recycled;    /* recycled: added since the last commit */
    uint32_t stride, headroom, size;
    struct ts_ring_rx *stash;
    unsigned stash_head, stash_len, stash_cap;
};

struct ts_ring *ts_ring_new(const int *fds, int nfds)
{
    if (nfds < 0 || nfds > TS_RING_FILES) {
        errno = EINVAL;
        return NULL;
    }
    struct ts_ring *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    /* SINGLE_ISSUER and DEFER_TASKRUN (6.1+): one task submits and reaps,
     * and completions run only when it reaps them, so the kernel never
     * interrupts it (without them, pending io_uring work makes epoll_wait
     * return EINTR). Older kernels refuse the flags: COOP_TASKRUN, then none. */
    int e = io_uring_queue_init(TS_RING_ENTRIES, &r->ring,
                                IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
    if (e == -EINVAL)
        e = io_uring_queue_init(TS_RING_ENTRIES, &r->ring,
                                IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN);
    if (e == -EINVAL)
        e = io_uring_queue_init(TS_RING_ENTRIES, &r->ring, 0);
    if (e < 0) {
        free(r);
        errno = -e;
        return NULL;
    }
    for (int i = 0; i < nfds; i++)
        r->fds[i] = fds[i];
    /* -1 entries are empty slots (5.13+); an older kernel refuses them. */
    r->fixed = nfds > 0 && io_uring_register_files(&r->ring, fds, (unsigned)nfds) == 0;
    return r;
}

void ts_ring_release_files(struct ts_ring *r)
{
    if (r->fixed && io_uring_unregister_files(&r->ring) == 0)
        r->fixed = 0;
}

void ts_ring_free(struct ts_ring *r)
{
    if (!r)
        return;
    if (r->nbuf)    /* no read takes a buffer of ours from here on, whatever the teardown's order */
        io_uring_unregister_buf_ring(&r->ring, RX_GROUP);
    io_uring_queue_exit(&r->ring);    /* cancels the multishot reads */
    free(r->br);
    free(r->bufs);
    free(r->stash);
    free(r);
}

/* nowait: for a file that supports it (a TAP queue, a socket), io_uring
 * ignores O_NONBLOCK and arms a poll instead: a read of an empty queue would
 * wait for a frame, a write to a full one for room. RWF_NOWAIT makes each
 * answer -EAGAIN at once, as read(2) and write(2) do on O_NONBLOCK fds. */

/* The SQE names its file by index (registered) or by fd. */
static void set_file(struct ts_ring *r, struct io_uring_sqe *sqe, int file)
{
    if (r->fixed) {
        sqe->fd = file;
        sqe->flags |= IOSQE_FIXED_FILE;
    } else {
        sqe->fd = r->fds[file];
    }
}

int ts_ring_buffers(struct ts_ring *r, void *base, size_t len)
{
    struct iovec iov = { .iov_base = base, .iov_len = len };
    int e = io_uring_register_buffers(&r->ring, &iov, 1);
    if (e == 0) {
        r->fbase = base;
        r->flen = len;
    }
    return e;
}

_Bool ts_ring_buffers_registered(const struct ts_ring *r)
{
    return r->flen != 0;
}

/* Is [buf, buf + len) in the registered buffers? */
static _Bool in_fixed(const struct ts_ring *r, const void *buf, uint32_t len)
{
    uintptr_t p = (uintptr_t)buf, base = (uintptr_t)r->fbase;
    return r->flen && p >= base && p - base + len <= r->flen;
}

/* Submit what is queued and wait for `want` completions. */
static int submit_and_wait(struct ts_ring *r, unsigned want)
{

    for (;;) {
        int e = io_uring_submit_and_wait(&r->ring, want);
        if (e >= 0 || e != -EINTR)
            return e < 0 ? e : 0;
    }
}

int ts_ring_read(struct ts_ring *r, int file, uint8_t *const *bufs, uint32_t size, int n,
                 int32_t *res)
{
    /* Reads go out alone: queued writes first, so the queue has room. The
     * caller flushed them already (their buffers are the ones we read into). */
    int got = 0;
    for (int i = 0; i < n; i++) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
        if (!sqe) {
            n = i;
            break;
        }
        if (in_fixed(r, bufs[i], size))
            io_uring_prep_read_fixed(sqe, -1, bufs[i], size, 0, 0);
        else
            io_uring_prep_read(sqe, -1, bufs[i], size, 0);
        set_file(r, sqe, file);
        sqe->rw_flags = RWF_NOWAIT;     /* see nowait, above */
        io_uring_sqe_set_data64(sqe, (uint64_t)i);
        res[i] = -EAGAIN;
    }
    int e = submit_and_wait(r, (unsigned)n);
    struct io_uring_cqe *cqe;
    while (got < n) {
        /* A failed submit may still have submitted some: reap what came. */
        if (e < 0 ? io_uring_peek_cqe(&r->ring, &cqe) : io_uring_wait_cqe(&r->ring, &cqe))
            break;
        uint64_t i = io_uring_cqe_get_data64(cqe);
        if (i < (uint64_t)n)
            res[i] = cqe->res;
        io_uring_cqe_seen(&r->ring, cqe);
        got++;
    }
    return e;
}

_Bool ts_ring_write(struct ts_ring *r, int file, const void *buf, uint32_t len, uint64_t tag)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe)
        return 0;
    if (in_fixed(r, buf, len))
        io_uring_prep_write_fixed(sqe, -1, buf, len, 0, 0);
    else
        io_uring_prep_write(sqe, -1, buf, len, 0);
    set_file(r, sqe, file);
    sqe->rw_flags = RWF_NOWAIT;         /* a full queue answers -EAGAIN: never wait */
    io_uring_sqe_set_data64(sqe, tag);
    r->queued++;
    return 1;
}

unsigned ts_ring_queued(const struct ts_ring *r)
{
    return r->queued;
}

static void stash_push(struct ts_ring *r, const struct io_uring_cqe *cqe);

int ts_ring_flush(struct ts_ring *r, struct ts_ring_done *done)
{
    unsigned want = r->queued;
    if (!want)
        return 0;
    int e = submit_and_wait(r, want);
    unsigned got = 0;
    struct io_uring_cqe *cqe;
    while (got < want) {
        if (e < 0 ? io_uring_peek_cqe(&r->ring, &cqe) : io_uring_wait_cqe(&r->ring, &cqe))
            break;
        if (io_uring_cqe_get_data64(cqe) & RX_TAG) {
            stash_push(r, cqe);         /* a frame read meanwhile: the next peek's */
            io_uring_cqe_seen(&r->ring, cqe);
            continue;
        }
        done[got].tag = io_uring_cqe_get_data64(cqe);
        done[got].res = cqe->res;
        io_uring_cqe_seen(&r->ring, cqe);
        got++;
    }
    r->queued = 0;
    return e < 0 ? e : (int)got;
}

/* Multishot reads. */

int ts_ring_rx_start(struct ts_ring *r, unsigned nbuf, uint32_t stride, uint32_t headroom,
                     uint32_t size)
{
    if (!nbuf || nbuf > 32768 || (nbuf & (nbuf - 1)) || headroom + size > stride)
        return -EINVAL;
    struct io_uring_probe *probe = io_uring_get_probe_ring(&r->ring);
    _Bool ok = probe && io_uring_opcode_supported(probe, IORING_OP_READ_MULTISHOT);
    io_uring_free_probe(probe);
    if (!ok)
        return -EOPNOTSUPP;
    r->stash_cap = nbuf + TS_RING_FILES;    /* a frame per buffer, an ending per file */
    r->stash = calloc(r->stash_cap, sizeof *r->stash);
    r->bufs = malloc((size_t)nbuf * stride);
    if (!r->stash || !r->bufs || posix_memalign((void **)&r->br, 4096, nbuf * sizeof(struct io_uring_buf)))
        return -ENOMEM;
    struct io_uring_buf_reg reg = { .ring_addr = (uint64_t)(uintptr_t)r->br,
                                    .ring_entries = nbuf, .bgid = RX_GROUP };
    int e = io_uring_register_buf_ring(&r->ring, &reg, 0);
    if (e < 0)
        return e == -EINVAL ? -EOPNOTSUPP : e;
    io_uring_buf_ring_init(r->br);
    r->nbuf = nbuf;
    r->stride = stride;
    r->headroom = headroom;
    r->size = size;
    for (unsigned bid = 0; bid < nbuf; bid++)
        ts_ring_rx_recycle(r, bid);
    ts_ring_rx_commit(r);
    return 0;
}

uint8_t *ts_ring_rx_buf(const struct ts_ring *r, unsigned bid)
{
    return r->bufs + (size_t)bid * r->stride + r->headroom;
}

_Bool ts_ring_rx_arm(struct ts_ring *r, int file)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe)
        return 0;
    io_uring_prep_rw(IORING_OP_READ_MULTISHOT, sqe, -1, NULL, 0, 0);
    set_file(r, sqe, file);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = RX_GROUP;
    io_uring_sqe_set_data64(sqe, RX_TAG | (uint64_t)file);
    return 1;
}

_Bool ts_ring_rx_cancel(struct ts_ring *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe)
        return 0;
    /* ANY: every request of the ring, whatever its user_data; only reads
     * are in flight between bursts (writes complete within their flush). */
    io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
    io_uring_sqe_set_data64(sqe, 0);
    return 1;
}

void ts_ring_rx_recycle(struct ts_ring *r, unsigned bid)
{
    io_uring_buf_ring_add(r->br, ts_ring_rx_buf(r, bid), r->size, (unsigned short)bid,
                          io_uring_buf_ring_mask(r->nbuf), (int)r->recycled++);
}

void ts_ring_rx_commit(struct ts_ring *r)
{
    if (r->recycled)
        io_uring_buf_ring_advance(r->br, (int)r->recycled);
    r->recycled = 0;
}

static void rx_from(struct ts_ring *r, struct ts_ring_rx *rx, const struct io_uring_cqe *cqe)
{
    rx->file = (uint16_t)(io_uring_cqe_get_data64(cqe) & 0xffff);
    rx->res = cqe->res;
    rx->more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    rx->bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    if (rx->res <= 0 && (cqe->flags & IORING_CQE_F_BUFFER))
        ts_ring_rx_recycle(r, rx->bid);     /* a buffer with no frame (the kernel keeps
                                               those itself today): straight back */
}

static void stash_push(struct ts_ring *r, const struct io_uring_cqe *cqe)
{
    if (r->stash_len == r->stash_cap)
        return;                     /* cannot happen: one entry per buffer and per file */
    rx_from(r, &r->stash[(r->stash_head + r->stash_len++) % r->stash_cap], cqe);
}

int ts_ring_rx_peek(struct ts_ring *r, struct ts_ring_rx *rx, int max)
{
    int n = 0;
    for (; n < max && r->stash_len; n++, r->stash_len--) {
        rx[n] = r->stash[r->stash_head];
        r->stash_head = (r->stash_head + 1) % r->stash_cap;
    }
    struct io_uring_cqe *cqe;
    while (n < max && io_uring_peek_cqe(&r->ring, &cqe) == 0) {
        if (io_uring_cqe_get_data64(cqe) & RX_TAG)
            rx_from(r, &rx[n++], cqe);
        io_uring_cqe_seen(&r->ring, cqe);   /* a write's: none is outstanding here */
    }
    return n;
}

int ts_ring_rx_wait(struct ts_ring *r, struct ts_ring_rx *rx, int max, int timeout_ms,
                    const sigset_t *mask)
{
    int n = ts_ring_rx_peek(r, rx, max);
    if (n)
        return n;
    /* With a mask, SQEs (re-arms) go in an enter of their own: an enter that
     * submits returns how many it took, not the wait's -EINTR, and liburing
     * then waits again, past the signal the caller waits for. */
    if (mask && io_uring_sq_ready(&r->ring)) {
        int e = io_uring_submit(&r->ring);
        if (e < 0)
            return e;
    }
    struct __kernel_timespec ts = { .tv_sec = timeout_ms / 1000,
                                    .tv_nsec = (long long)(timeout_ms % 1000) * 1000000 };
    struct io_uring_cqe *cqe;
    int e = io_uring_submit_and_wait_timeout(&r->ring, &cqe, 1, timeout_ms < 0 ? NULL : &ts,
                                              (sigset_t *)mask);
    if (e < 0 && e != -ETIME && e != -EINTR)
        return e;
    return ts_ring_rx_peek(r, rx, max);
}

/* io_uring.c -- the worker's io_uring backend: a burst of reads, or a
 * burst's writes (unicast and flood copies), in one io_uring_enter each.
 * io_uring.h says what a caller must keep; fastpath.h, "I/O backends", why. */
#define _GNU_SOURCE
#include "io_uring.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>

struct ts_ring {
    struct io_uring ring;
    unsigned queued;            /* writes in the submission queue, not yet submitted */
    _Bool fixed;                /* files registered: SQEs name them by index */
    int fds[TS_RING_FILES];     /* otherwise, by fd */

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

void ts_ring_free(struct ts_ring *r)
{
    if (!r)
        return;
    io_uring_queue_exit(&r->ring);
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
        done[got].tag = io_uring_cqe_get_data64(cqe);
        done[got].res = cqe->res;
        io_uring_cqe_seen(&r->ring, cqe);
        got++;
    }
    r->queued = 0;
    return e < 0 ? e : (int)got;
}

/* io_uring.h -- the worker's io_uring backend for TAP reads and writes
 * (internal to the fast path; not read by cffi). See fastpath.h, "I/O
 * backends", for what it changes and what it keeps.
 *
 * A ring belongs to one worker. Reads: ts_ring_read queues n reads of one
 * fd and submits them in one io_uring_enter; each gets one frame or -EAGAIN
 * (the fds are O_NONBLOCK: io_uring answers -EAGAIN rather than waiting).
 * Writes: ts_ring_write queues one write; ts_ring_flush submits every queued
 * write in one io_uring_enter and hands back each result with its tag. A
 * queued write reads its buffer when flushed: the caller flushes before it
 * edits or reuses a buffer that has a write queued.
 */
#ifndef TAPSWITCH_IO_URING_H
#define TAPSWITCH_IO_URING_H

#include <stdint.h>

#define TS_RING_ENTRIES 256     /* submission queue: writes queued before a forced flush */
#define TS_RING_FILES 256       /* files a ring knows (a worker's queues: TS_MAX_PORTS) */

struct ts_ring;

struct ts_ring_done {
    uint64_t tag;               /* the caller's, from ts_ring_write */
    int32_t res;                /* bytes written, or -errno */
};

/* NULL with errno set when io_uring is missing or refused (ENOSYS, EPERM
 * from seccomp or kernel.io_uring_disabled, ENOMEM under RLIMIT_MEMLOCK).
 * fds[i] (-1: none) are registered as fixed files, so no read or write
 * looks its fd up; where registering fails, reads and writes use the fds. */
struct ts_ring *ts_ring_new(const int *fds, int nfds);
void ts_ring_free(struct ts_ring *r);

/* Files are named by their index i in ts_ring_new's fds. */

/* Read up to n frames of file `file` into bufs[k] (size bytes each): res[k] is the
 * length read, 0 at end of file, or -errno. Returns 0 or -errno (the submit
 * failed: nothing was read). */
int ts_ring_read(struct ts_ring *r, int file, uint8_t *const *bufs, uint32_t size, int n,
                 int32_t *res);

/* Queue a write of len bytes at buf to file `file`. False if the queue is full: flush first. */
_Bool ts_ring_write(struct ts_ring *r, int file, const void *buf, uint32_t len, uint64_t tag);
unsigned ts_ring_queued(const struct ts_ring *r);

/* Submit the queued writes and reap them: done[0..n) with n returned (n ==
 * the writes queued), or -errno if the submit failed (the queued writes
 * are then reported with that error). done holds TS_RING_ENTRIES. */
int ts_ring_flush(struct ts_ring *r, struct ts_ring_done *done);

#endif

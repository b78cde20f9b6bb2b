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
 *
 * Multishot reads (ts_ring_rx_*, kernel 6.7+): instead of reads submitted per
 * burst, one IORING_OP_READ_MULTISHOT per queue reads every frame as it
 * arrives into a buffer the kernel takes from a ring of provided buffers,
 * inside the worker's own io_uring_enter (DEFER_TASKRUN): no epoll_wait, no
 * read(2), no read that finds the queue empty. A frame is an rx completion
 * (queue, buffer id, length); its buffer is the caller's until handed back
 * by ts_ring_rx_recycle. Writes queued meanwhile go out with the next enter.
 */
#ifndef TAPSWITCH_IO_URING_H
#define TAPSWITCH_IO_URING_H

#include <signal.h>
#include <stddef.h>
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
/* Let go of the registered files now, with no request in flight: the ring's
 * own teardown lets go of them later, asynchronously (a worker's queues would
 * outlive it for a while, and so would their TAP devices). */
void ts_ring_release_files(struct ts_ring *r);
void ts_ring_free(struct ts_ring *r);

/* Files are named by their index i in ts_ring_new's fds. */

/* Register [base, base + len) as the ring's buffer: a read into it or a
 * write out of it is then READ_FIXED or WRITE_FIXED (the kernel copies to
 * and from pages it pinned once, through its own mapping: no user copy).
 * 0, or -errno (the ring goes on with plain reads and writes). */
int ts_ring_buffers(struct ts_ring *r, void *base, size_t len);
_Bool ts_ring_buffers_registered(const struct ts_ring *r);

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

/* One multishot read completion. */
struct ts_ring_rx {
    int32_t res;                /* frame length, or -errno (-ENOBUFS: buffers ran out) */
    uint16_t file;
    uint16_t bid;               /* buffer id, valid when res > 0 */
    _Bool more;                 /* the read stays armed; if not, ts_ring_rx_arm it again */
};

/* Register nbuf (a power of two <= 32768) buffers of `size` bytes, each
 * `headroom` bytes into a stride of `stride`, and probe for multishot reads.
 * 0, or -errno: -EOPNOTSUPP when the kernel lacks them (the ring still does
 * burst reads and writes). */
int ts_ring_rx_start(struct ts_ring *r, unsigned nbuf, uint32_t stride, uint32_t headroom,
                     uint32_t size);
/* The buffer with id bid (its first byte, headroom before it is ours too). */
uint8_t *ts_ring_rx_buf(const struct ts_ring *r, unsigned bid);
/* Queue a multishot read of file (submitted with the next enter). */
_Bool ts_ring_rx_arm(struct ts_ring *r, int file);
/* Queue the cancelling of every armed read (submitted with the next enter):
 * each ends with a completion without `more`, -ECANCELED unless it had ended
 * already; frames read before it are completed first, the rest stay queued. */
_Bool ts_ring_rx_cancel(struct ts_ring *r);
/* Hand buffers back; they are offered to the kernel at ts_ring_rx_commit. */
void ts_ring_rx_recycle(struct ts_ring *r, unsigned bid);
void ts_ring_rx_commit(struct ts_ring *r);
/* Up to max rx completions, waiting up to timeout_ms (-1: forever) for the
 * first when none is at hand; queued SQEs (arms; flush writes first) are
 * submitted on the way. mask, unless NULL, is the signal mask while waiting
 * (as ppoll's). Returns how many (0: timed out, or interrupted by a signal),
 * or -errno. */
int ts_ring_rx_wait(struct ts_ring *r, struct ts_ring_rx *rx, int max, int timeout_ms,
                    const sigset_t *mask);
/* Those at hand, without entering the kernel. */
int ts_ring_rx_peek(struct ts_ring *r, struct ts_ring_rx *rx, int max);

#endif

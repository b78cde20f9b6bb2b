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
 *   ts_shared.settings[2]       port settings     written by: control process
 *                               (VLANs, isolation, limits, storm control,
 *                               ACLs, mirrors), double-buffered: see below
 *   ts_shared.counters[w][p]    per (worker,port) written by: worker w only
 *   ts_shared.acl_hits[w][p][r] per (worker,port,rule)       worker w only
 *   ts_shared.mirror_counters[w][m] per (worker,mirror)      worker w only
 *   ts_shared.readers[w]        settings in use   written by: worker w only
 *                               (and .active by the control process once
 *                               worker w is dead: see "Settings updates")
 *   ts_shared.fdb_stats[w]      per worker        written by: worker w only
 *   ts_shared.fdb_stats[TS_CONTROL]               written by: control process
 *   ts_shared.ports[p].fdb_entries                every writer, atomically;
 *                                                 ts_fdb_recount sets it
 *   ts_shared.ports[p].fdb_static                 control process, atomically
 *   ts_shared.storm[p]          token buckets     every worker, atomically;
 *                                                 control resets one whose rate changed
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
 * TS_FDB_WAYS entries, with a quarter more slots than the configured size.
 * A key may live in either of two buckets its hash picks (keyed by a
 * per-switch random seed, so a remote host cannot aim its source MACs at a
 * bucket it chose in advance): a new key takes the emptier of the two; when
 * both are full, an entry of one moves to its own other bucket to make room
 * (one step of cuckoo hashing). At the configured size (80 % of the slots)
 * this places every key; one bucket per key would have lost 1 % of them
 * at half that. The table never grows: when neither bucket can make room,
 * the entry evicted, fairly, is the one whose port holds the most entries
 * (oldest first among those), as Open vSwitch does to defend against MAC
 * flooding attacks. Static entries are never evicted, aged or moved to
 * another port.
 *
 * Thread-safety. Entries are two 64-bit words written with atomic
 * operations; nothing takes a lock. `key` is claimed with a compare-and-swap
 * from 0, `val` is replaced with a compare-and-swap from the value the writer
 * read, so every change of an entry has exactly one winner, and only the
 * winner adjusts the per-port entry counts. A slot whose key is set and whose
 * val is 0 (or the aging sweep's mark: see "Abandoned slots") belongs to the
 * writer that put it there (the claimer, until it writes val; a remover,
 * which then clears key; an evictor, which then writes the new key and val):
 * everyone else skips it. A val carries a 14-bit tag of
 * its key's hash, so a reader that raced with the slot's reuse takes another
 * key's value for its own only if the two tags collide (1 in 16384).
 * Lost races, stated:
 *   - two workers learning the same new MAC at once may each claim a slot;
 *     each looks for the other's after its claim, at least one finds it and
 *     gives its own back (both may: the MAC is then relearned from its next
 *     frame, which is flooded once). A twin left only when a third writer
 *     changed a slot in that instant;
 *   - a lookup racing with a move of its entry may scan the bucket the entry
 *     moves to just before the copy lands and the other just after the
 *     original is removed: a miss, flooded once;
 *   - a reader may see a key whose value is not yet written (val == 0) and
 *     treat it as a miss: the frame is flooded once;
 *   - aging may remove an entry refreshed a moment before; it is relearned
 *     from the next frame.
 *
 * Abandoned slots. A writer killed (SIGKILL, the OOM killer, the watchdog)
 * while it holds a slot -- key set, val 0: after a claim's key and before its
 * val, after a removal's val and before its key, inside an eviction -- leaves
 * it so for good: nobody else may write it, and the slot is lost to its
 * bucket (a bucket of eight such slots learns nothing more). The aging sweep
 * (ts_fdb_age) gives such a slot back, once it knows its writer is dead.
 * It cannot tell from the slot, which does not name its writer, so it waits
 * for the writers instead: fdb_epoch moves on (at most once a sweep) when
 * every worker has been outside a burst since it last moved -- its
 * readers[w].active seen 0, or its heartbeat moved past epoch_beat -- and no
 * control-process writer is inside a table write (fdb_writing 0). A worker
 * killed inside a burst holds the epoch until the control process has reaped
 * it and cleared its active (Supervisor._release), or the worker that
 * replaces it claims its slot (active 0), whichever comes first: its
 * half-done write is then ended for good.
 * Two epochs after a moment, every write in flight at that moment is done
 * or abandoned. So the sweep marks a slot it finds with key set and val 0
 * (val := a mark: not 0, not valid, with the epoch; a compare-and-swap from
 * 0), marks it again two epochs later if it still holds the first mark, and
 * two epochs after that takes it (val 0, then key 0). A live writer that
 * held the slot when it was marked writes over the mark (a claimer's val, an
 * evictor's key and val) or clears the key under it (a remover: the mark left
 * in an empty slot is inert, and tidied by the next sweep); only the claimer
 * that takes such an empty slot next may still hold it, marked, at the second
 * mark, and it too is done two epochs later. Nobody but the sweep writes a
 * mark, so a slot that still holds the second mark then has a dead writer.
 * A stopped worker (SIGSTOP) holds the epoch, and so every repair, until it
 * runs again or the watchdog replaces it.
 * What the sweep cannot mend: the per-port entry counts. A writer killed
 * between a slot's write and its count's leaves its port one off: one short
 * (a count below 0 reads as 0) or one over, the last lowering mac_limit by
 * one and weighing its port a little more in fair eviction; a slot taken
 * back does not say whose count it held (its val is 0). So once a killed
 * worker is reaped the control process counts the table again
 * (ts_fdb_recount): a scan of live workers' writes would be no snapshot (a
 * write and its count's are two steps, seen between them by the scan), so
 * the recount first stops learning -- fdb_recounting, which a worker reads
 * as it enters a wake-up's settings (after its active: either it sees the
 * flag, or the recount sees it inside a burst and waits for it to leave)
 * -- and scans once no worker is inside a burst that learns. The scan reads
 * each slot once (20 MB for a table of a million; milliseconds), so
 * learning stops for that long: a new source met meanwhile is flooded and
 * learned from a later frame, a known one is not refreshed. A stopped
 * worker inside a burst holds the recount, which gives up after its
 * timeout, stops nothing meanwhile, and is tried again. A killed worker's
 * displacement may leave an entry's copy beside it (a twin): it is never
 * refreshed (lookups find the first), counted as any entry, and ages out.
 *
 * Time is CLOCK_MONOTONIC in whole seconds (ts_now()), the same in every
 * process. Workers refresh `seen` at most once a second per entry, so a
 * steady flow does not write the shared cache line per packet.
 *
 * The worker
 * ----------
 * ts_worker_poll() is one turn of the loop: wait on epoll (level-triggered),
 * then for each ready queue read a burst of frames until
 * the queue is empty or the burst is full, and for each frame:
 *   parse (virtio-net header + Ethernet) -> classify its VLAN -> filter
 *   (ACL) -> learn the source (MAC limit) -> look up (destination, VLAN) ->
 *   send to its port, or flood to every other port of the VLAN that is up
 *   (storm control) -> count.
 * A frame to 01:80:C2:00:00:01..0F (PAUSE, LACP, 802.1X, LLDP: the IEEE
 * 802.1 group a bridge must not relay) is learned from, then dropped
 * (rx_dropped), as the Linux bridge does; :00 (STP BPDUs: this switch runs
 * no STP) and :10 and up are flooded as any multicast. The check costs
 * multicast frames only.
 * A frame whose destination is on the port it came from is not sent back,
 * and a flood that finds no other port of its VLAN up reaches none: both
 * count in rx_dropped (such a flood is not counted as flooded).
 * Frames carry the 10-byte virtio-net header (host byte order, the TAP
 * default); GSO super-frames (up to 64 KiB) are written out byte for byte.
 * Writes never block: the fds are O_NONBLOCK, a write the kernel would make
 * wait (the TAP's send buffer full: rare, its default is the largest) drops
 * the frame and counts it (tx_dropped). A TAP write queues nothing: it runs
 * the port host's stack, which counts what that stack then loses. A frame that fills the whole TS_FRAME_MAX
 * buffer may have been cut, and counts as rx_errors. A failed read of a
 * queue counts one rx_errors. A queue whose TAP was deleted (EBADFD) or
 * that ended is no longer polled by this worker: the control process marks
 * the port gone (down) and gives workers it starts later (a restart, a
 * reload) no queue of it; a reload makes the port again, with new queues.
 * A worker handed the queue before its TAP went meets that failure again (a
 * reload's new worker, started while the old one still reads):
 * counters.rx_ended, set by the worker that counted it, says so, and it
 * counts no more. So that failure counts once per queue, whichever of its
 * workers meets it; a new port in the slot starts with counters of 0,
 * rx_ended too. A read failing otherwise (EIO,
 * ENOMEM, EFAULT...) may pass, and nothing restarts the worker for it: the
 * queue rests (1 ms, doubling at each failure in a row up to 1 s) and is
 * listened to again; a poll's wait ends early for it (rx_failed in
 * fastpath.c).
 * No allocation, no logging, no Python per packet.
 *
 * The watchdog. A worker stopped (SIGSTOP, a debugger) or stuck inside a
 * turn forwards nothing and does not exit, so the control process cannot
 * tell it from its pidfd. So every turn -- every ts_worker_poll, whether it
 * found frames or its wait timed out -- adds one to readers[w].heartbeat,
 * and ts_worker_run never waits longer than TS_IDLE_WAIT_MS: an idle worker
 * still turns once a second (a wake-up a second costs nothing measurable;
 * a busy one turns every burst). The control process reads the heartbeats
 * once a tick and kills a worker whose heartbeat has not moved for
 * switch.watchdog_ms (5 s by default, 2 s at least, or never: 0;
 * supervisor.py, hung), which it then restarts.
 * The store is a release (a plain store), to a line the worker writes every
 * wake-up anyway (active): a reader sees it move within a turn or so, which is
 * all the watchdog asks; the aging sweep also learns from it that the burst
 * before it is over (see "Abandoned slots").
 *
 * Busy polling (switch.busy_poll_us, busy_poll_us below): after a turn that
 * found frames, the worker looks again without sleeping -- epoll_wait, or
 * for multishot reads io_uring_enter, with no timeout -- for up to
 * busy_poll_us before it waits. A frame that comes meanwhile is read at
 * once: no wake-up, which on a VM is an interrupt to a halted vCPU, tens of
 * microseconds before the worker runs, on every frame of a TCP flow's
 * round trip. A look that ends empty is CPU spent for nothing: frames
 * sent evenly every 100 us cost a worker 59 % of a CPU with a look of 50
 * us after each, against 10 % for one wake-up each (bench/HISTORY.md, "Busy
 * polling"). So is one that finds a frame only late in the look: it spared
 * a wake-up but spun longer than the wake-up costs (frames every 100 us
 * kept 50 us looks going, likely reached near their end after a late
 * wake-up: 44 % of a CPU, against 27 % counting such looks as unpaid;
 * bench/HISTORY.md, "Looks that find a frame late"). So a look pays only if
 * it finds a frame within 1/TS_LOOK_QUICK of its length, and the worker
 * looks only while looking pays: after TS_LOOK_TRUST looks in a row that
 * did not pay it stops, and then looks before every TS_LOOK_PROBE-th sleep
 * only, until a look pays again. A frame found late is still read at once.
 * What it costs: a worker whose frames come at least every busy_poll_us /
 * TS_LOOK_QUICK never sleeps (one CPU busy); one whose last turn found
 * nothing sleeps at once, so an idle switch costs nothing. 0: never look
 * again. Read every turn: a reload changes it at once.
 *
 * I/O backends
 * ------------
 * How the worker moves frames in and out of its queues is one seam in
 * fastpath.c -- the receiving (rx_burst(), or the completions of multishot
 * reads: handle_rx()), xmit() (send a frame to a port: unicast, each flood
 * copy, each mirror copy) and flush() (send what xmit queued) -- with these
 * backends behind it, chosen by ts_worker_new's io (TS_IO_*; the worker
 * passes $TAPSWITCH_IO: auto|readwrite|uring|uring-burst) and reported in
 * readers[w].io:
 *   - read/write: epoll says which queue is ready (level-triggered), then
 *     one read(2) per frame until EAGAIN, one write(2) per copy, at once;
 *   - io_uring with multishot reads (TS_IO_URING on kernel 6.7+;
 *     io_uring.c, liburing): one IORING_OP_READ_MULTISHOT per queue reads
 *     every frame as it comes into one of RX_BUFFERS provided buffers,
 *     inside the worker's own io_uring_enter (DEFER_TASKRUN), so a frame
 *     costs no read(2), no epoll_wait and no read that finds the queue
 *     empty. A run of completions of one queue is a burst; every write of
 *     the burst -- unicast, the N-1 flood copies, mirror copies -- is queued
 *     and submitted in one io_uring_enter (which also runs the reads that
 *     came meanwhile), then counted from its completion, then the burst's
 *     buffers go back to the kernel. A read that ran out of buffers ends
 *     and is armed again; one that fails (the queue's device is gone)
 *     counts an rx error and stays off, as read/write drops the queue from
 *     epoll. No epoll at all;
 *   - io_uring with burst reads (TS_IO_URING_BURST, and TS_IO_URING before
 *     6.7): epoll as read/write, then rx_want[q] read SQEs of the queue in
 *     one io_uring_enter (rx_want doubles what the last turn got,
 *     2..TS_BURST, so a TCP queue with a frame per wake-up does not pay for
 *     32 reads); writes as above. Its TS_BURST buffers are registered
 *     with the ring (io_uring_register_buffers, once at start: 2 MiB a
 *     worker, pinned), so its reads and writes are READ_FIXED and
 *     WRITE_FIXED: the kernel copies a frame to and from pages it pinned
 *     once, through the kernel's own mapping, not through a user copy
 *     (6 % less worker CPU a 64 B frame in the bench's A/B, bench/HISTORY.md,
 *     "Registered buffers"). Where the registry is refused (RLIMIT_MEMLOCK,
 *     without CAP_IPC_LOCK) they stay plain reads and writes;
 *     ts_worker_buffers_registered() says which.
 * The queues are registered files (no fd lookup per SQE). RWF_NOWAIT on
 * every write (and burst read) keeps "writes never block" exact: a write
 * that would wait completes with -EAGAIN, counted as tx_dropped, never retried.
 * What the write queue costs: a queued write reads its buffer at flush, so a
 * frame is not edited while it has one queued (tx() flushes before a tag
 * push, pop or rewrite), and a port with mirror_tx is written at once (its
 * mirrors copy what the port took, which needs the write's outcome). The
 * burst's buffers are reused only after the flush. Counters of a burst
 * appear after its flush.
 * TS_IO_URING and TS_IO_URING_BURST fail when the kernel refuses io_uring
 * (ENOSYS; EPERM from seccomp, as Docker's default profile, or
 * kernel.io_uring_disabled): the worker (worker.py) then starts on
 * read/write, and worker.backend says so.
 * TS_IO_AUTO (the default) is io_uring with burst reads, or read/write
 * where io_uring is refused: the backend that cost the least CPU per 64 B
 * frame in the bench's A/B on both machines of kernel v1272
 * (bench/HISTORY.md, "The I/O backend on kernel v1272"): on an AMD EPYC
 * 3.00 us a frame against 3.39 for read/write and 3.03 for multishot
 * reads, with TCP 1.03-1.15x read/write's; on an Intel Xeon 1.81 against
 * 2.00.
 * The order is the machine's more than the backend's: read/write won by
 * 3 % on the Xeon under kernel v1252 and was the default from 2026-12-05
 * ("The default I/O backend on this machine"), multishot reads on the EPYC
 * under kernel v782 and were the default from 2026-11-25 ("Multishot
 * reads"). Burst reads save the syscalls of a busy queue -- one
 * io_uring_enter for a burst of reads and one for its writes -- and
 * nothing of the rest: TUN, skb and the receiver's stack run in our
 * writes as in write(2). fastpath.c's AUTO_IO picks another for auto.
 *
 * Port settings (issue 6)
 * -----------------------
 * Every feature below is off in a port whose ts_port_conf is the default
 * (pvid 1, flags 0, no mirrors): such a port takes the short path -- one
 * compare for its VLAN on ingress and on egress, and a test of `flags` or
 * a mirror mask where a feature would act. Nothing else is read for it.
 *
 * VLANs. A port's VLANs are its pvid (the access VLAN, or a trunk's native
 * VLAN: untagged on the wire; 0 = none) and, with TS_PORT_TRUNK, the VLANs
 * set in `vlans` (802.1Q-tagged on the wire, TPID 0x8100 only: an 802.1ad
 * S-tag, 0x88a8, is an ethertype like any other to this C-VLAN switch). On
 * ingress a frame tagged with a VID that is one of the port's VLANs is in
 * that VLAN; an untagged or priority-tagged (VID 0) frame is in the pvid;
 * anything else is dropped (vlan_dropped). On egress a frame leaves untagged
 * in the port's pvid and tagged otherwise. The tag is pushed or popped in
 * place: the worker reads every frame TS_HEADROOM bytes into its buffer, so
 * a push moves the virtio-net header and the two MACs 4 bytes back, a pop 4
 * bytes forward (24 bytes either way, no copy of the payload); csum_start
 * moves by the same 4 bytes when NEEDS_CSUM is set and hdr_len when it is
 * not 0 (a pop that takes it below 14 makes it 0: a hint a TAP write would
 * refuse), so GSO super-frames stay valid. A flood to ports of both kinds
 * pushes or pops between writes. The MAC table key is (MAC, VLAN), learning
 * and flooding are per VLAN.
 *
 * Isolation. Two ports with TS_PORT_ISOLATED never exchange frames (not
 * flooded, unicast dropped); each still talks to every port without it.
 *
 * Mirrors (SPAN). Mirror m copies to port mirrors[m].to every frame read
 * from a port whose mirror_rx has bit m while it is up (as read, before any
 * VLAN edit or filter: what arrived on the wire, also what is then dropped,
 * and a frame from a multicast or zero source MAC, an rx_errors; not a
 * frame that cannot be parsed: a runt, one cut at the buffer's end, a bad
 * virtio-net header, a broken tag), and every frame written to a port whose
 * mirror_tx has bit m (as written). The monitor port (TS_PORT_MONITOR, pvid
 * 0, no VLANs) is in no VLAN, so nothing else is sent to it; what it sends
 * is dropped (rx_dropped). Copies are counted per (worker, mirror).
 *
 * MAC limit. With TS_PORT_MAC_LIMIT, a frame from a source MAC that is not
 * already in the table on this port (in this VLAN) is dropped
 * (mac_limit_dropped) when the port holds mac_limit learned entries
 * (fdb_entries - fdb_static) or more. Lost race, stated: workers learning
 * new MACs of one port at the same time may each pass the check, so the port
 * may exceed its limit by up to one entry per other worker.
 *
 * ACLs. With TS_PORT_ACL, the port's first acl_rules rules of acl[port]
 * are tried in order on ingress, after VLAN classification; the first whose
 * every field in `match` matches decides (allow or drop, acl_dropped); none
 * matching allows. Each rule counts its matches in acl_hits. L3/L4 headers
 * are parsed only for a rule that needs them (TS_ACL_L3 bits), once per
 * frame: IPv4 (ports only in first fragments) and IPv6 (through every
 * hop-by-hop, routing, fragment, destination-options and AH header, however
 * many: the receiver's stack walks them all; ports only in first fragments,
 * a later one's protocol is its fragment header's); ip_proto matches the
 * protocol behind them, or one of those headers the packet has (44: every
 * fragment). An IPv6 packet ends at its payload length (0: the frame's end).
 * An IPv6 first fragment of more (offset 0, M=1) that ends before its header
 * chain or TCP/UDP ports do (RFC 7112) matches every drop rule on ip_proto or
 * ports whose other fields match, and no allow rule on them: the next
 * fragment, which no rule reads headers in, would complete it. eth_type and the IP
 * header are the payload's, behind the switch's 802.1Q tag if the frame has
 * one and up to two more 802.1Q or 802.1ad tags (a QinQ frame, tagged in its
 * VLAN or not, carries its packet past no IP rule);
 * eth_type 0x88a8 also matches the 802.1ad tag itself, the first type after
 * the switch's 802.1Q tag. A frame cut inside its tags or IP header matches
 * no rule on what is missing. vlan is the frame's VLAN in the switch: its
 * outer 802.1Q tag's VID, or the pvid (an 802.1ad tag is no VLAN here); an
 * inner tag's VID is never matched.
 *
 * Storm control. With TS_PORT_STORM, broadcast, multicast and unknown
 * unicast frames received on the port (the three kinds it would flood) each
 * pass a rate limit when their interval is not 0: GCRA (a token bucket in
 * one word, the theoretical arrival time, storm[port].tat[kind], advanced by
 * compare-and-swap). The bucket is shared by the port's workers, so the
 * rate holds however the kernel spreads the port's flows over its queues;
 * excess frames are dropped (storm_dropped). A burst of storm_burst ns
 * ((frames - 1) * interval) passes at once.
 *
 * Every drop above is a well-formed frame not forwarded, so each also
 * counts in rx_dropped: vlan_dropped, acl_dropped, mac_limit_dropped and
 * storm_dropped say why.
 *
 * Settings updates (RCU-like). settings[] holds two copies; settings_gen & 1
 * is the current one. The control process writes the other copy
 * (ts_settings_next), then ts_settings_publish flips settings_gen and waits
 * until no worker still reads the old copy, so the next update may write it.
 * A worker enters a copy once per wake-up, before its first frame: it stores
 * which copy it reads in readers[w].active, then reads settings_gen again
 * (both sequentially consistent: either it sees the flip, or the publisher
 * sees it reading the old copy and waits), and leaves (active = 0) after its
 * last frame. A worker therefore never sees a half-written copy, and all the
 * frames of one wake-up see one copy. Races, stated:
 *   - frames handled during a publish use the old settings, at most one
 *     burst per queue after the flip;
 *   - a worker that dies between enter and leave keeps its marker until the
 *     control process has reaped it, and clears it (no process runs for its
 *     queue then; the next worker's first poll would take it over anyway);
 *     until then ts_settings_publish gives up waiting after its timeout and
 *     says how many workers it waited for in vain (a live worker leaves
 *     within one burst);
 *   - ts_port.state and mtu are single words outside the copies: a port
 *     going down takes effect at once.
 */
#ifndef TAPSWITCH_FASTPATH_H
#define TAPSWITCH_FASTPATH_H

#include <stdint.h>
#include <stddef.h>

/* cffi: everything below is read by cffi's cdef (no #if, no macros with
 * expressions). */

/* TS_VERSION numbers the layout of the shared memory: struct ts_shared and the MAC table
 * after it. Bump it with any change to either: a field, a struct inside it, a constant that
 * sizes it, how ts_shared_size counts, what a field's bits mean (ts_fdb_entry's). After an
 * in-place upgrade a worker the running switch starts again is of the new version, on the
 * old control process's memory: it checks the version, and says to restart the switch
 * rather than read the old layout as its own. tests/test_fastpath.py records a fingerprint
 * of the layout beside the TS_VERSION it belongs to, and fails when the layout changes and
 * the version does not (it cannot see a change of what bits mean). magic and version stay
 * first, at offsets 0 and 8, in every version: a worker of any version reads them. */
#define TS_MAGIC 0x7473776974636801
#define TS_VERSION 6
#define TS_MAX_PORTS 256       /* port index 0..255 */
#define TS_MAX_WORKERS 16      /* switch.queues upper bound */
#define TS_CONTROL 16          /* fdb_stats slot of the control process */
#define TS_IDLE_WAIT_MS 1000   /* ts_worker_run waits no longer for frames: the heartbeat moves
                                  at least this often (see "The watchdog") */
#define TS_FDB_WAYS 8          /* entries per bucket */
#define TS_BURST 32            /* frames read from one queue per turn */
#define TS_VNET_HDR_LEN 10     /* struct virtio_net_hdr (fastpath.c: why not 12) */
#define TS_FRAME_MAX 65600     /* vnet header + 64 KiB GSO frame + tags */
#define TS_HEADROOM 4          /* bytes before each frame in the worker's buffer: one tag push */
#define TS_VLAN_MAX 4094       /* VLANs 1..4094; 0 = none, 4095 reserved */
#define TS_MAX_MIRRORS 16      /* mirrors (bits of mirror_rx, mirror_tx) */
#define TS_LOOK_TRUST 8        /* busy polling: looks in a row that may not pay before it stops */
#define TS_LOOK_PROBE 16       /* busy polling, stopped: it still looks before every 16th sleep */
#define TS_LOOK_QUICK 4        /* busy polling: a look pays if it finds a frame within 1/4 of its length */
#define TS_MAX_ACL_RULES 64    /* ACL rules per port */

/* ts_port.state */
#define TS_PORT_UNUSED 0       /* no port in this slot */
#define TS_PORT_DOWN 1         /* configured, link down: not flooded to, frames to it dropped */
#define TS_PORT_UP 2

/* Port table entry. Written by the control process, read by workers. */
struct ts_port {
    uint32_t state;            /* TS_PORT_* */
    uint32_t mtu;              /* L3 MTU: frames over mtu+14 (+4 for each 802.1Q or 802.1ad
                                  tag, two at most), or GSO frames whose segments' IP length
                                  (headers + gso_size) is over mtu, are tx_errors (and see frame_max) */
    uint32_t fdb_entries;      /* MAC table entries on this port (atomic, all writers); read as
                                  int32_t, below 0 as 0 (a removal may come before its claimer's add) */
    uint32_t fdb_static;       /* of which static (atomic, control process) */
    uint32_t frame_max;        /* 0 = none; else the longest frame the port's link carries, tags
                                  and all (a VXLAN port: what its tunnel carries whole): a frame,
                                  or a GSO frame's segment, that is longer is a tx_error too, however
                                  many tags it has */
    uint32_t reserved[11];     /* keeps 64 bytes */
};

/* ts_port_conf.flags: the features a port uses. 0 = none (the short path). */
#define TS_PORT_TRUNK 1        /* tagged VLANs in `vlans` */
#define TS_PORT_ISOLATED 2     /* exchanges no frame with another isolated port */
#define TS_PORT_MONITOR 4      /* a mirror's destination: receives copies only */
#define TS_PORT_MAC_LIMIT 8    /* at most mac_limit learned MACs */
#define TS_PORT_ACL 16         /* acl_rules rules of acl[port] on ingress */
#define TS_PORT_STORM 32       /* storm control: storm_interval */

/* Storm control kinds: ts_port_conf.storm_*[kind], ts_storm.tat[kind]. */
#define TS_STORM_BROADCAST 0
#define TS_STORM_MULTICAST 1
#define TS_STORM_UNKNOWN_UNICAST 2

/* A port's settings, one per port in each settings copy. Default (what
 * ts_settings_default writes): pvid 1, everything else 0. */
struct ts_port_conf {
    uint16_t pvid;             /* untagged VLAN (access, or a trunk's native); 0 = none */
    uint16_t flags;            /* TS_PORT_TRUNK | ... */
    uint16_t mirror_rx;        /* bit m: mirror m copies what this port receives */
    uint16_t mirror_tx;        /* bit m: mirror m copies what is sent to this port */
    uint32_t mac_limit;        /* TS_PORT_MAC_LIMIT: learned entries allowed */
    uint16_t acl_rules;        /* TS_PORT_ACL: rules in acl[port], <= TS_MAX_ACL_RULES */
    uint16_t reserved0;
    uint64_t storm_interval[3];  /* TS_PORT_STORM: ns between frames of a kind (1e9 / pps);
                                    0 = that kind is not limited */
    uint64_t storm_burst[3];     /* ns of tolerance: (burst frames - 1) * interval */
    uint64_t vlans[64];        /* TS_PORT_TRUNK: bit v (word v / 64, bit v % 64) = tagged VLAN v */
};

/* A mirror: where its copies go. Its sources are the ports whose mirror_rx
 * or mirror_tx has its bit. */
struct ts_mirror {
    uint32_t to;               /* the monitor port */
    uint32_t id;               /* the control process's name for it (a slot whose id
                                  changes starts its counters afresh) */
};

/* ts_acl_rule.match: the fields a rule compares; all of them must match. */
#define TS_ACL_ETH_SRC 0x1     /* (source MAC & eth_src_mask) == eth_src */
#define TS_ACL_ETH_DST 0x2
#define TS_ACL_ETH_TYPE 0x4    /* the payload's ethertype, behind the switch's 802.1Q tag and up
                                  to two more 802.1Q/802.1ad tags
                                  (0x88a8 also matches the 802.1ad tag: see "ACLs") */
#define TS_ACL_VLAN 0x8        /* the frame's VLAN in the switch (outer 802.1Q tag, or pvid) */
#define TS_ACL_IPV4 0x10       /* an IPv4 packet */
#define TS_ACL_IPV6 0x20       /* an IPv6 packet; with neither, IP_PROTO/ports match both */
#define TS_ACL_IP_SRC 0x40     /* (address & ip_src_mask) == ip_src; IPv4 in bytes 0..3 */
#define TS_ACL_IP_DST 0x80
#define TS_ACL_IP_PROTO 0x100  /* IPv4 protocol, IPv6 upper-layer next header or an
                                  extension header the packet has */
#define TS_ACL_SRC_PORT 0x200  /* TCP or UDP source port */
#define TS_ACL_DST_PORT 0x400
#define TS_ACL_L3 0x7f0        /* the bits that need the IP header parsed */

/* ts_acl_rule.action */
#define TS_ACL_ALLOW 0
#define TS_ACL_DROP 1

/* One ACL rule. Addresses and ports in network byte order as on the wire,
 * except src_port, dst_port, eth_type and vlan: host order. */
struct ts_acl_rule {
    uint32_t match;            /* TS_ACL_* */
    uint16_t eth_type;
    uint16_t vlan;
    uint8_t action;            /* TS_ACL_ALLOW | TS_ACL_DROP */
    uint8_t ip_proto;
    uint16_t src_port;
    uint16_t dst_port;
    uint16_t reserved0;
    uint8_t eth_src[6];
    uint8_t eth_src_mask[6];
    uint8_t eth_dst[6];
    uint8_t eth_dst_mask[6];
    uint8_t ip_src[16];
    uint8_t ip_src_mask[16];
    uint8_t ip_dst[16];
    uint8_t ip_dst_mask[16];
    uint8_t reserved1[24];     /* keeps 128 bytes */
};

/* One copy of the settings (double-buffered: see "Settings updates"). */
struct ts_settings {
    struct ts_port_conf ports[256];
    struct ts_mirror mirrors[16];
    struct ts_acl_rule acl[256][64];
};

/* Per (worker, port) counters. Single writer: worker w. */
struct ts_counters {
    uint64_t rx_packets;       /* frames read from the port, accepted */
    uint64_t rx_bytes;         /* their Ethernet bytes (no virtio-net header) */
    uint64_t rx_errors;        /* malformed: runt, bad vnet header (one a TAP write refuses,
                                  or with a flag virtio-net does not define),
                                  bad source MAC, bad tag (an 802.1Q tag, or one more
                                  behind it, cut or with a checksum starting inside it, or
                                  where a TAP write refuses one once the tag is popped, 4
                                  bytes later for each 802.1Q tag behind the first) */
    uint64_t rx_dropped;       /* well formed but not forwarded: port down, dst down or
                                  isolated, dst on its own port, a flood to no port, the
                                  802.1 group 01:80:C2:00:00:01..0F, read from a monitor
                                  port, and every *_dropped below */
    uint64_t tx_packets;       /* frames written to the port (mirror copies included) */
    uint64_t tx_bytes;
    uint64_t tx_errors;        /* over MTU, or the write failed */
    uint64_t tx_dropped;       /* the write was refused rather than wait (EAGAIN/ENOBUFS) */
    uint64_t flooded;          /* frames received here that were flooded (to one port or more) */
    uint64_t vlan_dropped;     /* received in a VLAN the port is not in (or untagged, no pvid) */
    uint64_t acl_dropped;      /* dropped by an ACL rule */
    uint64_t mac_limit_dropped;  /* from a new source MAC beyond the port's mac_limit */
    uint64_t storm_dropped;    /* broadcast, multicast or unknown unicast over its rate */
    uint64_t rx_ended;         /* 1: a read of this queue failed (its TAP deleted), counted in
                                  rx_errors: a later worker of the queue counts it no more */
    uint64_t reserved[2];      /* keeps 128 bytes, two cache lines */
};

/* Per (worker, mirror) counters. Single writer: worker w. */
struct ts_mirror_counters {
    uint64_t packets;          /* copies written to the monitor port */
    uint64_t bytes;            /* their Ethernet bytes */
    uint64_t dropped;          /* copies not written: monitor down, full, over its MTU */
    uint64_t reserved[5];
};

/* ts_worker_new's io: the worker's I/O backend (see "I/O backends"). */
#define TS_IO_AUTO 0           /* the default: io_uring with burst reads, read/write where io_uring is
                                  refused (see "I/O backends") */
#define TS_IO_READWRITE 1      /* read(2) and write(2), one frame each */
#define TS_IO_URING 2          /* io_uring; ts_worker_new fails if the kernel refuses it */
#define TS_IO_URING_BURST 3    /* io_uring with a burst of reads per turn, never multishot
                                  (auto's choice; TS_IO_URING's before 6.7) */

/* Which settings copy worker w reads, and that it is alive. Single writer: worker w (but
 * epoch_beat: the control process). */
struct ts_reader {
    uint32_t active;           /* 1 + copy index while handling frames; 0 otherwise */
    uint32_t io;               /* TS_IO_READWRITE, TS_IO_URING or TS_IO_URING_BURST: the worker's backend, set
                                  by ts_worker_new (0 = no worker started in this slot) */
    uint64_t heartbeat;        /* turns of the worker's loop: one more every ts_worker_poll, busy or
                                  idle; carried on by a restarted worker (see "The watchdog") */
    uint64_t epoch_beat;       /* heartbeat when fdb_epoch last moved (control process; see
                                  "Abandoned slots") */
    uint32_t reserved[10];
};

/* Storm control state of a port: GCRA theoretical arrival time (ns,
 * CLOCK_MONOTONIC) per kind. Every worker, compare-and-swap. */
struct ts_storm {
    uint64_t tat[3];
    uint64_t reserved[5];
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
 *      (ts_now()). VLAN is 0..4095; workers learn in the frame's VLAN, 1..4094.
 *      Not 0 and bit 17 clear: the aging sweep's mark of a half-written slot (bit 0
 *      set, bit 1 its second mark, bits 32..63 fdb_epoch; see "Abandoned slots"). */
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
    uint32_t settings_gen;     /* settings[settings_gen & 1] is current (control process) */
    uint32_t fdb_size;         /* entries asked for (mac_table.size); capacity is 5/4 of it */
    uint32_t busy_poll_us;     /* switch.busy_poll_us (control process; see "Busy polling") */
    uint32_t fdb_epoch;        /* the aging sweep's (control process; see "Abandoned slots") */
    uint32_t fdb_writing;      /* control-process threads inside a MAC table write (atomic) */
    uint32_t fdb_recounting;   /* 1 while ts_fdb_recount runs: workers learn nothing (control
                                  process; see "Abandoned slots") */
    uint64_t reserved[1];      /* header is 64 bytes, so counters start 64-byte aligned */
    struct ts_port ports[256];
    struct ts_counters counters[16][256];
    struct ts_fdb_stats fdb_stats[17];
    struct ts_reader readers[16];
    struct ts_storm storm[256];
    struct ts_mirror_counters mirror_counters[16][16];
    uint64_t acl_hits[16][256][64];
    struct ts_settings settings[2];
    struct ts_fdb_entry fdb[];  /* fdb_capacity entries */
};

/* Shared memory. */
size_t ts_shared_size(uint32_t fdb_size);           /* bytes for a table of >= fdb_size entries */
int ts_shared_init(struct ts_shared *s, uint32_t fdb_size, uint32_t n_workers, uint64_t hash_seed);
                                                    /* on zeroed memory; 0 or -EINVAL */
uint32_t ts_now(void);                              /* CLOCK_MONOTONIC seconds */
void ts_set_busy_poll(struct ts_shared *s, uint32_t us);  /* switch.busy_poll_us, for every worker */

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
 * control process can age incrementally; it also gives back the slots it finds
 * abandoned (not counted; see "Abandoned slots"). One thread at a time calls it.
 * port < 0 flushes every port. */
uint32_t ts_fdb_flush(struct ts_shared *s, int port);
uint32_t ts_fdb_age(struct ts_shared *s, uint32_t now, uint32_t aging,
                    uint32_t first_bucket, uint32_t n_buckets);

/* Count each port's entries (fdb_entries) from the table again, a killed worker's count
 * put right (see "Abandoned slots"): stops learning, waits up to timeout_ms for every
 * worker to leave a burst that may learn, scans. 0, or -ETIMEDOUT (nothing counted;
 * learning goes on). Control process, one thread at a time, with every other
 * control-process writer of the table kept out (fdb_writing is waited for, not held off). */
int ts_fdb_recount(struct ts_shared *s, uint32_t timeout_ms);

/* Copy up to max live entries into out; returns the number copied. */
uint32_t ts_fdb_dump(const struct ts_shared *s, struct ts_fdb_record *out, uint32_t max);

/* Settings (control process, one thread at a time). Write the copy that
 * ts_settings_next returns (ts_settings_default first, for a fresh start),
 * then ts_settings_publish: it makes that copy current and waits, up to
 * timeout_ms, until no worker reads the other one. Returns the number of
 * workers still reading it then (0: the other copy is free). */
struct ts_settings *ts_settings_next(struct ts_shared *s);
const struct ts_settings *ts_settings_current(const struct ts_shared *s);
void ts_settings_default(struct ts_settings *t);    /* port confs and mirrors; ACL rules untouched */
int ts_settings_publish(struct ts_shared *s, uint32_t timeout_ms);

/* The worker. fds[p] is this worker's queue of port p, or -1; nfds <= TS_MAX_PORTS.
 * The fds must be O_NONBLOCK and deliver one frame (virtio-net header first)
 * per read, as a TAP queue or a SOCK_SEQPACKET socket does. ts_worker_new
 * copies fds (the caller keeps them open) and returns NULL with errno set
 * (EINVAL: bad arguments, or an fd that is not O_NONBLOCK; with TS_IO_URING,
 * what io_uring_queue_init said: ENOSYS, EPERM, ENOMEM). ts_worker_poll
 * waits again when a signal interrupts the wait, until timeout_ms is spent
 * (io_uring's teardown of a ring interrupts a process's waits for a while),
 * and waits less when a queue resting after a failed read is due sooner
 * (see "The worker"). ts_worker_new writes nothing shared and reads no queue: it may run while the
 * worker it replaces still runs. The first poll takes readers[worker] over. */
struct ts_worker;
struct ts_worker *ts_worker_new(struct ts_shared *s, int worker, const int *fds, int nfds,
                                int io);                  /* io: TS_IO_* */
int ts_worker_io(const struct ts_worker *w);              /* the backend in use: TS_IO_READWRITE | TS_IO_URING | TS_IO_URING_BURST */
int ts_worker_buffers_registered(const struct ts_worker *w);   /* 1: burst reads' buffers registered
                                                                   with the ring (see "I/O backends") */
int ts_worker_poll(struct ts_worker *w, int timeout_ms);  /* frames handled, or -errno */
/* Stop reading and forward what was read: multishot reads are cancelled, the
 * frames they took before the cancel are forwarded, frames not taken stay in
 * their queues for the next worker. Waits up to timeout_ms for the reads to
 * end. Frames forwarded, or -errno (-ETIMEDOUT). No poll after it. Nothing to
 * do for the other backends: they read only inside a poll. */
int ts_worker_drain(struct ts_worker *w, int timeout_ms);
/* Polls until a fatal error (-errno) or SIGTERM: then drains (above) and
 * returns 0. Each poll waits at most TS_IDLE_WAIT_MS (the heartbeat). SIGTERM
 * is blocked but while waiting, so it ends a wait, never a burst; the
 * handler and the mask are the caller's again on return. */
int ts_worker_run(struct ts_worker *w);
/* A drained worker, or one without multishot reads, lets go of its queues at
 * once; otherwise io_uring's deferred teardown does, a moment later. */
void ts_worker_free(struct ts_worker *w);

/* Ask the kernel to kill this process when its parent dies. 0 or -errno. */
int ts_die_with_parent(void);

#endif

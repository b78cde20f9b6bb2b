/* bare: the least a userspace switch on TAP ports must do, for the bench's
 * "bare" system -- the reference the TCP target names ("≥ 0.95× the
 * bare forwarder").
 *
 *   bare NAME_A NAME_B [BUSY_POLL_US]
 *
 * Makes two TAP devices with the virtio-net header and the same offloads as
 * tapswitch's ports (checksum, TSO 4/6/ECN: GSO super-frames pass through),
 * prints "ready", then forwards every frame read on one to the other, as
 * read(2)/write(2) in bursts of up to BURST frames per device and poll(2)
 * when both are empty -- after a round that moved frames, poll(2) with no
 * timeout for up to BUSY_POLL_US microseconds first (default 0), while
 * such looks pay, as tapswitch's workers do with switch.busy_poll_us
 * (TS_LOOK_TRUST, TS_LOOK_PROBE, TS_LOOK_QUICK in fastpath.h). No learning, no table, no
 * counters: whatever
 * tapswitch measures above this is the price of being a switch. The bench
 * moves the devices into its hosts; they go away when this process exits
 * (SIGTERM or SIGINT).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define BURST 32
#define LOOK_TRUST 8                /* as tapswitch's TS_LOOK_TRUST, TS_LOOK_PROBE and TS_LOOK_QUICK */
#define LOOK_PROBE 16
#define LOOK_QUICK 4
#define VNET_HDR_LEN 10             /* struct virtio_net_hdr, as tapswitch's */
#define FRAME_MAX (VNET_HDR_LEN + 65536 + 64)

static volatile sig_atomic_t stop;

static void on_stop(int sig)
{
    (void)sig;
    stop = 1;
}

static int tap(const char *name)
{
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };
    int hdr = VNET_HDR_LEN;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0
        || ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN) < 0) {
        fprintf(stderr, "bare: TAP %s: %s\n", name, strerror(errno));
        exit(1);
    }
    return fd;
}

/* Up to BURST frames from `in` to `out`; how many were read. A frame `out`
 * refuses (its host is not reading) is dropped, as a switch would. */
static int burst(int in, int out, unsigned char *buf)
{
    int n = 0;
    for (; n < BURST; n++) {
        ssize_t len = read(in, buf, FRAME_MAX);
        if (len <= 0)
            break;
        if (write(out, buf, (size_t)len) < 0)
            continue;           /* dropped */
    }
    return n;
}

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* poll(2) until a device has frames: with no timeout until busy_ns has
 * passed if the last round moved frames and such looks pay, then sleeping. */
static int wait(struct pollfd *pfd, int moved, long long busy_ns)
{
    static int trust = LOOK_TRUST, skipped;
    if (moved && busy_ns && (trust || ++skipped >= LOOK_PROBE)) {
        skipped = 0;
        long long start = now_ns();
        do {
            int n = poll(pfd, 2, 0);
            if (n > 0 && now_ns() - start <= busy_ns / LOOK_QUICK)
                trust = LOOK_TRUST;     /* paid: a frame early in the look */
            else if (n > 0 && trust)
                trust--;
            if (n != 0)
                return n;
        } while (now_ns() - start < busy_ns);
        if (trust)
            trust--;
    }
    return poll(pfd, 2, -1);
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: bare NAME_A NAME_B [BUSY_POLL_US]\n");
        return 2;
    }
    long long busy_ns = argc == 4 ? atoll(argv[3]) * 1000 : 0;
    struct sigaction sa = { .sa_handler = on_stop };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int fd[2] = { tap(argv[1]), tap(argv[2]) };
    static unsigned char buf[FRAME_MAX];
    printf("ready\n");
    fflush(stdout);
    struct pollfd pfd[2] = { { .fd = fd[0], .events = POLLIN }, { .fd = fd[1], .events = POLLIN } };
    int moved = 0;
    while (!stop) {
        /* Both devices until both are empty, then wait. */
        int n = burst(fd[0], fd[1], buf) + burst(fd[1], fd[0], buf);
        if (!n && wait(pfd, moved, busy_ns) < 0 && errno != EINTR)
            return 1;
        moved = n;
    }
    return 0;
}

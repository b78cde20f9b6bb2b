/* pacer: send one Ethernet frame evenly paced, for the bench's throughput
 * case (RFC 2544 26.1).
 *
 *   pacer DEV DST_MAC SRC_MAC SIZE RATE SECONDS [COUNT [src|dst FIRST N]]
 *
 * Sends SIZE-byte frames (FCS included, so SIZE - 4 on the wire of a TAP or
 * veth) of the IEEE local experimental ethertype from SRC_MAC to DST_MAC on
 * DEV at RATE frames per second for SECONDS or until COUNT frames (0: no
 * limit); with "src" or "dst", that MAC's low 32 bits count FIRST, FIRST + 1,
 * ... FIRST + N - 1 and round again (trafgen's dinc), one per frame. Through
 * AF_PACKET with the qdisc
 * bypassed, as trafgen does. trafgen's own pacing (-b) sends each second's
 * frames in one burst, which measures a switch's queue depth rather than its
 * rate; this spins on the clock instead. A sender that falls behind (the
 * scheduler took its CPU) sends at most BURST_MAX frames at once and lets its
 * schedule slip by the rest: bursts stay short, and the offered rate is what
 * the device counters say, not what was asked. A frame the device refuses
 * (its queue full) is not sent again: it is lost, and the device counts it in
 * tx_dropped.
 *
 * Prints "sent N refused N late N seconds S" when done, or on SIGINT/SIGTERM.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BURST_MAX 32
#define ETH_P_EXPERIMENTAL 0x88b5
#define FCS 4

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int parse_mac(const char *s, uint8_t *mac)
{
    return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx",
                  &mac[0], &mac[1], &mac[2], &mac[3], &mac[4], &mac[5]) == 6 ? 0 : -1;
}

int main(int argc, char **argv)
{
    uint8_t frame[2048] = { 0 };
    if (argc != 7 && argc != 8 && argc != 11) {
        fprintf(stderr, "usage: pacer DEV DST_MAC SRC_MAC SIZE RATE SECONDS [COUNT [src|dst FIRST N]]\n");
        return 2;
    }
    long size = strtol(argv[4], NULL, 10);
    double rate = strtod(argv[5], NULL), seconds = strtod(argv[6], NULL);
    uint64_t count = argc > 7 ? strtoull(argv[7], NULL, 10) : 0;
    uint8_t *vary = NULL;                       /* the MAC whose low 32 bits count */
    uint32_t first = 0, n = 1;
    if (argc == 11) {
        vary = !strcmp(argv[8], "src") ? frame + 6 : !strcmp(argv[8], "dst") ? frame : NULL;
        first = (uint32_t)strtoul(argv[9], NULL, 10);
        n = (uint32_t)strtoul(argv[10], NULL, 10);
    }
    if (parse_mac(argv[2], frame) || parse_mac(argv[3], frame + 6)
        || size < 64 || size > (long)sizeof frame + FCS || rate <= 0 || seconds <= 0
        || (argc == 11 && (!vary || n == 0))) {
        fprintf(stderr, "pacer: bad arguments\n");
        return 2;
    }
    frame[12] = ETH_P_EXPERIMENTAL >> 8;
    frame[13] = ETH_P_EXPERIMENTAL & 0xff;
    size_t len = (size_t)size - FCS;

    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    unsigned int ifindex = if_nametoindex(argv[1]);
    int one = 1;
    struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_ifindex = (int)ifindex };
    if (fd < 0 || !ifindex
        || setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) < 0
        || bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
        perror("pacer");
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    uint64_t sent = 0, refused = 0, late = 0, base_done = 0;
    double t0 = now(), t = t0, end = t0 + seconds, base = t0;
    while (!stop && t < end && (!count || sent + refused < count)) {
        uint64_t done = sent + refused;
        uint64_t due = base_done + (uint64_t)((t - base) * rate);
        if (due > done + BURST_MAX) {           /* behind: a short burst, the schedule slips */
            late += due - done - BURST_MAX;
            due = done + BURST_MAX;
            base = t;
            base_done = due;
        }
        if (count && due > count)
            due = count;
        for (; done < due; done++) {
            if (vary) {
                uint32_t v = first + (uint32_t)(done % n);
                vary[2] = (uint8_t)(v >> 24);
                vary[3] = (uint8_t)(v >> 16);
                vary[4] = (uint8_t)(v >> 8);
                vary[5] = (uint8_t)v;
            }
            if (send(fd, frame, len, 0) == (ssize_t)len)
                sent++;
            else if (errno == ENOBUFS || errno == EAGAIN)
                refused++;
            else {
                perror("pacer: send");
                return 1;
            }
        }
        t = now();
    }
    printf("sent %llu refused %llu late %llu seconds %.3f\n", (unsigned long long)sent,
           (unsigned long long)refused, (unsigned long long)late, now() - t0);
    return 0;
}

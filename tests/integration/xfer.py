"""Run inside a namespace: move bytes over TCP or UDP and say what arrived, to check integrity.

usage: xfer.py tcp-recv ADDR PORT              accept one connection; print bytes and sha256 of all it sent
       xfer.py tcp-send ADDR PORT SIZE SEED    send SIZE random bytes (random.Random(SEED)), then close
       xfer.py udp-recv ADDR PORT COUNT WAIT   print a line a datagram: length, sha256 (until COUNT, or WAIT s quiet)
       xfer.py udp-send ADDR PORT SEED [--df] SIZE...   one datagram of each size (random bytes); --df: IPv4 DF set
A receiver prints "ready" once it listens.
"""

import hashlib
import random
import socket
import sys

IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_PMTUDISC_DONT = 10, 2, 0
IPV6_MTU_DISCOVER = 23


def family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def main() -> None:
    mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    af = family(addr)
    if mode == "tcp-recv":
        s = socket.socket(af, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(1)
        print("ready", flush=True)
        c, _ = s.accept()
        h, n = hashlib.sha256(), 0
        while chunk := c.recv(1 << 16):
            h.update(chunk)
            n += len(chunk)
        print(n, h.hexdigest(), flush=True)
    elif mode == "tcp-send":
        size, seed = int(sys.argv[4]), int(sys.argv[5])
        s = socket.create_connection((addr, port), timeout=20)
        s.sendall(payload(seed, size))
        s.shutdown(socket.SHUT_WR)
        s.recv(1)           # the receiver's close: everything was read
    elif mode == "udp-recv":
        count, wait = int(sys.argv[4]), float(sys.argv[5])
        s = socket.socket(af, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.bind((addr, port))
        s.settimeout(wait)
        print("ready", flush=True)
        for _ in range(count):
            try:
                data = s.recv(1 << 17)
            except socket.timeout:
                break
            print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
    elif mode == "udp-send":
        seed, rest = int(sys.argv[4]), sys.argv[5:]
        df = rest[:1] == ["--df"]
        s = socket.socket(af, socket.SOCK_DGRAM)
        if "%" in addr:                 # a link's multicast group: fd00::/8 has none
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, socket.if_nametoindex(addr.split("%")[1]))
        if af == socket.AF_INET:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if df else IP_PMTUDISC_DONT)
        for size in rest[df:]:
            try:
                s.sendto(payload(seed, int(size)), (addr, port))
            except OSError as e:
                print(size, e.errno, flush=True)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

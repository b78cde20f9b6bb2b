"""Run inside a namespace: send raw Ethernet frames on a device (AF_PACKET), paced so no queue overflows.

usage: sendframes.py DEV SRC_BASE DST COUNT [--vary src|dst]
       sendframes.py DEV --frame HEX COUNT
  SRC_BASE/DST: MACs; with --vary, the last two octets of that MAC count up from 0.
  --frame: send this Ethernet frame (hex, from the destination MAC on) COUNT times.
"""

import socket
import sys
import time

ETH_TYPE = 0x88B5          # IEEE local experimental


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def main() -> None:
    if sys.argv[2] == "--frame":
        send(sys.argv[1], [bytes.fromhex(sys.argv[3])] * int(sys.argv[4]))
        return
    dev, src, dst, count = sys.argv[1], mac_bytes(sys.argv[2]), mac_bytes(sys.argv[3]), int(sys.argv[4])
    vary = sys.argv[6] if len(sys.argv) > 6 and sys.argv[5] == "--vary" else None
    payload = bytes(46)

    def frames():
        for i in range(count):
            n = i.to_bytes(2, "big")
            f_src = src[:4] + n if vary == "src" else src
            f_dst = dst[:4] + n if vary == "dst" else dst
            yield f_dst + f_src + ETH_TYPE.to_bytes(2, "big") + payload
    send(dev, frames())


def send(dev: str, frames) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    for i, frame in enumerate(frames):
        s.send(frame)
        if i % 64 == 63:
            time.sleep(0.002)


if __name__ == "__main__":
    main()

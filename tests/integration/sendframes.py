"""Run inside a namespace: send raw Ethernet frames on a device (AF_PACKET), paced so no queue overflows.

usage: sendframes.py DEV SRC_BASE DST COUNT [--vary src|dst]
       sendframes.py DEV --frame HEX COUNT
       sendframes.py DEV --vnet-frame HEX COUNT
  SRC_BASE/DST: MACs; with --vary, the last two octets of that MAC count up from 0.
  --frame: send this Ethernet frame (hex, from the destination MAC on) COUNT times.
  --vnet-frame: the same, but HEX starts with a 10-byte virtio-net header
  (PACKET_VNET_HDR: the kernel takes checksum and GSO offsets from it, and
  refuses the ones it would refuse from a TAP's writer).
"""

import socket
import sys
import time

ETH_TYPE = 0x88B5          # IEEE local experimental
SOL_PACKET, PACKET_VNET_HDR = 263, 15


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def main() -> None:
    if sys.argv[2] in ("--frame", "--vnet-frame"):
        send(sys.argv[1], [bytes.fromhex(sys.argv[3])] * int(sys.argv[4]), vnet_hdr=sys.argv[2] == "--vnet-frame")
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


def send(dev: str, frames, vnet_hdr: bool = False) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    if vnet_hdr:
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.bind((dev, 0))
    for i, frame in enumerate(frames):
        s.send(frame)
        if i % 64 == 63:
            time.sleep(0.002)


if __name__ == "__main__":
    main()

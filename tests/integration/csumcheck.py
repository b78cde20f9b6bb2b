"""Run inside a namespace: read the UDP datagrams to PORT arriving on DEV as the kernel holds them
(AF_PACKET with PACKET_VNET_HDR: a checksum still to be taken says where, NEEDS_CSUM), finish
each checksum as a NIC would, and check it as a receiver would.

usage: csumcheck.py DEV PORT COUNT WAIT
Prints "ready" once it listens, then a line a datagram: its UDP length, "partial" or "full"
(NEEDS_CSUM or not), "ok" or "bad".
"""

import socket
import struct
import sys

ETH_P_ALL, SOL_PACKET, PACKET_VNET_HDR = 3, 263, 15
NEEDS_CSUM = 1


def fold(data: bytes, start: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo(frame: bytes, l3: int, length: int) -> int:
    if frame[l3] >> 4 == 4:
        return fold(frame[l3 + 12:l3 + 20] + struct.pack("!HH", 17, length))
    return fold(frame[l3 + 8:l3 + 40] + struct.pack("!IxxxB", length, 17))


def main() -> None:
    dev, port, count, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.bind((dev, 0))
    s.settimeout(wait)
    print("ready", flush=True)
    seen = 0
    while seen < count:
        try:
            buf, addr = s.recvfrom(1 << 17)
        except socket.timeout:
            break
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        flags, _, _, _, csum_start, csum_offset = struct.unpack("<BBHHHH", buf[:10])
        frame = bytearray(buf[10:])
        ethertype = struct.unpack("!H", frame[12:14])[0]
        l3 = 14
        if ethertype == 0x0800:
            if frame[l3 + 9] != 17 or struct.unpack("!H", frame[l3 + 6:l3 + 8])[0] & 0x3FFF:
                continue        # not UDP, or a fragment
            l4 = l3 + (frame[l3] & 0xF) * 4
        elif ethertype == 0x86DD:
            if frame[l3 + 6] != 17:
                continue
            l4 = l3 + 40
        else:
            continue
        if struct.unpack("!H", frame[l4 + 2:l4 + 4])[0] != port:
            continue
        length = struct.unpack("!H", frame[l4 + 4:l4 + 6])[0]
        if flags & NEEDS_CSUM:
            # As a NIC does: the field holds the pseudo-header's sum; sum from csum_start on, store it.
            at = csum_start + csum_offset
            frame[at:at + 2] = struct.pack("!H", ~fold(bytes(frame[csum_start:])) & 0xFFFF or 0xFFFF)
        ok = fold(bytes(frame[l4:l4 + length]), pseudo(bytes(frame), l3, length)) == 0xFFFF
        print(length, "partial" if flags & NEEDS_CSUM else "full", "ok" if ok else "bad", flush=True)
        seen += 1


if __name__ == "__main__":
    main()

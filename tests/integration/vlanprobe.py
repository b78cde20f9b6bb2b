"""Run inside a namespace: ask over a trunk device, with an ARP request tagged for one VLAN, who has an address; print who answered and in which VLAN.

usage: vlanprobe.py DEV VID SRC_IP DST_IP
  VID 0 sends the request untagged.
Prints {"vid": VID of the reply or null if untagged, "mac": "..."} for the
first ARP reply from DST_IP and exits 0; exits 1 if none came within 3 s.

Works without the kernel's 802.1Q support: the request is built with its tag
inline (AF_PACKET), and the reply's tag, which the kernel takes out of the
frame on receive, is read from PACKET_AUXDATA.
"""

import json
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 0x10
AUXDATA = struct.Struct("IIIHHHH")     # tp_status tp_len tp_snaplen tp_mac tp_net tp_vlan_tci tp_vlan_tpid


def arp_request(mac: bytes, vid: int, src_ip: str, dst_ip: str) -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, socket.inet_aton(src_ip),
                      bytes(6), socket.inet_aton(dst_ip))
    tag = struct.pack("!HH", ETH_P_8021Q, vid) if vid else b""
    return (b"\xff" * 6 + mac + tag + struct.pack("!H", ETH_P_ARP) + arp).ljust(60, b"\0")


def reply_from(data: bytes, ancillary, dst_ip: str) -> dict | None:
    """{"vid", "mac"} if `data` is an ARP reply from dst_ip, else None."""
    vid = None
    for level, kind, cdata in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA:
            status, *_, tci, _tpid = AUXDATA.unpack(cdata[:AUXDATA.size])
            if status & TP_STATUS_VLAN_VALID:
                vid = tci & 0x0FFF
    offset = 12
    if data[offset:offset + 2] == struct.pack("!H", ETH_P_8021Q):       # a tag the kernel left inline
        vid = struct.unpack("!H", data[offset + 2:offset + 4])[0] & 0x0FFF
        offset += 4
    if data[offset:offset + 2] != struct.pack("!H", ETH_P_ARP):
        return None
    op, sender_mac, sender_ip = struct.unpack("!6xH6s4s", data[offset + 2:offset + 2 + 18])
    if op != 2 or socket.inet_ntoa(sender_ip) != dst_ip:
        return None
    return {"vid": vid, "mac": ":".join(f"{b:02x}" for b in sender_mac)}


def main() -> int:
    dev, vid, src_ip, dst_ip = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((dev, 0))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.settimeout(0.2)
    request = arp_request(s.getsockname()[4], vid, src_ip, dst_ip)
    deadline, sent = time.monotonic() + 3, 0.0
    while time.monotonic() < deadline:
        if time.monotonic() - sent > 0.5:
            s.send(request)
            sent = time.monotonic()
        try:
            data, ancillary, _flags, address = s.recvmsg(2048, socket.CMSG_SPACE(AUXDATA.size))
        except socket.timeout:
            continue
        if address[2] == PACKET_OUTGOING:
            continue
        found = reply_from(data, ancillary, dst_ip)
        if found:
            print(json.dumps(found))
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())

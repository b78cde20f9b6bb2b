"""TAP queues: open the fds of a multi-queue TAP device, with vnet_hdr and offloads.

Every queue of a device is opened with identical flags: a queue opened with
other flags silently changes the framing of all queues (DESIGN.md). The
device is not persistent: it exists while its fds are open, so a crashed
switch leaves no TAP behind.
"""

import errno
import fcntl
import os
import struct

from tapswitch._fastpath import lib

TUN_PATH = "/dev/net/tun"

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNGETDEVNETNS = 0x54E3        # _IO('T', 227), Linux 5.2: an fd of the namespace the device is in
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

QUEUE_FLAGS = IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
VNET_HDR_LEN = lib.TS_VNET_HDR_LEN     # the header the fast path reads and writes
UNKNOWN_NETNS = (0, 0)     # device_netns() on a kernel that cannot tell


class TapError(Exception):
    """A TAP device could not be made; the message is one line for the user."""


def _open_queue(name: str, flags: int) -> int:
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), flags)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_queues(name: str, queues: int, port: str | None = None, where: str = "") -> list[int]:
    """Create TAP `name` with `queues` queue fds (non-blocking), in the
    network namespace of the calling thread. Errors name `port` (default:
    the device) and end with `where` (e.g. " in namespace c1").

    The first queue is opened with IFF_TUN_EXCL, so a name that is already
    taken (by anything, TAP or not) is refused rather than joined.
    """
    port = port or name
    if not os.path.exists(TUN_PATH):
        raise TapError(f"{TUN_PATH} is missing: load the tun module (modprobe tun)")
    fds: list[int] = []
    try:
        for q in range(queues):
            flags = QUEUE_FLAGS | (IFF_TUN_EXCL if q == 0 else 0)
            fds.append(_open_queue(name, flags))
    except OSError as e:
        for fd in fds:
            os.close(fd)
        if e.errno == errno.EBUSY or (e.errno == errno.EINVAL and not fds):
            raise TapError(f"port {port}: a device named {name} already exists{where}") from None
        if e.errno == errno.EPERM:
            raise TapError(f"port {port}: not permitted to create a TAP device (needs CAP_NET_ADMIN)") from None
        raise TapError(f"port {port}: cannot open TAP queue {len(fds)}{where}: {e.strerror}") from None
    return fds


def attached(fd: int) -> bool:
    """Is the TAP device behind queue fd still there? (False once it was deleted.)"""
    try:
        fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    except OSError as e:
        if e.errno == errno.EBADFD:
            return False
        raise
    return True


def device_netns(fd: int) -> tuple[int, int] | None:
    """The namespace the TAP behind queue fd is in now, as its nsfs (device, inode); None once
    the device was deleted. Its host may have moved it (`ip link set DEV netns OTHER`). A
    kernel before 5.2 cannot tell: every device there is in UNKNOWN_NETNS."""
    try:
        nsfd = fcntl.ioctl(fd, TUNGETDEVNETNS)
    except OSError as e:
        if e.errno == errno.EBADFD:
            return None
        if e.errno in (errno.EINVAL, errno.ENOTTY):
            return UNKNOWN_NETNS if attached(fd) else None
        raise
    try:
        st = os.fstat(nsfd)
    finally:
        os.close(nsfd)
    return st.st_dev, st.st_ino

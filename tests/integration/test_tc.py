"""remote and tc on a real kernel: namespaces, a veth "NIC", a TAP, real tc rules, frame by frame.

Topology, made fresh by every test and removed after it, even when it fails:

    ts-tc-<id>-out            ts-tc-<id>-sw
    eth0 198.18.0.2/24 ─veth─ nic0 198.18.0.1/24   (IFACE, the "NIC")
         fd00::2/64                fd00::1/64
                                  tap0             (the port's TAP, opened here)

Frames are crafted with scapy and sent from an AF_PACKET socket on eth0.
Whether the switch got a frame is read from the TAP's fd; whether the host
got it, from UDP sockets bound in the switch namespace (a packet socket on
nic0 would see frames before tc steals them, so it cannot tell).
"""

import contextlib
import ctypes
import fcntl
import json
import os
import pathlib
import select
import socket
import struct
import subprocess
import sys
import time
import uuid

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from structlog.testing import capture_logs

from tapswitch import remote, tc
from tapswitch.remote import RemoteAttachment

pytestmark = pytest.mark.root

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003

NIC, PEER, TAP = "nic0", "eth0", "tap0"
SW_IP, OUT_IP, SW_IP6, OUT_IP6 = "198.18.0.1", "198.18.0.2", "fd00::1", "fd00::2"
UDP_PORT = 4789
PORT_MAC = "02:54:53:00:00:01"
OTHER_MAC = "02:54:53:00:00:99"
COOKIE_HEX = tc.COOKIE_MAGIC.hex()

_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv, check=True) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=check, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def inside(ns: str):
    """Run the block in network namespace `ns` (this thread only); sockets made there stay there."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            if _libc.setns(here, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(here)
        os.close(there)


def token() -> bytes:
    return b"ts-tc-" + uuid.uuid4().hex.encode()


class Lab:
    """Two namespaces, a veth between them, a TAP in the switch's; close() removes all of it."""

    def __init__(self):
        tag = uuid.uuid4().hex[:8]
        self.sw, self.out = f"ts-tc-{tag}-sw", f"ts-tc-{tag}-out"
        self.namespaces: list[str] = []
        self.fds: list[int] = []
        self.socks: list[socket.socket] = []
        self.iprs: list[IPRoute] = []

    def build(self, nic_up: bool = True) -> "Lab":
        for ns in (self.sw, self.out):
            self.namespaces.append(ns)      # first: close() removes it if the add is cut short
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.sw, "link", "add", NIC, "type", "veth", "peer", "name", PEER, "netns", self.out)
        sh("ip", "-n", self.out, "addr", "add", f"{OUT_IP}/24", "dev", PEER)
        sh("ip", "-n", self.out, "addr", "add", f"{OUT_IP6}/64", "dev", PEER, "nodad")
        sh("ip", "-n", self.out, "link", "set", PEER, "up")
        sh("ip", "-n", self.sw, "addr", "add", f"{SW_IP}/24", "dev", NIC)
        sh("ip", "-n", self.sw, "addr", "add", f"{SW_IP6}/64", "dev", NIC, "nodad")
        sh("ip", "-n", self.sw, "link", "set", NIC, "up")
        if not nic_up:
            # down, but up once before: a device never up has no qdisc until its first up
            # gives it the kernel's default one, which is no one's to take back
            sh("ip", "-n", self.sw, "link", "set", NIC, "down")
        with inside(self.sw):
            self.tap = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            self.fds.append(self.tap)
            fcntl.ioctl(self.tap, TUNSETIFF, struct.pack("16sH", TAP.encode(), IFF_TAP | IFF_NO_PI))
            self.udp4 = self._sock(socket.AF_INET, "0.0.0.0")
            self.udp6 = self._sock(socket.AF_INET6, "::")
        sh("ip", "-n", self.sw, "link", "set", TAP, "up")
        self.rewire()
        self.ipr = self.iproute()
        self.nic_mac = self.link(NIC)["address"]
        return self

    def rewire(self) -> None:
        """(Re)open the outside host's packet socket on eth0 (a new eth0 after the veth was remade)."""
        with inside(self.out):
            self.wire = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.socks.append(self.wire)
            self.wire.bind((PEER, ETH_P_ALL))
            self.wire.setblocking(False)
        self.out_mac = json.loads(sh("ip", "-n", self.out, "-j", "link", "show", PEER).stdout)[0]["address"]

    def _sock(self, family, any_addr) -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        self.socks.append(s)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((any_addr, UDP_PORT))
        s.setblocking(False)
        return s

    def iproute(self) -> IPRoute:
        ipr = IPRoute(netns=self.sw)
        self.iprs.append(ipr)
        return ipr

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for s in self.socks:
            s.close()
        for ipr in self.iprs:
            with contextlib.suppress(Exception):
                ipr.close()
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)

    # Frames. --------------------------------------------------------------

    def tx_frame(self) -> bytes:
        """A frame as the switch would write it into the TAP, for the outside host."""
        return bytes(Ether(src=PORT_MAC, dst=self.out_mac) / IP(src="198.18.0.10", dst=OUT_IP)
                     / UDP(sport=40000, dport=UDP_PORT) / token())

    def frame(self, dst_mac: str, tok: bytes, v6: bool = False, dst_ip: str | None = None) -> bytes:
        if v6:
            l3 = IPv6(src=OUT_IP6, dst=dst_ip or SW_IP6)
        else:
            l3 = IP(src=OUT_IP, dst=dst_ip or SW_IP)
        return bytes(Ether(src=self.out_mac, dst=dst_mac) / l3 / UDP(sport=40000, dport=UDP_PORT) / tok)

    def send(self, frame: bytes) -> None:
        self.wire.send(frame)

    def _read_until(self, fds_read, found, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select(list(fds_read), [], [], left)
            for r in ready:
                if found(r):
                    return True

    def tap_count(self, tok: bytes, wait: float = 0.6) -> int:
        """How many frames carrying `tok` the switch reads from the TAP within `wait` seconds."""
        n, deadline = 0, time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.tap], [], [], left)[0]:
                with contextlib.suppress(BlockingIOError):
                    n += tok in os.read(self.tap, 65536)
        return n

    def tap_got(self, tok: bytes, wait: float = 2.0) -> bool:
        def found(_):
            try:
                return tok in os.read(self.tap, 65536)
            except BlockingIOError:
                return False
        return self._read_until([self.tap], found, wait)

    def host_got(self, tok: bytes, wait: float = 2.0) -> bool:
        def found(s):
            try:
                return s.recv(65536) == tok
            except BlockingIOError:
                return False
        return self._read_until([self.udp4, self.udp6], found, wait)

    def wire_got(self, frame: bytes, wait: float = 2.0) -> bool:
        def found(s):
            try:
                return s.recv(65536) == frame
            except BlockingIOError:
                return False
        return self._read_until([self.wire], found, wait)

    # State. ---------------------------------------------------------------

    def link(self, dev: str) -> dict:
        return json.loads(sh("ip", "-n", self.sw, "-d", "-j", "link", "show", "dev", dev).stdout)[0]

    def flags(self, dev: str = NIC) -> set[str]:
        return set(self.link(dev)["flags"])

    def filters(self, dev: str, hook: str = "ingress") -> list[dict]:
        r = sh("tc", "-n", self.sw, "-j", "filter", "show", "dev", dev, hook, check=False)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else []

    def ours(self, dev: str) -> list[tuple[int, str]]:
        """(prio, handle) of each tapswitch filter on the device's ingress, as tc shows them."""
        def tapswitch(f):
            actions = f.get("options", {}).get("actions", [])
            return any(a.get("cookie", "").startswith(COOKIE_HEX) for a in actions)
        return sorted((f["pref"], f["options"]["fh"]) for f in self.filters(dev) if tapswitch(f))

    def snapshot(self, dev: str = NIC) -> dict:
        """Everything about the device that detach() must give back."""
        link = self.link(dev)
        qdiscs = json.loads(sh("tc", "-n", self.sw, "-j", "qdisc", "show", "dev", dev).stdout)
        return {
            "flags": sorted(link["flags"]),
            "mtu": link["mtu"],
            "promiscuity": link.get("promiscuity"),
            "allmulti": link.get("allmulti"),
            "qdiscs": qdiscs,
            "ingress": self.filters(dev, "ingress"),
            "egress": self.filters(dev, "egress"),
        }


@pytest.fixture
def lab():
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, TAP devices, tc")
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def attached():
    """attach() a RemoteAttachment; detach() it at the end whatever happens."""
    made: list[RemoteAttachment] = []

    def attach(lab: Lab, mode: str, **kw) -> RemoteAttachment:
        a = RemoteAttachment(lab.ipr, TAP, NIC, mode, **kw)
        made.append(a)
        a.attach()
        return a

    yield attach
    for a in made:
        with contextlib.suppress(Exception):
            a.detach()


# --- promisc --------------------------------------------------------------------


def test_promisc_mode_steals_everything(lab, attached):
    lab.build()
    a = attached(lab, "promisc")
    assert lab.ours(NIC) == [(remote.PRIO_PROMISC, "800::1")]
    assert [p for p, _ in lab.ours(TAP)] == [remote.PRIO_TX]
    assert "PROMISC" in lab.flags()

    for frame_for in (lambda t: lab.frame(lab.nic_mac, t),  # the host's own unicast
                      lambda t: lab.frame("ff:ff:ff:ff:ff:ff", t, dst_ip="255.255.255.255"),
                      lambda t: lab.frame("33:33:00:00:00:01", t, v6=True, dst_ip="ff02::1")):
        tok = token()
        lab.send(frame_for(tok))
        assert lab.tap_got(tok), "the switch did not get the frame"
        assert not lab.host_got(tok, wait=0.5), "the host still got a frame promisc mode should steal"
    assert a.kind == "u32"


# --- local ----------------------------------------------------------------------


def test_local_mode_steals_the_port_mac_and_mirrors_broadcast_and_ipv6_multicast(lab, attached):
    lab.build()
    a = attached(lab, "local")
    assert a.port_mac == lab.nic_mac  # the port takes IFACE's MAC
    assert remote.default_mac(lab.ipr, NIC) == lab.nic_mac
    assert "PROMISC" not in lab.flags()

    tok = token()
    lab.send(lab.frame(lab.nic_mac, tok))
    assert lab.tap_got(tok)
    assert not lab.host_got(tok, wait=0.5), "a frame for the port's MAC reached the host"

    for frame_for in (lambda t: lab.frame("ff:ff:ff:ff:ff:ff", t, dst_ip="255.255.255.255"),
                      lambda t: lab.frame("33:33:00:00:00:01", t, v6=True, dst_ip="ff02::1")):
        tok = token()
        lab.send(frame_for(tok))
        assert lab.tap_count(tok) == 1, "the switch should get exactly one copy"
        assert lab.host_got(tok), "the host lost its copy"

    tok = token()  # IPv4 multicast: not without allmulti
    lab.send(lab.frame("01:00:5e:00:00:fb", tok, dst_ip="224.0.0.251"))
    assert not lab.tap_got(tok, wait=0.5)


def test_local_mode_with_its_own_mac_and_allmulti(lab, attached):
    lab.build()
    attached(lab, "local", port_mac=PORT_MAC, allmulti=True)
    assert {"ALLMULTI", "PROMISC"} <= lab.flags()  # PROMISC: a real NIC would drop PORT_MAC's frames

    tok = token()
    lab.send(lab.frame(PORT_MAC, tok))
    assert lab.tap_got(tok)

    tok = token()  # the host keeps its own unicast
    lab.send(lab.frame(lab.nic_mac, tok))
    assert lab.host_got(tok)
    assert not lab.tap_got(tok, wait=0.5)

    tok = token()
    lab.send(lab.frame("01:00:5e:00:00:fb", tok, dst_ip="224.0.0.251"))
    assert lab.tap_count(tok) == 1


def set_nic_mac(lab: Lab, mac: str) -> None:
    sh("ip", "-n", lab.sw, "link", "set", NIC, "address", mac)


def test_local_mode_with_its_own_mac_puts_the_nic_in_promisc_only_while_its_mac_is_another(lab, attached):
    """IFACE's user gives it the port's `mac:`: IFACE's own unicast filter lets the port's frames
    through, promisc is given back; given yet another, promisc again. The rule stays the port's."""
    lab.build()
    a = attached(lab, "local", port_mac=PORT_MAC)
    assert "PROMISC" in lab.flags()
    set_nic_mac(lab, PORT_MAC)
    assert a.follow_iface_mac() and not a.follow_iface_mac()    # once: nothing more to follow
    assert "PROMISC" not in lab.flags() and a.port_mac == PORT_MAC
    set_nic_mac(lab, OTHER_MAC)
    assert a.follow_iface_mac()
    assert "PROMISC" in lab.flags()
    tok = token()
    lab.send(lab.frame(PORT_MAC, tok))
    assert lab.tap_got(tok)
    a.detach()
    assert "PROMISC" not in lab.flags()


def test_local_mode_installs_the_rule_it_held_back_beside_a_users_filter_once_that_goes(lab, attached):
    """IFACE's user has a filter at the port's unicast priority, with the handle the rule for
    IFACE's next MAC takes (::2 in that priority's table): given that MAC, the rule waits
    (remote.rules_held_back) and frames for it go to the host. The filter goes: the rule is
    installed then. (In local mode no update came after, and the port never got the frames for
    IFACE's MAC again.)"""
    lab.build()
    a = attached(lab, "local")
    prio = ("prio", hex(remote.PRIO_UNICAST))
    [table] = [h.split("::")[0] for p, h in lab.ours(NIC) if p == remote.PRIO_UNICAST]
    handle = ("handle", f"{table}::2")
    sh("ip", "netns", "exec", lab.sw, "tc", "filter", "add", "dev", NIC, "ingress", *prio, *handle,
       "u32", "match", "u32", "0x12345678", "0xffffffff", "at", "0", "classid", "1:1")   # matches none here
    set_nic_mac(lab, OTHER_MAC)
    with capture_logs() as logs:
        assert a.follow_iface_mac()
    assert [e["event"] for e in logs if e["event"].startswith("remote.")] == [
        "remote.foreign_filter", "remote.rules_held_back", "remote.mac_changed"], logs
    tok = token()
    lab.send(lab.frame(OTHER_MAC, tok))
    assert not lab.tap_got(tok, wait=0.5)              # its rule waits
    sh("ip", "netns", "exec", lab.sw, "tc", "filter", "del", "dev", NIC, "ingress", *prio, *handle, "u32")
    a.check_foreign()                                  # as the filter's RTM_DELTFILTER has the switch do
    tok = token()
    lab.send(lab.frame(OTHER_MAC, tok))
    assert lab.tap_got(tok)
    assert not lab.host_got(tok, wait=0.5)



@pytest.mark.parametrize("delete", [("prio", "PRIO"), ()], ids=["its-priority", "every-filter"])
@pytest.mark.parametrize("mode", remote.MODES)
def test_the_ports_rules_deleted_with_a_users_filter_beside_them_are_installed_again(lab, attached, mode, delete):
    """IFACE's user adds a u32 filter at the priority of a rule of the port's (it joins that rule's
    table) and, told to move it (remote.foreign_filter), deletes it as tc deletes a filter: by its
    priority, which deletes the port's rule there too; or every filter on IFACE's ingress. The
    port's rules that went are installed again at the filter event that follows (check_foreign):
    they were lost for good, said by nothing (promisc mode: IFACE's every frame went to the host)."""
    lab.build()
    a = attached(lab, mode)
    if mode == "shared":
        a.update_shared_macs([OTHER_MAC])
    prio = remote.PRIO_UNICAST if mode == "local" else tc.PRIO_FIRST

    def ours():          # (prio, node): a priority made again gets a u32 table of another number
        return sorted((p, h.split("::")[1]) for p, h in lab.ours(NIC))
    rules = ours()
    sh("tc", "-n", lab.sw, "filter", "add", "dev", NIC, "ingress", "prio", hex(prio), "protocol", "all",
       "u32", "match", "u32", "0x12345678", "0xffffffff", "at", "0", "classid", "1:1")   # matches none here
    a.check_foreign()
    assert list(a.foreign) == [prio]
    sh("tc", "-n", lab.sw, "filter", "del", "dev", NIC, "ingress", *(hex(prio) if w == "PRIO" else w for w in delete))
    assert len(ours()) < len(rules)
    with capture_logs() as logs:
        a.check_foreign()                       # as the deletion's RTM_DELTFILTER has the switch do
    assert ours() == rules and not a.foreign
    [lost] = [e for e in logs if e["event"] == "remote.rules_lost"]
    assert lost["rules"] == (len(rules) if not delete else 1) and lost["log_level"] == "warning"
    tok = token()
    lab.send(lab.frame(PORT_MAC if mode != "local" else lab.nic_mac, tok))
    assert lab.tap_got(tok) == (mode != "shared")
    tok = token()
    lab.send(lab.frame(OTHER_MAC, tok))
    assert lab.tap_got(tok) == (mode != "local")
    a.detach()
    assert not lab.filters(NIC)


@pytest.mark.parametrize("users", [False, True], ids=["ours", "users"])
@pytest.mark.parametrize("dev", [NIC, TAP])
def test_a_clsact_deleted_with_the_ports_rules_on_it_is_added_again_with_them(lab, attached, dev, users):
    """Another deletes the clsact qdisc of IFACE or the TAP (`tc qdisc del dev IFACE clsact`, as a
    tool that put a bpf program there may clean up), and the port's rules on it with it: at the
    qdisc's RTM_DELQDISC (check_foreign), the port adds a clsact again, its own now, and its rules,
    whose cookies say so: a detach (or a start after a crash) removes it. (The port had lost
    IFACE's frames, or the TAP's, for good, said by nothing.)"""
    lab.build()
    if users:
        sh("tc", "-n", lab.sw, "qdisc", "add", "dev", NIC, "clsact")
    a = attached(lab, "local", port_mac=PORT_MAC)
    rules = {d: sorted((p, h.split("::")[1]) for p, h in lab.ours(d)) for d in (NIC, TAP)}
    sh("tc", "-n", lab.sw, "qdisc", "del", "dev", dev, "clsact")
    with capture_logs() as logs:
        a.check_foreign()
    assert [e["dev"] for e in logs if e["event"] == "remote.clsact_lost"] == [dev], logs
    assert {d: sorted((p, h.split("::")[1]) for p, h in lab.ours(d)) for d in (NIC, TAP)} == rules
    index = tc.index_of(lab.ipr, dev)
    assert {f.state.clsact_added for f in tc.tapswitch_filters(lab.ipr, index)} == {True}
    tok = token()
    lab.send(lab.frame(PORT_MAC, tok))
    assert lab.tap_got(tok)
    frame = lab.tx_frame()
    os.write(lab.tap, frame)
    assert lab.wire_got(frame)
    a.detach()
    assert not tc.has_clsact(lab.ipr, index)
    assert not lab.filters(NIC) and not lab.filters(TAP)


@pytest.mark.parametrize("mode", remote.MODES)
def test_a_filter_added_without_a_priority_beside_tapswitchs_rules_lands_outside_the_range_it_reserves(
        lab, attached, mode):
    """The kernel gives a filter added without a priority the one below the lowest on the hook.
    tapswitch's lowest rule on IFACE was at 0xC101 (local, shared) or 0xC105 (promisc): such a
    filter landed inside 0xC100-0xC1FF, was said as foreign, and failed the next start. Now each
    device's lowest rule is at 0xC100 in every mode: the filter lands at 0xC0FF, is no one's
    business, stays through the stop, and the next attach takes IFACE beside it."""
    lab.build()
    a = attached(lab, mode)
    if mode == "shared":
        a.update_shared_macs([OTHER_MAC])
    assert min(p for p, _ in lab.ours(NIC)) == min(p for p, _ in lab.ours(TAP)) == tc.PRIO_FIRST
    user = ("u32", "match", "u32", "0x12345678", "0xffffffff", "at", "0", "classid", "1:1")   # matches none here
    for dev in (NIC, TAP):
        sh("ip", "netns", "exec", lab.sw, "tc", "filter", "add", "dev", dev, "ingress", *user)
        ours = {prio for prio, _ in lab.ours(dev)}
        [theirs] = {f["pref"] for f in lab.filters(dev)} - ours
        assert theirs == tc.PRIO_FIRST - 1, hex(theirs)
    with capture_logs() as logs:
        a.check_foreign()
    assert not [e for e in logs if e["event"] == "remote.foreign_filter"], logs
    a.detach()
    assert [f["pref"] for f in lab.filters(NIC) if f["pref"] != tc.PRIO_FIRST - 1] == []
    again = attached(lab, mode)             # the next start: IFACE is not refused
    assert again.attached and lab.ours(NIC)
    assert tc.PRIO_FIRST - 1 in {f["pref"] for f in lab.filters(NIC)}
    readme = " ".join((pathlib.Path(__file__).parents[2] / "README.md").read_text().split())
    assert "a filter added without a priority gets the one below the lowest already there" in readme
    assert "is always at 0xC100, so beside them that is 0xC0FF, outside the range" in readme


def test_an_older_versions_stale_rules_at_its_priorities_are_removed_and_ours_start_at_the_bottom(lab):
    """A dead run of an older tapswitch left its rules at its priorities (promisc's at 0xC105,
    local's broadcast at 0xC102): they are found by range and cookie as ever, removed, and the new
    rules' lowest is at 0xC100, so a filter added without a priority then lands outside the range."""
    lab.build()
    sh("tc", "-n", lab.sw, "qdisc", "add", "dev", NIC, "clsact")
    cookie = tc.DeviceState(up=True, promisc=False, allmulti=False, mtu=0).cookie().hex()
    for prio in (tc.PRIO_FIRST + 5, tc.PRIO_FIRST + 2):
        sh("tc", "-n", lab.sw, "filter", "add", "dev", NIC, "ingress", "prio", hex(prio), "protocol", "all",
           "u32", "match", "u32", "0x12345678", "0xffffffff", "at", "0",
           "action", "mirred", "egress", "mirror", "dev", TAP, "cookie", cookie)
    assert [p for p, _ in lab.ours(NIC)] == [tc.PRIO_FIRST + 2, tc.PRIO_FIRST + 5]
    a = RemoteAttachment(lab.ipr, TAP, NIC, "local")
    try:
        with capture_logs() as logs:
            a.attach()
        assert [e["filters"] for e in logs if e["event"] == "remote.stale_removed"] == [2]
        assert tc.PRIO_FIRST + 5 not in {f["pref"] for f in lab.filters(NIC)}
        assert min(p for p, _ in lab.ours(NIC)) == tc.PRIO_FIRST
        sh("tc", "-n", lab.sw, "filter", "add", "dev", NIC, "ingress",
           "u32", "match", "u32", "0x12345678", "0xffffffff", "at", "0", "classid", "1:1")
        assert {f["pref"] for f in lab.filters(NIC)} - {p for p, _ in lab.ours(NIC)} == {tc.PRIO_FIRST - 1}
    finally:
        a.detach()


def test_shared_mode_leaves_the_host_frames_for_its_new_mac(lab, attached):
    """IFACE's user gives it a MAC the MAC table puts behind another port: it is the host's now,
    and frames for it go to the host, not to the switch."""
    lab.build()
    a = attached(lab, "shared")
    a.update_shared_macs([OTHER_MAC])
    tok = token()
    lab.send(lab.frame(OTHER_MAC, tok))
    assert lab.tap_got(tok)
    set_nic_mac(lab, OTHER_MAC)
    assert a.follow_iface_mac()
    tok = token()
    lab.send(lab.frame(OTHER_MAC, tok))
    assert lab.host_got(tok)
    assert not lab.tap_got(tok, wait=0.5)


# --- shared ---------------------------------------------------------------------


def ping(ns: str, address: str) -> bool:
    six = ["-6"] if ":" in address else []
    return sh("ip", "netns", "exec", ns, "ping", *six, "-c", "2", "-i", "0.2", "-W", "2", address,
              check=False).returncode == 0


def test_shared_mode_steals_listed_macs_and_the_host_keeps_its_address(lab, attached):
    lab.build()
    m1, m2 = "02:54:53:00:00:0a", "02:54:53:00:00:0b"
    a = attached(lab, "shared")
    a.update_shared_macs([m1])

    assert ping(lab.out, SW_IP) and ping(lab.sw, OUT_IP)
    assert ping(lab.out, SW_IP6) and ping(lab.sw, OUT_IP6)

    tok = token()
    lab.send(lab.frame(m1, tok))
    assert lab.tap_got(tok)
    tok = token()
    lab.send(lab.frame(m2, tok))
    assert not lab.tap_got(tok, wait=0.5)

    a.update_shared_macs([m2, lab.nic_mac.upper()])  # the host's own MAC is never stolen
    assert [p for p, _ in lab.ours(NIC)].count(remote.PRIO_UNICAST) == 1
    tok = token()
    lab.send(lab.frame(m2, tok))
    assert lab.tap_got(tok)
    tok = token()
    lab.send(lab.frame(m1, tok))
    assert not lab.tap_got(tok, wait=0.5)
    assert ping(lab.out, SW_IP)

    tok = token()  # broadcast: both get it
    lab.send(lab.frame("ff:ff:ff:ff:ff:ff", tok, dst_ip="255.255.255.255"))
    assert lab.tap_count(tok) == 1
    assert lab.host_got(tok)

    a.update_shared_macs([])
    assert remote.PRIO_UNICAST not in [p for p, _ in lab.ours(NIC)]
    assert not any(f["pref"] == remote.PRIO_UNICAST for f in lab.filters(NIC)), "an empty u32 table is left"


def test_shared_mode_removes_many_macs_with_one_dump_per_device(lab, attached, monkeypatch):
    """The MAC table lost many MACs at once (a flush, a port down): their rules go with one
    dump of IFACE's filters, not one (of all of them) per rule, which took hours for a few
    thousand MACs while the control loop (and a stop) waited."""
    lab.build()
    macs = [f"02:54:53:00:{i >> 8:02x}:{i & 0xff:02x}" for i in range(200)]
    a = attached(lab, "shared")
    a.update_shared_macs(macs)
    assert [p for p, _ in lab.ours(NIC)].count(remote.PRIO_UNICAST) == 200
    dumps = []
    real_dump = tc.dump
    monkeypatch.setattr(tc, "dump", lambda *args, **kw: dumps.append(args) or real_dump(*args, **kw))
    a.update_shared_macs(macs[:50])
    assert [p for p, _ in lab.ours(NIC)].count(remote.PRIO_UNICAST) == 50
    assert len(dumps) <= 2, len(dumps)        # ours, then the empty priorities
    dumps.clear()
    a.detach()
    assert not lab.ours(NIC) and not lab.ours(TAP)
    assert len(dumps) <= 2 * 2 + 4, len(dumps)       # and the clsact each device may lose


def test_shared_mode_says_once_that_macs_are_left_out_when_the_rules_are_full(lab, attached, monkeypatch):
    """More MACs than u32 node ids: one warning when it happens, not one per MAC left out at
    every update (once a second, for good); one line when all fit again."""
    lab.build()
    monkeypatch.setattr(tc, "U32_NODE_MAX", 8)
    macs = [f"02:54:53:00:01:{i:02x}" for i in range(12)]
    a = attached(lab, "shared")
    with capture_logs() as logs:
        a.update_shared_macs(macs)
        a.update_shared_macs(macs)
        a.update_shared_macs(macs[:-1])
    assert [p for p, _ in lab.ours(NIC)].count(remote.PRIO_UNICAST) == 8
    full = [e for e in logs if e["event"] == "remote.rules_full"]
    assert len(full) == 2, full                      # 4 left out, then 3: not 4 + 4 + 3 lines
    assert [e["left_out"] for e in full] == [4, 3], full
    with capture_logs() as logs:
        a.update_shared_macs(macs[:8])
    assert [e["event"] for e in logs if e["event"].startswith("remote.rules")] == ["remote.rules_fit"]


def test_shared_mode_holds_back_the_rules_the_kernel_refuses_beside_a_users_filter_and_keeps_the_others(lab, attached):
    """IFACE's user adds a bpf filter at the priority of the MACs' rules (u32) while the port runs:
    the kernel refuses those there. The update says so once, naming the filter, installs the
    rest, and leaves the user's filter alone; frames for the MAC stay with the host meanwhile.
    When it goes, the next update installs what waited. (The update failed at the first MAC,
    every second, with a bare "Invalid argument".)"""
    lab.build()
    m1, m2 = "02:54:53:00:00:0a", "02:54:53:00:00:0b"
    a = attached(lab, "shared")
    user = ("prio", hex(remote.PRIO_UNICAST), "bpf", "bytecode", "1,6 0 0 0,", "classid", "1:1")
    sh("ip", "netns", "exec", lab.sw, "tc", "filter", "add", "dev", NIC, "ingress", *user)
    with capture_logs() as logs:
        a.update_shared_macs([m1])
        a.update_shared_macs([m1, m2])
    said = [(e["event"], e["prio"]) for e in logs if e["event"].startswith("remote.")]
    assert said == [("remote.foreign_filter", hex(remote.PRIO_UNICAST)),
                    ("remote.rules_held_back", hex(remote.PRIO_UNICAST))], logs
    assert [(e["kind"], e["handle"]) for e in logs if e["event"] == "remote.foreign_filter"] == [("bpf", "0x1")]
    assert "bytecode '1,6 0 0 0'" in sh("tc", "-n", lab.sw, "filter", "show", "dev", NIC, "ingress").stdout
    tok = token()
    lab.send(lab.frame(m1, tok))
    assert not lab.tap_got(tok, wait=0.5)               # its rule waits
    tok = token()
    lab.send(lab.frame("ff:ff:ff:ff:ff:ff", tok, dst_ip="255.255.255.255"))
    assert lab.tap_got(tok), "the broadcast rule went with the MACs'"

    sh("ip", "netns", "exec", lab.sw, "tc", "filter", "del", "dev", NIC, "ingress", "prio", hex(remote.PRIO_UNICAST))
    with capture_logs() as logs:
        a.check_foreign()
        a.update_shared_macs([m1, m2])
    assert [e["event"] for e in logs if e["event"].startswith("remote.")] == ["remote.foreign_filter_gone"]
    tok = token()
    lab.send(lab.frame(m1, tok))
    assert lab.tap_got(tok)


# --- TX -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", remote.MODES)
def test_what_the_switch_writes_into_the_tap_leaves_through_iface(lab, attached, mode):
    lab.build()
    attached(lab, mode)
    frame = lab.tx_frame()
    os.write(lab.tap, frame)
    assert lab.wire_got(frame)


# --- detach ---------------------------------------------------------------------


def add_user_tc(lab: Lab) -> None:
    """A user's own clsact and filters, outside tapswitch's priority range."""
    tcn = ["tc", "-n", lab.sw]
    sh(*tcn, "qdisc", "add", "dev", NIC, "clsact")
    sh(*tcn, "filter", "add", "dev", NIC, "ingress", "prio", "10", "protocol", "all",
       "u32", "match", "u16", "0x88b5", "0xffff", "at", "-2", "classid", "1:1")
    sh(*tcn, "filter", "add", "dev", NIC, "egress", "prio", "7", "protocol", "all",
       "u32", "match", "u32", "0", "0", "classid", "1:2")


def add_user_tc_in_range(lab: Lab) -> None:
    """Two filters of a user's inside tapswitch's priority range (added while IFACE is attached:
    an attach refuses IFACE with them): a filter, and a u32 hash table that holds no filter yet."""
    tcn = ["tc", "-n", lab.sw]
    sh(*tcn, "filter", "add", "dev", NIC, "ingress", "prio", hex(tc.PRIO_FIRST + 0x50), "protocol", "all",
       "u32", "match", "u16", "0x88b6", "0xffff", "at", "-2", "classid", "1:3")
    sh(*tcn, "filter", "add", "dev", NIC, "ingress", "prio", hex(tc.PRIO_FIRST + 0x60), "protocol", "all",
       "handle", "5:", "u32", "divisor", "16")


@pytest.mark.parametrize("user_tc", [False, True], ids=["bare", "user-clsact"])
def test_detach_leaves_iface_as_it_was(lab, user_tc):
    lab.build(nic_up=False)
    if user_tc:
        add_user_tc(lab)
    before, tap_before = lab.snapshot(), lab.snapshot(TAP)

    a = RemoteAttachment(lab.ipr, TAP, NIC, "promisc", allmulti=True, mtu=1400)
    try:
        a.attach()
        during = lab.link(NIC)
        assert during["mtu"] == 1400
        assert {"UP", "PROMISC", "ALLMULTI"} <= set(during["flags"])
        assert len(lab.ours(NIC)) == 1
        if user_tc:      # the user's filters in the range come while IFACE is attached
            add_user_tc_in_range(lab)
    finally:
        a.detach()

    if user_tc:          # and stay
        in_range = [tc.PRIO_FIRST + 0x50, tc.PRIO_FIRST + 0x60]
        assert sorted({f["pref"] for f in lab.filters(NIC)} & set(in_range)) == in_range
        for prio in in_range:
            sh("tc", "-n", lab.sw, "filter", "del", "dev", NIC, "ingress", "prio", hex(prio))
    assert lab.snapshot() == before
    assert lab.snapshot(TAP) == tap_before


def test_a_users_ingress_qdisc_is_never_replaced(lab):
    lab.build()
    sh("tc", "-n", lab.sw, "qdisc", "add", "dev", NIC, "ingress")
    before, tap_before = lab.snapshot(), lab.snapshot(TAP)
    with pytest.raises(tc.TcError, match=f"^{NIC} has an 'ingress' qdisc"):
        RemoteAttachment(lab.ipr, TAP, NIC, "promisc").attach()
    assert lab.snapshot() == before and lab.snapshot(TAP) == tap_before


@pytest.mark.parametrize("user_filter", [
    ("prio", hex(remote.PRIO_UNICAST), "u32", "match", "u32", "0", "0", "classid", "1:1"),
    ("prio", hex(remote.PRIO_UNICAST), "handle", "800::1", "u32", "match", "u32", "0", "0", "classid", "1:1"),
    ("prio", hex(remote.PRIO_UNICAST), "protocol", "ip", "u32", "match", "u32", "0", "0", "classid", "1:1"),
    ("prio", hex(tc.PRIO_FIRST + 0x60), "protocol", "all", "handle", "5:", "u32", "divisor", "16"),
], ids=["our-prio", "our-handle", "other-protocol", "hash-table"])
@pytest.mark.parametrize("mode", ["promisc", "local", "shared"])
def test_a_users_filter_in_the_reserved_range_is_refused_naming_it(lab, mode, user_filter):
    """A filter of the user's at a priority tapswitch reserves: attach() fails, naming IFACE, the
    priority and the range, and touches nothing (the kernel refused our rule beside it with a bare
    EEXIST, ENOSPC or EINVAL, or took it into the user's u32 hash table, where it ran before the
    user's filter)."""
    lab.build()
    sh("tc", "-n", lab.sw, "qdisc", "add", "dev", NIC, "clsact")
    sh("tc", "-n", lab.sw, "filter", "add", "dev", NIC, "ingress", *user_filter)
    prio = int(user_filter[1], 16)
    before, tap_before = lab.snapshot(), lab.snapshot(TAP)
    with pytest.raises(tc.TcError, match=f"^{NIC} has a tc filter that is not tapswitch's at ingress priority "
                                         f"{prio:#x} \\({prio}\\), in the range tapswitch reserves "
                                         f"\\(0xc100-0xc1ff, 49408-49663\\)"):
        RemoteAttachment(lab.ipr, TAP, NIC, mode).attach()
    assert lab.snapshot() == before and lab.snapshot(TAP) == tap_before


def test_iface_is_claimed_while_attached_and_let_go_at_detach(lab, attached):
    """A second attachment of IFACE, on another TAP, is refused before it looks at IFACE's rules
    (it would take the first's for a dead run's: two switches starting at once), naming IFACE
    and the claim's holder; once the first has detached, it attaches."""
    lab.build()
    sh("ip", "-n", lab.sw, "tuntap", "add", "name", "tap1", "mode", "tap")
    first = attached(lab, "promisc")
    held = lab.snapshot()
    second = RemoteAttachment(lab.iproute(), "tap1", NIC, "promisc")
    with pytest.raises(tc.TcError, match=f"^{NIC} is attached by another running switch \\(pid {os.getpid()}\\)$"):
        second.attach()
    assert lab.snapshot() == held and not lab.ours("tap1")
    first.detach()
    second.attach()
    assert [p for p, _ in lab.ours("tap1")] == [remote.PRIO_TX]
    second.detach()


def test_an_mtu_iface_refuses_is_an_error_naming_it_and_leaves_it_as_it_was(lab):
    """A macvlan takes no MTU over its lower device's: the error says which device refused
    what (not a bare "Invalid argument"), and attach() leaves it and the TAP as they were."""
    lab.build()
    sh("ip", "-n", lab.sw, "link", "add", "mv0", "link", NIC, "type", "macvlan", "mode", "bridge")
    sh("ip", "-n", lab.sw, "link", "set", "mv0", "up")
    before, tap_before = lab.snapshot("mv0"), lab.snapshot(TAP)
    with pytest.raises(tc.TcError, match="^remote mv0 refused mtu 9000: Invalid argument$"):
        RemoteAttachment(lab.ipr, TAP, "mv0", "promisc", allmulti=True, mtu=9000).attach()
    assert lab.snapshot("mv0") == before and lab.snapshot(TAP) == tap_before


def test_attach_again_is_still_one_attachment(lab):
    lab.build(nic_up=False)
    before = lab.snapshot()
    a = RemoteAttachment(lab.ipr, TAP, NIC, "local", port_mac=PORT_MAC, mtu=1400)
    try:
        a.attach()
        rules = lab.ours(NIC)
        a.attach()
        assert lab.ours(NIC) == rules and len(lab.ours(TAP)) == 1
    finally:
        a.detach()
    assert lab.snapshot() == before


def test_iface_gone_then_back(lab):
    """What the link monitor will do: IFACE vanishes (detach() copes), comes back (attach() again)."""
    lab.build()
    tap_before = lab.snapshot(TAP)
    a = RemoteAttachment(lab.ipr, TAP, NIC, "promisc")
    try:
        a.attach()
        sh("ip", "-n", lab.sw, "link", "del", NIC)
        a.detach()
        assert lab.snapshot(TAP) == tap_before  # no TX rule left pointing nowhere

        sh("ip", "-n", lab.sw, "link", "add", NIC, "type", "veth", "peer", "name", PEER, "netns", lab.out)
        sh("ip", "-n", lab.out, "link", "set", PEER, "up")
        lab.rewire()
        a.attach()
        frame = lab.tx_frame()
        os.write(lab.tap, frame)
        assert lab.wire_got(frame)
        tok = token()
        lab.send(lab.frame("02:54:53:00:00:77", tok))
        assert lab.tap_got(tok)
    finally:
        a.detach()
    assert lab.snapshot(TAP) == tap_before


def test_a_failed_attach_never_removes_a_clsact_it_did_not_add(lab):
    """IFACE went (its clsact, ours, with it) and came back another device, on which its user put
    a clsact of their own; the attach failed (the new device refuses the port's MTU) before it
    looked at IFACE's qdiscs. Its undo took the clsact for ours, as the first attach had found
    it, and removed the user's. Only the clsact the attach being undone added goes."""
    lab.build()
    a = RemoteAttachment(lab.ipr, TAP, NIC, "promisc", mtu=9000)
    try:
        a.attach()                                  # a veth takes 9000; our clsact goes on it
        assert lab.ours(NIC)
        sh("ip", "-n", lab.sw, "link", "del", NIC)
        a.gone()
        sh("ip", "-n", lab.sw, "link", "add", "lower0", "type", "veth", "peer", "name", "lower1")
        sh("ip", "-n", lab.sw, "link", "add", NIC, "link", "lower0", "type", "macvlan", "mode", "bridge")
        sh("ip", "-n", lab.sw, "link", "set", NIC, "up")
        sh("tc", "-n", lab.sw, "qdisc", "add", "dev", NIC, "clsact")      # the user's, no filter yet
        before = lab.snapshot()
        with pytest.raises(tc.TcError, match=f"^remote {NIC} refused mtu 9000: Invalid argument$"):
            a.attach()
        assert lab.snapshot() == before
        assert tc.has_clsact(lab.ipr, tc.index_of(lab.ipr, NIC))
    finally:
        a.detach()


def test_iface_back_from_another_namespace_keeps_the_clsact_its_user_put_on_it(lab):
    """IFACE moved into another namespace and back (same device: its original is kept, gone()),
    and the kernel dropped its qdiscs, our clsact with them. The clsact its user put on it since
    is not ours: detach() leaves it."""
    lab.build()
    away = lab.sw.replace("-sw", "-away")      # a namespace of only lo: IFACE keeps its ifindex there
    lab.namespaces.append(away)
    sh("ip", "netns", "add", away)
    index = tc.index_of(lab.ipr, NIC)
    a = RemoteAttachment(lab.ipr, TAP, NIC, "promisc")
    try:
        a.attach()
        sh("ip", "-n", lab.sw, "link", "set", NIC, "netns", away)
        a.gone()
        sh("ip", "-n", away, "link", "set", NIC, "netns", lab.sw)
        assert tc.index_of(lab.ipr, NIC) == index      # the same device, as gone() keeps it
        sh("ip", "-n", lab.sw, "link", "set", NIC, "up")
        sh("tc", "-n", lab.sw, "qdisc", "add", "dev", NIC, "clsact")      # the user's, no filter yet
        a.attach()
        assert lab.ours(NIC)
    finally:
        a.detach()
    assert tc.has_clsact(lab.ipr, tc.index_of(lab.ipr, NIC))


# --- after a crash --------------------------------------------------------------

CRASH = """
import os, sys
from pyroute2 import IPRoute
from tapswitch.remote import RemoteAttachment
a = RemoteAttachment(IPRoute(), "tap0", "nic0", "local", port_mac=sys.argv[1], allmulti=True, mtu=1400)
a.attach()
os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("how", ["dropped", "sigkill"])
def test_a_start_after_a_crash_removes_stale_rules_and_heals(lab, how):
    lab.build(nic_up=False)
    before = lab.snapshot()

    if how == "dropped":  # attach, then lose the object without detach()
        ipr = lab.iproute()
        RemoteAttachment(ipr, TAP, NIC, "local", port_mac=PORT_MAC, allmulti=True, mtu=1400).attach()
        ipr.close()
    else:
        r = sh("ip", "netns", "exec", lab.sw, sys.executable, "-c", CRASH, PORT_MAC, check=False)
        assert r.returncode == -9, r.stderr
    stale = lab.ours(NIC)
    assert len(stale) == 4 and lab.link(NIC)["mtu"] == 1400

    b = RemoteAttachment(lab.ipr, TAP, NIC, "local", port_mac=PORT_MAC, allmulti=True, mtu=1400)
    try:
        with capture_logs() as logs:
            b.attach()
        removed = [e for e in logs if e["event"] == "remote.stale_removed"]
        assert {e["dev"] for e in removed} == {NIC, TAP}
        prios = [p for p, _ in lab.ours(NIC)]
        assert sorted(prios) == sorted(set(prios)) == sorted([remote.PRIO_UNICAST, remote.PRIO_BROADCAST,
                                                               remote.PRIO_BROADCASTV6, remote.PRIO_ALLMULTI])
        assert [p for p, _ in lab.ours(TAP)] == [remote.PRIO_TX]

        tok = token()
        lab.send(lab.frame(PORT_MAC, tok))
        assert lab.tap_count(tok) == 1
        tok = token()
        lab.send(lab.frame("ff:ff:ff:ff:ff:ff", tok, dst_ip="255.255.255.255"))
        assert lab.tap_count(tok) == 1, "a duplicate mirror rule survived"
    finally:
        b.detach()
    # the crashed run's cookies remembered how nic0 was: down, MTU 1500, no clsact
    assert lab.snapshot() == before


def test_stale_removal_never_touches_a_users_filters(lab, attached):
    lab.build()
    add_user_tc(lab)
    ipr = lab.iproute()
    RemoteAttachment(ipr, TAP, NIC, "promisc").attach()  # and never detached
    add_user_tc_in_range(lab)
    user_ingress = [f for f in lab.filters(NIC) if f["pref"] != remote.PRIO_PROMISC]
    stale = tc.remove_stale(lab.ipr, NIC)
    assert [f.prio for f in stale.removed] == [remote.PRIO_PROMISC]
    assert stale.state is not None and stale.state.up and not stale.state.clsact_added
    assert lab.filters(NIC) == user_ingress
    assert tc.remove_stale(lab.ipr, NIC).removed == ()


# --- flower or u32 --------------------------------------------------------------


def test_flower_probe_falls_back_to_u32_and_leaves_nothing(lab, monkeypatch):
    lab.build()
    index = lab.link(NIC)["ifindex"]
    assert tc.ensure_clsact(lab.ipr, index)
    monkeypatch.setattr(tc, "_flower", None)
    with capture_logs() as logs:
        assert tc.flower_supported(lab.ipr, index) is False
        assert tc.flower_supported(lab.ipr, index) is False
    assert [e["event"] for e in logs if e["log_level"] == "info"] == ["tc.u32"]  # probed and logged once
    # the same probe with a classifier this kernel has: it works and is gone afterwards
    assert tc.probe(lab.ipr, index, "u32") is True
    assert lab.filters(NIC) == []
    chains = json.loads(sh("tc", "-n", lab.sw, "-j", "chain", "show", "dev", NIC, "ingress").stdout)
    assert tc.PROBE_CHAIN not in [c["chain"] for c in chains]
    assert tc.remove_clsact(lab.ipr, index)
    assert "clsact" not in sh("tc", "-n", lab.sw, "qdisc", "show", "dev", NIC).stdout


def test_shared_mode_logs_the_macs_rules_coming_and_going_at_debug(lab, attached):
    """A shared-mode MAC's rule follows the MAC table: each MAC learned or aged behind the other
    ports was an info line (ten a second on a LAN where five new MACs a second came and aged),
    where fdb.aged itself is debug. The implicit rules, made at attach, stay info lines."""
    lab.build()
    with capture_logs() as logs:
        a = attached(lab, "shared")
        a.update_shared_macs(["02:54:53:00:02:01", "02:54:53:00:02:02"])
        a.update_shared_macs(["02:54:53:00:02:02", "02:54:53:00:02:03"])
    rules = [(e["event"], e["rule"], e["log_level"]) for e in logs if e["event"].startswith("rule.")]
    assert {level for _event, rule, level in rules if rule == "SHARED_MAC"} == {"debug"}, rules
    assert [r for r in rules if r[1] == "SHARED_MAC"].count(("rule.installed", "SHARED_MAC", "debug")) == 3
    assert ("rule.removed", "SHARED_MAC", "debug") in rules
    assert {level for _event, rule, level in rules if rule != "SHARED_MAC"} == {"info"}, rules

"""vxlan without root: device names, MTUs across the tunnel, the remote hosts' diff, and the config keys."""

import errno
import textwrap

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from tapswitch import vxlan
from tapswitch.config import ConfigError, loads
from tapswitch.linkmon import IFF_LOWER_UP, IFF_UP
from tapswitch.vxlan import (PortMtu, VxlanError, carried_mtu, device_name, overhead, remotes_diff, segment_mtus,
                              sends_tagged)

# --- Device names -------------------------------------------------------------


def test_a_short_port_name_gets_the_suffix():
    assert device_name("vx0") == "vx0-vx"
    assert device_name("uplink-dc2") == "uplink-dc2-vx"   # 13 characters


def test_a_long_port_name_is_cut_to_15_with_a_hash():
    name = device_name("fabric-uplink-1")
    assert len(name) == 15 and name.startswith("fabric-up") and name.endswith("vx")
    # names alike but for their tail get different devices
    assert device_name("fabric-uplink-1") != device_name("fabric-uplink-2")


def test_device_names_are_stable_and_never_longer_than_15_bytes():
    # Stable across runs: a restarted switch must find the device its predecessor made (a
    # per-process hash, as Python's hash() of a str, would give each run another name).
    assert [device_name("p" * n) for n in (12, 13, 15)] == \
        ["pppppppppppp-vx", "pppppppppc3ffvx", "pppppppppef73vx"]
    assert device_name("fabric-uplink-1") == "fabric-up950bvx"
    for n in range(1, 16):
        assert len(device_name("p" * n).encode()) <= 15


# --- MTU ----------------------------------------------------------------------


def test_overhead_is_50_over_ipv4_and_70_over_ipv6():
    assert overhead("198.19.0.1") == 50
    assert overhead("fd00::1") == 70


def test_the_carried_mtu_is_the_underlays_less_the_overhead():
    assert carried_mtu(1500, "198.19.0.1") == 1450
    assert carried_mtu(1500, "fd00::1") == 1430
    assert carried_mtu(9000, "198.19.0.1") == 8950


def test_ports_without_mtu_take_the_tunnels():
    mtus = segment_mtus([PortMtu("c1", None), PortMtu("vx0", None, carried=1450), PortMtu("c2", 1400)])
    assert mtus == [1450, 1450, 1400]


def test_the_narrowest_tunnel_sets_the_default():
    mtus = segment_mtus([PortMtu("c1", None), PortMtu("vx4", None, carried=1450), PortMtu("vx6", None, carried=1430)])
    assert mtus == [1430, 1430, 1430]


def test_a_port_mtu_that_cannot_cross_a_tunnel_is_refused_naming_both():
    with pytest.raises(VxlanError) as e:
        segment_mtus([PortMtu("web0", 1500), PortMtu("vx0", None, carried=1450)])
    assert str(e.value) == "port web0: mtu 1500 cannot cross VXLAN port vx0, whose underlay carries at most 1450"


def test_a_vxlan_port_mtu_larger_than_its_underlay_carries_is_refused():
    with pytest.raises(VxlanError) as e:
        segment_mtus([PortMtu("vx0", 1500, carried=1450)])
    assert str(e.value) == "port vx0: mtu 1500 cannot cross its underlay, which carries at most 1450"


def test_a_vxlan_port_mtu_below_its_underlays_is_the_others_default():
    """Its TAP drops what is larger (tx_errors): ports without mtu must not send that."""
    mtus = segment_mtus([PortMtu("c1", None), PortMtu("vx0", 1400, carried=1450), PortMtu("c2", 1300)])
    assert mtus == [1400, 1400, 1300]


def test_a_port_mtu_over_a_vxlan_ports_own_mtu_is_refused_naming_both():
    with pytest.raises(VxlanError) as e:
        segment_mtus([PortMtu("web0", 1450), PortMtu("vx0", 1400, carried=1450)])
    assert str(e.value) == "port web0: mtu 1450 cannot cross VXLAN port vx0, whose mtu is 1400"


def test_a_trunk_vxlan_port_leaves_room_for_the_tag_it_sends():
    """A trunk sends the frames of its VLANs with an 802.1Q tag, inside the tunnel: 4 bytes the
    inner frame holds besides what a port's MTU counts. Without that room a full-size frame
    overflowed the underlay (fragmented over IPv4, lost over IPv6: TCP stalled)."""
    mtus = segment_mtus([PortMtu("c1", None), PortMtu("vx0", None, carried=1450, tagged=True), PortMtu("c2", 1400)])
    assert mtus == [1446, 1446, 1400]
    with pytest.raises(VxlanError) as e:
        segment_mtus([PortMtu("web0", 1450), PortMtu("vx0", None, carried=1450, tagged=True)])
    assert str(e.value) == ("port web0: mtu 1450 cannot cross VXLAN port vx0, whose underlay carries at most 1446 "
                            "behind the 802.1Q tag the port sends (a trunk, or a trunk's monitor port)")
    with pytest.raises(VxlanError) as e:
        segment_mtus([PortMtu("vx0", 1450, carried=1450, tagged=True)])
    assert str(e.value) == ("port vx0: mtu 1450 cannot cross its underlay, which carries at most 1446 "
                            "behind the 802.1Q tag the port sends (a trunk, or a trunk's monitor port)")
    assert segment_mtus([PortMtu("c1", None), PortMtu("vx0", 1400, carried=1450, tagged=True)]) == [1400, 1400]


def test_without_a_tunnel_mtus_are_as_configured_or_the_default():
    assert segment_mtus([PortMtu("a", None), PortMtu("b", 9000)]) == [1500, 9000]


# --- Remote hosts -------------------------------------------------------------


def test_remotes_diff_adds_and_removes_only_the_difference():
    assert remotes_diff(["198.19.0.2", "198.19.0.3"], ["198.19.0.3", "198.19.0.4"]) == (
        ["198.19.0.2"], ["198.19.0.4"])


def test_remotes_diff_ignores_spelling_and_duplicates():
    assert remotes_diff(["fd00::2"], ["fd00:0::0002", "fd00::2"]) == ([], [])
    assert remotes_diff([], ["198.19.0.2", "198.19.0.2"]) == ([], ["198.19.0.2"])


def test_remotes_diff_from_nothing_and_to_nothing():
    assert remotes_diff([], ["198.19.0.2"]) == ([], ["198.19.0.2"])
    assert remotes_diff(["198.19.0.2"], []) == (["198.19.0.2"], [])


# --- Tunnel against a fake netlink socket ---------------------------------------


class FakeMsg(dict):
    def get_attr(self, name):
        return self.get(name)


class FakeIPR:
    """Enough of pyroute2's IPRoute for Tunnel: links by name, the underlay u0 holding
    198.19.0.1 and fd00::1, and a VXLAN FDB."""

    def __init__(self):
        self.fdb_entries: list[tuple[str, str]] = []
        self.calls: list[tuple] = []
        self.links = {"u0": 2}
        self.u0_flags = IFF_UP | IFF_LOWER_UP

    def link_lookup(self, ifname):
        return [self.links[ifname]] if ifname in self.links else []

    def link(self, cmd, **kw):
        self.calls.append(("link", cmd, kw))
        if cmd == "add":
            self.links[kw["ifname"]] = 7
        if cmd == "get" and kw["index"] != 7:     # an underlay (u0 is 2), by the name it has now
            names = {index: name for name, index in self.links.items()}
            if kw["index"] not in names:
                raise NetlinkError(errno.ENODEV)
            return [FakeMsg(IFLA_IFNAME=names[kw["index"]], IFLA_MTU=1500, flags=self.u0_flags)]
        return []

    def get_addr(self, family):
        return [FakeMsg(index=2, flags=0, IFA_ADDRESS="198.19.0.1" if family == 2 else "fd00::1")]

    def route(self, cmd, dst, src):     # every remote host on u0's link
        return [FakeMsg(RTA_OIF=2)]

    def fdb(self, cmd, **kw):
        self.calls.append(("fdb", cmd, kw.get("lladdr"), kw.get("dst")))
        if cmd == "append":
            self.fdb_entries.append((kw["lladdr"], kw["dst"]))
        elif cmd == "del":
            self.fdb_entries.remove((kw["lladdr"], kw["dst"]))
        return []


def test_update_remotes_touches_only_the_hosts_that_changed():
    ipr = FakeIPR()
    t = vxlan.Tunnel(ipr, "vx0", 42, "198.19.0.1", ["198.19.0.2", "198.19.0.3"])
    t.create()
    assert ipr.fdb_entries == [(vxlan.ALL_ZEROS, "198.19.0.2"), (vxlan.ALL_ZEROS, "198.19.0.3")]
    ipr.calls.clear()
    assert t.update_remotes(["198.19.0.3", "198.19.0.4"]) == (["198.19.0.2"], ["198.19.0.4"])
    fdb_calls = [c for c in ipr.calls if c[0] == "fdb" and c[1] != "dump"]
    assert fdb_calls == [("fdb", "append", vxlan.ALL_ZEROS, "198.19.0.4"), ("fdb", "del", vxlan.ALL_ZEROS, "198.19.0.2")]
    assert t.remotes == ["198.19.0.3", "198.19.0.4"]


def test_a_remote_host_that_is_this_one_is_refused():
    """By another of its addresses than local (the config sees only local): the tunnel sent
    there came back on the VXLAN port, and the switch learned its own ports' MACs there."""
    ipr = FakeIPR()
    ipr.get_addr = lambda family: [FakeMsg(index=2, flags=0, IFA_ADDRESS="198.19.0.1"),
                                  FakeMsg(index=1, flags=0, IFA_ADDRESS="198.19.0.101")]
    with pytest.raises(VxlanError, match=r"remote 198.19.0.101 is this host's \(a device here holds it\)"):
        vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", ["198.19.0.2", "198.19.0.101"]).carried_mtu()
    assert vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", ["198.19.0.2"]).carried_mtu() == 1450


def test_a_gone_device_takes_remote_updates_for_when_it_is_made_again():
    ipr = FakeIPR()
    t = vxlan.Tunnel(ipr, "vx0", 42, "198.19.0.1", ["198.19.0.2"])
    t.create()
    del ipr.links["vx0-vx"]            # deleted with its underlay, and its FDB with it
    ipr.fdb_entries.clear()
    t.gone()
    ipr.calls.clear()
    assert t.update_remotes(["198.19.0.2", "198.19.0.3"]) == ([], [])
    assert ipr.calls == []             # no device to ask
    t.create()
    assert ipr.fdb_entries == [(vxlan.ALL_ZEROS, "198.19.0.2"), (vxlan.ALL_ZEROS, "198.19.0.3")]
    assert t.remotes == ["198.19.0.2", "198.19.0.3"]


def test_create_asks_for_the_configured_device():
    ipr = FakeIPR()
    vxlan.Tunnel(ipr, "vx0", 42, "fd00::1", [], dstport=8472).create()
    vxlan.Tunnel(ipr, "vx1", 43, "198.19.0.1", [], dev="u0").create()
    adds = [kw for kind, cmd, kw in ipr.calls if kind == "link" and cmd == "add"]
    assert adds == [
        {"ifname": "vx0-vx", "kind": "vxlan", "vxlan_id": 42, "vxlan_port": 8472,
         "vxlan_learning": 1, "vxlan_local6": "fd00::1"},          # no dev: not bound, routed
        {"ifname": "vx1-vx", "kind": "vxlan", "vxlan_id": 43, "vxlan_port": 4789,
         "vxlan_learning": 1, "vxlan_local": "198.19.0.1", "vxlan_link": 2},
    ]


def test_the_underlay_is_dev_or_the_device_holding_local():
    ipr = FakeIPR()
    assert vxlan.Tunnel(ipr, "vx0", 1, "fd00::1").underlay() == ("u0", 1500)
    assert vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", dev="u0").carried_mtu() == 1450
    with pytest.raises(VxlanError, match="no device holds the local address 198.19.0.9"):
        vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.9").underlay()
    with pytest.raises(VxlanError, match="underlay device eth9 does not exist"):
        vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", dev="eth9").underlay()


def test_the_local_address_must_be_this_hosts_also_with_dev():
    """Given dev, an address no device holds was taken: every frame the tunnel sent was a tx error."""
    with pytest.raises(VxlanError, match="no device holds the local address 198.19.0.9: it is not this host's"):
        vxlan.Tunnel(FakeIPR(), "vx0", 1, "198.19.0.9", dev="u0").underlay()


def test_a_point_to_point_address_is_the_hosts_by_ifa_local_not_its_peers():
    """`ip addr add 198.19.0.1 peer 198.19.0.2/32`: IFA_LOCAL is this host's, IFA_ADDRESS the peer's."""
    ipr = FakeIPR()
    ipr.get_addr = lambda family: [FakeMsg(index=2, flags=0, IFA_LOCAL="198.19.0.1", IFA_ADDRESS="198.19.0.2")]
    t = vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", ["198.19.0.2"])     # the peer: the other host
    assert t.underlay() == ("u0", 1500)
    assert t.underlay_fault() is None



def test_without_dev_a_route_through_a_narrower_device_or_with_its_own_mtu_bounds_the_tunnel():
    """The kernel sends by the routes to the remote hosts: their device (eth1, when local is on
    lo) or a route's own mtu bounds what the tunnel carries, not only the holder of local."""
    ipr = FakeIPR()
    ipr.route = lambda cmd, dst, src: [FakeMsg(RTA_OIF=2, RTA_METRICS=FakeMsg(RTAX_MTU=1400))]
    assert vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", ["198.19.0.2"]).underlay() == ("u0", 1400)
    assert vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", ["198.19.0.2"]).carried_mtu() == 1350
    assert vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", ["198.19.0.2"], dev="u0").underlay() == ("u0", 1500)

    def unreachable(cmd, dst, src):
        raise NetlinkError(errno.ENETUNREACH)
    ipr.route = unreachable         # no route now: the holder's alone
    assert vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", ["198.19.0.2"]).underlay() == ("u0", 1500)


def test_without_dev_the_narrowest_route_of_a_device_bounds_the_tunnel_and_its_device_is_followed():
    """Two remote hosts routed through u1 (local on u0), by routes of their own mtu: the
    narrower of the two bounds the tunnel, whichever comes last. The tunnel follows u1 (its
    link events are the tunnel's), and underlay_fault reads the MTU it now lets through. A
    routed device no narrower than the holder leaves the holder named."""
    ipr = FakeIPR()
    ipr.links["u1"] = 3
    mtus = {"198.19.0.2": 1400, "198.19.0.3": 1450}
    ipr.route = lambda cmd, dst, src: [FakeMsg(RTA_OIF=3, RTA_METRICS=FakeMsg(RTAX_MTU=mtus[dst]))]
    t = vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", ["198.19.0.2", "198.19.0.3"])
    assert t.underlay() == ("u1", 1400)
    assert t.underlay_fault() is None
    assert (t.underlay_index, t.underlay_mtu) == (2, 1400)
    assert t.underlies(3, "u1") and t.underlies(2, "u0")
    ipr.route = lambda cmd, dst, src: [FakeMsg(RTA_OIF=3)]          # u1 as wide as u0
    assert vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", ["198.19.0.2"]).underlay() == ("u0", 1500)


# --- The underlay's state -------------------------------------------------------


def test_a_tunnel_carries_while_its_underlay_is_up_and_holds_local():
    assert vxlan.underlay_fault("198.19.0.1", "u0", True, True) is None


def test_an_underlay_down_or_gone_is_said_before_a_local_address_it_lost_with_it():
    assert vxlan.underlay_fault("fd00::1", "u0", False, False) == "underlay device u0 is down"
    assert vxlan.underlay_fault("198.19.0.1", "u0", None, False) == "underlay device u0 is gone"
    assert vxlan.underlay_fault("198.19.0.1", "u0", True, False) == "no device holds the local address 198.19.0.1"
    assert vxlan.underlay_fault("198.19.0.1", None, None, False) == "no device holds the local address 198.19.0.1"


def test_the_tunnel_asks_the_kernel_for_its_underlays_state():
    ipr = FakeIPR()
    for dev in ("u0", None):         # dev, or the device holding local
        t = vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", dev=dev)
        ipr.u0_flags = IFF_UP | IFF_LOWER_UP
        assert t.underlay_fault() is None
        assert t.underlay_index == 2 and t.underlies(2, "u0")
        ipr.u0_flags = IFF_UP        # no carrier
        assert t.underlay_fault() == "underlay device u0 is down"
    ipr.u0_flags = IFF_UP | IFF_LOWER_UP
    ipr.link = lambda cmd, **kw: (_ for _ in ()).throw(NetlinkError(errno.ENODEV))   # u0 went meanwhile
    assert vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1").underlay_fault() == "no device holds the local address 198.19.0.1"
    assert vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", dev="u0").underlay_fault() == "underlay device u0 is gone"
    del ipr.link
    ipr.get_addr = lambda family: []
    assert vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1").underlay_fault() == "no device holds the local address 198.19.0.1"
    t = vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", dev="u0")
    del ipr.links["u0"]
    assert t.underlay_fault() == "underlay device u0 is gone"
    assert t.underlay_index is None and t.underlies(9, "u0") and not t.underlies(9, "u1")   # dev back, anew


def test_a_tunnel_given_dev_follows_the_device_it_is_bound_to_whatever_its_name():
    """The kernel's device is bound to dev's ifindex, and sends through it once renamed: the
    port went down ("underlay device u0 is gone") when u0 was renamed, and followed whatever
    device took the name u0 next."""
    ipr = FakeIPR()
    t = vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1", dev="u0")
    t.create()
    assert t.underlay_fault() is None
    ipr.links["foo"] = ipr.links.pop("u0")            # ip link set u0 name foo
    assert t.underlay_fault() is None
    assert (t.bound, t.underlay_index, t.underlay_name) == (2, 2, "foo")
    ipr.u0_flags = IFF_UP
    assert t.underlay_fault() == "underlay device foo is down"
    ipr.u0_flags = IFF_UP | IFF_LOWER_UP
    ipr.links["u0"] = 3                               # another device takes the name: not the underlay
    assert t.underlay_fault() is None and t.underlay_index == 2
    assert t.underlies(2, "foo") and not t.underlies(3, "u0")
    del ipr.links["foo"]                              # deleted, and the kernel's device with it
    assert t.underlay_fault() == "underlay device foo is gone"
    del ipr.links["vx0-vx"]
    t.gone()
    assert t.underlies(3, "u0")                       # the device named dev now: the next one's underlay
    assert t.underlay_fault() is None and t.underlay_index == 3
    t.create()
    assert t.bound == 3


def test_a_tunnel_carries_what_its_underlays_mtu_now_lets_through_whole():
    """The longest frame the tunnel carries follows its underlay's MTU as the kernel says now:
    it was the underlay's at the tunnel's making, for good."""
    mtu = {"now": 1500}
    for local, outer in (("198.19.0.1", 36), ("fd00::1", 56)):
        ipr = FakeIPR()
        get = ipr.link
        ipr.link = lambda cmd, get=get, **kw: [FakeMsg(m, IFLA_MTU=mtu["now"]) for m in get(cmd, **kw)]
        t = vxlan.Tunnel(ipr, "vx0", 1, local, dev="u0")
        assert t.carries() is None                  # no device yet
        mtu["now"] = 1500
        t.create()
        assert t.frame_max == 1500 - outer
        assert t.underlay_fault() is None and t.carries() == 1500 - outer
        mtu["now"] = 1400
        assert t.underlay_fault() is None and (t.underlay_mtu, t.carries()) == (1400, 1400 - outer)
        t.remove(said=False)
        assert t.carries() is None


def test_a_tunnel_without_dev_follows_the_device_holding_local_now():
    """Not bound: the kernel routes from local, whichever device holds it."""
    ipr = FakeIPR()
    ipr.links["u1"] = 3
    t = vxlan.Tunnel(ipr, "vx0", 1, "198.19.0.1")
    t.create()
    assert t.underlay_fault() is None and t.underlay_index == 2
    ipr.get_addr = lambda family: [FakeMsg(index=3, flags=0, IFA_ADDRESS="198.19.0.1")]    # local moved to u1
    assert t.underlay_fault() is None and (t.underlay_index, t.underlay_name) == (3, "u1")
    assert t.underlies(3, "u1") and not t.underlies(2, "u0")


def test_a_local_address_duplicate_address_detection_has_not_cleared_carries_nothing():
    """An IPv6 address is tentative for a second or more after it is added (duplicate address
    detection), and for good if that fails: the kernel sends nothing from it, and the port
    stayed up (forwarding into the tunnel) as long as a device held it."""
    assert vxlan.underlay_fault("fd00::1", "u0", True, True, dad="tentative") == \
        "the local address fd00::1 is tentative (duplicate address detection under way)"
    assert vxlan.underlay_fault("fd00::1", "u0", True, True, dad="failed") == \
        "the local address fd00::1 is another host's too (duplicate address detection failed)"
    assert vxlan.underlay_fault("fd00::1", "u0", False, True, dad="tentative") == "underlay device u0 is down"
    assert vxlan.dad_state(0) is None
    assert vxlan.dad_state(vxlan.IFA_F_TENTATIVE | vxlan.IFA_F_OPTIMISTIC) is None    # optimistic: usable
    assert vxlan.dad_state(vxlan.IFA_F_TENTATIVE) == "tentative"
    assert vxlan.dad_state(vxlan.IFA_F_TENTATIVE | vxlan.IFA_F_DADFAILED) == "failed"


def test_the_tunnel_reads_its_local_address_flags():
    ipr = FakeIPR()
    flags = {"IFA_FLAGS": None, "flags": vxlan.IFA_F_TENTATIVE}
    ipr.get_addr = lambda family: [FakeMsg(index=2, IFA_ADDRESS="fd00::1", **flags)]
    t = vxlan.Tunnel(ipr, "vx0", 1, "fd00::1")
    assert t.underlay_fault() == "the local address fd00::1 is tentative (duplicate address detection under way)"
    assert t.underlay_index == 2            # the device holding it all the same: its events count
    flags.update(IFA_FLAGS=vxlan.IFA_F_TENTATIVE | vxlan.IFA_F_DADFAILED)     # the 32-bit attribute, first
    assert t.underlay_fault().endswith("(duplicate address detection failed)")
    flags.update(IFA_FLAGS=0, flags=0)
    assert t.underlay_fault() is None
    flags.update(IFA_FLAGS=None, flags=vxlan.IFA_F_TENTATIVE)
    assert t.underlay() == ("u0", 1500)     # a tunnel is still made over a tentative local (its port waits, down)


# --- Config -------------------------------------------------------------------

SWITCH = "switch:\n  name: sw0\nports:\n"


def errors_of(ports: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(SWITCH + textwrap.indent(textwrap.dedent(ports), "  "), "t.yaml")
    return info.value.errors


def test_a_vxlan_port_loads_with_defaults():
    cfg = loads(SWITCH + "  - {name: vx0, vxlan: {vni: 42, local: 198.19.0.1, remotes: [198.19.0.2]}}\n")
    v = cfg.ports[0].vxlan
    assert (v.vni, str(v.local), [str(r) for r in v.remotes], v.dstport, v.dev) == (
        42, "198.19.0.1", ["198.19.0.2"], 4789, None)
    assert v.overhead == 50
    assert not cfg.ports[0].mtu_given


def test_vxlan_is_mutually_exclusive_with_netns_and_remote():
    errors = errors_of("""\
        - {name: vx0, netns: a, vxlan: {vni: 1, local: 198.19.0.1}}
        - {name: vx1, remote: eth1, vxlan: {vni: 1, local: 198.19.0.1}}
        """)
    assert errors == ["t.yaml:4: ports[0].vxlan: vxlan and netns are mutually exclusive",
                      "t.yaml:5: ports[1].vxlan: vxlan and remote are mutually exclusive"]


def test_a_link_local_underlay_address_needs_the_device_it_is_on():
    """The kernel makes no VXLAN device from a link-local address without its device ("Local
    interface required for link-local local/remote addresses"): check passed it, and run failed
    with 'port vx0: cannot make VXLAN device vx0-vx: EINVAL: Invalid argument' (exit 1)."""
    errors = errors_of("""\
        - name: vx0
          vxlan: {vni: 1, local: "fe80::1", remotes: ["fe80::2"]}
        """)
    assert errors == ["t.yaml:5: ports[0].vxlan.local: fe80::1 is link-local: it needs vxlan.dev, the device "
                      "it is on (the kernel makes no VXLAN device from it without)"]
    cfg = loads(SWITCH + '  - {name: vx0, vxlan: {vni: 1, local: "fe80::1", remotes: ["fe80::2"], dev: u0}}\n')
    assert cfg.ports[0].vxlan.dev == "u0"
    # IPv4 has no such rule (169.254.0.0/16); a link-local remote host beside a local that is not the
    # kernel routes to (run here).
    loads(SWITCH + "  - {name: vx0, vxlan: {vni: 1, local: 169.254.0.1, remotes: [169.254.0.2]}}\n")
    loads(SWITCH + '  - {name: vx0, vxlan: {vni: 1, local: "fd00::1", remotes: ["fe80::2"]}}\n')


def test_vxlan_values_are_checked_where_they_are():
    errors = errors_of("""\
        - name: vx0
          vxlan:
            vni: 16777216
            local: 198.19.0.1/24
            dstport: 0
        - name: vx1
          vxlan: {vni: 1, local: "fd00::1", remotes: [198.19.0.2]}
        - name: vx2
          vxlan: {vni: 1, local: 198.19.0.1, remotes: [198.19.0.1]}
        - name: vx3
          vxlan: {vni: 1, local: 198.19.0.1, remotes: [198.19.0.2, 198.19.0.2], mode: l2}
        - name: vx4
          vxlan: {vni: 1, local: 239.1.1.1}
        """)
    assert errors == [
        "t.yaml:6: ports[0].vxlan.vni: must be at most 16777215",
        "t.yaml:7: ports[0].vxlan.local: an underlay address has no prefix length, as in 198.19.0.1",
        "t.yaml:8: ports[0].vxlan.dstport: must be at least 1",
        "t.yaml:10: ports[1].vxlan.remotes[0]: remote 198.19.0.2 is IPv4, local fd00::1 is IPv6",
        "t.yaml:12: ports[2].vxlan.remotes[0]: remote 198.19.0.1 is this host (local)",
        "t.yaml:14: ports[3].vxlan.remotes[1]: remote 198.19.0.2 is listed twice",
        "t.yaml:14: ports[3].vxlan.mode: unknown key",
        "t.yaml:16: ports[4].vxlan.local: 239.1.1.1 is not a unicast address",
    ]


def test_an_mtu_no_underlay_could_carry_is_a_located_error():
    errors = errors_of("""\
        - {name: c0, netns: a, mtu: 65500}
        - {name: vx0, mtu: 65470, vxlan: {vni: 1, local: "fd00::1"}}
        - {name: c1, netns: b, mtu: 9000}
        """)
    assert errors == [
        "t.yaml:4: ports[0].mtu: mtu 65500 cannot cross ports[1]'s IPv6 VXLAN (at most 65465)",
        "t.yaml:5: ports[1].mtu: mtu 65470 cannot cross this port's IPv6 VXLAN (at most 65465)",
    ]


def test_an_mtu_over_a_vxlan_ports_own_mtu_is_a_located_error_as_at_start():
    """The start refuses a port's mtu over a VXLAN port's own (segment_mtus): `check` said ok."""
    errors = errors_of("""\
        - {name: c0, netns: a, mtu: 1300}
        - {name: vx0, mtu: 1200, vxlan: {vni: 1, local: 198.19.0.1}}
        - {name: vx1, mtu: 1250, vxlan: {vni: 2, local: 198.19.0.1}}
        - {name: c1, netns: b}
        """)
    assert errors == [
        "t.yaml:4: ports[0].mtu: mtu 1300 cannot cross ports[1]'s VXLAN, whose mtu is 1200",
        "t.yaml:6: ports[2].mtu: mtu 1250 cannot cross ports[1]'s VXLAN, whose mtu is 1200",
    ]
    with pytest.raises(vxlan.VxlanError, match="port c0: mtu 1300 cannot cross VXLAN port vx0, whose mtu is 1200"):
        vxlan.segment_mtus([vxlan.PortMtu("c0", 1300), vxlan.PortMtu("vx0", 1200, 1450),
                            vxlan.PortMtu("vx1", 1250, 1450), vxlan.PortMtu("c1", None)])


def test_an_mtu_no_underlay_could_carry_behind_a_trunks_tag_is_a_located_error():
    errors = errors_of("""\
        - {name: c0, netns: a, mtu: 65484}
        - {name: vx0, trunk: [10], vxlan: {vni: 1, local: 198.19.0.1}}
        - {name: c1, netns: b, mtu: 65481}
        """)
    assert errors == ["t.yaml:4: ports[0].mtu: mtu 65484 cannot cross ports[1]'s IPv4 VXLAN trunk (at most 65481)"]


def test_an_mtu_no_underlay_could_carry_behind_a_trunks_tag_to_its_monitor_port_is_a_located_error():
    """A VXLAN monitor port of a trunk carries the trunk's tags, as a trunk VXLAN port does."""
    text = SWITCH + textwrap.indent(textwrap.dedent("""\
        - {name: c0, netns: a, mtu: 65484}
        - {name: up0, netns: b, trunk: [10], mtu: 65481}
        - {name: vx0, vxlan: {vni: 1, local: 198.19.0.1}}
        """), "  ") + "mirrors:\n  - {name: m, from: [up0], to: vx0}\n"
    with pytest.raises(ConfigError) as info:
        loads(text, "t.yaml")
    assert info.value.errors == [
        "t.yaml:4: ports[0].mtu: mtu 65484 cannot cross ports[2]'s IPv4 VXLAN trunk's monitor port (at most 65481)"]


def test_the_vxlan_device_name_cannot_clash_with_a_port():
    errors = errors_of("""\
        - {name: vx0, vxlan: {vni: 1, local: 198.19.0.1}}
        - {name: vx0-vx, netns: a}
        """)
    assert errors == ["t.yaml:4: ports[0].vxlan: its device 'vx0-vx' is the name of ports[1]; rename one of them"]


def test_a_port_cannot_attach_a_vxlan_device_as_its_remote():
    errors = errors_of("""\
        - {name: up0, remote: vx0-vx}
        - {name: vx0, vxlan: {vni: 1, local: 198.19.0.1}}
        """)
    assert errors == ["t.yaml:4: ports[0].remote: 'vx0-vx' is the VXLAN device of ports[1]"]



UNDERLAY_TAKEN = ("is the underlay of ports[1]'s VXLAN tunnel (vxlan.dev): {how}, the tunnel's packets too, "
                  "and the tunnel would carry nothing in (use remote_mode shared, or local with a mac)")


@pytest.mark.parametrize("mode, how", [
    ("promisc", "in promisc mode every frame arriving on it goes to the switch"),
    ("local", "in local mode without mac the port takes its MAC, and every frame for that MAC goes to the switch")])
def test_a_port_cannot_attach_a_vxlan_ports_underlay_in_a_mode_that_takes_the_tunnels_packets(mode, how):
    """Attached so, the underlay's every frame (promisc), or every frame for its MAC (local, the
    port taking that MAC), the VXLAN packets for this host too, went to the switch: both ports
    up, nothing said, and the tunnel carried nothing in (the remote hosts' UDP flooded on the
    segment as frames of the underlay instead)."""
    errors = errors_of(f"""\
        - {{name: up0, remote: eth1, remote_mode: {mode}}}
        - {{name: vx0, vxlan: {{vni: 1, local: 198.19.0.1, dev: eth1}}}}
        """)
    assert errors == ["t.yaml:4: ports[0].remote: 'eth1' " + UNDERLAY_TAKEN.format(how=how)]
    with pytest.raises(ConfigError) as info:     # also beside an error elsewhere in the port
        loads(SWITCH + f"  - {{name: up0, remote: eth1, remote_mode: {mode}, speed: fast}}\n"
                       "  - {name: vx0, vxlan: {vni: 1, local: 198.19.0.1, dev: eth1}}\n", "t.yaml")
    assert "t.yaml:4: ports[0].remote: 'eth1' " + UNDERLAY_TAKEN.format(how=how) in info.value.errors


def test_an_underlay_two_vxlan_ports_share_is_said_to_be_the_first_ones():
    errors = errors_of("""\
        - {name: up0, remote: eth1}
        - {name: vx0, vxlan: {vni: 1, local: 198.19.0.1, dev: eth1}}
        - {name: vx1, vxlan: {vni: 2, local: 198.19.0.1, dev: eth1}}
        """)
    assert errors == ["t.yaml:4: ports[0].remote: 'eth1' " + UNDERLAY_TAKEN.format(
        how="in promisc mode every frame arriving on it goes to the switch")]


@pytest.mark.parametrize("extra", ["remote_mode: shared", "remote_mode: local, mac: '02:00:00:00:00:01'"])
def test_a_port_may_attach_a_vxlan_ports_underlay_in_a_mode_that_leaves_the_host_its_own_unicast(extra):
    cfg = loads(SWITCH + f"  - {{name: up0, remote: eth1, {extra}}}\n"
                         "  - {name: vx0, vxlan: {vni: 1, local: 198.19.0.1, dev: eth1}}\n")
    assert [p.name for p in cfg.ports] == ["up0", "vx0"]

@pytest.mark.parametrize("underlay, port_mtu", [(1550, 1500), (9050, 9000)])
def test_beside_a_vxlan_port_a_remote_port_without_mtu_has_the_tunnels_set_on_its_iface(monkeypatch, underlay,
                                                                                          port_mtu):
    """A remote port without `mtu:` keeps its IFACE's MTU, but not in a VXLAN segment: there the
    tunnel decides it, and the switch sets it on IFACE (as given), also when it is 1500."""
    from tapswitch import ports

    class FakeTunnel:
        def carried_mtu(self):
            return carried_mtu(underlay, "198.19.0.1")

    monkeypatch.setattr(ports, "IPRoute", lambda: __import__("contextlib").nullcontext())
    monkeypatch.setattr(ports, "_tunnel", lambda ipr, c: FakeTunnel())
    cfg = loads(SWITCH + "  - {name: vx0, vxlan: {vni: 42, local: 198.19.0.1}}\n"
                         "  - {name: up0, remote: eth1}\n")
    vx, up = ports.plan(cfg.ports)
    assert (vx.mtu, vx.mtu_given, vx.remote) == (port_mtu, True, "vx0-vx")
    assert (up.mtu, up.mtu_given, ports.sets_remote_mtu(up)) == (port_mtu, True, True)
    assert not ports.sets_remote_mtu(loads(SWITCH + "  - {name: up0, remote: eth1}\n").ports[0])


def test_beside_a_trunk_vxlan_port_every_port_without_mtu_leaves_room_for_its_tag(monkeypatch):
    from tapswitch import ports

    class FakeTunnel:
        def carried_mtu(self):
            return carried_mtu(1500, "fd00::1")

    monkeypatch.setattr(ports, "IPRoute", lambda: __import__("contextlib").nullcontext())
    monkeypatch.setattr(ports, "_tunnel", lambda ipr, c: FakeTunnel())
    cfg = loads(SWITCH + "  - {name: vx0, trunk: [10], vlan: 1, vxlan: {vni: 42, local: 'fd00::1'}}\n"
                         "  - {name: c0, netns: a, vlan: 10}\n")
    vx, c0 = ports.plan(cfg.ports)
    assert (vx.mtu, c0.mtu) == (1426, 1426)


def test_a_trunk_and_the_monitor_port_of_a_mirror_of_a_trunk_send_tagged_frames():
    """A mirror's copy is the frame as its source had it: a trunk's keeps its 802.1Q tag, so a VXLAN
    monitor port of a trunk needs the tag's room like a trunk VXLAN port. (It had none: a full-size
    tagged copy overflowed the underlay.)"""
    mirrors = [(["up0", "web0"], "vx0"), (["web0"], "span0"), (["db0"], "vx1")]
    assert sends_tagged({"up0"}, mirrors) == {"up0", "vx0"}
    assert sends_tagged(set(), mirrors) == set()


def test_the_longest_frame_a_tunnel_carries_whole_counts_its_tags():
    """What the underlay carries of a frame, its Ethernet header and tags included: an untagged
    frame at the port's MTU fits, a tag more does not (ts_port.frame_max drops it, a tx_error)."""
    assert vxlan.frame_max(1500, "198.19.0.1") == 1464 == carried_mtu(1500, "198.19.0.1") + 14
    assert vxlan.frame_max(1500, "fd00:f::1") == 1444
    assert vxlan.frame_max(9000, "198.19.0.1") == 8964

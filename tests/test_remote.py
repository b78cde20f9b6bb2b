"""remote and tc, without root: the rules each mode needs, their diff, and the netlink bytes we send."""

import struct
import types

import pytest

from tapswitch import remote, tc
from tapswitch.remote import BROADCAST, IPV6_MULTICAST, MULTICAST, TX, Rule, diff, iface_flags, rules_for
from tapswitch.tc import DeviceState, Filter, MacMatch

PORT_MAC = "02:54:53:00:00:01"

# --- iproute2's requests, for comparison ------------------------------------
#
# Captured on this project's build machine (iproute2 6.x, kernel without
# flower: the flower requests fail with "TC classifier not found", but are
# sent first), in a scratch namespace:
#
#   ip netns add ts-cap
#   ip -n ts-cap link add v0 type veth peer name v1     # v1 is ifindex 2, v0 ifindex 3
#   ip -n ts-cap link set v0 up && tc -n ts-cap qdisc add dev v0 clsact
#   C=7461707377697463680109000005dc                    # DeviceState(up, clsact_added, mtu 1500).cookie()
#   ip netns exec ts-cap strace -f -e trace=sendmsg -e write=3 -xx -s 4096 \
#       tc filter add dev v0 ingress <ARGS> cookie $C
#
# with <ARGS> as in each comment below, the hex dump of the one sendmsg()
# buffer pasted as is. Bytes 8..15 (sequence number, port id) differ from run
# to run and are not compared.
IFINDEX_V0, IFINDEX_V1 = 3, 2
COOKIE = bytes.fromhex("7461707377697463680109000005dc")

IPROUTE2 = {
    # protocol all prio 49409 handle ::1 u32 match ether dst 02:00:00:00:00:01 action mirred egress redirect dev v1
    ("u32", 0xC101, MacMatch("02:00:00:00:00:01"), "redirect"):
        "b00000002c000506e7fe066b00000000000000000300000001000000f2ffffff000301c10800010075333200840002004c0007"
        "00480001000b0001006d69727265640000240002802000020000000000000000000400000000000000000000000100000002"
        "000000130006007461707377697463680109000005dc0034000500010002000000000000000000000000000000ffff000002"
        "00f0ffffff00000000ffffffff00000001f4ffffff00000000",
    # protocol all prio 49413 handle ::1 u32 match u32 0 0 action mirred egress redirect dev v1
    ("u32", 0xC105, None, "redirect"):
        "a00000002c000506e7fe066b00000000000000000300000001000000f2ffffff000305c10800010075333200740002004c0007"
        "00480001000b0001006d69727265640000240002802000020000000000000000000400000000000000000000000100000002"
        "000000130006007461707377697463680109000005dc0024000500010001000000000000000000000000000000000000000000"
        "0000000000000000",
    # protocol all prio 49411 handle ::1 u32 match u16 0x3333 0xffff at -14 action mirred egress mirror dev v1
    ("u32", 0xC103, IPV6_MULTICAST, "mirror"):
        "a00000002c000506e7fe066b00000000000000000300000001000000f2ffffff000303c10800010075333200740002004c0007"
        "00480001000b0001006d69727265640000240002802000020000000000000000000300000000000000000000000200000002"
        "000000130006007461707377697463680109000005dc0024000500010001000000000000000000000000000000ffff000033"
        "33f0ffffff00000000",
    # protocol all prio 49412 handle ::1 u32 match u8 0x01 0x01 at -14 action mirred egress mirror dev v1
    ("u32", 0xC104, MULTICAST, "mirror"):
        "a00000002c000506e7fe066b00000000000000000300000001000000f2ffffff000304c10800010075333200740002004c0007"
        "00480001000b0001006d69727265640000240002802000020000000000000000000300000000000000000000000200000002"
        "000000130006007461707377697463680109000005dc0024000500010001000000000000000000000000000000010000000100"
        "f0ffffff00000000",
    # protocol all prio 49409 handle 1 flower dst_mac 02:00:00:00:00:01 action mirred egress redirect dev v1
    ("flower", 0xC101, MacMatch("02:00:00:00:00:01"), "redirect"):
        "a00000002c000506e7fe066b00000000000000000300000001000000f2ffffff000301c10b000100666c6f7765720000700002"
        "000a00040002000000000100000a000500ffffffffffff00004c000300480001000b0001006d697272656400002400028020"
        "00020000000000000000000400000000000000000000000100000002000000130006007461707377697463680109000005dc"
        "000800160000000000",
    # protocol all prio 49412 handle 1 flower dst_mac 01:00:00:00:00:00/01:00:00:00:00:00
    #     action mirred egress mirror dev v1
    ("flower", 0xC104, MULTICAST, "mirror"):
        "a00000002c000506e7fe066b00000000000000000300000001000000f2ffffff000304c10b000100666c6f7765720000700002"
        "000a00040001000000000000000a00050001000000000000004c000300480001000b0001006d697272656400002400028020"
        "00020000000000000000000300000000000000000000000200000002000000130006007461707377697463680109000005dc"
        "000800160000000000",
    # protocol all prio 49413 handle 1 flower action mirred egress redirect dev v1
    ("flower", 0xC105, None, "redirect"):
        "880000002c000506e7fe066b00000000000000000300000001000000f2ffffff000305c10b000100666c6f7765720000580002"
        "004c000300480001000b0001006d69727265640000240002802000020000000000000000000400000000000000000000000100"
        "000002000000130006007461707377697463680109000005dc000800160000000000",
}

# One dump from the same namespace after the first u32 command above (pyroute2
# get_filters(index=3, parent=INGRESS), raw bytes of each message): the
# priority's header line, its hash table 800:, and the filter 800::1.
DUMP = {
    "header": "340000002c000200ff0000006b440000000000000300000000000000f2ffffff000301c1080001007533320008000b"
              "0000000000",
    "table": "400000002c000200ff0000006b440000000000000300000000000080f2ffffff000301c1080001007533320008000b"
             "00000000000c0002000800040001000000",
    "filter": "380100002c000200ff0000006b440000000000000300000001000080f2ffffff000301c1080001007533320008000b"
              "00000000000401020034000500010002000000000000000000000000000000ffff00000200f0ffffff00000000ffffff"
              "ff00000001f4ffffff00000000080002000000008008000b0008000000bc000700b80001000b0001006d69727265640000"
              "4400040014000100000000000000000000000000000000001400070000000000000000000000000000000000180003000000"
              "000000000000000000000000000000000000130006007461707377697463680109000005dc0008000a000000000048000200"
              "2000020001000000000000000400000001000000010000000100000002000000240001003001000000000000300100000000"
              "000000000000000000000000000000000000",
}


def encoded(msg) -> bytes:
    msg.encode()
    return bytes(msg.data[:msg["header"]["length"]])


def same_request(ours: bytes, theirs: bytes) -> None:
    """Equal but for the sequence number and port id (bytes 8..15)."""
    assert ours[:8].hex() == theirs[:8].hex()
    assert ours[16:].hex() == theirs[16:].hex()


# --- rules_for ---------------------------------------------------------------


def names(rules):
    return [r.name for r in rules]


@pytest.mark.parametrize("mode", remote.MODES)
def test_every_mode_sends_what_the_switch_writes_out_through_iface(mode):
    rules = rules_for(mode, PORT_MAC, allmulti=False, shared_macs=["02:00:00:00:00:0a"])
    assert rules[0] == TX
    assert TX == Rule("TX", "tap", None, "redirect", "remote", remote.PRIO_TX)


def test_promisc_steals_everything():
    rules = rules_for("promisc", PORT_MAC, allmulti=True)
    assert names(rules) == ["TX", "PROMISC"]
    assert rules[1] == Rule("PROMISC", "remote", None, "redirect", "tap", remote.PRIO_PROMISC)


def test_local_steals_the_port_mac_and_mirrors_broadcast_and_ipv6_multicast():
    rules = rules_for("local", "02:54:53:00:00:01", allmulti=False)
    assert names(rules) == ["TX", "BROADCAST", "LOCAL_MAC", "BROADCASTV6"]
    by = {r.name: r for r in rules}
    assert by["LOCAL_MAC"] == Rule("LOCAL_MAC", "remote", MacMatch(PORT_MAC), "redirect", "tap",
                                   remote.PRIO_UNICAST)
    assert (by["BROADCAST"].match, by["BROADCAST"].action) == (BROADCAST, "mirror")
    assert (by["BROADCASTV6"].match, by["BROADCASTV6"].action) == (IPV6_MULTICAST, "mirror")


def test_local_allmulti_adds_a_multicast_mirror():
    rules = rules_for("local", PORT_MAC, allmulti=True)
    assert names(rules) == ["TX", "BROADCAST", "LOCAL_MAC", "BROADCASTV6", "ALLMULTI"]
    assert rules[-1].match == MULTICAST and rules[-1].action == "mirror"


def test_local_needs_a_mac():
    with pytest.raises(ValueError, match="^local mode needs the port's MAC$"):
        rules_for("local", None, allmulti=False)


def test_shared_steals_each_listed_mac_and_mirrors_broadcast_and_multicast():
    rules = rules_for("shared", None, allmulti=False,
                      shared_macs=["02:00:00:00:00:0B", "02:00:00:00:00:0a", "02:00:00:00:00:0b"])
    assert names(rules) == ["TX", "BROADCAST", "SHARED_MAC", "SHARED_MAC", "ALLMULTI"]
    assert [r.match.dst for r in rules if r.name == "SHARED_MAC"] == ["02:00:00:00:00:0a", "02:00:00:00:00:0b"]
    assert all(r.action == "redirect" and r.prio == remote.PRIO_UNICAST for r in rules if r.name == "SHARED_MAC")
    assert [r.action for r in rules if r.name in ("BROADCAST", "ALLMULTI")] == ["mirror", "mirror"]


def test_shared_ignores_group_addresses_in_the_mac_list():
    rules = rules_for("shared", None, allmulti=False, shared_macs=["01:00:5e:00:00:01", "33:33:00:00:00:01"])
    assert "SHARED_MAC" not in names(rules)


def test_rules_come_in_priority_order_broadcast_before_multicast():
    for mode in remote.MODES:
        rules = rules_for(mode, PORT_MAC, allmulti=True, shared_macs=["02:00:00:00:00:0a"])
        prios = [r.prio for r in rules]
        assert prios == sorted(prios)
        assert all(tc.PRIO_FIRST <= p <= tc.PRIO_LAST for p in prios)
    assert remote.PRIO_BROADCAST < remote.PRIO_BROADCASTV6 < remote.PRIO_ALLMULTI


@pytest.mark.parametrize("mode", remote.MODES)
@pytest.mark.parametrize("allmulti", [False, True])
@pytest.mark.parametrize("shared_macs", [[], ["02:00:00:00:00:0a"]])
def test_each_devices_first_rule_is_at_the_bottom_of_the_range(mode, allmulti, shared_macs):
    """The kernel gives a filter added without a priority the one below the lowest on its hook:
    with tapswitch's lowest at 0xC101 (local, shared) or 0xC105 (promisc) on IFACE, that was inside
    the range it reserves, a foreign filter that failed the next start. Each device's lowest rule,
    in every mode, is at PRIO_FIRST, and comes first in the list (installed first)."""
    rules = rules_for(mode, PORT_MAC, allmulti, shared_macs)
    for where in ("remote", "tap"):
        here = [r for r in rules if r.where == where]
        assert here[0].prio == min(r.prio for r in here) == tc.PRIO_FIRST


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="^unknown remote mode 'bridge' "):
        rules_for("bridge", PORT_MAC, allmulti=False)


# --- diff ----------------------------------------------------------------------


def test_diff_touches_only_the_macs_that_came_and_went():
    old = rules_for("shared", None, False, ["02:00:00:00:00:0a", "02:00:00:00:00:0b"])
    new = rules_for("shared", None, False, ["02:00:00:00:00:0b", "02:00:00:00:00:0c"])
    remove, add = diff(old, new)
    assert [r.match.dst for r in remove] == ["02:00:00:00:00:0a"]
    assert [r.match.dst for r in add] == ["02:00:00:00:00:0c"]


def test_diff_of_equal_rule_lists_is_empty():
    rules = rules_for("local", PORT_MAC, True)
    assert diff(rules, list(reversed(rules))) == ([], [])


def test_diff_from_nothing_adds_everything_in_order():
    rules = rules_for("local", PORT_MAC, True)
    assert diff([], rules) == ([], rules)
    assert diff(rules, []) == (rules, [])


# --- IFACE's flags --------------------------------------------------------------

IFACE_MAC = "02:aa:00:00:00:01"


def test_promisc_and_shared_modes_put_iface_in_promisc():
    assert iface_flags("promisc", None, IFACE_MAC, False) == {"promisc": True}
    # frames for the other ports' MACs must get past a real NIC's unicast filter
    assert iface_flags("shared", None, IFACE_MAC, False) == {"promisc": True}


def test_local_mode_keeps_promisc_as_it_is_when_the_port_has_iface_mac():
    assert iface_flags("local", IFACE_MAC.upper(), IFACE_MAC, False) == {}
    assert iface_flags("local", PORT_MAC, IFACE_MAC, False) == {"promisc": True}


def test_allmulti_applies_to_iface():
    assert iface_flags("local", IFACE_MAC, IFACE_MAC, True) == {"allmulti": True}


def test_only_the_flags_attaching_changed_are_given_back():
    was = DeviceState(up=True, promisc=True, allmulti=False, mtu=0)
    # promisc and up were on already: only allmulti is the switch's to give back
    assert remote.changed_flags(was, {"promisc": True, "allmulti": True, "up": True}) == {"allmulti"}
    assert remote.changed_flags(was, {"up": True}) == set()


# --- u32 keys: negative offsets --------------------------------------------------


def test_exact_mac_is_two_aligned_words_before_the_network_header():
    keys = tc.u32_keys(MacMatch("02:00:00:00:00:01"))
    assert keys == [tc.U32Key(0x0000FFFF, 0x00000200, -16), tc.U32Key(0xFFFFFFFF, 0x00000001, -12)]


@pytest.mark.parametrize("match, keys", [
    (BROADCAST, [(0x0000FFFF, 0x0000FFFF, -16), (0xFFFFFFFF, 0xFFFFFFFF, -12)]),
    (IPV6_MULTICAST, [(0x0000FFFF, 0x00003333, -16)]),
    (MULTICAST, [(0x00000100, 0x00000100, -16)]),
    (None, [(0, 0, 0)]),
    (MacMatch("00:00:00:00:00:00", "00:00:00:00:00:00"), [(0, 0, 0)]),
])
def test_masked_matches(match, keys):
    assert [(k.mask, k.val, k.off) for k in tc.u32_keys(match)] == keys


def test_negative_offsets_are_sent_as_signed_32_bit():
    sel = tc.u32_selector(tc.u32_keys(MacMatch("02:00:00:00:00:01")))
    assert len(sel) == 16 + 2 * 16
    first, second = sel[16:32], sel[32:48]
    assert struct.unpack("=i", first[8:12]) == (-16,)
    assert first[8:12] == struct.pack("=I", 0xFFFFFFF0)
    assert struct.unpack("=i", second[8:12]) == (-12,)
    assert first[:8] == bytes.fromhex("0000ffff" "00000200")  # mask and value in network order


def test_pyroute2_still_mangles_negative_u32_offsets():
    """Why tc.py encodes u32 itself (pyroute2 #859/#646). If this fails,
    pyroute2 got fixed: the workaround may go, the fixtures above stay."""
    from pyroute2.netlink.rtnl.tcmsg import cls_u32

    sel = cls_u32.options.u32_sel(data=bytearray(64))
    sel.setvalue({"keys": ["0x3333/0xffff+-14"]})
    sel.encode()
    offsets = [struct.unpack_from("=i", sel.data, 20 + 16 * i + 8)[0] for i in range(sel["nkeys"])]
    assert -14 not in offsets and -16 not in offsets


# --- requests compared with iproute2's --------------------------------------------


@pytest.mark.parametrize("key", list(IPROUTE2), ids=lambda k: f"{k[0]}-{k[1]:#x}-{k[3]}")
def test_filter_request_is_what_iproute2_sends(key):
    kind, prio, match, action = key
    f = Filter(IFINDEX_V0, prio, 1, match, action, IFINDEX_V1, kind)
    same_request(encoded(tc.filter_request(f, COOKIE)), bytes.fromhex(IPROUTE2[key]))


def test_flower_options_attributes():
    opts = tc.flower_options(MacMatch("02:00:00:00:00:01"), "redirect", 2, COOKIE)
    attrs = tc.parse_attrs(opts)
    assert [t for t, _ in attrs] == [tc.TCA_FLOWER_KEY_ETH_DST, tc.TCA_FLOWER_KEY_ETH_DST_MASK,
                                     tc.TCA_FLOWER_ACT, tc.TCA_FLOWER_FLAGS]
    assert attrs[0][1] == bytes.fromhex("020000000001") and attrs[1][1] == b"\xff" * 6
    (order, act), = tc.parse_attrs(attrs[2][1])
    act = dict(tc.parse_attrs(act))
    assert act[tc.TCA_ACT_KIND] == b"mirred\0" and act[tc.TCA_ACT_COOKIE] == COOKIE
    (parms_type, parms), = tc.parse_attrs(act[tc.TCA_ACT_OPTIONS])
    _idx, _capab, control, _ref, _bind, eaction, ifindex = struct.unpack("=IIiiiiI", parms)
    assert (control, eaction, ifindex) == (tc.TC_ACT_STOLEN, tc.TCA_EGRESS_REDIR, 2)


def test_probe_request_goes_to_a_chain_nothing_jumps_to():
    f = Filter(3, tc.PROBE_PRIO, 1, None, "mirror", 3, "flower")
    raw = encoded(tc.filter_request(f, tc.COOKIE_MAGIC, chain=tc.PROBE_CHAIN))
    attrs = dict(tc.parse_attrs(raw[36:]))
    assert struct.unpack("=I", attrs[tc.TCA_CHAIN]) == (tc.PROBE_CHAIN,)


def test_delete_request_names_the_kernel_handle():
    raw = encoded(tc.delete_request(3, 0xC101, "u32", 0x80000001))
    _f, index, handle, parent, info = struct.unpack_from("=B3xiIII", raw, 16)
    assert (index, handle, parent, info >> 16) == (3, 0x80000001, tc.INGRESS, 0xC101)


# --- reading dumps, recognising our filters ------------------------------------------


def test_dump_of_our_filter_is_ours_and_carries_the_state():
    f = tc.parse_filter(bytes.fromhex(DUMP["filter"]))
    assert (f.ifindex, f.prio, f.kind, f.handle, f.node, f.chain) == (3, 0xC101, "u32", 0x80000001, 1, 0)
    assert f.cookies == (COOKIE,)
    assert f.ours
    assert f.state == DeviceState(up=True, promisc=False, allmulti=False, mtu=1500, clsact_added=True)


def test_priority_header_and_hash_table_are_not_filters():
    for part in ("header", "table"):
        f = tc.parse_filter(bytes.fromhex(DUMP[part]))
        assert f.prio == 0xC101 and not f.is_entry and not f.ours


def test_a_filter_without_our_cookie_is_not_ours_even_in_our_range():
    f = tc.TcFilter(3, tc.INGRESS, 0xC101, "u32", 0x80000001, 0, (b"someone",))
    assert not f.ours
    f = tc.TcFilter(3, tc.INGRESS, 10, "u32", 0x80000001, 0, (COOKIE,))
    assert not f.ours


def test_device_state_travels_in_the_cookie():
    s = DeviceState(up=False, promisc=True, allmulti=True, mtu=9000, clsact_added=False)
    c = s.cookie()
    assert c.startswith(b"tapswitch") and len(c) <= 16  # TC_COOKIE_MAX_SIZE
    assert DeviceState.from_cookie(c) == s
    assert DeviceState.from_cookie(b"tapswitch") is None
    assert DeviceState.from_cookie(b"not ours at all") is None


def test_mac_match_has_one_spelling():
    assert MacMatch("02:AA:0:0:0:1") == MacMatch("02:aa:00:00:00:01")
    assert str(IPV6_MULTICAST) == "33:33:00:00:00:00/ff:ff:00:00:00:00"
    with pytest.raises(ValueError):
        MacMatch("02:aa:00:00:01")


def test_only_ethernet_interfaces_can_be_attached():
    assert remote.not_ethernet(remote.ARPHRD_ETHER) is None
    assert "loopback" in remote.not_ethernet(remote.ARPHRD_LOOPBACK)
    assert "not an Ethernet interface (link type 65534)" in remote.not_ethernet(65534)   # a layer-3 TUN


def test_a_shared_ports_full_priority_is_looked_through_for_foreign_filters_at_once():
    """check_foreign at a resync, on a shared port's 4095 rules in one priority: none of ours is
    taken for foreign, and a user's hash table or filter there still is. (The look gathers each
    priority's tables once; it took 4 s here when each filter looked through the whole dump:
    measured, not timed here, as the bench's figures are.)"""
    def f(handle, cookies=(COOKIE,), prio=tc.PRIO_FIRST + 1, kind="u32"):
        return tc.TcFilter(3, tc.INGRESS, prio, kind, handle, 0, cookies)
    ours = [f(0), f(0x800 << 20)] + [f(0x800 << 20 | node) for node in range(1, tc.U32_NODE_MAX + 1)]
    assert tc.foreign_filters(ours) == {}
    table = f(0x5 << 20, ())
    assert tc.foreign_filters(ours + [table]) == {tc.PRIO_FIRST + 1: table}
    bpf = f(1, (), tc.PRIO_FIRST + 2, "bpf")
    assert tc.foreign_filters([bpf] + ours) == {tc.PRIO_FIRST + 2: bpf}


def test_a_foreign_filters_handle_is_spelled_as_tc_filter_show_spells_it():
    def f(kind, handle):
        return tc.TcFilter(1, tc.INGRESS, tc.PRIO_FIRST + 1, kind, handle, 0, ())
    assert tc.handle_str(f("u32", 0x800 << 20 | 0x800)) == "800::800"
    assert tc.handle_str(f("u32", 0x5 << 20)) == "5:"           # a hash table
    assert tc.handle_str(f("bpf", 1)) == "0x1"


def test_iface_held_past_the_wait_is_looked_at_without_one_at_the_next_try(monkeypatch):
    """IFACE held by another switch's rules (a TAP that is there) is waited for a moment, as a dead
    run's TAP may linger (HELD_WAIT). A remote port whose IFACE came back so tries again every
    tick (Switch.maintain_remotes): held past the wait once, it is looked at without one, else
    each tick stopped the control loop that long. Free once, it is waited for again."""
    clock = types.SimpleNamespace(now=0.0, slept=0)
    clock.monotonic = lambda: clock.now

    def sleep(seconds):
        clock.now += seconds
        clock.slept += 1
    clock.sleep = sleep
    monkeypatch.setattr(remote, "time", clock)
    holder = {"tap": 9}
    monkeypatch.setattr(tc, "held_by", lambda ipr, dev, mine: holder["tap"])
    att = remote.RemoteAttachment(types.SimpleNamespace(get_links=lambda index: []), "up0", "nic0", "promisc",
                                  None, False, None, None)
    att._index = {"tap": 5, "remote": 6}

    def waits() -> int:
        before = clock.slept
        with pytest.raises(tc.TcError, match=r"^nic0 is attached by another running switch \(its tapswitch rules "
                                             r"send frames to ifindex 9\)$"):
            att._refuse_if_held()
        return clock.slept - before

    assert waits() > 0
    assert [waits(), waits()] == [0, 0]
    holder["tap"] = None
    att._refuse_if_held()
    holder["tap"] = 9
    assert waits() > 0

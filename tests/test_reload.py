"""reload.plan: what a new config changes, decided without root."""

import pwd

import pytest

from tapswitch import config, reload

BASE = """
switch: {name: sw0, queues: 2}
ports:
  - {name: a0, netns: a, addresses: [198.18.0.1/24]}
  - {name: b0, netns: b, addresses: [198.18.0.2/24]}
"""


def cfg(text: str = BASE):
    return config.loads(text, "t.yaml")


def test_same_config_changes_nothing():
    p = reload.plan(cfg(), cfg())
    assert (p.remove, p.add, p.update) == ((), (), ())
    assert p.unchanged == ("a0", "b0") and not p.switch_changed and not p.ports_changed


def test_added_port_is_added_and_the_others_are_untouched():
    new = cfg(BASE + "  - {name: c0, netns: c}\n")
    p = reload.plan(cfg(), new)
    assert [x.name for x in p.add] == ["c0"] and p.remove == () and p.unchanged == ("a0", "b0")
    assert p.summary()["added"] == ["c0"]
    assert p.ports_changed              # new workers start: refused after an in-place upgrade


def test_removed_port_is_removed():
    new = cfg("switch: {name: sw0, queues: 2}\nports:\n  - {name: a0, netns: a, addresses: [198.18.0.1/24]}\n")
    p = reload.plan(cfg(), new)
    assert p.remove == ("b0",) and p.add == () and p.summary()["removed"] == ["b0"]
    assert p.ports_changed


@pytest.mark.parametrize("change", ["addresses: [198.18.0.9/24]", "mtu: 9000", "mac: '02:00:00:00:00:09'",
                                    "ifname: eth7", "netns: z"])
def test_a_device_setting_change_makes_the_port_again(change):
    new = cfg(BASE.replace("{name: b0, netns: b, addresses: [198.18.0.2/24]}",
                           "{name: b0, netns: b, addresses: [198.18.0.2/24], %s}" % change)
              if "addresses" not in change and "netns" not in change else
              BASE.replace("addresses: [198.18.0.2/24]", change) if "addresses" in change else
              BASE.replace("netns: b,", change + ","))
    p = reload.plan(cfg(), new)
    assert p.remove == ("b0",) and [x.name for x in p.add] == ["b0"]
    assert p.summary()["remade"] == ["b0"] and p.unchanged == ("a0",)


def test_a_mac_that_writes_out_the_one_the_port_has_now_is_no_change_of_its_device():
    """`mac:` set to what `tapswitch ports` shows (to keep it across restarts): the port keeps its
    device. Another MAC, or a remote port's (there it decides IFACE's rules), makes it again."""
    new = cfg(BASE.replace("{name: b0, netns: b,", "{name: b0, mac: '02:00:00:00:00:0b', netns: b,"))
    p = reload.plan(cfg(), new, macs={"a0": "02:00:00:00:00:0a", "b0": "02:00:00:00:00:0b"})
    assert (p.update, p.remove, p.add) == (("b0",), (), ())
    p = reload.plan(cfg(), new, macs={"a0": "02:00:00:00:00:0a", "b0": "02:00:00:00:00:0c"})
    assert p.summary()["remade"] == ["b0"]
    assert reload.plan(cfg(), new).summary()["remade"] == ["b0"]
    back = reload.plan(new, cfg(), macs={"b0": "02:00:00:00:00:0b"})      # taken out: a random one, or the kept
    assert back.summary()["remade"] == ["b0"]
    remote = cfg(REMOTE % ("", "")), cfg(REMOTE % (", mac: '02:00:00:00:00:0b'", ""))
    assert reload.plan(*remote, macs={"up0": "02:00:00:00:00:0b"}).summary()["remade"] == ["up0"]


def test_speed_is_a_live_setting():
    new = cfg(BASE.replace("{name: b0, netns: b,", "{name: b0, speed: 100, netns: b,"))
    p = reload.plan(cfg(), new)
    assert p.update == ("b0",) and p.remove == () and p.add == ()


def test_aging_is_live():
    new = cfg(BASE.replace("queues: 2}", "queues: 2, mac_table: {aging: 60}}"))
    p = reload.plan(cfg(), new)
    assert p.switch_changed and not p.ports_changed


def test_busy_poll_is_live():
    new = cfg(BASE.replace("queues: 2}", "queues: 2, busy_poll_us: 0}"))
    p = reload.plan(cfg(), new)
    assert p.switch_changed and not p.ports_changed


def test_watchdog_is_live():
    new = cfg(BASE.replace("queues: 2}", "queues: 2, watchdog_ms: 0}"))
    p = reload.plan(cfg(), new)
    assert p.switch_changed and not p.ports_changed


@pytest.mark.parametrize("switch, key", [
    ("{name: sw1, queues: 2}", "switch.name"),
    ("{name: sw0, queues: 1}", "switch.queues"),
    ("{name: sw0, queues: 2, queue_len: 1000}", "switch.queue_len"),
    ("{name: sw0, queues: 2, mac_table: {size: 1024}}", "switch.mac_table.size"),
    ("{name: sw0, queues: 2, metrics: {listen: ''}}", "switch.metrics.listen"),
])
def test_settings_fixed_at_start_refuse_the_reload(switch, key):
    new = cfg(BASE.replace("{name: sw0, queues: 2}", switch))
    with pytest.raises(reload.ReloadRefused, match=key.replace(".", r"\.")):
        reload.plan(cfg(), new)


@pytest.mark.parametrize("user", ["nobody", pwd.getpwnam("nobody").pw_uid])
def test_the_workers_user_written_out_as_the_default_is_no_change(user):
    """`user: nobody` (or its uid) added to a config without `user`, as root: the workers run as
    nobody either way, so the reload goes on (it was refused: "cannot change while running")."""
    new = cfg(BASE.replace("queues: 2}", f"queues: 2, user: {user}}}"))
    assert reload.plan(cfg(), new, euid=0).remove == ()
    assert reload.plan(new, cfg(), euid=0).remove == ()


def test_another_user_for_the_workers_refuses_the_reload():
    new = cfg(BASE.replace("queues: 2}", "queues: 2, user: 0}"))
    with pytest.raises(reload.ReloadRefused, match=r"switch\.user: cannot change while running"):
        reload.plan(cfg(), new, euid=0)


VX = """
switch: {name: sw0}
ports:
  - {name: a0, netns: a}
  - {name: vx0, vxlan: {vni: 10, local: 198.18.9.1, remotes: [198.18.9.2]}}
"""


def test_vxlan_remotes_are_updated_in_place():
    p = reload.plan(cfg(VX), cfg(VX.replace("remotes: [198.18.9.2]", "remotes: [198.18.9.2, 198.18.9.3]")))
    assert p.update == ("vx0",) and p.remove == () and p.add == ()


@pytest.mark.parametrize("change", ["vni: 11", "local: 198.18.9.9", "dstport: 4790"])
def test_other_vxlan_changes_make_the_port_again(change):
    key = change.split(":")[0]
    old_value = {"vni": "vni: 10", "local": "local: 198.18.9.1", "dstport": None}[key]
    text = VX.replace(old_value, change) if old_value else VX.replace("vni: 10,", f"vni: 10, {change},")
    p = reload.plan(cfg(VX), cfg(text))
    assert p.remove == ("vx0",) and [x.name for x in p.add] == ["vx0"]


@pytest.mark.parametrize("change, kept", [
    ("remotes: [198.18.9.3]", {"vx0"}),                 # updated in place: its tunnel stays
    ("speed: 10, vxlan: {vni: 10, local: 198.18.9.1, remotes: [198.18.9.2]}", {"vx0"}),
    ("vxlan: {vni: 11, local: 198.18.9.1, remotes: [198.18.9.2]}", set()),     # a new device
])
def test_a_vxlan_port_whose_tunnel_a_reload_leaves_keeps_what_it_carries(change, kept):
    """Its underlay's MTU as the segment's MTUs were set (Switch.carried), not as it is now."""
    new = VX.replace("remotes: [198.18.9.2]", change) if change.startswith("remotes") else \
        VX.replace("vxlan: {vni: 10, local: 198.18.9.1, remotes: [198.18.9.2]}", change)
    assert reload.kept_tunnels(cfg(VX), cfg(new)) == kept
    assert reload.kept_tunnels(cfg(VX), cfg(new), gone={"vx0"}) == set()     # its TAP went: made anew


REMOTE = "switch: {name: sw0}\nports:\n  - {name: up0, remote: eth1%s}\n  - {name: h0%s}\n"


@pytest.mark.parametrize("before, after", [("", ", mtu: 1500"), (", mtu: 1500", "")])
def test_a_remote_port_that_gains_or_loses_its_mtu_is_made_again_even_at_1500(before, after):
    """With `mtu:` the switch sets IFACE's MTU; without, IFACE keeps its own and the port takes it:
    going from one to the other is a change of the device, whatever the number (1500 is the default)."""
    p = reload.plan(cfg(REMOTE % (before, "")), cfg(REMOTE % (after, "")))
    assert p.summary()["remade"] == ["up0"] and p.unchanged == ("h0",)


def test_a_port_without_remote_that_writes_out_the_default_mtu_is_not_made_again():
    p = reload.plan(cfg(REMOTE % ("", "")), cfg(REMOTE % ("", ", mtu: 1500")))
    assert p.remove == () and p.unchanged == ("up0", "h0")



def one_port(settings: str):
    return cfg("switch: {name: sw0}\nports:\n  - {name: p0%s}\n" % settings).ports[0]


@pytest.mark.parametrize("before, after", [
    ("", ", vlan: 1"),                                          # the default written out
    (", trunk: [10, 20]", ", trunk: [10, 20], vlan: null"),
    (", trunk: [10, 20]", ", trunk: [20, 10]"),                 # the same VLANs in another order
])
def test_vlans_written_otherwise_are_no_change_of_vlans(before, after):
    """A port forgets its MACs when its VLANs change (switch.apply), and only then."""
    assert not reload.vlans_changed(one_port(before), one_port(after))


@pytest.mark.parametrize("before, after", [
    ("", ", vlan: 2"),
    (", trunk: [10, 20]", ", trunk: [10]"),
    (", trunk: [10, 20]", ", trunk: [10, 20], vlan: 1"),        # a native VLAN now
    (", vlan: 10, trunk: [20]", ", trunk: [10, 20]"),           # the same VLANs, 10 tagged now
])
def test_another_vlan_untagged_or_tagged_is_a_change_of_vlans(before, after):
    assert reload.vlans_changed(one_port(before), one_port(after))

"""ports: what needs no root. Ports with real TAP devices are tested in tests/integration/."""

import gc
import os
import threading

from pyroute2 import IPRoute

from tapswitch import ports


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def made_in_a_pool_thread() -> IPRoute:
    """An IPRoute as create_all's threads make a remote's or a VXLAN device's: made and used
    there, then let go of, for another thread to use and close."""
    made = []

    def make():
        ipr = IPRoute()
        ipr.get_links(1)
        ports._let_go_here(ipr)
        made.append(ipr)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    return made[0]


def test_an_iproute_made_in_a_pool_thread_and_closed_by_another_leaves_nothing_open():
    """pyroute2 keeps an event loop (an epoll and a socket pair) for the thread that made an
    IPRoute, closed only by a close() in that thread: each remote port that a reload removed
    left three descriptors of the switch open, until the garbage collector came by."""
    gc.disable()         # the collector closes a forgotten loop, at a time of its choosing
    try:
        made_in_a_pool_thread().close()
        before = open_fds()
        for _ in range(5):
            ipr = made_in_a_pool_thread()
            ipr.get_links(1)        # the control loop's thread uses it (shared mode, detach)
            ipr.close()
        assert open_fds() == before
    finally:
        gc.enable()


def test_a_port_made_again_without_mac_gets_back_the_one_it_had_unless_another_port_has_it():
    """macs_kept: the MAC a port had (its host's, if the switch followed it) comes back when the
    port is made again without `mac:`; a port given `mac:` gets that one; a port new to the run
    gets none back (create gives it a random one); nor does a port whose old MAC another port
    has now, or is given by `mac:` in the same config."""
    from tapswitch import config
    new = config.loads("switch: {name: s}\nports:\n"
                       "  - {name: a}\n"
                       "  - {name: b, mac: '02:00:00:00:00:0b'}\n"
                       "  - {name: c}\n"
                       "  - {name: d}\n"
                       "  - {name: e}\n"
                       "  - {name: f, mac: '02:00:00:00:00:0e'}\n")
    had = {"a": "02:aa:00:00:00:01", "b": "02:bb:00:00:00:01", "d": "02:dd:00:00:00:01",
           "e": "02:00:00:00:00:0e", "gone": "02:ee:00:00:00:01"}
    assert ports.macs_kept(new.ports, had, in_use={"02:dd:00:00:00:01"}) == {"a": "02:aa:00:00:00:01"}
    assert ports.macs_kept(new.ports, had, in_use=set())["d"] == "02:dd:00:00:00:01"


def test_a_port_made_again_without_mac_does_not_get_back_one_static_on_another_port_in_its_vlan():
    """macs_kept: check refuses a port's `mac` as a static MAC on another port in a VLAN of
    the port's (its frames would go there, the entry never moved by learning); the MAC kept
    for a port without `mac:` is held to that too: a random one then. Static on the port
    itself, or on another port in a VLAN the port is not in, it comes back."""
    from tapswitch import config
    new = config.loads("switch: {name: s}\nports:\n"
                       "  - {name: a}\n"
                       "  - {name: b}\n"
                       "  - {name: c, vlan: 20}\n"
                       "  - {name: d}\n"
                       "static_macs:\n"
                       "  - {mac: '02:aa:00:00:00:01', port: b}\n"
                       "  - {mac: '02:cc:00:00:00:01', port: b}\n"
                       "  - {mac: '02:dd:00:00:00:01', port: d}\n")
    had = {"a": "02:aa:00:00:00:01", "c": "02:cc:00:00:00:01", "d": "02:dd:00:00:00:01"}
    remade = [p for p in new.ports if p.name in had]
    assert ports.macs_kept(remade, had, set(), new.static_mac_entries()) == {
        "c": "02:cc:00:00:00:01", "d": "02:dd:00:00:00:01"}
    # `fdb add`'s, as the switch gives them (mac, port, vlan)
    assert ports.macs_kept(remade, had, set(), [("02:dd:00:00:00:01", "b", 1)]) == {
        "a": "02:aa:00:00:00:01", "c": "02:cc:00:00:00:01"}


def test_two_ports_made_again_that_had_the_same_mac_do_not_both_get_it_back():
    """macs_kept: a port taken out of the config (its MAC kept), its host's MAC then set on
    another port's TAP (the container moved there, the switch followed), and both made in one
    reload: both got that MAC, and the switch learned it on whichever sent last. The port that
    had it last (listed last in `had`) gets it; the other a random one (create's)."""
    from tapswitch import config
    new = config.loads("switch: {name: s}\nports:\n  - {name: a}\n  - {name: b}\n")
    had = {"a": "02:aa:00:00:00:01", "b": "02:aa:00:00:00:01"}
    assert ports.macs_kept(new.ports, had, set()) == {"b": "02:aa:00:00:00:01"}
    had = {"b": "02:aa:00:00:00:01", "a": "02:aa:00:00:00:01"}
    assert ports.macs_kept(new.ports, had, set()) == {"a": "02:aa:00:00:00:01"}

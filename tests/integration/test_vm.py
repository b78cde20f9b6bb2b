"""A VM on the switch: QEMU's own tap attached as a remote port, the guest pinging a container.

Topology, made fresh and removed after the test, even when it fails:

    ts<id>sw  (the switch's namespace)                       ts<id>c0 (a container)
      QEMU ── tap ts<id>qt (remote: , promisc) ── switch ── TAP ── eth0 198.18.9.1/24, fd00::9:1/64
      guest eth0 198.18.9.2/24, fd00::9:2/64 (virtio-net)

The guest (tests/integration/vm.py: Debian's cloud kernel, busybox) pings
the container, prints PING-OK on its serial console, then waits for a word
over TCP from the container before it powers off.
"""

import sys
import time

import pytest

from tests.integration import helpers, vm

GUEST_MAC = "52:54:00:54:53:02"
SCRIPT = """
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
ip addr add 198.18.9.2/24 dev eth0
ip addr add fd00::9:2/64 dev eth0
i=0
until ping -c 1 -W 1 198.18.9.1 >/dev/null 2>&1 || [ $i -ge 30 ]; do i=$((i + 1)); done
if ping -c 3 -W 2 198.18.9.1; then echo PING-OK; else echo PING-FAILED; fi
echo "GOT-$(timeout 30 nc -l -p 5000)"
"""


@pytest.fixture(scope="module")
def kernel():
    return vm.kernel()


@pytest.fixture
def guest(lab, kernel):
    """A guest whose tap QEMU makes in the switch's namespace; stopped after the test."""
    sw = lab.netns("sw", create=True)
    d = helpers.tmpdir()
    lab.dirs.append(d)
    g = vm.VM(kernel, vm.initramfs(f"{d}/initrd", kernel, SCRIPT), lab.name("qt"), GUEST_MAC, d, netns=sw)
    try:
        yield g
    finally:
        g.stop()


def wait_port(sw, name: str, state: str, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while {p["name"]: p["state"] for p in sw.cli_json("ports")}[name] != state:
        assert time.monotonic() < deadline, f"{name} not {state} within {within}s"
        time.sleep(0.05)


def test_a_vm_on_a_remote_port_pings_a_container(lab, guest):
    c0 = lab.netns("c0", create=True)
    guest.start()
    guest.wait_for_tap()            # QEMU made it, down (script=no); attaching brings it up
    ports = [{"name": lab.name("p0"), "netns": f"/run/netns/{c0}", "ifname": "eth0",
              "addresses": ["198.18.9.1/24", "fd00::9:1/64"]},
             {"name": lab.name("vm"), "remote": guest.tap, "remote_mode": "promisc"}]
    sw = lab.switch({"switch": {"name": lab.name("s"), "queues": 1}, "ports": ports}, netns=guest.netns)

    console = guest.wait_for("PING-OK", "PING-FAILED", timeout=60)
    assert "PING-OK" in console, console
    # Both ways, both families, through the switch: the guest was learned on the VM's port.
    assert helpers.ping(c0, "198.18.9.2")
    assert helpers.ping(c0, "fd00::9:2")
    fdb = {e["mac"]: e["port"] for e in sw.cli_json("fdb")}
    assert fdb[GUEST_MAC] == lab.name("vm")
    assert fdb[helpers.link_mac(c0, "eth0")] == lab.name("p0")

    helpers.nsexec(c0, sys.executable, "-c", "import socket; "
                   "socket.create_connection(('198.18.9.2', 5000), timeout=5).sendall(b'bye\\n')")
    guest.wait_for("GOT-bye", timeout=15)
    assert guest.wait() == 0        # powered off
    # QEMU's tap went with it: the VM's port is down, the container's is not.
    wait_port(sw, lab.name("vm"), "down")
    assert {p["name"]: p["state"] for p in sw.cli_json("ports")}[lab.name("p0")] == "up"
    assert sw.stop() == 0

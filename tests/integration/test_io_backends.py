"""The fast path's I/O backends (fastpath.h, "I/O backends") forward real
TAP traffic: unicast, broadcast and a TCP stream of GSO super-frames, with
the backend forced through TAPSWITCH_IO and logged once as worker.backend;
where seccomp refuses io_uring, the workers run read/write; where a
queue's read(2) fails for a while (tests/reads_fail.py), the port forwards again."""

import configparser
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tapswitch import fastpath
from tapswitch._fastpath import lib
from tests.fastpath_io import BURST_BUFFERS_MAX, NO_IO_URING, backend_started, uring_available
from tests.integration import helpers
from tests.reads_fail import MARK as READS_FAIL_MARK, ReadFaults, is_tap_queue

READS_FAIL = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "reads_fail.py"))


@pytest.mark.parametrize("backend", ["readwrite", "uring", "uring-burst"])
def test_backend_forwards_pings_and_a_tcp_stream(lab, monkeypatch, backend):
    if backend.startswith("uring") and not uring_available():
        pytest.skip("io_uring refused by this kernel")
    monkeypatch.setenv("TAPSWITCH_IO", backend)
    ports = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0",
              "addresses": [f"198.18.0.{i + 1}/24"]} for i in range(3)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 2}, "ports": ports})
    assert [e["backend"] for e in sw.events("worker.backend")] == [backend]
    # Burst reads register their buffers (multishot reads, and read/write, have none).
    burst = backend_started(fastpath.io_backend({"TAPSWITCH_IO": backend})) == "uring-burst"
    assert [e["registered_buffers"] for e in sw.events("worker.backend")] == [burst]

    a, b, c = (p["netns"] for p in ports)
    assert helpers.ping(a, "198.18.0.2", count=3)        # ARP broadcast (flooded), then unicast
    assert helpers.ping(c, "198.18.0.1", count=3)
    server = subprocess.Popen(["ip", "netns", "exec", a, "iperf3", "-s", "-1", "-B", "198.18.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(server)
    helpers.wait_for("the iperf3 server listening", lambda: helpers.tcp_listening(a, helpers.IPERF3_PORT), within=10)
    r = helpers.nsexec(b, "iperf3", "-c", "198.18.0.1", "-t", "2", "-J", timeout=30)
    assert json.loads(r.stdout)["end"]["sum_received"]["bytes"] > 10 * 1024 * 1024
    ports_json = {p["name"]: p for p in sw.cli_json("ports")}
    assert ports_json[ports[0]["name"]]["counters"]["tx_packets"] > 0


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp filter names x86_64's syscall number")
@pytest.mark.parametrize("backend", ["", "uring"])
def test_io_uring_refused_by_seccomp_runs_read_write(lab, monkeypatch, backend):
    """As in a container under Docker's default seccomp profile: auto, and a forced io_uring,
    start their workers on read/write, say so, and forward."""
    monkeypatch.setenv("TAPSWITCH_IO", backend)
    ports = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0",
              "addresses": [f"198.18.0.{i + 1}/24"]} for i in range(2)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 2}, "ports": ports},
                    wrapper=(sys.executable, NO_IO_URING))
    assert [e["backend"] for e in sw.events("worker.backend")] == ["readwrite"]
    assert helpers.ping(ports[0]["netns"], "198.18.0.2", count=3)



@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp filter names x86_64's syscall number")
@pytest.mark.parametrize("backend", ["readwrite", "uring", "uring-burst"])
def test_a_queue_whose_reads_fail_for_a_while_forwards_again_and_counts_each_failure(lab, monkeypatch, backend):
    """A TAP queue's read failing with EIO (as ENOMEM, ENOBUFS or EFAULT might, for a while)
    took the queue out of epoll for good, the worker running on: the port was deaf until the
    switch restarted. Each failure counts one rx_errors, the queue rests a moment (doubling up
    to a second) and is listened to again; once the reads work, the two hosts talk again, the
    same worker forwarding. (A deleted TAP's queue, EBADFD, is still polled no more: the
    tests of port.gone.)"""
    if backend != "readwrite":
        pytest.skip("io_uring's reads are no read(2): a seccomp filter cannot fail them, nor could this test")
    monkeypatch.setenv("TAPSWITCH_IO", backend)
    d = helpers.tmpdir()
    lab.dirs.append(d)
    where = os.path.join(d, "listeners.sock")
    with open(os.path.join(d, "reads-fail"), "w") as f:
        f.write(where)
    monkeypatch.setenv(READS_FAIL_MARK, f.name)
    faults = ReadFaults(is_tap_queue)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(where)
    server.listen()
    server.settimeout(0.05)
    over = threading.Event()

    def take_listeners():               # each worker's, as it starts (tests/reads_fail.py)
        while not over.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                _msg, fds, _flags, _addr = socket.recv_fds(conn, 16, 1)
                for fd in fds:
                    faults.add(fd)
    taker = threading.Thread(target=take_listeners, daemon=True)
    taker.start()
    try:
        ports = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0",
                  "addresses": [f"198.18.0.{i + 1}/24"]} for i in range(2)]
        sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1}, "ports": ports}, wrapper=READS_FAIL)
        a = ports[0]["netns"]
        assert helpers.ping(a, "198.18.0.2", count=2)
        [pid] = [e["pid"] for e in sw.events("worker.started")]

        faults.failing.set()
        assert not helpers.ping(a, "198.18.0.2", wait=1)
        helpers.wait_for("reads failed again and again", lambda: faults.failed >= 4)
        faults.failing.clear()

        helpers.wait_for("traffic again", lambda: helpers.ping(a, "198.18.0.2", wait=1), within=10)
        assert not helpers.exited(pid) and sw.events("worker.restarted") == [], sw.log()
        errors = sum(p["counters"]["rx_errors"] for p in sw.cli_json("ports"))
        assert errors == faults.failed, sw.log()
        assert sw.stop() == 0
    finally:
        faults.failing.clear()
        for sw in lab.switches:
            sw.stop()                   # before the listeners go: a read trapped then would fail
        over.set()
        taker.join()
        server.close()
        faults.close()


def test_refused_buffer_registry_runs_burst_reads_plain_and_forwards(lab):
    """Without CAP_IPC_LOCK and under a 1 MiB RLIMIT_MEMLOCK (as an unprivileged container may
    run: room for the rings, not for 2 MiB of buffers) the kernel will not pin the workers' burst
    buffers: they run burst reads with plain reads and writes, say so, and forward."""
    if backend_started(lib.TS_IO_URING_BURST) is None:
        pytest.skip("io_uring refused by this kernel")
    ports = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0",
              "addresses": [f"198.18.0.{i + 1}/24"]} for i in range(2)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 2}, "ports": ports},
                    wrapper=("setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock",
                             "prlimit", "--memlock=1048576:1048576"))
    said = sw.events("worker.backend")
    assert [(e["backend"], e["registered_buffers"]) for e in said] == [("uring-burst", False)]
    assert helpers.ping(ports[0]["netns"], "198.18.0.2", count=3)
    assert helpers.ping(ports[1]["netns"], "198.18.0.1", count=3)


def test_with_the_units_capabilities_a_worker_pins_its_buffers_in_its_share_of_the_limit(lab):
    """The systemd unit's LimitMEMLOCK is sized per queue (tests/test_shipping.py): twice a
    worker's buffers at most, for a reload's overlap. With the unit's capabilities (no
    CAP_IPC_LOCK, so the pinning counts) and one queue's share as the whole limit, the worker
    pins its buffers. (Set the share, not the unit's 128 MiB: raising a hard limit needs
    CAP_SYS_RESOURCE, which a test may not have.)"""
    if backend_started(lib.TS_IO_URING_BURST) is None:
        pytest.skip("io_uring refused by this kernel")
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str
    unit.read(os.path.join(os.path.dirname(__file__), "..", "..", "packaging", "tapswitch.service"))
    caps = ",".join("+" + c.lower().removeprefix("cap_") for c in unit["Service"]["CapabilityBoundingSet"].split())
    share = 2 * BURST_BUFFERS_MAX
    ports = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0",
              "addresses": [f"198.18.0.{i + 1}/24"]} for i in range(2)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1}, "ports": ports},
                    wrapper=("prlimit", f"--memlock={share}:{share}",
                             "setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all"))
    said = sw.events("worker.backend")
    assert [(e["backend"], e["registered_buffers"]) for e in said] == [("uring-burst", True)]
    assert helpers.ping(ports[0]["netns"], "198.18.0.2", count=3)
    # And with the unit's capabilities the switch can stop its workers (another user's processes).
    with open(f"/proc/{sw.proc.pid}/task/{sw.proc.pid}/children") as f:
        workers = [int(p) for p in f.read().split()]
    assert workers
    assert sw.stop() == 0
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{p}") for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in workers if os.path.exists(f"/proc/{p}")]


def test_unknown_backend_fails_the_start_and_leaves_nothing(lab, monkeypatch):
    """Workers that cannot start fail the switch's start: exit 1, their reason said, and no
    process (worker or other) outlives it, nor a port or a namespace."""
    monkeypatch.setenv("TAPSWITCH_IO", "bogus")
    mark = f"TAPSWITCH_TEST_RUN={lab.name('run')}"      # to find this run's processes, whatever their parent
    monkeypatch.setenv(*mark.split("=", 1))
    ports = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0",
              "addresses": [f"198.18.0.{i + 1}/24"]} for i in range(2)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 2}, "ports": ports}, start=False)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "TAPSWITCH_IO='bogus'" in r.stderr and "did not start" in r.stderr, r.stderr
    assert helpers.processes_with_env(mark) == []
    assert not any(helpers.link_exists(p["name"]) for p in ports)
    assert not {p["netns"] for p in ports} & set(helpers.netns_list())


def test_a_worker_that_cannot_start_says_why_in_the_switchs_json_log(lab, monkeypatch):
    """The worker's reason went to stderr as a plain line among the JSON lines, and the log's
    switch.start_failed (and the one-line reason) said only "worker 0 did not start (exit code 1)"."""
    monkeypatch.setenv("TAPSWITCH_IO", "bogus")
    ports = [{"name": lab.name("p0"), "netns": lab.name("c0"), "ifname": "eth0"}]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 2}, "ports": ports}, start=False)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    lines = (r.stdout + r.stderr).splitlines()
    reason = [line for line in lines if line.startswith("tapswitch:")]
    events = [json.loads(line) for line in lines if line not in reason]     # every other line is JSON
    failed = [e for e in events if e["event"] == "switch.start_failed"]
    assert len(failed) == 1 and "did not start: TAPSWITCH_IO='bogus'" in failed[0]["error"], failed
    assert len(reason) == 1 and "TAPSWITCH_IO='bogus'" in reason[0], reason


def test_tap_queues_carry_the_header_the_fast_path_parses(lab):
    """tap.py sets each queue's virtio-net header length; the fast path reads
    and writes TS_VNET_HDR_LEN bytes of it before every frame. Asked of real
    queues (TUNGETVNETHDRSZ), in a namespace of the test's own."""
    ns = lab.netns("vh", create=True)
    probe = ("import fcntl, struct\n"
             "from tapswitch import tap\n"
             f"fds = tap.open_queues({lab.name('vh')!r}, 2)\n"
             "print([struct.unpack('i', fcntl.ioctl(fd, 0x800454D7, bytes(4)))[0] for fd in fds])\n")
    r = helpers.nsexec(ns, sys.executable, "-c", probe, timeout=30)
    assert r.stdout.split("\n")[0] == str([lib.TS_VNET_HDR_LEN] * 2)
    assert lib.TS_VNET_HDR_LEN == 10        # struct virtio_net_hdr: no num_buffers to zero

"""The switch end to end: real TAP ports in real namespaces, driven through the CLI."""

import json
import os
import pty
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from tapswitch import control
from tests.integration import helpers


def containers(lab, n: int, queues: int = 2, **switch) -> dict:
    """A config with n containers (named namespaces the switch creates), 198.18.0.i and fd00::i."""
    ports = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0",
              "addresses": [f"198.18.0.{i + 1}/24", f"fd00::{i + 1}/64"]} for i in range(n)]
    return {"switch": {"name": lab.name("sw"), "queues": queues, **switch}, "ports": ports}


def test_four_containers_reach_every_pair_over_ipv4_and_ipv6(lab):
    cfg = containers(lab, 4, queues=2)
    lab.switch(cfg)
    failures = []
    for i, src in enumerate(cfg["ports"]):
        for j in range(4):
            if i == j:
                continue
            for addr in (f"198.18.0.{j + 1}", f"fd00::{j + 1}"):
                if not helpers.ping(src["netns"], addr):
                    failures.append(f"{src['netns']} -> {addr}")
    assert failures == []


def test_iperf3_tcp_between_two_containers(lab):
    cfg = containers(lab, 2, queues=1)
    lab.switch(cfg)
    a, b = cfg["ports"][0]["netns"], cfg["ports"][1]["netns"]
    server = subprocess.Popen(["ip", "netns", "exec", a, "iperf3", "-s", "-1", "-B", "198.18.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(server)
    helpers.wait_for("the iperf3 server listening", lambda: helpers.tcp_listening(a, helpers.IPERF3_PORT), within=10)
    r = helpers.nsexec(b, "iperf3", "-c", "198.18.0.1", "-t", "3", "-J", timeout=30)
    result = json.loads(r.stdout)
    received = result["end"]["sum_received"]["bytes"]
    # A TCP stream of several seconds crossed the switch (speed is the benchmark's job).
    assert received > 10 * 1024 * 1024


def test_fdb_shows_each_host_on_its_port(lab):
    cfg = containers(lab, 3, queues=2)
    sw = lab.switch(cfg)
    for j in (2, 3):
        assert helpers.ping(cfg["ports"][0]["netns"], f"198.18.0.{j}")
    fdb = sw.cli_json("fdb")
    by_mac = {e["mac"]: e for e in fdb}
    for port in cfg["ports"]:
        mac = helpers.link_mac(port["netns"], "eth0")
        assert by_mac[mac]["port"] == port["name"]
        assert by_mac[mac]["vlan"] == 1        # a port without vlan/trunk is in VLAN 1
        assert by_mac[mac]["static"] is False
        assert 0 <= by_mac[mac]["age"] <= 5
    assert set(fdb[0]) == {"mac", "vlan", "port", "age", "static"}


def test_fdb_flush_by_port(lab):
    # Namespaces without IPv6, so nothing relearns a flushed MAC behind the test's back.
    nss = [lab.netns(s, create=True) for s in ("a", "b")]
    for ns in nss:
        helpers.nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    ports = [{"name": lab.name(f"p{i}"), "netns": ns, "ifname": "eth0", "addresses": [f"198.18.0.{i + 1}/24"]}
             for i, ns in enumerate(nss)]
    sw = lab.switch({"switch": {"name": lab.name("sw")}, "ports": ports})
    assert helpers.ping(nss[0], "198.18.0.2")
    p0, p1 = ports[0]["name"], ports[1]["name"]
    assert {e["port"] for e in sw.cli_json("fdb")} == {p0, p1}
    assert sw.cli("fdb", "flush", "--port", p0).stdout.strip() == "flushed 1 entry"
    assert {e["port"] for e in sw.cli_json("fdb")} == {p1}
    assert sw.cli("fdb", "flush").stdout.strip() == "flushed 1 entry"
    assert sw.cli_json("fdb") == []


def test_ports_json_has_exactly_the_contract_keys(lab):
    cfg = containers(lab, 2, queues=2)
    cfg["ports"][0]["mac"] = "02:00:00:00:00:0a"
    cfg["ports"][0]["speed"] = 10000
    sw = lab.switch(cfg)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.0.2", count=3)
    ports = sw.cli_json("ports")
    assert [p["name"] for p in ports] == [p["name"] for p in cfg["ports"]]
    for p in ports:
        # DESIGN's keys, each queue's counters and why a reload could not make the port (the
        # contract extended, not renamed)
        assert set(p) == {"name", "state", "mac", "mtu", "speed", "remote", "queues", "counters", "queue_counters",
                          "error", "queues_down"}
        assert p["state"] == "up" and p["queues"] == 2 and p["mtu"] == 1500 and p["error"] is None
        assert p["queues_down"] == []       # every worker runs
        assert len(p["queue_counters"]) == 2 and set(p["queue_counters"][0]) == set(p["counters"]) - {"rx_missed"}
        assert p["counters"]["rx_packets"] >= 3 and p["counters"]["tx_packets"] >= 3
    assert ports[0]["mac"] == "02:00:00:00:00:0a" and ports[0]["speed"] == 10000
    # The port's MAC is the TAP's, seen from inside the container.
    assert helpers.link_mac(cfg["ports"][0]["netns"], "eth0") == "02:00:00:00:00:0a"
    human = sw.cli("ports").stdout
    assert "NAME" in human and cfg["ports"][0]["name"] in human
    assert len(human.splitlines()) == 1 + len(ports)     # no line of a queue down after the table


def test_a_switch_that_does_not_answer_gets_one_line_and_exit_1(lab):
    """A hung switch (stopped here) is the client's one-line reason, not a traceback; the switch,
    once it goes on, notes the client that gave up in one log line."""
    sw = lab.switch(containers(lab, 1, queues=1))
    os.kill(sw.proc.pid, signal.SIGSTOP)
    try:
        r = subprocess.run([sys.executable, "-m", "tapswitch", "ports", "-s", sw.socket],
                           capture_output=True, text=True, timeout=30)
    finally:
        os.kill(sw.proc.pid, signal.SIGCONT)
    assert r.returncode == 1 and r.stderr == f"tapswitch: no answer from the switch on {sw.socket} within 5 s\n", r
    helpers.wait_for("the switch's note of the client gone", lambda: sw.events("control.client_gone"))
    assert "Traceback" not in sw.log()
    assert sw.cli_json("ports")


def test_ports_and_fdb_into_a_closed_pipe_exit_quietly(lab):
    """`tapswitch ports | head -1` and the like: no traceback, the exit of a process killed by SIGPIPE."""
    sw = lab.switch(containers(lab, 2, queues=1))
    for argv in (["ports"], ["fdb"], ["ports", "--json"]):
        read, write = os.pipe()
        os.close(read)
        try:
            r = subprocess.run([sys.executable, "-m", "tapswitch", *argv, "-s", sw.socket],
                               stdout=write, stderr=subprocess.PIPE, text=True, timeout=30)
        finally:
            os.close(write)
        assert r.returncode == 128 + signal.SIGPIPE and r.stderr == "", (argv, r)



def test_client_output_that_cannot_be_written_is_one_line_and_exit_1(lab):
    """`tapswitch fdb > FILE` on a full disk: a traceback of the OSError (exit 1 all the same).
    One line saying why, and the command done all the same (a flush flushed)."""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.0.2")
    for argv in (["ports"], ["ports", "--json"], ["fdb"], ["fdb", "--json"], ["reload"], ["fdb", "flush"]):
        with open("/dev/full", "w") as full:
            r = subprocess.run([sys.executable, "-m", "tapswitch", *argv, "-s", sw.socket],
                               stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
        assert (r.returncode, r.stderr) == (1, "tapswitch: cannot write the output: No space left on device\n"), (argv, r)
    flushed = helpers.wait_for("the flush logged", lambda: sw.events("fdb.flushed"))
    assert len(flushed) == 1 and flushed[0]["entries"] >= 2       # the two containers' MACs, learned by the ping
    assert "Traceback" not in sw.log()


SERVED_WHILE_STOPPING = (sys.executable,
                         os.path.join(os.path.dirname(os.path.dirname(__file__)), "served_while_stopping.py"))


def test_a_request_served_while_the_switch_stops_is_refused_saying_so(lab):
    """A request that came just before a SIGTERM, its thread run once the stop had begun, was
    served from a switch half undone: `tapswitch fdb` printed an empty table, exit 0, as the
    stop had closed the ports meanwhile, and `tapswitch reload` waited for a reload that never
    came. Each is told the switch is stopping (exit 1)."""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg, wrapper=SERVED_WHILE_STOPPING)
    clients = {argv: subprocess.Popen([sys.executable, "-m", "tapswitch", *argv, "-s", sw.socket],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for argv in (("fdb", "--json"), ("ports",), ("reload",))}
    lab.procs.extend(clients.values())
    helpers.wait_for("the requests held", lambda: len(sw.events("test.request_held")) == len(clients), within=30)
    assert sw.stop() == 0
    for argv, client in clients.items():
        out, err = client.communicate(timeout=60)
        assert (client.returncode, out, err) == (1, "", "tapswitch: the switch is stopping\n"), argv
    assert "Traceback" not in sw.log()

def test_worker_killed_mid_ping_is_restarted_and_traffic_recovers(lab):
    cfg = containers(lab, 2, queues=2)
    sw = lab.switch(cfg)
    a = cfg["ports"][0]["netns"]
    pids = sw.worker_pids()
    assert len(pids) == 2
    before = sw.cli_json("ports")[0]["counters"]["rx_packets"]
    ping = subprocess.Popen(["ip", "netns", "exec", a, "ping", "-i", "0.05", "-c", "100", "-W", "1", "198.18.0.2"],
                            stdout=subprocess.PIPE, text=True)
    lab.procs.append(ping)
    time.sleep(1.0)
    os.kill(pids[0], signal.SIGKILL)
    helpers.wait_for("a new worker", lambda: set(sw.worker_pids()) - set(pids), every=0.02)
    out, _ = ping.communicate(timeout=30)
    received = int(out.split(" received")[0].split()[-1])
    # 100 pings at 50 ms: a restart within a second loses at most ~20 of them.
    assert received >= 80, out
    assert sw.events("worker.exited") and sw.events("worker.restarted")
    # The table and the counters survived the worker.
    assert sw.cli_json("ports")[0]["counters"]["rx_packets"] >= before + received
    assert any(e["port"] == cfg["ports"][0]["name"] for e in sw.cli_json("fdb"))


def test_sigterm_removes_every_device_namespace_and_process(lab):
    cfg = containers(lab, 3, queues=2)
    sw = lab.switch(cfg)
    workers = sw.worker_pids()
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.0.2")
    assert sw.stop(signal.SIGTERM) == 0
    left = helpers.netns_list() & {p["netns"] for p in cfg["ports"]}
    assert left == set()
    assert not any(helpers.link_exists(p["name"]) for p in cfg["ports"])
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)
    assert not os.path.exists(sw.socket)
    assert sw.events("switch.stopped")


def test_a_stop_ends_once_its_taps_are_gone_and_a_start_right_after_it_makes_them_again(lab):
    """A TAP goes with the last copy of its queues, and a worker killed with io_uring keeps
    copies in its ring a moment after it dies (a copy held here for half a second stands for
    them): the stop waits for the devices to go. It exited 0 with the TAP still there, and a
    start right after it (`systemctl restart`) failed: "a device named ... already exists"."""
    cfg = {"switch": {"name": lab.name("sw"), "queues": 2},
           "ports": [{"name": lab.name("p0")}, {"name": lab.name("p1")}]}
    sw = lab.switch(cfg)
    held = helpers.hold_queue(sw.proc.pid, lab.name("p1"))
    threading.Timer(0.5, os.close, (held,)).start()        # let go of it in half a second
    assert sw.stop() == 0
    assert not any(helpers.link_exists(p["name"]) for p in cfg["ports"]), sw.log()
    again = lab.switch(cfg)
    assert [p["name"] for p in again.cli_json("ports")] == [p["name"] for p in cfg["ports"]]
    assert again.stop() == 0


def test_sigint_is_a_clean_stop_too(lab):
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg)
    assert sw.stop(signal.SIGINT) == 0
    assert helpers.netns_list() & {p["netns"] for p in cfg["ports"]} == set()


@pytest.mark.parametrize("reader", ["pipe", "terminal"])
def test_a_log_reader_that_goes_stops_neither_start_reload_nor_stop(lab, reader):
    """`tapswitch run 2>&1 | head`, or a tee that ends: the log's pipe has no reader (EPIPE); the
    terminal `tapswitch run` runs in hangs up, an ssh session lost, and sends SIGHUP, a reload
    (EIO). The switch starts, reloads and stops all the same, and its stop leaves nothing. (Its
    first line that could not be written raised where it logged: it died half-started, or in
    the reload, and its stop, which logs too, ended before it had removed its namespaces, socket
    and state file.)"""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg, start=False)
    if reader == "pipe":
        read_fd, write_fd = os.pipe()
    else:
        read_fd, write_fd = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                            stdout=write_fd, stderr=write_fd, start_new_session=True)
    os.close(write_fd)
    try:
        assert os.read(read_fd, 100)         # it has begun to log: now its reader goes
        os.close(read_fd)
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"the switch ended ({proc.returncode}) as it started"
            try:
                if [p["state"] for p in control.request(sw.socket, "ports")] == ["up", "up"]:
                    break
            except control.ControlError:
                pass
            assert time.monotonic() < deadline, "the switch did not start"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGHUP)
        assert control.request(sw.socket, "reload")["ok"]
        assert helpers.ping(cfg["ports"][0]["netns"], "198.18.0.2")
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert helpers.netns_list() & {p["netns"] for p in cfg["ports"]} == set()
    assert not any(helpers.link_exists(p["name"]) for p in cfg["ports"])
    assert not os.path.exists(sw.socket) and not os.path.exists(sw.socket + ".state")


def test_bad_config_exits_2_and_creates_nothing(lab):
    cfg = containers(lab, 2)
    cfg["ports"][1]["mtu"] = "big"
    cfg["ports"][0]["colour"] = "blue"
    sw = lab.switch(cfg, start=False)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert f"{sw.config_path}:" in r.stderr and "ports[1].mtu" in r.stderr and "ports[0].colour" in r.stderr
    assert helpers.netns_list() & {p["netns"] for p in cfg["ports"]} == set()
    assert not any(helpers.link_exists(p["name"]) for p in cfg["ports"])


def test_name_clash_with_a_non_tap_device_exits_1_and_leaves_nothing(lab):
    cfg = containers(lab, 2)
    cfg["ports"][1] = {"name": cfg["ports"][1]["name"]}     # a TAP here, in the switch's namespace
    clash = cfg["ports"][1]["name"]
    helpers.sh("ip", "link", "add", clash, "type", "veth", "peer", "name", clash + "x")
    lab.links += [clash]
    sw = lab.switch(cfg, start=False)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"a device named {clash} already exists" in r.stderr
    reason = [line for line in r.stderr.splitlines() if line.startswith("tapswitch:")]
    assert len(reason) == 1
    # The first port was made before the clash was found: it is gone again, and so is its namespace.
    assert not helpers.link_exists(cfg["ports"][0]["name"])
    assert cfg["ports"][0]["netns"] not in helpers.netns_list()
    assert helpers.link_exists(clash)    # the user's device is untouched


def test_workers_start_while_the_ports_are_made(lab):
    """The worker processes are spawned before the first port is made (their interpreters
    start meanwhile) and are the very ones that then forward."""
    cfg = containers(lab, 3)
    sw = lab.switch(cfg)
    spawned = sw.events("worker.spawned")
    assert sorted(e["queue"] for e in spawned) == [0, 1]
    first_port = min(e["timestamp"] for e in sw.events("port.added"))
    assert all(e["timestamp"] < first_port for e in spawned)
    started = sw.events("worker.started")
    assert {(e["queue"], e["pid"]) for e in started} == {(e["queue"], e["pid"]) for e in spawned}
    assert all(e["ports"] == 3 for e in started)
    assert sorted(sw.worker_pids()) == sorted(e["pid"] for e in spawned)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.0.3")


def test_ifname_taken_in_the_namespace_exits_1_and_leaves_the_users_things(lab, monkeypatch):
    # A TAP is made in its namespace under its ifname: a device there with that name is refused.
    mark = f"TAPSWITCH_TEST_RUN={lab.name('run')}"      # finds this run's processes, whatever their parent
    monkeypatch.setenv(*mark.split("=", 1))
    cfg = containers(lab, 2)
    theirs = lab.netns("theirs", create=True)
    helpers.nsexec(theirs, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0x")
    cfg["ports"][1]["netns"] = theirs
    sw = lab.switch(cfg, start=False)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"port {cfg['ports'][1]['name']}: a device named eth0 already exists in namespace {theirs}" in r.stderr
    assert helpers.link_exists("eth0", theirs) and helpers.link_exists("eth0x", theirs)
    assert theirs in helpers.netns_list()                       # not the switch's to remove
    assert cfg["ports"][0]["netns"] not in helpers.netns_list()  # the one it made is gone
    # The workers were spawned before the ports: they went with the failed start.
    assert '"worker.spawned"' in r.stdout + r.stderr
    assert helpers.processes_with_env(mark) == []


def test_port_name_taken_in_their_namespace_exits_1_naming_both(lab):
    """Without ifname the TAP keeps the port's name; it is made beside the switch and moved into
    a namespace the switch did not make, where that name may be taken."""
    cfg = containers(lab, 2)
    theirs = lab.netns("theirs", create=True)
    name = cfg["ports"][1]["name"]
    helpers.nsexec(theirs, "ip", "link", "add", name, "type", "veth", "peer", "name", "x0")
    cfg["ports"][1]["netns"] = theirs
    del cfg["ports"][1]["ifname"]
    sw = lab.switch(cfg, start=False)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    assert f"tapswitch: port {name}: a device named {name} already exists in namespace {theirs}" in r.stderr, r.stderr
    assert helpers.link_exists(name, theirs) and not helpers.link_exists(name)
    assert cfg["ports"][0]["netns"] not in helpers.netns_list()


@pytest.mark.parametrize("what", ["a file", "a directory", "a fifo"])
def test_netns_path_that_is_no_namespace_exits_1_saying_so(lab, tmp_path, what):
    """A FIFO too: the look's open() waited for a writer, for good, and the start with it (a
    reload, the control loop)."""
    path = tmp_path / "ns"
    {"a file": lambda: path.write_text(""), "a directory": path.mkdir, "a fifo": lambda: os.mkfifo(path)}[what]()
    cfg = containers(lab, 2)
    cfg["ports"][1]["netns"] = str(path)
    sw = lab.switch(cfg, start=False)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    assert f"tapswitch: port {cfg['ports'][1]['name']}: {path} is not a network namespace" in r.stderr, r.stderr
    assert not helpers.link_exists(cfg["ports"][1]["name"])
    assert cfg["ports"][0]["netns"] not in helpers.netns_list()


HOLD_FAILS = (sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), "hold_fails.py"))


def test_out_of_descriptors_to_hold_a_namespace_it_made_exits_1_and_leaves_nothing(lab):
    """The switch keeps each namespace it makes open; when that open fails (EMFILE: the ports made
    at once have taken the rest), the namespace made goes again, unlisted, and the start says
    which port and namespace in one line."""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg, start=False)
    r = subprocess.run([*HOLD_FAILS, sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    reason = [line for line in r.stderr.splitlines() if line.startswith("tapswitch:")]
    assert len(reason) == 1 and re.fullmatch(r"tapswitch: port (\S+): cannot open network namespace (\S+): "
                                              r"Too many open files", reason[0]), r.stderr
    port, ns = re.fullmatch(r"tapswitch: port (\S+): cannot open network namespace (\S+): .*", reason[0]).groups()
    assert (port, ns) in {(p["name"], p["netns"]) for p in cfg["ports"]}
    assert "Traceback" not in r.stderr
    assert not any(helpers.link_exists(p["name"]) for p in cfg["ports"])
    assert not {p["netns"] for p in cfg["ports"]} & helpers.netns_list()
    assert not os.path.exists(sw.socket + ".state")       # nothing left for a next start to heal


@pytest.mark.parametrize("limit", [200, 60])
def test_out_of_file_descriptors_exits_1_with_one_line_and_leaves_nothing(lab, limit):
    """10 ports of 16 queues need 160 descriptors in the switch and 10 in each worker: a limit
    of 200 runs out late in the start, one of 60 while the TAPs are opened."""
    cfg = containers(lab, 10, queues=16)
    sw = lab.switch(cfg, start=False)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path], capture_output=True,
                       text=True, timeout=60, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
    assert r.returncode == 1, r
    reason = [line for line in r.stderr.splitlines() if line.startswith("tapswitch:")]
    assert len(reason) == 1 and ("out of file descriptors" in reason[0] or "Too many open files" in reason[0]), r.stderr
    assert "Traceback" not in r.stderr
    assert not any(helpers.link_exists(p["name"]) for p in cfg["ports"])
    assert not {p["netns"] for p in cfg["ports"]} & helpers.netns_list()


def test_containers_given_by_pid_and_by_path(lab):
    """Docker-style: a process's namespace by pid:N, and a bind-mounted namespace by path."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "300"])
    lab.procs.append(holder)
    time.sleep(0.2)
    ns_b = lab.netns("b", create=True)
    ports = [
        {"name": lab.name("pa"), "netns": f"pid:{holder.pid}", "ifname": "eth0", "addresses": ["198.18.1.1/24"]},
        {"name": lab.name("pb"), "netns": f"/run/netns/{ns_b}", "addresses": ["198.18.1.2/24"]},
    ]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1}, "ports": ports})
    r = helpers.sh("nsenter", "-t", holder.pid, "-n", "ping", "-c", "1", "-W", "2", "198.18.1.2", check=False)
    assert r.returncode == 0, r.stdout
    assert sw.stop() == 0
    # Namespaces the switch did not create are left alone.
    assert ns_b in helpers.netns_list()
    assert holder.poll() is None


def test_the_containers_example_runs_once_its_header_commands_have(lab):
    """config/containers.yaml, after the `ip netns add` its header gives (and a process of our
    own for the docker container's pid), names in it made unique: the header named the
    namespace the switch makes ("app") and not the one given by path, which must exist, so
    the example failed with "/run/netns/cache does not exist"."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "config", "containers.yaml")
    with open(path) as f:
        text = f.read()
    cfg = yaml.safe_load(text)
    names = {}                                   # the example's namespace names -> this test's

    def ours(name: str) -> str:
        return names.setdefault(name, lab.netns(f"n{len(names)}"))

    for name in re.findall(r"^#\s+ip netns add (\S+)", text, re.M):
        helpers.sh("ip", "netns", "add", ours(name))
    holder = subprocess.Popen(["unshare", "--net", "sleep", "300"])      # the container `db`
    lab.procs.append(holder)
    helpers.wait_for("the container's own namespace",
                     lambda: os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"))
    for i, port in enumerate(cfg["ports"]):
        port["name"] = lab.name(f"p{i}")
        netns = port["netns"]
        if netns.startswith("pid:"):
            port["netns"] = f"pid:{holder.pid}"
        elif netns.startswith("/run/netns/"):
            port["netns"] = "/run/netns/" + ours(netns[len("/run/netns/"):])
        else:
            port["netns"] = ours(netns)
    cfg["switch"]["name"] = lab.name("sw")
    lab.switch(cfg)
    app = names["app"]
    for address in ("198.18.1.2", "198.18.1.3"):
        assert helpers.ping(app, address), address


def test_a_containers_namespace_it_may_not_open_exits_1_saying_why_not_that_it_does_not_exist(lab):
    """The process is there, but without CAP_SYS_PTRACE its namespace (another user's) is not
    the switch's to open: stat says EACCES, which is no "does not exist"."""
    holder = subprocess.Popen(["unshare", "--net", "setpriv", "--reuid=65534", "--regid=65534",
                               "--clear-groups", "sleep", "300"])
    lab.procs.append(holder)
    helpers.wait_for("the container's own uid", lambda: os.stat(f"/proc/{holder.pid}").st_uid == 65534)
    cfg = {"switch": {"name": lab.name("sw"), "queues": 1, "user": 0},
           "ports": [{"name": lab.name("pa"), "netns": f"pid:{holder.pid}", "addresses": ["198.18.1.1/24"]}]}
    sw = lab.switch(cfg, start=False,
                    wrapper=("setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"))
    sw.start(expect_ready=False)
    assert sw.proc.wait(timeout=20) == 1, sw.log()
    assert (f"tapswitch: port {lab.name('pa')}: cannot open network namespace pid:{holder.pid}: Permission denied "
            f"(another process's namespace needs CAP_SYS_PTRACE)") in sw.log(), sw.log()
    assert not helpers.link_exists(lab.name("pa"))
    assert holder.poll() is None


def test_an_ipv6_address_in_a_namespace_without_ipv6_exits_1_naming_it_and_why(lab):
    """The kernel says only EACCES ("port p: Permission denied" was all the user got)."""
    cfg = containers(lab, 2, queues=1)
    theirs = lab.netns("nov6", create=True)
    helpers.nsexec(theirs, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    cfg["ports"][1]["netns"] = theirs
    sw = lab.switch(cfg, start=False)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    assert (f"tapswitch: port {cfg['ports'][1]['name']}: cannot add address fd00::2/64 in namespace {theirs}: "
            f"Permission denied (IPv6 is disabled there") in r.stderr, r.stderr
    assert helpers.sh("ip", "-n", theirs, "-br", "link").stdout.split()[0] == "lo"     # the TAP went
    assert len(helpers.sh("ip", "-n", theirs, "-br", "link").stdout.splitlines()) == 1
    assert cfg["ports"][0]["netns"] not in helpers.netns_list() and theirs in helpers.netns_list()


@pytest.mark.parametrize("how", ["pid", "path"])
def test_the_switchs_own_namespace_as_a_containers_exits_1_and_leaves_nothing(lab, how):
    """A host process's pid (a container's, reused) gave the host the container's TAP and addresses."""
    host = subprocess.Popen(["sleep", "300"])
    lab.procs.append(host)
    cfg = containers(lab, 2, queues=1)
    cfg["ports"][1]["netns"] = f"pid:{host.pid}" if how == "pid" else f"/proc/{host.pid}/ns/net"
    del cfg["ports"][1]["ifname"]
    sw = lab.switch(cfg, start=False)
    sw.start(expect_ready=False)
    assert sw.proc.wait(timeout=20) == 1, sw.log()
    assert (f"tapswitch: port {cfg['ports'][1]['name']}: {cfg['ports'][1]['netns']} is the switch's own network "
            f"namespace, not a container's") in sw.log(), sw.log()
    assert not helpers.link_exists(cfg["ports"][1]["name"])
    assert cfg["ports"][0]["netns"] not in helpers.netns_list()


def test_ready_is_logged_and_notified(lab):
    cfg = containers(lab, 2)
    sw = lab.switch(cfg)     # start() waits for READY=1 on $NOTIFY_SOCKET
    ready = sw.events("switch.ready")
    assert ready and ready[0]["ports"] == 2


LISTEN_LATE = (sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), "listen_late.py"))


def test_a_client_that_finds_the_control_socket_is_answered_though_the_switch_listens_late(lab):
    """The control socket is at its path only once the switch listens on it: bound there, it
    refused connections until the listen, which a busy host may hold back (half a second here),
    so a client that waited for the path got "Connection refused" (test_a_reload_asked_for_while_
    the_switch_starts_..., once), and `tapswitch` without -s took it for a dead switch's socket."""
    cfg = {"switch": {"name": lab.name("sw"), "queues": 1}, "ports": [{"name": lab.name("p0")}]}
    sw = lab.switch(cfg, start=False, wrapper=LISTEN_LATE)
    sw.start(expect_ready=False)
    helpers.wait_for("the control socket", lambda: os.path.exists(sw.socket), every=0.002)
    assert control.answers(sw.socket)
    reply = control.request(sw.socket, "reload")        # answered once the switch is ready
    assert reply["ok"], reply
    assert sw.stop() == 0
    assert sorted(os.listdir(sw.dir)) == ["switch.log", "tapswitch.yaml"], sw.log()


def test_second_switch_on_the_same_socket_is_refused(lab):
    cfg = containers(lab, 1)
    sw = lab.switch(cfg)
    other = {"switch": {"name": lab.name("s2"), "control": {"socket": sw.socket}},
             "ports": [{"name": lab.name("q0")}]}
    sw2 = lab.switch(other, start=False)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw2.config_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "another tapswitch is running" in r.stderr
    assert not helpers.link_exists(other["ports"][0]["name"])
    assert sw.cli_json("ports")      # the first switch still answers


STALE_SOCKET_RACE = os.path.join(os.path.dirname(__file__), "..", "stale_socket_race.py")


def test_two_starts_beside_a_killed_switchs_socket_one_runs_the_other_exits_1_leaving_nothing(lab):
    """Both found the killed switch's socket stale, each removed it and listened, the second on a
    path from which it had removed the first's socket: two switches, one state file. The lock
    beside the socket, taken before the socket is looked at, lets one of them on."""
    run_dir = os.path.join(helpers.tmpdir(), "run")
    lab.dirs.append(os.path.dirname(run_dir))
    sock = os.path.join(run_dir, "ctl.sock")
    cfg = containers(lab, 1, queues=1, control={"socket": sock})
    dead = lab.switch(cfg)
    assert dead.stop(signal.SIGKILL) != 0
    left = {name: open(os.path.join(run_dir, name), "rb").read() for name in os.listdir(run_dir) if name != "ctl.sock"}
    assert "ctl.sock.state" in left                 # the dead run's namespace, for the next start to heal
    race = helpers.tmpdir()
    lab.dirs.append(race)
    first = lab.switch(cfg, start=False, wrapper=(sys.executable, STALE_SOCKET_RACE, "first", race))
    other = {"switch": {"name": lab.name("s2"), "queues": 1, "control": {"socket": sock}},
             "ports": [{"name": lab.name("q0"), "netns": lab.name("d0"), "addresses": ["198.18.1.1/24"]}]}
    second = lab.switch(other, start=False, wrapper=(sys.executable, STALE_SOCKET_RACE, "second", race))
    first.start(expect_ready=False)
    helpers.wait_for("the first start at the stale socket", lambda: os.path.exists(os.path.join(race, "first-held")),
                     within=20)
    second.start(expect_ready=False)
    try:
        second.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"both switches run on one control socket:\n{second.log()}")
    assert second.proc.returncode == 1, second.log()
    assert [line for line in second.log().splitlines() if line.startswith("tapswitch:")] == [
        f"tapswitch: another tapswitch is running on control socket {sock} (pid {first.proc.pid})"]
    assert not helpers.link_exists(other["ports"][0]["name"])
    assert other["ports"][0]["netns"] not in helpers.netns_list()
    # The dead run's socket and state, and the lock the first holds, as they were.
    assert sorted(os.listdir(run_dir)) == ["ctl.sock", "ctl.sock.lock", "ctl.sock.state"]
    assert open(sock + ".state", "rb").read() == left["ctl.sock.state"]
    open(os.path.join(race, "go"), "w").close()     # the first goes on
    helpers.wait_for("the first switch ready", lambda: first.events("switch.ready"), within=30)
    assert open(sock + ".lock").read() == f"{first.proc.pid}\n"
    assert [p["name"] for p in first.cli_json("ports")] == [cfg["ports"][0]["name"]]
    assert [e["netns"] for e in first.events("netns.adopted")] == [cfg["ports"][0]["netns"]]
    assert first.stop() == 0
    assert os.listdir(run_dir) == []                # socket, lock and state gone with the first


@pytest.mark.parametrize("taken", ["control socket", "metrics address"])
def test_a_failed_start_logs_its_reason_as_an_error_not_a_stop(lab, taken):
    """A log pipeline reads why a start failed from an event, not from a plain stderr line; and
    a switch that never started does not say it stopped."""
    sw = lab.switch(containers(lab, 1))
    other = {"switch": {"name": lab.name("s2")}, "ports": [{"name": lab.name("q0")}]}
    with socket.socket() as busy:
        if taken == "control socket":
            other["switch"]["control"] = {"socket": sw.socket}
            reason = f"another tapswitch is running on control socket {sw.socket} (pid {sw.proc.pid})"
        else:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            listen = "127.0.0.1:%d" % busy.getsockname()[1]
            other["switch"]["metrics"] = {"listen": listen}
            reason = f"metrics: cannot listen on {listen}: Address already in use"
        sw2 = lab.switch(other, start=False)
        r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw2.config_path],
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    assert [line for line in r.stderr.splitlines() if line.startswith("tapswitch:")] == [f"tapswitch: {reason}"]
    events = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "switch.start_failed"]
    assert [(e["level"], e["switch"], e["error"]) for e in failed] == [("error", other["switch"]["name"], reason)]
    assert not [e for e in events if e["event"] == "switch.stopped"], events
    assert not helpers.link_exists(other["ports"][0]["name"])


def test_control_socket_that_cannot_be_made_exits_1_naming_it_and_leaves_nothing(lab, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")                              # the socket's parent is a file
    path = str(blocker / "sub" / "sw.sock")
    cfg = containers(lab, 1)
    cfg["switch"]["control"] = {"socket": path}
    sw = lab.switch(cfg, start=False)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"tapswitch: control: cannot listen on {path}: Not a directory" in r.stderr
    assert not helpers.link_exists(cfg["ports"][0]["name"])
    assert cfg["ports"][0]["netns"] not in helpers.netns_list()
    assert blocker.read_text() == "" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_control_socket_path_naming_a_file_exits_1_and_leaves_the_file(lab, tmp_path):
    """A socket path that names an existing file (the config itself, say) is no stale socket."""
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    cfg = containers(lab, 1)
    cfg["switch"]["control"] = {"socket": str(precious)}
    sw = lab.switch(cfg, start=False)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    assert f"control socket {precious} exists and is not a socket; left as it is" in r.stderr, r.stderr
    assert precious.read_text() == "keep me\n"
    assert not helpers.link_exists(cfg["ports"][0]["name"])
    assert cfg["ports"][0]["netns"] not in helpers.netns_list()


def test_start_after_sigkill_removes_the_namespaces_the_dead_run_made(lab):
    cfg = containers(lab, 3, queues=1)
    sw = lab.switch(cfg)
    assert sw.kill() != 0                # and its workers gone with it (PDEATHSIG)
    made = {p["netns"] for p in cfg["ports"]}
    assert made <= helpers.netns_list()          # what a crash leaves behind
    dropped = cfg["ports"].pop()                 # the next run no longer wants one of them
    sw2 = lab.switch(cfg)                        # cfg still names the same control socket, so the same state
    assert sw2.socket == sw.socket
    assert dropped["netns"] not in helpers.netns_list()
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.0.2")
    assert sw2.stop() == 0
    assert helpers.netns_list() & made == set()  # the adopted ones went with the clean stop


def test_a_start_after_sigkill_leaves_namespaces_the_user_made_since_under_those_names(lab):
    """After the crash the user deletes the dead run's namespaces and makes new ones of the same
    names, which the kernel gives the freed namespaces' inode numbers (so an inode cannot tell
    them apart: the netns cookie can). The next start neither removes nor takes them over, and
    its stop leaves them."""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg)
    assert sw.kill() != 0                # and its workers gone with it (PDEATHSIG)
    kept, dropped = (p["netns"] for p in cfg["ports"])
    for ns in (kept, dropped):
        inode = os.stat(f"/run/netns/{ns}").st_ino
        for _ in range(5):                       # the lowest free number: another namespace may take it
            helpers.sh("ip", "netns", "del", ns)
            time.sleep(0.5)                      # the kernel frees a namespace's number a moment later
            helpers.sh("ip", "netns", "add", ns)
            if os.stat(f"/run/netns/{ns}").st_ino == inode:
                break
        helpers.nsexec(ns, "ip", "link", "add", "mine0", "type", "veth", "peer", "name", "mine1")  # the user's
    cfg["ports"].pop()
    sw2 = lab.switch(cfg)
    assert sorted(e["netns"] for e in sw2.events("netns.left")) == sorted([kept, dropped]), sw2.log()
    assert not sw2.events("netns.removed") and not sw2.events("netns.adopted")
    assert dropped in helpers.netns_list() and helpers.link_exists("mine0", dropped)
    assert sw2.stop() == 0
    assert {kept, dropped} <= helpers.netns_list()
    assert helpers.link_exists("mine0", kept) and helpers.link_exists("mine0", dropped)


NO_NETNS_COOKIE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "no_netns_cookie.py")


def test_without_netns_cookies_a_start_after_sigkill_leaves_the_dead_runs_namespaces(lab):
    """A kernel without netns cookies (before 5.14): the dead run could not write down which
    namespace it made, and one of that name now may be the user's. The next start leaves it,
    saying why, rather than remove someone else's namespace."""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg, wrapper=(sys.executable, NO_NETNS_COOKIE))
    assert sw.kill() != 0                # and its workers gone with it (PDEATHSIG)
    kept, dropped = (p["netns"] for p in cfg["ports"])
    cfg["ports"].pop()
    sw2 = lab.switch(cfg)
    assert sorted(e["netns"] for e in sw2.events("netns.left")) == sorted([kept, dropped]), sw2.log()
    assert "no netns cookie" in sw2.events("netns.left")[0]["reason"]
    assert not sw2.events("netns.removed") and dropped in helpers.netns_list()
    assert sw2.stop() == 0
    assert {kept, dropped} <= helpers.netns_list()       # the lab removes them


# `tapswitch run`, SIGKILLed just after the file of a namespace it makes (the mount point) exists
# and before the namespace is mounted on it: where a kill during `ip netns add` lands too.
KILLED_WHILE_MAKING_A_NAMESPACE = """
import os, signal, sys
from tapswitch import cli, netns
real = netns._in_thread
def in_thread(fn):
    if fn.__name__ == "make":             # netns.create's: unshare and mount on the file
        os.kill(os.getpid(), signal.SIGKILL)
    return real(fn)
netns._in_thread = in_thread
sys.exit(cli.main(["run", "-c", sys.argv[1]]))
"""


def test_a_start_after_a_kill_while_a_namespace_was_made_makes_it(lab):
    """The dead run left the namespace's empty file, not yet a namespace: it was listed in the
    state file before it was made, so the next start removes that file and makes the namespace
    (it used to refuse to start, "not a network namespace", until someone removed the file)."""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg, start=False)
    ns = cfg["ports"][0]["netns"]
    r = subprocess.run([sys.executable, "-c", KILLED_WHILE_MAKING_A_NAMESPACE, sw.config_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == -signal.SIGKILL, r
    placeholder = f"/run/netns/{ns}"
    assert os.path.isfile(placeholder) and os.path.getsize(placeholder) == 0      # what the kill left
    sw.start()
    assert [e["reason"] for e in sw.events("netns.removed") if e["netns"] == ns] == [
        "the placeholder of a namespace the dead run did not finish"]
    assert helpers.ping(ns, "198.18.0.2")
    assert sw.stop() == 0
    assert not os.path.exists(placeholder)
    assert not os.path.exists(sw.socket + ".state")


# `tapswitch run -c CONFIG`, SIGKILLed just after the namespace NAME (argv: CONFIG NAME) it makes
# is mounted at its name (before netns.create returns).
KILLED_ONCE_A_NAMESPACE_IS_MADE = """
import os, signal, sys
from tapswitch import cli, netns
real = netns.create
def create(name, *args):
    real(name, *args)
    if name == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)
netns.create = create
sys.exit(cli.main(["run", "-c", sys.argv[1]]))
"""


def test_a_start_after_a_kill_once_a_namespace_was_made_takes_it_over(lab):
    """The dead run was killed once its namespace was at its name, before it had asked which
    namespace that is: it had written down the namespace's identity before mounting it, so the
    next start knows it for the dead run's, takes it over (its config names it) and removes it on
    stop; or removes it at once (its config does not). (It was left, "the dead run could not tell
    which namespace it made", and taken by every start since for the user's: never removed.)"""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg, start=False)
    ns = cfg["ports"][0]["netns"]
    for named_again in (True, False):
        r = subprocess.run([sys.executable, "-c", KILLED_ONCE_A_NAMESPACE_IS_MADE, sw.config_path, ns],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == -signal.SIGKILL, r
        assert ns in helpers.netns_list()                   # what the kill left
        if named_again:
            sw.start()
            assert [e["netns"] for e in sw.events("netns.adopted")] == [ns], sw.log()
            assert helpers.ping(ns, "198.18.0.2")
        else:
            other = lab.switch({**cfg, "ports": cfg["ports"][1:]})
            assert [e["netns"] for e in other.events("netns.removed")] == [ns], other.log()
            assert ns not in helpers.netns_list()
            sw = other
        assert not sw.events("netns.left"), sw.log()
        assert sw.stop() == 0
        assert ns not in helpers.netns_list()
        assert not os.path.exists(sw.socket + ".state")


def test_a_placeholder_a_dead_run_listed_is_removed_and_the_namespace_made(lab):
    """What a run killed while making a namespace leaves, made by hand: the empty file, and its
    name in the state file (the format of an older version, namespaces only). The start works."""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg, start=False)
    ns = cfg["ports"][1]["netns"]
    placeholder = f"/run/netns/{ns}"
    os.makedirs("/run/netns", exist_ok=True)
    os.close(os.open(placeholder, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    with open(sw.socket + ".state", "w") as f:
        json.dump({"created": [ns]}, f)
    sw.start()
    assert helpers.ping(ns, "198.18.0.1")
    assert sw.stop() == 0
    assert not os.path.exists(placeholder)


def test_sigterm_to_the_whole_process_group_is_a_clean_stop(lab):
    """systemd's KillMode=control-group, `timeout`, Ctrl-C: the workers get the signal too."""
    cfg = containers(lab, 2, queues=2)
    sw = lab.switch(cfg)
    workers = sw.worker_pids()
    os.killpg(sw.proc.pid, signal.SIGTERM)
    assert sw.stop() == 0, sw.log()
    assert "Traceback" not in sw.log()
    assert helpers.netns_list() & {p["netns"] for p in cfg["ports"]} == set()
    assert not any(helpers.link_exists(p["name"]) for p in cfg["ports"])
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)


STOP_EARLY = (sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), "stop_early.py"))


@pytest.mark.parametrize("when", ["imports", "read"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_before_the_switch_starts_starting_is_a_clean_stop_that_makes_nothing(lab, sig, when):
    """`systemctl stop` (SIGTERM) or Ctrl-C (SIGINT) during the imports of `run`, or once the
    config is read, before the switch took the stop signals over (as it starts): SIGTERM's
    default action ended the process (exit -15, nothing said), SIGINT's KeyboardInterrupt exited
    130. A stop, as at any other time: exit 0, said, and nothing made."""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg, start=False, wrapper=(*STOP_EARLY, sig, when))
    sw.start(expect_ready=False)
    assert sw.proc.wait(timeout=30) == 0, sw.log()
    assert [e.get("reason") for e in sw.events("switch.stopped")] == ["asked to stop before it started"], sw.log()
    assert "Traceback" not in sw.log()
    assert not sw.events("switch.ready") and not sw.events("worker.spawned")
    assert helpers.netns_list() & {p["netns"] for p in cfg["ports"]} == set()
    assert not any(helpers.link_exists(p["name"]) for p in cfg["ports"])
    assert not os.path.exists(sw.socket) and not os.path.exists(sw.socket + ".state")
    assert not os.path.exists(sw.socket + ".lock")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_just_after_the_switch_took_the_signals_over_is_a_clean_stop_said(lab, sig):
    """A stop signal in the few statements between start() taking the stop signals over and its
    undo's try: the handler's KeyboardInterrupt went straight out of start(), nothing logged
    (switch.stopped, which the README promises). Said, as a stop while starting is, exit 0, and
    nothing made."""
    cfg = containers(lab, 2, queues=1)
    sw = lab.switch(cfg, start=False, wrapper=(*STOP_EARLY, sig, "taken"))
    sw.start(expect_ready=False)
    assert sw.proc.wait(timeout=30) == 0, sw.log()
    assert len(sw.events("switch.stopped")) == 1, sw.log()
    assert "Traceback" not in sw.log()
    assert not sw.events("switch.ready")
    assert helpers.netns_list() & {p["netns"] for p in cfg["ports"]} == set()
    assert not any(helpers.link_exists(p["name"]) for p in cfg["ports"])
    assert not os.path.exists(sw.socket) and not os.path.exists(sw.socket + ".state")


def test_sighup_to_the_whole_process_group_is_a_reload_that_keeps_the_workers(lab):
    """The terminal `tapswitch run` runs in hangs up (an ssh session lost): its shell sends SIGHUP
    to the whole process group. A reload, as SIGHUP is; the workers took it as the end (its
    default action), every queue stopped forwarding and every worker was restarted (worker.exited
    signal=SIGHUP, tapswitch_worker_restarts_total)."""
    cfg = containers(lab, 2, queues=2)
    sw = lab.switch(cfg)
    workers = sw.worker_pids()
    assert len(workers) == 2
    os.killpg(sw.proc.pid, signal.SIGHUP)
    helpers.wait_for("the reload", lambda: sw.events("config.reloaded"))
    time.sleep(0.5)         # a worker the signal ended is found within the control loop's next turn
    assert not sw.events("worker.exited"), sw.log()
    assert sorted(sw.worker_pids()) == sorted(workers)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.0.2")
    assert sw.stop() == 0, sw.log()


def test_sighup_to_the_whole_process_group_as_the_workers_start_is_a_reload_once_ready(lab):
    """SIGHUP to the process group (a terminal's hangup) as the workers' interpreters start,
    before a worker could ignore it: the worker died of it and the start failed (exit 1, "worker
    0 did not start (exit code -1)"), leaving the switch stopped. The workers start with SIGHUP
    and SIGINT blocked now, until they ignore them: the start goes on, and reloads once ready."""
    cfg = containers(lab, 2, queues=2)
    sw = lab.switch(cfg, start=False)
    sw.start(expect_ready=False)
    helpers.wait_for("a worker spawned", lambda: sw.events("worker.spawned"), within=20, every=0.002)
    os.killpg(sw.proc.pid, signal.SIGHUP)
    helpers.wait_for("the reload once ready", lambda: sw.proc.poll() is not None or sw.events("config.reloaded"),
                     within=20)
    assert sw.proc.poll() is None, sw.log()
    assert sw.events("switch.ready") and not sw.events("worker.exited"), sw.log()
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.0.2")
    assert sw.stop() == 0, sw.log()


def test_stop_signal_while_the_ports_are_made_leaves_nothing(lab):
    """Ports are made several at once: a stop signal in the middle finishes the ones under way
    and removes every one made. VXLAN devices outlive the process when not removed, so any
    port left unclosed would show as one."""
    n = 32
    host = lab.netns("h", create=True)
    helpers.nsexec(host, "ip", "link", "add", "u0", "type", "veth", "peer", "name", "u1")
    helpers.nsexec(host, "ip", "addr", "add", "198.19.0.1/24", "dev", "u0")
    helpers.nsexec(host, "ip", "link", "set", "u0", "up")
    ports = [{"name": lab.name(f"v{i}"), "vxlan": {"vni": 100 + i, "local": "198.19.0.1", "dev": "u0",
                                                    "remotes": ["198.19.0.2"]}} for i in range(n)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1}, "ports": ports}, netns=host, start=False)
    sw.start(expect_ready=False)
    helpers.wait_for("a first port", lambda: sw.events("port.added"), within=20, every=0.002)
    sw.proc.send_signal(signal.SIGTERM)
    assert sw.stop() == 0, sw.log()      # a stop asked for, done cleanly
    made = {e["dev"] for e in sw.events("vxlan.created")}
    assert len(sw.events("port.added")) < n, "the stop came after the last port: nothing under way to test"
    assert made and made == {e["dev"] for e in sw.events("vxlan.removed")}
    assert helpers.nsexec(host, "ip", "-o", "link", "show", "type", "vxlan").stdout == ""
    assert helpers.nsexec(host, "ip", "-o", "link", "show", "type", "tun").stdout == ""
    assert not sw.events("switch.ready")


def test_ports_sharing_a_namespace_it_creates_make_it_once(lab):
    """Ports made at once that share a missing named namespace: it is made once, for all."""
    shared = lab.name("c")
    ports = [{"name": lab.name(f"p{i}"), "netns": shared, "ifname": f"eth{i}",
              "addresses": [f"198.18.0.{i + 1}/24"]} for i in range(8)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1}, "ports": ports})
    assert [e["netns"] for e in sw.events("netns.created")] == [shared]
    assert all(helpers.link_exists(f"eth{i}", shared) for i in range(8))
    assert sw.stop() == 0
    assert shared not in helpers.netns_list()


@pytest.mark.parametrize("path_first", [True, False])
def test_ports_naming_a_namespace_it_makes_by_name_and_by_path_share_it_in_either_order(lab, path_first):
    """netns X and netns /run/netns/X are one namespace: the switch makes it, for both ports,
    whichever comes first (with the path first, the start failed: "network namespace
    /run/netns/X does not exist", as the ports are made at once and the name had not yet made it)."""
    shared = lab.name("c")
    lab.namespaces.append(shared)
    ports = [{"name": lab.name(f"p{i}"), "netns": f"/run/netns/{shared}" if (i == 0) == path_first else shared,
              "ifname": f"eth{i}", "addresses": [f"198.18.0.{i + 1}/24"]} for i in range(2)]
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1}, "ports": ports}, start=False)
    assert helpers.sh(sys.executable, "-m", "tapswitch", "check", "-c", sw.config_path).returncode == 0
    sw.start()
    assert [e["netns"] for e in sw.events("netns.created")] == [shared]
    assert helpers.link_exists("eth0", shared) and helpers.link_exists("eth1", shared)
    assert {p["state"] for p in sw.cli_json("ports")} == {"up"}
    assert sw.stop() == 0
    assert shared not in helpers.netns_list()       # the switch's: removed on stop


def test_a_switch_started_with_stderr_closed_runs_and_its_workers_write_to_dev_null(lab):
    """`tapswitch run 2>&-`, as a daemon may be started: it exited 1 and said nothing (sys.stderr
    is None, and log.setup asked it isatty); or, its log format given, ran with its workers'
    stderr on whatever the switch had opened first (an epoll descriptor)."""
    cfg = containers(lab, 2, queues=1, log={"level": "info", "format": "auto"})
    sw = lab.switch(cfg, start=False, wrapper=("sh", "-c", 'exec "$@" 2>&-', "sh"))
    sw.start()
    assert {p["state"] for p in sw.cli_json("ports")} == {"up"}
    assert helpers.ping(sw.cfg["ports"][0]["netns"], "198.18.0.2")
    for pid in (sw.proc.pid, *sw.worker_pids()):
        assert os.readlink(f"/proc/{pid}/fd/2") == "/dev/null"
    assert sw.stop() == 0

"""Least privilege: workers without capabilities, a control socket only root may use."""

import ctypes
import errno
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile

import yaml

from tests.integration import helpers

NOBODY = 65534
CAP_DAC_OVERRIDE = 1
CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def two_containers(lab, queues: int = 2, **switch) -> dict:
    ports = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0",
              "addresses": [f"198.18.0.{i + 1}/24"]} for i in range(2)]
    return {"switch": {"name": lab.name("sw"), "queues": queues, **switch}, "ports": ports}


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def capabilities(pid: int) -> dict[str, int]:
    st = status(pid)
    return {name: int(st[name], 16) for name in CAP_SETS}


def ids(pid: int) -> tuple[set[str], set[str], str]:
    """(real/effective/saved/fs uids, the same gids, supplementary groups) of a process."""
    st = status(pid)
    return set(st["Uid"].split()), set(st["Gid"].split()), st["Groups"].strip()


def test_every_worker_runs_without_capabilities_and_frames_still_cross(lab):
    sw = lab.switch(two_containers(lab, queues=2))
    pids = sw.worker_pids()
    assert len(pids) == 2
    assert capabilities(sw.proc.pid)["CapEff"] != 0        # the control process keeps what it needs
    nobody = pwd.getpwnam("nobody")
    for pid in pids:
        assert capabilities(pid) == dict.fromkeys(CAP_SETS, 0), pid
        assert status(pid)["NoNewPrivs"] == "1"
        # Not root either: a uid 0 without capabilities still owns root's files.
        assert ids(pid) == ({str(nobody.pw_uid)}, {str(nobody.pw_gid)}, "")
    assert helpers.ping(lab.name("c0"), "198.18.0.2", count=3)
    assert helpers.ping(lab.name("c1"), "198.18.0.1", count=3)


def test_every_worker_is_in_an_empty_network_namespace_of_its_own(lab):
    """A worker reads what any container sends: one taken over reached the host's networks and
    its services on 127.0.0.1 (the metrics, here) from the switch's namespace."""
    sw = lab.switch(two_containers(lab, queues=2))
    pids = sw.worker_pids()
    namespaces = {os.stat(f"/proc/{pid}/ns/net").st_ino for pid in pids}
    assert len(namespaces) == 2 and os.stat(f"/proc/{sw.proc.pid}/ns/net").st_ino not in namespaces
    for pid in pids:
        with open(f"/proc/{pid}/net/dev") as f:
            assert [line.split(":")[0].strip() for line in f.readlines()[2:]] == ["lo"], pid
    assert helpers.ping(lab.name("c0"), "198.18.0.2", count=3)
    assert helpers.ping(lab.name("c1"), "198.18.0.1", count=3)
    assert sw.stop() == 0, sw.log()


def memfds(pid: int) -> int:
    """How many of pid's fds hold the switch's shared memory (a memfd named tapswitch)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:tapswitch")
        except FileNotFoundError:
            pass        # closed meanwhile
    return n


def test_every_worker_holds_the_shared_memory_once(lab):
    """Python's mmap maps through a dup of the fd it is given: a worker that kept the one it
    was passed as well held the memfd twice, for nothing (the mapping outlives both)."""
    sw = lab.switch(two_containers(lab, queues=2))
    pids = sw.worker_pids()
    assert len(pids) == 2
    for pid in pids:
        assert memfds(pid) == 1, pid
    assert helpers.ping(lab.name("c0"), "198.18.0.2", count=3)
    assert helpers.ping(lab.name("c1"), "198.18.0.1", count=3)


def test_a_restarted_worker_drops_its_capabilities_too(lab):
    sw = lab.switch(two_containers(lab, queues=1))
    [old] = sw.worker_pids()
    os.kill(old, signal.SIGKILL)
    # A worker reports ready only once it has dropped them: check right then.
    [event] = helpers.wait_for("worker restarted", lambda: sw.events("worker.restarted"), 2.0, every=0.02)
    new = event["pid"]
    assert new != old
    assert capabilities(new) == dict.fromkeys(CAP_SETS, 0)
    assert ids(new)[0] == {str(pwd.getpwnam("nobody").pw_uid)}
    assert helpers.ping(lab.name("c0"), "198.18.0.2", count=2)


def test_switch_user_names_the_workers_user(lab):
    daemon = pwd.getpwnam("daemon")
    sw = lab.switch(two_containers(lab, queues=1, user="daemon"))
    [pid] = sw.worker_pids()
    assert ids(pid) == ({str(daemon.pw_uid)}, {str(daemon.pw_gid)}, "")
    assert capabilities(pid) == dict.fromkeys(CAP_SETS, 0)
    assert helpers.ping(lab.name("c0"), "198.18.0.2", count=2)


WITHOUT_CAP_KILL = ("setpriv", "--bounding-set=-kill", "--inh-caps=-kill")


def test_without_cap_kill_workers_of_another_user_are_refused_before_anything_is_made(lab):
    """A stop could not signal workers of another user: they would outlive it, holding every
    port (a traceback, and TAPs, tc rules and promisc left). So the start says why, at once."""
    sw = lab.switch(two_containers(lab, queues=1), wrapper=WITHOUT_CAP_KILL, start=False)
    sw.start(expect_ready=False)
    assert sw.proc.wait(timeout=20) == 1, sw.log()
    assert ("tapswitch: the workers run as uid 65534 (switch.user), another user: stopping them needs "
            "CAP_KILL, which this process lacks") in sw.log()
    assert "Traceback" not in sw.log()
    assert not helpers.link_exists(lab.name("p0")) and lab.name("c0") not in helpers.netns_list()


def test_without_cap_net_admin_the_start_says_so_in_one_line(lab):
    sw = lab.switch(two_containers(lab, queues=1), start=False,
                    wrapper=("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"))
    sw.start(expect_ready=False)
    assert sw.proc.wait(timeout=20) == 1, sw.log()
    lines = [line for line in sw.log().splitlines() if line.startswith("tapswitch:")]
    assert lines == ["tapswitch: needs CAP_NET_ADMIN to create TAP devices (run it as root)"], sw.log()
    assert not helpers.link_exists(lab.name("p0")) and lab.name("c0") not in helpers.netns_list()


def test_without_cap_sys_admin_a_port_in_a_namespace_is_refused_in_one_line_naming_it(lab):
    """A container run as the README's Docker command runs it (NET_ADMIN, NET_BROADCAST) on a
    config with a namespace failed with "bind /run/netns: Operation not permitted", or, for a
    namespace already there, "[Errno 1] setns ...": no word of the capability it lacked."""
    sw = lab.switch(two_containers(lab, queues=1), start=False,
                    wrapper=("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"))
    sw.start(expect_ready=False)
    assert sw.proc.wait(timeout=20) == 1, sw.log()
    lines = [line for line in sw.log().splitlines() if line.startswith("tapswitch:")]
    assert lines == [f"tapswitch: port {lab.name('p0')}: a port in a network namespace (netns) needs "
                     f"CAP_SYS_ADMIN, to enter it and to make a named one"], sw.log()
    assert not helpers.link_exists(lab.name("p0")) and lab.name("c0") not in helpers.netns_list()


def test_without_cap_sys_admin_ports_in_the_switchs_namespace_run(lab):
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1}, "ports": [{"name": lab.name("p0")}]},
                    wrapper=("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"))
    assert helpers.link_exists(lab.name("p0"))
    assert sw.stop() == 0, sw.log()


def test_without_cap_sys_admin_a_reload_refuses_a_port_in_a_namespace_in_one_line_naming_it(lab):
    """A switch started without it and no port in a namespace: a reload that adds ports in
    namespaces (one it would make, one there already) said the kernel's "bind /run/netns:
    Operation not permitted" and "[Errno 1] setns ..." (that one naming no port). Each is
    refused as the start refuses it, nothing made for it; the other ports run and are added."""
    cfg = {"switch": {"name": lab.name("sw"), "queues": 1}, "ports": [{"name": lab.name("p0")}]}
    sw = lab.switch(cfg, wrapper=("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"))
    theirs = lab.netns("c2", create=True)
    lab.links += [lab.name("p1"), lab.name("p2"), lab.name("p3")]
    lab.namespaces.append(lab.name("c1"))
    cfg["ports"] += [{"name": lab.name("p1"), "netns": lab.name("c1"), "addresses": ["198.18.0.1/24"]},
                     {"name": lab.name("p2"), "netns": theirs},
                     {"name": lab.name("p3")}]
    with open(sw.config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "--json", "-s", sw.socket],
                       capture_output=True, text=True, timeout=30)
    reply = json.loads(r.stdout)
    why = [f"port {lab.name(p)}: a port in a network namespace (netns) needs CAP_SYS_ADMIN, to enter it and "
           f"to make a named one" for p in ("p1", "p2")]
    assert (r.returncode, reply["errors"], reply["failed"], reply["added"]) == (
        1, why, [lab.name("p1"), lab.name("p2")], [lab.name("p3")]), r
    assert [(p["name"], p["state"], p["error"]) for p in sw.cli_json("ports")] == [
        (lab.name("p0"), "up", None), (lab.name("p3"), "up", None),
        (lab.name("p1"), "down", why[0]), (lab.name("p2"), "down", why[1])]
    assert not helpers.link_exists(lab.name("p1")) and not helpers.link_exists(lab.name("p2"))
    assert not os.path.lexists(f"/run/netns/{lab.name('c1')}")
    assert sw.proc.poll() is None and "Traceback" not in sw.log()
    assert sw.stop() == 0, sw.log()


def test_without_cap_kill_workers_of_the_switchs_own_user_run_and_stop(lab):
    sw = lab.switch(two_containers(lab, queues=1, user=0), wrapper=WITHOUT_CAP_KILL)
    assert helpers.ping(lab.name("c0"), "198.18.0.2", count=2)
    assert sw.stop() == 0, sw.log()
    assert not helpers.link_exists(lab.name("p0")) and not sw.worker_pids()


def test_workers_still_die_with_the_control_process(lab):
    # A change of uid clears the parent-death signal: the worker asks for it again.
    sw = lab.switch(two_containers(lab, queues=2))
    pids = sw.worker_pids()
    assert len(pids) == 2           # none found: "all gone" would hold at once
    sw.proc.kill()
    sw.proc.wait()

    def all_gone():
        return not any(os.path.exists(f"/proc/{pid}") and status(pid).get("State", "").split()[0] != "Z"
                       for pid in pids)
    helpers.wait_for("workers gone after the control process was killed", all_gone, 1.0, every=0.02)


def test_a_worker_of_root_is_not_dumpable_either(lab):
    """Workers stay root, without capabilities, with switch.user: 0 (or where there is no user
    nobody): no change of uid made them not dumpable, and any process of root's without
    capabilities (a service that dropped them) could open the switch's shared memory through
    /proc/PID/fd, or trace them. A change of uid does not do it either under fs.suid_dumpable=1;
    drop_privileges says so itself."""
    sw = lab.switch(two_containers(lab, queues=1, user=0))
    [pid] = sw.worker_pids()
    assert ids(pid)[0] == {"0"} and capabilities(pid) == dict.fromkeys(CAP_SETS, 0)
    [shm] = [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")
             if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:tapswitch")]
    for path, how in ((shm, os.O_RDONLY), (f"/proc/{pid}/mem", os.O_RDONLY)):
        refused = as_user(0, lambda: os.close(os.open(path, how)))
        assert isinstance(refused, OSError) and refused.errno == errno.EACCES, (path, refused)
    assert helpers.ping(lab.name("c0"), "198.18.0.2", count=2)
    assert sw.stop() == 0, sw.log()


# The control socket.

def as_user(uid: int, fn, *, dac_override: bool = False):
    """Run fn() in a forked child whose effective uid is `uid`, with no capability effective
    (CAP_DAC_OVERRIDE if asked), and return what it returned, or the OSError it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                          # the child: never returns
        try:
            os.close(r)
            os.setgroups([])
            os.setegid(uid)
            os.seteuid(uid)                               # clears the effective set, for a uid not 0
            set_effective_caps(1 << CAP_DAC_OVERRIDE if dac_override else 0)
            try:
                out = {"value": fn()}
            except OSError as e:
                out = {"errno": e.errno}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    out = json.loads(data)
    if "errno" in out:
        return OSError(out["errno"], os.strerror(out["errno"]))
    return out["value"]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def set_effective_caps(mask: int) -> None:
    """Make `mask` (capabilities 0-31) the effective set, keeping the permitted set."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
    assert libc.capget(ctypes.byref(header), data) == 0
    data[0].effective, data[1].effective = mask, 0
    assert libc.capset(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())


def ask(path: str) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    with s:
        s.connect(path)
        try:
            s.sendall(b'{"cmd": "ports"}\n')
        except BrokenPipeError:
            pass        # refused before the request was read: the reply is waiting
        return json.loads(s.makefile("rb").readline())


def test_control_socket_is_0600_and_refuses_other_users(lab):
    path = f"/run/tapswitch/{lab.name('sw')}.sock"
    was_there = os.path.isdir(os.path.dirname(path))
    sw = lab.switch(two_containers(lab, queues=1, control={"socket": path}))
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)
    assert os.stat(os.path.dirname(path)).st_mode & stat.S_IXOTH    # the socket's own mode refuses
    assert ask(path)["ok"] is True                                    # root is served
    refused = as_user(NOBODY, lambda: ask(path))
    assert isinstance(refused, OSError) and refused.errno == errno.EACCES, refused
    # Past the file mode (CAP_DAC_OVERRIDE), the switch still checks who is asking (SO_PEERCRED).
    reply = as_user(NOBODY, lambda: ask(path), dac_override=True)
    assert reply == {"ok": False, "error": "permission denied"}
    assert sw.proc.poll() is None
    assert sw.stop() == 0
    # The switch made /run/tapswitch (no systemd here to make it) and takes it away again.
    assert not os.path.exists(path) and os.path.isdir(os.path.dirname(path)) == was_there


def test_a_control_socket_in_another_users_directory_is_refused_and_nothing_is_clobbered(lab, tmp_path):
    """The switch, as root, writes <socket>.state through <socket>.state.tmp: in a directory another
    user owns, a symlink planted there had it overwrite any file (here, one only root may read)."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    theirs = tempfile.mkdtemp(dir="/tmp")          # one nobody can reach: tmp_path's parents are root's alone
    try:
        os.chown(theirs, NOBODY, NOBODY)
        assert as_user(NOBODY, lambda: os.symlink(victim, f"{theirs}/sw.sock.state.tmp")) is None
        sw = lab.switch(two_containers(lab, queues=1, control={"socket": f"{theirs}/sw.sock"}), start=False)
        sw.start(expect_ready=False)
        assert sw.proc.wait(timeout=20) == 1, sw.log()
        lines = [line for line in sw.log().splitlines() if line.startswith("tapswitch:")]
        assert lines == [f"tapswitch: control socket {theirs}/sw.sock: {theirs} belongs to uid {NOBODY}; another "
                         f"user could replace the socket, or the state file the switch writes beside it as root: "
                         f"give a directory only root may write to (the default /run/tapswitch)"], sw.log()
        assert victim.read_text() == "precious\n"
        assert os.listdir(theirs) == ["sw.sock.state.tmp"]
        assert not helpers.link_exists(lab.name("p0")) and lab.name("c0") not in helpers.netns_list()
    finally:
        shutil.rmtree(theirs)

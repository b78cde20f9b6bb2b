"""runstate: the state file a run leaves for the start after a crash."""

import json
import os

import pytest
import structlog

from tapswitch.runstate import UNKNOWN, RunState, SaveError
from tapswitch.tc import DeviceState


def test_what_is_saved_is_what_the_next_start_loads(tmp_path):
    path = str(tmp_path / "ctl.sock.state")
    state = RunState(path)
    state.netns = {"c1": "48981dc8-92fb-48bf-a303-50b573c12c79:4096", "c2": None}  # c2: listed while being made
    state.remotes = ["eth1", "eth2"]
    state.record_original("eth1", (7, DeviceState(up=False, promisc=False, allmulti=True, mtu=1400, clsact_added=True)))
    dead = RunState.load(path)
    assert (dead.netns, dead.remotes, dead.originals) == (state.netns, state.remotes, state.originals)
    assert list(dead.netns) == ["c1", "c2"]                 # oldest first: removed newest first


def test_a_file_that_cannot_be_written_is_logged_left_as_it_was_and_written_by_the_next_save(tmp_path):
    """Its filesystem full (the new file is written to /dev/full here: ENOSPC, as on a full
    /run): save() raises SaveError, logged, with nothing half-written left beside the file;
    try_save() only logs; the state stays in memory, and the next save that can writes it."""
    path = str(tmp_path / "ctl.sock.state")
    state = RunState(path)
    state.netns = {"c1": None}
    state.save()
    os.symlink("/dev/full", path + ".tmp")
    state.netns["c2"] = None
    with structlog.testing.capture_logs() as logs, pytest.raises(SaveError) as raised:
        state.save()
    assert str(raised.value) == f"cannot write the state file {path}: No space left on device"
    assert [(e["event"], e["error"]) for e in logs] == [("runstate.save_failed", "No space left on device")]
    assert state.unsaved == str(raised.value)
    assert not os.path.lexists(path + ".tmp")
    assert list(RunState.load(path).netns) == ["c1"]        # the file as it was
    os.symlink("/dev/full", path + ".tmp")
    del state.netns["c1"]
    state.try_save()                                        # logged, not raised
    assert state.unsaved and list(RunState.load(path).netns) == ["c1"]
    state.save()
    assert state.unsaved is None and list(RunState.load(path).netns) == ["c2"]


def test_an_original_that_cannot_be_written_down_raises_and_one_given_back_only_logs(tmp_path):
    """attach() writes IFACE's state down before it changes anything: a file that cannot be
    written then stops the attach (SaveError), IFACE untouched, or a run killed later would
    leave it changed with nothing to heal it by; detach() giving it back goes on (logged)."""
    path = str(tmp_path / "ctl.sock.state")
    state = RunState(path)
    state.remotes = ["eth1"]
    os.symlink("/dev/full", path + ".tmp")
    with pytest.raises(SaveError):
        state.record_original("eth1", (7, DeviceState(up=True, promisc=False, allmulti=False, mtu=1500)))
    os.symlink("/dev/full", path + ".tmp")                  # (the failed save took it away)
    state.record_original("eth1", None)                     # logged, not raised
    assert state.originals == {} and state.unsaved

def test_a_file_of_an_older_version_lists_namespaces_only(tmp_path):
    path = tmp_path / "ctl.sock.state"
    path.write_text(json.dumps({"created": ["c1"]}))
    dead = RunState.load(str(path))
    assert (dead.netns, dead.remotes) == ({"c1": None}, [])


def test_a_file_of_an_older_version_lists_remotes_by_name_only(tmp_path):
    path = tmp_path / "ctl.sock.state"
    path.write_text(json.dumps({"created": [], "remotes": ["eth1"]}))
    dead = RunState.load(str(path))
    assert (dead.remotes, dead.originals) == (["eth1"], {})


def test_names_as_long_as_the_kernel_takes_are_loaded(tmp_path):
    """A remote of 15 bytes (IFNAMSIZ - 1: a USB NIC's enx + its MAC) is an interface name: the
    next start gives it back, as any other."""
    path = str(tmp_path / "ctl.sock.state")
    state = RunState(path)
    state.netns = {"n" * 255: None}
    state.remotes = ["enx001122334455"]
    state.record_original("enx001122334455", (7, DeviceState(up=True, promisc=False, allmulti=False, mtu=1500)))
    dead = RunState.load(path)
    assert (dead.netns, dead.remotes, dead.originals) == (state.netns, state.remotes, state.originals)

def test_an_original_given_back_is_forgotten(tmp_path):
    path = str(tmp_path / "ctl.sock.state")
    state = RunState(path)
    state.remotes = ["eth1"]
    state.record_original("eth1", (7, DeviceState(up=True, promisc=False, allmulti=False, mtu=1500)))
    state.record_original("eth1", None)
    assert RunState.load(path).originals == {}


def test_nothing_to_list_removes_the_file_and_no_file_is_nothing(tmp_path):
    path = str(tmp_path / "ctl.sock.state")
    state = RunState(path)
    state.remotes = ["eth1"]
    state.save()
    state.remotes = []
    state.save()
    assert not (tmp_path / "ctl.sock.state").exists()
    dead = RunState.load(path)
    assert (dead.netns, dead.remotes) == ({}, [])


def test_an_unreadable_file_is_nothing(tmp_path):
    path = tmp_path / "ctl.sock.state"
    path.write_text("{not json")
    assert RunState.load(str(path)).netns == {}


def test_an_identity_of_an_older_form_is_no_proof(tmp_path):
    """An inode: the kernel gives it to the next namespace made once the dead run's is freed."""
    path = tmp_path / "ctl.sock.state"
    path.write_text(json.dumps({"created": ["c1"], "netns_ids": {"c1": [4, 4026532174]}}))
    assert RunState.load(str(path)).netns == {"c1": UNKNOWN}


@pytest.mark.parametrize("name", ["", ".", "..", "../../tmp/victim", "a/b", None, 5, "x" * 256])
def test_a_name_that_is_no_namespace_name_makes_the_file_unreadable(tmp_path, name):
    """A corrupted file must not have the start unmount /run/netns/ or delete a file elsewhere."""
    path = tmp_path / "ctl.sock.state"
    path.write_text(json.dumps({"created": ["c1", name]}))
    assert RunState.load(str(path)).netns == {}


def test_saving_while_another_thread_adds_namespaces_does_not_fail(tmp_path):
    """Ports are made in several threads: one lists a namespace while another saves."""
    import sys
    import threading
    state = RunState(str(tmp_path / "ctl.sock.state"))
    state.netns = {f"m{i}": None for i in range(5000)}     # long to go through
    stop, errors = threading.Event(), []

    def add():
        i = 0
        while not stop.is_set():
            state.netns[f"n{i % 64}"] = None
            state.netns.pop(f"n{(i + 32) % 64}", None)
            i += 1

    def save():
        try:
            for _ in range(100):
                state.save()
        except Exception as e:      # noqa: BLE001 -- what the test looks for
            errors.append(e)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        adder = threading.Thread(target=add)
        adder.start()
        save()
        stop.set()
        adder.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


@pytest.mark.parametrize("remotes, originals", [
    ([123], {}),
    ("eth1", {}),                                     # a string, not a list of names
    (["eth1", "a/b"], {}),
    (["eth1"], {"eth1": {"ifindex": "7", "up": True, "promisc": False, "allmulti": False, "mtu": 1500,
                         "clsact_added": False}}),
    (["eth1"], {"eth1": {"ifindex": 7, "up": 1, "promisc": False, "allmulti": False, "mtu": "1500",
                         "clsact_added": False}}),
    (["eth1"], {"x" * 16: {"ifindex": 7, "up": True, "promisc": False, "allmulti": False, "mtu": 1500,
                           "clsact_added": False}}),
])
def test_a_remote_that_is_no_interface_makes_the_file_unreadable(tmp_path, remotes, originals):
    """A corrupted file must not stop the start with a traceback (pyroute2's TypeError on a
    number as a name), nor have it heal interfaces with states of the wrong types."""
    path = tmp_path / "ctl.sock.state"
    path.write_text(json.dumps({"created": ["c1"], "remotes": remotes, "remote_originals": originals}))
    dead = RunState.load(str(path))
    assert (dead.netns, dead.remotes, dead.originals) == ({}, [], {})

"""Namespaces whose kind cannot be told (out of descriptors): said so, and left as they are."""

import json
import os
import subprocess
import sys

from tests.integration import helpers

TESTS = os.path.dirname(os.path.dirname(__file__))
NETNS_CHECK_FAILS = (sys.executable, os.path.join(TESTS, "netns_check_fails.py"))

# Run with PATH NAME: is_netns(PATH), then a Namespaces.recover of a dead run that made the
# namespace at PATH, under the name NAME, each out of descriptors; one JSON line of what came of them.
OUT_OF_FDS = """
import errno, json, sys
sys.path.insert(0, sys.argv[3])
from pidfd_fails import at_the_fd_limit
from tapswitch import netns
from tapswitch.runstate import RunState

path, name = sys.argv[1:3]
out = {}
try:
    out["is_netns"] = at_the_fd_limit(netns.is_netns, path)
except OSError as e:
    out["is_netns"] = errno.errorcode[e.errno]
dead = RunState()
dead.netns[name] = netns.cookie(path)
try:
    at_the_fd_limit(netns.Namespaces(RunState()).recover, dead, set())
    out["recover"] = "recovered"
except netns.NetnsError as e:
    out["recover"] = str(e)
out["still_listed"] = list(dead.netns)
print(json.dumps(out))
"""


def test_a_namespace_looked_at_out_of_descriptors_is_not_taken_for_no_namespace(lab):
    """is_netns said False ("not a namespace") for any error of its open: with no descriptor
    free, a real namespace was none, and a dead run's namespace at its name was taken for the
    placeholder file create() mounts it on, to unlink. It cannot be told then: EMFILE, and the
    start that heals the dead run fails saying so, the name left as it is and still listed."""
    ns = lab.netns("n", create=True)
    path = f"/run/netns/{ns}"
    r = subprocess.run([sys.executable, "-c", OUT_OF_FDS, path, ns, TESTS], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out == {"is_netns": "EMFILE",
                   "recover": f"cannot tell what {path} is, a namespace a run that did not stop made: "
                              f"Too many open files",
                   "still_listed": [ns]}, r.stdout
    assert ns in helpers.netns_list()


def test_a_netns_path_checked_out_of_descriptors_fails_the_start_saying_why_not_that_it_is_none(lab):
    """A port's namespace by path, there, but the switch out of descriptors as it checks it: the
    start said "/run/netns/X is not a network namespace", sending the user to look for a
    problem that is not there."""
    ns = lab.netns("n", create=True)
    port = lab.name("p")
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1},
                     "ports": [{"name": port, "netns": f"/run/netns/{ns}"}]}, start=False)
    r = subprocess.run([*NETNS_CHECK_FAILS, sys.executable, "-m", "tapswitch", "run", "-c", sw.config_path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    reason = [line for line in r.stderr.splitlines() if line.startswith("tapswitch:")]
    assert reason == [f"tapswitch: port {port}: cannot check that /run/netns/{ns} is a network namespace: "
                      f"Too many open files"], r.stderr
    assert "Traceback" not in r.stderr
    assert ns in helpers.netns_list()
    assert not helpers.link_exists(port) and not helpers.link_exists(port, ns)
    assert not os.path.exists(sw.socket) and not os.path.exists(sw.socket + ".state")

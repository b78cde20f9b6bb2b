"""The harness itself (conftest.py's lab, helpers.py): what a test made goes, however it ends."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.integration import helpers
from tests.integration.conftest import Lab

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def left_by(made: dict) -> dict:
    """What of a lab's namespaces, links, directories and processes (by their directory) is there."""
    procs = set()
    for d in made["dirs"]:
        procs |= set(helpers.sh("pgrep", "-f", d, check=False).stdout.split())
    present = helpers.netns_list()
    return {"namespaces": [ns for ns in made["namespaces"] if ns in present],
            "links": [link for link in made["links"] if helpers.link_exists(link)],
            "dirs": [d for d in made["dirs"] if os.path.exists(d)],
            "processes": sorted(procs)}


def remove(made: dict) -> None:
    """Take away what a lab under test left (whatever the harness under test did)."""
    for d in made["dirs"]:
        helpers.sh("pkill", "-9", "-f", d, check=False)
    helpers.cleanup(made["namespaces"], made["links"])
    for d in made["dirs"]:
        shutil.rmtree(d, ignore_errors=True)


def default_signals() -> None:
    """SIGINT and SIGTERM as a shell's foreground command has them: this pytest may ignore
    SIGINT (a non-interactive shell's background job does), and an ignored signal stays
    ignored across exec."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


def test_a_stop_that_raises_leaves_the_rest_of_the_close_done(monkeypatch):
    """The first switch's stop raises: the second is stopped all the same, the first is killed,
    and the namespaces, links and directories go (close stopped at the first error, leaving
    all of it)."""
    lab = Lab()
    host = lab.netns("h", create=True)
    first = lab.switch({"switch": {"name": lab.name("s1"), "queues": 1},
                        "ports": [{"name": lab.name("p1"), "netns": lab.name("c1")}]})
    second = lab.switch({"switch": {"name": lab.name("s2"), "queues": 1},
                         "ports": [{"name": lab.name("p2")}]}, netns=host)
    made = {"namespaces": list(lab.namespaces), "links": list(lab.links), "dirs": list(lab.dirs)}

    def stop_fails(*args, **kw):
        raise RuntimeError("stop failed")
    monkeypatch.setattr(first, "stop", stop_fails)
    try:
        with pytest.raises(RuntimeError, match="stop failed"):
            lab.close()
        assert second.proc.poll() == 0        # stopped, by SIGTERM: a clean exit
        assert left_by(made) == {"namespaces": [], "links": [], "dirs": [], "processes": []}
    finally:
        second.stop()
        remove(made)


@pytest.mark.parametrize("signals", [
    pytest.param([signal.SIGINT], id="sigint"),
    pytest.param([signal.SIGINT, signal.SIGINT], id="sigint-then-sigint-in-teardown"),
    pytest.param([signal.SIGTERM], id="sigterm"),
])
def test_an_interrupted_run_leaves_nothing(tmp_path, signals):
    """A pytest interrupted while a test's third switch starts: Ctrl-C, Ctrl-C again while the
    fixtures come down, or SIGTERM (what CI sends on a timeout). No switch, namespace, link or
    directory of the test's is left (a second Ctrl-C cut the teardown short, SIGTERM killed
    pytest before it: both left all of them)."""
    info = tmp_path / "lab.json"
    child = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              os.path.join(HERE, "interrupted_lab.py")],
                             cwd=ROOT, env=dict(os.environ, LAB_INFO=str(info)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=default_signals)
    made = {"namespaces": [], "links": [], "dirs": []}
    try:
        helpers.wait_for("the lab made", info.exists, within=60)
        made = json.loads(info.read_text())
        helpers.wait_for("the third switch started",
                         lambda: helpers.sh("pgrep", "-f", made["dirs"][2], check=False).stdout, within=10)
        child.send_signal(signals[0])
        if len(signals) > 1:
            helpers.wait_for("the teardown", lambda: os.path.exists(f"{info}.teardown"), within=30)
            child.send_signal(signals[1])
        out = child.communicate(timeout=60)[0]
        assert child.returncode != 0, out
        assert left_by(made) == {"namespaces": [], "links": [], "dirs": [], "processes": []}, out[-3000:]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        remove(made)

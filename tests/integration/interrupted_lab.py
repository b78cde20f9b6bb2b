"""Run by test_harness.py in a pytest of its own, which it then interrupts: a lab with a switch
in the host's namespace and one in a namespace of the lab's (as test_vxlan's hosts), and a
third starting (its exec held back: started, not READY). LAB_INFO gets what the lab made,
LAB_INFO.teardown marks a teardown that takes a second, for a second signal to land in."""

import json
import os
import sys
import time

import pytest

HOLD_EXEC = (sys.executable, "-c", "import os, sys, time; time.sleep(60); os.execvp(sys.argv[1], sys.argv[1:])")


@pytest.fixture
def slow_teardown(lab):
    yield
    open(os.environ["LAB_INFO"] + ".teardown", "w").close()
    time.sleep(1)


def test_waits_to_be_interrupted(lab, slow_teardown):
    host = lab.netns("h", create=True)
    switches = [({"name": lab.name("s1"), "queues": 1}, [{"name": lab.name("p1"), "netns": lab.name("c1")}], None),
                ({"name": lab.name("s2"), "queues": 1}, [{"name": lab.name("p2")}], host),
                ({"name": lab.name("s3"), "queues": 1}, [{"name": lab.name("p3")}], None)]
    for cfg, ports, netns in switches[:2]:
        lab.switch({"switch": cfg, "ports": ports}, netns=netns)
    cfg, ports, netns = switches[2]
    starting = lab.switch({"switch": cfg, "ports": ports}, start=False)
    with open(os.environ["LAB_INFO"], "w") as f:
        json.dump({"namespaces": lab.namespaces, "links": lab.links, "dirs": lab.dirs}, f)
    starting.wrapper = list(HOLD_EXEC)
    starting.start(timeout=60)
    pytest.fail("not interrupted")

"""ports.create_all under a stop signal: every port made is closed, wherever the interrupt lands.

The ports here are stand-ins (ports.create is replaced): what is tested is the bookkeeping
of the thread pool, which needs no root. The real thing, with VXLAN devices and a real
SIGTERM, is tests/integration/test_switch.py's test_stop_signal_while_the_ports_are_made_leaves_nothing.
"""

import threading
import time
from concurrent import futures

import pytest

from tapswitch import ports


class Made:
    def __init__(self, index):
        self.index = index
        self.closed = 0

    def close(self):
        self.closed += 1


@pytest.fixture
def made(monkeypatch):
    """ports.create made harmless: it records each stand-in port it makes."""
    out, lock = [], threading.Lock()

    def create(index, cfg, queues, queue_len, namespaces, kept_mac=None):
        time.sleep(0.01)
        port = Made(index)
        with lock:
            out.append(port)
        return port

    monkeypatch.setattr(ports, "create", create)
    return out


@pytest.mark.parametrize("at", [1, 3, 8])
def test_an_interrupt_inside_submit_after_the_port_was_queued_still_closes_it(made, monkeypatch, at):
    """The KeyboardInterrupt of a stop signal may come after submit() queued the port and before
    it returned its future: that port is made all the same, and must be closed."""
    real_submit, calls = futures.ThreadPoolExecutor.submit, []

    def submit(pool, fn, *args, **kw):
        future = real_submit(pool, fn, *args, **kw)
        calls.append(future)
        if len(calls) == at:
            futures.wait([future], timeout=5)     # its port made (the case that leaked)...
            raise KeyboardInterrupt               # ...and the signal, before submit() returns
        return future

    monkeypatch.setattr(futures.ThreadPoolExecutor, "submit", submit)
    with pytest.raises(KeyboardInterrupt):
        ports.create_all([(i, None) for i in range(10)], 1, 16, None)
    assert at - 1 in [p.index for p in made]      # the port whose future never came back
    assert [p.closed for p in made] == [1] * len(made)
    assert len(made) < 10                         # the ports still waiting were not made


def test_without_an_interrupt_every_port_comes_back_in_order(made):
    got = ports.create_all([(i, None) for i in range(10)], 1, 16, None)
    assert [p.index for p in got] == list(range(10)) and not any(p.closed for p in made)

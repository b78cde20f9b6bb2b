"""Have the link monitor lose IFACE's events of a MAC change: `python tests/events_lost.py
PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this process, where every link event
that carries the MAC $TAPSWITCH_TEST_EVENTS_LOST is dropped and the monitor says events were
lost (`overrun`), as the kernel does when the monitor's buffer is full (ENOBUFS): the switch
resyncs instead (Switch.resync_links)."""

import os

from in_process import run

from tapswitch import linkmon


def _lose(mac: str):
    real = linkmon.LinkMonitor.read

    def read(self):
        events = real(self)
        kept = [e for e in events if not (isinstance(e, linkmon.LinkEvent) and e.mac == mac)]
        if len(kept) < len(events):
            self.overrun = True
        return kept
    linkmon.LinkMonitor.read = read


if __name__ == "__main__":
    run(lambda: _lose(os.environ["TAPSWITCH_TEST_EVENTS_LOST"].lower()))

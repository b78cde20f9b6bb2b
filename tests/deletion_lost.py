"""Have the link monitor lose the deletions of one device, and the kernel refuse every tc rule
while a file is there: `python tests/deletion_lost.py PYTHON -m tapswitch ARGS...` runs
`tapswitch ARGS...` in this process, where every link event of the deletion of the device named
$TAPSWITCH_TEST_DELETION_LOST is dropped and the monitor says events were lost (`overrun`), as
the kernel does when the monitor's buffer is full (ENOBUFS): the switch resyncs instead
(Switch.resync_links); and each rule the switch adds while the file
$TAPSWITCH_TEST_INSTALL_FAILS exists is refused (tests/install_fails.py): a remote's attach fails."""

import os

from in_process import run
from install_fails import _refused_while

from tapswitch import linkmon


def _lose(ifname: str):
    real = linkmon.LinkMonitor.read

    def read(self):
        events = real(self)
        kept = [e for e in events if not (isinstance(e, linkmon.LinkEvent) and e.deleted and e.ifname == ifname)]
        if len(kept) < len(events):
            self.overrun = True
        return kept
    linkmon.LinkMonitor.read = read


def _change():
    _lose(os.environ["TAPSWITCH_TEST_DELETION_LOST"])
    _refused_while(os.environ["TAPSWITCH_TEST_INSTALL_FAILS"])


if __name__ == "__main__":
    run(_change)

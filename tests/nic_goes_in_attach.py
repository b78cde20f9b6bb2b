"""Delete a remote port's IFACE while the switch attaches it: `python tests/nic_goes_in_attach.py
PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this process, which deletes the device
$TAPSWITCH_TEST_NIC (`ip link del`) just before the first tc rule is added: IFACE was found,
claimed, its state written down, its clsact added, and then it is gone."""

import os
import subprocess

from in_process import run

from tapswitch import tc

_add_filter = tc.add_filter


def _add_filter_once_it_went(*args, **kw):
    tc.add_filter = _add_filter
    subprocess.run(["ip", "link", "del", os.environ["TAPSWITCH_TEST_NIC"]], check=True)
    return _add_filter(*args, **kw)


if __name__ == "__main__":
    run(lambda: setattr(tc, "add_filter", _add_filter_once_it_went))

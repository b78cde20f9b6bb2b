"""Run the switch with a namespace deleted (`ip netns del`) in the middle of a reload, just as a
port is made in it: `python tests/netns_deleted_in_reload.py PYTHON -m tapswitch ARGS...` runs
`tapswitch ARGS...` in this process. When the file $TAPSWITCH_TEST_NETNS_DEL names exists, the
next port made in a named namespace first removes the namespace that file names (and the file),
and makes another of that name if the file says `NAME again`, as `ip netns add` by the user."""

import os

from in_process import run

from tapswitch import netns

_ensure = netns.Namespaces.ensure


def _deleted_first(self, port):
    trigger = os.environ["TAPSWITCH_TEST_NETNS_DEL"]
    if port.netns_kind == "name" and os.path.exists(trigger):
        with open(trigger) as f:
            name, *again = f.read().split()
        os.unlink(trigger)
        netns.remove(name)
        if again:
            netns.create(name)
    return _ensure(self, port)


if __name__ == "__main__":
    run(lambda: setattr(netns.Namespaces, "ensure", _deleted_first))

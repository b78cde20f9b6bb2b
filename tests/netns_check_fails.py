"""Run the switch out of file descriptors whenever it asks whether a file is a network
namespace: `python tests/netns_check_fails.py PYTHON -m tapswitch ARGS...` runs `tapswitch
ARGS...` in this process, each netns.is_netns with RLIMIT_NOFILE lowered to the descriptors in
use, so that its open fails with EMFILE, as when the ports made at once have taken the rest."""

from in_process import run
from pidfd_fails import at_the_fd_limit

from tapswitch import netns

_is_netns = netns.is_netns


def _out_of_fds(path: str) -> bool:
    return at_the_fd_limit(_is_netns, path)


if __name__ == "__main__":
    run(lambda: setattr(netns, "is_netns", _out_of_fds))

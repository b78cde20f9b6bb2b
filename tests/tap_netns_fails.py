"""Run the switch out of file descriptors just when it asks a port's TAP which namespace it is
in: `python tests/tap_netns_fails.py PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this
process, with RLIMIT_NOFILE lowered to the descriptors in use during the first tap.device_netns
(TUNGETDEVNETNS opens one), so that it fails with EMFILE, as when the ports made at once have
taken the rest. That comes once the port's TAP (and a VXLAN port's device) is made."""

import os
import resource

from in_process import run

from tapswitch import tap

_device_netns = tap.device_netns


def _out_of_fds_once(fd: int):
    tap.device_netns = _device_netns
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.close(lowest)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
    try:
        return _device_netns(fd)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    run(lambda: setattr(tap, "device_netns", _out_of_fds_once))

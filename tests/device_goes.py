"""Delete a device while the switch starts: `python tests/device_goes.py PYTHON -m tapswitch
ARGS...` runs `tapswitch ARGS...` in this process, which deletes the device DEV (`ip link del`)
once, where $TAPSWITCH_TEST_DEVICE_GOES ("DEV@WHERE") says, WHERE one of:
- first_rule: as the first tc rule is about to be added (a remote IFACE found, claimed, its
  state written down and its clsact added, then gone);
- vxlan_create: as a VXLAN port's device is about to be made (its underlay found by the plan);
- attach: as a port's remote (a VXLAN port's device) is about to be attached;
- vxlan_update: as a reload is about to give a VXLAN port's device its new remote hosts."""

import os
import subprocess

from in_process import run

from tapswitch import ports, tc, vxlan

WHERE = {"first_rule": (tc, "add_filter"), "vxlan_create": (vxlan.Tunnel, "create"), "attach": (ports, "_attach"),
         "vxlan_update": (vxlan.Tunnel, "update_remotes")}


def _going(dev: str, owner, name: str):
    real = getattr(owner, name)

    def goes_first(*args, **kw):
        setattr(owner, name, real)
        subprocess.run(["ip", "link", "del", dev], check=True)
        return real(*args, **kw)
    setattr(owner, name, goes_first)


if __name__ == "__main__":
    dev, where = os.environ["TAPSWITCH_TEST_DEVICE_GOES"].split("@")
    run(lambda: _going(dev, *WHERE[where]))

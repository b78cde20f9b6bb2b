"""Run the switch as if 256 ports had come and gone already: `python tests/slots_used_up.py
PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this process, with every port table
slot marked used at start, so that a port a reload adds takes the lowest slot a removed port
left (Switch._free_slot), as it does once every slot has been used."""

from in_process import run

from tapswitch import fastpath, switch

_init = switch.Switch.__init__


def _used_up(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.slots_used = set(range(fastpath.lib.TS_MAX_PORTS))


if __name__ == "__main__":
    run(lambda: setattr(switch.Switch, "__init__", _used_up))

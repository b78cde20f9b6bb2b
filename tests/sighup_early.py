"""Send the switch SIGHUP before it has started to start: `python tests/sighup_early.py WHEN
PYTHON -m tapswitch run -c CONFIG` runs `tapswitch run -c CONFIG` in this process, which
signals itself (SIGHUP) when WHEN is `imports`, as it imports the switch (the ~0.3 s of imports
before Switch.start), or, WHEN the path of another config, once it has read CONFIG: it then
writes that config over CONFIG, and signals itself, as a user changing the config would."""

import os
import shutil
import signal
import sys

from in_process import run

from tapswitch import config


class _SighupOnImport:
    """A finder that finds nothing: it signals as the switch's module is imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "tapswitch.switch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGHUP)
        return None


def _sighup_once_read(new_config: str) -> None:
    real = config.load

    def load(path, *args, **kw):
        cfg = real(path, *args, **kw)
        config.load = real
        shutil.copyfile(new_config, path)
        os.kill(os.getpid(), signal.SIGHUP)
        return cfg
    config.load = load


if __name__ == "__main__":
    when = sys.argv.pop(1)
    if when == "imports":
        run(lambda: sys.meta_path.insert(0, _SighupOnImport()))
    else:
        run(lambda: _sighup_once_read(when))

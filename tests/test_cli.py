"""The command line's own options (the commands are tested with what they drive)."""

import subprocess
import sys

import pytest

import tapswitch
from tapswitch import cli


def test_version_prints_the_version_build_info_exports(capsys):
    r = subprocess.run([sys.executable, "-m", "tapswitch", "--version"], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"tapswitch {tapswitch.__version__}\n", "")
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"tapswitch {tapswitch.__version__}\n"

"""python -m tapswitch: the same as the tapswitch command."""

import sys

from tapswitch.cli import main

sys.exit(main())

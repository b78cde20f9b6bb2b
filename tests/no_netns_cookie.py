"""Run `PYTHON -m tapswitch ARGS...` (as the integration tests' wrapper: this file, then the
switch's command) as on a kernel without netns cookies (before Linux 5.14), where
`netns.cookie` cannot tell one namespace from another and says None."""

import sys

from tapswitch import cli, netns

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[1:3] != ["-m", "tapswitch"]:
        sys.exit(f"usage: {sys.argv[0]} PYTHON -m tapswitch ARGS...")
    netns.cookie = lambda path: None
    sys.exit(cli.main(args[3:]))

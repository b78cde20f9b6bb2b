"""Run `PYTHON -m tapswitch ARGS...` (as the integration tests' wrapper: this file, then the
switch's command) as on a kernel without netns cookies (before Linux 5.14), where
`netns.cookie` cannot tell one namespace from another and says None."""

from in_process import run

from tapswitch import netns

if __name__ == "__main__":
    run(lambda: setattr(netns, "cookie", lambda path: None))

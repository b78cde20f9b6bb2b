"""The test session's signals: SIGTERM (a CI timeout's) ends it as Ctrl-C does, and neither cuts
a teardown short, so what the tests made is removed whichever ends the run."""

import signal
import threading

import pytest

from tests.integration import helpers


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # pytest handles only SIGINT: on SIGTERM it died where it was, the fixtures' teardown not run.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        config._tapswitch_sigterm = signal.signal(signal.SIGTERM, _interrupted)


def pytest_unconfigure(config):
    if hasattr(config, "_tapswitch_sigterm"):
        signal.signal(signal.SIGTERM, config._tapswitch_sigterm)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    with helpers.interrupts_held():     # each fixture's teardown, to its end
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session, exitstatus):
    with helpers.interrupts_held():     # where the teardown runs after an interrupt
        return (yield)

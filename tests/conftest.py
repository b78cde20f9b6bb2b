"""The test session's signals: SIGTERM (a CI timeout's) ends it as Ctrl-C does, and neither cuts
a teardown short, so what the tests made is removed whichever ends the run."""

import os
import signal
import threading

import pytest

from tests.integration import helpers


_PYTEST_PID = os.getpid()


def _interrupted(signum, frame):
    if os.getpid() != _PYTEST_PID:
        # A child forked without exec (pyroute2's netns helper): the handler came with the fork,
        # and a KeyboardInterrupt there would unwind into pytest's frames, tear down this test's
        # fixtures in the child, and remove what the test still uses. It dies, as it would have.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
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

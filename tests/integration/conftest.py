"""Fixtures for tests with real TAP devices and namespaces: each test cleans up after itself."""

import os
import shutil
import signal

import pytest

from tests.integration import helpers


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.root)


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces and TAP devices")


@pytest.fixture
def lab():
    """Makes switches and namespaces for one test and removes all of them afterwards."""
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


class Lab:
    def __init__(self):
        self.tag = helpers.uid("t")
        self.switches: list[helpers.Switch] = []
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.dirs: list[str] = []
        self.procs = []

    def name(self, suffix: str) -> str:
        """A name unique to this test, usable as a TAP or namespace name (<= 15 chars)."""
        n = f"ts{self.tag[1:]}{suffix}"
        assert len(n) <= 15, n
        return n

    def netns(self, suffix: str, create: bool = False) -> str:
        ns = self.name(suffix)
        self.namespaces.append(ns)
        if create:
            helpers.sh("ip", "netns", "add", ns)
            helpers.nsexec(ns, "ip", "link", "set", "lo", "up")
        return ns

    def switch(self, cfg: dict, start: bool = True, netns: str | None = None, wrapper: tuple = (),
               **kw) -> helpers.Switch:
        with helpers.interrupts_held():      # no directory made but not listed
            d = helpers.tmpdir()
            self.dirs.append(d)
        for port in cfg.get("ports", []):
            self.links.append(port["name"])
            if isinstance(port.get("netns"), str) and "/" not in port["netns"] and ":" not in port["netns"]:
                self.namespaces.append(port["netns"])
        sw = helpers.Switch(cfg, d, netns=netns, wrapper=wrapper)
        self.switches.append(sw)
        if start:
            sw.start(**kw)
        return sw

    def close(self):
        """Stop every switch and process, remove the namespaces, links and directories: every
        step, whatever became of the ones before (the first error is raised at the end), and
        all of them before a SIGINT or SIGTERM that comes meanwhile is let through."""
        errors: list[BaseException] = []

        def step(fn, *args):
            try:
                fn(*args)
            except BaseException as e:      # pytest.fail's Failed is no Exception
                errors.append(e)

        with helpers.interrupts_held():
            for sw in self.switches:
                step(sw.stop)
            for sw in self.switches:        # one whose stop failed: its process group, at once
                if sw.proc is not None and sw.proc.poll() is None:
                    step(os.killpg, sw.proc.pid, signal.SIGKILL)
                    step(sw.proc.wait)
            for p in self.procs:
                step(_kill, p)
            step(helpers.cleanup, self.namespaces, self.links)
            for d in self.dirs:
                step(shutil.rmtree, d, True)
        if errors:
            for e in errors[1:]:
                errors[0].add_note(f"lab.close, a later step: {e!r}")
            raise errors[0]


def _kill(p) -> None:
    if p.poll() is None:
        p.kill()
        p.wait()

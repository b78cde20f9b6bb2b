"""Serve a scrape only once the switch stops: `python tests/scraped_while_stopping.py PYTHON -m
tapswitch ARGS...` runs `tapswitch ARGS...` in this process, whose metrics server reads each
scrape's request at once but collects its answer only once the stop reaches the step
$TAPSWITCH_TEST_SCRAPE_AT names, and whose stop goes on past that step only once those scrapes
are answered (a scrape that came just before a SIGTERM, its thread run late on a busy host):
`ports_closed` (the ports closed, not yet gone) or `memory_closed` (the shared memory about to
be unmapped, no reader let in)."""

import os
import threading

import structlog

from in_process import run


def change() -> None:
    from tapswitch import fastpath, metrics, ports, switch

    at = os.environ["TAPSWITCH_TEST_SCRAPE_AT"]
    stopping, go = threading.Event(), threading.Event()
    held = []           # the events of the scrapes held, each set once it is answered
    notify, collect, handle = switch.notify, metrics.SwitchCollector.collect, metrics._Handler.handle
    wait_gone, close = ports.wait_gone, fastpath.Shared.close

    def notified(state: str) -> None:
        if state.startswith("STOPPING"):
            stopping.set()
        notify(state)

    def collect_late(self):
        if not go.is_set():
            structlog.get_logger("test").info("test.scrape_held")
            go.wait(30)
        yield from collect(self)

    def handle_answered(self) -> None:
        answered = threading.Event()
        held.append(answered)
        try:
            handle(self)
        finally:
            answered.set()

    def answer_held() -> None:
        if stopping.is_set() and not go.is_set():
            go.set()
            for answered in list(held):
                answered.wait(10)

    def wait_gone_once_answered(*args, **kw):
        if at == "ports_closed":
            answer_held()
        return wait_gone(*args, **kw)

    def close_once_answered(self) -> None:
        if at == "memory_closed":
            answer_held()
        close(self)

    switch.notify = notified
    metrics.SwitchCollector.collect = collect_late
    metrics._Handler.handle = handle_answered
    ports.wait_gone = wait_gone_once_answered
    fastpath.Shared.close = close_once_answered


if __name__ == "__main__":
    run(change)

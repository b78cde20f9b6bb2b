"""Serve control requests only once the switch stops: `python tests/served_while_stopping.py
PYTHON -m tapswitch ARGS...` runs `tapswitch ARGS...` in this process, whose control socket
accepts each request at once but handles it only once the stop has begun (STOPPING=1), and
whose stop takes the control socket away only once those requests are answered (a request
that came just before a SIGTERM, its thread run late on a busy host)."""

import threading

import structlog

from in_process import run


def change() -> None:
    from tapswitch import control, switch

    stopping = threading.Event()
    held = []           # the events of the requests held, each set once it is answered
    notify, handle, stop = switch.notify, control._Handler.handle, control.ControlServer.stop

    def notified(state: str) -> None:
        if state.startswith("STOPPING"):
            stopping.set()
        notify(state)

    def handle_late(self) -> None:
        if stopping.is_set():
            return handle(self)     # stop_serving's wake-ups
        answered = threading.Event()
        held.append(answered)
        structlog.get_logger("test").info("test.request_held")
        stopping.wait()
        try:
            handle(self)
        finally:
            answered.set()

    def stop_once_answered(self) -> None:
        for answered in list(held):
            answered.wait(10)
        stop(self)

    switch.notify = notified
    control._Handler.handle = handle_late
    control.ControlServer.stop = stop_once_answered


if __name__ == "__main__":
    run(change)

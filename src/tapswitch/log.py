"""Logging: structlog events named noun.verb with key=value fields; console on a TTY, JSON lines otherwise."""

import errno
import logging
import os
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup(level: str = "info", fmt: str = "auto", stream=None) -> None:
    """Configure structlog for the control process (`log.level`, `log.format`)."""
    stream = stream or sys.stderr or open(os.devnull, "w")     # None: stderr was closed (cli.open_closed_stdio)
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (structlog.dev.ConsoleRenderer(colors=stream.isatty()) if fmt == "console"
                else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *args: _Logger(stream),
        cache_logger_on_first_use=False,
    )


class _Logger(structlog.PrintLogger):
    """A PrintLogger that a failed write does not stop: a log line is never worth the switch.

    Its reader may go while the switch runs (`tapswitch run 2>&1 | tee LOG`, and tee ends; the
    terminal of `tapswitch run` hangs up, and the SIGHUP it sends is a reload) or the disk fill
    up: the write's error, raised wherever the switch logged, would end it there, in the middle of
    starting or of a reload, and end its stop, which logs too, before it had removed its
    namespaces, socket and state file. A reader gone for good (EPIPE, EIO) gets /dev/null in its
    place, so that nothing written later fails (a failed start's one line, a worker's last
    words); other lines that cannot be written are lost."""

    def msg(self, message: str) -> None:
        try:
            super().msg(message)
        except (OSError, ValueError) as e:      # ValueError: the stream was closed
            if getattr(e, "errno", None) in (errno.EPIPE, errno.EIO, errno.ECONNRESET):
                _to_devnull(self._file)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _to_devnull(stream) -> None:
    """Point the descriptor under `stream` at /dev/null (what stream still buffers goes there too)."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return
    try:
        os.dup2(null, fd, inheritable=fd <= 2)
    finally:
        os.close(null)

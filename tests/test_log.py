"""Logging: a line that cannot be written is lost, never an exception where the switch logged."""

import contextlib
import os

import pytest
import structlog

from tapswitch import log


@pytest.fixture(autouse=True)
def structlog_as_it_was():
    """log.setup configures structlog for the whole process: the other tests get theirs back."""
    config = structlog.get_config()
    yield
    structlog.configure(**config)


def test_a_full_disk_loses_the_line_not_the_switch():
    """ENOSPC (/dev/full): the switch logs on; the stream stays, for when the disk has room."""
    full = open("/dev/full", "w")
    try:
        log.setup("info", "json", stream=full)
        structlog.get_logger("t").info("lost.line")         # raised OSError: No space left on device
        structlog.get_logger("t").info("lost.too")
        assert os.path.realpath(f"/proc/self/fd/{full.fileno()}") == "/dev/full"
    finally:
        with contextlib.suppress(OSError):     # what it still holds cannot be written either
            full.close()


def test_a_pipe_without_reader_is_put_on_dev_null():
    """EPIPE: the reader is gone for good; the descriptor writes to /dev/null from then on."""
    r, w = os.pipe()
    os.close(r)
    with open(w, "w") as stream:
        log.setup("info", "json", stream=stream)
        logger = structlog.get_logger("t")
        logger.warning("lost.line")                          # raised BrokenPipeError
        logger.warning("another")
        assert os.path.realpath(f"/proc/self/fd/{stream.fileno()}") == "/dev/null"

"""How a worker gets its queue fds: over its ready socket, PORTS_PER_MESSAGE at a time."""

import os
import socket

from tapswitch import worker


def _pair():
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def test_every_port_arrives_with_its_own_fd_past_one_message():
    ours, theirs = _pair()
    files = {i * 3: os.open("/dev/null", os.O_RDONLY) for i in range(2 * worker.PORTS_PER_MESSAGE + 5)}
    got = {}
    try:
        worker.send_ports(ours, files)
        got = worker.receive_ports(theirs)
        assert sorted(got) == sorted(files)
        for index, fd in files.items():
            assert got[index] != fd       # a copy, as in another process
            assert os.path.sameopenfile(got[index], fd)
    finally:
        for fd in [*files.values(), *got.values()]:
            os.close(fd)
        ours.close()
        theirs.close()


def test_no_ports_is_a_message_too():
    ours, theirs = _pair()
    try:
        worker.send_ports(ours, {})
        assert worker.receive_ports(theirs) == {}
    finally:
        ours.close()
        theirs.close()


def _refused_keeping_no_fd(theirs) -> None:
    before = set(os.listdir("/proc/self/fd"))
    assert worker.receive_ports(theirs) is None
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_socket_closed_before_the_last_message_means_not_wanted_and_keeps_no_fd():
    ours, theirs = _pair()
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        socket.send_fds(ours, [b"p0"], [fd])         # "more to come", then nothing
        ours.close()
        _refused_keeping_no_fd(theirs)
    finally:
        os.close(fd)
        theirs.close()


def test_a_malformed_message_is_refused_and_its_fds_closed():
    ours, theirs = _pair()
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        socket.send_fds(ours, [b"P1,2"], [fd])       # two indexes, one fd
        _refused_keeping_no_fd(theirs)
    finally:
        os.close(fd)
        ours.close()
        theirs.close()

"""SaidOnce: a failure that repeats is said once while it lasts, again when it changes or after a success."""

import threading
import time

from tapswitch.saidonce import SaidOnce


def test_a_failure_is_said_once_while_it_lasts():
    said = SaidOnce()
    assert [said.news("Too many open files") for _ in range(3)] == [True, False, False]
    assert said.lasts()


def test_a_failure_that_changes_is_said_again():
    said = SaidOnce()
    assert [said.news(e) for e in ("EMFILE", "ENFILE", "ENFILE", "EMFILE")] == [True, True, False, True]


def test_a_failure_after_a_success_is_said_again():
    said = SaidOnce()
    said.news("Too many open files")
    said.over()
    assert not said.lasts()
    assert said.news("Too many open files")
    said.over()
    said.over()                       # over twice (a success at every tick): nothing to forget
    assert not said.lasts()


def test_failures_are_kept_by_key():
    said = SaidOnce()
    assert said.news("Too many open files", "p0") and said.news("Too many open files", "p1")
    assert not said.news("Too many open files", "p0")
    said.over("p0")
    assert (said.lasts("p0"), said.lasts("p1"), said.lasts()) == (False, True, False)


def test_failure_is_the_one_said_last_while_it_lasts():
    """What `tapswitch ports` shows as a port's error: the failure said last, None once it is over."""
    said = SaidOnce()
    assert said.failure("p0") is None
    said.news("refused: held by another switch", "p0")
    said.news("Too many open files", "p0")
    assert said.failure("p0") == "Too many open files"
    said.over("p0")
    assert said.failure("p0") is None


def test_only_ends_every_failure_but_those_named():
    """A tick in which p1 succeeded and p2 went: only p0's failure lasts, and p1's next is news."""
    said = SaidOnce()
    for name in ("p0", "p1", "p2"):
        said.news("Too many open files", name)
    said.only({"p0"})
    assert [said.lasts(name) for name in ("p0", "p1", "p2")] == [True, False, False]
    assert not said.news("Too many open files", "p0")
    assert said.news("Too many open files", "p1")


def test_one_failure_in_many_threads_is_said_once():
    """A scrape and `tapswitch ports` fail at once: one of them says it. The key's hash lets
    the other threads run in the middle of news() (its lookup and its store), where they
    found no failure said yet and each said it, had news() no lock."""
    class Port(str):
        def __hash__(self):
            time.sleep(0.001)         # gives up the GIL: another thread runs here
            return str.__hash__(self)

    said = SaidOnce()
    start = threading.Barrier(8)
    answers = []

    def fail():
        start.wait()
        answers.append(said.news("Too many open files", Port("p0")))

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [False] * 7 + [True]

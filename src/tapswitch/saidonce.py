"""saidonce: a failure that repeats, said once while it lasts.

Some failures are tried again until they pass: the control loop's tick asks
again where a port's TAP is, looks at its devices again, attaches IFACE again;
a server accepts again; each reload and the stop notify systemd again. Logged
at every try, one failure would fill the log with the same line, every second
or faster. The rule, for all of them: a failure is said at its first try, said
again only if it changes (another error), and forgotten once what failed
succeeds, so that its next failure is said. SaidOnce keeps that rule in one
place: it remembers what was said last, and answers whether a failure is news.

Failures are kept by key, what failed (a port's name); one that stands alone
has the key None. Thread-safe: a scrape and `tapswitch ports` fail in two
threads, and the failure is said by whichever asks first.

Not for a state that is said both as it goes and as it comes back
(`vxlan.underlay_down` then `vxlan.underlay_up`, `remote.rules_full` then
`remote.rules_fit`): each change of such a state is an event of its own.
"""

import threading
from collections.abc import Collection, Hashable


class SaidOnce:
    """The failures said, by key, each until it is over."""

    def __init__(self) -> None:
        self._said: dict = {}            # key -> its failure as said last, while it lasts
        self._lock = threading.Lock()

    def news(self, failure: object, key: Hashable = None) -> bool:
        """`key` failed with `failure` (an error's words, or anything that compares so): whether
        to say it, that is, it is not the failure said last for `key`. Noted as said."""
        with self._lock:
            news = key not in self._said or self._said[key] != failure
            self._said[key] = failure
        return news

    def over(self, key: Hashable = None) -> None:
        """What `key` names succeeded: its failure is over, and its next is said."""
        with self._lock:
            self._said.pop(key, None)

    def only(self, keys: Collection[Hashable]) -> None:
        """Every failure is over but those of `keys`: a round of tries (a tick) in which the
        others succeeded, or were not tried (what they name went)."""
        with self._lock:
            self._said = {key: failure for key, failure in self._said.items() if key in keys}

    def lasts(self, key: Hashable = None) -> bool:
        """Whether `key` failed and is not over: the next try is due."""
        with self._lock:
            return key in self._said

    def failure(self, key: Hashable = None):
        """`key`'s failure as said last while it lasts (`tapswitch ports` shows it), else None."""
        with self._lock:
            return self._said.get(key)

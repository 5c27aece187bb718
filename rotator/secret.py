"""A wrapper that keeps secret values out of reprs, f-strings and logs.

Every secret value that enters the process (the rotator's own credentials, new token values read or
created) is wrapped in `Secret` and registered, so the log redaction processor can also scrub it from
free text that reached a log line by accident.
"""

from __future__ import annotations

import threading
import weakref

_REDACTED = "**redacted**"
# Values shorter than this are not scrubbed from free text: they would match ordinary words.
_MIN_SCRUB_LENGTH = 8


class _Registry:
    """Values of live Secrets, bucketed by length.

    Scrubbing looks up every window of each registered length in a set, so its cost grows with the
    text's length and the number of distinct value lengths, never with the number of secrets alive
    (a rotation of thousands of targets would otherwise pay for every value on every log line).
    Scrubbing is far more frequent than registering (every string of every log line), so it reads an
    immutable snapshot of the buckets without the lock; registering and forgetting rebuild it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._by_length: dict[int, set[str]] = {}
        #: (shortest length registered, ((length, values), ...) longest first)
        self._snapshot: tuple[int, tuple[tuple[int, frozenset[str]], ...]] = (0, ())
        # Values of collected Secrets, removed at the next add/scrub. Finalizers run inside garbage
        # collection, which can start while this thread holds the lock: they must never take it.
        self._dead: list[str] = []

    def add(self, secret: Secret) -> None:
        value = secret._value
        if len(value) < _MIN_SCRUB_LENGTH:
            return
        with self._lock:
            self._reap()
            self._counts[value] = self._counts.get(value, 0) + 1
            bucket = self._by_length.setdefault(len(value), set())
            if value not in bucket:
                bucket.add(value)
                self._rebuild()
        weakref.finalize(secret, self._dead.append, value)

    def _reap(self) -> None:
        """Forget values of collected Secrets (lock held)."""
        changed = False
        while self._dead:
            value = self._dead.pop()
            left = self._counts.get(value, 0) - 1
            if left > 0:
                self._counts[value] = left
                continue
            self._counts.pop(value, None)
            bucket = self._by_length.get(len(value))
            if bucket is not None:
                bucket.discard(value)
                changed = True
                if not bucket:
                    del self._by_length[len(value)]
        if changed:
            self._rebuild()

    def _rebuild(self) -> None:
        """A new snapshot for scrub (lock held)."""
        buckets = sorted(((length, frozenset(values)) for length, values in self._by_length.items()),
                         key=lambda item: -item[0])
        self._snapshot = (min(self._by_length, default=0), tuple(buckets))

    def __len__(self) -> int:
        """Distinct values registered and not collected yet."""
        with self._lock:
            self._reap()
            return len(self._counts)

    def scrub(self, text: str) -> str:
        if self._dead:
            with self._lock:
                self._reap()
        shortest, buckets = self._snapshot
        if not buckets or len(text) < shortest:
            return text
        # longest first, so a value containing a shorter one is replaced whole
        for length, values in buckets:
            if length > len(text):
                continue
            windows = len(text) - length + 1
            if len(values) <= windows:
                # few values: a substring search each (C speed) beats hashing every window of the text
                found = {value for value in values if value in text}
            else:
                found = {text[i:i + length] for i in range(windows)} & values
            for value in found:
                text = text.replace(value, _REDACTED)
        return text


registry = _Registry()


class Secret:
    """An opaque secret string. `str()`/`repr()` never show it; `reveal()` does, on purpose."""

    __slots__ = ("_value", "__weakref__")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value
        registry.add(self)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(**redacted**)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self):  # never let pickling carry the value somewhere unexpected
        raise TypeError("Secret values cannot be pickled")


def scrub(text: str) -> str:
    """Replace every registered secret value found in `text`."""
    return registry.scrub(text)


REDACTED = _REDACTED

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
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: weakref.WeakSet[Secret] = weakref.WeakSet()

    def add(self, secret: Secret) -> None:
        if len(secret._value) >= _MIN_SCRUB_LENGTH:
            with self._lock:
                self._values.add(secret)

    def scrub(self, text: str) -> str:
        with self._lock:
            values = [s._value for s in self._values]
        for value in values:
            if value in text:
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

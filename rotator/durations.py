"""Human durations as written in the config: "90s", "15m", "12h", "30d", "1h30m"."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """Seconds in `text`; raises ValueError with the accepted forms."""
    if not isinstance(text, str):
        raise ValueError("a duration is a string such as \"90s\", \"15m\", \"12h\" or \"30d\"")
    compact = text.strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(compact) or not compact:
        raise ValueError(f"{text!r} is not a duration; write e.g. \"90s\", \"15m\", \"12h\", \"30d\" or \"1h30m\"")
    return total


def format_duration(seconds: float) -> str:
    """The shortest readable form: 2592000 -> "30d", 5400 -> "1h30m"."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    remaining = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"

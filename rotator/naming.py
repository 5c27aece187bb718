"""Generation names: `search-frontend` -> `search-frontend-20261204T145200Z`.

Sortable (UTC timestamp), unique (bumped past every existing generation), and recognisable, so a
token created by a clone whose answer was lost can be found by name and revoked.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Iterable

_STAMP = "%Y%m%dT%H%M%SZ"


def generation_pattern(token_name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(token_name)}-(\d{{8}}T\d{{6}}Z)$")


def is_generation(token_name: str, candidate: str) -> bool:
    return generation_pattern(token_name).match(candidate) is not None


def generation_time(token_name: str, candidate: str) -> datetime | None:
    match = generation_pattern(token_name).match(candidate)
    if not match:
        return None
    return datetime.strptime(match.group(1), _STAMP).replace(tzinfo=timezone.utc)


def next_generation(token_name: str, now: datetime, existing: Iterable[str]) -> str:
    """A name later than `now` truncated to the second and than every existing generation."""
    taken = set(existing)
    moment = now.astimezone(timezone.utc).replace(microsecond=0)
    latest = max((t for n in taken if (t := generation_time(token_name, n))), default=None)
    if latest is not None and latest >= moment:
        moment = latest + timedelta(seconds=1)
    while (name := f"{token_name}-{moment.strftime(_STAMP)}") in taken:
        moment += timedelta(seconds=1)
    return name

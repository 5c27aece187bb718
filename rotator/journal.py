"""A typed view over a target's journal record (plain JSON, no secrets).

    lease                {owner, expires_at, acquired_at}       who may change the target now
    in_progress          {new_token_name, source_token_name,    a rotation between clone and
                          previous, started_at, owner}           promotion, written before the clone
    pending_revocations  [{name, not_before}]                   previous tokens waiting out grace
    last_result          {outcome, at, token_name, error}       for `status` and metrics
    last_success_at                                              when a rotation last completed
    last_sweep_at                                                when orphans were last looked for
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any, Mapping


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_iso(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class Journal:
    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = copy.deepcopy(dict(data or {}))

    # lease
    @property
    def lease_owner(self) -> str | None:
        return (self.data.get("lease") or {}).get("owner")

    @property
    def lease_expires_at(self) -> datetime | None:
        return parse_iso((self.data.get("lease") or {}).get("expires_at"))

    def set_lease(self, owner: str, expires_at: datetime, acquired_at: datetime | None = None) -> None:
        lease = dict(self.data.get("lease") or {})
        if lease.get("owner") != owner:
            lease = {"owner": owner, "acquired_at": iso(acquired_at or expires_at)}
        lease["expires_at"] = iso(expires_at)
        self.data["lease"] = lease

    def clear_lease(self) -> None:
        self.data.pop("lease", None)

    # rotation in flight
    @property
    def in_progress(self) -> dict[str, Any] | None:
        value = self.data.get("in_progress")
        return value if isinstance(value, dict) and value.get("new_token_name") else None

    def start(self, new_token_name: str, source_token_name: str, now: datetime, *,
              previous: list[str] | tuple[str, ...] = (), owner: str | None = None) -> None:
        """Write-ahead record of a rotation: the new name before the clone is asked for, and the
        tokens it replaces, so a run that dies anywhere after this leaves enough to finish it."""
        self.data["in_progress"] = {"new_token_name": new_token_name, "source_token_name": source_token_name,
                                    "previous": sorted(set(previous)), "started_at": iso(now), "owner": owner}
        # Names are never reused, even after an abandoned attempt: stores may key writes on the name.
        self.data["last_generation"] = new_token_name

    def finish(self) -> None:
        self.data.pop("in_progress", None)

    # revocations waiting out the grace period
    @property
    def pending_revocations(self) -> list[dict[str, Any]]:
        value = self.data.get("pending_revocations")
        return [r for r in value if isinstance(r, dict) and r.get("name")] if isinstance(value, list) else []

    def schedule_revocation(self, name: str, not_before: datetime) -> None:
        entries = [r for r in self.pending_revocations if r["name"] != name]
        entries.append({"name": name, "not_before": iso(not_before)})
        self.data["pending_revocations"] = entries

    def revocation_done(self, name: str) -> None:
        self.data["pending_revocations"] = [r for r in self.pending_revocations if r["name"] != name]

    def due_revocations(self, now: datetime) -> list[str]:
        return [r["name"] for r in self.pending_revocations
                if (parse_iso(r.get("not_before")) or now) <= now]

    def next_revocation_at(self) -> datetime | None:
        times = [t for r in self.pending_revocations if (t := parse_iso(r.get("not_before")))]
        return min(times, default=None)

    # orphan sweeps (listing a client's tokens) are needed only after trouble, and once a day
    @property
    def last_sweep_at(self) -> datetime | None:
        return parse_iso(self.data.get("last_sweep_at"))

    def record_sweep(self, now: datetime) -> None:
        self.data["last_sweep_at"] = iso(now)

    @property
    def is_empty(self) -> bool:
        return not self.data

    # results
    def record_result(self, outcome: str, now: datetime, *, token_name: str | None = None,
                      error: str | None = None) -> None:
        result: dict[str, Any] = {"outcome": outcome, "at": iso(now)}
        if token_name:
            result["token_name"] = token_name
        if error:
            result["error"] = error[:500]
        self.data["last_result"] = result
        if outcome == "success":
            self.data["last_success_at"] = iso(now)

    @property
    def last_result(self) -> dict[str, Any] | None:
        value = self.data.get("last_result")
        return value if isinstance(value, dict) else None

    @property
    def last_success_at(self) -> datetime | None:
        return parse_iso(self.data.get("last_success_at"))

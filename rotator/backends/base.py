"""The interface every secret store implements, and the records it stores.

A *destination* is one secret in one store. For the rotation protocol it has two slots:

- **current**: what consumers read (AWS: the `AWSCURRENT` version; Vault: the latest KV version);
- **pending**: the new value, durably stored but not yet served (AWS: `AWSPENDING`; Vault: a
  sibling record), so a crash never loses a token value that is already live on Funnelback.

The first destination of a target is also its *journal home*: it keeps a small JSON record
(no secrets) holding the target's rotation lease, the rotation in flight and the revocations that
wait out a grace period. Every journal write is a compare-and-swap on the version read, which is
what makes "one rotation at a time per target" hold across processes and machines.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from rotator.errors import BackendDataError
from rotator.secret import Secret

# Keys rotator owns in a destination's JSON; every other key is the user's and is carried over.
PAYLOAD_KEYS = ("token", "token_name", "client_id", "rotated_at")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with a Z, to the second: 2026-12-04T14:52:00Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Payload:
    """The JSON object a destination holds. `repr` never shows the token."""

    token: Secret
    token_name: str | None
    client_id: str | None
    rotated_at: datetime | None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The stored text. This is the one place a token value is revealed for writing."""
        body = dict(self.extra)
        body.update({
            "token": self.token.reveal(),
            "token_name": self.token_name,
            "client_id": self.client_id,
            "rotated_at": format_time(self.rotated_at) if self.rotated_at else None,
        })
        return json.dumps({k: v for k, v in body.items() if v is not None}, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.to_json())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "") -> Payload | None:
        """None when the object holds no token (e.g. an empty placeholder)."""
        token = data.get("token")
        if token is None or token == "":
            return None
        if not isinstance(token, str):
            raise BackendDataError("the 'token' field is not a string", destination=where, operation="read")
        name = data.get("token_name")
        client = data.get("client_id")
        return cls(token=Secret(token),
                   token_name=name if isinstance(name, str) else None,
                   client_id=client if isinstance(client, str) else None,
                   rotated_at=parse_time(data.get("rotated_at")),
                   extra={k: v for k, v in data.items() if k not in PAYLOAD_KEYS})

    @classmethod
    def from_text(cls, text: str | None, *, where: str = "") -> Payload | None:
        """Parse a stored string. A bare non-JSON string is a hand-written token being adopted."""
        if text is None or not text.strip():
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return cls(token=Secret(text.strip()), token_name=None, client_id=None, rotated_at=None)
        if isinstance(data, str):
            return cls(token=Secret(data), token_name=None, client_id=None, rotated_at=None) if data else None
        if not isinstance(data, dict):
            raise BackendDataError("the secret is JSON but not an object", destination=where, operation="read",
                                   hint="store a JSON object such as {\"token\": ...}")
        return cls.from_dict(data, where=where)

    def same_token(self, other: Payload | None) -> bool:
        return other is not None and other.token == self.token

    def successor(self, *, token: Secret, token_name: str, client_id: str, rotated_at: datetime) -> Payload:
        """The next payload: new token fields, the user's extra keys kept."""
        return replace(self, token=token, token_name=token_name, client_id=client_id, rotated_at=rotated_at)


@dataclass(frozen=True)
class Slot:
    """One slot of a destination: its payload (None when empty) and the store's version for CAS."""

    payload: Payload | None = None
    version: str | None = None


@dataclass(frozen=True)
class DestinationState:
    current: Slot = Slot()
    pending: Slot = Slot()
    exists: bool = True     # False: the secret itself does not exist yet
    #: the value current was promoted over, when the store still marks its token as not yet
    #: retired (rotator.quick died, or could not revoke, between promotion and revocation)
    retiring: Slot = Slot()


@dataclass(frozen=True)
class JournalRecord:
    """The target's journal: no secrets, only names and times. Stored as JSON in the journal home."""

    data: Mapping[str, Any]
    version: str | None      # the store's version of this record, for compare-and-swap; None = never written

    @classmethod
    def empty(cls) -> JournalRecord:
        return cls(data={}, version=None)


@dataclass(frozen=True)
class CheckResult:
    """One line of `rotator check`."""

    name: str
    ok: bool
    detail: str = ""


class Destination(ABC):
    """One secret in one store. Methods are idempotent: any step may run twice after a crash."""

    #: "backend:locator", used in messages, logs and status (never a value)
    label: str

    @abstractmethod
    def read(self) -> DestinationState:
        """Both slots. A missing secret reads as DestinationState(exists=False)."""

    @abstractmethod
    def write_pending(self, payload: Payload, state: DestinationState) -> DestinationState:
        """Store `payload` in the pending slot, never visible to consumers, creating the secret if
        allowed. Compare-and-swap against `state` (the last read): BackendConflictError if another
        writer changed the pending slot since. Writing the same payload again is a no-op."""

    @abstractmethod
    def promote(self, payload: Payload, state: DestinationState) -> None:
        """Make `payload` (already pending) the current value, then clear the pending slot.
        If the current value already holds `payload`'s token, only clears the pending slot."""

    @abstractmethod
    def discard_pending(self, state: DestinationState) -> None:
        """Clear the pending slot (no-op if empty). Never touches the current value."""

    @abstractmethod
    def read_journal(self) -> JournalRecord:
        """The target's journal record, or JournalRecord.empty()."""

    @abstractmethod
    def write_journal(self, data: Mapping[str, Any], expected: JournalRecord) -> JournalRecord:
        """Replace the journal if it is still at `expected.version`; else BackendConflictError.
        Returns the record as written (with its new version)."""

    @abstractmethod
    def check(self, *, write: bool) -> list[CheckResult]:
        """Read-only preflight: can rotator read this secret, and (when `write`) may it write it?
        Never writes; where a store cannot answer "may I write" without writing, says so."""


@dataclass(frozen=True)
class CurrentVersion:
    """A destination's current version, read in one call, with the labels it carries."""

    version_id: str
    stages: tuple[str, ...]
    payload: Payload | None     # None: no token in it (a placeholder, or not rotator's format)


class QuickDestination(ABC):
    """A destination whose store makes the common rotation safe without the journal (rotator.quick):
    a pending version is immutable and addressed by its id, and promotion is a compare-and-swap on
    the version it replaces. AWS Secrets Manager is one."""

    @abstractmethod
    def read_current(self) -> CurrentVersion | None:
        """The current version in one call; None if the secret or its current label is missing."""

    @abstractmethod
    def is_plain(self, current: CurrentVersion) -> bool:
        """Only a current value: a token, no pending label on it, not a journal record."""

    @abstractmethod
    def put_pending(self, payload: Payload) -> str:
        """Store `payload` as the pending version in one call; returns its version id."""

    @abstractmethod
    def promote_over(self, pending: str, *, replacing: str) -> bool:
        """Make version `pending` current if `replacing` still is (else False: another writer got
        there first). The pending label stays on it, marking the previous value as not yet retired,
        until `retire_marker`."""

    @abstractmethod
    def retire_marker(self, version: str) -> None:
        """Drop the pending label from `version` (no-op if it is not there): the previous token is
        revoked or recorded in the journal, or the pending value was abandoned."""


class Backend(ABC):
    """A configured store ([backends.NAME]): holds the SDK client shared by its destinations."""

    name: str

    @abstractmethod
    def destination(self, options: Mapping[str, Any], *, target: str) -> Destination:
        """The destination for one `destinations` entry of a target."""

    @abstractmethod
    def check(self) -> list[CheckResult]:
        """Reachability and authentication of the store itself."""

    def read_currents(self, destinations: Sequence[Destination]) -> dict[str, CurrentVersion]:
        """Current versions of many of this backend's destinations in few calls, by label; a store
        without such a call returns nothing and each rotation reads its own (the default)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

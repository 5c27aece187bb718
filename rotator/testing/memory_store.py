"""An in-memory destination with the same compare-and-swap semantics as the real stores.

For unit tests of the rotation protocol (no network), property-based tests, and as the reference
behaviour the real backends are held to. Thread-safe; `fail_next` injects errors per operation.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Mapping

from rotator.backends.base import CheckResult, Destination, DestinationState, JournalRecord, Payload, Slot
from rotator.errors import BackendConflictError, RotatorError


class MemoryDestination(Destination):
    def __init__(self, label: str = "memory:secret") -> None:
        self.label = label
        self._lock = threading.Lock()
        self._versions = itertools.count(1)
        self.current: Slot = Slot()
        self.pending: Slot = Slot()
        self.journal = JournalRecord.empty()
        self.exists = False
        self.history: list[Payload] = []          # every value ever made current, in order
        self._faults: dict[str, list[RotatorError]] = {}

    def fail_next(self, operation: str, error: RotatorError) -> None:
        """The next call of `operation` (read, write_pending, promote, discard_pending, read_journal,
        write_journal) raises `error` without effect."""
        with self._lock:
            self._faults.setdefault(operation, []).append(error)

    def _maybe_fail(self, operation: str) -> None:
        errors = self._faults.get(operation)
        if errors:
            raise errors.pop(0)

    def seed(self, payload: Payload) -> None:
        with self._lock:
            self.current = Slot(payload, str(next(self._versions)))
            self.exists = True
            self.history.append(payload)

    def read(self) -> DestinationState:
        with self._lock:
            self._maybe_fail("read")
            return DestinationState(current=self.current, pending=self.pending, exists=self.exists)

    def write_pending(self, payload: Payload, state: DestinationState) -> DestinationState:
        with self._lock:
            self._maybe_fail("write_pending")
            if self.pending.payload is not None and payload.same_token(self.pending.payload):
                return DestinationState(self.current, self.pending, True)
            if self.pending.version != state.pending.version:
                raise BackendConflictError("pending changed since read", destination=self.label,
                                           operation="write_pending")
            self.pending = Slot(payload, str(next(self._versions)))
            self.exists = True
            return DestinationState(self.current, self.pending, True)

    def promote(self, payload: Payload, state: DestinationState) -> None:
        with self._lock:
            self._maybe_fail("promote")
            if self.current.payload is not None and payload.same_token(self.current.payload):
                self.pending = Slot()
                return
            if self.pending.payload is None or not payload.same_token(self.pending.payload):
                raise BackendConflictError("the payload is not pending", destination=self.label, operation="promote")
            self.current = Slot(self.pending.payload, str(next(self._versions)))
            self.history.append(self.pending.payload)
            self.pending = Slot()

    def discard_pending(self, state: DestinationState) -> None:
        with self._lock:
            self._maybe_fail("discard_pending")
            self.pending = Slot()

    def read_journal(self) -> JournalRecord:
        with self._lock:
            self._maybe_fail("read_journal")
            return self.journal

    def write_journal(self, data: Mapping[str, Any], expected: JournalRecord) -> JournalRecord:
        with self._lock:
            self._maybe_fail("write_journal")
            if self.journal.version != expected.version:
                raise BackendConflictError("journal changed since read", destination=self.label,
                                           operation="write_journal")
            self.journal = JournalRecord(dict(data), str(next(self._versions)))
            return self.journal

    def check(self, *, write: bool) -> list[CheckResult]:
        return [CheckResult(f"{self.label}: read", True)]

"""The per-target rotation lease, kept in the target's journal record.

A lease is a claim with an expiry, written by compare-and-swap on the journal's version, and renewed
by a heartbeat while work runs. A process that dies leaves a lease that simply expires, so a re-run
takes over within `lock_ttl`, not never. Every journal change made while holding the lease goes
through `Lease.update`, which serialises them with the heartbeat (both are CAS writes of the same
record, so they must not race each other inside one process).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Callable

from rotator.backends.base import Destination, JournalRecord
from rotator.errors import BackendConflictError, LeaseHeldError, LeaseLostError, RotatorError
from rotator.journal import Journal, iso
from rotator.logs import get_logger

log = get_logger("rotator.lease")

Clock = Callable[[], datetime]


def new_owner_id() -> str:
    """Unique per acquisition: host, pid and a random suffix (two threads never share one)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """A held lease. Use `acquire_lease` to get one; `release` (or the context manager) to end it."""

    def __init__(self, home: Destination, record: JournalRecord, owner: str, ttl: float, clock: Clock,
                 target: str, *, acquired_from: str | None = None) -> None:
        self._home = home
        #: the journal version the lease was written over: if it is the version a caller read
        #: before, nothing changed the target in between
        self.acquired_from = acquired_from
        self._record = record
        self.owner = owner
        self._ttl = ttl
        self._clock = clock
        self._target = target
        self._lock = threading.Lock()
        self._staged: list[Callable[[Journal], None]] = []
        self._lost: BaseException | None = None
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name=f"lease-{target}", daemon=True)
        self._heartbeat.start()

    @property
    def journal(self) -> Journal:
        """The journal as it will be written next: the stored record plus staged changes."""
        with self._lock:
            journal = Journal(self._record.data)
            for mutate in self._staged:
                mutate(journal)
            return journal

    def stage(self, mutate: Callable[[Journal], None]) -> None:
        """Queue a change for the next write (update, heartbeat or release). For bookkeeping that
        needs no write-ahead: losing it in a crash only makes the next run redo idempotent work."""
        with self._lock:
            self._staged.append(mutate)

    def ensure_held(self) -> None:
        """Raise LeaseLostError if the lease was taken over or may have expired."""
        if self._lost is not None:
            raise LeaseLostError("the rotation lease was lost; another process may have taken over",
                                 target=self._target) from None
        expires = Journal(self._record.data).lease_expires_at
        if expires is None or self._clock() >= expires:
            raise LeaseLostError("the rotation lease expired before this step", target=self._target)

    def update(self, mutate: Callable[[Journal], None], *, keep: bool = True) -> Journal:
        """Apply `mutate` to the journal and write it (renewing the lease, or dropping it if not keep)."""
        with self._lock:
            if self._lost is not None:
                raise LeaseLostError("the rotation lease was lost", target=self._target)
            journal = Journal(self._record.data)
            for staged in self._staged:
                staged(journal)
            mutate(journal)
            if keep:
                journal.set_lease(self.owner, self._clock() + timedelta(seconds=self._ttl))
            else:
                journal.clear_lease()
            try:
                self._record = self._home.write_journal(journal.data, self._record)
            except BackendConflictError:
                self._lost = LeaseLostError("journal changed under the lease", target=self._target)
                raise self._lost from None
            self._staged.clear()
            return Journal(self._record.data)

    def release(self, mutate: Callable[[Journal], None] | None = None) -> None:
        self._stop.set()
        self._heartbeat.join(timeout=5)
        if self._lost is None:
            self.update(mutate or (lambda journal: None), keep=False)

    def abandon(self) -> None:
        """Stop renewing without writing (e.g. on shutdown): the lease expires on its own."""
        self._stop.set()

    def _beat(self) -> None:
        interval = max(self._ttl / 3, 0.2)
        while not self._stop.wait(interval):
            try:
                self.update(lambda journal: None)
            except LeaseLostError:
                log.warning("lease_lost", target=self._target)
                return
            except RotatorError as exc:
                # A store hiccup: keep trying while the lease has time left; ensure_held() stops the
                # work if it runs out.
                log.warning("lease_renew_failed", target=self._target, error=exc.one_line())


def acquire_lease(home: Destination, *, target: str, ttl: float, wait: float, clock: Clock,
                  on_wait: Callable[[Journal], bool] | None = None,
                  prepare: Callable[[JournalRecord, Journal, str], None] | None = None,
                  owner: str | None = None, first: JournalRecord | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> Lease | None:
    """Take the target's lease, waiting up to `wait` seconds while another live process holds it.

    `on_wait(journal)` is called each time the journal is read; when it returns True the caller no
    longer needs the lease (e.g. another process completed the rotation it wanted) and None is
    returned. `prepare(record, journal, owner)` may add to the journal written with the lease (one
    write instead of two). `first` is a record the caller has just read, used instead of reading
    again (the compare-and-swap catches it being stale). Raises LeaseHeldError when `wait` runs out.
    """
    owner = owner or new_owner_id()
    deadline = time.monotonic() + wait
    while True:
        record, first = (first, None) if first is not None else (home.read_journal(), None)
        journal = Journal(record.data)
        now = clock()
        holder, expires = journal.lease_owner, journal.lease_expires_at
        if holder and expires and expires > now:
            if on_wait is not None and on_wait(journal):
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LeaseHeldError(
                    f"another rotator ({holder}) holds the lease until {iso(expires)}",
                    target=target, step="lock",
                    hint="it is rotating this target now; retry later, or wait for the lease to expire")
            sleep(min(0.5, remaining, max((expires - now).total_seconds(), 0.05)))
            continue
        if holder:
            log.info("lease_taken_over", target=target, expired_owner=holder)
        # Also when no holder was seen: another process may have finished between our first read
        # and this one, and the caller must not start a second rotation then.
        if on_wait is not None and on_wait(journal):
            return None
        if prepare is not None:
            prepare(record, journal, owner)
        journal.set_lease(owner, now + timedelta(seconds=ttl), acquired_at=now)
        try:
            written = home.write_journal(journal.data, record)
        except BackendConflictError:
            continue  # someone else wrote first: look again
        return Lease(home, written, owner, ttl, clock, target, acquired_from=record.version)


def lease_is_live(journal: Journal, now: datetime) -> bool:
    expires = journal.lease_expires_at
    return bool(journal.lease_owner and expires and expires > now)



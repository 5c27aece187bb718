"""The rotation protocol for one target: clone -> persist -> verify -> promote -> (grace) -> revoke.

Pure logic over two interfaces: the Funnelback client and the target's destinations. Every step
checks its own effect first, so any step may run twice, and a run may stop at any instant (kill -9)
and be resumed by the next one:

- the journal (in the first destination) records the new token's *name* before the clone is asked
  for, so a clone whose answer was lost leaves an orphan that the next run finds and revokes;
- the new *value* is written to every destination's pending slot before anything else happens;
- the previous token is scheduled for revocation (durably, in the journal) before any destination
  is promoted, and revoked only once no destination serves it and its grace period has passed.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Sequence

from rotator.backends.base import Destination, DestinationState, JournalRecord, Payload
from rotator.config import TargetSettings
from rotator.errors import (
    FunnelbackAuthError,
    FunnelbackConflictError,
    FunnelbackError,
    FunnelbackNotFoundError,
    FunnelbackProtocolError,
    FunnelbackTransientError,
    LeaseLostError,
    RotationError,
    RotatorError,
)
from rotator.funnelback import FunnelbackClient, NewToken, TokenInfo
from rotator.journal import Journal, iso, parse_iso
from rotator.lease import Lease, acquire_lease, new_owner_id
from rotator.logs import get_logger
from rotator.naming import is_generation, next_generation
from rotator.secret import Secret

log = get_logger("rotator.rotation")

Clock = Callable[[], datetime]

# Tries of a clone whose outcome was unknown (each under a new name, the unknown one revoked).
CLONE_ATTEMPTS = 3
# Look for orphans at least this often (seconds) even when nothing went wrong.
SWEEP_EVERY = 86400.0


@dataclass
class Outcome:
    """What one run did for one target; printed by the CLI and counted by metrics."""

    target: str
    # rotated | resumed | completed-elsewhere | revoked | not-due | dry-run | failed
    result: str
    ok: bool = True
    new_token_name: str | None = None
    revoked: list[str] = field(default_factory=list)
    revocations_pending: list[tuple[str, datetime]] = field(default_factory=list)
    error: str | None = None
    duration: float = 0.0
    plan: list[str] = field(default_factory=list)

    @property
    def rotated(self) -> bool:
        return self.result in ("rotated", "resumed", "completed-elsewhere")


@dataclass
class Snapshot:
    """Everything stored about a target, read without the lease."""

    states: list[DestinationState]
    journal: Journal
    journal_version: str | None = None

    def served(self, target: TargetSettings) -> list[str | None]:
        """The token name each destination serves as current (None: nothing)."""
        return [current_name(state, target) for state in self.states]

    def pending_names(self) -> set[str]:
        return {s.pending.payload.token_name for s in self.states
                if s.pending.payload and s.pending.payload.token_name}

    def oldest_rotation(self) -> datetime | None:
        times = [s.current.payload.rotated_at for s in self.states if s.current.payload]
        if not times or any(t is None for t in times):
            return None
        return min(t for t in times if t is not None)


def current_name(state: DestinationState, target: TargetSettings) -> str | None:
    payload = state.current.payload
    if payload is None:
        return None
    # A value written by hand before rotator adopted it has no name: it is the configured token.
    return payload.token_name or target.token_name


def due_reason(snapshot: Snapshot, target: TargetSettings, now: datetime) -> str | None:
    """Why the target needs a new token now, or None. Derived only from stored state.

    The one rule shared by `rotate --due` and the daemon (rotator.scheduling):
    - repairs are due at once, whatever the schedule and window: a destination holding no token
      yet, or destinations serving different tokens (consumers disagree; waiting helps nobody);
    - a token without rotated_at (adopted, not rotated by rotator yet) is due now, but only inside
      the target's `window`;
    - otherwise the token is due once its interval (or the next `schedule` fire time after
      rotated_at) plus the target's jitter has passed, and only inside `window`.
    """
    from rotator import scheduling

    served = snapshot.served(target)
    if any(name is None for name in served):
        return "a destination holds no token yet"
    if len(set(served)) > 1:
        return "destinations serve different tokens"
    rotated_at = snapshot.oldest_rotation()
    if not scheduling.is_due(target, rotated_at, now):
        return None
    if rotated_at is None:
        return "the stored token has no rotated_at (not rotated by rotator yet)"
    if target.schedule:
        return f"a scheduled time ({target.schedule}) has passed since {iso(rotated_at)}"
    return f"the token is older than its interval ({iso(rotated_at)})"


def next_due_at(snapshot: Snapshot, target: TargetSettings, now: datetime | None = None) -> datetime | None:
    """When the target is due (a past time: overdue); None: due now (a repair, or an adopted token
    inside its window), or never (a schedule with no future fire time). `now` defaults to the wall
    clock; it only matters for windows."""
    from rotator import scheduling

    served = snapshot.served(target)
    if any(name is None for name in served) or len(set(served)) > 1:
        return None
    now = now or datetime.now(timezone.utc)
    rotated_at = snapshot.oldest_rotation()
    when = scheduling.next_due(target, rotated_at, now)
    if rotated_at is None and when is not None and when <= now:
        return None
    return when


def pending_work(snapshot: Snapshot, target: TargetSettings, now: datetime) -> str | None:
    """Work a `--due` run must do even when no new token is due."""
    if snapshot.journal.in_progress:
        return "a rotation was left half-done"
    if snapshot.pending_names():
        return "a pending value is stored"
    if snapshot.journal.due_revocations(now):
        return "a previous token's grace period has passed"
    return None


class TargetRotation:
    """One run over one target. Not reused across runs."""

    def __init__(self, target: TargetSettings, funnelback: FunnelbackClient,
                 destinations: Sequence[Destination], *, clock: Clock,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not destinations:
            raise ValueError("a target needs at least one destination")
        self.target = target
        self.funnelback = funnelback
        self.destinations = list(destinations)
        self.home = self.destinations[0]
        self.clock = clock
        self.sleep = sleep
        self.log = log.bind(target=target.name)

    # --- reading -------------------------------------------------------------------------------

    def observe(self) -> Snapshot:
        states = [d.read() for d in self.destinations]
        record = self.home.read_journal()
        return Snapshot(states=states, journal=Journal(record.data), journal_version=record.version)

    # --- the run -------------------------------------------------------------------------------

    def run(self, *, force: bool, dry_run: bool = False) -> Outcome:
        """`force`: rotate now (manual); else only what is due (CronJob, daemon)."""
        started = self.clock()
        begin = time.monotonic()
        outcome = Outcome(self.target.name, "not-due")
        try:
            snapshot = self.observe()
            now = self.clock()
            reason = "requested" if force else due_reason(snapshot, self.target, now)
            work = pending_work(snapshot, self.target, now)
            if dry_run:
                outcome = self._plan(snapshot, reason, work)
            elif reason or work:
                outcome = self._run_under_lease(force=force, started=started, snapshot=snapshot,
                                                rotate=bool(reason))
            else:
                outcome.plan.append(f"not due until {iso(next_due_at(snapshot, self.target, now=now) or now)}")
        except RotatorError as exc:
            outcome = Outcome(self.target.name, "failed", ok=False, error=exc.one_line())
            self.log.error("rotation_failed", error=exc.one_line())
        outcome.duration = time.monotonic() - begin
        return outcome

    def _run_under_lease(self, *, force: bool, started: datetime, snapshot: Snapshot, rotate: bool) -> Outcome:
        def finished_elsewhere(journal: Journal) -> bool:
            # A due-run waits for the holder instead: right after a kill -9 the dead process's lease
            # still looks live, and the re-run must finish that rotation, not skip it. (The daemon
            # skips targets with a live lease before it gets here.)
            done = journal.last_success_at
            return force and done is not None and done >= started

        owner = new_owner_id()
        intent = self._intent(snapshot) if rotate and self._is_quiet(snapshot) else None

        def prepare(record: JournalRecord, journal: Journal, owner: str) -> None:
            # The common case costs one journal write: lease and write-ahead intent together, valid
            # only if nothing changed since `snapshot` was read.
            if intent is not None and record.version == snapshot.journal_version and not journal.in_progress:
                journal.start(**intent, now=self.clock(), owner=owner)

        with self._step("lock"):
            lease = acquire_lease(self.home, target=self.target.name, ttl=self.target.lock_ttl,
                                  wait=self.target.lock_wait, clock=self.clock, on_wait=finished_elsewhere,
                                  prepare=prepare, owner=owner, sleep=self.sleep,
                                  first=JournalRecord(snapshot.journal.data, snapshot.journal_version))
        if lease is None:
            self.log.info("rotation_completed_elsewhere")
            return Outcome(self.target.name, "completed-elsewhere")
        fresh = lease.acquired_from == snapshot.journal_version
        try:
            outcome = self._work(lease, force=force, snapshot=snapshot if fresh else None)
        except RotatorError as exc:
            message = exc.one_line()
            self._release(lease, lambda j: j.record_result("failure", self.clock(), error=message))
            raise
        except BaseException:
            lease.abandon()  # e.g. KeyboardInterrupt: the lease expires on its own; the next run resumes
            raise
        result_name = outcome.new_token_name
        self._release(lease, (lambda j: j.record_result("success", self.clock(), token_name=result_name))
                      if outcome.rotated else None)
        return outcome

    def _release(self, lease: Lease, mutate: Callable[[Journal], None] | None) -> None:
        try:
            lease.release(mutate)
        except RotatorError as exc:
            # Not fatal: the lease expires by itself; the work itself is done or safely resumable.
            self.log.warning("lease_release_failed", error=exc.one_line())

    def _work(self, lease: Lease, *, force: bool, snapshot: Snapshot | None) -> Outcome:
        """Everything done under the lease. `snapshot` is the state read just before taking the
        lease, when nothing has changed since (else None, and the state is read again)."""
        outcome = Outcome(self.target.name, "not-due")
        in_progress = lease.journal.in_progress
        if in_progress and in_progress.get("owner") == lease.owner and snapshot is not None:
            # our own intent, written with the lease over the state in `snapshot`
            sweep = self._needs_sweep(snapshot, had_in_progress=False)
            outcome.new_token_name = self._rotate(lease, snapshot, in_progress)
            outcome.result = "rotated"
            served: set[str] = {outcome.new_token_name}
            if sweep:
                # after the rotation: the new token is served, and clones that took effect only
                # after their timeout (earlier runs' or this one's) have landed by now
                self._sweep_orphans(lease, self._snapshot_under(lease), self._list_tokens())
        else:
            if in_progress:
                resumed = self._resume(lease, in_progress)
                if resumed:
                    outcome.result, outcome.new_token_name = "resumed", resumed
            if snapshot is None or in_progress:
                snapshot = self._snapshot_under(lease)
            if self._discard_stale_pending(lease, snapshot):
                snapshot = self._snapshot_under(lease)  # the slots' versions changed
            if self._needs_sweep(snapshot, had_in_progress=bool(in_progress)):
                self._sweep_orphans(lease, snapshot, self._list_tokens())
            served = {n for n in snapshot.served(self.target) if n}
            if outcome.result != "resumed":
                reason = "requested" if force else due_reason(snapshot, self.target, self.clock())
                if reason:
                    self.log.info("rotation_started", reason=reason)
                    intent = self._intent(snapshot)
                    lease.ensure_held()
                    lease.update(lambda j: j.start(**intent, now=self.clock(), owner=lease.owner))
                    outcome.new_token_name = self._rotate(lease, snapshot, lease.journal.in_progress or {})
                    outcome.result = "rotated"
            if outcome.rotated and outcome.new_token_name:
                served = {outcome.new_token_name}
        outcome.revoked = self._revoke_due(lease, served)
        if not outcome.rotated and outcome.revoked:
            outcome.result = "revoked"
        outcome.revocations_pending = [(r["name"], t) for r in lease.journal.pending_revocations
                                       if (t := parse_iso(r.get("not_before")))]
        return outcome

    def _snapshot_under(self, lease: Lease) -> Snapshot:
        return Snapshot(states=[d.read() for d in self.destinations], journal=lease.journal)

    @staticmethod
    def _is_quiet(snapshot: Snapshot) -> bool:
        """No rotation left in flight and no pending value: a new rotation may start directly."""
        return not snapshot.journal.in_progress and not snapshot.pending_names()

    def _intent(self, snapshot: Snapshot) -> dict[str, Any]:
        served = [n for n in snapshot.served(self.target) if n]
        source = served[0] if served else self.target.token_name
        taken = [*served, *snapshot.pending_names(), *(r["name"] for r in snapshot.journal.pending_revocations)]
        last = snapshot.journal.data.get("last_generation")
        if isinstance(last, str):
            taken.append(last)          # an abandoned attempt's name: AWS keys the pending write on it
        return {"new_token_name": next_generation(self.target.token_name, self.clock(), taken),
                "source_token_name": source, "previous": sorted({*served, source})}

    def _needs_sweep(self, snapshot: Snapshot, *, had_in_progress: bool) -> bool:
        """Listing a client's tokens for orphans costs a call per target; it is needed only where an
        orphan can exist: after a run that died or failed, and once a day as a safety net. A target
        whose journal was never written has no rotator-made token at all."""
        journal = snapshot.journal
        if journal.is_empty and not had_in_progress:
            return False
        last = journal.last_result or {}
        swept = journal.last_sweep_at
        return (had_in_progress or bool(snapshot.pending_names()) or last.get("outcome") == "failure"
                or swept is None or self.clock() - swept >= timedelta(seconds=SWEEP_EVERY))

    # --- steps ---------------------------------------------------------------------------------

    def _rotate(self, lease: Lease, snapshot: Snapshot, intent: dict[str, Any]) -> str:
        new_name, new = self._clone(lease, intent)
        rotated_at = self.clock()
        payloads = [self._payload_for(state, new.value, new_name, rotated_at) for state in snapshot.states]
        with self._step("persist", new_token_name=new_name):
            try:
                lease.ensure_held()
                for destination, state, payload in zip(self.destinations, snapshot.states, payloads, strict=True):
                    destination.write_pending(payload, state)
            except RotatorError as exc:
                self._abandon_new_token(lease, new_name, stored=True)
                raise RotationError(f"storing the new token failed: {exc.one_line()}",
                                    target=self.target.name, step="persist") from None
        self._complete(lease, new_name, new.value)
        return new_name

    def _clone(self, lease: Lease, intent: dict[str, Any]) -> tuple[str, NewToken]:
        """Clone the intent's source under its recorded name; returns (name, new token).

        A clone whose outcome is unknown (timeout, lost answer, 5xx) may have made a token nobody
        knows the value of: it is revoked by name, and the clone is tried again under a new name
        (recorded first), so one flaky answer does not fail the run. 409 (the name exists: an orphan
        of an earlier lost answer) is handled the same way; 401/403/404 are not retried."""
        source = str(intent["source_token_name"])
        new_name = str(intent["new_token_name"])
        taken = [new_name, *intent.get("previous", [])]
        for attempt in range(1, CLONE_ATTEMPTS + 1):
            if attempt > 1:
                new_name = next_generation(self.target.token_name, self.clock(), taken)
                taken.append(new_name)
                lease.update(lambda j, name=new_name: j.start(name, source, self.clock(), owner=lease.owner,
                                                              previous=intent.get("previous", ())))
            lease.ensure_held()
            with self._step("clone", source=source, new_token_name=new_name, attempt=attempt) as fields:
                try:
                    return new_name, self.funnelback.clone_client_token(self.target.client_id, source, new_name)
                except (FunnelbackTransientError, FunnelbackProtocolError, FunnelbackConflictError) as exc:
                    fields.update(outcome="unknown", error=exc.one_line())
                    cleaned = self._abandon_new_token(lease, new_name, stored=False)
                    if not cleaned or attempt == CLONE_ATTEMPTS:
                        raise RotationError(f"cloning {source} failed: {exc.one_line()}",
                                            target=self.target.name, step="clone") from None
                except FunnelbackNotFoundError:
                    self._abandon_new_token(lease, new_name, stored=False)
                    raise self._missing_source(source) from None
                except FunnelbackError as exc:
                    self._abandon_new_token(lease, new_name, stored=False)
                    raise RotationError(f"cloning {source} failed: {exc.one_line()}", target=self.target.name,
                                        step="clone") from None
            self.sleep(min(2.0, 0.2 * 2 ** attempt))
        raise AssertionError("unreachable")

    def _missing_source(self, source: str) -> RotationError:
        try:
            names = {t.name for t in self.funnelback.list_client_tokens(self.target.client_id)}
        except FunnelbackError:
            names = set()
        hint = "check token_name and client_id; rotator clones the live token to keep its permissions"
        if source != self.target.token_name and self.target.token_name in names:
            hint = (f"the destinations name {source!r} as current, but only {self.target.token_name!r} exists; "
                    "store its value in the destinations, or create the missing token")
        return RotationError(f"token {source!r} does not exist in Funnelback client {self.target.client_id!r}",
                             target=self.target.name, step="clone", hint=hint)

    def _resume(self, lease: Lease, in_progress: dict[str, Any]) -> str | None:
        """Finish (or clean up) the rotation a previous run left. Returns its name if completed."""
        new_name = str(in_progress["new_token_name"])
        snapshot = self._snapshot_under(lease)
        holder = self._find_payload(snapshot, new_name)
        self.log.info("resume", new_token_name=new_name, value_stored=holder is not None)
        if holder is None:
            # Crashed between clone and persist (or the clone's answer was lost): nobody knows the
            # value, so the token can only be an orphan. Revoke it; the caller rotates afresh.
            if not self._abandon_new_token(lease, new_name, stored=False):
                raise RotationError(f"could not revoke {new_name}, left by an interrupted rotation",
                                    target=self.target.name, step="resume", hint="the next run tries again")
            return None
        if new_name not in {t.name for t in self._list_tokens()}:
            # Its value is stored, but the token is gone from Funnelback: an earlier run abandoned
            # (revoked) it and could not withdraw every pending copy. Never complete a revoked token:
            # withdraw the copies; the caller rotates afresh.
            self.log.warning("resume_abandoned", new_token_name=new_name, reason="not live on Funnelback")
            if not self._abandon_new_token(lease, new_name, stored=True):
                raise RotationError(f"could not withdraw {new_name}, left by an abandoned rotation",
                                    target=self.target.name, step="resume", hint="the next run tries again")
            return None
        with self._step("persist", new_token_name=new_name, resumed=True):
            for destination, state in zip(self.destinations, snapshot.states, strict=True):
                if not _holds(state, holder):
                    destination.write_pending(
                        self._payload_for(state, holder.token, new_name, holder.rotated_at or self.clock()), state)
        self._complete(lease, new_name, holder.token)
        return new_name

    def _complete(self, lease: Lease, new_name: str, value: Secret) -> None:
        """verify -> promote everywhere -> schedule the previous tokens' revocation."""
        with self._step("verify", new_token_name=new_name):
            lease.ensure_held()
            snapshot = self._snapshot_under(lease)
            for destination, state in zip(self.destinations, snapshot.states, strict=True):
                if not any(slot.payload is not None and slot.payload.token == value
                           for slot in (state.pending, state.current)):
                    raise RotationError(f"{destination.label} does not hold the new token when read back",
                                        target=self.target.name, step="verify",
                                        hint="another writer changed it; the next run resumes or starts over")
            if self.target.verify:
                try:
                    self.funnelback.verify_token(value)
                except FunnelbackAuthError:
                    self._abandon_new_token(lease, new_name, stored=True)
                    raise RotationError("the new token does not authenticate against Funnelback",
                                        target=self.target.name, step="verify",
                                        hint="it was withdrawn from every destination and revoked") from None
        # Retire what the destinations served and the clone's source (even when no destination
        # served it: adoption), as recorded when the rotation started.
        in_progress = lease.journal.in_progress or {}
        recorded = [*in_progress.get("previous", []), in_progress.get("source_token_name")]
        previous = {name for name in [*snapshot.served(self.target), *recorded] if name and name != new_name}
        with self._step("promote", new_token_name=new_name, previous=sorted(previous)):
            for destination, state in zip(self.destinations, snapshot.states, strict=True):
                lease.ensure_held()
                if state.current.payload is not None and state.current.payload.token == value \
                        and state.pending.payload is None:
                    continue
                payload = state.pending.payload if (state.pending.payload and state.pending.payload.token == value) \
                    else state.current.payload
                assert payload is not None  # checked in verify above
                destination.promote(payload, state)
        # Grace starts now that every destination serves the new token. Should this process die
        # before the journal is written, in_progress still names the previous tokens and the next run
        # schedules them from its own (later) clock: never earlier than here.
        not_before = self.clock() + timedelta(seconds=self.target.grace_period)

        def finish(journal: Journal) -> None:
            for name in previous:
                journal.schedule_revocation(name, not_before)
            journal.finish()

        lease.stage(finish)
        self.log.info("rotation_promoted", new_token_name=new_name,
                      revoke_after=iso(not_before) if previous else None)

    def _abandon_new_token(self, lease: Lease, new_name: str, *, stored: bool) -> bool:
        """Undo a rotation that cannot complete: withdraw the pending value, revoke the new token.

        Best effort throughout; whatever fails here is found again by the next run through the
        journal's in_progress record, which is cleared only when all of it succeeded. Returns
        whether everything was cleaned up."""
        clean = True
        for destination in self.destinations if stored else ():
            # Every destination, not only those whose write answered: a write whose answer was lost
            # may have stored the value all the same.
            try:
                state = destination.read()
                if state.pending.payload is not None and state.pending.payload.token_name == new_name:
                    destination.discard_pending(state)
            except RotatorError as exc:
                clean = False
                self.log.warning("discard_pending_failed", destination=destination.label, error=exc.one_line())
        if not self._revoke(new_name, reason="abandoned"):
            clean = False
        if clean:
            try:
                lease.update(lambda j: j.finish())
            except RotatorError as exc:
                self.log.warning("journal_update_failed", error=exc.one_line())
                clean = False
        return clean

    def _discard_stale_pending(self, lease: Lease, snapshot: Snapshot) -> bool:
        """Pending values no rotation owns any more (a cleanup that crashed half-way). Returns
        whether anything was discarded."""
        served = set(snapshot.served(self.target))
        discarded = False
        for destination, state in zip(self.destinations, snapshot.states, strict=True):
            pending = state.pending.payload
            if pending is None:
                continue
            discarded = True
            lease.ensure_held()
            with self._step("discard_stale_pending", destination=destination.label,
                            token_name=pending.token_name):
                destination.discard_pending(state)
            if pending.token_name and pending.token_name not in served and \
                    is_generation(self.target.token_name, pending.token_name):
                self._revoke(pending.token_name, reason="stale pending value")
        return discarded

    def _sweep_orphans(self, lease: Lease, snapshot: Snapshot, tokens: list[TokenInfo]) -> None:
        """Revoke rotator-made tokens that no destination serves and no journal entry explains."""
        journal = lease.journal
        keep = {n for n in snapshot.served(self.target) if n} | snapshot.pending_names()
        keep |= {r["name"] for r in journal.pending_revocations}
        if journal.in_progress:
            keep.add(journal.in_progress["new_token_name"])
        clean = True
        for token in tokens:
            if token.name not in keep and is_generation(self.target.token_name, token.name):
                lease.ensure_held()
                clean = self._revoke(token.name, reason="orphan") and clean
        if clean:
            lease.stage(lambda j: j.record_sweep(self.clock()))

    def _revoke_due(self, lease: Lease, served: set[str]) -> list[str]:
        """Revoke previous tokens whose grace period has passed and that no destination serves."""
        due = lease.journal.due_revocations(self.clock())
        revoked = []
        for name in due:
            if name in served:
                # Never revoke what a consumer may still be given; a later run resumes promotion first.
                self.log.warning("revocation_deferred", token_name=name, reason="still served by a destination")
                continue
            lease.ensure_held()
            if self._revoke(name, reason="grace period over"):
                lease.stage(lambda j, n=name: j.revocation_done(n))
                revoked.append(name)
        return revoked

    # --- helpers -------------------------------------------------------------------------------

    def _revoke(self, name: str, *, reason: str) -> bool:
        with self._step("revoke", token_name=name, reason=reason) as fields:
            try:
                fields["existed"] = existed = self.funnelback.revoke_client_token(self.target.client_id, name)
                if not existed and name in {t.name for t in self.funnelback.list_client_tokens(self.target.client_id)}:
                    # 404 means "already revoked" only if the token is gone: a wrong revoke path (or a
                    # confused server) must not turn every revocation into a silent no-op.
                    fields["outcome"] = "failed"
                    fields["error"] = ("the revoke was answered 404 but the token is still listed; "
                                       "check [funnelback.api] revoke_client_token")
                    return False
            except FunnelbackError as exc:
                fields["outcome"] = "failed"
                fields["error"] = exc.one_line()
                return False
        return True

    def _list_tokens(self) -> list[TokenInfo]:
        with self._step("list_tokens"):
            return self.funnelback.list_client_tokens(self.target.client_id)

    def _payload_for(self, state: DestinationState, value: Secret, name: str, rotated_at: datetime) -> Payload:
        base = state.current.payload or Payload(token=value, token_name=None, client_id=None, rotated_at=None)
        return base.successor(token=value, token_name=name, client_id=self.target.client_id, rotated_at=rotated_at)

    @staticmethod
    def _find_payload(snapshot: Snapshot, name: str) -> Payload | None:
        for state in snapshot.states:
            for slot in (state.pending, state.current):
                if slot.payload is not None and slot.payload.token_name == name:
                    return slot.payload
        return None

    def _plan(self, snapshot: Snapshot, reason: str | None, work: str | None) -> Outcome:
        outcome = Outcome(self.target.name, "dry-run")
        served = snapshot.served(self.target)
        if work:
            outcome.plan.append(f"would finish pending work: {work}")
        if reason:
            source = next((n for n in served if n), self.target.token_name)
            new_name = next_generation(self.target.token_name, self.clock(), [])
            labels = ", ".join(d.label for d in self.destinations)
            outcome.plan.append(f"would clone {source} -> {new_name} ({reason})")
            outcome.plan.append(f"would store it in {labels}, verify it, and make it current")
            previous = sorted({n for n in served if n})
            if previous:
                outcome.plan.append(f"would revoke {', '.join(previous)} after the grace period "
                                    f"({int(self.target.grace_period)}s)")
        if not outcome.plan:
            outcome.plan.append("nothing to do: not due")
        return outcome

    @contextmanager
    def _step(self, step: str, **context: Any) -> Iterator[dict[str, Any]]:
        """Log one event per step: target, step, outcome, duration. The body may add fields
        (including its own "outcome", e.g. "unknown" for a call whose effect is not known)."""
        fields: dict[str, Any] = dict(context)
        begin = time.monotonic()
        try:
            yield fields
        except LeaseLostError:
            fields["outcome"] = "lease_lost"
            self.log.error("step", step=step, duration_ms=_ms(begin), **fields)
            raise
        except RotatorError as exc:
            fields.update(outcome="failed", error=exc.one_line())
            self.log.error("step", step=step, duration_ms=_ms(begin), **fields)
            raise
        fields.setdefault("outcome", "ok")
        level = self.log.warning if fields["outcome"] != "ok" else self.log.info
        level("step", step=step, duration_ms=_ms(begin), **fields)


def _holds(state: DestinationState, payload: Payload) -> bool:
    return any(slot.payload is not None and slot.payload.token == payload.token
               for slot in (state.pending, state.current))


def _ms(begin: float) -> int:
    return int((time.monotonic() - begin) * 1000)


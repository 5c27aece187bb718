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

from rotator.backends.base import (
    CurrentVersion,
    Destination,
    DestinationState,
    JournalRecord,
    Payload,
    QuickDestination,
)
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
from rotator.lease import Lease, acquire_lease, lease_is_live, new_owner_id
from rotator.logs import get_logger
from rotator.naming import generation_time, is_generation, next_generation
from rotator.quick import QuickRotation, TokenLister
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

    def marked(self) -> bool:
        """A destination still marks the value it replaced as not retired (rotator.quick)."""
        return any(s.retiring.version is not None for s in self.states)

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
    if snapshot.marked():
        return "a replaced token is not retired yet"
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
        #: set when the quick path saw generations it could not account for: sweep this run
        self.suspect_orphans = False
        #: the token names served when this run first looked (a forced run that finds them replaced
        #: by the time it holds the lease reports completed-elsewhere)
        self.first_seen: set[str | None] | None = None

    # --- reading -------------------------------------------------------------------------------

    def observe(self) -> Snapshot:
        states = [d.read() for d in self.destinations]
        record = self.home.read_journal()
        return Snapshot(states=states, journal=Journal(record.data), journal_version=record.version)

    # --- the run -------------------------------------------------------------------------------

    def run(self, *, force: bool, dry_run: bool = False, current: CurrentVersion | None = None,
            tokens: TokenLister | None = None) -> Outcome:
        """`force`: rotate now (manual); else only what is due (CronJob, daemon). `current`: the
        first destination's current version, just read in a batch; `tokens`: where the quick path
        lists the client's tokens, if not from Funnelback itself (both: rotator.prefetch)."""
        started = self.clock()
        begin = time.monotonic()
        outcome = Outcome(self.target.name, "not-due")
        try:
            quick = self._quick() if not dry_run else None
            quick_outcome = None
            if quick is not None and force:
                # A forced run tries the quick path first: one read instead of the full one.
                quick_outcome = quick.run(force=True, current=current, tokens=tokens)
                if quick_outcome is not None:
                    outcome = quick_outcome
                    return outcome
                quick = None    # it gave way: the journal path decides, whatever the full read shows
            snapshot = self.observe()
            now = self.clock()
            reason = "requested" if force else due_reason(snapshot, self.target, now)
            work = pending_work(snapshot, self.target, now)
            if dry_run:
                outcome = self._plan(snapshot, reason, work)
            elif force and not work and self._replaced_since_first_look(snapshot):
                # The quick path gave way to another run's rotation, which has finished since.
                outcome = Outcome(self.target.name, "completed-elsewhere")
            elif reason or work:
                if reason and not work and quick is not None and self._quick_may_start(snapshot, now):
                    quick_outcome = quick.run(force=force, current=_current_version(snapshot), tokens=tokens)
                outcome = quick_outcome or self._run_under_lease(force=force, started=started, snapshot=snapshot,
                                                                 rotate=bool(reason))
            else:
                outcome.plan.append(f"not due until {iso(next_due_at(snapshot, self.target, now=now) or now)}")
        except RotatorError as exc:
            outcome = Outcome(self.target.name, "failed", ok=False, error=exc.one_line())
            self.log.error("rotation_failed", error=exc.one_line())
        finally:
            outcome.duration = time.monotonic() - begin
        return outcome

    @property
    def _quick_possible(self) -> bool:
        """Quick rotations (rotator.quick, no lease) can run on this target, here or elsewhere."""
        return len(self.destinations) == 1 and isinstance(self.home, QuickDestination)

    def _quick(self) -> QuickRotation | None:
        """The journal-free path (rotator.quick), for a target whose one destination supports it."""
        home = self.home
        return QuickRotation(self, home) if self._quick_possible and isinstance(home, QuickDestination) else None

    def _replaced_since_first_look(self, snapshot: Snapshot) -> bool:
        return self.first_seen is not None and set(snapshot.served(self.target)) != self.first_seen

    def _quick_may_start(self, snapshot: Snapshot, now: datetime) -> bool:
        """Nothing in the full read for the journal path to do first: no pending value or mark, no
        rotation left in the journal, no other process holding the lease."""
        return self._is_quiet(snapshot) and not lease_is_live(snapshot.journal, now) \
            and snapshot.states[0].current.version is not None

    def _run_under_lease(self, *, force: bool, started: datetime, snapshot: Snapshot, rotate: bool) -> Outcome:
        def finished_elsewhere(journal: Journal) -> bool:
            # A due-run waits for the holder instead: right after a kill -9 the dead process's lease
            # still looks live, and the re-run must finish that rotation, not skip it. (The daemon
            # skips targets with a live lease before it gets here.)
            done = journal.last_success_at
            return force and done is not None and done >= started

        owner = new_owner_id()
        # (With quick rotations possible, the journal's version no longer proves that nothing
        # changed since `snapshot`: the state is read again under the lease before deciding.)
        intent = self._intent(snapshot) if rotate and self._is_quiet(snapshot) and not self._quick_possible else None

        def prepare(record: JournalRecord, journal: Journal, owner: str) -> None:
            # The common case costs one journal write: lease and write-ahead intent together, valid
            # only if nothing changed since `snapshot` was read.
            if intent is not None and record.version == snapshot.journal_version and not journal.in_progress:
                journal.start(**intent, now=self.clock(), owner=owner)

        with self.step("lock"):
            lease = acquire_lease(self.home, target=self.target.name, ttl=self.target.lock_ttl,
                                  wait=self.target.lock_wait, clock=self.clock, on_wait=finished_elsewhere,
                                  prepare=prepare, owner=owner, sleep=self.sleep,
                                  first=JournalRecord(snapshot.journal.data, snapshot.journal_version))
        if lease is None:
            self.log.info("rotation_completed_elsewhere")
            return Outcome(self.target.name, "completed-elsewhere")
        fresh = lease.acquired_from == snapshot.journal_version
        try:
            outcome = self._work(lease, force=force, snapshot=snapshot if fresh else None, initial=snapshot)
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

    def _work(self, lease: Lease, *, force: bool, snapshot: Snapshot | None, initial: Snapshot) -> Outcome:
        """Everything done under the lease. `snapshot` is the state read just before taking the
        lease, when nothing has changed since (else None, and the state is read again); `initial`
        is that state in any case."""
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
                self._sweep_orphans(lease, self._snapshot_under(lease), self.list_tokens())
        else:
            if in_progress:
                resumed = self._resume(lease, in_progress)
                if resumed:
                    outcome.result, outcome.new_token_name = "resumed", resumed
            served_before = self.first_seen if self.first_seen is not None else set(initial.served(self.target))
            if snapshot is None or in_progress:
                snapshot = self._snapshot_under(lease)
            if snapshot.marked():
                snapshot = self._convert_marks(lease, snapshot)
            snapshot = self._wait_for_young_pending(lease, snapshot)
            if not in_progress and (adopted := self._adopt_pending(lease, snapshot)):
                in_progress = adopted
                resumed = self._resume(lease, adopted)
                if resumed:
                    outcome.result, outcome.new_token_name = "resumed", resumed
                snapshot = self._snapshot_under(lease)
            if self._discard_stale_pending(lease, snapshot):
                snapshot = self._snapshot_under(lease)  # the slots' versions changed
            if self._needs_sweep(snapshot, had_in_progress=bool(in_progress)):
                # (the sweep may have waited for another run and read the stores again)
                snapshot = self._sweep_orphans(lease, snapshot, self.list_tokens())
            served = {n for n in snapshot.served(self.target) if n}
            if force and outcome.result != "resumed" and set(snapshot.served(self.target)) != served_before:
                # A quick rotation (rotator.quick) in another process finished while we waited.
                outcome.result = "completed-elsewhere"
            if outcome.result not in ("resumed", "completed-elsewhere"):
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
        """No rotation left in flight, no pending value, no mark: a new rotation may start directly."""
        return not snapshot.journal.in_progress and not snapshot.pending_names() and not snapshot.marked()

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
        if self.suspect_orphans:
            return True
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
        payloads = [self.payload_for(state, new.value, new_name, rotated_at) for state in snapshot.states]
        with self.step("persist", new_token_name=new_name):
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
        (recorded first), so one flaky answer does not fail the run. 409 (the name exists) is retried
        under a new name too, but the token holding the name is left to the sweep, which waits until
        it is old enough not to be another process's; 401/403/404 are not retried."""
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
            with self.step("clone", source=source, new_token_name=new_name, attempt=attempt) as fields:
                try:
                    return new_name, self.funnelback.clone_client_token(self.target.client_id, source, new_name)
                except FunnelbackConflictError as exc:
                    # The name exists: an orphan of an earlier lost answer, or the clone of a quick
                    # rotation (rotator.quick) in another process that chose the same second. Not ours
                    # to revoke by name: try another name; the sweep deals with it once it is old.
                    fields.update(outcome="name_taken", error=exc.one_line())
                    self.suspect_orphans = True
                    if attempt == CLONE_ATTEMPTS:
                        raise RotationError(f"cloning {source} failed: {exc.one_line()}",
                                            target=self.target.name, step="clone") from None
                except (FunnelbackTransientError, FunnelbackProtocolError) as exc:
                    fields.update(outcome="unknown", error=exc.one_line())
                    if self._quick_possible:
                        # A quick run (no lease) may have cloned the same name in the same second:
                        # revoking it by name now could hit that run's token. Leave it to the sweep.
                        self.suspect_orphans = True
                        cleaned = True
                    else:
                        cleaned = self._abandon_new_token(lease, new_name, stored=False)
                    if not cleaned or attempt == CLONE_ATTEMPTS:
                        raise RotationError(f"cloning {source} failed: {exc.one_line()}",
                                            target=self.target.name, step="clone") from None
                except FunnelbackNotFoundError:
                    self._abandon_new_token(lease, new_name, stored=False, revoke=False)
                    raise self.missing_source(source) from None
                except FunnelbackError as exc:
                    self._abandon_new_token(lease, new_name, stored=False)
                    raise RotationError(f"cloning {source} failed: {exc.one_line()}", target=self.target.name,
                                        step="clone") from None
            self.sleep(min(2.0, 0.2 * 2 ** attempt))
        raise AssertionError("unreachable")

    def missing_source(self, source: str) -> RotationError:
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
        if new_name not in {t.name for t in self.list_tokens()}:
            # Its value is stored, but the token is gone from Funnelback: an earlier run abandoned
            # (revoked) it and could not withdraw every pending copy. Never complete a revoked token:
            # withdraw the copies; the caller rotates afresh.
            self.log.warning("resume_abandoned", new_token_name=new_name, reason="not live on Funnelback")
            if not self._abandon_new_token(lease, new_name, stored=True):
                raise RotationError(f"could not withdraw {new_name}, left by an abandoned rotation",
                                    target=self.target.name, step="resume", hint="the next run tries again")
            return None
        with self.step("persist", new_token_name=new_name, resumed=True):
            for destination, state in zip(self.destinations, snapshot.states, strict=True):
                if not _holds(state, holder):
                    destination.write_pending(
                        self.payload_for(state, holder.token, new_name, holder.rotated_at or self.clock()), state)
        self._complete(lease, new_name, holder.token)
        return new_name

    def _complete(self, lease: Lease, new_name: str, value: Secret) -> None:
        """verify -> promote everywhere -> schedule the previous tokens' revocation."""
        with self.step("verify", new_token_name=new_name):
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
        with self.step("promote", new_token_name=new_name, previous=sorted(previous)):
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

    def _abandon_new_token(self, lease: Lease, new_name: str, *, stored: bool, revoke: bool = True) -> bool:
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
        if revoke and not self.revoke(new_name, reason="abandoned"):
            clean = False
        if clean:
            try:
                lease.update(lambda j: j.finish())
            except RotatorError as exc:
                self.log.warning("journal_update_failed", error=exc.one_line())
                clean = False
        return clean

    def _convert_marks(self, lease: Lease, snapshot: Snapshot) -> Snapshot:
        """A mark left by rotator.quick (a run that died, or could not revoke, between promotion
        and revocation): the value it replaced is recorded for revocation after its grace period,
        measured from the new value's rotated_at, then the mark is dropped."""
        marked = [(d, s) for d, s in zip(self.destinations, snapshot.states, strict=True)
                  if s.retiring.version is not None]

        def schedule(journal: Journal) -> None:
            for _destination, state in marked:
                replaced = state.retiring.payload
                name = (replaced.token_name or self.target.token_name) if replaced else None
                if name is None or name == current_name(state, self.target):
                    continue
                current = state.current.payload
                promoted = (current.rotated_at if current else None) or self.clock()
                journal.schedule_revocation(name, promoted + timedelta(seconds=self.target.grace_period))

        lease.ensure_held()
        lease.update(schedule)
        for destination, state in marked:
            if isinstance(destination, QuickDestination) and state.current.version is not None:
                with self.step("retire_mark", destination=destination.label):
                    destination.retire_marker(state.current.version)
        return self._snapshot_under(lease)

    def _wait_for_young_pending(self, lease: Lease, snapshot: Snapshot) -> Snapshot:
        """A pending value that no journal entry explains, stored less than lock_ttl ago, is most
        likely a quick rotation (rotator.quick) in flight in another process, which holds no lease:
        give it until it is lock_ttl old (that run gives up by then) before taking it for abandoned."""
        if not self._quick_possible:
            return snapshot     # no quick rotation can touch this target
        ttl = timedelta(seconds=self.target.lock_ttl)
        deadline = time.monotonic() + self.target.lock_ttl + 1.0
        while True:
            now = self.clock()
            stored = [p.rotated_at for s in snapshot.states if (p := s.pending.payload) and p.rotated_at]
            youngest = max((t for t in stored if now - t < ttl), default=None)
            if youngest is None:
                return snapshot
            self.log.info("waiting_for_pending_value", until=iso(youngest + ttl))
            if not self._pause(min(1.0, (youngest + ttl - now).total_seconds()), deadline):
                return snapshot
            lease.ensure_held()
            snapshot = self._snapshot_under(lease)

    def _pause(self, seconds: float, deadline: float) -> bool:
        """Sleep while waiting on another process. False when the wait is over: the deadline (a
        monotonic time) has passed, or the clock did not move (a test's frozen clock)."""
        if time.monotonic() >= deadline:
            return False
        before = self.clock()
        self.sleep(max(0.1, min(seconds, deadline - time.monotonic())))
        return self.clock() > before

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
            with self.step("discard_stale_pending", destination=destination.label,
                            token_name=pending.token_name):
                destination.discard_pending(state)
            if pending.token_name and pending.token_name not in served and \
                    is_generation(self.target.token_name, pending.token_name):
                self.revoke(pending.token_name, reason="stale pending value")
        return discarded

    def _sweep_orphans(self, lease: Lease, snapshot: Snapshot, tokens: list[TokenInfo]) -> Snapshot:
        """Revoke rotator-made tokens that no destination serves and no journal entry explains.

        One younger than lock_ttl may be a quick rotation's clone (rotator.quick takes no lease) on
        its way to being stored, or what such a run left when it died just now: wait for it to age
        (at most lock_ttl; that run gives up by then), then read the stores and the tokens again.
        Returns the state as last read: after a wait, the caller must not act on its older one."""
        deadline = time.monotonic() + self.target.lock_ttl + 2.0
        quick_possible = self._quick_possible
        revoked: set[str] = set()
        clean = True
        while True:
            keep = self._explained(lease.journal, snapshot)
            young_after = self.clock() - timedelta(seconds=self.target.lock_ttl)
            young = []
            for token in tokens:
                born = generation_time(self.target.token_name, token.name)
                if born is None or token.name in keep or token.name in revoked:
                    continue
                if quick_possible and born > young_after:
                    young.append(born)
                    continue
                lease.ensure_held()
                if self.revoke(token.name, reason="orphan"):
                    revoked.add(token.name)
                else:
                    clean = False
            if not young:
                break
            wait = (max(young) - young_after).total_seconds() + 0.5
            self.log.info("waiting_for_young_tokens", count=len(young), seconds=round(wait, 1))
            if not self._pause(wait, deadline):
                clean = False
                break
            lease.ensure_held()
            snapshot, tokens = self._snapshot_under(lease), self.list_tokens()
        if clean:
            lease.stage(lambda j: j.record_sweep(self.clock()))
        return snapshot

    def _explained(self, journal: Journal, snapshot: Snapshot) -> set[str]:
        """Token names that the stores or the journal account for."""
        keep = {n for n in snapshot.served(self.target) if n} | snapshot.pending_names()
        keep |= {r["name"] for r in journal.pending_revocations}
        keep |= {p.token_name for s in snapshot.states if (p := s.retiring.payload) and p.token_name}
        if journal.in_progress:
            keep.add(journal.in_progress["new_token_name"])
        return keep

    def _adopt_pending(self, lease: Lease, snapshot: Snapshot) -> dict[str, Any] | None:
        """A pending value that no journal entry explains (a quick rotation, rotator.quick, that died
        between storing and promoting): record it as the rotation in progress, so it is resumed
        rather than discarded. Only a generation newer than every token served qualifies."""
        served = [n for n in snapshot.served(self.target) if n]
        floor = max((t for n in served if (t := generation_time(self.target.token_name, n))), default=None)
        candidates = sorted(n for n in snapshot.pending_names()
                            if (born := generation_time(self.target.token_name, n)) is not None
                            and (floor is None or born > floor))
        if not candidates:
            return None
        name = candidates[-1]
        source = served[0] if served else self.target.token_name
        lease.ensure_held()
        journal = lease.update(lambda j: j.start(name, source, self.clock(), previous=served or [source],
                                                 owner=lease.owner))
        self.log.info("adopt_pending_value", new_token_name=name)
        return journal.in_progress

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
            if self.revoke(name, reason="grace period over"):
                lease.stage(lambda j, n=name: j.revocation_done(n))
                revoked.append(name)
        return revoked

    # --- helpers -------------------------------------------------------------------------------

    def revoke(self, name: str, *, reason: str) -> bool:
        with self.step("revoke", token_name=name, reason=reason) as fields:
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

    def list_tokens(self) -> list[TokenInfo]:
        with self.step("list_tokens"):
            return self.funnelback.list_client_tokens(self.target.client_id)

    def payload_for(self, state: DestinationState, value: Secret, name: str, rotated_at: datetime) -> Payload:
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
    def step(self, step: str, **context: Any) -> Iterator[dict[str, Any]]:
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


def _current_version(snapshot: Snapshot) -> CurrentVersion:
    """The first destination's current version as the quick path reads it (the full read has
    already found no pending label and no mark on it)."""
    current = snapshot.states[0].current
    assert current.version is not None
    return CurrentVersion(version_id=current.version, stages=(), payload=current.payload)


def _holds(state: DestinationState, payload: Payload) -> bool:
    return any(slot.payload is not None and slot.payload.token == payload.token
               for slot in (state.pending, state.current))


def _ms(begin: float) -> int:
    return int((time.monotonic() - begin) * 1000)


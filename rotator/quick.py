"""The common rotation of a target kept in one AWS secret: four AWS calls, no lease, no journal
(three in a batch run, whose first reads rotator.prefetch makes 20 at a time).

Most runs find a target in the plainest state: one current version, nothing pending, nothing left
half-done. When its only destination is a store whose pending versions are immutable and addressed
by id, and whose promotion is a compare-and-swap on the version replaced (AWS Secrets Manager:
`rotator.backends.base.QuickDestination`), such a run needs neither the lease nor the write-ahead
journal of rotation.py:

    read AWSCURRENT -> list tokens -> clone -> put AWSPENDING -> authenticate -> move AWSCURRENT off
    the version read -> revoke the previous token (grace 0) or record it in the journal -> drop the mark

How each invariant holds without the journal:
- Persist first: the value is put as AWSPENDING right after the clone answers; if the put fails,
  the clone is revoked at once.
- Revoke last: only after promotion. Until the previous token is revoked (or recorded in the journal
  with its grace period), AWSPENDING stays on the new current version: a mark the next run's full
  read sees (`DestinationState.retiring`), so a run that dies there still gets it revoked.
- One at a time: two runs may both clone and put, but AWSCURRENT moves only off the version both
  read, so exactly one promotes; the other withdraws its pending version, revokes its clone and
  reports completed-elsewhere. A run that took `lock_ttl` or longer since its put gives up before
  promoting, because other runs then take its pending value for abandoned. Authentication before
  promotion is required (`verify`), so a token revoked under a run is never promoted.
- Resume: the quick path runs only for a target that is due, and a run that dies before promoting
  leaves it due, so the next run looks again. Its token list shows any generation newer than the
  current token that a dead (or concurrent) run left; then it gives way to the journal path, which
  waits until such a generation is `lock_ttl` old (nobody's work in progress any more), resumes it if
  it is stored as pending, and revokes it otherwise. A clone whose answer is unknown or whose name is
  taken is never revoked by name here (the name may be another run's, chosen in the same second):
  the run gives way to the journal path the same way.

Anything else (a pending value or a mark found, a missing secret or placeholder, several
destinations, `verify = false`, a forced run of a target that is not due, which must leave a
write-ahead record before cloning because nothing would look at it again) takes the journal path.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from rotator.backends.base import CurrentVersion, DestinationState, QuickDestination, Slot
from rotator.errors import (
    BackendConflictError,
    FunnelbackAuthError,
    FunnelbackConflictError,
    FunnelbackError,
    FunnelbackNotFoundError,
    FunnelbackProtocolError,
    FunnelbackTransientError,
    RotationError,
    RotatorError,
)
from rotator.journal import Journal
from rotator.lease import lease_is_live
from rotator.naming import generation_time, next_generation

if TYPE_CHECKING:
    from rotator.funnelback import TokenInfo
    from rotator.rotation import Outcome, TargetRotation


class TokenLister(Protocol):
    """Where the client's tokens are listed: FunnelbackClient, or a batch's shared lists."""

    def list_client_tokens(self, client: str) -> list[TokenInfo]: ...


# Journal writes (grace > 0) that lose a compare-and-swap are retried this many times.
JOURNAL_ATTEMPTS = 5


class QuickRotation:
    """The quick path for one run of one target; see the module docstring."""

    def __init__(self, rotation: TargetRotation, destination: QuickDestination) -> None:
        self.rotation = rotation
        self.destination = destination
        self.target = rotation.target

    def run(self, *, force: bool, current: CurrentVersion | None = None,
            tokens: TokenLister | None = None) -> Outcome | None:
        """Rotate the target if it is plain and due. None: not for this path (the caller takes the
        journal path). `current` is the current version if the caller has just read it (alone, in
        the full read, or in a batch); `tokens` lists the client's tokens (default: Funnelback)."""
        from rotator.rotation import Snapshot, due_reason

        if current is None:
            current = self.destination.read_current()
        if self.rotation.first_seen is None:
            served = current.payload if current is not None else None
            self.rotation.first_seen = {(served.token_name or self.target.token_name) if served else None}
        if current is None or not self.destination.is_plain(current) or not self.target.verify:
            # (without authentication, nothing would catch a token revoked under a run that holds no lease)
            return None
        snapshot = Snapshot(states=[DestinationState(current=Slot(current.payload, current.version_id))],
                            journal=Journal())
        reason = due_reason(snapshot, self.target, self.rotation.clock())
        if reason is None:
            return None
        assert current.payload is not None
        if self._unexplained_generations(current.payload.token_name or self.target.token_name,
                                         tokens or self.rotation.funnelback):
            self.rotation.suspect_orphans = True
            return None
        return self._rotate(current, reason="requested" if force else reason)

    def _unexplained_generations(self, current_name: str, tokens: TokenLister) -> list[str]:
        """Generations of this target newer than the current token: a rotation in flight in another
        process, or what a run that died left (a clone never stored, a pending value). The journal
        path deals with them (waiting for a young one, resuming a stored one, revoking an orphan)."""
        floor = generation_time(self.target.token_name, current_name)
        found = [t.name for t in tokens.list_client_tokens(self.target.client_id)
                 if t.name != current_name and (born := generation_time(self.target.token_name, t.name)) is not None
                 and (floor is None or born > floor)]
        if found:
            self.rotation.log.info("unexplained_tokens", token_names=sorted(found),
                                   hint="another run is rotating this target, or one died; the journal path "
                                        "finishes or cleans up")
        return found

    # --- the steps -----------------------------------------------------------------------------

    def _rotate(self, current: CurrentVersion, *, reason: str) -> Outcome | None:
        from rotator.rotation import Outcome

        rotation, target = self.rotation, self.target
        assert current.payload is not None
        source = current.payload.token_name or target.token_name
        new_name = next_generation(target.token_name, rotation.clock(), [source])
        with rotation.step("clone", source=source, new_token_name=new_name, reason=reason) as fields:
            try:
                new = rotation.funnelback.clone_client_token(target.client_id, source, new_name)
            except (FunnelbackTransientError, FunnelbackProtocolError, FunnelbackConflictError) as exc:
                # Unknown outcome, or the name taken (another run chose the same second). Revoking by
                # name could hit another run's token: the journal path's sweep deals with it once it
                # is old enough to be nobody's work in progress.
                fields.update(outcome="unknown", error=exc.one_line())
                rotation.suspect_orphans = True
                return None
            except FunnelbackNotFoundError:
                fields.update(outcome="failed", error="the source token does not exist")
                again = self.destination.read_current()
                if again is not None and again.version_id != current.version_id:
                    return None   # another run rotated (and revoked the source) meanwhile: the journal path tells
                raise rotation.missing_source(source) from None
            except FunnelbackError as exc:
                raise RotationError(f"cloning {source} failed: {exc.one_line()}", target=target.name,
                                    step="clone") from None
        claimed_at = rotation.clock()
        payload = rotation.payload_for(DestinationState(current=Slot(current.payload, current.version_id)),
                                       new.value, new_name, claimed_at)
        with rotation.step("persist", new_token_name=new_name):
            try:
                pending = self.destination.put_pending(payload)
            except RotatorError as exc:
                rotation.revoke(new_name, reason="abandoned")
                raise RotationError(f"storing the new token failed: {exc.one_line()}",
                                    target=target.name, step="persist") from None
        with rotation.step("verify", new_token_name=new_name):
            try:
                rotation.funnelback.verify_token(new.value)
            except FunnelbackError as exc:
                self._abandon(pending, new_name)
                if isinstance(exc, FunnelbackAuthError):
                    raise RotationError("the new token does not authenticate against Funnelback",
                                        target=target.name, step="verify",
                                        hint="it was withdrawn and revoked") from None
                raise RotationError(f"authenticating with the new token failed: {exc.one_line()}",
                                    target=target.name, step="verify", hint="it was withdrawn and revoked; "
                                                                             "the next run tries again") from None
            if (rotation.clock() - claimed_at).total_seconds() >= target.lock_ttl:
                # Other runs now take this pending value for abandoned: promoting it could serve a
                # token they are revoking.
                self._abandon(pending, new_name)
                raise RotationError(f"storing and verifying the new token took longer than lock_ttl "
                                    f"({int(target.lock_ttl)}s)", target=target.name, step="verify",
                                    hint="it was withdrawn and revoked; the next run tries again")
        with rotation.step("promote", new_token_name=new_name, previous=[source]) as fields:
            won = self.destination.promote_over(pending, replacing=current.version_id)
            if not won:
                fields["outcome"] = "lost_race"
        if not won:
            # Another run promoted its own token over the version we read: ours was never served.
            self._abandon(pending, new_name)
            return Outcome(target.name, "completed-elsewhere")
        outcome = Outcome(target.name, "rotated", new_token_name=new_name)
        self._retire(pending, source, outcome, promoted_at=rotation.clock())
        return outcome

    def _retire(self, pending: str, previous: str, outcome: Outcome, *, promoted_at: datetime) -> None:
        """Revoke the previous token now (grace 0) or record it in the journal for after the grace
        period; then drop the mark. Whatever fails leaves the mark for the next run's journal path."""
        rotation, grace = self.rotation, self.target.grace_period
        not_before = promoted_at + timedelta(seconds=grace)
        if grace <= 0:
            retired = rotation.revoke(previous, reason="grace period over")
            if retired:
                outcome.revoked.append(previous)
        else:
            retired = self._record_revocation(previous, not_before, outcome.new_token_name)
        if grace > 0 or not retired:
            outcome.revocations_pending.append((previous, not_before))
        if not retired:
            return
        try:
            self.destination.retire_marker(pending)
        except RotatorError as exc:
            rotation.log.warning("retire_mark_failed", error=exc.one_line())

    def _record_revocation(self, name: str, not_before: datetime, new_name: str | None) -> bool:
        """The previous token and its grace period, in the journal (read, then compare-and-swap)."""
        home = self.rotation.home
        for _ in range(JOURNAL_ATTEMPTS):
            try:
                record = home.read_journal()
                journal = Journal(record.data)
                now = self.rotation.clock()
                if lease_is_live(journal, now):
                    return False   # the journal path holds the target: it converts the mark itself
                journal.schedule_revocation(name, not_before)
                journal.record_result("success", now, token_name=new_name)
                home.write_journal(journal.data, record)
                return True
            except BackendConflictError:
                continue
            except RotatorError as exc:
                self.rotation.log.warning("journal_update_failed", error=exc.one_line())
                return False
        return False

    def _abandon(self, pending: str, new_name: str) -> None:
        """Withdraw our pending version and revoke our clone; best effort (a stale pending value is
        discarded by a later run, and a clone left live is a generation the sweep finds)."""
        try:
            self.destination.retire_marker(pending)
        except RotatorError as exc:
            self.rotation.log.warning("discard_pending_failed", error=exc.one_line())
        self.rotation.revoke(new_name, reason="abandoned")

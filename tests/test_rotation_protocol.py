"""The rotation protocol against the real Funnelback emulator (HTTP) and in-memory destinations.

These prove the protocol's logic quickly; tests/test_rotation_aws.py runs the same protocol through
boto3 against moto, and tests/test_crash_resume.py kills real processes."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from conftest import SEED_NAME, make_target
from rotator.backends.base import Payload
from rotator.errors import BackendPermissionError, BackendUnavailableError
from rotator.naming import is_generation
from rotator.rotation import TargetRotation
from rotator.secret import Secret
from rotator.testing.memory_store import MemoryDestination


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def rotation(fb_client, destinations, clock, **target) -> TargetRotation:
    return TargetRotation(make_target(**target), fb_client, destinations, clock=clock, sleep=lambda s: None)


def seeded(emulator, label="memory:a", **extra) -> MemoryDestination:
    destination = MemoryDestination(label)
    value = emulator.token_value("acme", SEED_NAME)
    destination.seed(Payload(token=Secret(value), token_name=None, client_id=None, rotated_at=None, extra=extra))
    return destination


def live_generations(emulator) -> list[str]:
    return [n for n in emulator.token_names("acme") if is_generation(SEED_NAME, n)]


def test_adoption_rotates_and_revokes_previous(emulator, fb_client, clock) -> None:
    dest = seeded(emulator, note="kept")
    outcome = rotation(fb_client, [dest], clock).run(force=True)
    assert outcome.ok and outcome.result == "rotated", outcome
    current = dest.current.payload
    assert current.token_name == outcome.new_token_name and is_generation(SEED_NAME, current.token_name)
    assert current.token.reveal() == emulator.token_value("acme", current.token_name)
    assert current.rotated_at is not None and current.client_id == "acme"
    assert current.extra == {"note": "kept"}
    assert outcome.revoked == [SEED_NAME]
    assert emulator.token_names("acme") == [current.token_name]
    assert dest.pending.payload is None


def test_adoption_into_empty_destination(emulator, fb_client, clock) -> None:
    dest = MemoryDestination()
    outcome = rotation(fb_client, [dest], clock).run(force=True)
    assert outcome.ok, outcome
    assert dest.current.payload.token_name == outcome.new_token_name
    # nothing served the configured token, but it was the clone source: revoked after grace (0 here)
    assert SEED_NAME not in emulator.token_names("acme")


def test_grace_period_defers_revocation_durably(emulator, fb_client, clock) -> None:
    dest = seeded(emulator)
    first = rotation(fb_client, [dest], clock, grace_period=600.0).run(force=True)
    assert first.ok and first.revoked == [] and [n for n, _ in first.revocations_pending] == [SEED_NAME]
    assert SEED_NAME in emulator.token_names("acme")
    # a later due run before the grace ends: nothing to do
    assert rotation(fb_client, [dest], clock, grace_period=600.0).run(force=False).revoked == []
    clock.advance(601)
    later = rotation(fb_client, [dest], clock, grace_period=600.0).run(force=False)
    assert later.ok and later.result == "revoked" and later.revoked == [SEED_NAME]
    assert emulator.token_names("acme") == [first.new_token_name]


def test_not_due_is_a_no_op(emulator, fb_client, clock) -> None:
    dest = seeded(emulator)
    rotation(fb_client, [dest], clock).run(force=True)
    clones = emulator.calls("clone_client_token")
    outcome = rotation(fb_client, [dest], clock).run(force=False)
    assert outcome.result == "not-due" and emulator.calls("clone_client_token") == clones
    clock.advance(3601)
    assert rotation(fb_client, [dest], clock).run(force=False).result == "rotated"


def test_persist_failure_revokes_new_token(emulator, fb_client, clock) -> None:
    dest = seeded(emulator)
    dest.fail_next("write_pending", BackendPermissionError("denied", destination=dest.label))
    outcome = rotation(fb_client, [dest], clock).run(force=True)
    assert not outcome.ok and "persist" in outcome.error
    assert emulator.token_names("acme") == [SEED_NAME]          # new token revoked, old one untouched
    assert dest.current.payload.token_name is None               # still the adopted value
    assert dest.journal.data.get("in_progress") is None


def test_fan_out_failure_in_second_destination_leaves_nothing_half_done(emulator, fb_client, clock) -> None:
    first, second = seeded(emulator, "memory:a"), seeded(emulator, "memory:b")
    second.fail_next("write_pending", BackendUnavailableError("down", destination=second.label))
    outcome = rotation(fb_client, [first, second], clock).run(force=True)
    assert not outcome.ok
    for dest in (first, second):
        assert dest.pending.payload is None and dest.current.payload.token_name is None
    assert emulator.token_names("acme") == [SEED_NAME]


def test_lost_clone_answer_leaves_orphan_that_next_run_revokes(emulator, fb_client, clock) -> None:
    dest = seeded(emulator)
    emulator.faults.add(kind="lose_answer", method="POST", path="/clone$", times=1)
    emulator.faults.add(kind="status", status=503, method="DELETE", path="application-token/", times=10)
    failed = rotation(fb_client, [dest], clock).run(force=True)
    assert not failed.ok
    orphans = live_generations(emulator)
    assert len(orphans) == 1                                      # made, value unknown, revoke failed too
    assert dest.journal.data["in_progress"]["new_token_name"] == orphans[0]
    emulator.faults.clear()
    clock.advance(1)
    again = rotation(fb_client, [dest], clock).run(force=True)
    assert again.ok, again
    assert orphans[0] not in emulator.token_names("acme")
    assert emulator.token_names("acme") == [again.new_token_name]


def test_lost_revoke_answer_is_retried_and_404_is_success(emulator, fb_client, clock) -> None:
    dest = seeded(emulator)
    emulator.faults.add(kind="lose_answer", method="DELETE", path="application-token/", times=1)
    outcome = rotation(fb_client, [dest], clock).run(force=True)
    assert outcome.ok and outcome.revoked == [SEED_NAME], outcome
    assert emulator.token_names("acme") == [outcome.new_token_name]


def test_new_token_that_does_not_authenticate_is_withdrawn(emulator, fb_client, clock) -> None:
    dest = seeded(emulator)
    emulator.faults.add(kind="status", status=401, method="GET", path="current-user$", times=1)
    outcome = rotation(fb_client, [dest], clock).run(force=True)
    assert not outcome.ok and "authenticate" in outcome.error
    assert emulator.token_names("acme") == [SEED_NAME]
    assert dest.pending.payload is None and dest.current.payload.token_name is None


def test_crash_before_promotion_is_resumed_without_a_second_clone(emulator, fb_client, clock) -> None:
    first, second = seeded(emulator, "memory:a"), seeded(emulator, "memory:b")
    second.fail_next("promote", BackendUnavailableError("down", destination=second.label))
    failed = rotation(fb_client, [first, second], clock).run(force=True)
    assert not failed.ok
    # one destination promoted, the other still pending: both tokens live, nothing revoked
    assert first.current.payload.token_name != second.current.payload.token_name
    assert SEED_NAME in emulator.token_names("acme")
    clones = emulator.calls("clone_client_token")
    resumed = rotation(fb_client, [first, second], clock).run(force=False)
    assert resumed.ok and resumed.result == "resumed", resumed
    assert emulator.calls("clone_client_token") == clones
    assert first.current.payload.token == second.current.payload.token
    assert emulator.token_names("acme") == [first.current.payload.token_name]


def test_two_concurrent_manual_rotations_make_one_rotation(emulator, fb_client, clock) -> None:
    dest = seeded(emulator)
    emulator.faults.add(kind="delay", delay_seconds=0.5, method="POST", path="/clone$", times=1)
    outcomes = []

    def rotate() -> None:
        outcomes.append(TargetRotation(make_target(lock_ttl=5.0), fb_client, [dest],
                                       clock=lambda: datetime.now(timezone.utc)).run(force=True))

    threads = [threading.Thread(target=rotate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(o.ok for o in outcomes), outcomes
    assert sorted(o.result for o in outcomes) == ["completed-elsewhere", "rotated"]
    assert emulator.calls("clone_client_token") == 1
    assert len(dest.history) == 2


def test_dry_run_changes_nothing(emulator, fb_client, clock) -> None:
    dest = seeded(emulator)
    outcome = rotation(fb_client, [dest], clock).run(force=True, dry_run=True)
    assert outcome.result == "dry-run" and any("would clone web" in line for line in outcome.plan)
    assert emulator.calls("clone_client_token") == 0 and dest.journal.version is None


def test_one_lost_clone_answer_is_survived_in_the_same_run(emulator, fb_client, clock) -> None:
    dest = seeded(emulator)
    emulator.faults.add(kind="lose_answer", method="POST", path="/clone$", times=1)
    outcome = rotation(fb_client, [dest], clock).run(force=True)
    assert outcome.ok, outcome
    assert emulator.calls("clone_client_token") == 2
    assert emulator.token_names("acme") == [outcome.new_token_name]   # the unknown clone was revoked

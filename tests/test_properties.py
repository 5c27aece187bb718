"""Property-based (hypothesis, stateful): random interleavings of rotate (manual / --due), crashes at
random calls, resumes, two concurrent rotators and clock jumps past the grace period and the lease,
against the real Funnelback emulator (HTTP) and two in-memory destinations with an injected clock.

After every step: every destination serves a token that is live on Funnelback (or nothing, before
the first rotation of a target that started empty), and no token was revoked before the grace period
had passed since the last destination stopped serving it. At the end, faults cleared and time moved
on, plain `--due` runs converge: one live rotator token everywhere, nothing pending, no orphan.

A crash is an in-process kill -9 (tests/test_fault_matrix.py's Crash: no cleanup runs, the lease
stays held until it expires). The example count is printed in pytest's terminal summary.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, SEED_NAME, make_target
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from test_fault_matrix import (
    CLIENT,
    Clock,
    Crash,
    FaultyDestination,
    FaultyFunnelback,
    Summary,
    assert_converged,
    assert_served_live,
    fb_settings,
    secret_values,
    seed_destinations,
)

from rotator.funnelback import FunnelbackClient
from rotator.rotation import Outcome, TargetRotation
from rotator.testing.funnelback_emulator import FunnelbackEmulator

pytestmark = pytest.mark.timeout(int(os.environ.get("ROTATOR_PROPERTY_TIMEOUT", "170")))

LOCK_TTL = 10.0
STATS: dict[str, int] = {"examples": 0, "steps": 0, "rotations": 0, "crashes": 0, "concurrent": 0,
                         "failed_runs": 0}

FB_CRASHES = [(call, kind) for call in ("list_client_tokens", "clone_client_token", "verify_token",
                                        "revoke_client_token")
              for kind in ("before", "after")]
FB_FAULTS = [{"kind": "lose_answer", "method": "POST", "path": r"/clone$"},
             {"kind": "lose_answer", "method": "DELETE", "path": r"/application-token/"},
             {"kind": "hang", "method": "GET", "path": r"/current-user$"},
             {"kind": "status", "status": 503, "method": "POST", "path": r"/clone$"},
             {"kind": "status", "status": 401, "method": "GET", "path": r"/current-user$"},
             {"kind": "status", "status": 503, "method": "DELETE", "path": r"/application-token/"}]
DEST_FAULTS = [(where, op, kind) for where in (0, 1)
               for op in ("read", "write_pending", "promote", "discard_pending")
               for kind in ("crash", "crash_after", "lost", "unavailable")] + \
              [(0, op, kind) for op in ("read_journal", "write_journal")
               for kind in ("crash", "crash_after", "lost", "unavailable")]

fault_strategy = st.one_of(
    st.tuples(st.just("fb-crash"), st.sampled_from(FB_CRASHES)),
    st.tuples(st.just("fb-fault"), st.sampled_from(range(len(FB_FAULTS)))),
    st.tuples(st.just("dest"), st.tuples(st.sampled_from(DEST_FAULTS), st.integers(1, 3))),
)


class RotationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        STATS["examples"] += 1
        self.emulator = FunnelbackEmulator(admin_token=ADMIN_TOKEN, clients=[CLIENT]).start()
        self.emulator.add_token(CLIENT, SEED_NAME)
        self.client = FunnelbackClient(fb_settings(self.emulator.url, timeout=0.3, retries=1))
        self.funnelback = FaultyFunnelback(self.client)
        self.clock = Clock()
        self.destinations: list[FaultyDestination] = []
        self.target = make_target()
        self.served_once = False
        self.stopped_serving: dict[str, Any] = {}     # token name -> fake time it stopped being served
        self.last_served: set[str] = set()

    # --- set-up ------------------------------------------------------------------------------------

    @initialize(seeded=st.booleans(), grace=st.sampled_from([0.0, 30.0]))
    def setup(self, seeded: bool, grace: float) -> None:
        self.target = make_target(lock_ttl=LOCK_TTL, lock_wait=0.3, grace_period=grace, interval=3600.0)
        if seeded:
            self.destinations = seed_destinations(self.emulator, "memory:a", "memory:b")
            self.served_once = True
        else:
            self.destinations = [FaultyDestination("memory:a"), FaultyDestination("memory:b")]
        self.last_served = self.served()

    def rotation(self) -> TargetRotation:
        return TargetRotation(self.target, self.funnelback, self.destinations, clock=self.clock,
                              sleep=lambda s: time.sleep(min(s, 0.02)))

    def run(self, force: bool) -> Outcome | None:
        STATS["rotations"] += 1
        try:
            outcome = self.rotation().run(force=force)
        except Crash:
            STATS["crashes"] += 1
            return None
        if not outcome.ok:
            STATS["failed_runs"] += 1
            for value in secret_values(self.emulator):
                assert value not in (outcome.error or ""), "a secret in an error message"
        return outcome

    def clear_faults(self) -> None:
        self.emulator.faults.clear()
        self.funnelback.crash = None
        for destination in self.destinations:
            destination.clear()

    # --- rules ---------------------------------------------------------------------------------------

    @rule(force=st.booleans())
    def rotate(self, force: bool) -> None:
        """`rotate TARGET` (force) or `rotate --due`."""
        STATS["steps"] += 1
        self.run(force)

    @rule(faults=st.lists(fault_strategy, min_size=1, max_size=2), force=st.booleans())
    def rotate_with_faults(self, faults: list[tuple[str, Any]], force: bool) -> None:
        """A run that meets one or two faults at random calls: errors, lost answers, a crash (kill -9)."""
        STATS["steps"] += 1
        for kind, detail in faults:
            if kind == "fb-crash":
                self.funnelback.crash = detail
            elif kind == "fb-fault":
                self.emulator.faults.add(**FB_FAULTS[detail], times=1)
            else:
                (where, op, failure), nth = detail
                self.destinations[where].inject(op, failure, nth)
        self.run(force)
        self.clear_faults()

    @rule()
    def resume_after_lease_expiry(self) -> None:
        """A re-run once a crashed run's lease has expired (`rotate --due`, the CronJob)."""
        STATS["steps"] += 1
        self.clock.advance(LOCK_TTL + 1)
        self.run(False)

    @rule(forces=st.tuples(st.booleans(), st.booleans()))
    def two_concurrent_rotators(self, forces: tuple[bool, bool]) -> None:
        """Two processes (threads here) rotating the same target at once."""
        STATS["steps"] += 1
        STATS["concurrent"] += 1
        outcomes: list[Outcome | None] = []
        errors: list[BaseException] = []

        def work(force: bool) -> None:
            try:
                outcomes.append(self.run(force))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(f,)) for f in forces]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        rotated = [o for o in outcomes if o is not None and o.result == "rotated"]
        assert len(rotated) <= 1 or rotated[0].new_token_name != rotated[1].new_token_name

    @rule(seconds=st.sampled_from(["grace", "lease", "interval"]))
    def advance_clock(self, seconds: str) -> None:
        STATS["steps"] += 1
        amount = {"grace": self.target.grace_period + 1, "lease": LOCK_TTL + 1,
                  "interval": self.target.interval + 1}[seconds]
        self.clock.advance(amount)

    # --- invariants ----------------------------------------------------------------------------------

    def served(self) -> set[str]:
        names = set()
        for destination in self.destinations:
            payload = destination.current.payload
            if payload is not None:
                names.add(payload.token_name or SEED_NAME)
        return names

    @invariant()
    def a_live_token_is_served_everywhere(self) -> None:
        if not self.destinations:
            return
        assert_served_live(self.emulator, self.destinations)
        empty = [d.label for d in self.destinations if d.current.payload is None]
        if self.served_once:
            assert not empty, f"{empty} served a token once and now serve nothing"
        elif not empty:
            self.served_once = True

    @invariant()
    def nothing_is_revoked_before_its_grace_period(self) -> None:
        if not self.destinations:
            return
        now = self.clock()
        served = self.served()
        live = set(self.emulator.token_names(CLIENT))
        for name in self.last_served - served:
            self.stopped_serving.setdefault(name, now)
        for name in served:
            self.stopped_serving.pop(name, None)
        for name in list(self.last_served | set(self.stopped_serving)):
            if name in live or name in served:
                continue
            stopped = self.stopped_serving.get(name, now)
            assert (now - stopped).total_seconds() >= self.target.grace_period, \
                f"{name} was revoked {(now - stopped).total_seconds():g}s after it stopped being served " \
                f"(grace period {self.target.grace_period:g}s)"
            self.stopped_serving.pop(name, None)
        self.last_served = served

    # --- the end -------------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.destinations:
                self.clear_faults()
                # Later, plain --due runs (the CronJob): every lease expired, every grace period over.
                # Three at most: finish what was left (a resumed rotation keeps its token's age, so
                # it may be due again at once), rotate if due, revoke after that one's grace period.
                for _ in range(3):
                    self.clock.advance(LOCK_TTL + self.target.grace_period + 1)
                    outcome = self.rotation().run(force=False)
                    assert outcome.ok, outcome
                    assert_served_live(self.emulator, self.destinations)
                    if not outcome.revocations_pending and outcome.result in ("not-due", "revoked"):
                        break
                if not self.served_once:       # never rotated: a --due run rotates an empty destination
                    assert self.destinations[0].current.payload is not None
                assert_converged(self.emulator, self.destinations, now=self.clock())
        finally:
            self.client.close()
            self.emulator.stop()


RotationMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("ROTATOR_PROPERTY_EXAMPLES", "30")), stateful_step_count=15, deadline=None, derandomize=not os.environ.get("ROTATOR_PROPERTY_EXAMPLES"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], database=None)
TestRotationProperties = RotationMachine.TestCase


REPORT = Summary("properties-summary", "test_properties.py::",
                 lambda c: f"property test: {STATS['examples']} examples, {STATS['steps']} steps, "
                           f"{STATS['rotations']} rotation runs ({STATS['crashes']} crashed, "
                           f"{STATS['failed_runs']} failed cleanly), {STATS['concurrent']} concurrent pairs; "
                           f"{c.get('passed', 0)} passed, {c.get('failed', 0)} failed")


@pytest.fixture(autouse=True, scope="module")
def _summary(request: pytest.FixtureRequest) -> None:
    Summary.install(request.config, REPORT)

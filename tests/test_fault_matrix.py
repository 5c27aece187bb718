"""The fault matrix: every external call of a rotation x every fault, then a recovery run.

Generated from tables, not written case by case:

- **Funnelback calls** (list, clone, verify = current-user with the new token, revoke) x faults
  (HTTP 400/401/403/404/409/429/500/503, timeout, connection reset, connection refused, slow answer,
  late effect = the call times out and takes effect afterwards, effect-then-lost-answer, and an
  in-process crash before/after the call's effect) x persistence (once / every call);
- **destination calls**, each call *by its ordinal* in a clean rotation (the ordinals come from a
  probe rotation at collection time, so every call is covered, e.g. the 3rd journal write) x faults
  (unavailable, denied, conflict, effect-then-lost-answer, crash before/after the effect) on
  MemoryDestination (the reference store); discard_pending, which only failure paths call, is
  covered behind each failure that leads to it;
- the **real AWS backend** (boto3 against moto) for its write calls, and a subset of the Funnelback
  rows through the **real CLI** (subprocess) against moto.

Each case runs a rotation with the fault, asserts (a) every destination still serves a token that is
live on Funnelback (nothing live revoked, no consumer left holding a revoked token), then clears the
faults and runs a plain `--due` run (the CronJob), and asserts (b) convergence: one live rotator
token served by every destination, no pending value, no rotation in flight, no lease held, no
pending revocation, no orphan. "Crash" is an in-process kill -9: a BaseException that skips every
cleanup (the lease stays held, in_progress stays); real kill -9 is in tests/test_crash_resume.py.

The matrix size and pass count are printed at the end of `pytest` (terminal summary).
"""

from __future__ import annotations

import collections
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import urllib3
from conftest import ADMIN_TOKEN, SEED_NAME, make_target

from rotator.backends.base import Destination, DestinationState, JournalRecord, Payload
from rotator.config import (
    BackendSettings,
    FunnelbackSettings,
    TargetSettings,
)
from rotator.errors import (
    BackendConflictError,
    BackendPermissionError,
    BackendUnavailableError,
)
from rotator.funnelback import FunnelbackClient
from rotator.journal import Journal
from rotator.lease import lease_is_live
from rotator.naming import is_generation
from rotator.rotation import Outcome, TargetRotation

try:
    from rotator.rotation import SWEEP_EVERY
except ImportError:     # an engine that lists tokens on every run
    SWEEP_EVERY = 0.0
from rotator.secret import Secret
from rotator.testing.faults import RandomFaults
from rotator.testing.funnelback_emulator import FunnelbackEmulator
from rotator.testing.memory_store import MemoryDestination

pytestmark = pytest.mark.timeout(90)

CLIENT = "acme"
TIMEOUT = 0.4           # the client's read timeout in the in-process rows
SLOW = 0.1              # a slow answer, well inside the timeout
LATE = 0.6              # an answer (and effect) after the client gave up
LOCK_TTL = 30.0


# --- shared helpers (also used by test_properties.py and bench/load_500.py) ---------------------


class Clock:
    """An injected clock: time moves only when a test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)


class Crash(BaseException):
    """A simulated kill -9: not an Exception, so no `except Exception`/`except RotatorError` cleans up."""


def fb_settings(url: str, *, timeout: float = TIMEOUT, retries: int = 2) -> FunnelbackSettings:
    os.environ.setdefault("FB_ADMIN_TOKEN", ADMIN_TOKEN)
    return FunnelbackSettings(url=url, token_env="FB_ADMIN_TOKEN", timeout=timeout, connect_timeout=timeout,
                              retries=retries, backoff_base=0.01, backoff_max=0.02)


DEST_OPS = ("read", "write_pending", "promote", "discard_pending", "read_journal", "write_journal")
READ_OPS = ("read", "read_journal")


@dataclass
class DestFault:
    op: str
    kind: str                   # unavailable | denied | conflict | lost | crash | crash_after
    nth: int | None = 1         # the nth call of `op` from now on; None: every call


def dest_error(kind: str, label: str, op: str) -> BaseException:
    if kind == "denied":
        return BackendPermissionError("injected: access denied", destination=label, operation=op)
    if kind == "conflict":
        return BackendConflictError("injected: conflict", destination=label, operation=op)
    if kind in ("crash", "crash_after"):
        return Crash(f"injected crash in {label} {op}")
    return BackendUnavailableError("injected: unavailable", destination=label, operation=op)


class FaultyDestination(MemoryDestination):
    """MemoryDestination whose calls fail by ordinal: before the effect (unavailable, denied,
    conflict, crash) or after it (lost = the answer is lost, crash_after = the process dies)."""

    def __init__(self, label: str = "memory:a") -> None:
        super().__init__(label)
        self._calls_lock = threading.Lock()
        self.calls: collections.Counter[str] = collections.Counter()
        self.plan: list[DestFault] = []
        self.fired: list[str] = []

    def inject(self, op: str, kind: str, nth: int | None = 1) -> None:
        """Fail the nth call of `op` counted from now (None: every call)."""
        with self._calls_lock:
            base = self.calls[op]
            self.plan.append(DestFault(op, kind, None if nth is None else base + nth))

    def clear(self) -> None:
        with self._calls_lock:
            self.plan.clear()

    def _run(self, op: str, effect: Callable[[], Any]) -> Any:
        with self._calls_lock:
            self.calls[op] += 1
            n = self.calls[op]
            fault = next((f for f in self.plan if f.op == op and f.nth in (None, n)), None)
            if fault is not None:
                self.fired.append(f"{op}#{n}:{fault.kind}")
        if fault is None:
            return effect()
        if fault.kind in ("lost", "crash_after"):
            effect()
        raise dest_error(fault.kind, self.label, op)

    def read(self) -> DestinationState:
        return self._run("read", lambda: MemoryDestination.read(self))

    def write_pending(self, payload: Payload, state: DestinationState) -> DestinationState:
        return self._run("write_pending", lambda: MemoryDestination.write_pending(self, payload, state))

    def promote(self, payload: Payload, state: DestinationState) -> None:
        return self._run("promote", lambda: MemoryDestination.promote(self, payload, state))

    def discard_pending(self, state: DestinationState) -> None:
        return self._run("discard_pending", lambda: MemoryDestination.discard_pending(self, state))

    def read_journal(self) -> JournalRecord:
        return self._run("read_journal", lambda: MemoryDestination.read_journal(self))

    def write_journal(self, data: Any, expected: JournalRecord) -> JournalRecord:
        return self._run("write_journal", lambda: MemoryDestination.write_journal(self, data, expected))


class FaultyFunnelback:
    """The real FunnelbackClient behind a proxy that can crash the process around one call."""

    def __init__(self, client: FunnelbackClient) -> None:
        self._client = client
        self.crash: tuple[str, str] | None = None      # (method name, "before" | "after")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or self.crash is None or self.crash[0] != name:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.crash is None or self.crash[0] != name:
                return attr(*args, **kwargs)
            when = self.crash[1]
            self.crash = None
            if when == "after":
                attr(*args, **kwargs)
            raise Crash(f"injected crash {when} {name}")
        return call


class RefusingPool(urllib3.PoolManager):
    """A connection pool that refuses connections for matching calls, as a server that is down."""

    def __init__(self) -> None:
        super().__init__(maxsize=16)
        self.refuse: list[list[Any]] = []          # [method, path regex, times or None]
        self.refused = 0

    def urlopen(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        for rule in self.refuse:
            if rule[0] == method and re.search(rule[1], url) and (rule[2] is None or rule[2] > 0):
                if rule[2] is not None:
                    rule[2] -= 1
                self.refused += 1
                raise urllib3.exceptions.NewConnectionError(
                    None, "Failed to establish a new connection: [Errno 111] Connection refused")  # type: ignore[arg-type]
        return super().urlopen(method, url, *args, **kwargs)


def seed_destinations(emulator: FunnelbackEmulator, *labels: str,
                      cls: type[MemoryDestination] = FaultyDestination) -> list[Any]:
    """Destinations holding the hand-written (adopted) token, as before rotator's first run."""
    value = emulator.token_value(CLIENT, SEED_NAME)
    destinations = []
    for label in labels:
        destination = cls(label)
        destination.seed(Payload(token=Secret(value), token_name=None, client_id=None, rotated_at=None))
        destinations.append(destination)
    return destinations


def rotator_tokens(emulator: FunnelbackEmulator, token_name: str = SEED_NAME) -> list[str]:
    return sorted(n for n in emulator.token_names(CLIENT) if n == token_name or is_generation(token_name, n))


def assert_served_live(emulator: FunnelbackEmulator, destinations: Sequence[MemoryDestination],
                       token_name: str = SEED_NAME) -> None:
    """Invariant (a): every destination's current token is live on Funnelback."""
    for destination in destinations:
        payload = destination.current.payload
        if payload is None:
            continue
        name = payload.token_name or token_name
        assert emulator.token_value(CLIENT, name) == payload.token.reveal(), \
            f"{destination.label} serves {name}, which is not live on Funnelback"


def assert_converged(emulator: FunnelbackEmulator, destinations: Sequence[MemoryDestination],
                     token_name: str = SEED_NAME, *, now: datetime | None = None) -> str:
    """Invariant (b): one live rotator token, the same in every destination; nothing pending, in
    flight, leased or waiting for revocation; no orphan."""
    currents = [d.current.payload for d in destinations]
    assert all(p is not None for p in currents), "a destination holds nothing"
    names = {p.token_name for p in currents}
    assert len(names) == 1, f"destinations diverge: {names}"
    assert len({p.token.reveal() for p in currents}) == 1, "destinations hold different values"
    name = names.pop()
    assert name is not None and is_generation(token_name, name), name
    assert emulator.token_value(CLIENT, name) == currents[0].token.reveal(), "served token not live"
    assert all(d.pending.payload is None for d in destinations), "a pending value is left"
    assert rotator_tokens(emulator, token_name) == [name], \
        f"live tokens {rotator_tokens(emulator, token_name)}: orphans or unrevoked previous tokens"
    journal = Journal(destinations[0].journal.data)
    assert not journal.in_progress, journal.data
    # an expired lease (a release whose write failed) is harmless: the next run takes it over
    assert journal.lease_owner is None or (now is not None and not lease_is_live(journal, now)), \
        f"a lease is still held: {journal.data}"
    assert not journal.pending_revocations, journal.data
    return name


def secret_values(emulator: FunnelbackEmulator) -> list[str]:
    values = [ADMIN_TOKEN]
    with emulator.state.lock:
        values += [t.value for tokens in emulator.state.clients.values() for t in tokens.values()]
    return values


class Summary:
    """Counts a module's test outcomes and prints one line in pytest's terminal summary."""

    def __init__(self, name: str, pattern: str, describe: Callable[[dict[str, int]], str]) -> None:
        self.name, self.pattern, self.describe = name, pattern, describe
        self.counts: collections.Counter[str] = collections.Counter()

    def pytest_runtest_logreport(self, report: Any) -> None:
        if self.pattern not in report.nodeid:
            return
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.counts[report.outcome] += 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.counts:
            terminalreporter.write_line(self.describe(dict(self.counts)))

    @staticmethod
    def install(config: Any, summary: Summary) -> Summary:
        existing = config.pluginmanager.get_plugin(summary.name)
        if existing is None:
            config.pluginmanager.register(summary, summary.name)
            return summary
        return existing


# --- the tables -----------------------------------------------------------------------------------


FB_CALLS: dict[str, tuple[str, str, str]] = {
    # row name: (HTTP method, path regex, FunnelbackClient method)
    "list": ("GET", r"/application-token$", "list_client_tokens"),
    "clone": ("POST", r"/clone$", "clone_client_token"),
    "verify": ("GET", r"/current-user$", "verify_token"),
    "revoke": ("DELETE", r"/application-token/[^/]+$", "revoke_client_token"),
}
FB_FAULTS: dict[str, dict[str, Any] | None] = {
    **{str(s): {"kind": "status", "status": s} for s in (400, 401, 403, 404, 409, 429, 500, 503)},
    "timeout": {"kind": "hang"},
    "reset": {"kind": "reset"},
    "refused": None,                                  # RefusingPool
    "slow": {"kind": "delay", "delay_seconds": SLOW},
    "late": {"kind": "delay", "delay_seconds": LATE},
    "lost": {"kind": "lose_answer"},
}
# Faults a single run must absorb when they happen once (the acceptance: 503/429/slow answers in one
# `rotate --all` still rotate everything, with no orphan).
ABSORBED_ONCE = {"429", "500", "503", "timeout", "reset", "refused", "slow", "lost"}
ABSORBED_ALWAYS = {"slow"}
DEST_KINDS = ("unavailable", "denied", "conflict", "lost", "crash", "crash_after")
READ_KINDS = ("unavailable", "denied", "crash")


@dataclass(frozen=True)
class Case:
    layer: str                  # fb | dest | discard
    call: str                   # list/clone/...; or "a:write_journal"
    fault: str
    nth: int | None = 1         # None: every call ("always")
    trigger: str = ""           # discard rows: the failure that leads to discard_pending
    start: str = "steady"       # steady: rotated before (the usual case); adopt: rotator's first run;
                                # crashed: the last run died mid-rotation (this run resumes it)

    @property
    def id(self) -> str:
        if self.layer == "fb":
            start = "" if self.start == "steady" else f"{self.start}:"
            return f"fb:{start}{self.call}-{self.fault}-{'once' if self.nth == 1 else 'always'}"
        if self.layer == "dest":
            return f"dest:{self.call}#{self.nth or 'always'}-{self.fault}"
        return f"discard:{self.trigger}:{self.call.split(':')[0]}-{self.fault}"

    @property
    def expect_ok(self) -> bool:
        if self.layer != "fb":
            return False
        return self.fault in (ABSORBED_ONCE if self.nth == 1 else ABSORBED_ALWAYS)


def make_steady(emulator: FunnelbackEmulator, client: Any, destinations: Sequence[FaultyDestination],
                clock: Clock, target: TargetSettings) -> None:
    """The usual state of a target: rotated by rotator before, long enough ago that it is due again
    and that the daily orphan sweep (the one run that lists the client's tokens) is due too."""
    outcome = TargetRotation(target, client, destinations, clock=clock, sleep=lambda s: None).run(force=True)
    assert outcome.ok, outcome
    clock.advance(max(SWEEP_EVERY, target.interval) + 1)


def make_crashed(emulator: FunnelbackEmulator, funnelback: FaultyFunnelback,
                 destinations: Sequence[FaultyDestination], clock: Clock, target: TargetSettings) -> None:
    """A steady target whose last rotation died (kill -9) after storing the new value, before
    verifying it; its lease has expired. The next run resumes it and then looks for orphans: the
    one path where a rotation lists the client's tokens."""
    make_steady(emulator, funnelback, destinations, clock, target)
    funnelback.crash = ("verify_token", "before")
    try:
        TargetRotation(target, funnelback, destinations, clock=clock, sleep=lambda s: None).run(force=True)
    except Crash:
        pass
    assert funnelback.crash is None and destinations[0].pending.payload is not None
    clock.advance(target.lock_ttl + 1)


STARTS = {"steady": make_steady, "crashed": make_crashed}


def _probe_call_counts() -> dict[str, int]:
    """Destination calls per (destination, operation) in one clean rotation of a steady target, measured."""
    with FunnelbackEmulator(admin_token=ADMIN_TOKEN, clients=[CLIENT]) as emulator:
        emulator.add_token(CLIENT, SEED_NAME)
        client = FunnelbackClient(fb_settings(emulator.url))
        try:
            destinations = seed_destinations(emulator, "memory:a", "memory:b")
            clock, target = Clock(), make_target(lock_ttl=LOCK_TTL)
            make_steady(emulator, client, destinations, clock, target)
            for destination in destinations:
                destination.calls.clear()
            outcome = TargetRotation(target, client, destinations, clock=clock,
                                     sleep=lambda s: None).run(force=True)
        finally:
            client.close()
    assert outcome.ok, outcome
    return {f"{label}:{op}": n for label, d in zip("ab", destinations) for op, n in d.calls.items()}


CALL_COUNTS = _probe_call_counts()


def build_cases() -> list[Case]:
    cases: list[Case] = []
    for call in FB_CALLS:
        # list: only a run that resumes (or follows trouble) looks for orphans; a clean rotation lists nothing
        for start in (("crashed",) if call == "list" else ("steady", "adopt")):
            for fault in FB_FAULTS:
                for nth in (1, None):
                    cases.append(Case("fb", call, fault, nth, start=start))
            for fault in ("crash", "crash_after"):
                cases.append(Case("fb", call, fault, 1, start=start))
    for key, count in sorted(CALL_COUNTS.items()):
        op = key.split(":")[1]
        kinds = READ_KINDS if op in READ_OPS else DEST_KINDS
        for nth in range(1, count + 1):
            for kind in kinds:
                cases.append(Case("dest", key, kind, nth))
        cases.append(Case("dest", key, "unavailable", None))
    for trigger in DISCARD_TRIGGERS:
        for where in ("a", "b"):
            for kind in ("unavailable", "denied", "lost", "crash", "crash_after"):
                cases.append(Case("discard", f"{where}:discard_pending", kind, 1, trigger=trigger))
    return cases


# Failures after which the engine discards pending values (discard_pending is called nowhere else).
DISCARD_TRIGGERS = ("persist-fails", "verify-refused", "stale-pending")

CASES = build_cases()


# --- running one case -----------------------------------------------------------------------------


@dataclass
class World:
    emulator: FunnelbackEmulator
    session: RefusingPool
    client: FunnelbackClient
    funnelback: FaultyFunnelback
    destinations: list[FaultyDestination]
    clock: Clock
    target: TargetSettings

    def rotation(self) -> TargetRotation:
        return TargetRotation(self.target, self.funnelback, self.destinations, clock=self.clock,
                              sleep=lambda s: None)

    def clear_faults(self) -> None:
        self.emulator.faults.clear()
        self.session.refuse.clear()
        self.funnelback.crash = None
        for destination in self.destinations:
            destination.clear()


@pytest.fixture
def world(emulator: FunnelbackEmulator) -> Iterator[World]:
    session = RefusingPool()
    client = FunnelbackClient(fb_settings(emulator.url), pool=session)
    yield World(emulator=emulator, session=session, client=client, funnelback=FaultyFunnelback(client),
                destinations=seed_destinations(emulator, "memory:a", "memory:b"), clock=Clock(),
                target=make_target(lock_ttl=LOCK_TTL))
    client.close()


def inject(world: World, case: Case) -> None:
    if case.layer == "fb":
        method, path, function = FB_CALLS[case.call]
        times = 1 if case.nth == 1 else None
        if case.fault in ("crash", "crash_after"):
            world.funnelback.crash = (function, "before" if case.fault == "crash" else "after")
        elif case.fault == "refused":
            world.session.refuse.append([method, path, times])
        else:
            world.emulator.faults.add(**FB_FAULTS[case.fault], method=method, path=path, times=times)
        return
    where, op = case.call.split(":")
    destination = world.destinations["ab".index(where)]
    if case.layer == "dest":
        destination.inject(op, case.fault, case.nth)
        return
    # discard rows: make the engine discard, and fail that discard
    destination.inject("discard_pending", case.fault, 1)
    if case.trigger == "persist-fails":
        # b stored the value but its answer was lost: both hold a pending copy to withdraw
        world.destinations[1].inject("write_pending", "lost", 1)
    elif case.trigger == "verify-refused":
        world.emulator.faults.add(kind="status", status=401, method="GET", path=r"/current-user$", times=1)
    elif case.trigger == "stale-pending":
        # a pending value no rotation owns (a cleanup that stopped half-way): live, unserved
        name = f"{SEED_NAME}-20200101T000000Z"
        value = world.emulator.add_token(CLIENT, name)
        for d in world.destinations:
            state = MemoryDestination.read(d)
            MemoryDestination.write_pending(d, Payload(token=Secret(value), token_name=name, client_id=CLIENT,
                                                       rotated_at=world.clock()), state)


def fired(world: World, case: Case) -> bool:
    """Whether the injected fault actually happened (a matrix of faults that never fire proves nothing)."""
    if case.layer == "fb":
        if case.fault in ("crash", "crash_after"):
            return world.funnelback.crash is None
        if case.fault == "refused":
            return world.session.refused > 0
        faults = world.emulator.faults.list()
        return not faults if case.nth == 1 else all(f.hits > 0 for f in faults)
    op = case.call.split(":")[1]
    return any(f.startswith(op + "#") for d in world.destinations for f in d.fired)


def run_case(world: World, case: Case) -> tuple[Outcome | None, Outcome]:
    """The faulty run, invariant (a), then a plain --due run without faults, invariant (b)."""
    inject(world, case)
    faulty: Outcome | None = None
    try:
        faulty = world.rotation().run(force=True)
    except Crash:
        pass
    assert fired(world, case), f"the fault never fired: {case.id}"
    assert_served_live(world.emulator, world.destinations)
    if faulty is not None and faulty.error:
        for value in secret_values(world.emulator):
            assert value not in faulty.error, "a secret value in an error message"
    if case.expect_ok:
        assert faulty is not None and faulty.ok, faulty
        if case.fault != "late":
            assert_converged(world.emulator, world.destinations)
    world.clear_faults()
    if case.fault == "late":
        time.sleep(LATE + 0.1)      # let the late effect land before recovering
    # The recovery comes later: a crashed run's lease has expired by then.
    world.clock.advance(LOCK_TTL + 1)
    recovery = world.rotation().run(force=False)
    assert recovery.ok, (faulty, recovery)
    assert_served_live(world.emulator, world.destinations)
    assert_converged(world.emulator, world.destinations, now=world.clock())
    return faulty, recovery


REPORT = Summary("fault-matrix-summary", "test_fault_matrix.py::test_matrix",
                 lambda c: f"fault matrix: {len(CASES)} in-process cases + {len(CLI_ROWS)} CLI cases + "
                           f"{len(AWS_ROWS)} AWS cases = {len(CASES) + len(CLI_ROWS) + len(AWS_ROWS)}; "
                           f"ran {sum(c.values())}: {c.get('passed', 0)} passed, {c.get('failed', 0)} failed, "
                           f"{c.get('skipped', 0)} skipped")


@pytest.fixture(autouse=True, scope="module")
def _summary(request: pytest.FixtureRequest) -> None:
    Summary.install(request.config, REPORT)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matrix(world: World, case: Case) -> None:
    if case.start in STARTS:
        STARTS[case.start](world.emulator, world.funnelback, world.destinations, world.clock, world.target)
    run_case(world, case)


def test_table_covers_every_call() -> None:
    """Every Funnelback call and every destination call of a clean rotation is in the table."""
    calls = {c.call for c in CASES}
    assert set(FB_CALLS) <= calls
    assert {k for k in CALL_COUNTS} <= calls
    assert {f"{w}:discard_pending" for w in "ab"} <= calls
    ordinals = {(c.call, c.nth) for c in CASES if c.layer == "dest"}
    for key, count in CALL_COUNTS.items():
        assert {(key, n) for n in range(1, count + 1)} <= ordinals
    assert len(CASES) >= 200


# --- engine bugs found by the matrix, as focused tests ---------------------------------------------


def test_grace_period_counts_from_when_the_last_destination_was_promoted(world: World) -> None:
    """Invariant 2: the previous token stays valid `grace_period` after the new one is current in
    EVERY destination. A promotion that failed in one destination and was finished by a later run
    must not have its grace period already used up: consumers of that destination got the new token
    only at that later run."""
    world.target = make_target(lock_ttl=LOCK_TTL, grace_period=600.0, interval=86400.0)
    world.destinations[1].inject("promote", "unavailable", 1)
    first = world.rotation().run(force=True)
    assert not first.ok
    assert world.destinations[1].current.payload.token_name is None      # b still serves the old token
    world.clear_faults()
    world.clock.advance(3600)                                            # the CronJob runs an hour later
    resumed = world.rotation().run(force=False)
    assert resumed.ok and resumed.result == "resumed", resumed
    assert SEED_NAME in world.emulator.token_names(CLIENT), \
        "the old token was revoked the moment memory:b was promoted, with no grace period for its consumers"
    world.clock.advance(601)
    assert world.rotation().run(force=False).revoked == [SEED_NAME]
    assert_converged(world.emulator, world.destinations)


def test_an_abandoned_token_whose_pending_copy_survived_is_not_resumed(world: World) -> None:
    """Invariant 1/3: the persist step failed, the new token was revoked, but discarding its pending
    copy failed in one destination. The next run must clean up, not resume the rotation: resuming
    promotes a revoked token (verify = false) or fails again (verify = true)."""
    world.target = make_target(lock_ttl=LOCK_TTL, verify=False)
    world.destinations[1].inject("write_pending", "unavailable", 1)
    world.destinations[0].inject("discard_pending", "unavailable", 1)
    first = world.rotation().run(force=True)
    assert not first.ok
    assert_served_live(world.emulator, world.destinations)
    world.clear_faults()
    world.clock.advance(60)
    world.rotation().run(force=False)
    assert_served_live(world.emulator, world.destinations)   # fails: consumers are served a revoked token
    assert_converged(world.emulator, world.destinations)


def test_a_clone_that_lands_after_its_timeout_leaves_no_orphan(world: World) -> None:
    """Invariant 3: a clone whose answer timed out is revoked by name at once; when the clone takes
    effect only later (a slow server), the token it made must still be revoked by a later plain run
    (`--due`), not stay live until the next scheduled rotation weeks away."""
    # (grace period: the source must still exist when the late clone is carried out)
    world.target = make_target(lock_ttl=LOCK_TTL, grace_period=60.0, interval=86400.0)
    world.emulator.faults.add(kind="delay", delay_seconds=LATE, method="POST", path=r"/clone$", times=1)
    first = world.rotation().run(force=True)
    assert first.ok, first
    time.sleep(LATE + 0.1)
    orphans = [n for n in rotator_tokens(world.emulator) if n != first.new_token_name]
    assert orphans, "the late clone did not land (test set-up)"
    world.clock.advance(600)                                  # past the grace period: a --due run is due
    again = world.rotation().run(force=False)
    assert again.ok and again.revoked == [SEED_NAME], again
    assert rotator_tokens(world.emulator) == [first.new_token_name], "an orphan stays live on Funnelback"


def test_orphans_of_a_failed_run_are_swept_by_the_next_rotation(world: World) -> None:
    """Invariant 3: every clone of a run timed out and took effect only later (a slow server): the
    run failed, and each name was revoked before its token existed. The next run must find those
    tokens by name and revoke them; a rotation that skips the orphan sweep after a failed run leaves
    live tokens nobody knows the value of."""
    make_steady(world.emulator, world.funnelback, world.destinations, world.clock, world.target)
    world.emulator.faults.add(kind="delay", delay_seconds=LATE, method="POST", path=r"/clone$", times=None)
    failed = world.rotation().run(force=True)
    assert not failed.ok
    world.emulator.faults.clear()
    time.sleep(LATE + 0.1)
    assert len(rotator_tokens(world.emulator)) == 4, "the late clones did not land (test set-up)"
    world.clock.advance(LOCK_TTL + 1)
    again = world.rotation().run(force=False)
    assert again.ok and again.result == "rotated", again
    assert_converged(world.emulator, world.destinations, now=world.clock())


# --- the real AWS backend (boto3 -> moto) behind the same destination faults ------------------------


class FaultyAws(Destination):
    """An AwsDestination with FaultyDestination's fault plan around each interface call."""

    def __init__(self, inner: Destination) -> None:
        self.inner = inner
        self.label = inner.label
        self.faults = FaultyDestination(inner.label)   # used for its counting and plan only

    def _run(self, op: str, effect: Callable[[], Any]) -> Any:
        return self.faults._run(op, effect)

    def read(self) -> DestinationState:
        return self._run("read", self.inner.read)

    def write_pending(self, payload: Payload, state: DestinationState) -> DestinationState:
        return self._run("write_pending", lambda: self.inner.write_pending(payload, state))

    def promote(self, payload: Payload, state: DestinationState) -> None:
        return self._run("promote", lambda: self.inner.promote(payload, state))

    def discard_pending(self, state: DestinationState) -> None:
        return self._run("discard_pending", lambda: self.inner.discard_pending(state))

    def read_journal(self) -> JournalRecord:
        return self._run("read_journal", self.inner.read_journal)

    def write_journal(self, data: Any, expected: JournalRecord) -> JournalRecord:
        return self._run("write_journal", lambda: self.inner.write_journal(data, expected))

    def check(self, *, write: bool) -> Any:
        return self.inner.check(write=write)


AWS_ROWS = [(op, kind, nth) for op, nths in (("write_pending", (1,)), ("promote", (1,)),
                                             ("write_journal", (1, 2, 3, 4, 5, 6, 7)))
            for nth in nths for kind in ("unavailable", "lost", "crash_after")] + \
           [("discard_pending", kind, 1) for kind in ("unavailable", "lost")]


@pytest.fixture(scope="module")
def aws_backend(moto_url: str) -> Iterator[Any]:
    from rotator.backends import open_backend
    backend = open_backend(BackendSettings(name="aws", type="aws-secrets-manager",
                                           options={"region": "us-east-1", "endpoint_url": moto_url}))
    yield backend
    backend.close()


def aws_current(destination: FaultyAws) -> Payload | None:
    return destination.inner.read().current.payload


@pytest.mark.parametrize("op,kind,nth", AWS_ROWS, ids=[f"aws:{o}#{n}-{k}" for o, k, n in AWS_ROWS])
def test_matrix_aws(emulator: FunnelbackEmulator, fb_client: FunnelbackClient, aws_backend: Any,
                    op: str, kind: str, nth: int) -> None:
    prefix = f"fm/{uuid.uuid4().hex[:10]}"
    destinations = [FaultyAws(aws_backend.destination({"secret_id": f"{prefix}/{n}"}, target="web"))
                    for n in ("a", "b")]
    value = emulator.token_value(CLIENT, SEED_NAME)
    for d in destinations:
        aws_backend.client.create_secret(Name=d.inner.secret_id, SecretString=f'{{"token": "{value}"}}')
    clock = Clock()
    target = make_target(lock_ttl=LOCK_TTL)
    if op == "discard_pending":
        destinations[1].faults.inject("write_pending", "unavailable", 1)
        destinations[0].faults.inject("discard_pending", kind, 1)
    else:
        destinations[0].faults.inject(op, kind, nth)
    try:
        TargetRotation(target, fb_client, destinations, clock=clock, sleep=lambda s: None).run(force=True)
    except Crash:
        pass
    for d in destinations:
        current = aws_current(d)
        name = current.token_name or SEED_NAME
        assert emulator.token_value(CLIENT, name) == current.token.reveal(), f"{d.label} serves a dead token"
    for d in destinations:
        d.faults.clear()
    clock.advance(LOCK_TTL + 1)
    recovery = TargetRotation(target, fb_client, destinations, clock=clock, sleep=lambda s: None).run(force=False)
    assert recovery.ok, recovery
    states = [d.inner.read() for d in destinations]
    names = {s.current.payload.token_name for s in states}
    assert len(names) == 1 and all(s.pending.payload is None for s in states), states
    name = names.pop()
    assert emulator.token_value(CLIENT, name) == states[0].current.payload.token.reveal()
    assert rotator_tokens(emulator) == [name]
    journal = Journal(destinations[0].inner.read_journal().data)
    assert not journal.in_progress and not journal.pending_revocations, journal.data
    assert journal.lease_owner is None or not lease_is_live(journal, clock()), journal.data


def test_a_rotation_right_after_an_abandoned_one_reuses_no_name(emulator: FunnelbackEmulator,
                                                                 fb_client: FunnelbackClient,
                                                                 aws_backend: Any) -> None:
    """The new token was refused (verify 401), withdrawn and revoked; the next run starts within
    the same second. It must not clone under the abandoned token's name again: AWS derives the
    pending write's ClientRequestToken from (secret, current version, token name), so the reused
    name collides with the withdrawn version (ResourceExistsException) and the run fails."""
    destination = FaultyAws(aws_backend.destination({"secret_id": f"fm/{uuid.uuid4().hex[:10]}"}, target="web"))
    value = emulator.token_value(CLIENT, SEED_NAME)
    aws_backend.client.create_secret(Name=destination.inner.secret_id, SecretString=f'{{"token": "{value}"}}')
    clock = Clock()                                   # time does not move: both runs in one second
    target = make_target(lock_ttl=LOCK_TTL)
    emulator.faults.add(kind="status", status=401, method="GET", path=r"/current-user$", times=1)
    first = TargetRotation(target, fb_client, [destination], clock=clock, sleep=lambda s: None).run(force=True)
    assert not first.ok and "authenticate" in (first.error or ""), first
    again = TargetRotation(target, fb_client, [destination], clock=clock, sleep=lambda s: None).run(force=False)
    assert again.ok, again
    current = aws_current(destination)
    assert emulator.token_value(CLIENT, current.token_name) == current.token.reveal()
    assert rotator_tokens(emulator) == [current.token_name]


# --- a subset through the real CLI (subprocess) against moto ---------------------------------------


CLI_ROWS = [
    ("clone", {"kind": "status", "status": 503}, None),
    ("clone", {"kind": "lose_answer"}, 1),
    ("list", {"kind": "status", "status": 429, "retry_after": 0.05}, None),
    ("list", {"kind": "reset"}, 1),
    ("verify", {"kind": "hang"}, None),
    ("verify", {"kind": "status", "status": 401}, 1),
    ("revoke", {"kind": "status", "status": 500}, None),
]


def _cli_id(row: tuple[str, dict[str, Any], int | None]) -> str:
    call, fault, times = row
    return f"cli:{call}-{fault['kind']}{fault.get('status', '')}-{'once' if times == 1 else 'always'}"


@pytest.fixture
def stack(emulator: FunnelbackEmulator, moto_url: str, tmp_path: Any) -> Any:
    from harness import new_stack
    return new_stack(emulator, moto_url, tmp_path)


def short_timeouts(stack: Any) -> None:
    path = stack.workdir / "rotation.toml"
    path.write_text(path.read_text().replace('timeout = "3s"', 'timeout = "700ms"'))


@pytest.mark.parametrize("row", CLI_ROWS, ids=[_cli_id(r) for r in CLI_ROWS])
def test_matrix_cli(stack: Any, row: tuple[str, dict[str, Any], int | None]) -> None:
    call, fault, times = row
    old = stack.emulator.token_value(CLIENT, "web")
    stack.put_secret("web", {"token": old})
    stack.write_config([{"name": "web"}])
    short_timeouts(stack)
    method, path, _ = FB_CALLS[call]
    stack.emulator.faults.add(**fault, method=method, path=path, times=times)
    first = stack.run("rotate", "web")
    assert first.returncode in (0, 1) and "Traceback" not in first.stderr, first.stderr
    current = stack.stage("web")
    assert stack.emulator.token_value(CLIENT, current.get("token_name") or "web") == current["token"], \
        "AWSCURRENT holds a token that is not live"
    for value in secret_values(stack.emulator):
        assert value not in first.stdout + first.stderr
    stack.emulator.faults.clear()
    recovery = stack.run("rotate", "--due")
    assert recovery.returncode == 0, recovery.stdout + recovery.stderr
    stack.assert_converged("web")


# --- many targets, transient faults, ONE run -------------------------------------------------------


def test_eight_targets_with_503_429_and_slow_answers_rotate_in_one_cli_run(stack: Any) -> None:
    """The acceptance shape: one `rotate --all` over 8 targets while Funnelback answers 503, 429 and
    slowly; every target rotates in that single run and no orphan is left."""
    names = [f"t{i}" for i in range(8)]
    for name in names:
        stack.emulator.add_token(CLIENT, name)
        stack.put_secret(name, {"token": stack.emulator.token_value(CLIENT, name)})
    stack.write_config([{"name": n} for n in names])
    faults = stack.emulator.faults
    faults.add(kind="status", status=503, method="POST", path=r"/clone$", times=4)
    faults.add(kind="status", status=429, retry_after=0.1, method="GET", path=r"/application-token$", times=4)
    faults.add(kind="status", status=503, method="GET", path=r"/current-user$", times=3)
    faults.add(kind="status", status=503, method="DELETE", path=r"/application-token/", times=3)
    faults.add(kind="delay", delay_seconds=0.5, path=".*", times=8)
    result = stack.run("rotate", "--all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 ok, 0 failed" in result.stdout
    for name in names:
        stack.assert_converged(name)


def test_forty_targets_with_5_percent_transient_faults_rotate_in_one_run(emulator: FunnelbackEmulator,
                                                                          moto_url: str, tmp_path: Any) -> None:
    """40 targets in one in-process `rotate --all` over the real AWS backend (moto), with 5% of all
    Funnelback calls answered 503/429 or slowly: all rotate in that run, no orphan, nothing pending."""
    from rotator.config import load_config
    from rotator.runtime import Runtime, rotate_targets

    emulator.faults = RandomFaults(0.05, seed=40)
    names = [f"load{i:02d}" for i in range(40)]
    for name in names:
        emulator.add_token(CLIENT, name)
    prefix = f"l{uuid.uuid4().hex[:8]}"
    config = load_config(write_load_config(tmp_path, emulator.url, moto_url, names, prefix))
    started = time.monotonic()
    with Runtime(config) as runtime:
        outcomes = rotate_targets(runtime, config.targets, force=True, concurrency=8)
        failed = [o for o in outcomes if not o.ok]
        assert not failed, failed
        assert sum(emulator.faults.injected.values()) > 0
        assert_many_converged(emulator, runtime, config.targets)
    assert time.monotonic() - started < 60


def write_load_config(workdir: Any, fb_url: str, moto_url: str, names: Sequence[str], prefix: str,
                      *, retries: int = 3) -> Any:
    lines = [f"""
[funnelback]
url = "{fb_url}"
token_env = "FB_ADMIN_TOKEN"
timeout = "3s"
connect_timeout = "1s"
retries = {retries}
backoff_base = "20ms"
backoff_max = "100ms"

[backends.aws]
type = "aws-secrets-manager"
region = "us-east-1"
endpoint_url = "{moto_url}"
"""]
    for name in names:
        lines.append(f"""
[[targets]]
name = "{name}"
client_id = "{CLIENT}"
token_name = "{name}"
interval = "1h"
grace_period = "0s"
lock_ttl = "30s"
destinations = [{{ backend = "aws", secret_id = "{prefix}/{name}" }}]
""")
    path = workdir / "load.toml"
    path.write_text("".join(lines))
    os.environ.setdefault("FB_ADMIN_TOKEN", ADMIN_TOKEN)
    return path


def assert_many_converged(emulator: FunnelbackEmulator, runtime: Any, targets: Sequence[TargetSettings]) -> int:
    """Each target: its one destination serves a live generation, nothing pending, no orphan.
    Returns the number of orphans found (asserted zero)."""
    for target in targets:
        destination = runtime.destinations(target)[0]
        state = destination.read()
        current = state.current.payload
        assert current is not None and is_generation(target.token_name, current.token_name), target.name
        assert emulator.token_value(CLIENT, current.token_name) == current.token.reveal(), target.name
        assert state.pending.payload is None, target.name
        live = rotator_tokens(emulator, target.token_name)
        assert live == [current.token_name], f"{target.name}: live {live}"
        journal = Journal(destination.read_journal().data)
        assert not journal.in_progress and journal.lease_owner is None, journal.data
    return 0

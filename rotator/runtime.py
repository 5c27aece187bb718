"""The clients a command needs, built once from the config and shared by every target, and the
batch runner that rotates many targets with each failure isolated."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Callable, Sequence

from rotator.backends.base import CheckResult, Destination, utcnow
from rotator.config import Config, TargetSettings
from rotator.errors import RotatorError
from rotator.journal import iso, parse_iso
from rotator.lease import lease_is_live
from rotator.logs import get_logger
from rotator.prefetch import CurrentVersions, TokenLists
from rotator.rotation import Outcome, TargetRotation, due_reason, next_due_at, pending_work

log = get_logger("rotator.runtime")

Clock = Callable[[], datetime]


class Runtime:
    """Lazily built, thread-safe clients: one Funnelback client, one client per backend in use."""

    def __init__(self, config: Config, *, clock: Clock = utcnow, workers: int | None = None) -> None:
        """`workers`: the threads that will share these clients (default `[service] concurrency`)."""
        self.config = config
        self.clock = clock
        self.workers = workers or config.service.concurrency
        self._lock = threading.Lock()
        self._funnelback: Any = None
        self._backends: dict[str, Any] = {}

    @property
    def funnelback(self) -> Any:
        with self._lock:
            if self._funnelback is None:
                from rotator.funnelback import FunnelbackClient
                self._funnelback = FunnelbackClient(self.config.funnelback, workers=self.workers)
            return self._funnelback

    def backend(self, name: str) -> Any:
        with self._lock:
            if name not in self._backends:
                from rotator.backends import open_backend
                self._backends[name] = open_backend(self.config.backends[name])
            return self._backends[name]

    def prepare(self, targets: Sequence[TargetSettings]) -> None:
        """Build now, before any worker starts, the clients these targets use: otherwise every first
        worker waits on one client's construction, and start-up has no end to measure. A client
        that cannot be built is left for the targets that need it to report, each on its own."""
        with contextlib.suppress(Exception):
            self.funnelback
        for name in dict.fromkeys(d.backend for t in targets for d in t.destinations):
            with contextlib.suppress(Exception):
                self.backend(name)

    def destinations(self, target: TargetSettings) -> list[Destination]:
        return [self.backend(d.backend).destination(d.options, target=target.name) for d in target.destinations]

    def rotation(self, target: TargetSettings, *, sleep: Callable[[float], None] = time.sleep) -> TargetRotation:
        return TargetRotation(target, self.funnelback, self.destinations(target), clock=self.clock, sleep=sleep)

    def close(self) -> None:
        with self._lock:
            if self._funnelback is not None:
                self._funnelback.close()
            for backend in self._backends.values():
                backend.close()
            self._backends.clear()
            self._funnelback = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_target(runtime: Runtime, target: TargetSettings, *, force: bool, dry_run: bool,
               current: CurrentVersions | None = None, tokens: TokenLists | None = None) -> Outcome:
    """One target, never raising: every failure becomes a failed Outcome (failure isolation).
    `current`: batch-read current versions to start a forced run from; `tokens`: token lists
    shared with the run's other targets (rotator.prefetch)."""
    try:
        return runtime.rotation(target).run(force=force, dry_run=dry_run,
                                            current=current.current(target) if current else None,
                                            tokens=tokens)
    except RotatorError as exc:
        log.error("rotation_failed", target=target.name, error=exc.one_line())
        return Outcome(target.name, "failed", ok=False, error=exc.one_line())
    except Exception as exc:  # a bug must not stop the other targets; its text may not be safe to show
        log.exception("rotation_crashed", target=target.name)
        return Outcome(target.name, "failed", ok=False, error=f"internal error ({type(exc).__name__})")


def rotate_targets(runtime: Runtime, targets: Sequence[TargetSettings], *, force: bool, dry_run: bool = False,
                   concurrency: int = 4, wait_for_grace: bool = False,
                   on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run every target (in parallel up to `concurrency`); with `wait_for_grace`, wait out the grace
    periods and revoke the previous tokens before returning."""
    outcomes = _run_all(runtime, targets, force=force, dry_run=dry_run, concurrency=concurrency,
                        on_outcome=on_outcome)
    if not wait_for_grace or dry_run:
        return outcomes
    waiting = {o.target: o for o in outcomes if o.ok and o.revocations_pending}
    by_name = {t.name: t for t in targets}
    while waiting:
        soonest = min(t for o in waiting.values() for _, t in o.revocations_pending)
        delay = (soonest - runtime.clock()).total_seconds()
        if delay > 0:
            log.info("waiting_for_grace_period", until=iso(soonest), seconds=round(delay, 1))
            time.sleep(delay)
        again = _run_all(runtime, [by_name[name] for name in waiting], force=False, dry_run=False,
                         concurrency=concurrency, on_outcome=None)
        for result in again:
            first = waiting.pop(result.target)
            first.revoked.extend(result.revoked)
            first.revocations_pending = result.revocations_pending
            if not result.ok:
                first.ok, first.result, first.error = False, "failed", result.error
            elif result.revocations_pending:
                waiting[result.target] = first
    return outcomes


def _run_all(runtime: Runtime, targets: Sequence[TargetSettings], *, force: bool, dry_run: bool,
             concurrency: int, on_outcome: Callable[[Outcome], None] | None) -> list[Outcome]:
    # A forced run over many targets reads their current versions in batches (rotator.prefetch).
    current = CurrentVersions(runtime, targets) if force and not dry_run and len(targets) > 1 else None
    tokens = TokenLists(runtime, targets) if not dry_run and len(targets) > 1 else None

    def one(target: TargetSettings) -> Outcome:
        outcome = run_target(runtime, target, force=force, dry_run=dry_run, current=current, tokens=tokens)
        if on_outcome is not None:
            on_outcome(outcome)
        return outcome

    if len(targets) <= 1 or concurrency <= 1:
        return [one(t) for t in targets]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(targets)), thread_name_prefix="rotate") as pool:
        return list(pool.map(one, targets))


def target_status(runtime: Runtime, target: TargetSettings) -> dict[str, Any]:
    """Everything `rotator status` shows for a target; names and times only, never values."""
    now = runtime.clock()
    status: dict[str, Any] = {"target": target.name, "client_id": target.client_id}
    try:
        rotation = runtime.rotation(target)
        snapshot = rotation.observe()
    except RotatorError as exc:
        status.update(error=exc.one_line(), state="unknown")
        return status
    served = snapshot.served(target)
    stored = {n for n in served if n} | snapshot.pending_names()
    rotated_at = snapshot.oldest_rotation()
    journal = snapshot.journal
    in_progress = journal.in_progress
    status.update(
        token_name=served[0],
        destinations=[{"destination": d.label, "token_name": name,
                       "pending_token_name": (s.pending.payload.token_name if s.pending.payload else None),
                       "exists": s.exists}
                      for d, s, name in zip(rotation.destinations, snapshot.states, served, strict=True)],
        diverged=len(set(served)) > 1,
        rotated_at=iso(rotated_at) if rotated_at else None,
        age_seconds=round((now - rotated_at).total_seconds()) if rotated_at else None,
        next_due=iso(due) if (due := next_due_at(snapshot, target, now=now)) else "now",
        due=bool(due_reason(snapshot, target, now)),
        pending_work=pending_work(snapshot, target, now),
        # The phase is read off the stores, not written to the journal: a stored value means the
        # clone is done and the next run verifies and promotes it; none means it is cloning.
        in_progress=({"new_token_name": in_progress.get("new_token_name"),
                      "phase": "stored" if in_progress.get("new_token_name") in stored else "cloning",
                      "started_at": in_progress.get("started_at"),
                      "lease_live": lease_is_live(journal, now)} if in_progress else None),
        pending_revocations=journal.pending_revocations,
        last_result=_last_result(journal.last_result, served[0], rotated_at),
    )
    return status


def _last_result(recorded: dict[str, Any] | None, served: str | None,
                 rotated_at: datetime | None) -> dict[str, Any] | None:
    """The journal's last result, unless the stores show a later rotation: a quick rotation
    (rotator.quick) writes no journal when it revokes at once, and its rotated_at says it all."""
    recorded_at = parse_iso((recorded or {}).get("at"))
    if rotated_at is not None and served and (recorded_at is None or rotated_at > recorded_at):
        return {"outcome": "success", "at": iso(rotated_at), "token_name": served}
    return recorded


def preflight(runtime: Runtime) -> list[CheckResult]:
    """`rotator check`: read-only; every check reported, none stops the others."""
    results: list[CheckResult] = []

    def attempt(name: str, action: Callable[[], Any]) -> Any:
        try:
            value = action()
        except RotatorError as exc:
            results.append(CheckResult(name, False, exc.one_line()))
            return None
        return value

    identity = attempt("funnelback: authenticate", runtime.funnelback.whoami)
    if identity is not None:
        results.append(CheckResult("funnelback: authenticate", True, f"as {identity.name}"))
    for client in sorted({t.client_id for t in runtime.config.targets}):
        tokens = attempt(f"funnelback: list tokens of client {client}",
                         lambda c=client: runtime.funnelback.list_client_tokens(c))
        if tokens is None:
            continue
        results.append(CheckResult(f"funnelback: list tokens of client {client}", True, f"{len(tokens)} tokens"))
        names = {t.name for t in tokens}
        for target in (t for t in runtime.config.targets if t.client_id == client):
            found = target.token_name in names or any(n.startswith(target.token_name + "-") for n in names)
            results.append(CheckResult(f"target {target.name}: token {target.token_name} exists", found,
                                       "" if found else "not found; rotation needs a live token to clone"))
    for name in sorted({d.backend for t in runtime.config.targets for d in t.destinations}):
        backend = attempt(f"backend {name}: open", lambda n=name: runtime.backend(n))
        if backend is not None:
            results.extend(attempt(f"backend {name}", backend.check) or [])
    for target in runtime.config.targets:
        destinations = attempt(f"target {target.name}: destinations", lambda t=target: runtime.destinations(t))
        for destination in destinations or []:
            results.extend(attempt(f"{destination.label}", lambda d=destination: d.check(write=True)) or [])
    return results

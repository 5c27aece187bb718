"""`rotator run`: the long-running service.

One APScheduler job per target (id = the target's name, ``max_instances=1``, ``coalesce=True``) runs
on a bounded worker pool (``[service] concurrency``). A job's tick holds no memory of what is due:

1. it reads the target's stored state (destinations + journal, the same `Snapshot` the engine reads);
2. if another process holds the target's lease, it leaves the target alone and looks again when the
   lease expires;
3. if `rotation.due_reason` or `rotation.pending_work` says there is something to do (the very
   functions `rotate --due` uses), it calls `runtime.run_target(force=False)`, which decides again
   under the lease, rotates, finishes half-done work and revokes previous tokens whose grace passed;
4. it updates the metrics from the stored state, checks `max_age`, and pulls the job's next run
   forward to the precise moment something becomes due (next rotation, next revocation, lease
   expiry), all re-derived from the stored state after a restart.

Between those moments the job polls every ``clamp(interval / 10, 1 s, poll_interval)``
(``poll_interval`` for a cron ``schedule``; ``[service] poll_interval`` defaults to 60 s), which
notices other writers (another replica, a CronJob, a manual rotation). Each poll of an AWS target is
three reads (describe, current value, journal), so a provider with thousands of targets sets
``poll_interval`` to minutes: nothing the daemon itself expects (a due time, a revocation after its
grace period, another process's lease running out) waits for a poll.
A target whose run fails is retried with exponential backoff (from its poll period, at most 60 s
whatever ``poll_interval`` says, doubling, capped at 5 min).

Several replicas, and `rotate --due` CronJobs, may run side by side: the target's lease lets one
rotate at a time, and a tick that finds the lease live leaves the target alone. ``--shard I/N``
(a stable SHA-256 of the target name, see rotator.shard) splits the targets between N replicas,
e.g. ``--shard $(JOB_COMPLETION_INDEX)/N`` in an Indexed Job or the pod ordinal of a StatefulSet.

Signals: SIGTERM/SIGINT stop taking new work, let runs in flight finish (up to 20 s; a run still
going then is abandoned: its lease expires and the next start resumes it) and exit 0 (Kubernetes
allows 30 s). A second SIGTERM/SIGINT exits at once, abandoning runs in flight the same way.
SIGHUP reloads the config (an invalid one is logged as ``config_reload_failed`` and the old one
kept; ``[service] listen`` and ``concurrency`` need a restart).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Sequence

from rotator.config import Config, TargetSettings, load_config
from rotator.errors import ConfigError, RotatorError
from rotator.health import HealthServer
from rotator.journal import iso
from rotator.lease import lease_is_live
from rotator.logs import get_logger
from rotator.metrics import CONTENT_TYPE, Metrics
from rotator.notify import Notifier
from rotator.rotation import Outcome, Snapshot, due_reason, next_due_at, pending_work
from rotator.runtime import Runtime, run_target

log = get_logger("rotator.daemon")

SHUTDOWN_WAIT = 20.0          # seconds runs in flight may take after SIGTERM (Kubernetes allows 30)
MIN_POLL = 1.0
MAX_BACKOFF = 300.0
FIRST_RETRY_MAX = 60.0        # a failed run's first retry comes after its poll period, at most this
PREFLIGHT_RETRY = 15.0        # seconds between preflights while they fail
LEASE_MARGIN = 0.25           # look again this long after another process's lease expires


def poll_period(target: TargetSettings, longest: float) -> float:
    """How often a target's stored state is read when nothing is expected sooner (`longest`:
    `[service] poll_interval`)."""
    if target.schedule:
        return longest
    return max(MIN_POLL, min(target.interval / 10.0, longest))


def run_daemon(args: Any) -> int:
    """Entry point of `rotator run` (cli.cmd_run). Returns the exit code."""
    from rotator.cli import _select

    config = load_config(args.config)
    targets = _select(config, args)
    return Daemon(config, targets, args=args).run()


@dataclass
class _RuntimeRef:
    """A Runtime shared by the ticks that started with it; closed once retired and unused."""

    runtime: Runtime
    users: int = 0
    retired: bool = False


@dataclass
class _TargetState:
    failures: int = 0
    retry_at: datetime | None = None


@dataclass
class _Preflight:
    ok: bool | None = None            # None: not run yet
    reason: str = "preflight not run yet"
    at: datetime | None = None
    checks: list[str] = field(default_factory=list)


class Daemon:
    def __init__(self, config: Config, targets: Sequence[TargetSettings], *, args: Any = None) -> None:
        self.args = args
        self.config = config
        self.targets: dict[str, TargetSettings] = {t.name: t for t in targets}
        self.metrics = Metrics()
        self.notifier = Notifier(config.notify, on_sent=self._notified)
        self._lock = threading.Lock()
        self._ref = _RuntimeRef(Runtime(config))
        self._state: dict[str, _TargetState] = {}
        self._stopping = threading.Event()
        self._signals: list[str] = []     # appended by signal handlers, consumed by the main loop
        self._preflight = _Preflight()
        self._preflight_now = threading.Event()
        self._inflight: dict[str, int] = {}
        self._inflight_done = threading.Condition(self._lock)
        self.scheduler: Any = None
        self.health: HealthServer | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        previous = self._install_signals()
        try:
            self.start()
            while not self._stopping.is_set():
                time.sleep(0.1)   # signals interrupt nothing here; they are picked up below
                for name in self._take_signals():
                    log.info("signal", signal=name, action="reload" if name == "SIGHUP" else "stop")
                    if name != "SIGHUP":
                        self.request_stop()
                    elif not self._stopping.is_set():
                        self._reload()
            return self.stop()
        finally:
            self._restore_signals(previous)

    def _take_signals(self) -> list[str]:
        taken = []
        while self._signals:
            taken.append(self._signals.pop(0))
        return taken

    def _reload(self) -> None:
        try:
            self.reload()
        except Exception:  # noqa: BLE001 - a reload bug must not take the daemon down
            log.exception("config_reload_crashed", action="keeping what runs")

    def start(self) -> None:
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        # APScheduler's own warnings ("skipped: maximum number of running instances reached") are
        # expected here (a tick still running when the next is due) and go to our log instead.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        self.health = HealthServer(self.config.service.listen, render_metrics=self.metrics.render,
                                   metrics_content_type=CONTENT_TYPE, live=self.live, ready=self.ready).start()
        self.scheduler = BackgroundScheduler(
            timezone=timezone.utc,
            executors={"default": ThreadPoolExecutor(max_workers=self.config.service.concurrency)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self.scheduler.add_listener(self._scheduler_event,
                                    EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self.scheduler.start()
        self.metrics.track(self.targets)
        for target in self.targets.values():
            self._add_job(target)
        self.metrics.set_up(True)
        threading.Thread(target=self._preflight_loop, name="preflight", daemon=True).start()
        log.info("daemon_started", targets=sorted(self.targets), listen=self.config.service.listen,
                 concurrency=self.config.service.concurrency, shard=getattr(self.args, "shard", None),
                 config=self.config.path)
        if not self.targets:
            log.warning("no_targets", reason="the config (or this --shard) selects no target")

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self) -> int:
        """Stop taking work, wait for runs in flight (bounded), release everything. Returns 0."""
        begin = time.monotonic()
        self._stopping.set()
        self.metrics.set_up(False)
        log.info("shutdown_started", in_flight=sorted(self._running()))
        if self.scheduler is not None:
            try:
                self.scheduler.shutdown(wait=False)
            except Exception:  # noqa: BLE001 - already stopped
                pass
        deadline = begin + SHUTDOWN_WAIT
        with self._inflight_done:
            while self._inflight and time.monotonic() < deadline:
                self._inflight_done.wait(min(0.2, max(deadline - time.monotonic(), 0.01)))
            abandoned = sorted(self._inflight)
        self.notifier.close(timeout=max(min(3.0, deadline + 5.0 - time.monotonic()), 0.1))
        if self.health is not None:
            self.health.stop()
        if abandoned:
            # A run still going is abandoned, not killed mid-step by us: the process exits, its
            # lease expires within lock_ttl and the next start (or any replica) resumes the run.
            log.warning("shutdown_abandoned_runs", targets=abandoned,
                        hint="their leases expire and the next run resumes them")
            _hard_exit(0)
            return 0
        with self._lock:
            self._ref.retired = True
            if self._ref.users == 0:
                self._close_runtime(self._ref)
        log.info("stopped", seconds=round(time.monotonic() - begin, 2))
        return 0

    # --- signals --------------------------------------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}

        # Handlers only record the signal (the main loop logs and acts): a handler that took a lock
        # the interrupted main thread holds (an Event's, a logger's, ours) would deadlock.
        def on_stop(signum: int, _frame: Any) -> None:
            self._signals.append(signal.Signals(signum).name)
            if sum(name != "SIGHUP" for name in self._signals) + (1 if self._stopping.is_set() else 0) >= 2:
                # A second signal (an impatient Ctrl-C): leave now. Runs in flight are abandoned,
                # exactly as after kill -9: their leases expire and the next start resumes them.
                _emergency_line(signal.Signals(signum).name, list(self._inflight))
                _hard_exit(0)

        def on_hup(_signum: int, _frame: Any) -> None:
            self._signals.append("SIGHUP")

        for signum, handler in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGHUP, on_hup)):
            previous[signum] = signal.signal(signum, handler)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    # --- probes ---------------------------------------------------------------------------------

    def live(self) -> tuple[bool, str]:
        scheduler = self.scheduler
        if self._stopping.is_set():
            return False, "shutting down"
        if scheduler is None or not scheduler.running:
            return False, "scheduler not running"
        thread = getattr(scheduler, "_thread", None)
        if thread is None or not thread.is_alive():
            return False, "scheduler thread died"
        return True, f"scheduling {len(self.targets)} targets"

    def ready(self) -> tuple[bool, str]:
        if self._stopping.is_set():
            return False, "shutting down"
        live, reason = self.live()
        if not live:
            return False, reason
        preflight = self._preflight
        if not preflight.ok:
            return False, preflight.reason
        passed = f" at {iso(preflight.at)}" if preflight.at else ""
        return True, f"config {self.config.path} loaded; preflight passed{passed}"

    # --- jobs -----------------------------------------------------------------------------------

    def _add_job(self, target: TargetSettings, *, first_run: datetime | None = None) -> None:
        from apscheduler.triggers.interval import IntervalTrigger

        period = poll_period(target, self.config.service.poll_interval)
        self.scheduler.add_job(self._tick, trigger=IntervalTrigger(seconds=period, timezone=timezone.utc),
                               args=(target.name,), id=target.name, name=f"rotate {target.name}",
                               replace_existing=True, next_run_time=first_run or _utcnow())

    def _tick(self, name: str) -> None:
        """One look at one target. Never raises."""
        if self._stopping.is_set():
            return  # queued before SIGTERM: take no new work
        with self._lock:
            target = self.targets.get(name)
            state = self._state.setdefault(name, _TargetState())
        if target is None:
            return
        try:
            with self._running_target(name) as runtime:
                now = runtime.clock()
                if state.retry_at is not None and now < state.retry_at:
                    return
                self._look(runtime, target, state)
        except Exception:  # noqa: BLE001 - a bug must not stop this target's future ticks
            log.exception("tick_crashed", target=name)

    def _look(self, runtime: Runtime, target: TargetSettings, state: _TargetState) -> None:
        now = runtime.clock()
        try:
            snapshot = runtime.rotation(target).observe()
        except RotatorError as exc:
            self._after_run(target, state, Outcome(target.name, "failed", ok=False,
                                                   error=f"reading the stored state failed: {exc.one_line()}"),
                            now)
            return
        if lease_is_live(snapshot.journal, now):
            # Another process (a replica, a CronJob, a manual `rotate`) is working on this target.
            log.debug("target_busy", target=target.name, lease_expires_at=iso(snapshot.journal.lease_expires_at))
            self._observe(target, snapshot, now, busy_until=snapshot.journal.lease_expires_at)
            return
        reason = due_reason(snapshot, target, now)
        work = pending_work(snapshot, target, now)
        if (reason or work) and not self._stopping.is_set():
            log.info("run_started", target=target.name, reason=reason or work)
            outcome = run_target(runtime, target, force=False, dry_run=False)
            now = runtime.clock()
            self._after_run(target, state, outcome, now)
            if not outcome.ok:
                return
            try:
                snapshot = runtime.rotation(target).observe()
            except RotatorError as exc:
                log.warning("state_refresh_failed", target=target.name, error=exc.one_line())
                return
        self._observe(target, snapshot, now)

    def _after_run(self, target: TargetSettings, state: _TargetState, outcome: Outcome, now: datetime) -> None:
        self.metrics.observe_outcome(outcome)
        self.notifier.outcome(outcome)
        if outcome.ok:
            state.failures, state.retry_at = 0, None
            level = log.info if outcome.result != "not-due" else log.debug
            level("run_finished", target=target.name, result=outcome.result, new_token_name=outcome.new_token_name,
                  revoked=outcome.revoked or None, duration_ms=int(outcome.duration * 1000),
                  revocations_pending=[{"token_name": n, "not_before": iso(t)}
                                       for n, t in outcome.revocations_pending] or None)
            return
        state.failures += 1
        # Retries do not wait for a long poll_interval: they start from the poll period at most 60 s.
        period = poll_period(target, FIRST_RETRY_MAX)
        delay = min(period * 2 ** (state.failures - 1), MAX_BACKOFF)
        state.retry_at = now + timedelta(seconds=delay)
        log.error("run_failed", target=target.name, error=outcome.error, failures=state.failures,
                  retry_at=iso(state.retry_at))
        self._wake_at(target.name, state.retry_at)

    def _observe(self, target: TargetSettings, snapshot: Snapshot, now: datetime, *,
                 busy_until: datetime | None = None) -> None:
        """Metrics, staleness and the next precise wake-up, from what is stored."""
        rotated_at = snapshot.oldest_rotation()
        journal = snapshot.journal
        due = next_due_at(snapshot, target, now)
        self.metrics.observe_state(target.name, now=now, rotated_at=rotated_at, next_due=due,
                                   pending_revocations=len(journal.pending_revocations),
                                   last_success=journal.last_success_at)
        served = snapshot.served(target)
        self.notifier.check_stale(target, token_name=served[0] if served else None, rotated_at=rotated_at, now=now)
        moments = [due, journal.next_revocation_at()]
        if busy_until is not None:
            moments.append(busy_until + timedelta(seconds=LEASE_MARGIN))
        upcoming = [m for m in moments if m is not None and m > now]
        if upcoming:
            self._wake_at(target.name, min(upcoming))

    def _wake_at(self, name: str, moment: datetime) -> None:
        """Run the target's job at `moment` if that is sooner than its next poll."""
        if self._stopping.is_set() or self.scheduler is None:
            return
        try:
            job = self.scheduler.get_job(name)
            if job is None or (job.next_run_time is not None and job.next_run_time <= moment):
                return
            self.scheduler.modify_job(name, next_run_time=moment)
        except Exception as exc:  # noqa: BLE001 - the job was removed by a reload, or shutdown began
            log.debug("wake_not_set", target=name, error=type(exc).__name__)

    def _scheduler_event(self, event: Any) -> None:
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES

        if event.code == EVENT_JOB_MAX_INSTANCES:
            log.debug("tick_skipped", target=event.job_id, reason="the previous tick is still running")
        elif event.code == EVENT_JOB_ERROR:
            log.error("tick_error", target=event.job_id, error=type(event.exception).__name__)
        else:
            log.debug("tick_missed", target=event.job_id)

    # --- runs in flight and the shared Runtime --------------------------------------------------

    @contextmanager
    def _running_target(self, name: str | None) -> Iterator[Runtime]:
        """The current Runtime, kept open while in use; `name` (a target) counts as a run in flight
        that shutdown waits for."""
        with self._lock:
            ref = self._ref
            ref.users += 1
            if name is not None:
                self._inflight[name] = self._inflight.get(name, 0) + 1
        try:
            yield ref.runtime
        finally:
            with self._lock:
                ref.users -= 1
                if name is not None:
                    self._inflight[name] -= 1
                    if not self._inflight[name]:
                        del self._inflight[name]
                close = ref.retired and ref.users == 0
                self._inflight_done.notify_all()
            if close:
                self._close_runtime(ref)

    def _running(self) -> list[str]:
        with self._lock:
            return list(self._inflight)

    @staticmethod
    def _close_runtime(ref: _RuntimeRef) -> None:
        try:
            ref.runtime.close()
        except Exception as exc:  # noqa: BLE001 - closing connections must not fail a reload/stop
            log.warning("runtime_close_failed", error=type(exc).__name__)

    # --- reload ---------------------------------------------------------------------------------

    def reload(self) -> bool:
        """SIGHUP: load the config again; keep the old one (and say why) if the new one is invalid."""
        from rotator.cli import _select

        path = self.args.config if self.args is not None else self.config.path
        try:
            config = load_config(path)
            targets = _select(config, self.args) if self.args is not None else list(config.targets)
        except ConfigError as exc:
            self.metrics.config_reloads.labels(result="failed").inc()
            log.error("config_reload_failed", error=exc.one_line(), action="keeping the running config")
            return False
        except RotatorError as exc:
            self.metrics.config_reloads.labels(result="failed").inc()
            log.error("config_reload_failed", error=exc.one_line(), action="keeping the running config")
            return False
        for key in ("listen", "concurrency"):
            if getattr(config.service, key) != getattr(self.config.service, key):
                log.warning("config_reload_partial", key=f"service.{key}", action="takes effect on restart")
        new = {t.name: t for t in targets}
        with self._lock:
            old_ref, self._ref = self._ref, _RuntimeRef(Runtime(config))
            old_ref.retired = True
            close_old = old_ref.users == 0
            old_targets, self.targets, self.config = self.targets, new, config
            for name in set(self._state) - set(new):
                del self._state[name]
        if close_old:
            self._close_runtime(old_ref)
        self.notifier.replace_hooks(config.notify)
        removed = sorted(set(old_targets) - set(new))
        for name in removed:
            try:
                self.scheduler.remove_job(name)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.metrics.track(new)
        for target in new.values():
            self._add_job(target)  # replaces the job: new poll period, and a look right now
        self._preflight_now.set()
        self.metrics.config_reloads.labels(result="ok").inc()
        log.info("config_reloaded", config=config.path, targets=sorted(new),
                 added=sorted(set(new) - set(old_targets)) or None, removed=removed or None,
                 changed=sorted(n for n in new if n in old_targets and new[n] != old_targets[n]) or None)
        return True

    # --- preflight ------------------------------------------------------------------------------

    def _preflight_loop(self) -> None:
        while not self._stopping.is_set():
            self._preflight_now.clear()
            ok = self.run_preflight()
            period = self.config.service.preflight_interval
            # a failing preflight is retried sooner, so /readyz recovers soon after the cause is fixed
            deadline = time.monotonic() + (period if ok else min(period, PREFLIGHT_RETRY))
            while not self._stopping.is_set() and time.monotonic() < deadline:
                if self._preflight_now.wait(min(1.0, max(deadline - time.monotonic(), 0.01))):
                    break

    def run_preflight(self) -> bool:
        """Funnelback authenticates with rotator's credential and every store in use answers."""
        problems: list[str] = []
        checks: list[str] = []
        with self._running_target(None) as runtime:
            try:
                identity = runtime.funnelback.whoami()
                checks.append(f"funnelback: authenticated as {identity.name}")
            except RotatorError as exc:
                problems.append(f"funnelback: {exc.one_line()}")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"funnelback: internal error ({type(exc).__name__})")
            with self._lock:
                targets = list(self.targets.values())
            for name in sorted({d.backend for t in targets for d in t.destinations}):
                try:
                    results = runtime.backend(name).check()
                except RotatorError as exc:
                    problems.append(f"backend {name}: {exc.one_line()}")
                    continue
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"backend {name}: internal error ({type(exc).__name__})")
                    continue
                for result in results:
                    line = f"{result.name}{': ' + result.detail if result.detail else ''}"
                    (checks if result.ok else problems).append(line)
        ok = not problems
        now = _utcnow()
        was = self._preflight.ok
        self._preflight = _Preflight(ok=ok, reason="; ".join(problems) if problems else "preflight passed",
                                     at=now, checks=checks)
        self.metrics.set_preflight(ok, now)
        if not ok:
            log.error("preflight_failed", problems=problems)
        elif was is not True:
            log.info("preflight_passed", checks=checks)
        return ok

    def _notified(self, event: str, ok: bool) -> None:
        self.metrics.notifications.labels(event=event, result="sent" if ok else "failed").inc()


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _emergency_line(signal_name: str, in_flight: list[str]) -> None:
    """One JSON log line written straight to stderr's descriptor (safe inside a signal handler)."""
    line = {"signal": signal_name, "action": "exit now", "abandoned": sorted(set(in_flight)) or None,
            "hint": "their leases expire and the next run resumes them", "event": "signal",
            "level": "warning", "timestamp": iso(_utcnow())}
    try:
        os.write(2, (json.dumps(line) + "\n").encode())
    except OSError:
        pass


def _hard_exit(code: int) -> None:
    """Exit now, without waiting for worker threads still in a run (interpreter exit would join them)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)

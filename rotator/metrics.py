"""Prometheus metrics of the daemon, in a registry of its own (never the process-global one).

Labels are target names and result words only: never a token value, a token name or a URL.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rotator import __version__

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Every result a rotation Outcome can carry (rotation.Outcome.result), pre-created per target so
# increase() works from the first scrape. Only runs of the engine count: a tick that reads the stored
# state and finds nothing to do is not a run ("not-due" then means another process got there first).
RESULTS = ("rotated", "resumed", "completed-elsewhere", "revoked", "not-due", "failed")

# Rotation takes seconds (several HTTP round trips); grace waits are not part of it.
_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The daemon's metrics. Thread-safe (prometheus-client is; `forget` takes a lock)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rotations = Counter("rotator_rotations", "Rotation runs of a target (ticks with work to do), by result",
                                 ["target", "result"], registry=r)
        self.duration = Histogram("rotator_rotation_duration_seconds",
                                  "Wall time of rotation runs that did work or failed",
                                  ["target"], buckets=_DURATION_BUCKETS, registry=r)
        self.token_age = Gauge("rotator_token_age_seconds",
                               "Age of the token the destinations serve (from its stored rotated_at), "
                               "as of the scrape",
                               ["target"], registry=r)
        self.last_success = Gauge("rotator_last_success_timestamp_seconds",
                                  "Unix time the last rotation of the target completed", ["target"], registry=r)
        self.next_rotation = Gauge("rotator_next_rotation_timestamp_seconds",
                                   "Unix time the target is next due (in the past: overdue)", ["target"],
                                   registry=r)
        self.pending_revocations = Gauge("rotator_pending_revocations",
                                         "Previous tokens waiting out their grace period", ["target"], registry=r)
        self.target_failing = Gauge("rotator_target_failing",
                                    "1 while the target's last run failed", ["target"], registry=r)
        self.up = Gauge("rotator_up", "1 while the daemon's scheduler runs", registry=r)
        self.preflight_ok = Gauge("rotator_preflight_ok",
                                  "1 when the last preflight (Funnelback and stores reachable) passed", registry=r)
        self.preflight_timestamp = Gauge("rotator_preflight_timestamp_seconds",
                                         "Unix time of the last preflight", registry=r)
        self.config_reloads = Counter("rotator_config_reloads", "SIGHUP config reloads, by result",
                                      ["result"], registry=r)
        self.notifications = Counter("rotator_notifications", "Webhook notifications sent, by event and result",
                                     ["event", "result"], registry=r)
        self.build_info = Gauge("rotator_build_info", "rotator's version", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        self._lock = threading.Lock()
        self._targets: set[str] = set()

    # --- targets --------------------------------------------------------------------------------

    def track(self, targets: Iterable[str]) -> None:
        """Create every target's series (so a scrape shows them before the first run) and drop the
        series of targets no longer scheduled (after a config reload)."""
        wanted = set(targets)
        with self._lock:
            for gone in self._targets - wanted:
                self._forget(gone)
            for name in wanted - self._targets:
                for result in RESULTS:
                    self.rotations.labels(target=name, result=result)
                self.duration.labels(target=name)
                self.pending_revocations.labels(target=name).set(0)
                self.target_failing.labels(target=name).set(0)
            self._targets = wanted

    def _forget(self, name: str) -> None:
        for result in RESULTS:
            _remove(self.rotations, name, result)
        for metric in (self.duration, self.token_age, self.last_success, self.next_rotation,
                       self.pending_revocations, self.target_failing):
            _remove(metric, name)

    def observe_outcome(self, outcome: Any) -> None:
        """Count one run (a rotation.Outcome)."""
        self.rotations.labels(target=outcome.target, result=outcome.result).inc()
        if outcome.result not in ("not-due",):
            self.duration.labels(target=outcome.target).observe(outcome.duration)
        self.target_failing.labels(target=outcome.target).set(0 if outcome.ok else 1)

    def observe_state(self, target: str, *, now: datetime, rotated_at: datetime | None,
                      next_due: datetime | None, pending_revocations: int,
                      last_success: datetime | None) -> None:
        """The stored state of one target, as read on a tick."""
        if rotated_at is not None:
            # computed at scrape time, so the age keeps growing between the target's polls
            stamp = rotated_at.timestamp()
            self.token_age.labels(target=target).set_function(lambda: max(time.time() - stamp, 0.0))
        else:
            _remove(self.token_age, target)
        if next_due is not None:
            self.next_rotation.labels(target=target).set(next_due.timestamp())
        else:
            # due now (a repair or an adopted token): report now, so "next <= time()" alerts hold
            self.next_rotation.labels(target=target).set(now.timestamp())
        self.pending_revocations.labels(target=target).set(pending_revocations)
        if last_success is not None:
            self.last_success.labels(target=target).set(last_success.timestamp())

    # --- process --------------------------------------------------------------------------------

    def set_up(self, up: bool) -> None:
        self.up.set(1 if up else 0)

    def set_preflight(self, ok: bool, at: datetime) -> None:
        self.preflight_ok.set(1 if ok else 0)
        self.preflight_timestamp.set(at.timestamp())

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's value (for tests and status)."""
        return self.registry.get_sample_value(name, dict(labels or {}))


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass

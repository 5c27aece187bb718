"""Fault injection shared by the bundled emulators (Funnelback, Vault).

A fault applies to the next `times` API calls whose method and path match; the emulator decides
what each kind means on its wire (see each emulator's docstring):

    status       answer `status` (with `body`/`errors`, `headers`, `retry_after`), no effect
    delay        wait `delay_seconds`, then handle the call normally
    hang         never answer: hold until the emulator stops, `delay_seconds` pass, or the client leaves
    lose_answer  perform the effect, then close the connection without an answer
    reset        TCP reset, no effect
"""

from __future__ import annotations

import collections
import random
import re
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

FAULT_KINDS = frozenset({"status", "delay", "hang", "lose_answer", "reset"})


@dataclass
class Fault:
    kind: str
    path: str = ".*"                # regex searched in the request path
    method: str = "*"
    times: int | None = 1           # None: every matching call, forever
    status: int = 500
    retry_after: float | None = None
    delay_seconds: float = 0.0
    body: str | None = None         # raw body for `status` (Funnelback)
    errors: list[str] | None = None  # `{"errors": [...]}` for `status` (Vault)
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(FAULT_KINDS)}")
        self.method = self.method.upper()
        self._regex = re.compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and self._regex.search(path) is not None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "method": self.method, "times": self.times,
                "status": self.status, "retry_after": self.retry_after, "delay_seconds": self.delay_seconds,
                "errors": self.errors, "hits": self.hits}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Fault:
        known = {"kind", "path", "method", "times", "status", "retry_after", "delay_seconds", "body", "errors",
                 "headers"}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f"unknown fault keys {sorted(unknown)}")
        return cls(**doc)


class FaultSet:
    """Thread-safe list of faults; the first matching one with calls left is consumed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault | None = None, /, **kwargs: Any) -> Fault:
        fault = fault if fault is not None else Fault(**kwargs)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> int:
        with self._lock:
            count, self._faults = len(self._faults), []
        return count

    def list(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None


def hang(connection: socket.socket, stopping: threading.Event, seconds: float) -> None:
    """Hold a request unanswered until `stopping` is set, `seconds` pass (if > 0), or the client
    leaves (e.g. its read timeout), so a hung request never pins a server thread for good."""
    deadline = time.monotonic() + seconds if seconds > 0 else None
    while not stopping.is_set() and (deadline is None or time.monotonic() < deadline):
        readable, _, _ = select.select([connection], [], [], 0.05)
        if readable:
            try:
                if connection.recv(1, socket.MSG_PEEK) == b"":
                    return
            except OSError:
                return
            time.sleep(0.05)


class RandomFaults(FaultSet):
    """A FaultSet that, besides its own faults, hits each call with probability `rate` with one of
    `kinds` (counted faults cannot express "5% of all calls"). Swap it in as an emulator's `faults`."""

    def __init__(self, rate: float, seed: int = 1, kinds: Sequence[Mapping[str, Any]] | None = None) -> None:
        super().__init__()
        self.rate = rate
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.kinds = [dict(k) for k in (kinds or [{"kind": "status", "status": 503},
                                                  {"kind": "status", "status": 429},
                                                  {"kind": "delay", "delay_seconds": 0.05}])]
        self.injected: collections.Counter[str] = collections.Counter()
        self.calls = 0

    def take(self, method: str, path: str) -> Fault | None:
        fault = super().take(method, path)
        if fault is not None:
            return fault
        with self._rng_lock:
            self.calls += 1
            spec = self._rng.choice(self.kinds) if self._rng.random() < self.rate else None
            if spec is not None:
                self.injected[f"{spec['kind']}{spec.get('status', '')}"] += 1
        return Fault(**spec) if spec is not None else None

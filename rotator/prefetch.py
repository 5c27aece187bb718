"""Reads shared by the targets of a batch run (`rotate --all`, `rotate --due`).

Current versions, for a forced run over many targets (`CurrentVersions`):

A quick rotation (rotator.quick) starts by reading its target's current version: over thousands of
AWS targets, one GetSecretValue each. A store that can read many at once (AWS BatchGetSecretValue:
20 per call) is asked here instead, a chunk of consecutive targets at a time, as the workers reach
the chunk's first target, so no read is older than the moment it takes the pool to start those
targets. A stale read costs nothing but a lost race: promotion is a compare-and-swap on the version
read, and a rotation that loses it reports completed-elsewhere.

Token lists (`TokenLists`): a quick rotation lists its client's tokens to find what a dead run left
(rotator.quick). A provider's clients hold several tokens each, whose targets the pool starts
together, so one list serves them all, for at most `TOKEN_LIST_MAX_AGE` seconds. What it is for is
older than the run: a clone that a run which died before this one never stored. A run dying at the
same moment is as invisible to a list taken a little earlier as to one taken a little later.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from rotator.backends.base import CurrentVersion
from rotator.config import TargetSettings
from rotator.errors import RotatorError
from rotator.logs import get_logger

if TYPE_CHECKING:
    from rotator.funnelback import TokenInfo
    from rotator.runtime import Runtime

log = get_logger("rotator.prefetch")

CHUNK = 20
TOKEN_LIST_MAX_AGE = 5.0   # seconds a client's token list is shared for


@dataclass
class _Chunk:
    backend: str
    targets: list[TargetSettings]
    lock: threading.Lock = field(default_factory=threading.Lock)
    read: dict[str, CurrentVersion | None] | None = None    # by target name, once read


class CurrentVersions:
    """Lazily batch-read current versions of the single-destination targets of a run."""

    def __init__(self, runtime: Runtime, targets: Sequence[TargetSettings]) -> None:
        self._runtime = runtime
        self._chunks: dict[str, _Chunk] = {}
        self._failed: set[str] = set()     # backends whose batch read failed: read per target instead
        filling: dict[str, _Chunk] = {}
        for target in targets:
            if len(target.destinations) != 1 or not target.verify:
                continue        # only the quick path uses it (see rotator.quick)
            backend = target.destinations[0].backend
            chunk = filling.get(backend)
            if chunk is None or len(chunk.targets) >= CHUNK:
                chunk = filling[backend] = _Chunk(backend, [])
            chunk.targets.append(target)
            self._chunks[target.name] = chunk

    def current(self, target: TargetSettings) -> CurrentVersion | None:
        """The target's current version from its chunk's batch read; None: read it yourself."""
        chunk = self._chunks.get(target.name)
        if chunk is None:
            return None
        with chunk.lock:
            if chunk.read is None:
                chunk.read = self._read(chunk)
            # handed out once: a run over thousands of targets must not keep every value alive
            return chunk.read.pop(target.name, None)

    def _read(self, chunk: _Chunk) -> dict[str, CurrentVersion | None]:
        if chunk.backend in self._failed:
            return {}
        try:
            destinations = {t.name: self._runtime.destinations(t)[0] for t in chunk.targets}
            found = self._runtime.backend(chunk.backend).read_currents(list(destinations.values()))
        except RotatorError as exc:
            # e.g. BatchGetSecretValue not allowed: each rotation reads its own current version.
            if chunk.backend not in self._failed:
                self._failed.add(chunk.backend)
                log.warning("batch_read_unavailable", backend=chunk.backend, error=exc.one_line(),
                            hint="each target reads its own current version instead")
            return {}
        return {name: found.get(destination.label) for name, destination in destinations.items()}


@dataclass
class _TokenList:
    lock: threading.Lock = field(default_factory=threading.Lock)
    tokens: list[TokenInfo] | None = None
    read_at: float = 0.0
    users_left: int = 0


class TokenLists:
    """`list_client_tokens` as FunnelbackClient has it, one call per client shared by the targets
    of that client in this run (see the module docstring)."""

    def __init__(self, runtime: Runtime, targets: Sequence[TargetSettings], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._runtime = runtime
        self._clock = clock
        self._lock = threading.Lock()
        self._lists = {client: _TokenList(users_left=count)
                       for client, count in Counter(t.client_id for t in targets).items()}

    def list_client_tokens(self, client: str) -> list[TokenInfo]:
        with self._lock:
            entry = self._lists.get(client)
        if entry is None:
            return self._runtime.funnelback.list_client_tokens(client)
        with entry.lock:
            entry.users_left -= 1
            if entry.tokens is None or self._clock() - entry.read_at > TOKEN_LIST_MAX_AGE:
                try:
                    entry.tokens = self._runtime.funnelback.list_client_tokens(client)
                    entry.read_at = self._clock()
                except RotatorError:
                    entry.tokens = None
            tokens = entry.tokens
        if entry.users_left <= 0:
            with self._lock:   # its last target has it: a run over thousands of clients keeps none
                self._lists.pop(client, None)
        if tokens is None:
            # Sharing is an optimisation: a shared read that failed (its retries spent on one target's
            # behalf) must not cost this target more than a read of its own would.
            return self._runtime.funnelback.list_client_tokens(client)
        return tokens

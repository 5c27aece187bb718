"""Current versions read in batches for a forced run over many targets (`rotate --all`).

A quick rotation (rotator.quick) starts by reading its target's current version: over thousands of
AWS targets, one GetSecretValue each. A store that can read many at once (AWS BatchGetSecretValue:
20 per call) is asked here instead, a chunk of consecutive targets at a time, as the workers reach
the chunk's first target, so no read is older than the moment it takes the pool to start those
targets. A stale read costs nothing but a lost race: promotion is a compare-and-swap on the version
read, and a rotation that loses it reports completed-elsewhere.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from rotator.backends.base import CurrentVersion
from rotator.config import TargetSettings
from rotator.errors import RotatorError
from rotator.logs import get_logger

if TYPE_CHECKING:
    from rotator.runtime import Runtime

log = get_logger("rotator.prefetch")

CHUNK = 20


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

"""Stable sharding of targets: `--shard I/N` keeps the targets whose name hashes into shard I.

The hash is SHA-256 of the target name, so every process and machine agrees, whatever Python's
per-process hash seed is (a Kubernetes Indexed Job passes I as $JOB_COMPLETION_INDEX)."""

from __future__ import annotations

import hashlib


def parse_shard(text: str) -> tuple[int, int]:
    index_text, sep, count_text = text.partition("/")
    if not sep or not index_text.isdigit() or not count_text.isdigit():
        raise ValueError(f"--shard {text!r} is not of the form I/N")
    index, count = int(index_text), int(count_text)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def in_shard(name: str, index: int, count: int) -> bool:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count == index

"""The Secret wrapper and its registry of values to scrub."""

from __future__ import annotations

import gc
import secrets
import threading

from rotator.secret import REDACTED, Secret, registry, scrub


def test_repr_and_format_never_show_the_value() -> None:
    value = secrets.token_urlsafe(24)
    secret = Secret(value)
    assert value not in repr(secret) and value not in f"{secret}" and value not in str([secret])
    assert secret.reveal() == value


def test_scrub_replaces_registered_values_anywhere_in_text() -> None:
    short, long = Secret(secrets.token_urlsafe(12)), Secret(secrets.token_urlsafe(40))
    text = f"a{short.reveal()}b {long.reveal()}c"
    assert scrub(text) == f"a{REDACTED}b {REDACTED}c"


def test_scrub_finds_values_among_few_and_among_many_of_one_length() -> None:
    # Few values of a length are searched for one by one, many by hashing the text's windows.
    few = [Secret(secrets.token_urlsafe(33)) for _ in range(2)]
    text = f"<{few[1].reveal()}>"
    assert scrub(text) == f"<{REDACTED}>"
    many = [Secret(secrets.token_urlsafe(36)) for _ in range(200)]
    text = f"x {many[123].reveal()} y {many[7].reveal()}"
    assert scrub(text) == f"x {REDACTED} y {REDACTED}"
    del few, many


def test_collected_secrets_are_forgotten() -> None:
    value = secrets.token_urlsafe(30)
    Secret(value)
    gc.collect()
    scrub("x")  # reaps
    assert value not in registry._counts


def test_scrub_survives_garbage_collection_of_secrets_while_it_holds_its_lock() -> None:
    # Regression: a finalizer that took the registry's lock deadlocked when the cyclic collector ran
    # inside scrub(). Secrets kept alive only by reference cycles die exactly there.
    old = gc.get_threshold()
    gc.set_threshold(10, 1, 1)
    done = threading.Event()

    def churn() -> None:
        for _ in range(3000):
            holder: list = []
            holder.append((Secret(secrets.token_urlsafe(20)), holder))   # a cycle: freed by the collector
            scrub("some log line " * 4)
        done.set()

    try:
        worker = threading.Thread(target=churn, daemon=True)
        worker.start()
        worker.join(timeout=60)
        assert done.is_set(), "scrub() deadlocked under garbage collection"
    finally:
        gc.set_threshold(*old)

"""Pressure on Funnelback under load: a batch run with `[funnelback] max_requests_per_second` and
`max_concurrency` set stays within both, as the emulator itself counts (arrival times and requests
in flight), while 16 workers would go faster without them."""

from __future__ import annotations

import time

import pytest

from harness import Stack, new_stack
from rotator.config import load_config
from rotator.runtime import Runtime, rotate_targets

RATE = 25            # requests per second
IN_FLIGHT = 3
WORKERS = 16


@pytest.fixture
def stack(emulator, moto_url, tmp_path, monkeypatch) -> Stack:
    s = new_stack(emulator, moto_url, tmp_path)
    for key, value in s.env().items():
        monkeypatch.setenv(key, value)
    return s


def test_rate_limit_and_in_flight_cap_hold_under_a_batch_run(stack: Stack) -> None:
    names = [f"p{i:02d}" for i in range(16)]
    for name in names:
        stack.emulator.add_token("acme", name)
        stack.put_secret(name, {"token": stack.emulator.token_value("acme", name)})
    config = load_config(stack.write_config(
        [{"name": n} for n in names], concurrency=WORKERS,
        extra_funnelback=f"max_requests_per_second = {RATE}\nmax_concurrency = {IN_FLIGHT}"))
    stack.emulator.delay_all_seconds = 0.02
    stack.emulator.reset_counters()
    started = time.monotonic()
    with Runtime(config, workers=WORKERS) as runtime:
        outcomes = rotate_targets(runtime, config.targets, force=True, concurrency=WORKERS)
    elapsed = time.monotonic() - started
    assert all(o.ok and o.result == "rotated" for o in outcomes), outcomes
    calls = sum(stack.emulator.counters().values())
    assert calls >= 3 * len(names)
    # The limits were what set the pace: 16 workers with 20 ms answers would need well under a second.
    assert elapsed >= (calls - 1) / RATE * 0.9
    # ...and they held, as the server saw it. The bucket allows a burst of 1; a server thread that
    # stalls can stamp at most the requests in flight (IN_FLIGHT) late, all at once.
    assert stack.emulator.max_in_flight <= IN_FLIGHT
    assert stack.emulator.max_requests_within(1.0) <= RATE + 1 + IN_FLIGHT
    for name in names:
        stack.assert_converged(name)

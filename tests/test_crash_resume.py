"""kill -9 at every step of a rotation, then a plain re-run: it must converge.

Converged means (design-notes invariant 3): every destination holds the same live token, exactly one
rotator-made token is live, no orphan stays on Funnelback, no pending value, no rotation in flight."""

from __future__ import annotations

import os
import signal
import time

import pytest

from harness import Stack, new_stack


@pytest.fixture
def stack(emulator, moto_url, tmp_path) -> Stack:
    s = new_stack(emulator, moto_url, tmp_path)
    s.put_secret("web", {"token": emulator.token_value("acme", "web")})
    s.write_config([{"name": "web"}], lock_ttl="2s")
    return s


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def kill(process) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def rerun_converges(stack: Stack, *args: str) -> None:
    stack.emulator.faults.clear()
    result = stack.run("rotate", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    stack.assert_converged("web")


# (Funnelback operation, fault) - the process is killed while that call is in flight. A `delay`
# fault performs the call's effect after the process died (a lost answer); `hang` never performs it.
STEPS = [
    ("clone_client_token", "hang"),
    ("clone_client_token", "delay"),
    ("current_user", "hang"),
    ("revoke_client_token", "hang"),
    ("revoke_client_token", "delay"),
]
PATHS = {"list_client_tokens": ("GET", "application-token$"), "clone_client_token": ("POST", "/clone$"),
         "current_user": ("GET", "current-user$"), "revoke_client_token": ("DELETE", "application-token/")}


@pytest.mark.parametrize("operation,kind", STEPS, ids=[f"{o}-{k}" for o, k in STEPS])
@pytest.mark.parametrize("rerun", [("--due",), ("web",)], ids=["due", "manual"])
def test_kill_during_a_call_then_rerun_converges(stack: Stack, operation: str, kind: str, rerun) -> None:
    method, path = PATHS[operation]
    stack.emulator.faults.add(kind=kind, method=method, path=path, times=1, delay_seconds=1.0)
    before = stack.emulator.calls(operation)
    process = stack.spawn("rotate", "web")
    wait_for(lambda: stack.emulator.calls(operation) > before)
    kill(process)
    time.sleep(1.2)  # let a delayed call take its effect with nobody listening
    rerun_converges(stack, *rerun)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95])
def test_kill_at_any_instant_then_rerun_converges(stack: Stack, fraction: float) -> None:
    # Slow every Funnelback call so the rotation spans a measurable time, then kill inside it:
    # the instants fall between and inside the AWS writes as well as the Funnelback calls.
    stack.emulator.delay_all_seconds = 0.15
    started = time.monotonic()
    probe = stack.run("rotate", "--dry-run", "web")
    assert probe.returncode == 0
    startup = time.monotonic() - started
    process = stack.spawn("rotate", "web")
    # list + clone + verify + revoke ~ 4 delayed calls after start-up
    time.sleep(startup + fraction * 4 * 0.15 * 1.5)
    if process.poll() is None:
        kill(process)
    stack.emulator.delay_all_seconds = 0.0
    rerun_converges(stack, "--due")


def test_kill_mid_rotation_then_manual_rotate_finishes_it_without_a_second_rotation(stack: Stack) -> None:
    stack.emulator.faults.add(kind="hang", method="GET", path="current-user$", times=1)
    process = stack.spawn("rotate", "web")
    wait_for(lambda: stack.emulator.calls("current_user") > 0)
    kill(process)
    clones = stack.emulator.calls("clone_client_token")
    pending = stack.stage("web", "AWSPENDING")
    assert pending is not None  # persisted before verification
    started = time.monotonic()
    result = stack.run("rotate", "web")
    assert result.returncode == 0, result.stderr
    assert "resumed" in result.stdout
    assert time.monotonic() - started < 30  # bounded by the lease ttl, not minutes
    assert stack.emulator.calls("clone_client_token") == clones
    current = stack.assert_converged("web")
    assert current["token"] == pending["token"]

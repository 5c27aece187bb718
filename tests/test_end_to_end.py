"""The real CLI in a subprocess, against the Funnelback emulator and moto in server mode.

Proves the interface (exit codes, output) and the invariants with real processes: full rotation,
adoption, grace periods, Funnelback errors, two concurrent processes, and no token value in any
output at any log level."""

from __future__ import annotations

import json
import time

import pytest

from harness import Stack, new_stack


@pytest.fixture
def stack(emulator, moto_url, tmp_path) -> Stack:
    return new_stack(emulator, moto_url, tmp_path)


def seed_secret(stack: Stack, name: str = "web", **extra) -> str:
    value = stack.emulator.token_value("acme", "web")
    stack.put_secret(name, {"token": value, **extra})
    return value


def test_full_rotation_adopting_a_hand_written_secret(stack: Stack) -> None:
    old = seed_secret(stack, owner="team-a")
    stack.write_config([{"name": "web"}])
    result = stack.run("rotate", "web")
    assert result.returncode == 0, result.stderr
    current = stack.assert_converged("web")
    assert current["token"] != old and current["owner"] == "team-a" and current["client_id"] == "acme"
    assert current["rotated_at"].endswith("Z")
    assert stack.stage("web", "AWSPREVIOUS")["token"] == old
    assert "web: rotated" in result.stdout and current["token_name"] in result.stdout
    assert "1 ok, 0 failed" in result.stdout


def test_adoption_when_the_secret_does_not_exist_yet(stack: Stack) -> None:
    stack.write_config([{"name": "web"}])
    result = stack.run("rotate", "--all")
    assert result.returncode == 0, result.stderr
    stack.assert_converged("web")


def test_grace_period_then_due_run_revokes(stack: Stack) -> None:
    seed_secret(stack)
    stack.write_config([{"name": "web", "grace": "3s"}])
    first = stack.run("rotate", "web")
    assert first.returncode == 0, first.stderr
    assert "revoked after" in first.stdout
    stack.assert_converged("web", in_grace=1)
    early = stack.run("rotate", "--due")
    assert early.returncode == 0 and "not-due" in early.stdout
    stack.assert_converged("web", in_grace=1)
    time.sleep(3.2)
    due = stack.run("rotate", "--due")
    assert due.returncode == 0, due.stderr
    assert "revoked web" in due.stdout
    stack.assert_converged("web")


def test_wait_flag_waits_out_the_grace_period(stack: Stack) -> None:
    seed_secret(stack)
    stack.write_config([{"name": "web", "grace": "2s"}])
    result = stack.run("rotate", "--wait", "web")
    assert result.returncode == 0, result.stderr
    stack.assert_converged("web")


def test_status_json_shows_names_and_state_never_values(stack: Stack) -> None:
    old = seed_secret(stack)
    stack.write_config([{"name": "web", "grace": "30m"}])
    before = json.loads(stack.run("status", "--json").stdout)
    assert before[0]["token_name"] == "web" and before[0]["due"] is True
    assert stack.run("rotate", "web").returncode == 0
    result = stack.run("status", "--json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)[0]
    current = stack.stage("web")
    assert row["token_name"] == current["token_name"] and row["due"] is False
    assert row["pending_revocations"][0]["name"] == "web"
    assert row["last_result"]["outcome"] == "success"
    assert old not in result.stdout and current["token"] not in result.stdout
    human = stack.run("status")
    assert human.returncode == 0 and "revoke web after" in human.stdout


def test_dry_run_changes_nothing(stack: Stack) -> None:
    seed_secret(stack)
    stack.write_config([{"name": "web"}])
    result = stack.run("rotate", "--dry-run", "web")
    assert result.returncode == 0, result.stderr
    assert "would clone web" in result.stdout
    assert stack.emulator.calls("clone_client_token") == 0
    assert stack.stage("web")["token"] == stack.emulator.token_value("acme", "web")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_no_token_value_in_any_output_at_debug_level(stack: Stack, fmt: str) -> None:
    old = seed_secret(stack)
    stack.write_config([{"name": "web"}])
    result = stack.run("rotate", "web", "--log-level", "debug", "--log-format", fmt)
    assert result.returncode == 0, result.stderr
    new = stack.stage("web")["token"]
    status = stack.run("status", "--json", "--log-level", "debug")
    check = stack.run("check", "--log-level", "debug")
    outputs = [result.stdout, result.stderr, status.stdout, status.stderr, check.stdout, check.stderr]
    assert "step" in result.stderr  # the logs were there to be scanned
    from conftest import ADMIN_TOKEN
    for secret in (old, new, ADMIN_TOKEN, "testing"):
        for text in outputs:
            assert secret not in text, f"a secret reached the output ({secret[:4]}...)"


def test_failures_are_isolated_and_reported(stack: Stack) -> None:
    seed_secret(stack)
    stack.emulator.add_token("acme", "api")
    stack.write_config([{"name": "web"}, {"name": "api"}, {"name": "ghost"}])
    result = stack.run("rotate", "--all")
    assert result.returncode == 1
    assert "web: rotated" in result.stdout and "api: rotated" in result.stdout
    assert "ghost: failed" in result.stdout and "does not exist in Funnelback client" in result.stdout
    assert "2 ok, 1 failed" in result.stdout
    stack.assert_converged("web")
    stack.assert_converged("api")


@pytest.mark.parametrize("status,fragment", [(403, "HTTP 403"), (401, "HTTP 401"), (404, "does not exist")])
def test_definite_clone_refusals_fail_cleanly(stack: Stack, status: int, fragment: str) -> None:
    old = seed_secret(stack)
    stack.write_config([{"name": "web"}])
    stack.emulator.faults.add(kind="status", status=status, method="POST", path="/clone$", times=1)
    result = stack.run("rotate", "web")
    assert result.returncode == 1
    assert fragment in result.stdout and "Traceback" not in result.stderr
    assert stack.stage("web")["token"] == old
    assert stack.emulator.token_names("acme") == ["web"]


@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 429, "retry_after": 0.2, "method": "GET", "path": "application-token$", "times": 2},
    {"kind": "status", "status": 503, "method": "POST", "path": "/clone$", "times": 1},
    {"kind": "status", "status": 500, "method": "GET", "path": "current-user$", "times": 2},
    {"kind": "status", "status": 502, "method": "DELETE", "path": "application-token/", "times": 2},
    {"kind": "lose_answer", "method": "POST", "path": "/clone$", "times": 1},
    {"kind": "lose_answer", "method": "DELETE", "path": "application-token/", "times": 1},
    {"kind": "status", "status": 429, "method": "POST", "path": "/clone$", "times": 1},
    {"kind": "status", "status": 409, "method": "POST", "path": "/clone$", "times": 1},
], ids=lambda f: f"{f['kind']}-{f.get('status', '')}-{f['method']}")
def test_transient_faults_are_survived_in_one_run(stack: Stack, fault: dict) -> None:
    seed_secret(stack)
    stack.write_config([{"name": "web"}])
    stack.emulator.faults.add(**fault)
    result = stack.run("rotate", "web")
    assert result.returncode == 0, result.stdout + result.stderr
    stack.assert_converged("web")


def test_bad_rotator_credential_is_one_clear_line(stack: Stack) -> None:
    seed_secret(stack)
    stack.write_config([{"name": "web"}])
    env_run = stack.env()
    env_run["FB_ADMIN_TOKEN"] = "not-the-admin-token-at-all"
    import subprocess
    result = subprocess.run(stack.command("rotate", "web"), env=env_run, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "HTTP 401" in result.stdout
    assert "not-the-admin-token-at-all" not in result.stdout + result.stderr


def test_two_processes_make_one_rotation(stack: Stack) -> None:
    seed_secret(stack)
    stack.write_config([{"name": "web"}], lock_ttl="5s")
    stack.emulator.faults.add(kind="delay", delay_seconds=1.0, method="POST", path="/clone$", times=1)
    first = stack.spawn("rotate", "web")
    second = stack.spawn("rotate", "web")
    out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    # Both may ask for a clone (the quick path takes no lease: the stores' compare-and-swap decides),
    # but only one rotation happens: the other run reports it and adds no token.
    assert stack.emulator.calls("clone_client_token") <= 2, err1 + "\n=====\n" + err2
    assert sorted(["completed-elsewhere" in out1, "completed-elsewhere" in out2]) == [False, True]
    stack.assert_converged("web")


def test_check_reports_each_part(stack: Stack) -> None:
    seed_secret(stack)
    stack.write_config([{"name": "web"}])
    result = stack.run("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "funnelback: authenticate" in result.stdout
    bad = stack.emulator
    bad.faults.add(kind="status", status=403, method="GET", path="application-token$", times=5)
    failing = stack.run("check")
    assert failing.returncode == 1 and "FAIL" in failing.stdout

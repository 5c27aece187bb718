"""Several destinations at once (Vault KV v2 + AWS Secrets Manager): all-or-nothing before promotion,
resumable during it. Real CLI processes, the Vault emulator through hvac, moto through boto3."""

from __future__ import annotations

import json

import pytest

from harness import Stack, new_stack
from rotator.naming import is_generation
from rotator.testing.vault_emulator import VaultEmulator


@pytest.fixture
def vault():
    with VaultEmulator() as emu:
        yield emu


@pytest.fixture(params=["vault-first", "aws-first"])
def stack(request, emulator, moto_url, tmp_path, vault) -> Stack:
    s = new_stack(emulator, moto_url, tmp_path, vault=vault)
    value = emulator.token_value("acme", "web")
    s.put_secret("web", {"token": value, "aws_note": "a"})
    vault.write_secret(s.vault_path("web"), {"token": value, "vault_note": "v"})
    dests = [("vault", "web"), ("aws", "web")]
    s.order = request.param
    s.write_config([{"name": "web", "dests": dests if request.param == "vault-first" else dests[::-1]}])
    return s


def vault_current(stack: Stack) -> dict:
    return stack.vault.read_secret(stack.vault_path("web")) or {}


def live(stack: Stack) -> list[str]:
    return [n for n in stack.emulator.token_names("acme") if n == "web" or is_generation("web", n)]


def assert_converged_everywhere(stack: Stack) -> None:
    aws = stack.stage("web")
    vault = vault_current(stack)
    assert aws["token"] == vault["token"] and aws["token_name"] == vault["token_name"]
    assert stack.emulator.token_value("acme", aws["token_name"]) == aws["token"]
    assert live(stack) == [aws["token_name"]]
    assert stack.stage("web", "AWSPENDING") is None
    assert stack.vault.read_secret(stack.vault_path("web") + ".rotator-pending") in (None, {})


def test_rotation_into_vault_and_aws_together(stack: Stack) -> None:
    result = stack.run("rotate", "web")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_converged_everywhere(stack)
    assert stack.stage("web")["aws_note"] == "a" and vault_current(stack)["vault_note"] == "v"
    meta = stack.vault.read_metadata(stack.vault_path("web"))
    assert meta["custom_metadata"]["token_name"] == vault_current(stack)["token_name"]
    status = json.loads(stack.run("status", "--json").stdout)[0]
    assert status["diverged"] is False and len(status["destinations"]) == 2


def test_vault_refusing_writes_fails_cleanly(stack: Stack) -> None:
    # a token whose policy can read but not write: every Vault write answers 403 permission denied
    stack.vault.add_policy("read-only", {"secret/data/*": ["read"], "secret/metadata/*": ["read"]})
    stack.vault_token = stack.vault.create_token(policies=["read-only"])
    before_aws, before_vault = stack.stage("web"), vault_current(stack)
    result = stack.run("rotate", "web")
    assert result.returncode == 1
    assert "permission denied" in result.stdout or "403" in result.stdout
    assert "Traceback" not in result.stderr
    assert stack.stage("web") == before_aws and vault_current(stack) == before_vault
    assert stack.stage("web", "AWSPENDING") is None
    assert live(stack) == ["web"]            # nothing live revoked, no orphan left


VAULT_STEPS = {
    "pending-write": ("POST", r"/web\.rotator-pending$"),
    "promote-write": ("POST", r"/data/t[0-9a-f]+/web$"),
}


@pytest.mark.parametrize("step", sorted(VAULT_STEPS))
def test_vault_failure_at_each_step_then_recovery_converges(stack: Stack, step: str) -> None:
    method, path = VAULT_STEPS[step]
    stack.vault.faults.add(kind="status", status=503, method=method, path=path, times=100)
    failed = stack.run("rotate", "web")
    assert failed.returncode == 1, failed.stdout
    # whatever failed, every destination still serves a live token
    for served in (stack.stage("web"), vault_current(stack)):
        assert stack.emulator.token_value("acme", served.get("token_name") or "web") == served["token"]
    stack.vault.faults.clear()
    again = stack.run("rotate", "--due")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_converged_everywhere(stack)


def test_divergence_shows_in_status_and_is_repaired(stack: Stack) -> None:
    stack.vault.faults.add(kind="status", status=503, method="POST", path=VAULT_STEPS["promote-write"][1],
                           times=100)
    assert stack.run("rotate", "web").returncode == 1
    status = json.loads(stack.run("status", "--json").stdout)[0]
    assert status["in_progress"] is not None
    if stack.order == "aws-first" or status["diverged"]:
        names = {d["token_name"] for d in status["destinations"]}
        assert status["diverged"] == (len(names) > 1)
    stack.vault.faults.clear()
    assert stack.run("rotate", "--due").returncode == 0
    assert_converged_everywhere(stack)


def test_check_reports_a_read_only_vault(stack: Stack) -> None:
    stack.vault.add_policy("read-only", {"secret/data/*": ["read"], "secret/metadata/*": ["read"]})
    stack.vault_token = stack.vault.create_token(policies=["read-only"])
    result = stack.run("check")
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "vault" in result.stdout

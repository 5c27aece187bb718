"""The quick path (rotator.quick): a due target kept in one AWS secret, rotated without lease or
journal, and the journal path finishing whatever such a run leaves behind.

In-process runs against moto (server mode) and the Funnelback emulator; AWS calls are counted with
botocore's own event hooks on the backend's client."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from harness import Stack, new_stack
from rotator.config import load_config
from rotator.naming import next_generation
from rotator.runtime import Runtime, rotate_targets


@pytest.fixture
def stack(emulator, moto_url, tmp_path, monkeypatch) -> Stack:
    s = new_stack(emulator, moto_url, tmp_path)
    for key, value in s.env().items():
        monkeypatch.setenv(key, value)
    s.put_secret("web", {"token": emulator.token_value("acme", "web"), "team": "search"})
    return s


def runtime_for(stack: Stack, **config: Any) -> tuple[Runtime, Counter[str]]:
    runtime = Runtime(load_config(stack.write_config([{"name": "web", **config}], lock_ttl="2s")))
    return runtime, count_calls(runtime)


def rotate(runtime: Runtime, *, force: bool = True) -> Any:
    [outcome] = rotate_targets(runtime, runtime.config.targets, force=force)
    return outcome


def labels(stack: Stack) -> dict[str, list[str]]:
    return stack.sm().describe_secret(SecretId=stack.secret_id("web"))["VersionIdsToStages"]


def test_a_due_target_rotates_in_four_aws_calls_and_no_journal(stack: Stack) -> None:
    runtime, calls = runtime_for(stack)
    outcome = rotate(runtime)
    assert outcome.ok and outcome.result == "rotated", outcome
    assert sum(calls.values()) == 4, calls
    assert calls == Counter(GetSecretValue=1, PutSecretValue=1, UpdateSecretVersionStage=2)
    # clone, authenticate, revoke, and the token list that looks for other runs' leftovers
    assert stack.emulator.calls("clone_client_token") == 1 and stack.emulator.calls("list_client_tokens") == 1
    current = stack.assert_converged("web")
    assert current["team"] == "search" and current["client_id"] == "acme" and current["rotated_at"]
    assert stack.journal("web") == {}
    assert sorted(map(sorted, labels(stack).values())) == [["AWSCURRENT"], ["AWSPREVIOUS"]]


def test_a_forced_run_of_a_target_not_due_takes_the_journal_path(stack: Stack) -> None:
    runtime, calls = runtime_for(stack, interval="30d")
    assert rotate(runtime).ok
    calls.clear()
    outcome = rotate(runtime)  # not due: a write-ahead intent is needed, so nothing is left unseen
    assert outcome.ok and outcome.result == "rotated"
    assert calls["PutSecretValue"] >= 3, calls   # lease + intent, pending, release
    stack.assert_converged("web")
    assert stack.journal("web").get("last_result", {}).get("outcome") == "success"


def test_grace_period_is_recorded_in_the_journal_and_the_mark_dropped(stack: Stack) -> None:
    runtime, calls = runtime_for(stack, grace="1h", interval="1d")
    outcome = rotate(runtime)
    assert outcome.ok and outcome.result == "rotated" and outcome.revoked == []
    assert [name for name, _ in outcome.revocations_pending] == ["web"]
    stack.assert_converged("web", in_grace=1)
    revocations = stack.journal("web")["pending_revocations"]
    assert [r["name"] for r in revocations] == ["web"]
    assert stack.stage("web", "AWSPENDING") is None
    # an hour later the previous token goes, by the journal path
    later = datetime.now(timezone.utc) + timedelta(hours=1, minutes=1)
    runtime.clock = lambda: later
    outcome = rotate(runtime, force=False)
    assert outcome.revoked == ["web"], outcome
    stack.assert_converged("web")


def test_a_failed_revocation_leaves_the_mark_and_the_next_due_run_revokes(stack: Stack) -> None:
    runtime, _calls = runtime_for(stack)
    stack.emulator.faults.add(kind="status", status=503, method="DELETE", path="application-token/", times=10)
    outcome = rotate(runtime)
    assert outcome.ok and outcome.result == "rotated" and outcome.revoked == []
    marked = [v for v, stages in labels(stack).items() if {"AWSCURRENT", "AWSPENDING"} <= set(stages)]
    assert marked, labels(stack)   # AWSPENDING kept on the new current version: the previous token is not retired
    assert "web" in stack.emulator.token_names("acme")
    stack.emulator.faults.clear()
    outcome = rotate(runtime, force=False)   # not due, but the mark is work to finish
    assert outcome.ok and outcome.revoked == ["web"], outcome
    stack.assert_converged("web")


@pytest.mark.parametrize("age", [5.0, 0.0], ids=["old", "young"])
def test_a_clone_that_died_before_it_was_stored_is_revoked_by_the_next_run(stack: Stack, age: float) -> None:
    """What a run killed between the clone's answer and the put leaves: a live generation stored
    nowhere. A young one could be another run's clone on its way to AWS: it is revoked once it is
    lock_ttl (2 s here) old, and the store read again shows nobody stored it."""
    runtime, _calls = runtime_for(stack)
    orphan = next_generation("web", datetime.now(timezone.utc) - timedelta(seconds=age), [])
    stack.emulator.add_token("acme", orphan)
    outcome = rotate(runtime)
    assert outcome.ok and outcome.rotated, outcome
    assert orphan not in stack.emulator.token_names("acme")
    stack.assert_converged("web")


def test_a_stored_pending_value_of_a_dead_quick_run_is_resumed(stack: Stack) -> None:
    runtime, _calls = runtime_for(stack)
    # A run that died after its put: the value is pending (AWSPENDING), its token live, no journal.
    name = next_generation("web", datetime.now(timezone.utc) - timedelta(seconds=10), [])
    stack.emulator.add_token("acme", name)
    value = stack.emulator.token_value("acme", name)
    stack.sm().put_secret_value(SecretId=stack.secret_id("web"), VersionStages=["AWSPENDING"],
                                SecretString=json.dumps({"token": value, "token_name": name, "client_id": "acme",
                                                         "rotated_at": (datetime.now(timezone.utc) - timedelta(
                                                             seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")}))
    clones = stack.emulator.calls("clone_client_token")
    outcome = rotate(runtime)
    assert outcome.ok and outcome.result == "resumed" and outcome.new_token_name == name, outcome
    assert stack.emulator.calls("clone_client_token") == clones   # resumed, not rotated again
    stack.assert_converged("web")


def test_two_quick_runs_at_once_make_one_rotation(stack: Stack) -> None:
    from concurrent.futures import ThreadPoolExecutor

    runtimes = [runtime_for(stack)[0] for _ in range(2)]
    stack.emulator.faults.add(kind="delay", delay_seconds=0.5, method="GET", path="current-user$", times=1)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(rotate, runtimes))
    assert all(o.ok for o in outcomes), outcomes
    assert sorted(o.result for o in outcomes) == ["completed-elsewhere", "rotated"], outcomes
    stack.assert_converged("web")


def many_targets(stack: Stack, count: int) -> Runtime:
    names = [f"t{i:02d}" for i in range(count)]
    for name in names:
        stack.emulator.add_token("acme", name)
        stack.put_secret(name, {"token": stack.emulator.token_value("acme", name)})
    return Runtime(load_config(stack.write_config([{"name": n} for n in names], lock_ttl="2s")))


def count_calls(runtime: Runtime) -> Counter[str]:
    calls: Counter[str] = Counter()
    runtime.backend("aws").client.meta.events.register("before-call.secrets-manager.*",
                                                       lambda model, **_: calls.update([model.name]))
    return calls


def test_a_forced_batch_reads_current_versions_twenty_per_call(stack: Stack) -> None:
    runtime = many_targets(stack, 25)
    calls = count_calls(runtime)
    outcomes = rotate_targets(runtime, runtime.config.targets, force=True, concurrency=4)
    assert all(o.ok and o.result == "rotated" for o in outcomes), outcomes
    assert calls == Counter(BatchGetSecretValue=2, PutSecretValue=25, UpdateSecretVersionStage=50), calls
    # one client: its token list is shared by its targets (for TOKEN_LIST_MAX_AGE seconds each)
    assert stack.emulator.calls("list_client_tokens") <= 3
    for target in runtime.config.targets:
        stack.assert_converged(target.name)


def test_a_denied_batch_read_falls_back_to_one_read_per_target(stack: Stack) -> None:
    runtime = many_targets(stack, 3)
    calls = count_calls(runtime)

    def denied(model: Any, **_: Any) -> Any:
        if model.name == "BatchGetSecretValue":   # what AWS answers without the IAM permission
            return (type("Http", (), {"status_code": 400, "headers": {}})(),
                    {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"},
                     "ResponseMetadata": {"HTTPStatusCode": 400}})
        return None

    runtime.backend("aws").client.meta.events.register_first("before-call.secrets-manager.*", denied)
    outcomes = rotate_targets(runtime, runtime.config.targets, force=True, concurrency=1)
    assert all(o.ok and o.result == "rotated" for o in outcomes), outcomes
    assert calls["GetSecretValue"] == 3 and calls["PutSecretValue"] == 3, calls


def test_token_lists_are_shared_per_client_for_a_few_seconds_and_then_dropped() -> None:
    from types import SimpleNamespace

    from rotator.prefetch import TOKEN_LIST_MAX_AGE, TokenLists

    listed: list[str] = []
    funnelback = SimpleNamespace(list_client_tokens=lambda client: listed.append(client) or [client])
    targets = [SimpleNamespace(client_id=c) for c in ("a", "a", "a", "b")]
    now = [0.0]
    lists = TokenLists(SimpleNamespace(funnelback=funnelback), targets, clock=lambda: now[0])  # type: ignore[arg-type]
    assert lists.list_client_tokens("a") == ["a"] and lists.list_client_tokens("a") == ["a"]
    assert listed == ["a"]
    now[0] += TOKEN_LIST_MAX_AGE + 0.1
    lists.list_client_tokens("a")           # too old to share: listed again
    lists.list_client_tokens("b")
    assert listed == ["a", "a", "b"]
    assert lists._lists == {}               # every target had its list: none kept
    lists.list_client_tokens("a")           # a client not in the run (or asked once more): not cached
    assert listed == ["a", "a", "b", "a"]


def test_a_shared_token_list_that_fails_is_read_again_by_the_target_that_needed_it() -> None:
    from types import SimpleNamespace

    from rotator.errors import FunnelbackTransientError
    from rotator.prefetch import TokenLists

    failures = [FunnelbackTransientError("rate limited (gave up after 4 attempts)")]

    def list_client_tokens(client: str) -> list[str]:
        if failures:
            raise failures.pop()
        return [client]

    lists = TokenLists(SimpleNamespace(funnelback=SimpleNamespace(list_client_tokens=list_client_tokens)),  # type: ignore[arg-type]
                       [SimpleNamespace(client_id="a")] * 2)  # type: ignore[list-item]
    assert lists.list_client_tokens("a") == ["a"]   # its own read, with its own retries
    assert lists.list_client_tokens("a") == ["a"]

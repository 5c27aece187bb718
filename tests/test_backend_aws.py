"""AwsSecretsManagerBackend through real boto3 against moto in server mode (no mocking of boto3).

Error mapping is tested against endpoints that answer like AWS does: moto enforcing IAM, and a tiny
stdlib HTTP server returning AWS JSON errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from moto_server import MotoServer, free_port, start_moto_server  # noqa: E402

from rotator.backends import open_backend  # noqa: E402
from rotator.backends.aws import AwsDestination, AwsSecretsManagerBackend, _Described, request_token  # noqa: E402
from rotator.backends.base import DestinationState, JournalRecord, Payload, Slot  # noqa: E402
from rotator.config import BackendSettings  # noqa: E402
from rotator.errors import (  # noqa: E402
    BackendAuthError,
    BackendConflictError,
    BackendError,
    BackendPermissionError,
    BackendUnavailableError,
    ConfigError,
)
from rotator.secret import Secret  # noqa: E402

pytestmark = pytest.mark.timeout(60)

ROTATED_AT = datetime(2026, 12, 4, 14, 52, tzinfo=timezone.utc)


# --- fixtures -----------------------------------------------------------------------------------


FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}
HOSTILE_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN",
               "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
               "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")


@pytest.fixture(scope="module", autouse=True)
def fake_aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fake credentials only, and nothing from the developer's ~/.aws (module-wide: boto3 resolves
    credentials when a client is made, and the clients below live as long as the module)."""
    home = tmp_path_factory.mktemp("aws-home")
    with pytest.MonkeyPatch.context() as env:
        for key in HOSTILE_ENV:
            env.delenv(key, raising=False)
        for key, value in FAKE_ENV.items():
            env.setenv(key, value)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        env.setenv("AWS_CONFIG_FILE", str(home / "config"))
        yield


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with start_moto_server() as server:
        yield server


def make_backend(endpoint_url: str, **options: Any) -> AwsSecretsManagerBackend:
    options = {"endpoint_url": endpoint_url, "region": "us-east-1", "timeout": 5, "max_attempts": 2, **options}
    backend = open_backend(BackendSettings(name="aws", type="aws-secrets-manager", options=options))
    assert isinstance(backend, AwsSecretsManagerBackend)
    return backend


@pytest.fixture(scope="module")
def backend(moto: MotoServer) -> Iterator[AwsSecretsManagerBackend]:
    backend = make_backend(moto.url)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def sm(moto: MotoServer) -> Any:
    """A plain boto3 client, for arranging and inspecting state as another writer would."""
    return boto3.client("secretsmanager", **moto.client_kwargs())


@pytest.fixture
def secret_id() -> str:
    # Thread-mode moto servers share state within the process: unique names instead of reset().
    return f"test/{uuid.uuid4().hex[:12]}/funnelback"


@pytest.fixture
def dest(backend: AwsSecretsManagerBackend, secret_id: str) -> AwsDestination:
    return backend.destination({"secret_id": secret_id}, target="web")


def payload(name: str = "web-20261204T145200Z", *, token: str | None = None, **extra: Any) -> Payload:
    return Payload(token=Secret(token or f"tok-{uuid.uuid4().hex}"), token_name=name, client_id="acme",
                   rotated_at=ROTATED_AT, extra=extra)


def stages(sm: Any, secret_id: str) -> dict[str, list[str]]:
    """Labelled versions only (AWS's describe omits unlabelled ones; moto lists them with [])."""
    found = sm.describe_secret(SecretId=secret_id).get("VersionIdsToStages", {})
    return {version: sorted(labels) for version, labels in found.items() if labels}


def value_at(sm: Any, secret_id: str, stage: str) -> str:
    return sm.get_secret_value(SecretId=secret_id, VersionStage=stage)["SecretString"]


# --- read ---------------------------------------------------------------------------------------


def test_read_of_a_missing_secret(dest: AwsDestination) -> None:
    assert dest.read() == DestinationState(exists=False)
    assert dest.read_journal() == JournalRecord.empty()
    assert dest.label.startswith("aws:test/")


def test_hand_written_plain_string_is_read_as_a_payload(dest: AwsDestination, sm: Any, secret_id: str) -> None:
    sm.create_secret(Name=secret_id, SecretString="  hand-written-token-value  ")
    state = dest.read()
    assert state.current.payload is not None
    assert state.current.payload.token == Secret("hand-written-token-value")
    assert state.current.payload.token_name is None and state.current.payload.rotated_at is None
    assert state.current.version == sm.describe_secret(SecretId=secret_id)["VersionIdsToStages"].popitem()[0]
    assert state.pending.payload is None


def test_read_names_the_stage_even_where_moto_would_answer_with_the_first_version(
        dest: AwsDestination, sm: Any, secret_id: str) -> None:
    sm.create_secret(Name=secret_id, SecretString=json.dumps({"token": "first-value-0001"}))
    first = next(iter(stages(sm, secret_id)))
    sm.put_secret_value(SecretId=secret_id, SecretString=json.dumps({"token": "second-value-0002"}),
                        ClientRequestToken=str(uuid.uuid4()), VersionStages=["AWSPENDING"])
    second = next(v for v, s in stages(sm, secret_id).items() if "AWSPENDING" in s)
    sm.update_secret_version_stage(SecretId=secret_id, VersionStage="AWSCURRENT", MoveToVersionId=second,
                                   RemoveFromVersionId=first)
    sm.update_secret_version_stage(SecretId=secret_id, VersionStage="AWSPENDING", RemoveFromVersionId=second)
    # (moto 5.x answers get_secret_value without VersionStage with the first version here)
    assert dest.read().current.payload.token == Secret("second-value-0002")


def test_secret_scheduled_for_deletion_is_refused(dest: AwsDestination, sm: Any, secret_id: str) -> None:
    sm.create_secret(Name=secret_id, SecretString=payload().to_json())
    sm.delete_secret(SecretId=secret_id, RecoveryWindowInDays=7)
    with pytest.raises(BackendError, match="scheduled for deletion") as caught:
        dest.read()
    assert "restore-secret" in caught.value.hint
    # moto would accept this put on a deleted secret; AWS refuses it: rotator refuses it itself
    with pytest.raises(BackendError, match="scheduled for deletion"):
        dest.write_pending(payload(), DestinationState())
    check = dest.check(write=True)
    assert not check[0].ok and "deletion" in check[0].detail


# --- write_pending / promote / discard ----------------------------------------------------------


def test_write_pending_creates_the_secret_and_pending_is_not_current(
        dest: AwsDestination, sm: Any, secret_id: str) -> None:
    new = payload()
    state = dest.write_pending(new, dest.read())
    assert state.pending.payload == new and state.current.payload is None and state.exists
    described = sm.describe_secret(SecretId=secret_id)
    assert described["Description"] == "Funnelback application token managed by rotator"
    assert {"Key": "managed-by", "Value": "rotator"} in described["Tags"]
    # AWS attaches AWSCURRENT to a secret's first version whatever it was written as ...
    assert list(stages(sm, secret_id).values()) == [["AWSCURRENT", "AWSPENDING"]]
    # ... but rotator does not count an unpromoted value as current.
    assert dest.read() == state


def test_write_pending_is_idempotent(dest: AwsDestination, sm: Any, secret_id: str) -> None:
    new = payload()
    first = dest.write_pending(new, dest.read())
    again = dest.write_pending(new, dest.read())
    after_crash = dest.write_pending(new, DestinationState(exists=False))  # the state from before the write
    assert first == again == after_crash
    # moto would rewrite the version on a repeated put and drop AWSCURRENT from it: not repeated
    assert list(stages(sm, secret_id).values()) == [["AWSCURRENT", "AWSPENDING"]]
    assert len(sm.list_secret_version_ids(SecretId=secret_id)["Versions"]) == 1


def test_rewriting_a_discarded_pending_labels_it_again(dest: AwsDestination, sm: Any, secret_id: str) -> None:
    sm.create_secret(Name=secret_id, SecretString=payload("web").to_json())
    state = dest.read()
    new = payload()
    written = dest.write_pending(new, state)
    dest.discard_pending(dest.read())
    assert dest.read().pending.payload is None
    # same current, same payload -> same request token; AWS ignores the put, rotator relabels it
    assert dest.write_pending(new, dest.read()).pending == written.pending
    assert dest.read().pending == written.pending


def test_promote_moves_current_and_previous_and_clears_pending(
        dest: AwsDestination, sm: Any, secret_id: str) -> None:
    old = payload("web", token="old-token-value-1234", team="search", alerts=["ops"])
    sm.create_secret(Name=secret_id, SecretString=old.to_json())
    state = dest.read()
    assert state.current.payload == old
    new = state.current.payload.successor(token=Secret("new-token-value-5678"), token_name="web-20261204T145200Z",
                                          client_id="acme", rotated_at=ROTATED_AT)
    state = dest.write_pending(new, state)
    assert state.current.payload == old and state.pending.payload == new
    assert value_at(sm, secret_id, "AWSCURRENT") == old.to_json()  # consumers still get the old one

    dest.promote(new, state)
    labels = stages(sm, secret_id)
    assert labels == {state.pending.version: ["AWSCURRENT"], state.current.version: ["AWSPREVIOUS"]}
    after = dest.read()
    assert after.current == type(after.current)(new, state.pending.version) and after.pending.payload is None
    # the user's extra keys survive the rotation, and consumers get the new value
    stored = json.loads(value_at(sm, secret_id, "AWSCURRENT"))
    assert stored == {"token": "new-token-value-5678", "token_name": "web-20261204T145200Z", "client_id": "acme",
                      "rotated_at": "2026-12-04T14:52:00Z", "team": "search", "alerts": ["ops"]}
    assert json.loads(value_at(sm, secret_id, "AWSPREVIOUS"))["token"] == "old-token-value-1234"

    dest.promote(new, after)  # twice: a no-op
    assert stages(sm, secret_id) == labels


def test_promote_resumes_after_a_crash_between_its_two_label_moves(
        dest: AwsDestination, sm: Any, secret_id: str) -> None:
    sm.create_secret(Name=secret_id, SecretString=payload("web").to_json())
    state = dest.read()
    new = payload()
    state = dest.write_pending(new, state)
    sm.update_secret_version_stage(SecretId=secret_id, VersionStage="AWSCURRENT",
                                   MoveToVersionId=state.pending.version, RemoveFromVersionId=state.current.version)
    half = dest.read()
    # What AWS serves is current; the label left on it marks the replaced value as not retired yet.
    assert half.current.payload == new and half.pending.payload is None
    assert half.retiring.payload == state.current.payload and half.retiring.version == state.current.version
    dest.promote(new, half)                      # already current: nothing to move
    dest.retire_marker(state.pending.version)    # the journal path does this once the old token is recorded
    assert stages(sm, secret_id) == {state.pending.version: ["AWSCURRENT"], state.current.version: ["AWSPREVIOUS"]}
    assert dest.read().retiring == Slot()


def test_promote_of_the_first_value_only_clears_pending(dest: AwsDestination, sm: Any, secret_id: str) -> None:
    new = payload()
    state = dest.write_pending(new, dest.read())
    dest.promote(new, state)
    assert stages(sm, secret_id) == {state.pending.version: ["AWSCURRENT"]}
    assert dest.read().current.payload == new


def test_promote_without_the_token_pending_is_a_conflict(
        backend: AwsSecretsManagerBackend, dest: AwsDestination, sm: Any, secret_id: str) -> None:
    sm.create_secret(Name=secret_id, SecretString=payload("web").to_json())
    with pytest.raises(BackendConflictError, match="no pending version"):
        dest.promote(payload(), dest.read())
    missing = backend.destination({"secret_id": secret_id + "-missing"}, target="web")
    with pytest.raises(BackendConflictError):
        missing.promote(payload(), DestinationState(exists=False))


def test_conflict_when_another_writer_changed_pending(dest: AwsDestination, sm: Any, secret_id: str) -> None:
    sm.create_secret(Name=secret_id, SecretString=payload("web").to_json())
    state = dest.read()
    sm.put_secret_value(SecretId=secret_id, SecretString=payload("web-other").to_json(),
                        ClientRequestToken=str(uuid.uuid4()), VersionStages=["AWSPENDING"])
    with pytest.raises(BackendConflictError, match="pending value changed"):
        dest.write_pending(payload(), state)


def test_same_token_name_with_another_value_is_a_conflict(dest: AwsDestination, sm: Any, secret_id: str) -> None:
    sm.create_secret(Name=secret_id, SecretString=payload("web").to_json())
    state = dest.read()
    first = payload("web-20261204T145200Z")
    dest.write_pending(first, state)
    # a second rotator that cloned under the same name (same request token) but got another value
    with pytest.raises(BackendConflictError) as caught:
        dest.write_pending(payload("web-20261204T145200Z"), dest.read())
    assert dest.read().pending.payload == first  # moto would have overwritten it; AWS would refuse
    assert first.token.reveal() not in caught.value.one_line()


def test_discard_pending_never_touches_current(dest: AwsDestination, sm: Any, secret_id: str) -> None:
    old = payload("web")
    sm.create_secret(Name=secret_id, SecretString=old.to_json())
    dest.discard_pending(dest.read())  # nothing pending: no-op
    state = dest.write_pending(payload(), dest.read())
    dest.discard_pending(state)
    dest.discard_pending(state)
    after = dest.read()
    assert after.pending.payload is None and after.current.payload == old
    assert stages(sm, secret_id) == {state.current.version: ["AWSCURRENT"]}


def test_discard_leaves_a_first_value_that_aws_made_current_as_pending(
        dest: AwsDestination, sm: Any, secret_id: str) -> None:
    state = dest.write_pending(payload(), dest.read())
    dest.discard_pending(state)
    # removing AWSPENDING would turn an unverified value into rotator's "current"
    assert dest.read() == state
    # the next rotation's pending moves on, and its promotion moves AWSCURRENT away
    retry = payload("web-20261204T150000Z")
    state2 = dest.write_pending(retry, dest.read())
    assert state2.current.payload is not None and state2.pending.payload == retry
    dest.promote(retry, state2)
    assert dest.read().current.payload == retry and dest.read().pending.payload is None


def test_create_missing_false_refuses_to_create(moto: MotoServer, secret_id: str) -> None:
    dest = make_backend(moto.url, create_missing=False).destination({"secret_id": secret_id}, target="web")
    with pytest.raises(BackendError, match="does not exist") as caught:
        dest.write_pending(payload(), dest.read())
    assert "create_missing" in caught.value.hint
    assert dest.check(write=False)[0].ok is False


# --- journal ------------------------------------------------------------------------------------


def test_journal_round_trip_and_compare_and_swap(dest: AwsDestination) -> None:
    empty = dest.read_journal()
    first = dest.write_journal({"lease": {"owner": "a"}}, empty)
    assert first.data == {"lease": {"owner": "a"}} and first.version
    assert dest.read_journal() == first
    # a second writer deriving from the same (now stale) version loses
    with pytest.raises(BackendConflictError):
        dest.write_journal({"lease": {"owner": "b"}}, empty)
    second = dest.write_journal({"lease": {"owner": "a"}, "n": 2}, first)
    assert dest.read_journal() == second
    with pytest.raises(BackendConflictError):
        dest.write_journal({"lease": {"owner": "b"}}, first)
    # a retry of the winning write (its answer lost) succeeds and is the same version
    assert dest.write_journal({"lease": {"owner": "a"}, "n": 2}, first) == second


def test_journal_cas_two_racing_writers_exactly_one_wins(dest: AwsDestination) -> None:
    """Both writers pass the label check (a stale describe, as when they run at the same instant):
    the request token derived from the version they replace decides, through AWS alone."""
    base = dest.write_journal({"n": 0}, JournalRecord.empty())
    stale = dest._describe()
    writers = [dest._backend.destination({"secret_id": dest.secret_id}, target="web") for _ in range(2)]
    for writer in writers:
        writer._describe = lambda: stale  # type: ignore[method-assign]
    outcomes: list[Any] = []
    for owner in ("a", "b"):
        try:
            outcomes.append(writers[0 if owner == "a" else 1].write_journal({"n": 1, "owner": owner}, base))
        except BackendConflictError as exc:
            outcomes.append(exc)
    winners = [o for o in outcomes if isinstance(o, JournalRecord)]
    assert len(winners) == 1 and isinstance(outcomes[1], BackendConflictError)
    assert dest.read_journal() == winners[0]


def test_journal_cas_under_real_concurrency(dest: AwsDestination) -> None:
    base = dest.write_journal({"n": 0}, JournalRecord.empty())
    barrier = threading.Barrier(8)

    def write(i: int) -> bool:
        barrier.wait()
        try:
            dest.write_journal({"n": 1, "owner": i}, base)
            return True
        except BackendConflictError:
            return False

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(write, range(8)))
    assert results.count(True) == 1
    assert dest.read_journal().data["owner"] == results.index(True)


def test_journal_on_a_fresh_secret_never_reads_as_current(dest: AwsDestination, sm: Any, secret_id: str) -> None:
    record = dest.write_journal({"lease": {"owner": "a"}}, JournalRecord.empty())
    # AWS made the journal version AWSCURRENT (first version of the secret)
    assert stages(sm, secret_id) == {record.version: ["AWSCURRENT", "ROTATOR_JOURNAL"]}
    state = dest.read()
    assert state.exists and state.current.payload is None and state.current.version is None
    # once the journal moved on, the old journal version still holds AWSCURRENT: still not current
    record = dest.write_journal({"lease": None}, record)
    assert dest.read() == state
    # rotate: the journal version does not end up as AWSPREVIOUS either
    new = payload()
    state = dest.write_pending(new, state)
    assert state.current.payload is None
    dest.promote(new, state)
    labels = stages(sm, secret_id)
    assert labels == {state.pending.version: ["AWSCURRENT"], record.version: ["ROTATOR_JOURNAL"]}
    assert dest.read().current.payload == new
    assert dest.read_journal() == record


def test_journal_refuses_secrets(dest: AwsDestination) -> None:
    with pytest.raises(ValueError):
        dest.write_journal({"in_progress": {"token": "x"}}, JournalRecord.empty())
    value = Secret("a-registered-secret-value-123")
    with pytest.raises(ValueError):
        dest.write_journal({"note": value.reveal()}, JournalRecord.empty())
    assert dest.read() == DestinationState(exists=False)  # nothing was written


def test_custom_journal_stage(moto: MotoServer, sm: Any, secret_id: str) -> None:
    dest = make_backend(moto.url, journal_stage="ROTATOR_LOCK").destination({"secret_id": secret_id}, target="t")
    record = dest.write_journal({"x": 1}, JournalRecord.empty())
    assert "ROTATOR_LOCK" in stages(sm, secret_id)[record.version]
    with pytest.raises(ConfigError):
        make_backend(moto.url, journal_stage="AWSCURRENT")


# --- check --------------------------------------------------------------------------------------


def test_checks(backend: AwsSecretsManagerBackend, dest: AwsDestination, sm: Any, secret_id: str) -> None:
    (endpoint,) = backend.check()
    assert endpoint.ok and "us-east-1" in endpoint.detail
    read, write = dest.check(write=True)
    assert read.ok and "will be created" in read.detail
    assert write.ok and write.detail == "write: not checked (AWS has no dry-run; verified at first rotation)"
    sm.create_secret(Name=secret_id, SecretString=payload("web-20261101T000000Z").to_json())
    (read,) = dest.check(write=False)
    assert read.ok and "web-20261101T000000Z" in read.detail
    assert sm.describe_secret(SecretId=secret_id).get("VersionIdsToStages")  # nothing written by the check
    assert len(sm.list_secret_version_ids(SecretId=secret_id)["Versions"]) == 1


# --- concurrency --------------------------------------------------------------------------------


def test_one_client_shared_by_many_threads(backend: AwsSecretsManagerBackend) -> None:
    def rotate(i: int) -> bool:
        dest = backend.destination({"secret_id": f"test/threads/{uuid.uuid4().hex}"}, target=f"t{i}")
        record = dest.write_journal({"owner": i}, JournalRecord.empty())
        new = payload(f"t{i}-g1")
        dest.promote(new, dest.write_pending(new, dest.read()))
        dest.write_journal({"owner": None}, record)
        state = dest.read()
        return state.current.payload == new and state.pending.payload is None

    with ThreadPoolExecutor(32) as pool:
        assert all(pool.map(rotate, range(32)))


# --- errors -------------------------------------------------------------------------------------


class _AwsErrorServer:
    """Answers every request with one AWS JSON-protocol error; counts requests; the message echoes
    the request body, so a leak of the SecretString into rotator's messages would show."""

    def __init__(self) -> None:
        self.answer("AccessDeniedException")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.requests += 1
                code, status = outer.code, outer.status
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                answer = json.dumps({"__type": code, "message": f"refused request {body}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("x-amzn-ErrorType", f"{code}:http://internal.amazon.com/coral/")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, code: str, status: int = 400) -> _AwsErrorServer:
        self.code, self.status, self.requests = code, status, 0
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def error_server() -> Iterator[_AwsErrorServer]:
    server = _AwsErrorServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def error_backend(error_server: _AwsErrorServer) -> AwsSecretsManagerBackend:
    return make_backend(error_server.url, max_attempts=1)


@pytest.mark.parametrize(("code", "status", "expected", "hint"), [
    ("AccessDeniedException", 400, BackendPermissionError, "secretsmanager:"),
    ("UnrecognizedClientException", 400, BackendAuthError, "credential"),
    ("ExpiredTokenException", 400, BackendAuthError, "credential"),
    ("ThrottlingException", 400, BackendUnavailableError, "retries"),
    ("InternalServiceError", 500, BackendUnavailableError, "retries"),
    ("DecryptionFailure", 400, BackendPermissionError, "kms:Decrypt"),
    ("ResourceExistsException", 400, BackendConflictError, ""),
    ("InvalidRequestException", 400, BackendError, "restore-secret"),
])
def test_aws_errors_map_to_rotator_errors(error_server: _AwsErrorServer, error_backend: AwsSecretsManagerBackend,
                                         code: str, status: int, expected: type, hint: str) -> None:
    error_server.answer(code, status)
    dest = error_backend.destination({"secret_id": "prod/web/funnelback"}, target="web")
    with pytest.raises(expected) as caught:
        dest.read()
    error = caught.value
    assert type(error) is expected
    text = error.one_line()
    assert "aws:prod/web/funnelback" in text and "describe_secret" in text and code in text and hint in text
    assert error.__cause__ is None and error.__suppress_context__  # no botocore chain in tracebacks
    assert error_server.requests == 1  # max_attempts = 1: no retry, even for throttling


def test_a_refused_write_never_puts_the_token_in_the_error(error_server: _AwsErrorServer,
                                                          error_backend: AwsSecretsManagerBackend) -> None:
    error_server.answer("ValidationException")
    dest = error_backend.destination({"secret_id": "s"}, target="web")
    # skip the describe (the server refuses everything): the put itself fails, its body echoed back
    dest._describe = lambda: _Described(exists=True)  # type: ignore[method-assign]
    with pytest.raises(BackendError) as caught:
        dest.write_pending(payload(token="super-secret-token-value-5555"), DestinationState())
    text = caught.value.one_line()
    assert "put_secret_value" in text and "refused request" in text
    assert "super-secret-token-value-5555" not in text + repr(caught.value.args)
    assert "**redacted**" in text


def test_access_denied_from_backend_check_is_reported_but_not_fatal(
        error_server: _AwsErrorServer, error_backend: AwsSecretsManagerBackend) -> None:
    error_server.answer("AccessDeniedException")
    (result,) = error_backend.check()
    assert result.ok and "ListSecrets is denied" in result.detail
    error_server.answer("UnrecognizedClientException")
    assert error_backend.check()[0].ok is False


def test_endpoint_down_is_unavailable() -> None:
    backend = make_backend(f"http://127.0.0.1:{free_port()}", max_attempts=1, timeout=1)
    dest = backend.destination({"secret_id": "s"}, target="web")
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="cannot reach AWS"):
        dest.read()
    assert time.monotonic() - started < 5
    assert backend.check()[0].ok is False


def test_no_credentials_is_an_auth_error(monkeypatch: pytest.MonkeyPatch, moto: MotoServer) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_METADATA_SERVICE_NUM_ATTEMPTS", "1")
    dest = make_backend(moto.url).destination({"secret_id": "s"}, target="web")
    with pytest.raises(BackendAuthError, match="no usable AWS credentials") as caught:
        dest.read()
    assert "credential chain" in caught.value.hint


def test_unknown_profile_is_an_auth_error(moto: MotoServer) -> None:
    with pytest.raises(BackendAuthError):
        make_backend(moto.url, profile="does-not-exist")


def test_iam_denials_from_moto_enforcing_policies() -> None:
    """A real IAM evaluation (moto in its own process, enforcing IAM): read allowed, write denied."""
    with start_moto_server(subprocess=True) as server:
        admin = server.client_kwargs()
        iam = boto3.client("iam", **admin)
        boto3.client("secretsmanager", **admin).create_secret(
            Name="prod/web", SecretString=payload("web", token="readable-token-value-1").to_json())
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
                "secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"]}]}))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        server.enable_auth(0)

        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
            env.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
            dest = make_backend(server.url).destination({"secret_id": "prod/web"}, target="web")
            state = dest.read()
            assert state.current.payload.token == Secret("readable-token-value-1")
            with pytest.raises(BackendPermissionError, match="AccessDenied") as caught:
                dest.write_pending(payload(), state)
            assert "PutSecretValue" in caught.value.one_line()
        # moto's fake default credentials are not a known IAM key: an auth error, not a permission one
        with pytest.raises(BackendAuthError, match="InvalidClientTokenId"):
            make_backend(server.url).destination({"secret_id": "prod/web"}, target="web").read()
        # the helper's other controls
        server.disable_auth()
        server.reset()
        assert boto3.client("secretsmanager", **admin).list_secrets()["SecretList"] == []


# --- the helper ---------------------------------------------------------------------------------


def test_thread_mode_moto_is_reachable_from_a_child_process(moto: MotoServer, secret_id: str) -> None:
    script = ("import boto3, sys; c = boto3.client('secretsmanager'); "
              "c.create_secret(Name=sys.argv[1], SecretString='from-child')")
    subprocess.run([sys.executable, "-c", script, secret_id], env={**moto.env(), "PATH": "/usr/bin:/bin"},
                   check=True, timeout=30)
    assert value_at(boto3.client("secretsmanager", **moto.client_kwargs()), secret_id, "AWSCURRENT") == "from-child"


def test_request_tokens_are_stable_and_valid() -> None:
    token = request_token("prod/web", "journal", "genesis")
    assert token == request_token("prod/web", "journal", "genesis") and 32 <= len(token) <= 64
    assert token != request_token("prod/web2", "journal", "genesis")

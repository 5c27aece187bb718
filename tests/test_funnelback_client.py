"""FunnelbackClient against the emulator over real loopback HTTP (no mocking of the client)."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
import urllib3.exceptions

from rotator.config import FunnelbackApi, FunnelbackSettings
from rotator.errors import (
    ConfigError,
    FunnelbackAuthError,
    FunnelbackConflictError,
    FunnelbackError,
    FunnelbackNotFoundError,
    FunnelbackPermissionError,
    FunnelbackProtocolError,
    FunnelbackTransientError,
    RotatorError,
)
from rotator.funnelback import (
    FunnelbackClient,
    FunnelbackOutcomeUnknownError,
    Identity,
    NewToken,
    _parse_time,
    _retry_after,
    extract_token_value,
    validate_name,
)
from rotator.ratelimit import TokenBucket
from rotator.secret import REDACTED, Secret
from rotator.transport import classify, proxy_for
from rotator.testing.funnelback_emulator import FunnelbackEmulator

pytestmark = pytest.mark.timeout(30)

ADMIN = "admin-token-0123456789abcdef"
CLIENT = "acme"
CLONE = "application-token/[^/]+/clone$"
ONE_TOKEN = "application-token/[^/]+$"
LIST = "application-token$"


@pytest.fixture
def emu() -> Iterator[FunnelbackEmulator]:
    with FunnelbackEmulator(admin_token=ADMIN, clients=[CLIENT, "other"],
                            users={"bob": "bob-password-1234"}) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def _admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FB_TOKEN", ADMIN)
    monkeypatch.setenv("FB_PASSWORD", "bob-password-1234")


def settings(url: str, **overrides: Any) -> FunnelbackSettings:
    values: dict[str, Any] = {"url": url, "api": FunnelbackApi(), "token_env": "FB_TOKEN", "timeout": 2.0,
                              "connect_timeout": 1.0, "retries": 2, "backoff_base": 0.01,
                              "backoff_max": 0.05}
    values.update(overrides)
    return FunnelbackSettings(**values)


@pytest.fixture
def make_client(emu: FunnelbackEmulator) -> Iterator[Any]:
    clients: list[FunnelbackClient] = []

    def make(**overrides: Any) -> FunnelbackClient:
        client = FunnelbackClient(settings(overrides.pop("url", emu.url), **overrides))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Any) -> FunnelbackClient:
    return make_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- happy paths ----------------------------------------------------------------------------------


def test_whoami_with_the_rotators_token(client: FunnelbackClient) -> None:
    assert client.whoami() == Identity(name="admin", kind="user", client_id=None)


def test_list_create_clone_verify_revoke_round_trip(client: FunnelbackClient,
                                                    emu: FunnelbackEmulator) -> None:
    emu.add_token(CLIENT, "live", roles=["client~primary"])
    [info] = client.list_client_tokens(CLIENT)
    assert (info.name, info.client_id, info.roles) == ("live", CLIENT, ("client~primary",))
    assert info.created_at is not None and info.created_at.tzinfo is not None

    created = client.create_client_token(CLIENT, "fresh")
    assert isinstance(created.value, Secret) and created.value.reveal() == emu.token_value(CLIENT, "fresh")
    assert created.client_id == CLIENT and created.created_at is not None
    assert {t.name: t.roles for t in client.list_client_tokens(CLIENT)}["fresh"] == ()

    clone = client.clone_client_token(CLIENT, "live", "live-2")
    assert clone.value.reveal() == emu.token_value(CLIENT, "live-2")
    assert {t.name: t.roles for t in client.list_client_tokens(CLIENT)}["live-2"] == ("client~primary",)
    assert client.verify_token(clone.value) == Identity("live-2", "application", CLIENT)

    assert client.revoke_client_token(CLIENT, "live") is True
    assert client.revoke_client_token(CLIENT, "live") is False
    assert sorted(emu.token_names(CLIENT)) == ["fresh", "live-2"]


def test_user_tokens(client: FunnelbackClient) -> None:
    token = client.create_user_token("ci-user-token")
    assert token.client_id is None
    assert [t.name for t in client.list_user_tokens()] == ["ci-user-token"]
    assert client.verify_token(token.value).name == "ci-user-token"
    assert client.revoke_user_token("ci-user-token") is True
    assert client.revoke_user_token("ci-user-token") is False


def test_verify_token_refuses_revoked_value_and_never_uses_own_credential(
        make_client: Any, emu: FunnelbackEmulator) -> None:
    client = make_client(token_env=None, username="bob", password_env="FB_PASSWORD")
    value = Secret(emu.add_token(CLIENT, "old"))
    assert client.verify_token(value).client_id == CLIENT
    emu.state.handle("revoke_client_token", {"client": CLIENT, "name": "old"}, ADMIN, b"")
    with pytest.raises(FunnelbackAuthError) as err:
        client.verify_token(value)
    assert err.value.status == 401 and err.value.method == "GET"
    assert emu.calls("login") == 0  # verification neither logs in nor refreshes
    assert emu.calls("current_user") == 2


def test_verify_token_takes_a_secret(client: FunnelbackClient) -> None:
    with pytest.raises(TypeError):
        client.verify_token("plain string")  # type: ignore[arg-type]


# --- credentials ----------------------------------------------------------------------------------


def test_login_is_cached_and_renewed_once_after_401(make_client: Any, emu: FunnelbackEmulator) -> None:
    client = make_client(token_env=None, username="bob", password_env="FB_PASSWORD")
    assert client.whoami().name == "bob"
    client.list_client_tokens(CLIENT)
    assert emu.calls("login") == 1
    emu.expire_logins()  # like a server restart or the 1-hour expiry on SXC
    client.list_client_tokens(CLIENT)
    assert emu.calls("login") == 2
    assert emu.calls("list_client_tokens") == 3


def test_relogin_is_attempted_once_only(make_client: Any, emu: FunnelbackEmulator) -> None:
    client = make_client(token_env=None, username="bob", password_env="FB_PASSWORD")
    client.whoami()
    emu.faults.add(kind="status", status=401, method="GET", path=LIST, times=2)
    with pytest.raises(FunnelbackAuthError) as err:
        client.list_client_tokens(CLIENT)
    assert "own credential" in err.value.one_line()
    assert emu.calls("login") == 2 and emu.calls("list_client_tokens") == 2


def test_concurrent_401s_trigger_a_single_relogin(make_client: Any, emu: FunnelbackEmulator) -> None:
    client = make_client(token_env=None, username="bob", password_env="FB_PASSWORD")
    client.whoami()
    emu.expire_logins()
    errors: list[Exception] = []

    def work() -> None:
        try:
            client.list_client_tokens(CLIENT)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert emu.calls("login") == 2


def test_bad_password_is_an_auth_error_without_the_password(make_client: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FB_PASSWORD", "wrong-password-xyz")
    client = make_client(token_env=None, username="bob", password_env="FB_PASSWORD")
    with pytest.raises(FunnelbackAuthError) as err:
        client.whoami()
    assert "login refused" in str(err.value)
    assert "wrong-password-xyz" not in f"{err.value!s} {err.value!r} {err.value.hint}"


def test_token_file_is_reread_after_401(make_client: Any, emu: FunnelbackEmulator,
                                        tmp_path: Path) -> None:
    first = emu.add_token(CLIENT, "rotator-1", roles=["token-admin"])
    token_file = tmp_path / "fb-token"
    token_file.write_text(first + "\n")
    client = make_client(token_env=None, token_file=str(token_file))
    assert client.whoami().name == "rotator-1"
    # Kubernetes rotates the mounted secret; the old token is revoked.
    token_file.write_text(emu.add_token(CLIENT, "rotator-2", roles=["token-admin"]))
    emu.state.handle("revoke_client_token", {"client": CLIENT, "name": "rotator-1"}, ADMIN, b"")
    assert {t.name for t in client.list_client_tokens(CLIENT)} == {"rotator-2"}
    assert client.whoami().name == "rotator-2"


def test_unchanged_token_file_after_401_is_not_retried(make_client: Any, emu: FunnelbackEmulator,
                                                       tmp_path: Path) -> None:
    token_file = tmp_path / "fb-token"
    token_file.write_text("not-a-valid-token-value")
    client = make_client(token_env=None, token_file=str(token_file))
    with pytest.raises(FunnelbackAuthError):
        client.list_client_tokens(CLIENT)
    assert emu.calls("list_client_tokens") == 1


def test_no_credential_configured_is_a_config_error(make_client: Any) -> None:
    client = make_client(token_env=None)
    with pytest.raises(ConfigError):
        client.whoami()


# --- status mapping -------------------------------------------------------------------------------


def test_403_for_a_token_without_permission(make_client: Any, emu: FunnelbackEmulator,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_TOKEN", emu.add_token(CLIENT, "consumer"))
    client = make_client(token_env="APP_TOKEN")
    with pytest.raises(FunnelbackPermissionError) as err:
        client.create_client_token(CLIENT, "x")
    assert err.value.status == 403 and err.value.method == "PUT"
    assert err.value.path == "/application-tokens/v1/clients/acme/application-token/x"
    assert "permission denied for client acme" in str(err.value)


def test_token_admin_application_token_manages_its_own_client_only(
        make_client: Any, emu: FunnelbackEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_TOKEN", emu.add_token(CLIENT, "rotator", roles=["token-admin"]))
    client = make_client(token_env="APP_TOKEN")
    assert client.create_client_token(CLIENT, "made-by-app").client_id == CLIENT
    with pytest.raises(FunnelbackPermissionError):
        client.list_client_tokens("other")


def test_404_unknown_client_and_unknown_clone_source(client: FunnelbackClient) -> None:
    with pytest.raises(FunnelbackNotFoundError) as err:
        client.list_client_tokens("no-such-client")
    assert err.value.status == 404
    with pytest.raises(FunnelbackNotFoundError):
        client.clone_client_token(CLIENT, "missing", "new")


def test_409_on_existing_name(client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.add_token(CLIENT, "taken")
    with pytest.raises(FunnelbackConflictError):
        client.create_client_token(CLIENT, "taken")
    emu.add_token(CLIENT, "src")
    with pytest.raises(FunnelbackConflictError):
        client.clone_client_token(CLIENT, "src", "taken")


def test_other_4xx_is_a_plain_funnelback_error(client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="status", status=400, path=LIST)
    with pytest.raises(FunnelbackError) as err:
        client.list_client_tokens(CLIENT)
    assert type(err.value) is FunnelbackError and err.value.status == 400
    assert emu.calls("list_client_tokens") == 1


def test_redirect_is_not_followed(client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="status", status=302, path=LIST,
                   headers={"Location": "http://127.0.0.1:9/elsewhere"})
    with pytest.raises(FunnelbackProtocolError, match="redirect"):
        client.list_client_tokens(CLIENT)


# --- retries --------------------------------------------------------------------------------------


def test_429_is_retried_honouring_retry_after(make_client: Any, emu: FunnelbackEmulator) -> None:
    client = make_client(backoff_max=5.0)
    emu.faults.add(kind="status", status=429, retry_after=0.2, path=LIST)
    started = time.monotonic()
    assert client.list_client_tokens(CLIENT) == []
    assert emu.calls("list_client_tokens") == 2
    assert 0.2 <= time.monotonic() - started < 2.0  # waited what the server asked, not the backoff


def test_retry_after_is_capped_by_backoff_max(make_client: Any, emu: FunnelbackEmulator) -> None:
    client = make_client(backoff_max=0.1)
    emu.faults.add(kind="status", status=429, retry_after=3600, path=LIST)
    started = time.monotonic()
    client.list_client_tokens(CLIENT)
    assert time.monotonic() - started < 2.0


def test_429_on_create_is_retried_because_nothing_happened(client: FunnelbackClient,
                                                           emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="status", status=429, retry_after=0, method="PUT", path=ONE_TOKEN)
    assert client.create_client_token(CLIENT, "after-429").name == "after-429"
    assert emu.calls("create_client_token") == 2


def test_429_exhaustion_is_transient(client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="status", status=429, path=LIST, times=None)
    with pytest.raises(FunnelbackTransientError, match="rate limited"):
        client.list_client_tokens(CLIENT)
    assert emu.calls("list_client_tokens") == 3  # 1 + retries


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_on_get_is_retried(client: FunnelbackClient, emu: FunnelbackEmulator, status: int) -> None:
    emu.faults.add(kind="status", status=status, path=LIST)
    assert client.list_client_tokens(CLIENT) == []
    assert emu.calls("list_client_tokens") == 2


def test_5xx_exhaustion_is_transient(client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="status", status=503, path=LIST, times=None)
    with pytest.raises(FunnelbackTransientError) as err:
        client.list_client_tokens(CLIENT)
    assert not isinstance(err.value, FunnelbackOutcomeUnknownError)
    assert err.value.status == 503 and "3 attempts" in str(err.value)
    assert emu.calls("list_client_tokens") == 3


def test_5xx_on_create_and_clone_is_not_retried(client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.add_token(CLIENT, "src")
    emu.faults.add(kind="status", status=500, method="PUT", path=ONE_TOKEN)
    with pytest.raises(FunnelbackOutcomeUnknownError):
        client.create_client_token(CLIENT, "x")
    emu.faults.add(kind="status", status=503, method="POST", path=CLONE)
    with pytest.raises(FunnelbackOutcomeUnknownError) as err:
        client.clone_client_token(CLIENT, "src", "y")
    assert isinstance(err.value, FunnelbackTransientError) and err.value.status == 503
    assert emu.calls("create_client_token") == 1 and emu.calls("clone_client_token") == 1


def test_5xx_on_revoke_is_retried(client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.add_token(CLIENT, "old")
    emu.faults.add(kind="status", status=500, method="DELETE", path=ONE_TOKEN)
    assert client.revoke_client_token(CLIENT, "old") is True
    assert emu.calls("revoke_client_token") == 2


def test_read_timeout_on_get_is_retried(make_client: Any, emu: FunnelbackEmulator) -> None:
    client = make_client(timeout=0.3)
    emu.faults.add(kind="hang", path=LIST)
    assert client.list_client_tokens(CLIENT) == []
    assert emu.calls("list_client_tokens") == 2


def test_read_timeout_exhaustion_is_transient(make_client: Any, emu: FunnelbackEmulator) -> None:
    client = make_client(timeout=0.3, retries=1)
    emu.faults.add(kind="delay", delay_seconds=1.0, path=LIST, times=2)
    with pytest.raises(FunnelbackTransientError, match="no answer within 0.3s"):
        client.list_client_tokens(CLIENT)
    assert emu.calls("list_client_tokens") == 2


def test_read_timeout_on_clone_is_not_retried(make_client: Any, emu: FunnelbackEmulator) -> None:
    client = make_client(timeout=0.3)
    emu.add_token(CLIENT, "src")
    emu.faults.add(kind="hang", method="POST", path=CLONE)
    with pytest.raises(FunnelbackOutcomeUnknownError):
        client.clone_client_token(CLIENT, "src", "src-2")
    assert emu.calls("clone_client_token") == 1


def test_lost_answer_on_clone_is_not_retried_and_leaves_a_findable_orphan(
        client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.add_token(CLIENT, "live")
    emu.faults.add(kind="lose_answer", method="POST", path=CLONE)
    with pytest.raises(FunnelbackOutcomeUnknownError) as err:
        client.clone_client_token(CLIENT, "live", "live-20261204T145200Z")
    assert "may have taken effect" in str(err.value)
    assert emu.calls("clone_client_token") == 1
    # The orphan exists; the engine finds it by name and revokes it.
    assert "live-20261204T145200Z" in {t.name for t in client.list_client_tokens(CLIENT)}
    assert client.revoke_client_token(CLIENT, "live-20261204T145200Z") is True


def test_lost_answer_on_revoke_is_retried_and_its_404_is_success(
        client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.add_token(CLIENT, "old")
    emu.faults.add(kind="lose_answer", method="DELETE", path=ONE_TOKEN)
    assert client.revoke_client_token(CLIENT, "old") is False  # revoked by the first, lost, attempt
    assert emu.calls("revoke_client_token") == 2
    assert emu.token_names(CLIENT) == []


def test_reset_is_retried_for_reads_but_not_for_create(client: FunnelbackClient,
                                                       emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="reset", path=LIST)
    assert client.list_client_tokens(CLIENT) == []
    assert emu.calls("list_client_tokens") == 2
    emu.faults.add(kind="reset", method="PUT", path=ONE_TOKEN)
    with pytest.raises(FunnelbackOutcomeUnknownError):
        client.create_client_token(CLIENT, "x")
    assert emu.calls("create_client_token") == 1 and emu.token_names(CLIENT) == []


def test_connection_refused_is_retried_even_for_create(make_client: Any) -> None:
    client = make_client(url=f"http://127.0.0.1:{free_port()}/admin-api")
    with pytest.raises(FunnelbackTransientError) as err:
        client.create_client_token(CLIENT, "x")
    # The request provably never left, so it is an ordinary transient error, retried to exhaustion.
    assert not isinstance(err.value, FunnelbackOutcomeUnknownError)
    assert "cannot connect" in str(err.value) and "3 attempts" in str(err.value)


def test_delay_within_the_timeout_is_fine(make_client: Any, emu: FunnelbackEmulator) -> None:
    client = make_client(timeout=0.5)
    emu.faults.add(kind="delay", delay_seconds=0.1, method="PUT", path=ONE_TOKEN)
    assert client.create_client_token(CLIENT, "slow").name == "slow"
    assert emu.calls("create_client_token") == 1


def test_create_after_server_restart_uses_a_fresh_connection(client: FunnelbackClient,
                                                             emu: FunnelbackEmulator) -> None:
    client.list_client_tokens(CLIENT)  # leaves a keep-alive connection in the pool
    emu.stop()
    emu.start()
    # A dead pooled connection must not turn a create into an "outcome unknown".
    assert client.create_client_token(CLIENT, "after-restart").name == "after-restart"
    assert emu.calls("create_client_token") == 1


def test_cookies_are_never_kept(client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    # A session cookie would authenticate later calls by itself, verify_token included.
    emu.faults.add(kind="status", status=200, path="current-user$",
                   body='{"data": {"name": "admin"}}', headers={"Set-Cookie": "JSESSIONID=abc; Path=/"})
    client.whoami()
    emu.faults.add(kind="status", status=200, path="current-user$", body='{"data": {"name": "admin"}}')
    client.whoami()
    client.verify_token(client.create_client_token(CLIENT, "cookie-check").value)
    assert emu.requests_with_cookies == 0


def test_server_restart_between_calls_is_survived(make_client: Any, emu: FunnelbackEmulator) -> None:
    client = make_client(token_env=None, username="bob", password_env="FB_PASSWORD")
    client.whoami()
    emu.stop()
    emu.start()  # same port; login sessions are gone, pooled connections are dead
    assert client.whoami().name == "bob"
    assert emu.calls("login") == 2


# --- answers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [["token"], ["header"], ["data.token", "token", "header"]])
def test_new_token_value_fallbacks(emu: FunnelbackEmulator, client: FunnelbackClient,
                                   fields: list[str]) -> None:
    emu.state.token_fields = fields
    token = client.create_client_token(CLIENT, "t")
    assert token.value.reveal() == emu.token_value(CLIENT, "t")


def test_configured_token_field(make_client: Any, emu: FunnelbackEmulator) -> None:
    emu.state.token_fields = ["result.secret"]
    client = make_client(api=FunnelbackApi(token_field="result.secret"))
    assert client.create_client_token(CLIENT, "t").value.reveal() == emu.token_value(CLIENT, "t")


def test_missing_token_value_is_a_protocol_error_naming_the_orphan(
        client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.state.token_fields = []
    with pytest.raises(FunnelbackProtocolError) as err:
        client.create_client_token(CLIENT, "valueless")
    assert "no token value" in str(err.value) and "valueless" in err.value.hint
    assert emu.token_names(CLIENT) == ["valueless"]


def test_token_field_order() -> None:
    headers = {"X-Security-Token": "from-header"}
    both = {"data": {"token": "from-data"}, "token": "from-top"}
    assert extract_token_value(both, headers, "data.token") == "from-data"
    assert extract_token_value({"token": "from-top"}, headers, "data.token") == "from-top"
    assert extract_token_value({"data": {}}, headers, "data.token") == "from-header"
    assert extract_token_value(None, {}, "data.token") is None
    with pytest.raises(ValueError):
        extract_token_value({"data": {"token": 123}}, headers, "data.token")


def test_wrong_token_type_is_a_protocol_error(client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="status", status=200, method="PUT", path=ONE_TOKEN,
                   body='{"data": {"token": 12345}}')
    with pytest.raises(FunnelbackProtocolError, match="does not hold a token string"):
        client.create_client_token(CLIENT, "t")


def test_own_credential_echoed_back_is_not_taken_for_a_new_token(client: FunnelbackClient,
                                                                 emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="status", status=200, method="PUT", path=ONE_TOKEN, body="{}",
                   headers={"X-Security-Token": ADMIN})
    with pytest.raises(FunnelbackProtocolError, match="own credential"):
        client.create_client_token(CLIENT, "t")


@pytest.mark.parametrize("body", ["not json", '{"data": "x"}', '{"data": [{"name": 1}]}', "{}",
                                  '{"data": [{"name": "a", "roles": "admin"}]}',
                                  '{"data": [{"name": "a", "createdAt": "yesterday"}]}',
                                  '{"data": [{"name": "a", "clientId": 7}]}', '{"data": [1]}'])
def test_malformed_lists_are_protocol_errors(client: FunnelbackClient, emu: FunnelbackEmulator,
                                             body: str) -> None:
    emu.faults.add(kind="status", status=200, path=LIST, body=body)
    with pytest.raises(FunnelbackProtocolError):
        client.list_client_tokens(CLIENT)


def test_lists_tolerate_bare_lists_and_missing_fields(client: FunnelbackClient,
                                                      emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="status", status=200, path=LIST,
                   body='[{"name": "a"}, {"name": "b", "createdAt": "2024-05-01T10:00:00Z", '
                        '"roles": ["r"], "clientId": "acme"}]')
    a, b = client.list_client_tokens(CLIENT)
    assert (a.client_id, a.created_at, a.roles) == (None, None, ())
    assert b.created_at == datetime(2024, 5, 1, 10, tzinfo=UTC) and b.roles == ("r",)


def test_malformed_identity_is_a_protocol_error(client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="status", status=200, path="current-user$", body='{"data": {"kind": "user"}}')
    with pytest.raises(FunnelbackProtocolError):
        client.whoami()


def test_timestamps() -> None:
    utc = UTC
    assert _parse_time("2024-05-01T10:00:00Z") == datetime(2024, 5, 1, 10, tzinfo=utc)
    assert _parse_time("2024-05-01T20:00:00.5+10:00") == datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=utc)
    assert _parse_time("2024-05-01T10:00:00") == datetime(2024, 5, 1, 10, tzinfo=utc)
    assert _parse_time(1714557600) == datetime(2024, 5, 1, 10, tzinfo=utc)
    assert _parse_time(1714557600000) == datetime(2024, 5, 1, 10, tzinfo=utc)
    assert _parse_time(None) is None and _parse_time("") is None
    with pytest.raises(ValueError):
        _parse_time("yesterday")


def test_failure_classification() -> None:
    # With retries=False urllib3 raises the underlying error; what decides a retry of a create or
    # clone is whether the request can have reached the server.
    errors = urllib3.exceptions
    timeout = (1.0, 2.0)
    cases = {
        errors.ConnectTimeoutError(): (True, True),
        errors.NewConnectionError(None, "refused"): (True, True),  # type: ignore[arg-type]
        errors.NameResolutionError("fb.invalid", None, socket.gaierror()): (True, True),  # type: ignore[arg-type]
        errors.ProxyError("proxy refused", OSError()): (True, True),
        errors.ReadTimeoutError(None, "/x", "read timed out"): (False, True),  # type: ignore[arg-type]
        errors.ProtocolError("Connection aborted.", ConnectionResetError()): (False, True),
        ConnectionResetError(): (False, True),
        errors.SSLError(): (True, False),
        errors.LocationParseError("fb:x"): (True, False),
    }
    for exc, (never_sent, retryable) in cases.items():
        failure = classify(exc, timeout)
        assert (failure.never_sent, failure.retryable) == (never_sent, retryable), exc


def test_proxies_come_from_the_environment_once() -> None:
    environ = {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "internal.example,.corp"}
    assert proxy_for("https://fb.example/admin-api", environ) == "http://proxy:3128"
    assert proxy_for("https://internal.example/admin-api", environ) is None
    assert proxy_for("https://search.corp/admin-api", environ) is None
    assert proxy_for("http://fb.example/admin-api", environ) is None      # no HTTP_PROXY
    assert proxy_for("http://fb.example/", {"ALL_PROXY": "http://all:1"}) == "http://all:1"
    assert proxy_for("https://fb.example/", {}) is None


def test_a_header_value_with_a_line_break_fails_cleanly_without_echoing_it(client: FunnelbackClient) -> None:
    # http.client refuses it with a ValueError that quotes the value; the client must not pass that on.
    with pytest.raises(FunnelbackError) as caught:
        client.verify_token(Secret("abc\r\nX-Injected: 1"))
    assert "abc" not in str(caught.value) and "Injected" not in str(caught.value)


def test_backoff_is_bounded_full_jitter(client: FunnelbackClient) -> None:
    delays = [client._backoff(n, None) for n in range(1, 8) for _ in range(50)]
    assert all(0.0 <= d <= 0.05 for d in delays) and len(set(delays)) > 1
    assert client._backoff(3, 7.0) == 0.05 and client._backoff(1, 0.0) == 0.0


def test_retry_after_forms() -> None:
    assert _retry_after({"Retry-After": "3"}) == 3.0
    assert _retry_after({}) is None and _retry_after({"Retry-After": "soon"}) is None
    assert _retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


# --- names, paths, secrecy ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".", "x" * 129, "with space", "ünïcode", "a?b=c", None])
def test_invalid_names_are_refused_before_sending(client: FunnelbackClient, emu: FunnelbackEmulator,
                                                  bad: Any) -> None:
    with pytest.raises(RotatorError, match="invalid"):
        client.create_client_token(CLIENT, bad)
    with pytest.raises(RotatorError, match="invalid"):
        client.clone_client_token(CLIENT, "src", bad)
    with pytest.raises(RotatorError, match="invalid client id"):
        client.list_client_tokens(bad)
    assert emu.counters() == {}


def test_valid_names() -> None:
    for name in ("a", "search-frontend-20261204T145200Z", "A.b_c-1", "x" * 128, "..a"):
        assert validate_name(name) == name


def test_path_overrides(make_client: Any) -> None:
    paths = {"current_user": "/v2/me", "list_client_tokens": "/v2/c/{client}/tokens",
             "create_client_token": "/v2/c/{client}/tokens/{name}",
             "clone_client_token": "/v2/c/{client}/tokens/{name}:copy",
             "revoke_client_token": "/v2/c/{client}/tokens/{name}"}
    with FunnelbackEmulator(admin_token=ADMIN, clients=[CLIENT], paths=paths) as custom:
        custom.add_token(CLIENT, "live")
        api = FunnelbackApi(current_user="/v2/me", list_client_tokens="/v2/c/{client}/tokens",
                            create_client_token="/v2/c/{client}/tokens/{name}",
                            clone_client_token="/v2/c/{client}/tokens/{name}:copy",
                            revoke_client_token="/v2/c/{client}/tokens/{name}")
        client = make_client(url=custom.url + "/", api=api)  # trailing slash is stripped
        clone = client.clone_client_token(CLIENT, "live", "live-2")
        assert client.verify_token(clone.value).name == "live-2"
        assert client.revoke_client_token(CLIENT, "live") is True
        assert [t.name for t in client.list_client_tokens(CLIENT)] == ["live-2"]
        with pytest.raises(FunnelbackNotFoundError):
            make_client(url=custom.url).list_client_tokens(CLIENT)


def test_errors_and_reprs_never_contain_token_values(make_client: Any, emu: FunnelbackEmulator,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    token = client.create_client_token(CLIENT, "secretive")
    value = token.value.reveal()
    texts = [repr(token), str(token), f"{token.value}", repr(client), repr(client.list_client_tokens(CLIENT))]
    # A server that quotes the value in an error message: scrubbed.
    emu.faults.add(kind="status", status=400, path=LIST, body=json.dumps({"errors": [f"bad token {value}"]}))
    with pytest.raises(FunnelbackError) as err:
        client.list_client_tokens(CLIENT)
    assert REDACTED in str(err.value)
    texts += [str(err.value), repr(err.value), err.value.one_line()]
    emu.state.handle("revoke_client_token", {"client": CLIENT, "name": "secretive"}, ADMIN, b"")
    with pytest.raises(FunnelbackAuthError) as auth_err:
        client.verify_token(token.value)
    texts += [str(auth_err.value), repr(auth_err.value)]
    # The rotator's own token refused: not in the error either.
    monkeypatch.setenv("FB_TOKEN", "rotator-own-token-that-is-wrong")
    with pytest.raises(FunnelbackAuthError) as own_err:
        make_client().whoami()
    texts += [str(own_err.value), own_err.value.one_line()]
    for text in texts:
        assert value not in text and ADMIN not in text and "rotator-own-token-that-is-wrong" not in text
    assert own_err.value.__cause__ is None and own_err.value.__context__ is None


def test_server_messages_are_truncated(client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="status", status=409, method="PUT", path=ONE_TOKEN,
                   body=json.dumps({"errors": ["x" * 5000]}))
    with pytest.raises(FunnelbackConflictError) as err:
        client.create_client_token(CLIENT, "t")
    assert 200 <= len(str(err.value)) < 400 and str(err.value).endswith("...")


def test_requests_are_logged_at_debug_without_secrets(client: FunnelbackClient,
                                                      emu: FunnelbackEmulator) -> None:
    saved = structlog.get_config()  # other tests may have configured an info-level filter
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            token = client.create_client_token(CLIENT, "logged")
            client.verify_token(token.value)
    finally:
        structlog.configure(**saved)
    assert [e["event"] for e in logs] == ["funnelback.request", "funnelback.request"]
    first = logs[0]
    assert first["log_level"] == "debug" and first["method"] == "PUT" and first["status"] == 200
    assert first["path"] == FunnelbackApi().create_client_token and first["attempt"] == 1
    assert isinstance(first["duration_ms"], float)
    assert token.value.reveal() not in repr(logs) and ADMIN not in repr(logs)


def test_a_broken_log_sink_does_not_lose_a_new_token(client: FunnelbackClient,
                                                    emu: FunnelbackEmulator) -> None:
    closed = io.StringIO()
    closed.close()  # like a stream captured by a test runner that has finished
    saved = structlog.get_config()
    structlog.configure(processors=[structlog.processors.JSONRenderer()],
                        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
                        logger_factory=structlog.PrintLoggerFactory(file=closed))
    try:
        token = client.create_client_token(CLIENT, "despite-logs")
    finally:
        structlog.configure(**saved)
    assert token.value.reveal() == emu.token_value(CLIENT, "despite-logs")


# --- throttles and concurrency --------------------------------------------------------------------


def test_rate_limit_spaces_requests(make_client: Any) -> None:
    client = make_client(max_requests_per_second=20)
    started = time.monotonic()
    for _ in range(6):
        client.whoami()
    assert time.monotonic() - started >= 0.2  # 5 gaps of 50 ms, minus scheduling slack


def test_concurrency_cap_holds_at_the_server(make_client: Any, emu: FunnelbackEmulator) -> None:
    client = make_client(max_concurrency=3)
    emu.delay_all_seconds = 0.05
    threads = [threading.Thread(target=client.whoami) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert emu.calls("current_user") == 12
    assert 1 <= emu.max_in_flight <= 3


def test_without_a_cap_the_run_s_workers_may_all_be_in_flight(emu: FunnelbackEmulator) -> None:
    # `--concurrency 32` means 32 calls in flight unless max_concurrency says fewer.
    client = FunnelbackClient(settings(emu.url), workers=24)
    emu.delay_all_seconds = 0.2
    threads = [threading.Thread(target=client.whoami) for _ in range(24)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        client.close()
    assert emu.calls("current_user") == 24
    assert emu.max_in_flight > 16


def test_many_threads_share_one_client(client: FunnelbackClient, emu: FunnelbackEmulator) -> None:
    emu.add_token(CLIENT, "src", roles=["client~primary"])
    results: list[NewToken] = []
    errors: list[Exception] = []

    def rotate(i: int) -> None:
        try:
            new = client.clone_client_token(CLIENT, "src", f"gen-{i}")
            client.verify_token(new.value)
            results.append(new)
            assert client.revoke_client_token(CLIENT, f"gen-{i}") is True
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rotate, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len({t.value for t in results}) == 32
    assert emu.token_names(CLIENT) == ["src"]


def test_token_bucket() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(4, burst=2, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        bucket.acquire()
    assert slept == [pytest.approx(0.25), pytest.approx(0.25)]
    now[0] += 10
    assert bucket.try_acquire() == 0.0 and bucket.try_acquire() == 0.0 and bucket.try_acquire() > 0
    with pytest.raises(ValueError):
        TokenBucket(0)

"""Bad input, fuzzed with hypothesis.

- The config loader: random TOML text, random bytes, and mutations of a valid config (keys deleted,
  renamed or added, values replaced by wrong types or random strings, durations and names garbled)
  either load or raise `ConfigError` - never another exception.
- Funnelback answers: the real `FunnelbackClient` against a tiny stdlib HTTP server that answers
  generated bodies (malformed JSON, missing or mistyped token fields, wrong types, non-UTF-8, ~5 MB)
  for list / clone / current-user: a result or a `RotatorError`, never another exception.
- Through the engine: a clone that takes effect but answers garbage fails the run cleanly: nothing
  current changes, nothing is left pending, and the token it made is revoked by name.

The example counts are printed in pytest's terminal summary.
"""

from __future__ import annotations

import collections
import copy
import functools
import json
import math
import os
import socket
import string
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from datetime import time as dtime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, SEED_NAME, make_target
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_fault_matrix import CLIENT, Clock, Summary, seed_destinations

from rotator.config import Config, FunnelbackSettings, load_config, parse_config
from rotator.errors import ConfigError, RotatorError
from rotator.funnelback import FunnelbackClient, Identity, NewToken, TokenInfo
from rotator.naming import is_generation
from rotator.rotation import TargetRotation
from rotator.secret import Secret
from rotator.testing.funnelback_emulator import FunnelbackEmulator, _Response

pytestmark = pytest.mark.timeout(120)

COUNTS: collections.Counter[str] = collections.Counter()
FUZZ = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])


# --- a minimal TOML writer (the standard library only reads TOML) ----------------------------------


def _key(key: str) -> str:
    return key if key and all(c in string.ascii_letters + string.digits + "_-" for c in key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)          # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def to_toml(doc: dict[str, Any]) -> str:
    """Top-level scalars, then [tables] (one level of [a.b] nesting) and [[arrays of tables]]; deeper
    structures are written inline."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in doc.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, table in tables:
        sub = [(k, v) for k, v in table.items() if isinstance(v, dict) and v and
               all(not isinstance(x, dict) for x in v.values())]
        lines.append(f"\n[{_key(key)}]")
        for k, v in table.items():
            if (k, v) not in sub:
                lines.append(f"{_key(k)} = {_value(v)}")
        for k, v in sub:
            lines.append(f"\n[{_key(key)}.{_key(k)}]")
            lines.extend(f"{_key(kk)} = {_value(vv)}" for kk, vv in v.items())
    for key, items in arrays:
        for item in items:
            lines.append(f"\n[[{_key(key)}]]")
            lines.extend(f"{_key(k)} = {_value(v)}" for k, v in item.items())
    return "\n".join(lines) + "\n"


VALID: dict[str, Any] = {
    "funnelback": {"url": "https://fb.example.com:8443/admin-api", "token_env": "FB_TOKEN", "timeout": "10s",
                   "retries": 3, "max_requests_per_second": 5, "verify_tls": True,
                   "api": {"clone_client_token": "/application-tokens/v1/clients/{client}/application-token/"
                                                 "{name}/clone", "token_field": "data.token"}},
    "service": {"listen": "0.0.0.0:9464", "concurrency": 4, "preflight_interval": "5m"},
    "defaults": {"interval": "30d", "grace_period": "15m", "window": "Mon-Fri 02:00-05:00", "jitter": "10m"},
    "backends": {"aws": {"type": "aws-secrets-manager", "region": "ap-southeast-2", "create_missing": True,
                         "timeout": "5s", "max_attempts": 3},
                 "vault": {"type": "vault", "url": "https://vault.example.com:8200", "mount": "secret",
                           "kv_version": 2, "auth": {"method": "approle", "role_id": "r",
                                                     "secret_id_env": "VAULT_SECRET_ID"}}},
    "targets": [
        {"name": "web", "client_id": "acme", "token_name": "web", "grace_period": "15m",
         "schedule": "0 3 * * Mon", "timezone": "Australia/Sydney", "lock_ttl": "30s", "verify": True,
         "destinations": [{"backend": "aws", "secret_id": "prod/web"}, {"backend": "vault", "path": "apps/web"}]},
        {"name": "api", "client_id": "acme", "token_name": "api", "interval": "7d", "max_age": "14d",
         "destinations": [{"backend": "aws", "secret_id": "prod/api", "kms_key_id": "alias/x"}]},
    ],
    "notify": [{"url_env": "SLACK_URL", "format": "slack", "on": ["failure", "stale"], "timeout": "3s"}],
}


def test_the_fuzzed_base_config_is_valid() -> None:
    config = parse_config(to_toml(VALID), "valid.toml")
    assert [t.name for t in config.targets] == ["web", "api"]
    assert config.funnelback.api.token_field == "data.token"


def loads_or_config_error(text: str, counter: str) -> Config | None:
    COUNTS[counter] += 1
    try:
        config = parse_config(text, "fuzz.toml")
    except ConfigError as exc:
        COUNTS[counter + ":ConfigError"] += 1
        assert str(exc).startswith("fuzz.toml"), exc       # the message names the file
        return None
    COUNTS[counter + ":loaded"] += 1
    assert isinstance(config, Config)
    return config


# --- config: random text -----------------------------------------------------------------------


toml_fragments = st.sampled_from([
    "[funnelback]", "[[targets]]", "[backends.aws]", "[defaults]", "url = ", "type = \"vault\"",
    "interval = \"30d\"", "\"", "'", "=", "[", "]", "{", "}", "\n", "name = \"web\"", "destinations = [",
    "1979-05-27T07:32:00Z", "0x1F", "1e400", "inf", "nan", "true", "\"\"\"", "#", "\\u0000", "a.b.c = 1",
])


@settings(FUZZ, max_examples=300)
@given(st.one_of(st.text(max_size=400), st.lists(toml_fragments, max_size=40).map(" ".join)))
def test_random_toml_text_loads_or_raises_config_error(text: str) -> None:
    loads_or_config_error(text, "config:random-text")


@settings(FUZZ, max_examples=60)
@given(st.binary(max_size=300))
def test_random_bytes_in_a_config_file_raise_config_error(data: bytes) -> None:
    COUNTS["config:random-bytes"] += 1
    with tempfile.NamedTemporaryFile("wb", suffix=".toml", delete=False) as handle:
        handle.write(data)
    try:
        load_config(handle.name)
    except ConfigError:
        pass
    finally:
        os.unlink(handle.name)


# --- config: mutations of a valid one ----------------------------------------------------------


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["", " ", "0s", "-5m", "1h30", "30x", "999999999999999999d", "1e9d", "15m ", "ms",
                     "https://", "http://x y", "../../etc", "a" * 200, "web\n", "web/../x", "{client}",
                     "Mon-Fri 25:00-26:00", "* * * * * *", "99 99 * * *", "Nowhere/City", "0.0.0.0:99999",
                     "Fri-Mon 05:00-02:00", "[::1]:9464", "", "Mon 00:00-24:00", "@daily", "None"]),
    st.datetimes(timezones=st.just(UTC)), st.dates(),
)
toml_values = st.recursive(scalars.filter(lambda v: v is not None),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=6)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path in a document (dict keys and list indexes)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from paths(value, prefix + (key,))


ALL_PATHS = list(paths(VALID))


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


mutation = st.tuples(st.sampled_from(["delete", "rename", "replace", "add"]), st.sampled_from(ALL_PATHS),
                     toml_values, st.text(min_size=1, max_size=12))


def mutate(doc: dict[str, Any], how: str, path: tuple[Any, ...], value: Any, name: str) -> None:
    try:
        parent = parent_of(doc, path)
        key = path[-1]
        if isinstance(parent, dict) and key not in parent or isinstance(parent, list) and key >= len(parent):
            return                                      # an earlier mutation removed it
    except (KeyError, IndexError, TypeError):
        return
    if how == "delete":
        del parent[key]
    elif how == "replace":
        parent[key] = value
    elif how == "rename" and isinstance(parent, dict):
        parent[name] = parent.pop(key)
    elif how == "add" and isinstance(parent, dict):
        parent[name] = value
    elif how == "add" and isinstance(parent, list):
        parent.append(value if isinstance(value, dict) else {name: value})


@settings(FUZZ, max_examples=400)
@given(st.lists(mutation, min_size=1, max_size=4))
@example([("replace", ("notify", 0, "on", 0), [], "x")])           # found by this test: on = [[]]
@example([("replace", ("defaults", "window"), ["Mon"], "x")])
@example([("replace", ("backends", "aws", "type"), [], "0")])   # found by this test: type = []
def test_mutated_valid_config_loads_or_raises_config_error(mutations: list[Any]) -> None:
    doc = copy.deepcopy(VALID)
    for how, path, value, name in mutations:
        mutate(doc, how, path, value, name)
    try:
        text = to_toml(doc)
    except TypeError:
        return
    loads_or_config_error(text, "config:mutated")


# --- Funnelback answers ---------------------------------------------------------------------------


class Answers(ThreadingHTTPServer):
    """Answers every request with the (status, body, headers) set on it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.status, self.body, self.headers = 200, b"{}", {"Content-Type": "application/json"}
        super().__init__(("127.0.0.1", 0), _AnswerHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/admin-api"


class _AnswerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1                   # headers and body in one segment: no Nagle/delayed-ACK stall
    server: Answers

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = self.server.body
        self.send_response(self.server.status)
        for name, value in self.server.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


@pytest.fixture(scope="module")
def answers() -> Iterator[Answers]:
    server = Answers()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def raw_client(answers: Answers) -> Iterator[FunnelbackClient]:
    os.environ.setdefault("FB_ADMIN_TOKEN", ADMIN_TOKEN)
    client = FunnelbackClient(FunnelbackSettings(url=answers.url, token_env="FB_ADMIN_TOKEN", timeout=5.0,
                                                 connect_timeout=1.0, retries=0, backoff_base=0.001,
                                                 backoff_max=0.001))
    yield client
    client.close()


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
token_entry = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.text(max_size=12), json_values), "clientId": json_values,
    "createdAt": st.one_of(st.just("2026-12-04T14:52:00Z"), st.integers(), st.floats(), st.text(max_size=25),
                           json_values),
    "roles": st.one_of(st.lists(st.text(max_size=5), max_size=3), json_values)})
shaped = st.one_of(
    st.builds(lambda d: {"data": d}, st.one_of(json_values, st.lists(token_entry, max_size=4))),
    st.lists(token_entry, max_size=4),
    st.builds(lambda t, extra: {"data": {"token": t, **extra}}, json_values,
              st.dictionaries(st.sampled_from(["name", "clientId", "createdAt", "roles"]), json_values)),
    st.builds(lambda t: {"token": t}, json_values),
    st.builds(lambda n, k, c: {"data": {"name": n, "kind": k, "clientId": c}}, json_values, json_values, json_values),
    json_values,
)
bodies = st.one_of(
    shaped.map(lambda doc: json.dumps(doc).encode()),
    shaped.map(lambda doc: json.dumps(doc).encode()[:-1]),                     # truncated JSON
    st.binary(max_size=200),                                                 # anything, non-UTF-8 included
    st.text(max_size=100).map(lambda t: t.encode("utf-16")),
    st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b"\xff\xfe{", b"<html>502 Bad Gateway</html>",
                     b'{"data": {"token": ""}}', b'{"data": {"token": "   "}}', b'{"data": {"token": 42}}',
                     b'{"data": {"token": null}, "token": "x"}', b'{"data": [{"name": ""}]}',
                     b'{"data": {"name": 7}}', b"1e999999", b'{"data": {"createdAt": 1e400}}',
                     b'[{"name": "a", "createdAt": 99999999999999999999}]', b'{"errors": ["\\ud800"]}']),
)
statuses = st.sampled_from([200, 200, 200, 201, 204, 302, 400, 401, 403, 404, 409, 429, 500, 503])
header_sets = st.sampled_from([{}, {"X-Security-Token": "hdr-token-value-123"}, {"X-Security-Token": ADMIN_TOKEN},
                               {"Retry-After": "garbage"}, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
                               {"Content-Type": "text/html"}])

CALLS = {
    "list": (lambda c: c.list_client_tokens("acme"), list),
    "clone": (lambda c: c.clone_client_token("acme", "web", "web-20261204T145200Z"), NewToken),
    "current-user": (lambda c: c.verify_token(Secret("candidate-token-value")), Identity),
    "whoami": (lambda c: c.whoami(), Identity),
}


def call_expecting_rotator_errors(client: FunnelbackClient, name: str) -> None:
    call, kind = CALLS[name]
    COUNTS[f"funnelback:{name}"] += 1
    try:
        result = call(client)
    except RotatorError as exc:
        COUNTS["funnelback:RotatorError"] += 1
        assert ADMIN_TOKEN not in str(exc)
        return
    COUNTS["funnelback:accepted"] += 1
    assert isinstance(result, kind)
    if name == "list":
        assert all(isinstance(t, TokenInfo) and isinstance(t.name, str) and t.name for t in result)
    if name == "clone":
        assert isinstance(result.value, Secret) and result.value.reveal().strip()
        assert result.value.reveal() != ADMIN_TOKEN


@settings(FUZZ, max_examples=250)
@given(body=bodies, status=statuses, headers=header_sets)
def test_funnelback_answers_give_results_or_rotator_errors(answers: Answers, raw_client: FunnelbackClient,
                                                           body: bytes, status: int,
                                                           headers: dict[str, str]) -> None:
    answers.status, answers.body = status, body
    answers.headers = {"Content-Type": "application/json", **headers}
    for name in CALLS:
        call_expecting_rotator_errors(raw_client, name)


@functools.lru_cache(maxsize=1)
def _huge_bodies() -> dict[str, bytes]:
    entry = {"name": "web-20261204T145200Z", "clientId": "acme", "createdAt": "2026-12-04T14:52:00Z",
             "roles": ["client~primary"]}
    many = json.dumps({"data": [entry] * 40000}).encode()                     # ~5 MB of valid JSON
    return {
        "5MB-valid-list": many,
        "5MB-garbage": b"\x00\xff{[" * (5 * 1024 * 1024 // 4),
        "9MB-over-the-cap": json.dumps({"data": [entry] * 75000}).encode(),   # > the client's 8 MB cap
        "5MB-token": json.dumps({"data": {"token": "t" * (5 * 1024 * 1024)}}).encode(),
        "5MB-deep-nesting": b"[" * (5 * 1024 * 1024),
    }


@pytest.mark.parametrize("name", ["5MB-valid-list", "5MB-garbage", "9MB-over-the-cap", "5MB-token",
                                  "5MB-deep-nesting"])
def test_huge_answers_give_results_or_rotator_errors(answers: Answers, raw_client: FunnelbackClient,
                                                     name: str) -> None:
    answers.status, answers.body = 200, _huge_bodies()[name]
    answers.headers = {"Content-Type": "application/json"}
    for call in CALLS:
        call_expecting_rotator_errors(raw_client, call)


# --- through the engine: a clone that takes effect and answers garbage -------------------------------


@pytest.fixture(scope="module")
def engine_world() -> Iterator[tuple[FunnelbackEmulator, FunnelbackClient]]:
    from test_fault_matrix import fb_settings
    with FunnelbackEmulator(admin_token=ADMIN_TOKEN, clients=[CLIENT]) as emulator:
        client = FunnelbackClient(fb_settings(emulator.url, timeout=2.0, retries=1))
        yield emulator, client
        client.close()


@settings(FUZZ, max_examples=60)
@given(body=bodies, effect=st.booleans())
def test_a_garbage_clone_answer_fails_the_run_cleanly(engine_world: Any, body: bytes, effect: bool) -> None:
    """The clone's answer is replaced by a generated body, after the clone took effect (the token
    exists, its value is lost) or without effect (an injected 200). The run fails or, when the body
    holds nothing usable, ends without a rotation; nothing current changes, nothing stays pending,
    and every token the clones made is revoked by name."""
    emulator, client = engine_world
    COUNTS["engine:garbage-clone"] += 1
    with emulator.state.lock:
        emulator.state.clients[CLIENT] = {}
        emulator.state.by_value.clear()
    emulator.add_token(CLIENT, SEED_NAME)
    emulator.faults.clear()
    destinations = seed_destinations(emulator, "memory:a", "memory:b")
    before = [d.current.payload for d in destinations]
    original = emulator.state._new_token_response
    if effect:
        emulator.state._new_token_response = lambda token: _Response(200, raw=body)  # type: ignore[method-assign]
    else:
        emulator.faults.add(kind="status", status=200, body=body.decode("utf-8", "replace"), method="POST",
                            path=r"/clone$", times=None)
    try:
        outcome = TargetRotation(make_target(lock_ttl=30.0), client, destinations, clock=Clock(),
                                 sleep=lambda s: None).run(force=True)
    finally:
        emulator.state._new_token_response = original  # type: ignore[method-assign]
        emulator.faults.clear()
    assert not outcome.ok, outcome
    COUNTS["engine:failed-cleanly"] += 1
    assert [d.current.payload for d in destinations] == before, "a current value changed"
    assert all(d.pending.payload is None for d in destinations)
    assert emulator.token_names(CLIENT) == [SEED_NAME], emulator.token_names(CLIENT)
    assert not [n for n in emulator.token_names(CLIENT) if is_generation(SEED_NAME, n)]
    journal = destinations[0].journal.data
    assert not journal.get("in_progress"), journal


def test_a_clone_answer_without_the_token_field_revokes_the_token_by_name(emulator: FunnelbackEmulator,
                                                                         fb_client: FunnelbackClient) -> None:
    """The clone happens, but its answer has the value where rotator does not look (a server
    answering another shape): the run fails, and the clone it made is revoked by its name."""
    emulator.state.token_fields = ["data.secretValue"]
    destinations = seed_destinations(emulator, "memory:a")
    before = destinations[0].current.payload
    outcome = TargetRotation(make_target(lock_ttl=30.0), fb_client, destinations, clock=Clock(),
                             sleep=lambda s: None).run(force=True)
    assert not outcome.ok and "no token value in the answer" in (outcome.error or ""), outcome
    assert emulator.calls("clone_client_token") == 3            # each try under a new name ...
    assert emulator.calls("revoke_client_token") >= 3           # ... revoked by that name
    assert emulator.token_names(CLIENT) == [SEED_NAME]
    assert destinations[0].current.payload == before and destinations[0].pending.payload is None


REPORT = Summary("fuzz-summary", "test_fuzz.py::",
                 lambda c: "fuzz: " + ", ".join(f"{k}={v}" for k, v in sorted(COUNTS.items())) +
                           f"; {c.get('passed', 0)} tests passed, {c.get('failed', 0)} failed")


@pytest.fixture(autouse=True, scope="module")
def _summary(request: pytest.FixtureRequest) -> None:
    Summary.install(request.config, REPORT)

"""A Funnelback admin-API emulator speaking real HTTP, for tests and `rotator demo`.

It serves what /work/shared/funnelback-admin-api.md describes (default paths, overridable), keeps tokens
per client, enforces a small permission model, persists its state if asked, and injects faults.

In-process::

    with FunnelbackEmulator(admin_token="adm-token-123", clients=["acme"]) as emu:
        emu.url              # http://127.0.0.1:PORT/admin-api
        emu.faults.add(kind="lose_answer", method="POST", path="/clone$")

As a process (prints one JSON line ``{"url": ..., "control_url": ...}`` once listening; SIGTERM stops it)::

    python -m rotator.testing.funnelback_emulator --port 0 --state-file fb.json \
        --admin-token-env FB_ADMIN --client acme --seed-token search-frontend=VALUE

Control endpoints (outside /admin-api, unauthenticated, test-only):
``POST/GET/DELETE /_emulator/faults``, ``GET /_emulator/state``, ``DELETE /_emulator/counters``,
``GET /_emulator/tokens/{client}/{name}/value``, ``POST /_emulator/tokens/{client}/{name}``
(create or update: ``{"value"?, "roles"?}``), ``POST /_emulator/config`` (``delay_all_seconds``,
``token_fields``), ``POST /_emulator/expire-logins``.

Standard library only: the demo must not need test dependencies.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import secrets
import signal
import socket
import socketserver
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from rotator.testing.faults import FAULT_KINDS, Fault, FaultSet, hang  # noqa: F401 - re-exported
from urllib.parse import parse_qs, unquote

API_PREFIX = "/admin-api"
CONTROL_PREFIX = "/_emulator"
TOKEN_HEADER = "X-Security-Token"
TOKEN_ADMIN_ROLE = "token-admin"
DEFAULT_SEED_ROLES: tuple[str, ...] = ("client~primary",)
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_REQUEST_BODY = 1 << 20

DEFAULT_PATHS: dict[str, str] = {
    "login": "/account/v1/login",
    "current_user": "/account/v1/current-user",
    "list_client_tokens": "/application-tokens/v1/clients/{client}/application-token",
    "create_client_token": "/application-tokens/v1/clients/{client}/application-token/{name}",
    "clone_client_token": "/application-tokens/v1/clients/{client}/application-token/{name}/clone",
    "revoke_client_token": "/application-tokens/v1/clients/{client}/application-token/{name}",
    "list_user_tokens": "/application-tokens/v1/application-token",
    "create_user_token": "/application-tokens/v1/application-token/{name}",
    "revoke_user_token": "/application-tokens/v1/application-token/{name}",
}
_OPERATION_METHODS: dict[str, str] = {
    "login": "POST", "current_user": "GET",
    "list_client_tokens": "GET", "create_client_token": "PUT", "clone_client_token": "POST",
    "revoke_client_token": "DELETE",
    "list_user_tokens": "GET", "create_user_token": "PUT", "revoke_user_token": "DELETE",
}



def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- Faults -------------------------------------------------------------------------------------




# --- State and the API's semantics ---------------------------------------------------------------


@dataclass
class _Token:
    name: str
    value: str
    created_at: str
    roles: list[str]
    client_id: str | None = None  # client application token
    owner: str | None = None      # user application token: the user whose permissions it shares

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "clientId": self.client_id, "createdAt": self.created_at,
                "roles": list(self.roles)}

    def to_json(self) -> dict[str, Any]:
        return {**self.public(), "value": self.value, "owner": self.owner}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> _Token:
        return cls(name=doc["name"], value=doc["value"], created_at=doc["createdAt"],
                   roles=list(doc.get("roles") or []), client_id=doc.get("clientId"),
                   owner=doc.get("owner"))


@dataclass(frozen=True)
class _Principal:
    name: str
    kind: str                  # "user" or "application"
    client_id: str | None
    user: str | None           # set when the caller has a user's (here: full) permissions
    roles: tuple[str, ...] = ()

    def can_manage_client(self, client: str) -> bool:
        return self.user is not None or (self.client_id == client and TOKEN_ADMIN_ROLE in self.roles)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "clientId": self.client_id}


@dataclass
class _Response:
    status: int
    doc: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


def _error(status: int, message: str) -> _Response:
    return _Response(status, {"errors": [message]})


@dataclass(frozen=True)
class SeedToken:
    client: str
    name: str
    value: str
    roles: tuple[str, ...] = DEFAULT_SEED_ROLES


class FunnelbackState:
    """Clients, tokens, users and login sessions, behind one lock; persisted after every mutation."""

    def __init__(self, *, admin_token: str, state_file: str | os.PathLike[str] | None = None,
                 clients: Iterable[str] = (), users: Mapping[str, str] | None = None,
                 seed_tokens: Iterable[SeedToken] = (), token_fields: Sequence[str] = ("data.token",)
                 ) -> None:
        self.lock = threading.RLock()
        self.admin_token = admin_token
        self.users: dict[str, str] = dict(users or {})
        self.clients: dict[str, dict[str, _Token]] = {}
        self.user_tokens: dict[str, dict[str, _Token]] = {}
        self.login_tokens: dict[str, str] = {}       # value -> user; never persisted (restart = logout)
        self.by_value: dict[str, _Token] = {}
        self.token_fields: list[str] = list(token_fields)
        self.state_file = Path(state_file) if state_file else None
        fresh = self.state_file is None or not self.state_file.exists()
        if not fresh:
            self._load()
        for client in clients:
            self.clients.setdefault(client, {})
        # Seeds describe the initial world only: re-applying them after a restart would resurrect
        # tokens the rotator has revoked since.
        if fresh:
            for seed in seed_tokens:
                self.put_token(seed.client, seed.name, value=seed.value, roles=seed.roles, save=False)
        self.save()

    # --- persistence ------------------------------------------------------------------------------

    def _load(self) -> None:
        assert self.state_file is not None
        doc = json.loads(self.state_file.read_text(encoding="utf-8"))
        for client, tokens in doc.get("clients", {}).items():
            self.clients[client] = {}
            for item in tokens:
                self._index(_Token.from_json(item))
        for tokens in doc.get("userTokens", {}).values():
            for item in tokens:
                self._index(_Token.from_json(item))

    def save(self) -> None:
        if self.state_file is None:
            return
        with self.lock:
            doc = {"version": 1,
                   "clients": {c: [t.to_json() for t in ts.values()] for c, ts in self.clients.items()},
                   "userTokens": {u: [t.to_json() for t in ts.values()]
                                  for u, ts in self.user_tokens.items()}}
            data = json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")
            directory = self.state_file.parent
            # mkstemp creates the file 0600; os.replace makes the switch atomic.
            fd, tmp = tempfile.mkstemp(prefix=".funnelback-state-", dir=directory)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.state_file)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    # --- token bookkeeping ----------------------------------------------------------------------

    def _index(self, token: _Token) -> None:
        if token.client_id is not None:
            self.clients.setdefault(token.client_id, {})[token.name] = token
        else:
            self.user_tokens.setdefault(token.owner or "", {})[token.name] = token
        self.by_value[token.value] = token

    def _unindex(self, token: _Token) -> None:
        table = (self.clients[token.client_id] if token.client_id is not None
                 else self.user_tokens[token.owner or ""])
        table.pop(token.name, None)
        self.by_value.pop(token.value, None)

    def put_token(self, client: str, name: str, *, value: str | None = None,
                  roles: Iterable[str] = (), save: bool = True) -> str:
        """Create or replace a client token (test set-up); returns its value."""
        with self.lock:
            old = self.clients.get(client, {}).get(name)
            if old is not None:
                self._unindex(old)
            token = _Token(name=name, value=value or secrets.token_urlsafe(32), created_at=_now(),
                           roles=list(roles), client_id=client)
            self._index(token)
            if save:
                self.save()
            return token.value

    def set_roles(self, client: str, name: str, roles: Iterable[str]) -> None:
        with self.lock:
            self.clients[client][name].roles = list(roles)
            self.save()

    def principal(self, value: str | None) -> _Principal | None:
        if not value:
            return None
        with self.lock:
            if secrets.compare_digest(value, self.admin_token):
                return _Principal("admin", "user", None, user="admin")
            if value in self.login_tokens:
                user = self.login_tokens[value]
                return _Principal(user, "user", None, user=user)
            token = self.by_value.get(value)
            if token is None:
                return None
            if token.client_id is not None:
                return _Principal(token.name, "application", token.client_id, user=None,
                                  roles=tuple(token.roles))
            return _Principal(token.name, "application", None, user=token.owner)

    # --- the API ----------------------------------------------------------------------------------

    def handle(self, operation: str, args: Mapping[str, str], token: str | None,
               body: bytes) -> _Response:
        with self.lock:
            if operation == "login":
                return self._login(body)
            principal = self.principal(token)
            if principal is None:
                return _error(401, "invalid, expired or missing X-Security-Token")
            if operation == "current_user":
                return _Response(200, {"data": principal.public()})
            if "client" in args:
                return self._client_operation(operation, principal, args, body)
            if principal.user is None:
                return _error(403, "application tokens cannot manage user tokens")
            return self._user_operation(operation, principal.user, args)

    def _login(self, body: bytes) -> _Response:
        form = parse_qs(body.decode("utf-8", "replace"))
        user = (form.get("username") or [""])[0]
        password = (form.get("password") or [""])[0]
        expected = self.users.get(user)
        if expected is None or not secrets.compare_digest(password.encode(), expected.encode()):
            return _error(401, "bad credentials")
        value = secrets.token_urlsafe(32)
        self.login_tokens[value] = user
        return _Response(200, {"data": {"name": user}}, headers={TOKEN_HEADER: value})

    def _client_operation(self, operation: str, principal: _Principal, args: Mapping[str, str],
                          body: bytes) -> _Response:
        client = args["client"]
        if not principal.can_manage_client(client):
            return _error(403, f"permission denied for client {client}")
        tokens = self.clients.get(client)
        if tokens is None:
            return _error(404, f"unknown client {client}")
        if operation == "list_client_tokens":
            return _Response(200, {"data": [t.public() for t in tokens.values()]})
        name = args["name"]
        if operation == "create_client_token":
            return self._create(tokens, name, [], client_id=client, owner=None)
        if operation == "clone_client_token":
            source = tokens.get(name)
            new_name = _json_field(body, "name")
            if new_name is None:
                return _error(400, 'expected JSON body {"name": "<new name>"}')
            if source is None:
                return _error(404, f"no token {name} in client {client}")
            return self._create(tokens, new_name, list(source.roles), client_id=client, owner=None)
        if operation == "revoke_client_token":
            return self._revoke(tokens, name)
        raise AssertionError(operation)

    def _user_operation(self, operation: str, user: str, args: Mapping[str, str]) -> _Response:
        tokens = self.user_tokens.setdefault(user, {})
        if operation == "list_user_tokens":
            return _Response(200, {"data": [t.public() for t in tokens.values()]})
        if operation == "create_user_token":
            return self._create(tokens, args["name"], [], client_id=None, owner=user)
        if operation == "revoke_user_token":
            return self._revoke(tokens, args["name"])
        raise AssertionError(operation)

    def _create(self, tokens: dict[str, _Token], name: str, roles: list[str], *,
                client_id: str | None, owner: str | None) -> _Response:
        if not NAME_RE.fullmatch(name):
            return _error(400, f"invalid token name {name[:140]!r}")
        if name in tokens:
            return _error(409, f"a token named {name} already exists")
        token = _Token(name=name, value=secrets.token_urlsafe(32), created_at=_now(), roles=roles,
                       client_id=client_id, owner=owner)
        self._index(token)
        self.save()
        return self._new_token_response(token)

    def _revoke(self, tokens: dict[str, _Token], name: str) -> _Response:
        token = tokens.get(name)
        if token is None:
            return _error(404, f"no token {name}")
        self._unindex(token)
        self.save()
        return _Response(200, {"data": {"name": name}})

    def _new_token_response(self, token: _Token) -> _Response:
        """Shape the answer after `token_fields`: dotted JSON paths, or "header" for X-Security-Token."""
        doc: dict[str, Any] = {"data": {"name": token.name, "clientId": token.client_id,
                                        "createdAt": token.created_at, "roles": list(token.roles)}}
        headers: dict[str, str] = {}
        for spot in self.token_fields:
            if spot == "header":
                headers[TOKEN_HEADER] = token.value
                continue
            node = doc
            *parents, leaf = spot.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = token.value
        return _Response(200, doc, headers=headers)

    # --- views for tests (never values, except token_value) --------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"clients": {c: [t.public() for t in ts.values()] for c, ts in self.clients.items()},
                    "userTokens": {u: [t.public() for t in ts.values()]
                                   for u, ts in self.user_tokens.items()}}

    def token_value(self, client: str, name: str) -> str | None:
        with self.lock:
            token = self.clients.get(client, {}).get(name)
            return token.value if token else None


def _json_field(body: bytes, key: str) -> str | None:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


# --- HTTP -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    operation: str
    method: str
    template: str
    regex: re.Pattern[str]


def _compile_routes(paths: Mapping[str, str]) -> list[_Route]:
    routes = []
    for operation, method in _OPERATION_METHODS.items():
        template = paths[operation]
        pattern = re.sub(r"\\\{(client|name)\\\}", lambda m: f"(?P<{m.group(1)}>[^/]+)",
                         re.escape(template))
        routes.append(_Route(operation, method, template, re.compile(pattern)))
    return routes


class _Server(ThreadingHTTPServer):
    daemon_threads = True           # a hung handler never blocks interpreter exit
    block_on_close = False
    request_queue_size = 256        # 32+ concurrent workers must not overflow the accept backlog
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: FunnelbackEmulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall on poor DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # clients going away (timeouts, resets) are normal here
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as a real server; every answer has Content-Length
    server_version = "FunnelbackEmulator/1.0"
    timeout = 30                    # idle keep-alive connections end eventually
    wbufsize = -1                   # buffered: headers and body leave in one segment (no Nagle stall)
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.emulator._register(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.emulator._unregister(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        emulator = self.server.emulator
        path = self.path.partition("?")[0]
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_REQUEST_BODY:
            self.close_connection = True
            self._reply(_error(413, "request body too large or Content-Length invalid"))
            return
        body = self.rfile.read(length) if length else b""
        if path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
            self._reply(emulator._control(self.command, path, body))
        elif path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            self._serve_api(path, body)
        else:
            self._reply(_error(404, "not found"))

    def _serve_api(self, path: str, body: bytes) -> None:
        emulator = self.server.emulator
        if self.headers.get("Cookie") is not None:
            with emulator._stats_lock:
                emulator.requests_with_cookies += 1
        route, args, allowed = emulator._route(self.command, path[len(API_PREFIX):])
        key = f"{self.command} {route.template if route else '(unmatched)'}"
        with emulator._in_flight(key):
            fault = emulator.faults.take(self.command, path)
            if emulator.delay_all_seconds > 0:
                emulator._stopping.wait(emulator.delay_all_seconds)
            if fault is not None and fault.kind != "lose_answer":
                if fault.kind == "delay":
                    emulator._stopping.wait(fault.delay_seconds)
                elif fault.kind == "status":
                    self._reply(_fault_response(fault))
                    return
                elif fault.kind == "hang":
                    self._hang(fault.delay_seconds)
                    self._drop(reset=False)
                    return
                else:  # reset
                    self._drop(reset=True)
                    return
            if route is None:
                response = (_error(405, "method not allowed") if allowed else _error(404, "not found"))
            else:
                response = emulator.state.handle(route.operation, args, self.headers.get(TOKEN_HEADER),
                                                 body)
            if fault is not None and fault.kind == "lose_answer":  # the effect happened, no answer
                self._drop(reset=False)
                return
            self._reply(response)

    def _reply(self, response: _Response) -> None:
        if response.raw is not None:
            body = response.raw
        elif response.doc is not None:
            body = json.dumps(response.doc).encode("utf-8")
        else:
            body = b""
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _drop(self, *, reset: bool) -> None:
        """Close the connection without an answer: FIN (lost answer) or RST (reset)."""
        self.close_connection = True
        if reset:
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()  # the descriptor really closes when rfile/wfile do, in finish()
            except OSError:
                pass

    def _hang(self, seconds: float) -> None:
        hang(self.connection, self.server.emulator._stopping, seconds)


def _shutdown_quietly(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _fault_response(fault: Fault) -> _Response:
    headers = dict(fault.headers)
    if fault.retry_after is not None:
        headers["Retry-After"] = f"{fault.retry_after:g}"
    if fault.body is not None:
        return _Response(fault.status, raw=fault.body.encode("utf-8"), headers=headers)
    return _Response(fault.status, {"errors": [f"injected fault: HTTP {fault.status}"]}, headers=headers)


# --- The emulator ---------------------------------------------------------------------------------


class FunnelbackEmulator:
    """An HTTP Funnelback admin API on 127.0.0.1; `start()`/`stop()` or use as a context manager."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 state_file: str | os.PathLike[str] | None = None, admin_token: str | None = None,
                 clients: Iterable[str] = ("acme",), users: Mapping[str, str] | None = None,
                 seed_tokens: Iterable[SeedToken] = (), paths: Mapping[str, str] | None = None,
                 token_fields: Sequence[str] = ("data.token",), delay_all_seconds: float = 0.0) -> None:
        unknown = set(paths or {}) - set(DEFAULT_PATHS)
        if unknown:
            raise ValueError(f"unknown path keys {sorted(unknown)}")
        self.paths = {**DEFAULT_PATHS, **(paths or {})}
        self.admin_token_generated = admin_token is None
        self.state = FunnelbackState(admin_token=admin_token or secrets.token_urlsafe(32),
                                     state_file=state_file, clients=clients, users=users,
                                     seed_tokens=seed_tokens, token_fields=token_fields)
        self.faults = FaultSet()
        self.delay_all_seconds = float(delay_all_seconds)
        self.requests_with_cookies = 0    # a client must never send back a cookie it was given
        self._routes = _compile_routes(self.paths)
        self._host, self._port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stats_lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._in_flight_now = 0
        self._max_in_flight = 0
        # arrival times of admin-API requests (monotonic), to measure a client's rate limit
        self._arrivals: collections.deque[float] = collections.deque(maxlen=100_000)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen and serve in a daemon thread. A restart reuses the port and ends login sessions."""
        if self._server is not None:
            return self
        self._stopping.clear()
        with self.state.lock:
            self.state.login_tokens.clear()  # Funnelback login tokens do not survive a restart
        self._server = _Server((self._host, self._port), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name=f"funnelback-emulator-{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hung requests, close every connection; returns once handlers ended."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            _shutdown_quietly(conn)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            with self._conn_lock:
                if not self._connections:
                    break
            time.sleep(0.01)
        if thread is not None:
            thread.join(5.0)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def url(self) -> str:
        """The admin-API base URL (what rotator's `[funnelback] url` takes)."""
        return self.base_url + API_PREFIX

    @property
    def control_url(self) -> str:
        return self.base_url + CONTROL_PREFIX

    @property
    def admin_token(self) -> str:
        return self.state.admin_token

    # --- set-up and inspection for tests --------------------------------------------------------

    def add_client(self, client: str) -> None:
        with self.state.lock:
            self.state.clients.setdefault(client, {})
            self.state.save()

    def add_user(self, name: str, password: str) -> None:
        with self.state.lock:
            self.state.users[name] = password

    def add_token(self, client: str, name: str, *, value: str | None = None,
                  roles: Iterable[str] = DEFAULT_SEED_ROLES) -> str:
        """Create (or replace) a client token; returns its value."""
        return self.state.put_token(client, name, value=value, roles=roles)

    def set_roles(self, client: str, name: str, roles: Iterable[str]) -> None:
        self.state.set_roles(client, name, roles)

    def token_value(self, client: str, name: str) -> str | None:
        return self.state.token_value(client, name)

    def token_names(self, client: str) -> list[str]:
        return [t["name"] for t in self.state.snapshot()["clients"].get(client, [])]

    def expire_logins(self) -> None:
        with self.state.lock:
            self.state.login_tokens.clear()

    def counters(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self._counters)

    def calls(self, operation: str) -> int:
        """Requests received for an operation of DEFAULT_PATHS (e.g. "clone_client_token")."""
        key = f"{_OPERATION_METHODS[operation]} {self.paths[operation]}"
        with self._stats_lock:
            return self._counters.get(key, 0)

    @property
    def max_in_flight(self) -> int:
        with self._stats_lock:
            return self._max_in_flight

    def max_requests_within(self, seconds: float) -> int:
        """The most admin-API requests that arrived within any `seconds`-long window."""
        with self._stats_lock:
            arrivals = list(self._arrivals)
        most, first = 0, 0
        for last, arrived in enumerate(arrivals):
            while arrived - arrivals[first] > seconds:
                first += 1
            most = max(most, last - first + 1)
        return most

    def reset_counters(self) -> None:
        with self._stats_lock:
            self._counters.clear()
            self._arrivals.clear()
            self._max_in_flight = self._in_flight_now

    # --- internals used by the handler ----------------------------------------------------------

    def _register(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.add(conn)
        if self._stopping.is_set():  # accepted just before stop(): do not let it idle 30 s
            _shutdown_quietly(conn)

    def _unregister(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.discard(conn)

    @contextmanager
    def _in_flight(self, key: str) -> Iterator[None]:
        with self._stats_lock:
            self._counters[key] = self._counters.get(key, 0) + 1
            self._arrivals.append(time.monotonic())
            self._in_flight_now += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight_now)
        try:
            yield
        finally:
            with self._stats_lock:
                self._in_flight_now -= 1

    def _route(self, method: str, path: str) -> tuple[_Route | None, dict[str, str], bool]:
        """The route for (method, path under /admin-api); else (None, {}, path-exists-for-another-method)."""
        other_method = False
        for route in self._routes:
            match = route.regex.fullmatch(path)
            if match is None:
                continue
            if route.method == method:
                return route, {k: unquote(v) for k, v in match.groupdict().items()}, False
            other_method = True
        return None, {}, other_method

    def _state_view(self) -> dict[str, Any]:
        view = self.state.snapshot()
        with self._stats_lock:
            view.update(counters=dict(self._counters), inFlight=self._in_flight_now,
                        maxInFlight=self._max_in_flight)
        view.update(maxPerSecond=self.max_requests_within(1.0))
        view.update(delayAllSeconds=self.delay_all_seconds,
                    faults=[f.to_json() for f in self.faults.list()])
        return view

    def _control(self, method: str, path: str, body: bytes) -> _Response:
        """Test-only endpoints: faults, state, token values, configuration."""
        parts = [unquote(p) for p in path[len(CONTROL_PREFIX):].strip("/").split("/")]
        try:
            doc = json.loads(body.decode("utf-8")) if body.strip() else None
        except (UnicodeDecodeError, ValueError):
            return _error(400, "body is not JSON")
        try:
            return self._control_route(method, parts, doc)
        except (TypeError, ValueError, KeyError, re.error) as exc:
            return _error(400, f"bad control request: {exc}")

    def _control_route(self, method: str, parts: list[str], doc: Any) -> _Response:
        match method, parts:
            case "GET", ["state"]:
                return _Response(200, self._state_view())
            case "GET", ["faults"]:
                return _Response(200, [f.to_json() for f in self.faults.list()])
            case "POST", ["faults"]:
                items = doc if isinstance(doc, list) else [doc]
                faults = [Fault.from_json(item) for item in items]  # validate all before adding any
                for fault in faults:
                    self.faults.add(fault)
                return _Response(201, {"added": len(faults)})
            case "DELETE", ["faults"]:
                return _Response(200, {"cleared": self.faults.clear()})
            case "DELETE", ["counters"]:
                self.reset_counters()
                return _Response(200, {})
            case "POST", ["expire-logins"]:
                self.expire_logins()
                return _Response(200, {})
            case "POST", ["config"]:
                if "delay_all_seconds" in doc:
                    self.delay_all_seconds = float(doc["delay_all_seconds"])
                if "token_fields" in doc:
                    with self.state.lock:
                        self.state.token_fields = [str(f) for f in doc["token_fields"]]
                return _Response(200, {})
            case "GET", ["tokens", client, name, "value"]:
                value = self.token_value(client, name)
                return _Response(200, {"value": value}) if value else _error(404, "no such token")
            case "POST", ["tokens", client, name]:
                doc = doc or {}
                current = self.token_value(client, name)
                if current is not None and "value" not in doc:
                    self.set_roles(client, name, doc.get("roles", []))
                    return _Response(200, {"value": current})
                value = self.add_token(client, name, value=doc.get("value"),
                                       roles=doc.get("roles", DEFAULT_SEED_ROLES))
                return _Response(201, {"value": value})
        return _error(404, "unknown control endpoint")


# --- Command line ---------------------------------------------------------------------------------


def _split_client(spec: str, default_client: str) -> tuple[str, str]:
    client, sep, name = spec.partition(":")
    return (client, name) if sep else (default_client, spec)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rotator.testing.funnelback_emulator",
                                     description="Funnelback admin-API emulator (test use only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--state-file", help="persist tokens here (JSON, 0600) across restarts")
    parser.add_argument("--admin-token", help="super-user token (prefer --admin-token-env)")
    parser.add_argument("--admin-token-env", help="environment variable holding the admin token")
    parser.add_argument("--client", action="append", default=[], help="client id (repeatable)")
    parser.add_argument("--user", action="append", default=[], metavar="NAME=PASSWORD",
                        help="a user that can log in (repeatable)")
    parser.add_argument("--seed-token", action="append", default=[], metavar="[CLIENT:]NAME=VALUE",
                        help="initial client token, when the state file does not exist yet")
    parser.add_argument("--seed-roles", default=",".join(DEFAULT_SEED_ROLES),
                        help="roles of seeded tokens (comma-separated)")
    parser.add_argument("--token-roles", action="append", default=[], metavar="[CLIENT:]NAME=ROLE,...",
                        help="roles of one seeded token, e.g. rotator=token-admin")
    parser.add_argument("--token-field", action="append", default=[],
                        help='where answers carry new token values: dotted path or "header"')
    parser.add_argument("--delay-all-ms", type=float, default=0.0, help="delay every API call")
    return parser.parse_args(argv)


def build_from_args(args: argparse.Namespace) -> FunnelbackEmulator:
    admin = args.admin_token
    if args.admin_token_env:
        admin = os.environ.get(args.admin_token_env) or None
        if admin is None:
            raise SystemExit(f"environment variable {args.admin_token_env} is not set")
    clients = args.client or ["acme"]
    users = dict(spec.split("=", 1) for spec in args.user)
    roles_by_token = {}
    for spec in args.token_roles:
        target, _, roles = spec.partition("=")
        roles_by_token[_split_client(target, clients[0])] = tuple(r for r in roles.split(",") if r)
    default_roles = tuple(r for r in args.seed_roles.split(",") if r)
    seeds = []
    for spec in args.seed_token:
        target, sep, value = spec.partition("=")
        if not sep or not value:
            raise SystemExit(f"--seed-token {target!r}: expected [CLIENT:]NAME=VALUE")
        client, name = _split_client(target, clients[0])
        seeds.append(SeedToken(client, name, value, roles_by_token.get((client, name), default_roles)))
    return FunnelbackEmulator(host=args.host, port=args.port, state_file=args.state_file,
                              admin_token=admin, clients=clients, users=users, seed_tokens=seeds,
                              token_fields=args.token_field or ("data.token",),
                              delay_all_seconds=args.delay_all_ms / 1000.0)


def main(argv: Sequence[str] | None = None) -> int:
    emulator = build_from_args(_parse_args(argv))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    emulator.start()
    info: dict[str, Any] = {"url": emulator.url, "control_url": emulator.control_url, "pid": os.getpid()}
    if emulator.admin_token_generated:
        info["admin_token"] = emulator.admin_token  # the caller has no other way to learn it
    print(json.dumps(info), flush=True)
    while not stop.wait(0.2):
        pass
    emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

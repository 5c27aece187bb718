"""Client for the Funnelback admin API (application tokens, login, current user).

Every HTTP call goes through `FunnelbackClient._request`: base URL, timeouts, the `X-Security-Token`
header, rate limit, concurrency cap, bounded retries and the mapping of statuses to the typed errors of
`rotator.errors`. The client is thread-safe and meant to be shared by every worker thread.

Retry policy (the `retries` setting bounds it):
- GET and DELETE are idempotent: retried on connection failures, timeouts, 429 and 5xx. A DELETE whose
  first answer was lost sees 404 on the retry; revoke reports that as False ("already gone").
- PUT (create) and POST (clone) are not: retried only when the request provably never left (connection
  refused, connect timeout) or on 429. Otherwise `FunnelbackOutcomeUnknownError`: the token may exist,
  the caller finds it by name.
- A 401 on a call made with the rotator's own credential re-logs in (or re-reads the token reference)
  once and repeats the call once.

Secret hygiene: token values and passwords are wrapped in `Secret` as soon as they exist and revealed
only inside `_send_once`, whose frame never appears in the traceback of an error we raise (errors are
raised after it returned). Errors carry method, path and status, never headers, bodies or query values.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import random
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeAlias
from urllib.parse import quote, urlencode

import structlog

from rotator.errors import (
    ConfigError,
    FunnelbackAuthError,
    FunnelbackConflictError,
    FunnelbackError,
    FunnelbackNotFoundError,
    FunnelbackOutcomeUnknownError,
    FunnelbackPermissionError,
    FunnelbackProtocolError,
    FunnelbackTransientError,
    RotatorError,
)
from rotator.ratelimit import ConcurrencyLimit, TokenBucket
from rotator.secret import Secret, scrub
from rotator.transport import Failure, Transport

if TYPE_CHECKING:
    from rotator.config import FunnelbackSettings

__all__ = [
    "FunnelbackClient",
    "FunnelbackOutcomeUnknownError",
    "Identity",
    "NewToken",
    "TokenInfo",
    "extract_token_value",
    "validate_name",
]

log = structlog.get_logger("rotator.funnelback")

TOKEN_HEADER: Final = "X-Security-Token"
SELF: Final = "self"
# Who authenticates a call: the rotator's own credential, an explicit token (verification), or nobody.
Auth: TypeAlias = "Secret | None | Literal['self']"

_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
_MAX_BODY: Final = 8 * 1024 * 1024       # a token list larger than this is not a Funnelback answer
_MAX_ERROR_BODY: Final = 64 * 1024       # enough for {"errors": [...]}, bounded against HTML error pages
_MAX_MESSAGE: Final = 200
DEFAULT_MAX_CONCURRENCY: Final = 16    # calls in flight to the host when max_concurrency is not set


# --- Results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenInfo:
    name: str
    client_id: str | None
    created_at: datetime | None
    roles: tuple[str, ...]


@dataclass(frozen=True)
class NewToken:
    name: str
    client_id: str | None
    value: Secret  # repr-safe: Secret never shows its value
    created_at: datetime | None


@dataclass(frozen=True)
class Identity:
    name: str
    kind: str | None
    client_id: str | None


# --- Internal request/answer records -------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Mapping[str, str]       # case-insensitive
    body: bytes
    sent_credential: Secret | None   # to refuse a server that echoes our own token as a "new" one


class _Form:
    """Form fields whose values may be secrets; revealed only when the request is sent."""

    def __init__(self, fields: Mapping[str, str | Secret]) -> None:
        self._fields = dict(fields)

    def reveal(self) -> dict[str, str]:
        return {k: v.reveal() if isinstance(v, Secret) else v for k, v in self._fields.items()}

    def __repr__(self) -> str:
        return f"_Form({sorted(self._fields)})"


# --- Client -------------------------------------------------------------------------------------


class FunnelbackClient:
    """Thread-safe client of one Funnelback admin API (one host)."""

    def __init__(self, settings: FunnelbackSettings, *, workers: int = 1, pool: Any = None) -> None:
        """`workers`: how many threads will share the client; unless `max_concurrency` is set, that
        many calls may be in flight (at least DEFAULT_MAX_CONCURRENCY): a cap below the run's own
        concurrency would only make `--concurrency` mean less than it says. `pool`: a urllib3
        PoolManager to send through instead of the one built from `settings` (fault injection)."""
        self._settings = settings
        self._api = settings.api
        self._base = settings.url.rstrip("/")
        self._retries = max(0, int(settings.retries))
        self._backoff_base = float(settings.backoff_base)
        self._backoff_max = float(settings.backoff_max)
        self._limiter = (TokenBucket(settings.max_requests_per_second, burst=1.0)
                         if settings.max_requests_per_second else None)
        in_flight = settings.max_concurrency or max(DEFAULT_MAX_CONCURRENCY, workers)
        self._inflight = ConcurrencyLimit(max(1, in_flight))
        self._transport = Transport(self._base, verify_tls=settings.verify_tls, ca_cert=settings.ca_cert,
                                    pool_size=in_flight,
                                    connect_timeout=float(settings.connect_timeout),
                                    read_timeout=float(settings.timeout), pool=pool)
        self._sleep = time.sleep
        # The rotator's own credential; the generation lets concurrent 401s trigger one refresh only.
        self._cred_lock = threading.Lock()
        self._cred: Secret | None = None
        self._cred_generation = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FunnelbackClient({self._base!r})"

    # --- identity -------------------------------------------------------------------------------

    def whoami(self) -> Identity:
        """Who the rotator's own credential is."""
        answer = self._request("GET", self._api.current_user, auth=SELF, idempotent=True)
        return _parse_identity(answer, "GET", self._api.current_user)

    def verify_token(self, value: Secret) -> Identity:
        """Prove `value` authenticates. 401 -> FunnelbackAuthError; never touches our own credential."""
        if not isinstance(value, Secret):
            raise TypeError("verify_token takes a Secret")
        answer = self._request("GET", self._api.current_user, auth=value, idempotent=True)
        return _parse_identity(answer, "GET", self._api.current_user)

    # --- client application tokens --------------------------------------------------------------

    def list_client_tokens(self, client: str) -> list[TokenInfo]:
        args = {"client": validate_name(client, "client id")}
        answer = self._request("GET", self._api.list_client_tokens, path_args=args, auth=SELF,
                               idempotent=True)
        return _parse_token_list(answer, "GET", _expand(self._api.list_client_tokens, args))

    def create_client_token(self, client: str, name: str) -> NewToken:
        args = {"client": validate_name(client, "client id"), "name": validate_name(name)}
        answer = self._request("PUT", self._api.create_client_token, path_args=args, auth=SELF,
                               idempotent=False)
        return self._new_token(answer, "PUT", _expand(self._api.create_client_token, args), name, client)

    def clone_client_token(self, client: str, source: str, new_name: str) -> NewToken:
        args = {"client": validate_name(client, "client id"), "name": validate_name(source)}
        validate_name(new_name)
        answer = self._request("POST", self._api.clone_client_token, path_args=args,
                               json_body={self._api.clone_name_field: new_name}, auth=SELF,
                               idempotent=False)
        return self._new_token(answer, "POST", _expand(self._api.clone_client_token, args), new_name,
                               client)

    def revoke_client_token(self, client: str, name: str) -> bool:
        """True if revoked now, False if there was no such token (already revoked: also done)."""
        args = {"client": validate_name(client, "client id"), "name": validate_name(name)}
        return self._revoke(self._api.revoke_client_token, args)

    # --- user application tokens ----------------------------------------------------------------

    def list_user_tokens(self) -> list[TokenInfo]:
        answer = self._request("GET", self._api.list_user_tokens, auth=SELF, idempotent=True)
        return _parse_token_list(answer, "GET", self._api.list_user_tokens)

    def create_user_token(self, name: str) -> NewToken:
        args = {"name": validate_name(name)}
        answer = self._request("PUT", self._api.create_user_token, path_args=args, auth=SELF,
                               idempotent=False)
        return self._new_token(answer, "PUT", _expand(self._api.create_user_token, args), name, None)

    def revoke_user_token(self, name: str) -> bool:
        return self._revoke(self._api.revoke_user_token, {"name": validate_name(name)})

    def _revoke(self, template: str, args: dict[str, str]) -> bool:
        # DELETE is idempotent: a retry after a lost answer sees 404, which is success too.
        try:
            self._request("DELETE", template, path_args=args, auth=SELF, idempotent=True)
        except FunnelbackNotFoundError:
            return False
        return True

    def _new_token(self, answer: _Answer, method: str, path: str, name: str,
                   client: str | None) -> NewToken:
        # The token exists on the server now; whatever we cannot read here leaves an orphan, so the
        # error says so and everything but the value itself is parsed leniently.
        orphan_hint = f"token {name!r} may exist on the server without a known value: revoke it"
        doc = _loads(answer.body)
        try:
            raw = extract_token_value(doc, answer.headers, self._api.token_field)
        except ValueError as exc:
            raise FunnelbackProtocolError(str(exc), method=method, path=path, status=answer.status,
                                          hint=orphan_hint) from None
        if raw is None:
            raise FunnelbackProtocolError(
                f"no token value in the answer (looked at {self._api.token_field!r}, 'token' and the "
                f"{TOKEN_HEADER} header)", method=method, path=path, status=answer.status,
                hint=orphan_hint + "; if the server puts it elsewhere set [funnelback.api] token_field")
        value = Secret(raw)
        if answer.sent_credential is not None and value == answer.sent_credential:
            # The header fallback must not mistake our own token, echoed back, for a new one.
            raise FunnelbackProtocolError("the answer's token is the caller's own credential",
                                          method=method, path=path, status=answer.status,
                                          hint=orphan_hint)
        data = doc.get("data") if isinstance(doc, dict) else None
        data = data if isinstance(data, dict) else (doc if isinstance(doc, dict) else {})
        client_id = data.get("clientId")
        try:
            created_at = _parse_time(data.get("createdAt"))
        except ValueError:
            created_at = None
        return NewToken(name=name, client_id=client_id if isinstance(client_id, str) else client,
                        value=value, created_at=created_at)

    # --- credential -----------------------------------------------------------------------------

    def _own_credential(self) -> tuple[Secret, int]:
        with self._cred_lock:
            if self._cred is None:
                self._cred = self._obtain_credential()
                self._cred_generation += 1
            return self._cred, self._cred_generation

    def _refresh_credential(self, used_generation: int) -> bool:
        """After a 401 with our credential: refresh it once. Returns whether a retry can help."""
        with self._cred_lock:
            if self._cred_generation != used_generation:
                return True  # another thread refreshed it meanwhile
            old = self._cred
            self._cred = None
            self._cred = self._obtain_credential()
            self._cred_generation += 1
            # A re-read token file that still holds the refused value: retrying would only 401 again.
            return self._cred != old

    def _obtain_credential(self) -> Secret:
        # An explicit token wins; it is re-read on each call (Kubernetes may have rotated the file).
        token = self._settings.resolve_token()
        if token is not None:
            return token
        if self._settings.username:
            return self._login()
        raise ConfigError("no credential for the Funnelback admin API", key="funnelback",
                          hint="set token_env, token_file, or username with password_env/password_file")

    def _login(self) -> Secret:
        password = self._settings.resolve_password()
        if password is None:
            raise ConfigError("username is set but no password reference", key="funnelback.password_env",
                              hint="set password_env or password_file")
        form = _Form({"username": self._settings.username or "", "password": password})
        path = self._api.login
        try:
            answer = self._request("POST", path, form=form, auth=None, idempotent=True, quiet=True)
        except FunnelbackAuthError:
            raise FunnelbackAuthError("login refused", method="POST", path=path, status=401,
                                      hint="check funnelback.username and the password reference") from None
        value = answer.headers.get(TOKEN_HEADER)
        if not value:
            raise FunnelbackProtocolError(f"login answered without a {TOKEN_HEADER} header",
                                          method="POST", path=path, status=answer.status)
        return Secret(value)

    # --- the chokepoint -------------------------------------------------------------------------

    def _request(self, method: str, path_template: str, *, path_args: Mapping[str, str] | None = None,
                 json_body: Any = None,
                 form: _Form | None = None, auth: Auth, idempotent: bool,
                 quiet: bool = False) -> _Answer:
        """Send one logical call, retrying what is safe to retry; return a 2xx answer or raise.

        `quiet` leaves the server's messages out of errors (login: they may echo what was sent).
        """
        path = _expand(path_template, path_args or {})
        url = self._base + path
        attempt = 0
        failures = 0          # transient failures so far, bounded by settings.retries
        refreshed = False     # our credential was refreshed once after a 401
        while True:
            attempt += 1
            credential, generation = self._credential_for(auth)
            result = self._send_once(method, url, path_template, attempt, credential=credential,
                                     json_body=json_body, form=form)
            if isinstance(result, Failure):
                if result.retryable and (idempotent or result.never_sent) and failures < self._retries:
                    failures += 1
                    self._sleep(self._backoff(failures, None))
                    continue
                raise self._failure_error(method, path, result, idempotent, attempt)
            status = result.status
            if 200 <= status < 300:
                return result
            if status == 401 and _is_self(auth) and not refreshed:
                refreshed = True
                if self._refresh_credential(generation):
                    continue
            if status == 429 or status >= 500:
                # 429 says the server did nothing: safe even for create/clone. A 5xx may have done it.
                if (status == 429 or idempotent) and failures < self._retries:
                    failures += 1
                    self._sleep(self._backoff(failures, _retry_after(result.headers)))
                    continue
                raise self._transient_status_error(method, path, result, idempotent, attempt, quiet)
            raise self._status_error(method, path, result, auth, quiet)

    def _credential_for(self, auth: Auth) -> tuple[Secret | None, int]:
        if _is_self(auth):
            return self._own_credential()
        if auth is None or isinstance(auth, Secret):
            return auth, 0
        raise TypeError("auth must be a Secret, None or 'self'")

    def _send_once(self, method: str, url: str, path_template: str, attempt: int, *,
                   credential: Secret | None, json_body: Any, form: _Form | None) -> _Answer | Failure:
        """One HTTP exchange under the rate limit and concurrency cap. Never raises for I/O."""
        headers = {"Accept": "application/json"}
        body: bytes | None = None
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(json_body).encode()
        elif form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = urlencode(form.reveal()).encode()
        if credential is not None:
            headers[TOKEN_HEADER] = credential.reveal()
        if self._limiter is not None:
            self._limiter.acquire()
        started = time.monotonic()
        with self._inflight:
            result = self._transport.send(method, url, headers=headers, body=body, limit=_MAX_BODY,
                                          error_limit=_MAX_ERROR_BODY)
        del headers, body
        if isinstance(result, Failure):
            _log_request(method, path_template, None, attempt, started, error=result.reason)
            return result
        _log_request(method, path_template, result.status, attempt, started)
        return _Answer(result.status, result.headers, result.body, credential)

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(0.0, retry_after), self._backoff_max)
        # Exponential backoff with full jitter, so many workers do not retry in lock-step.
        ceiling = min(self._backoff_max, self._backoff_base * (2 ** min(failures - 1, 30)))
        return random.uniform(0.0, ceiling)

    # --- error construction ---------------------------------------------------------------------

    def _failure_error(self, method: str, path: str, failure: Failure, idempotent: bool,
                       attempts: int) -> FunnelbackError:
        if not failure.retryable:
            return FunnelbackError(failure.reason, method=method, path=path, hint=failure.hint)
        if not idempotent and not failure.never_sent:
            return FunnelbackOutcomeUnknownError(
                f"{failure.reason}; the request may have taken effect, so it was not retried",
                method=method, path=path, hint="look for the token by name and revoke it if unused")
        return FunnelbackTransientError(f"{failure.reason} (gave up after {attempts} attempts)",
                                        method=method, path=path, hint=failure.hint)

    def _transient_status_error(self, method: str, path: str, answer: _Answer, idempotent: bool,
                                attempts: int, quiet: bool) -> FunnelbackError:
        detail = "" if quiet else _server_messages(answer.body)
        suffix = f": {detail}" if detail else ""
        if answer.status >= 500 and not idempotent:
            return FunnelbackOutcomeUnknownError(
                f"server error; the request may have taken effect, so it was not retried{suffix}",
                method=method, path=path, status=answer.status,
                hint="look for the token by name and revoke it if unused")
        what = "rate limited" if answer.status == 429 else "server error"
        return FunnelbackTransientError(f"{what} (gave up after {attempts} attempts){suffix}",
                                        method=method, path=path, status=answer.status)

    def _status_error(self, method: str, path: str, answer: _Answer, auth: Auth,
                      quiet: bool) -> FunnelbackError:
        status = answer.status
        detail = "" if quiet else _server_messages(answer.body)
        suffix = f": {detail}" if detail else ""
        where = {"method": method, "path": path, "status": status}
        if status == 401:
            hint = ("the rotator's own credential was refused: check token_env/token_file or the login"
                    if _is_self(auth) else "")
            return FunnelbackAuthError(f"token refused (unknown, revoked or expired){suffix}", **where,
                                       hint=hint)
        if status == 403:
            return FunnelbackPermissionError(
                f"permission denied{suffix}", **where,
                hint="managing tokens needs sec.application-token.non-expiring.create "
                     "(e.g. role default-super-user)")
        if status == 404:
            return FunnelbackNotFoundError(
                f"not found{suffix}", **where,
                hint="no such client or token, or this server uses other paths: see [funnelback.api]")
        if status == 409:
            return FunnelbackConflictError(f"a token of that name already exists{suffix}", **where)
        if 300 <= status < 400:
            return FunnelbackProtocolError("unexpected redirect (not followed)", **where,
                                           hint="check funnelback.url: it should be the final admin-api URL")
        return FunnelbackError(f"unexpected answer{suffix}", **where,
                               hint="the request was refused as invalid: see [funnelback.api]")


# --- helpers ------------------------------------------------------------------------------------


def validate_name(name: str, what: str = "token name") -> str:
    """Return `name` if it is a valid token/application name (or client id), else raise."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or not name.strip("."):
        # "." and ".." match the pattern but would be resolved as path segments by URL libraries.
        shown = scrub(repr(name))[:140] if isinstance(name, str) else type(name).__name__
        raise RotatorError(f"invalid {what} {shown}: use 1-128 of A-Z a-z 0-9 . _ - (not only dots)")
    return name


def _is_self(auth: Auth) -> bool:
    # Not `auth == SELF`: comparing a Secret with a str is best left undefined.
    return isinstance(auth, str) and auth == SELF


def _expand(template: str, args: Mapping[str, str]) -> str:
    path = template if template.startswith("/") else "/" + template
    for key, value in args.items():
        path = path.replace("{" + key + "}", quote(value, safe=""))
    if re.search(r"\{[A-Za-z_]+\}", path):
        raise ConfigError(f"path {template!r} has a placeholder this call cannot fill",
                          key="funnelback.api", hint="only {client} and {name} are known")
    return path


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if not raw:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: [[[[... nested too deep
        return None


def _json_or_error(answer: _Answer, method: str, path: str) -> Any:
    doc = _loads(answer.body)
    if doc is None:
        raise FunnelbackProtocolError("the answer is not JSON", method=method, path=path,
                                      status=answer.status)
    return doc


def _server_messages(body: bytes) -> str:
    """Funnelback's {"errors": [...]} as one short, scrubbed line; nothing for other bodies."""
    doc = _loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
        return ""
    text = "; ".join(str(e) for e in doc["errors"] if isinstance(e, (str, int, float)))
    text = " ".join(scrub(text).split())  # scrub before truncating, or a cut value would survive
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _dig(doc: Any, dotted: str) -> Any:
    node = doc
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def extract_token_value(doc: Any, headers: Mapping[str, str], field: str) -> str | None:
    """The new token's value: `field` (dotted) in the JSON, else top-level `token`, else the header.

    Returns None if none is present; raises ValueError if a field is present with a non-string value.
    """
    for dotted in (field, "token"):
        value = _dig(doc, dotted)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"field {dotted!r} does not hold a token string")
        return value
    header = headers.get(TOKEN_HEADER)
    return header if header else None


def _parse_time(value: Any) -> datetime | None:
    """RFC 3339 / ISO 8601 (with Z), or epoch seconds/milliseconds; None if absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("boolean timestamp")
    if isinstance(value, (int, float)):
        # Java servers often serialise Instants as epoch numbers; above 1e11 they are milliseconds.
        seconds = value / 1000.0 if value > 1e11 else float(value)
        return datetime.fromtimestamp(seconds, tz=UTC)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.strip())
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError(f"timestamp of type {type(value).__name__}")


def _token_info(item: Any) -> TokenInfo:
    if not isinstance(item, dict):
        raise ValueError("a token entry is not an object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("a token entry has no name")
    client_id = item.get("clientId")
    if client_id is not None and not isinstance(client_id, str):
        raise ValueError(f"token {name!r}: clientId is not a string")
    roles = item.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ValueError(f"token {name!r}: roles is not a list of strings")
    try:
        created_at = _parse_time(item.get("createdAt"))
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"token {name!r}: createdAt is not a timestamp") from None
    return TokenInfo(name=name, client_id=client_id, created_at=created_at, roles=tuple(roles))


def _parse_token_list(answer: _Answer, method: str, path: str) -> list[TokenInfo]:
    doc = _json_or_error(answer, method, path)
    items = doc.get("data") if isinstance(doc, dict) else doc
    try:
        if not isinstance(items, list):
            raise ValueError('expected {"data": [...]} or a list')
        return [_token_info(item) for item in items]
    except ValueError as exc:
        raise FunnelbackProtocolError(str(exc), method=method, path=path, status=answer.status) from None


def _parse_identity(answer: _Answer, method: str, path: str) -> Identity:
    doc = _json_or_error(answer, method, path)
    data = doc.get("data", doc) if isinstance(doc, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise FunnelbackProtocolError('expected {"data": {"name": ...}}', method=method, path=path,
                                      status=answer.status)
    kind, client_id = data.get("kind"), data.get("clientId")
    return Identity(name=data["name"], kind=kind if isinstance(kind, str) else None,
                    client_id=client_id if isinstance(client_id, str) else None)


def _log_request(method: str, path_template: str, status: int | None, attempt: int, started: float,
                 **extra: str) -> None:
    duration_ms = round((time.monotonic() - started) * 1000.0, 1)
    # A broken log sink must not fail the call: after a create it would lose the new value.
    with contextlib.suppress(Exception):
        log.debug("funnelback.request", method=method, path=path_template, status=status,
                  attempt=attempt, duration_ms=duration_ms, **extra)

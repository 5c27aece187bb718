"""HashiCorp Vault KV destinations (hvac).

Layout of one destination ``path`` (mount ``secret``, default ``journal_suffix = ".rotator"``)::

    secret/data/{path}                    what consumers read: the token JSON; each rotation is a new
                                          KV v2 version written with check-and-set (cas) on the
                                          version read, so a concurrent writer is detected, never
                                          overwritten. custom_metadata on secret/metadata/{path}
                                          records token_name, rotated_at, rotator_version, managed_by.
    secret/data/{path}.rotator-pending    the pending slot: the new token, durably stored before it
                                          is verified; written with cas; destroyed (metadata delete)
                                          once promoted or discarded.
    secret/data/{path}.rotator-journal    the target's journal (no secrets) when this destination
                                          is the journal home; every write is a cas on its version.

Why a sibling secret for the pending value, not a new version of ``path`` or its custom_metadata:
consumers read the latest version of ``path`` only, so a pending version there would be served
before it is verified; and custom_metadata is the wrong place for a token value: it is readable
with metadata-only permissions (``list``/``read`` on ``metadata/``, commonly granted to browse
secrets), it is not versioned and has no check-and-set, and its values are capped at 512
characters. A sibling is versioned, CAS-protected, access-controlled like a secret, and destroyed
outright once not needed. The price: the Vault policy must cover the prefix ``{path}*``::

    path "secret/data/apps/search-frontend/funnelback*"     { capabilities = ["create", "read", "update"] }
    path "secret/metadata/apps/search-frontend/funnelback*" { capabilities = ["read", "update", "delete"] }

KV v1 (``kv_version = 1``) has no versions and no check-and-set. The backend then does a
best-effort read-compare-write (the slot "version" is a short fingerprint of the JSON, compared just
before writing): a writer in between that window is not detected. rotator's one-rotation-at-a-time
guarantee then rests on the journal home (a target's first destination) being a KV v2 or AWS
destination; ``check()`` says so.

One hvac client per backend, shared by its destinations and by up to 32 threads: requests'
session is thread-safe for this use (its pool is sized for 32); logging in, renewing and re-reading
the token happen under one lock, with a generation counter so that 32 threads hitting an expired
token cause a single re-login. The token is renewed (renew-self) once 2/3 of its TTL has passed;
AppRole/Kubernetes log in again when renewal fails or stops extending; a 403 that means "this token
is no longer valid" triggers one re-login (``token`` auth: one re-read of the reference) and one
retry of the failed call. Every hvac/requests error is translated in ONE place (`_translate`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions as hx
import requests
import requests.adapters
from hvac import utils as hvac_utils

import rotator
from rotator.backends.base import (
    Backend,
    CheckResult,
    Destination,
    DestinationState,
    JournalRecord,
    Payload,
    Slot,
    format_time,
)
from rotator.config import BackendSettings, resolve_reference
from rotator.errors import (
    BackendAuthError,
    BackendConflictError,
    BackendDataError,
    BackendError,
    BackendPermissionError,
    BackendUnavailableError,
    ConfigError,
    SecretReferenceError,
)
from rotator.secret import Secret, scrub

T = TypeVar("T")

DEFAULT_MOUNT = "secret"
DEFAULT_SUFFIX = ".rotator"
DEFAULT_TIMEOUT = 10.0
DEFAULT_JWT_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
RENEW_AFTER = 2 / 3          # renew once this fraction of the TTL has passed
POOL_SIZE = 32               # threads that may share one backend
MAX_ERROR_TEXT = 300
METADATA_KEYS = ("token_name", "rotated_at", "rotator_version", "managed_by")


def _fingerprint(data: Mapping[str, Any]) -> str:
    """KV v1's stand-in for a version: a short digest of the canonical JSON (never the value)."""
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:20]


def _vault_text(exc: hx.VaultError) -> str:
    errors = exc.errors if isinstance(exc.errors, list) else ([exc.errors] if exc.errors else [])
    text = "; ".join(str(e) for e in errors) if errors else str(exc.args[0] if exc.args else "") or ""
    text = " ".join(text.replace("\t*", "").split())
    if len(text) > MAX_ERROR_TEXT:
        text = text[:MAX_ERROR_TEXT] + "..."
    return scrub(text or type(exc).__name__)


def _api_path(exc: hx.VaultError) -> str:
    url = exc.url or ""
    path = url.split("/v1/", 1)[1] if "/v1/" in url else ""
    method = (exc.method or "").upper()
    return f"{method} {path}".strip()


@dataclass(frozen=True)
class _Record:
    data: dict[str, Any] | None    # None: no live value (absent, deleted, destroyed)
    version: str | None            # KV v2 version (str) or KV v1 fingerprint; None: never written
    exists: bool


class VaultBackend(Backend):
    """[backends.NAME] type = "vault"."""

    def __init__(self, settings: BackendSettings, *, clock: Callable[[], float] | None = None) -> None:
        options = dict(settings.options)
        self.name = settings.name
        self.url = str(options["url"]).rstrip("/")
        self.mount = str(options.get("mount", DEFAULT_MOUNT)).strip("/")
        self.kv_version = int(options.get("kv_version", 2))
        self.namespace = options.get("namespace") or None
        self.journal_suffix = str(options.get("journal_suffix", DEFAULT_SUFFIX))
        self.timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
        self.auth = dict(options.get("auth") or {"method": "token", "token_env": "VAULT_TOKEN"})
        self.method = str(self.auth.get("method", "token"))
        verify: bool | str = options["ca_cert"] if options.get("ca_cert") else bool(options.get("verify", True))
        self._clock = clock or time.monotonic

        self._session = requests.Session()
        pool = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
        self._session.mount("http://", pool)
        self._session.mount("https://", pool)
        self._session.verify = verify
        # token="" (not None): hvac would otherwise pick up $VAULT_TOKEN or ~/.vault-token on its own.
        self._client = hvac.Client(url=self.url, token="", verify=verify, timeout=self.timeout,
                                   session=self._session, namespace=self.namespace)
        self._lock = threading.Lock()
        self._generation = 0          # bumped by every login / token change
        self._logged_in = False
        self._renewable = False
        self._login_ttl = 0.0
        self._expires_at: float | None = None
        self._renew_at: float | None = None

    def __repr__(self) -> str:
        return f"VaultBackend(name={self.name!r}, url={self.url!r}, method={self.method!r})"

    # -- Backend interface --

    def destination(self, options: Mapping[str, Any], *, target: str) -> VaultDestination:
        path = str(options.get("path", "")).strip("/")
        key = f"targets[{target}].destinations.path"
        if not path or any(part in ("", ".", "..") for part in path.split("/")):
            raise ConfigError(f"{path!r} is not a usable Vault path", key=key,
                              hint="e.g. path = \"apps/search-frontend/funnelback\" (no '.', '..' or '//')")
        mount = str(options.get("mount") or self.mount).strip("/")
        return VaultDestination(self, path=path, mount=mount)

    def check(self) -> list[CheckResult]:
        results = [self._check_health()]
        if not results[0].ok:
            return results
        try:
            info = self.call(lambda c: c.auth.token.lookup_self(), where=self.name, operation="lookup-self")
            data = info.get("data") or {}
            ttl = data.get("ttl") or 0
            policies = ", ".join(data.get("policies") or []) or "none"
            lifetime = f"ttl {int(ttl)}s{' renewable' if data.get('renewable') else ''}" if ttl else "no expiry"
            results.append(CheckResult(f"{self.name} auth", True,
                                       f"{self.method} auth works (policies: {policies}; {lifetime})"))
        except BackendPermissionError:
            # Authenticated, but the policy lacks the default policy's lookup-self: still a working login.
            results.append(CheckResult(f"{self.name} auth", True,
                                       f"{self.method} auth works (lookup-self not permitted by policy)"))
        except BackendError as exc:
            results.append(CheckResult(f"{self.name} auth", False, exc.one_line()))
        return results

    def close(self) -> None:
        self._session.close()

    def _check_health(self) -> CheckResult:
        # sys/health exists only in the root namespace: ask without the namespace header.
        name = f"{self.name} health"
        try:
            response = self._session.get(f"{self.url}/v1/sys/health", timeout=self.timeout,
                                         params={"standbyok": "true", "perfstandbyok": "true"},
                                         headers={"X-Vault-Request": "true"})
        except requests.RequestException as exc:
            error = self._translate(exc, where=self.name, operation="health")
            return CheckResult(name, False, error.one_line())
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if body.get("initialized") is False or response.status_code == 501:
            return CheckResult(name, False, f"Vault at {self.url} is not initialised")
        if body.get("sealed") or response.status_code == 503:
            return CheckResult(name, False, f"Vault at {self.url} is sealed (HTTP {response.status_code}); "
                                            "unseal it, then retry")
        if response.status_code >= 400:
            return CheckResult(name, False, f"Vault at {self.url} answered sys/health with HTTP {response.status_code}")
        version = body.get("version") or "unknown version"
        return CheckResult(name, True, f"Vault {version} at {self.url} is unsealed")

    # -- the one request chokepoint --

    def call(self, fn: Callable[[hvac.Client], T], *, where: str, operation: str, hint: str = "") -> T:
        """Run `fn(client)` with a fresh token; on a 403 meaning "token no longer valid", refresh the
        credential once and retry once. Every failure leaves as a rotator BackendError."""
        for attempt in (0, 1):
            generation = self._prepare(where)
            try:
                return fn(self._client)
            except hx.Forbidden as exc:
                if attempt == 0 and self._token_rejected(exc) and self._recover(generation, where):
                    continue
                raise self._translate(exc, where=where, operation=operation, hint=hint) from None
            except (hx.VaultError, requests.RequestException) as exc:
                raise self._translate(exc, where=where, operation=operation, hint=hint) from None
        raise AssertionError("unreachable")

    def _translate(self, exc: BaseException, *, where: str, operation: str, hint: str = "",
                   login: bool = False) -> BackendError:
        """hvac/requests exceptions -> rotator's BackendError family, in this one place. Messages carry
        the destination, the operation, the API path and Vault's error text (scrubbed), never a
        credential. `login`: a refusal of the login itself (400/401/403/404) is an auth error."""
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, SecretReferenceError):
            return BackendAuthError(str(exc), destination=where, operation=operation, hint=exc.hint)
        if isinstance(exc, hx.VaultError):
            text = _vault_text(exc)
            api = _api_path(exc)
            detail = f"{text} [{api}]" if api else text
            if login and isinstance(exc, (hx.InvalidRequest, hx.Forbidden, hx.Unauthorized, hx.InvalidPath)):
                return BackendAuthError(f"Vault refused the {self.method} login: {detail}", destination=where,
                                        operation=operation, hint=self._auth_hint())
            if isinstance(exc, hx.Forbidden):
                if self._token_rejected(exc):
                    return BackendAuthError(f"Vault rejected rotator's token (expired, revoked or invalid): {detail}",
                                            destination=where, operation=operation, hint=self._auth_hint())
                return BackendPermissionError(f"permission denied by Vault policy: {detail}", destination=where,
                                              operation=operation,
                                              hint=hint or "grant rotator's Vault policy the capabilities on this path")
            if isinstance(exc, hx.InvalidRequest):
                if "check-and-set" in text:
                    return BackendConflictError(f"another writer changed the secret since it was read "
                                                f"(check-and-set): {detail}", destination=where, operation=operation,
                                                hint="re-read and retry; another rotator or a person wrote it")
                return BackendError(f"Vault rejected the request: {detail}", destination=where, operation=operation)
            if isinstance(exc, hx.Unauthorized):
                return BackendAuthError(f"Vault refused the credential: {detail}", destination=where,
                                        operation=operation, hint=self._auth_hint())
            if isinstance(exc, hx.InvalidPath):
                return BackendError(f"not found: {detail}", destination=where, operation=operation,
                                    hint="check the mount, kv_version and namespace of this backend")
            if isinstance(exc, hx.VaultDown):
                return BackendUnavailableError(f"Vault is sealed or unavailable: {detail}", destination=where,
                                               operation=operation, hint="retry once Vault is unsealed")
            if isinstance(exc, hx.VaultNotInitialized):
                return BackendUnavailableError(f"Vault is not initialised: {detail}", destination=where,
                                               operation=operation)
            if isinstance(exc, (hx.InternalServerError, hx.BadGateway, hx.RateLimitExceeded, hx.UnexpectedError)):
                return BackendUnavailableError(f"Vault failed: {detail}", destination=where, operation=operation,
                                               hint="transient; retried on the next run")
            return BackendError(f"Vault error: {detail}", destination=where, operation=operation)
        if isinstance(exc, requests.exceptions.SSLError):
            return BackendUnavailableError(f"TLS handshake with {self.url} failed", destination=where,
                                           operation=operation, hint="check ca_cert / verify for this backend")
        if isinstance(exc, requests.exceptions.Timeout):
            return BackendUnavailableError(f"no answer from {self.url} within {self.timeout:g}s",
                                           destination=where, operation=operation,
                                           hint="Vault is slow or unreachable; raise timeout or retry later")
        if isinstance(exc, requests.exceptions.ConnectionError):
            return BackendUnavailableError(f"cannot reach Vault at {self.url} (connection failed or dropped)",
                                           destination=where, operation=operation,
                                           hint="check the url, network and that Vault is running")
        if isinstance(exc, requests.RequestException):
            return BackendUnavailableError(f"request to {self.url} failed: {type(exc).__name__}",
                                           destination=where, operation=operation)
        return BackendError(f"unexpected {type(exc).__name__}", destination=where, operation=operation)

    def _auth_hint(self) -> str:
        if self.method == "token":
            ref = self.auth.get("token_env") or self.auth.get("token_file")
            return f"provide a valid Vault token via {ref}"
        if self.method == "approle":
            return "check the AppRole role_id/secret_id references and the role's token TTLs"
        return "check the Kubernetes auth role, the service-account token file and the role's bindings"

    # -- credentials: login, renewal, recovery --

    def _token_rejected(self, exc: hx.VaultError) -> bool:
        """Does this 403 mean the token itself is no longer valid (rather than a policy denial)?
        Vault >= 1.12-ish says "invalid token"; older ones answer a bare "permission denied"."""
        text = _vault_text(exc)
        if "invalid token" in text or text.strip() == "permission denied":
            return True
        return self._expires_at is not None and self._clock() >= self._expires_at

    def _prepare(self, where: str) -> int:
        """Make sure a usable token is set; renew it past 2/3 of its TTL. Returns the generation."""
        now = self._clock()
        if self._logged_in and (self._renew_at is None or now < self._renew_at):
            return self._generation
        with self._lock:
            if not self._logged_in:
                self._login_locked(where)
            elif self._renew_at is not None and self._clock() >= self._renew_at:
                self._refresh_locked(where)
            return self._generation

    def _recover(self, generation: int, where: str) -> bool:
        """After a token rejection: True when a retry may succeed (a new token is in place)."""
        with self._lock:
            if generation != self._generation:
                return True           # another thread already logged in again
            if self.method == "token":
                fresh = self._resolve("token")
                if fresh.reveal() == self._client.token:
                    return False      # same token: retrying cannot help
                self._adopt_token_locked(fresh, where)
                return True
            self._login_locked(where)
            return True

    def _resolve(self, base: str) -> Secret:
        try:
            secret = resolve_reference(self.auth.get(f"{base}_env"), self.auth.get(f"{base}_file"),
                                       what=f"backends.{self.name}.auth.{base}")
        except SecretReferenceError as exc:
            raise BackendAuthError(str(exc), destination=self.name, operation="login", hint=exc.hint) from None
        if secret is None:
            raise BackendAuthError(f"no {base} reference configured", destination=self.name, operation="login",
                                   hint=f"set auth.{base}_env or auth.{base}_file")
        return secret

    def _set_lease(self, ttl: float, renewable: bool) -> None:
        now = self._clock()
        self._renewable = bool(renewable)
        if ttl and ttl > 0:
            self._expires_at = now + ttl
            self._renew_at = now + ttl * RENEW_AFTER
        else:
            self._expires_at = self._renew_at = None

    def _login_locked(self, where: str) -> None:
        operation = f"login ({self.method})"
        try:
            if self.method == "token":
                self._adopt_token_locked(self._resolve("token"), where)
                return
            mount = str(self.auth.get("mount") or self.method)
            if self.method == "approle":
                role_id = Secret(self.auth["role_id"]) if self.auth.get("role_id") else self._resolve("role_id")
                secret_id = self._resolve("secret_id")
                response = self._client.auth.approle.login(role_id=role_id.reveal(), secret_id=secret_id.reveal(),
                                                           mount_point=mount)
            elif self.method == "kubernetes":
                jwt_file = str(self.auth.get("jwt_file") or DEFAULT_JWT_FILE)
                try:
                    jwt = Secret(Path(jwt_file).read_text(encoding="utf-8").strip())
                except OSError as exc:
                    raise BackendAuthError(f"cannot read the service-account token {jwt_file}: "
                                           f"{exc.strerror or type(exc).__name__}", destination=where,
                                           operation=operation,
                                           hint="mount the service-account token or set auth.jwt_file") from None
                response = self._client.auth.kubernetes.login(role=str(self.auth.get("role")), jwt=jwt.reveal(),
                                                              mount_point=mount)
            else:
                raise BackendAuthError(f"unknown auth method {self.method!r}", destination=where, operation=operation)
        except (hx.VaultError, requests.RequestException) as exc:
            raise self._translate(exc, where=where, operation=operation, login=True) from None
        auth = response.get("auth") or {}
        self._login_ttl = float(auth.get("lease_duration") or 0)
        self._set_lease(self._login_ttl, bool(auth.get("renewable")))
        self._logged_in = True
        self._generation += 1

    def _adopt_token_locked(self, token: Secret, where: str) -> None:
        """`token` auth: use this token and learn its TTL (lookup-self) so it can be renewed."""
        self._client.token = token.reveal()
        self._logged_in = True
        self._generation += 1
        self._set_lease(0, False)
        try:
            data = self._client.auth.token.lookup_self().get("data") or {}
        except hx.Forbidden as exc:
            if self._token_rejected(exc):
                raise self._translate(exc, where=where, operation="login (token)", login=True) from None
            return                    # lookup-self not allowed by policy: no TTL tracking
        except (hx.VaultError, requests.RequestException) as exc:
            raise self._translate(exc, where=where, operation="login (token)") from None
        self._login_ttl = float(data.get("ttl") or 0)
        self._set_lease(self._login_ttl, bool(data.get("renewable")))

    def _refresh_locked(self, where: str) -> None:
        """Past 2/3 of the TTL: renew-self if renewable; log in again when renewal fails or no
        longer extends the token (max TTL reached); `token` auth re-reads its reference instead."""
        now = self._clock()
        if self._renewable:
            try:
                auth = self._client.auth.token.renew_self().get("auth") or {}
                lease = float(auth.get("lease_duration") or 0)
                if lease > 0 and (self.method == "token" or lease >= self._login_ttl / 3):
                    self._set_lease(lease, bool(auth.get("renewable", True)))
                    return
            except (hx.VaultError, requests.RequestException):
                pass
        if self.method != "token":
            self._login_locked(where)
            return
        try:
            fresh = self._resolve("token")
        except BackendAuthError:
            fresh = None
        if fresh is not None and fresh.reveal() != self._client.token:
            self._adopt_token_locked(fresh, where)
            return
        # Same token and it cannot be renewed: use it until it expires; do not ask again every call.
        remaining = (self._expires_at - now) if self._expires_at else 0
        self._renew_at = now + max(1.0, min(60.0, remaining / 2)) if remaining > 0 else None


class VaultDestination(Destination):
    """One KV secret; see the module docstring for the sibling records and the policy it needs."""

    def __init__(self, backend: VaultBackend, *, path: str, mount: str) -> None:
        self.backend = backend
        self.path = path
        self.mount = mount
        self.kv2 = backend.kv_version == 2
        self.pending_path = f"{path}{backend.journal_suffix}-pending"
        self.journal_path = f"{path}{backend.journal_suffix}-journal"
        self.label = f"{backend.name}:{path}"
        if self.kv2:
            self.policy_hint = (f'the policy needs path "{mount}/data/{path}*" {{ capabilities = ["create", "read", '
                                f'"update"] }} and path "{mount}/metadata/{path}*" {{ capabilities = ["read", '
                                f'"update", "delete"] }}')
        else:
            self.policy_hint = (f'the policy needs path "{mount}/{path}*" {{ capabilities = ["create", "read", '
                                f'"update", "delete"] }}')

    def __repr__(self) -> str:
        return f"VaultDestination({self.label!r}, mount={self.mount!r}, kv_version={2 if self.kv2 else 1})"

    # -- store primitives (KV v2 / KV v1) --

    def _call(self, fn: Callable[[hvac.Client], T], operation: str) -> T:
        return self.backend.call(fn, where=self.label, operation=operation, hint=self.policy_hint)

    def _get(self, path: str, operation: str) -> _Record:
        if not self.kv2:
            body = self._call(lambda c: _none_if_missing(lambda: c.secrets.kv.v1.read_secret(
                path=path, mount_point=self.mount)), operation)
            data = _data_object(body.get("data") if body else None, self.label, operation)
            return _Record(data, _fingerprint(data) if data is not None else None, data is not None)
        body = self._call(lambda c: _none_if_missing(lambda: c.secrets.kv.v2.read_secret_version(
            path=path, mount_point=self.mount, raise_on_deleted_version=False)), operation)
        if body:
            inner = body.get("data") or {}
            version = (inner.get("metadata") or {}).get("version")
            data = _data_object(inner.get("data"), self.label, operation)   # None: latest soft-deleted
            return _Record(data, str(version) if version else None, True)
        # Absent, destroyed latest version, or metadata without versions: the metadata has the version.
        meta = self._call(lambda c: _none_if_missing(lambda: c.secrets.kv.v2.read_secret_metadata(
            path=path, mount_point=self.mount)), operation)
        if not meta:
            return _Record(None, None, False)
        current = (meta.get("data") or {}).get("current_version") or 0
        return _Record(None, str(current) if current else None, True)

    def _put(self, path: str, data: dict[str, Any], expected: str | None, operation: str) -> str:
        """Write `data` if the record is still at `expected`; BackendConflictError otherwise."""
        if self.kv2:
            try:
                cas = int(expected) if expected else 0
            except ValueError:
                raise BackendConflictError(f"version {expected!r} is not a KV v2 version", destination=self.label,
                                           operation=operation) from None
            body = self._call(lambda c: c.secrets.kv.v2.create_or_update_secret(
                path=path, secret=data, cas=cas, mount_point=self.mount), operation)
            return str(body["data"]["version"])
        # KV v1: no check-and-set exists; compare just before writing (best effort, see module docs).
        current = self._get(path, operation)
        if current.version != expected:
            raise BackendConflictError("the secret changed since it was read (KV v1 read-compare-write)",
                                       destination=self.label, operation=operation,
                                       hint="re-read and retry; another rotator or a person wrote it")
        self._call(lambda c: c.secrets.kv.v1.create_or_update_secret(
            path=path, secret=data, method="PUT", mount_point=self.mount), operation)
        return _fingerprint(data)

    def _clear_pending(self, expected: Secret | None, operation: str) -> None:
        """Remove the pending record for good (idempotent) -- but never a pending value holding a
        token other than `expected`: that value may be live on Funnelback and exist nowhere else."""
        record = self._get(self.pending_path, operation)
        if record.data:
            held = Payload.from_dict(record.data, where=self.label)
            if held is not None and (expected is None or held.token != expected):
                raise BackendConflictError("the pending slot holds another token than the one read; left in place",
                                           destination=self.label, operation=operation,
                                           hint="another rotation wrote it; re-read and resume that rotation first")
        elif not record.exists:
            return
        if not self.kv2:
            self._call(lambda c: c.secrets.kv.v1.delete_secret(path=self.pending_path, mount_point=self.mount),
                       operation)
            return
        try:
            # Deleting the metadata destroys every version: the token value is gone, not recoverable.
            self._call(lambda c: c.secrets.kv.v2.delete_metadata_and_all_versions(
                path=self.pending_path, mount_point=self.mount), operation)
        except BackendPermissionError:
            # No `delete` on metadata/: overwrite with an empty tombstone (cas) and destroy the older
            # versions if the policy allows; the slot then reads as empty either way.
            if not record.data:
                return
            version = self._put(self.pending_path, {}, record.version, operation)
            older = list(range(1, int(version)))
            if older:
                try:
                    self._call(lambda c: c.secrets.kv.v2.destroy_secret_versions(
                        path=self.pending_path, versions=older, mount_point=self.mount), operation)
                except BackendPermissionError:
                    pass

    def _set_rotation_metadata(self, payload: Payload) -> None:
        """Record the rotation in custom_metadata, keeping the keys users put there.

        POST metadata replaces custom_metadata as a whole (and hvac's update_metadata would also
        reset delete_version_after), so: read, merge, post only custom_metadata. A policy without
        `update` on metadata/ does not fail the promotion (the value is what matters); check() warns.
        """
        operation = "set custom_metadata"
        try:
            meta = self._call(lambda c: c.secrets.kv.v2.read_secret_metadata(
                path=self.path, mount_point=self.mount), operation)
            existing = dict((meta.get("data") or {}).get("custom_metadata") or {})
            merged = dict(existing)
            merged.update({"token_name": payload.token_name or "",
                           "rotated_at": format_time(payload.rotated_at) if payload.rotated_at else "",
                           "rotator_version": rotator.__version__, "managed_by": "rotator"})
            if merged == existing:
                return
            url = hvac_utils.format_url("/v1/{mount}/metadata/{path}", mount=self.mount, path=self.path)
            self._call(lambda c: c.adapter.post(url=url, json={"custom_metadata": merged}), operation)
        except BackendPermissionError:
            _log_warning("vault_custom_metadata_denied", destination=self.label)

    # -- Destination interface --

    def read(self) -> DestinationState:
        main = self._get(self.path, "read")
        pending = self._get(self.pending_path, "read pending")
        current = Slot(Payload.from_dict(main.data, where=self.label) if main.data else None, main.version)
        waiting = Slot(Payload.from_dict(pending.data, where=self.label) if pending.data else None, pending.version)
        return DestinationState(current=current, pending=waiting, exists=main.exists)

    def write_pending(self, payload: Payload, state: DestinationState) -> DestinationState:
        if state.pending.payload is not None and _same(state.pending.payload, payload):
            return state
        body = payload.to_dict()
        try:
            version = self._put(self.pending_path, body, state.pending.version, "write pending")
        except BackendConflictError:
            fresh = self._get(self.pending_path, "write pending")
            if fresh.data is not None and fresh.data == body:   # our own earlier write (answer lost)
                return replace(state, pending=Slot(payload, fresh.version))
            raise
        return replace(state, pending=Slot(payload, version))

    def promote(self, payload: Payload, state: DestinationState) -> None:
        if not payload.same_token(state.current.payload):
            try:
                self._put(self.path, payload.to_dict(), state.current.version, "promote")
            except BackendConflictError:
                fresh = self._get(self.path, "promote")
                live = Payload.from_dict(fresh.data, where=self.label) if fresh.data else None
                if not payload.same_token(live):
                    raise
                # An earlier promote of this very token succeeded (its answer was lost): carry on.
        if self.kv2:
            self._set_rotation_metadata(payload)
        self._clear_pending(payload.token, "clear pending")

    def discard_pending(self, state: DestinationState) -> None:
        known = state.pending.payload
        self._clear_pending(known.token if known else None, "discard pending")

    def read_journal(self) -> JournalRecord:
        record = self._get(self.journal_path, "read journal")
        if record.data is None:
            return JournalRecord(data={}, version=record.version)
        return JournalRecord(data=record.data, version=record.version)

    def write_journal(self, data: Mapping[str, Any], expected: JournalRecord) -> JournalRecord:
        try:
            body = json.loads(json.dumps(dict(data)))
        except (TypeError, ValueError) as exc:
            raise BackendDataError(f"journal is not JSON: {exc}", destination=self.label,
                                   operation="write journal") from None
        try:
            version = self._put(self.journal_path, body, expected.version, "write journal")
        except BackendConflictError:
            fresh = self._get(self.journal_path, "write journal")
            if fresh.data is not None and fresh.data == body:   # our own earlier write (answer lost)
                return JournalRecord(data=body, version=fresh.version)
            raise
        return JournalRecord(data=body, version=version)

    def check(self, *, write: bool) -> list[CheckResult]:
        results: list[CheckResult] = []
        try:
            state = self.read()
        except BackendPermissionError as exc:
            return [CheckResult(f"{self.label} read", False, f"read denied: {exc.one_line()}")]
        except BackendError as exc:
            return [CheckResult(f"{self.label} read", False, exc.one_line())]
        if not state.exists:
            detail = "does not exist yet (rotator will create it)"
        elif state.current.payload is None:
            detail = "exists but holds no token (a rotation will write one)"
        else:
            name = state.current.payload.token_name or "unnamed token"
            detail = f"readable; holds {name}" + (f" (version {state.current.version})" if self.kv2 else "")
        results.append(CheckResult(f"{self.label} read", True, detail))
        if write:
            results.append(self._check_write(state))
        if not self.kv2:
            results.append(CheckResult(
                f"{self.label} check-and-set", True,
                "KV v1 has no check-and-set: writes are best-effort read-compare-write; keep this "
                "target's first destination (journal home) on KV v2 or AWS for one-rotation-at-a-time"))
        return results

    def _check_write(self, state: DestinationState) -> CheckResult:
        name = f"{self.label} write"
        if self.kv2:
            main, pending, journal = (f"{self.mount}/data/{p}" for p in (self.path, self.pending_path, self.journal_path))
            meta_main, meta_pending = (f"{self.mount}/metadata/{p}" for p in (self.path, self.pending_path))
            paths = [main, pending, journal, meta_main, meta_pending]
        else:
            main, pending, journal = (f"{self.mount}/{p}" for p in (self.path, self.pending_path, self.journal_path))
            paths = [main, pending, journal]
        try:
            answer = self._call(lambda c: c.sys.get_capabilities(paths=paths), "check capabilities")
        except BackendError as exc:
            return CheckResult(name, False, f"cannot ask Vault whether writing is allowed "
                                            f"(sys/capabilities-self): {exc.one_line()}")
        data = answer.get("data") or answer

        def caps(path: str) -> set[str]:
            granted = set(data.get(path) or [])
            return {"create", "read", "update", "delete", "list", "patch"} if "root" in granted else granted

        needed = {main: {"read", "update" if state.exists else "create"},
                  pending: {"create", "read", "update"}, journal: {"create", "read", "update"}}
        if not self.kv2:
            needed[pending].add("delete")
        missing = [f"{p} ({', '.join(sorted(n - caps(p)))})" for p, n in needed.items() if not n <= caps(p)]
        if missing:
            return CheckResult(name, False, f"the token may not write: missing {'; '.join(missing)}; {self.policy_hint}")
        warnings = []
        if self.kv2:
            if not {"read", "update"} <= caps(meta_main):
                warnings.append(f"no read/update on {meta_main}: custom_metadata will not be recorded")
            if "delete" not in caps(meta_pending):
                warnings.append(f"no delete on {meta_pending}: pending values are tombstoned, not destroyed")
        detail = "may write the secret, its pending and journal records (asked sys/capabilities-self; nothing written)"
        return CheckResult(name, True, detail + ("; warning: " + "; ".join(warnings) if warnings else ""))


# --- helpers ---------------------------------------------------------------------------------------


def _none_if_missing(fn: Callable[[], T]) -> T | None:
    """404 on a read means "no such secret" -- unless Vault says the mount itself is missing."""
    try:
        return fn()
    except hx.InvalidPath as exc:
        if "no handler for route" in _vault_text(exc):
            raise
        return None


def _data_object(data: Any, where: str, operation: str) -> dict[str, Any] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise BackendDataError("the secret's data is not a JSON object", destination=where, operation=operation)
    return data


def _same(a: Payload, b: Payload) -> bool:
    return a.to_dict() == b.to_dict()


def _log_warning(event: str, **fields: Any) -> None:
    try:
        import structlog
    except ImportError:  # pragma: no cover - structlog is a runtime dependency
        return
    structlog.get_logger("rotator.backends.vault").warning(event, **fields)

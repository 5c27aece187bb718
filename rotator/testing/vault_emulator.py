"""A HashiCorp Vault emulator speaking the HTTP API the way hvac uses it.

It is a real HTTP server (stdlib, 127.0.0.1, any port) so tests exercise hvac, requests and the
socket exactly as production does. It follows Vault's published API documentation for what rotator
(and its tests) touch:

- envelopes ``{"request_id", "lease_id", "renewable", "lease_duration", "data", "wrap_info",
  "warnings", "auth"}``; errors ``{"errors": [...]}``; 204 without a body where Vault sends none;
  ``Content-Type: application/json`` exactly (hvac only parses errors with that exact type);
- ``sys/health`` (200 active, 503 sealed, 501 uninitialised, ``*code`` query overrides) and
  ``sys/seal-status``; while sealed every other call answers 503 ``Vault is sealed``;
- tokens (``X-Vault-Token``) with TTLs that expire, ``auth/token/lookup-self``, ``renew-self``
  (capped by the max TTL, with Vault's warning), ``revoke-self``, ``create``;
  an invalid/expired token gets 403 ``2 errors occurred: permission denied, invalid token``;
- AppRole login (``invalid role or secret ID`` -> 400) and Kubernetes login. **The Kubernetes
  login does not verify JWT signatures** nor call a TokenReview API: a role is configured with the
  exact JWT strings it accepts. Unknown role -> 400 ``invalid role name "x"``; JWT not accepted
  -> 403 ``permission denied``. Auth methods can be mounted at custom paths;
- ACL policies (HCL or JSON, also via ``sys/policy`` and ``sys/policies/acl``) with ``*`` globs
  and ``+`` segment wildcards, Vault's priority rules between matching paths, the capabilities
  create/read/update/delete/list/patch/sudo/deny and the built-in ``default`` policy; a missing
  capability -> 403 ``1 error occurred: permission denied``; ``sys/capabilities-self``;
- KV v2 (``data``, ``metadata``, ``delete``, ``undelete``, ``destroy``, ``config``): versions,
  ``cas`` / ``cas_required``, soft-deleted and destroyed versions (404 *with* the version metadata,
  as Vault does), ``custom_metadata``, ``max_versions`` trimming, LIST, merge-patch;
- KV v1 mounts; ``sys/mounts`` to enable either;
- namespaces: ``X-Vault-Namespace`` and/or a path prefix, resolved by longest existing prefix as
  Vault Enterprise does (so an unknown namespace leaves the request in the parent, where nothing is
  mounted at ``nope/secret/...``: 404 ``no handler for route``, or 403 for a non-root token); each
  namespace has its own mounts, policies and auth roles; a token works in its namespace and below,
  and a parent's policy reaches a child through the ``child/`` prefix; ``sys/health`` exists only in
  the root namespace (404 with a namespace header).

Deliberate simplifications: no leases/dynamic secrets, no response wrapping, no identity entities,
no ``delete_version_after`` expiry, no batch tokens; ``sudo`` is only checked where a test asks.

Fault injection, shaped like the Funnelback emulator's: ``emulator.faults.add(kind=..., path=regex,
method=..., times=N)`` makes the next N matching calls answer a status, wait, hang, reset the
connection or lose the answer (perform the operation, then drop the connection without responding).
In process mode the same is reachable over ``/_emulator/faults`` (POST/GET/DELETE), plus
``/_emulator/seal``, ``unseal``, ``advance`` (clock), ``approle/{role}``, ``kubernetes/{role}``,
``calls``: unauthenticated test-only control endpoints outside ``/v1``.

In process::

    with VaultEmulator(root_token="root") as vault:
        vault.add_policy("rotator", {"secret/data/apps/*": ["create", "read", "update"]})
        token = vault.create_token(policies=["rotator"], ttl=60)

As a process: ``python -m rotator.testing.vault_emulator --port 0 --root-token T --state-file F``
prints one JSON line ``{"url": ...}`` once listening. With ``--state-file`` the whole state is
saved atomically (mode 0600) after every change and loaded at start.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rotator.testing.faults import FAULT_KINDS, Fault, FaultSet, hang  # noqa: F401 - re-exported
from urllib.parse import parse_qs, unquote, urlsplit

# Vault's defaults: 768h default and max lease TTL, 10 versions kept by KV v2.
SYSTEM_MAX_TTL = 768 * 3600
DEFAULT_MAX_VERSIONS = 10
KV1_LEASE_DURATION = 768 * 3600
EMULATED_VERSION = "1.17.0+emulator"
CONTROL_PREFIX = "/_emulator"

PERMISSION_DENIED = "1 error occurred:\n\t* permission denied\n\n"
INVALID_TOKEN = "2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"
CAS_MISMATCH = "check-and-set parameter did not match the current version"
CAS_REQUIRED = "check-and-set parameter required for this call"
CAPABILITIES = ("create", "read", "update", "delete", "list", "patch", "sudo", "deny")

# Vault's built-in "default" policy, reduced to the paths a client library calls.
DEFAULT_POLICY_RULES = {
    "auth/token/lookup-self": ["read"],
    "auth/token/renew-self": ["update"],
    "auth/token/revoke-self": ["update"],
    "sys/capabilities-self": ["update"],
    "sys/internal/ui/resultant-acl": ["read"],
}


# --- small helpers ---------------------------------------------------------------------------


def rfc3339(moment: float) -> str:
    """Go's RFC3339Nano as Vault emits it: nanoseconds with trailing zeros trimmed, 'Z'."""
    nanos_total = round(moment * 1_000_000_000)
    seconds, nanos = divmod(nanos_total, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(value: Any) -> int:
    """Vault accepts an integer of seconds or a Go duration string ('90s', '1h30m')."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise ApiError(400, f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ApiError(400, f"time: invalid duration \"{text}\"")
    return int(total)


def parse_policy(text: str) -> dict[str, list[str]]:
    """Policy text (HCL or JSON) -> {path pattern: capabilities}. Only `path` stanzas matter here."""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    rules: dict[str, list[str]] = {}
    if isinstance(doc, dict):
        paths = doc.get("path", {})
        if isinstance(paths, list):  # HCL-in-JSON may give a list of single-key objects
            merged: dict[str, Any] = {}
            for item in paths:
                merged.update(item)
            paths = merged
        for pattern, body in paths.items():
            if isinstance(body, list):
                body = body[0] if body else {}
            rules[pattern] = list(body.get("capabilities", []))
    else:
        stripped = re.sub(r"(?m)^\s*(#|//).*$", "", text)
        for match in re.finditer(r'path\s+"([^"]+)"\s*\{(.*?)\}', stripped, re.DOTALL):
            caps = re.search(r"capabilities\s*=\s*\[(.*?)\]", match.group(2), re.DOTALL)
            rules[match.group(1)] = re.findall(r'"([^"]+)"', caps.group(1)) if caps else []
    for pattern, caps in rules.items():
        unknown = [c for c in caps if c not in CAPABILITIES]
        if unknown:
            raise ApiError(400, f"failed to parse policy: path {pattern!r}: invalid capability {unknown[0]!r}")
    return rules


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    glob = pattern.endswith("*")
    body = pattern[:-1] if glob else pattern
    parts = ["[^/]+" if part == "+" else re.escape(part) for part in body.split("/")]
    return re.compile("^" + "/".join(parts) + (".*" if glob else "") + "$")


def _priority(pattern: str) -> tuple[int, int, int, int, str]:
    """Vault's rules: a later first wildcard wins, then no trailing '*', fewer '+', longer, larger."""
    positions = [i for i in (pattern.find("+"), pattern.find("*")) if i >= 0]
    first_wildcard = min(positions) if positions else len(pattern) + 1
    return (first_wildcard, 0 if pattern.endswith("*") else 1, -pattern.count("+"), len(pattern), pattern)


def capabilities_for(rules_list: Iterable[Mapping[str, list[str]]], path: str) -> list[str]:
    """The capabilities a set of policies grants on `path` (Vault: the highest-priority matching
    pattern wins; identical patterns from several policies merge; deny overrides)."""
    merged: dict[str, set[str]] = {}
    for rules in rules_list:
        for pattern, caps in rules.items():
            if _pattern_regex(pattern).match(path):
                merged.setdefault(pattern, set()).update(caps)
    if not merged:
        return ["deny"]
    best = max(merged, key=_priority)
    caps = merged[best]
    if "deny" in caps or not caps:
        return ["deny"]
    return sorted(caps)


class ApiError(Exception):
    """An error answer: status and Vault's `errors` list (or a full body, e.g. a 404 with data)."""

    def __init__(self, status: int, *errors: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(errors[0] if errors else str(status))
        self.status = status
        self.errors = list(errors)
        self.body = body






@dataclass
class _Request:
    method: str
    raw_path: str            # API path as sent, without /v1/
    path: str                # relative to the resolved namespace, no surrounding slashes
    namespace: str
    query: dict[str, str]
    body: dict[str, Any]
    token: str | None
    content_type: str
    is_list: bool = False
    trailing_slash: bool = False
    token_info: dict[str, Any] | None = field(default=None, repr=False)


def _empty_namespace(kv_mounts: Mapping[str, int] | None = None) -> dict[str, Any]:
    ns: dict[str, Any] = {"policies": {}, "mounts": {}, "auth": {"token": {"type": "token"}}}
    for name, version in (kv_mounts or {}).items():
        ns["mounts"][name] = _new_mount(version)
    return ns


def _new_mount(version: int, *, cas_required: bool = False, max_versions: int = 0) -> dict[str, Any]:
    if version == 2:
        return {"type": "kv", "version": 2, "accessor": "kv_" + secrets.token_hex(4),
                "config": {"max_versions": max_versions, "cas_required": cas_required,
                           "delete_version_after": "0s"},
                "keys": {}}
    return {"type": "kv", "version": 1, "accessor": "kv_" + secrets.token_hex(4), "data": {}}


# --- the emulator ----------------------------------------------------------------------------


class VaultEmulator:
    """In-process Vault. `start()` / `stop()` (or a `with` block); `.url`, `.root_token`."""

    def __init__(self, *, root_token: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 state_file: str | None = None, kv_mounts: Mapping[str, int] | None = None) -> None:
        self.host = host
        self.port = port
        self.state_file = state_file
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self.faults = FaultSet()
        self.requests: deque[dict[str, Any]] = deque(maxlen=5000)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        loaded = self._load() if state_file else None
        if loaded is not None:
            self._state = loaded
        else:
            self._state = {"sealed": False, "initialized": True, "clock_offset": 0.0,
                           "cluster_id": str(uuid.uuid4()), "tokens": {},
                           "namespaces": {"": _empty_namespace(kv_mounts if kv_mounts is not None
                                                               else {"secret": 2})}}
        self.root_token = root_token or self._state.get("root_token") or "hvs.root-" + secrets.token_urlsafe(12)
        self._state["root_token"] = self.root_token
        if self.root_token not in self._state["tokens"]:
            self._state["tokens"][self.root_token] = self._token_record(
                namespace="", policies=["root"], ttl=0, renewable=False, path="auth/token/root",
                display_name="root", orphan=True)
        self._save()

    # -- lifecycle --

    @property
    def url(self) -> str:
        if not self._server:
            raise RuntimeError("the emulator is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> VaultEmulator:
        self._stopping.clear()
        self._server = _Server((self.host, self.port), _Handler)
        self._server.emulator = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="vault-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        server, self._server = self._server, None
        if server:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> VaultEmulator:  # noqa: PYI034 - start() returns self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clock --

    def now(self) -> float:
        return time.time() + self._state["clock_offset"]

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward (token expiry) without sleeping."""
        with self._lock:
            self._state["clock_offset"] += seconds
            self._save()

    # -- switches and faults --

    @property
    def sealed(self) -> bool:
        return self._state["sealed"]

    def seal(self) -> None:
        with self._lock:
            self._state["sealed"] = True
            self._save()

    def unseal(self) -> None:
        with self._lock:
            self._state["sealed"] = False
            self._save()

    def set_initialized(self, initialized: bool) -> None:
        with self._lock:
            self._state["initialized"] = initialized
            self._save()

    def calls(self, method: str | None = None, path: str = ".*") -> list[dict[str, Any]]:
        """API requests seen ({method, path, namespace, status}); `path` is a regex searched in the
        path without /v1/ (e.g. r"^auth/approle/login$")."""
        regex = re.compile(path)
        with self._lock:
            return [dict(r) for r in self.requests
                    if (method is None or r["method"] == method.upper()) and regex.search(r["path"])]

    # -- setup helpers (tests) --

    def _ns(self, namespace: str = "") -> dict[str, Any]:
        key = namespace.strip("/")
        try:
            return self._state["namespaces"][key]
        except KeyError:
            raise KeyError(f"no namespace {namespace!r}; add_namespace() first") from None

    def add_namespace(self, path: str, *, kv_mounts: Mapping[str, int] | None = None) -> None:
        """A namespace (nested as "a/b"); unlike real Vault it gets a KV v2 mount "secret" by default."""
        with self._lock:
            key = path.strip("/")
            parent = key.rpartition("/")[0]
            if parent and parent not in self._state["namespaces"]:
                raise KeyError(f"parent namespace {parent!r} does not exist")
            self._state["namespaces"].setdefault(key, _empty_namespace(kv_mounts if kv_mounts is not None
                                                                      else {"secret": 2}))
            self._save()

    def add_mount(self, path: str, *, version: int = 2, namespace: str = "", cas_required: bool = False,
                  max_versions: int = 0) -> None:
        with self._lock:
            self._ns(namespace)["mounts"][path.strip("/")] = _new_mount(
                version, cas_required=cas_required, max_versions=max_versions)
            self._save()

    def add_policy(self, name: str, rules: Mapping[str, Iterable[str]] | str, *, namespace: str = "") -> None:
        """`rules` is {path pattern: capabilities} or policy text (HCL/JSON)."""
        with self._lock:
            if isinstance(rules, str):
                text, parsed = rules, parse_policy(rules)
            else:
                parsed = {p: list(c) for p, c in rules.items()}
                text = json.dumps({"path": {p: {"capabilities": c} for p, c in parsed.items()}})
            self._ns(namespace)["policies"][name] = {"text": text, "rules": parsed}
            self._save()

    def create_token(self, *, policies: Iterable[str] = (), ttl: float | str = SYSTEM_MAX_TTL,
                     renewable: bool = True, explicit_max_ttl: float | str = 0, namespace: str = "",
                     no_default_policy: bool = False, token: str | None = None) -> str:
        with self._lock:
            self._ns(namespace)
            pols = sorted(set(policies) | (set() if no_default_policy else {"default"}))
            record = self._token_record(namespace=namespace.strip("/"), policies=pols, ttl=parse_ttl(ttl),
                                        renewable=renewable, explicit_max_ttl=parse_ttl(explicit_max_ttl),
                                        path="auth/token/create")
            token_id = token or self._new_token_id()
            self._state["tokens"][token_id] = record
            self._save()
            return token_id

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._state["tokens"].pop(token, None)
            self._save()

    def expire_token(self, token: str) -> None:
        """Make a token expire now (as if its TTL ran out)."""
        with self._lock:
            record = self._state["tokens"].get(token)
            if record:
                record["expire_at"] = self.now() - 1
                self._save()

    def token_info(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._state["tokens"].get(token)
            return copy.deepcopy(record) if record else None

    def add_approle(self, role_name: str, *, policies: Iterable[str] = (), role_id: str | None = None,
                    secret_id: str | None = None, token_ttl: float | str = SYSTEM_MAX_TTL,
                    token_max_ttl: float | str = 0, mount: str = "approle",
                    namespace: str = "") -> tuple[str, str]:
        """An AppRole role; returns (role_id, secret_id). More secret IDs: add_approle_secret_id()."""
        with self._lock:
            auth = self._auth_mount(namespace, mount, "approle")
            role_id = role_id or str(uuid.uuid4())
            secret_id = secret_id or str(uuid.uuid4())
            auth["roles"][role_name] = {"role_id": role_id, "secret_ids": [secret_id],
                                        "policies": sorted(set(policies)), "token_ttl": parse_ttl(token_ttl),
                                        "token_max_ttl": parse_ttl(token_max_ttl)}
            self._save()
            return role_id, secret_id

    def add_approle_secret_id(self, role_name: str, *, mount: str = "approle", namespace: str = "") -> str:
        with self._lock:
            secret_id = str(uuid.uuid4())
            self._auth_mount(namespace, mount, "approle")["roles"][role_name]["secret_ids"].append(secret_id)
            self._save()
            return secret_id

    def add_kubernetes_role(self, role: str, *, jwts: Iterable[str], policies: Iterable[str] = (),
                            token_ttl: float | str = SYSTEM_MAX_TTL, token_max_ttl: float | str = 0,
                            mount: str = "kubernetes", namespace: str = "") -> None:
        """A Kubernetes auth role accepting exactly these JWT strings (signatures are NOT verified)."""
        with self._lock:
            auth = self._auth_mount(namespace, mount, "kubernetes")
            auth["roles"][role] = {"jwts": list(jwts), "policies": sorted(set(policies)),
                                   "token_ttl": parse_ttl(token_ttl), "token_max_ttl": parse_ttl(token_max_ttl)}
            self._save()

    def _auth_mount(self, namespace: str, mount: str, kind: str) -> dict[str, Any]:
        mounts = self._ns(namespace)["auth"]
        entry = mounts.setdefault(mount.strip("/"), {"type": kind, "roles": {}})
        if entry["type"] != kind:
            raise ValueError(f"auth mount {mount!r} is a {entry['type']} mount")
        return entry

    def read_secret(self, path: str, *, mount: str = "secret", namespace: str = "",
                    version: int | None = None) -> dict[str, Any] | None:
        """The data a consumer would read (None when absent, deleted or destroyed). KV v1 or v2."""
        with self._lock:
            m = self._ns(namespace)["mounts"][mount]
            if m["version"] == 1:
                data = m["data"].get(path.strip("/"))
                return copy.deepcopy(data)
            rec = m["keys"].get(path.strip("/"))
            if not rec:
                return None
            ver = rec["versions"].get(str(version or rec["meta"]["current_version"]))
            if not ver or ver["deletion_time"] or ver["destroyed"]:
                return None
            return copy.deepcopy(ver["data"])

    def read_metadata(self, path: str, *, mount: str = "secret", namespace: str = "") -> dict[str, Any] | None:
        with self._lock:
            rec = self._ns(namespace)["mounts"][mount]["keys"].get(path.strip("/"))
            return self._metadata_view(rec) if rec else None

    def write_secret(self, path: str, data: Mapping[str, Any], *, mount: str = "secret",
                     namespace: str = "") -> int:
        """Write as root would (no CAS); returns the new version (0 for KV v1)."""
        with self._lock:
            m = self._ns(namespace)["mounts"][mount]
            if m["version"] == 1:
                m["data"][path.strip("/")] = dict(data)
                self._save()
                return 0
            version = self._kv2_put(m, path.strip("/"), dict(data))
            self._save()
            return version

    def list_keys(self, *, mount: str = "secret", namespace: str = "") -> list[str]:
        with self._lock:
            m = self._ns(namespace)["mounts"][mount]
            return sorted(m["keys"] if m["version"] == 2 else m["data"])

    # -- control endpoints (process mode; unauthenticated, test-only) --

    def _control(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, Any] | None]:
        """``/_emulator/...``: faults (POST/GET/DELETE), seal, unseal, advance {"seconds"},
        approle/{role} {"policies", "role_id"?, "secret_id"?, "token_ttl"?, "token_max_ttl"?, "mount"?},
        kubernetes/{role} {"jwts", "policies", "token_ttl"?, "mount"?}, calls (GET)."""
        try:
            doc = json.loads(raw) if raw.strip() else {}
            path = path.strip("/")
            if path == "faults":
                if method == "POST":
                    return 200, {"fault": self.faults.add(**doc).to_json()}
                if method == "GET":
                    return 200, {"faults": [f.to_json() for f in self.faults.list()]}
                if method == "DELETE":
                    return 200, {"cleared": self.faults.clear()}
            elif path in ("seal", "unseal") and method == "POST":
                self.seal() if path == "seal" else self.unseal()
                return 204, None
            elif path == "advance" and method == "POST":
                self.advance(float(doc.get("seconds", 0)))
                return 204, None
            elif path == "calls" and method == "GET":
                return 200, {"calls": self.calls()}
            elif path.startswith("approle/") and method == "POST":
                role_id, secret_id = self.add_approle(path.split("/", 1)[1], **doc)
                return 200, {"role_id": role_id, "secret_id": secret_id}
            elif path.startswith("kubernetes/") and method == "POST":
                self.add_kubernetes_role(path.split("/", 1)[1], **doc)
                return 204, None
        except (TypeError, ValueError, KeyError) as exc:
            return 400, {"errors": [str(exc)]}
        return 404, {"errors": ["unknown control endpoint"]}

    # -- persistence --

    def _load(self) -> dict[str, Any] | None:
        try:
            with open(self.state_file, encoding="utf-8") as handle:  # type: ignore[arg-type]
                text = handle.read()
        except FileNotFoundError:
            return None
        return json.loads(text) if text.strip() else None

    def _save(self) -> None:
        if not self.state_file:
            return
        with self._lock:
            text = json.dumps(self._state, sort_keys=True)
            directory = os.path.dirname(os.path.abspath(self.state_file))
            tmp = os.path.join(directory, f".{os.path.basename(self.state_file)}.{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.state_file)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise

    # -- tokens --

    @staticmethod
    def _new_token_id() -> str:
        return "hvs." + secrets.token_urlsafe(18)

    def _token_record(self, *, namespace: str, policies: list[str], ttl: int, renewable: bool,
                      path: str, explicit_max_ttl: int = 0, display_name: str = "token",
                      meta: dict[str, str] | None = None, orphan: bool = False) -> dict[str, Any]:
        now = self.now()
        max_ttl = explicit_max_ttl or (SYSTEM_MAX_TTL if ttl else 0)
        if ttl and max_ttl:
            ttl = min(ttl, max_ttl)
        return {"accessor": secrets.token_urlsafe(18), "namespace": namespace, "policies": policies,
                "creation_time": now, "creation_ttl": ttl, "issue_time": now,
                "expire_at": now + ttl if ttl else None,
                "max_expire_at": now + max_ttl if max_ttl else None,
                "explicit_max_ttl": explicit_max_ttl, "renewable": bool(renewable and ttl),
                "path": path, "display_name": display_name, "meta": meta, "orphan": orphan}

    def _auth_block(self, token_id: str, record: dict[str, Any], metadata: dict[str, str] | None) -> dict[str, Any]:
        ttl = self._remaining(record)
        return {"client_token": token_id, "accessor": record["accessor"], "policies": record["policies"],
                "token_policies": record["policies"], "metadata": metadata, "lease_duration": ttl,
                "renewable": record["renewable"], "entity_id": "", "token_type": "service",
                "orphan": record["orphan"], "mfa_requirement": None, "num_uses": 0}

    def _remaining(self, record: dict[str, Any]) -> int:
        if record["expire_at"] is None:
            return 0
        return max(0, round(record["expire_at"] - self.now()))

    def _issue_login_token(self, namespace: str, role: dict[str, Any], path: str,
                           metadata: dict[str, str]) -> dict[str, Any]:
        record = self._token_record(namespace=namespace, policies=sorted(set(role["policies"]) | {"default"}),
                                    ttl=role["token_ttl"] or SYSTEM_MAX_TTL, renewable=True, path=path,
                                    explicit_max_ttl=role["token_max_ttl"], display_name=path.split("/")[1],
                                    meta=metadata, orphan=True)
        token_id = self._new_token_id()
        self._state["tokens"][token_id] = record
        return _envelope(auth=self._auth_block(token_id, record, metadata))

    def _authenticate(self, req: _Request) -> dict[str, Any]:
        if not req.token:
            raise ApiError(403, "permission denied")
        record = self._state["tokens"].get(req.token)
        if record is not None and record["expire_at"] is not None and record["expire_at"] <= self.now():
            del self._state["tokens"][req.token]
            record = None
        if record is None:
            raise ApiError(403, INVALID_TOKEN)
        token_ns = record["namespace"]
        if token_ns and req.namespace != token_ns and not req.namespace.startswith(token_ns + "/"):
            raise ApiError(403, INVALID_TOKEN)   # the token does not exist in that namespace
        return record

    # -- ACL --

    def _acl_path(self, req: _Request, path: str) -> str:
        token_ns = req.token_info["namespace"] if req.token_info else ""
        relative = req.namespace[len(token_ns):].strip("/")
        return f"{relative}/{path}" if relative else path

    def _capabilities(self, req: _Request, path: str) -> list[str]:
        record = req.token_info
        assert record is not None
        if "root" in record["policies"]:
            return ["root"]
        ns = self._state["namespaces"].get(record["namespace"], {"policies": {}})
        rules = []
        for name in record["policies"]:
            if name == "default":
                rules.append(DEFAULT_POLICY_RULES)
            if name in ns["policies"]:
                rules.append(ns["policies"][name]["rules"])
        return capabilities_for(rules, self._acl_path(req, path))

    def _require(self, req: _Request, capability: str, path: str) -> None:
        caps = self._capabilities(req, path)
        if "root" in caps:
            return
        if capability not in caps:
            raise ApiError(403, PERMISSION_DENIED)

    # -- dispatch --

    def handle(self, req: _Request) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            try:
                status, body = self._dispatch(req)
            except ApiError as exc:
                status, body = exc.status, exc.body if exc.body is not None else {"errors": exc.errors}
            if req.method not in ("GET", "HEAD", "LIST"):
                self._save()
            self.requests.append({"method": "LIST" if req.is_list else req.method, "path": req.raw_path, "namespace": req.namespace,
                                  "status": status, "time": time.time()})
            return status, body

    def resolve_namespace(self, header: str, raw_path: str) -> tuple[str, str]:
        combined = "/".join(p for p in (header.strip("/"), raw_path.strip("/")) if p)
        segments = combined.split("/") if combined else []
        namespaces = self._state["namespaces"]
        for i in range(len(segments) - 1, 0, -1):
            candidate = "/".join(segments[:i])
            if candidate in namespaces:
                return candidate, "/".join(segments[i:])
        return "", combined

    def _dispatch(self, req: _Request) -> tuple[int, dict[str, Any] | None]:
        path = req.path
        if path == "sys/health":
            return self._health(req)
        if path == "sys/seal-status":
            return 200, self._seal_status()
        if self._state["sealed"] or not self._state["initialized"]:
            raise ApiError(503, "Vault is sealed")
        ns = self._state["namespaces"][req.namespace]
        if path.startswith("auth/") and path.endswith("/login") and req.method in ("POST", "PUT"):
            mount = path[len("auth/"):-len("/login")]
            if mount in ns["auth"] and ns["auth"][mount]["type"] != "token":
                return self._login(req, mount, ns["auth"][mount])
        req.token_info = self._authenticate(req)
        if path.startswith("auth/token/"):
            return self._token_endpoint(req, path[len("auth/token/"):])
        if path.startswith("sys/"):
            return self._sys(req, path[len("sys/"):])
        mount_name = self._find_mount(ns, path)
        if mount_name is None:
            self._require(req, _natural_capability(req), path)
            raise ApiError(404, f"no handler for route \"{path}\". route entry not found.")
        mount = ns["mounts"][mount_name]
        rest = path[len(mount_name):].strip("/")
        if mount["version"] == 2:
            return self._kv2(req, mount_name, mount, rest)
        return self._kv1(req, mount_name, mount, rest)

    @staticmethod
    def _find_mount(ns: dict[str, Any], path: str) -> str | None:
        best = None
        for name in ns["mounts"]:
            if (path == name or path.startswith(name + "/")) and (best is None or len(name) > len(best)):
                best = name
        return best

    # -- sys --

    def _health(self, req: _Request) -> tuple[int, dict[str, Any] | None]:
        if req.namespace:
            raise ApiError(404, "unsupported path")
        state = self._state
        query = req.query

        def code(name: str, default: int) -> int:
            try:
                return int(query[name]) if name in query else default
            except ValueError:
                return default
        if not state["initialized"]:
            status = code("uninitcode", 501)
        elif state["sealed"]:
            status = code("sealedcode", 503)
        else:
            status = code("activecode", 200)
        body = {"initialized": state["initialized"], "sealed": state["sealed"] or not state["initialized"],
                "standby": False, "performance_standby": False, "replication_performance_mode": "disabled",
                "replication_dr_mode": "disabled", "server_time_utc": int(self.now()),
                "version": EMULATED_VERSION, "enterprise": False, "cluster_name": "vault-emulator",
                "cluster_id": state["cluster_id"], "echo_duration_ms": 0, "clock_skew_ms": 0}
        return status, (None if req.method == "HEAD" else body)

    def _seal_status(self) -> dict[str, Any]:
        state = self._state
        return {"type": "shamir", "initialized": state["initialized"], "sealed": state["sealed"], "t": 1,
                "n": 1, "progress": 0, "nonce": "", "version": EMULATED_VERSION, "build_date": "",
                "migration": False, "recovery_seal": False, "storage_type": "inmem",
                "cluster_name": "vault-emulator", "cluster_id": state["cluster_id"]}

    def _sys(self, req: _Request, rest: str) -> tuple[int, dict[str, Any] | None]:
        ns = self._state["namespaces"][req.namespace]
        if rest == "capabilities-self" and req.method in ("POST", "PUT"):
            self._require(req, "update", "sys/capabilities-self")
            paths = req.body.get("paths") or ([req.body["path"]] if req.body.get("path") else [])
            if isinstance(paths, str):
                paths = [p for p in paths.split(",") if p]
            if not paths:
                raise ApiError(400, "paths must be supplied")
            data: dict[str, Any] = {}
            for p in paths:
                data[p] = self._capabilities(req, p.strip("/"))
            if len(paths) == 1:
                data["capabilities"] = data[paths[0]]
            return 200, _envelope(data=data, top=data)
        for prefix in ("policy", "policies/acl"):
            if rest == prefix or rest.startswith(prefix + "/"):
                return self._sys_policy(req, ns, prefix, rest[len(prefix):].strip("/"))
        if rest == "mounts" and req.method == "GET":
            self._require(req, "read", "sys/mounts")
            data = {f"{name}/": {"type": "kv", "accessor": m["accessor"], "options": {"version": str(m["version"])},
                                 "config": {}, "description": "", "local": False, "seal_wrap": False}
                    for name, m in ns["mounts"].items()}
            return 200, _envelope(data=data, top=data)
        if rest.startswith("mounts/"):
            name = rest[len("mounts/"):].strip("/")
            if req.method in ("POST", "PUT"):
                self._require(req, "update" if name in ns["mounts"] else "create", f"sys/mounts/{name}")
                kind = req.body.get("type")
                options = req.body.get("options") or {}
                if kind == "kv-v2":
                    version = 2
                elif kind in ("kv", "generic"):
                    version = int(str(options.get("version", "1")) or 1)
                else:
                    raise ApiError(400, f"plugin not found in the catalog: {kind}")
                if name in ns["mounts"]:
                    raise ApiError(400, f"path is already in use at {name}/")
                ns["mounts"][name] = _new_mount(version)
                return 204, None
            if req.method == "DELETE":
                self._require(req, "delete", f"sys/mounts/{name}")
                ns["mounts"].pop(name, None)
                return 204, None
        if rest == "namespaces" or rest.startswith("namespaces/"):
            return self._sys_namespaces(req, rest[len("namespaces"):].strip("/"))
        self._require(req, _natural_capability(req), f"sys/{rest}")
        raise ApiError(404, f"no handler for route \"sys/{rest}\". route entry not found.")

    def _sys_policy(self, req: _Request, ns: dict[str, Any], prefix: str, name: str) -> tuple[int, dict[str, Any] | None]:
        acl = f"sys/{prefix}/{name}" if name else f"sys/{prefix}"
        if not name:
            if req.method in ("GET", "LIST"):
                self._require(req, "list" if req.is_list else "read", acl)
                names = sorted(set(ns["policies"]) | {"default"} | ({"root"} if not req.namespace else set()))
                data = {"keys": names, "policies": names}
                return 200, _envelope(data=data, top=data)
            raise ApiError(405, "unsupported operation")
        if req.method == "GET":
            self._require(req, "read", acl)
            if name == "default":
                text = json.dumps({"path": {p: {"capabilities": c} for p, c in DEFAULT_POLICY_RULES.items()}})
            elif name in ns["policies"]:
                text = ns["policies"][name]["text"]
            else:
                raise ApiError(404, body={"errors": []})
            data = {"name": name, "rules": text, "policy": text}
            return 200, _envelope(data=data, top=data)
        if req.method in ("POST", "PUT"):
            self._require(req, "update" if name in ns["policies"] else "create", acl)
            if name in ("root", "default"):
                raise ApiError(400, f"cannot update {name} policy")
            text = req.body.get("policy") or req.body.get("rules")
            if not isinstance(text, str) or not text.strip():
                raise ApiError(400, "'policy' parameter not supplied or empty")
            ns["policies"][name] = {"text": text, "rules": parse_policy(text)}
            return 204, None
        if req.method == "DELETE":
            self._require(req, "delete", acl)
            if name in ("root", "default"):
                raise ApiError(400, f"cannot delete {name} policy")
            ns["policies"].pop(name, None)
            return 204, None
        raise ApiError(405, "unsupported operation")

    def _sys_namespaces(self, req: _Request, name: str) -> tuple[int, dict[str, Any] | None]:
        acl = f"sys/namespaces/{name}" if name else "sys/namespaces"
        namespaces = self._state["namespaces"]
        full = "/".join(p for p in (req.namespace, name) if p)
        if req.is_list or (req.method == "GET" and not name):
            self._require(req, "list", acl + "/")
            prefix = req.namespace + "/" if req.namespace else ""
            keys = sorted(k[len(prefix):] + "/" for k in namespaces
                          if k and k.startswith(prefix) and "/" not in k[len(prefix):])
            if not keys:
                raise ApiError(404, body={"errors": []})
            return 200, _envelope(data={"keys": keys, "key_info": {k: {"path": prefix + k} for k in keys}})
        if req.method == "GET":
            self._require(req, "read", acl)
            if full not in namespaces:
                raise ApiError(404, body={"errors": []})
            return 200, _envelope(data={"id": full, "path": full + "/", "custom_metadata": {}})
        if req.method in ("POST", "PUT"):
            self._require(req, "update" if full in namespaces else "create", acl)
            namespaces.setdefault(full, _empty_namespace({}))
            return 200, _envelope(data={"id": full, "path": full + "/", "custom_metadata": {}})
        if req.method == "DELETE":
            self._require(req, "delete", acl)
            for key in [k for k in namespaces if k == full or k.startswith(full + "/")]:
                del namespaces[key]
            return 204, None
        raise ApiError(405, "unsupported operation")

    # -- auth --

    def _login(self, req: _Request, mount: str, auth: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = req.body
        path = f"auth/{mount}/login"
        if auth["type"] == "approle":
            role_id = body.get("role_id")
            if not role_id:
                raise ApiError(400, "missing role_id")
            secret_id = body.get("secret_id")
            for name, role in auth["roles"].items():
                if secrets.compare_digest(str(role["role_id"]), str(role_id)):
                    if secret_id and any(secrets.compare_digest(str(s), str(secret_id)) for s in role["secret_ids"]):
                        return 200, self._issue_login_token(req.namespace, role, path, {"role_name": name})
                    break
            raise ApiError(400, "invalid role or secret ID")
        if auth["type"] == "kubernetes":
            name = body.get("role")
            if not name:
                raise ApiError(400, "missing role")
            jwt = body.get("jwt")
            if not jwt:
                raise ApiError(400, "missing jwt")
            role = auth["roles"].get(name)
            if role is None:
                raise ApiError(400, f"invalid role name \"{name}\"")
            if not any(secrets.compare_digest(str(j), str(jwt)) for j in role["jwts"]):
                raise ApiError(403, "permission denied")
            return 200, self._issue_login_token(req.namespace, role, path, {"role": name})
        raise ApiError(404, f"no handler for route \"{path}\". route entry not found.")

    def _token_endpoint(self, req: _Request, op: str) -> tuple[int, dict[str, Any] | None]:
        record = req.token_info
        assert record is not None and req.token is not None
        if op == "lookup-self" and req.method in ("GET", "POST", "PUT"):
            self._require(req, "read" if req.method == "GET" else "update", "auth/token/lookup-self")
            return 200, _envelope(data=self._lookup_view(req.token, record))
        if op == "renew-self" and req.method in ("POST", "PUT"):
            self._require(req, "update", "auth/token/renew-self")
            if not record["renewable"] or record["expire_at"] is None:
                raise ApiError(400, "lease is not renewable")
            increment = parse_ttl(req.body.get("increment")) or record["creation_ttl"]
            now = self.now()
            warnings = None
            ttl = increment
            if record["max_expire_at"] is not None and now + ttl > record["max_expire_at"]:
                capped = max(0, round(record["max_expire_at"] - now))
                warnings = [(f"TTL of \"{ttl}s\" exceeded the effective max_ttl of \"{capped}s\"; "
                             "TTL value is capped accordingly")]
                ttl = capped
            record["expire_at"] = now + ttl
            return 200, _envelope(auth=self._auth_block(req.token, record, record.get("meta")), warnings=warnings)
        if op == "revoke-self" and req.method in ("POST", "PUT"):
            self._require(req, "update", "auth/token/revoke-self")
            self._state["tokens"].pop(req.token, None)
            return 204, None
        if op in ("create", "create-orphan") and req.method in ("POST", "PUT"):
            self._require(req, "update", f"auth/token/{op}")
            body = req.body
            is_root = "root" in record["policies"]
            wanted = body.get("policies")
            policies = set(wanted if wanted is not None else record["policies"])
            if not body.get("no_default_policy") and "root" not in policies:
                policies.add("default")
            if not is_root and not policies <= set(record["policies"]) | {"default"}:
                raise ApiError(400, "child policies must be subset of parent")
            ttl = parse_ttl(body.get("ttl")) or (SYSTEM_MAX_TTL if not is_root or policies != {"root"} else 0)
            new = self._token_record(namespace=req.namespace, policies=sorted(policies), ttl=ttl,
                                     renewable=body.get("renewable", True) is not False,
                                     explicit_max_ttl=parse_ttl(body.get("explicit_max_ttl")),
                                     path=f"auth/token/{op}", display_name="token-" + str(body.get("display_name") or ""),
                                     meta=body.get("meta"), orphan=op == "create-orphan" or bool(body.get("no_parent")))
            token_id = body.get("id") if is_root and body.get("id") else self._new_token_id()
            self._state["tokens"][token_id] = new
            return 200, _envelope(auth=self._auth_block(token_id, new, new.get("meta")))
        self._require(req, _natural_capability(req), f"auth/token/{op}")
        raise ApiError(404, f"no handler for route \"auth/token/{op}\". route entry not found.")

    def _lookup_view(self, token_id: str, record: dict[str, Any]) -> dict[str, Any]:
        return {"accessor": record["accessor"], "creation_time": int(record["creation_time"]),
                "creation_ttl": record["creation_ttl"], "display_name": record["display_name"],
                "entity_id": "", "expire_time": rfc3339(record["expire_at"]) if record["expire_at"] else None,
                "explicit_max_ttl": record["explicit_max_ttl"], "id": token_id,
                "issue_time": rfc3339(record["issue_time"]), "meta": record.get("meta"), "num_uses": 0,
                "orphan": record["orphan"], "path": record["path"], "policies": record["policies"],
                "renewable": record["renewable"], "ttl": self._remaining(record), "type": "service",
                "namespace_path": record["namespace"] + "/" if record["namespace"] else ""}

    # -- KV v2 --

    def _kv2(self, req: _Request, mount_name: str, mount: dict[str, Any], rest: str) -> tuple[int, dict[str, Any] | None]:
        section, _, key = rest.partition("/")
        key = key.strip("/")
        keys = mount["keys"]
        m = req.method
        if section == "config":
            if m == "GET":
                self._require(req, "read", f"{mount_name}/config")
                return 200, _envelope(data=dict(mount["config"]))
            if m in ("POST", "PUT"):
                self._require(req, "update", f"{mount_name}/config")
                cfg = mount["config"]
                if "max_versions" in req.body:
                    cfg["max_versions"] = int(req.body["max_versions"])
                if "cas_required" in req.body:
                    cfg["cas_required"] = _boolean(req.body["cas_required"])
                if "delete_version_after" in req.body:
                    cfg["delete_version_after"] = str(req.body["delete_version_after"])
                return 204, None
        elif section == "data" and key:
            acl = f"{mount_name}/data/{key}"
            rec = keys.get(key)
            if m == "GET" and not req.is_list:
                self._require(req, "read", acl)
                if not rec:
                    raise ApiError(404, body={"errors": []})
                version = int(req.query.get("version") or 0) or rec["meta"]["current_version"]
                ver = rec["versions"].get(str(version))
                if not ver:
                    raise ApiError(404, body={"errors": []})
                view = self._version_view(rec, version)
                if ver["deletion_time"] or ver["destroyed"]:
                    raise ApiError(404, body=_envelope(data={"data": None, "metadata": view}, mount_type="kv"))
                return 200, _envelope(data={"data": copy.deepcopy(ver["data"]), "metadata": view}, mount_type="kv")
            if m in ("POST", "PUT"):
                self._require(req, "update" if rec else "create", acl)
                data = req.body.get("data")
                if not isinstance(data, dict):
                    raise ApiError(400, "no data provided")
                self._check_cas(mount, rec, req.body.get("options"))
                version = self._kv2_put(mount, key, data)
                return 200, _envelope(data=self._version_view(keys[key], version), mount_type="kv")
            if m == "PATCH":
                self._require(req, "patch", acl)
                if req.content_type.split(";")[0].strip() != "application/merge-patch+json":
                    raise ApiError(415, f"Unsupported Content-Type=\"{req.content_type}\"")
                current = rec and rec["versions"].get(str(rec["meta"]["current_version"]))
                if not current or current["deletion_time"] or current["destroyed"]:
                    raise ApiError(404, body={"errors": []})
                patch = req.body.get("data")
                if not isinstance(patch, dict):
                    raise ApiError(400, "no data provided")
                self._check_cas(mount, rec, req.body.get("options"), required_ok=True)
                version = self._kv2_put(mount, key, _merge_patch(current["data"], patch))
                return 200, _envelope(data=self._version_view(keys[key], version), mount_type="kv")
            if m == "DELETE":
                self._require(req, "delete", acl)
                if rec:
                    ver = rec["versions"].get(str(rec["meta"]["current_version"]))
                    if ver and not ver["deletion_time"] and not ver["destroyed"]:
                        ver["deletion_time"] = self.now()
                        rec["meta"]["updated_time"] = self.now()
                return 204, None
        elif section in ("delete", "undelete", "destroy") and key and m in ("POST", "PUT"):
            self._require(req, "update", f"{mount_name}/{section}/{key}")
            versions = req.body.get("versions")
            if not versions:
                raise ApiError(400, "no version number provided")
            rec = keys.get(key)
            if rec:
                for v in versions:
                    ver = rec["versions"].get(str(int(v)))
                    if not ver:
                        continue
                    if section == "delete" and not ver["deletion_time"] and not ver["destroyed"]:
                        ver["deletion_time"] = self.now()
                    elif section == "undelete" and not ver["destroyed"]:
                        ver["deletion_time"] = 0
                    elif section == "destroy":
                        ver["destroyed"] = True
                        ver["data"] = None
                rec["meta"]["updated_time"] = self.now()
            return 204, None
        elif section == "metadata":
            acl = f"{mount_name}/metadata/{key}" if key else f"{mount_name}/metadata"
            rec = keys.get(key) if key else None
            if req.is_list:
                self._require(req, "list", acl.rstrip("/") + "/")
                return self._list(keys.keys(), key)
            if m == "GET" and key:
                self._require(req, "read", acl)
                if not rec:
                    raise ApiError(404, body={"errors": []})
                return 200, _envelope(data=self._metadata_view(rec))
            if m in ("POST", "PUT") and key:
                self._require(req, "update" if rec else "create", acl)
                custom = _custom_metadata(req.body["custom_metadata"]) if "custom_metadata" in req.body else None
                if rec is None:
                    rec = keys[key] = self._new_key_record()
                meta = rec["meta"]
                if "max_versions" in req.body:
                    meta["max_versions"] = int(req.body["max_versions"])
                if "cas_required" in req.body:
                    meta["cas_required"] = _boolean(req.body["cas_required"])
                if "delete_version_after" in req.body:
                    meta["delete_version_after"] = str(req.body["delete_version_after"])
                if "custom_metadata" in req.body:
                    meta["custom_metadata"] = custom
                meta["updated_time"] = self.now()
                return 204, None
            if m == "PATCH" and key:
                self._require(req, "patch", acl)
                if not rec:
                    raise ApiError(404, body={"errors": []})
                meta = rec["meta"]
                if "custom_metadata" in req.body:
                    merged = dict(meta["custom_metadata"] or {})
                    for k, v in (req.body["custom_metadata"] or {}).items():
                        if v is None:
                            merged.pop(k, None)
                        else:
                            merged[k] = v
                    meta["custom_metadata"] = _custom_metadata(merged)
                for name in ("max_versions", "cas_required", "delete_version_after"):
                    if name in req.body:
                        meta[name] = req.body[name]
                meta["updated_time"] = self.now()
                return 204, None
            if m == "DELETE" and key:
                self._require(req, "delete", acl)
                keys.pop(key, None)
                return 204, None
        elif section == "subkeys" and key and m == "GET":
            self._require(req, "read", f"{mount_name}/subkeys/{key}")
            rec = keys.get(key)
            ver = rec and rec["versions"].get(str(rec["meta"]["current_version"]))
            if not ver or ver["deletion_time"] or ver["destroyed"]:
                raise ApiError(404, body={"errors": []})
            return 200, _envelope(data={"subkeys": _subkeys(ver["data"]),
                                        "metadata": self._version_view(rec, rec["meta"]["current_version"])})
        self._require(req, _natural_capability(req), f"{mount_name}/{rest}")
        raise ApiError(405 if section in ("data", "metadata", "config") else 404,
                       "unsupported operation" if section in ("data", "metadata", "config")
                       else f"no handler for route \"{mount_name}/{rest}\". route entry not found.")

    def _check_cas(self, mount: dict[str, Any], rec: dict[str, Any] | None, options: Any,
                   required_ok: bool = False) -> None:
        options = options if isinstance(options, dict) else {}
        current = rec["meta"]["current_version"] if rec else 0
        required = mount["config"]["cas_required"] or bool(rec and rec["meta"]["cas_required"])
        if "cas" not in options or options["cas"] is None:
            if required and not required_ok:
                raise ApiError(400, CAS_REQUIRED)
            return
        try:
            cas = int(options["cas"])
        except (TypeError, ValueError):
            raise ApiError(400, "error parsing cas: invalid syntax") from None
        if cas != current:
            raise ApiError(400, CAS_MISMATCH)

    def _new_key_record(self) -> dict[str, Any]:
        now = self.now()
        return {"meta": {"created_time": now, "updated_time": now, "current_version": 0, "oldest_version": 0,
                         "max_versions": 0, "cas_required": False, "delete_version_after": "0s",
                         "custom_metadata": None},
                "versions": {}}

    def _kv2_put(self, mount: dict[str, Any], key: str, data: dict[str, Any]) -> int:
        rec = mount["keys"].get(key)
        if rec is None:
            rec = mount["keys"][key] = self._new_key_record()
        meta = rec["meta"]
        now = self.now()
        version = meta["current_version"] + 1
        rec["versions"][str(version)] = {"created_time": now, "deletion_time": 0, "destroyed": False,
                                         "data": copy.deepcopy(data)}
        meta["current_version"] = version
        meta["updated_time"] = now
        if meta["oldest_version"] == 0:
            meta["oldest_version"] = version
        keep = meta["max_versions"] or mount["config"]["max_versions"] or DEFAULT_MAX_VERSIONS
        existing = sorted(int(v) for v in rec["versions"])
        while len(existing) > keep:
            del rec["versions"][str(existing.pop(0))]
        meta["oldest_version"] = existing[0] if existing else 0
        return version

    def _version_view(self, rec: dict[str, Any], version: int) -> dict[str, Any]:
        ver = rec["versions"][str(version)]
        return {"created_time": rfc3339(ver["created_time"]),
                "custom_metadata": copy.deepcopy(rec["meta"]["custom_metadata"]),
                "deletion_time": rfc3339(ver["deletion_time"]) if ver["deletion_time"] else "",
                "destroyed": ver["destroyed"], "version": version}

    def _metadata_view(self, rec: dict[str, Any]) -> dict[str, Any]:
        meta = rec["meta"]
        return {"cas_required": meta["cas_required"], "created_time": rfc3339(meta["created_time"]),
                "current_version": meta["current_version"],
                "custom_metadata": copy.deepcopy(meta["custom_metadata"]),
                "delete_version_after": meta["delete_version_after"], "max_versions": meta["max_versions"],
                "oldest_version": meta["oldest_version"], "updated_time": rfc3339(meta["updated_time"]),
                "versions": {v: {"created_time": rfc3339(ver["created_time"]),
                                 "deletion_time": rfc3339(ver["deletion_time"]) if ver["deletion_time"] else "",
                                 "destroyed": ver["destroyed"]}
                             for v, ver in sorted(rec["versions"].items(), key=lambda item: int(item[0]))}}

    @staticmethod
    def _list(all_keys: Iterable[str], prefix: str) -> tuple[int, dict[str, Any]]:
        prefix = prefix.strip("/")
        base = prefix + "/" if prefix else ""
        found: set[str] = set()
        for key in all_keys:
            if not key.startswith(base):
                continue
            head, sep, _ = key[len(base):].partition("/")
            found.add(head + "/" if sep else head)
        if not found:
            raise ApiError(404, body={"errors": []})
        return 200, _envelope(data={"keys": sorted(found)})

    # -- KV v1 --

    def _kv1(self, req: _Request, mount_name: str, mount: dict[str, Any], key: str) -> tuple[int, dict[str, Any] | None]:
        acl = f"{mount_name}/{key}" if key else mount_name
        store = mount["data"]
        if req.is_list:
            self._require(req, "list", acl.rstrip("/") + "/")
            return self._list(store.keys(), key)
        if not key:
            self._require(req, _natural_capability(req), acl)
            raise ApiError(405, "unsupported operation")
        if req.method == "GET":
            self._require(req, "read", acl)
            if key not in store:
                raise ApiError(404, body={"errors": []})
            return 200, _envelope(data=copy.deepcopy(store[key]), lease_duration=KV1_LEASE_DURATION, mount_type="kv")
        if req.method in ("POST", "PUT"):
            self._require(req, "update" if key in store else "create", acl)
            if not isinstance(req.body, dict):
                raise ApiError(400, "no data provided")
            store[key] = copy.deepcopy(req.body)
            return 204, None
        if req.method == "DELETE":
            self._require(req, "delete", acl)
            store.pop(key, None)
            return 204, None
        self._require(req, _natural_capability(req), acl)
        raise ApiError(405, "unsupported operation")


def _natural_capability(req: _Request) -> str:
    if req.is_list:
        return "list"
    return {"GET": "read", "HEAD": "read", "DELETE": "delete", "PATCH": "patch"}.get(req.method, "update")


def _boolean(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "t", "yes")
    return bool(value)


def _custom_metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, "custom_metadata must be a map of strings")
    problems = []
    if len(value) > 64:
        problems.append(f"payload must contain at most 64 keys, provided {len(value)}")
    for k, v in value.items():
        if not isinstance(v, str):
            problems.append(f"custom_metadata value for key \"{k}\" must be a string")
            continue
        if len(k) > 128:
            problems.append(f"length of key \"{k}\" is {len(k)} but max is 128")
        if len(v) > 512:
            problems.append(f"length of value for key \"{k}\" is {len(v)} but max is 512")
    if problems:
        count = len(problems)
        text = f"{count} error{'s' if count > 1 else ''} occurred:\n" + "".join(f"\t* {p}\n" for p in problems) + "\n"
        raise ApiError(400, text)
    return dict(value)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what Vault's KV v2 PATCH applies)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _subkeys(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _subkeys(v) if isinstance(v, dict) else None for k, v in data.items()}
    return None


def _envelope(*, data: Any = None, auth: Any = None, warnings: Any = None, lease_duration: int = 0,
              mount_type: str | None = None, top: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = dict(top or {})   # sys endpoints repeat their data at the top level
    body.update({"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False,
                 "lease_duration": lease_duration, "data": data, "wrap_info": None, "warnings": warnings,
                 "auth": auth})
    if mount_type is not None:
        body["mount_type"] = mount_type
    return body


# --- HTTP plumbing ---------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    emulator: VaultEmulator

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        with self._connections_lock:
            self._connections.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            conns = list(self._connections)
            self._connections.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # keep-alive + small writes would otherwise stall 40 ms per call
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _serve(self) -> None:
        emulator = self.server.emulator
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        if split.path == CONTROL_PREFIX or split.path.startswith(CONTROL_PREFIX + "/"):
            status, payload = emulator._control(self.command, split.path[len(CONTROL_PREFIX):], raw_body)
            self._respond(status, payload)
            return
        if not split.path.startswith("/v1/"):
            self._respond(404, {"errors": []})
            return
        raw_path = unquote(split.path[len("/v1/"):])
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        method = self.command.upper()
        fault = emulator.faults.take(method, split.path)
        if fault is not None and fault.kind != "lose_answer":
            if fault.kind == "delay":
                emulator._stopping.wait(fault.delay_seconds)
            elif fault.kind == "status":
                self._respond(fault.status, {"errors": fault.errors if fault.errors is not None
                                             else [f"injected fault: HTTP {fault.status}"]})
                return
            elif fault.kind == "hang":
                self._hang(fault.delay_seconds)
                self._drop(reset=False)
                return
            else:  # reset
                self._drop(reset=True)
                return
        try:
            body = json.loads(raw_body) if raw_body.strip() else {}
        except ValueError as exc:
            self._respond(400, {"errors": [f"failed to parse JSON input: {exc}"]})
            return
        if not isinstance(body, dict):
            body = {}
        is_list = method == "LIST" or (method == "GET" and query.get("list", "").lower() in ("true", "1"))
        with emulator._lock:
            namespace, path = emulator.resolve_namespace(self.headers.get("X-Vault-Namespace", ""), raw_path)
        req = _Request(method="GET" if method == "LIST" else method, raw_path=raw_path.strip("/"), path=path,
                       namespace=namespace, query=query, body=body, token=self.headers.get("X-Vault-Token"),
                       content_type=self.headers.get("Content-Type", ""), is_list=is_list,
                       trailing_slash=raw_path.endswith("/"))
        status, payload = emulator.handle(req)
        if fault is not None and fault.kind == "lose_answer":   # the effect happened, no answer
            self._drop(reset=False)
            return
        self._respond(status, payload)

    def _drop(self, *, reset: bool) -> None:
        """Close the connection without an answer: FIN (lost answer) or RST (reset)."""
        self.close_connection = True
        try:
            if reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _hang(self, seconds: float) -> None:
        hang(self.connection, self.server.emulator._stopping, seconds)

    def _respond(self, status: int, payload: dict[str, Any] | None) -> None:
        self.send_response(status)
        self.send_header("Cache-Control", "no-store")
        if payload is None or status == 204:
            if status != 204:
                self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = json.dumps(payload).encode("utf-8")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_LIST = do_PATCH = do_HEAD = _serve


# --- process entry point ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rotator.testing.vault_emulator",
                                     description="HashiCorp Vault emulator for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root-token", default=None)
    parser.add_argument("--state-file", default=None)
    parser.add_argument("--kv1-mount", action="append", default=[], help="also mount KV v1 at this path")
    args = parser.parse_args(argv)
    emulator = VaultEmulator(root_token=args.root_token, host=args.host, port=args.port,
                             state_file=args.state_file)
    for mount in args.kv1_mount:
        if mount not in emulator._ns("")["mounts"]:
            emulator.add_mount(mount, version=1)
    emulator.start()
    done = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(json.dumps({"url": emulator.url}), flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

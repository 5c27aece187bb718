"""rotation.toml -> a typed, validated, immutable model.

Every problem is reported as one ConfigError naming the file, the key and the fix. Secrets never
appear in the file: only references (`*_env`, `*_file`) that are resolved when first needed.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from rotator.durations import parse_duration
from rotator.errors import ConfigError, SecretReferenceError
from rotator.secret import Secret

DEFAULT_CONFIG_NAME = "rotation.toml"
CONFIG_ENV = "ROTATOR_CONFIG"

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# Generations append "-YYYYMMDDTHHMMSSZ" (17 characters) and names are capped at 128 by Funnelback.
GENERATION_SUFFIX_LENGTH = 17
MAX_TOKEN_NAME = 128 - GENERATION_SUFFIX_LENGTH

# Keys that would hold a secret inline; each has reference forms instead.
INLINE_SECRET_KEYS = {"token", "password", "secret_id", "jwt", "secret_access_key", "aws_secret_access_key"}


def resolve_reference(env: str | None, file: str | None, *, what: str) -> Secret | None:
    """Read a secret from an environment variable or a file; None when neither is configured."""
    if env:
        value = os.environ.get(env)
        if value is None or not value.strip():
            raise SecretReferenceError(
                f"environment variable {env} is not set or empty", key=what,
                hint=f"export {env} or use a *_file reference instead")
        return Secret(value.strip())
    if file:
        path = Path(file)
        # systemd's LoadCredential= puts credentials in a per-unit $CREDENTIALS_DIRECTORY: a relative
        # *_file is looked up there, so one config serves the daemon unit and the timer unit alike.
        if not path.is_absolute() and os.environ.get("CREDENTIALS_DIRECTORY"):
            path = Path(os.environ["CREDENTIALS_DIRECTORY"]) / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretReferenceError(
                f"cannot read {file}: {exc.strerror or exc}", key=what,
                hint="check the path and that rotator's user may read it") from None
        if not value:
            raise SecretReferenceError(f"{file} is empty", key=what, hint="write the secret into the file")
        return Secret(value)
    return None


# --- Funnelback ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunnelbackApi:
    """Paths under the base URL; {client} and {name} are filled in. See funnelback-admin-api.md."""

    login: str = "/account/v1/login"
    current_user: str = "/account/v1/current-user"
    list_client_tokens: str = "/application-tokens/v1/clients/{client}/application-token"
    create_client_token: str = "/application-tokens/v1/clients/{client}/application-token/{name}"
    clone_client_token: str = "/application-tokens/v1/clients/{client}/application-token/{name}/clone"
    revoke_client_token: str = "/application-tokens/v1/clients/{client}/application-token/{name}"
    list_user_tokens: str = "/application-tokens/v1/application-token"
    create_user_token: str = "/application-tokens/v1/application-token/{name}"
    revoke_user_token: str = "/application-tokens/v1/application-token/{name}"
    token_field: str = "data.token"
    clone_name_field: str = "name"


@dataclass(frozen=True)
class FunnelbackSettings:
    url: str
    api: FunnelbackApi = field(default_factory=FunnelbackApi)
    token_env: str | None = None
    token_file: str | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    timeout: float = 10.0
    connect_timeout: float = 5.0
    retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    verify_tls: bool = True
    ca_cert: str | None = None
    max_requests_per_second: float | None = None
    max_concurrency: int | None = None   # None: 16, or more if the run has more workers (FunnelbackClient)

    def resolve_token(self) -> Secret | None:
        return resolve_reference(self.token_env, self.token_file, what="funnelback.token")

    def resolve_password(self) -> Secret | None:
        return resolve_reference(self.password_env, self.password_file, what="funnelback.password")


# --- Backends and destinations ------------------------------------------------------------------


@dataclass(frozen=True)
class BackendSpec:
    """What a backend type accepts in [backends.X] and in a destination entry."""

    required: frozenset[str]
    optional: frozenset[str]
    destination_required: frozenset[str]
    destination_optional: frozenset[str] = frozenset()
    # the destination key naming the secret, unique per backend across targets
    locator: str = ""


BACKEND_SPECS: dict[str, BackendSpec] = {
    "aws-secrets-manager": BackendSpec(
        required=frozenset(),
        optional=frozenset({"region", "endpoint_url", "kms_key_id", "profile", "create_missing",
                            "timeout", "max_attempts", "journal_stage"}),
        destination_required=frozenset({"secret_id"}),
        destination_optional=frozenset({"kms_key_id"}),
        locator="secret_id",
    ),
    "vault": BackendSpec(
        required=frozenset({"url"}),
        optional=frozenset({"mount", "kv_version", "namespace", "ca_cert", "verify", "auth", "timeout",
                            "journal_suffix"}),
        destination_required=frozenset({"path"}),
        destination_optional=frozenset({"mount"}),
        locator="path",
    ),
}


# Every key the file accepts, per section (the README's configuration reference is checked against these).
TOP_LEVEL_KEYS = frozenset({"funnelback", "service", "defaults", "backends", "targets", "notify"})
FUNNELBACK_KEYS = frozenset({"url", "api", "token_env", "token_file", "username", "password_env", "password_file",
                             "timeout", "connect_timeout", "retries", "backoff_base", "backoff_max", "verify_tls",
                             "ca_cert", "max_requests_per_second", "max_concurrency"})
SERVICE_KEYS = frozenset({"listen", "concurrency", "preflight_interval", "poll_interval"})
NOTIFY_KEYS = frozenset({"url", "url_env", "url_file", "format", "on", "timeout"})
VAULT_AUTH_KEYS = {
    "token": frozenset({"method", "token_env", "token_file"}),
    "approle": frozenset({"method", "role_id", "role_id_env", "role_id_file", "secret_id_env", "secret_id_file",
                          "mount"}),
    "kubernetes": frozenset({"method", "role", "jwt_file", "mount"}),
}


@dataclass(frozen=True)
class BackendSettings:
    name: str
    type: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class DestinationSettings:
    backend: str
    options: Mapping[str, Any]

    @property
    def locator(self) -> str:
        """The secret's name in its store, for messages and uniqueness."""
        return str(next(iter(self.options.values()), ""))

    def label(self) -> str:
        return f"{self.backend}:{self.locator}"


# --- Targets, service, whole config -------------------------------------------------------------


@dataclass(frozen=True)
class TargetSettings:
    name: str
    client_id: str
    token_name: str
    interval: float
    grace_period: float
    destinations: tuple[DestinationSettings, ...]
    lock_ttl: float = 30.0
    lock_wait: float = 120.0
    verify: bool = True
    schedule: str | None = None
    timezone: str = "UTC"
    window: str | None = None
    jitter: float = 0.0
    max_age: float | None = None


TARGET_DEFAULTS: dict[str, Any] = {
    "interval": "30d",
    "grace_period": "15m",
    "lock_ttl": "30s",
    "lock_wait": "2m",
    "verify": True,
    "schedule": None,
    "timezone": "UTC",
    "window": None,
    "jitter": "0s",
    "max_age": None,
}
TARGET_REQUIRED = ("name", "client_id", "token_name", "destinations")
TARGET_DURATIONS = ("interval", "grace_period", "lock_ttl", "lock_wait", "jitter", "max_age")


@dataclass(frozen=True)
class ServiceSettings:
    listen: str = "0.0.0.0:9464"
    concurrency: int = 4
    preflight_interval: float = 300.0
    poll_interval: float = 60.0       # the longest a target's stored state goes unread (rotator.daemon)


@dataclass(frozen=True)
class NotifySettings:
    url_env: str | None = None
    url_file: str | None = None
    url: str | None = None
    format: str = "json"             # "json" or "slack"
    on: tuple[str, ...] = ("failure", "stale")
    timeout: float = 5.0

    def resolve_url(self) -> str:
        # Webhook URLs (Slack's especially) are credentials, so references are preferred.
        if self.url:
            return self.url
        secret = resolve_reference(self.url_env, self.url_file, what="notify.url")
        return secret.reveal() if secret else ""


@dataclass(frozen=True)
class Config:
    path: str
    funnelback: FunnelbackSettings
    service: ServiceSettings
    backends: Mapping[str, BackendSettings]
    targets: tuple[TargetSettings, ...]
    notify: tuple[NotifySettings, ...] = ()

    def target(self, name: str) -> TargetSettings:
        for target in self.targets:
            if target.name == name:
                return target
        known = ", ".join(t.name for t in self.targets) or "none"
        raise ConfigError(f"no target named {name!r} (targets: {known})", file=self.path, key="targets",
                          hint="use a name from [[targets]] or --all")

    def backend_types_in_use(self) -> set[str]:
        return {self.backends[d.backend].type for t in self.targets for d in t.destinations}


# --- Loading ------------------------------------------------------------------------------------


def default_config_path() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    config_path = str(path) if path else default_config_path()
    try:
        raw = Path(config_path).read_bytes()
    except FileNotFoundError:
        raise ConfigError("config file not found", file=config_path,
                          hint=f"pass --config PATH, set ${CONFIG_ENV}, or create ./{DEFAULT_CONFIG_NAME} "
                               "(see rotation.example.toml)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", file=config_path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("config is not UTF-8 text", file=config_path, hint="save it as UTF-8") from None
    return parse_config(text, config_path)


def parse_config(text: str, path: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=path, hint="fix the TOML syntax") from None
    return _Parser(path).parse(data)


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path

    # -- helpers --

    def error(self, key: str, message: str, hint: str = "") -> ConfigError:
        return ConfigError(message, file=self.path, key=key, hint=hint)

    def check_keys(self, where: str, table: Mapping[str, Any], allowed: set[str] | frozenset[str],
                   required: tuple[str, ...] | frozenset[str] = ()) -> None:
        for key in table:
            if key in INLINE_SECRET_KEYS and key not in allowed:
                raise self.error(f"{where}.{key}" if where else key,
                                 "secrets may not be written in the config",
                                 hint=f"use {key}_env = \"VARIABLE\" or {key}_file = \"/path\" instead")
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(sorted(allowed))}"
                raise self.error(f"{where}.{key}" if where else key, "unknown key", hint=hint)
        for key in required:
            if key not in table:
                raise self.error(f"{where}.{key}" if where else key, "missing required key",
                                 hint=f"add {key} = ... to [{where or 'top level'}]")

    def table(self, where: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(where, f"must be a table, not {type(value).__name__}")
        return value

    def string(self, key: str, value: Any, *, pattern: re.Pattern[str] | None = None,
               hint: str = "") -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, "must be a non-empty string", hint=hint)
        if pattern and not pattern.match(value):
            raise self.error(key, f"{value!r} is not allowed here", hint=hint)
        return value

    def optional_string(self, key: str, value: Any) -> str | None:
        return None if value is None else self.string(key, value)

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def number(self, key: str, value: Any, *, minimum: float = 0, integer: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            raise self.error(key, f"must be {'a whole number' if integer else 'a number'}")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}")
        return value

    def duration(self, key: str, value: Any, *, minimum: float = 0) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)  # plain numbers are seconds, a convenience for timeouts
        else:
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                raise self.error(key, str(exc)) from None
        if seconds < minimum:
            raise self.error(key, f"must be at least {minimum:g} seconds")
        return seconds

    def exclusive_reference(self, where: str, table: Mapping[str, Any], base: str, *,
                            required: bool) -> None:
        present = [k for k in (f"{base}_env", f"{base}_file") if k in table]
        if len(present) > 1:
            raise self.error(f"{where}.{present[1]}", f"{present[0]} and {present[1]} both set",
                             hint="keep exactly one reference")
        if required and not present:
            raise self.error(f"{where}.{base}_env", f"missing {base}_env or {base}_file",
                             hint=f"reference the {base.replace('_', ' ')} by environment variable or file")
        for key in present:
            self.string(f"{where}.{key}", table[key])

    # -- sections --

    def parse(self, data: dict[str, Any]) -> Config:
        self.check_keys("", data, TOP_LEVEL_KEYS, required=("funnelback", "targets"))
        funnelback = self.funnelback(self.table("funnelback", data["funnelback"]))
        service = self.service(self.table("service", data.get("service", {})))
        backends = self.backends(self.table("backends", data.get("backends", {})))
        defaults = self.table("defaults", data.get("defaults", {}))
        self.check_keys("defaults", defaults, set(TARGET_DEFAULTS))
        targets_raw = data["targets"]
        if not isinstance(targets_raw, list) or not targets_raw:
            raise self.error("targets", "needs at least one [[targets]] entry",
                             hint="add [[targets]] with name, client_id, token_name and destinations")
        targets = tuple(self.target(i, self.table(f"targets[{i}]", t), defaults, backends)
                        for i, t in enumerate(targets_raw))
        self.check_unique(targets, backends)
        notify_raw = data.get("notify", [])
        if not isinstance(notify_raw, list):
            raise self.error("notify", "must be an array of tables ([[notify]])")
        notify = tuple(self.notify(i, self.table(f"notify[{i}]", n)) for i, n in enumerate(notify_raw))
        return Config(path=self.path, funnelback=funnelback, service=service, backends=backends,
                      targets=targets, notify=notify)

    def funnelback(self, table: dict[str, Any]) -> FunnelbackSettings:
        self.check_keys("funnelback", table, FUNNELBACK_KEYS, required=("url",))
        url = self.string("funnelback.url", table["url"], pattern=re.compile(r"^https?://[^\s/]+"),
                          hint="write the admin API base, e.g. https://search.example.com:8443/admin-api")
        self.exclusive_reference("funnelback", table, "token", required=False)
        has_token = "token_env" in table or "token_file" in table
        if "username" in table:
            self.string("funnelback.username", table["username"])
            self.exclusive_reference("funnelback", table, "password", required=True)
            if has_token:
                raise self.error("funnelback.username", "both a token reference and a username are set",
                                 hint="use token_env/token_file or username + password_env/password_file")
        elif not has_token:
            raise self.error("funnelback.token_env", "no credential for the Funnelback admin API",
                             hint="set token_env or token_file, or username with password_env/password_file")
        elif "password_env" in table or "password_file" in table:
            raise self.error("funnelback.password_env", "a password reference needs a username",
                             hint="add username = ... or remove the password reference")
        api = self.funnelback_api(self.table("funnelback.api", table.get("api", {})))
        numbers: dict[str, Any] = {}
        for key in ("timeout", "connect_timeout", "backoff_base", "backoff_max"):
            if key in table:
                numbers[key] = self.duration(f"funnelback.{key}", table[key], minimum=0.001)
        if "retries" in table:
            numbers["retries"] = int(self.number("funnelback.retries", table["retries"], integer=True))
        if "max_concurrency" in table:
            numbers["max_concurrency"] = int(self.number("funnelback.max_concurrency", table["max_concurrency"],
                                                         minimum=1, integer=True))
        if "max_requests_per_second" in table:
            numbers["max_requests_per_second"] = float(self.number(
                "funnelback.max_requests_per_second", table["max_requests_per_second"], minimum=0.001))
        if "verify_tls" in table:
            numbers["verify_tls"] = self.boolean("funnelback.verify_tls", table["verify_tls"])
        return FunnelbackSettings(
            url=url.rstrip("/"), api=api,
            token_env=table.get("token_env"), token_file=table.get("token_file"),
            username=table.get("username"), password_env=table.get("password_env"),
            password_file=table.get("password_file"),
            ca_cert=self.optional_string("funnelback.ca_cert", table.get("ca_cert")),
            **numbers)

    def funnelback_api(self, table: dict[str, Any]) -> FunnelbackApi:
        names = {f.name for f in fields(FunnelbackApi)}
        self.check_keys("funnelback.api", table, names)
        values = {}
        for key, value in table.items():
            text = self.string(f"funnelback.api.{key}", value)
            if key not in ("token_field", "clone_name_field") and not text.startswith("/"):
                raise self.error(f"funnelback.api.{key}", "paths start with '/' (relative to funnelback.url)")
            values[key] = text
        return FunnelbackApi(**values)

    def service(self, table: dict[str, Any]) -> ServiceSettings:
        self.check_keys("service", table, SERVICE_KEYS)
        values: dict[str, Any] = {}
        if "listen" in table:
            listen = self.string("service.listen", table["listen"],
                                 pattern=re.compile(r"^(\[[0-9a-fA-F:]+\]|[^:\s]*):\d{1,5}$"),
                                 hint="write HOST:PORT, e.g. \"0.0.0.0:9464\"")
            values["listen"] = listen
        if "concurrency" in table:
            values["concurrency"] = int(self.number("service.concurrency", table["concurrency"], minimum=1,
                                                    integer=True))
        for key in ("preflight_interval", "poll_interval"):
            if key in table:
                values[key] = self.duration(f"service.{key}", table[key], minimum=1)
        return ServiceSettings(**values)

    def backends(self, table: dict[str, Any]) -> dict[str, BackendSettings]:
        result = {}
        for name, raw in table.items():
            where = f"backends.{name}"
            if not NAME_PATTERN.match(name):
                raise self.error(where, "backend names use letters, digits, '.', '_' and '-'")
            body = self.table(where, raw)
            kind = body.get("type")
            if not isinstance(kind, str) or kind not in BACKEND_SPECS:
                raise self.error(f"{where}.type", f"unknown backend type {kind!r}" if kind else "missing type",
                                 hint=f"use one of: {', '.join(sorted(BACKEND_SPECS))}")
            spec = BACKEND_SPECS[kind]
            self.check_keys(where, body, spec.required | spec.optional | {"type"}, required=spec.required)
            options = {k: v for k, v in body.items() if k != "type"}
            if kind == "vault":
                self.vault_options(where, options)
            else:
                self.aws_options(where, options)
            result[name] = BackendSettings(name=name, type=kind, options=options)
        return result

    def aws_options(self, where: str, options: dict[str, Any]) -> None:
        for key in ("region", "endpoint_url", "kms_key_id", "profile", "journal_stage"):
            if key in options:
                self.string(f"{where}.{key}", options[key])
        if "create_missing" in options:
            self.boolean(f"{where}.create_missing", options["create_missing"])
        if "timeout" in options:
            options["timeout"] = self.duration(f"{where}.timeout", options["timeout"], minimum=0.1)
        if "max_attempts" in options:
            self.number(f"{where}.max_attempts", options["max_attempts"], minimum=1, integer=True)

    def vault_options(self, where: str, options: dict[str, Any]) -> None:
        self.string(f"{where}.url", options["url"], pattern=re.compile(r"^https?://"),
                    hint="e.g. https://vault.example.com:8200")
        for key in ("mount", "namespace", "ca_cert", "journal_suffix"):
            if key in options:
                self.string(f"{where}.{key}", options[key])
        if "kv_version" in options and options["kv_version"] not in (1, 2):
            raise self.error(f"{where}.kv_version", "must be 1 or 2")
        if "verify" in options:
            self.boolean(f"{where}.verify", options["verify"])
        if "timeout" in options:
            options["timeout"] = self.duration(f"{where}.timeout", options["timeout"], minimum=0.1)
        auth = self.table(f"{where}.auth", options.get("auth", {"method": "token", "token_env": "VAULT_TOKEN"}))
        options["auth"] = auth
        method = auth.get("method")
        auth_where = f"{where}.auth"
        if method == "token":
            self.check_keys(auth_where, auth, VAULT_AUTH_KEYS["token"])
            self.exclusive_reference(auth_where, auth, "token", required=True)
        elif method == "approle":
            self.check_keys(auth_where, auth, VAULT_AUTH_KEYS["approle"])
            if "role_id" in auth:
                self.string(f"{auth_where}.role_id", auth["role_id"])
            else:
                self.exclusive_reference(auth_where, auth, "role_id", required=True)
            self.exclusive_reference(auth_where, auth, "secret_id", required=True)
        elif method == "kubernetes":
            self.check_keys(auth_where, auth, VAULT_AUTH_KEYS["kubernetes"], required=("role",))
            self.string(f"{auth_where}.role", auth["role"])
        else:
            raise self.error(f"{auth_where}.method", f"unknown auth method {method!r}" if method else "missing method",
                             hint="use \"token\", \"approle\" or \"kubernetes\"")

    def target(self, index: int, table: dict[str, Any], defaults: dict[str, Any],
               backends: Mapping[str, BackendSettings]) -> TargetSettings:
        label = table.get("name") if isinstance(table.get("name"), str) else f"targets[{index}]"
        where = f"targets[{label}]" if label != f"targets[{index}]" else label
        allowed = set(TARGET_REQUIRED) | set(TARGET_DEFAULTS)
        self.check_keys(where, table, allowed, required=TARGET_REQUIRED)
        merged = {**TARGET_DEFAULTS, **defaults, **table}
        name = self.string(f"{where}.name", merged["name"], pattern=NAME_PATTERN,
                           hint="letters, digits, '.', '_' and '-' (at most 128)")
        client_id = self.string(f"{where}.client_id", merged["client_id"], pattern=NAME_PATTERN,
                                hint="the Funnelback client id")
        token_name = self.string(f"{where}.token_name", merged["token_name"], pattern=NAME_PATTERN,
                                 hint="letters, digits, '.', '_' and '-'")
        if len(token_name) > MAX_TOKEN_NAME:
            raise self.error(f"{where}.token_name", f"longer than {MAX_TOKEN_NAME} characters",
                             hint="rotated names append 17 characters and Funnelback allows 128")
        durations = {}
        for key in TARGET_DURATIONS:
            value = merged[key]
            if value is None:
                durations[key] = None
                continue
            minimum = 1.0 if key in ("interval", "lock_ttl") else 0.0
            durations[key] = self.duration(f"{where}.{key}", value, minimum=minimum)
        if durations["grace_period"] >= durations["interval"]:
            raise self.error(f"{where}.grace_period", "must be shorter than interval",
                             hint="otherwise a new rotation would start before the previous token is revoked")
        destinations = self.destinations(where, merged["destinations"], backends)
        schedule = self.optional_string(f"{where}.schedule", merged["schedule"])
        timezone_name = self.string(f"{where}.timezone", merged["timezone"],
                                    hint="an IANA time zone name, e.g. \"UTC\" or \"Australia/Sydney\"")
        window = self.optional_string(f"{where}.window", merged["window"])
        from rotator.scheduling import ScheduleError, parse_cron, parse_window, zone
        for key, value, check, hint in (
                ("timezone", timezone_name, zone, "an IANA time zone name, e.g. \"UTC\" or \"Australia/Sydney\""),
                ("schedule", schedule, parse_cron, "a 5-field cron expression: minute hour day-of-month month "
                                                   "day-of-week, e.g. \"0 3 * * Mon\" (03:00 every Monday)"),
                ("window", window, parse_window, "e.g. \"Mon-Fri 02:00-05:00\", \"22:00-02:00\" or "
                                                 "\"Sat,Sun 00:00-24:00\" (times in the target's timezone)")):
            if value is None:
                continue
            try:
                check(value)
            except ScheduleError as exc:
                raise self.error(f"{where}.{key}", str(exc), hint=hint) from None
        return TargetSettings(
            name=name, client_id=client_id, token_name=token_name,
            interval=durations["interval"], grace_period=durations["grace_period"],
            lock_ttl=durations["lock_ttl"], lock_wait=durations["lock_wait"],
            jitter=durations["jitter"], max_age=durations["max_age"],
            verify=self.boolean(f"{where}.verify", merged["verify"]),
            schedule=schedule,
            timezone=timezone_name,
            window=window,
            destinations=destinations)

    def destinations(self, where: str, raw: Any,
                     backends: Mapping[str, BackendSettings]) -> tuple[DestinationSettings, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.error(f"{where}.destinations", "needs at least one destination",
                             hint="e.g. destinations = [{ backend = \"aws\", secret_id = \"prod/app/funnelback\" }]")
        result = []
        for i, entry in enumerate(raw):
            key = f"{where}.destinations[{i}]"
            entry = self.table(key, entry)
            backend_name = entry.get("backend")
            if not isinstance(backend_name, str):
                raise self.error(f"{key}.backend", "missing backend", hint="name a [backends.NAME] table")
            if backend_name not in backends:
                defined = ", ".join(sorted(backends)) or "none defined"
                raise self.error(f"{key}.backend", f"names undefined backend {backend_name!r}",
                                 hint=f"define [backends.{backend_name}] or use one of: {defined}")
            spec = BACKEND_SPECS[backends[backend_name].type]
            self.check_keys(key, entry, spec.destination_required | spec.destination_optional | {"backend"},
                            required=spec.destination_required)
            options = {spec.locator: self.string(f"{key}.{spec.locator}", entry[spec.locator])}
            for extra in spec.destination_optional:
                if extra in entry:
                    options[extra] = self.string(f"{key}.{extra}", entry[extra])
            result.append(DestinationSettings(backend=backend_name, options=options))
        return tuple(result)

    def check_unique(self, targets: tuple[TargetSettings, ...], backends: Mapping[str, BackendSettings]) -> None:
        names: set[str] = set()
        tokens: set[tuple[str, str]] = set()
        places: dict[tuple[str, str], str] = {}
        for target in targets:
            if target.name in names:
                raise self.error(f"targets[{target.name}].name", "duplicate target name",
                                 hint="target names must be unique")
            names.add(target.name)
            if (target.client_id, target.token_name) in tokens:
                raise self.error(f"targets[{target.name}].token_name",
                                 "another target rotates the same client token",
                                 hint="each (client_id, token_name) may be rotated by one target only")
            tokens.add((target.client_id, target.token_name))
            for dest in target.destinations:
                place = (dest.backend, dest.locator)
                if place in places:
                    raise self.error(f"targets[{target.name}].destinations",
                                     f"{dest.label()} is also a destination of target {places[place]!r}",
                                     hint="each secret holds one target's token")
                places[place] = target.name

    def notify(self, index: int, table: dict[str, Any]) -> NotifySettings:
        where = f"notify[{index}]"
        self.check_keys(where, table, NOTIFY_KEYS)
        refs = [k for k in ("url", "url_env", "url_file") if k in table]
        if len(refs) != 1:
            raise self.error(f"{where}.url_env", "set exactly one of url, url_env, url_file",
                             hint="webhook URLs are credentials; prefer url_env or url_file")
        fmt = table.get("format", "json")
        if fmt not in ("json", "slack"):
            raise self.error(f"{where}.format", f"unknown format {fmt!r}", hint="use \"json\" or \"slack\"")
        on = table.get("on", ["failure", "stale"])
        if not isinstance(on, list) or not all(isinstance(event, str) for event in on) \
                or not set(on) <= {"failure", "success", "stale"}:
            raise self.error(f"{where}.on", "must be a list drawn from \"failure\", \"success\", \"stale\"")
        timeout = self.duration(f"{where}.timeout", table.get("timeout", 5.0), minimum=0.1)
        return NotifySettings(url=table.get("url"), url_env=table.get("url_env"), url_file=table.get("url_file"),
                              format=fmt, on=tuple(on), timeout=timeout)

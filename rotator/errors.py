"""The one error hierarchy of rotator.

Every error carries enough context to act on (what, where, what to do) and never a secret value:
messages are built from names, paths and status codes only.
"""

from __future__ import annotations


class RotatorError(Exception):
    """Root of every error rotator raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint

    def one_line(self) -> str:
        text = str(self)
        return f"{text} ({self.hint})" if self.hint else text


class ConfigError(RotatorError):
    """The configuration is missing, malformed or inconsistent (exit code 2)."""

    def __init__(self, message: str, *, file: str = "", key: str = "", hint: str = "") -> None:
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.file = file
        self.key = key


class SecretReferenceError(ConfigError):
    """A `*_env` / `*_file` reference points at nothing readable."""


# --- Funnelback -------------------------------------------------------------------------------


class FunnelbackError(RotatorError):
    """A call to the Funnelback admin API failed."""

    def __init__(self, message: str, *, method: str = "", path: str = "", status: int | None = None,
                 hint: str = "") -> None:
        where = f"{method} {path}".strip()
        status_text = f" -> HTTP {status}" if status is not None else ""
        super().__init__(f"Funnelback {where}{status_text}: {message}" if where else message, hint=hint)
        self.method = method
        self.path = path
        self.status = status


class FunnelbackAuthError(FunnelbackError):
    """401: the token presented is unknown, revoked or expired."""


class FunnelbackPermissionError(FunnelbackError):
    """403: the caller lacks a permission."""


class FunnelbackNotFoundError(FunnelbackError):
    """404: no such client, token or path."""


class FunnelbackConflictError(FunnelbackError):
    """409: a token of that name already exists."""


class FunnelbackTransientError(FunnelbackError):
    """429, 5xx, timeouts and connection failures that outlasted the retries."""


class FunnelbackOutcomeUnknownError(FunnelbackTransientError):
    """A non-idempotent call (create, clone) may have taken effect but its answer was lost.

    Not retried on purpose: a blind retry would create a second token (or get 409) while the first
    one's value is gone. The caller finds the token by its name and revokes it.
    """


class FunnelbackProtocolError(FunnelbackError):
    """The answer did not have the shape rotator expects (bad JSON, no token field...)."""


# --- Destinations (secret stores) --------------------------------------------------------------


class BackendError(RotatorError):
    """A secret store refused or failed an operation."""

    def __init__(self, message: str, *, destination: str = "", operation: str = "", hint: str = "") -> None:
        where = " ".join(p for p in (destination, operation) if p)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.destination = destination
        self.operation = operation


class BackendAuthError(BackendError):
    """rotator's own credential for the store is missing, invalid or expired."""


class BackendPermissionError(BackendError):
    """The store's policy does not allow this operation (AWS AccessDenied, Vault 403)."""


class BackendUnavailableError(BackendError):
    """The store is unreachable, sealed, throttling or failing (worth retrying later)."""


class BackendConflictError(BackendError):
    """A compare-and-swap lost: another writer changed the record since it was read."""


class BackendDataError(BackendError):
    """The store holds something rotator cannot interpret (e.g. a secret that is not a JSON object)."""


# --- Rotation -----------------------------------------------------------------------------------


class RotationError(RotatorError):
    """A rotation step failed; the message names the target and the step."""

    def __init__(self, message: str, *, target: str = "", step: str = "", hint: str = "") -> None:
        where = " ".join(p for p in (target, step) if p)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.target = target
        self.step = step


class LeaseHeldError(RotationError):
    """Another process holds the rotation lease of this target and did not finish in time."""


class LeaseLostError(RotationError):
    """This process's lease was taken over (it paused longer than the lease lasts)."""

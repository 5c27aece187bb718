"""AWS Secrets Manager: one secret per destination, rotated with AWS's own staging labels.

- **current** is the version labelled `AWSCURRENT` (what consumers get by default);
- **pending** is the version labelled `AWSPENDING`: stored durably, ignored by consumers that ask
  for the default version. Promotion moves `AWSCURRENT` onto it (AWS then moves `AWSPREVIOUS` onto
  the version it came from) and removes `AWSPENDING`.

Every read names its stage explicitly (`VersionStage=...`): asking without one is answered with
AWSCURRENT by AWS, but moto answers with the secret's first version.

**The journal lives in the same secret**, as versions carrying a custom staging label
(`journal_stage`, default `ROTATOR_JOURNAL`) whose SecretString is `{"rotator_journal": {...}}`:

- no extra secret per target, so no extra `CreateSecret` permission, no extra resource policy or
  KMS grant, and nothing to clean up: the IAM policy that lets rotator rotate the secret covers it;
- compare-and-swap comes for free: a journal version is written with a `ClientRequestToken`
  derived from the version it replaces. AWS makes a token name exactly one version, so a second
  writer that starts from the same version with other content gets `ResourceExistsException`;
- consumers are unaffected: they read `AWSCURRENT`, and a custom label never moves that one. The
  only exception is a secret whose first version is a journal write: AWS attaches `AWSCURRENT` to
  any first version, so a journal version (labelled or not) never counts as "current" here.

Caveat: every journal write (lease taken, renewed, released) is a new secret version. AWS removes
unlabelled versions only beyond 100 and only when they are older than 24 hours, and refuses new
versions past its quota (LimitExceededException). Intervals of hours or days are far below that;
rotating one secret every few minutes all day is not (AWS itself recommends at most one
PutSecretValue per 10 minutes per secret, sustained).

**The quick path** (rotator.quick, for a target whose only destination is this secret) uses four
calls and no journal: `get_secret_value(AWSCURRENT)`, `put_secret_value(AWSPENDING)`, then
`update_secret_version_stage` moving AWSCURRENT off the version read (a compare-and-swap: AWS refuses
the move if another writer moved it first) and one dropping AWSPENDING once the previous token is
retired. Until then AWSPENDING stays on the new current version as a mark (`read()` reports the value
it replaced as `retiring`), so a run that dies between promotion and revocation is finished by the
next one.

Concurrency: one boto3 client per backend, shared by all its destinations and threads (boto3
clients are thread-safe; sessions are not, so the session is made once here).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import boto3
import botocore.config
import botocore.exceptions

from rotator.backends.base import (
    Backend,
    CheckResult,
    CurrentVersion,
    Destination,
    DestinationState,
    JournalRecord,
    Payload,
    QuickDestination,
    Slot,
)
from rotator.config import BackendSettings
from rotator.errors import (
    BackendAuthError,
    BackendConflictError,
    BackendDataError,
    BackendError,
    BackendPermissionError,
    BackendUnavailableError,
    ConfigError,
)
from rotator.secret import scrub

CURRENT, PENDING, PREVIOUS = "AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"
DEFAULT_JOURNAL_STAGE = "ROTATOR_JOURNAL"
JOURNAL_KEY = "rotator_journal"
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_ATTEMPTS = 5
BATCH_READ_SIZE = 20        # BatchGetSecretValue's limit per call
DESCRIPTION = "Funnelback application token managed by rotator"
# Fixed forever: request tokens derived from it must come out the same across versions of rotator,
# or a retry after an upgrade would not be recognised as the same write.
_REQUEST_TOKEN_NAMESPACE = uuid.UUID("8a0c4c1e-54b6-5d1f-9a43-2f3c5e7d9b10")

# --- error mapping: the one place AWS errors become rotator errors ---------------------------------

_AUTH_CODES = {"UnrecognizedClientException", "InvalidClientTokenId", "ExpiredTokenException", "ExpiredToken",
               "InvalidSignatureException", "IncompleteSignature", "SignatureDoesNotMatch",
               "MissingAuthenticationToken", "MissingAuthenticationTokenException", "AuthFailure",
               "RequestExpired", "InvalidAccessKeyId", "InvalidToken"}
_PERMISSION_CODES = {"AccessDeniedException", "AccessDenied"}
_KMS_CODES = {"DecryptionFailure", "EncryptionFailure", "KMSAccessDeniedException", "KMSDisabledException",
              "KMSInvalidStateException", "KMSNotFoundException", "KMSInvalidKeyUsageException"}
_UNAVAILABLE_CODES = {"ThrottlingException", "Throttling", "ThrottledException", "TooManyRequests",
                      "TooManyRequestsException", "RequestLimitExceeded", "RequestThrottledException",
                      "InternalServiceError", "InternalServiceErrorException", "InternalFailure",
                      "InternalError", "ServiceUnavailable", "ServiceUnavailableException",
                      "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"}
_CREDENTIAL_HINT = ("rotator uses the standard AWS credential chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                    "AWS_PROFILE or `profile`, web identity (IRSA), ECS/EC2 instance roles")
_CREDENTIAL_ERRORS = tuple(
    getattr(botocore.exceptions, name) for name in (
        "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "ProfileNotFound",
        "TokenRetrievalError", "SSOTokenLoadError", "UnauthorizedSSOTokenError", "SSOError")
    if hasattr(botocore.exceptions, name))
_KMS_DENIAL = re.compile(r"\bkms:|access to kms|kms key", re.IGNORECASE)
_KMS_HINT = ("allow kms:Decrypt and kms:GenerateDataKey on the secret's KMS key for rotator's role "
             "(and check the key is enabled)")


def _error(exc: botocore.exceptions.ClientError) -> tuple[str, str]:
    """(code, message) of an AWS error answer. Some endpoints (moto enforcing IAM, proxies) answer a
    JSON-protocol call with an XML error document: botocore then reports the HTTP status as the
    code and the XML as the message, so the real code is taken from the XML."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "") or "")
    message = str(error.get("Message", "") or "")
    if code.isdigit() and message.lstrip().startswith("<"):
        found_code = re.search(r"<Code>([^<]+)</Code>", message)
        found_message = re.search(r"<Message>([^<]*)</Message>", message)
        code = found_code.group(1).strip() if found_code else code
        message = found_message.group(1) if found_message else ""
    return code, message


def _code(exc: botocore.exceptions.ClientError) -> str:
    return _error(exc)[0]


def _aws_message(exc: botocore.exceptions.ClientError) -> str:
    """AWS's own message (it names the principal and action, useful for IAM), scrubbed and short."""
    text = scrub(" ".join(_error(exc)[1].split()))
    return text[:300] + ("..." if len(text) > 300 else "")


def translate(exc: Exception, *, where: str, operation: str) -> BackendError:
    """A botocore exception -> the rotator error that says what happened and what to do.
    Built from the error code, AWS's (scrubbed) message and names only: never a request parameter."""
    kwargs = {"destination": where, "operation": operation}
    if isinstance(exc, botocore.exceptions.ClientError):
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = _aws_message(exc)
        message = f"AWS {code or 'error'}" + (f": {detail}" if detail else "")
        if code in _KMS_CODES or (code in _PERMISSION_CODES and _KMS_DENIAL.search(detail)):
            return BackendPermissionError(message, hint=_KMS_HINT, **kwargs)
        if code in _AUTH_CODES:
            hint = ("check the system clock" if code == "RequestExpired"
                    else f"the AWS credential is invalid or expired; {_CREDENTIAL_HINT}")
            return BackendAuthError(message, hint=hint, **kwargs)
        if code in _PERMISSION_CODES or status == 403:
            return BackendPermissionError(
                message, hint=f"allow secretsmanager:{_action(operation)} on this secret for rotator's role", **kwargs)
        if code in _UNAVAILABLE_CODES or (isinstance(status, int) and status >= 500):
            return BackendUnavailableError(message, hint="AWS is throttling or failing; the next run retries",
                                           **kwargs)
        if code == "ResourceExistsException":
            return BackendConflictError(message, hint="another writer got there first; re-read and retry", **kwargs)
        if code == "ResourceNotFoundException":
            return BackendError(message, hint="check secret_id and region, or set create_missing = true", **kwargs)
        if code == "InvalidRequestException":
            return BackendError(message, hint="the secret may be scheduled for deletion (restore it with "
                                              "`aws secretsmanager restore-secret`) or be managed by another "
                                              "service", **kwargs)
        if code == "LimitExceededException":
            return BackendError(message, hint="too many versions of this secret in 24 hours; rotate less often",
                                **kwargs)
        return BackendError(message, **kwargs)
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return BackendAuthError(f"no usable AWS credentials ({type(exc).__name__})", hint=_CREDENTIAL_HINT, **kwargs)
    if isinstance(exc, botocore.exceptions.NoRegionError):
        return BackendError("no AWS region configured", hint="set region = \"...\" in the backend or AWS_REGION",
                            **kwargs)
    if isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return BackendUnavailableError(f"cannot reach AWS ({type(exc).__name__})",
                                       hint="check endpoint_url/region, network and proxy settings", **kwargs)
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        detail = scrub(str(exc))[:200] if isinstance(exc, botocore.exceptions.ParamValidationError) else ""
        return BackendError(f"AWS SDK error ({type(exc).__name__}){': ' + detail if detail else ''}", **kwargs)
    return BackendError(f"unexpected {type(exc).__name__}", **kwargs)


def _action(operation: str) -> str:
    return "".join(part.capitalize() for part in operation.split("_"))


@contextmanager
def aws_errors(where: str, operation: str) -> Iterator[None]:
    try:
        yield
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise translate(exc, where=where, operation=operation) from None


def _call(client: Any, where: str, operation: str, *, tolerate: frozenset[str] = frozenset(),
          **params: Any) -> dict[str, Any] | None:
    """Call one API operation; None when AWS answers with an error code listed in `tolerate`."""
    with aws_errors(where, operation):
        try:
            return getattr(client, operation)(**params)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in tolerate:
                return None
            raise


_MISSING = frozenset({"ResourceNotFoundException"})


# --- the secret's shape -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Described:
    """describe_secret, reduced to what rotation needs."""

    exists: bool
    deleted: bool = False
    stages: Mapping[str, list[str]] = field(default_factory=dict)

    def holder(self, label: str) -> str | None:
        for version, labels in self.stages.items():
            if label in labels:
                return version
        return None


@dataclass(frozen=True)
class _Version:
    version_id: str
    stages: tuple[str, ...]
    text: str


def _is_journal_text(text: str | None) -> bool:
    if not text:
        return False
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and JOURNAL_KEY in data


def _contains_token_key(data: Any) -> bool:
    if isinstance(data, Mapping):
        return "token" in data or any(_contains_token_key(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return any(_contains_token_key(v) for v in data)
    return False


def request_token(*parts: str) -> str:
    """A ClientRequestToken (AWS: 32-64 characters) that the same logical write always derives."""
    return str(uuid.uuid5(_REQUEST_TOKEN_NAMESPACE, "|".join(parts)))


# --- destination --------------------------------------------------------------------------------


class AwsDestination(Destination, QuickDestination):
    def __init__(self, backend: AwsSecretsManagerBackend, *, secret_id: str, kms_key_id: str | None,
                 target: str) -> None:
        self._backend = backend
        self._client = backend.client
        self.secret_id = secret_id
        self.kms_key_id = kms_key_id
        self.target = target
        self.journal_stage = backend.journal_stage
        self.label = f"{backend.name}:{secret_id}"

    def __repr__(self) -> str:
        return f"AwsDestination({self.label!r})"

    # -- plumbing --

    def _call(self, operation: str, *, tolerate: frozenset[str] = frozenset(), **params: Any) -> dict[str, Any] | None:
        return _call(self._client, self.label, operation, tolerate=tolerate, SecretId=self.secret_id, **params)

    def _describe(self) -> _Described:
        answer = self._call("describe_secret", tolerate=_MISSING)
        if answer is None:
            return _Described(exists=False)
        stages = {v: list(labels) for v, labels in (answer.get("VersionIdsToStages") or {}).items()}
        return _Described(exists=True, deleted=answer.get("DeletedDate") is not None, stages=stages)

    def _usable(self, operation: str) -> _Described:
        described = self._describe()
        if described.deleted:
            raise BackendError("the secret is scheduled for deletion", destination=self.label, operation=operation,
                               hint=f"restore it (aws secretsmanager restore-secret --secret-id {self.secret_id}) "
                                    "or point the destination at another secret")
        return described

    def _ensure_exists(self, operation: str) -> _Described:
        described = self._usable(operation)
        if described.exists:
            return described
        if not self._backend.create_missing:
            raise BackendError("the secret does not exist", destination=self.label, operation=operation,
                               hint=f"create it, or set create_missing = true in [backends.{self._backend.name}]")
        params: dict[str, Any] = {
            "Name": self.secret_id, "Description": DESCRIPTION,
            "Tags": [{"Key": "managed-by", "Value": "rotator"}, {"Key": "rotator-target", "Value": self.target}],
        }
        if self.kms_key_id:
            params["KmsKeyId"] = self.kms_key_id
        # No value: a value would become AWSCURRENT, served to consumers before any rotation.
        # ResourceExistsException means someone else created it meanwhile, which is just as good.
        _call(self._client, self.label, "create_secret", tolerate=frozenset({"ResourceExistsException"}), **params)
        return self._usable(operation)

    def _fetch(self, *, stage: str | None = None, version_id: str | None = None) -> _Version | None:
        """One version's text; None if that label/version is not there (any more)."""
        params = {"VersionStage": stage} if stage else {"VersionId": version_id}
        answer = self._call("get_secret_value", tolerate=_MISSING, **params)
        if answer is None:
            return None
        text = answer.get("SecretString")
        if text is None:
            raise BackendDataError("the secret holds binary data, not a string", destination=self.label,
                                   operation="read", hint="store a JSON object such as {\"token\": ...}")
        return _Version(version_id=answer["VersionId"], stages=tuple(answer.get("VersionStages") or ()), text=text)

    def _payload(self, text: str) -> Payload | None:
        return Payload.from_text(text, where=self.label)

    def _lenient_payload(self, text: str) -> Payload | None:
        try:
            return self._payload(text)
        except BackendDataError:
            return None

    def _current_slot(self, described: _Described) -> Slot:
        """AWSCURRENT, unless that version is also pending (AWS labels a secret's first version
        AWSCURRENT whatever it was written as) or a journal record: then current is empty."""
        holder = described.holder(CURRENT)
        if holder is None or PENDING in described.stages[holder] or self.journal_stage in described.stages[holder]:
            return Slot()
        got = self._fetch(stage=CURRENT)
        if got is None or PENDING in got.stages or self.journal_stage in got.stages or _is_journal_text(got.text):
            return Slot()
        return Slot(self._payload(got.text), got.version_id)

    # -- the interface --

    def read(self) -> DestinationState:
        described = self._usable("read")
        if not described.exists:
            return DestinationState(exists=False)
        if self._marked(described):
            current, previous = self._fetch(stage=CURRENT), self._fetch(stage=PREVIOUS)
            if current is not None and PENDING in current.stages and not _is_journal_text(current.text):
                retiring = Slot(self._lenient_payload(previous.text), previous.version_id) if previous else Slot()
                return DestinationState(current=Slot(self._payload(current.text), current.version_id),
                                        retiring=retiring, exists=True)
            described = self._usable("read")  # the labels moved meanwhile
        pending = Slot()
        if described.holder(PENDING) is not None:
            got = self._fetch(stage=PENDING)
            if got is not None:
                pending = Slot(self._payload(got.text), got.version_id)
        return DestinationState(current=self._current_slot(described), pending=pending, exists=True)

    def _marked(self, described: _Described) -> bool:
        """AWSPENDING left on the AWSCURRENT version after a promotion (AWSPREVIOUS elsewhere):
        rotator.quick's mark that the previous token is not retired yet. (A secret whose only
        version was written as pending has the same two labels but no AWSPREVIOUS.)"""
        holder = described.holder(CURRENT)
        previous = described.holder(PREVIOUS)
        return (holder is not None and PENDING in described.stages[holder]
                and self.journal_stage not in described.stages[holder]
                and previous is not None and previous != holder)

    def write_pending(self, payload: Payload, state: DestinationState) -> DestinationState:
        operation = "write_pending"
        text = payload.to_json()
        token = request_token(self.secret_id, "pending", state.current.version or "none", payload.token_name or "none")
        described = self._ensure_exists(operation)
        holder = described.holder(PENDING)
        if holder == token:
            # Our own earlier write (its answer was lost, or the step runs again): AWS would ignore a
            # repeat, moto would rewrite the version and drop AWSCURRENT from it; so don't repeat.
            existing = self._fetch(version_id=token)
            if existing is None or existing.text != text:
                raise BackendConflictError("the pending version for this token name holds another value",
                                           destination=self.label, operation=operation,
                                           hint="another rotator wrote it; re-read and retry")
            return self._state_after(described, state, Slot(payload, token), existing.stages)
        if holder != state.pending.version:
            raise BackendConflictError("the pending value changed since it was read", destination=self.label,
                                       operation=operation, hint="another writer is rotating this secret; retry")
        answer = self._call("put_secret_value", SecretString=text, ClientRequestToken=token, VersionStages=[PENDING])
        assert answer is not None
        stages = tuple(answer.get("VersionStages") or ())
        if PENDING not in stages:
            # AWS ignored the write: an identical version with this token exists but lost its label
            # (e.g. discarded, then written again). Label it again.
            self._move_label(PENDING, to=token, from_=holder)
            stages += (PENDING,)
        return self._state_after(described, state, Slot(payload, answer.get("VersionId") or token), stages)

    def _state_after(self, described: _Described, state: DestinationState, pending: Slot,
                     pending_stages: tuple[str, ...] | list[str]) -> DestinationState:
        if CURRENT in pending_stages:
            current = Slot()             # the secret's first version: pending, never current
        elif described.holder(CURRENT) == state.current.version:
            current = state.current      # unchanged since the caller read it
        else:
            current = self._current_slot(self._describe())
        return DestinationState(current=current, pending=pending, exists=True)

    def _move_label(self, label: str, *, to: str | None, from_: str | None) -> None:
        params: dict[str, Any] = {"VersionStage": label}
        if to:
            params["MoveToVersionId"] = to
        if from_:
            params["RemoveFromVersionId"] = from_
        self._call("update_secret_version_stage", **params)

    def _remove_label(self, label: str, version_id: str) -> None:
        # InvalidParameterException: the label is no longer on that version (someone else removed it).
        self._call("update_secret_version_stage", tolerate=frozenset({"InvalidParameterException"}),
                   VersionStage=label, RemoveFromVersionId=version_id)

    def promote(self, payload: Payload, state: DestinationState) -> None:
        operation = "promote"
        current, pending = state.current, state.pending
        if (current.version and pending.version and current.version != pending.version
                and payload.same_token(pending.payload) and not payload.same_token(current.payload)):
            # The common case, in two calls, from the state the caller read under its lease. If a
            # label is not where that state says, AWS refuses the move and the careful path below
            # looks again.
            moved = self._call("update_secret_version_stage", tolerate=frozenset({"InvalidParameterException"}),
                               VersionStage=CURRENT, MoveToVersionId=pending.version,
                               RemoveFromVersionId=current.version)
            if moved is not None:
                self._remove_label(PENDING, pending.version)
                return
        described = self._usable(operation)
        if not described.exists:
            raise BackendConflictError("the secret does not exist, so nothing is pending", destination=self.label,
                                       operation=operation, hint="the next run writes the value again")
        current = self._fetch(stage=CURRENT) if described.holder(CURRENT) else None
        pending = self._fetch(stage=PENDING) if described.holder(PENDING) else None
        if current is not None and payload.same_token(self._lenient_payload(current.text)):
            # Already current (a promote that ran before, or AWS made the first version current):
            # only withdraw AWSPENDING, and only from a version that holds this very token.
            if pending is not None and (pending.version_id == current.version_id
                                        or payload.same_token(self._lenient_payload(pending.text))):
                self._remove_label(PENDING, pending.version_id)
            return
        if pending is None or not payload.same_token(self._lenient_payload(pending.text)):
            raise BackendConflictError("no pending version holds the new token", destination=self.label,
                                       operation=operation, hint="another writer changed AWSPENDING; the next "
                                                                 "run writes the value again")
        if current is not None and state.current.version is not None and current.version_id != state.current.version:
            # Another writer promoted its own value since the caller read: moving AWSCURRENT off
            # it would orphan that writer's token, which nothing records (rotator.quick keeps no journal).
            raise BackendConflictError("another value became current since it was read", destination=self.label,
                                       operation=operation, hint="another rotation completed meanwhile")
        # AWSCURRENT first, AWSPENDING second: a crash in between leaves the value current (and
        # still pending, which a re-run clears), never unlabelled and so invisible.
        self._move_label(CURRENT, to=pending.version_id, from_=current.version_id if current else None)
        if current is not None and (self.journal_stage in current.stages or _is_journal_text(current.text)):
            # AWS moved AWSPREVIOUS onto the old "current", which was only a journal record: a
            # consumer falling back to AWSPREVIOUS must not get rotator's bookkeeping.
            self._remove_label(PREVIOUS, current.version_id)
        self._remove_label(PENDING, pending.version_id)

    def discard_pending(self, state: DestinationState) -> None:
        """Remove AWSPENDING; never touches AWSCURRENT.

        One exception, to keep the protocol's view honest: when AWSPENDING sits on the version that
        also carries AWSCURRENT (a secret whose first value was written as pending, which AWS made
        current too), removing AWSPENDING would turn an unverified value into the "current" one. That
        version is left as it is: it still reads as pending with an empty current, so the next
        rotation writes a new pending version and its promotion moves AWSCURRENT away."""
        described = self._usable("discard_pending")
        holder = described.holder(PENDING) if described.exists else None
        if holder is None or CURRENT in described.stages[holder]:
            return
        self._remove_label(PENDING, holder)

    # -- the quick path (rotator.quick): four calls for the common rotation --

    def read_current(self) -> CurrentVersion | None:
        got = self._fetch(stage=CURRENT)
        return None if got is None else self.current_version(got.version_id, got.stages, got.text)

    def current_version(self, version_id: str, stages: tuple[str, ...], text: str) -> CurrentVersion:
        payload = None if _is_journal_text(text) else self._lenient_payload(text)
        return CurrentVersion(version_id=version_id, stages=stages, payload=payload)

    def is_plain(self, current: CurrentVersion) -> bool:
        return (current.payload is not None and PENDING not in current.stages
                and self.journal_stage not in current.stages)

    def put_pending(self, payload: Payload) -> str:
        # A fresh request token: botocore's own retries of this call reuse it (so a retry after a lost
        # answer is recognised), and no earlier version can hold it (a name reused after an abandoned
        # attempt in the same second would collide with a derived one).
        token = str(uuid.uuid4())
        answer = self._call("put_secret_value", SecretString=payload.to_json(), ClientRequestToken=token,
                            VersionStages=[PENDING])
        assert answer is not None
        stages = answer.get("VersionStages") or ()
        if PENDING not in stages or CURRENT in stages:
            raise BackendConflictError("the pending version was not stored as a new pending value",
                                       destination=self.label, operation="put_pending",
                                       hint="the secret changed meanwhile; the next run looks again")
        return str(answer.get("VersionId") or token)

    def promote_over(self, pending: str, *, replacing: str) -> bool:
        moved = self._call("update_secret_version_stage", tolerate=frozenset({"InvalidParameterException"}),
                           VersionStage=CURRENT, MoveToVersionId=pending, RemoveFromVersionId=replacing)
        if moved is not None:
            return True
        # AWSCURRENT was not on `replacing` any more: another writer's promotion, or our own whose
        # answer was lost and whose retry AWS refused.
        now = self._fetch(stage=CURRENT)
        return now is not None and now.version_id == pending

    def retire_marker(self, version: str) -> None:
        self._remove_label(PENDING, version)

    # -- journal --

    def read_journal(self) -> JournalRecord:
        # One call: a missing secret and a missing label both answer ResourceNotFoundException.
        got = self._fetch(stage=self.journal_stage)
        if got is None:
            return JournalRecord.empty()
        return JournalRecord(data=self._journal_data(got.text, "read_journal"), version=got.version_id)

    def _journal_data(self, text: str, operation: str) -> dict[str, Any]:
        try:
            data = json.loads(text)[JOURNAL_KEY]
        except (ValueError, KeyError, TypeError):
            data = None
        if not isinstance(data, dict):
            raise BackendDataError(f"the version labelled {self.journal_stage} is not a rotator journal",
                                   destination=self.label, operation=operation,
                                   hint=f"remove the {self.journal_stage} label from that version, or set "
                                        "journal_stage to an unused label")
        return data

    def write_journal(self, data: Mapping[str, Any], expected: JournalRecord) -> JournalRecord:
        operation = "write_journal"
        if _contains_token_key(data):
            raise ValueError("a journal record must not contain a 'token' key (journals hold no secrets)")
        text = json.dumps({JOURNAL_KEY: data}, sort_keys=True, separators=(",", ":"))
        if scrub(text) != text:
            raise ValueError("a journal record must not contain a secret value")
        written = json.loads(text)[JOURNAL_KEY]
        token = request_token(self.secret_id, "journal", expected.version or "genesis")
        if expected.version is not None:
            # The common case, in one call: the request token alone is the compare-and-swap (see
            # below): every journal version but the newest already has its successor, so a writer
            # starting from a stale version collides with it. (Only a writer staler than AWS's
            # clean-up of deprecated versions, 100+ writes ago, would not; leases expire long before.)
            # Anything unusual falls through to the careful path.
            answer = self._call("put_secret_value", tolerate=frozenset({"ResourceExistsException"}),
                                SecretString=text, ClientRequestToken=token, VersionStages=[self.journal_stage])
            if answer is None:
                raise self._journal_conflict()
            if self.journal_stage in (answer.get("VersionStages") or ()):
                return JournalRecord(data=written, version=answer.get("VersionId") or token)
        described = self._ensure_exists(operation)
        holder = described.holder(self.journal_stage)
        if holder == token:
            # The write this call would make is already there: a retry whose first answer was lost.
            existing = self._fetch(version_id=token)
            if existing is not None and self._journal_data(existing.text, operation) == written:
                return JournalRecord(data=written, version=token)
            raise self._journal_conflict()
        if holder != expected.version:
            raise self._journal_conflict()
        # The compare-and-swap: the request token names the version being replaced, so of two
        # writers starting from it only one can create this version (the other: ResourceExists).
        answer = self._call("put_secret_value", SecretString=text, ClientRequestToken=token,
                            VersionStages=[self.journal_stage])
        assert answer is not None
        if self.journal_stage not in (answer.get("VersionStages") or ()):
            raise self._journal_conflict()  # an identical record from this version exists, superseded since
        return JournalRecord(data=written, version=answer.get("VersionId") or token)

    def _journal_conflict(self) -> BackendConflictError:
        return BackendConflictError("the journal changed since it was read", destination=self.label,
                                    operation="write_journal", hint="another rotator wrote it; re-read and retry")

    # -- preflight --

    def check(self, *, write: bool) -> list[CheckResult]:
        results = [self._check_read()]
        if write:
            results.append(CheckResult(f"{self.label} write", True,
                                       "write: not checked (AWS has no dry-run; verified at first rotation)"))
        return results

    def _check_read(self) -> CheckResult:
        name = f"{self.label} read"
        try:
            described = self._describe()
            if not described.exists:
                if self._backend.create_missing:
                    return CheckResult(name, True, "does not exist yet; will be created at the first rotation")
                return CheckResult(name, False, "does not exist and create_missing = false: create the secret")
            if described.deleted:
                return CheckResult(name, False, "scheduled for deletion: restore it or use another secret")
            if described.holder(CURRENT) is None:
                return CheckResult(name, True, "exists, no value yet")
            slot = self._current_slot(described)
        except BackendError as exc:
            return CheckResult(name, False, exc.one_line())
        payload = slot.payload
        if payload is None:
            return CheckResult(name, True, "readable; no current token yet")
        if payload.token_name is None:
            return CheckResult(name, True, "readable; holds a hand-written token (adopted at the first rotation)")
        return CheckResult(name, True, f"readable; current token {payload.token_name}")


# --- backend ------------------------------------------------------------------------------------


class AwsSecretsManagerBackend(Backend):
    def __init__(self, settings: BackendSettings) -> None:
        options = settings.options
        self.name = settings.name
        self.create_missing = bool(options.get("create_missing", True))
        self.kms_key_id: str | None = options.get("kms_key_id")
        self.journal_stage = str(options.get("journal_stage") or DEFAULT_JOURNAL_STAGE)
        if self.journal_stage in (CURRENT, PENDING, PREVIOUS) or not 1 <= len(self.journal_stage) <= 256:
            raise ConfigError(f"{self.journal_stage!r} cannot be the journal's staging label",
                              key=f"backends.{self.name}.journal_stage",
                              hint=f"use a label of your own, e.g. {DEFAULT_JOURNAL_STAGE!r}")
        timeout = float(options.get("timeout") or DEFAULT_TIMEOUT)
        config = botocore.config.Config(
            max_pool_connections=64, connect_timeout=timeout, read_timeout=timeout,
            # total_max_attempts counts the first attempt too, like AWS_MAX_ATTEMPTS (botocore's "max_attempts"
            # counts retries only: 1 there would mean 2 requests)
            retries={"mode": "standard",
                     "total_max_attempts": int(options.get("max_attempts") or DEFAULT_MAX_ATTEMPTS)},
            user_agent_extra="rotator")
        _quiet_sdk_debug_logs()
        with aws_errors(self.name, "connect"):
            session = boto3.session.Session(profile_name=options.get("profile"), region_name=options.get("region"))
            self.client = session.client("secretsmanager", endpoint_url=options.get("endpoint_url"), config=config)

    def __repr__(self) -> str:
        return f"AwsSecretsManagerBackend({self.name!r})"

    def destination(self, options: Mapping[str, Any], *, target: str) -> AwsDestination:
        secret_id = options.get("secret_id")
        if not isinstance(secret_id, str) or not secret_id:
            raise ConfigError("an AWS destination needs secret_id", key=f"targets[{target}].destinations",
                              hint="e.g. { backend = \"aws\", secret_id = \"prod/app/funnelback\" }")
        return AwsDestination(self, secret_id=secret_id, kms_key_id=options.get("kms_key_id") or self.kms_key_id,
                              target=target)

    def read_currents(self, destinations: Sequence[Destination]) -> dict[str, CurrentVersion]:
        """AWSCURRENT of up to 20 secrets per call (BatchGetSecretValue), by destination label: the
        first read of quick rotations in a batch run. A secret the answer reports an error for, or
        holding binary data, is left out (its rotation reads it itself)."""
        ours = {d.secret_id: d for d in destinations if isinstance(d, AwsDestination)}
        ids = list(ours)
        found: dict[str, CurrentVersion] = {}
        for start in range(0, len(ids), BATCH_READ_SIZE):
            chunk = ids[start:start + BATCH_READ_SIZE]
            params: dict[str, Any] = {"SecretIdList": chunk}
            while True:
                answer = _call(self.client, self.name, "batch_get_secret_value", **params)
                assert answer is not None
                for value in answer.get("SecretValues") or ():
                    destination = ours.get(value.get("Name", "")) or ours.get(value.get("ARN", ""))
                    text = value.get("SecretString")
                    if destination is not None and text is not None and value.get("VersionId"):
                        found[destination.label] = destination.current_version(
                            value["VersionId"], tuple(value.get("VersionStages") or ()), text)
                if not answer.get("NextToken"):
                    break
                params["NextToken"] = answer["NextToken"]
        return found

    def check(self) -> list[CheckResult]:
        name = f"{self.name}: endpoint and credentials"
        region = self.client.meta.region_name
        try:
            _call(self.client, self.name, "list_secrets", MaxResults=1)
        except BackendPermissionError:
            return [CheckResult(name, True, f"region {region}: credentials accepted; ListSecrets is denied, which "
                                            "rotator does not need (each secret is checked on its own)")]
        except BackendError as exc:
            return [CheckResult(name, False, exc.one_line())]
        return [CheckResult(name, True, f"region {region}: reachable, credentials accepted")]

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


def _quiet_sdk_debug_logs() -> None:
    """botocore logs request bodies (SecretString included) at DEBUG, and chatter ("Found
    credentials in environment variables.") at INFO, outside rotator's JSON log format: keep the
    SDK's loggers at WARNING or above, whatever level the root logger is given (`--log-level debug`)."""
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:  # NOTSET (inherit from root) included
            logger.setLevel(logging.WARNING)

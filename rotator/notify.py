"""Webhook notifications ([[notify]]): rotation failures, successes (opt-in), stale tokens.

Bodies hold names, results and times only, never a token value. A webhook URL is a credential
(Slack's carries its key): it is resolved when a message is sent, registered as a secret so the log
redaction scrubs it anywhere, and never logged. Sending happens on a background thread with the
configured timeout; a failed or slow webhook is logged and never reaches the scheduler.

Events:
- ``failure``: a run failed. Sent when a target starts failing and then at most once an hour while
  it keeps failing (a stuck target must not flood the channel every poll).
- ``success``: a rotation completed (rotated, or resumed and completed). Opt-in via ``on``.
- ``stale``: the served token is older than the target's ``max_age`` (rotation is stuck or
  disabled). Checked on every tick; sent at most once per target per hour.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from rotator import __version__
from rotator.config import NotifySettings
from rotator.durations import format_duration
from rotator.errors import RotatorError
from rotator.journal import iso
from rotator.logs import get_logger
from rotator.secret import Secret, scrub

log = get_logger("rotator.notify")

REPEAT_AFTER = 3600.0          # seconds between repeated failure / stale messages for one target
QUEUE_SIZE = 1000


class Notifier:
    """Decides what to send and sends it in the background. Thread-safe."""

    def __init__(self, hooks: Sequence[NotifySettings], *, clock: Callable[[], datetime] | None = None,
                 on_sent: Callable[[str, bool], None] | None = None) -> None:
        self.hooks = tuple(hooks)
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._on_sent = on_sent
        self._lock = threading.Lock()
        self._failing: dict[str, float] = {}      # target -> monotonic time of the last failure message
        self._stale: dict[str, float] = {}        # target -> monotonic time of the last stale message
        self._queue: queue.Queue[tuple[NotifySettings, dict[str, Any]] | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.hooks)

    def replace_hooks(self, hooks: Sequence[NotifySettings]) -> None:
        """After a config reload: later messages go to the new hooks."""
        self.hooks = tuple(hooks)

    # --- events -----------------------------------------------------------------------------------

    def outcome(self, outcome: Any) -> None:
        """A run's rotation.Outcome: failure (transition, then hourly) or success."""
        if not self.hooks:
            return
        target = outcome.target
        now = time.monotonic()
        if not outcome.ok:
            with self._lock:
                last = self._failing.get(target)
                if last is not None and now - last < REPEAT_AFTER:
                    return
                self._failing[target] = now
            self._emit("failure", target=target, result=outcome.result, error=outcome.error)
            return
        with self._lock:
            self._failing.pop(target, None)
        if outcome.result in ("rotated", "resumed"):
            self._emit("success", target=target, result=outcome.result, token_name=outcome.new_token_name)

    def check_stale(self, target: Any, *, token_name: str | None, rotated_at: datetime | None,
                    now: datetime) -> bool:
        """Send `stale` when the served token is older than target.max_age (at most hourly).
        Returns whether the token is stale."""
        if not target.max_age or rotated_at is None:
            return False
        age = (now - rotated_at).total_seconds()
        stale = age > target.max_age
        with self._lock:
            if not stale:
                self._stale.pop(target.name, None)
                return False
            last = self._stale.get(target.name)
            if last is not None and time.monotonic() - last < REPEAT_AFTER:
                return True
            self._stale[target.name] = time.monotonic()
        self._emit("stale", target=target.name, result="stale", token_name=token_name,
                   error=f"token {token_name or '?'} is {format_duration(age)} old, "
                         f"older than max_age {format_duration(target.max_age)}",
                   age_seconds=round(age))
        return True

    # --- sending ----------------------------------------------------------------------------------

    def _emit(self, event: str, **fields: Any) -> None:
        hooks = [h for h in self.hooks if event in h.on]
        if not hooks:
            return
        body = {"event": event, "target": fields.get("target"), "result": fields.get("result"),
                "error": scrub(fields["error"]) if fields.get("error") else None,
                "token_name": fields.get("token_name"), "at": iso(self._clock())}
        if "age_seconds" in fields:
            body["age_seconds"] = fields["age_seconds"]
        self._ensure_thread()
        for hook in hooks:
            try:
                self._queue.put_nowait((hook, body))
            except queue.Full:
                log.warning("notify_dropped", notify_event=event, target=body["target"], reason="queue full")

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._drain, name="notify", daemon=True)
                self._thread.start()

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                hook, body = item
                ok = send(hook, body)
                if self._on_sent is not None:
                    self._on_sent(body["event"], ok)
            finally:
                self._queue.task_done()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to `timeout` seconds), then stop the sender."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)


def render(hook: NotifySettings, body: dict[str, Any]) -> dict[str, Any]:
    """The JSON document posted to `hook`: the event itself, or Slack's {"text": ...}."""
    if hook.format != "slack":
        return body
    event, target = body["event"], body["target"]
    if event == "failure":
        text = f":rotating_light: rotator: rotation of *{target}* failed: {body.get('error') or body['result']}"
    elif event == "success":
        text = f":white_check_mark: rotator: *{target}* rotated to token `{body.get('token_name')}`"
    else:
        text = f":hourglass: rotator: *{target}* is stale: {body.get('error')}"
    return {"text": text}


def send(hook: NotifySettings, body: dict[str, Any]) -> bool:
    """POST one message; True on a 2xx answer. Never raises, never logs the URL."""
    url = ""
    try:
        url = hook.resolve_url()
        if not url:
            raise RotatorError("the webhook URL is empty")
        Secret(url)  # registered: the log redaction scrubs it from any text from here on
        if not url.lower().startswith(("https://", "http://")):
            raise RotatorError("the webhook URL is not an http(s) URL")
        data = json.dumps(render(hook, body)).encode("utf-8")
        request = urllib.request.Request(url, data=data, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": f"rotator/{__version__}"})
        with urllib.request.urlopen(request, timeout=hook.timeout) as response:  # noqa: S310 - http(s) checked
            response.read(4096)
            status = response.status
    except RotatorError as exc:
        _failed(body, exc.one_line(), url)
        return False
    except urllib.error.HTTPError as exc:
        _failed(body, f"HTTP {exc.code}", url)
        return False
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        _failed(body, f"{type(exc).__name__}: {reason}", url)
        return False
    except Exception as exc:  # noqa: BLE001 - a webhook must never take the scheduler down
        _failed(body, f"internal error ({type(exc).__name__})", url)
        return False
    ok = 200 <= status < 300
    if ok:
        log.info("notify_sent", notify_event=body["event"], target=body["target"], status=status)
    else:
        _failed(body, f"HTTP {status}", url)
    return ok


def _failed(body: dict[str, Any], error: str, url: str) -> None:
    text = error.replace(url, "<webhook url>") if url else error
    log.warning("notify_failed", notify_event=body["event"], target=body["target"], error=scrub(text))

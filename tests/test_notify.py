"""Webhook notifications against a real local HTTP receiver."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from rotator import notify
from rotator.config import DestinationSettings, NotifySettings, TargetSettings, parse_config
from rotator.notify import Notifier, render, send
from rotator.rotation import Outcome

NOW = datetime(2026, 12, 4, 15, 0, tzinfo=timezone.utc)


class Receiver:
    """A webhook endpoint on loopback that records what it is sent."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status, self.delay = status, delay
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._event = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._event:
                    receiver.received.append(json.loads(body))
                    receiver.headers.append(dict(self.headers))
                    receiver._event.notify_all()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/SECRETKEY0123456789"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._event:
            while len(self.received) < count and time.monotonic() < deadline:
                self._event.wait(deadline - time.monotonic())
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _default_structlog() -> Iterator[None]:
    # An earlier in-process CLI test may leave structlog writing to its (closed) captured stderr.
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def target(**overrides: Any) -> TargetSettings:
    values: dict[str, Any] = dict(name="web", client_id="acme", token_name="web", interval=3600.0,
                                  grace_period=0.0, destinations=(DestinationSettings("aws", {"secret_id": "x"}),))
    values.update(overrides)
    return TargetSettings(**values)


def failed(name: str = "web", error: str = "web clone: Funnelback POST /clone -> HTTP 500: boom") -> Outcome:
    return Outcome(name, "failed", ok=False, error=error)


def test_failure_posts_json_without_values(receiver: Receiver) -> None:
    notifier = Notifier([NotifySettings(url=receiver.url)], clock=lambda: NOW)
    notifier.outcome(failed())
    [body] = receiver.wait_for(1)
    assert body == {"event": "failure", "target": "web", "result": "failed",
                    "error": "web clone: Funnelback POST /clone -> HTTP 500: boom", "token_name": None,
                    "at": "2026-12-04T15:00:00Z"}
    assert receiver.headers[0]["Content-Type"] == "application/json"
    notifier.close()


def test_failure_is_sent_when_a_target_starts_failing_then_at_most_hourly(receiver: Receiver,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    notifier = Notifier([NotifySettings(url=receiver.url)], clock=lambda: NOW)
    notifier.outcome(failed())
    notifier.outcome(failed())                         # still failing: not again
    notifier.outcome(failed("api"))                    # another target: its own message
    assert len(receiver.wait_for(2)) == 2
    monkeypatch.setattr(notify, "REPEAT_AFTER", 0.0)   # an hour later
    notifier.outcome(failed())
    assert len(receiver.wait_for(3)) == 3
    monkeypatch.setattr(notify, "REPEAT_AFTER", 3600.0)
    notifier.outcome(Outcome("web", "rotated", new_token_name="web-2"))   # recovered (success not subscribed)
    notifier.outcome(failed())                         # fails again: a new message at once
    bodies = receiver.wait_for(4)
    assert [b["target"] for b in bodies] == ["web", "api", "web", "web"]
    assert all(b["event"] == "failure" for b in bodies)
    notifier.close()


def test_success_only_when_subscribed(receiver: Receiver) -> None:
    other = Receiver()
    try:
        notifier = Notifier([NotifySettings(url=receiver.url, on=("failure", "success")),
                             NotifySettings(url=other.url)], clock=lambda: NOW)
        notifier.outcome(Outcome("web", "rotated", new_token_name="web-20261204T150000Z"))
        notifier.outcome(Outcome("web", "not-due"))
        notifier.outcome(Outcome("web", "revoked", revoked=["web-1"]))
        [body] = receiver.wait_for(1)
        assert body["event"] == "success" and body["token_name"] == "web-20261204T150000Z"
        assert body["result"] == "rotated"
        notifier.close()
        assert other.received == []
    finally:
        other.close()


def test_stale_token_is_reported_once_an_hour(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    notifier = Notifier([NotifySettings(url=receiver.url)], clock=lambda: NOW)
    t = target(max_age=7 * 86400.0)
    fresh = NOW - timedelta(days=1)
    old = NOW - timedelta(days=8)
    assert notifier.check_stale(t, token_name="web-1", rotated_at=fresh, now=NOW) is False
    assert notifier.check_stale(t, token_name="web-1", rotated_at=old, now=NOW) is True
    assert notifier.check_stale(t, token_name="web-1", rotated_at=old, now=NOW) is True   # no second message
    [body] = receiver.wait_for(1)
    assert body["event"] == "stale" and body["target"] == "web" and body["token_name"] == "web-1"
    assert body["age_seconds"] == 8 * 86400 and "older than max_age 7d" in body["error"]
    monkeypatch.setattr(notify, "REPEAT_AFTER", 0.0)
    notifier.check_stale(t, token_name="web-1", rotated_at=old, now=NOW)
    assert len(receiver.wait_for(2)) == 2
    # no max_age: never stale
    assert notifier.check_stale(target(), token_name="web-1", rotated_at=old, now=NOW) is False
    notifier.close()


def test_slack_format_is_a_text_message(receiver: Receiver) -> None:
    notifier = Notifier([NotifySettings(url=receiver.url, format="slack", on=("failure", "success"))],
                        clock=lambda: NOW)
    notifier.outcome(failed())
    notifier.outcome(Outcome("api", "rotated", new_token_name="api-20261204T150000Z"))
    bodies = receiver.wait_for(2)
    assert all(set(b) == {"text"} for b in bodies)
    assert "*web* failed" in bodies[0]["text"] and "HTTP 500" in bodies[0]["text"]
    assert "api-20261204T150000Z" in bodies[1]["text"]
    notifier.close()


def test_webhook_failures_are_logged_never_raised_and_never_show_the_url() -> None:
    bad = Receiver(status=500)
    slow = Receiver(delay=1.0)
    try:
        with capture_logs() as logs:
            assert send(NotifySettings(url=bad.url), {"event": "failure", "target": "web"}) is False
            assert send(NotifySettings(url=slow.url, timeout=0.2), {"event": "failure", "target": "web"}) is False
            closed = bad.url.replace(str(bad.server.server_address[1]), "1")   # nothing listens on port 1
            assert send(NotifySettings(url=closed), {"event": "failure", "target": "web"}) is False
            assert send(NotifySettings(url="ftp://example.invalid/x"), {"event": "failure", "target": "web"}) is False
            assert send(NotifySettings(url_env="ROTATOR_TEST_UNSET_HOOK"), {"event": "failure", "target": "web"}) \
                is False
        failures = [e for e in logs if e["event"] == "notify_failed"]
        assert len(failures) == 5
        assert "HTTP 500" in failures[0]["error"]
        text = json.dumps(logs)
        assert "SECRETKEY0123456789" not in text and "/hooks/" not in text
        assert "ROTATOR_TEST_UNSET_HOOK" in failures[4]["error"]
    finally:
        bad.close()
        slow.close()


def test_url_from_environment(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROTATOR_TEST_HOOK", receiver.url)
    assert send(NotifySettings(url_env="ROTATOR_TEST_HOOK"), {"event": "success", "target": "web"}) is True
    assert receiver.wait_for(1)[0]["event"] == "success"


def test_a_slow_webhook_does_not_block_the_caller() -> None:
    slow = Receiver(delay=1.5)
    try:
        notifier = Notifier([NotifySettings(url=slow.url)], clock=lambda: NOW)
        began = time.monotonic()
        for name in ("a", "b", "c"):
            notifier.outcome(failed(name))
        assert time.monotonic() - began < 0.5
        notifier.close(timeout=0.2)   # gives up waiting: never holds up shutdown
        assert time.monotonic() - began < 1.5
    finally:
        slow.close()


def test_render_json_is_the_event_itself() -> None:
    body = {"event": "failure", "target": "web", "result": "failed", "error": "x", "token_name": None, "at": "t"}
    assert render(NotifySettings(url="http://x"), body) is body


def test_notify_config() -> None:
    config = parse_config("""
        [funnelback]
        url = "https://fb.example.com/admin-api"
        token_env = "FB_TOKEN"
        [backends.aws]
        type = "aws-secrets-manager"
        [[targets]]
        name = "web"
        client_id = "acme"
        token_name = "web"
        max_age = "45d"
        destinations = [{ backend = "aws", secret_id = "prod/web" }]
        [[notify]]
        url_env = "SLACK_WEBHOOK"
        format = "slack"
        on = ["failure", "success", "stale"]
    """)
    [hook] = config.notify
    assert hook.format == "slack" and hook.on == ("failure", "success", "stale") and hook.url_env == "SLACK_WEBHOOK"
    assert config.target("web").max_age == 45 * 86400

"""Nothing secret leaks (design-notes invariant 6).

Secrets here are: every token value the Funnelback emulator ever issued during the test (old, new,
abandoned clones, revoked or live - recorded as they are created), the rotator's admin token, and a
canary AWS secret access key (moto accepts any). They must not appear in:

- stdout/stderr of the real CLI: a full rotation at every log level x format, every failure path of
  a compact fault table, `status --json`, `check`;
- exception strings (Outcome.error), raw log event dicts (captured before redaction), metrics text;
- files: rotator writes no file of its own (no tempfile, no open-for-write outside `rotator demo`),
  so a rotation must create no file at all in its working directory, $TMPDIR or $HOME;
- process arguments: `/proc/<pid>/cmdline` of a `rotator rotate` held mid-rotation by a hang fault.

Plus unit tests of the redaction processor (rotator.logs.redact) and of the configured pipeline.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import ADMIN_TOKEN, make_target
from harness import Stack, new_stack
from structlog.testing import capture_logs
from test_fault_matrix import (
    CLIENT,
    Clock,
    Crash,
    FaultyFunnelback,
    fb_settings,
    seed_destinations,
)

from rotator import logs
from rotator.errors import (
    BackendUnavailableError,
    FunnelbackProtocolError,
    RotationError,
)
from rotator.funnelback import FunnelbackClient
from rotator.metrics import Metrics
from rotator.rotation import TargetRotation
from rotator.secret import REDACTED, Secret
from rotator.testing.funnelback_emulator import FunnelbackEmulator

pytestmark = pytest.mark.timeout(120)

AWS_CANARY = "aws-secret-canary-Q9vX2mL7pR4tZ8wK"
WRONG_ADMIN = "wrong-admin-canary-7HfK2pQ9xL4mN8vB"


# --- recording every value Funnelback ever issued ------------------------------------------------


class Issued:
    """Every token value the emulator creates, from now on (revoked ones included)."""

    def __init__(self, emulator: FunnelbackEmulator) -> None:
        self.values: list[str] = []
        state = emulator.state
        with state.lock:
            self.values += [t.value for ts in state.clients.values() for t in ts.values()]
        original = state._index

        def index(token: Any) -> None:
            self.values.append(token.value)
            original(token)
        state._index = index  # type: ignore[method-assign]

    def secrets(self, *extra: str) -> list[str]:
        return [*self.values, ADMIN_TOKEN, AWS_CANARY, *extra]


def assert_clean(texts: dict[str, str], secrets: list[str]) -> None:
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:4]}...) leaked into {where}"


# --- the real CLI ---------------------------------------------------------------------------------


@pytest.fixture
def stack(emulator: FunnelbackEmulator, moto_url: str, tmp_path: Path) -> Stack:
    work = tmp_path / "work"
    work.mkdir()
    return new_stack(emulator, moto_url, work)


@pytest.fixture
def issued(emulator: FunnelbackEmulator) -> Issued:
    return Issued(emulator)


def run_cli(stack: Stack, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(stack.command(*args), env=cli_env(stack, env), capture_output=True, text=True, check=False,
                          timeout=timeout, cwd=stack.workdir)


def cli_env(stack: Stack, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = stack.env()
    sandbox = stack.workdir.parent
    for name in ("tmp", "home"):
        (sandbox / name).mkdir(exist_ok=True)
    env.update(AWS_SECRET_ACCESS_KEY=AWS_CANARY, TMPDIR=str(sandbox / "tmp"), HOME=str(sandbox / "home"))
    env.update(extra or {})
    return env


def files_under(*roots: Path) -> dict[str, int]:
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            found[str(path)] = path.stat().st_mode
    return found


def seed_secret(stack: Stack) -> str:
    value = stack.emulator.token_value(CLIENT, "web")
    stack.put_secret("web", {"token": value})
    return value


def sandbox_roots(stack: Stack) -> list[Path]:
    sandbox = stack.workdir.parent
    return [stack.workdir, sandbox / "tmp", sandbox / "home"]


@pytest.mark.parametrize("level", ["debug", "info", "warning"])
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_full_rotation_leaks_nothing_at_any_level_and_format(stack: Stack, issued: Issued, level: str,
                                                            fmt: str) -> None:
    seed_secret(stack)
    stack.write_config([{"name": "web"}])
    cli_env(stack)
    before = files_under(*sandbox_roots(stack))
    result = run_cli(stack, "rotate", "web", "--log-level", level, "--log-format", fmt)
    assert result.returncode == 0, result.stdout + result.stderr
    assert files_under(*sandbox_roots(stack)) == before, "the rotation wrote files"
    stack.assert_converged("web")
    texts = {"rotate stdout": result.stdout, "rotate stderr": result.stderr}
    if level == "debug":
        assert "funnelback.request" in result.stderr        # the debug logs were there to be scanned
        for command in (("status", "--json"), ("status",), ("check",)):
            other = run_cli(stack, *command, "--log-level", level, "--log-format", fmt)
            assert other.returncode == 0, other.stdout + other.stderr
            texts[f"{' '.join(command)} stdout"] = other.stdout
            texts[f"{' '.join(command)} stderr"] = other.stderr
        assert json.loads(texts["status --json stdout"])[0]["token_name"] == stack.stage("web")["token_name"]
    if level != "warning":
        assert "step" in result.stderr
    assert len(issued.values) >= 2
    assert_clean(texts, issued.secrets())


# Failure paths: (id, emulator faults, environment overrides, config text replacements)
FAILURES: list[tuple[str, list[dict[str, Any]], dict[str, str], dict[str, str]]] = [
    ("clone-403", [{"kind": "status", "status": 403, "method": "POST", "path": r"/clone$", "times": None}], {}, {}),
    ("clone-503-always", [{"kind": "status", "status": 503, "method": "POST", "path": r"/clone$", "times": None}], {}, {}),
    ("clone-lost-once", [{"kind": "lose_answer", "method": "POST", "path": r"/clone$", "times": 1}], {}, {}),
    ("new-token-refused", [{"kind": "status", "status": 401, "method": "GET", "path": r"/current-user$", "times": 1}], {}, {}),
    ("verify-timeout", [{"kind": "hang", "method": "GET", "path": r"/current-user$", "times": None}], {},
     {'timeout = "3s"': 'timeout = "500ms"'}),
    ("revoke-500-always", [{"kind": "status", "status": 500, "method": "DELETE", "path": r"/application-token/",
                                "times": None}], {}, {}),
    ("source-missing", [{"kind": "status", "status": 404, "method": "POST", "path": r"/clone$", "times": None},
                        {"kind": "status", "status": 429, "method": "GET", "path": r"/application-token$",
                             "times": None}], {}, {}),
    ("wrong-admin-token", [], {"FB_ADMIN_TOKEN": WRONG_ADMIN}, {}),
    ("aws-unreachable", [], {}, {"endpoint_url = ": 'max_attempts = 1\nendpoint_url = "http://127.0.0.1:9"\n#'}),
]


@pytest.mark.parametrize("name,faults,env,edits", FAILURES, ids=[f[0] for f in FAILURES])
def test_failure_paths_leak_nothing(stack: Stack, issued: Issued, name: str, faults: list[dict[str, Any]],
                                    env: dict[str, str], edits: dict[str, str]) -> None:
    seed_secret(stack)
    stack.write_config([{"name": "web"}])
    path = stack.workdir / "rotation.toml"
    text = path.read_text()
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new, 1)
    path.write_text(text)
    for fault in faults:
        stack.emulator.faults.add(**fault)
    fmt = "json" if len(name) % 2 else "console"
    before = files_under(*sandbox_roots(stack))
    result = run_cli(stack, "rotate", "web", "--log-level", "debug", "--log-format", fmt, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    status = run_cli(stack, "status", "--json", "--log-level", "debug", env=env)
    check = run_cli(stack, "check", "--log-level", "debug", env=env)
    assert files_under(*sandbox_roots(stack)) == before, "a run wrote files"
    texts = {"rotate stdout": result.stdout, "rotate stderr": result.stderr, "status stdout": status.stdout,
             "status stderr": status.stderr, "check stdout": check.stdout, "check stderr": check.stderr}
    assert_clean(texts, issued.secrets(WRONG_ADMIN))
    if name not in ("clone-lost-once", "revoke-500-always"):
        assert result.returncode == 1, result.stdout + result.stderr


def test_no_secret_in_process_arguments(stack: Stack, issued: Issued) -> None:
    """Everything secret reaches rotator by environment or file reference, never on its command line:
    inspect /proc/<pid>/cmdline of a `rotator rotate` held mid-rotation by a hanging clone."""
    seed_secret(stack)
    stack.write_config([{"name": "web"}])
    stack.emulator.faults.add(kind="hang", method="POST", path=r"/clone$", times=1)
    process = subprocess.Popen(stack.command("rotate", "web"), env=cli_env(stack), cwd=stack.workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while stack.emulator.calls("clone_client_token") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stack.emulator.calls("clone_client_token") > 0, "the rotation never reached the clone"
        assert process.poll() is None
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
        assert "rotate" in cmdline
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().decode(errors="replace")
        assert "FB_ADMIN_TOKEN=" in environ        # the reference mechanism the config names
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    assert_clean({"/proc/<pid>/cmdline": cmdline}, issued.secrets())


# --- in-process: exception strings, raw log events, metrics ----------------------------------------


ENGINE_FAILURES: list[tuple[str, Any]] = [
    ("clone-403", {"kind": "status", "status": 403, "method": "POST", "path": r"/clone$", "times": None}),
    ("clone-503-always", {"kind": "status", "status": 503, "method": "POST", "path": r"/clone$", "times": None}),
    ("clone-lost", {"kind": "lose_answer", "method": "POST", "path": r"/clone$", "times": None}),
    ("clone-garbage", {"kind": "status", "status": 200, "body": '{"data": {"token": 7}}', "method": "POST",
                           "path": r"/clone$", "times": None}),
    ("new-token-refused", {"kind": "status", "status": 401, "method": "GET", "path": r"/current-user$", "times": 1}),
    ("verify-503-always", {"kind": "status", "status": 503, "method": "GET", "path": r"/current-user$", "times": None}),
    ("revoke-500-always", {"kind": "status", "status": 500, "method": "DELETE", "path": r"/application-token/",
                               "times": None}),
    ("persist-fails", "write_pending"),
    ("promote-fails", "promote"),
    ("crash-after-clone", ("clone_client_token", "after")),
]


@pytest.mark.parametrize("name,fault", ENGINE_FAILURES, ids=[f[0] for f in ENGINE_FAILURES])
def test_engine_errors_log_events_and_metrics_hold_no_secret(emulator: FunnelbackEmulator, name: str,
                                                             fault: Any) -> None:
    issued = Issued(emulator)
    client = FunnelbackClient(fb_settings(emulator.url, timeout=1.0, retries=1))
    funnelback = FaultyFunnelback(client)
    destinations = seed_destinations(emulator, "memory:a", "memory:b")
    if isinstance(fault, dict):
        emulator.faults.add(**fault)
    elif isinstance(fault, tuple):
        funnelback.crash = fault
    else:
        destinations[1].inject(fault, "lost" if fault == "write_pending" else "unavailable", 1)
    rotation = TargetRotation(make_target(lock_ttl=30.0), funnelback, destinations, clock=Clock(),
                              sleep=lambda s: None)
    outcome = None
    with capture_logs() as events:
        try:
            outcome = rotation.run(force=True)
        except Crash:
            pass
    client.close()
    metrics = Metrics()
    if outcome is not None:
        metrics.observe_outcome(outcome)
    texts = {"Outcome.error": (outcome.error or "") if outcome else "", "Outcome": repr(outcome),
             "raw log events": repr(events), "metrics": metrics.render().decode(),
             "destinations": repr([d.current for d in destinations] + [d.pending for d in destinations])}
    assert events, "no log events were captured"
    assert_clean(texts, issued.secrets())


def test_rotator_errors_never_carry_values() -> None:
    value = Secret("a-token-value-that-must-not-show-1234")
    for error in (FunnelbackProtocolError("bad answer", method="POST", path="/x", status=200),
                  BackendUnavailableError("down", destination="aws:x", operation="write_pending"),
                  RotationError("failed", target="web", step="persist")):
        assert value.reveal() not in str(error) + repr(error) + error.one_line()
    assert value.reveal() not in repr(value) + str(value) + f"{value}" + f"{value!r}"


# --- the redaction processor ----------------------------------------------------------------------


def render(**event: Any) -> dict[str, Any]:
    """Run the real redaction processor, then capture what a renderer would get."""
    capture = structlog.testing.LogCapture()
    logger = structlog.wrap_logger(structlog.PrintLogger(io.StringIO()), processors=[logs.redact, capture])
    logger.info("event", **event)
    assert len(capture.entries) == 1
    return capture.entries[0]


def test_redact_replaces_secret_objects_and_secret_keys() -> None:
    secret = Secret("s3cr3t-value-for-redaction-test-01")
    entry = render(token="plain-token-value-0001", password="hunter2-password", value=secret,
                   x_security_token="abc", authorization="Bearer xyz", Token="CaseInsensitive",
                   new_token="new-token-value-0002", credential=secret, nested={"token": "inner-value-0003",
                                                                            "name": "kept"},
                   items=[secret, "visible"], token_name="search-frontend", secret_id="prod/web")
    for key in ("token", "password", "value", "authorization", "Token", "new_token"):
        assert entry[key] == REDACTED, key
    assert entry["credential"] == REDACTED
    assert entry["nested"] == {"token": REDACTED, "name": "kept"}
    assert entry["items"] == [REDACTED, "visible"]
    assert entry["token_name"] == "search-frontend" and entry["secret_id"] == "prod/web"   # references stay


def test_redact_scrubs_registered_values_from_free_text_and_exceptions() -> None:
    secret = Secret("embedded-secret-value-0123456789")
    value = secret.reveal()
    error = RuntimeError(f"request failed: token={value} rejected")
    entry = render(message=f"sent {value} to the server", error=error, url=f"https://x/?t={value}",
                   detail={"note": f"a {value} b"}, many=(f"{value}!", 3))
    rendered = repr(entry)
    assert value not in rendered
    assert REDACTED in entry["message"] and REDACTED in entry["error"] and "RuntimeError" in entry["error"]
    assert entry["detail"] == {"note": f"a {REDACTED} b"}


def test_short_values_are_not_scrubbed_from_ordinary_words() -> None:
    Secret("web")      # too short to scrub: it would match ordinary words
    assert render(message="web is fine")["message"] == "web is fine"


@pytest.fixture
def configured_logging() -> Iterator[io.StringIO]:
    saved = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        yield stream
    finally:
        structlog.configure(**saved)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_configured_pipeline_redacts_events_tracebacks_and_stdlib_logs(configured_logging: io.StringIO,
                                                                      fmt: str) -> None:
    secret = Secret("pipeline-secret-value-ABCDEFGH-42")
    value = secret.reveal()
    logs.configure(fmt=fmt, level="debug", stream=configured_logging)
    log = logs.get_logger("leak-test")
    log.debug("debug_event", token=value, note=f"value {value}", obj=secret)
    try:
        raise ValueError(f"boom with {value}")
    except ValueError:
        log.exception("crashed", context=f"ctx {value}")
    logging.getLogger("botocore.test").warning("sdk says %s", value)
    text = configured_logging.getvalue()
    assert "debug_event" in text and "crashed" in text and "sdk says" in text
    assert value not in text
    assert REDACTED in text

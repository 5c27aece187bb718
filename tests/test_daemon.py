"""`rotator run` as a real subprocess against the Funnelback emulator and moto (real HTTP).

Intervals are seconds; every wait polls with a deadline. Checks: rotations happen on time, previous
tokens are revoked after the grace period, /metrics /healthz /readyz, a clean SIGTERM exit, restarts
neither rotate early nor forget a pending revocation, two daemons never double-rotate, SIGTERM
mid-rotation converges, SIGHUP reloads (and survives a broken config), webhooks are sent.
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from conftest import ADMIN_TOKEN
from harness import Stack, new_stack
from moto_server import free_port
from rotator.naming import is_generation


@pytest.fixture
def stack(emulator, moto_url, tmp_path) -> Stack:
    return new_stack(emulator, moto_url, tmp_path)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def config_text(stack: Stack, port: int, targets: list[dict[str, Any]], *, notify_url: str | None = None,
                notify_on: tuple[str, ...] = ("failure", "success")) -> str:
    blocks = []
    for t in targets:
        blocks.append(textwrap.dedent(f"""
            [[targets]]
            name = "{t['name']}"
            client_id = "acme"
            token_name = "{t.get('token_name', t['name'])}"
            interval = "{t.get('interval', '3s')}"
            grace_period = "{t.get('grace', '1s')}"
            lock_ttl = "{t.get('lock_ttl', '2s')}"
            lock_wait = "30s"
            destinations = [{{ backend = "aws", secret_id = "{stack.secret_id(t['name'])}" }}]
        """))
    if notify_url:
        blocks.append(textwrap.dedent(f"""
            [[notify]]
            url = "{notify_url}"
            on = {json.dumps(list(notify_on))}
            timeout = "2s"
        """))
    return textwrap.dedent(f"""
        [funnelback]
        url = "{stack.emulator.url}"
        token_env = "FB_ADMIN_TOKEN"
        timeout = "5s"
        connect_timeout = "1s"
        retries = 2
        backoff_base = "50ms"
        backoff_max = "200ms"

        [service]
        listen = "127.0.0.1:{port}"
        concurrency = 4
        preflight_interval = "2s"

        [backends.aws]
        type = "aws-secrets-manager"
        region = "us-east-1"
        endpoint_url = "{stack.moto_url}"
    """) + "".join(blocks)


class RunningDaemon:
    """`python -m rotator run` in a subprocess, its JSON log in a file."""

    def __init__(self, stack: Stack, targets: list[dict[str, Any]], *, name: str = "daemon", **config: Any) -> None:
        self.stack = stack
        self.port = free_port()
        self.config = stack.workdir / f"{name}.toml"
        self.config.write_text(config_text(stack, self.port, targets, **config))
        self.log_path = stack.workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RunningDaemon:
        command = [*self.stack.command("run")[:-2], "--config", str(self.config), "--log-format", "json"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, env=self.stack.env(), stdout=log, stderr=log,
                                            cwd=self.stack.workdir)
        wait_for(lambda: self.get("/healthz")[0] == 200, 20, "/healthz to answer 200")
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return 0, ""

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        assert self.process is not None
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"no exit within {timeout}s of SIGTERM:\n{self.log_text()[-3000:]}") from None
        return code, time.monotonic() - began

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                out.append(event)
        return out


@pytest.fixture
def daemons() -> Iterator[list[RunningDaemon]]:
    started: list[RunningDaemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def seed(stack: Stack, name: str = "web") -> str:
    value = stack.emulator.token_value("acme", name) or stack.emulator.add_token("acme", name)
    stack.put_secret(name, {"token": value})
    return value


def current(stack: Stack, name: str = "web") -> dict[str, Any]:
    return stack.stage(name) or {}


def rotated_at(doc: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(doc["rotated_at"].replace("Z", "+00:00"))


def live_generations(stack: Stack, token_name: str = "web") -> set[str]:
    return {n for n in stack.emulator.token_names("acme") if n == token_name or is_generation(token_name, n)}


def assert_no_orphans(stack: Stack, name: str = "web") -> None:
    """Live tokens are exactly the served one plus those the journal will revoke after their grace."""
    serving = current(stack, name)["token_name"]
    waiting = {r["name"] for r in stack.journal(name).get("pending_revocations", [])}
    if stack.stage(name, "AWSPENDING") == current(stack, name):
        # the quick path's mark: the previous token (AWSPREVIOUS) is not retired yet
        waiting.add((stack.stage(name, "AWSPREVIOUS") or {}).get("token_name", name))
    assert live_generations(stack, name) == {serving} | waiting
    assert stack.emulator.token_value("acme", serving) == current(stack, name)["token"]


def promoted_token_names(stack: Stack, name: str = "web") -> list[str]:
    """Token names of every value version the secret ever held (journal versions excluded)."""
    sm = stack.sm()
    names = []
    versions = sm.list_secret_version_ids(SecretId=stack.secret_id(name), IncludeDeprecated=True)["Versions"]
    for version in versions:
        doc = json.loads(sm.get_secret_value(SecretId=stack.secret_id(name), VersionId=version["VersionId"])
                         ["SecretString"])
        if "token_name" in doc and "rotator_journal" not in doc:
            names.append(doc["token_name"])
    return names


def assert_no_value_leaked(daemon: RunningDaemon, values: set[str]) -> None:
    text = daemon.log_text()
    assert ADMIN_TOKEN not in text
    for value in values:
        assert value not in text


class Receiver:
    """A webhook endpoint on loopback."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                receiver.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/T000/B000/XXXXXXXXXXXXXXXX"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the tests -----------------------------------------------------------------------------------------


def test_rotates_every_interval_revokes_after_grace_serves_probes_and_stops_cleanly(stack: Stack, daemons) -> None:
    first_value = seed(stack)
    receiver = Receiver()
    try:
        daemon = RunningDaemon(stack, [{"name": "web"}, {"name": "ghost"}], notify_url=receiver.url)
        daemons.append(daemon)
        daemon.start()
        seen: dict[str, float] = {}
        values = {first_value}

        def record() -> int:
            doc = current(stack)
            if doc.get("token_name", "web") != "web":
                seen.setdefault(doc["token_name"], time.monotonic())
                values.add(doc["token"])
            return len(seen) >= 3

        wait_for(record, 15, "three rotations", step=0.05)
        names = sorted(seen)
        # roughly every 3 s (rotated_at is stored to the second, so a cycle is 2-4 s; slack for a loaded CI)
        gaps = [seen[b] - seen[a] for a, b in zip(names, names[1:])]
        assert all(1.0 <= gap <= 6.0 for gap in gaps), gaps
        # the previous tokens are revoked once their 1 s grace has passed
        wait_for(lambda: not ({"web", names[0], names[1]} & set(stack.emulator.token_names("acme"))), 5,
                 "the previous tokens to be revoked")

        assert daemon.get("/healthz")[0] == 200
        status, body = daemon.get("/readyz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        text = daemon.get("/metrics")[1]
        for metric in ("rotator_rotations_total", "rotator_rotation_duration_seconds_bucket",
                       "rotator_token_age_seconds", "rotator_last_success_timestamp_seconds",
                       "rotator_next_rotation_timestamp_seconds", "rotator_pending_revocations", "rotator_up",
                       "rotator_preflight_ok", "rotator_build_info"):
            assert metric in text, metric
        assert daemon.metric("rotator_up") == 1.0
        assert daemon.metric("rotator_preflight_ok") == 1.0
        assert daemon.metric("rotator_rotations_total", target="web", result="rotated") >= 3
        assert daemon.metric("rotator_next_rotation_timestamp_seconds", target="web") > time.time() - 5
        assert 0 <= daemon.metric("rotator_token_age_seconds", target="web") < 10
        # a target that cannot rotate (no such token in Funnelback) fails on its own: the others go on
        assert daemon.metric("rotator_rotations_total", target="ghost", result="failed") >= 1
        assert daemon.metric("rotator_target_failing", target="ghost") == 1.0
        events = wait_for(lambda: [b for b in receiver.received if b["event"] == "failure"], 5, "a failure webhook")
        assert events[0]["target"] == "ghost" and "does not exist" in events[0]["error"]
        assert len(events) == 1  # a target that keeps failing is not re-announced every poll
        successes = [b for b in receiver.received if b["event"] == "success"]
        assert successes and {b["token_name"] for b in successes} <= set(seen)
        assert all(set(b) == {"event", "target", "result", "error", "token_name", "at"} for b in receiver.received)

        code, took = daemon.stop()
        assert code == 0 and took < 10, (code, took)
        assert daemon.events("stopped")
        assert_no_orphans(stack)
        assert_no_value_leaked(daemon, values)
        assert not any(v in json.dumps(receiver.received) for v in values)
    finally:
        receiver.close()


def test_restart_neither_rotates_early_nor_forgets_a_pending_revocation(stack: Stack, daemons) -> None:
    seed(stack)
    targets = [{"name": "web", "interval": "8s", "grace": "4s"}]
    first = RunningDaemon(stack, targets, name="first")
    daemons.append(first)
    first.start()
    doc = wait_for(lambda: (d := current(stack)).get("token_name", "web") != "web" and d, 10, "the adoption")
    code, _ = first.stop()
    assert code == 0
    # The original token waits out its 4 s grace in the journal; nothing in memory survives.
    assert [r["name"] for r in stack.journal("web")["pending_revocations"]] == ["web"]
    assert "web" in stack.emulator.token_names("acme")
    clones_before = stack.emulator.calls("clone_client_token")

    second = RunningDaemon(stack, targets, name="second")
    daemons.append(second)
    second.start()
    due = rotated_at(doc).timestamp() + 8
    # the revocation happens after the grace period, done by the restarted daemon
    wait_for(lambda: "web" not in stack.emulator.token_names("acme"), 8, "the grace-period revocation")
    assert time.time() >= rotated_at(doc).timestamp() + 4 - 1  # rotated_at is stored to the second
    wait_for(lambda: any(e.get("revoked") == ["web"] for e in second.events("run_finished")), 5,
             "the restarted daemon to report the revocation")
    # ... and no rotation before the interval has elapsed since the stored rotated_at
    while time.time() < due - 1.2:
        assert current(stack)["token_name"] == doc["token_name"], "rotated early after a restart"
        time.sleep(0.1)
    assert stack.emulator.calls("clone_client_token") == clones_before
    wait_for(lambda: current(stack)["token_name"] != doc["token_name"], 6, "the next rotation, on time")
    assert time.time() >= due - 1.2
    code, _ = second.stop()
    assert code == 0
    assert_no_orphans(stack)


def test_two_daemons_on_one_target_never_double_rotate(stack: Stack, daemons) -> None:
    seed(stack)
    a = RunningDaemon(stack, [{"name": "web"}], name="a")
    b = RunningDaemon(stack, [{"name": "web"}], name="b")
    daemons.extend([a, b])
    a.start()
    b.start()
    names: set[str] = set()

    def watch() -> bool:
        names.add(current(stack).get("token_name", "web"))
        return len(names - {"web"}) >= 4

    wait_for(watch, 20, "four rotations", step=0.05)
    rotated: dict = {}

    def counted() -> bool:
        # a run counts itself once it has finished (after promotion), so wait for the counters
        for daemon in (a, b):
            rotated[daemon] = daemon.metric("rotator_rotations_total", target="web", result="rotated")
        return sum(rotated.values()) >= 4

    wait_for(counted, 10, "four counted rotations", step=0.05)
    assert a.stop()[0] == 0 and b.stop()[0] == 0
    clones = stack.emulator.calls("clone_client_token")
    promoted = promoted_token_names(stack)
    # each token promoted once; a clone that lost the race (both daemons found the target due: the
    # quick path takes no lease, promotion's compare-and-swap decides) was never promoted, and
    # assert_no_orphans below shows it was revoked
    generations = [n for n in promoted if is_generation("web", n)]
    assert len(generations) == len(set(generations)) <= clones, (clones, promoted)
    assert clones >= sum(rotated.values()) >= 4
    # never two rotations of one interval: generation names (UTC seconds) are >= ~2 s apart
    stamps = sorted(datetime.strptime(n.rsplit("-", 1)[1], "%Y%m%dT%H%M%SZ") for n in generations)
    assert all((later - earlier).total_seconds() >= 2 for earlier, later in zip(stamps, stamps[1:])), stamps
    assert_no_orphans(stack)
    assert not stack.journal("web").get("in_progress")


def test_sigterm_mid_rotation_finishes_the_run_and_exits_cleanly(stack: Stack, daemons) -> None:
    seed(stack)
    targets = [{"name": "web", "interval": "1h", "grace": "0s"}]
    first = RunningDaemon(stack, targets, name="first")
    daemons.append(first)
    stack.emulator.faults.add(kind="delay", method="POST", path="/clone$", delay_seconds=2.5)
    first.start()
    wait_for(lambda: stack.emulator.calls("clone_client_token") >= 1, 10, "the clone to be in flight")
    code, took = first.stop(timeout=25)
    assert code == 0 and took < 10, (code, took)
    assert first.events("run_finished")[0]["result"] == "rotated"   # the run in flight was finished
    second = RunningDaemon(stack, targets, name="second")
    daemons.append(second)
    second.start()
    assert second.stop()[0] == 0
    stack.assert_converged("web")
    assert stack.emulator.calls("clone_client_token") == 1


def test_second_signal_abandons_the_run_and_the_next_start_converges(stack: Stack, daemons) -> None:
    seed(stack)
    targets = [{"name": "web", "interval": "1h", "grace": "0s", "lock_ttl": "3s"}]
    first = RunningDaemon(stack, targets, name="first")
    daemons.append(first)
    # the clone's effect happens after the process is gone: an orphan stored nowhere (the quick
    # path keeps no journal; the next run's token list finds it as a generation nobody explains)
    stack.emulator.faults.add(kind="delay", method="POST", path="/clone$", delay_seconds=1.5)
    first.start()
    wait_for(lambda: stack.emulator.calls("clone_client_token") >= 1, 10, "the clone to be in flight")
    began = time.monotonic()
    first.signal(signal.SIGINT)
    time.sleep(0.2)
    code, _ = first.stop()
    assert code == 0 and time.monotonic() - began < 2
    assert not first.events("run_finished")
    orphans: list[str] = []
    wait_for(lambda: bool(orphans.extend(n for n in stack.emulator.token_names("acme") if is_generation("web", n))
                          or orphans), 5, "the lost clone to take effect")
    orphan = orphans[0]
    assert current(stack).get("token_name") != orphan

    # restarted at once: the orphan is younger than lock_ttl (it could be another run's clone on its
    # way to the store), so the run waits for it to age before revoking it
    second = RunningDaemon(stack, targets, name="second")
    daemons.append(second)
    second.start()
    wait_for(lambda: not stack.journal("web").get("in_progress") and current(stack).get("token_name", "web")
             not in ("web", orphan) and orphan not in stack.emulator.token_names("acme")
             and "web" not in stack.emulator.token_names("acme"), 15, "convergence")
    assert second.events("waiting_for_young_tokens")
    assert second.stop()[0] == 0
    stack.assert_converged("web")


def test_sighup_reloads_a_good_config_and_survives_a_broken_one(stack: Stack, daemons) -> None:
    seed(stack)
    seed(stack, "api")
    daemon = RunningDaemon(stack, [{"name": "web", "interval": "1h"}])
    daemons.append(daemon)
    daemon.start()
    wait_for(lambda: current(stack).get("token_name", "web") != "web", 10, "the adoption of web")
    good = daemon.config.read_text()

    daemon.config.write_text(good.replace('interval = "1h"', 'interval = "soon"'))
    daemon.signal(signal.SIGHUP)
    failed = wait_for(lambda: daemon.events("config_reload_failed"), 10, "config_reload_failed")
    assert "interval" in failed[0]["error"] and "soon" in failed[0]["error"]
    assert daemon.get("/healthz")[0] == 200 and daemon.get("/readyz")[0] == 200
    assert daemon.metric("rotator_config_reloads_total", result="failed") == 1

    # a good, changed config: web every 3 s now, and a new target
    changed = config_text(stack, daemon.port, [{"name": "web", "interval": "3s"}, {"name": "api", "interval": "3s"}])
    daemon.config.write_text(changed)
    web_before = current(stack)["token_name"]
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.events("config_reloaded"), 10, "config_reloaded")
    wait_for(lambda: current(stack, "api").get("token_name", "api") != "api", 10, "the new target to rotate")
    wait_for(lambda: current(stack)["token_name"] != web_before, 10, "web to rotate at its new interval")
    assert daemon.metric("rotator_config_reloads_total", result="ok") == 1
    assert daemon.metric("rotator_rotations_total", target="api", result="rotated") >= 1
    code, took = daemon.stop()
    assert code == 0 and took < 10


def test_daemon_and_rotate_due_both_wait_for_the_window(stack: Stack, daemons) -> None:
    seed(stack)   # adopted: no rotated_at, so due now - but only inside the window
    opens = datetime.combine(datetime.now(timezone.utc).date() + timedelta(days=2), datetime.min.time(),
                             tzinfo=timezone.utc)
    daemon = RunningDaemon(stack, [{"name": "web", "interval": "1h"}])
    daemon.config.write_text(daemon.config.read_text().replace(
        'lock_wait = "30s"', f'lock_wait = "30s"\nwindow = "{opens:%a} 00:00-24:00"\ntimezone = "UTC"'))
    daemon.start()
    wait_for(lambda: daemon.metric("rotator_next_rotation_timestamp_seconds", target="web"), 10, "a first look")
    assert daemon.metric("rotator_next_rotation_timestamp_seconds", target="web") == opens.timestamp()
    due = subprocess.run([*stack.command("rotate", "--due")[:-2], "--config", str(daemon.config)], env=stack.env(),
                         capture_output=True, text=True, timeout=60, cwd=stack.workdir)
    assert due.returncode == 0 and "web: not-due" in due.stdout, due.stdout + due.stderr
    assert daemon.stop()[0] == 0
    assert stack.emulator.calls("clone_client_token") == 0
    assert "token_name" not in current(stack)


def test_bad_listen_address_is_one_clear_line(stack: Stack) -> None:
    import socket

    seed(stack)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = stack.workdir / "busy.toml"
        config.write_text(config_text(stack, port, [{"name": "web"}]))
        result = subprocess.run([*stack.command("run")[:-2], "--config", str(config)], env=stack.env(),
                                capture_output=True, text=True, timeout=30, cwd=stack.workdir)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: port in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_shutdown_is_bounded_when_a_run_hangs(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: a run still in flight when the shutdown budget runs out is abandoned (the process
    would exit; its lease expires and the next start resumes the run)."""
    from rotator import daemon as daemon_module
    from rotator.config import load_config

    seed(stack)
    monkeypatch.setenv("FB_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setattr(daemon_module, "SHUTDOWN_WAIT", 0.5)
    exits: list[int] = []
    monkeypatch.setattr(daemon_module, "_hard_exit", exits.append)
    path = stack.workdir / "inproc.toml"
    path.write_text(config_text(stack, free_port(), [{"name": "web", "interval": "1h", "grace": "0s"}]))
    stack.emulator.faults.add(kind="delay", method="POST", path="/clone$", delay_seconds=2.0)
    with capture_logs() as logs:   # structlog as other tests left it may write to a closed stream
        instance = daemon_module.Daemon(load_config(path), load_config(path).targets)
        instance.start()
        try:
            wait_for(lambda: stack.emulator.calls("clone_client_token") >= 1, 10, "the clone to be in flight")
            began = time.monotonic()
            assert instance.stop() == 0
            assert time.monotonic() - began < 2.0
            assert exits == [0]
            assert not instance.live()[0] and not instance.ready()[0]
        finally:
            # let the run the test abandoned finish before the emulator goes away
            wait_for(lambda: not instance._running(), 10, "the abandoned run to end")
    assert [e["targets"] for e in logs if e["event"] == "shutdown_abandoned_runs"] == [["web"]]
    stack.assert_converged("web")


def test_ready_only_after_a_passing_preflight(stack: Stack, daemons) -> None:
    seed(stack)
    daemon = RunningDaemon(stack, [{"name": "web", "interval": "1h"}])
    daemons.append(daemon)
    stack.emulator.faults.add(kind="status", method="GET", path="current-user$", status=401, times=None)
    daemon.start()
    _, body = wait_for(lambda: (r := daemon.get("/readyz"))[0] == 503 and "funnelback" in r[1] and r, 10,
                            "/readyz to report the failed preflight")
    assert json.loads(body)["status"] == "unavailable"
    assert daemon.get("/healthz")[0] == 200
    assert daemon.metric("rotator_preflight_ok") == 0.0
    stack.emulator.faults.clear()
    wait_for(lambda: daemon.get("/readyz")[0] == 200, 10, "/readyz 200 after the next preflight")
    assert daemon.stop()[0] == 0


# --- in-process units: metrics and the HTTP surface ------------------------------------------------


def test_metrics_carry_target_names_only_and_forget_removed_targets() -> None:
    from rotator.metrics import Metrics
    from rotator.rotation import Outcome

    metrics = Metrics()
    metrics.track(["web", "api"])
    metrics.observe_outcome(Outcome("web", "rotated", new_token_name="web-20261204T150000Z", duration=0.4))
    metrics.observe_outcome(Outcome("api", "failed", ok=False, error="api clone: secret-ish detail s3cr3t"))
    text = metrics.render().decode()
    assert 'rotator_rotations_total{result="rotated",target="web"} 1.0' in text
    assert 'rotator_target_failing{target="api"} 1.0' in text
    assert "web-20261204T150000Z" not in text and "s3cr3t" not in text
    metrics.track(["web"])   # after a reload without "api"
    assert 'target="api"' not in metrics.render().decode()


def test_health_server_endpoints_and_listen_parsing() -> None:
    from rotator.health import HealthServer, parse_listen

    assert parse_listen("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
    state = {"ready": (False, "preflight failed: funnelback unreachable")}
    server = HealthServer("127.0.0.1:0", render_metrics=lambda: b"rotator_up 1.0\n", metrics_content_type="text/plain",
                          live=lambda: (True, "ok"), ready=lambda: state["ready"]).start()
    try:
        base = f"http://127.0.0.1:{server.port}"

        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(base + path, timeout=5) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        assert get("/metrics") == (200, "rotator_up 1.0\n")
        assert get("/healthz")[0] == 200
        status, body = get("/readyz")
        assert status == 503 and json.loads(body)["reason"] == "preflight failed: funnelback unreachable"
        state["ready"] = (True, "ready")
        assert get("/readyz")[0] == 200
        assert get("/nope")[0] == 404
        head = urllib.request.Request(base + "/healthz", method="HEAD")
        with urllib.request.urlopen(head, timeout=5) as response:
            assert response.status == 200 and response.read() == b""
    finally:
        server.stop()

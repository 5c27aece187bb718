#!/usr/bin/env python3
"""Throughput of `rotator rotate --all` against a minimal hand-written rotation, same run, same emulators.

    python bench/throughput.py                          # N = 100 and 1000 (about 5 minutes on 2 cores)
    python bench/throughput.py --n 100 1000 5000        # adds N = 5000 (about 25 more minutes)
    python bench/throughput.py --n 200 --profile out.html   # also profile rotator with pyinstrument

For each N, fresh servers:
- the Funnelback emulator as a child process (`python -m rotator.testing.funnelback_emulator
  --delay-all-ms 20`), so its threads do not share a GIL with anything measured;
- moto as a child process (tests/moto_server.start_moto_server(subprocess=True));
- 2N Funnelback tokens (N for rotator, N for the baseline; `--tokens-per-client` per client, since a
  provider has thousands of clients with a few tokens each) and 2N secrets holding hand-written
  `{"token": VALUE}` JSON.

Then, measured in this order:
(a) rotator: wall time of `python -m rotator rotate --all --concurrency C --config ...` as a child
    process, start-up included (`python -m rotator` runs exactly what the `rotator` console script
    runs: rotator.cli.main). Peak RSS from os.wait4's rusage of that very child.
(b) baseline: in this process, a ThreadPoolExecutor(C) over the other N targets doing
    clone -> put_secret_value(AWSPENDING) -> GET current-user with the new token ->
    update_secret_version_stage(AWSCURRENT) + remove AWSPENDING -> revoke the old token,
    one shared requests.Session and one boto3 client, nothing else.

Counting:
- Funnelback calls: the emulator's own counters (`GET /_emulator/state`), reset between the runs.
- AWS calls: moto has no request counter (`/moto-api/` offers reset, data.json and a recorder that
  writes every request body, secret values included, to a file). A counting reverse proxy would put an
  extra hop and ~1 ms of CPU per request on this 2-core machine into both timed runs. Instead the
  calls are counted inside the processes that make them, by wrapping botocore's
  `BaseClient._make_api_call` (API calls, by operation) and `Endpoint._send` (HTTP attempts, retries
  included): in the rotator child through a generated `sitecustomize.py` (temporary directory on
  PYTHONPATH, active only when BENCH_AWS_COUNTS_FILE is set) that patches botocore *when rotator
  imports it*, so start-up is not changed; in this process by the same patch. rotator's code is not
  touched.

Checks after each run: rotator exits 0 and prints "N ok, 0 failed"; in the emulator every target
has exactly one live token (its new generation: no orphan, the old one revoked); a sample of secrets
serves that live token as AWSCURRENT with no AWSPENDING left.

The floor is `N x (Funnelback calls per rotation, counted for rotator's run) x delay / concurrency`:
the time the Funnelback calls alone take when `concurrency` of them are always in flight.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO / "tests"), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

ADMIN_ENV = "BENCH_FB_ADMIN"
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}
CLONE = "/application-tokens/v1/clients/{client}/application-token/{name}/clone"
TOKEN = "/application-tokens/v1/clients/{client}/application-token/{name}"
CURRENT_USER = "/account/v1/current-user"

# botocore call counting for a child process; imported at interpreter start only via PYTHONPATH.
SITECUSTOMIZE = r'''
import os as _os
import sys as _sys

_PATH = _os.environ.get("BENCH_AWS_COUNTS_FILE")
if _PATH:
    import atexit as _atexit
    import json as _json
    import threading as _threading

    _counts = {}
    _lock = _threading.Lock()

    def _bump(key):
        with _lock:
            _counts[key] = _counts.get(key, 0) + 1

    def _patch(client_module):
        import botocore.endpoint as _endpoint
        cls = client_module.BaseClient
        original_call = cls._make_api_call
        original_send = _endpoint.Endpoint._send

        def _make_api_call(self, operation_name, api_params):
            _bump("op:" + operation_name)
            return original_call(self, operation_name, api_params)

        def _send(self, request):
            _bump("http")
            return original_send(self, request)

        cls._make_api_call = _make_api_call
        _endpoint.Endpoint._send = _send

    class _PatchBotocoreOnImport:
        """Meta-path finder: patches botocore.client right after rotator imports it."""

        def find_spec(self, name, path=None, target=None):
            if name != "botocore.client":
                return None
            import importlib.util
            _sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            exec_module = spec.loader.exec_module

            def patched_exec(module):
                exec_module(module)
                _patch(module)

            spec.loader.exec_module = patched_exec
            return spec

    _sys.meta_path.insert(0, _PatchBotocoreOnImport())

    def _dump():
        with open(_PATH, "w") as handle:
            _json.dump(_counts, handle)

    _atexit.register(_dump)
'''


# --- Funnelback emulator as a child process --------------------------------------------------------


class EmulatorProcess:
    """`python -m rotator.testing.funnelback_emulator` with a control client."""

    def __init__(self, *, delay: float, workdir: Path) -> None:
        env = {**os.environ, ADMIN_ENV: ADMIN_TOKEN, "PYTHONPATH": str(REPO)}
        self._log = open(workdir / "emulator.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rotator.testing.funnelback_emulator", "--port", "0",
             "--admin-token-env", ADMIN_ENV, "--client", "c0", "--delay-all-ms", str(delay * 1000.0)],
            stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=workdir)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the emulator did not start; see {workdir / 'emulator.log'}")
        info = json.loads(line)
        self.url: str = info["url"]
        self.control_url: str = info["control_url"]

    def control(self, method: str, path: str, doc: Any = None) -> Any:
        data = json.dumps(doc).encode() if doc is not None else None
        request = urllib.request.Request(self.control_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        return json.loads(body) if body.strip() else None

    def seed(self, tokens: list[tuple[str, str, str]], workers: int = 8) -> None:
        """(client, name, value) -> live client tokens (control endpoint: not delayed, not counted)."""
        import requests

        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=workers))

        def one(item: tuple[str, str, str]) -> None:
            client, name, value = item
            session.post(f"{self.control_url}/tokens/{client}/{name}", json={"value": value},
                         timeout=60).raise_for_status()

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, tokens))
        session.close()

    def state(self) -> dict[str, Any]:
        return self.control("GET", "/state")

    def reset_counters(self) -> None:
        self.control("DELETE", "/counters")

    def token_value(self, client: str, name: str) -> str | None:
        try:
            return self.control("GET", f"/tokens/{client}/{name}/value")["value"]
        except urllib.error.HTTPError:
            return None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self._log.close()


@contextmanager
def emulator_process(*, delay: float, workdir: Path) -> Iterator[EmulatorProcess]:
    emulator = EmulatorProcess(delay=delay, workdir=workdir)
    try:
        yield emulator
    finally:
        emulator.stop()


# --- targets, seeding, config -------------------------------------------------------------------


@dataclass
class Target:
    name: str
    client: str
    value: str
    secret_id: str
    version_id: str = ""


def make_targets(prefix: str, count: int, per_client: int, *, start: int = 0) -> list[Target]:
    rng = random.Random(f"{prefix}{count}{start}")
    targets = []
    for i in range(start, start + count):
        value = "".join(rng.choices("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=43))
        targets.append(Target(name=f"{prefix}{i:05d}", client=f"c{i // per_client:04d}", value=value,
                              secret_id=f"bench/{prefix}{i:05d}"))
    return targets


def boto_client(moto_url: str, pool: int = 32) -> Any:
    import boto3
    import botocore.config

    return boto3.client("secretsmanager", endpoint_url=moto_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=botocore.config.Config(max_pool_connections=pool,
                                                      retries={"mode": "standard", "total_max_attempts": 5}))


def seed(emulator: EmulatorProcess, moto_url: str, targets: list[Target], workers: int = 16) -> None:
    emulator.seed([(t.client, t.name, t.value) for t in targets])
    seed_secrets(moto_url, targets, workers)


def seed_secrets(moto_url: str, targets: list[Target], workers: int = 16) -> None:
    """One secret per target holding hand-written {"token": VALUE} JSON (AWSCURRENT)."""
    client = boto_client(moto_url, pool=workers)

    def one(t: Target) -> None:
        answer = client.create_secret(Name=t.secret_id, SecretString=json.dumps({"token": t.value}))
        t.version_id = answer["VersionId"]

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, targets))


def write_config(path: Path, *, fb_url: str, moto_url: str, targets: list[Target], interval: str = "30d",
                 grace: str = "0s", concurrency: int = 4, extra_service: str = "",
                 extra_funnelback: str = "") -> Path:
    lines = [textwrap.dedent(f"""\
        [funnelback]
        url = "{fb_url}"
        token_env = "{ADMIN_ENV}"
        {extra_funnelback}

        [service]
        concurrency = {concurrency}
        {extra_service}

        [defaults]
        interval = "{interval}"
        grace_period = "{grace}"

        [backends.aws]
        type = "aws-secrets-manager"
        region = "us-east-1"
        endpoint_url = "{moto_url}"
        """)]
    for t in targets:
        lines.append(f'[[targets]]\nname = "{t.name}"\nclient_id = "{t.client}"\ntoken_name = "{t.name}"\n'
                     f'destinations = [{{ backend = "aws", secret_id = "{t.secret_id}" }}]\n')
    path.write_text("\n".join(lines))
    return path


def rotator_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROTATOR_", "AWS_"))}
    env.update(FAKE_AWS)
    env[ADMIN_ENV] = ADMIN_TOKEN
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


ROTATOR = [sys.executable, "-m", "rotator"]


def compile_rotator() -> None:
    """Measure rotator as installed: `pip install` compiles every module to bytecode, while this
    checkout may run with PYTHONDONTWRITEBYTECODE=1 (this machine sets it), which would compile
    rotator's ~25 modules from source again at every start (~40 ms)."""
    import compileall

    compileall.compile_dir(str(REPO / "rotator"), quiet=1)


@dataclass
class ChildResult:
    returncode: int
    wall: float
    max_rss_mb: float
    cpu: float
    stdout: str
    stderr_path: Path


def run_child(argv: list[str], *, env: dict[str, str], workdir: Path, tag: str) -> ChildResult:
    """Run a child; wall time from spawn to exit; peak RSS of that child from wait4's rusage."""
    out_path, err_path = workdir / f"{tag}.stdout", workdir / f"{tag}.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        begin = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=workdir)
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - begin
        process.returncode = os.waitstatus_to_exitcode(status)
    return ChildResult(process.returncode, wall, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime,
                       out_path.read_text(), err_path)


def count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a running process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- AWS call counting in this process ------------------------------------------------------------


class BotocoreCounter:
    """The same wrap as SITECUSTOMIZE, for this process (the baseline)."""

    def __init__(self) -> None:
        import botocore.client
        import botocore.endpoint

        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        counter = self
        original_call = botocore.client.BaseClient._make_api_call
        original_send = botocore.endpoint.Endpoint._send

        def _make_api_call(client: Any, operation_name: str, api_params: Any) -> Any:
            counter.bump("op:" + operation_name)
            return original_call(client, operation_name, api_params)

        def _send(endpoint: Any, request: Any) -> Any:
            counter.bump("http")
            return original_send(endpoint, request)

        botocore.client.BaseClient._make_api_call = _make_api_call  # type: ignore[method-assign]
        botocore.endpoint.Endpoint._send = _send  # type: ignore[method-assign]

    def bump(self, key: str) -> None:
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def take(self) -> dict[str, int]:
        with self._lock:
            counts, self.counts = self.counts, {}
        return counts


_COUNTER: BotocoreCounter | None = None


def counter() -> BotocoreCounter:
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = BotocoreCounter()
    return _COUNTER


# --- the baseline ---------------------------------------------------------------------------------


def baseline(emulator: EmulatorProcess, moto_url: str, targets: list[Target], concurrency: int, *,
             read_current: bool = False) -> float:
    """Minimal rotation, nothing else: returns its wall time. `read_current`: first read AWSCURRENT
    (GetSecretValue) to learn the current version and the token to revoke, as a hand-written rotation
    that was not told them must; without it they come from seeding."""
    import requests

    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency))
    client = boto_client(moto_url, pool=concurrency)
    admin = {"X-Security-Token": ADMIN_TOKEN, "Accept": "application/json"}
    base = emulator.url

    def one(t: Target) -> None:
        new_name, old_name, current_version = t.name + "-b1", t.name, t.version_id
        if read_current:
            current = client.get_secret_value(SecretId=t.secret_id, VersionStage="AWSCURRENT")
            current_version = current["VersionId"]
            old_name = json.loads(current["SecretString"]).get("token_name") or t.name
        answer = session.post(base + CLONE.format(client=t.client, name=old_name), json={"name": new_name},
                              headers=admin, timeout=30)
        answer.raise_for_status()
        value = answer.json()["data"]["token"]
        put = client.put_secret_value(SecretId=t.secret_id, VersionStages=["AWSPENDING"],
                                      SecretString=json.dumps({"token": value, "token_name": new_name}))
        session.get(base + CURRENT_USER, headers={"X-Security-Token": value, "Accept": "application/json"},
                    timeout=30).raise_for_status()
        client.update_secret_version_stage(SecretId=t.secret_id, VersionStage="AWSCURRENT",
                                           MoveToVersionId=put["VersionId"], RemoveFromVersionId=current_version)
        client.update_secret_version_stage(SecretId=t.secret_id, VersionStage="AWSPENDING",
                                           RemoveFromVersionId=put["VersionId"])
        session.delete(base + TOKEN.format(client=t.client, name=old_name), headers=admin,
                       timeout=30).raise_for_status()

    begin = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, targets))
    wall = time.perf_counter() - begin
    session.close()
    return wall


# --- verification ---------------------------------------------------------------------------------


def verify(emulator: EmulatorProcess, moto_url: str, targets: list[Target], *, rotator_made: bool,
           sample: int = 20) -> list[str]:
    """Problems found (empty: all good): one live token per target, the new one; a sample in AWS."""
    from rotator.naming import is_generation

    problems: list[str] = []
    clients = emulator.state()["clients"]
    live_by_target: dict[str, str] = {}
    for t in targets:
        names = [tok["name"] for tok in clients.get(t.client, [])]
        if rotator_made:
            live = [n for n in names if n == t.name or is_generation(t.name, n)]
        else:
            live = [n for n in names if n in (t.name, t.name + "-b1")]
        if len(live) != 1 or live[0] == t.name:
            problems.append(f"{t.name}: live tokens {live}")
            if len(problems) > 10:
                break
            continue
        live_by_target[t.name] = live[0]
    client = boto_client(moto_url, pool=4)
    for t in random.Random(0).sample(targets, min(sample, len(targets))):
        if t.name not in live_by_target:
            continue
        current = json.loads(client.get_secret_value(SecretId=t.secret_id, VersionStage="AWSCURRENT")["SecretString"])
        if current.get("token_name") != live_by_target[t.name] or \
                current.get("token") != emulator.token_value(t.client, live_by_target[t.name]):
            problems.append(f"{t.secret_id}: AWSCURRENT does not serve the live token")
        try:
            client.get_secret_value(SecretId=t.secret_id, VersionStage="AWSPENDING")
            problems.append(f"{t.secret_id}: AWSPENDING left behind")
        except client.exceptions.ResourceNotFoundException:
            pass
    return problems


# --- the engine alone: in-memory destinations ----------------------------------------------------


def memory_runtime(config: Any, targets: list[Target], clock: Any = None) -> Any:
    """A Runtime whose destinations are in-memory (rotator.testing.memory_store, without its
    unbounded history), seeded with each target's token: rotator's engine and Funnelback client,
    with no store cost at all."""
    import collections

    from rotator.backends.base import Payload
    from rotator.runtime import Runtime
    from rotator.testing.memory_store import MemoryDestination

    destinations = {}
    for t in targets:
        destination = MemoryDestination(f"mem:{t.secret_id}")
        destination.history = collections.deque(maxlen=2)  # type: ignore[assignment]
        destination.seed(Payload.from_dict({"token": t.value}))
        destinations[t.secret_id] = destination

    class _MemoryBackend:
        def destination(self, options: Any, *, target: str) -> Any:
            return destinations[options["secret_id"]]

        def read_currents(self, destinations: Any) -> dict[str, Any]:
            return {}     # no batch reads: each target reads its own (rotator.backends.base.Backend)

        def close(self) -> None:
            pass

    backend = _MemoryBackend()

    class MemoryRuntime(Runtime):
        def backend(self, name: str) -> Any:
            return backend

    return MemoryRuntime(config, clock=clock) if clock else MemoryRuntime(config)


def engine_only(n: int, args: argparse.Namespace, workdir: Path, *, funnelback_extra: str) -> dict[str, float]:
    """rotate_targets() in this process over N targets with in-memory destinations: how close the
    engine and the Funnelback client get to the floor when the store costs nothing."""
    from rotator import logs
    from rotator.config import load_config
    from rotator.runtime import rotate_targets

    os.environ[ADMIN_ENV] = ADMIN_TOKEN
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below; structlog keeps writing to it until then
    logs.configure(fmt="json", level="info", stream=devnull)
    targets = make_targets("e", n, args.tokens_per_client)
    with emulator_process(delay=args.delay, workdir=workdir) as emulator:
        emulator.seed([(t.client, t.name, t.value) for t in targets])
        config = load_config(write_config(workdir / f"engine-{n}.toml", fb_url=emulator.url, moto_url="http://127.0.0.1:9",
                                          targets=targets, extra_funnelback=funnelback_extra))
        emulator.reset_counters()
        runtime = memory_runtime(config, targets)
        begin = time.perf_counter()
        with runtime:
            outcomes = rotate_targets(runtime, config.targets, force=True, concurrency=args.concurrency)
        wall = time.perf_counter() - begin
        state = emulator.state()
    devnull.close()
    calls = _fb_calls(state)[0]
    return {"wall": wall, "calls_per_rotation": calls / n, "max_in_flight": float(state.get("maxInFlight", 0)),
            "failed": float(sum(not o.ok for o in outcomes)),
            "floor": n * (calls / n) * args.delay / args.concurrency}


# --- one N ----------------------------------------------------------------------------------------


@dataclass
class Row:
    n: int
    rotator_wall: float = 0.0
    baseline_wall: float = 0.0
    baseline_read_wall: float = 0.0
    floor: float = 0.0
    fb_per_rotation: float = 0.0
    fb_per_rotation_baseline: float = 0.0
    aws_per_rotation: float = 0.0
    aws_http_per_rotation: float = 0.0
    aws_per_rotation_baseline: float = 0.0
    aws_per_rotation_baseline_read: float = 0.0
    fb_max_in_flight: int = 0
    fb_max_in_flight_baseline: int = 0
    peak_rss_mb: float = 0.0
    seed_seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    engine: dict[str, dict[str, float]] = field(default_factory=dict)
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    rotator_aws_ops: dict[str, int] = field(default_factory=dict)
    rotator_fb_ops: dict[str, int] = field(default_factory=dict)
    log_lines: int = 0


def _fb_calls(state: dict[str, Any]) -> tuple[int, dict[str, int]]:
    counters = dict(state.get("counters", {}))
    return sum(counters.values()), counters


def measure(n: int, args: argparse.Namespace, workdir: Path) -> Row:
    """One N: one emulator for all runs (tokens of distinct clients never meet), and a fresh moto for
    each run holding only that run's N secrets: moto finds a secret by scanning all it holds
    (moto/secretsmanager/models.py SecretsStore.__getitem__), so a shared one would charge every
    later run for the earlier runs' secrets."""
    from moto_server import start_moto_server

    row = Row(n=n)
    sitedir = workdir / "site"
    sitedir.mkdir(exist_ok=True)
    (sitedir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    rot_targets = make_targets("r", n, args.tokens_per_client)
    base_targets = make_targets("b", n, args.tokens_per_client)
    read_targets = make_targets("a", n, args.tokens_per_client) if args.baseline_read else []
    with emulator_process(delay=args.delay, workdir=workdir) as emulator:
        begin = time.perf_counter()
        emulator.seed([(t.client, t.name, t.value) for t in rot_targets + base_targets + read_targets])
        row.seed_seconds = time.perf_counter() - begin

        # (a) rotator, start-up included
        with start_moto_server(subprocess=True) as moto:
            assert moto.process is not None
            servers = {"moto": moto.process.pid, "emulator": emulator.process.pid}
            begin = time.perf_counter()
            seed_secrets(moto.url, rot_targets)
            row.seed_seconds += time.perf_counter() - begin
            config = write_config(workdir / f"rotation-{n}.toml", fb_url=emulator.url, moto_url=moto.url,
                                  targets=rot_targets, extra_funnelback=args.funnelback_extra)
            emulator.reset_counters()
            counts_file = workdir / f"aws-counts-{n}.json"
            argv = [*ROTATOR, "rotate", "--all", "--concurrency", str(args.concurrency), "--config", str(config)]
            if args.profile:
                # py-spy samples every thread (pyinstrument only the main one, which here just waits)
                args.profile.mkdir(parents=True, exist_ok=True)
                idle = {"gil": ["--gil"], "wall": ["--idle"], "active": []}[args.profile_mode]
                argv = ["py-spy", "record", "--nonblocking", *idle, "--threads", "-r", "100", "-f", "raw",
                        "-o", str(args.profile.resolve() / f"rotator-{n}.raw"), "--", *argv]
                moto_spy = subprocess.Popen(["py-spy", "record", "--nonblocking", *idle, "-r", "100", "-f", "raw",
                                             "-o", str(args.profile.resolve() / f"moto-{n}.raw"),
                                             "-p", str(servers["moto"])],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            env = rotator_env({"BENCH_AWS_COUNTS_FILE": str(counts_file),
                               "PYTHONPATH": f"{sitedir}{os.pathsep}{REPO}"})
            before = {k: cpu_seconds(pid) for k, pid in servers.items()}
            busy = machine_busy()
            own = self_cpu()
            result = run_child(argv, env=env, workdir=workdir, tag=f"rotator-{n}")
            busy = machine_busy() - busy
            if args.profile:
                moto_spy.send_signal(signal.SIGINT)
                moto_spy.wait(timeout=60)
            row.cpu.update({f"rotator run: {k}": cpu_seconds(pid) - before[k] for k, pid in servers.items()})
            row.cpu["rotator run: rotator"] = result.cpu
            row.cpu["rotator run: other processes"] = max(0.0, busy - sum(
                v for k, v in row.cpu.items() if k.startswith("rotator run:")) - (self_cpu() - own))
            row.rotator_wall, row.peak_rss_mb = result.wall, result.max_rss_mb
            row.log_lines = count_lines(result.stderr_path)
            state = emulator.state()
            fb_total, row.rotator_fb_ops = _fb_calls(state)
            row.fb_max_in_flight = int(state.get("maxInFlight", 0))
            aws = json.loads(counts_file.read_text()) if counts_file.exists() else {}
            row.rotator_aws_ops = {k[3:]: v for k, v in sorted(aws.items()) if k.startswith("op:")}
            row.fb_per_rotation = fb_total / n
            row.aws_per_rotation = sum(row.rotator_aws_ops.values()) / n
            row.aws_http_per_rotation = aws.get("http", 0) / n
            last = [line for line in result.stdout.splitlines() if line.endswith(" failed")][-1:] or [""]
            if result.returncode != 0 or last[0] != f"{n} ok, 0 failed":
                row.problems.append(f"rotator exited {result.returncode}: {last[0]!r} (see {result.stderr_path})")
            row.problems += verify(emulator, moto.url, rot_targets, rotator_made=True)

        # (b) the baseline, in this process, over other N targets (and a fresh moto)
        aws_counter = counter()
        for label, targets, read_current in (("baseline", base_targets, False),
                                             ("baseline+read", read_targets, True)):
            if not targets:
                continue
            with start_moto_server(subprocess=True) as moto:
                assert moto.process is not None
                servers = {"moto": moto.process.pid, "emulator": emulator.process.pid}
                begin = time.perf_counter()
                seed_secrets(moto.url, targets)
                row.seed_seconds += time.perf_counter() - begin
                emulator.reset_counters()
                aws_counter.take()
                before = {k: cpu_seconds(pid) for k, pid in servers.items()}
                own = self_cpu()
                busy = machine_busy()
                wall = baseline(emulator, moto.url, targets, args.concurrency, read_current=read_current)
                busy = machine_busy() - busy
                row.cpu.update({f"{label} run: {k}": cpu_seconds(pid) - before[k] for k, pid in servers.items()})
                row.cpu[f"{label} run: bench process"] = self_cpu() - own
                row.cpu[f"{label} run: other processes"] = max(0.0, busy - sum(
                    v for k, v in row.cpu.items() if k.startswith(f"{label} run:")))
                aws_calls = sum(v for k, v in aws_counter.take().items() if k.startswith("op:")) / n
                state = emulator.state()
                if read_current:
                    row.baseline_read_wall, row.aws_per_rotation_baseline_read = wall, aws_calls
                else:
                    row.baseline_wall, row.aws_per_rotation_baseline = wall, aws_calls
                    row.fb_per_rotation_baseline = _fb_calls(state)[0] / n
                    row.fb_max_in_flight_baseline = int(state.get("maxInFlight", 0))
                row.problems += verify(emulator, moto.url, targets, rotator_made=False)

    row.floor = n * row.fb_per_rotation * args.delay / args.concurrency
    if args.engine_only:
        for label, extra in (("default", args.funnelback_extra),
                             (f"max_concurrency = {args.concurrency}",
                              f"{args.funnelback_extra}\nmax_concurrency = {args.concurrency}")):
            row.engine[label] = engine_only(n, args, workdir, funnelback_extra=extra)
            if row.engine[label]["failed"]:
                row.problems.append(f"engine-only ({label}): {row.engine[label]['failed']:.0f} failed")
    row.ok = not row.problems
    return row


# --- output ---------------------------------------------------------------------------------------


def table(rows: list[Row], args: argparse.Namespace) -> str:
    cols = ["N", "rotator wall s", "baseline wall s", "rotator/baseline", "baseline+read wall s",
            "rotator/(baseline+read)", "floor s", "rotator/floor", "baseline/floor",
            "FB calls/rot (rotator, baseline)", "AWS calls/rot (rotator, baseline, baseline+read)",
            "FB max in flight (rotator, baseline)", "rotator peak RSS MB", "checks"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        read = (f"{r.baseline_read_wall:.1f} | {r.rotator_wall / r.baseline_read_wall:.2f}"
                if r.baseline_read_wall else "- | -")
        lines.append(
            f"| {r.n} | {r.rotator_wall:.1f} | {r.baseline_wall:.1f} | {r.rotator_wall / r.baseline_wall:.2f} "
            f"| {read} | {r.floor:.2f} | {r.rotator_wall / r.floor:.1f} | {r.baseline_wall / r.floor:.1f} "
            f"| {r.fb_per_rotation:.2f}, {r.fb_per_rotation_baseline:.2f} "
            f"| {r.aws_per_rotation:.1f}, {r.aws_per_rotation_baseline:.1f}, "
            f"{r.aws_per_rotation_baseline_read or float('nan'):.1f} "
            f"| {r.fb_max_in_flight}, {r.fb_max_in_flight_baseline} | {r.peak_rss_mb:.0f} "
            f"| {'ok' if r.ok else 'FAILED'} |")
    if any(r.engine for r in rows):
        lines.append("")
        lines.append("The engine alone (rotate_targets in-process, in-memory destinations, same emulator and delay; "
                     "no AWS cost):")
        lines.append("")
        lines.append("| N | [funnelback] | wall s | floor s | wall/floor | FB calls/rot | FB max in flight |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in rows:
            for label, e in r.engine.items():
                lines.append(f"| {r.n} | {label} | {e['wall']:.2f} | {e['floor']:.2f} | {e['wall'] / e['floor']:.2f} "
                             f"| {e['calls_per_rotation']:.2f} | {e['max_in_flight']:.0f} |")
    lines.append("")
    lines.append("CPU seconds used during each run (2 cores: wall x 2 is all there is; \"other processes\" is "
                 "the rest of the machine, i.e. anything not part of this benchmark):")
    lines.append("")
    keys = list(dict.fromkeys(k for r in rows for k in r.cpu))
    lines.append("| N | " + " | ".join(keys) + " |")
    lines.append("|" + "|".join("---" for _ in range(len(keys) + 1)) + "|")
    for r in rows:
        lines.append(f"| {r.n} | " + " | ".join(f"{r.cpu.get(k, float('nan')):.1f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000], help="target counts (default: 100 1000)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds added to every Funnelback call")
    parser.add_argument("--tokens-per-client", type=int, default=5,
                        help="targets (tokens) per Funnelback client (default 5)")
    parser.add_argument("--funnelback-extra", default="",
                        help='extra [funnelback] TOML lines, e.g. "max_concurrency = 32"')
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record rotator (all threads) and moto with py-spy into DIR "
                             "(raw collapsed stacks; timings are then not comparable)")
    parser.add_argument("--no-baseline-read", dest="baseline_read", action="store_false",
                        help="skip the second baseline, which first reads AWSCURRENT")
    parser.add_argument("--profile-mode", choices=("gil", "wall", "active"), default="gil",
                        help="with --profile: gil = only the thread holding the GIL (where CPU goes, default); "
                             "wall = every thread, waiting ones too; active = py-spy's own idle filter")
    parser.add_argument("--no-engine-only", dest="engine_only", action="store_false",
                        help="skip the in-process runs with in-memory destinations")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, configs)")
    args = parser.parse_args(argv)

    for key, value in FAKE_AWS.items():
        os.environ.setdefault(key, value)
    compile_rotator()
    workdir = Path(tempfile.mkdtemp(prefix="rotator-bench-"))
    print(f"# concurrency {args.concurrency}, Funnelback delay {args.delay * 1000:g} ms, "
          f"{args.tokens_per_client} tokens per client, {os.cpu_count()} CPUs, workdir {workdir}", flush=True)
    rows = []
    total_begin = time.perf_counter()
    for n in args.n:
        begin = time.perf_counter()
        row = measure(n, args, workdir)
        rows.append(row)
        print(f"# N={n}: {time.perf_counter() - begin:.0f} s in all (seeding {row.seed_seconds:.0f} s); "
              f"rotator AWS calls: {json.dumps(row.rotator_aws_ops)} ({row.aws_http_per_rotation:.1f} HTTP "
              f"requests/rotation); Funnelback calls: "
              f"{json.dumps({k.split(' ')[0] + ' ' + k.rsplit('/', 1)[-1]: v for k, v in row.rotator_fb_ops.items()})}; "
              f"{row.log_lines} log lines", flush=True)
        for problem in row.problems[:10]:
            print(f"#   PROBLEM: {problem}", flush=True)
    print()
    print(table(rows, args))
    print(f"\n# total {time.perf_counter() - total_begin:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
    if not args.keep:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

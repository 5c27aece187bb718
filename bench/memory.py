#!/usr/bin/env python3
"""Memory footprint: the idle daemon with many targets, and RSS across repeated rotations.

    python bench/memory.py                                    # all parts, about 8 minutes
    python bench/memory.py --skip-daemon --store memory --rotations 10000

1. Idle daemon: `python -m rotator run` with `--targets` (1,000) targets, interval 30d, against the
   Funnelback emulator and moto (both child processes). Every secret is seeded as rotator leaves it
   (token, token_name, client_id, rotated_at = now), so nothing is due: what is measured is the
   daemon holding 1,000 scheduled targets and polling their state (each target is looked at once
   at start-up, then every clamp(interval/10, 1 s, 60 s) = 60 s). VmRSS of the daemon process is
   sampled every second for `--daemon-seconds`; the check is that it made no clone.

2. Repeated rotations in one process (AWS): `rotate_targets(runtime, targets, force=True)` in a
   loop over `--loop-targets` (20) targets into moto, one Runtime for the whole loop (as the daemon
   keeps one), a fake clock one hour later each round, rotator's JSON logs rendered to /dev/null.
   Every `--sample-every` rotations: VmRSS, live gc objects, registered `Secret`s, threads.

3. The same loop with an in-memory destination instead of moto (`--store memory`), which is fast
   enough for the issue's 10,000 rotations: only rotator's own growth (and the Funnelback client's)
   is left in the process. moto keeps every secret version it was ever given, and rotating one
   secret a hundred times is beyond what AWS itself accepts in a day, so part 2 stays shorter.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import (
    ADMIN_ENV,
    ADMIN_TOKEN,
    FAKE_AWS,
    REPO,
    ROTATOR,
    SITECUSTOMIZE,
    Target,
    boto_client,
    count_lines,
    emulator_process,
    make_targets,
    memory_runtime,
    rotator_env,
    write_config,
)


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def seed_rotated(emulator: Any, moto_url: str, targets: list[Target], workers: int = 16) -> None:
    """Tokens in Funnelback and secrets holding what rotator writes after a rotation (not due)."""
    from concurrent.futures import ThreadPoolExecutor

    emulator.seed([(t.client, t.name, t.value) for t in targets])
    client = boto_client(moto_url, pool=workers)
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    def one(t: Target) -> None:
        client.create_secret(Name=t.secret_id, SecretString=json.dumps(
            {"token": t.value, "token_name": t.name, "client_id": t.client, "rotated_at": now}))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, targets))


# --- 1. idle daemon -------------------------------------------------------------------------------


def idle_daemon(args: argparse.Namespace, workdir: Path, count: int) -> dict[str, Any]:
    from moto_server import free_port, start_moto_server

    result: dict[str, Any] = {"targets": count, "seconds": args.daemon_seconds}
    sitedir = workdir / "site"
    sitedir.mkdir(exist_ok=True)
    (sitedir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    counts_file = workdir / f"daemon-aws-{count}.json"
    with emulator_process(delay=0.0, workdir=workdir) as emulator, start_moto_server(subprocess=True) as moto:
        targets = make_targets("d", count, 5)
        begin = time.perf_counter()
        seed_rotated(emulator, moto.url, targets)
        result["seed_seconds"] = round(time.perf_counter() - begin, 1)
        config = write_config(workdir / "daemon.toml", fb_url=emulator.url, moto_url=moto.url, targets=targets,
                              interval="30d", grace="15m",
                              extra_service=f'listen = "127.0.0.1:{free_port()}"\n'
                                            f'poll_interval = "{args.poll_interval:g}s"')
        emulator.reset_counters()
        err = open(workdir / "daemon.stderr", "wb")  # noqa: SIM115 - closed in the finally below
        env = rotator_env({"BENCH_AWS_COUNTS_FILE": str(counts_file), "PYTHONPATH": f"{sitedir}{os.pathsep}{REPO}"})
        process = subprocess.Popen([*ROTATOR, "run", "--config", str(config)], env=env, cwd=workdir,
                                   stdout=subprocess.DEVNULL, stderr=err)
        samples: list[tuple[float, float]] = []
        start = time.monotonic()
        try:
            while time.monotonic() - start < args.daemon_seconds:
                time.sleep(1.0)
                if process.poll() is not None:
                    result["error"] = f"the daemon exited {process.returncode}; see {workdir / 'daemon.stderr'}"
                    break
                samples.append((time.monotonic() - start, rss_mb(process.pid)[0]))
            if process.poll() is None:
                result["vmhwm_mb"] = round(rss_mb(process.pid)[1], 1)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            err.close()
        counters = emulator.state().get("counters", {})
        result["clones"] = sum(v for k, v in counters.items() if k.startswith("POST") and k.endswith("/clone"))
        result["funnelback_calls"] = sum(counters.values())
        result["exit_code"] = process.returncode
        result["log_lines"] = count_lines(workdir / "daemon.stderr")
        aws = json.loads(counts_file.read_text()) if counts_file.exists() else {}
        result["aws_calls"] = {k[3:]: v for k, v in sorted(aws.items()) if k.startswith("op:")}
    result["samples"] = samples
    if samples:
        tail = [rss for t, rss in samples if t >= args.daemon_seconds / 2]
        result["rss_end_mb"] = round(samples[-1][1], 1)
        result["rss_max_mb"] = round(max(rss for _, rss in samples), 1)
        result["rss_second_half_mb"] = (round(min(tail), 1), round(max(tail), 1)) if tail else None
    return result


# --- 2/3. repeated rotations in this process --------------------------------------------------------


def rotation_loop(args: argparse.Namespace, workdir: Path, store: str, rotations: int) -> dict[str, Any]:
    from moto_server import start_moto_server

    from rotator import logs
    from rotator.config import load_config
    from rotator.runtime import Runtime, rotate_targets
    from rotator.secret import registry

    for key, value in FAKE_AWS.items():
        os.environ[key] = value
    os.environ[ADMIN_ENV] = ADMIN_TOKEN
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed after the loop; structlog writes to it
    logs.configure(fmt="json", level="info", stream=devnull)

    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"store": store, "targets": args.loop_targets, "rotations": rotations, "rows": rows}
    with emulator_process(delay=0.0, workdir=workdir) as emulator, \
            start_moto_server(subprocess=True) as moto:
        targets = make_targets(f"m{store[0]}", args.loop_targets, 5)
        if store == "aws":
            from throughput import seed
            seed(emulator, moto.url, targets)
        else:
            emulator.seed([(t.client, t.name, t.value) for t in targets])
        config = load_config(write_config(workdir / f"loop-{store}.toml", fb_url=emulator.url, moto_url=moto.url,
                                          targets=targets, interval="30d", grace="0s"))

        clock_base = datetime.now(UTC)
        round_no = 0

        def clock() -> datetime:
            return clock_base + timedelta(hours=round_no * args.round_hours, seconds=time.monotonic() - loop_started)

        runtime: Any = memory_runtime(config, targets, clock) if store == "memory" else Runtime(config, clock=clock)

        def sample(done: int, seconds: float) -> None:
            rss, hwm = rss_mb()
            rows.append({"rotations": done, "seconds": round(seconds, 1), "rss_mb": round(rss, 1),
                         "hwm_mb": round(hwm, 1), "gc_objects": len(gc.get_objects()),
                         "secrets_registered": len(registry), "threads": threading.active_count()})
            print(f"#   {store} loop: {done} rotations, {seconds:.0f} s, RSS {rss:.1f} MB, "
                  f"{rows[-1]['gc_objects']} objects, {rows[-1]['secrets_registered']} secrets registered",
                  file=sys.stderr, flush=True)

        loop_started = time.monotonic()
        done, failed = 0, 0
        sample(0, 0.0)
        next_sample = args.sample_every
        with runtime:
            while done < rotations:
                outcomes = rotate_targets(runtime, config.targets, force=True, concurrency=args.concurrency)
                round_no += 1
                done += len(outcomes)
                failed += sum(not o.ok for o in outcomes)
                if done >= next_sample:
                    sample(done, time.monotonic() - loop_started)
                    next_sample += args.sample_every
        result["failed"] = failed
        result["seconds"] = round(time.monotonic() - loop_started, 1)
    devnull.close()
    warm = next((r for r in rows if r["rotations"] >= args.sample_every), rows[0])
    result["growth_after_first_sample_mb"] = round(rows[-1]["rss_mb"] - warm["rss_mb"], 1)
    second_half = [r["rss_mb"] for r in rows if r["rotations"] >= rotations / 2]
    result["growth_second_half_mb"] = round(max(second_half) - min(second_half), 1) if second_half else None
    return result


# --- output ---------------------------------------------------------------------------------------


def print_daemon(result: dict[str, Any]) -> None:
    print(f"\n## Idle daemon: {result['targets']} targets, interval 30d, sampled {result['seconds']} s")
    if "error" in result:
        print(f"ERROR: {result['error']}")
    print("\n| seconds after start | VmRSS MB |\n|---|---|")
    for t, rss in result["samples"]:
        if round(t) in (1, 2, 5, 10, 15, 20, 30, 45, 60, 75, 90, 120, 150, 180, 240, 300) or t == result["samples"][-1][0]:
            print(f"| {t:.0f} | {rss:.1f} |")
    print(f"\nmax VmRSS {result.get('rss_max_mb')} MB, VmHWM {result.get('vmhwm_mb')} MB, second half "
          f"{result.get('rss_second_half_mb')} MB; clones during the run: {result['clones']} (expected 0); "
          f"Funnelback calls {result['funnelback_calls']}; AWS calls {json.dumps(result.get('aws_calls'))}; "
          f"{result['log_lines']} log lines; seeding "
          f"{result['seed_seconds']} s; exit code after SIGTERM {result['exit_code']}")


def print_loop(result: dict[str, Any]) -> None:
    print(f"\n## {result['rotations']} rotations of {result['targets']} targets in one process "
          f"({'moto' if result['store'] == 'aws' else 'in-memory destination'}), {result['seconds']} s, "
          f"{result['failed']} failed")
    print("\n| rotations | seconds | VmRSS MB | VmHWM MB | gc objects | Secrets registered | threads |")
    print("|---|---|---|---|---|---|---|")
    step = max(1, (len(result["rows"]) - 1) // 10)
    for i, r in enumerate(result["rows"]):
        if i % step and i != len(result["rows"]) - 1:
            continue
        print(f"| {r['rotations']} | {r['seconds']} | {r['rss_mb']} | {r['hwm_mb']} | {r['gc_objects']} "
              f"| {r['secrets_registered']} | {r['threads']} |")
    print(f"\nRSS growth from the first sample after {result['rows'][1]['rotations'] if len(result['rows']) > 1 else 0}"
          f" rotations to the end: {result['growth_after_first_sample_mb']} MB; spread over the second half: "
          f"{result['growth_second_half_mb']} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[1, 1000],
                        help="daemon target counts, one daemon each (default: 1 1000)")
    parser.add_argument("--daemon-seconds", type=float, default=90.0,
                        help="how long each daemon is sampled (default 90: the start-up look at every target "
                             "and one 60 s poll round)")
    parser.add_argument("--poll-interval", type=float, default=60.0,
                        help="the daemons' [service] poll_interval in seconds (default 60, rotator's default)")
    parser.add_argument("--skip-daemon", action="store_true")
    parser.add_argument("--store", choices=("aws", "memory", "both", "none"), default="both")
    parser.add_argument("--rotations", type=int, default=2000, help="rotations into moto (default 2000)")
    parser.add_argument("--memory-rotations", type=int, default=10000,
                        help="rotations into the in-memory destination (default 10000)")
    parser.add_argument("--loop-targets", type=int, default=20)
    parser.add_argument("--round-hours", type=float, default=31 * 24,
                        help="the fake clock's step per round: 744 (31 days, the default) makes every "
                             "target due each round, so AWS targets take the quick path; 1 makes each "
                             "round a forced rotation of targets not due (the journal path)")
    parser.add_argument("--sample-every", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--loop", choices=("aws", "memory"), help=argparse.SUPPRESS)  # child: one loop
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.loop:
        print(json.dumps(rotation_loop(args, args.workdir, args.loop, args.rotations), default=str))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="rotator-memory-"))
    print(f"# workdir {workdir}", file=sys.stderr)
    results: dict[str, Any] = {}
    if not args.skip_daemon:
        for count in args.targets:
            results[f"daemon-{count}"] = idle_daemon(args, workdir, count)
            print_daemon(results[f"daemon-{count}"])
    for store, count in (("aws", args.rotations), ("memory", args.memory_rotations)):
        if args.store not in (store, "both"):
            continue
        # each loop in a fresh interpreter of its own: its RSS is rotator's, not an earlier part's
        done = subprocess.run([sys.executable, __file__, "--loop", store, "--rotations", str(count),
                               "--loop-targets", str(args.loop_targets), "--sample-every", str(args.sample_every),
                               "--concurrency", str(args.concurrency), "--round-hours", str(args.round_hours),
                               "--workdir", str(workdir)],
                              stdout=subprocess.PIPE, text=True, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            results[store] = {"error": f"the {store} loop exited {done.returncode}", "failed": 1}
            print(f"\n## {store} loop FAILED (exit {done.returncode})")
            continue
        results[store] = json.loads(lines[-1])
        print_loop(results[store])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    ok = all(not r.get("failed") and "error" not in r for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

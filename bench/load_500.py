#!/usr/bin/env python3
"""Load: N targets (default 500) in ONE `rotator rotate --all`, with a share of Funnelback calls
(default 5%) answered 503, 429 or slowly, against the Funnelback emulator and moto (AWS Secrets
Manager in server mode). Then checks every target: rotated, served token live, nothing pending,
no orphan. Prints a table with wall time and peak RSS.

    python bench/load_500.py                       # 500 targets, 5% faults, the real CLI in a child
    python bench/load_500.py --targets 50,500      # two runs: is memory flat in the number of targets?
    python bench/load_500.py --in-process          # rotate_targets() in this process instead

The emulator can only inject faults by count; "5% of all calls" is done by a FaultSet subclass
(`RandomFaults` below) that hits each call with the given probability. Peak RSS of the CLI run is
the child's own ru_maxrss (reported by a wrapper around rotator.cli.main), so moto and the emulator,
which run in this process, are not counted; with --in-process it is this whole process's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from moto_server import start_moto_server

from rotator.naming import is_generation
from rotator.testing.faults import RandomFaults
from rotator.testing.funnelback_emulator import FaultSet, FunnelbackEmulator

ADMIN_TOKEN = "load-test-admin-token-0123456789"
CLIENT = "acme"
FAULT_KINDS = [{"kind": "status", "status": 503}, {"kind": "status", "status": 429, "retry_after": 0.05},
               {"kind": "delay", "delay_seconds": 0.2}]
CHILD = ("import resource, sys\n"
         "from rotator.cli import main\n"
         "try:\n"
         "    code = main(sys.argv[1:])\n"
         "finally:\n"
         "    print('LOAD_MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
         "sys.exit(code)\n")


def write_config(path: Path, fb_url: str, moto_url: str, names: list[str], prefix: str, concurrency: int) -> None:
    parts = [f"""[funnelback]
url = "{fb_url}"
token_env = "FB_ADMIN_TOKEN"
timeout = "5s"
connect_timeout = "2s"
retries = 3
backoff_base = "50ms"
backoff_max = "500ms"
max_concurrency = {max(16, concurrency)}

[service]
concurrency = {concurrency}

[backends.aws]
type = "aws-secrets-manager"
region = "us-east-1"
endpoint_url = "{moto_url}"
"""]
    for name in names:
        parts.append(f"""
[[targets]]
name = "{name}"
client_id = "{CLIENT}"
token_name = "{name}"
interval = "1h"
grace_period = "0s"
lock_ttl = "60s"
destinations = [{{ backend = "aws", secret_id = "{prefix}/{name}" }}]
""")
    path.write_text("".join(parts))


def env_for_child() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROTATOR_", "AWS_"))}
    env.update(FB_ADMIN_TOKEN=ADMIN_TOKEN, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=str(REPO))
    return env


def check(emulator: FunnelbackEmulator, sm: Any, names: list[str], prefix: str) -> dict[str, Any]:
    """Per target: the AWSCURRENT token is a live generation, nothing pending, no other live token."""
    not_rotated, dead, pending, orphans = [], [], [], 0
    live_by_name = {n for n in emulator.token_names(CLIENT)}
    for name in names:
        secret_id = f"{prefix}/{name}"
        current = json.loads(sm.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["SecretString"])
        token_name = current.get("token_name")
        if not token_name or not is_generation(name, token_name):
            not_rotated.append(name)
        elif emulator.token_value(CLIENT, token_name) != current.get("token"):
            dead.append(name)
        stages = sm.describe_secret(SecretId=secret_id).get("VersionIdsToStages") or {}
        if any("AWSPENDING" in labels for labels in stages.values()):
            pending.append(name)
        live = [n for n in live_by_name if n == name or is_generation(name, n)]
        orphans += len([n for n in live if n != token_name])
    return {"not_rotated": not_rotated, "dead": dead, "pending": pending, "orphans": orphans}


def run_once(count: int, args: argparse.Namespace, moto_url: str, workdir: Path) -> dict[str, Any]:
    import boto3

    names = [f"load-{i:04d}" for i in range(count)]
    prefix = f"load/{uuid.uuid4().hex[:8]}"
    sm = boto3.client("secretsmanager", endpoint_url=moto_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    with FunnelbackEmulator(admin_token=ADMIN_TOKEN, clients=[CLIENT]) as emulator:
        for name in names:
            value = emulator.add_token(CLIENT, name)
            sm.create_secret(Name=f"{prefix}/{name}", SecretString=json.dumps({"token": value}))
        faults = RandomFaults(args.fault_rate, args.seed, kinds=FAULT_KINDS)
        emulator.faults = faults
        config = workdir / f"load-{count}.toml"
        write_config(config, emulator.url, moto_url, names, prefix, args.concurrency)
        started = time.monotonic()
        if args.in_process:
            os.environ["FB_ADMIN_TOKEN"] = ADMIN_TOKEN
            from rotator.config import load_config
            from rotator.runtime import Runtime, rotate_targets
            loaded = load_config(config)
            with Runtime(loaded) as runtime:
                outcomes = rotate_targets(runtime, loaded.targets, force=True, concurrency=args.concurrency)
            failed = [o.target for o in outcomes if not o.ok]
            exit_code = 1 if failed else 0
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        else:
            result = subprocess.run([sys.executable, "-c", CHILD, "rotate", "--all", "--json", "--config",
                                     str(config), "--log-level", "warning"],
                                    env=env_for_child(), capture_output=True, text=True, timeout=3600, check=False)
            exit_code = result.returncode
            try:
                outcomes_json = json.loads(result.stdout)
            except ValueError:
                sys.stderr.write(result.stdout[-2000:] + result.stderr[-4000:])
                raise
            failed = [o["target"] for o in outcomes_json if not o["ok"]]
            peak_kb = next((int(line.split()[1]) for line in result.stderr.splitlines()
                            if line.startswith("LOAD_MAXRSS_KB")), -1)
        wall = time.monotonic() - started
        emulator.faults = FaultSet()
        verdict = check(emulator, sm, names, prefix)
    return {"targets": count, "fault_rate": args.fault_rate, "calls": faults.calls,
            "faults": dict(faults.injected), "exit_code": exit_code, "failed": failed, "wall": wall,
            "peak_rss_mb": peak_kb / 1024, **verdict}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="500", help="comma-separated target counts, one run each")
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--in-process", action="store_true", help="rotate_targets() here, not the CLI")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.targets.split(",")]
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    import logging
    import tempfile
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    rows = []
    with start_moto_server() as moto, tempfile.TemporaryDirectory(prefix="rotator-load-") as tmp:
        for count in counts:
            rows.append(run_once(count, args, moto.url, Path(tmp)))
    header = (f"{'targets':>7} {'calls':>6} {'faults injected':<30} {'exit':>4} {'rotated':>9} {'failed':>6} "
              f"{'orphans':>7} {'pending':>7} {'dead':>4} {'wall s':>7} {'peak RSS MB':>11}")
    print(header)
    print("-" * len(header))
    for row in rows:
        faults = ", ".join(f"{k}:{v}" for k, v in sorted(row["faults"].items())) or "-"
        rotated = row["targets"] - len(row["not_rotated"])
        print(f"{row['targets']:>7} {row['calls']:>6} {faults:<30} {row['exit_code']:>4} "
              f"{rotated:>4}/{row['targets']:<4} {len(row['failed']):>6} {row['orphans']:>7} "
              f"{len(row['pending']):>7} {len(row['dead']):>4} {row['wall']:>7.1f} {row['peak_rss_mb']:>11.1f}")
        if row["failed"]:
            print(f"        failed: {', '.join(row['failed'][:20])}")
    mode = "in-process rotate_targets()" if args.in_process else "`rotator rotate --all` (child process)"
    print(f"mode: {mode}; concurrency {args.concurrency}; fault rate {args.fault_rate:.0%} "
          f"(503 / 429 / 200 ms delay, evenly)")
    ok = all(r["exit_code"] == 0 and not r["not_rotated"] and not r["orphans"] and not r["pending"]
             and not r["dead"] for r in rows)
    print("RESULT:", "all rotated, no orphan, nothing pending" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Start-up cost of rotator's commands: wall time (median of --repeat runs) and `python -X importtime`.

    python bench/startup.py                # about 30 s

Commands measured, each in a fresh interpreter (`python -m rotator ...`, what the `rotator` console
script runs):
- `--help`, every `COMMAND --help`;
- config validation (`python -c "from rotator.config import load_config; load_config(PATH)"`);
- `status` with a config holding one AWS target (moto as a child process);
- a one-target `rotate` (the same target each time: every run is a real rotation, clone to revoke,
  with grace_period 0s);
- `python -c pass`, the interpreter's own floor.

For each: median wall time, the importtime total (sum of every module's self time, i.e. all time
spent importing, whenever it happened), the number of modules imported, and which heavy modules
(boto3, botocore, hvac, apscheduler, prometheus_client, requests, structlog) were imported.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import (
    compile_rotator,
    emulator_process,
    make_targets,
    rotator_env,
    seed,
    write_config,
)

HEAVY = ("boto3", "botocore", "hvac", "apscheduler", "prometheus_client", "requests", "structlog")
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def importtime(stderr: str) -> tuple[float, int, set[str]]:
    """(total import seconds, modules imported, heavy top-level packages imported)."""
    total_us, count, heavy = 0, 0, set()
    for line in stderr.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        total_us += int(match.group(1))
        count += 1
        top = match.group(4).split(".")[0]
        if top in HEAVY:
            heavy.add(top)
    return total_us / 1e6, count, heavy


def measure(argv: list[str], *, env: dict[str, str], cwd: Path, repeat: int, expect: int = 0
            ) -> tuple[float, float, int, set[str]]:
    walls = []
    for _ in range(repeat):
        begin = time.perf_counter()
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - begin)
        if done.returncode != expect:
            raise RuntimeError(f"{argv} exited {done.returncode}:\n{done.stdout[-800:]}\n{done.stderr[-1500:]}")
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, cwd=cwd, capture_output=True,
                          text=True, check=False)
    if done.returncode != expect:
        raise RuntimeError(f"{argv} (importtime) exited {done.returncode}:\n{done.stderr[-1500:]}")
    total, count, heavy = importtime(done.stderr)
    return statistics.median(walls), total, count, heavy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    from moto_server import start_moto_server

    compile_rotator()
    workdir = Path(tempfile.mkdtemp(prefix="rotator-startup-"))
    py = sys.executable
    env = rotator_env()
    rows: list[tuple[str, tuple[float, float, int, set[str]]]] = []
    with emulator_process(delay=0.0, workdir=workdir) as emulator, start_moto_server(subprocess=True) as moto:
        targets = make_targets("s", 1, 5)
        seed(emulator, moto.url, targets)
        config = write_config(workdir / "rotation.toml", fb_url=emulator.url, moto_url=moto.url,
                              targets=targets)
        cfg = ["--config", str(config)]
        cases: list[tuple[str, list[str]]] = [
            ("python -c pass", [py, "-c", "pass"]),
            ("rotator --help", [py, "-m", "rotator", "--help"]),
            *[(f"rotator {c} --help", [py, "-m", "rotator", c, "--help"])
              for c in ("rotate", "run", "status", "check", "demo")],
            ("load_config (validation)", [py, "-c", (f"from rotator.config import load_config; "
                                                     f"load_config({str(config)!r})")]),
            ("rotator status (1 AWS target)", [py, "-m", "rotator", "status", *cfg]),
            ("rotator rotate (1 AWS target)", [py, "-m", "rotator", "rotate", targets[0].name, *cfg]),
        ]
        for label, command in cases:
            rows.append((label, measure(command, env=env, cwd=workdir, repeat=args.repeat)))
            print(f"# {label}: done", file=sys.stderr, flush=True)

    print(f"| command | wall s (median of {args.repeat}) | importtime total s | modules imported | "
          f"heavy modules imported |")
    print("|---|---|---|---|---|")
    for label, (wall, total, count, heavy) in rows:
        shown = ", ".join(sorted(heavy)) or "none"
        print(f"| `{label}` | {wall:.3f} | {total:.3f} | {count} | {shown} |")
    import shutil
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

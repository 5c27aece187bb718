"""Command line: commands, exit codes, and the mapping of errors to one clear line.

Exit codes (interface.md): 0 success; 1 one or more targets/checks failed; 2 bad config or usage.
Only the standard library and rotator's light modules are imported at start-up: SDKs load when a
command actually needs a store that uses them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from rotator import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"rotator: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _add_common(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Accepted before or after the command (`rotator --config X status` and `rotator status --config X`);
    # after the command they must not reset what was given before it, hence SUPPRESS there.
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--config", metavar="PATH", default=default(None),
                        help="config file (default: $ROTATOR_CONFIG, then ./rotation.toml)")
    parser.add_argument("--log-format", choices=("json", "console"), default=default(None),
                        help="log format (default: json when stderr is not a terminal)")
    parser.add_argument("--log-level", default=default("info"), choices=("debug", "info", "warning", "error"))


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, defaults=False)

    parser = _Parser(prog="rotator", description="Zero-downtime rotation of Funnelback application tokens "
                                                 "into HashiCorp Vault and AWS Secrets Manager.")
    parser.add_argument("--version", action="version", version=f"rotator {__version__}")
    _add_common(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    rotate = commands.add_parser("rotate", parents=[common], help="rotate targets now (or only the due ones)")
    which = rotate.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="rotate every target")
    which.add_argument("--due", action="store_true",
                       help="rotate only targets whose token is older than their interval, and finish "
                            "any rotation left half-done (the CronJob mode)")
    rotate.add_argument("targets", nargs="*", metavar="TARGET", help="target names from the config")
    rotate.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    rotate.add_argument("--wait", action="store_true",
                        help="wait out the grace period and revoke the previous token before exiting")
    rotate.add_argument("--concurrency", type=int, default=None, metavar="N",
                        help="targets rotated in parallel (default: [service] concurrency, 4)")
    rotate.add_argument("--shard", metavar="I/N", help="only targets whose stable hash falls in shard I of N")
    rotate.add_argument("--json", action="store_true", help="print the results as JSON")

    run = commands.add_parser("run", parents=[common], help="long-running daemon: schedule every target")
    run.add_argument("--shard", metavar="I/N", help="only schedule targets in shard I of N")

    status = commands.add_parser("status", parents=[common], help="show each target's token, age and state")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("targets", nargs="*", metavar="TARGET")

    commands.add_parser("check", parents=[common],
                        help="read-only preflight: config, Funnelback access, every destination")

    demo = commands.add_parser("demo", parents=[common],
                               help="a self-contained rotation against bundled emulators on loopback")
    demo.add_argument("--keep", action="store_true", help="keep the demo's temporary directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The program. Without `argv` it is the process (console script, `python -m rotator`), which
    ends when this returns; with `argv` it is a call from a test or an embedder."""
    from rotator import process

    if argv is None:
        process.begin_startup()
    try:
        return _main(argv)
    finally:
        process.startup_done()  # a command that failed before its start-up ended
        process.before_exit()


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from rotator import logs
    from rotator.errors import ConfigError, RotatorError

    try:
        logs.configure(fmt=args.log_format, level=args.log_level)
        handler = {"rotate": cmd_rotate, "run": cmd_run, "status": cmd_status, "check": cmd_check,
                   "demo": cmd_demo}[args.command]
        return handler(args)
    except ConfigError as exc:
        print(f"rotator: config error: {exc.one_line()}", file=sys.stderr)
        return EXIT_USAGE
    except RotatorError as exc:
        print(f"rotator: {exc.one_line()}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("rotator: interrupted; a re-run resumes any rotation left in flight", file=sys.stderr)
        return 130


def _load(args: argparse.Namespace) -> Any:
    from rotator.config import load_config
    return load_config(args.config)


def _select(config: Any, args: argparse.Namespace) -> list[Any]:
    from rotator.errors import ConfigError
    from rotator.shard import parse_shard, in_shard

    targets = list(config.targets)
    if getattr(args, "targets", None):
        targets = [config.target(name) for name in dict.fromkeys(args.targets)]
    if getattr(args, "shard", None):
        try:
            index, count = parse_shard(args.shard)
        except ValueError as exc:
            raise ConfigError(str(exc), key="--shard", hint="write I/N with 0 <= I < N, e.g. 0/4") from None
        targets = [t for t in targets if in_shard(t.name, index, count)]
    return targets


def cmd_rotate(args: argparse.Namespace) -> int:
    from rotator import process
    from rotator.runtime import Runtime, rotate_targets

    if not (args.targets or args.all or args.due):
        print("rotator: error: name one or more TARGETs, or use --all or --due", file=sys.stderr)
        return EXIT_USAGE
    if args.targets and (args.all or args.due):
        print("rotator: error: TARGET names cannot be combined with --all or --due", file=sys.stderr)
        return EXIT_USAGE
    if args.concurrency is not None and args.concurrency < 1:
        print("rotator: error: --concurrency must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    config = _load(args)
    targets = _select(config, args)
    concurrency = args.concurrency or config.service.concurrency
    with Runtime(config, workers=concurrency) as runtime:
        runtime.prepare(targets)
        process.startup_done()
        outcomes = rotate_targets(runtime, targets, force=not args.due, dry_run=args.dry_run,
                                  concurrency=concurrency, wait_for_grace=args.wait)
    if args.json:
        print(json.dumps([_outcome_dict(o) for o in outcomes], indent=2))
    else:
        for outcome in outcomes:
            print(_outcome_line(outcome))
        failed = sum(not o.ok for o in outcomes)
        print(f"{len(outcomes) - failed} ok, {failed} failed")
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAILED


def _outcome_dict(outcome: Any) -> dict[str, Any]:
    from rotator.journal import iso
    return {"target": outcome.target, "result": outcome.result, "ok": outcome.ok,
            "new_token_name": outcome.new_token_name, "revoked": outcome.revoked,
            "revocations_pending": [{"token_name": n, "not_before": iso(t)} for n, t in outcome.revocations_pending],
            "error": outcome.error, "duration_seconds": round(outcome.duration, 3), "plan": outcome.plan}


def _outcome_line(outcome: Any) -> str:
    from rotator.journal import iso
    parts = [f"{outcome.target}: {outcome.result}"]
    if outcome.new_token_name:
        parts.append(f"new token {outcome.new_token_name}")
    if outcome.revoked:
        parts.append(f"revoked {', '.join(outcome.revoked)}")
    for name, when in outcome.revocations_pending:
        parts.append(f"{name} revoked after {iso(when)} (run `rotator rotate --due` then, or use --wait)")
    if outcome.error:
        parts.append(outcome.error)
    parts.extend(outcome.plan)
    return "; ".join(parts) + f" [{outcome.duration:.2f}s]"


def cmd_status(args: argparse.Namespace) -> int:
    from rotator import process
    from rotator.runtime import Runtime, target_status

    config = _load(args)
    process.startup_done()
    targets = _select(config, args)
    with Runtime(config) as runtime:
        rows = [target_status(runtime, t) for t in targets]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        if "error" in row:
            print(f"{row['target']}: unknown ({row['error']})")
            continue
        age = f"{row['age_seconds']}s" if row["age_seconds"] is not None else "unknown"
        line = (f"{row['target']}: token {row['token_name'] or '-'}, age {age}, next due {row['next_due']}"
                f"{' (due now)' if row['due'] else ''}")
        last = row.get("last_result") or {}
        if last:
            line += f", last {last.get('outcome')} at {last.get('at')}"
        if row["in_progress"]:
            ip = row["in_progress"]
            line += f", IN PROGRESS -> {ip['new_token_name']} ({ip['phase']}, lease {'held' if ip['lease_live'] else 'expired'})"
        if row["diverged"]:
            line += ", DIVERGED: " + ", ".join(f"{d['destination']}={d['token_name']}" for d in row["destinations"])
        for entry in row["pending_revocations"]:
            line += f", revoke {entry['name']} after {entry['not_before']}"
        print(line)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from rotator import process
    from rotator.runtime import Runtime, preflight

    config = _load(args)
    process.startup_done()
    with Runtime(config) as runtime:
        results = preflight(runtime)
    print(f"ok   config {config.path}: {len(config.targets)} targets, {len(config.backends)} backends")
    for result in results:
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.name}{': ' + result.detail if result.detail else ''}")
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed + 1} ok, {failed} failed")
    return EXIT_OK if failed == 0 else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    from rotator import process
    from rotator.daemon import run_daemon

    process.startup_done()  # a daemon collects as usual for the rest of its life

    return run_daemon(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from rotator import process
    from rotator.demo import run_demo

    process.startup_done()

    return run_demo(args)

"""`rotator demo`: a real rotation end to end against bundled emulators on loopback.

Starts the Funnelback and Vault emulators and (if installed) moto's Secrets Manager, writes a
temporary config, stores a hand-written token in both stores (adoption), then runs the same commands
a user would: `rotate`, `status`, and `rotate --due` once the grace period has passed. Token values
are never printed; the demo's own credentials live in this process's environment only.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

CLIENT, TOKEN_NAME, TARGET = "acme", "search-frontend", "search-frontend"
GRACE_SECONDS = 3


def _say(text: str = "") -> None:
    print(text, flush=True)


def _start_moto(stack: ExitStack) -> str | None:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        _say("  moto is not installed, so the demo skips AWS Secrets Manager "
             "(install it with: pip install 'rotator[demo]')")
        return None
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stack.callback(server.stop)
    return f"http://127.0.0.1:{port}"


def _config(fb_url: str, vault_url: str, moto_url: str | None) -> str:
    destinations = [f'{{ backend = "vault", path = "apps/{TARGET}/funnelback" }}']
    aws_backend = ""
    if moto_url:
        destinations.append(f'{{ backend = "aws", secret_id = "demo/{TARGET}/funnelback" }}')
        aws_backend = textwrap.dedent(f"""
            [backends.aws]
            type = "aws-secrets-manager"
            region = "us-east-1"
            endpoint_url = "{moto_url}"
        """)
    return textwrap.dedent(f"""
        # Written by `rotator demo`: every URL points at an emulator on 127.0.0.1.
        [funnelback]
        url = "{fb_url}"
        token_env = "ROTATOR_DEMO_FUNNELBACK_TOKEN"

        [backends.vault]
        type = "vault"
        url = "{vault_url}"
        auth = {{ method = "token", token_env = "ROTATOR_DEMO_VAULT_TOKEN" }}
    """) + aws_backend + textwrap.dedent(f"""
        [[targets]]
        name = "{TARGET}"
        client_id = "{CLIENT}"
        token_name = "{TOKEN_NAME}"
        interval = "30d"
        grace_period = "{GRACE_SECONDS}s"
        lock_ttl = "10s"
        destinations = [{", ".join(destinations)}]
    """)


def run_demo(args: argparse.Namespace) -> int:
    from rotator.cli import main as cli
    from rotator.testing.funnelback_emulator import FunnelbackEmulator
    from rotator.testing.vault_emulator import VaultEmulator

    workdir = Path(tempfile.mkdtemp(prefix="rotator-demo-"))
    os.chmod(workdir, 0o700)
    log_format = args.log_format or "console"
    with ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, True)
        _say("rotator demo: a real rotation against emulators on 127.0.0.1 (token values are never shown)\n")
        _say("1. starting the emulators")
        admin_token = secrets.token_urlsafe(32)
        funnelback = stack.enter_context(FunnelbackEmulator(admin_token=admin_token, clients=[CLIENT]))
        vault = stack.enter_context(VaultEmulator())
        moto_url = _start_moto(stack)
        _say(f"  Funnelback admin API  {funnelback.url}")
        _say(f"  Vault                 {vault.url}")
        if moto_url:
            _say(f"  AWS Secrets Manager   {moto_url} (moto)")
            for key, value in {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
                               "AWS_DEFAULT_REGION": "us-east-1"}.items():
                os.environ.setdefault(key, value)
        os.environ["ROTATOR_DEMO_FUNNELBACK_TOKEN"] = admin_token
        os.environ["ROTATOR_DEMO_VAULT_TOKEN"] = vault.root_token

        _say(f"\n2. a team's existing token {TOKEN_NAME!r}, stored by hand in each destination (no rotated_at)")
        value = funnelback.add_token(CLIENT, TOKEN_NAME)
        vault.write_secret(f"apps/{TARGET}/funnelback", {"token": value, "owner": "search-team"})
        if moto_url:
            _store_in_aws(moto_url, f"demo/{TARGET}/funnelback", {"token": value, "owner": "search-team"})
        config = workdir / "rotation.toml"
        config.write_text(_config(funnelback.url, vault.url, moto_url))
        _say(f"  config: {config}")
        common = ["--config", str(config), "--log-format", log_format, "--log-level", args.log_level or "info"]

        steps: list[tuple[str, list[str]]] = [
            ("3. rotator check  (read-only preflight)", ["check"]),
            (f"4. rotator rotate {TARGET}  (clone -> persist -> verify -> promote)", ["rotate", TARGET]),
            ("5. rotator status", ["status"]),
        ]
        for title, command in steps:
            _say(f"\n{title}")
            code = cli([*command, *common])
            if code != 0:
                _say(f"\ndemo failed: `rotator {' '.join(command)}` exited {code}")
                return 1
        _say(f"\n6. the previous token stays valid for the grace period ({GRACE_SECONDS}s); then "
             "`rotator rotate --due` revokes it")
        time.sleep(GRACE_SECONDS + 0.5)
        if cli(["rotate", "--due", *common]) != 0:
            return 1
        live = funnelback.token_names(CLIENT)
        _say(f"\n7. Funnelback now has exactly one live token for the target: {', '.join(live)}")
        served = (vault.read_secret(f"apps/{TARGET}/funnelback") or {}).get("token_name")
        _say(f"   Vault serves {served}; the user's extra key 'owner' was kept")
        ok = len(live) == 1 and served == live[0]
        _say("\ndemo finished: " + ("rotation complete, previous token revoked" if ok else "UNEXPECTED STATE"))
        if args.keep:
            _say(f"kept {workdir}")
        return 0 if ok else 1


def _store_in_aws(endpoint: str, secret_id: str, value: dict[str, Any]) -> None:
    import boto3
    client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")
    client.create_secret(Name=secret_id, SecretString=json.dumps(value))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(argparse.Namespace(keep=False, log_format=None, log_level="info")))

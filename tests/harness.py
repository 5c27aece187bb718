"""End-to-end helpers: write a rotation.toml for the emulators, run the real CLI, check invariants."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import ADMIN_TOKEN
from rotator.naming import is_generation

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Stack:
    """One test's world: the Funnelback emulator, moto, and a config naming fresh secrets."""

    emulator: Any
    moto_url: str
    workdir: Path
    prefix: str
    vault: Any = None
    vault_token: str = ""

    def secret_id(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def write_config(self, targets: list[dict[str, Any]], *, grace: str = "0s", lock_ttl: str = "3s",
                     extra_funnelback: str = "", concurrency: int = 4) -> Path:
        blocks = []
        for t in targets:
            dests = ", ".join(self._destination(kind, name)
                              for kind, name in t.get("dests", [("aws", s) for s in t.get("secrets", [t["name"]])]))
            blocks.append(textwrap.dedent(f"""
                [[targets]]
                name = "{t['name']}"
                client_id = "{t.get('client_id', 'acme')}"
                token_name = "{t.get('token_name', t['name'])}"
                interval = "{t.get('interval', '1h')}"
                grace_period = "{t.get('grace', grace)}"
                lock_ttl = "{lock_ttl}"
                lock_wait = "60s"
                destinations = [{dests}]
            """))
        text = textwrap.dedent(f"""
            [funnelback]
            url = "{self.emulator.url}"
            token_env = "FB_ADMIN_TOKEN"
            timeout = "3s"
            connect_timeout = "1s"
            retries = 3
            backoff_base = "50ms"
            backoff_max = "200ms"
            {extra_funnelback}

            [service]
            concurrency = {concurrency}

            [backends.aws]
            type = "aws-secrets-manager"
            region = "us-east-1"
            endpoint_url = "{self.moto_url}"
        """) + self._vault_backend() + "".join(blocks)
        path = self.workdir / "rotation.toml"
        path.write_text(text)
        return path

    def _destination(self, kind: str, name: str) -> str:
        if kind == "vault":
            return f'{{ backend = "vault", path = "{self.vault_path(name)}" }}'
        return f'{{ backend = "aws", secret_id = "{self.secret_id(name)}" }}'

    def vault_path(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def _vault_backend(self) -> str:
        if self.vault is None:
            return ""
        return textwrap.dedent(f"""
            [backends.vault]
            type = "vault"
            url = "{self.vault.url}"
            auth = {{ method = "token", token_env = "TEST_VAULT_TOKEN" }}
        """)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROTATOR_")}
        env.update(FB_ADMIN_TOKEN=ADMIN_TOKEN, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=str(REPO))
        env.pop("AWS_PROFILE", None)
        if self.vault is not None:
            env["TEST_VAULT_TOKEN"] = self.vault_token or self.vault.root_token
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "rotator", *args, "--config", str(self.workdir / "rotation.toml")]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), env=self.env(), capture_output=True, text=True,
                              timeout=timeout, cwd=self.workdir)

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(*args), env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=self.workdir)

    # --- AWS side -------------------------------------------------------------------------------

    def sm(self) -> Any:
        import boto3
        return boto3.client("secretsmanager", endpoint_url=self.moto_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def put_secret(self, name: str, value: dict[str, Any]) -> None:
        self.sm().create_secret(Name=self.secret_id(name), SecretString=json.dumps(value))

    def stage(self, name: str, stage: str = "AWSCURRENT") -> dict[str, Any] | None:
        client = self.sm()
        try:
            answer = client.get_secret_value(SecretId=self.secret_id(name), VersionStage=stage)
        except client.exceptions.ResourceNotFoundException:
            return None
        return json.loads(answer["SecretString"])

    def journal(self, name: str) -> dict[str, Any]:
        return (self.stage(name, "ROTATOR_JOURNAL") or {}).get("rotator_journal", {})

    # --- invariants -----------------------------------------------------------------------------

    def assert_converged(self, target: str, secrets: list[str] | None = None, *, token_name: str | None = None,
                         client: str = "acme", in_grace: int = 0) -> dict[str, Any]:
        """Every destination serves the same live token; exactly one rotator-made token is live
        (plus `in_grace` previous ones); no pending value, no rotation in flight."""
        token_name = token_name or target
        secrets = secrets or [target]
        currents = [self.stage(s) for s in secrets]
        assert all(c is not None for c in currents), currents and "a destination holds nothing"
        names = {c["token_name"] for c in currents}
        assert len(names) == 1, f"destinations diverge: {names}"
        current = currents[0]
        assert all(c["token"] == current["token"] for c in currents)
        assert self.emulator.token_value(client, current["token_name"]) == current["token"], \
            "the served token is not live on Funnelback"
        for s in secrets:
            assert self.stage(s, "AWSPENDING") is None, f"{s} still has a pending value"
        live = [n for n in self.emulator.token_names(client) if n == token_name or is_generation(token_name, n)]
        assert current["token_name"] in live
        assert len(live) == 1 + in_grace, f"live tokens {live}: orphans or unrevoked previous tokens"
        journal = self.journal(secrets[0])
        assert not journal.get("in_progress"), journal
        return current


def new_stack(emulator: Any, moto_url: str, tmp_path: Path, vault: Any = None) -> Stack:
    return Stack(emulator=emulator, moto_url=moto_url, workdir=tmp_path, prefix=f"t{uuid.uuid4().hex[:10]}",
                 vault=vault)

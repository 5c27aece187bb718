"""Fast start: what each command imports, checked in a fresh interpreter each time.

- `rotator --help`, every `rotator COMMAND --help` and config validation import none of the SDKs or
  service libraries (boto3, botocore, hvac, apscheduler, prometheus_client);
- `status` and `rotate` import the SDK of the backends the config uses and no other: boto3 for an
  AWS-only config, hvac for a Vault-only one; neither imports apscheduler (nor prometheus_client);
- only `run` imports apscheduler.

Each command runs through a small wrapper (`python -c WRAPPER ARGS...`) that executes rotator's
`__main__` exactly as `python -m rotator ARGS...` would and writes the top-level names found in
`sys.modules` to a file at exit (and, for the daemon, every 0.1 s while it runs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ADMIN_TOKEN, SEED_NAME

from rotator.testing.vault_emulator import VaultEmulator

REPO = Path(__file__).resolve().parent.parent

SDKS = {"boto3", "botocore", "hvac", "apscheduler", "prometheus_client"}
COMMANDS = ("rotate", "run", "status", "check", "demo")

WRAPPER = textwrap.dedent("""
    import atexit, os, runpy, sys, threading, time
    out = os.environ["LAZY_IMPORTS_OUT"]

    def dump():
        names = sorted({m.split(".")[0] for m in list(sys.modules)})
        with open(out + ".tmp", "w") as handle:
            handle.write("\\n".join(names))
        os.replace(out + ".tmp", out)

    atexit.register(dump)
    if os.environ.get("LAZY_IMPORTS_POLL"):
        def poll():
            while True:
                dump()
                time.sleep(0.1)
        threading.Thread(target=poll, daemon=True).start()
    sys.argv = ["rotator", *sys.argv[1:]]
    runpy.run_module("rotator", run_name="__main__", alter_sys=True)
""")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROTATOR_", "AWS_", "VAULT_"))}
    env.update(PYTHONPATH=str(REPO), FB_ADMIN_TOKEN=ADMIN_TOKEN, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               LAZY_IMPORTS_OUT=str(tmp_path / "modules.txt"))
    env.update(extra)
    return env


def _modules(tmp_path: Path) -> set[str]:
    return set((tmp_path / "modules.txt").read_text().split())


def imported_by(tmp_path: Path, *args: str, ok: tuple[int, ...] = (0,), **env: str) -> set[str]:
    """Top-level modules imported by `rotator ARGS...` (run to completion)."""
    done = subprocess.run([sys.executable, "-c", WRAPPER, *args], env=_env(tmp_path, **env), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode in ok, f"rotator {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return _modules(tmp_path)


# --- configs ------------------------------------------------------------------------------------


def _funnelback(emulator) -> str:
    return textwrap.dedent(f"""
        [funnelback]
        url = "{emulator.url}"
        token_env = "FB_ADMIN_TOKEN"
        timeout = "5s"
        retries = 1

        [defaults]
        interval = "30d"
        grace_period = "0s"
    """)


def aws_config(tmp_path: Path, emulator, moto_url: str, secret_id: str) -> Path:
    path = tmp_path / "aws.toml"
    path.write_text(_funnelback(emulator) + textwrap.dedent(f"""
        [backends.aws]
        type = "aws-secrets-manager"
        region = "us-east-1"
        endpoint_url = "{moto_url}"

        [[targets]]
        name = "web"
        client_id = "acme"
        token_name = "{SEED_NAME}"
        destinations = [{{ backend = "aws", secret_id = "{secret_id}" }}]
    """))
    return path


def vault_config(tmp_path: Path, emulator, vault: VaultEmulator, path_in_vault: str) -> Path:
    path = tmp_path / "vault.toml"
    path.write_text(_funnelback(emulator) + textwrap.dedent(f"""
        [backends.vault]
        type = "vault"
        url = "{vault.url}"
        auth = {{ method = "token", token_env = "TEST_VAULT_TOKEN" }}

        [[targets]]
        name = "web"
        client_id = "acme"
        token_name = "{SEED_NAME}"
        destinations = [{{ backend = "vault", path = "{path_in_vault}" }}]
    """))
    return path


def _validation_config(tmp_path: Path) -> Path:
    """Both backends declared and used: loading it must still import no SDK."""
    path = tmp_path / "both.toml"
    path.write_text(textwrap.dedent("""
        [funnelback]
        url = "https://search.example.com/admin-api"
        token_env = "FB_ADMIN_TOKEN"

        [backends.aws]
        type = "aws-secrets-manager"
        region = "us-east-1"

        [backends.vault]
        type = "vault"
        url = "https://vault.example.com:8200"
        auth = { method = "token", token_env = "VAULT_TOKEN" }

        [[targets]]
        name = "web"
        client_id = "acme"
        token_name = "web"
        interval = "30d"
        grace_period = "15m"
        destinations = [{ backend = "aws", secret_id = "prod/web" }, { backend = "vault", path = "apps/web" }]
    """))
    return path


# --- help and validation: no SDK at all -----------------------------------------------------------


def test_top_level_help_imports_no_sdk(tmp_path: Path) -> None:
    assert not imported_by(tmp_path, "--help") & SDKS


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_imports_no_sdk(tmp_path: Path, command: str) -> None:
    assert not imported_by(tmp_path, command, "--help") & SDKS


def test_version_imports_no_sdk(tmp_path: Path) -> None:
    assert not imported_by(tmp_path, "--version") & SDKS


def test_usage_error_imports_no_sdk(tmp_path: Path) -> None:
    assert not imported_by(tmp_path, "rotate", ok=(2,)) & SDKS  # neither TARGET nor --all


def test_config_validation_imports_no_sdk(tmp_path: Path) -> None:
    config = _validation_config(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        from rotator.config import load_config
        config = load_config({str(config)!r})
        assert [t.name for t in config.targets] == ["web"]
        print("\\n".join(sorted({{m.split(".")[0] for m in sys.modules}})))
    """)
    done = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert not set(done.stdout.split()) & SDKS


def test_invalid_config_imports_no_sdk(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[funnelback]\nurl = "https://x/admin-api"\n[[targets]]\nname = "web"\n')
    assert not imported_by(tmp_path, "status", "--config", str(bad), ok=(2,)) & SDKS


# --- status / rotate: only the SDKs the config uses -----------------------------------------------


@pytest.fixture
def aws_secret(emulator, moto_url: str, tmp_path: Path) -> Path:
    import json
    import uuid

    import boto3

    secret_id = f"lazy/{uuid.uuid4().hex[:10]}/web"
    boto3.client("secretsmanager", endpoint_url=moto_url, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_secret(
        Name=secret_id, SecretString=json.dumps({"token": emulator.token_value("acme", SEED_NAME)}))
    return aws_config(tmp_path, emulator, moto_url, secret_id)


@pytest.fixture
def vault_setup(emulator, tmp_path: Path):
    with VaultEmulator() as vault:
        vault.write_secret("lazy/web", {"token": emulator.token_value("acme", SEED_NAME)})
        yield vault_config(tmp_path, emulator, vault, "lazy/web"), vault.root_token


@pytest.mark.parametrize("args", [("status",), ("rotate", "web")], ids=["status", "rotate"])
def test_aws_only_config_imports_boto3_only(tmp_path: Path, aws_secret: Path, args: tuple[str, ...]) -> None:
    modules = imported_by(tmp_path, *args, "--config", str(aws_secret))
    assert {"boto3", "botocore"} <= modules
    # requests comes with hvac only: the Funnelback client speaks urllib3 (rotator.transport)
    assert not modules & {"hvac", "apscheduler", "prometheus_client", "requests"}


@pytest.mark.parametrize("args", [("status",), ("rotate", "web")], ids=["status", "rotate"])
def test_vault_only_config_imports_hvac_only(tmp_path: Path, vault_setup, args: tuple[str, ...]) -> None:
    config, root_token = vault_setup
    modules = imported_by(tmp_path, *args, "--config", str(config), TEST_VAULT_TOKEN=root_token)
    assert "hvac" in modules
    assert not modules & {"boto3", "botocore", "apscheduler", "prometheus_client"}


def test_rotate_dry_run_with_aws_config_imports_no_vault_or_scheduler(tmp_path: Path, aws_secret: Path) -> None:
    modules = imported_by(tmp_path, "rotate", "--all", "--dry-run", "--config", str(aws_secret))
    assert not modules & {"hvac", "apscheduler", "prometheus_client"}


# --- run: the only command with the scheduler -----------------------------------------------------


def test_only_run_imports_apscheduler(tmp_path: Path, aws_secret: Path) -> None:
    from moto_server import free_port

    text = aws_secret.read_text().replace("[defaults]", f'[service]\nlisten = "127.0.0.1:{free_port()}"\n\n'
                                                        f'[defaults]')
    aws_secret.write_text(text)
    process = subprocess.Popen([sys.executable, "-c", WRAPPER, "run", "--config", str(aws_secret)],
                               env=_env(tmp_path, LAZY_IMPORTS_POLL="1"), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    modules: set[str] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if (tmp_path / "modules.txt").exists():
                modules = _modules(tmp_path)
                if "apscheduler" in modules:
                    break
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            _out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _out, err = process.communicate()
    assert "apscheduler" in modules, f"rotator run never imported apscheduler (exit {process.returncode}):\n{err[-3000:]}"
    assert "hvac" not in modules

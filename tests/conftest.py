"""Shared fixtures: the Funnelback emulator, moto in server mode, and config builders."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from rotator.config import FunnelbackSettings, TargetSettings, DestinationSettings  # noqa: E402
from rotator.funnelback import FunnelbackClient  # noqa: E402
from rotator.testing.funnelback_emulator import FunnelbackEmulator  # noqa: E402

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
SEED_NAME = "web"


@pytest.fixture
def emulator() -> Iterator[FunnelbackEmulator]:
    with FunnelbackEmulator(admin_token=ADMIN_TOKEN, clients=["acme"]) as emu:
        emu.add_token("acme", SEED_NAME)
        yield emu


@pytest.fixture
def fb_settings(emulator: FunnelbackEmulator, monkeypatch: pytest.MonkeyPatch) -> FunnelbackSettings:
    monkeypatch.setenv("FB_ADMIN_TOKEN", ADMIN_TOKEN)
    return FunnelbackSettings(url=emulator.url, token_env="FB_ADMIN_TOKEN", timeout=2.0, connect_timeout=1.0,
                              retries=3, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture
def fb_client(fb_settings: FunnelbackSettings) -> Iterator[FunnelbackClient]:
    client = FunnelbackClient(fb_settings)
    yield client
    client.close()


def make_target(**overrides: Any) -> TargetSettings:
    values: dict[str, Any] = dict(name="web", client_id="acme", token_name=SEED_NAME, interval=3600.0,
                                  grace_period=0.0, lock_ttl=3.0, lock_wait=10.0,
                                  destinations=(DestinationSettings("mem", {"secret_id": "x"}),))
    values.update(overrides)
    return TargetSettings(**values)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto_server import start_moto_server

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    with start_moto_server() as server:
        yield server.url

"""The README's configuration reference and the config model cannot drift apart: every key the
loader accepts is documented, and every documented key is accepted."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from rotator.config import (
    BACKEND_SPECS,
    FUNNELBACK_KEYS,
    NOTIFY_KEYS,
    SERVICE_KEYS,
    TARGET_DEFAULTS,
    TARGET_REQUIRED,
    VAULT_AUTH_KEYS,
    FunnelbackApi,
)

README = Path(__file__).resolve().parent.parent / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(title)
    end = text.find("\n### ", start + len(title))
    end = text.find("\n## ", start + len(title)) if end == -1 else end
    return text[start:end]


def documented_keys(title: str) -> set[str]:
    """Backticked words in the first column of the section's tables (split on ' / ' and ' + ')."""
    keys: set[str] = set()
    for line in section(title).splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            keys.update(re.findall(r"`([a-z_]+)`", first))
    return keys


def test_funnelback_keys_documented() -> None:
    assert documented_keys("### `[funnelback]`") == FUNNELBACK_KEYS - {"api"}


def test_funnelback_api_keys_documented() -> None:
    text = section("### `[funnelback.api]`")
    assert set(re.findall(r"`([a-z_]+)`", text)) >= {f.name for f in fields(FunnelbackApi)}


def test_service_keys_documented() -> None:
    assert documented_keys("### `[service]`") == SERVICE_KEYS


def test_target_keys_documented() -> None:
    assert documented_keys("### `[defaults]` and `[[targets]]`") == set(TARGET_REQUIRED) | set(TARGET_DEFAULTS)


def test_backend_keys_documented() -> None:
    aws = BACKEND_SPECS["aws-secrets-manager"]
    assert documented_keys('### `[backends.NAME]` with `type = "aws-secrets-manager"`') == aws.required | aws.optional
    vault = BACKEND_SPECS["vault"]
    assert documented_keys('### `[backends.NAME]` with `type = "vault"`') >= vault.required | vault.optional
    auth = section('### `[backends.NAME]` with `type = "vault"`')
    for method, keys in VAULT_AUTH_KEYS.items():
        assert f'method = "{method}"' in auth
        assert set(re.findall(r"`?([a-z_]+)`?", auth)) >= keys


def test_notify_keys_documented() -> None:
    assert documented_keys("### `[[notify]]`") == NOTIFY_KEYS

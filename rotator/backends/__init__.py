"""Backend registry: type name -> factory. Factories import their SDK only when called,
so loading the config, `--help` and `status` for other stores never pay for boto3 or hvac."""

from __future__ import annotations

import importlib
from typing import Callable

from rotator.backends.base import Backend
from rotator.config import BackendSettings

# type name -> "module:factory"; the factory takes BackendSettings and returns a Backend
_FACTORIES: dict[str, str] = {
    "aws-secrets-manager": "rotator.backends.aws:AwsSecretsManagerBackend",
    "vault": "rotator.backends.vault:VaultBackend",
}


def register(type_name: str, factory_path: str) -> None:
    if type_name in _FACTORIES:
        raise ValueError(f"backend type {type_name!r} is already registered")
    _FACTORIES[type_name] = factory_path


def open_backend(settings: BackendSettings) -> Backend:
    module_name, _, attr = _FACTORIES[settings.type].partition(":")
    factory: Callable[[BackendSettings], Backend] = getattr(importlib.import_module(module_name), attr)
    return factory(settings)

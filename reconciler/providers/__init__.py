"""Provider registry: spec ``type`` -> implementation, imported only when used."""

from __future__ import annotations

import importlib

from reconciler.providers.base import Provider, ProviderConfig

# type -> "module:Class"; modules are imported lazily so `validate` stays fast.
PROVIDER_CLASSES: dict[str, str] = {
    "local": "reconciler.providers.local:LocalProvider",
    "astica": "reconciler.providers.astica:AsticaProvider",
    "autogon": "reconciler.providers.autogon:AutogonProvider",
    "annolab": "reconciler.providers.annolab:AnnoLabProvider",
    "scenario": "reconciler.providers.scenario:ScenarioProvider",
}


def provider_class(type_name: str) -> type[Provider]:
    module_name, _, class_name = PROVIDER_CLASSES[type_name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_provider(config: ProviderConfig) -> Provider:
    return provider_class(config.type)(config)

"""Engines turn a GenerationRequest into image bytes. Heavy engines import lazily."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from imageforge.engines.base import (
    Engine,
    EngineError,
    GeneratedImage,
    GenerationRequest,
    ReferenceImage,
)
from imageforge.errors import ConfigurationError

if TYPE_CHECKING:
    # Not at run time: settings imports engines.config, which imports this package.
    from imageforge.engines.diffusers.config import DiffusersModelConfig
    from imageforge.settings import Settings

__all__ = [
    "Engine",
    "EngineError",
    "GeneratedImage",
    "GenerationRequest",
    "ReferenceImage",
    "build_engines",
]

KNOWN_ENGINES = ("offline", "openai", "relay", "diffusers")


def build_engine(name: str, settings: Settings) -> Engine:
    if name == "offline":
        from imageforge.engines.offline import OfflineEngine

        return OfflineEngine(max_workers=settings.render_processes)
    if name == "openai":
        from imageforge.engines.openai import OpenAIEngine

        return OpenAIEngine(settings)
    if name == "relay":
        from imageforge.engines.relay import RelayEngine

        return RelayEngine(settings)
    if name == "diffusers":
        from imageforge.engines.diffusers.engine import DiffusersEngine

        return DiffusersEngine(_diffusers_models(settings))
    if ":" in name:
        return _load_plugin(name, settings)
    raise ConfigurationError(
        f"unknown engine {name!r}; available engines: {', '.join(KNOWN_ENGINES)}, "
        "or a plugin as 'package.module:ClassName'"
    )


def _diffusers_models(settings: Settings) -> dict[str, DiffusersModelConfig]:
    """The `[models.NAME.diffusers]` tables of the models routed to the diffusers engine."""
    routed = [spec.name for spec in settings.model_specs().values() if spec.engine == "diffusers"]
    models: dict[str, DiffusersModelConfig] = {}
    for name in routed:
        config = settings.models.get(name)
        if config is None or config.diffusers is None:
            raise ConfigurationError(
                f"model {name!r} is routed to the diffusers engine but has no "
                f'[models."{name}".diffusers] table (path = its model folder)'
            )
        models[name] = config.diffusers
    return models


def _load_plugin(path: str, settings: Settings) -> Engine:
    """An engine of the operator's own, named `package.module:ClassName`.

    The class is constructed with the settings as its only keyword argument
    (`Class(settings=settings)`) and must implement the Engine protocol.
    """
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        engine_class = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot load engine plugin {path!r}: {exc}") from exc
    engine: Engine = engine_class(settings=settings)
    return engine


def build_engines(names: Iterable[str], settings: Settings) -> dict[str, Engine]:
    """One instance per engine name in use, shared by every model routed to it."""
    return {name: build_engine(name, settings) for name in sorted(set(names))}

"""Engines turn a GenerationRequest into image bytes. Heavy engines import lazily."""

from __future__ import annotations

from collections.abc import Iterable

from imageforge.engines.base import (
    Engine,
    EngineError,
    GeneratedImage,
    GenerationRequest,
    ReferenceImage,
)
from imageforge.errors import ConfigurationError
from imageforge.settings import Settings

__all__ = [
    "Engine",
    "EngineError",
    "GeneratedImage",
    "GenerationRequest",
    "ReferenceImage",
    "build_engines",
]

KNOWN_ENGINES = ("offline",)


def build_engine(name: str, settings: Settings) -> Engine:
    if name == "offline":
        from imageforge.engines.offline import OfflineEngine

        return OfflineEngine(max_workers=settings.render_processes)
    raise ConfigurationError(
        f"unknown engine {name!r}; available engines: {', '.join(KNOWN_ENGINES)}"
    )


def build_engines(names: Iterable[str], settings: Settings) -> dict[str, Engine]:
    """One instance per engine name in use, shared by every model routed to it."""
    return {name: build_engine(name, settings) for name in sorted(set(names))}

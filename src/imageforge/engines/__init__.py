"""Engines turn a GenerationRequest into image bytes. Heavy engines import lazily.

The runtime builds them (`imageforge.engine_setup`), each from its own configuration.
"""

from __future__ import annotations

from imageforge.engines.base import (
    Engine,
    EngineError,
    GeneratedImage,
    GenerationRequest,
    ReferenceImage,
)

__all__ = [
    "Engine",
    "EngineError",
    "GeneratedImage",
    "GenerationRequest",
    "ReferenceImage",
]

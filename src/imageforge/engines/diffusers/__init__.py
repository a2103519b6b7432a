"""Local generation with diffusers model folders (the `local` extra).

Importing this package imports neither torch nor diffusers: the engine loads them on its own
thread, and `settings.py` needs only the configuration models.
"""

from __future__ import annotations

from imageforge.engines.diffusers.config import DiffusersModelConfig, IPAdapterConfig
from imageforge.engines.diffusers.engine import DiffusersEngine

__all__ = ["DiffusersEngine", "DiffusersModelConfig", "IPAdapterConfig"]

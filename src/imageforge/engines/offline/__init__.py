"""The offline engine: a deterministic, weights-free preview renderer built on Pillow.

It is the server's default engine and the one client authors run in their own CI, so it must be
fast, reproducible to the byte, and produce something that reads as a deliberate picture: the
scene the prompt's words describe (`lexicon` → `plan` → `scene`), or for words it does not know a
seeded landscape (peaks, dunes or a coast) under a gradient sky, with the prompt itself printed
in a caption band in any script the machine has fonts for (`caption`, `lettering`, `fonts`) and
the reference images pinned above it.

Reproducibility: everything random comes from `random.Random` instances seeded with a SHA-256
of the prompt and the references' bytes (never `hash()`, never the global RNG), the PNG encoder
parameters are fixed and Pillow writes no timestamps. Size and quality are deliberately left out
of the scene seed: the same prompt keeps its palette and composition at every size and quality,
and those two only reframe the scene and change its level of detail. Bytes are stable for a given
Pillow/zlib build and set of installed fonts; another zlib may compress the same pixels
differently, and installing a font changes the captions of prompts it covers.

Rendering is CPU-bound (some 20-50 ms at 1024², 0.2 s at 4K, more with large references), so
`OfflineEngine` runs it in a process pool and the server's event loop never waits on it; the
render reports its stages back up a pipe (`progress`).
"""

from __future__ import annotations

from imageforge.engines.offline.engine import (
    OfflineEngine,
    RenderOptions,
    render_png,
    render_png_bytes,
)

__all__ = ["OfflineEngine", "RenderOptions", "render_png", "render_png_bytes"]

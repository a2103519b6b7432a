"""Sizes: generate where the model is comfortable, deliver exactly what was asked.

Diffusion models make their best images near the pixel count they were trained at (512² for
SD 1.5/2.1 and the turbo models, 1024² for SDXL, FLUX and SD 3.5), with edges that are
multiples of their latent grid (8 px, 16 px for transformer models that patch the latents);
far above it they repeat subjects and smear detail. So a generation runs at about `base_size²`
pixels with the aspect ratio of the requested size, never more pixels than asked, edges
rounded up to the model's multiple, and the result is cropped to the exact aspect ratio (a few
pixels at most, centred) and resampled with Lanczos to exactly `width × height`.
"""

from __future__ import annotations

import math

from PIL import Image


def generation_size(width: int, height: int, *, base_size: int, multiple: int) -> tuple[int, int]:
    """The size to generate at for an output of `width × height`."""
    scale = min(1.0, math.sqrt(base_size * base_size / (width * height)))
    return _round_up(width * scale, multiple), _round_up(height * scale, multiple)


def refinement_size(width: int, height: int, *, max_pixels: int, multiple: int) -> tuple[int, int]:
    """The size of a second pass towards the output size: the output itself when the model
    can take it (edges rounded up to `multiple`), else scaled down to `max_pixels`."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    refined_w, refined_h = _round_up(width * scale, multiple), _round_up(height * scale, multiple)
    # Rounding up may cross the cap by a row or two; step down one multiple where it does.
    while refined_w * refined_h > max_pixels and min(refined_w, refined_h) > multiple:
        if refined_w >= refined_h:
            refined_w -= multiple
        else:
            refined_h -= multiple
    return refined_w, refined_h


def cover_box(
    source: tuple[int, int], target: tuple[int, int]
) -> tuple[float, float, float, float]:
    """The centred region of `source` with the aspect ratio of `target`."""
    source_w, source_h = source
    target_w, target_h = target
    if source_w * target_h > target_w * source_h:  # source is wider: trim the sides
        kept = source_h * target_w / target_h
        return ((source_w - kept) / 2, 0.0, (source_w + kept) / 2, float(source_h))
    kept = source_w * target_h / target_w
    return (0.0, (source_h - kept) / 2, float(source_w), (source_h + kept) / 2)


def fit_exactly(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` cropped to the aspect ratio of `width × height` and resampled to exactly it."""
    if image.size == (width, height):
        return image
    box = cover_box(image.size, (width, height))
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


def _round_up(edge: float, multiple: int) -> int:
    # A hair of tolerance: 1024 * (512/1024) must stay 512, not become 512.0000001 → 520.
    return max(multiple, math.ceil(edge / multiple - 1e-9) * multiple)

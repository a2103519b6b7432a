"""Shared vocabulary of the offline renderer: colour types, seeds, detail levels, the stage."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from imageforge.engines.base import Quality

RGB = tuple[int, int, int]
SceneKind = Literal["peaks", "dunes", "plains", "coast"]

#: Bumping this changes every picture; do it only when the look changes on purpose.
SEED_DOMAIN = b"imageforge.offline/v1"
#: Decoders a reference may use: the upload path allow-lists exactly these.
REFERENCE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
#: Level 1 encodes ~1.3x faster than the default 6 for ~1.7x the bytes; speed matters more here.
PNG_COMPRESS_LEVEL = 1
#: Nobody reads a caption past a few hundred characters; wrapping a 32k prompt would cost time.
CAPTION_SOURCE_CHARS = 800
#: Letters and signs that NFKD does not reduce to something the embedded font can draw.
ASCII_FALLBACKS = str.maketrans(
    {
        "‐": "-",
        "‑": "-",
        "‒": "-",
        "–": "-",
        "—": "-",
        "―": "-",
        "−": "-",
        "×": "x",
        "÷": "/",
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
        "ø": "o",
        "Ø": "O",
        "ł": "l",
        "Ł": "L",
        "đ": "d",
        "Đ": "D",
        "ð": "d",
        "Ð": "D",
        "Þ": "TH",
        "•": "·",
        "′": "'",
        "þ": "th",
        "ı": "i",
        "¡": "!",
        "¿": "?",
        "€": "EUR",
        "£": "GBP",
        "¥": "JPY",
        "„": '"',
        "‚": "'",
    }
)

WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)


class UndecodableReference(Exception):
    """Raised in the worker; a plain one-argument exception so it pickles back to the parent."""


# --------------------------------------------------------------------------------------------
# Seeds, detail levels, palettes
# --------------------------------------------------------------------------------------------


def scene_digest(prompt: str, references: Sequence[bytes]) -> bytes:
    # Length-prefixed fields, so no two different inputs encode to the same byte string.
    h = hashlib.sha256(SEED_DOMAIN)
    text = prompt.encode("utf-8", "surrogatepass")
    h.update(len(text).to_bytes(8, "big"))
    h.update(text)
    h.update(len(references).to_bytes(4, "big"))
    for data in references:
        h.update(hashlib.sha256(data).digest())
    return h.digest()


def seeded_rng(digest: bytes, topic: str) -> random.Random:
    # One independent stream per element: adding detail at a higher quality must not shift the
    # draws of the elements every quality shares. Seeding with bytes is stable across runs.
    return random.Random(digest + b"/" + topic.encode())


@dataclass(frozen=True)
class Detail:
    #: Bands in the sky gradient; 0 means one colour per pixel row.
    gradient_steps: int
    layers: int
    #: Segments across a ridge or wave profile (a power of two).
    resolution: int
    glow: bool
    clouds: int
    #: Stars per million (1024-scaled) pixels of night sky.
    star_density: int
    #: Coast scenes: islands on the horizon, bars in the sun's reflection, a framing headland.
    islands: int
    reflections: int
    headland: bool
    #: Rim light on ridges, trees, dune ripples, birds, wave glints, moon craters.
    ornaments: bool


DETAILS: dict[Quality, Detail] = {
    "low": Detail(
        gradient_steps=8,
        layers=2,
        resolution=16,
        glow=False,
        clouds=0,
        star_density=0,
        islands=1,
        reflections=4,
        headland=False,
        ornaments=False,
    ),
    "medium": Detail(
        gradient_steps=24,
        layers=4,
        resolution=64,
        glow=True,
        clouds=3,
        star_density=90,
        islands=2,
        reflections=12,
        headland=True,
        ornaments=False,
    ),
    "high": Detail(
        gradient_steps=0,
        layers=6,
        resolution=512,
        glow=True,
        clouds=6,
        star_density=300,
        islands=3,
        reflections=30,
        headland=True,
        ornaments=True,
    ),
}


@dataclass(frozen=True)
class Palette:
    mood: str
    sky_top: RGB
    sky_horizon: RGB
    sun: RGB
    far: RGB
    near: RGB
    water: RGB
    band: RGB
    accent: RGB


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


@dataclass(frozen=True)
class Stage:
    """Where things are, in pixels; shared by the painters."""

    width: int
    height: int
    #: 1.0 at a 1024-pixel short side; strokes and ornaments scale with it.
    scale: float
    #: Top of the caption band: the visible bottom of the scene.
    ground: int
    horizon: int
    sun_x: int
    sun_y: int
    sun_r: int

"""Shared vocabulary of the offline renderer: colour types, seeds and palettes."""

from __future__ import annotations

import colorsys
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from imageforge.engines.base import Quality

RGB = tuple[int, int, int]
SceneKind = Literal["peaks", "dunes", "coast"]

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


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def make_palette(rng: random.Random, tint: RGB | None) -> Palette:
    hue = rng.random()
    if tint is not None:
        th, ts, _ = colorsys.rgb_to_hsv(tint[0] / 255, tint[1] / 255, tint[2] / 255)
        # Grey references carry no hue worth following; coloured ones set the sky's.
        if ts > 0.15:
            hue = th + rng.uniform(-0.03, 0.03)
    mood = rng.choices(("day", "dusk", "dawn", "night"), weights=(3, 3, 2, 2))[0]
    land_hue = hue + rng.choice((0.06, 0.12, -0.08, 0.42, 0.55))
    # Sunrise and sunset light spans pink through orange to pale yellow.
    warm = rng.uniform(-0.06, 0.11)

    if mood == "day":
        top, horizon = _hsv(hue, 0.55, 0.88), _hsv(hue + 0.03, 0.16, 0.99)
        sun = _hsv(0.13, 0.12, 1.0)
        far, near = mix(_hsv(land_hue, 0.3, 0.7), horizon, 0.5), _hsv(land_hue, 0.55, 0.33)
        water = _hsv(hue, 0.55, 0.6)
    elif mood == "dusk":
        top, horizon = _hsv(hue, 0.65, 0.32), _hsv(warm, 0.55, 1.0)
        sun = _hsv(warm + 0.03, 0.35, 1.0)
        far, near = mix(_hsv(land_hue, 0.4, 0.45), horizon, 0.4), _hsv(land_hue, 0.5, 0.16)
        water = _hsv(hue, 0.6, 0.3)
    elif mood == "dawn":
        top, horizon = _hsv(hue, 0.35, 0.8), _hsv(warm, 0.28, 1.0)
        sun = _hsv(warm + 0.04, 0.18, 1.0)
        far, near = mix(_hsv(land_hue, 0.25, 0.7), horizon, 0.55), _hsv(land_hue, 0.38, 0.4)
        water = _hsv(hue, 0.4, 0.65)
    else:
        top, horizon = _hsv(hue, 0.75, 0.09), _hsv(hue + 0.04, 0.5, 0.34)
        sun = _hsv(hue, 0.07, 0.96)
        far, near = mix(_hsv(land_hue, 0.4, 0.28), horizon, 0.5), _hsv(land_hue, 0.45, 0.08)
        water = _hsv(hue, 0.6, 0.2)

    if tint is not None:
        top, horizon = mix(top, tint, 0.15), mix(horizon, tint, 0.15)
        far, near, water = mix(far, tint, 0.2), mix(near, tint, 0.2), mix(water, tint, 0.2)
    return Palette(
        mood=mood,
        sky_top=top,
        sky_horizon=horizon,
        sun=sun,
        far=far,
        near=near,
        water=water,
        band=mix(near, BLACK, 0.6),
        accent=mix(sun, horizon, 0.25),
    )

"""The offline engine: a deterministic, weights-free preview renderer built on Pillow.

It is the server's default engine and the one client authors run in their own CI, so it must be
fast, reproducible to the byte, and produce something that reads as a deliberate picture: a
landscape (peaks, dunes or a coast) under a gradient sky, in a palette picked from the prompt,
with the prompt itself printed in a caption band and the reference images pinned above it.

Reproducibility: everything random comes from `random.Random` instances seeded with a SHA-256
of the prompt and the references' bytes (never `hash()`, never the global RNG), the PNG encoder
parameters are fixed and Pillow writes no timestamps. Size and quality are deliberately left out
of the scene seed: the same prompt keeps its palette and composition at every size and quality,
and those two only reframe the scene and change its level of detail. Bytes are stable for a given
Pillow/zlib build; another zlib may compress the same pixels differently.

Rendering is CPU-bound (some 20-50 ms at 1024², 0.2 s at 4K, more with large references), so
`OfflineEngine` runs it in a process pool and the server's event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import colorsys
import contextlib
import hashlib
import io
import itertools
import math
import multiprocessing
import os
import random
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import ClassVar, Literal

from PIL import Image, ImageDraw, ImageFont, ImageStat

from imageforge.engines.base import EngineError, GeneratedImage, GenerationRequest, Quality

RGB = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
SceneKind = Literal["peaks", "dunes", "coast"]

#: Bumping this changes every picture; do it only when the look changes on purpose.
_SEED_DOMAIN = b"imageforge.offline/v1"
#: Decoders a reference may use: the upload path allow-lists exactly these.
_REFERENCE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
#: Level 1 encodes ~1.3x faster than the default 6 for ~1.7x the bytes; speed matters more here.
_PNG_COMPRESS_LEVEL = 1
#: Nobody reads a caption past a few hundred characters; wrapping a 32k prompt would cost time.
_CAPTION_SOURCE_CHARS = 800
#: Letters and signs that NFKD does not reduce to something the embedded font can draw.
_ASCII_FALLBACKS = str.maketrans(
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


class _UndecodableReference(Exception):
    """Raised in the worker; a plain one-argument exception so it pickles back to the parent."""


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def render_png(request: GenerationRequest) -> bytes:
    """Render `request` synchronously in this process and return the PNG bytes."""
    try:
        return render_png_bytes(*_render_args(request))
    except _UndecodableReference as exc:
        raise EngineError(str(exc), retryable=False) from exc


def render_png_bytes(
    prompt: str,
    width: int,
    height: int,
    quality: str | None,
    references: tuple[bytes, ...],
) -> bytes:
    """The worker-side entry point: plain, picklable arguments only (see `OfflineEngine`)."""
    if width < 1 or height < 1:
        raise ValueError(f"invalid size {width}x{height}")
    # Models that ignore quality get the middle level, byte for byte.
    level: Quality = "low" if quality == "low" else "high" if quality == "high" else "medium"
    detail = _DETAILS[level]
    digest = _scene_digest(prompt, references)

    caption = _layout_caption(prompt, width, height, level, len(references))
    grid = _layout_thumbnails(len(references), width, height, caption)
    thumbs = [_decode_reference(data, i, grid.inner) for i, data in enumerate(references)]
    palette = _make_palette(_rng(digest, "palette"), _average_colour(thumbs))

    image = Image.new("RGB", (width, height), palette.sky_top)
    _paint_scene(image, digest, palette, detail, caption.top)
    _paint_caption(image, caption, palette)
    _paint_thumbnails(image, thumbs, grid, palette)

    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=_PNG_COMPRESS_LEVEL, optimize=False)
    return out.getvalue()


class OfflineEngine:
    """Renders in a process pool, created on first use, so the event loop is never blocked."""

    name: ClassVar[str] = "offline"

    def __init__(self, *, max_workers: int = 1) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self._max_workers,
                mp_context=_process_context(),
                initializer=_lower_priority,
            )
        return self._pool

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        pool = self._executor()
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(pool, render_png_bytes, *_render_args(request))
        except _UndecodableReference as exc:
            raise EngineError(str(exc), retryable=False) from exc
        except BrokenProcessPool as exc:
            # A worker died (most likely killed for memory); a fresh pool may well succeed.
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise EngineError("the offline renderer process died", retryable=True) from exc
        return GeneratedImage(
            data=data,
            content_type="image/png",
            width=request.width,
            height=request.height,
            usage={},
        )

    async def aclose(self) -> None:
        """Stop the workers, dropping renders not yet started. A later call starts a new pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            # Joining the workers can take a moment; do it off the event loop.
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


def _lower_priority() -> None:
    # Renders are batch work; the API process sharing these cores answers polls. A lower
    # scheduling priority keeps poll latency flat while a 4K image renders.
    with contextlib.suppress(OSError):
        os.nice(10)


def _process_context() -> multiprocessing.context.BaseContext:
    # Not fork: the server has an event loop and threads that a forked child would inherit in
    # whatever state they were in. Not forkserver either: its first use blocks the calling thread
    # (the event loop) until the server process has booted. A spawned worker is slower to start,
    # but that happens once per worker and entirely off the loop.
    return multiprocessing.get_context("spawn")


def _render_args(
    request: GenerationRequest,
) -> tuple[str, int, int, str | None, tuple[bytes, ...]]:
    return (
        request.prompt,
        request.width,
        request.height,
        request.quality,
        tuple(ref.data for ref in request.references),
    )


# --------------------------------------------------------------------------------------------
# Seeds, detail levels, palettes
# --------------------------------------------------------------------------------------------


def _scene_digest(prompt: str, references: Sequence[bytes]) -> bytes:
    # Length-prefixed fields, so no two different inputs encode to the same byte string.
    h = hashlib.sha256(_SEED_DOMAIN)
    text = prompt.encode("utf-8", "surrogatepass")
    h.update(len(text).to_bytes(8, "big"))
    h.update(text)
    h.update(len(references).to_bytes(4, "big"))
    for data in references:
        h.update(hashlib.sha256(data).digest())
    return h.digest()


def _rng(digest: bytes, topic: str) -> random.Random:
    # One independent stream per element: adding detail at a higher quality must not shift the
    # draws of the elements every quality shares. Seeding with bytes is stable across runs.
    return random.Random(digest + b"/" + topic.encode())


@dataclass(frozen=True)
class _Detail:
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


_DETAILS: dict[Quality, _Detail] = {
    "low": _Detail(
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
    "medium": _Detail(
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
    "high": _Detail(
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
class _Palette:
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


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _make_palette(rng: random.Random, tint: RGB | None) -> _Palette:
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
        far, near = _mix(_hsv(land_hue, 0.3, 0.7), horizon, 0.5), _hsv(land_hue, 0.55, 0.33)
        water = _hsv(hue, 0.55, 0.6)
    elif mood == "dusk":
        top, horizon = _hsv(hue, 0.65, 0.32), _hsv(warm, 0.55, 1.0)
        sun = _hsv(warm + 0.03, 0.35, 1.0)
        far, near = _mix(_hsv(land_hue, 0.4, 0.45), horizon, 0.4), _hsv(land_hue, 0.5, 0.16)
        water = _hsv(hue, 0.6, 0.3)
    elif mood == "dawn":
        top, horizon = _hsv(hue, 0.35, 0.8), _hsv(warm, 0.28, 1.0)
        sun = _hsv(warm + 0.04, 0.18, 1.0)
        far, near = _mix(_hsv(land_hue, 0.25, 0.7), horizon, 0.55), _hsv(land_hue, 0.38, 0.4)
        water = _hsv(hue, 0.4, 0.65)
    else:
        top, horizon = _hsv(hue, 0.75, 0.09), _hsv(hue + 0.04, 0.5, 0.34)
        sun = _hsv(hue, 0.07, 0.96)
        far, near = _mix(_hsv(land_hue, 0.4, 0.28), horizon, 0.5), _hsv(land_hue, 0.45, 0.08)
        water = _hsv(hue, 0.6, 0.2)

    if tint is not None:
        top, horizon = _mix(top, tint, 0.15), _mix(horizon, tint, 0.15)
        far, near, water = _mix(far, tint, 0.2), _mix(near, tint, 0.2), _mix(water, tint, 0.2)
    return _Palette(
        mood=mood,
        sky_top=top,
        sky_horizon=horizon,
        sun=sun,
        far=far,
        near=near,
        water=water,
        band=_mix(near, BLACK, 0.6),
        accent=_mix(sun, horizon, 0.25),
    )


# --------------------------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stage:
    """Where things are, in pixels; shared by the painters below."""

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


def _paint_scene(
    image: Image.Image, digest: bytes, palette: _Palette, detail: _Detail, ground: int
) -> None:
    width, height = image.size
    rng = _rng(digest, "layout")
    kind: SceneKind = rng.choice(("peaks", "dunes", "coast"))
    # Composed in the part the caption band leaves visible, so nothing important hides under it.
    horizon = round(ground * rng.uniform(0.56, 0.7))
    sun_lift = rng.uniform(0.0, 0.18) if kind == "coast" else rng.uniform(0.12, 0.34)
    stage = _Stage(
        width=width,
        height=height,
        scale=min(width, height) / 1024,
        ground=ground,
        horizon=horizon,
        sun_x=round(width * rng.uniform(0.15, 0.85)),
        sun_y=round(horizon - ground * sun_lift),
        sun_r=max(8, round(min(width, height) * rng.uniform(0.05, 0.1))),
    )
    style = rng.choice(("plain", "ringed") if kind == "dunes" else ("plain", "striped"))
    if palette.mood == "night" and style == "striped":
        style = "plain"

    sky_stops = [
        (0.0, palette.sky_top),
        (horizon / height, palette.sky_horizon),
        (1.0, _mix(palette.sky_horizon, palette.far, 0.6)),
    ]
    image.paste(_vertical_gradient(width, height, sky_stops, detail.gradient_steps), (0, 0))
    draw = ImageDraw.Draw(image)
    _paint_stars(draw, _rng(digest, "stars"), stage, palette, detail)
    if detail.glow:
        _paint_glow(image, stage, palette)
    _paint_sun(image, stage, palette, style, detail)
    _paint_clouds(draw, _rng(digest, "clouds"), stage, palette, detail, sky_stops)
    if palette.mood in ("day", "dawn") and detail.ornaments:
        _paint_birds(draw, _rng(digest, "birds"), stage, palette)

    if kind == "coast":
        _paint_coast(image, draw, digest, stage, palette, detail)
    else:
        _paint_land(draw, digest, stage, palette, detail, kind)


def _vertical_gradient(
    width: int, height: int, stops: Sequence[tuple[float, RGB]], steps: int
) -> Image.Image:
    # One pixel column, stretched sideways: exact (no resampling blur) and nearly free.
    column = bytearray()
    for y in range(height):
        t = y / max(1, height - 1)
        if steps:
            t = min(steps - 1, int(t * steps)) / max(1, steps - 1)
        column += bytes(_gradient_at(stops, t))
    strip = Image.frombytes("RGB", (1, height), bytes(column))
    return strip.resize((width, height), Image.Resampling.NEAREST)


def _gradient_at(stops: Sequence[tuple[float, RGB]], t: float) -> RGB:
    for (t0, c0), (t1, c1) in itertools.pairwise(stops):
        if t <= t1:
            u = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
            # Eased, so the upper sky keeps its colour and the light gathers at the horizon.
            return _mix(c0, c1, max(0.0, u) ** 1.6)
    return stops[-1][1]


def _paint_stars(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    stage: _Stage,
    palette: _Palette,
    detail: _Detail,
) -> None:
    if palette.mood not in ("night", "dusk") or not detail.star_density:
        return
    # Dusk only shows stars in the dark upper half of the sky.
    ceiling = stage.horizon if palette.mood == "night" else stage.horizon // 2
    area = stage.width * ceiling / (stage.scale * stage.scale * 1e6)
    for _ in range(round(detail.star_density * area)):
        # Thinning toward the horizon, where the sky is brighter.
        x, y = rng.uniform(0, stage.width), rng.uniform(0, ceiling) ** 1.15 / ceiling**0.15
        r = stage.scale * rng.choice((0.5, 0.7, 0.9, 1.3, 2.0))
        colour = _mix(WHITE, palette.sky_top, rng.uniform(0.0, 0.6))
        if r < 1:
            draw.point((x, y), fill=colour)
        else:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def _paint_glow(image: Image.Image, stage: _Stage, palette: _Palette) -> None:
    # A radial halo around the sun. It is the only thing drawn small and scaled up: it is smooth
    # by nature, and a full-size radial gradient in Python would cost more than the whole scene.
    radius = stage.sun_r * 5
    strength = 150 if palette.mood in ("dusk", "dawn") else 95
    # radial_gradient is 0 at the centre and 181 at the middle of each edge (distance x 1.414).
    lut = [round(strength * max(0.0, 1.0 - v / 181) ** 2.4) for v in range(256)]
    mask = Image.radial_gradient("L").point(lut).resize((2 * radius, 2 * radius))
    box = (stage.sun_x - radius, stage.sun_y - radius)
    image.paste(palette.sun, (*box, box[0] + 2 * radius, box[1] + 2 * radius), mask)


def _paint_sun(
    image: Image.Image, stage: _Stage, palette: _Palette, style: str, detail: _Detail
) -> None:
    r = stage.sun_r
    # The planet's ring reaches well beyond the disc, so its mask is wider.
    half = round(r * 1.8) if style == "ringed" else r
    size = 2 * half
    origin = (stage.sun_x - half, stage.sun_y - half)
    box = (*origin, origin[0] + size, origin[1] + size)

    def layer(paint: str) -> Image.Image:
        # Drawn large and reduced, so the one big round thing in the picture has soft edges.
        factor = max(1, min(4, 2048 // size))
        mask = Image.new("L", (size * factor, size * factor), 0)
        pen = ImageDraw.Draw(mask)
        c, rr = half * factor, r * factor
        if paint == "disc":
            pen.ellipse((c - rr, c - rr, c + rr, c + rr), fill=255)
            if style == "striped":
                # Retro sunset bars, thickening toward the horizon.
                bars = 4 if detail.ornaments else 3
                for i in range(bars):
                    top = c + rr * (0.1 + 0.22 * i)
                    pen.rectangle((0, top, size * factor, top + rr * 0.05 * (i + 1)), fill=0)
        else:
            ring = (c - rr * 1.75, c - rr * 0.42, c + rr * 1.75, c + rr * 0.42)
            start, end = (180, 360) if paint == "ring-back" else (0, 180)
            pen.arc(ring, start, end, fill=255, width=max(1, round(rr * 0.12)))
        return mask.reduce(factor) if factor > 1 else mask

    ring_colour = _mix(palette.sun, palette.sky_top, 0.35)
    if style == "ringed":
        image.paste(ring_colour, box, layer("ring-back"))
    image.paste(palette.sun, box, layer("disc"))
    if style == "ringed":
        image.paste(ring_colour, box, layer("ring-front"))
    if palette.mood == "night" and style == "plain" and detail.ornaments:
        draw = ImageDraw.Draw(image)
        crater = _mix(palette.sun, palette.sky_horizon, 0.2)
        for dx, dy, cr in ((-0.35, -0.2, 0.22), (0.3, 0.25, 0.16), (0.05, 0.45, 0.1)):
            cx, cy, rad = stage.sun_x + dx * r, stage.sun_y + dy * r, cr * r
            draw.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), fill=crater)


def _paint_clouds(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    stage: _Stage,
    palette: _Palette,
    detail: _Detail,
    sky_stops: Sequence[tuple[float, RGB]],
) -> None:
    toward = palette.sky_horizon if palette.mood == "night" else WHITE
    for _ in range(detail.clouds):
        length = stage.width * rng.uniform(0.1, 0.24)
        thick = max(4.0, length * rng.uniform(0.09, 0.13))
        x = rng.uniform(-0.1, 1.0) * stage.width
        y = rng.uniform(0.08, 0.85) * (stage.horizon - thick * 2)
        colour = _mix(_gradient_at(sky_stops, y / stage.height), toward, 0.3)
        # A long pill with two shorter puffs on top reads as a flat, stylised cloud.
        puffs = ((0.0, 0.0, 1.0), (0.15, -0.55, 0.45), (0.45, -0.45, 0.35))
        for dx, dy, frac in puffs:
            left, top = x + dx * length, y + dy * thick
            box = (left, top, left + length * frac, top + thick)
            draw.rounded_rectangle(box, radius=thick / 2, fill=colour)


def _paint_birds(
    draw: ImageDraw.ImageDraw, rng: random.Random, stage: _Stage, palette: _Palette
) -> None:
    colour = _mix(palette.near, palette.sky_top, 0.3)
    cx = rng.uniform(0.2, 0.8) * stage.width
    cy = rng.uniform(0.15, 0.35) * stage.horizon
    width = max(1, round(stage.scale * 2))
    for _ in range(rng.randint(4, 8)):
        s = stage.scale * rng.uniform(7, 13)
        x = cx + rng.uniform(-0.12, 0.12) * stage.width
        y = cy + rng.uniform(-0.08, 0.08) * stage.height
        draw.line([(x - s, y - s * 0.45), (x, y), (x + s, y - s * 0.45)], fill=colour, width=width)


def _ridge_profile(rng: random.Random, segments: int, roughness: float) -> list[float]:
    """Midpoint displacement: a mountain skyline in [0, 1], `segments + 1` samples."""
    points = [0.0] * (segments + 1)
    points[0], points[segments] = rng.random(), rng.random()
    step, spread = segments, 1.0
    while step > 1:
        half = step // 2
        for i in range(half, segments, step):
            points[i] = (points[i - half] + points[i + half]) / 2 + rng.uniform(-spread, spread)
        step, spread = half, spread * roughness
    return _normalised(points)


def _hill_profile(rng: random.Random, segments: int) -> list[float]:
    """A few long sine waves summed: rolling dunes in [0, 1]."""
    waves = [
        (rng.uniform(0.3, 0.9) ** k, rng.uniform(0.6, 1.6) * (k + 1), rng.uniform(0, math.tau))
        for k in range(3)
    ]
    points = [
        sum(a * math.sin(math.tau * f * i / segments + p) for a, f, p in waves)
        for i in range(segments + 1)
    ]
    return _normalised(points)


def _normalised(points: list[float]) -> list[float]:
    lo, hi = min(points), max(points)
    span = hi - lo or 1.0
    return [(p - lo) / span for p in points]


def _profile_at(profile: Sequence[float], u: float) -> float:
    pos = min(max(u, 0.0), 1.0) * (len(profile) - 1)
    i = min(int(pos), len(profile) - 2)
    return profile[i] + (profile[i + 1] - profile[i]) * (pos - i)


def _paint_land(
    draw: ImageDraw.ImageDraw,
    digest: bytes,
    stage: _Stage,
    palette: _Palette,
    detail: _Detail,
    kind: SceneKind,
) -> None:
    width, height, n = stage.width, stage.height, detail.layers
    # Layers get lower, flatter and darker as they come nearer: aerial perspective.
    for i in range(n):
        t = i / (n - 1) if n > 1 else 1.0
        rng = _rng(digest, f"land/{n}/{i}")
        base = stage.horizon + t * 0.92 * (stage.ground - stage.horizon)
        if kind == "peaks":
            amp = height * (0.22 - 0.1 * t) * rng.uniform(0.75, 1.1)
            profile = _ridge_profile(rng, detail.resolution, rng.uniform(0.5, 0.6))
        else:
            amp = height * (0.1 - 0.04 * t) * rng.uniform(0.75, 1.1)
            profile = _hill_profile(rng, detail.resolution)
        colour = _mix(palette.far, palette.near, t**0.9)
        ridge = [(width * k / detail.resolution, base - amp * p) for k, p in enumerate(profile)]
        draw.polygon([*ridge, (width, height), (0, height)], fill=colour)
        if not detail.ornaments:
            continue
        if kind == "peaks":
            rim = _mix(colour, palette.sun, 0.4)
            draw.line(ridge, fill=rim, width=max(1, round(stage.scale * 1.5)))
        else:
            _paint_ripples(draw, rng, stage, ridge, colour, palette)
        if kind == "peaks" and i == n - 1:
            _paint_trees(draw, rng, stage, ridge, _mix(colour, BLACK, 0.3))


def _paint_ripples(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    stage: _Stage,
    ridge: Sequence[tuple[float, float]],
    colour: RGB,
    palette: _Palette,
) -> None:
    # Wind ripples follow the dune's crest; the next (nearer) dune covers their lower part.
    gap = stage.scale * rng.uniform(10, 16)
    line_colour = _mix(colour, palette.sun, 0.18)
    for k in range(1, 5):
        offset = gap * k * (1 + 0.3 * k)
        draw.line(
            [(x, y + offset) for x, y in ridge],
            fill=line_colour,
            width=max(1, round(stage.scale * 1.2)),
        )


def _paint_trees(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    stage: _Stage,
    ridge: Sequence[tuple[float, float]],
    colour: RGB,
) -> None:
    profile = [y for _, y in ridge]
    x = rng.uniform(0, 20) * stage.scale
    while x < stage.width:
        h = stage.scale * rng.uniform(16, 40)
        y = _profile_at(profile, x / stage.width) + stage.scale * 3
        # Two stacked triangles: the cheapest shape that still reads as a conifer.
        for lift, spread in ((0.0, 0.3), (0.35, 0.22)):
            top = y - h * (1 - lift * 0.25)
            base = y - h * lift
            draw.polygon([(x, top), (x - h * spread, base), (x + h * spread, base)], fill=colour)
        x += stage.scale * rng.uniform(9, 30) * (3 if rng.random() < 0.12 else 1)


def _paint_coast(
    image: Image.Image,
    draw: ImageDraw.ImageDraw,
    digest: bytes,
    stage: _Stage,
    palette: _Palette,
    detail: _Detail,
) -> None:
    width, height, horizon = stage.width, stage.height, stage.horizon
    rng = _rng(digest, "coast")

    # Islands first: the sea is pasted below the horizon, so nothing of them shows under it.
    for k in range(detail.islands):
        isl = _rng(digest, f"island/{k}")
        left, span = isl.uniform(-0.1, 0.8), isl.uniform(0.15, 0.45)
        amp = height * isl.uniform(0.03, 0.08)
        profile = _ridge_profile(isl, detail.resolution, 0.55)
        points: list[tuple[float, float]] = []
        for j, p in enumerate(profile):
            u = j / detail.resolution
            bump = math.sin(math.pi * u) ** 0.6
            points.append(((left + span * u) * width, horizon - amp * p * bump))
        colour = _mix(palette.far, palette.sky_horizon, 0.25 * k)
        draw.polygon([*points, ((left + span) * width, horizon), (left * width, horizon)], colour)

    sea_stops = [
        (0.0, _mix(palette.sky_horizon, palette.water, 0.45)),
        (1.0, _mix(palette.water, palette.near, 0.5)),
    ]
    steps = detail.gradient_steps // 2 if detail.gradient_steps else 0
    sea = _vertical_gradient(width, height - horizon, sea_stops, steps)
    image.paste(sea, (0, horizon))

    # The sun's reflection: bars that widen and thicken toward the viewer.
    for k in range(detail.reflections):
        u = (k + 0.5) / detail.reflections
        y = horizon + u**1.5 * (height - horizon) * 0.6
        half = stage.sun_r * (0.5 + 1.5 * u) * rng.uniform(0.45, 1.0)
        thick = max(1.0, stage.scale * (1.5 + 4 * u))
        x = stage.sun_x + rng.uniform(-0.15, 0.15) * stage.sun_r
        colour = _mix(palette.sun, palette.water, 0.2 + 0.5 * u)
        draw.rectangle((x - half, y, x + half, y + thick), fill=colour)

    if detail.ornaments:
        glint = _mix(palette.water, palette.sky_horizon, 0.4)
        for _ in range(90):
            u = rng.random()
            y = horizon + 2 + u**1.8 * (height - horizon)
            length = width * rng.uniform(0.01, 0.04) * (1 + 3 * u)
            x = rng.uniform(-0.05, 1.0) * width
            draw.line([(x, y), (x + length, y)], fill=glint, width=max(1, round(stage.scale)))

    if detail.headland:
        # A dark headland on one side frames the sea.
        side = rng.choice((0, 1))
        profile = _ridge_profile(rng, detail.resolution, 0.55)
        base, amp = stage.ground, 0.3 * (stage.ground - horizon) + 0.1 * height
        ridge: list[tuple[float, float]] = []
        for j, p in enumerate(profile):
            u = j / detail.resolution
            reach = max(0.0, 1.0 - (u if side == 0 else 1.0 - u) / 0.45)
            ridge.append((u * width, base - amp * (0.35 + 0.65 * p) * reach**0.7))
        draw.polygon([*ridge, (width, height), (0, height)], fill=palette.near)


# --------------------------------------------------------------------------------------------
# Caption band
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Caption:
    size: int
    font: Font
    label_font: Font
    label: str
    lines: list[str]
    top: int
    pad: int
    label_height: int
    line_height: int


def _layout_caption(prompt: str, width: int, height: int, level: str, refs: int) -> _Caption:
    # Text scales with the picture's area, but never so big that a 3:1 strip is all caption.
    size = max(14, min(round(0.03 * math.sqrt(width * height)), round(height * 0.05)))
    label_size = max(10, round(size * 0.58))
    font, label_font = _font(size), _font(label_size)
    pad = round(size * 0.75)
    max_lines = 2 if height * 2 <= width else 3
    lines = _wrap(prompt, font, width - 2 * pad, max_lines)
    label = _label(label_font, width - 2 * pad, f"{width} x {height}", level.upper(), refs)
    label_height = round(label_size * 1.9)
    line_height = round(size * 1.3)
    band = 2 * pad + label_height + line_height * len(lines) - round(size * 0.25)
    return _Caption(
        size=size,
        font=font,
        label_font=label_font,
        label=label,
        lines=lines,
        top=height - band,
        pad=pad,
        label_height=label_height,
        line_height=line_height,
    )


def _label(font: Font, max_width: int, size: str, level: str, refs: int) -> str:
    # Narrow portraits cannot fit the long form; drop words rather than shrink the type.
    plural = "S" if refs > 1 else ""
    long_refs = [f"{refs} REFERENCE{plural}"] if refs else []
    short_refs = [f"{refs} REF{plural}"] if refs else []
    candidates = [
        ["IMAGEFORGE OFFLINE PREVIEW", size, level, *long_refs],
        ["OFFLINE PREVIEW", size, level, *short_refs],
        ["OFFLINE", size, level, *short_refs],
    ]
    for parts in candidates:
        label = "  ·  ".join(parts)
        if font.getlength(label) <= max_width:
            return label
    return _wrap(label, font, max_width, 1)[0]


def _font(size: int) -> Font:
    # Pillow >= 10.1 embeds a scalable font (Aileron) and needs no font file on disk.
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: Font, max_width: int, max_lines: int) -> list[str]:
    """Greedy word wrap; over-long words break anywhere; overflow ends in an ellipsis."""
    clipped = len(text) > _CAPTION_SOURCE_CHARS
    words = _drawable(text[:_CAPTION_SOURCE_CHARS]).split()
    lines: list[str] = []
    current = ""
    overflow = False
    for word in words:
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        while font.getlength(current) > max_width and len(lines) < max_lines:
            cut = _fitting_prefix(current, font, max_width)
            lines.append(current[:cut])
            current = current[cut:]
        if len(lines) >= max_lines and current:
            overflow = True
            break
    if current and not overflow:
        lines.append(current)
    if len(lines) > max_lines:
        lines, overflow = lines[:max_lines], True
    if (overflow or clipped) and lines:
        last = lines[-1]
        while last and font.getlength(last + "…") > max_width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
    return lines


def _drawable(text: str) -> str:
    # The embedded font covers little beyond ASCII: fold accents off letters and common
    # punctuation to ASCII so European prompts read correctly. Scripts it lacks entirely (CJK,
    # emoji...) still draw as empty boxes, which at least shows that something was there.
    decomposed = unicodedata.normalize("NFKD", text).translate(_ASCII_FALLBACKS)
    return "".join(
        " " if not c.isprintable() else c for c in decomposed if unicodedata.category(c) != "Mn"
    )


def _fitting_prefix(word: str, font: Font, max_width: int) -> int:
    lo, hi = 1, len(word)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(word[:mid]) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _paint_caption(image: Image.Image, caption: _Caption, palette: _Palette) -> None:
    width, height = image.size
    box = (0, caption.top, width, height)
    shade = Image.new("RGB", (width, height - caption.top), palette.band)
    image.paste(Image.blend(image.crop(box), shade, 0.8), box[:2])
    draw = ImageDraw.Draw(image)
    rule = max(2, round(caption.size * 0.08))
    draw.rectangle((0, caption.top, width, caption.top + rule - 1), fill=palette.accent)
    y = caption.top + caption.pad
    draw.text((caption.pad, y), caption.label, font=caption.label_font, fill=palette.accent)
    y += caption.label_height
    ink = _mix(WHITE, palette.sky_horizon, 0.08)
    for line in caption.lines:
        draw.text((caption.pad, y), line, font=caption.font, fill=ink)
        y += caption.line_height


# --------------------------------------------------------------------------------------------
# Reference thumbnails
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    rows: int
    cols: int
    #: Outer side of one framed thumbnail, and the picture inside the frame.
    cell: int
    inner: int
    gap: int
    left: int
    bottom: int


def _layout_thumbnails(count: int, width: int, height: int, caption: _Caption) -> _Grid:
    gap = max(4, round(min(width, height) * 0.012))
    left, bottom = caption.pad, caption.top - caption.pad // 2
    if count == 0:
        return _Grid(rows=0, cols=0, cell=0, inner=0, gap=gap, left=left, bottom=bottom)
    avail_w = width - 2 * left
    # Keep at least the top 30% of the picture free of thumbnails, whatever the aspect.
    avail_h = min(0.32 * height, bottom - 0.3 * height)
    biggest = min(width, height) * 0.2
    best = (0.0, 1, count)
    for rows in range(1, count + 1):
        cols = math.ceil(count / rows)
        side = min(
            (avail_w - (cols - 1) * gap) / cols,
            (avail_h - (rows - 1) * gap) / rows,
            biggest,
        )
        if side > best[0]:
            best = (side, rows, cols)
    side, rows, cols = best
    cell = max(8, math.floor(side))
    frame = max(2, round(cell * 0.035))
    return _Grid(
        rows=rows, cols=cols, cell=cell, inner=cell - 2 * frame, gap=gap, left=left, bottom=bottom
    )


def _decode_reference(data: bytes, index: int, side: int) -> Image.Image:
    side = max(1, side)
    try:
        with Image.open(io.BytesIO(data), formats=_REFERENCE_FORMATS) as source:
            # JPEG can decode at 1/2, 1/4 or 1/8 scale for free; we only need a thumbnail.
            source.draft("RGB", (side, side))
            if source.mode in ("RGBA", "LA", "PA") or "transparency" in source.info:
                rgba = source.convert("RGBA")
                picture = Image.new("RGB", rgba.size, (232, 232, 232))
                picture.paste(rgba, (0, 0), rgba)
            else:
                picture = source.convert("RGB")
    except Exception as exc:  # Pillow signals bad data with many types (OSError, SyntaxError...)
        raise _UndecodableReference(f"reference image {index} could not be decoded") from exc
    w, h = picture.size
    crop = min(w, h)
    box = ((w - crop) / 2, (h - crop) / 2, (w + crop) / 2, (h + crop) / 2)
    return picture.resize((side, side), Image.Resampling.LANCZOS, box=box, reducing_gap=2.0)


def _average_colour(thumbs: Sequence[Image.Image]) -> RGB | None:
    if not thumbs:
        return None
    means = [ImageStat.Stat(thumb).mean for thumb in thumbs]
    r, g, b = (round(sum(m[c] for m in means) / len(means)) for c in range(3))
    return (r, g, b)


def _paint_thumbnails(
    image: Image.Image, thumbs: Sequence[Image.Image], grid: _Grid, palette: _Palette
) -> None:
    if not thumbs:
        return
    draw = ImageDraw.Draw(image)
    shadow = _mix(palette.band, BLACK, 0.5)
    offset = max(2, grid.cell // 40)
    frame = (grid.cell - grid.inner) // 2
    top = grid.bottom - grid.rows * grid.cell - (grid.rows - 1) * grid.gap
    for i, thumb in enumerate(thumbs):
        row, col = divmod(i, grid.cols)
        x = grid.left + col * (grid.cell + grid.gap)
        y = top + row * (grid.cell + grid.gap)
        draw.rectangle(
            (x + offset, y + offset, x + grid.cell + offset - 1, y + grid.cell + offset - 1),
            fill=shadow,
        )
        draw.rectangle((x, y, x + grid.cell - 1, y + grid.cell - 1), fill=(246, 244, 238))
        image.paste(thumb, (x + frame, y + frame))

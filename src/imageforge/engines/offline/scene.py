"""The landscape: sky, sun or moon, ridges, dunes or coast, drawn at full size."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from imageforge.engines.offline.style import (
    BLACK,
    RGB,
    WHITE,
    Detail,
    Palette,
    SceneKind,
    mix,
    seeded_rng,
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


def paint_scene(
    image: Image.Image, digest: bytes, palette: Palette, detail: Detail, ground: int
) -> None:
    width, height = image.size
    rng = seeded_rng(digest, "layout")
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
        (1.0, mix(palette.sky_horizon, palette.far, 0.6)),
    ]
    image.paste(_vertical_gradient(width, height, sky_stops, detail.gradient_steps), (0, 0))
    draw = ImageDraw.Draw(image)
    _paint_stars(draw, seeded_rng(digest, "stars"), stage, palette, detail)
    if detail.glow:
        _paint_glow(image, stage, palette)
    _paint_sun(image, stage, palette, style, detail)
    _paint_clouds(draw, seeded_rng(digest, "clouds"), stage, palette, detail, sky_stops)
    if palette.mood in ("day", "dawn") and detail.ornaments:
        _paint_birds(draw, seeded_rng(digest, "birds"), stage, palette)

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
            return mix(c0, c1, max(0.0, u) ** 1.6)
    return stops[-1][1]


def _paint_stars(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    stage: _Stage,
    palette: Palette,
    detail: Detail,
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
        colour = mix(WHITE, palette.sky_top, rng.uniform(0.0, 0.6))
        if r < 1:
            draw.point((x, y), fill=colour)
        else:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def _paint_glow(image: Image.Image, stage: _Stage, palette: Palette) -> None:
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
    image: Image.Image, stage: _Stage, palette: Palette, style: str, detail: Detail
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

    ring_colour = mix(palette.sun, palette.sky_top, 0.35)
    if style == "ringed":
        image.paste(ring_colour, box, layer("ring-back"))
    image.paste(palette.sun, box, layer("disc"))
    if style == "ringed":
        image.paste(ring_colour, box, layer("ring-front"))
    if palette.mood == "night" and style == "plain" and detail.ornaments:
        draw = ImageDraw.Draw(image)
        crater = mix(palette.sun, palette.sky_horizon, 0.2)
        for dx, dy, cr in ((-0.35, -0.2, 0.22), (0.3, 0.25, 0.16), (0.05, 0.45, 0.1)):
            cx, cy, rad = stage.sun_x + dx * r, stage.sun_y + dy * r, cr * r
            draw.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), fill=crater)


def _paint_clouds(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    stage: _Stage,
    palette: Palette,
    detail: Detail,
    sky_stops: Sequence[tuple[float, RGB]],
) -> None:
    toward = palette.sky_horizon if palette.mood == "night" else WHITE
    for _ in range(detail.clouds):
        length = stage.width * rng.uniform(0.1, 0.24)
        thick = max(4.0, length * rng.uniform(0.09, 0.13))
        x = rng.uniform(-0.1, 1.0) * stage.width
        y = rng.uniform(0.08, 0.85) * (stage.horizon - thick * 2)
        colour = mix(_gradient_at(sky_stops, y / stage.height), toward, 0.3)
        # A long pill with two shorter puffs on top reads as a flat, stylised cloud.
        puffs = ((0.0, 0.0, 1.0), (0.15, -0.55, 0.45), (0.45, -0.45, 0.35))
        for dx, dy, frac in puffs:
            left, top = x + dx * length, y + dy * thick
            box = (left, top, left + length * frac, top + thick)
            draw.rounded_rectangle(box, radius=thick / 2, fill=colour)


def _paint_birds(
    draw: ImageDraw.ImageDraw, rng: random.Random, stage: _Stage, palette: Palette
) -> None:
    colour = mix(palette.near, palette.sky_top, 0.3)
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
    palette: Palette,
    detail: Detail,
    kind: SceneKind,
) -> None:
    width, height, n = stage.width, stage.height, detail.layers
    # Layers get lower, flatter and darker as they come nearer: aerial perspective.
    for i in range(n):
        t = i / (n - 1) if n > 1 else 1.0
        rng = seeded_rng(digest, f"land/{n}/{i}")
        base = stage.horizon + t * 0.92 * (stage.ground - stage.horizon)
        if kind == "peaks":
            amp = height * (0.22 - 0.1 * t) * rng.uniform(0.75, 1.1)
            profile = _ridge_profile(rng, detail.resolution, rng.uniform(0.5, 0.6))
        else:
            amp = height * (0.1 - 0.04 * t) * rng.uniform(0.75, 1.1)
            profile = _hill_profile(rng, detail.resolution)
        colour = mix(palette.far, palette.near, t**0.9)
        ridge = [(width * k / detail.resolution, base - amp * p) for k, p in enumerate(profile)]
        draw.polygon([*ridge, (width, height), (0, height)], fill=colour)
        if not detail.ornaments:
            continue
        if kind == "peaks":
            rim = mix(colour, palette.sun, 0.4)
            draw.line(ridge, fill=rim, width=max(1, round(stage.scale * 1.5)))
        else:
            _paint_ripples(draw, rng, stage, ridge, colour, palette)
        if kind == "peaks" and i == n - 1:
            _paint_trees(draw, rng, stage, ridge, mix(colour, BLACK, 0.3))


def _paint_ripples(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    stage: _Stage,
    ridge: Sequence[tuple[float, float]],
    colour: RGB,
    palette: Palette,
) -> None:
    # Wind ripples follow the dune's crest; the next (nearer) dune covers their lower part.
    gap = stage.scale * rng.uniform(10, 16)
    line_colour = mix(colour, palette.sun, 0.18)
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
    palette: Palette,
    detail: Detail,
) -> None:
    width, height, horizon = stage.width, stage.height, stage.horizon
    rng = seeded_rng(digest, "coast")

    # Islands first: the sea is pasted below the horizon, so nothing of them shows under it.
    for k in range(detail.islands):
        isl = seeded_rng(digest, f"island/{k}")
        left, span = isl.uniform(-0.1, 0.8), isl.uniform(0.15, 0.45)
        amp = height * isl.uniform(0.03, 0.08)
        profile = _ridge_profile(isl, detail.resolution, 0.55)
        points: list[tuple[float, float]] = []
        for j, p in enumerate(profile):
            u = j / detail.resolution
            bump = math.sin(math.pi * u) ** 0.6
            points.append(((left + span * u) * width, horizon - amp * p * bump))
        colour = mix(palette.far, palette.sky_horizon, 0.25 * k)
        draw.polygon([*points, ((left + span) * width, horizon), (left * width, horizon)], colour)

    sea_stops = [
        (0.0, mix(palette.sky_horizon, palette.water, 0.45)),
        (1.0, mix(palette.water, palette.near, 0.5)),
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
        colour = mix(palette.sun, palette.water, 0.2 + 0.5 * u)
        draw.rectangle((x - half, y, x + half, y + thick), fill=colour)

    if detail.ornaments:
        glint = mix(palette.water, palette.sky_horizon, 0.4)
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

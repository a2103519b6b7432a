"""The land: ridges, dunes, plains or a coast, with trees and a beach, drawn at full size."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from PIL import Image, ImageDraw

from imageforge.engines.offline.motifs import paint_skyline
from imageforge.engines.offline.palettes import LIGHT, hsv
from imageforge.engines.offline.plan import ScenePlan
from imageforge.engines.offline.sky import hides_sun, vertical_gradient
from imageforge.engines.offline.style import (
    BLACK,
    RGB,
    WHITE,
    Detail,
    Palette,
    Stage,
    mix,
    seeded_rng,
)

Ridge = list[tuple[float, float]]


def ridge_profile(rng: random.Random, segments: int, roughness: float) -> list[float]:
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


def hill_profile(rng: random.Random, segments: int) -> list[float]:
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


def profile_at(profile: Sequence[float], u: float) -> float:
    pos = min(max(u, 0.0), 1.0) * (len(profile) - 1)
    i = min(int(pos), len(profile) - 2)
    return profile[i] + (profile[i + 1] - profile[i]) * (pos - i)


def paint_land(
    draw: ImageDraw.ImageDraw, digest: bytes, stage: Stage, plan: ScenePlan, detail: Detail
) -> Ridge:
    """Paint the layers of land; return the nearest one's crest, where things stand."""
    palette, kind = plan.palette, plan.kind
    width, height, n = stage.width, stage.height, detail.layers
    if plan.city:
        paint_skyline(draw, seeded_rng(digest, "city"), stage, plan, stage.horizon)
    ridge: Ridge = []
    # Layers get lower, flatter and darker as they come nearer: aerial perspective.
    for i in range(n):
        t = i / (n - 1) if n > 1 else 1.0
        rng = seeded_rng(digest, f"land/{n}/{i}")
        base = stage.horizon + t * 0.92 * (stage.ground - stage.horizon)
        if kind == "peaks":
            amp = height * (0.22 - 0.1 * t) * rng.uniform(0.75, 1.1)
            profile = ridge_profile(rng, detail.resolution, rng.uniform(0.5, 0.6))
        else:
            # Plains are gentler than dunes, so a city or a road behind them still shows.
            lift = (0.05 - 0.025 * t) if kind == "plains" else (0.1 - 0.04 * t)
            amp = height * lift * rng.uniform(0.75, 1.1)
            profile = hill_profile(rng, detail.resolution)
        colour = mix(palette.far, palette.near, t**0.9)
        ridge = [(width * k / detail.resolution, base - amp * p) for k, p in enumerate(profile)]
        draw.polygon([*ridge, (width, height), (0, height)], fill=colour)
        if plan.ground == "snow" and kind == "peaks" and i < n - 1:
            _paint_snowcaps(draw, ridge, base, amp, colour)
        if plan.trees and i >= n - 2:
            near = i == n - 1
            paint_trees(draw, seeded_rng(digest, f"trees/{i}"), stage, plan, ridge, colour, near)
        if not detail.ornaments:
            continue
        if kind == "peaks":
            rim = mix(colour, palette.sun, 0.4)
            draw.line(ridge, fill=rim, width=max(1, round(stage.scale * 1.5)))
        elif kind == "dunes":
            _paint_ripples(draw, rng, stage, ridge, colour, palette)
        if kind == "peaks" and i == n - 1 and not plan.trees:
            _paint_conifers(draw, rng, stage, ridge, mix(colour, BLACK, 0.3))
    return ridge


def _paint_snowcaps(
    draw: ImageDraw.ImageDraw, ridge: Ridge, base: float, amp: float, colour: RGB
) -> None:
    # Snow lies above a line a little below each summit: the crest, clipped at that height.
    line = base - amp * 0.55
    cap = mix(colour, WHITE, 0.55)
    top = [(x, y) for x, y in ridge]
    below = [(x, min(line + (line - y) * 0.15, base)) if y < line else (x, y) for x, y in ridge]
    draw.polygon([*top, *reversed(below)], fill=cap)


def _paint_ripples(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    stage: Stage,
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


def paint_trees(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    stage: Stage,
    plan: ScenePlan,
    ridge: Sequence[tuple[float, float]],
    land: RGB,
    near: bool,
    span: tuple[float, float] = (0.0, 1.0),
) -> None:
    """A wood along `ridge`: conifers, or round crowns in autumn or blossom; snow on them when
    the ground is snowy. The nearest wood is taller and denser than the one behind it."""
    light = LIGHT[plan.mood]
    style = plan.trees
    if style == "round":
        crown = hsv(rng.uniform(0.03, 0.09), 0.72, 0.78 * light + 0.08)
    elif style == "blossom":
        crown = hsv(rng.uniform(0.9, 0.97), 0.28, 0.95 * light + 0.04)
    else:
        crown = hsv(rng.uniform(0.33, 0.4), 0.55, 0.34 * light + 0.04)
    crown = mix(crown, land, 0.25 if near else 0.45)
    trunk = mix(hsv(0.07, 0.5, 0.3 * light + 0.05), land, 0.3)
    snow = mix(WHITE, plan.palette.sky_horizon, 0.12) if plan.ground == "snow" else None
    profile = [y for _, y in ridge]
    tall = (64, 140) if near else (30, 64)
    # `ridge` covers `span` (left end, width) of the picture, as fractions of its width.
    left, right = span[0] * stage.width, (span[0] + span[1]) * stage.width
    x = max(0.0, left) + rng.uniform(0, 12) * stage.scale
    while x < min(stage.width, right):
        h = stage.scale * rng.uniform(*tall)
        y = profile_at(profile, (x - left) / (right - left)) + h * 0.06
        shade = mix(crown, BLACK, rng.uniform(0.0, 0.2))
        if style in ("round", "blossom"):
            r = h * 0.32
            draw.rectangle((x - h * 0.04, y - h * 0.45, x + h * 0.04, y), fill=trunk)
            draw.ellipse((x - r, y - h * 0.45 - 1.6 * r, x + r, y - h * 0.45 + 0.4 * r), shade)
        else:
            for lift, spread in ((0.0, 0.3), (0.3, 0.24), (0.55, 0.17)):
                top, base = y - h * (lift + 0.45), y - h * lift
                draw.polygon([(x, top), (x - h * spread, base), (x + h * spread, base)], shade)
                if snow is not None:
                    # A cap of snow on each tier's upper half.
                    mid = (top + base) / 2
                    half = h * spread * (mid - top) / (base - top)
                    draw.polygon([(x, top), (x - half, mid), (x + half, mid)], fill=snow)
        x += stage.scale * rng.uniform(0.25, 0.6) * h / stage.scale


def _paint_conifers(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    stage: Stage,
    ridge: Sequence[tuple[float, float]],
    colour: RGB,
) -> None:
    profile = [y for _, y in ridge]
    x = rng.uniform(0, 20) * stage.scale
    while x < stage.width:
        h = stage.scale * rng.uniform(16, 40)
        y = profile_at(profile, x / stage.width) + stage.scale * 3
        # Two stacked triangles: the cheapest shape that still reads as a conifer.
        for lift, spread in ((0.0, 0.3), (0.35, 0.22)):
            top = y - h * (1 - lift * 0.25)
            base = y - h * lift
            draw.polygon([(x, top), (x - h * spread, base), (x + h * spread, base)], fill=colour)
        x += stage.scale * rng.uniform(9, 30) * (3 if rng.random() < 0.12 else 1)


def paint_coast(
    image: Image.Image,
    draw: ImageDraw.ImageDraw,
    digest: bytes,
    stage: Stage,
    plan: ScenePlan,
    detail: Detail,
) -> Ridge | None:
    """Paint islands (or mountains, or a city) on the horizon and the sea; return the crest of
    the beach in front when the plan has one."""
    palette = plan.palette
    width, height, horizon = stage.width, stage.height, stage.horizon
    rng = seeded_rng(digest, "coast")

    # Islands first: the sea is pasted below the horizon, so nothing of them shows under it.
    for k in range(detail.islands):
        isl = seeded_rng(digest, f"island/{k}")
        left, span = isl.uniform(-0.1, 0.8), isl.uniform(0.15, 0.45)
        amp = height * isl.uniform(0.03, 0.08)
        if plan.mountains:
            left, span, amp = left * 0.8 - 0.1, span * 1.8, amp * 3.2
        profile = ridge_profile(isl, detail.resolution, 0.55)
        points: list[tuple[float, float]] = []
        for j, p in enumerate(profile):
            u = j / detail.resolution
            bump = math.sin(math.pi * u) ** 0.6
            points.append(((left + span * u) * width, horizon - amp * p * bump))
        colour = mix(palette.far, palette.sky_horizon, 0.25 * k)
        draw.polygon([*points, ((left + span) * width, horizon), (left * width, horizon)], colour)
        if plan.trees:
            island = seeded_rng(digest, f"island-trees/{k}")
            paint_trees(draw, island, stage, plan, points, colour, near=False, span=(left, span))

    if plan.city:
        paint_skyline(draw, seeded_rng(digest, "city"), stage, plan, horizon)

    sea_stops = [
        (0.0, mix(palette.sky_horizon, palette.water, 0.45)),
        (1.0, mix(palette.water, palette.near, 0.5)),
    ]
    steps = detail.gradient_steps // 2 if detail.gradient_steps else 0
    sea = vertical_gradient(width, height - horizon, sea_stops, steps)
    image.paste(sea, (0, horizon))

    # The sun's reflection: bars that widen and thicken toward the viewer.
    for k in range(0 if hides_sun(plan) else detail.reflections):
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
        profile = ridge_profile(rng, detail.resolution, 0.55)
        base, amp = stage.ground, 0.3 * (stage.ground - horizon) + 0.1 * height
        ridge: list[tuple[float, float]] = []
        for j, p in enumerate(profile):
            u = j / detail.resolution
            reach = max(0.0, 1.0 - (u if side == 0 else 1.0 - u) / 0.45)
            ridge.append((u * width, base - amp * (0.35 + 0.65 * p) * reach**0.7))
        draw.polygon([*ridge, (width, height), (0, height)], fill=palette.near)
    return (
        _paint_shore(draw, seeded_rng(digest, "shore"), stage, plan, detail) if plan.shore else None
    )


def _paint_shore(
    draw: ImageDraw.ImageDraw, rng: random.Random, stage: Stage, plan: ScenePlan, detail: Detail
) -> Ridge:
    # A beach along the bottom of the scene, rising a little toward one side.
    depth = stage.ground - stage.horizon
    profile = hill_profile(rng, detail.resolution)
    side = rng.choice((0.0, 1.0))
    ridge = [
        (
            stage.width * k / detail.resolution,
            stage.ground - depth * (0.16 + 0.1 * abs(side - k / detail.resolution) + 0.04 * p),
        )
        for k, p in enumerate(profile)
    ]
    sand = mix(plan.palette.near, plan.palette.far, 0.35)
    foam = mix(plan.palette.water, WHITE, 0.5)
    draw.line(ridge, fill=foam, width=max(2, round(stage.scale * 4)))
    draw.polygon([*ridge, (stage.width, stage.height), (0, stage.height)], fill=sand)
    return ridge

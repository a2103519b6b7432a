"""The sky: gradient, stars, sun or moon, clouds, birds, and the weather in front of it all."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

from PIL import Image, ImageDraw

from imageforge.engines.offline.plan import ScenePlan
from imageforge.engines.offline.style import (
    RGB,
    WHITE,
    Detail,
    Palette,
    Stage,
    mix,
)

Stops = Sequence[tuple[float, RGB]]


def vertical_gradient(width: int, height: int, stops: Stops, steps: int) -> Image.Image:
    # One pixel column, stretched sideways: exact (no resampling blur) and nearly free.
    column = bytearray()
    for y in range(height):
        t = y / max(1, height - 1)
        if steps:
            t = min(steps - 1, int(t * steps)) / max(1, steps - 1)
        column += bytes(gradient_at(stops, t))
    strip = Image.frombytes("RGB", (1, height), bytes(column))
    return strip.resize((width, height), Image.Resampling.NEAREST)


def gradient_at(stops: Stops, t: float) -> RGB:
    for (t0, c0), (t1, c1) in itertools.pairwise(stops):
        if t <= t1:
            u = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
            # Eased, so the upper sky keeps its colour and the light gathers at the horizon.
            return mix(c0, c1, max(0.0, u) ** 1.6)
    return stops[-1][1]


def paint_stars(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    stage: Stage,
    plan: ScenePlan,
    detail: Detail,
) -> None:
    palette = plan.palette
    # A prompt that asks for night or stars gets them even at the lowest detail.
    density = max(detail.star_density, 70 if plan.stars else 0) * (2 if plan.stars else 1)
    if palette.mood not in ("night", "dusk") or not density or plan.weather in _OVERCAST:
        return
    # Dusk only shows stars in the dark upper half of the sky.
    ceiling = stage.horizon if palette.mood == "night" else stage.horizon // 2
    area = stage.width * ceiling / (stage.scale * stage.scale * 1e6)
    for _ in range(round(density * area)):
        # Thinning toward the horizon, where the sky is brighter.
        x, y = rng.uniform(0, stage.width), rng.uniform(0, ceiling) ** 1.15 / ceiling**0.15
        r = stage.scale * rng.choice((0.5, 0.7, 0.9, 1.3, 2.0))
        colour = mix(WHITE, palette.sky_top, rng.uniform(0.0, 0.6))
        if r < 1:
            draw.point((x, y), fill=colour)
        else:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def paint_glow(image: Image.Image, stage: Stage, palette: Palette) -> None:
    # A radial halo around the sun. It is the only thing drawn small and scaled up: it is smooth
    # by nature, and a full-size radial gradient in Python would cost more than the whole scene.
    radius = stage.sun_r * 5
    strength = 150 if palette.mood in ("dusk", "dawn") else 95
    # radial_gradient is 0 at the centre and 181 at the middle of each edge (distance x 1.414).
    lut = [round(strength * max(0.0, 1.0 - v / 181) ** 2.4) for v in range(256)]
    mask = Image.radial_gradient("L").point(lut).resize((2 * radius, 2 * radius))
    box = (stage.sun_x - radius, stage.sun_y - radius)
    image.paste(palette.sun, (*box, box[0] + 2 * radius, box[1] + 2 * radius), mask)


def paint_sun(
    image: Image.Image, stage: Stage, palette: Palette, style: str, detail: Detail
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
            if style == "crescent":
                # The dark part of the moon: a second disc, shifted, cut out of the first.
                dx, dy = rr * 0.5, -rr * 0.22
                pen.ellipse((c - rr + dx, c - rr + dy, c + rr + dx, c + rr + dy), fill=0)
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


def paint_clouds(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    stage: Stage,
    plan: ScenePlan,
    detail: Detail,
    sky_stops: Stops,
) -> None:
    palette = plan.palette
    toward = palette.sky_horizon if palette.mood == "night" else WHITE
    count = detail.clouds
    if plan.weather in _CLOUDED:
        # Grey weather is cloudy at every detail level; storms bring dark clouds.
        count = max(4, 2 * count)
        toward = mix(toward, (60, 62, 70), 0.7 if plan.weather == "storm" else 0.25)
    for _ in range(count):
        length = stage.width * rng.uniform(0.1, 0.24)
        thick = max(4.0, length * rng.uniform(0.09, 0.13))
        x = rng.uniform(-0.1, 1.0) * stage.width
        y = rng.uniform(0.08, 0.85) * (stage.horizon - thick * 2)
        colour = mix(gradient_at(sky_stops, y / stage.height), toward, 0.3)
        # A long pill with two shorter puffs on top reads as a flat, stylised cloud.
        puffs = ((0.0, 0.0, 1.0), (0.15, -0.55, 0.45), (0.45, -0.45, 0.35))
        for dx, dy, frac in puffs:
            left, top = x + dx * length, y + dy * thick
            box = (left, top, left + length * frac, top + thick)
            draw.rounded_rectangle(box, radius=thick / 2, fill=colour)


def paint_birds(
    draw: ImageDraw.ImageDraw, rng: random.Random, stage: Stage, palette: Palette
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


# --------------------------------------------------------------------------------------------
# Weather, drawn over everything in the scene
# --------------------------------------------------------------------------------------------

#: Weather that hides the sun and the stars, and weather that fills the sky with cloud.
_OVERCAST = frozenset({"rain", "storm", "fog"})
_CLOUDED = frozenset({"cloudy", "rain", "storm", "snow"})
#: Drops or flakes per million (1024-scaled) pixels, by detail level (low, medium, high).
_PARTICLES = {"rain": (260, 520, 900), "storm": (360, 700, 1200), "snow": (180, 380, 700)}


def hides_sun(plan: ScenePlan) -> bool:
    return plan.weather in _OVERCAST


def paint_weather(
    image: Image.Image, rng: random.Random, stage: Stage, plan: ScenePlan, detail: Detail
) -> None:
    if plan.weather == "fog":
        _paint_fog(image, stage, plan.palette)
        return
    if plan.weather not in _PARTICLES:
        return
    level = 0 if detail.clouds == 0 else 2 if detail.ornaments else 1
    area = stage.width * stage.ground / (stage.scale * stage.scale * 1e6)
    count = round(_PARTICLES[plan.weather][level] * area)
    draw = ImageDraw.Draw(image, "RGBA")
    if plan.weather == "snow":
        for _ in range(count):
            x, y = rng.uniform(0, stage.width), rng.uniform(0, stage.ground)
            # Nearer flakes (further down the picture, on average) are bigger.
            r = stage.scale * rng.uniform(1.2, 2.2) * (1 + 1.6 * rng.random() ** 3)
            alpha = round(rng.uniform(170, 245))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(*WHITE, alpha))
        return
    if plan.weather == "storm":
        _paint_lightning(draw, rng, stage)
    drop = mix(plan.palette.sky_horizon, WHITE, 0.45)
    slant = rng.uniform(0.12, 0.3)
    width = max(1, round(stage.scale * 1.3))
    for _ in range(count):
        x, y = rng.uniform(-0.1, 1.0) * stage.width, rng.uniform(0, stage.ground)
        length = stage.scale * rng.uniform(14, 30)
        end = (x - slant * length, min(stage.ground, y + length))
        draw.line([(x, y), end], fill=(*drop, round(rng.uniform(90, 150))), width=width)


def _paint_lightning(draw: ImageDraw.ImageDraw, rng: random.Random, stage: Stage) -> None:
    x, y = rng.uniform(0.2, 0.8) * stage.width, stage.horizon * rng.uniform(0.05, 0.15)
    points = [(x, y)]
    while y < stage.horizon:
        y += stage.horizon * rng.uniform(0.06, 0.12)
        x += stage.width * rng.uniform(-0.035, 0.035)
        points.append((x, min(y, stage.horizon)))
    draw.line(points, fill=(255, 250, 220, 90), width=max(3, round(stage.scale * 9)))
    draw.line(points, fill=(255, 252, 236, 255), width=max(1, round(stage.scale * 3)))


def _paint_fog(image: Image.Image, stage: Stage, palette: Palette) -> None:
    # Densest in a band around the horizon, where the air between us and the land is deepest.
    haze = mix(palette.sky_horizon, WHITE, 0.55)
    height = stage.ground
    ramp = bytearray()
    for y in range(height):
        d = abs(y - stage.horizon) / max(1, stage.horizon if y < stage.horizon else height)
        ramp.append(round(200 * math.exp(-3.2 * d * d)))
    mask = Image.frombytes("L", (1, height), bytes(ramp)).resize((stage.width, height))
    image.paste(haze, (0, 0, stage.width, height), mask)

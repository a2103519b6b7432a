"""The things a prompt can name: animals, vehicles, a lighthouse, a city skyline.

Each motif is a handful of polygons and ellipses in its own units (height 1, standing on v = 1,
centred on u = 0, facing right), drawn small and supersampled so the edges are smooth. Every
shape is drawn twice, first outlined in a rim colour and then filled, so the rim shows only
around the silhouette: a dark cat still reads against a dark night.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from imageforge.engines.offline.plan import Motif, ScenePlan
from imageforge.engines.offline.style import BLACK, RGB, WHITE, Stage, mix

Colour = tuple[int, ...]
Point = tuple[float, float]
#: Supersampling factor: edges come out anti-aliased at a quarter of the cost of 4x. Motifs
#: taller than this many pixels (4K pictures) are drawn once: big shapes show little stair-stepping.
_FACTOR = 2
_FACTOR_BELOW = 360


@dataclass
class Sketch:
    """Shapes in a motif's own units, in drawing order."""

    shapes: list[tuple[str, tuple[float, ...], Colour]] = field(default_factory=list)

    def poly(self, points: Sequence[Point], fill: Colour) -> None:
        self.shapes.append(("poly", tuple(c for p in points for c in p), fill))

    def ellipse(self, u: float, v: float, ru: float, rv: float, fill: Colour) -> None:
        self.shapes.append(("ellipse", (u - ru, v - rv, u + ru, v + rv), fill))

    def rect(self, u0: float, v0: float, u1: float, v1: float, fill: Colour) -> None:
        self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], fill)

    def line(self, points: Sequence[Point], width: float, fill: Colour) -> None:
        self.shapes.append(("line", (width, *(c for p in points for c in p)), fill))


def paint_motif(
    image: Image.Image, stage: Stage, plan: ScenePlan, motif: Motif, base_y: float
) -> None:
    """Draw `motif` centred on its x, standing on `base_y` (sky motifs: centred on it)."""
    dark = plan.mood in ("night", "dusk")
    body = _lit(motif.colour, plan.mood)
    trim = _lit(motif.trim, plan.mood)
    sketch = _SKETCHES[motif.name](body, trim, dark)
    height = motif.size * min(stage.width, stage.height)
    x = motif.x * stage.width
    if motif.name == "lighthouse" and dark:
        _paint_beam(image, stage, x, base_y - height * 0.85, motif.facing)
    centred = motif.place == "sky"
    rim = _rim(body, plan)
    _stamp(image, sketch, x, base_y, height, motif.facing, rim, motif.lean, centred)


def paint_rock(image: Image.Image, stage: Stage, plan: ScenePlan, motif: Motif, y: float) -> None:
    """The rock a lighthouse at sea stands on, its top at `y`."""
    h = motif.size * min(stage.width, stage.height)
    x = motif.x * stage.width
    rock = mix(plan.palette.near, BLACK, 0.25)
    points = [
        (x - h * 0.36, y + h * 0.1),
        (x - h * 0.2, y - h * 0.01),
        (x + h * 0.05, y - h * 0.03),
    ]
    points += [(x + h * 0.24, y + h * 0.01), (x + h * 0.4, y + h * 0.1)]
    ImageDraw.Draw(image).polygon(points, fill=rock)


def _lit(colour: RGB, mood: str) -> RGB:
    # Less light at dusk and night, but a red fox stays red: the colour dims, it does not go.
    return mix(colour, BLACK, {"night": 0.3, "dusk": 0.12}.get(mood, 0.0))


def _rim(body: RGB, plan: ScenePlan) -> RGB:
    light = sum(body) / 3 > 110
    return mix(body, BLACK if light else mix(WHITE, plan.palette.sun, 0.5), 0.5)


def _stamp(
    image: Image.Image,
    sketch: Sketch,
    x: float,
    base_y: float,
    height: float,
    facing: int,
    rim: RGB,
    lean: float,
    centred: bool,
) -> None:
    us = [c for kind, coords, _ in sketch.shapes for c in _us(kind, coords)]
    vs = [c for kind, coords, _ in sketch.shapes for c in _vs(kind, coords)]
    margin = 0.06
    u0, u1, v0, v1 = min(us) - margin, max(us) + margin, min(vs) - margin, max(vs) + margin
    factor = _FACTOR if height < _FACTOR_BELOW else 1
    k = height * factor
    size = (max(1, math.ceil((u1 - u0) * k)), max(1, math.ceil((v1 - v0) * k)))
    canvas = Image.new("RGBA", size, (0, 0, 0, 0))
    pen = ImageDraw.Draw(canvas)

    def to_px(u: float, v: float) -> Point:
        return ((u - u0) * k if facing > 0 else (u1 - u) * k, (v - v0) * k)

    rim_width = max(1, round(k * 0.022))
    for outline in (True, False):
        for kind, coords, fill in sketch.shapes:
            translucent = len(fill) == 4 and fill[3] < 255
            if outline and translucent:
                continue
            if kind == "line":
                width, *flat = coords
                points = [to_px(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
                extra = 2 * rim_width if outline else 0
                colour = rim if outline else fill
                pen.line(points, fill=colour, width=max(1, round(width * k) + extra), joint="curve")
                continue
            points = [to_px(coords[i], coords[i + 1]) for i in range(0, len(coords), 2)]
            if kind == "ellipse":
                (ax, ay), (bx, by) = points
                box = (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
                if outline:
                    pen.ellipse(box, fill=rim, outline=rim, width=rim_width)
                else:
                    pen.ellipse(box, fill=fill)
            elif outline:
                pen.polygon(points, fill=rim, outline=rim, width=rim_width)
            else:
                pen.polygon(points, fill=fill)
    sprite = canvas.reduce(factor) if factor > 1 else canvas
    if lean:
        sprite = sprite.rotate(lean * facing, resample=Image.Resampling.BICUBIC, expand=True)
    if centred:
        ax, ay = sprite.width / 2, sprite.height / 2
    else:
        # The point it stands on: u = 0, v = 1.
        ax, ay = (-u0 if facing > 0 else u1) * height, (1 - v0) * height
    image.paste(sprite, (round(x - ax), round(base_y - ay)), sprite)


def _us(kind: str, coords: tuple[float, ...]) -> tuple[float, ...]:
    flat = coords[1:] if kind == "line" else coords
    pad = coords[0] / 2 if kind == "line" else 0.0
    return tuple(c + d for c in flat[0::2] for d in (-pad, pad))


def _vs(kind: str, coords: tuple[float, ...]) -> tuple[float, ...]:
    flat = coords[1:] if kind == "line" else coords
    pad = coords[0] / 2 if kind == "line" else 0.0
    return tuple(c + d for c in flat[1::2] for d in (-pad, pad))


def _paint_beam(image: Image.Image, stage: Stage, x: float, y: float, facing: int) -> None:
    reach = stage.width * 0.55 * facing
    spread = stage.height * 0.07
    draw = ImageDraw.Draw(image, "RGBA")
    draw.polygon(
        [(x, y), (x + reach, y - spread * 1.6), (x + reach, y + spread)], (255, 240, 190, 50)
    )
    draw.polygon(
        [(x, y), (x - reach * 0.3, y - spread * 0.5), (x - reach * 0.3, y)], (255, 240, 190, 34)
    )


# --------------------------------------------------------------------------------------------
# The motifs
# --------------------------------------------------------------------------------------------


def _fox(body: RGB, trim: RGB, dark: bool) -> Sketch:
    s = Sketch()
    legs = mix(body, BLACK, 0.6)
    tail = [(-0.35, 0.5), (-0.7, 0.4), (-1.0, 0.47), (-1.1, 0.6), (-0.96, 0.7), (-0.62, 0.68)]
    s.poly([*tail, (-0.3, 0.62)], body)
    s.poly([(-1.0, 0.47), (-1.1, 0.6), (-0.99, 0.7), (-0.9, 0.57)], trim)
    for u, v in ((-0.3, 1.0), (-0.16, 0.98), (0.22, 1.0), (0.35, 0.98)):
        s.rect(u, 0.6, u + 0.08, v, legs)
    s.ellipse(0.04, 0.55, 0.42, 0.16, body)
    s.poly([(0.22, 0.46), (0.44, 0.28), (0.6, 0.3), (0.56, 0.56), (0.34, 0.67)], body)
    head = [(0.42, 0.3), (0.5, 0.18), (0.63, 0.17), (0.73, 0.24), (0.92, 0.31), (0.88, 0.35)]
    s.poly([*head, (0.68, 0.41), (0.5, 0.41)], body)
    s.poly([(0.49, 0.21), (0.52, 0.0), (0.61, 0.18)], body)
    s.poly([(0.58, 0.18), (0.65, -0.01), (0.7, 0.21)], body)
    s.poly([(0.55, 0.37), (0.72, 0.37), (0.6, 0.52), (0.49, 0.46)], trim)
    s.ellipse(0.91, 0.32, 0.025, 0.022, BLACK)
    s.ellipse(0.66, 0.26, 0.02, 0.016, BLACK)
    return s


def _cat(body: RGB, trim: RGB, dark: bool) -> Sketch:
    s = Sketch()
    s.line([(-0.15, 0.96), (-0.42, 0.97), (-0.56, 0.86), (-0.54, 0.68)], 0.08, body)
    s.ellipse(0.02, 0.86, 0.3, 0.14, body)
    s.ellipse(0.0, 0.66, 0.25, 0.3, body)
    s.rect(0.12, 0.6, 0.2, 1.0, body)
    s.ellipse(0.12, 0.28, 0.18, 0.15, body)
    s.poly([(-0.03, 0.22), (-0.01, 0.02), (0.1, 0.15)], body)
    s.poly([(0.15, 0.14), (0.27, 0.02), (0.28, 0.22)], body)
    eyes = (236, 208, 74) if dark else mix(trim, BLACK, 0.2)
    s.ellipse(0.08, 0.27, 0.026, 0.022, eyes)
    s.ellipse(0.19, 0.27, 0.026, 0.022, eyes)
    return s


def _dog(body: RGB, trim: RGB, dark: bool) -> Sketch:
    s = Sketch()
    s.line([(-0.46, 0.45), (-0.6, 0.3), (-0.64, 0.16)], 0.07, body)
    for u in (-0.38, -0.22, 0.2, 0.34):
        s.rect(u, 0.55, u + 0.1, 1.0, body)
    s.ellipse(0.0, 0.5, 0.5, 0.17, body)
    s.poly([(0.28, 0.45), (0.44, 0.25), (0.6, 0.28), (0.5, 0.56)], body)
    s.ellipse(0.55, 0.25, 0.16, 0.13, body)
    s.poly([(0.6, 0.19), (0.84, 0.25), (0.84, 0.36), (0.6, 0.38)], body)
    s.ellipse(0.84, 0.27, 0.035, 0.03, BLACK)
    s.poly([(0.45, 0.15), (0.55, 0.14), (0.5, 0.43), (0.41, 0.37)], trim)
    s.ellipse(0.6, 0.21, 0.022, 0.022, BLACK)
    return s


def _bird(body: RGB, trim: RGB, dark: bool) -> Sketch:
    s = Sketch()
    wing = [(-1.0, 0.1), (-0.55, 0.35), (-0.15, 0.5), (0.0, 0.56), (0.15, 0.5), (0.55, 0.35)]
    under = [(1.0, 0.1), (0.6, 0.56), (0.2, 0.75), (0.0, 0.8), (-0.2, 0.75), (-0.6, 0.56)]
    s.poly([*wing, *under], body)
    s.ellipse(0.0, 0.62, 0.1, 0.2, body)
    s.ellipse(0.0, 0.44, 0.07, 0.07, body)
    return s


def _car(body: RGB, trim: RGB, dark: bool) -> Sketch:
    s = Sketch()
    if dark:
        s.poly([(1.3, 0.46), (2.6, 0.28), (2.6, 0.9), (1.3, 0.6)], (255, 240, 180, 60))
    shell = [(-1.3, 0.5), (-1.24, 0.4), (-0.7, 0.36), (-0.4, 0.06), (0.45, 0.06), (0.8, 0.36)]
    s.poly([*shell, (1.25, 0.42), (1.32, 0.55), (1.3, 0.8), (-1.3, 0.8)], body)
    s.poly([(-0.56, 0.38), (-0.33, 0.14), (-0.02, 0.14), (-0.02, 0.38)], trim)
    s.poly([(0.06, 0.38), (0.06, 0.14), (0.4, 0.14), (0.66, 0.38)], trim)
    for u in (-0.75, 0.75):
        s.ellipse(u, 0.8, 0.22, 0.22, (30, 30, 34))
        s.ellipse(u, 0.8, 0.09, 0.09, (186, 190, 198))
    s.ellipse(1.25, 0.5, 0.05, 0.04, (255, 242, 190) if dark else (236, 236, 220))
    return s


def _rocket(body: RGB, trim: RGB, dark: bool) -> Sketch:
    s = Sketch()
    for v, r, a in ((1.22, 0.1, 150), (1.38, 0.13, 115), (1.57, 0.16, 80)):
        s.ellipse(0.0, v, r, r * 0.75, (226, 226, 232, a))
    s.poly([(-0.075, 0.76), (0.0, 1.1), (0.075, 0.76)], (255, 160, 40))
    s.poly([(-0.038, 0.76), (0.0, 0.97), (0.038, 0.76)], (255, 238, 150))
    s.poly([(-0.09, 0.52), (-0.21, 0.8), (-0.09, 0.74)], trim)
    s.poly([(0.09, 0.52), (0.21, 0.8), (0.09, 0.74)], trim)
    s.poly([(0.0, 0.0), (0.07, 0.12), (0.1, 0.3), (0.1, 0.77), (-0.1, 0.77), (-0.1, 0.3)], body)
    s.poly([(0.0, 0.0), (0.07, 0.12), (-0.07, 0.12)], trim)
    s.ellipse(0.0, 0.33, 0.048, 0.048, (120, 186, 228))
    return s


def _boat(body: RGB, trim: RGB, dark: bool) -> Sketch:
    s = Sketch()
    s.rect(-0.016, 0.04, 0.016, 0.8, (60, 46, 36))
    s.poly([(0.035, 0.07), (0.035, 0.74), (0.5, 0.74)], trim)
    s.poly([(-0.035, 0.16), (-0.035, 0.74), (-0.4, 0.74)], mix(trim, body, 0.15))
    s.poly([(0.016, 0.04), (0.14, 0.07), (0.016, 0.1)], body)
    s.poly([(-0.58, 0.78), (0.62, 0.78), (0.44, 0.96), (-0.44, 0.96)], body)
    return s


def _plane(body: RGB, trim: RGB, dark: bool) -> Sketch:
    s = Sketch()
    s.line([(-1.3, 0.5), (-3.8, 0.56)], 0.09, (255, 255, 255, 110))
    s.poly([(-1.05, 0.46), (-1.35, 0.0), (-1.12, 0.0), (-0.82, 0.42)], trim)
    s.ellipse(0.0, 0.5, 1.3, 0.17, body)
    s.poly([(-0.1, 0.54), (0.28, 0.54), (-0.34, 1.0), (-0.62, 1.0)], mix(body, BLACK, 0.2))
    s.rect(0.86, 0.41, 1.08, 0.47, trim)
    return s


def _lighthouse(body: RGB, trim: RGB, dark: bool) -> Sketch:
    s = Sketch()

    def half(v: float) -> float:
        return 0.08 + (0.13 - 0.08) * (v - 0.24) / 0.76

    s.poly([(-0.13, 1.0), (-0.08, 0.24), (0.08, 0.24), (0.13, 1.0)], body)
    for top, bottom in ((0.32, 0.43), (0.55, 0.66), (0.78, 0.89)):
        s.poly(
            [(-half(top), top), (half(top), top), (half(bottom), bottom), (-half(bottom), bottom)],
            trim,
        )
    dim = (46, 46, 52)
    s.rect(-0.125, 0.2, 0.125, 0.245, dim)
    s.rect(-0.065, 0.09, 0.065, 0.2, (255, 232, 140) if dark else (176, 200, 214))
    s.poly([(-0.095, 0.095), (0.0, 0.0), (0.095, 0.095)], mix(trim, BLACK, 0.3))
    s.rect(-0.03, 0.9, 0.03, 1.0, dim)
    return s


_SKETCHES = {
    "fox": _fox,
    "cat": _cat,
    "dog": _dog,
    "bird": _bird,
    "car": _car,
    "rocket": _rocket,
    "boat": _boat,
    "plane": _plane,
    "lighthouse": _lighthouse,
}


# --------------------------------------------------------------------------------------------
# The city skyline
# --------------------------------------------------------------------------------------------


def paint_skyline(
    draw: ImageDraw.ImageDraw, rng: random.Random, stage: Stage, plan: ScenePlan, baseline: float
) -> None:
    """Towers along `baseline`, tallest toward the middle, windows lit after dark."""
    palette = plan.palette
    dark = plan.mood in ("night", "dusk")
    tower = mix(palette.far, palette.near, 0.45)
    lit = (255, 214, 128) if dark else mix(tower, palette.sky_horizon, 0.45)
    centre = rng.uniform(0.3, 0.7) * stage.width
    step = stage.scale * 9
    x = -rng.uniform(0, 40) * stage.scale
    while x < stage.width:
        w = stage.scale * rng.uniform(34, 90)
        near_centre = math.exp(-(((x + w / 2 - centre) / (stage.width * 0.35)) ** 2))
        h = stage.horizon * rng.uniform(0.1, 0.22) * (0.6 + 1.4 * near_centre)
        shade = mix(tower, BLACK, rng.uniform(0.0, 0.25))
        top = baseline - h
        draw.rectangle((x, top, x + w, baseline + stage.scale * 4), fill=shade)
        if rng.random() < 0.3:
            draw.rectangle((x + w * 0.3, top - h * 0.08, x + w * 0.7, top), fill=shade)
        if rng.random() < 0.2:
            draw.line([(x + w / 2, top), (x + w / 2, top - h * 0.25)], fill=shade, width=2)
        chance = 0.38 if dark else 0.5
        wy = top + step
        while wy < baseline - step:
            wx = x + step * 0.6
            while wx < x + w - step * 0.6:
                if rng.random() < chance:
                    draw.rectangle((wx, wy, wx + step * 0.45, wy + step * 0.55), fill=lit)
                wx += step
            wy += step * 1.3
        x += w + stage.scale * rng.uniform(0, 10)

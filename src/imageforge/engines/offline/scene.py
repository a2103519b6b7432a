"""The scene: sky, land or sea, the things the prompt names, then the weather, in that order."""

from __future__ import annotations

from PIL import Image, ImageDraw

from imageforge.engines.offline.land import Ridge, paint_coast, paint_land, profile_at
from imageforge.engines.offline.motifs import paint_motif, paint_rock
from imageforge.engines.offline.plan import ScenePlan
from imageforge.engines.offline.sky import (
    hides_sun,
    paint_birds,
    paint_clouds,
    paint_glow,
    paint_stars,
    paint_sun,
    paint_weather,
    vertical_gradient,
)
from imageforge.engines.offline.style import Detail, Stage, mix, seeded_rng


def paint_scene(
    image: Image.Image, digest: bytes, plan: ScenePlan, detail: Detail, ground: int
) -> None:
    width, height = image.size
    palette = plan.palette
    # Composed in the part the caption band leaves visible, so nothing important hides under it.
    horizon = round(ground * plan.horizon)
    stage = Stage(
        width=width,
        height=height,
        scale=min(width, height) / 1024,
        ground=ground,
        horizon=horizon,
        sun_x=round(width * plan.sun_x),
        sun_y=round(horizon - ground * plan.sun_lift),
        sun_r=max(8, round(min(width, height) * plan.sun_radius)),
    )

    sky_stops = [
        (0.0, palette.sky_top),
        (horizon / height, palette.sky_horizon),
        (1.0, mix(palette.sky_horizon, palette.far, 0.6)),
    ]
    image.paste(vertical_gradient(width, height, sky_stops, detail.gradient_steps), (0, 0))
    draw = ImageDraw.Draw(image)
    paint_stars(draw, seeded_rng(digest, "stars"), stage, plan, detail)
    if not hides_sun(plan):
        if detail.glow:
            paint_glow(image, stage, palette)
        paint_sun(image, stage, palette, plan.sun_style, detail)
    paint_clouds(draw, seeded_rng(digest, "clouds"), stage, plan, detail, sky_stops)
    if palette.mood in ("day", "dawn") and detail.ornaments and not hides_sun(plan):
        paint_birds(draw, seeded_rng(digest, "birds"), stage, palette)
    for motif in plan.motifs:
        if motif.place == "sky":
            paint_motif(image, stage, plan, motif, stage.horizon * (0.12 + 0.55 * motif.lift))

    if plan.kind == "coast":
        front = paint_coast(image, draw, digest, stage, plan, detail)
    else:
        front = paint_land(draw, digest, stage, plan, detail)
    _paint_on_the_ground(image, stage, plan, front)
    paint_weather(image, seeded_rng(digest, "weather"), stage, plan, detail)


def _paint_on_the_ground(
    image: Image.Image, stage: Stage, plan: ScenePlan, front: Ridge | None
) -> None:
    # The sea's near edge: the beach when there is one, else the bottom of the scene.
    sea_end = min(y for _, y in front) if front and plan.kind == "coast" else stage.ground
    profile = [y for _, y in front] if front else None
    # Big things first, so a fox in front of a lighthouse is not hidden by it.
    for motif in sorted(plan.motifs, key=lambda m: -m.size):
        if motif.place in ("water", "rock"):
            y = stage.horizon + (sea_end - stage.horizon) * (0.3 + 0.45 * motif.lift)
            if motif.place == "rock":
                paint_rock(image, stage, plan, motif, y)
            paint_motif(image, stage, plan, motif, y)
        elif motif.place == "ground":
            y = profile_at(profile, motif.x) if profile else stage.ground
            size = motif.size * min(stage.width, stage.height)
            paint_motif(image, stage, plan, motif, y + size * 0.03)

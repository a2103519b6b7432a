"""Palettes: the stylised one a prompt's seed picks, and the natural one its words call for."""

from __future__ import annotations

import colorsys
import random

from imageforge.engines.offline.style import BLACK, RGB, WHITE, Palette, mix


def hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def stylised_palette(rng: random.Random, tint: RGB | None) -> Palette:
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
        top, horizon = hsv(hue, 0.55, 0.88), hsv(hue + 0.03, 0.16, 0.99)
        sun = hsv(0.13, 0.12, 1.0)
        far, near = mix(hsv(land_hue, 0.3, 0.7), horizon, 0.5), hsv(land_hue, 0.55, 0.33)
        water = hsv(hue, 0.55, 0.6)
    elif mood == "dusk":
        top, horizon = hsv(hue, 0.65, 0.32), hsv(warm, 0.55, 1.0)
        sun = hsv(warm + 0.03, 0.35, 1.0)
        far, near = mix(hsv(land_hue, 0.4, 0.45), horizon, 0.4), hsv(land_hue, 0.5, 0.16)
        water = hsv(hue, 0.6, 0.3)
    elif mood == "dawn":
        top, horizon = hsv(hue, 0.35, 0.8), hsv(warm, 0.28, 1.0)
        sun = hsv(warm + 0.04, 0.18, 1.0)
        far, near = mix(hsv(land_hue, 0.25, 0.7), horizon, 0.55), hsv(land_hue, 0.38, 0.4)
        water = hsv(hue, 0.4, 0.65)
    else:
        top, horizon = hsv(hue, 0.75, 0.09), hsv(hue + 0.04, 0.5, 0.34)
        sun = hsv(hue, 0.07, 0.96)
        far, near = mix(hsv(land_hue, 0.4, 0.28), horizon, 0.5), hsv(land_hue, 0.45, 0.08)
        water = hsv(hue, 0.6, 0.2)

    return _palette(mood, top, horizon, sun, far, near, water, tint)


def _palette(
    mood: str, top: RGB, horizon: RGB, sun: RGB, far: RGB, near: RGB, water: RGB, tint: RGB | None
) -> Palette:
    """The palette, tinted toward `tint` (a reference image's or the prompt's colour), with the
    caption band's colours derived from it."""
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


# --------------------------------------------------------------------------------------------
# The natural palette: what the prompt's words call for, varied only within what looks real
# --------------------------------------------------------------------------------------------

#: How much light reaches the land at each time of day.
LIGHT = {"day": 1.0, "dawn": 0.85, "dusk": 0.62, "night": 0.3}
#: Ground cover: hue range, saturation, value, far to near (before the light).
_GROUNDS: dict[str, tuple[tuple[float, float], float, float, float]] = {
    "grass": ((0.22, 0.32), 0.5, 0.62, 0.36),
    "rock": ((0.56, 0.64), 0.16, 0.62, 0.34),
    "sand": ((0.08, 0.11), 0.5, 0.92, 0.72),
    "snow": ((0.56, 0.62), 0.07, 0.97, 0.86),
    "autumn": ((0.04, 0.09), 0.62, 0.7, 0.42),
}
#: Weather that hides the sun greys the sky by this much.
_OVERCAST = {"cloudy": 0.35, "rain": 0.6, "storm": 0.72, "fog": 0.55, "snow": 0.4}


def natural_palette(
    rng: random.Random,
    mood: str,
    weather: str,
    ground: str,
    sky: RGB | None = None,
    water: RGB | None = None,
    land: RGB | None = None,
    tint: RGB | None = None,
) -> Palette:
    """A palette that looks like `mood` and `weather` over `ground`; `sky`, `water` and `land`
    are colours the prompt gave those parts, `tint` one it gave the picture as a whole."""
    if mood == "day":
        top = hsv(rng.uniform(0.56, 0.61), rng.uniform(0.5, 0.65), rng.uniform(0.84, 0.92))
        horizon = hsv(rng.uniform(0.54, 0.58), rng.uniform(0.12, 0.2), 0.99)
        sun = hsv(0.14, 0.1, 1.0)
    elif mood == "dusk":
        top = hsv(rng.uniform(0.64, 0.76), rng.uniform(0.55, 0.7), rng.uniform(0.32, 0.42))
        horizon = hsv(rng.uniform(0.02, 0.085), rng.uniform(0.62, 0.8), 1.0)
        sun = hsv(rng.uniform(0.09, 0.13), rng.uniform(0.45, 0.6), 1.0)
    elif mood == "dawn":
        top = hsv(rng.uniform(0.58, 0.66), rng.uniform(0.3, 0.42), rng.uniform(0.76, 0.86))
        horizon = hsv(rng.uniform(0.0, 0.09), rng.uniform(0.25, 0.38), 1.0)
        sun = hsv(rng.uniform(0.1, 0.14), rng.uniform(0.2, 0.3), 1.0)
    else:
        top = hsv(rng.uniform(0.6, 0.68), rng.uniform(0.65, 0.8), rng.uniform(0.07, 0.11))
        horizon = hsv(rng.uniform(0.6, 0.66), rng.uniform(0.45, 0.55), rng.uniform(0.26, 0.34))
        sun = hsv(rng.uniform(0.12, 0.16), 0.08, 0.97)
    if sky is not None:
        top, horizon = _recolour(top, sky, 0.85), _recolour(horizon, sky, 0.5)
    grey = _OVERCAST.get(weather, 0.0)
    if grey:
        top, horizon = _greyed(top, grey), _greyed(horizon, grey)

    light = LIGHT[mood] * (0.8 if grey > 0.5 else 1.0)
    if ground == "snow":
        # Snow gives back what little light there is: a snowy night is pale, not black.
        light = max(light, 0.6)
    (lo, hi), sat, v_far, v_near = _GROUNDS[ground]
    hue = rng.uniform(lo, hi)
    far = hsv(hue, sat * 0.8, v_far * light)
    near = hsv(hue + rng.uniform(-0.02, 0.02), sat, v_near * light)
    if land is not None:
        far, near = _recolour(far, land, 0.7), _recolour(near, land, 0.8)
    # Aerial perspective: the far land takes on the colour of the air in front of it.
    far = mix(far, horizon, 0.35 if mood != "night" else 0.2)
    if mood == "night":
        # Moonlight: the land goes blue.
        far, near = mix(far, hsv(0.62, 0.5, 0.3), 0.35), mix(near, hsv(0.63, 0.6, 0.12), 0.35)

    sea = hsv(rng.uniform(0.53, 0.6), rng.uniform(0.5, 0.65), 0.62 * light + 0.04)
    if water is not None:
        sea = _recolour(sea, water, 0.85)
    sea = mix(sea, top, 0.25 if mood in ("dusk", "night") else 0.1)

    return _palette(mood, top, horizon, sun, far, near, sea, tint)


def _recolour(colour: RGB, towards: RGB, t: float) -> RGB:
    """`colour` with the hue and saturation of `towards`, keeping its own brightness."""
    _, _, v = colorsys.rgb_to_hsv(*(c / 255 for c in colour))
    h, s, tv = colorsys.rgb_to_hsv(*(c / 255 for c in towards))
    # White and black are brightness, not hue: they lift or lower the value instead.
    value = (v + tv) / 2 if s < 0.1 else v
    return mix(colour, hsv(h, s, value), t)


def _greyed(colour: RGB, t: float) -> RGB:
    grey = round(sum(colour) / 3)
    return mix(colour, mix((grey, grey, grey), WHITE, 0.15), t)

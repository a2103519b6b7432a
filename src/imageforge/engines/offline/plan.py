"""The scene plan: what the picture shows, decided from the prompt's cues and its seed.

Painting follows the plan and decides nothing of its own, so tests can check what a prompt
gets ("a red fox in snowy woods at night": night, snow, trees, a red fox) without reading
pixels. Everything the prompt does not say comes from the seed, drawn in the same order as
before the lexicon existed: a prompt with no known word gets exactly the picture it always got.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from imageforge.engines.offline.lexicon import Cues
from imageforge.engines.offline.palettes import natural_palette, stylised_palette
from imageforge.engines.offline.style import RGB, Palette, SceneKind, seeded_rng

#: Where each motif stands, and its height as a fraction of the picture's short side.
MOTIFS: dict[str, tuple[str, float]] = {
    "fox": ("ground", 0.2),
    "cat": ("ground", 0.16),
    "dog": ("ground", 0.17),
    "car": ("ground", 0.12),
    "lighthouse": ("ground", 0.38),
    "boat": ("water", 0.17),
    "rocket": ("sky", 0.24),
    "plane": ("sky", 0.07),
    "bird": ("sky", 0.06),
}
#: Colours of things the prompt names without saying which colour: (main, trim).
_DEFAULT_COLOURS: dict[str, tuple[RGB, RGB]] = {
    "fox": ((206, 96, 30), (246, 240, 232)),
    "cat": ((66, 60, 66), (222, 210, 196)),
    "dog": ((148, 100, 58), (70, 46, 30)),
    "car": ((196, 40, 40), (200, 228, 246)),
    "lighthouse": ((244, 242, 236), (200, 40, 40)),
    "boat": ((44, 66, 118), (246, 244, 236)),
    "rocket": ((236, 236, 240), (206, 46, 46)),
    "plane": ((238, 240, 244), (44, 92, 190)),
    "bird": ((46, 46, 56), (46, 46, 56)),
}
#: When the prompt names several kinds of weather, the one that shows most wins.
_WEATHER_ORDER = ("storm", "snow", "rain", "fog", "cloudy", "clear")
_MAX_MOTIFS = 5


@dataclass(frozen=True)
class Motif:
    name: str
    colour: RGB
    trim: RGB
    #: "ground", "water", "sky" (see MOTIFS), or "rock": a lighthouse on its own rock at sea.
    place: str
    #: Centre, as a fraction of the width; height, as a fraction of the short side.
    x: float
    size: float
    #: 1 faces right, -1 left.
    facing: int
    #: Sky motifs: height of the centre as a fraction of the horizon's; rockets: lean, degrees.
    lift: float = 0.5
    lean: float = 0.0


@dataclass(frozen=True)
class ScenePlan:
    kind: SceneKind
    #: "day", "dawn", "dusk" or "night".
    mood: str
    #: "clear", "cloudy", "rain", "snow", "fog" or "storm".
    weather: str
    #: "grass", "rock", "sand", "snow" or "autumn".
    ground: str
    palette: Palette
    #: Fractions of the visible scene height (horizon) and the width (sun), as the seed drew them.
    horizon: float
    sun_x: float
    sun_lift: float
    sun_radius: float
    #: "plain", "striped", "ringed" (a planet) or "crescent" (the moon).
    sun_style: str
    #: "conifer", "round" (autumn), "blossom" or None.
    trees: str | None = None
    city: bool = False
    #: Stars at every quality, not only where the detail level adds them.
    stars: bool = False
    #: Coast scenes: a beach in front to stand on; mountains rather than islands behind the sea.
    shore: bool = False
    mountains: bool = False
    motifs: tuple[Motif, ...] = ()
    #: Whether the prompt said anything the lexicon knows.
    cued: bool = False

    @property
    def elements(self) -> frozenset[str]:
        """Everything the picture shows, by name: for tests and logs."""
        shown = {self.kind, self.mood, self.weather, self.ground, *(m.name for m in self.motifs)}
        shown |= {"trees"} if self.trees else set()
        shown |= {"city"} if self.city else set()
        shown |= {"stars"} if self.stars or self.mood == "night" else set()
        shown |= {"moon"} if self.mood == "night" and self.weather not in _HIDE_SUN else set()
        shown |= {"sun"} if self.mood != "night" and self.weather not in _HIDE_SUN else set()
        return frozenset(shown)


#: Weather in which no sun or moon shows.
_HIDE_SUN = frozenset({"rain", "storm", "fog"})


def plan_scene(digest: bytes, cues: Cues, reference_tint: RGB | None) -> ScenePlan:
    rng = seeded_rng(digest, "layout")
    # The seed's draws, in their historical order (see the module docstring).
    kind: SceneKind = rng.choice(("peaks", "dunes", "coast"))
    horizon = rng.uniform(0.56, 0.7)
    sun_lift = rng.uniform(0.0, 0.18) if kind == "coast" else rng.uniform(0.12, 0.34)
    sun_x = rng.uniform(0.15, 0.85)
    sun_radius = rng.uniform(0.05, 0.1)
    style = rng.choice(("plain", "ringed") if kind == "dunes" else ("plain", "striped"))
    stylised = stylised_palette(seeded_rng(digest, "palette"), reference_tint or cues.tint)
    if not cues.says_anything:
        if stylised.mood == "night" and style == "striped":
            style = "plain"
        return ScenePlan(
            kind=kind,
            mood=stylised.mood,
            weather="clear",
            ground="rock" if kind == "peaks" else "sand" if kind == "dunes" else "grass",
            palette=stylised,
            horizon=horizon,
            sun_x=sun_x,
            sun_lift=sun_lift,
            sun_radius=sun_radius,
            sun_style=style,
        )
    return _cued_plan(digest, cues, reference_tint, kind, horizon, sun_x, sun_radius)


def _cued_plan(
    digest: bytes,
    cues: Cues,
    reference_tint: RGB | None,
    seeded_kind: SceneKind,
    horizon: float,
    sun_x: float,
    sun_radius: float,
) -> ScenePlan:
    rng = seeded_rng(digest, "plan")
    names = [m.name for m in cues.motifs]
    mood = cues.mood or rng.choices(("day", "dusk", "dawn", "night"), weights=(3, 3, 2, 2))[0]
    weather = next((w for w in _WEATHER_ORDER if w in cues.weather), "clear")

    water = bool(cues.water) or ("lighthouse" in names and cues.land is None)
    kind: SceneKind
    if water:
        kind = "coast"
    elif cues.land is not None:
        kind = "peaks" if cues.land == "peaks" else "dunes" if cues.land == "dunes" else "plains"
    elif "city" in names or "car" in names:
        kind = "plains"
    else:
        kind = seeded_kind
        if kind == "coast" and any(MOTIFS.get(n, ("",))[0] == "ground" for n in names):
            kind = "plains"
        if kind == "dunes" and {"trees", "blossom"} & set(names):
            kind = "plains"
        if kind == "coast" and {"trees", "blossom"} & set(names):
            kind = "plains"

    if weather == "snow" or cues.season == "winter":
        ground = "snow"
    elif kind == "dunes" or cues.land == "dunes" or "shore" in cues.water:
        ground = "sand"
    elif cues.season == "autumn":
        ground = "autumn"
    elif kind == "peaks":
        ground = rng.choice(("rock", "grass"))
    else:
        ground = "grass"

    trees: str | None = None
    if "trees" in names or "blossom" in names:
        trees = (
            "blossom" if "blossom" in names else "round" if cues.season == "autumn" else "conifer"
        )

    # Sunrise and sunset put the sun on the horizon; night hangs the moon higher.
    sun_lift = {"dusk": 0.06, "dawn": 0.09, "night": 0.34, "day": 0.3}[mood] * rng.uniform(0.7, 1.2)
    sun_style = "striped" if mood == "dusk" and rng.random() < 0.3 else "plain"
    if mood == "night":
        sun_style = rng.choice(("plain", "crescent"))

    palette = natural_palette(
        seeded_rng(digest, "palette/natural"),
        mood,
        weather,
        ground,
        sky=cues.colour_of("sky"),
        water=cues.colour_of("water"),
        land=cues.colour_of("land"),
        tint=reference_tint or cues.tint,
    )
    motifs = _place_motifs(rng, cues, kind, sun_x)
    return ScenePlan(
        kind=kind,
        mood=mood,
        weather=weather,
        ground=ground,
        palette=palette,
        horizon=horizon,
        sun_x=sun_x,
        sun_lift=sun_lift,
        sun_radius=sun_radius,
        sun_style=sun_style,
        trees=trees,
        city="city" in names,
        stars="stars" in names or (mood == "night" and weather in ("clear", "cloudy")),
        shore=kind == "coast"
        and ("shore" in cues.water or any(m.place == "ground" for m in motifs)),
        mountains=kind == "coast" and cues.land == "peaks",
        motifs=motifs,
        cued=True,
    )


def _place_motifs(
    rng: random.Random, cues: Cues, kind: SceneKind, sun_x: float
) -> tuple[Motif, ...]:
    drawn = [t for t in cues.motifs if t.name in MOTIFS][:_MAX_MOTIFS]
    # Things on the ground or the water share the width in equal slots, so none hides another;
    # things in the sky only keep clear of the sun.
    standing = [t.name for t in drawn if MOTIFS[t.name][0] != "sky"]
    placed: list[Motif] = []
    for thing in drawn:
        place, size = MOTIFS[thing.name]
        if thing.name == "lighthouse" and kind == "coast":
            place = "rock"  # on a rock of its own in the sea
        main, trim = _DEFAULT_COLOURS[thing.name]
        colour = thing.colour or (rng.choice(_CAR_COLOURS) if thing.name == "car" else main)
        if place == "sky":
            x = rng.uniform(0.15, 0.85)
            if abs(x - sun_x) < 0.2:
                x = (x + 0.5) % 1.0 * 0.7 + 0.15
        else:
            slot, slots = standing.index(thing.name), len(standing)
            x = 0.12 + 0.76 * (slot + 0.5 + rng.uniform(-0.25, 0.25)) / slots
            if slots == 1:
                x = rng.uniform(0.3, 0.7)
        placed.append(
            Motif(
                name=thing.name,
                colour=colour,
                trim=thing.trim or trim,
                place=place,
                x=x,
                size=size * rng.uniform(0.9, 1.1) * (1.0 if len(standing) < 3 else 0.8),
                facing=rng.choice((1, -1)),
                lift=rng.uniform(0.35, 0.65),
                lean=rng.uniform(-25, 25) if thing.name == "rocket" else 0.0,
            )
        )
    return tuple(placed)


_CAR_COLOURS: tuple[RGB, ...] = ((196, 40, 40), (40, 90, 190), (232, 190, 48), (236, 236, 236))

"""The offline preview follows the prompt: the lexicon's cues, the scene plan, the pixels."""

from __future__ import annotations

import colorsys
import io
import itertools

import pytest
from PIL import Image, ImageStat

from imageforge.engines.base import GenerationRequest
from imageforge.engines.offline import render_png
from imageforge.engines.offline.caption import layout_caption
from imageforge.engines.offline.lexicon import COLOURS, read_prompt
from imageforge.engines.offline.palettes import stylised_palette
from imageforge.engines.offline.plan import MOTIFS, ScenePlan, plan_scene
from imageforge.engines.offline.style import scene_digest, seeded_rng

FOX_AT_NIGHT = "a red fox in snowy woods at night"


def plan(prompt: str) -> ScenePlan:
    return plan_scene(scene_digest(prompt, ()), read_prompt(prompt), None)


def render(prompt: str, quality: str = "medium") -> Image.Image:
    req = GenerationRequest(prompt=prompt, width=1024, height=1024, quality=quality, model="m")  # type: ignore[arg-type]
    with Image.open(io.BytesIO(render_png(req))) as image:
        return image.convert("RGB")


def scene_of(prompt: str, quality: str = "medium") -> Image.Image:
    top = layout_caption(prompt, 1024, 1024, quality, 0).top
    return render(prompt, quality).crop((0, 0, 1024, top))


# --------------------------------------------------------------------------------------------
# The lexicon
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "field", "value"),
    [
        ("a street at night", "mood", "night"),
        ("城市的夜景", "mood", "night"),
        ("밤의 바다", "mood", "night"),
        ("sunset over the bay", "mood", "dusk"),
        ("夕阳", "mood", "dusk"),
        ("夕焼けの海", "mood", "dusk"),
        ("early morning", "mood", "dawn"),
        ("日出", "mood", "dawn"),
        ("a sunny afternoon", "mood", "day"),
        ("heavy rain", "weather", ("rain",)),
        ("下雨的街道", "weather", ("rain",)),
        ("snowfall", "weather", ("snow",)),
        ("雪", "weather", ("snow",)),
        ("a foggy harbour", "weather", ("fog",)),
        ("thunderstorm", "weather", ("storm",)),
        ("overcast", "weather", ("cloudy",)),
        ("in autumn", "season", "autumn"),
        ("秋天", "season", "autumn"),
        ("winter", "season", "winter"),
        ("spring", "season", "spring"),
        ("the alps", "land", "peaks"),
        ("雪山", "land", "peaks"),
        ("the sahara desert", "land", "dunes"),
        ("沙漠", "land", "dunes"),
        ("rolling hills", "land", "plains"),
        ("草原", "land", "plains"),
        ("the open ocean", "water", ("sea",)),
        ("大海", "water", ("sea",)),
        ("a mountain lake", "water", ("lake",)),
        ("湖", "water", ("lake",)),
        ("on the beach", "water", ("shore",)),
    ],
)
def test_each_category_maps(prompt: str, field: str, value: object) -> None:
    assert getattr(read_prompt(prompt), field) == value


@pytest.mark.parametrize(
    ("prompt", "motif"),
    [
        ("a fox", "fox"),
        ("狐狸", "fox"),
        ("キツネ", "fox"),
        ("여우", "fox"),
        ("two kittens", "cat"),
        ("一只猫", "cat"),
        ("a puppy", "dog"),
        ("小狗", "dog"),
        ("seagulls", "bird"),
        ("鸟", "bird"),
        ("a taxi", "car"),
        ("汽车", "car"),
        ("rocket", "rocket"),
        ("火箭", "rocket"),
        ("a sailboat", "boat"),
        ("帆船", "boat"),
        ("an airplane", "plane"),
        ("飞机", "plane"),
        ("the lighthouse", "lighthouse"),
        ("灯塔", "lighthouse"),
        ("city skyline", "city"),
        ("上海", "city"),
        ("pine forest", "trees"),
        ("森林", "trees"),
        ("🦊", "fox"),
        ("🚀", "rocket"),
    ],
)
def test_each_thing_maps_to_its_motif(prompt: str, motif: str) -> None:
    assert motif in [m.name for m in read_prompt(prompt).motifs]


@pytest.mark.parametrize(
    ("prompt", "thing", "colour"),
    [
        ("a red fox", "fox", "red"),
        ("the fox is red", "fox", "red"),
        ("a bright blue car", "car", "blue"),
        ("红色的狐狸", "fox", "red"),
        ("蓝色汽车", "car", "blue"),
        ("a purple sky", "sky", "purple"),
        ("green hills", "land", "green"),
        ("the sea is teal", "water", "teal"),
    ],
)
def test_colour_words_tint_what_they_describe(prompt: str, thing: str, colour: str) -> None:
    assert read_prompt(prompt).colour_of(thing) == COLOURS[colour]


def test_a_second_colour_is_the_trim_and_a_lone_colour_tints_everything() -> None:
    striped = read_prompt("a red and white lighthouse").motifs[0]

    assert (striped.colour, striped.trim) == (COLOURS["red"], COLOURS["white"])
    assert read_prompt("something purple").tint == COLOURS["purple"]
    assert read_prompt("something purple").says_anything is False


def test_negated_words_do_not_count() -> None:
    cues = read_prompt("a sunny day with no rain and without clouds")

    assert cues.weather == ("clear",)


def test_longest_entry_wins_in_chinese() -> None:
    # 上海 is a city, not 上 + 海 ("on the sea").
    cues = read_prompt("上海")

    assert [m.name for m in cues.motifs] == ["city"] and cues.water == ()


@pytest.mark.parametrize("prompt", ["p0", "xyzzy quux", "a quiet portrait", "抽象构图", ""])
def test_unknown_words_keep_the_seeded_picture(prompt: str) -> None:
    cues = read_prompt(prompt)
    digest = scene_digest(prompt, ())

    planned = plan_scene(digest, cues, None)

    assert not cues.says_anything and not planned.cued and planned.motifs == ()
    assert planned.palette == stylised_palette(seeded_rng(digest, "palette"), None)
    assert planned.kind in ("peaks", "dunes", "coast") and planned.weather == "clear"


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [FOX_AT_NIGHT, "一只红色的狐狸在雪夜的森林里"])
def test_the_fox_at_night_scene(prompt: str) -> None:
    planned = plan(prompt)

    assert planned.mood == "night" and planned.palette.mood == "night"
    assert planned.weather == "snow" and planned.ground == "snow"
    assert planned.trees == "conifer"
    assert {"night", "snow", "trees", "fox", "stars"} <= planned.elements
    (fox,) = planned.motifs
    assert fox.name == "fox" and fox.colour == COLOURS["red"] and fox.place == "ground"


def test_the_fox_at_night_in_pixels() -> None:
    scene = scene_of(FOX_AT_NIGHT)
    sky = scene.crop((0, 0, 1024, 200))

    # A dark sky...
    assert sum(ImageStat.Stat(sky).mean) / 3 < 70
    colours = scene.getcolors(1024 * 1024) or []
    # ...a red animal (the red of the fox, dimmed by the night)...
    red = sum(n for n, (r, g, b) in colours if r > 110 and r > 2.5 * g and r > 2.5 * b)
    # ...and snow: white flakes and white caps on the trees.
    white = sum(n for n, (r, g, b) in colours if min(r, g, b) > 200)
    print(f"red pixels {red}, white pixels {white}")
    assert red > 5000
    assert white > 3000


@pytest.mark.parametrize("seed", range(12))
def test_sunsets_are_warm_and_skies_are_never_green(seed: int) -> None:
    for prompt in (f"sunset {seed}", f"desert dunes {seed}", f"a beach at sunset {seed}"):
        palette = plan(prompt).palette
        for colour in (palette.sky_top, palette.sky_horizon):
            r, g, b = colour
            assert not (g > r + 10 and g > b + 10), (prompt, colour)
        if "sunset" in prompt:
            r, g, b = palette.sky_horizon
            hue = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)[0]
            assert r > b and (hue < 0.12 or hue > 0.9), (prompt, palette.sky_horizon)


def test_desert_dunes_are_sand_under_a_real_sky() -> None:
    for seed in range(8):
        planned = plan(f"desert dunes {seed}")
        assert planned.kind == "dunes" and planned.ground == "sand"
        r, g, b = planned.palette.near
        assert r > g > b, planned.palette.near


@pytest.mark.parametrize(
    ("prompt", "kind", "extra"),
    [
        ("a lighthouse at dusk", "coast", {"lighthouse"}),
        ("a boat on the lake", "coast", {"boat"}),
        ("a cat on the beach", "coast", {"cat"}),
        ("city skyline", "plains", {"city"}),
        ("a serene mountain lake", "coast", set()),
        ("a rocket over the desert", "dunes", {"rocket"}),
        ("cherry blossoms in a meadow", "plains", {"trees"}),
    ],
)
def test_the_scene_follows_the_landscape_and_the_things(
    prompt: str, kind: str, extra: set[str]
) -> None:
    planned = plan(prompt)

    assert planned.kind == kind and extra <= planned.elements


def test_a_beach_gives_things_something_to_stand_on() -> None:
    assert plan("a dog on the beach").shore and plan("a boat at sea").shore is False
    assert plan("a mountain lake").mountains


def test_weather_that_hides_the_sun() -> None:
    for prompt in ("rain in the city", "a stormy sea", "fog over the hills"):
        assert not {"sun", "moon", "stars"} & plan(prompt).elements, prompt
    assert "sun" in plan("a sunny meadow").elements


def test_every_motif_draws_where_it_belongs() -> None:
    for name, (place, _) in MOTIFS.items():
        planned = plan(f"a {name}")
        (motif,) = planned.motifs
        assert motif.name == name and 0.0 < motif.x < 1.0
        assert motif.place == place or (name == "lighthouse" and motif.place == "rock")


def test_things_are_spread_out() -> None:
    planned = plan("a fox, a cat and a dog in a meadow")

    xs = sorted(m.x for m in planned.motifs)
    assert len(xs) == 3 and all(b - a > 0.1 for a, b in itertools.pairwise(xs))


# --------------------------------------------------------------------------------------------
# Pixels and bytes
# --------------------------------------------------------------------------------------------


def test_cued_prompts_render_the_same_bytes_twice() -> None:
    for prompt in (FOX_AT_NIGHT, "a lighthouse in a storm", "夕阳下的上海城市天际线"):
        req = GenerationRequest(prompt=prompt, width=1536, height=864, quality="high", model="m")
        assert render_png(req) == render_png(req)


def test_a_motif_shows_in_the_pixels() -> None:
    # A red car drawn on a seeded landscape: red where there was none without it.
    with_car, without = scene_of("a red car at noon"), scene_of("a road at noon")

    def red(image: Image.Image) -> int:
        found = image.getcolors(1024 * 1024) or []
        return sum(n for n, (r, g, b) in found if r > 150 and g < 80 and b < 80)

    assert red(with_car) > 3000 > red(without)


@pytest.mark.parametrize("quality", ["low", "medium", "high"])
def test_night_shows_at_every_quality(quality: str) -> None:
    sky = scene_of("a quiet street at night", quality).crop((0, 0, 1024, 300))
    colours = sky.getcolors(1024 * 300) or []
    stars = sum(n for n, (r, g, b) in colours if min(r, g, b) > 170)

    assert sum(ImageStat.Stat(sky).mean) / 3 < 60
    # Stars (or the moon) even at low quality, where an uncued night sky has none.
    assert stars > 50

"""What the preview can take from a prompt: a small table of common words and what they mean.

Words in English, Chinese, and a few in Japanese and Korean, map to cues: the time of day,
weather, season, landscape, water, things to draw (animals, vehicles, buildings) and colours.
A colour word tints the thing it describes ("red fox", "红色的狐狸"): the next thing named
within a few words, else the one just before ("the fox is red"), else the whole palette.
English is matched word by word (with plural endings), CJK text by the longest entry that
starts at each character, so "上海" is a city and not "on the sea". Words the table does not
know leave the picture to the prompt's seed, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from imageforge.engines.offline.style import RGB

#: (category, value). Categories: mood, weather, season, land, water, motif, colour, part.
Cue = tuple[str, str]

#: How far (in words) a colour reaches for the thing it describes.
_AFTER, _BEFORE = 3, 2
_NEGATIONS = frozenset({"no", "not", "without", "没有", "无", "不", "없는"})

COLOURS: dict[str, RGB] = {
    "red": (212, 38, 38),
    "orange": (240, 128, 30),
    "yellow": (246, 204, 40),
    "gold": (222, 176, 48),
    "green": (56, 160, 72),
    "teal": (24, 148, 146),
    "blue": (38, 92, 214),
    "purple": (128, 60, 182),
    "pink": (240, 118, 170),
    "brown": (122, 76, 40),
    "white": (244, 244, 240),
    "black": (26, 26, 32),
    "grey": (128, 128, 136),
    "silver": (190, 196, 206),
}

#: Cues ("category:value", space-separated) and the words that carry them.
_TABLE: tuple[tuple[str, str], ...] = (
    # Times of day.
    (
        "mood:night",
        "night midnight nighttime moonlit moonlight nightfall 夜 夜晚 晚上"
        " 深夜 黑夜 夜空 夜景 午夜 밤",
    ),
    ("mood:night motif:moon", "moon 月亮 月光 明月 月夜 満月"),
    ("mood:night motif:stars", "stars starry galaxy milky 星星 星空 繁星 银河 星空の 별"),
    (
        "mood:dusk",
        "sunset dusk evening twilight sundown afterglow 日落 夕阳 黄昏 傍晚 晚霞 夕日 夕焼け 노을",
    ),
    ("mood:dawn", "sunrise dawn morning daybreak 日出 清晨 黎明 早晨 朝日 朝焼け 일출 아침"),
    ("mood:day", "day daytime noon midday afternoon daylight 白天 中午 正午 阳光 昼 낮"),
    ("mood:day weather:clear", "sunny sun sunshine 晴 晴天 太阳"),
    # Weather.
    ("weather:rain", "rain rainy raining drizzle shower wet 雨 下雨 雨天 小雨 大雨 비가"),
    (
        "weather:snow",
        "snow snowy snowing snowfall blizzard snowflakes 雪 下雪 雪花 大雪 白雪 雪景 눈이 눈송이",
    ),
    ("weather:storm", "storm stormy thunder thunderstorm lightning 暴风雨 雷雨 闪电 雷 嵐 폭풍"),
    ("weather:fog", "fog foggy mist misty haze hazy 雾 霧"),
    ("weather:cloudy", "cloud cloudy overcast clouds 云 阴天 雲"),
    # Seasons.
    ("season:spring", "spring springtime 春 春天 봄"),
    ("season:summer", "summer summertime 夏 夏天 여름"),
    ("season:autumn", "autumn fall autumnal 秋 秋天 红叶 紅葉 가을"),
    ("season:winter", "winter wintry frozen icy 冬 冬天 겨울"),
    ("season:spring motif:blossom", "blossom blossoms sakura 樱花 桜 벚꽃"),
    # Landscapes.
    (
        "land:peaks part:land",
        "mountain mountains peak alps alpine summit ridge 山 高山 雪山 山脉 산",
    ),
    ("land:dunes part:land", "desert dune dunes sahara sand 沙漠 沙丘 砂漠 사막"),
    (
        "land:plains part:land",
        "hill hills meadow field fields valley prairie grassland"
        " countryside farm 草原 草地 田野 山谷 丘 들판",
    ),
    ("motif:trees part:trees", "forest woods woodland tree pine jungle 森林 树林 树 森 林 숲"),
    # Water.
    (
        "water:sea part:water",
        "sea ocean coast bay waves wave island harbour harbor port"
        " seaside 海 大海 海洋 海边 海岸 港 岛 海辺 바다",
    ),
    ("water:lake part:water", "lake pond river water 湖 河 江 湖泊 河流 호수"),
    ("water:shore part:water", "beach shore 沙滩 海滩 浜 해변"),
    # Places and buildings.
    (
        "motif:city",
        "city skyline town downtown metropolis skyscraper skyscrapers"
        " buildings street urban tokyo york 城市 都市 城 街 高楼 上海 北京 东京 香港"
        " 도시",
    ),
    ("motif:lighthouse", "lighthouse beacon 灯塔 灯台 등대"),
    # Animals.
    ("motif:fox", "fox foxes vixen 狐狸 狐 キツネ きつね 여우"),
    ("motif:cat", "cat kitten kitty 猫 小猫 猫咪 ねこ 고양이"),
    ("motif:dog", "dog puppy hound wolf 狗 小狗 犬 狼 강아지"),
    ("motif:bird", "bird eagle seagull gull crow dove 鸟 鳥 갈매기"),
    # Vehicles.
    ("motif:car", "car cars taxi truck jeep 汽车 车 車 자동차"),
    ("motif:rocket", "rocket spaceship spacecraft 火箭 ロケット 로켓"),
    ("motif:boat water:sea", "boat ship sailboat yacht sail 船 帆船 小船 ボート 보트"),
    ("motif:plane", "plane airplane aeroplane jet 飞机 飛行機"),
    # Parts a colour may describe.
    ("part:sky", "sky skies 天空 天 空 하늘"),
    # A few emoji say what they show.
    ("motif:fox", "🦊"),
    ("motif:cat", "🐈 🐱 \U0001f408\u200d\u2b1b"),
    ("motif:dog", "🐕 🐶 🐺"),
    ("motif:bird", "🐦 🕊"),
    ("motif:rocket", "🚀"),
    ("motif:car", "🚗 🚕 🚙"),
    ("motif:boat water:sea", "⛵ 🚢 ⛴"),
    ("motif:city", "🏙 🌃 🌆"),
    ("mood:night motif:moon", "🌙 🌕 🌛"),
    ("weather:snow", "❄ ⛄ ☃"),
    ("weather:rain", "🌧 ☔"),
    ("mood:dusk", "🌅 🌇"),
)

_COLOUR_WORDS: dict[str, str] = {
    "red": "red",
    "crimson": "red",
    "scarlet": "red",
    "orange": "orange",
    "amber": "orange",
    "yellow": "yellow",
    "golden": "gold",
    "gold": "gold",
    "green": "green",
    "emerald": "green",
    "teal": "teal",
    "turquoise": "teal",
    "cyan": "teal",
    "blue": "blue",
    "azure": "blue",
    "navy": "blue",
    "purple": "purple",
    "violet": "purple",
    "lavender": "purple",
    "pink": "pink",
    "magenta": "pink",
    "brown": "brown",
    "white": "white",
    "black": "black",
    "grey": "grey",
    "gray": "grey",
    "silver": "silver",
    "红": "red",
    "红色": "red",
    "赤": "red",
    "赤い": "red",
    "橙": "orange",
    "橙色": "orange",
    "橘色": "orange",
    "黄": "yellow",
    "黄色": "yellow",
    "金色": "gold",
    "绿": "green",
    "绿色": "green",
    "蓝": "blue",
    "蓝色": "blue",
    "青い": "blue",
    "紫": "purple",
    "紫色": "purple",
    "粉": "pink",
    "粉色": "pink",
    "粉红": "pink",
    "棕色": "brown",
    "白": "white",
    "白色": "white",
    "白い": "white",
    "黑": "black",
    "黑色": "black",
    "黒い": "black",
    "灰色": "grey",
    "银色": "silver",
    "빨간": "red",
    "파란": "blue",
    "하얀": "white",
    "검은": "black",
}


def _build() -> dict[str, tuple[Cue, ...]]:
    table: dict[str, tuple[Cue, ...]] = {}
    for cues, words in _TABLE:
        parsed = tuple((c, v) for c, _, v in (cue.partition(":") for cue in cues.split()))
        for word in words.split():
            table[word] = table.get(word, ()) + parsed
    for word, colour in _COLOUR_WORDS.items():
        table[word] = (*table.get(word, ()), ("colour", colour))
    return table


LEXICON: dict[str, tuple[Cue, ...]] = _build()
#: The longest non-ASCII entry: how far the CJK scan looks ahead from each character.
_LONGEST = max(len(w) for w in LEXICON if not w.isascii())
_LATIN_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Thing:
    """Something the prompt names that can be drawn or tinted: a motif or a part of the scene."""

    name: str
    colour: RGB | None = None
    #: A second colour ("a red and white lighthouse"): stripes, sails, trim.
    trim: RGB | None = None


@dataclass(frozen=True)
class Cues:
    """What the prompt says about the picture; None or empty where it says nothing."""

    mood: str | None = None
    weather: tuple[str, ...] = ()
    season: str | None = None
    land: str | None = None
    water: tuple[str, ...] = ()
    #: Motifs in the order the prompt names them, each once, with its colour if one was given.
    motifs: tuple[Thing, ...] = ()
    #: Colours given to the sky, the water, the land or the trees.
    parts: tuple[Thing, ...] = ()
    #: A colour that describes nothing in particular: it tints the whole palette.
    tint: RGB | None = None
    #: The table's words that matched, in prompt order.
    words: tuple[str, ...] = field(default=(), compare=False)

    @property
    def says_anything(self) -> bool:
        return bool(self.mood or self.weather or self.season or self.land or self.water) or bool(
            self.motifs
        )

    def colour_of(self, name: str) -> RGB | None:
        found = [t.colour for t in (*self.motifs, *self.parts) if t.name == name]
        return found[0] if found else None


def read_prompt(prompt: str) -> Cues:
    """The cues in `prompt`; the same prompt always gives the same cues."""
    tokens = _tokens(prompt.lower())
    hits: list[tuple[int, str, tuple[Cue, ...]]] = []
    for i, token in enumerate(tokens):
        cues = LEXICON.get(token) or LEXICON.get(_singular(token))
        if cues and not any(t in _NEGATIONS for t in tokens[max(0, i - 2) : i]):
            hits.append((i, token, cues))

    found: dict[str, list[str]] = {}
    things: list[tuple[int, str, str]] = []  # (token index, motif or part, name)
    colours: list[tuple[int, str]] = []
    for i, _, cues in hits:
        for category, value in cues:
            if category == "colour":
                colours.append((i, value))
            elif category in ("motif", "part"):
                things.append((i, category, value))
            else:
                found.setdefault(category, []).append(value)

    tinted: dict[tuple[str, str], list[RGB]] = {}
    tint: RGB | None = None
    for i, colour in colours:
        target = _described(i, things)
        if target is None:
            tint = tint or COLOURS[colour]
        else:
            tinted.setdefault(target, []).append(COLOURS[colour])

    motifs: dict[str, Thing] = {}
    parts: dict[str, Thing] = {}
    for _, category, name in things:
        chosen = motifs if category == "motif" else parts
        if name not in chosen:
            given = [*tinted.get((category, name), []), None, None]
            chosen[name] = Thing(name, given[0], given[1])
    return Cues(
        mood=found.get("mood", [None])[0],
        weather=tuple(dict.fromkeys(found.get("weather", []))),
        season=found.get("season", [None])[0],
        land=found.get("land", [None])[0],
        water=tuple(dict.fromkeys(found.get("water", []))),
        motifs=tuple(motifs.values()),
        parts=tuple(p for p in parts.values() if p.colour is not None),
        tint=tint,
        words=tuple(token for _, token, _ in hits),
    )


def _described(i: int, things: list[tuple[int, str, str]]) -> tuple[str, str] | None:
    after = [(j, c, n) for j, c, n in things if i < j <= i + _AFTER]
    before = [(j, c, n) for j, c, n in things if i - _BEFORE <= j < i]
    if after:
        _, category, name = min(after)
        return category, name
    if before:
        _, category, name = max(before)
        return category, name
    # A word that is both a colour and a thing ("sand", "snow") describes itself.
    same = [(c, n) for j, c, n in things if j == i]
    return same[0] if same else None


def _tokens(text: str) -> list[str]:
    """Latin words whole; elsewhere the longest table entry at each character, or the character."""
    tokens: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if "a" <= c <= "z":
            match = _LATIN_WORD.match(text, i)
            assert match is not None
            tokens.append(match.group())
            i = match.end()
            continue
        if c.isspace() or (c.isascii() and not c.isalnum()):
            i += 1
            continue
        if _is_hangul(c):
            # Korean separates words with spaces and attaches particles to nouns (바다에서, "at
            # the sea"): a word is its longest entry that starts it, or itself.
            end = i
            while end < len(text) and _is_hangul(text[end]):
                end += 1
            word = text[i:end]
            prefixes = [word[:n] for n in range(len(word), 0, -1) if word[:n] in LEXICON]
            tokens.append(prefixes[0] if prefixes else word)
            i = end
            continue
        for length in range(min(_LONGEST, len(text) - i), 0, -1):
            if text[i : i + length] in LEXICON:
                tokens.append(text[i : i + length])
                i += length
                break
        else:
            tokens.append(c)
            i += 1
    return tokens


def _is_hangul(c: str) -> bool:
    return "\uac00" <= c <= "\ud7a3"


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("es") and word[:-2] in LEXICON:
        return word[:-2]
    if word.endswith("s") and len(word) > 3:
        return word[:-1]
    return word

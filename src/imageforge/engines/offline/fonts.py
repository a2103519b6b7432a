"""Which fonts the caption draws with: found on this machine, in a fixed order, per character.

The embedded font (Pillow's Aileron) draws ASCII and nothing else, so every other script needs a
font file from the machine. They are looked up in a fixed order of preference: the files the
operator named (`RenderOptions.font_files`), the embedded font, then well-known families by
name (fontconfig's `fc-list` when it is installed, a few standard paths otherwise), and, for a
character none of them covers, any installed font that fontconfig says covers it. Each step is a
function of the machine's fonts and the text alone, never of what was drawn before, so the same
request draws the same glyphs in every process.

Coverage is read from each font's own character map (fontTools), so a character is only ever
given to a font that really has a glyph for it, and never drawn as the font's empty box.

Debian packages that add coverage: fonts-dejavu-core (Latin, Greek, Cyrillic, symbols),
fonts-noto-cjk (Chinese, Japanese, Korean), fonts-wqy-zenhei or fonts-wqy-microhei (a smaller
Chinese font that also has kana and Hangul), fonts-noto-color-emoji (emoji), fonts-noto-core
(most other scripts: Arabic, Hebrew, Devanagari, Thai...).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import struct
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from fontTools.ttLib import TTFont, TTLibError
from PIL import ImageFont

#: The embedded font is not a file; this stands in for its path.
EMBEDDED = "<embedded>"

#: Families asked for by name, best first. Several CJK families are listed because each
#: distribution ships a different one; the per-language order puts the right Noto face first
#: (the same Han character is drawn differently in Chinese, Japanese and Korean).
_TEXT_FAMILIES = ("DejaVu Sans", "Noto Sans", "Liberation Sans", "FreeSans")
_CJK_FAMILIES = {
    "zh": ("Noto Sans CJK SC", "Source Han Sans SC", "Noto Sans CJK TC", "Noto Sans CJK JP"),
    "ja": ("Noto Sans CJK JP", "Source Han Sans JP", "Noto Sans CJK SC"),
    "ko": ("Noto Sans CJK KR", "Source Han Sans KR", "Noto Sans CJK SC"),
}
_CJK_FALLBACK_FAMILIES = (
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "Noto Sans CJK KR",
    "NanumGothic",
    "IPAGothic",
    "TakaoGothic",
)
_EMOJI_FAMILIES = ("Noto Color Emoji", "Apple Color Emoji", "Twemoji", "Noto Emoji", "Symbola")
_SYMBOL_FAMILIES = ("Noto Sans Symbols", "Noto Sans Symbols2", "DejaVu Sans Mono")

#: Where fonts are looked for when fontconfig is not installed (a slim container, say), by the
#: file names their packages install.
_FONT_DIRS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    os.path.expanduser("~/.local/share/fonts"),
    "/System/Library/Fonts",
    "/Library/Fonts",
)
_KNOWN_FILES = (
    "DejaVuSans.ttf",
    "NotoSans-Regular.ttf",
    "NotoSansCJK-Regular.ttc",
    "NotoSansCJKsc-Regular.otf",
    "wqy-zenhei.ttc",
    "wqy-microhei.ttc",
    "DroidSansFallbackFull.ttf",
    "NotoColorEmoji.ttf",
    "Apple Color Emoji.ttc",
    "Symbola.ttf",
)
#: A character no font covers costs one fontconfig query; a prompt in an unusual script asks
#: for at most this many distinct characters, the rest are drawn as code points.
MAX_QUERIES = 48


@dataclass(frozen=True)
class Face:
    """One face of one font file."""

    path: str
    index: int
    family: str
    #: Drawn with the font's own colours (emoji).
    colour: bool = False
    #: Bitmap fonts (CBDT, sbix) exist at fixed pixel sizes only: drawn at this one and scaled.
    fixed_size: int | None = None

    @property
    def is_emoji(self) -> bool:
        return self.colour or "emoji" in self.family.lower()


@dataclass(frozen=True)
class _Installed:
    path: str
    index: int
    families: tuple[str, ...]
    regular: bool


# --------------------------------------------------------------------------------------------
# The chain of faces for one caption
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def font_chain(font_files: tuple[str, ...], language: str) -> tuple[Face, ...]:
    """The faces to try, in order, for a caption whose CJK text is `language` (zh, ja, ko)."""
    faces: list[Face] = []
    for path in font_files:
        face = _open_face(path, 0)
        if face is not None:
            faces.append(face)
    faces.append(embedded_face())
    families = (
        *_TEXT_FAMILIES,
        *_CJK_FAMILIES.get(language, _CJK_FAMILIES["zh"]),
        *_CJK_FALLBACK_FAMILIES,
        *_EMOJI_FAMILIES,
        *_SYMBOL_FAMILIES,
    )
    for family in families:
        found = _find_family(family)
        if found is not None and all((f.path, f.index) != (found.path, found.index) for f in faces):
            faces.append(found)
    return tuple(faces)


def covers(face: Face, code_point: int) -> bool:
    return code_point in _cmap(face.path, face.index)


def pil_font(face: Face, size: int) -> ImageFont.FreeTypeFont:
    """The Pillow font for `face`; bitmap faces always at their own size (see `Face`)."""
    return _pil_font(face.path, face.index, face.fixed_size or size)


def last_resort(code_point: int) -> Face | None:
    """Any installed face that covers `code_point`, regular styles first, then by path."""
    return _last_resort(code_point)


def check_font_files(paths: Iterable[str]) -> None:
    """Raise ValueError naming the first path that is not a readable font file."""
    for path in paths:
        if _open_face(path, 0) is None:
            raise ValueError(f"{path!r} is not a readable TrueType/OpenType font file")


# --------------------------------------------------------------------------------------------
# Finding and opening faces
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def embedded_face() -> Face:
    return Face(path=EMBEDDED, index=0, family="Aileron")


@functools.lru_cache(maxsize=1)
def _embedded_bytes() -> bytes:
    font = ImageFont.load_default(size=12)
    assert isinstance(font, ImageFont.FreeTypeFont)  # Pillow is always built with FreeType here
    data: bytes = font.font_bytes
    return data


#: What a broken, truncated or foreign file raises when fontTools reads it.
_UNREADABLE = (OSError, TTLibError, KeyError, ValueError, AssertionError, EOFError, struct.error)


@contextlib.contextmanager
def _reading(path: str, index: int) -> Iterator[TTFont]:
    # The file is opened here, not by fontTools, so that it is closed even when it turns out
    # not to be a font.
    source = io.BytesIO(_embedded_bytes()) if path == EMBEDDED else open(path, "rb")  # noqa: SIM115
    with source as file, TTFont(file, fontNumber=index, lazy=True) as font:
        yield font


@functools.lru_cache(maxsize=256)
def _open_face(path: str, index: int) -> Face | None:
    try:
        with _reading(path, index) as font:
            tables = set(font.keys())
            if "cmap" not in tables:
                return None
            name = font["name"].getBestFamilyName() if "name" in tables else None
            fixed: int | None = None
            if "CBLC" in tables and "glyf" not in tables and "CFF " not in tables:
                fixed = max(s.bitmapSizeTable.ppemY for s in font["CBLC"].strikes)
            elif "sbix" in tables and "glyf" not in tables:
                fixed = max(font["sbix"].strikes)
    except _UNREADABLE:
        return None
    colour = bool(tables & {"CBDT", "sbix", "COLR"})
    return Face(path=path, index=index, family=name or path, colour=colour, fixed_size=fixed)


@functools.lru_cache(maxsize=256)
def _cmap(path: str, index: int) -> frozenset[int]:
    try:
        with _reading(path, index) as font:
            return frozenset(font.getBestCmap() or {})
    except _UNREADABLE:
        return frozenset()


@functools.lru_cache(maxsize=256)
def _pil_font(path: str, index: int, size: int) -> ImageFont.FreeTypeFont:
    if path == EMBEDDED:
        return ImageFont.truetype(io.BytesIO(_embedded_bytes()), size)
    return ImageFont.truetype(path, size, index=index)


def _find_family(family: str) -> Face | None:
    candidates = [f for f in _installed() if family in f.families]
    # Regular before bold or italic; then by path, so the choice never depends on listing order.
    for found in sorted(candidates, key=lambda f: (not f.regular, f.path, f.index)):
        face = _open_face(found.path, found.index)
        if face is not None:
            return face
    return None


@functools.lru_cache(maxsize=1)
def _installed() -> tuple[_Installed, ...]:
    listing = _fc_list()
    if listing is not None:
        return tuple(_parse_listing(listing))
    return tuple(_scan_known_files())


def _fc_list(*pattern: str) -> str | None:
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return None
    try:
        done = subprocess.run(
            [fc_list, *pattern, "--format", "%{file}\t%{index}\t%{family}\t%{style}\n"],
            capture_output=True,
            check=True,
            timeout=10,
            text=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def _parse_listing(listing: str) -> list[_Installed]:
    found = []
    for line in listing.splitlines():
        path, index, families, styles = ([*line.split("\t"), "", "", ""])[:4]
        if not path or not index.isdigit():
            continue
        style_names = {s.strip().lower() for s in styles.split(",")}
        found.append(
            _Installed(
                path=path,
                index=int(index),
                families=tuple(f.strip() for f in families.split(",")),
                regular=bool(style_names & {"regular", "book", "normal"}),
            )
        )
    return found


def _scan_known_files() -> list[_Installed]:
    found = []
    for top in _FONT_DIRS:
        for folder, _, files in sorted(os.walk(top)):
            for name in sorted(set(files) & set(_KNOWN_FILES)):
                path = os.path.join(folder, name)
                found.extend(_faces_in_file(path))
    return found


def _faces_in_file(path: str) -> list[_Installed]:
    faces = []
    for index in range(_face_count(path)):
        face = _open_face(path, index)
        if face is not None:
            faces.append(_Installed(path=path, index=index, families=(face.family,), regular=True))
    return faces


def _face_count(path: str) -> int:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return 0
    return int.from_bytes(head[8:12], "big") if head[:4] == b"ttcf" else 1


@functools.lru_cache(maxsize=1024)
def _last_resort(code_point: int) -> Face | None:
    listing = _fc_list(f":charset={code_point:x}")
    if not listing:
        return None
    found: Sequence[_Installed] = _parse_listing(listing)
    for candidate in sorted(found, key=lambda f: (not f.regular, f.path, f.index)):
        face = _open_face(candidate.path, candidate.index)
        if face is not None and covers(face, code_point):
            return face
    return None

"""The offline engine's caption: every script the machine has a font for, no blank boxes.

The coverage checks read each font's character map here with fontTools and render the
font's own `.notdef` glyph to compare against, independently of how the engine chose.
CI installs a CJK and an emoji font (`.ci/run`) and sets IMAGEFORGE_REQUIRE_FONTS=1, so these
tests never skip there; elsewhere they skip when the machine has no such font.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import unicodedata

import pytest
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

from imageforge.engines.base import GenerationRequest
from imageforge.engines.offline import OfflineEngine, RenderOptions, render_png
from imageforge.engines.offline.caption import Caption, layout_caption
from imageforge.engines.offline.fonts import EMBEDDED, Face, check_font_files, embedded_face
from imageforge.engines.offline.lettering import Lettering, Piece

MIXED = "一只红狐狸在雪夜的森林里 🦊❄️ 夜の雪とキツネ 눈 내리는 밤의 여우 👨‍👩‍👧 🇯🇵"


def _has_font_for(char: str) -> bool:
    if shutil.which("fc-list") is None:
        return False
    found = subprocess.run(
        ["fc-list", f":charset={ord(char):x}", "file"], capture_output=True, text=True, check=False
    )
    return bool(found.stdout.strip())


def _require_fonts(*chars: str) -> None:
    missing = [c for c in chars if not _has_font_for(c)]
    if not missing:
        return
    message = f"no installed font covers {missing} (Debian: fonts-noto-cjk fonts-noto-color-emoji)"
    if os.environ.get("IMAGEFORGE_REQUIRE_FONTS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _cmap(face: Face) -> dict[int, str]:
    if face.path == EMBEDDED:
        source = ImageFont.load_default(size=12)
        assert isinstance(source, ImageFont.FreeTypeFont)
        with TTFont(io.BytesIO(source.font_bytes), lazy=True) as font:
            return dict(font.getBestCmap())
    with TTFont(face.path, fontNumber=face.index, lazy=True) as font:
        return dict(font.getBestCmap())


def _visible(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) not in ("Cf", "Mn", "Zs")]


def _differs_from_notdef(face: Face, char: str, cmap: dict[int, str]) -> bool:
    size = face.fixed_size or 40
    if face.path == EMBEDDED:
        font = ImageFont.load_default(size=size)
    else:
        font = ImageFont.truetype(face.path, size, index=face.index)
    # A code point this font does not map is drawn with its .notdef glyph: the box.
    missing = next(chr(cp) for cp in range(0xE000, 0xF900) if cp not in cmap)
    kwargs = {"embedded_color": True} if face.colour else {}
    mode = "RGBA" if face.colour else "L"

    def drawn(c: str) -> bytes:
        image = Image.new(mode, (size * 3, size * 3))
        ImageDraw.Draw(image).text((size, size), c, font=font, fill="white", **kwargs)
        return image.tobytes()

    return drawn(char) != drawn(missing)


def _assert_no_boxes(pieces: list[Piece]) -> None:
    for piece in pieces:
        assert piece.face is not None, f"{piece.text!r} drawn as a code point"
        cmap = _cmap(piece.face)
        for char in _visible(piece.text):
            assert ord(char) in cmap, (char, piece.face.family)
            assert _differs_from_notdef(piece.face, char, cmap), (char, piece.face.family)


def caption(
    prompt: str, width: int = 1024, height: int = 1024, font_files: tuple[str, ...] = ()
) -> Caption:
    return layout_caption(prompt, width, height, "medium", 0, font_files)


# --------------------------------------------------------------------------------------------
# Coverage
# --------------------------------------------------------------------------------------------


def test_cjk_and_emoji_prompt_draws_no_box_glyphs() -> None:
    _require_fonts("狐", "キ", "눈", "🦊")

    laid_out = caption(MIXED, 2048, 2048)

    pieces = laid_out.pieces()
    assert "".join(p.text for p in pieces) == MIXED.replace(" ", "")
    _assert_no_boxes(pieces)
    families = {p.face.family for p in pieces if p.face is not None}
    # Emoji in colour, not a monochrome stand-in from a text font.
    emoji = [p for p in pieces if "🦊" in p.text or "👨" in p.text]
    assert emoji and all(p.face is not None and p.face.colour for p in emoji), families


def test_emoji_sequences_stay_whole() -> None:
    _require_fonts("🦊")
    family = "👨\u200d👩\u200d👧"

    pieces = caption(f"a {family} and a flag 🇯🇵 and 1\ufe0f\u20e3").pieces()

    texts = [p.text for p in pieces]
    assert family in texts and "🇯🇵" in texts and "1\ufe0f\u20e3" in texts
    one = next(p for p in pieces if p.text == family)
    single = next(p for p in caption("👨").pieces())
    # A joined sequence is one glyph wide, not three.
    assert one.width == pytest.approx(single.width)


def test_accented_words_stay_in_one_face() -> None:
    _require_fonts("é")

    pieces = caption("un café crème à Zürich").pieces()

    by_text = {p.text: p for p in pieces}
    assert {"café", "crème", "à", "Zürich"} <= set(by_text)
    assert by_text["un"].face == embedded_face()
    _assert_no_boxes(pieces)


def test_a_character_no_font_covers_is_drawn_as_its_code_point() -> None:
    # U+0378 is unassigned and U+E000 private: no font covers them on any machine we test on.
    pieces = caption("before \u0378 and \ue000 after").pieces()

    frames = [p for p in pieces if p.face is None]
    assert [p.text for p in frames] == ["U+0378", "U+E000"]
    assert all(p.width > 0 for p in frames)


def test_without_font_files_letters_fold_to_ascii_and_the_rest_are_code_points() -> None:
    # The chain of a machine with no fonts at all: only the embedded one.
    lettering = Lettering(size=30, chain=(embedded_face(),), last_resort=lambda cp: None)

    assert [(p.text, p.face) for p in lettering.pieces("Łódź")] == [("Lodz", embedded_face())]
    assert [(p.text, p.face) for p in lettering.pieces("猫")] == [("U+732B", None)]
    assert [p.text for p in lettering.pieces("a猫b")] == ["a", "U+732B", "b"]


def test_the_operator_font_file_comes_first() -> None:
    dejavu = next(
        (f for f in _fc_files("DejaVu Sans:style=Book") if f.endswith("DejaVuSans.ttf")), None
    )
    if dejavu is None:
        pytest.skip("DejaVu Sans is not installed (Debian: fonts-dejavu-core)")

    plain = caption("hello world").pieces()
    chosen = caption("hello world", font_files=(dejavu, "/nonexistent.ttf")).pieces()

    assert {p.face for p in plain} == {embedded_face()}
    assert {p.face.path for p in chosen if p.face} == {dejavu}


def test_check_font_files_names_the_bad_file(tmp_path: os.PathLike[str]) -> None:
    bad = os.path.join(tmp_path, "not-a-font.ttf")
    with open(bad, "wb") as f:
        f.write(b"hello")

    with pytest.raises(ValueError, match=r"not-a-font\.ttf"):
        check_font_files([bad])
    with pytest.raises(ValueError, match=r"missing\.ttf"):
        check_font_files(["/nowhere/missing.ttf"])


def _fc_files(pattern: str) -> list[str]:
    if shutil.which("fc-list") is None:
        return []
    found = subprocess.run(["fc-list", pattern, "file"], capture_output=True, text=True)
    return sorted(line.strip().rstrip(":") for line in found.stdout.splitlines() if line.strip())


# --------------------------------------------------------------------------------------------
# Wrapping
# --------------------------------------------------------------------------------------------


def test_chinese_wraps_between_characters_and_never_starts_a_line_with_a_stop() -> None:
    _require_fonts("猫")
    prompt = "一只橘色的猫坐在窗台上，看着窗外的雨。远处的城市灯火通明，天空是深蓝色的。" * 3

    laid_out = caption(prompt, 1024, 1024)

    lines = laid_out.line_texts()
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(line[0] not in "，。、" for line in lines)
    for line in laid_out.lines:
        width = sum(laid_out.lettering.measure(w.text) for w in line)
        assert width <= 1024 - 2 * laid_out.pad


def test_english_wraps_at_spaces() -> None:
    laid_out = caption("the quick brown fox jumps over the lazy dog " * 6, 1024, 1024)

    lines = laid_out.line_texts()
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(not line.startswith(" ") and "  " not in line for line in lines)
    assert lines[0].startswith("the quick brown fox jumps over the lazy dog the")


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


def test_same_cjk_request_gives_the_same_bytes_in_another_process() -> None:
    req = GenerationRequest(
        prompt=MIXED, width=1024, height=1024, quality="low", model="gpt-image-2"
    )
    engine = OfflineEngine()

    async def in_the_pool() -> bytes:
        try:
            return (await engine.generate(req)).data
        finally:
            await engine.aclose()

    # The pool's worker is a freshly spawned process: it finds its fonts on its own.
    assert asyncio.run(in_the_pool()) == render_png(req) == render_png(req, RenderOptions())


def test_the_font_setting_reaches_the_engine_and_a_bad_file_stops_start_up(
    tmp_path: os.PathLike[str],
) -> None:
    from imageforge.engine_setup import build_engine
    from imageforge.errors import ConfigurationError
    from imageforge.settings import Settings

    bad = os.path.join(tmp_path, "broken.ttf")
    with open(bad, "wb") as f:
        f.write(b"not a font")
    with pytest.raises(ConfigurationError, match=r"offline_font_files: .*broken\.ttf"):
        build_engine("offline", Settings(data_dir=tmp_path, offline_font_files=[bad]))

    dejavu = next(
        (f for f in _fc_files("DejaVu Sans:style=Book") if f.endswith("DejaVuSans.ttf")), None
    )
    if dejavu is None:
        pytest.skip("DejaVu Sans is not installed (Debian: fonts-dejavu-core)")
    engine = build_engine("offline", Settings(data_dir=tmp_path, offline_font_files=dejavu))
    assert isinstance(engine, OfflineEngine)
    assert engine.render_options == RenderOptions(font_files=(dejavu,))

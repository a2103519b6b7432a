"""Text in any script: split into pieces each drawn by one face, measured and drawn on a baseline.

A word is drawn in the first face that covers all of it, so a word never mixes two designs when
one font has it all ("café" comes out in one font, not "caf" and an "é" from another); a word no
single face covers falls back character by character. A character no installed font covers is
first folded to ASCII where that keeps it readable ("ł" → "l"), and otherwise drawn as its code
point in a small frame (`U+4E00`), never as a blank box.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from imageforge.engines.offline.fonts import (
    MAX_QUERIES,
    Face,
    covers,
    embedded_face,
    font_chain,
    last_resort,
    pil_font,
)
from imageforge.engines.offline.style import ASCII_FALLBACKS, RGB

#: Emoji are drawn a little smaller than the text's em, as their glyphs fill it completely.
EMOJI_SCALE = 0.92
#: Code points that shape the character before them and draw nothing of their own: zero-width
#: joiner, variation selectors, emoji skin tones, tags, the keycap mark.
_JOINERS = frozenset(
    (
        0x200C,
        0x200D,
        0x20E3,
        *range(0xFE00, 0xFE10),
        *range(0x1F3FB, 0x1F400),
        *range(0xE0020, 0xE0080),
        *range(0xE0100, 0xE01F0),
    )
)


@dataclass(frozen=True)
class Piece:
    """A stretch of text drawn one way: in `face`, or (face None) as a framed code point."""

    text: str
    face: Face | None
    width: float


@dataclass
class Lettering:
    """Measures and draws text at one size with one chain of faces (see `fonts.font_chain`)."""

    size: int
    chain: tuple[Face, ...]
    #: Asked for a character no face in `chain` covers (see `fonts.last_resort`).
    last_resort: Callable[[int], Face | None] = last_resort
    _pieces: dict[str, tuple[Piece, ...]] = field(default_factory=dict, repr=False)
    _queries: set[int] = field(default_factory=set, repr=False)

    @classmethod
    def for_text(cls, text: str, size: int, font_files: tuple[str, ...]) -> Lettering:
        return cls(size=size, chain=font_chain(font_files, cjk_language(text)))

    def pieces(self, word: str) -> tuple[Piece, ...]:
        """How `word` (no spaces) is drawn; cached, as wrapping measures words many times."""
        cached = self._pieces.get(word)
        if cached is None:
            cached = self._pieces[word] = tuple(self._split(word))
        return cached

    def measure(self, word: str) -> float:
        return sum(piece.width for piece in self.pieces(word))

    @property
    def space(self) -> float:
        return float(pil_font(self.chain[0], self.size).getlength(" "))

    def draw(self, image: Image.Image, x: float, baseline: float, word: str, fill: RGB) -> float:
        """Draw `word` with its left end at `x`; return the x where the next text starts."""
        for piece in self.pieces(word):
            if piece.face is None:
                self._draw_code_point(image, x, baseline, piece, fill)
            elif piece.face.fixed_size:
                self._draw_bitmap(image, x, baseline, piece, piece.face)
            else:
                font = pil_font(piece.face, self.size)
                ImageDraw.Draw(image).text(
                    (x, baseline),
                    piece.text,
                    font=font,
                    fill=fill,
                    anchor="ls",
                    embedded_color=piece.face.colour,
                )
            x += piece.width
        return x

    # ----------------------------------------------------------------------------------------

    def _split(self, word: str) -> list[Piece]:
        clusters = split_clusters(word)
        whole = self._face_for(clusters)
        if whole is not None:
            return [self._piece(word, whole)]
        # Character by character; neighbours drawn by the same face are drawn (and kerned) as one.
        runs: list[tuple[str, Face | None]] = []
        for cluster in clusters:
            face = self._face_for([cluster])
            text, face = (cluster, face) if face is not None else self._unsupported(cluster)
            if runs and face is not None and runs[-1][1] == face:
                runs[-1] = (runs[-1][0] + text, face)
            else:
                runs.append((text, face))
        return [
            self._piece(text, face) if face is not None else self._code_point(ord(text[0]))
            for text, face in runs
        ]

    def _face_for(self, clusters: Sequence[str]) -> Face | None:
        needed = [ord(c) for cluster in clusters for c in cluster if not _invisible(c)]
        emoji_first = any(_wants_emoji(cluster) for cluster in clusters)
        chain = sorted(self.chain, key=lambda f: not f.is_emoji) if emoji_first else self.chain
        for face in chain:
            if all(covers(face, cp) for cp in needed):
                return face
        if len(clusters) == 1 and needed:
            return self._last_resort(needed)
        return None

    def _last_resort(self, needed: list[int]) -> Face | None:
        base = needed[0]
        # Unassigned and private-use code points: no font is meant to draw them.
        if unicodedata.category(chr(base)) in ("Cn", "Co", "Cs"):
            return None
        if base not in self._queries and len(self._queries) >= MAX_QUERIES:
            return None
        self._queries.add(base)
        face = self.last_resort(base)
        return face if face is not None and all(covers(face, cp) for cp in needed) else None

    def _unsupported(self, cluster: str) -> tuple[str, Face | None]:
        """What stands in for a cluster no face covers: its ASCII folding, or (face None) its
        code point."""
        folded = fold_to_ascii(cluster)
        if folded and folded != cluster:
            face = self._face_for(split_clusters(folded))
            if face is not None:
                return folded, face
        return cluster, None

    def _piece(self, text: str, face: Face) -> Piece:
        if face.fixed_size:
            font = pil_font(face, face.fixed_size)
            width = font.getlength(text) * self._bitmap_scale(face)
        else:
            width = pil_font(face, self.size).getlength(text)
        return Piece(text=text, face=face, width=float(width))

    def _code_point(self, code_point: int) -> Piece:
        label = f"U+{code_point:04X}"
        small = pil_font(embedded_face(), self._frame_size())
        return Piece(text=label, face=None, width=small.getlength(label) + self.size * 0.5)

    def _frame_size(self) -> int:
        return max(8, round(self.size * 0.5))

    def _bitmap_scale(self, face: Face) -> float:
        assert face.fixed_size
        return self.size * EMOJI_SCALE / face.fixed_size

    def _draw_bitmap(
        self, image: Image.Image, x: float, baseline: float, piece: Piece, face: Face
    ) -> None:
        # Bitmap emoji exist at one size (109 px for Noto Color Emoji): draw there, then scale.
        font = pil_font(face, self.size)
        box = font.getbbox(piece.text, anchor="ls")
        left, top = math.floor(box[0]), math.floor(box[1])
        right, bottom = math.ceil(box[2]), math.ceil(box[3])
        if right <= left or bottom <= top:
            return
        big = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
        ImageDraw.Draw(big).text(
            (-left, -top), piece.text, font=font, anchor="ls", embedded_color=True
        )
        scale = self._bitmap_scale(face)
        w, h = max(1, round(big.width * scale)), max(1, round(big.height * scale))
        small = big.resize((w, h), Image.Resampling.LANCZOS)
        image.paste(small, (round(x + left * scale), round(baseline + top * scale)), small)

    def _draw_code_point(
        self, image: Image.Image, x: float, baseline: float, piece: Piece, fill: RGB
    ) -> None:
        draw = ImageDraw.Draw(image)
        font = pil_font(embedded_face(), self._frame_size())
        gap = self.size * 0.08
        top, bottom = baseline - self.size * 0.72, baseline + self.size * 0.06
        draw.rounded_rectangle(
            (x + gap, top, x + piece.width - gap, bottom),
            radius=self.size * 0.12,
            outline=fill,
            width=max(1, round(self.size * 0.05)),
        )
        draw.text(
            (x + piece.width / 2, (top + bottom) / 2), piece.text, font=font, fill=fill, anchor="mm"
        )


def split_clusters(text: str) -> list[str]:
    """Characters with what attaches to them: combining marks, joiners, selectors, flag pairs."""
    clusters: list[str] = []
    glue = False
    for c in text:
        cp = ord(c)
        attaches = cp in _JOINERS or unicodedata.category(c) in ("Mn", "Me", "Mc")
        second_flag = (
            0x1F1E6 <= cp <= 0x1F1FF
            and bool(clusters)
            and len(clusters[-1]) == 1
            and 0x1F1E6 <= ord(clusters[-1]) <= 0x1F1FF
        )
        if clusters and (attaches or glue or second_flag):
            clusters[-1] += c
        else:
            clusters.append(c)
        glue = cp == 0x200D
    return clusters


def fold_to_ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text).translate(ASCII_FALLBACKS)
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


def cjk_language(text: str) -> str:
    """zh, ja or ko: which way Han characters should look, judged from kana and Hangul."""
    for c in text:
        cp = ord(c)
        if 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF:
            return "ja"
        if 0xAC00 <= cp <= 0xD7AF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F:
            return "ko"
    return "zh"


def _invisible(c: str) -> bool:
    # Shaping hides these when a font lacks them, so they never decide which font draws a word.
    return ord(c) in _JOINERS or unicodedata.category(c) == "Cf"


def _wants_emoji(cluster: str) -> bool:
    # Pictographs, and text symbols asked for in emoji style (U+FE0F) or joined into a sequence.
    return any(ord(c) >= 0x1F000 or ord(c) in (0xFE0F, 0x200D) for c in cluster)

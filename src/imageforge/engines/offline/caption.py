"""The caption band: a small label line and the prompt, wrapped to fit, in any script."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

from PIL import Image, ImageDraw

from imageforge.engines.offline.fonts import embedded_face, pil_font
from imageforge.engines.offline.lettering import Lettering, Piece, split_clusters
from imageforge.engines.offline.style import CAPTION_SOURCE_CHARS, WHITE, Palette, mix

ELLIPSIS = "…"
#: Categories drawn as a space: controls, surrogates, and space, line and paragraph separators.
_BLANKS = frozenset({"Cc", "Cs", "Zs", "Zl", "Zp"})

# --------------------------------------------------------------------------------------------
# Caption band
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    """A piece of the prompt a line may break before; `spaced`: a space separates it from the
    word before (CJK text breaks between characters, with no space)."""

    text: str
    spaced: bool


@dataclass(frozen=True)
class Caption:
    size: int
    lettering: Lettering
    label_size: int
    label: str
    lines: list[list[Word]]
    top: int
    pad: int
    label_height: int
    line_height: int

    def line_texts(self) -> list[str]:
        return [_joined(line) for line in self.lines]

    def pieces(self) -> list[Piece]:
        """Every piece the prompt lines are drawn with, in order."""
        return [p for line in self.lines for word in line for p in self.lettering.pieces(word.text)]


def layout_caption(
    prompt: str,
    width: int,
    height: int,
    tier: str,
    refs: int,
    font_files: tuple[str, ...] = (),
) -> Caption:
    """`tier` is what the caption names beside the size: the quality, or the resolution tier.
    `font_files` are tried before any font found on the machine (see `fonts`)."""
    # Text scales with the picture's area, but never so big that a 3:1 strip is all caption.
    size = max(14, min(round(0.03 * math.sqrt(width * height)), round(height * 0.05)))
    label_size = max(10, round(size * 0.58))
    source = _drawable(prompt[:CAPTION_SOURCE_CHARS])
    lettering = Lettering.for_text(source, size, font_files)
    pad = round(size * 0.75)
    max_lines = 2 if height * 2 <= width else 3
    clipped = len(prompt) > CAPTION_SOURCE_CHARS
    lines = _wrap(_words(source), lettering, width - 2 * pad, max_lines, clipped)
    label = _label(label_size, width - 2 * pad, f"{width} x {height}", tier.upper(), refs)
    label_height = round(label_size * 1.9)
    line_height = round(size * 1.3)
    band = 2 * pad + label_height + line_height * len(lines) - round(size * 0.25)
    return Caption(
        size=size,
        lettering=lettering,
        label_size=label_size,
        label=label,
        lines=lines,
        top=height - band,
        pad=pad,
        label_height=label_height,
        line_height=line_height,
    )


def _label(size: int, max_width: int, dimensions: str, tier: str, refs: int) -> str:
    # Narrow portraits cannot fit the long form; drop words rather than shrink the type. The
    # label is ASCII and a middle dot: the embedded font always has them.
    font = pil_font(embedded_face(), size)
    plural = "S" if refs > 1 else ""
    long_refs = [f"{refs} REFERENCE{plural}"] if refs else []
    short_refs = [f"{refs} REF{plural}"] if refs else []
    candidates = [
        ["IMAGEFORGE OFFLINE PREVIEW", dimensions, tier, *long_refs],
        ["OFFLINE PREVIEW", dimensions, tier, *short_refs],
        ["OFFLINE", dimensions, tier, *short_refs],
    ]
    for parts in candidates:
        label = "  ·  ".join(parts)
        if font.getlength(label) <= max_width:
            return label
    while label and font.getlength(label + ELLIPSIS) > max_width:
        label = label[:-1]
    return label.rstrip() + ELLIPSIS


def _drawable(text: str) -> str:
    # Composed form, so an accent typed as a combining mark finds the precomposed glyph fonts
    # have. Controls, lone surrogates and separators become spaces; format characters (the
    # joiners and selectors emoji sequences are made of) stay, and so do unassigned and
    # private-use code points, which are drawn as their code points.
    composed = unicodedata.normalize("NFC", text)
    return "".join(" " if unicodedata.category(c) in _BLANKS else c for c in composed)


def _breaks_anywhere(cluster: str) -> bool:
    # Chinese and Japanese break between any two characters; so do emoji.
    return unicodedata.east_asian_width(cluster[0]) in ("W", "F")


def _words(text: str) -> list[Word]:
    words: list[Word] = []
    for chunk in text.split():
        spaced = True
        current = ""
        for cluster in split_clusters(chunk):
            category = unicodedata.category(cluster[0])
            if not _breaks_anywhere(cluster):
                if current and _breaks_anywhere(current[-1]):
                    words.append(Word(current, spaced))
                    current, spaced = "", False
                current += cluster
            elif category in ("Pe", "Pf", "Po") and (current or words):
                # Closing punctuation (。，」) never starts a line: it stays with what it closes.
                current += cluster
            else:
                if current and unicodedata.category(current[-1]) not in ("Ps", "Pi"):
                    words.append(Word(current, spaced))
                    current, spaced = "", False
                current += cluster
        if current:
            words.append(Word(current, spaced))
    return words


def _wrap(
    words: list[Word], lettering: Lettering, max_width: int, max_lines: int, clipped: bool
) -> list[list[Word]]:
    """Greedy wrap; over-long words break anywhere; overflow ends in an ellipsis."""
    lines: list[list[Word]] = []
    current: list[Word] = []
    overflow = False
    for word in words:
        if _width([*current, word], lettering) <= max_width:
            current.append(word)
            continue
        if current:
            lines.append(current)
        current = [Word(word.text, False)]
        while lettering.measure(current[0].text) > max_width and len(lines) < max_lines:
            head, tail = _fitting_prefix(current[0].text, lettering, max_width)
            lines.append([Word(head, False)])
            current = [Word(tail, False)] if tail else []
        if len(lines) >= max_lines and current:
            overflow = True
            break
    if current and not overflow:
        lines.append(current)
    if len(lines) > max_lines:
        lines, overflow = lines[:max_lines], True
    if (overflow or clipped) and lines:
        lines[-1] = _with_ellipsis(lines[-1], lettering, max_width)
    return lines


def _width(line: list[Word], lettering: Lettering) -> float:
    gaps = sum(1 for i, word in enumerate(line) if i and word.spaced)
    return sum(lettering.measure(word.text) for word in line) + gaps * lettering.space


def _joined(line: list[Word]) -> str:
    return "".join((" " if i and word.spaced else "") + word.text for i, word in enumerate(line))


def _fitting_prefix(word: str, lettering: Lettering, max_width: int) -> tuple[str, str]:
    clusters = split_clusters(word)
    lo, hi = 1, len(clusters)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if lettering.measure("".join(clusters[:mid])) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return "".join(clusters[:lo]), "".join(clusters[lo:])


def _with_ellipsis(line: list[Word], lettering: Lettering, max_width: int) -> list[Word]:
    line = list(line)
    while line:
        last = line[-1]
        candidate = [*line[:-1], Word(last.text + ELLIPSIS, last.spaced)]
        if _width(candidate, lettering) <= max_width:
            return candidate
        clusters = split_clusters(last.text)
        if len(clusters) > 1:
            line[-1] = Word("".join(clusters[:-1]).rstrip(), last.spaced)
        else:
            line.pop()
    return [Word(ELLIPSIS, False)]


def paint_caption(image: Image.Image, caption: Caption, palette: Palette) -> None:
    width, height = image.size
    box = (0, caption.top, width, height)
    shade = Image.new("RGB", (width, height - caption.top), palette.band)
    image.paste(Image.blend(image.crop(box), shade, 0.8), box[:2])
    draw = ImageDraw.Draw(image)
    rule = max(2, round(caption.size * 0.08))
    draw.rectangle((0, caption.top, width, caption.top + rule - 1), fill=palette.accent)
    y = caption.top + caption.pad
    label_font = pil_font(embedded_face(), caption.label_size)
    draw.text((caption.pad, y), caption.label, font=label_font, fill=palette.accent)
    y += caption.label_height
    ink = mix(WHITE, palette.sky_horizon, 0.08)
    lettering = caption.lettering
    # Every face sits on one baseline, placed where the embedded font's letters sat before.
    ascent = pil_font(embedded_face(), caption.size).getmetrics()[0]
    for line in caption.lines:
        x: float = caption.pad
        for i, word in enumerate(line):
            if i and word.spaced:
                x += lettering.space
            x = lettering.draw(image, x, y + ascent, word.text, ink)
        y += caption.line_height

"""The caption band: a small label line and the prompt, wrapped to fit."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from imageforge.engines.offline.style import (
    ASCII_FALLBACKS,
    CAPTION_SOURCE_CHARS,
    WHITE,
    Font,
    Palette,
    mix,
)

# --------------------------------------------------------------------------------------------
# Caption band
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caption:
    size: int
    font: Font
    label_font: Font
    label: str
    lines: list[str]
    top: int
    pad: int
    label_height: int
    line_height: int


def layout_caption(prompt: str, width: int, height: int, tier: str, refs: int) -> Caption:
    """`tier` is what the caption names beside the size: the quality, or the resolution tier."""
    # Text scales with the picture's area, but never so big that a 3:1 strip is all caption.
    size = max(14, min(round(0.03 * math.sqrt(width * height)), round(height * 0.05)))
    label_size = max(10, round(size * 0.58))
    font, label_font = _font(size), _font(label_size)
    pad = round(size * 0.75)
    max_lines = 2 if height * 2 <= width else 3
    lines = _wrap(prompt, font, width - 2 * pad, max_lines)
    label = _label(label_font, width - 2 * pad, f"{width} x {height}", tier.upper(), refs)
    label_height = round(label_size * 1.9)
    line_height = round(size * 1.3)
    band = 2 * pad + label_height + line_height * len(lines) - round(size * 0.25)
    return Caption(
        size=size,
        font=font,
        label_font=label_font,
        label=label,
        lines=lines,
        top=height - band,
        pad=pad,
        label_height=label_height,
        line_height=line_height,
    )


def _label(font: Font, max_width: int, size: str, tier: str, refs: int) -> str:
    # Narrow portraits cannot fit the long form; drop words rather than shrink the type.
    plural = "S" if refs > 1 else ""
    long_refs = [f"{refs} REFERENCE{plural}"] if refs else []
    short_refs = [f"{refs} REF{plural}"] if refs else []
    candidates = [
        ["IMAGEFORGE OFFLINE PREVIEW", size, tier, *long_refs],
        ["OFFLINE PREVIEW", size, tier, *short_refs],
        ["OFFLINE", size, tier, *short_refs],
    ]
    for parts in candidates:
        label = "  ·  ".join(parts)
        if font.getlength(label) <= max_width:
            return label
    return _wrap(label, font, max_width, 1)[0]


def _font(size: int) -> Font:
    # Pillow >= 10.1 embeds a scalable font (Aileron) and needs no font file on disk.
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: Font, max_width: int, max_lines: int) -> list[str]:
    """Greedy word wrap; over-long words break anywhere; overflow ends in an ellipsis."""
    clipped = len(text) > CAPTION_SOURCE_CHARS
    words = _drawable(text[:CAPTION_SOURCE_CHARS]).split()
    lines: list[str] = []
    current = ""
    overflow = False
    for word in words:
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        while font.getlength(current) > max_width and len(lines) < max_lines:
            cut = _fitting_prefix(current, font, max_width)
            lines.append(current[:cut])
            current = current[cut:]
        if len(lines) >= max_lines and current:
            overflow = True
            break
    if current and not overflow:
        lines.append(current)
    if len(lines) > max_lines:
        lines, overflow = lines[:max_lines], True
    if (overflow or clipped) and lines:
        last = lines[-1]
        while last and font.getlength(last + "…") > max_width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
    return lines


def _drawable(text: str) -> str:
    # The embedded font covers little beyond ASCII: fold accents off letters and common
    # punctuation to ASCII so European prompts read correctly. Scripts it lacks entirely (CJK,
    # emoji...) still draw as empty boxes, which at least shows that something was there.
    decomposed = unicodedata.normalize("NFKD", text).translate(ASCII_FALLBACKS)
    return "".join(
        " " if not c.isprintable() else c for c in decomposed if unicodedata.category(c) != "Mn"
    )


def _fitting_prefix(word: str, font: Font, max_width: int) -> int:
    lo, hi = 1, len(word)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(word[:mid]) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def paint_caption(image: Image.Image, caption: Caption, palette: Palette) -> None:
    width, height = image.size
    box = (0, caption.top, width, height)
    shade = Image.new("RGB", (width, height - caption.top), palette.band)
    image.paste(Image.blend(image.crop(box), shade, 0.8), box[:2])
    draw = ImageDraw.Draw(image)
    rule = max(2, round(caption.size * 0.08))
    draw.rectangle((0, caption.top, width, caption.top + rule - 1), fill=palette.accent)
    y = caption.top + caption.pad
    draw.text((caption.pad, y), caption.label, font=caption.label_font, fill=palette.accent)
    y += caption.label_height
    ink = mix(WHITE, palette.sky_horizon, 0.08)
    for line in caption.lines:
        draw.text((caption.pad, y), line, font=caption.font, fill=ink)
        y += caption.line_height

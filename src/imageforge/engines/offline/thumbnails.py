"""Reference images pinned above the caption as framed thumbnails."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageStat

from imageforge.engines.offline.caption import Caption
from imageforge.engines.offline.style import (
    BLACK,
    REFERENCE_FORMATS,
    RGB,
    Palette,
    UndecodableReference,
    mix,
)

# --------------------------------------------------------------------------------------------
# Reference thumbnails
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    rows: int
    cols: int
    #: Outer side of one framed thumbnail, and the picture inside the frame.
    cell: int
    inner: int
    gap: int
    left: int
    bottom: int


def layout_thumbnails(count: int, width: int, height: int, caption: Caption) -> _Grid:
    gap = max(4, round(min(width, height) * 0.012))
    left, bottom = caption.pad, caption.top - caption.pad // 2
    if count == 0:
        return _Grid(rows=0, cols=0, cell=0, inner=0, gap=gap, left=left, bottom=bottom)
    avail_w = width - 2 * left
    # Keep at least the top 30% of the picture free of thumbnails, whatever the aspect.
    avail_h = min(0.32 * height, bottom - 0.3 * height)
    biggest = min(width, height) * 0.2
    best = (0.0, 1, count)
    for rows in range(1, count + 1):
        cols = math.ceil(count / rows)
        side = min(
            (avail_w - (cols - 1) * gap) / cols,
            (avail_h - (rows - 1) * gap) / rows,
            biggest,
        )
        if side > best[0]:
            best = (side, rows, cols)
    side, rows, cols = best
    cell = max(8, math.floor(side))
    frame = max(2, round(cell * 0.035))
    return _Grid(
        rows=rows, cols=cols, cell=cell, inner=cell - 2 * frame, gap=gap, left=left, bottom=bottom
    )


def decode_reference(data: bytes, index: int, side: int) -> Image.Image:
    side = max(1, side)
    try:
        with Image.open(io.BytesIO(data), formats=REFERENCE_FORMATS) as source:
            # JPEG can decode at 1/2, 1/4 or 1/8 scale for free; we only need a thumbnail.
            source.draft("RGB", (side, side))
            if source.mode in ("RGBA", "LA", "PA") or "transparency" in source.info:
                rgba = source.convert("RGBA")
                picture = Image.new("RGB", rgba.size, (232, 232, 232))
                picture.paste(rgba, (0, 0), rgba)
            else:
                picture = source.convert("RGB")
    except Exception as exc:  # Pillow signals bad data with many types (OSError, SyntaxError...)
        raise UndecodableReference(f"reference image {index} could not be decoded") from exc
    w, h = picture.size
    crop = min(w, h)
    box = ((w - crop) / 2, (h - crop) / 2, (w + crop) / 2, (h + crop) / 2)
    return picture.resize((side, side), Image.Resampling.LANCZOS, box=box, reducing_gap=2.0)


def average_colour(thumbs: Sequence[Image.Image]) -> RGB | None:
    if not thumbs:
        return None
    means = [ImageStat.Stat(thumb).mean for thumb in thumbs]
    r, g, b = (round(sum(m[c] for m in means) / len(means)) for c in range(3))
    return (r, g, b)


def paint_thumbnails(
    image: Image.Image, thumbs: Sequence[Image.Image], grid: _Grid, palette: Palette
) -> None:
    if not thumbs:
        return
    draw = ImageDraw.Draw(image)
    shadow = mix(palette.band, BLACK, 0.5)
    offset = max(2, grid.cell // 40)
    frame = (grid.cell - grid.inner) // 2
    top = grid.bottom - grid.rows * grid.cell - (grid.rows - 1) * grid.gap
    for i, thumb in enumerate(thumbs):
        row, col = divmod(i, grid.cols)
        x = grid.left + col * (grid.cell + grid.gap)
        y = top + row * (grid.cell + grid.gap)
        draw.rectangle(
            (x + offset, y + offset, x + grid.cell + offset - 1, y + grid.cell + offset - 1),
            fill=shadow,
        )
        draw.rectangle((x, y, x + grid.cell - 1, y + grid.cell - 1), fill=(246, 244, 238))
        image.paste(thumb, (x + frame, y + frame))

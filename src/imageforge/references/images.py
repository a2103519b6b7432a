"""Checking untrusted image bytes: a format allow-list and a pixel limit before any decode,
then one full decode, reduced on the way to the size the task needs.

No engine needs a reference larger than the image it makes: its thumbnails, its starting
image, its upload are all at most that. So a reference bigger than what covers the task's
`fit` (its width × height) is decoded at a reduced scale where the format allows it (JPEG's
draft mode decodes at 1/2, 1/4 or 1/8 for less), resampled to that size and handed on as a
PNG: the engines decode a small image, and the bytes held until the task ends shrink too.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
#: Fast PNG for the reduced images: they live only until the task ends.
_REDUCED_PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class ReferenceImage:
    """A reference image already fetched and checked (format allow-listed, pixels bounded)."""

    url: str
    data: bytes
    #: Pillow format name: "PNG", "JPEG", "WEBP" or "GIF".
    format: str
    width: int
    height: int


class ImageRejected(Exception):
    """The bytes are not an image we accept; `reason` says why, for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Inspected:
    """What an image's header says, checked, and what decoding it will cost."""

    format: str
    width: int
    height: int
    #: Pixels the decode holds at once: the draft scale's for JPEG, the whole image otherwise.
    decoded_pixels: int


# `warnings.catch_warnings` swaps process-global filter state, so two threads using it at once
# can leave each other's filter installed or removed. Only headers are read under it (the
# decompression-bomb warning comes from `Image.open`): short, so serialising costs nothing.
_HEADER_LOCK = threading.Lock()


def cover_size(width: int, height: int, fit: tuple[int, int] | None) -> tuple[int, int]:
    """The smallest size of the image's aspect that still covers `fit`, never larger than
    the image itself (None: the image's own size)."""
    if fit is None:
        return width, height
    scale = max(fit[0] / width, fit[1] / height)
    if scale >= 1:
        return width, height
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def inspect_image(data: bytes, max_pixels: int, fit: tuple[int, int] | None) -> Inspected:
    """Format and size of `data` from its header, checked against the allow-list and
    `max_pixels`, without decoding the pixels; raises ImageRejected."""
    with _HEADER_LOCK, warnings.catch_warnings(), _rejecting():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # `formats=` keeps every other Pillow parser away from untrusted bytes.
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            # A JPEG carrying an MPO index is still a JPEG to everyone downstream.
            fmt = "JPEG" if image.format == "MPO" else str(image.format)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(f"image is {width}x{height}, more than {max_pixels} pixels")
            # verify() checks what it can without decoding (PNG's chunk checksums) and
            # leaves the image unusable: the size of the decode needs a fresh open.
            image.verify()
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            image.draft(image.mode, cover_size(width, height, fit))
            decoded = image.size
    if fmt not in ALLOWED_FORMATS:
        raise ImageRejected(f"image format {fmt} is not allowed")
    return Inspected(fmt, width, height, decoded[0] * decoded[1])


def decode_image(
    data: bytes, inspected: Inspected, fit: tuple[int, int] | None
) -> tuple[bytes, str, int, int]:
    """Decode the first frame fully (which is what catches truncation), at a reduced scale
    when `fit` needs less than the image; → (bytes, format, width, height): `data` itself
    when the image is no larger than `fit` needs, otherwise a PNG of the reduced image.
    Raises ImageRejected. Holds about `inspected.decoded_pixels` pixels while it runs."""
    size = (inspected.width, inspected.height)
    target = cover_size(*size, fit)
    with _rejecting(), Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
        image.draft(image.mode, target)
        image.load()
        if target == size:
            return data, inspected.format, *size
        reduced = _plain_mode(image).resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    reduced.save(out, format="PNG", compress_level=_REDUCED_PNG_COMPRESS_LEVEL)
    return out.getvalue(), "PNG", *target


def _plain_mode(image: Image.Image) -> Image.Image:
    """The image in a mode Lanczos resamples and PNG stores: palettes, bilevel, CMYK and
    16-bit become RGB, or RGBA where they carry transparency."""
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    transparent = image.mode == "PA" or "transparency" in image.info
    return image.convert("RGBA" if transparent else "RGB")


@contextlib.contextmanager
def _rejecting() -> Iterator[None]:
    """Every way Pillow fails on untrusted bytes, as ImageRejected."""
    try:
        yield
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected(f"not a {', '.join(ALLOWED_FORMATS)} image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("image declares too many pixels (decompression bomb)") from None
    except Exception as exc:
        # Pillow raises OSError, SyntaxError, ValueError, struct.error, zlib.error... and
        # every one of them means the same thing here.
        raise ImageRejected(f"image is corrupt or truncated ({exc})") from None

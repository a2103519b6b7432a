"""Checking untrusted image bytes: a format allow-list and a pixel limit before any decode."""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


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


# `warnings.catch_warnings` swaps process-global filter state, so two threads using it at once
# can leave each other's filter installed or removed. Decodes are CPU-bound and short; serialise.
_DECODE_LOCK = threading.Lock()


def check_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Format, width and height of `data`, fully decoded once; raises ImageRejected."""
    with _DECODE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            # `formats=` keeps every other Pillow parser away from untrusted bytes.
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
                # A JPEG carrying an MPO index is still a JPEG to everyone downstream.
                fmt = "JPEG" if image.format == "MPO" else str(image.format)
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageRejected(f"image is {width}x{height}, more than {max_pixels} pixels")
                image.verify()
            # verify() leaves the image unusable and checks little outside PNG; a full decode
            # of the first frame is what catches truncation.
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
                image.load()
        except ImageRejected:
            raise
        except UnidentifiedImageError:
            raise ImageRejected(f"not a {', '.join(ALLOWED_FORMATS)} image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRejected("image declares too many pixels (decompression bomb)") from None
        except Exception as exc:
            # Untrusted bytes: Pillow raises OSError, SyntaxError, ValueError, struct.error,
            # zlib.error... and every one of them means the same thing here.
            raise ImageRejected(f"image is corrupt or truncated ({exc})") from None
    if fmt not in ALLOWED_FORMATS:
        raise ImageRejected(f"image format {fmt} is not allowed")
    return fmt, width, height

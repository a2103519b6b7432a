"""The worker's check of an engine's image before it is stored: it must decode.

An engine is trusted to say what it made, not to be right about it: a truncated answer, bytes
of another format than the declared content type, or a size other than the declared one
would otherwise complete the task and fail only later, when a client or the OpenAI route
decodes it. The header is checked first (format and size: no pixel is decoded for those).
Then a PNG is verified, not decoded: `verify()` reads every chunk to IEND and checks its
CRC, which catches truncation and damaged bytes for 0.06 ms at 1024x1024 and 0.2 ms at 4K,
where decoding takes 10 and 78 ms (the offline engine renders those in 80 and 290 ms). What
it cannot catch, valid chunks around a wrong compressed stream, takes a broken encoder
rather than a broken transfer. JPEG and WebP have no such checksums (Pillow's `verify()`
does nothing for them), so they are decoded once, in full: what catches their truncation.
"""

from __future__ import annotations

import asyncio
import io

from PIL import Image, UnidentifiedImageError

from imageforge.engines import EngineError, GeneratedImage
from imageforge.engines.base import IMAGE_CONTENT_TYPES

#: The content types an engine may return, as Pillow's format names (a JPEG with an MPO
#: index opens as MPO, through the JPEG parser).
FORMATS = {content_type: name for name, content_type in IMAGE_CONTENT_TYPES.items()}
#: Images of at most this many declared pixels are checked on the event loop: handing a
#: tiny image to a thread costs more than checking it; a 4K JPEG takes tens of ms.
INLINE_PIXELS = 256 * 256


class InvalidEngineImage(EngineError):
    """The engine's image does not decode as what it was declared to be. An engine fault
    like any other: retried while attempts remain, then failed (and refunded)."""

    code = "invalid_engine_image"

    def __init__(self, reason: str) -> None:
        super().__init__(f"the engine returned an unusable image: {reason}", retryable=True)


async def check_engine_image(image: GeneratedImage) -> None:
    """Raise `InvalidEngineImage` unless `image` decodes, in its declared format and size."""
    if image.width * image.height <= INLINE_PIXELS:
        check_image_bytes(image)
    else:
        await asyncio.to_thread(check_image_bytes, image)


def check_image_bytes(image: GeneratedImage) -> None:
    """`check_engine_image`, synchronously."""
    expected = FORMATS.get(image.content_type)
    if expected is None:
        raise InvalidEngineImage(f"content type {image.content_type!r} is not PNG, JPEG or WebP")
    declared = (image.width, image.height)
    try:
        # `formats=` restricts the parsers to the declared one: other bytes do not open.
        with Image.open(io.BytesIO(image.data), formats=(expected,)) as opened:
            if opened.size != declared:
                raise InvalidEngineImage(
                    f"it is {opened.width}x{opened.height}, declared {image.width}x{image.height}"
                )
            if expected == "PNG":
                opened.verify()
            else:
                opened.load()
    except InvalidEngineImage:
        raise
    except UnidentifiedImageError:
        raise InvalidEngineImage(f"the data is not a {image.content_type} image") from None
    except Exception as exc:
        # Pillow raises OSError, SyntaxError, ValueError, struct.error, zlib.error,
        # DecompressionBombError... and every one of them means the same thing here.
        raise InvalidEngineImage(f"it is corrupt or truncated ({exc})") from None

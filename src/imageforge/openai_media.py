"""The OpenAI routes' image bytes: uploads checked and stored, outputs re-encoded and masked.

Uploads are judged like reference images (`references.images`: the format allow-list and
the pixel limit, from the header) and written through the storage interface under their
content's key (`references.stored`). Outputs are the stored image as the request asked for
it: another format or compression, a mask applied. Pillow work blocks: run it in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageOps

from imageforge.errors import InvalidRequest
from imageforge.references.images import ImageRejected, inspect_image
from imageforge.references.stored import stored_reference, upload_content_type, upload_key
from imageforge.storage.base import Storage

#: Pillow's name of each output format, and its media type.
_PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_FORMAT_OF_TYPE = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


@dataclass(frozen=True)
class Upload:
    """An uploaded image, checked: its bytes and what Pillow read from its header."""

    data: bytes
    format: str
    width: int
    height: int


def check_upload(field: str, data: bytes, *, max_pixels: int) -> Upload:
    """Raise a 400 naming `field` unless `data` is a PNG, JPEG, WebP or GIF image of at
    most `max_pixels` (the reference rules), judged from its header and what can be
    verified without decoding (PNG's checksums). The pixels are decoded by the worker,
    within its process's decoding budget, which fails the task (refunded) on a truncated
    image: decoding here would let concurrent uploads hold any amount of memory.
    Blocking: call it in a thread."""
    if not data:
        raise InvalidRequest(f"{field}: the file is empty", param=field, code="invalid_image")
    try:
        inspected = inspect_image(data, max_pixels, None)
    except ImageRejected as rejected:
        raise InvalidRequest(
            f"{field}: {rejected.reason}", param=field, code="invalid_image"
        ) from None
    return Upload(data, inspected.format, inspected.width, inspected.height)


def check_mask(mask: Upload, first: Upload) -> None:
    """OpenAI's mask rules: a PNG with an alpha channel, the size of the first image."""
    if mask.format != "PNG":
        raise InvalidRequest(
            f"mask: must be a PNG with an alpha channel (got {mask.format})",
            param="mask",
            code="invalid_mask",
        )
    with Image.open(io.BytesIO(mask.data)) as image:
        has_alpha = "A" in image.getbands() or "transparency" in image.info
    if not has_alpha:
        raise InvalidRequest(
            "mask: must have an alpha channel (its transparent areas are what is edited)",
            param="mask",
            code="invalid_mask",
        )
    if (mask.width, mask.height) != (first.width, first.height):
        raise InvalidRequest(
            f"mask: must be the size of image[0], {first.width}x{first.height} "
            f"(got {mask.width}x{mask.height})",
            param="mask",
            code="invalid_mask",
        )


def upload_references(uploads: Sequence[Upload]) -> tuple[str, ...]:
    """The tasks' `image_urls` entries naming the uploads, once `store_uploads` wrote them."""
    return tuple(stored_reference(upload_key(upload.data, upload.format)) for upload in uploads)


async def store_uploads(
    storage: Storage, uploads: Sequence[Upload], *, retention_seconds: float, now: float
) -> None:
    """Write the uploads through the storage interface, where any worker reads them back.

    Same bytes, same key. One already stored is not written again while it is young (a
    rewrite could be read half-written by a worker using it); past half its retention it is,
    so that its age restarts before the janitor takes it from the new tasks."""
    for upload in uploads:
        key = upload_key(upload.data, upload.format)
        stored = await storage.open(key)
        if stored is not None and stored.modified_at > now - retention_seconds / 2:
            continue
        await storage.put(key, upload.data, upload_content_type(upload.format))


def mask_digest(mask: Upload) -> str:
    return hashlib.sha256(mask.data).hexdigest()


def stored_format(content_type: str | None) -> str:
    """The OpenAI `output_format` name of a stored image's media type."""
    return _FORMAT_OF_TYPE.get(content_type or "", "png")


@dataclass(frozen=True)
class MaskedEdit:
    """Where a generated image goes: inside the mask's transparent areas, over image[0]."""

    original: bytes
    mask: bytes


def render_image(
    data: bytes,
    content_type: str | None,
    *,
    output_format: str,
    compression: int,
    masked: MaskedEdit | None = None,
) -> bytes:
    """The generated image as the request asked for it: its mask applied, in its output
    format and compression. The stored bytes themselves when nothing changes. Blocking."""
    if masked is None and stored_format(content_type) == output_format and compression == 100:
        return data
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    if masked is not None:
        with Image.open(io.BytesIO(masked.original)) as original_file:
            original = original_file.convert("RGB").resize(image.size, Image.Resampling.LANCZOS)
        with Image.open(io.BytesIO(masked.mask)) as mask_file:
            alpha = mask_file.convert("RGBA").getchannel("A")
        # Transparent (alpha 0) is where the edit goes; opaque keeps the original.
        edit_area = ImageOps.invert(alpha.resize(image.size, Image.Resampling.LANCZOS))
        image = Image.composite(image, original, edit_area)
    out = io.BytesIO()
    pillow_format = _PILLOW_FORMATS[output_format]
    if pillow_format == "PNG":
        image.save(out, format="PNG")
    else:
        image.save(out, format=pillow_format, quality=max(1, compression))
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

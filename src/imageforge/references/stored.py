"""References a client uploaded (the OpenAI edits route) rather than linked to.

The upload is written through the storage interface, so any worker reads it back; the
task names it in `image_urls` as `storage:<key>`. No client can send such a reference
itself: the create rules accept only http and https URLs (catalog.py), and the stored
ones are added by the server after it has checked and written the bytes.

Keys are the bytes' SHA-256 under `uploads/`: a retry of the same request names the same
keys, so an Idempotency-Key replay matches, and the same image uploaded twice is stored once.
"""

from __future__ import annotations

import hashlib

STORED_SCHEME = "storage:"
UPLOAD_PREFIX = "uploads/"

_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}
_CONTENT_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}


def upload_key(data: bytes, image_format: str) -> str:
    """Where an uploaded image of Pillow format `image_format` is stored."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{UPLOAD_PREFIX}{digest}.{_EXTENSIONS[image_format]}"


def upload_content_type(image_format: str) -> str:
    return _CONTENT_TYPES[image_format]


def stored_reference(key: str) -> str:
    """The `image_urls` entry of a reference stored under `key`."""
    return f"{STORED_SCHEME}{key}"


def stored_key(reference: str) -> str | None:
    """The storage key a reference names, or None for a URL to fetch."""
    if reference.startswith(STORED_SCHEME):
        return reference[len(STORED_SCHEME) :]
    return None

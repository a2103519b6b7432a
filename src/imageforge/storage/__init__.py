"""Where image bytes live: local disk by default, behind the `Storage` interface."""

from __future__ import annotations

from imageforge.storage.base import Storage, StoredImage, check_key, is_image_key
from imageforge.storage.local import LocalStorage
from imageforge.storage.signing import UrlSigner, load_or_create_secret

__all__ = [
    "LocalStorage",
    "Storage",
    "StoredImage",
    "UrlSigner",
    "check_key",
    "is_image_key",
    "load_or_create_secret",
]

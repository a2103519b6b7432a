"""Where image bytes live: local disk by default."""

from __future__ import annotations

from imageforge.storage.base import Storage
from imageforge.storage.local import LocalStorage
from imageforge.storage.signing import UrlSigner, load_or_create_secret

__all__ = ["LocalStorage", "Storage", "UrlSigner", "load_or_create_secret"]

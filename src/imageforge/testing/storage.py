"""Image storage in memory: the `Storage` fake, for tests of what sits on top of it."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from imageforge.storage.base import READ_CHUNK_BYTES, StoredImage, check_key
from imageforge.storage.signing import UrlSigner


@dataclass(frozen=True)
class _Entry:
    data: bytes
    content_type: str
    modified_at: float


class MemoryStorage:
    """Holds images in a dict. `clock` stamps each write, so a test can age images
    (`storage.clock = lambda: time.time() + 7200`); links are signed like the local
    backend's and served by the API's /files route."""

    def __init__(
        self, signer: UrlSigner | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.signer = signer or UrlSigner(secrets.token_bytes(32))
        self.clock = clock
        self.closed = False
        self._entries: dict[str, _Entry] = {}

    def keys(self) -> set[str]:
        """Every key stored now (for assertions)."""
        return set(self._entries)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        check_key(key)
        await asyncio.sleep(0)  # a real write yields to the loop; so does this one
        self._entries[key] = _Entry(bytes(data), content_type, self.clock())

    async def open(self, key: str) -> StoredImage | None:
        entry = self._entries.get(key)
        if entry is None:
            return None

        async def read(start: int, end: int) -> AsyncIterator[bytes]:
            for offset in range(start, end, READ_CHUNK_BYTES):
                yield entry.data[offset : min(offset + READ_CHUNK_BYTES, end)]

        return StoredImage(
            key=key,
            size=len(entry.data),
            content_type=entry.content_type,
            modified_at=entry.modified_at,
            etag=f'"{hashlib.sha256(entry.data).hexdigest()[:32]}"',
            _read=read,
        )

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def list(self, prefix: str, *, older_than: float | None = None) -> AsyncIterator[str]:
        snapshot = sorted(
            key
            for key, entry in self._entries.items()
            if key.startswith(prefix) and (older_than is None or entry.modified_at <= older_than)
        )
        for key in snapshot:
            yield key

    def url_for(self, key: str, *, base_url: str, expires: int) -> str:
        return self.signer.files_url(key, base_url=base_url, expires=expires)

    async def aclose(self) -> None:
        self.closed = True

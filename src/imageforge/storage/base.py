"""The storage interface: image bytes in, signed expiring links out."""

from __future__ import annotations

from typing import Protocol


class Storage(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store durably; when this returns, the bytes survive a crash."""
        ...

    async def delete(self, key: str) -> None: ...

    def url_for(self, key: str, *, base_url: str, expires: int) -> str:
        """An absolute link that needs no API key and stops working at `expires`."""
        ...

    async def aclose(self) -> None: ...

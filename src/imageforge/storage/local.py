"""Images on local disk under the data dir, served by the API's /files route."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

from imageforge.storage.signing import UrlSigner

FILES_PREFIX = "/files/"


class LocalStorage:
    def __init__(self, root: Path, signer: UrlSigner) -> None:
        self.root = root.resolve()
        self.signer = signer
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path | None:
        """The file for a key, or None if the key would escape the root."""
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            return None
        return path

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._write_atomically, key, data)

    def _write_atomically(self, key: str, data: bytes) -> None:
        path = self.path_for(key)
        if path is None:
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write, fsync, rename, fsync the directory: readers see the whole file or
        # nothing, and the rename survives a crash before the task is completed.
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def delete(self, key: str) -> None:
        path = self.path_for(key)
        if path is not None:
            await asyncio.to_thread(path.unlink, True)

    def url_for(self, key: str, *, base_url: str, expires: int) -> str:
        signature = self.signer.signature(key, expires)
        return f"{base_url}{FILES_PREFIX}{quote(key)}?expires={expires}&signature={signature}"

    async def aclose(self) -> None:
        return None

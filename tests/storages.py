"""Every storage backend, for the suites that must pass on each (contract, janitor)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from imageforge.storage import LocalStorage, Storage, UrlSigner
from imageforge.testing.storage import MemoryStorage

BACKENDS = ["local", "memory"]
SIGNER = UrlSigner(b"k" * 32)


@dataclass
class Backend:
    storage: Storage
    #: Make the image under a key look written `seconds` ago.
    age: Callable[[str, float], Awaitable[None]]


def make_backend(name: str, tmp_path: Path) -> Backend:
    if name == "local":
        local = LocalStorage(tmp_path / "images", SIGNER)

        async def age_file(key: str, seconds: float) -> None:
            path = local.path_for(key)
            assert path is not None
            then = time.time() - seconds
            os.utime(path, (then, then))

        return Backend(local, age_file)
    memory = MemoryStorage(SIGNER)

    async def age_entry(key: str, seconds: float) -> None:
        image = await memory.open(key)
        assert image is not None
        data = b"".join([chunk async for chunk in image.chunks()])
        real_clock = memory.clock
        memory.clock = lambda: real_clock() - seconds
        try:
            await memory.put(key, data, image.content_type)
        finally:
            memory.clock = real_clock

    return Backend(memory, age_entry)


async def read_all(storage: Storage, key: str) -> bytes | None:
    """The bytes under a key, read through the interface; None when there are none."""
    image = await storage.open(key)
    if image is None:
        return None
    return b"".join([chunk async for chunk in image.chunks()])

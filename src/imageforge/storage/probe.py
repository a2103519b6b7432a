"""The start-up check: can this process write, read and delete images where they live?

Every process runs it before it serves, through the `Storage` interface, so a missing
bucket, refused credentials or an unreachable endpoint stop the start with one clear
sentence instead of failing the first task.
"""

from __future__ import annotations

import uuid

from imageforge.errors import ConfigurationError
from imageforge.storage.base import Storage

#: Probe objects live here, outside the day folders the janitor sweeps.
PROBE_PREFIX = ".imageforge-probe/"
_PROBE_BYTES = b"imageforge start-up check\n"


async def check_storage(storage: Storage, *, location: str, check: str = "start-up check") -> None:
    """Write, read back and delete a probe object; ConfigurationError naming the step
    and what the backend said when any of it fails."""
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}.txt"
    step = "writing"
    try:
        await storage.put(key, _PROBE_BYTES, "text/plain")
        step = "reading"
        image = await storage.open(key)
        data = None if image is None else b"".join([c async for c in image.chunks()])
        if data != _PROBE_BYTES:
            raise OSError("the object just written reads back differently or not at all")
        step = "deleting"
        await storage.delete(key)
    except OSError as exc:
        raise ConfigurationError(
            f"image storage {location} failed its {check} while {step} a probe object: {exc}"
        ) from None

"""The storage interface: image bytes in, signed expiring links out, streamed reads back.

Everything outside a backend (the runtime, the runner, the janitor, the /files route)
uses only `Storage`, so a backend is added without touching its callers. Every
backend passes the contract suite in tests/test_storage_contract.py.

Keys are relative paths of `/`-separated parts, e.g. `2026/11/24/image_…-1.png`;
`check_key` is the rule every backend applies when it writes. `is_image_key` is the
syntax of the keys links are handed out for: the /files route refuses anything else
before a backend is asked. Failures to reach or write the medium raise `OSError` (a
backend maps its own errors to it): the runner treats that as a retryable failure of
the task.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from imageforge.ids import TASK_PREFIX

#: A backend may hand out a link it signed up to this long ago (so it expires this much
#: sooner than asked) instead of signing one per call.
LINK_REUSE_SECONDS = 60

#: Bytes per chunk of a streamed read.
READ_CHUNK_BYTES = 256 * 1024

#: The keys the worker writes images under (`worker.runner.storage_key_for`):
#: `YYYY/MM/DD/<task id>-<attempt>.<extension>`, the task's creation day in UTC. ASCII
#: only, so no other script's digits, no NUL, no separator a filesystem or a bucket
#: could read differently.
IMAGE_KEY = re.compile(
    rf"[0-9]{{4}}/[0-9]{{2}}/[0-9]{{2}}/{re.escape(TASK_PREFIX)}"
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-[0-9]{1,6}\.[a-z0-9]{1,8}"
)


_UNSAFE_KEY_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\\]")


def is_image_key(key: str) -> bool:
    """Whether `key` is of the syntax of the keys links are made for (`IMAGE_KEY`)."""
    return IMAGE_KEY.fullmatch(key) is not None


def content_type_for(key: str) -> str:
    """The media type an image is served with, by its key's extension (as keys are made)."""
    return mimetypes.guess_type(key.rpartition("/")[2])[0] or "application/octet-stream"


def check_key(key: str) -> list[str]:
    """The parts of a key; ValueError for keys that could name something outside the
    storage (absolute, empty, `.`/`..` or empty parts) or that no file or object name
    carries as it is (NUL and other control characters, backslashes)."""
    parts = key.split("/")
    if key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"storage key escapes the storage root: {key!r}")
    if _UNSAFE_KEY_CHARACTERS.search(key):
        raise ValueError(f"storage key has a control character or a backslash: {key!r}")
    return parts


@dataclass(frozen=True)
class StoredImage:
    """One stored image, opened for reading: what it is, and its bytes on demand."""

    key: str
    size: int
    content_type: str
    #: Unix seconds of the write.
    modified_at: float
    #: An HTTP entity tag (quoted) that changes whenever the bytes could have.
    etag: str
    _read: Callable[[int, int], AsyncIterator[bytes]] = field(repr=False)

    def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes from `start` up to `end` (exclusive; default: the end), in chunks.
        Nothing is read until the iterator is; one left unfinished releases what it
        holds when it is closed or collected."""
        return self._read(start, self.size if end is None else min(end, self.size))


class Storage(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store durably under `key` (see `check_key`); when this returns, the bytes
        survive a crash."""
        ...

    async def open(self, key: str) -> StoredImage | None:
        """The image under `key`, or None when there is none (or the key is invalid)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the image; a key with nothing under it is not an error."""
        ...

    def list(self, prefix: str, *, older_than: float | None = None) -> AsyncIterator[str]:
        """Keys starting with `prefix` (at any depth), in key order, of images not
        written after `older_than` (Unix seconds) when it is given. The listing is a
        snapshot: deleting what it yields while iterating is allowed."""
        ...

    def url_for(self, key: str, *, base_url: str, expires: int) -> str:
        """An absolute link that needs no API key and stops working at `expires` (or up
        to `LINK_REUSE_SECONDS` sooner, where a backend reuses links it signed). Called on
        every poll of a completed task: it must cost microseconds and do no I/O."""
        ...

    async def aclose(self) -> None: ...

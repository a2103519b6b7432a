"""Fetch a task's reference images (`image_urls`) without becoming an SSRF proxy.

A reference the client uploaded (`storage:<key>`, see `stored.py`) is read back through
the storage interface instead, and checked and decoded exactly like a fetched one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imageforge.errors import ImageforgeError
from imageforge.references.addresses import AddressPolicy
from imageforge.references.budget import PixelBudget
from imageforge.references.errors import OutboundError
from imageforge.references.images import (
    ImageRejected,
    ReferenceImage,
    decode_image,
    inspect_image,
)
from imageforge.references.outbound import OutboundClient, Timeouts, check_url, display_url
from imageforge.references.stored import stored_key

if TYPE_CHECKING:
    from imageforge.storage.base import Storage

USER_AGENT = "imageforge/0.1 (reference fetcher)"
_HEADERS = {
    "Accept": "image/png, image/jpeg, image/webp, image/gif",
    # The client may be shared (the runtime's), whose own User-Agent is generic.
    "User-Agent": USER_AGENT,
}
# How many references of one task are in flight at once.
_CONCURRENCY = 4
# A socket read may stall this long; the total deadline is what bounds a trickle.
_READ_TIMEOUT_S = 10.0
# Threads that decode references. Few, and the fetcher's own: every thread that decodes
# keeps a malloc arena the size of the largest image it decoded, so decoding on the
# default executor's threads multiplied the memory a process kept (2 tasks x 6 references
# of 49 MP: 1.9 GB peak on 6 threads, against 0.9 GB on 2).
_DECODE_THREADS = 2


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000  # decoded width*height
    #: Decoded pixels all reference decodes of the fetcher hold at once (~4 bytes each).
    max_decoding_pixels: int = 100_000_000
    total_timeout_s: float = 30.0  # per reference, whole fetch incl. redirects
    connect_timeout_s: float = 5.0
    max_redirects: int = 5


class ReferenceFetchError(ImageforgeError):
    """One reference could not be used. `retryable` is True only for transient network trouble.

    `index` counts from 0, as the JSON array does and as the create-time checks report it: the
    first URL is `image_urls[0]`.

    `url` is the display form (credentials removed, trimmed), never the raw input, so the error
    can be logged and shown to the client as is.
    """

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_reference"

    def __init__(self, *, index: int, url: str, reason: str, retryable: bool) -> None:
        self.index = index
        self.reason = reason
        self.retryable = retryable
        if stored_key(url) is not None:
            # Uploaded: the client knows it as the n-th image it sent, not by a URL.
            self.url = "uploaded image"
            super().__init__(f"image[{index}] (uploaded): {reason}", param=f"image[{index}]")
            return
        self.url = display_url(url)
        super().__init__(
            f"image_urls[{index}] ({self.url}): {reason}", param=f"image_urls[{index}]"
        )


class ReferenceFetcher:
    """Downloads and checks references through an `OutboundClient`: the one given (shared
    with callbacks under the same allow-list, and closed by its owner), or one of its own
    for `allowlist`. Its decodes share one `PixelBudget` (`decoding`): a process has one
    fetcher (the runtime's), so the budget bounds the process's reference decoding."""

    def __init__(
        self,
        *,
        allowlist: Sequence[str] = (),
        limits: FetchLimits = FetchLimits(),
        client: OutboundClient | None = None,
        storage: Storage | None = None,
    ) -> None:
        """`storage`: where uploaded references are read back from (None: a stored
        reference fails its task)."""
        self._limits = limits
        self._storage = storage
        self.decoding = PixelBudget(limits.max_decoding_pixels)
        self._decoder = ThreadPoolExecutor(_DECODE_THREADS, thread_name_prefix="reference-decode")
        self._owns_client = client is None
        self._client = client or OutboundClient(AddressPolicy(allowlist), user_agent=USER_AGENT)
        self._timeouts = Timeouts(
            connect=limits.connect_timeout_s,
            read=min(_READ_TIMEOUT_S, limits.total_timeout_s),
            total=limits.total_timeout_s,
        )

    async def aclose(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)
        if self._owns_client:
            await self._client.aclose()

    async def fetch_all(
        self, urls: Sequence[str], *, fit: tuple[int, int] | None = None
    ) -> list[ReferenceImage]:
        """Fetch every reference, in order, each reduced to what covers `fit` (the task's
        width and height; None: as sent). The first failure raises ReferenceFetchError and
        cancels the rest."""
        if not urls:
            return []
        # A URL that is wrong on its face fails the task before anything touches the network.
        for index, url in enumerate(urls):
            if stored_key(url) is not None:
                continue
            try:
                check_url(url)
            except OutboundError as refused:
                raise ReferenceFetchError(
                    index=index, url=url, reason=refused.reason, retryable=False
                ) from None

        gate = asyncio.Semaphore(_CONCURRENCY)

        async def bounded(index: int, url: str) -> ReferenceImage:
            async with gate:
                return await self._fetch_one(index, url, fit)

        tasks = [asyncio.create_task(bounded(index, url)) for index, url in enumerate(urls)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_stored(self, index: int, url: str, key: str) -> bytes:
        """An uploaded reference's bytes, read back through the storage interface."""
        try:
            stored = await self._storage.open(key) if self._storage is not None else None
            if stored is None:
                raise ReferenceFetchError(
                    index=index,
                    url=url,
                    reason="the uploaded image is no longer stored",
                    retryable=False,
                )
            return b"".join([chunk async for chunk in stored.chunks()])
        except OSError as exc:
            raise ReferenceFetchError(
                index=index, url=url, reason=f"storage unavailable ({exc})", retryable=True
            ) from None

    async def _fetch_one(self, index: int, url: str, fit: tuple[int, int] | None) -> ReferenceImage:
        limits = self._limits
        key = stored_key(url)
        if key is not None:
            body, content_encoding = await self._read_stored(index, url, key), None
        else:
            try:
                fetched = await self._client.get(
                    url,
                    max_bytes=limits.max_bytes,
                    timeouts=self._timeouts,
                    headers=_HEADERS,
                    max_redirects=limits.max_redirects,
                )
            except OutboundError as failed:
                raise ReferenceFetchError(
                    index=index, url=url, reason=failed.reason, retryable=failed.retryable
                ) from None
            body, content_encoding = fetched.body, fetched.content_encoding
        try:
            loop = asyncio.get_running_loop()
            inspected = await loop.run_in_executor(
                self._decoder, inspect_image, body, limits.max_pixels, fit
            )
            async with self.decoding.hold(inspected.decoded_pixels):
                data, fmt, width, height = await loop.run_in_executor(
                    self._decoder, decode_image, body, inspected, fit
                )
        except ImageRejected as rejected:
            reason = rejected.reason
            if content_encoding:
                reason += (
                    f" (the body was sent with Content-Encoding: {content_encoding}, "
                    "which is never decoded)"
                )
            raise ReferenceFetchError(
                index=index, url=url, reason=reason, retryable=False
            ) from None
        return ReferenceImage(url=url, data=data, format=fmt, width=width, height=height)

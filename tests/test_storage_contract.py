"""What every storage backend must do: the `Storage` interface, run on each backend."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import pytest

from imageforge.storage.base import LINK_REUSE_SECONDS, READ_CHUNK_BYTES
from tests.storages import SIGNER, Backend, download, link_expiry, read_all

KEY = "2026/11/25/image_00000000-0000-4000-8000-000000000001-1.png"


async def test_put_then_open_streams_the_exact_bytes(backend: Backend) -> None:
    storage = backend.storage
    data = os.urandom(READ_CHUNK_BYTES * 2 + 12_345)
    await storage.put(KEY, data, "image/png")
    image = await storage.open(KEY)
    assert image is not None
    assert (image.key, image.size, image.content_type) == (KEY, len(data), "image/png")
    assert image.etag.startswith('"') and image.etag.endswith('"')
    chunks = [chunk async for chunk in image.chunks()]
    assert len(chunks) > 1 and b"".join(chunks) == data
    assert b"".join([c async for c in image.chunks(10, 20)]) == data[10:20]
    assert b"".join([c async for c in image.chunks(len(data) - 5)]) == data[-5:]
    assert b"".join([c async for c in image.chunks(0, len(data) + 100)]) == data


async def test_a_second_put_replaces_the_bytes(backend: Backend) -> None:
    await backend.storage.put(KEY, b"first", "image/png")
    await backend.storage.put(KEY, b"second", "image/png")
    assert await read_all(backend.storage, KEY) == b"second"


@pytest.mark.parametrize(
    "key",
    ["missing.png", "2026/11/25", "../escape.png", "", "/abs.png", "2026/..\x00/x", "a\x00.png"],
)
async def test_open_of_nothing_or_of_a_bad_key_is_none(backend: Backend, key: str) -> None:
    await backend.storage.put(KEY, b"x", "image/png")
    assert await backend.storage.open(key) is None


@pytest.mark.parametrize("key", ["../escape.png", "/etc/passwd", "a//b.png", "a/./b.png", ""])
async def test_keys_that_leave_the_storage_are_refused(backend: Backend, key: str) -> None:
    with pytest.raises(ValueError, match="escapes the storage root"):
        await backend.storage.put(key, b"x", "image/png")
    assert [k async for k in backend.storage.list("")] == []


@pytest.mark.parametrize("key", ["a\x00b.png", "2026/11/25/x\n.png", "2026\\11.png"])
async def test_keys_no_file_or_object_name_carries_are_refused(backend: Backend, key: str) -> None:
    with pytest.raises(ValueError, match="control character or a backslash"):
        await backend.storage.put(key, b"x", "image/png")
    assert [k async for k in backend.storage.list("")] == []


async def test_delete_removes_and_is_quiet_about_nothing(backend: Backend) -> None:
    storage = backend.storage
    await storage.put(KEY, b"x", "image/png")
    await storage.delete(KEY)
    assert await storage.open(KEY) is None
    await storage.delete(KEY)
    await storage.delete("never/was.png")


async def test_list_by_prefix_at_any_depth_in_key_order(backend: Backend) -> None:
    storage = backend.storage
    keys = ["2026/11/25/b.png", "2026/11/25/a.png", "2026/11/25/deep/c.png", "2026/11/26/d.png"]
    for key in keys:
        await storage.put(key, key.encode(), "image/png")
    assert [k async for k in storage.list("2026/11/25/")] == [
        "2026/11/25/a.png",
        "2026/11/25/b.png",
        "2026/11/25/deep/c.png",
    ]
    assert [k async for k in storage.list("2026/11/25/b")] == ["2026/11/25/b.png"]
    assert [k async for k in storage.list("")] == sorted(keys)
    assert [k async for k in storage.list("2027/")] == []


async def test_list_older_than_leaves_out_recent_images(backend: Backend) -> None:
    storage = backend.storage
    await storage.put("day/old.png", b"o", "image/png")
    cutoff = time.time()
    # Past the backend's resolution, so the next write is dated after the cutoff.
    await asyncio.sleep(backend.timestamp_resolution + 0.05)
    await storage.put("day/new.png", b"n", "image/png")
    assert [k async for k in storage.list("day/", older_than=cutoff)] == ["day/old.png"]
    assert [k async for k in storage.list("day/", older_than=time.time())] == [
        "day/new.png",
        "day/old.png",
    ]
    old = await storage.open("day/old.png")
    assert old is not None and old.modified_at <= cutoff


async def test_deleting_while_listing_is_allowed(backend: Backend) -> None:
    storage = backend.storage
    for n in range(5):
        await storage.put(f"day/{n}.png", b"x", "image/png")
    async for key in storage.list("day/"):
        await storage.delete(key)
    assert [k async for k in storage.list("")] == []


async def test_links_download_without_a_key_and_expire_when_asked(backend: Backend) -> None:
    storage = backend.storage
    data = os.urandom(5_000)
    await storage.put(KEY, data, "image/png")
    expires = int(time.time()) + 3600
    url = httpx.URL(storage.url_for(KEY, base_url="https://img.example.com", expires=expires))
    assert expires - LINK_REUSE_SECONDS <= link_expiry(url) <= expires
    if url.path.startswith("/files/"):
        # Served by the API's /files route, which checks the signature.
        assert (url.scheme, url.host, url.path) == ("https", "img.example.com", f"/files/{KEY}")
        assert SIGNER.is_valid(KEY, expires, url.params["signature"])
        assert not SIGNER.is_valid(KEY, expires + 1, url.params["signature"])
    else:
        # Straight from the bucket, over HTTP, with no credentials.
        response = await download(str(url))
        assert response.status_code == 200, response.text
        assert response.content == data
        assert response.headers["content-type"] == "image/png"

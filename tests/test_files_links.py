"""GET /files/{key}: whatever a link carries, the answer is 403, 404 or 410, never a 500,
and a key that is not one the storage hands out never reaches the storage."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from imageforge.storage import UrlSigner, is_image_key
from imageforge.storage.base import StoredImage
from imageforge.storage.probe import PROBE_PREFIX
from imageforge.testing.storage import MemoryStorage
from imageforge.worker.runner import storage_key_for
from tests.conftest import ApiHarness, make_settings, start_harness
from tests.test_store_contract import make_task

VALID_KEY = "2026/11/25/image_00000000-0000-4000-8000-000000000001-1.png"


class CountingStorage(MemoryStorage):
    """Memory storage that counts `open` calls: a refused key must never get that far."""

    def __init__(self, signer: UrlSigner) -> None:
        super().__init__(signer)
        self.opened: list[str] = []

    async def open(self, key: str) -> StoredImage | None:
        if not key.startswith(PROBE_PREFIX):  # the start-up check reads its own probe
            self.opened.append(key)
        return await super().open(key)


@pytest.fixture
async def files_api(tmp_path: Path) -> AsyncIterator[tuple[ApiHarness, CountingStorage]]:
    made: list[CountingStorage] = []

    def counting(signer: UrlSigner) -> CountingStorage:
        made.append(CountingStorage(signer))
        return made[-1]

    lifespan, harness = await start_harness(
        make_settings(tmp_path / "data"), run_worker=False, storage=counting
    )
    try:
        yield harness, made[0]
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)


def signed_path(api: ApiHarness, key: str, *, raw_key: str | None = None) -> str:
    expires = int(time.time()) + 600
    signature = api.runtime.signer.signature(key, expires)
    return f"/files/{raw_key or quote(key)}?expires={expires}&signature={signature}"


@pytest.mark.parametrize(
    "signature",
    ["%C3%A9", "%FF", "%F0%9F%98%80", "%00", "%ED%A0%80", "é" * 43, "A" * 10_000, "%20"],
)
async def test_a_malformed_signature_is_a_403_like_any_wrong_one(
    files_api: tuple[ApiHarness, CountingStorage],
    signature: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api, storage = files_api
    with caplog.at_level(logging.ERROR):
        for key in ("x", VALID_KEY):
            response = await api.client.get(f"/files/{key}?expires=1&signature={signature}")
            assert response.status_code == 403, response.text
            error = response.json()["error"]
            assert error["code"] == "invalid_signature" and error["type"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert storage.opened == []


@pytest.mark.parametrize(
    ("key", "raw_key"),
    [
        ("2026/..\x00/x", "2026/..%00/x"),
        ("2026/11/25/image_00000000-0000-4000-8000-000000000001-1.png\x00", None),
        ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd"),
        ("2026/11/25/../../../secret", "2026/11/25/%2E%2E/%2E%2E/%2E%2E/secret"),
        ("2026/11/25/not-a-task.png", None),
        ("2026/11/25/image_00000000-0000-4000-8000-000000000001-1.png/more", None),
        ("2026\\11\\25\\image_00000000-0000-4000-8000-000000000001-1.png", None),
        ("2026/11/25/image_00000000-0000-4000-8000-000000000001-1.PNG ", None),
        ("２０２６/11/25/image_00000000-0000-4000-8000-000000000001-1.png", None),
        ("url-signing.key", None),
        ("", None),
    ],
)
async def test_a_signed_key_outside_the_storage_key_syntax_is_a_404_without_a_lookup(
    files_api: tuple[ApiHarness, CountingStorage],
    key: str,
    raw_key: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api, storage = files_api
    with caplog.at_level(logging.ERROR):
        response = await api.client.get(signed_path(api, key, raw_key=raw_key))
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "file_not_found"
    assert storage.opened == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_signed_key_of_the_storage_syntax_is_looked_up(
    files_api: tuple[ApiHarness, CountingStorage],
) -> None:
    api, storage = files_api
    missing = await api.client.get(signed_path(api, VALID_KEY))
    assert missing.status_code == 404 and storage.opened == [VALID_KEY]
    await storage.put(VALID_KEY, b"\x89PNG...", "image/png")
    found = await api.client.get(signed_path(api, VALID_KEY))
    assert found.status_code == 200 and found.content == b"\x89PNG..."


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "image/webp", "x/unknown"])
def test_every_key_the_runner_writes_is_of_the_storage_syntax(content_type: str) -> None:
    created = datetime(2026, 11, 25, 23, 59, tzinfo=UTC).timestamp()
    task = make_task(now=created)
    for attempt in (1, 2, 100):
        key = storage_key_for(task.evolve(attempt=attempt), content_type)
        assert is_image_key(key), key

"""Every storage backend, for the suites that must pass on each (contract, janitor).

`s3` is the real S3 backend against moto's standalone server on 127.0.0.1 (one per
test session, a fresh bucket per test).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from imageforge.storage import LocalStorage, Storage, UrlSigner
from imageforge.storage.s3 import S3Options, S3Storage
from imageforge.testing.s3 import MotoServer, static_credentials
from imageforge.testing.storage import MemoryStorage

BACKENDS = ["local", "memory", "s3"]
SIGNER = UrlSigner(b"k" * 32)


@dataclass
class Backend:
    name: str
    storage: Storage
    #: How finely the backend dates writes: S3 stamps them to the second.
    timestamp_resolution: float = 0.0


def s3_storage(moto: MotoServer, **options: object) -> S3Storage:
    """An S3Storage on a fresh bucket of `moto`, with the test credentials."""
    bucket = moto.create_bucket()
    settings = {"endpoint_url": moto.endpoint_url, "region": "us-east-1", **options}
    return S3Storage(
        S3Options(bucket=bucket, **settings),  # type: ignore[arg-type]
        SIGNER,
        credentials=static_credentials,  # type: ignore[arg-type]
    )


def make_backend(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    if name == "local":
        return Backend(name, LocalStorage(tmp_path / "images", SIGNER))
    if name == "memory":
        return Backend(name, MemoryStorage(SIGNER))
    moto: MotoServer = request.getfixturevalue("moto_s3")
    # A prefix, so that every test also checks keys are stored and listed under it.
    prefix = f"tenant-{secrets.token_hex(2)}/images"
    return Backend(name, s3_storage(moto, prefix=prefix), timestamp_resolution=1.0)


def link_expiry(url: httpx.URL) -> int:
    """When a link stops working: a /files link's `expires`, or a presigned link's
    signing time plus its lifetime."""
    if "X-Amz-Expires" not in url.params:
        return int(url.params["expires"])
    signed = datetime.strptime(url.params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return int(signed.timestamp()) + int(url.params["X-Amz-Expires"])


async def download(url: str) -> httpx.Response:
    """GET a link as a client would: over HTTP, no credentials, no redirects."""
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url)


async def read_all(storage: Storage, key: str) -> bytes | None:
    """The bytes under a key, read through the interface; None when there are none."""
    image = await storage.open(key)
    if image is None:
        return None
    return b"".join([chunk async for chunk in image.chunks()])

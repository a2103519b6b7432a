"""The API on S3 storage, in each link mode: every link a client gets is downloaded over
HTTP, from the bucket (presigned, public) or through /files (proxy)."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from imageforge.ids import TaskId
from imageforge.testing.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer
from tests.conftest import ApiHarness, make_settings, start_harness
from tests.storages import download, link_expiry

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)


@contextlib.asynccontextmanager
async def _harness(
    tmp_path: Path, moto: MotoServer, bucket: str, **settings: Any
) -> AsyncIterator[ApiHarness]:
    lifespan, harness = await start_harness(
        make_settings(
            tmp_path / "data",
            storage="s3",
            s3_bucket=bucket,
            s3_prefix="imageforge",
            s3_endpoint_url=moto.endpoint_url,
            s3_region="us-east-1",
            image_url_ttl_seconds=600,
            **settings,
        )
    )
    try:
        yield harness
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def _completed(api: ApiHarness) -> tuple[dict[str, Any], str]:
    key = await api.new_key()
    created = await api.create(key)
    assert created.status_code == 200, created.text
    body = await api.wait_terminal(key, created.json()["id"])
    assert body["status"] == "completed" and body["expired"] is False, body
    return body, key


async def test_presigned_links_download_from_the_bucket(
    tmp_path: Path, moto_s3: MotoServer
) -> None:
    bucket = moto_s3.create_bucket()
    async with _harness(tmp_path, moto_s3, bucket) as api:
        body, key = await _completed(api)
        url = httpx.URL(body["image_url"])
        assert f"{url.scheme}://{url.netloc.decode()}" == moto_s3.endpoint_url
        assert url.path.startswith(f"/{bucket}/imageforge/")
        # The link lives as long as configured, less at most the reuse window.
        assert link_expiry(url) >= int(time.time()) + 600 - 61
        response = await download(body["image_url"])
        assert response.status_code == 200 and response.content.startswith(PNG)
        assert response.headers["content-type"] == "image/png"
        # What was downloaded is what the bucket holds under the task's key.
        (stored,) = moto_s3.object_keys(bucket)
        assert url.path == f"/{bucket}/{stored}"
        again = (await api.poll(key, body["id"])).json()
        assert (await download(again["image_url"])).content == response.content


async def test_proxy_links_stream_from_a_private_bucket(
    tmp_path: Path, moto_s3: MotoServer
) -> None:
    bucket = moto_s3.create_bucket()
    async with _harness(tmp_path, moto_s3, bucket, s3_links="proxy") as api:
        body, _ = await _completed(api)
        url = httpx.URL(body["image_url"])
        assert url.path.startswith("/files/")
        # The bucket itself answers nobody without credentials.
        (stored,) = moto_s3.object_keys(bucket)
        assert (await download(f"{moto_s3.endpoint_url}/{bucket}/{stored}")).status_code == 403
        whole = await api.client.get(body["image_url"])
        assert whole.status_code == 200 and whole.content.startswith(PNG)
        assert whole.headers["content-type"] == "image/png"
        part = await api.client.get(body["image_url"], headers={"Range": "bytes=1-3"})
        assert (part.status_code, part.content) == (206, whole.content[1:4])
        head = await api.client.head(body["image_url"])
        assert head.headers["content-length"] == str(len(whole.content))
        # An expired link is refused, a forged one too.
        key = url.path.removeprefix("/files/")
        signer = api.runtime.signer
        past = int(time.time()) - 1
        expired = f"/files/{key}?expires={past}&signature={signer.signature(key, past)}"
        assert (await api.client.get(expired)).status_code == 410
        forged = str(url.copy_set_param("signature", "x" * 43))
        assert (await api.client.get(forged)).status_code == 403


async def test_proxy_links_answer_503_while_the_bucket_is_unreachable(tmp_path: Path) -> None:
    with MotoServer() as own:
        async with _harness(tmp_path, own, own.create_bucket(), s3_links="proxy") as api:
            body, _ = await _completed(api)
            own.close()  # the S3 endpoint goes away under the running server
            response = await api.client.get(body["image_url"])
            assert response.status_code == 503 and "Retry-After" in response.headers
            assert "storage is unavailable" in response.json()["error"]["message"]


async def test_public_links_point_at_the_cdn(tmp_path: Path, moto_s3: MotoServer) -> None:
    bucket = moto_s3.create_bucket()
    moto_s3.make_public(bucket)
    base = f"{moto_s3.endpoint_url}/{bucket}"
    async with _harness(
        tmp_path, moto_s3, bucket, s3_links="public", s3_public_base_url=base
    ) as api:
        body, _ = await _completed(api)
        assert body["image_url"].startswith(f"{base}/imageforge/")
        assert "?" not in body["image_url"]
        response = await download(body["image_url"])
        assert response.status_code == 200 and response.content.startswith(PNG)


async def test_an_edit_uploaded_to_one_node_is_read_by_another_nodes_worker(
    tmp_path: Path, moto_s3: MotoServer
) -> None:
    """The uploads travel through the bucket, not a disk: the API node runs no worker, the
    worker node shares only the database and the bucket."""
    bucket = moto_s3.create_bucket()
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    s3 = {
        "storage": "s3",
        "s3_bucket": bucket,
        "s3_prefix": "imageforge",
        "s3_endpoint_url": moto_s3.endpoint_url,
        "s3_region": "us-east-1",
        "database_url": database_url,
    }
    api_lifespan, api = await start_harness(make_settings(tmp_path / "api", **s3), run_worker=False)
    worker_lifespan, worker = await start_harness(make_settings(tmp_path / "worker", **s3))
    try:
        key = await api.new_key()
        red = _png((240, 10, 10))
        answer = await api.client.post(
            "/v1/images/edits",
            headers={"Authorization": f"Bearer {key}"},
            data={"prompt": "a still life", "n": "2"},
            files=[("image[]", ("red.png", red, "image/png"))],
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["data"]) == 2
        uploads = [k for k in moto_s3.object_keys(bucket) if "/uploads/" in k]
        assert len(uploads) == 1 and uploads[0].startswith("imageforge/uploads/")
        assert not (tmp_path / "api" / "images").exists()
        runner = worker.runtime.runner
        assert runner is not None
        for task_id in answer.headers["imageforge-task-ids"].split(","):
            task = await worker.runtime.store.get_task(TaskId(task_id))
            assert task is not None and task.worker_id == runner.worker_id
    finally:
        for harness, lifespan in ((api, api_lifespan), (worker, worker_lifespan)):
            await harness.client.aclose()
            await lifespan.__aexit__(None, None, None)


def _png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (256, 256), color).save(out, format="PNG")
    return out.getvalue()

"""Uploaded references (the OpenAI edits route's files): stored through the storage
interface, read back by the worker instead of fetched, never sendable by a client as a
URL, and swept once past their retention."""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass

import pytest
from PIL import Image

from imageforge.engines import GeneratedImage, GenerationRequest
from imageforge.references import ReferenceFetcher
from imageforge.references.stored import stored_key, stored_reference, upload_key
from imageforge.tasks import Task, TaskStatus
from imageforge.testing.engines import ScriptedEngine
from imageforge.worker.janitor import sweep_uploads
from imageforge.worker.runner import Runner, RunnerConfig
from tests.conftest import ApiHarness
from tests.test_store_contract import make_task
from tests.test_worker import Rig, rig, run_until

__all__ = ["rig"]  # the fixture, shared with the worker's tests


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


async def add_task(rig: Rig, *image_urls: str) -> Task:
    task = make_task(image_urls=image_urls)
    await rig.store.insert_task(task)
    return task


def runner_reading_storage(rig: Rig, engine: object | None = None) -> Runner:
    return Runner(
        store=rig.store,
        storage=rig.storage,
        engines={"offline": engine or rig.engine},  # type: ignore[dict-item]
        fetcher=ReferenceFetcher(storage=rig.storage),
        config=RunnerConfig(
            concurrency=2,
            lease_seconds=5.0,
            heartbeat_seconds=1.0,
            poll_interval_seconds=0.05,
            retry_base_seconds=0.05,
            retry_max_seconds=0.1,
            shutdown_grace_seconds=0.5,
        ),
    )


def test_a_stored_reference_names_its_key_and_a_url_names_none() -> None:
    key = upload_key(png((1, 2, 3)), "PNG")
    assert key.startswith("uploads/") and key.endswith(".png")
    assert stored_key(stored_reference(key)) == key
    assert stored_key("https://example.com/storage:uploads/x.png") is None


async def test_the_worker_reads_an_uploaded_reference_from_storage(rig: Rig) -> None:
    data = png((200, 10, 10))
    key = upload_key(data, "PNG")
    await rig.storage.put(key, data, "image/png")
    task = await add_task(rig, stored_reference(key))

    async def done() -> None:
        await rig.wait_for(task, TaskStatus.COMPLETED)

    await run_until(runner_reading_storage(rig), done)
    [call] = rig.engine.calls
    [reference] = call.references
    assert reference.data == data and (reference.width, reference.height) == (64, 48)


async def test_an_upload_gone_from_storage_fails_the_task_for_good(rig: Rig) -> None:
    task = await add_task(rig, stored_reference("uploads/" + "0" * 64 + ".png"))

    async def done() -> None:
        failed = await rig.wait_for(task, TaskStatus.FAILED)
        assert failed.error == "image[0] (uploaded): the uploaded image is no longer stored"
        assert failed.error_code == "invalid_reference" and failed.attempt == 1

    await run_until(runner_reading_storage(rig), done)
    assert rig.engine.calls == []


@dataclass
class PassesUrlsOn(ScriptedEngine):
    """Like the relay: hands the URLs to a service that fetches them itself."""

    fetches_references = False  # type: ignore[misc]

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        return await super().generate(request)


async def test_an_engine_that_passes_urls_on_refuses_uploads_clearly(rig: Rig) -> None:
    data = png((10, 10, 200))
    key = upload_key(data, "PNG")
    await rig.storage.put(key, data, "image/png")
    task = await add_task(rig, stored_reference(key))
    engine = PassesUrlsOn()

    async def done() -> None:
        failed = await rig.wait_for(task, TaskStatus.FAILED)
        assert failed.error is not None and "cannot use uploaded images" in failed.error

    await run_until(runner_reading_storage(rig, engine), done)
    assert engine.calls == []


async def test_the_janitor_sweeps_uploads_past_their_retention_only(rig: Rig) -> None:
    old, young = png((1, 1, 1)), png((2, 2, 2))
    for data in (old, young):
        await rig.storage.put(upload_key(data, "PNG"), data, "image/png")
    image_key = "2026/01/01/image_00000000-0000-4000-8000-000000000000-1.png"
    await rig.storage.put(image_key, old, "image/png")
    long_ago = time.time() - 10 * 86_400
    for key in (upload_key(old, "PNG"), image_key):
        path = rig.storage.path_for(key)
        assert path is not None
        os.utime(path, (long_ago, long_ago))
    removed = await sweep_uploads(rig.storage, older_than=time.time() - 7 * 86_400)
    assert removed == 1
    assert await rig.storage.open(upload_key(old, "PNG")) is None
    assert await rig.storage.open(upload_key(young, "PNG")) is not None
    assert await rig.storage.open(image_key) is not None  # generated images are not uploads


@pytest.mark.parametrize("url", ["storage:uploads/" + "0" * 64 + ".png", "STORAGE:uploads/x"])
async def test_the_task_api_refuses_a_stored_reference_sent_as_a_url(
    api: ApiHarness, key: str, url: str
) -> None:
    response = await api.create(key, image_urls=[url])
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image_urls[0]"

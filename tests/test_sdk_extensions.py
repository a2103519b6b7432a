"""The SDK's use of the lifecycle extensions (events, long-poll, cancel, listing).

Against a stand-in task API that serves them on a real port (`tests/sdk_task_api.py`), and
against imageforge itself for each route imageforge's `/openapi.json` lists; those are
skipped, saying so, until the server has the route.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from imageforge.testing.processes import ServerProcess, create_key
from imageforge_client import (
    AsyncClient,
    Capabilities,
    Client,
    TaskFailedError,
    TaskResult,
    TaskTimeoutError,
)
from tests.sdk_servers import FaultyProxy, serve_imageforge
from tests.sdk_task_api import StandInTaskAPI, Switches, serve_task_api
from tests.test_sdk import FAST, png_size

KEY = "sk-stand-in"


@pytest.fixture
def task_api() -> Iterator[StandInTaskAPI]:
    with serve_task_api() as api:
        yield api


def test_capabilities_are_read_from_openapi(task_api: StandInTaskAPI) -> None:
    with Client(KEY, base_url=task_api.base_url) as client:
        assert client.capabilities() == Capabilities(
            long_poll=True,
            events=True,
            cancel=True,
            listing=True,
            idempotency_keys=True,
            callbacks=True,
        )


def test_generate_follows_the_event_stream_with_progress(task_api: StandInTaskAPI) -> None:
    seen: list[TaskResult] = []
    with Client(KEY, base_url=task_api.base_url) as client:
        image = client.images.generate("a fox", timeout=30, on_progress=seen.append)
        assert png_size(image.bytes()) == (1024, 1024)
    assert [(t.status, t.progress) for t in seen] == [
        ("queued", None),
        ("processing", 0),
        ("processing", 50),
        ("processing", 100),
        ("completed", 100),
    ]
    assert task_api.counts["events"] == 1 and task_api.counts["poll"] == 0


def test_a_cut_event_stream_resumes_from_the_last_event(task_api: StandInTaskAPI) -> None:
    task_api.switches.cut_first_stream_after = 2
    seen: list[TaskResult] = []
    with Client(KEY, base_url=task_api.base_url) as client:
        client.images.generate("a fox", timeout=30, on_progress=seen.append)
    assert task_api.counts["events"] == 2
    assert task_api.last_event_ids == [None, "2"]
    assert [t.progress for t in seen if t.status == "processing"] == [0, 50, 100], "no repeats"


async def test_async_generate_follows_events_and_lists_pages(task_api: StandInTaskAPI) -> None:
    statuses: list[str] = []
    async with AsyncClient(KEY, base_url=task_api.base_url) as client:
        image = await client.images.generate(
            "a fox", timeout=30, on_progress=lambda task: statuses.append(task.status)
        )
        assert png_size(await image.bytes()) == (1024, 1024)
        for n in range(4):
            await client.images.create(f"fox {n}")
        listed = [task.id async for task in client.tasks.list(limit=2)]
        pages = [page async for page in client.tasks.list(limit=2).pages()]
    assert statuses[-1] == "completed" and task_api.counts["events"] == 1
    assert listed == list(reversed(task_api.order)) and len(listed) == 5
    assert [len(page.data) for page in pages] == [2, 2, 1]
    assert [page.has_more for page in pages] == [True, True, False]


def test_without_events_generate_long_polls() -> None:
    with (
        serve_task_api(Switches(events=False), step_seconds=0.3) as task_api,
        Client(KEY, base_url=task_api.base_url, polling=FAST) as client,
    ):
        image = client.images.generate("a fox", timeout=30)
        assert image.task.status == "completed"
        assert task_api.counts["events"] == 0 and task_api.counts["poll"] == 0
        assert 1 <= task_api.counts["wait"] <= 2, task_api.counts


def test_without_long_poll_or_events_generate_polls() -> None:
    with (
        serve_task_api(Switches(events=False, long_poll=False), step_seconds=0.05) as task_api,
        Client(KEY, base_url=task_api.base_url, polling=FAST) as client,
    ):
        assert client.images.generate("a fox", timeout=30).task.status == "completed"
        assert task_api.counts["wait"] == 0 and task_api.counts["poll"] >= 1


def test_a_failed_task_raises_with_its_error(task_api: StandInTaskAPI) -> None:
    with Client(KEY, base_url=task_api.base_url) as client:
        with pytest.raises(TaskFailedError, match="the engine refused") as caught:
            client.images.generate("please fail", timeout=30)
        assert caught.value.task.status == "failed"


def test_cancel_then_wait_raises_task_failed(task_api: StandInTaskAPI) -> None:
    with Client(KEY, base_url=task_api.base_url) as client:
        created = client.images.create("hold this one")
        cancelled = client.results.cancel(created.id)
        assert cancelled.status == "failed" and (cancelled.error or "").startswith("cancelled")
        with pytest.raises(TaskFailedError, match="cancelled"):
            client.results.wait(created.id, timeout=10)


def test_a_task_that_does_not_finish_in_time_raises_a_timeout(task_api: StandInTaskAPI) -> None:
    with Client(KEY, base_url=task_api.base_url) as client:
        created = client.images.create("hold forever")
        started = time.monotonic()
        with pytest.raises(TaskTimeoutError) as caught:
            client.results.wait(created.id, timeout=1.0)
        elapsed = time.monotonic() - started
    print(f"timed out after {elapsed:.2f} s (asked 1 s)")
    assert caught.value.task_id == created.id and elapsed >= 1.0
    assert caught.value.last is not None and caught.value.last.status == "processing"


def test_listing_filters_and_pages(task_api: StandInTaskAPI) -> None:
    with Client(KEY, base_url=task_api.base_url) as client:
        ids = [client.images.create(f"fox {n}").id for n in range(3)]
        assert [task.id for task in client.tasks.list(limit=1)] == ids[::-1]
        assert [task.id for task in client.tasks.list(after=ids[2])] == ids[1::-1]
        assert list(client.tasks.list(status="completed")) == []


# --------------------------------------------------------------------------------------------
# The same against imageforge, once it lists the routes
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imageforge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve_imageforge(tmp_path_factory, "sdk-ext")


@pytest.fixture
def through_proxy(imageforge: ServerProcess) -> Iterator[tuple[Client, FaultyProxy]]:
    key = create_key(imageforge.data_dir, "extensions")["key"]
    with (
        FaultyProxy(imageforge.base_url) as proxy,
        Client(key, base_url=proxy.base_url, polling=FAST) as client,
    ):
        yield client, proxy


def needs(client: Client, flag: str, route: str) -> None:
    if not getattr(client.capabilities(), flag):
        pytest.skip(f"imageforge's /openapi.json does not list {route} yet")


def test_imageforge_events(through_proxy: tuple[Client, FaultyProxy]) -> None:
    client, proxy = through_proxy
    needs(client, "events", "GET /v1/result/{id}/events")
    seen: list[TaskResult] = []
    image = client.images.generate("a fox", timeout=60, on_progress=seen.append)
    assert png_size(image.bytes()) == (1024, 1024) and seen[-1].status == "completed"
    assert proxy.script.requests_to("GET", "/v1/result/")[0].path.endswith("/events")


def test_imageforge_long_poll(through_proxy: tuple[Client, FaultyProxy]) -> None:
    client, proxy = through_proxy
    needs(client, "long_poll", "GET /v1/result/{id}?wait=N")
    created = client.images.create("a fox")
    assert client.results.wait(created.id, timeout=60).task.status == "completed"
    if not client.capabilities().events:
        polls = proxy.script.requests_to("GET", f"/v1/result/{created.id}")
        assert polls and all("wait=" in s.query for s in polls)


def test_imageforge_cancel(through_proxy: tuple[Client, FaultyProxy]) -> None:
    client, _ = through_proxy
    needs(client, "cancel", "POST /v1/result/{id}/cancel")
    created = client.images.create("a fox", size="3840x2160")
    cancelled = client.results.cancel(created.id)
    assert cancelled.id == created.id
    finished = client.results.get(created.id)
    if finished.status == "failed":
        assert (finished.error or "").startswith("cancelled")


def test_imageforge_listing(through_proxy: tuple[Client, FaultyProxy]) -> None:
    client, _ = through_proxy
    needs(client, "listing", "GET /v1/tasks")
    ids = [client.images.create(f"fox {n}").id for n in range(3)]
    assert [task.id for task in client.tasks.list(limit=2)] == ids[::-1]
    pages = list(client.tasks.list(limit=2).pages())
    assert [len(page.data) for page in pages] == [2, 1]

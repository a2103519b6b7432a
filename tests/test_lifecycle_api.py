"""Listing, cancel, long-poll and server-sent events at the HTTP boundary, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imageforge.store import open_store
from imageforge.tasks import TaskStatus
from imageforge.wire import TaskResult
from tests.conftest import ApiHarness
from tests.lifecycle import (
    BACKENDS,
    StepEngine,
    auth,
    balance,
    database_url_for,
    limited_key,
    parse_events,
    serve,
    stop,
    until,
)

TASK_FIELDS = set(TaskResult.model_fields)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    return database_url_for(request, tmp_path)


@pytest.fixture
async def api_only(tmp_path: Path, database_url: str | None) -> AsyncIterator[ApiHarness]:
    """No worker: tasks stay queued unless a test moves them."""
    lifespan, harness = await serve(tmp_path, database_url, run_worker=False)
    try:
        yield harness
    finally:
        await stop(lifespan, harness)


@pytest.fixture
def engine() -> StepEngine:
    return StepEngine()


@pytest.fixture
async def api(
    tmp_path: Path, database_url: str | None, engine: StepEngine
) -> AsyncIterator[ApiHarness]:
    lifespan, harness = await serve(tmp_path, database_url, engine=engine)
    try:
        yield harness
    finally:
        await stop(lifespan, harness)


# Listing ----------------------------------------------------------------------------


async def test_listing_pages_newest_first_and_filters(api_only: ApiHarness) -> None:
    key, other = await api_only.new_key("mine"), await api_only.new_key("other")
    ids = []
    for n in range(23):
        model = "gpt-image-2-r" if n % 5 == 0 else "gpt-image-2"
        ids.append((await api_only.create(key, model=model, prompt=f"fox {n}")).json()["id"])
    await api_only.create(other)
    newest_first = ids[::-1]

    first = (await api_only.client.get("/v1/tasks", headers=auth(key))).json()
    assert first["object"] == "list" and first["has_more"] is True
    assert [task["id"] for task in first["data"]] == newest_first[:20]
    assert set(first["data"][0]) == TASK_FIELDS
    after = first["data"][-1]["id"]
    rest = (await api_only.client.get(f"/v1/tasks?after={after}", headers=auth(key))).json()
    assert [task["id"] for task in rest["data"]] == newest_first[20:]
    assert rest["has_more"] is False

    seen, cursor = [], None
    while True:
        query = "limit=7" + (f"&after={cursor}" if cursor else "")
        page = (await api_only.client.get(f"/v1/tasks?{query}", headers=auth(key))).json()
        seen += [task["id"] for task in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["data"][-1]["id"]
    assert seen == newest_first

    by_model = await api_only.client.get("/v1/tasks?model=gpt-image-2-r", headers=auth(key))
    assert [t["id"] for t in by_model.json()["data"]] == newest_first[2::5]
    queued = await api_only.client.get("/v1/tasks?status=queued&limit=100", headers=auth(key))
    assert len(queued.json()["data"]) == 23
    done = await api_only.client.get("/v1/tasks?status=completed", headers=auth(key))
    assert done.json() == {"object": "list", "data": [], "has_more": False}


async def test_listing_refuses_bad_parameters_and_foreign_cursors(api_only: ApiHarness) -> None:
    key, other = await api_only.new_key("mine"), await api_only.new_key("other")
    foreign = (await api_only.create(other)).json()["id"]
    for query, param in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("status=done", "status"),
        ("after=nope", "after"),
    ]:
        answer = await api_only.client.get(f"/v1/tasks?{query}", headers=auth(key))
        assert answer.status_code == 400, query
        assert answer.json()["error"]["param"] == param
    unknown = f"image_{uuid.uuid4()}"
    answers = [
        await api_only.client.get(f"/v1/tasks?after={task_id}", headers=auth(key))
        for task_id in (foreign, unknown)
    ]
    assert [a.status_code for a in answers] == [400, 400]
    messages = [a.json()["error"]["message"].replace(task_id, "ID") for a, task_id in zip(
        answers, (foreign, unknown), strict=True
    )]  # fmt: skip
    assert messages[0] == messages[1], "another key's task must look unknown"


# Cancel -----------------------------------------------------------------------------


async def test_cancelling_a_queued_task_fails_and_refunds_it_once(api_only: ApiHarness) -> None:
    _, key = await limited_key(api_only, 1_000_000)
    created = (await api_only.create(key)).json()
    assert await balance(api_only, key) == 1.0 - created["amount"]
    cancel = f"/v1/result/{created['id']}/cancel"
    first = await api_only.client.post(cancel, headers=auth(key))
    assert first.status_code == 200
    body = first.json()
    assert body["status"] == "failed" and body["error"].startswith("cancelled")
    assert body["refunded"] is True and body["amount"] == 0
    again = await api_only.client.post(cancel, headers=auth(key))
    assert again.status_code == 200 and again.json() == body
    assert await balance(api_only, key) == 1.0  # refunded once, not twice
    # It never runs: a worker starting now finds nothing to claim.
    claimed = await api_only.runtime.store.claim(worker_id="w", limit=10, lease_seconds=5)
    assert claimed == []


async def test_cancelling_a_processing_task_stops_its_engine_call(
    api: ApiHarness, engine: StepEngine
) -> None:
    engine.hold = True
    _, key = await limited_key(api, 1_000_000)
    created = (await api.create(key)).json()
    await asyncio.wait_for(engine.started.wait(), 20)
    answer = await api.client.post(f"/v1/result/{created['id']}/cancel", headers=auth(key))
    assert answer.status_code == 200
    assert answer.json()["status"] in ("processing", "failed")
    final = await api.wait_terminal(key, created["id"])
    assert final["status"] == "failed" and final["error"].startswith("cancelled")
    assert final["refunded"] is True
    assert engine.client_cancels == 1
    assert await balance(api, key) == 1.0


async def test_cancel_racing_completion_has_one_outcome(
    api: ApiHarness, engine: StepEngine
) -> None:
    engine.hold = True
    _, key = await limited_key(api, 1_000_000)
    created = (await api.create(key)).json()
    await asyncio.wait_for(engine.started.wait(), 20)
    await asyncio.sleep(0.15)  # past the last step: the engine waits for `release`

    async def release() -> None:
        engine.release.set()

    await asyncio.gather(
        release(), api.client.post(f"/v1/result/{created['id']}/cancel", headers=auth(key))
    )
    final = await api.wait_terminal(key, created["id"])
    left = await balance(api, key)
    if final["status"] == "completed":
        assert left == 1.0 - created["amount"] and final["refunded"] is False
    else:
        assert final["error"].startswith("cancelled") and left == 1.0


async def test_cancelling_a_finished_task_changes_nothing(api: ApiHarness) -> None:
    key = await api.new_key()
    created = (await api.create(key)).json()
    done = await api.wait_terminal(key, created["id"])
    answer = await api.client.post(f"/v1/result/{created['id']}/cancel", headers=auth(key))
    assert answer.status_code == 200
    assert {**answer.json(), "image_url": None} == {**done, "image_url": None}
    assert answer.json()["status"] == "completed"


async def test_new_routes_answer_foreign_and_unknown_ids_alike(api_only: ApiHarness) -> None:
    key, other = await api_only.new_key("mine"), await api_only.new_key("other")
    foreign = (await api_only.create(other)).json()["id"]
    unknown = f"image_{uuid.uuid4()}"
    for method, suffix in [
        ("GET", "?wait=1"),
        ("GET", "/events"),
        ("POST", "/cancel"),
        ("GET", "/deliveries"),
    ]:
        answers = [
            await api_only.client.request(
                method, f"/v1/result/{task_id}{suffix}", headers=auth(key)
            )
            for task_id in (foreign, unknown)
        ]
        assert [a.status_code for a in answers] == [404, 404], suffix
        bodies = [a.content.replace(t.encode(), b"ID") for a, t in zip(
            answers, (foreign, unknown), strict=True
        )]  # fmt: skip
        assert bodies[0] == bodies[1], suffix
    # And the other key's task is untouched by the attempt to cancel it.
    assert (await api_only.poll(other, foreign)).json()["status"] == "queued"


# Long-poll --------------------------------------------------------------------------


@pytest.mark.parametrize("wait", ["0", "61", "-1", "1.5", "abc", "", "٣"])
async def test_wait_must_be_an_integer_from_1_to_60(api_only: ApiHarness, wait: str) -> None:
    key = await api_only.new_key()
    task_id = (await api_only.create(key)).json()["id"]
    answer = await api_only.client.get(f"/v1/result/{task_id}?wait={wait}", headers=auth(key))
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "wait"


async def test_a_long_poll_answers_with_the_state_after_its_wait(api_only: ApiHarness) -> None:
    key = await api_only.new_key()
    task_id = (await api_only.create(key)).json()["id"]
    started = time.monotonic()
    answer = await api_only.client.get(f"/v1/result/{task_id}?wait=1", headers=auth(key))
    assert time.monotonic() - started >= 1.0
    assert answer.status_code == 200 and answer.json()["status"] == "queued"


async def test_long_polls_return_when_the_task_finishes(
    api: ApiHarness, engine: StepEngine
) -> None:
    engine.hold = True
    key = await api.new_key()
    task_id = (await api.create(key)).json()["id"]
    waiting = asyncio.ensure_future(
        api.client.get(f"/v1/result/{task_id}?wait=30", headers=auth(key))
    )
    await asyncio.wait_for(engine.started.wait(), 20)
    await asyncio.sleep(0.2)
    assert not waiting.done()
    engine.release.set()
    answer = await asyncio.wait_for(waiting, 20)
    assert answer.json()["status"] == "completed" and answer.json()["image_url"]


async def test_waiters_read_nothing_while_they_wait(tmp_path: Path) -> None:
    """50 long-polls on one SQLite process: no task is read while they wait; one change
    each wakes them (in-process notifications), and each then reads its task once."""
    lifespan, harness = await serve(tmp_path, None, run_worker=False)
    try:
        key = await harness.new_key()
        ids = [(await harness.create(key, prompt=f"fox {n}")).json()["id"] for n in range(50)]
        store = harness.runtime.store
        statements: list[str] = []
        for connection in (store._reader, store._db):  # type: ignore[attr-defined]
            connection.set_trace_callback(statements.append)
        polls = [
            asyncio.ensure_future(
                harness.client.get(f"/v1/result/{task_id}?wait=30", headers=auth(key))
            )
            for task_id in ids
        ]
        await until(lambda: _waiting(harness, 50), what="50 waiters")
        await asyncio.sleep(0.5)  # each reads its task once as it starts waiting
        statements.clear()
        await asyncio.sleep(1.0)
        # What runs meanwhile is per process, whoever waits: the key watcher's count and
        # (an API without a worker on SQLite) the file-version pragma. No task is read.
        assert not [s for s in statements if "tasks" in s], statements[:5]
        assert len(statements) < 20
        claimed = await store.claim(worker_id="w", limit=50, lease_seconds=30)
        for task in claimed:
            await store.fail(task.id, task.attempt, error="done here", error_code="test")
        answers = await asyncio.wait_for(asyncio.gather(*polls), 20)
        assert {answer.json()["status"] for answer in answers} == {"failed"}
    finally:
        for connection in (store._reader, store._db):  # type: ignore[attr-defined]
            connection.set_trace_callback(None)
        await stop(lifespan, harness)


async def _waiting(harness: ApiHarness, count: int) -> bool:
    return harness.runtime.events.waiting >= count


async def test_a_change_on_another_node_wakes_a_long_poll(tmp_path: Path, pg_url: str) -> None:
    """PostgreSQL: an API node without a worker is woken by LISTEN/NOTIFY when another
    node (here a store of its own) finishes the task."""
    lifespan, harness = await serve(tmp_path, pg_url, run_worker=False)
    other = await open_store(pg_url)
    try:
        key = await harness.new_key()
        task_id = (await harness.create(key)).json()["id"]
        waiting = asyncio.ensure_future(
            harness.client.get(f"/v1/result/{task_id}?wait=30", headers=auth(key))
        )
        await until(lambda: _waiting(harness, 1), what="the waiter")
        await asyncio.sleep(0.3)  # the listener connects
        (task,) = await other.claim(worker_id="elsewhere", limit=1, lease_seconds=30)
        await other.fail(task.id, task.attempt, error="done elsewhere", error_code="test")
        started = time.monotonic()
        answer = await asyncio.wait_for(waiting, 20)
        assert answer.json()["status"] == "failed"
        assert time.monotonic() - started < 10  # woken, not timed out after 30 s
    finally:
        await other.close()
        await stop(lifespan, harness)


# Server-sent events -----------------------------------------------------------------


async def test_events_follow_status_and_progress_to_the_end(
    api: ApiHarness, engine: StepEngine
) -> None:
    engine.step, engine.hold = 0.3, True
    key = await api.new_key()
    task_id = (await api.create(key)).json()["id"]
    streaming = asyncio.ensure_future(
        api.client.get(f"/v1/result/{task_id}/events", headers=auth(key))
    )

    async def at_fifty() -> bool:
        return (await api.poll(key, task_id)).json()["progress"] == 50

    await until(at_fifty, what="progress 50")
    # The stream was woken by that change; give it time to send it, on a busy machine
    # too, before the engine finishes (the figure is only ever seen between the two).
    await asyncio.sleep(2)
    engine.release.set()
    answer = await asyncio.wait_for(streaming, 30)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events, comments = parse_events(answer.text)
    assert events[-1].event == "status" and events[-1].data["status"] == "completed"
    assert events[-1].data["image_url"] and events[-1].data["progress"] == 100
    assert all(set(event.data) == TASK_FIELDS for event in events)
    assert [int(e.id or 0) for e in events] == sorted({int(e.id or 0) for e in events})
    processing = [e for e in events if e.data["status"] == "processing"]
    assert processing and processing[0].event == "status"
    assert all(e.event == "progress" for e in processing[1:])
    figures = [e.data["progress"] for e in processing if e.data["progress"] is not None]
    assert 50 in figures and figures == sorted(figures)
    assert "keep-alive" in comments  # a step is longer than the keep-alive interval

    # A finished task's stream is its terminal event alone.
    again = parse_events(
        (await api.client.get(f"/v1/result/{task_id}/events", headers=auth(key))).text
    )[0]
    assert [(e.event, e.data["status"]) for e in again] == [("status", "completed")]


async def test_events_resume_after_the_last_event_id(api: ApiHarness, engine: StepEngine) -> None:
    engine.hold = True
    key = await api.new_key()
    task_id = (await api.create(key)).json()["id"]
    await asyncio.wait_for(engine.started.wait(), 20)

    async def at_fifty() -> bool:
        return (await api.poll(key, task_id)).json()["progress"] == 50

    await until(at_fifty, what="progress 50")
    # The stream so far, cut by the client: read it from a finished copy of the state.
    task = await api.runtime.store.get_task(task_id)  # type: ignore[arg-type]
    assert task is not None and task.status is TaskStatus.PROCESSING
    from imageforge.api.event_stream import event_id

    seen = event_id(task)
    engine.release.set()
    resumed = await api.client.get(
        f"/v1/result/{task_id}/events", headers={**auth(key), "Last-Event-ID": str(seen)}
    )
    events = parse_events(resumed.text)[0]
    assert all(int(e.id or 0) > seen for e in events)
    assert all(e.data["progress"] != 50 or e.data["status"] != "processing" for e in events)
    assert events[-1].data["status"] == "completed"

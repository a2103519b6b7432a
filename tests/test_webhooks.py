"""Webhooks: signed per Standard Webhooks (verified with its reference library), retried on
their schedule, stopped by 410, refused for private addresses, sent once per task whatever
crashes and however many workers send."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imageforge.ids import KeyId, new_task_id
from imageforge.keyring import create_api_key
from imageforge.store import open_store, upgrade_database
from imageforge.tasks import Task
from imageforge.testing.processes import ServerProcess, create_key
from tests.conftest import ApiHarness
from tests.lifecycle import BACKENDS, StepEngine, auth, database_url_for, serve, stop, until
from tests.upstream_servers import ServerThread

FAST_RETRIES = [0.1, 0.2, 0.3]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP receiver on 127.0.0.1 that answers each request with the next scripted
    status (200 once the script is used up)."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.received.append(Received(dict(request.headers), body))
            status = self.statuses.pop(0) if self.statuses else 200
        headers = {"Location": "http://127.0.0.1:9/elsewhere"} if status in (301, 302) else {}
        return Response(b"", status_code=status, headers=headers)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hooks = Receiver()
    server = ServerThread(hooks.app(), lifespan="off").start()
    hooks.url = f"{server.base_url}/hook"
    try:
        yield hooks
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    return database_url_for(request, tmp_path)


@pytest.fixture
async def api(tmp_path: Path, database_url: str | None) -> AsyncIterator[ApiHarness]:
    lifespan, harness = await serve(
        tmp_path, database_url, engine=StepEngine(), webhook_retry_schedule=FAST_RETRIES
    )
    try:
        yield harness
    finally:
        await stop(lifespan, harness)


async def signed_key(harness: ApiHarness) -> tuple[str, str, str]:
    """(key id, API key, webhook secret)."""
    record, secret = await create_api_key(harness.runtime.store, "hooks")
    assert record.webhook_secret is not None and record.webhook_secret.startswith("whsec_")
    return record.id, secret, record.webhook_secret


async def received(receiver: Receiver, count: int, timeout: float = 20.0) -> list[Received]:
    async def enough() -> bool:
        return len(receiver.received) >= count

    await until(enough, timeout=timeout, what=f"{count} deliveries")
    return list(receiver.received)


async def deliveries(harness: ApiHarness, key: str, task_id: str) -> list[dict[str, Any]]:
    answer = await harness.client.get(f"/v1/result/{task_id}/deliveries", headers=auth(key))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list"
    data: list[dict[str, Any]] = body["data"]
    return data


async def test_a_finished_task_is_posted_signed_per_standard_webhooks(
    api: ApiHarness, receiver: Receiver
) -> None:
    _, key, secret = await signed_key(api)
    created = await api.create(key, callback_url=receiver.url)
    assert created.status_code == 200, created.text
    task_id = created.json()["id"]
    polled = await api.wait_terminal(key, task_id)
    (hook,) = await received(receiver, 1)
    payload = Webhook(secret).verify(hook.body, hook.headers)
    assert payload["id"] == task_id and payload["status"] == "completed"
    # The same object as the poll (its link signed when sent).
    assert {**payload, "image_url": None} == {**polled, "image_url": None}
    assert payload["image_url"].split("?")[0] == polled["image_url"].split("?")[0]
    assert hook.headers["webhook-id"].startswith("msg_")
    assert hook.headers["content-type"] == "application/json"
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(hook.body + b" ", hook.headers)

    async def recorded() -> bool:
        return bool(await deliveries(api, key, task_id))

    await until(recorded, what="the attempt's record")
    (attempt,) = await deliveries(api, key, task_id)
    assert attempt["attempt"] == 1 and attempt["status_code"] == 200
    assert attempt["error"] is None and attempt["next_attempt_at"] is None


async def test_failures_are_retried_on_the_schedule_with_one_webhook_id(
    api: ApiHarness, receiver: Receiver
) -> None:
    receiver.statuses = [500, 302, 429]
    _, key, secret = await signed_key(api)
    task_id = (await api.create(key, callback_url=receiver.url)).json()["id"]
    hooks = await received(receiver, 4)
    assert len({hook.headers["webhook-id"] for hook in hooks}) == 1
    for hook in hooks:
        Webhook(secret).verify(hook.body, hook.headers)

    async def four() -> bool:
        return len(await deliveries(api, key, task_id)) == 4

    await until(four, what="four attempts recorded")
    attempts = await deliveries(api, key, task_id)
    assert [a["status_code"] for a in attempts] == [500, 302, 429, 200]
    assert all(a["next_attempt_at"] is not None for a in attempts[:3])
    assert attempts[3]["next_attempt_at"] is None and attempts[3]["error"] is None
    # Each wait is at least its step of the schedule (a redirect is not followed).
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(attempts)]
    assert all(gap >= step * 0.9 for gap, step in zip(gaps, FAST_RETRIES, strict=True)), gaps
    await asyncio.sleep(0.5)
    assert len(receiver.received) == 4, "nothing more after a 2xx"


async def test_a_410_stops_and_an_exhausted_schedule_gives_up(
    api: ApiHarness, receiver: Receiver
) -> None:
    receiver.statuses = [410]
    _, key, _ = await signed_key(api)
    gone = (await api.create(key, callback_url=receiver.url)).json()["id"]
    await received(receiver, 1)
    await asyncio.sleep(0.8)  # longer than the whole schedule
    assert len(receiver.received) == 1
    (attempt,) = await deliveries(api, key, gone)
    assert attempt["status_code"] == 410 and attempt["next_attempt_at"] is None

    receiver.received.clear()
    receiver.statuses = [503] * 10
    failing = (await api.create(key, callback_url=receiver.url)).json()["id"]
    await received(receiver, 1 + len(FAST_RETRIES))

    async def finished() -> bool:
        attempts = await deliveries(api, key, failing)
        return len(attempts) == 4 and attempts[-1]["next_attempt_at"] is None

    await until(finished, what="the last attempt")
    assert "no retries left" in (await deliveries(api, key, failing))[-1]["error"]
    await asyncio.sleep(0.5)
    assert len(receiver.received) == 4


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest",
        "http://[::1]:8080/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0x7f000001/hook",
        "http://localhost/hook",
        "ftp://example.com/hook",
        "http://user:pass@example.com/hook",
    ],
)
async def test_private_and_malformed_callbacks_are_refused_on_create(
    tmp_path: Path, url: str
) -> None:
    lifespan, harness = await serve(tmp_path, None, run_worker=False, reference_allowlist=[])
    try:
        key = await harness.new_key()
        answer = await harness.create(key, callback_url=url)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == "callback_url" and error["message"].startswith("callback_url:")
        listed = await harness.client.get("/v1/tasks", headers=auth(key))
        assert listed.json()["data"] == [], "nothing was created or charged"
    finally:
        await stop(lifespan, harness)


async def test_a_rotated_secret_signs_beside_the_new_one(
    api: ApiHarness, receiver: Receiver
) -> None:
    key_id, key, old = await signed_key(api)
    new = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
    assert await api.runtime.store.rotate_webhook_secret(
        KeyId(key_id), secret=new, grace_seconds=3600
    )
    await api.create(key, callback_url=receiver.url)
    (hook,) = await received(receiver, 1)
    assert len(hook.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(hook.body, hook.headers)


async def test_a_worker_lost_after_the_terminal_transition_still_delivers_once(
    tmp_path: Path, database_url: str | None, receiver: Receiver
) -> None:
    """The outbox row commits with the task's end: a worker that died right after (here: a
    store that ends tasks and is closed, sending nothing) leaves the delivery to whichever
    workers run next, and two of them at once send it exactly once."""
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'data' / 'imageforge.db'}"
    (tmp_path / "data").mkdir()
    await asyncio.to_thread(upgrade_database, url)
    store = await open_store(url)
    record, _ = await create_api_key(store, "hooks")
    ids = []
    for n in range(6):
        task = Task.queued(
            id=new_task_id(),
            key_id=record.id,
            model="gpt-image-2",
            engine="offline",
            prompt=f"fox {n}",
            quality="low",
            width=1024,
            height=1024,
            ratio="1:1",
            resolution="1k",
            image_urls=(),
            max_attempts=3,
            price_micros=0,
            now=time.time(),
            callback_url=receiver.url,
            callback_base_url="http://127.0.0.1:8000",
        )
        await store.insert_task(task)
        ids.append(task.id)
    for claimed in await store.claim(worker_id="doomed", limit=6, lease_seconds=30):
        await store.fail(claimed.id, claimed.attempt, error="engine gone", error_code="test")
    await store.close()

    workers = [
        await serve(tmp_path / f"w{n}", database_url or url, webhook_retry_schedule=FAST_RETRIES)
        for n in range(2 if database_url else 1)
    ]
    try:
        hooks = await received(receiver, 6)
        await asyncio.sleep(1.0)
        assert len(receiver.received) == 6
        assert sorted(orjson.loads(hook.body)["id"] for hook in hooks) == sorted(ids)
        assert all(orjson.loads(hook.body)["status"] == "failed" for hook in hooks)
        Webhook(record.webhook_secret or "").verify(hooks[0].body, hooks[0].headers)
    finally:
        for lifespan, harness in workers:
            await stop(lifespan, harness)


def test_a_server_killed_after_the_task_ended_delivers_once_after_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    """`kill -9` of a server whose task has ended but whose sender has not looked yet (its
    first look is a minute away): the next server on the data dir delivers it, once."""
    data = tmp_path / "data"
    env = {"IMAGEFORGE_REFERENCE_ALLOWLIST": "127.0.0.1", "IMAGEFORGE_WEBHOOK_POLL_SECONDS": "60"}
    created_key = create_key(data, "hooks")
    with ServerProcess(data, **env) as first, first.client(created_key["key"]) as client:
        body = {"model": "gpt-image-2", "prompt": "a fox", "callback_url": receiver.url}
        task_id = client.post("/v1/image2/images", json=body).json()["id"]
        deadline = time.monotonic() + 60
        while client.get(f"/v1/result/{task_id}").json()["status"] != "completed":
            assert time.monotonic() < deadline, "the task did not complete"
            time.sleep(0.05)
        first.kill()
    assert receiver.received == []
    with ServerProcess(data, **{**env, "IMAGEFORGE_WEBHOOK_POLL_SECONDS": "0.1"}) as second:
        deadline = time.monotonic() + 30
        while not receiver.received:
            assert time.monotonic() < deadline, "never delivered"
            time.sleep(0.05)
        time.sleep(1.0)
        assert len(receiver.received) == 1
        (hook,) = receiver.received
        payload = Webhook(created_key["webhook_secret"]).verify(hook.body, hook.headers)
        assert payload["id"] == task_id and payload["status"] == "completed"
        assert second.terminate() == 0


async def test_the_openai_routes_pass_callback_url_to_every_images_task(
    api: ApiHarness, receiver: Receiver
) -> None:
    _, key, secret = await signed_key(api)
    answer = await api.client.post(
        "/v1/images/generations",
        json={"prompt": "two foxes", "n": 2, "size": "1024x1024", "callback_url": receiver.url},
        headers=auth(key),
    )
    assert answer.status_code == 200, answer.text
    task_ids = answer.headers["Imageforge-Task-Ids"].split(",")
    assert len(task_ids) == 2 and len(answer.json()["data"]) == 2
    hooks = await received(receiver, 2)
    posted = sorted(Webhook(secret).verify(hook.body, hook.headers)["id"] for hook in hooks)
    assert posted == sorted(task_ids)

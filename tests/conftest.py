from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from imageforge.api.app import create_app
from imageforge.keyring import create_api_key
from imageforge.runtime import Runtime, StorageFactory
from imageforge.settings import Settings
from imageforge.testing.leftovers import leftovers, mark_session
from imageforge.testing.s3 import MotoServer
from tests.storages import BACKENDS, Backend, make_backend
from tests.tiny_diffusers import tiny_folders  # noqa: F401  (a session fixture, shared)

# PostgreSQL fixtures for every module that asks for them (skipped without a server).
pytest_plugins = ["tests.pg"]

#: Every process this session starts inherits the mark (see `no_process_left_behind`).
SESSION_MARK = mark_session()
#: How long processes may take to finish exiting once the last test is done.
LEFTOVER_GRACE_SECONDS = 10.0


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """The suite leaves no process behind: at its end, none of the processes it started
    (descendants of this one, or orphans that carry its mark) may still run. Those found
    are killed, so that a failure here does not leave them behind either."""
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while (found := leftovers(SESSION_MARK)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for leftover in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(leftover.pid, signal.SIGKILL)
    if found:
        listed = "\n".join(f"  {p.pid} (parent {p.parent}): {p.command[:200]}" for p in found)
        pytest.fail(f"the test session left {len(found)} processes running:\n{listed}")


CREATE = "/v1/image2/images"
QUOTE = "/v1/image2/images/quote"
#: The routes that take a create body: they validate it alike, so their tests run on both.
CREATE_BODY_ROUTES = (CREATE, QUOTE)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "lease_seconds": 5.0,
        "heartbeat_seconds": 1.0,
        "rescue_interval_seconds": 0.5,
        "poll_interval_seconds": 0.2,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "shutdown_grace_seconds": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


class ApiHarness:
    """An in-process server: the real app and lifespan, reached through httpx."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    async def new_key(self, name: str = "test") -> str:
        _, secret = await create_api_key(self.runtime.store, name)
        return secret

    async def create(self, key: str, **body: Any) -> httpx.Response:
        return await self.post_create_body(CREATE, key, **body)

    async def post_create_body(self, path: str, key: str, **body: Any) -> httpx.Response:
        """A create body (model and prompt defaulted) to `path`: create or quote."""
        body.setdefault("model", "gpt-image-2")
        body.setdefault("prompt", "a red fox in the snow")
        return await self.client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})

    async def poll(self, key: str, task_id: str) -> httpx.Response:
        return await self.client.get(
            f"/v1/result/{task_id}", headers={"Authorization": f"Bearer {key}"}
        )

    async def wait_terminal(self, key: str, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            response = await self.poll(key, task_id)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] in ("completed", "failed"):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} still {body['status']} after {timeout}s")
            await asyncio.sleep(0.05)


async def start_harness(
    settings: Settings, *, run_worker: bool = True, storage: StorageFactory | None = None
) -> tuple[Any, ApiHarness]:
    app = create_app(settings, run_worker=run_worker, storage=storage)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    return lifespan, ApiHarness(app, client)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[ApiHarness]:
    lifespan, harness = await start_harness(settings)
    try:
        yield harness
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def key(api: ApiHarness) -> str:
    return await api.new_key()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoServer]:
    """An S3-compatible server on 127.0.0.1 for the whole session (moto's)."""
    with MotoServer() as server:
        yield server


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each storage backend in turn, empty."""
    made = make_backend(request.param, tmp_path, request)
    try:
        yield made
    finally:
        await made.storage.aclose()

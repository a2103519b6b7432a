"""`AsyncClient`: `Client` on asyncio, call for call; the same operations underneath."""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from imageforge_client import _operations as ops
from imageforge_client import _waiting
from imageforge_client._capabilities import Capabilities
from imageforge_client._config import DEFAULT_TIMEOUT, DEFAULT_WAIT_TIMEOUT
from imageforge_client._drivers import ProgressCallback, run_async
from imageforge_client._files import target_path, write_atomically
from imageforge_client._retry import PollSchedule
from imageforge_client._shared import _ClientBase, _ImageBase, _TaskListBase
from imageforge_client._steps import Operation
from imageforge_client.models import Quote, TaskCreated, TaskPage, TaskResult, Usage

if TYPE_CHECKING:
    from typing import Unpack

    from imageforge_client._operations import CreateOptions, ImageOptions

T = TypeVar("T")


class AsyncClient(_ClientBase[httpx.AsyncClient]):
    """The asyncio twin of `Client` (same arguments, same calls, awaited).

        async with AsyncClient() as client:
            image = await client.images.generate("a lake at dawn")
            await image.save("lake.png")

    `on_progress` may be a plain function or a coroutine function.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        polling: PollSchedule | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            httpx.AsyncClient,
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            polling=polling,
            http_client=http_client,
        )
        self.images = AsyncImages(self)
        self.results = AsyncResults(self)
        self.tasks = AsyncTasks(self)
        self.usage = AsyncUsageReports(self)

    async def capabilities(self) -> Capabilities:
        """The extensions the server lists in `/openapi.json` (read once per client)."""
        return await self._run(ops.capabilities(self._state))

    async def _run(self, operation: Operation[T], on_progress: ProgressCallback | None = None) -> T:
        return await run_async(self._state.config, self._http, operation, on_progress)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncImageResult(_ImageBase):
    """A completed task's image: `await bytes()` downloads it (once), `await save(path)`."""

    def __init__(self, client: AsyncClient, task: TaskResult) -> None:
        super().__init__(task)
        self._client = client

    async def bytes(self) -> builtins.bytes:
        if self._content is None:
            operation = ops.download(self._client._state, self._task)
            response, task = await self._client._run(operation)
            return self._keep(response, task)
        return self._content

    async def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the image to `path` (a directory gets `<task id>.png`); returns the file."""
        data = await self.bytes()
        target = target_path(path, self.id, self._extension)
        return await asyncio.to_thread(write_atomically, target, data)


class AsyncImages:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, prompt: str, **options: Unpack[CreateOptions]) -> TaskCreated:
        """See `Client.images.create`."""
        return await self._client._run(ops.create(self._client._state, prompt, options))

    async def generate(
        self,
        prompt: str,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        on_progress: ProgressCallback | None = None,
        **options: Unpack[CreateOptions],
    ) -> AsyncImageResult:
        """See `Client.images.generate`."""
        operation = _waiting.generate(self._client._state, prompt, options, timeout=timeout)
        return AsyncImageResult(self._client, await self._client._run(operation, on_progress))

    async def quote(self, prompt: str, **options: Unpack[ImageOptions]) -> Quote:
        """See `Client.images.quote`."""
        return await self._client._run(ops.quote(self._client._state, prompt, options))


class AsyncResults:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, task_id: str) -> TaskResult:
        """See `Client.results.get`."""
        return await self._client._run(ops.get(self._client._state, task_id))

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        on_progress: ProgressCallback | None = None,
    ) -> AsyncImageResult:
        """See `Client.results.wait`."""
        operation = _waiting.wait(self._client._state, task_id, timeout=timeout)
        task = ops.require_completed(await self._client._run(operation, on_progress))
        return AsyncImageResult(self._client, task)

    async def cancel(self, task_id: str) -> TaskResult:
        """See `Client.results.cancel`."""
        return await self._client._run(ops.cancel(self._client._state, task_id))


class AsyncTaskList(_TaskListBase):
    """`async for task in ...` for tasks, or `async for page in ....pages()`."""

    def __init__(self, client: AsyncClient, **filters: Any) -> None:
        super().__init__(**filters)
        self._client = client

    async def pages(self) -> AsyncIterator[TaskPage]:
        after = self._after
        while True:
            page = await self._client._run(
                ops.list_page(
                    self._client._state,
                    status=self._status,
                    model=self._model,
                    limit=self._limit,
                    after=after,
                )
            )
            yield page
            after = ops.next_cursor(page)
            if after is None:
                return

    async def __aiter__(self) -> AsyncIterator[TaskResult]:
        async for page in self.pages():
            for task in page.data:
                yield task


class AsyncTasks:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def list(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> AsyncTaskList:
        """See `Client.tasks.list`."""
        return AsyncTaskList(self._client, status=status, model=model, limit=limit, after=after)


class AsyncUsageReports:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, *, days: int | None = None) -> Usage:
        """See `Client.usage.get`."""
        return await self._client._run(ops.usage(self._client._state, days=days))

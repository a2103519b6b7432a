"""`Client`: the blocking client. `AsyncClient` (in `async_client.py`) mirrors it call for call;
both run the same operations (`_operations.py`, `_waiting.py`)."""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from imageforge_client import _operations as ops
from imageforge_client import _waiting
from imageforge_client._capabilities import Capabilities
from imageforge_client._config import DEFAULT_TIMEOUT, DEFAULT_WAIT_TIMEOUT
from imageforge_client._drivers import ProgressCallback, run_sync
from imageforge_client._files import target_path, write_atomically
from imageforge_client._retry import PollSchedule
from imageforge_client._shared import _ClientBase, _ImageBase, _TaskListBase
from imageforge_client._steps import Operation
from imageforge_client.models import Quote, TaskCreated, TaskPage, TaskResult, Usage

if TYPE_CHECKING:
    from typing import Unpack

    from imageforge_client._operations import CreateOptions, ImageOptions

T = TypeVar("T")


class Client(_ClientBase[httpx.Client]):
    """A blocking client for imageforge or any GPT Image 2 task API.

    `api_key` and `base_url` default to `IMAGEFORGE_API_KEY` and `IMAGEFORGE_BASE_URL`
    (else `http://127.0.0.1:8000`). 429s are retried after their `Retry-After`, up to
    `max_retries` times; so are 503s and lost connections where resending is safe. Use it
    as a context manager, or call `close()`.

        with Client() as client:
            client.images.generate("a lake at dawn", ratio="16:9").save("lake.png")
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        polling: PollSchedule | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            httpx.Client,
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            polling=polling,
            http_client=http_client,
        )
        self.images = Images(self)
        self.results = Results(self)
        self.tasks = Tasks(self)
        self.usage = UsageReports(self)

    def capabilities(self) -> Capabilities:
        """The extensions the server lists in `/openapi.json` (read once per client)."""
        return self._run(ops.capabilities(self._state))

    def _run(self, operation: Operation[T], on_progress: ProgressCallback | None = None) -> T:
        return run_sync(self._state.config, self._http, operation, on_progress)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ImageResult(_ImageBase):
    """A completed task's image: `bytes()` downloads it (once), `save(path)` writes it."""

    def __init__(self, client: Client, task: TaskResult) -> None:
        super().__init__(task)
        self._client = client

    def bytes(self) -> builtins.bytes:
        if self._content is None:
            response, task = self._client._run(ops.download(self._client._state, self._task))
            return self._keep(response, task)
        return self._content

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the image to `path` (a directory gets `<task id>.png`); returns the file."""
        data = self.bytes()
        return write_atomically(target_path(path, self.id, self._extension), data)


class Images:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, prompt: str, **options: Unpack[CreateOptions]) -> TaskCreated:
        """Create a task (`POST /v1/image2/images`) and return at once with its id.

        Options: `model` (default `gpt-image-2`), `quality`, `ratio`, `resolution`, `size`,
        `image_urls`, `callback_url` (imageforge extension), `extra_body`, `idempotency_key`.
        """
        return self._client._run(ops.create(self._client._state, prompt, options))

    def generate(
        self,
        prompt: str,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        on_progress: ProgressCallback | None = None,
        **options: Unpack[CreateOptions],
    ) -> ImageResult:
        """Create a task and wait until it is done; `on_progress(task)` sees each new state.

        Raises `TaskFailedError` if the task fails, `TaskTimeoutError` after `timeout`
        seconds (None: no limit); the task goes on either way.
        """
        operation = _waiting.generate(self._client._state, prompt, options, timeout=timeout)
        return ImageResult(self._client, self._client._run(operation, on_progress))

    def quote(self, prompt: str, **options: Unpack[ImageOptions]) -> Quote:
        """The resolved size and price of a request, creating and charging nothing."""
        return self._client._run(ops.quote(self._client._state, prompt, options))


class Results:
    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, task_id: str) -> TaskResult:
        """The task's current state (`GET /v1/result/{id}`)."""
        return self._client._run(ops.get(self._client._state, task_id))

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        on_progress: ProgressCallback | None = None,
    ) -> ImageResult:
        """Wait for an existing task like `images.generate` does, and return its image."""
        operation = _waiting.wait(self._client._state, task_id, timeout=timeout)
        task = ops.require_completed(self._client._run(operation, on_progress))
        return ImageResult(self._client, task)

    def cancel(self, task_id: str) -> TaskResult:
        """Cancel the task (imageforge extension); a processing task may still read
        `processing` until its engine stops. Cancelling a finished task changes nothing."""
        return self._client._run(ops.cancel(self._client._state, task_id))


class TaskList(_TaskListBase):
    """The caller's tasks, newest first: iterate for tasks, or `pages()` for whole pages.
    Pages are fetched as the iteration reaches them."""

    def __init__(self, client: Client, **filters: Any) -> None:
        super().__init__(**filters)
        self._client = client

    def pages(self) -> Iterator[TaskPage]:
        after = self._after
        while True:
            page = self._client._run(
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

    def __iter__(self) -> Iterator[TaskResult]:
        for page in self.pages():
            yield from page.data


class Tasks:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> TaskList:
        """The caller's tasks (imageforge extension `GET /v1/tasks`), `limit` per page."""
        return TaskList(self._client, status=status, model=model, limit=limit, after=after)


class UsageReports:
    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, *, days: int | None = None) -> Usage:
        """The key's balance and spend by day and model (imageforge extension)."""
        return self._client._run(ops.usage(self._client._state, days=days))

"""What `Client` and `AsyncClient`, and their results and task lists, share."""

from __future__ import annotations

import builtins
from typing import Generic, TypeVar

import httpx

from imageforge_client._config import ClientConfig, ClientState
from imageforge_client._files import image_extension
from imageforge_client._retry import PollSchedule
from imageforge_client._version import USER_AGENT
from imageforge_client.models import TaskResult

HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)


class _ClientBase(Generic[HttpT]):
    """Settings resolved once (arguments, then the environment) and the connection pool."""

    def __init__(
        self,
        pool_type: type[HttpT],
        *,
        api_key: str | None,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        polling: PollSchedule | None,
        http_client: HttpT | None,
    ) -> None:
        config = ClientConfig.resolve(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            polling=polling,
        )
        self._state = ClientState(config)
        #: A pool the caller brought stays theirs to close.
        self._owns_http = http_client is None
        self._http: HttpT = http_client or pool_type(
            timeout=httpx.Timeout(timeout), headers={"User-Agent": USER_AGENT}
        )

    @property
    def base_url(self) -> str:
        return self._state.config.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


class _ImageBase:
    """A completed task and, once downloaded, its image."""

    def __init__(self, task: TaskResult) -> None:
        self._task = task
        self._content: builtins.bytes | None = None
        self._extension = ".png"

    @property
    def task(self) -> TaskResult:
        """The task as last read (a download that renewed an expired link reads it again)."""
        return self._task

    @property
    def id(self) -> str:
        return self._task.id

    @property
    def image_url(self) -> str:
        """The signed link to the image; it needs no API key and expires (24 h on imageforge)."""
        url = self._task.image_url
        assert url is not None  # only completed tasks with a link become results
        return url

    def _keep(self, response: httpx.Response, task: TaskResult) -> builtins.bytes:
        self._task = task
        self._content = response.content
        self._extension = image_extension(response)
        return self._content

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, model={self._task.model!r})"


class _TaskListBase:
    def __init__(
        self,
        *,
        status: str | None,
        model: str | None,
        limit: int | None,
        after: str | None,
    ) -> None:
        self._status = status
        self._model = model
        self._limit = limit
        self._after = after

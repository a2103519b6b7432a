"""What the sync and async image results and task lists share."""

from __future__ import annotations

import builtins

import httpx

from imageforge_client._files import image_extension
from imageforge_client.models import TaskResult


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

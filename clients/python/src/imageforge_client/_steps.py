"""The steps an operation asks its driver to perform: the seam between rules and I/O.

Every operation (create, wait, list, download, ...) is written once, as a generator that
yields these steps and receives their results; `_drivers.py` performs them with a blocking
`httpx.Client` or an `httpx.AsyncClient`. So retries, backoff, error mapping and the waiting
strategies exist once, not once per client.

A driver answers `Send` with the `httpx.Response` (body read), `OpenStream` with a
`StreamHandle` (body not read unless the status is an error), `ReadStream` with the next
chunk (`b""` at the end), and throws `httpx.TransportError`s into the generator.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx

from imageforge_client.models import TaskResult

T = TypeVar("T")


@dataclass(frozen=True)
class ApiRequest:
    method: str
    #: Absolute URL: the API's (under the base URL) or an image link's.
    url: str
    params: Mapping[str, str | int] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Sends the API key. Only API calls do; image links never get it, wherever they point.
    authenticated: bool = True
    #: Whether resending after the server may have acted on it is safe: True for reads and
    #: naturally idempotent calls; None for create, safe only where the server honours
    #: `Idempotency-Key` (learnt from its `/openapi.json` when the question first arises).
    replayable: bool | None = True
    #: Read timeout for this request, when it must outlast the client's (long-poll, events).
    read_timeout: float | None = None
    follow_redirects: bool = False


class StreamHandle(Protocol):
    @property
    def response(self) -> httpx.Response: ...


@dataclass(frozen=True)
class Send:
    request: ApiRequest


@dataclass(frozen=True)
class OpenStream:
    request: ApiRequest


@dataclass(frozen=True)
class ReadStream:
    stream: StreamHandle


@dataclass(frozen=True)
class CloseStream:
    stream: StreamHandle


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Notify:
    """Hand a new state of the task to the caller's `on_progress`."""

    task: TaskResult


Step = Send | OpenStream | ReadStream | CloseStream | Sleep | Notify
Operation = Generator[Step, Any, T]

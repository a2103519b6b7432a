"""Perform an operation's steps (see `_steps.py`) with httpx, blocking or on asyncio.

The two drivers are the only code that exists twice, because one blocks and one awaits; each
is a loop that sends a step's result back into the operation, or throws its transport error.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import httpx

from imageforge_client._config import ClientConfig
from imageforge_client._steps import (
    ApiRequest,
    CloseStream,
    OpenStream,
    Operation,
    ReadStream,
    Send,
    Sleep,
    Step,
)
from imageforge_client.models import TaskResult

T = TypeVar("T")

#: Called with each new state of a task; the async client awaits what it returns if awaitable.
ProgressCallback = Callable[[TaskResult], Any]


def build_request(
    config: ClientConfig, http: httpx.Client | httpx.AsyncClient, request: ApiRequest
) -> httpx.Request:
    headers = dict(request.headers)
    if request.authenticated:
        headers["Authorization"] = f"Bearer {config.api_key}"
    timeout: Any = httpx.USE_CLIENT_DEFAULT
    if request.read_timeout is not None:
        timeout = httpx.Timeout(config.timeout, read=request.read_timeout)
    return http.build_request(
        request.method,
        request.url,
        params=request.params,
        json=request.json,
        headers=headers,
        timeout=timeout,
    )


class _SyncStream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.chunks: Iterator[bytes] = response.iter_bytes()


class _AsyncStream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.chunks: AsyncIterator[bytes] = response.aiter_bytes()


def run_sync(
    config: ClientConfig,
    http: httpx.Client,
    operation: Operation[T],
    on_progress: ProgressCallback | None = None,
) -> T:
    streams: list[_SyncStream] = []

    def perform(step: Step) -> Any:
        if isinstance(step, Send | OpenStream):
            built = build_request(config, http, step.request)
            follow = step.request.follow_redirects
            if isinstance(step, Send):
                return http.send(built, follow_redirects=follow)
            response = http.send(built, stream=True, follow_redirects=follow)
            if not response.is_success:
                try:
                    response.read()  # the error's body, for its message
                finally:
                    response.close()
            stream = _SyncStream(response)
            streams.append(stream)
            return stream
        if isinstance(step, ReadStream):
            assert isinstance(step.stream, _SyncStream)
            return next(step.stream.chunks, b"")
        if isinstance(step, CloseStream):
            step.stream.response.close()
            return None
        if isinstance(step, Sleep):
            time.sleep(max(0.0, step.seconds))
            return None
        if on_progress is not None:
            on_progress(step.task)
        return None

    try:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = operation.throw(error) if error is not None else operation.send(value)
            except StopIteration as done:
                result: T = done.value
                return result
            value, error = None, None
            try:
                value = perform(step)
            except httpx.TransportError as exc:
                error = exc
    finally:
        operation.close()
        for stream in streams:
            stream.response.close()


async def run_async(
    config: ClientConfig,
    http: httpx.AsyncClient,
    operation: Operation[T],
    on_progress: ProgressCallback | None = None,
) -> T:
    streams: list[_AsyncStream] = []

    async def perform(step: Step) -> Any:
        if isinstance(step, Send | OpenStream):
            built = build_request(config, http, step.request)
            follow = step.request.follow_redirects
            if isinstance(step, Send):
                return await http.send(built, follow_redirects=follow)
            response = await http.send(built, stream=True, follow_redirects=follow)
            if not response.is_success:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            stream = _AsyncStream(response)
            streams.append(stream)
            return stream
        if isinstance(step, ReadStream):
            assert isinstance(step.stream, _AsyncStream)
            return await anext(step.stream.chunks, b"")
        if isinstance(step, CloseStream):
            await step.stream.response.aclose()
            return None
        if isinstance(step, Sleep):
            await asyncio.sleep(max(0.0, step.seconds))
            return None
        if on_progress is not None:
            outcome = on_progress(step.task)
            if inspect.isawaitable(outcome):
                await outcome
        return None

    try:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = operation.throw(error) if error is not None else operation.send(value)
            except StopIteration as done:
                result: T = done.value
                return result
            value, error = None, None
            try:
                value = await perform(step)
            except httpx.TransportError as exc:
                error = exc
    finally:
        operation.close()
        for stream in streams:
            await stream.response.aclose()

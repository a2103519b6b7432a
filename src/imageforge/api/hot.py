"""The two hottest routes, poll and create, answered ahead of FastAPI's router.

A py-spy profile of `imageforge serve` under poll load put most of a poll's time in the
framework: route matching, the request/response wrappers and dependency solving,
against ~10 % in imageforge's own handler. `HotRoutes` is a pure ASGI middleware, the
innermost of the app's own (so the proxy headers, the body guard and any request log
still wrap it), that answers `GET /v1/result/{task_id}` and `POST /v1/image2/images` on
the raw scope: no `Request` for the poll, no dependencies, no response object on success.
Every other request, and every other method on these paths (a 405 stays FastAPI's), goes
on to the router. The routes stay declared in `routes/results.py` and `routes/images.py`
for the API document; the answers are the same bytes, status codes and headers as before.

Each answer names its route for the request log, in `scope["state"]` (the contract in
`api/observe.py`): `route` (the template), `task_id`, `prompt` on create, and `key_id`, which
`authenticate_scope` writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from imageforge.api.deps import authenticate_scope, base_url_of
from imageforge.api.errors import imageforge_error_response
from imageforge.api.request_body import parse_json_bytes
from imageforge.errors import ImageforgeError
from imageforge.runtime import Runtime
from imageforge.service import check_wait
from imageforge.store import ApiKeyRecord
from imageforge.tasks import Task
from imageforge.wire import CreateImageRequest, task_created_body

POLL_ROUTE = "/v1/result/{task_id}"
CREATE_ROUTE = "/v1/image2/images"
_POLL_PREFIX = "/v1/result/"
_JSON = (b"content-type", b"application/json")
_REPLAYED = (b"idempotent-replayed", b"true")


class HotRoutes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            path = _route_path(scope)
            if method == "GET" and path.startswith(_POLL_PREFIX):
                task_id = path[len(_POLL_PREFIX) :]
                if task_id and "/" not in task_id:
                    await _poll(scope, receive, send, task_id)
                    return
            elif method == "POST" and path == CREATE_ROUTE:
                await _create(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the app's `root_path` (as Starlette does)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


def _runtime(scope: Scope) -> Runtime:
    runtime: Runtime = scope["app"].state.runtime
    return runtime


def _state(scope: Scope, route: str) -> dict[str, object]:
    state: dict[str, object] = scope.setdefault("state", {})
    state["route"] = route
    return state


async def _poll(scope: Scope, receive: Receive, send: Send, task_id: str) -> None:
    state = _state(scope, POLL_ROUTE)
    state["task_id"] = task_id
    runtime = _runtime(scope)
    try:
        caller = await authenticate_scope(runtime, scope)
        if scope["query_string"]:
            task = await _long_poll(runtime, caller, task_id, scope)
            now = time.time()
        else:
            now = time.time()
            task = await runtime.service.get(caller, task_id, now=now)
        body = poll_body(runtime, scope, task, now=now)
    except ImageforgeError as exc:
        await _error(runtime, scope, receive, send, exc)
        return
    await _answer(send, body)


async def _long_poll(runtime: Runtime, caller: ApiKeyRecord, task_id: str, scope: Scope) -> Task:
    """The task for a poll that may carry `?wait=N`: at once without it, else once it is
    finished or N seconds passed (woken by the process's change notifications, never by
    reading the database while it waits). Other query parameters are ignored."""
    seconds = check_wait(QueryParams(scope["query_string"]).get("wait"))
    if seconds is None:
        return await runtime.service.get(caller, task_id)
    return await runtime.service.wait(caller, task_id, seconds=seconds)


def poll_body(runtime: Runtime, scope: Scope, task: Task, *, now: float) -> bytes:
    """The body of a task's poll (`Runtime.task_body`), its link on this request's URL."""
    base_url = base_url_of(scope, runtime.settings.public_base_url)
    return orjson.dumps(runtime.task_body(task, base_url=base_url, now=now))


async def _create(scope: Scope, receive: Receive, send: Send) -> None:
    state = _state(scope, CREATE_ROUTE)
    runtime = _runtime(scope)
    try:
        caller = await authenticate_scope(runtime, scope)
        idempotency_key = _header(scope, b"idempotency-key")
        # Read after authentication: a request without a valid key gets its 401 first.
        raw = await Request(scope, receive).body()
        body = parse_json_bytes(raw, CreateImageRequest)
        state["prompt"] = body.prompt
        base_url = None
        if body.callback_url is not None:
            base_url = base_url_of(scope, runtime.settings.public_base_url)
        task, replayed = await runtime.service.create(
            caller, body, idempotency_key=idempotency_key, base_url=base_url
        )
    except ImageforgeError as exc:
        await _error(runtime, scope, receive, send, exc)
        return
    state["task_id"] = task.id
    answer = orjson.dumps(task_created_body(task, replayed=replayed))
    await _answer(send, answer, (_REPLAYED,) if replayed else ())


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


async def _answer(send: Send, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """A 200 with a JSON body, headers as Starlette's `Response` orders them."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*headers, (b"content-length", b"%d" % len(body)), _JSON],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _error(
    runtime: Runtime, scope: Scope, receive: Receive, send: Send, exc: ImageforgeError
) -> None:
    response = imageforge_error_response(
        exc,
        method=scope["method"],
        path=scope["path"],
        unavailable_retry_after=runtime.settings.unavailable_retry_after_seconds,
    )
    await response(scope, receive, send)

"""GET /v1/result/{id} (the poll endpoint, the hottest path of the server, and its
long-poll: declared here for the API document, answered by `api/hot.py`), and the task's
lifecycle routes: its events, cancel, webhook deliveries."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Path, Request
from starlette.responses import Response, StreamingResponse

from imageforge.api.deps import REQUIRES_API_KEY, authenticate, base_url_of, runtime_of
from imageforge.api.event_stream import parse_last_event_id, task_events
from imageforge.api.responses import task_api_responses
from imageforge.runtime import Runtime
from imageforge.service import MAX_WAIT_SECONDS
from imageforge.tasks import Task
from imageforge.wire import DeliveryList, TaskResult, delivery_list_body

router = APIRouter(tags=["images"])

_TASK_ID = Path(description="The task id returned on create (`image_…`).")


@router.get(
    "/v1/result/{task_id}",
    response_model=TaskResult,
    summary="Query an image generation task",
    description="Returns the task's status; `image_url` once it is `completed`, `error` once "
    "it has `failed`; `expired: true` (with `image_url: null`) once a completed task's image "
    "is past the image retention; `progress` (0–100) where the engine reports it. With "
    "`wait=N`, answers as soon as the task is finished, or after N seconds with its state "
    "then (a long-poll). A task created with another API key is a 404, like an unknown id, "
    "and so is a finished task past the task retention.",
    responses=task_api_responses(400, 401, 404, 429, 503),
    openapi_extra={
        **REQUIRES_API_KEY,
        "parameters": [
            {
                "name": "wait",
                "in": "query",
                "required": False,
                "description": f"Hold the answer up to this many seconds (1 to "
                f"{MAX_WAIT_SECONDS}) until the task is `completed` or `failed`.",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_WAIT_SECONDS},
            }
        ],
    },
)
async def get_result(task_id: str = _TASK_ID) -> Response:
    """Declares the operation for the API document; requests are answered ahead of the
    router by `api/hot.py` (which keeps other methods on this path FastAPI's 405)."""
    raise AssertionError("GET /v1/result/{task_id} is answered by imageforge.api.hot")


@router.get(
    "/v1/result/{task_id}/events",
    summary="Follow a task as server-sent events",
    description="A `text/event-stream` of the task's changes: `event: status` for each "
    "status change, `event: progress` when only `progress` moved; each `data` is the task "
    "object exactly as `GET /v1/result/{id}` returns it at that moment, and each `id` a "
    "number to resume from with the `Last-Event-ID` header. Comments (`: keep-alive`) keep "
    "a quiet stream open. The stream ends after the `completed` or `failed` event; a "
    "finished task's stream is that one event.",
    responses={
        200: {
            "description": "The event stream.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **task_api_responses(401, 404, 429, 503),
    },
    openapi_extra={
        **REQUIRES_API_KEY,
        "parameters": [
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "The `id` of the last event received: resume after it.",
                "schema": {"type": "string"},
            }
        ],
    },
)
async def task_event_stream(request: Request, task_id: str = _TASK_ID) -> Response:
    caller = await authenticate(request)
    runtime = runtime_of(request)
    await runtime.service.get(caller, task_id)  # a 404 before the stream starts
    states = runtime.service.follow(
        caller, task_id, keepalive_seconds=runtime.settings.events_keepalive_seconds
    )
    stream = task_events(
        states,
        lambda task: task_result_payload(runtime, request, task, now=time.time()),
        last_event_id=parse_last_event_id(request.headers.get("last-event-id")),
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/v1/result/{task_id}/cancel",
    response_model=TaskResult,
    summary="Cancel a task",
    description="A queued task never runs: it is `failed` at once, with an `error` that "
    "begins with `cancelled`, and refunded. A processing task is stopped by its worker (an "
    "upstream that supports it is told to stop too) and ends the same way; until its engine "
    "call stops, this answer and polls may still read `processing`. Cancelling a finished "
    "task changes nothing and answers its state; cancelling twice is cancelling once.",
    responses=task_api_responses(401, 404, 429, 503),
    openapi_extra=REQUIRES_API_KEY,
)
async def cancel_task(request: Request, task_id: str = _TASK_ID) -> Response:
    caller = await authenticate(request)
    runtime = runtime_of(request)
    task = await runtime.service.cancel(caller, task_id)
    body = task_result_payload(runtime, request, task, now=time.time())
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/v1/result/{task_id}/deliveries",
    response_model=DeliveryList,
    summary="List a task's webhook deliveries",
    description="Every attempt to deliver the task's webhook (`callback_url`), oldest "
    "first: when it ended, the receiver's status, why it did not count, and when the next "
    "attempt is due. Empty for a task without a callback or not finished yet.",
    responses=task_api_responses(401, 404, 429, 503),
    openapi_extra=REQUIRES_API_KEY,
)
async def list_deliveries(request: Request, task_id: str = _TASK_ID) -> Response:
    caller = await authenticate(request)
    attempts = await runtime_of(request).service.deliveries(caller, task_id)
    return Response(orjson.dumps(delivery_list_body(attempts)), media_type="application/json")


def task_result_payload(
    runtime: Runtime, request: Request, task: Task, *, now: float
) -> dict[str, Any]:
    """The body of a task's poll (`Runtime.task_body`), its link on this request's URL."""
    base_url = base_url_of(request.scope, runtime.settings.public_base_url)
    return runtime.task_body(task, base_url=base_url, now=now)

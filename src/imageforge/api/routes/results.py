"""GET /v1/result/{id}: the poll endpoint, the hottest path of the server."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from imageforge.api.deps import (
    REQUIRES_API_KEY,
    authenticate,
    base_url_of,
    observed,
    runtime_of,
)
from imageforge.api.responses import task_api_responses
from imageforge.runtime import Runtime
from imageforge.tasks import Task, TaskStatus
from imageforge.wire import TaskResult, task_result_body

router = APIRouter(tags=["images"])


@router.get(
    "/v1/result/{task_id}",
    response_model=TaskResult,
    summary="Query an image generation task",
    description="Returns the task's status; `image_url` once it is `completed`, `error` once "
    "it has `failed`; `expired: true` (with `image_url: null`) once a completed task's image "
    "is past the image retention. A task created with another API key is a 404, like an "
    "unknown id, and so is a finished task past the task retention.",
    responses=task_api_responses(401, 404, 429, 503),
    openapi_extra=REQUIRES_API_KEY,
)
async def get_result(
    request: Request,
    task_id: str = Path(description="The task id returned on create (`image_…`)."),
) -> Response:
    observed(request)["task_id"] = task_id
    caller = await authenticate(request)
    runtime = runtime_of(request)
    now = time.time()
    task = await runtime.service.get(caller, task_id, now=now)
    body = task_result_payload(runtime, request, task, now=now)
    return Response(orjson.dumps(body), media_type="application/json")


def task_result_payload(
    runtime: Runtime, request: Request, task: Task, *, now: float
) -> dict[str, Any]:
    """The body of a task's poll: retention and the link decided now, from the task (so
    nothing cached outlives either), by the rule in `retention.py` and the storage."""
    expired = runtime.retention.image_expired(task, now)
    image_url = None
    if task.status is TaskStatus.COMPLETED and task.image_key is not None and not expired:
        settings = runtime.settings
        image_url = runtime.storage.url_for(
            task.image_key,
            base_url=base_url_of(request, settings.public_base_url),
            expires=int(now) + settings.image_url_ttl_seconds,
        )
    return task_result_body(task, image_url=image_url, expired=expired)

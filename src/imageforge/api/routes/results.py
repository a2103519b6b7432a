"""GET /v1/result/{id}: the poll endpoint, the hottest path of the server."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from imageforge.api.deps import REQUIRES_API_KEY, authenticate, base_url_of, runtime_of
from imageforge.api.responses import error_responses
from imageforge.tasks import TaskStatus
from imageforge.wire import TaskResult, task_result_body

router = APIRouter(tags=["images"])


@router.get(
    "/v1/result/{task_id}",
    response_model=TaskResult,
    summary="Query an image generation task",
    description="Returns the task's status; `image_url` once it is `completed`, `error` once "
    "it has `failed`. A task created with another API key is a 404, like an unknown id.",
    responses=error_responses(401, 404, 429, 503),
    openapi_extra=REQUIRES_API_KEY,
)
async def get_result(
    request: Request,
    task_id: str = Path(description="The task id returned on create (`image_…`)."),
) -> Response:
    caller = await authenticate(request)
    runtime = runtime_of(request)
    task = await runtime.service.get(caller, task_id)
    image_url = None
    if task.status is TaskStatus.COMPLETED and task.image_key is not None:
        settings = runtime.settings
        image_url = runtime.storage.url_for(
            task.image_key,
            base_url=base_url_of(request, settings.public_base_url),
            expires=int(time.time()) + settings.image_url_ttl_seconds,
        )
    body = task_result_body(task, image_url=image_url)
    return Response(orjson.dumps(body), media_type="application/json")

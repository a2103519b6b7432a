"""POST /v1/image2/images: create a generation task."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from imageforge.api.deps import CallerDep, RuntimeDep
from imageforge.api.responses import ERROR_RESPONSES
from imageforge.wire import CreateImageRequest, TaskCreated

router = APIRouter(tags=["images"])


@router.post(
    "/v1/image2/images",
    response_model=TaskCreated,
    summary="Create an image generation task",
    description="Validates the request, queues a task and answers at once with its id. "
    "Poll `GET /v1/result/{id}` until the status is `completed` or `failed`.",
    responses=ERROR_RESPONSES,
)
async def create_image(
    body: CreateImageRequest, caller: CallerDep, runtime: RuntimeDep
) -> Response:
    task = await runtime.service.create(caller, body)
    payload = {
        "id": task.id,
        "object": "image",
        "created": task.created,
        "model": task.model,
        "status": task.status.value,
        "error": None,
    }
    return Response(orjson.dumps(payload), media_type="application/json")

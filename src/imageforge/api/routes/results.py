"""GET /v1/result/{id}: the poll endpoint, the hottest path of the server.

Declared here for the API document; answered by `api/hot.py`.
"""

from __future__ import annotations

from fastapi import APIRouter, Path
from starlette.responses import Response

from imageforge.api.deps import REQUIRES_API_KEY
from imageforge.api.responses import error_responses
from imageforge.wire import TaskResult

router = APIRouter(tags=["images"])


@router.get(
    "/v1/result/{task_id}",
    response_model=TaskResult,
    summary="Query an image generation task",
    description="Returns the task's status; `image_url` once it is `completed`, `error` once "
    "it has `failed`; `expired: true` (with `image_url: null`) once a completed task's image "
    "is past the image retention. A task created with another API key is a 404, like an "
    "unknown id, and so is a finished task past the task retention.",
    responses=error_responses(401, 404, 429, 503),
    openapi_extra=REQUIRES_API_KEY,
)
async def get_result(
    task_id: str = Path(description="The task id returned on create (`image_…`)."),
) -> Response:
    """Declares the operation for the API document; requests are answered ahead of the
    router by `api/hot.py` (which keeps other methods on this path FastAPI's 405)."""
    raise AssertionError("GET /v1/result/{task_id} is answered by imageforge.api.hot")

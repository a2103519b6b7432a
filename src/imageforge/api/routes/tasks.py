"""GET /v1/tasks: the caller's tasks, newest first, paged by keyset."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from imageforge.api.deps import REQUIRES_API_KEY, authenticate, runtime_of
from imageforge.api.responses import task_api_responses
from imageforge.api.routes.results import task_result_payload
from imageforge.service import (
    DEFAULT_PAGE,
    MAX_PAGE,
    check_page_limit,
    check_status_filter,
)
from imageforge.wire import TaskList, task_list_body

router = APIRouter(tags=["images"])


@router.get(
    "/v1/tasks",
    response_model=TaskList,
    summary="List your tasks",
    description="The calling key's tasks, newest first in exact creation order, each as "
    "`GET /v1/result/{id}` returns it. Page with `after` = the id of the last task of the "
    "previous page while `has_more` is true; tasks created meanwhile never shift a page.",
    responses=task_api_responses(400, 401, 429, 503),
    openapi_extra={
        **REQUIRES_API_KEY,
        "parameters": [
            {
                "name": "status",
                "in": "query",
                "required": False,
                "description": "Only tasks in this status.",
                "schema": {
                    "type": "string",
                    "enum": ["queued", "processing", "completed", "failed"],
                },
            },
            {
                "name": "model",
                "in": "query",
                "required": False,
                "description": "Only tasks of this model.",
                "schema": {"type": "string"},
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": f"Tasks per page, 1 to {MAX_PAGE} (default {DEFAULT_PAGE}).",
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_PAGE,
                    "default": DEFAULT_PAGE,
                },
            },
            {
                "name": "after",
                "in": "query",
                "required": False,
                "description": "The id of the last task of the previous page.",
                "schema": {"type": "string"},
            },
        ],
    },
)
async def list_tasks(request: Request) -> Response:
    caller = await authenticate(request)
    query = request.query_params
    runtime = runtime_of(request)
    page = await runtime.service.list_tasks(
        caller,
        limit=check_page_limit(query.get("limit")),
        after=query.get("after"),
        status=check_status_filter(query.get("status")),
        model=query.get("model"),
    )
    now = time.time()
    body = task_list_body(
        [task_result_payload(runtime, request, task, now=now) for task in page.tasks],
        has_more=page.has_more,
    )
    return Response(orjson.dumps(body), media_type="application/json")

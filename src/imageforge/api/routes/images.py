"""POST /v1/image2/images (create a task) and its dry run, /quote.

Create is declared here for the API document and answered by `api/hot.py`.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from imageforge.api.deps import REQUIRES_API_KEY, authenticate, runtime_of
from imageforge.api.request_body import json_body_schema, parse_json_body
from imageforge.api.responses import task_api_responses
from imageforge.service import MAX_IDEMPOTENCY_KEY_CHARS
from imageforge.wire import CreateImageRequest, QuoteResponse, TaskCreated, quote_body

router = APIRouter(tags=["images"])


@router.post(
    "/v1/image2/images",
    response_model=TaskCreated,
    summary="Create an image generation task",
    description="Validates the request, charges the key, queues a task and answers at once "
    "with its id. Poll `GET /v1/result/{id}` until the status is `completed` or `failed` (a "
    "failed task is refunded). With an `Idempotency-Key` header, a retry of the same request "
    "returns the original task (header `Idempotent-Replayed: true`) and charges nothing more.",
    responses=task_api_responses(400, 401, 402, 413, 422, 429, 503),
    openapi_extra={
        **REQUIRES_API_KEY,
        **json_body_schema(CreateImageRequest),
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "1 to 255 visible ASCII characters; kept 24 hours per API key.",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_IDEMPOTENCY_KEY_CHARS,
                    "pattern": "^[!-~]+$",
                },
            }
        ],
    },
)
async def create_image() -> Response:
    """Declares the operation for the API document; requests are answered ahead of the
    router by `api/hot.py` (which keeps other methods on this path FastAPI's 405)."""
    raise AssertionError("POST /v1/image2/images is answered by imageforge.api.hot")


@router.post(
    "/v1/image2/images/quote",
    response_model=QuoteResponse,
    summary="Price a request without creating it",
    description="Validates the body exactly like create (the same parser and the same "
    "rules, after the same key check) and returns the resolved size and price. Nothing is "
    "created or charged.",
    responses=task_api_responses(400, 401, 413, 429, 503),
    openapi_extra={**REQUIRES_API_KEY, **json_body_schema(CreateImageRequest)},
)
async def quote_image(request: Request) -> Response:
    caller = await authenticate(request)
    body = await parse_json_body(request, CreateImageRequest)
    del caller  # authenticated and counted against its rate limit; a quote charges nothing
    quote = runtime_of(request).service.quote(body)
    answer = quote_body(
        quote.resolved,
        tier=quote.tier,
        price_micros=quote.price_micros,
        currency=quote.currency,
    )
    return Response(orjson.dumps(answer), media_type="application/json")

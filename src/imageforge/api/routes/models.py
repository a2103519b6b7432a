"""GET /v1/models and GET /v1/models/{id}: the configured models, as OpenAI's Models API
lists them (so the `openai` SDK's `models.list()` works against the server)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from imageforge.api.deps import REQUIRES_API_KEY, authenticate, runtime_of
from imageforge.api.responses import MODEL_404, OPENAI_ADMIN_ONLY_KEY, openai_error_responses
from imageforge.errors import NotFound
from imageforge.openai_wire import ModelEntry, ModelList, model_body, model_list_body

router = APIRouter(tags=["openai"])


@router.get(
    "/v1/models",
    response_model=ModelList,
    summary="List the models (OpenAI Models API)",
    description="The configured models (custom ones included), as OpenAI's `GET /v1/models` "
    "lists them; `created` is when this server started.",
    responses={**openai_error_responses(401, 429, 503), 403: OPENAI_ADMIN_ONLY_KEY},
    openapi_extra=REQUIRES_API_KEY,
)
async def list_models(request: Request) -> Response:
    await authenticate(request)
    runtime = runtime_of(request)
    body = model_list_body(list(runtime.service.models), created=_started(request))
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/v1/models/{model_id}",
    response_model=ModelEntry,
    summary="Retrieve a model (OpenAI Models API)",
    responses={
        **openai_error_responses(401, 429, 503),
        403: OPENAI_ADMIN_ONLY_KEY,
        404: MODEL_404,
    },
    openapi_extra=REQUIRES_API_KEY,
)
async def retrieve_model(
    request: Request, model_id: str = Path(description="A model's id, e.g. `gpt-image-2`.")
) -> Response:
    await authenticate(request)
    if model_id not in runtime_of(request).service.models:
        raise NotFound(
            f"The model '{model_id[:100]}' does not exist", param="model", code="model_not_found"
        )
    body = model_body(model_id, created=_started(request))
    return Response(orjson.dumps(body), media_type="application/json")


def _started(request: Request) -> int:
    started: int = request.app.state.started_at
    return started

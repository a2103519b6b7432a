"""GET /metrics: Prometheus's text format, on the API's port unless `metrics_port` is set.

Not in the API document: it is for the operator's scraper, not for API clients. With
`metrics_token` set it needs `Authorization: Bearer <token>` (401 otherwise).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from imageforge.api.deps import runtime_of
from imageforge.errors import AuthenticationFailed
from imageforge.observability.metrics import CONTENT_TYPE, exposition
from imageforge.observability.metrics_server import bearer_token_matches

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def get_metrics(request: Request) -> Response:
    runtime = runtime_of(request)
    token = runtime.settings.metrics_token
    if token is not None and not bearer_token_matches(
        request.headers.get("authorization"), token.get_secret_value()
    ):
        raise AuthenticationFailed("/metrics needs the metrics token: Authorization: Bearer …")
    await runtime.prepare_scrape()
    return Response(exposition(runtime.queue_depth), media_type=CONTENT_TYPE)

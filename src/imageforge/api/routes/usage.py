"""GET /v1/usage: the calling key's balance, spend, refunds and task counts."""

from __future__ import annotations

from fastapi import APIRouter, Query

from imageforge.api.deps import CallerDep, RuntimeDep
from imageforge.api.responses import task_api_responses
from imageforge.wire import UsageResponse, usage_body

router = APIRouter(tags=["usage"])


@router.get(
    "/v1/usage",
    response_model=UsageResponse,
    summary="Balance and spend of the calling API key",
    description="Credits left, and tasks, spend and refunds by model and UTC day (spend is "
    "charges minus refunds; `refunded` is what failed and cancelled tasks got back, in the "
    "same currency units; both attributed to the day the task was created).",
    responses=task_api_responses(400, 401, 429, 503),
)
async def get_usage(
    caller: CallerDep,
    runtime: RuntimeDep,
    days: int = Query(30, ge=1, le=366, description="How many days back to report."),
) -> UsageResponse:
    usage = await runtime.service.usage(caller, days=days)
    return UsageResponse.model_validate(usage_body(usage.key, usage.currency, usage.rows))

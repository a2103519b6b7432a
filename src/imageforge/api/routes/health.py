"""GET /healthz: 200 when the server can serve, 503 when its database cannot."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from imageforge.api.deps import RuntimeDep
from imageforge.api.responses import error_responses

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(description="`ok` when the server can serve requests.")
    worker: bool = Field(description="Whether this process also runs a worker.")


@router.get(
    "/healthz",
    response_model=Health,
    summary="Readiness check",
    description="200 when the server can serve requests; 503 while its database is unreachable.",
    responses=error_responses(503),
)
async def healthz(runtime: RuntimeDep) -> Health:
    await runtime.store.ping()
    return Health(status="ok", worker=runtime.runner is not None)

"""GET /healthz: 200 when the server can serve, 503 when its database cannot."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from imageforge.api.deps import RuntimeDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    worker: bool


@router.get("/healthz", response_model=Health, summary="Readiness check")
async def healthz(runtime: RuntimeDep) -> Health:
    await runtime.store.ping()
    return Health(status="ok", worker=runtime.runner is not None)

"""GET /healthz (the process is alive) and GET /readyz (it can serve: 503 with the reason).

`/healthz` does no I/O at all, so a process whose database is down is still alive and
is not restarted for it; `/readyz` is what a load balancer asks before sending traffic.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from imageforge.api.deps import RuntimeDep
from imageforge.api.responses import error_responses
from imageforge.observability.readiness import check_ready

router = APIRouter(tags=["health"])


class Alive(BaseModel):
    status: str = Field(description="Always `ok`: the process answers.")


class Ready(BaseModel):
    status: str = Field(description="`ok`: database reachable, schema current, storage writable.")
    worker: bool = Field(description="Whether this process also runs a worker.")


_ALIVE = Alive(status="ok")


@router.get(
    "/healthz",
    response_model=Alive,
    summary="Liveness check",
    description="200 whenever the process answers; it checks nothing else (no I/O). Use "
    "`/readyz` to know whether it can serve.",
)
async def healthz() -> Alive:
    return _ALIVE


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness check",
    description="200 when the database is reachable, its schema is at this version's "
    "migration and image storage takes a write; 503 naming what is not, otherwise.",
    responses=error_responses(503),
)
async def readyz(runtime: RuntimeDep) -> Ready:
    await check_ready(runtime)
    return Ready(status="ok", worker=runtime.runner is not None)

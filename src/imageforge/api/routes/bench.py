"""Baseline routes for the benchmark: plain FastAPI routes returning a similar body.

Mounted only with `bench_endpoints` on; the benchmark reports imageforge's
throughput as a ratio of these, measured in the same process and run.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)

_BODY = {
    "id": "image_fd35ee52-2a98-44a6-b930-29a88ce9b8fd",
    "object": "image.generation",
    "created": 1774836724,
    "model": "gpt-image-2",
    "status": "queued",
    "image_url": None,
    "error": None,
}


@router.get("/_bench/bare/{task_id}")
async def bare_get(task_id: str) -> dict[str, Any]:
    return _BODY


@router.post("/_bench/bare")
async def bare_post() -> dict[str, Any]:
    return _BODY

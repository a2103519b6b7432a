"""/v1/admin/*: the operators' API, for admin keys only (documented in the README).

Out of the API document, and invisible to everyone else: without an admin key every
path under /v1/admin, whatever the method, gets the answer an unknown route gets (the
catch-all at the end makes a wrong method a 404 too, not a 405 that would tell).
Every call is audited (`admin.AdminService`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from imageforge.admin import Actor, AdminService
from imageforge.api.deps import AdminDep, observed, runtime_of
from imageforge.billing import parse_amount
from imageforge.errors import InvalidRequest
from imageforge.wire import (
    admin_task_body,
    audit_entry_body,
    key_created_body,
    key_info_body,
    usage_body,
)

router = APIRouter(prefix="/v1/admin", include_in_schema=False)
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    #: Starting credits in currency units; absent or null: unlimited.
    credits: Decimal | None = None
    admin: bool = False
    task_api: bool | None = None


class CreditChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["add", "set", "unlimited"]
    #: Currency units; required for add and set.
    amount: Decimal | None = None


def _service(request: Request, caller_id: str) -> tuple[AdminService, Actor]:
    runtime = runtime_of(request)
    actor = Actor(caller_id, request_id=observed(request).get("request_id"))
    return AdminService(runtime.store), actor


def _micros(value: Decimal | None, field: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_amount(value, what=field)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=field) from None


@router.get("/keys")
async def list_keys(request: Request, caller: AdminDep) -> dict[str, Any]:
    service, actor = _service(request, caller.id)
    keys = await service.list_keys(actor)
    return {"object": "list", "data": [key_info_body(key) for key in keys]}


@router.post("/keys")
async def create_key(request: Request, caller: AdminDep, body: NewKey) -> dict[str, Any]:
    service, actor = _service(request, caller.id)
    task_api = body.task_api if body.task_api is not None else not body.admin
    record, secret = await service.create_key(
        actor,
        name=body.name,
        balance_micros=_micros(body.credits, "credits"),
        admin=body.admin,
        task_api=task_api,
    )
    return {**key_info_body(record), **key_created_body(record, secret)}


@router.post("/keys/{key_id}/revoke")
async def revoke_key(request: Request, caller: AdminDep, key_id: str) -> dict[str, Any]:
    service, actor = _service(request, caller.id)
    return key_info_body(await service.revoke_key(actor, key_id))


@router.post("/keys/{key_id}/credits")
async def change_credits(
    request: Request, caller: AdminDep, key_id: str, body: CreditChange
) -> dict[str, Any]:
    service, actor = _service(request, caller.id)
    amount = _micros(body.amount, "amount")
    if body.action != "unlimited" and amount is None:
        raise InvalidRequest(f"amount: is required with action {body.action}", param="amount")
    record = await service.adjust_credits(
        actor,
        key_id,
        add_micros=amount if body.action == "add" else None,
        set_micros=amount if body.action == "set" else None,
        unlimited=body.action == "unlimited",
    )
    return key_info_body(record)


@router.get("/keys/{key_id}/usage")
async def key_usage(
    request: Request, caller: AdminDep, key_id: str, days: int = Query(30, ge=1, le=366)
) -> dict[str, Any]:
    service, actor = _service(request, caller.id)
    key, rows = await service.key_usage(actor, key_id, days=days)
    return usage_body(key, runtime_of(request).service.currency, rows)


@router.get("/tasks/{task_id}")
async def get_task(request: Request, caller: AdminDep, task_id: str) -> dict[str, Any]:
    observed(request)["task_id"] = task_id
    service, actor = _service(request, caller.id)
    return admin_task_body(await service.get_task(actor, task_id))


@router.get("/audit")
async def list_audit(
    request: Request,
    caller: AdminDep,
    limit: int = Query(100, ge=1, le=500),
    before: int | None = Query(None, ge=1, description="Entries older than this id."),
) -> dict[str, Any]:
    service, actor = _service(request, caller.id)
    entries = await service.audit(actor, limit=limit, before_id=before)
    return {"object": "list", "data": [audit_entry_body(entry) for entry in entries]}


@router.api_route("/{rest:path}", methods=_ALL_METHODS)
async def unknown_admin_route(caller: AdminDep) -> None:
    raise StarletteHTTPException(404)

"""Who is calling and what serves them: shared by every route.

The two hottest routes (poll and create) are answered ahead of FastAPI's router
(`api/hot.py`) and call `authenticate_scope` and `base_url_of` on the raw ASGI
scope; solving dependencies cost more than the rest of a poll. The other routes use
the `…Dep` aliases, which share the same parsing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from imageforge.errors import AdminOnlyKey, AuthenticationFailed
from imageforge.runtime import Runtime
from imageforge.store import ApiKeyRecord

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer <api key>`; create keys with `imageforge keys create`.",
)

#: OpenAPI for routes that authenticate without the dependency.
REQUIRES_API_KEY: dict[str, Any] = {"security": [{"ApiKey": []}]}


def observed(request: Request) -> dict[str, Any]:
    """The request's observation state: what the request line, metrics and span say
    about it (the contract in `api/observe.py`)."""
    state: dict[str, Any] = request.scope.setdefault("state", {})
    return state


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


async def authenticate_scope(runtime: Runtime, scope: Scope) -> ApiKeyRecord:
    """The active key behind `Authorization: Bearer …`, within its rate limit."""
    token = _bearer_token(scope)
    if token is None:
        raise AuthenticationFailed()
    caller = await runtime.keyring.authenticate(token)
    scope.setdefault("state", {})["key_id"] = caller.id
    if not caller.task_api:
        raise AdminOnlyKey()
    if runtime.rate_limiter is not None:
        await runtime.rate_limiter.check(caller.id)
    return caller


async def authenticate(request: Request) -> ApiKeyRecord:
    """`authenticate_scope` for a route that has a `Request`."""
    return await authenticate_scope(runtime_of(request), request.scope)


async def _runtime_dependency(request: Request) -> Runtime:
    return runtime_of(request)


async def _caller_dependency(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> ApiKeyRecord:
    # `credentials` is declared so that OpenAPI shows the scheme; parsing is shared.
    return await authenticate(request)


RuntimeDep = Annotated[Runtime, Depends(_runtime_dependency)]
CallerDep = Annotated[ApiKeyRecord, Depends(_caller_dependency)]


def base_url_of(scope: Scope, configured: str | None) -> str:
    """Where image links point: the configured public URL, else the URL the client called."""
    if configured:
        return configured
    host = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1")
            break
    if host is None:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope['scheme']}://{host}{scope.get('root_path', '')}"


async def authenticate_admin(request: Request) -> ApiKeyRecord:
    """The active admin key behind `Authorization: Bearer …`. Anything else (no key, a
    wrong one, a task-API key) gets the very answer an unknown route gets, so that only
    an admin can tell the admin routes exist."""
    token = _bearer_token(request.scope)
    if token is not None:
        try:
            caller = await runtime_of(request).keyring.authenticate(token)
        except AuthenticationFailed:
            pass
        else:
            if caller.admin:
                observed(request)["key_id"] = caller.id
                return caller
    raise StarletteHTTPException(404)


async def _admin_dependency(request: Request) -> ApiKeyRecord:
    return await authenticate_admin(request)


AdminDep = Annotated[ApiKeyRecord, Depends(_admin_dependency)]

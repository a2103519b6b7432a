"""Dependencies shared by the routes: the runtime and the calling API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imageforge.runtime import Runtime
from imageforge.store import ApiKeyRecord

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer <api key>`; create keys with `imageforge keys create`.",
)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> ApiKeyRecord:
    runtime: Runtime = request.app.state.runtime
    caller = await runtime.keyring.authenticate(credentials.credentials if credentials else None)
    if runtime.rate_limiter is not None:
        await runtime.rate_limiter.check(caller.id)
    return caller


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CallerDep = Annotated[ApiKeyRecord, Depends(authenticate)]


def base_url_of(request: Request, configured: str | None) -> str:
    """Where image links point: the configured public URL, else the URL the client called."""
    if configured:
        return configured
    return str(request.base_url).rstrip("/")

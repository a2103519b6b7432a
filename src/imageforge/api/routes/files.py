"""GET /files/{key}: stored images behind signed, expiring links (no API key)."""

from __future__ import annotations

import mimetypes
import time

from fastapi import APIRouter, Query
from starlette.responses import FileResponse

from imageforge.api.deps import RuntimeDep
from imageforge.errors import LinkExpired, LinkInvalid, NotFound

router = APIRouter(tags=["files"])


@router.get(
    "/files/{key:path}",
    summary="Download a generated image",
    description="The `image_url` of a completed task. Needs no API key; the signature must "
    "match and the link must not have expired (403 and 410 otherwise).",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/png": {}}, "description": "The image."},
        403: {"description": "Bad or missing signature."},
        410: {"description": "The link has expired."},
    },
)
async def download_file(
    key: str,
    runtime: RuntimeDep,
    expires: int | None = Query(None, description="Unix seconds after which the link is dead."),
    signature: str | None = Query(None, description="HMAC-SHA256 of the key and expiry."),
) -> FileResponse:
    storage = runtime.storage
    if expires is None or not signature or not storage.signer.is_valid(key, expires, signature):
        raise LinkInvalid("This link is not valid: its signature does not match.")
    remaining = expires - int(time.time())
    if remaining <= 0:
        raise LinkExpired("This link has expired; poll the task again for a fresh one.")
    path = storage.path_for(key)
    if path is None or not path.is_file():
        raise NotFound("This image no longer exists.", code="file_not_found")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(
        path,
        media_type=media_type,
        headers={"Cache-Control": f"private, max-age={remaining}, immutable"},
    )


# Clients and proxies probe links with HEAD before downloading; same checks, no body.
router.add_api_route("/files/{key:path}", download_file, methods=["HEAD"], include_in_schema=False)

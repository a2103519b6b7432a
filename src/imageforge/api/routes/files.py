"""GET /files/{key}: stored images behind signed, expiring links (no API key).

The bytes are streamed from the `Storage` interface, whatever the backend.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse

from imageforge.api.byte_ranges import requested_range
from imageforge.api.deps import RuntimeDep
from imageforge.errors import LinkExpired, LinkInvalid, NotFound, ServiceUnavailable

router = APIRouter(tags=["files"])


@router.get(
    "/files/{key:path}",
    summary="Download a generated image",
    description="The `image_url` of a completed task. Needs no API key; the signature must "
    "match and the link must not have expired (403 and 410 otherwise). A single byte "
    "`Range` is answered with 206.",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The image."},
        206: {"content": {"image/png": {}}, "description": "The requested byte range."},
        403: {"description": "Bad or missing signature."},
        410: {"description": "The link has expired."},
        503: {"description": "The image storage cannot be read right now."},
        416: {"description": "The range starts past the end of the image."},
    },
)
async def download_file(
    key: str,
    request: Request,
    runtime: RuntimeDep,
    expires: int | None = Query(None, description="Unix seconds after which the link is dead."),
    signature: str | None = Query(None, description="HMAC-SHA256 of the key and expiry."),
) -> Response:
    if expires is None or not signature or not runtime.signer.is_valid(key, expires, signature):
        raise LinkInvalid("This link is not valid: its signature does not match.")
    remaining = expires - int(time.time())
    if remaining <= 0:
        raise LinkExpired("This link has expired; poll the task again for a fresh one.")
    try:
        image = await runtime.storage.open(key)
    except OSError:
        # The bucket or disk cannot be read right now: the link is fine, try again.
        raise ServiceUnavailable("The image storage is unavailable; try again shortly.") from None
    if image is None:
        raise NotFound("This image no longer exists.", code="file_not_found")
    headers = {
        "Cache-Control": f"private, max-age={remaining}, immutable",
        "Accept-Ranges": "bytes",
        "ETag": image.etag,
        "Last-Modified": formatdate(image.modified_at, usegmt=True),
    }
    status, start, end = 200, 0, image.size
    wanted = requested_range(
        request.headers.get("range"),
        image.size,
        if_range=request.headers.get("if-range"),
        etag=image.etag,
    )
    if wanted is not None:
        status, (start, end) = 206, wanted
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{image.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, media_type=image.content_type, headers=headers)
    return StreamingResponse(
        image.chunks(start, end),
        status_code=status,
        media_type=image.content_type,
        headers=headers,
    )


# Clients and proxies probe links with HEAD before downloading; same checks, no body.
router.add_api_route("/files/{key:path}", download_file, methods=["HEAD"], include_in_schema=False)

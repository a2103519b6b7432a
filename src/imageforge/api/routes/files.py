"""GET /files/{key}: stored images behind signed, expiring links (no API key).

The bytes are streamed from the `Storage` interface, whatever the backend.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from email.utils import formatdate

from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from imageforge.api.byte_ranges import requested_range
from imageforge.api.deps import RuntimeDep
from imageforge.api.responses import error_response, error_responses
from imageforge.errors import LinkExpired, LinkInvalid, NotFound, ServiceUnavailable
from imageforge.storage import is_image_key

router = APIRouter(tags=["files"])

#: What an image can be: the engines write PNG, JPEG or WebP.
IMAGE_CONTENT = {
    media: {"schema": {"type": "string", "format": "binary"}}
    for media in ("image/png", "image/jpeg", "image/webp")
}


@router.get(
    "/files/{key:path}",
    summary="Download a generated image",
    description="The `image_url` of a completed task. Needs no API key; the signature must "
    "match and the link must not have expired (403 and 410 otherwise). A single byte "
    "`Range` is answered with 206.",
    response_class=Response,
    responses={
        200: {"content": IMAGE_CONTENT, "description": "The image."},
        206: {"content": IMAGE_CONTENT, "description": "The requested byte range."},
        **error_responses(403),
        404: error_response(
            "No image under this key: deleted, or never made.",
            {
                "message": "This image no longer exists.",
                "type": "not_found_error",
                "param": None,
                "code": "file_not_found",
            },
        ),
        **error_responses(410, 416, 503),
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
    # Only keys of the storage's own syntax get as far as a backend: whatever else a
    # link carries (NUL, `..`, other scripts' digits) never reaches a path or a bucket.
    try:
        image = await runtime.storage.open(key) if is_image_key(key) else None
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
    return _ClosingStreamingResponse(
        image.chunks(start, end),
        status_code=status,
        media_type=image.content_type,
        headers=headers,
    )


class _ClosingStreamingResponse(StreamingResponse):
    """Closes the storage's chunk iterator however the response ends. Starlette stops
    iterating when the client hangs up (a capped or aborted download) and leaves the
    iterator to the garbage collector, with the file or stream it holds still open."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if isinstance(self.body_iterator, AsyncGenerator):
                await self.body_iterator.aclose()


# Clients and proxies probe links with HEAD before downloading; same checks, no body.
router.add_api_route("/files/{key:path}", download_file, methods=["HEAD"], include_in_schema=False)

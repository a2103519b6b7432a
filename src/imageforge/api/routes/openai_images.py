"""The OpenAI Images API over the task queue: POST /v1/images/generations and
POST /v1/images/edits (the models are in `models.py`).

The `openai` SDK pointed at `base_url=http://host/v1` works unchanged. The rules are in
`imageforge.openai_images`; this module reads the requests (JSON, or the edits' multipart
form, streamed under `max_upload_bytes` by the body guard) and writes the answers, once
the tasks are done: one JSON body, or server-sent events with `stream: true`. Errors are
worded in OpenAI's terms (api/errors.py, `OPENAI_PATHS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse

from imageforge.api.deps import REQUIRES_API_KEY, authenticate, base_url_of, runtime_of
from imageforge.api.errors import openai_error_event
from imageforge.api.request_body import (
    json_body_schema,
    multipart_body_schema,
    parse_json_body,
    validate_fields,
)
from imageforge.api.responses import (
    OPENAI_IMAGE_ERRORS,
    OPENAI_STREAM_CONTENT,
    UPLOAD_413,
)
from imageforge.api.routes.results import task_result_payload
from imageforge.errors import ImageforgeError, InvalidRequest, ServiceUnavailable
from imageforge.openai_images import (
    MAX_UPLOADS,
    TASK_IDS_HEADER,
    ImagesRequest,
    create_images,
    create_request_for_image,
    images_request,
    no_image_error,
    no_retry_headers,
    tasks_as_terminal,
)
from imageforge.openai_media import (
    MaskedEdit,
    Upload,
    b64,
    check_mask,
    check_upload,
    mask_digest,
    render_image,
    store_uploads,
    stored_format,
    upload_references,
)
from imageforge.openai_wire import (
    ImageEditForm,
    ImageGenerationRequest,
    ImagesResponse,
    completed_event_body,
    image_data_body,
    images_response_body,
    usage_body,
)
from imageforge.runtime import Runtime
from imageforge.service import MAX_IDEMPOTENCY_KEY_CHARS
from imageforge.store import ApiKeyRecord
from imageforge.tasks import Task, TaskStatus

log = logging.getLogger(__name__)

router = APIRouter(tags=["openai"])

GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
#: A comment line while a stream waits, so that proxies keep the connection open.
KEEPALIVE_SECONDS = 15.0

_IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "1 to 255 visible ASCII characters; a retry gets the same images' tasks "
    "and charges nothing more (each image is a task under a key derived from this one).",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_IDEMPOTENCY_KEY_CHARS,
        "pattern": "^[!-~]+$",
    },
}
_ANSWER_DESCRIPTION = (
    "Answers once the images are done (up to `IMAGEFORGE_OPENAI_WAIT_SECONDS`), in OpenAI's "
    "shape. Each image is one task of the task API, created, validated, charged and limited "
    "like `POST /v1/image2/images` (header `Imageforge-Task-Ids` lists them). When some "
    "images fail, `data` carries those that succeeded (the failed ones are refunded); only "
    "when none does is the answer an error: 400 when the client's images were at fault, "
    "500 otherwise, 504 when none was done in time (they go on: poll the task ids). "
    "`stream: true` answers with server-sent events instead."
)


@router.post(
    GENERATIONS,
    response_model=ImagesResponse,
    summary="Create images (OpenAI Images API)",
    description=_ANSWER_DESCRIPTION,
    responses={200: {"content": OPENAI_STREAM_CONTENT}, **OPENAI_IMAGE_ERRORS},
    openapi_extra={
        **REQUIRES_API_KEY,
        **json_body_schema(ImageGenerationRequest),
        "parameters": [_IDEMPOTENCY_PARAMETER],
    },
)
async def create_generations(request: Request) -> Response:
    caller = await authenticate(request)
    body = await parse_json_body(request, ImageGenerationRequest)
    images = images_request(body)
    return await _answer(request, caller, images, events="image_generation")


_FILE = {"type": "string", "format": "binary"}


@router.post(
    EDITS,
    response_model=ImagesResponse,
    summary="Edit images (OpenAI Images API)",
    description=_ANSWER_DESCRIPTION
    + " The uploaded images are the tasks' reference images (stored, never fetched), the "
    "whole body at most `IMAGEFORGE_MAX_UPLOAD_BYTES` (64 MiB by default). A `mask` (a PNG "
    "with alpha, the size of the first image) keeps the first image where the mask is "
    "opaque and puts the generated image where it is transparent; it needs `b64_json`.",
    responses={200: {"content": OPENAI_STREAM_CONTENT}, **OPENAI_IMAGE_ERRORS, 413: UPLOAD_413},
    openapi_extra={
        **REQUIRES_API_KEY,
        **multipart_body_schema(
            ImageEditForm,
            {
                "image": {**_FILE, "description": "The image to edit (or use `image[]`)."},
                "image[]": {
                    "type": "array",
                    "items": _FILE,
                    "maxItems": MAX_UPLOADS,
                    "description": f"Up to {MAX_UPLOADS} images (within the model's "
                    "reference limit).",
                },
                "mask": {**_FILE, "description": "Optional PNG with alpha."},
            },
        ),
        "parameters": [_IDEMPOTENCY_PARAMETER],
    },
)
async def create_edits(request: Request) -> Response:
    caller = await authenticate(request)
    runtime = runtime_of(request)
    fields, images_sent, mask_sent = await _read_edit_form(request)
    body = validate_fields(ImageEditForm, fields)
    max_pixels = runtime.settings.reference_max_pixels
    uploads = [
        await asyncio.to_thread(check_upload, f"image[{index}]", data, max_pixels=max_pixels)
        for index, data in enumerate(images_sent)
    ]
    masked = None
    digest = None
    if mask_sent is not None:
        mask = await asyncio.to_thread(check_upload, "mask", mask_sent, max_pixels=max_pixels)
        check_mask(mask, uploads[0])
        masked, digest = MaskedEdit(original=uploads[0].data, mask=mask.data), mask_digest(mask)
    images = images_request(body, mask_digest=digest)
    references = upload_references(uploads)
    # Every rule first, so that nothing is stored for a request that is refused.
    runtime.service.quote(create_request_for_image(images, 0), uploaded=references)
    await _store(runtime, uploads)
    return await _answer(
        request, caller, images, events="image_edit", uploaded=references, masked=masked
    )


async def _store(runtime: Runtime, uploads: Sequence[Upload]) -> None:
    try:
        await store_uploads(
            runtime.storage,
            uploads,
            retention_seconds=runtime.settings.upload_retention_seconds,
            now=time.time(),
        )
    except OSError as exc:
        raise ServiceUnavailable(f"the uploaded images could not be stored ({exc})") from None


async def _read_edit_form(request: Request) -> tuple[dict[str, Any], list[bytes], bytes | None]:
    """The form's fields (empty ones count as not sent), its `image`/`image[]` files in
    order, and its `mask`; parsed as the body streams in (the body guard bounds it)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest(
            "body: must be multipart/form-data, with the image files and the fields",
            param="body",
            code="invalid_content_type",
        )
    fields: dict[str, Any] = {}
    images: list[bytes] = []
    mask: bytes | None = None
    async with request.form(max_files=MAX_UPLOADS + 1, max_fields=100) as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name in ("image", "image[]"):
                    images.append(await value.read())
                elif name == "mask":
                    mask = await value.read()
            elif value != "":
                fields[name] = value
    if not images:
        raise InvalidRequest(
            f"image: is required (one file as `image`, or up to {MAX_UPLOADS} as `image[]`)",
            param="image",
            code="missing_image",
        )
    if len(images) > MAX_UPLOADS:
        raise InvalidRequest(
            f"image: at most {MAX_UPLOADS} files (got {len(images)})",
            param="image",
            code="too_many_images",
        )
    return fields, images, mask


async def _answer(
    request: Request,
    caller: ApiKeyRecord,
    images: ImagesRequest,
    *,
    events: str,
    uploaded: Sequence[str] = (),
    masked: MaskedEdit | None = None,
) -> Response:
    runtime = runtime_of(request)
    base_url = None
    if images.callback_url is not None:
        base_url = base_url_of(request.scope, runtime.settings.public_base_url)
    tasks = await create_images(
        runtime.service,
        caller,
        images,
        idempotency_key=request.headers.get("idempotency-key"),
        uploaded=uploaded,
        base_url=base_url,
    )
    headers = {TASK_IDS_HEADER: ",".join(task.id for task in tasks)}
    if images.stream:
        stream = _stream(request, caller, images, tasks, events=events, masked=masked)
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache"},
        )
    try:
        body = await _wait_and_answer(request, caller, images, tasks, masked=masked)
    except ImageforgeError as exc:
        # The tasks exist and are charged: a retry without an Idempotency-Key would make
        # (and charge) them again, so the answer names them and asks for no retry.
        exc.headers = {**(exc.headers or {}), **no_retry_headers([task.id for task in tasks])}
        raise
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


async def _wait_and_answer(
    request: Request,
    caller: ApiKeyRecord,
    images: ImagesRequest,
    tasks: list[Task],
    *,
    masked: MaskedEdit | None,
) -> dict[str, Any]:
    """The JSON answer once the tasks are terminal (or the wait is over)."""
    runtime = runtime_of(request)
    waited = runtime.settings.openai_wait_seconds
    ended = {
        task.id: task
        async for task in tasks_as_terminal(
            runtime.service, caller, [task.id for task in tasks], timeout_seconds=waited
        )
    }
    finished = [ended.get(task.id, task) for task in tasks]
    completed = [task for task in finished if task.status is TaskStatus.COMPLETED]
    if not completed:
        unfinished = [task.id for task in finished if not task.status.is_terminal]
        raise no_image_error(finished, unfinished, waited)
    data = [await _image_data(request, task, images, masked) for task in completed]
    output_format = (
        images.output_format
        if images.response_format == "b64_json"
        else stored_format(completed[0].content_type)
    )
    body = images_response_body(
        created=completed[0].created,
        data=data,
        output_format=output_format,
        quality=completed[0].quality,
        size=f"{completed[0].width}x{completed[0].height}",
        usage=usage_body([task.usage for task in completed]),
    )
    return body


async def _image_bytes(
    runtime: Runtime, task: Task, images: ImagesRequest, masked: MaskedEdit | None
) -> bytes:
    """A completed task's image as the request asked for it (format, compression, mask)."""
    stored = await runtime.storage.open(task.image_key) if task.image_key else None
    if stored is None:
        raise ServiceUnavailable(f"the image of {task.id} could not be read from storage")
    data = b"".join([chunk async for chunk in stored.chunks()])
    return await asyncio.to_thread(
        render_image,
        data,
        task.content_type,
        output_format=images.output_format,
        compression=images.output_compression,
        masked=masked,
    )


async def _image_data(
    request: Request, task: Task, images: ImagesRequest, masked: MaskedEdit | None
) -> dict[str, Any]:
    runtime = runtime_of(request)
    if images.response_format == "url":
        link = task_result_payload(runtime, request, task, now=time.time())["image_url"]
        return image_data_body(url=link)
    return image_data_body(b64_json=b64(await _image_bytes(runtime, task, images, masked)))


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _stream(
    request: Request,
    caller: ApiKeyRecord,
    images: ImagesRequest,
    tasks: list[Task],
    *,
    events: str,
    masked: MaskedEdit | None,
) -> AsyncIterator[bytes]:
    """`<events>.completed` for each image as it is done (the engines give no partial
    images), then an `error` event if none succeeded. Stream events always carry b64."""
    runtime = runtime_of(request)
    waited = runtime.settings.openai_wait_seconds
    ended: asyncio.Queue[Task | None] = asyncio.Queue()

    async def watch() -> None:
        try:
            async for task in tasks_as_terminal(
                runtime.service, caller, [task.id for task in tasks], timeout_seconds=waited
            ):
                ended.put_nowait(task)
        finally:
            ended.put_nowait(None)

    watcher = asyncio.create_task(watch())
    finished = {task.id: task for task in tasks}
    succeeded = 0
    try:
        while True:
            try:
                task = await asyncio.wait_for(ended.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if task is None:
                break
            finished[task.id] = task
            if task.status is not TaskStatus.COMPLETED:
                continue
            try:
                data = await _image_bytes(runtime, task, images, masked)
            except ImageforgeError as failed:
                # The status went out with the first byte: the stream says it instead.
                yield _event("error", openai_error_event(failed))
                return
            succeeded += 1
            yield _event(
                f"{events}.completed",
                completed_event_body(
                    f"{events}.completed",
                    b64_json=b64(data),
                    created_at=int(time.time()),
                    output_format=images.output_format,
                    quality=task.quality,
                    size=f"{task.width}x{task.height}",
                    usage=usage_body([task.usage]),
                ),
            )
        await asyncio.wait([watcher])
        lost = None if watcher.cancelled() else watcher.exception()
        if lost is not None:  # the database went away while waiting, say
            if not isinstance(lost, ImageforgeError):
                log.error("waiting for %s failed", tasks[0].id, exc_info=lost)
                lost = ImageforgeError("Internal server error.")
            yield _event("error", openai_error_event(lost))
        elif not succeeded:
            states = [finished[task.id] for task in tasks]
            unfinished = [task.id for task in states if not task.status.is_terminal]
            yield _event("error", openai_error_event(no_image_error(states, unfinished, waited)))
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher

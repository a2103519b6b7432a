"""The OpenAI Images API over the task queue: the rules that map OpenAI's request onto
tasks, and what is made of the tasks once they are done. Knows nothing of HTTP.

One OpenAI request for `n` images is `n` ordinary tasks, each created through
`ImageService.create` (the same validation, pricing, charge, limits and Idempotency-Key
store as `POST /v1/image2/images`), then waited for, then answered in OpenAI's shape:

- partial failure: the answer carries the images that succeeded, in order; the failed
  tasks were refunded by the failure path like any task. Only when none succeeded is the
  answer an error (see `no_image_error`). An image that could not even be accepted after
  others were (the credits ran out, the unfinished-task limit) counts as failed: nothing
  was charged for it.
- `Idempotency-Key`: image `i` of the request is created under a key derived from the
  client's (`image_idempotency_key`), with a fingerprint of the whole OpenAI request
  (`images_fingerprint`), so a retry gets the same tasks, uncharged, and the same key with
  another request is a 422.
- uploads (edits) are checked and stored by `openai_media.py` and named on the tasks as
  stored references (`references.stored`): the worker reads them back instead of fetching
  anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass

import orjson

from imageforge.catalog import QUALITIES, one_of
from imageforge.errors import ImageforgeError, InvalidRequest
from imageforge.openai_wire import ImageGenerationRequest
from imageforge.service import ImageService, check_idempotency_key
from imageforge.store import ApiKeyRecord
from imageforge.tasks import Task, TaskStatus
from imageforge.wire import CreateImageRequest

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-image-2"
MAX_IMAGES = 10
#: Files one edit may upload as `image`/`image[]`, as OpenAI's edits endpoint allows.
MAX_UPLOADS = 16
MAX_PARTIAL_IMAGES = 3
RESPONSE_FORMATS = ("b64_json", "url")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
QUALITY_CHOICES = (*QUALITIES, "auto")
BACKGROUNDS = ("auto", "opaque", "transparent")
MODERATIONS = ("auto", "low")
MAX_USER_CHARS = 256

#: The longest a wait goes without reading its task (see `_until_terminal`).
_RECHECK_SECONDS = 2.0


@dataclass(frozen=True)
class ImagesRequest:
    """An OpenAI images request after its own rules: what to create, how to answer."""

    model: str
    prompt: str
    n: int
    #: `{W}x{H}` as sent; None for `auto` (the task API's default size, or ratio/resolution).
    size: str | None
    #: None for `auto`: the model's default.
    quality: str | None
    ratio: str | None
    resolution: str | None
    response_format: str
    output_format: str
    output_compression: int
    stream: bool
    partial_images: int
    #: Digest of the edit's mask, when one was sent (it shapes the answer, not the tasks).
    mask_digest: str | None = None
    #: Where each image's task posts its webhook (the task API's extension field).
    callback_url: str | None = None


def _choice(field: str, value: str | None, choices: Sequence[str], default: str) -> str:
    return default if value is None else one_of(field, value, choices, f"invalid_{field}")


def _bounded(field: str, value: int | None, low: int, high: int, default: int) -> int:
    if value is None:
        return default
    if not low <= value <= high:
        raise InvalidRequest(
            f"{field}: must be an integer from {low} to {high} (got {value})",
            param=field,
            code=f"invalid_{field}",
        )
    return value


def images_request(
    body: ImageGenerationRequest, *, mask_digest: str | None = None
) -> ImagesRequest:
    """Apply the OpenAI fields' own rules; the task rules (model, prompt, size, quality
    against the model) are the service's, checked when the tasks are created."""
    n = _bounded("n", body.n, 1, MAX_IMAGES, 1)
    size = None if body.size is None or body.size.strip().lower() == "auto" else body.size
    quality = _choice("quality", body.quality, QUALITY_CHOICES, "auto")
    response_format = _choice("response_format", body.response_format, RESPONSE_FORMATS, "b64_json")
    output_format = _choice("output_format", body.output_format, OUTPUT_FORMATS, "png")
    compression = _bounded("output_compression", body.output_compression, 0, 100, 100)
    background = _choice("background", body.background, BACKGROUNDS, "auto")
    _choice("moderation", body.moderation, MODERATIONS, "auto")
    partial_images = _bounded("partial_images", body.partial_images, 0, MAX_PARTIAL_IMAGES, 0)
    if body.user is not None and len(body.user) > MAX_USER_CHARS:
        raise InvalidRequest(
            f"user: must be at most {MAX_USER_CHARS} characters (got {len(body.user)})",
            param="user",
            code="invalid_user",
        )
    # What OpenAI accepts and imageforge cannot do is refused, never silently dropped.
    if background == "transparent":
        raise InvalidRequest(
            "background: transparent is not supported: the engines draw opaque images; "
            "send opaque or auto",
            param="background",
            code="unsupported_background",
        )
    if compression != 100 and output_format == "png":
        raise InvalidRequest(
            "output_compression: applies to jpeg and webp only (output_format is png)",
            param="output_compression",
            code="invalid_output_compression",
        )
    stream = bool(body.stream)
    # Links serve the image exactly as stored; converting or masking needs the bytes here.
    if response_format == "url" and not stream:
        if output_format != "png":
            raise InvalidRequest(
                f"output_format: {output_format} needs response_format b64_json: image "
                "links serve the image as it is stored (png)",
                param="output_format",
                code="unsupported_output_format",
            )
        if mask_digest is not None:
            raise InvalidRequest(
                "mask: needs response_format b64_json: image links serve the image as "
                "generated, without the mask applied",
                param="mask",
                code="unsupported_mask",
            )
    return ImagesRequest(
        model=DEFAULT_MODEL if body.model is None else body.model,
        prompt=body.prompt,
        n=n,
        size=size,
        quality=None if quality == "auto" else quality,
        ratio=body.ratio,
        resolution=body.resolution,
        response_format=response_format,
        output_format=output_format,
        output_compression=compression,
        stream=stream,
        partial_images=partial_images,
        mask_digest=mask_digest,
        callback_url=body.callback_url,
    )


def create_request_for_image(request: ImagesRequest, index: int) -> CreateImageRequest:
    """The task API's create body for image `index` of `request`: the one place where an
    OpenAI request becomes tasks (extension fields that reach the task go here)."""
    del index  # every image of a request is the same task today
    return CreateImageRequest(
        model=request.model,
        prompt=request.prompt,
        quality=request.quality,
        size=request.size,
        ratio=request.ratio,
        resolution=request.resolution,
        callback_url=request.callback_url,
    )


def image_idempotency_key(key: str, index: int) -> str:
    """Image `index`'s key, derived from the client's: fixed length whatever the client's
    (which was checked first), and apart from the keys clients send to the task API."""
    digest = hashlib.sha256(check_idempotency_key(key).encode()).hexdigest()
    return f"openai-images:{digest}:{index}"


def images_fingerprint(request: ImagesRequest, uploaded: Sequence[str], index: int) -> str:
    """What identifies image `index` of a request for its Idempotency-Key: every field of
    the OpenAI request (`n` and the answer's format included) and the uploads' digests."""
    canonical = orjson.dumps(
        {"request": asdict(request), "uploaded": list(uploaded), "index": index},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()


async def create_images(
    service: ImageService,
    owner: ApiKeyRecord,
    request: ImagesRequest,
    *,
    idempotency_key: str | None = None,
    uploaded: Sequence[str] = (),
    base_url: str | None = None,
) -> list[Task]:
    """Create the request's tasks, one per image. The first one's refusal is the answer
    (a 400, a 402...); a later one's ends the creating, and the images accepted so far
    are what the request gets (see the module docstring)."""
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    tasks: list[Task] = []
    for index in range(request.n):
        try:
            task, _ = await service.create(
                owner,
                create_request_for_image(request, index),
                idempotency_key=(
                    None
                    if idempotency_key is None
                    else image_idempotency_key(idempotency_key, index)
                ),
                uploaded=uploaded,
                request_hash=images_fingerprint(request, uploaded, index),
                base_url=base_url,
            )
        except ImageforgeError as refused:
            if not tasks:
                raise
            log.info(
                "accepted %d of %d images for %s; the rest refused: %s",
                len(tasks),
                request.n,
                owner.id,
                refused.message,
            )
            break
        tasks.append(task)
    return tasks


async def tasks_as_terminal(
    service: ImageService,
    owner: ApiKeyRecord,
    task_ids: Sequence[str],
    *,
    timeout_seconds: float,
) -> AsyncIterator[Task]:
    """Each task once it is terminal, in the order they end; stops at the timeout with
    the rest unfinished. The one place that waits for tasks here (the JSON answer and the
    stream both use it): each task is awaited on the process's change hub (`service.wait`),
    which reads it only when it changes."""
    deadline = asyncio.get_running_loop().time() + timeout_seconds
    waits = [
        asyncio.ensure_future(_until_terminal(service, owner, task_id, deadline))
        for task_id in dict.fromkeys(task_ids)
    ]
    try:
        for ended in asyncio.as_completed(waits):
            task = await ended
            if task.status.is_terminal:
                yield task
    finally:
        for wait in waits:
            wait.cancel()


async def _until_terminal(
    service: ImageService, owner: ApiKeyRecord, task_id: str, deadline: float
) -> Task:
    # Waits in slices, reading the task between them, so that a change the hub never hears
    # of (a worker process of its own on the same SQLite file) is seen within a slice.
    loop = asyncio.get_running_loop()
    while True:
        left = deadline - loop.time()
        task = await service.wait(owner, task_id, seconds=max(0.0, min(left, _RECHECK_SECONDS)))
        if task.status.is_terminal or loop.time() >= deadline:
            return task


#: The answers' header listing the tasks behind them, in image order.
TASK_IDS_HEADER = "Imageforge-Task-Ids"


def no_retry_headers(task_ids: Sequence[str]) -> dict[str, str]:
    return {"x-should-retry": "false", TASK_IDS_HEADER: ",".join(task_ids)}


class ImagesFailed(ImageforgeError):
    """No image of the request succeeded: the answer is this error, in OpenAI's shape.
    The queue already retried what could be retried, so the SDK should not."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str,
        param: str | None,
        task_ids: Sequence[str],
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.headers = no_retry_headers(task_ids)
        self.status_code = status_code
        self.error_type = "invalid_request_error" if status_code < 500 else "server_error"


class ImagesTimedOut(ImageforgeError):
    """None of the images was done within the wait; they go on (and are charged)."""

    status_code = 504
    error_type = "server_error"
    code = "timeout"

    def __init__(self, message: str, *, task_ids: Sequence[str]) -> None:
        super().__init__(message)
        self.headers = no_retry_headers(task_ids)


def no_image_error(
    tasks: Sequence[Task], unfinished: Sequence[str], waited: float
) -> ImageforgeError:
    """The answer when no image succeeded: the first failure (a 400 when it was the
    client's references, else a 500), or a 504 naming the tasks still running."""
    failed = [task for task in tasks if task.status is TaskStatus.FAILED]
    if not failed:
        return ImagesTimedOut(
            f"the images were not done within {waited:g} s; they are still being generated: "
            f"poll GET /v1/result/{{id}} for {', '.join(unfinished)}",
            task_ids=[task.id for task in tasks],
        )
    first = failed[0]
    code = first.error_code or "image_generation_failed"
    client_fault = code == "invalid_reference"
    summary = "the image failed" if len(tasks) == 1 else f"all {len(tasks)} images failed"
    return ImagesFailed(
        f"{summary}: {first.error}",
        status_code=400 if client_fault else 500,
        code=code,
        param="image" if client_fault else None,
        task_ids=[task.id for task in tasks],
    )

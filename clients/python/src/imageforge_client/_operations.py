"""Each API call as one operation (see `_steps.py`), shared by `Client` and `AsyncClient`:
how its request is built, which failures are retried, and how its answer is read."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, TypeVar
from urllib.parse import quote as quote_path

import httpx
from pydantic import BaseModel, ValidationError

from imageforge_client._capabilities import CREATE_PATH, Capabilities
from imageforge_client._config import ClientState
from imageforge_client._retry import NOT_SENT_ERRORS
from imageforge_client._steps import ApiRequest, OpenStream, Operation, Send, Sleep, StreamHandle
from imageforge_client.errors import (
    APIConnectionError,
    APITimeoutError,
    ImageforgeClientError,
    LinkExpiredError,
    PermissionDeniedError,
    TaskFailedError,
    UnsupportedFeatureError,
    error_for_response,
)
from imageforge_client.models import Quote, TaskCreated, TaskPage, TaskResult, Usage

ModelT = TypeVar("ModelT", bound=BaseModel)

#: The server did not act on these: retrying never repeats anything.
RETRY_ALWAYS = frozenset({429})
#: The request may have been acted on (or a proxy lost the answer): resent only when
#: repeating it is safe (`ApiRequest.replayable`).
RETRY_IF_REPLAYABLE = frozenset({409, 502, 503, 504})


class ImageOptions(TypedDict, total=False):
    """The contract's create fields besides `prompt` (None means "not sent")."""

    #: `gpt-image-2` (the default here) or `gpt-image-2-r`, or a model the server configures.
    model: str
    #: `low`, `medium` or `high`.
    quality: str | None
    #: One of `1:1 16:9 9:16 4:3 3:4 3:2 2:3 5:4 4:5 2:1 1:2 21:9 9:21`.
    ratio: str | None
    #: `1k`, `2k` or `4k`.
    resolution: str | None
    #: Exact `{W}x{H}`; overrides ratio and resolution.
    size: str | None
    #: Reference image URLs.
    image_urls: Sequence[str] | None
    #: Extension: a signed webhook to this URL when the task ends (where the server lists it).
    callback_url: str | None
    #: Provider-specific fields sent as they are.
    extra_body: Mapping[str, Any] | None


class CreateOptions(ImageOptions, total=False):
    #: Default: a fresh UUID4 per create, reused by its retries, so a create whose answer
    #: was lost never makes a second task.
    idempotency_key: str | None


DEFAULT_MODEL = "gpt-image-2"


def image_body(prompt: str, options: ImageOptions) -> dict[str, Any]:
    """The create/quote JSON: the contract's fields that were given, then `extra_body`."""
    urls = options.get("image_urls")
    if isinstance(urls, str):
        raise TypeError("image_urls must be a list of URLs, not one string")
    model = options.get("model")
    # An empty model is sent as it is, for the server to refuse by name, never replaced.
    body: dict[str, Any] = {"model": DEFAULT_MODEL if model is None else model, "prompt": prompt}
    for name in ("quality", "ratio", "resolution", "size", "callback_url"):
        value = options.get(name)
        if value is not None:
            body[name] = value
    if urls is not None:
        body["image_urls"] = list(urls)
    body.update(options.get("extra_body") or {})
    return body


def result_path(task_id: str, suffix: str = "") -> str:
    return f"/v1/result/{quote_path(task_id, safe='')}{suffix}"


# --------------------------------------------------------------------------------------------
# Sending with retries
# --------------------------------------------------------------------------------------------


def exchange(state: ClientState, request: ApiRequest) -> Operation[httpx.Response]:
    """Send with bounded retries; a success, or the typed error for the last answer."""
    handle = yield from _exchange(state, request, stream=False)
    response: httpx.Response = handle.response
    return response


def open_stream(state: ClientState, request: ApiRequest) -> Operation[StreamHandle]:
    """Like `exchange`, for a response read as a stream (server-sent events)."""
    handle: StreamHandle = yield from _exchange(state, request, stream=True)
    return handle


class _Sent:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response


def _exchange(state: ClientState, request: ApiRequest, *, stream: bool) -> Operation[Any]:
    policy = state.config.retry
    retry = 0
    while True:
        try:
            if stream:
                handle = yield OpenStream(request)
            else:
                handle = _Sent((yield Send(request)))
        except httpx.TransportError as exc:
            delay = None
            if isinstance(exc, NOT_SENT_ERRORS) or (yield from _replayable(state, request)):
                delay = policy.delay_after_error(retry, state.rand)
            if delay is None:
                raise connection_error(exc) from exc
        else:
            response = handle.response
            if response.is_success:
                return handle
            delay = None
            status = response.status_code
            if status in RETRY_ALWAYS or (
                status in RETRY_IF_REPLAYABLE and (yield from _replayable(state, request))
            ):
                delay = policy.delay_after_status(response, retry, state.rand)
            if delay is None:
                raise error_for_response(response)
        yield Sleep(delay)
        retry += 1


def _replayable(state: ClientState, request: ApiRequest) -> Operation[bool]:
    if request.replayable is not None:
        return request.replayable
    return (yield from capabilities(state)).idempotency_keys


def connection_error(exc: httpx.TransportError) -> APIConnectionError:
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    try:
        where = f" talking to {exc.request.url.host}"
    except RuntimeError:  # an error raised before httpx attached the request
        where = ""
    return cls(f"{type(exc).__name__}{where}: {exc or 'no answer'}")


def parse(model: type[ModelT], response: httpx.Response) -> ModelT:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ImageforgeClientError(
            f"unexpected answer from {response.request.method} {response.request.url.path} "
            f"(HTTP {response.status_code}): {exc.errors()[0]['msg']}"
        ) from None


# --------------------------------------------------------------------------------------------
# What the server offers
# --------------------------------------------------------------------------------------------


def capabilities(state: ClientState) -> Operation[Capabilities]:
    """The server's extensions, from `/openapi.json`, asked once per client.

    A definite answer (a document, a 404, garbage) is kept; a passing failure (connection,
    429, 5xx) counts as "no extensions" for this call only and is asked again next time.
    """
    if state.capabilities is not None:
        return state.capabilities
    request = ApiRequest("GET", state.config.url("/openapi.json"))
    try:
        response = yield Send(request)
    except httpx.TransportError:
        return Capabilities()
    if response.status_code == 429 or response.status_code >= 500:
        return Capabilities()
    found = Capabilities()
    if response.is_success:
        with contextlib.suppress(ValueError):  # not JSON: no extensions
            found = Capabilities.from_openapi(json.loads(response.content))
    state.capabilities = found
    return found


def require(state: ClientState, flag: str, feature: str) -> Operation[None]:
    if not getattr((yield from capabilities(state)), flag):
        raise UnsupportedFeatureError(feature)


# --------------------------------------------------------------------------------------------
# The calls
# --------------------------------------------------------------------------------------------


def create(state: ClientState, prompt: str, options: CreateOptions) -> Operation[TaskCreated]:
    body = image_body(prompt, options)
    if "callback_url" in body:
        # A server that does not know the field would ignore it and never call back.
        yield from require(state, "callbacks", "callback_url webhooks")
    key = options.get("idempotency_key") or str(uuid.uuid4())
    request = ApiRequest(
        "POST",
        state.config.url(CREATE_PATH),
        json=body,
        headers={"Idempotency-Key": key},
        replayable=None,
    )
    return parse(TaskCreated, (yield from exchange(state, request)))


def get(state: ClientState, task_id: str, *, wait: int | None = None) -> Operation[TaskResult]:
    params: dict[str, str | int] | None = None
    read_timeout = None
    if wait is not None:
        params = {"wait": wait}
        read_timeout = wait + state.config.timeout
    request = ApiRequest(
        "GET", state.config.url(result_path(task_id)), params=params, read_timeout=read_timeout
    )
    return parse(TaskResult, (yield from exchange(state, request)))


def cancel(state: ClientState, task_id: str) -> Operation[TaskResult]:
    yield from require(state, "cancel", "cancelling tasks")
    # Cancelling twice is cancelling once: safe to resend.
    request = ApiRequest("POST", state.config.url(result_path(task_id, "/cancel")))
    return parse(TaskResult, (yield from exchange(state, request)))


def list_page(
    state: ClientState,
    *,
    status: str | None,
    model: str | None,
    limit: int | None,
    after: str | None,
) -> Operation[TaskPage]:
    yield from require(state, "listing", "listing tasks")
    given = {"status": status, "model": model, "limit": limit, "after": after}
    params = {name: value for name, value in given.items() if value is not None}
    request = ApiRequest("GET", state.config.url("/v1/tasks"), params=params)
    return parse(TaskPage, (yield from exchange(state, request)))


def next_cursor(page: TaskPage) -> str | None:
    """The `after=` of the next page; None when this was the last."""
    return page.data[-1].id if page.has_more and page.data else None


def quote(state: ClientState, prompt: str, options: ImageOptions) -> Operation[Quote]:
    yield from require(state, "quote", "quotes")
    request = ApiRequest(
        "POST", state.config.url(CREATE_PATH + "/quote"), json=image_body(prompt, options)
    )
    return parse(Quote, (yield from exchange(state, request)))


def usage(state: ClientState, *, days: int | None) -> Operation[Usage]:
    yield from require(state, "usage", "usage reports")
    params = None if days is None else {"days": days}
    request = ApiRequest("GET", state.config.url("/v1/usage"), params=params)
    return parse(Usage, (yield from exchange(state, request)))


def download(state: ClientState, task: TaskResult) -> Operation[tuple[httpx.Response, TaskResult]]:
    """The image of a completed task, and the task as last read.

    The link is signed and needs no key, so the key is never sent to it, whatever its host.
    A link that expired (410) or no longer verifies (403) is renewed once by reading the task.
    """
    current, renewed = task, False
    while True:
        if current.expired:
            raise ImageforgeClientError(
                f"task {current.id}: its image is past the server's retention and was deleted"
            )
        if current.image_url is None:
            raise ImageforgeClientError(f"task {current.id} has no image ({current.status})")
        url = httpx.URL(current.image_url)
        if url.scheme not in ("http", "https"):
            raise ImageforgeClientError(f"task {current.id}: image_url is not an http(s) link")
        request = ApiRequest(
            "GET", str(url), authenticated=False, follow_redirects=True, replayable=True
        )
        try:
            return (yield from exchange(state, request)), current
        except (LinkExpiredError, PermissionDeniedError):
            if renewed:
                raise
        current = yield from get(state, task.id)
        renewed = True


def require_completed(task: TaskResult) -> TaskResult:
    """A terminal task as `generate` and `wait` hand it back: completed, or raised."""
    if task.status == "failed":
        raise TaskFailedError(task)
    if task.expired:
        raise ImageforgeClientError(f"task {task.id}: its image is past retention and was deleted")
    if task.image_url is None:
        raise ImageforgeClientError(f"task {task.id} is {task.status} without an image_url")
    return task

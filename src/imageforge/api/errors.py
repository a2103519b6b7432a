"""Every failure becomes one OpenAI-style error body, mapped here and only here.

Two route families share the body `{"error": {"message", "type", "param", "code"}}`:

- the GPT Image 2 task API keeps imageforge's own `type` vocabulary (`not_found_error`,
  `insufficient_credits` with 402, ...);
- the OpenAI Images API routes (`OPENAI_PATHS`) answer in OpenAI's: `invalid_request_error`
  for every 4xx but 429, `server_error` for 5xx, and credits that ran out as OpenAI says it
  (429 `insufficient_quota`, with `x-should-retry: false` so the `openai` SDK does not
  retry it). The statuses are what make that SDK raise its typed exceptions
  (`BadRequestError` 400, `AuthenticationError` 401, `NotFoundError` 404,
  `RateLimitError` 429, ...).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from imageforge.api.json_errors import invalid_json_message, line_and_column
from imageforge.errors import ImageforgeError
from imageforge.wire import error_body

log = logging.getLogger(__name__)

_STATUS_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


#: Path prefixes of the OpenAI Images API routes (api/routes/openai_images.py).
OPENAI_PATHS = ("/v1/images/", "/v1/models")


def speaks_openai(path: str) -> bool:
    return path.startswith(OPENAI_PATHS)


def in_openai_terms(
    status: int, error_type: str, code: str | None, headers: dict[str, str] | None
) -> tuple[int, str, str | None, dict[str, str] | None]:
    """(status, type, code, headers) of an error as OpenAI's API would word it."""
    if status == 402:
        return 429, "insufficient_quota", "insufficient_quota", {"x-should-retry": "false"}
    if status == 429:
        return 429, "requests", "rate_limit_exceeded" if code == "rate_limited" else code, headers
    return status, "server_error" if status >= 500 else "invalid_request_error", code, headers


def openai_error_event(exc: ImageforgeError) -> dict[str, Any]:
    """An error inside an OpenAI event stream, whose status was sent long before: the
    `error` event's data, which the `openai` SDK raises as an `APIError`."""
    _, error_type, code, _ = in_openai_terms(exc.status_code, exc.error_type, exc.code, None)
    body = error_body(exc.message, error_type=error_type, code=code, param=exc.param)
    return {"type": "error", **body}


def error_response(
    status: int,
    message: str,
    *,
    error_type: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    openai: bool = False,
) -> Response:
    """The error answer; `openai`: worded for the OpenAI Images API routes."""
    if openai:
        status, error_type, code, headers = in_openai_terms(status, error_type, code, headers)
    body = error_body(message, error_type=error_type, code=code, param=param)
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(part) for part in location if part != "body"]
    if not parts:
        return "body"
    name = parts[0]
    for part in parts[1:]:
        name += f"[{part}]" if part.isdigit() else f".{part}"
    return name


def describe_validation_error(error: dict[str, Any], document: Any = None) -> tuple[str, str]:
    """(param, message) for the first problem pydantic found in a request; `document` is
    the body FastAPI failed to parse, if that was the problem."""
    location = tuple(error.get("loc", ()))
    field = _field_name(location)
    kind = error.get("type", "")
    if kind == "json_invalid":
        position = location[-1] if location and isinstance(location[-1], int) else 0
        line, column = line_and_column(
            document if isinstance(document, str | bytes) else "", position
        )
        return "body", invalid_json_message(error.get("ctx", {}).get("error", ""), line, column)
    if kind == "missing" and field == "body":
        return "body", "body: a JSON object is required"
    if kind == "missing":
        return field, f"{field}: is required"
    if kind == "model_attributes_type" or (field == "body" and kind.endswith("_type")):
        return "body", "body: must be a JSON object"
    return field, f"{field}: {error.get('msg', 'is invalid')}"


def imageforge_error_response(
    exc: ImageforgeError, *, method: str, path: str, unavailable_retry_after: int
) -> Response:
    """The answer to one of imageforge's own errors (the hot routes call this directly)."""
    if exc.status_code >= 500:
        log.warning("%s %s: %s", method, path, exc.message)
    headers = exc.headers
    if headers is None and exc.status_code == 503:
        headers = {"Retry-After": str(unavailable_retry_after)}
    return error_response(
        exc.status_code,
        exc.message,
        error_type=exc.error_type,
        code=exc.code,
        param=exc.param,
        headers=headers,
        openai=speaks_openai(path),
    )


def install_error_handlers(app: FastAPI, *, unavailable_retry_after: int) -> None:
    @app.exception_handler(ImageforgeError)
    async def _imageforge_error(request: Request, exc: ImageforgeError) -> Response:
        return imageforge_error_response(
            exc,
            method=request.method,
            path=request.url.path,
            unavailable_retry_after=unavailable_retry_after,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        param, message = describe_validation_error(errors[0] if errors else {}, exc.body)
        return error_response(
            400,
            message,
            error_type="invalid_request_error",
            code="invalid_request",
            param=param,
            openai=speaks_openai(request.url.path),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error_type, code = _STATUS_TYPES.get(exc.status_code, ("server_error", None))
        return error_response(
            exc.status_code,
            str(exc.detail),
            error_type=error_type,
            code=code,
            headers=dict(exc.headers) if exc.headers else None,
            openai=speaks_openai(request.url.path),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            "Internal server error.",
            error_type="server_error",
            code="internal_error",
            openai=speaks_openai(request.url.path),
        )

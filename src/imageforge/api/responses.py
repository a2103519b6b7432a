"""OpenAPI descriptions of the error answers the routes can give."""

from __future__ import annotations

from typing import Any

from imageforge.api.errors import in_openai_terms
from imageforge.wire import ErrorResponse


def _error(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": ErrorResponse,
        "description": description,
        "content": {"application/json": {"example": {"error": example}}},
    }


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error(
        "Bad input: the message names the field and the rule.",
        {
            "message": "size: both edges must be multiples of 16 (got 1000x1000)",
            "type": "invalid_request_error",
            "param": "size",
            "code": "invalid_size",
        },
    ),
    401: _error(
        "Missing, malformed, unknown or revoked API key.",
        {
            "message": "Invalid or missing API key.",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        },
    ),
    402: _error(
        "The key's credits do not cover the price; nothing was created or charged.",
        {
            "message": "insufficient credits: this image costs 0.053 USD and the balance is "
            "0.02 USD",
            "type": "insufficient_credits",
            "param": None,
            "code": "insufficient_credits",
        },
    ),
    403: _error(
        "The link's signature is missing, malformed or does not match.",
        {
            "message": "This link is not valid: its signature does not match.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_signature",
        },
    ),
    404: _error(
        "No such task for this API key.",
        {
            "message": "No task found with id 'image_…'.",
            "type": "not_found_error",
            "param": "id",
            "code": "task_not_found",
        },
    ),
    408: _error(
        "The request body stalled: no byte arrived for the body timeout (30 s by default).",
        {
            "message": "body: no data received for 30 s; send the whole body promptly",
            "type": "invalid_request_error",
            "param": "body",
            "code": "request_timeout",
        },
    ),
    410: _error(
        "The link has expired: poll the task again for a fresh one.",
        {
            "message": "This link has expired; poll the task again for a fresh one.",
            "type": "invalid_request_error",
            "param": None,
            "code": "link_expired",
        },
    ),
    413: _error(
        "The request body is too large.",
        {
            "message": "body: must be at most 1,048,576 bytes",
            "type": "invalid_request_error",
            "param": "body",
            "code": "payload_too_large",
        },
    ),
    416: _error(
        "The range starts past the end of the image (`Content-Range: bytes */size`).",
        {
            "message": "Range: must start before the end of the image (1234 bytes)",
            "type": "invalid_request_error",
            "param": "Range",
            "code": "range_not_satisfiable",
        },
    ),
    422: _error(
        "The Idempotency-Key was already used with a different body.",
        {
            "message": "Idempotency-Key: this key was already used with a different request "
            "body; use a new key for a different request",
            "type": "idempotency_error",
            "param": "Idempotency-Key",
            "code": "idempotency_key_reused",
        },
    ),
    429: _error(
        "Rate limited, or too many unfinished tasks; retry after `Retry-After` seconds.",
        {
            "message": "rate limit exceeded: at most 60 requests per minute per API key",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limited",
        },
    ),
    503: _error(
        "The database or storage is unavailable; retry after the `Retry-After` seconds.",
        {
            "message": "The database is unavailable; try again shortly.",
            "type": "server_error",
            "param": None,
            "code": "service_unavailable",
        },
    ),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of one route."""
    return {status: ERROR_RESPONSES[status] for status in statuses}


def error_response(description: str, example: dict[str, Any]) -> dict[str, Any]:
    """One error answer worded for its route (`example`: the `error` object)."""
    return _error(description, example)


def openai_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`error_responses`, worded as the OpenAI Images API routes answer (api/errors.py)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry = ERROR_RESPONSES[status]
        example = dict(entry["content"]["application/json"]["example"]["error"])
        _, example["type"], example["code"], _ = in_openai_terms(
            status, example["type"], example["code"], None
        )
        documented[status] = _error(entry["description"], example)
    return documented


#: The error answers of the OpenAI images routes (generations and edits).
OPENAI_IMAGE_ERRORS = openai_error_responses(400, 401, 413, 422, 429, 503)
OPENAI_IMAGE_ERRORS[429] = error_response(
    "Rate limited (`type: requests`), too many unfinished tasks, or credits that do not "
    "cover the first image (`type: insufficient_quota`, `x-should-retry: false`).",
    {
        "message": "insufficient credits: this image costs 0.053 USD and the balance is 0 USD",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    },
)
OPENAI_IMAGE_ERRORS[500] = error_response(
    "No image succeeded, not for a reason of the request's (`x-should-retry: false`).",
    {
        "message": "all 2 images failed: upstream busy",
        "type": "server_error",
        "param": None,
        "code": "engine_error",
    },
)
OPENAI_IMAGE_ERRORS[504] = error_response(
    "No image was done within the wait; they are still being generated.",
    {
        "message": "the images were not done within 300 s; they are still being generated: "
        "poll GET /v1/result/{id} for image_…",
        "type": "server_error",
        "param": None,
        "code": "timeout",
    },
)
#: The `stream: true` answer of those routes.
OPENAI_STREAM_CONTENT = {
    "text/event-stream": {
        "schema": {"type": "string"},
        "example": 'event: image_generation.completed\ndata: {"type": '
        '"image_generation.completed", "b64_json": "iVBORw0…", "created_at": 1774836724, '
        '"background": "opaque", "output_format": "png", "quality": "low", "size": '
        '"1024x1024", "usage": {…}}\n\n',
    }
}

#: The edits route's 413, under its own limit.
UPLOAD_413 = error_response(
    "The body (files and fields) is larger than `IMAGEFORGE_MAX_UPLOAD_BYTES` (64 MiB by default).",
    {
        "message": "body: must be at most 67,108,864 bytes",
        "type": "invalid_request_error",
        "param": "body",
        "code": "payload_too_large",
    },
)

#: `GET /v1/models/{id}` of an unknown model.
MODEL_404 = error_response(
    "No model of that id is configured.",
    {
        "message": "The model 'dall-e-3' does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    },
)


#: The task API's answer to an admin-only key (`keys create --admin`).
ADMIN_ONLY_KEY = _error(
    "The key is an admin key: it may call the admin API only.",
    {
        "message": "This is an admin key: it may call the admin API only. Use a task-API key "
        "(or create one with `keys create --admin --task-api` to do both).",
        "type": "permission_error",
        "param": None,
        "code": "admin_only_key",
    },
)


def task_api_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a task-API route: those, and the admin-only key's."""
    return {**error_responses(*statuses), 403: ADMIN_ONLY_KEY}


#: The same refusal on the OpenAI-shaped routes, in their words (`api/errors.in_openai_terms`).
OPENAI_ADMIN_ONLY_KEY = _error(
    "The key is an admin key: it may call the admin API only.",
    {
        "message": "This is an admin key: it may call the admin API only. Use a task-API key "
        "(or create one with `keys create --admin --task-api` to do both).",
        "type": "invalid_request_error",
        "param": None,
        "code": "admin_only_key",
    },
)
OPENAI_IMAGE_ERRORS[403] = OPENAI_ADMIN_ONLY_KEY

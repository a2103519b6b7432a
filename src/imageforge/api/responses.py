"""OpenAPI descriptions of the error answers the routes can give."""

from __future__ import annotations

from typing import Any

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
    # Imported here: errors.py builds responses, this module only describes them.
    from imageforge.api.errors import in_openai_terms

    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry = ERROR_RESPONSES[status]
        example = dict(entry["content"]["application/json"]["example"]["error"])
        _, example["type"], example["code"], _ = in_openai_terms(
            status, example["type"], example["code"], None
        )
        documented[status] = _error(entry["description"], example)
    return documented

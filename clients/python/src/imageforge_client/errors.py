"""Every error the client raises, under one root, and the one table mapping HTTP answers to them.

`APIStatusError` and its subclasses carry what the server said: `status_code`, `message`,
`param` (the request field at fault), `code` (machine-readable reason) and `type`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx

from imageforge_client._retry import retry_after_seconds

if TYPE_CHECKING:
    from imageforge_client.models import TaskResult


class ImageforgeClientError(Exception):
    """Root of every error this package raises on purpose."""


class ClientConfigurationError(ImageforgeClientError, ValueError):
    """The client cannot be built as asked (no API key, a base URL that is not http(s))."""


class APIConnectionError(ImageforgeClientError):
    """The server could not be reached, or the connection broke before it answered."""


class APITimeoutError(APIConnectionError):
    """The server did not answer within the request timeout."""


class UnsupportedFeatureError(ImageforgeClientError):
    """The server does not offer this extension (its `/openapi.json` does not list it)."""

    def __init__(self, feature: str, message: str | None = None) -> None:
        self.feature = feature
        super().__init__(
            message
            or f"this server does not support {feature} (its /openapi.json does not list it)"
        )


class APIStatusError(ImageforgeClientError):
    """The server answered with an error status. Raised as-is for statuses without a class."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.param = param
        self.code = code
        self.type = type
        self.response = response

    def __str__(self) -> str:
        return f"{self.status_code}: {self.message}"


class BadRequestError(APIStatusError):
    """400: the request breaks a rule of the contract; `param` names the field."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing, unknown or revoked."""


class InsufficientCreditsError(APIStatusError):
    """402: the key's balance does not cover the price. Nothing was created or charged."""


class PermissionDeniedError(APIStatusError):
    """403: for example an image link whose signature does not match."""


class NotFoundError(APIStatusError):
    """404: no such task for this key (another key's task looks the same)."""


class IdempotencyError(APIStatusError):
    """A problem with the request's `Idempotency-Key`."""


class IdempotencyInProgressError(IdempotencyError):
    """409: a request with the same Idempotency-Key is still being processed."""


class IdempotencyMismatchError(IdempotencyError):
    """422: the Idempotency-Key was used before with a different request body."""


class LinkExpiredError(APIStatusError):
    """410: an image link has expired; fetch the task again for a fresh one."""


class PayloadTooLargeError(APIStatusError):
    """413: the request body is larger than the server accepts."""


class RateLimitError(APIStatusError):
    """429: too many requests or unfinished tasks; `retry_after` says how long to wait."""

    @property
    def retry_after(self) -> float | None:
        if self.response is None:
            return None
        return retry_after_seconds(self.response.headers.get("retry-after"))


class ServerError(APIStatusError):
    """5xx: the server failed; nothing the client sent was wrong."""


class ServiceUnavailableError(ServerError):
    """503: the server is overloaded or its database or storage is down; retry later."""


class TaskFailedError(ImageforgeClientError):
    """The task ended `failed` (and, on imageforge, was refunded). `task.error` says why."""

    def __init__(self, task: TaskResult) -> None:
        self.task = task
        self.task_id = task.id
        super().__init__(f"task {task.id} failed: {task.error or 'no reason given'}")


class TaskTimeoutError(ImageforgeClientError, TimeoutError):
    """The task did not finish in time. It still exists: wait again with `results.wait(id)`."""

    def __init__(self, task_id: str, timeout: float, last: TaskResult | None) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.last = last
        state = f" (still {last.status})" if last is not None else ""
        super().__init__(f"task {task_id} did not finish within {timeout:g} s{state}")


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: IdempotencyInProgressError,
    410: LinkExpiredError,
    413: PayloadTooLargeError,
    422: IdempotencyMismatchError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_for_response(response: httpx.Response) -> APIStatusError:
    """The typed error for an error answer, with the server's message, field and code.

    Reads the OpenAI-style body `{"error": {"message", "type", "param", "code"}}`, and
    tolerates the other shapes servers send (`{"error": "text"}`, `{"detail": ...}`, text).
    """
    status = response.status_code
    cls = _STATUS_ERRORS.get(status) or (ServerError if status >= 500 else APIStatusError)
    message, param, code, kind = _describe(response)
    return cls(message, status_code=status, param=param, code=code, type=kind, response=response)


def _describe(response: httpx.Response) -> tuple[str, str | None, str | None, str | None]:
    fallback = response.reason_phrase or f"HTTP {response.status_code}"
    try:
        body: Any = json.loads(response.content)
    except ValueError:
        text = response.text.strip()
        return (text[:500] or fallback), None, None, None
    detail = body.get("error", body.get("detail")) if isinstance(body, dict) else None
    if isinstance(detail, dict):
        message = detail.get("message")
        return (
            str(message) if message else fallback,
            _text_or_none(detail.get("param")),
            _text_or_none(detail.get("code")),
            _text_or_none(detail.get("type")),
        )
    if isinstance(detail, str) and detail:
        return detail, None, None, None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"], None, None, None
    return fallback, None, None, None


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)

"""The one exception root. Each subclass carries its HTTP status and error code,
so the API maps every failure to a response in one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class ImageforgeError(Exception):
    """Base of every error the project raises on purpose."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str = "internal_error"
    #: HTTP headers the error's response carries (e.g. `Retry-After`).
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(ImageforgeError):
    """The client sent something that breaks a rule of the contract (400)."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(ImageforgeError):
    """Missing, malformed, unknown and revoked keys all look the same (401)."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str = "Invalid or missing API key.") -> None:
        super().__init__(message)


class AdminOnlyKey(ImageforgeError):
    """An admin-only key used on the task API (403): it may call /v1/admin/* only."""

    status_code = 403
    error_type = "permission_error"
    code = "admin_only_key"

    def __init__(self) -> None:
        super().__init__(
            "This is an admin key: it may call the admin API only. Use a task-API key "
            "(or create one with `keys create --admin --task-api` to do both)."
        )


class NotFound(ImageforgeError):
    """Unknown, or owned by another key: the two are indistinguishable (404)."""

    status_code = 404
    error_type = "not_found_error"
    code = "not_found"


class LinkExpired(ImageforgeError):
    status_code = 410
    error_type = "invalid_request_error"
    code = "link_expired"


class LinkInvalid(ImageforgeError):
    status_code = 403
    error_type = "invalid_request_error"
    code = "invalid_signature"


class ServiceUnavailable(ImageforgeError):
    """The database or storage cannot be reached right now (503)."""

    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"


class ConfigurationError(ImageforgeError):
    """Settings that cannot work; raised at start-up, never for a request.

    The command line prints it as one line, `imageforge: <setting>: <message>; <fix>`:
    `setting` is the key that is wrong, as the settings spell it (`relay_base_url`,
    `models."house".prices`) or an environment variable's own name (`OPENAI_API_KEY`);
    `fix` says what to do about it.
    """

    code = "configuration_error"

    def __init__(self, message: str, *, setting: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting
        self.fix = fix

    def __str__(self) -> str:
        text = f"{self.setting}: {self.message}" if self.setting else self.message
        return f"{text}; {self.fix}" if self.fix else text


@contextmanager
def configuring(setting: str, *, fix: str | None = None) -> Iterator[None]:
    """A ConfigurationError raised inside that names no setting is about `setting` (and,
    when it says no fix, `fix` is what to do)."""
    try:
        yield
    except ConfigurationError as exc:
        if exc.setting is None:
            exc.setting = setting
            exc.fix = exc.fix or fix
        raise


class IdempotencyConflict(ImageforgeError):
    """The Idempotency-Key was used before with a different request body (422)."""

    status_code = 422
    error_type = "idempotency_error"
    code = "idempotency_key_reused"


class RateLimited(ImageforgeError):
    """Too many requests, or too many unfinished tasks, for this key (429)."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, retry_after)
        self.headers = {"Retry-After": str(self.retry_after)}

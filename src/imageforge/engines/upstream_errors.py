"""What an upstream failure means for the task: retry later, fail now, or fix the config.

One table decides, for both upstream engines, so that a 429 from OpenAI and a 429 from a relay
are handled alike:

| upstream said                            | retryable | counts against the upstream |
|------------------------------------------|-----------|-----------------------------|
| 408, 409, 425, 429, 5xx, connect, timeout | yes (Retry-After honoured) | yes         |
| 401, 403                                 | no: a configuration error, logged loudly | no |
| 400, 404, 413, 415, 422, other 4xx       | no: the upstream's own message | no       |

Every message that leaves this module has been scrubbed of the keys it was given and of
anything shaped like a bearer token, and trimmed: it ends up in the task record, which the
client reads.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from email.utils import parsedate_to_datetime

from imageforge.engines.base import EngineError

log = logging.getLogger(__name__)

#: "Not now" rather than "never": another attempt, later or elsewhere, may succeed.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
AUTH_STATUSES = frozenset({401, 403})
#: Enough for any real rejection message; a task record is no place for an HTML error page.
MAX_MESSAGE_CHARS = 500
#: A Retry-After beyond this is a misconfigured upstream, not advice to follow.
MAX_RETRY_AFTER_SECONDS = 3600.0

_TOKEN_PATTERNS = (
    re.compile(r"(?i)\bbearer\s+[^\s\"',;]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"\bifk_[A-Za-z0-9_\-]{6,}"),
)
_WHITESPACE = re.compile(r"\s+")


class UpstreamError(EngineError):
    """An upstream call failed; says whether to fail over and whether it hurts the upstream."""

    def __init__(
        self,
        message: str,
        *,
        upstream: str,
        retryable: bool,
        retry_after: float | None = None,
        code: str = "upstream_error",
        status: int | None = None,
        failover: bool | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable, retry_after=retry_after)
        self.code = code
        self.upstream = upstream
        self.status = status
        #: Try the next upstream now. False once an upstream has accepted (and billed) the
        #: work: the next attempt resumes it there instead of paying twice.
        self.failover = retryable if failover is None else failover

    @property
    def counts_against_upstream(self) -> bool:
        """Only trouble on the upstream's side trips its circuit breaker; a rejected prompt
        or a bad key says nothing about whether it is up."""
        return self.retryable

    def not_failing_over(self) -> UpstreamError:
        self.failover = False
        return self


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """One line, no keys, at most MAX_MESSAGE_CHARS characters."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub("***", text)
    text = _WHITESPACE.sub(" ", text).strip()
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1].rstrip() + "…"
    return text


def upstream_message(body: object) -> str:
    """The human-readable part of an error body: OpenAI's `{"error": {"message"}}`, the task
    API's `{"error": "..."}`, a bare `{"message"}`, or the text itself."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        text = body
        try:
            body = json.loads(text)
        except ValueError:
            return text
        if isinstance(body, str):
            return body
    if not isinstance(body, dict):
        return ""
    error = body.get("error", body)
    if isinstance(error, dict):
        error = error.get("message")
    return error if isinstance(error, str) else ""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def error_for_status(
    upstream: str,
    status: int,
    *,
    body: object = None,
    retry_after: float | None = None,
    secrets: Iterable[str] = (),
) -> UpstreamError:
    """The EngineError for an HTTP error answer from `upstream`."""
    detail = scrub(upstream_message(body), secrets)
    if status in AUTH_STATUSES:
        message = (
            f"upstream '{upstream}' rejected our credentials ({status}); "
            "check the API key configured for it"
        )
        log.error("%s%s", message, f": {detail}" if detail else "")
        return UpstreamError(
            message, upstream=upstream, retryable=False, code="upstream_auth", status=status
        )
    if status in RETRYABLE_STATUSES or status >= 500:
        what = "is rate limiting" if status == 429 else "is unavailable"
        message = f"upstream '{upstream}' {what} ({status})" + (f": {detail}" if detail else "")
        return UpstreamError(
            scrub(message),
            upstream=upstream,
            retryable=True,
            retry_after=retry_after,
            code="upstream_rate_limited" if status == 429 else "upstream_unavailable",
            status=status,
        )
    message = f"upstream '{upstream}' rejected the request ({status})" + (
        f": {detail}" if detail else ""
    )
    return UpstreamError(
        scrub(message), upstream=upstream, retryable=False, code="upstream_rejected", status=status
    )


def timeout_error(upstream: str, seconds: float) -> UpstreamError:
    return UpstreamError(
        f"upstream '{upstream}' did not answer within {seconds:g}s",
        upstream=upstream,
        retryable=True,
        code="upstream_timeout",
    )


def connection_error(upstream: str, exc: BaseException, *, detail: str = "") -> UpstreamError:
    """`detail` replaces the exception's type name: words of ours, never the exception's own
    text, which can carry a URL with credentials in it."""
    return UpstreamError(
        scrub(f"could not reach upstream '{upstream}' ({detail or type(exc).__name__})"),
        upstream=upstream,
        retryable=True,
        code="upstream_unreachable",
    )


def bad_answer_error(upstream: str, what: str) -> UpstreamError:
    """The upstream answered 2xx but with something unusable: its fault, worth a retry."""
    return UpstreamError(
        scrub(f"upstream '{upstream}' {what}"),
        upstream=upstream,
        retryable=True,
        code="upstream_bad_response",
    )


def too_large_error(upstream: str, cap: int) -> UpstreamError:
    """The upstream's image is over the configured cap: asking again gets the same image."""
    return UpstreamError(
        f"upstream '{upstream}' returned an image larger than {cap} bytes",
        upstream=upstream,
        retryable=False,
        code="upstream_bad_response",
    )

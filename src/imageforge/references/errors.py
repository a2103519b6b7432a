"""Why an outbound request did not give us a usable answer."""

from __future__ import annotations

from typing import Literal

from imageforge.errors import ImageforgeError

#: What went wrong, for callers that word it their own way (an upstream's image link is not a
#: client's reference): each kind has one meaning, whoever asked.
OutboundFailure = Literal[
    #: The URL, or an address it leads to, is not allowed (policy, scheme, redirects).
    "refused",
    #: The host name did not resolve.
    "unresolved",
    #: The server answered with a status other than 2xx (`status` says which).
    "status",
    #: The body is over the caller's byte cap.
    "too_large",
    #: Connect, read or the whole exchange took too long.
    "timeout",
    #: The TLS handshake or certificate check failed.
    "tls",
    #: Refused, reset or broken connections and malformed HTTP.
    "network",
]

#: 408 and 429 are the two 4xx answers that mean "not now" rather than "never".
RETRYABLE_4XX = frozenset({408, 429})


class OutboundError(ImageforgeError):
    """An outbound request failed. `reason` is safe to show: it names addresses and hosts,
    never credentials. `retryable` is True only where another try later may succeed."""

    code = "outbound_error"

    def __init__(
        self,
        reason: str,
        *,
        kind: OutboundFailure,
        retryable: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind: OutboundFailure = kind
        self.retryable = retryable
        self.status = status

    def within(self, context: str) -> OutboundError:
        """The same failure, its reason prefixed with where it happened (a redirect hop)."""
        return OutboundError(
            f"{context}: {self.reason}",
            kind=self.kind,
            retryable=self.retryable,
            status=self.status,
        )


def status_error(status: int) -> OutboundError:
    return OutboundError(
        f"server answered HTTP {status}",
        kind="status",
        retryable=status >= 500 or status in RETRYABLE_4XX,
        status=status,
    )

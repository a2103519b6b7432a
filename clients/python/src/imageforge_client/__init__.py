"""imageforge-client: a typed client for imageforge and any GPT Image 2 task API.

`Client` blocks, `AsyncClient` awaits; both read `IMAGEFORGE_API_KEY` and
`IMAGEFORGE_BASE_URL` unless given `api_key=` / `base_url=`. See the README for examples.
"""

from __future__ import annotations

from imageforge_client._capabilities import Capabilities
from imageforge_client._drivers import ProgressCallback
from imageforge_client._operations import CreateOptions, ImageOptions
from imageforge_client._retry import PollSchedule
from imageforge_client._version import __version__
from imageforge_client.async_client import AsyncClient, AsyncImageResult, AsyncTaskList
from imageforge_client.client import Client, ImageResult, TaskList
from imageforge_client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientConfigurationError,
    IdempotencyError,
    IdempotencyInProgressError,
    IdempotencyMismatchError,
    ImageforgeClientError,
    InsufficientCreditsError,
    LinkExpiredError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TaskFailedError,
    TaskTimeoutError,
    UnsupportedFeatureError,
)
from imageforge_client.models import Quote, TaskCreated, TaskPage, TaskResult, Usage, UsageDay

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncImageResult",
    "AsyncTaskList",
    "AuthenticationError",
    "BadRequestError",
    "Capabilities",
    "Client",
    "ClientConfigurationError",
    "CreateOptions",
    "IdempotencyError",
    "IdempotencyInProgressError",
    "IdempotencyMismatchError",
    "ImageOptions",
    "ImageResult",
    "ImageforgeClientError",
    "InsufficientCreditsError",
    "LinkExpiredError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PollSchedule",
    "ProgressCallback",
    "Quote",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "TaskCreated",
    "TaskFailedError",
    "TaskList",
    "TaskPage",
    "TaskResult",
    "TaskTimeoutError",
    "UnsupportedFeatureError",
    "Usage",
    "UsageDay",
    "__version__",
]

"""A client's settings, resolved once from arguments and the environment, and its state."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from imageforge_client._capabilities import Capabilities
from imageforge_client._retry import PollSchedule, RetryPolicy
from imageforge_client.errors import ClientConfigurationError

#: `make serve`'s address: where a local imageforge listens unless told otherwise.
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
BASE_URL_VARIABLE = "IMAGEFORGE_BASE_URL"
API_KEY_VARIABLE = "IMAGEFORGE_API_KEY"
#: Seconds per request (connect, read, write); long-poll and event reads get their own.
DEFAULT_TIMEOUT = 60.0
#: Seconds `generate` and `results.wait` wait for a task by default.
DEFAULT_WAIT_TIMEOUT = 600.0


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    api_key: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    polling: PollSchedule = field(default_factory=PollSchedule)

    @classmethod
    def resolve(
        cls,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        polling: PollSchedule | None,
        environ: Mapping[str, str] | None = None,
    ) -> ClientConfig:
        """Arguments win over `IMAGEFORGE_API_KEY` / `IMAGEFORGE_BASE_URL`."""
        env = os.environ if environ is None else environ
        key = api_key if api_key is not None else env.get(API_KEY_VARIABLE, "")
        if not key.strip():
            raise ClientConfigurationError(
                f"no API key: pass api_key=... or set {API_KEY_VARIABLE}"
            )
        url = (base_url or env.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL).strip().rstrip("/")
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ClientConfigurationError(
                f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL} (got {url!r})"
            )
        if timeout <= 0:
            raise ClientConfigurationError(f"timeout must be positive (got {timeout})")
        if max_retries < 0:
            raise ClientConfigurationError(f"max_retries must be 0 or more (got {max_retries})")
        return cls(
            base_url=url,
            api_key=key.strip(),
            timeout=timeout,
            retry=RetryPolicy(max_retries=max_retries),
            polling=polling or PollSchedule(),
        )

    def url(self, path: str) -> str:
        """An API path under the base URL (which may carry a path prefix of its own)."""
        return self.base_url + path


@dataclass
class ClientState:
    """What one client holds between calls: its settings and what it learnt of the server."""

    config: ClientConfig
    #: Read from `/openapi.json` once per client; None until then.
    capabilities: Capabilities | None = None
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random

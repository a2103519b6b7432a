"""The `relay` engine: images from another GPT Image 2 task API (another imageforge, or a
vendor's), by submitting a task there and polling it.

Paying twice is the failure to avoid: the upstream's task id is checkpointed on our task right
after the submission and before any waiting, so an attempt that crashes mid-poll is resumed by
the next attempt (`request.resume`) instead of submitted again. The submission also carries
`Idempotency-Key: <our task id>`, which covers the gap between the upstream accepting the task
and our checkpoint on upstreams that honour the header.

Polling backs off from `poll_initial_seconds` by ×1.5 to `poll_max_seconds`; the whole wait is
bounded by the upstream's `timeout_seconds`. The finished image is downloaded (where the
upstream's answer may point: `upstream_http.py`) and the runner stores it as our own, since
the upstream's link expires.

Each upstream gets one aiohttp session with a pool as wide as its concurrency limit. A poll
is the engine's most frequent call: with 500 in flight on one loop, a poll through httpx
(sharded into clients of 4 connections, which kept its pool scans short) cost ~0.65 ms of CPU,
through aiohttp ~0.07 ms.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from imageforge.engines.base import missing_extra

try:
    import aiohttp
    from multidict import CIMultiDictProxy
except ImportError as exc:  # pragma: no cover - depends on how imageforge was installed
    raise missing_extra("relay", "aiohttp") from exc

from imageforge.engines.base import (
    GeneratedImage,
    GenerationRequest,
    UpstreamRef,
    cancelled_by_client,
)
from imageforge.engines.upstream_errors import (
    UpstreamError,
    bad_answer_error,
    connection_error,
    error_for_status,
    parse_retry_after,
    scrub,
    timeout_error,
)
from imageforge.engines.upstream_http import UpstreamHTTP, upstream_image
from imageforge.engines.upstreams import Route, Router, Upstream

log = logging.getLogger(__name__)

#: Polls in a row that may fail on the upstream's side before this attempt gives up (the
#: next attempt resumes the same upstream task).
_MAX_POLL_FAILURES = 5
_POLL_GROWTH = 1.5
_PENDING = frozenset({"queued", "processing"})
_MAX_REMOTE_ID_CHARS = 200
_USER_AGENT = "imageforge-relay/0.1"
#: How long a cancel sent upstream may take before our task is failed without its answer.
_CANCEL_UPSTREAM_SECONDS = 5.0


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class _UpstreamTaskGone(Exception):
    """The upstream answered 404 for a task id we hold: it no longer knows the task."""


class RelayEngine:
    name: ClassVar[str] = "relay"
    #: The upstream fetches reference images itself; the worker need not download them.
    fetches_references: ClassVar[bool] = False

    def __init__(self, router: Router) -> None:
        self._router = router
        # One session per upstream, for its API calls and its image downloads alike; httpx's
        # TLS context, as before: certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR.
        self._http = UpstreamHTTP(router.upstreams.values(), user_agent=_USER_AGENT)

    @property
    def router(self) -> Router:
        return self._router

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        if request.resume is not None:
            resumed = await self._resume(request, request.resume)
            if resumed is not None:
                return resumed
        route = self._router.route_for(request.model)
        return await self._router.run(
            route, lambda upstream: self._submit_and_collect(upstream, route, request)
        )

    async def aclose(self) -> None:
        """Close every session; a later `generate` opens new ones."""
        await self._http.aclose()

    # One upstream task --------------------------------------------------------

    async def _resume(self, request: GenerationRequest, ref: UpstreamRef) -> GeneratedImage | None:
        """Collect the task an earlier attempt submitted; None when it must be submitted anew."""
        upstream = self._router.upstreams.get(ref.upstream)
        if upstream is None:
            log.warning(
                "task %s was submitted to upstream %r, which is not configured any more; "
                "submitting it anew",
                request.task_id,
                ref.upstream,
            )
            return None
        try:
            return await self._router.call_on(
                upstream,
                lambda up: self._collect(
                    up, ref.task_id, first_wait=0.0, progress=request.progress
                ),
            )
        except _UpstreamTaskGone:
            log.warning(
                "upstream %r no longer knows task %s (ours: %s); submitting it anew",
                upstream.name,
                ref.task_id,
                request.task_id,
            )
            return None

    async def _submit_and_collect(
        self, upstream: Upstream, route: Route, request: GenerationRequest
    ) -> GeneratedImage:
        remote_id = await self._submit(upstream, route, request)
        if request.checkpoint is not None:
            await request.checkpoint(UpstreamRef(upstream.name, remote_id))
        if request.progress is not None:
            request.progress(0)
        try:
            return await self._collect(
                upstream,
                remote_id,
                first_wait=upstream.config.poll_initial_seconds,
                progress=request.progress,
            )
        except _UpstreamTaskGone:
            raise UpstreamError(
                f"upstream '{upstream.name}' lost the task it had just accepted",
                upstream=upstream.name,
                retryable=True,
                code="upstream_bad_response",
                failover=False,
            ) from None

    async def _submit(self, upstream: Upstream, route: Route, request: GenerationRequest) -> str:
        body: dict[str, Any] = {
            "model": upstream.model_for(request.model, route.upstream_model),
            "prompt": request.prompt,
            "size": f"{request.width}x{request.height}",
        }
        if request.quality is not None:
            body["quality"] = request.quality
        urls = request.reference_urls or tuple(reference.url for reference in request.references)
        if urls:
            # The upstream fetches the references itself, from where the client put them.
            body["image_urls"] = list(urls)
        headers = upstream.authorization()
        if request.task_id:
            headers["Idempotency-Key"] = request.task_id
        response = await self._send(
            upstream, "POST", "/v1/image2/images", json=body, headers=headers
        )
        remote_id = _json(upstream, response).get("id")
        if not isinstance(remote_id, str) or not 0 < len(remote_id) <= _MAX_REMOTE_ID_CHARS:
            raise bad_answer_error(upstream.name, "accepted the task without a usable id")
        return remote_id

    async def _collect(
        self,
        upstream: Upstream,
        remote_id: str,
        *,
        first_wait: float,
        progress: Callable[[int], None] | None = None,
    ) -> GeneratedImage:
        config = upstream.config
        try:
            async with asyncio.timeout(config.timeout_seconds):
                return await self._poll_and_download(upstream, remote_id, first_wait, progress)
        except asyncio.CancelledError as exc:
            if cancelled_by_client(exc):
                await self._cancel_upstream(upstream, remote_id)
            raise
        except TimeoutError:
            raise UpstreamError(
                f"upstream '{upstream.name}' did not finish the task within "
                f"{config.timeout_seconds:g}s",
                upstream=upstream.name,
                retryable=True,
                code="upstream_timeout",
                failover=False,
            ) from None
        except UpstreamError as exc:
            # Submitted (and paid for) here: collecting it anywhere else is impossible.
            raise exc.not_failing_over() from None

    async def _cancel_upstream(self, upstream: Upstream, remote_id: str) -> None:
        """Our client cancelled: ask the upstream to stop too, where it offers
        `POST /v1/result/{id}/cancel` (as imageforge does). Best effort: an upstream that
        does not, or does not answer in time, finishes the task unwatched."""
        path = f"/v1/result/{quote(remote_id, safe='')}/cancel"
        try:
            async with asyncio.timeout(_CANCEL_UPSTREAM_SECONDS):
                await self._send(upstream, "POST", path, headers=upstream.authorization())
        except (UpstreamError, TimeoutError) as exc:
            log.info("upstream %r did not cancel task %s: %s", upstream.name, remote_id, exc)
        else:
            log.info("cancelled task %s on upstream %r", remote_id, upstream.name)

    async def _poll_and_download(
        self,
        upstream: Upstream,
        remote_id: str,
        first_wait: float,
        progress: Callable[[int], None] | None = None,
    ) -> GeneratedImage:
        config = upstream.config
        wait = first_wait
        interval = config.poll_initial_seconds
        failures = 0
        path = f"/v1/result/{quote(remote_id, safe='')}"
        while True:
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                response = await self._send(upstream, "GET", path, headers=upstream.authorization())
            except UpstreamError as exc:
                if exc.status == 404:
                    raise _UpstreamTaskGone() from None
                failures += 1
                if not exc.retryable or failures >= _MAX_POLL_FAILURES:
                    raise
                wait = max(interval, exc.retry_after or 0.0)
                interval = min(interval * _POLL_GROWTH, config.poll_max_seconds)
                continue
            failures = 0
            body = _json(upstream, response)
            status = body.get("status")
            if status == "completed":
                image_url = body.get("image_url")
                if not isinstance(image_url, str) or not image_url:
                    raise bad_answer_error(upstream.name, "completed the task without an image_url")
                return await self._download(upstream, image_url)
            if status == "failed":
                error = body.get("error")
                detail = scrub(error if isinstance(error, str) else "", self._router.secrets)
                raise UpstreamError(
                    f"upstream '{upstream.name}' failed the task"
                    + (f": {detail}" if detail else ""),
                    upstream=upstream.name,
                    retryable=False,
                    code="upstream_failed",
                )
            if status not in _PENDING:
                raise bad_answer_error(upstream.name, f"reported an unknown status {status!r}")
            figure = body.get("progress")
            if progress is not None and isinstance(figure, int) and 0 <= figure <= 100:
                # An upstream that reports progress (imageforge does) passes it on.
                progress(figure)
            wait = interval
            interval = min(interval * _POLL_GROWTH, config.poll_max_seconds)

    async def _download(self, upstream: Upstream, image_url: str) -> GeneratedImage:
        image = await self._http.download_image(upstream, image_url)
        return upstream_image(upstream, image)

    # HTTP ----------------------------------------------------------------------

    async def _send(
        self, upstream: Upstream, method: str, path: str, *, json: object = None, **kwargs: Any
    ) -> _Reply:
        # Users often copy an OpenAI-style base URL ending in /v1; our paths carry it.
        url = upstream.base_url.removesuffix("/v1") + path
        data = orjson.dumps(json) if json is not None else None
        headers = kwargs.pop("headers", {})
        if data is not None:
            headers = {**headers, "Content-Type": "application/json"}
        try:
            async with self._http.session(upstream).request(
                method, url, data=data, headers=headers, allow_redirects=False, **kwargs
            ) as response:
                reply = _Reply(response.status, response.headers, await response.read())
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise timeout_error(upstream.name, upstream.config.request_timeout_seconds) from None
        except aiohttp.ClientError as exc:
            raise connection_error(upstream.name, exc) from None
        if 200 <= reply.status < 300:
            return reply
        raise error_for_status(
            upstream.name,
            reply.status,
            body=reply.body,
            retry_after=parse_retry_after(reply.headers.get("retry-after")),
            secrets=self._router.secrets,
        )


def _json(upstream: Upstream, reply: _Reply) -> dict[str, Any]:
    try:
        body = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise bad_answer_error(upstream.name, "answered with something that is not a JSON object")
    return body

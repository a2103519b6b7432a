"""The `openai` engine: images from OpenAI's Images API, through the official SDK.

No references: `images.generate`; with references: `images.edit` with the fetched bytes. The
SDK's own retries are off (`max_retries=0`): the runner owns retries across attempts, and
`Router` moves a failed call to the next upstream within one attempt.

Each upstream gets one `AsyncOpenAI` client, built at start-up, on the SDK's aiohttp transport
(`openai[aiohttp]`) with a pool as wide as the upstream's concurrency limit, so a call never
queues for a connection behind the upstream's semaphore. With 500 calls in flight on one event
loop the transport decides throughput: the SDK's default httpx stack cost ~2.4 ms of CPU per
call (its pool checks each idle connection with a `poll()` per request), aiohttp ~0.9 ms.

Generations, the one call of a task without references, are a plain aiohttp `POST` on the
upstream's session (the one its image downloads use) with the body `images.generate` sends and
the URL, headers and timeouts of the upstream's SDK client; edits go through the SDK. Both
take the answer as bytes, read here with orjson. At 500 calls in flight the SDK's layers cost
most of the worker's CPU per task: first the typed layer (the parameter transform, an identity
for these plain fields, and a response model the engine picked apart again: a fifth of the
loop's time), then its request building and HTTP client wrapping over aiohttp (`make
bench-upstream`, 500 in flight: worker CPU per task 1.28 → 0.72 ms).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib
import io
import ssl
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from PIL import Image

from imageforge.engines.base import missing_extra

try:
    import aiohttp
    import openai
except ImportError as exc:  # pragma: no cover - depends on how imageforge was installed
    raise missing_extra("openai", "the openai package with its aiohttp transport") from exc

from imageforge.engines.base import GeneratedImage, GenerationRequest, ReferenceImage
from imageforge.engines.upstream_errors import (
    bad_answer_error,
    connection_error,
    error_for_status,
    parse_retry_after,
    timeout_error,
)
from imageforge.engines.upstream_http import KEEPALIVE_SECONDS, UpstreamHTTP, upstream_image
from imageforge.engines.upstreams import Route, Router, Upstream

_UPLOAD_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_USER_AGENT = "imageforge/0.1 (openai engine)"
#: Reading an answer (JSON, then base64) costs ~3 ms per MB; above this it moves off the
#: event loop.
_INLINE_READ_BYTES = 1024 * 1024


class OpenAIEngine:
    name: ClassVar[str] = "openai"
    fetches_references: ClassVar[bool] = True

    def __init__(self, router: Router) -> None:
        self._router = router
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._generation_calls: dict[str, tuple[str, dict[str, str], aiohttp.ClientTimeout]] = {}
        # Its TLS context serves the SDK's clients too; its downloads serve answers that link
        # their image instead of carrying it (see `_generate_on`).
        self._http = UpstreamHTTP(
            router.upstreams.values(), user_agent=_USER_AGENT, tls=_sdk_tls_context
        )
        self._warm_up()

    def _warm_up(self) -> None:
        """Pay the one-off costs now, not on the first wave of tasks: each client builds
        an SSL context (~15 ms), the SDK imports its resources on first use."""
        for upstream in self._router.upstreams.values():
            _ = self._client(upstream).images
            self._generation_call(upstream)
        # Pillow imports its format plugins on the first open: tens of milliseconds in the
        # middle of the first wave of answers otherwise.
        Image.preinit()

    @property
    def router(self) -> Router:
        return self._router

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        route = self._router.route_for(request.model)
        return await self._router.run(
            route, lambda upstream: self._generate_on(upstream, route, request)
        )

    async def aclose(self) -> None:
        """Close every client; a later `generate` opens new ones."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()
        await self._http.aclose()

    def _client(self, upstream: Upstream) -> openai.AsyncOpenAI:
        client = self._clients.get(upstream.name)
        if client is None:
            config = upstream.config
            timeout = openai.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds)
            # The SDK's own Limits type, whichever HTTP library this SDK version uses.
            limits = type(openai.DEFAULT_CONNECTION_LIMITS)(
                max_connections=upstream.max_concurrency,
                max_keepalive_connections=upstream.max_concurrency,
                keepalive_expiry=KEEPALIVE_SECONDS,
            )
            client = openai.AsyncOpenAI(
                api_key=upstream.api_key,
                base_url=upstream.base_url,
                timeout=timeout,
                max_retries=0,
                http_client=openai.DefaultAioHttpClient(
                    limits=limits, timeout=timeout, verify=self._http.tls_context()
                ),
            )
            self._clients[upstream.name] = client
        return client

    async def _generate_on(
        self, upstream: Upstream, route: Route, request: GenerationRequest
    ) -> GeneratedImage:
        model = upstream.model_for(request.model, route.upstream_model)
        size = f"{request.width}x{request.height}"
        output_format = upstream.config.output_format
        uploads = [await _upload(i, ref) for i, ref in enumerate(request.references)]
        client = self._client(upstream)
        try:
            if uploads:
                raw = await client.images.with_raw_response.edit(
                    image=uploads,
                    prompt=request.prompt,
                    model=model,
                    size=size,
                    quality=request.quality if request.quality is not None else openai.omit,
                    n=1,
                    output_format=output_format,
                )
                body = raw.content
            else:
                # What `images.generate` sends for these arguments (it omits unset ones).
                fields: dict[str, object] = {
                    "prompt": request.prompt,
                    "model": model,
                    "size": size,
                    "n": 1,
                    "output_format": output_format,
                }
                if request.quality is not None:
                    fields["quality"] = request.quality
                body = await self._post_generation(upstream, fields)
        # `from None` throughout: the SDK's exceptions carry the request (with its
        # Authorization header) and raw upstream text; nothing of them may reach a log.
        except openai.APIStatusError as exc:
            raise error_for_status(
                upstream.name,
                exc.status_code,
                body=exc.body,
                retry_after=parse_retry_after(exc.response.headers.get("retry-after")),
                secrets=self._router.secrets,
            ) from None
        except openai.APIConnectionError as exc:  # APITimeoutError included
            raise _transport_error(upstream, exc) from None
        except openai.OpenAIError:
            raise bad_answer_error(upstream.name, "answered with an unreadable response") from None
        if len(body) > _INLINE_READ_BYTES:
            answer = await asyncio.to_thread(_read_answer, upstream, body)
        else:
            answer = _read_answer(upstream, body)
        image = answer.image
        if image is None:
            # Some gateways (LocalAI among them) answer with a link unless asked for base64,
            # a parameter OpenAI's image models refuse, so the link is followed instead.
            assert answer.url is not None
            image = await self._http.download_image(upstream, answer.url)
        return upstream_image(upstream, image, answer.usage)

    async def _post_generation(self, upstream: Upstream, fields: dict[str, object]) -> bytes:
        """`POST /images/generations` on the upstream's aiohttp session, with the SDK's
        URL, headers and timeouts; its error answers become the SDK path's errors."""
        url, headers, timeout = self._generation_call(upstream)
        try:
            async with self._http.session(upstream).post(
                url,
                data=orjson.dumps(fields),
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                status, body = response.status, await response.read()
                retry_after = response.headers.get("retry-after")
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise timeout_error(upstream.name, upstream.config.timeout_seconds) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise connection_error(upstream.name, exc) from None
        if 200 <= status < 300:
            return body
        raise error_for_status(
            upstream.name,
            status,
            body=body,
            retry_after=parse_retry_after(retry_after),
            secrets=self._router.secrets,
        )

    def _generation_call(
        self, upstream: Upstream
    ) -> tuple[str, dict[str, str], aiohttp.ClientTimeout]:
        """Built once per upstream from its SDK client: the URL, the headers the SDK sends
        (its User-Agent and platform headers, organization and project when set, the key)
        and its timeouts (a connection within `connect_timeout_seconds`, then no wait for
        the next bytes longer than `timeout_seconds`)."""
        call = self._generation_calls.get(upstream.name)
        if call is None:
            client = self._client(upstream)
            headers = {
                name: value
                for name, value in {**client.default_headers, **client.auth_headers}.items()
                if isinstance(value, str)
            }
            seconds = upstream.config.timeout_seconds
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=seconds,
                sock_connect=upstream.config.connect_timeout_seconds,
                sock_read=seconds,
            )
            call = (f"{client.base_url}images/generations", headers, timeout)
            self._generation_calls[upstream.name] = call
        return call


def _sdk_tls_context() -> ssl.SSLContext:
    """Built by the SDK's own HTTP library, so verification is what the SDK would do."""
    client_class = openai.DefaultAsyncHttpxClient.__mro__[1]
    http_library = importlib.import_module(client_class.__module__.partition(".")[0])
    context: ssl.SSLContext = http_library.create_ssl_context()
    return context


def _transport_error(upstream: Upstream, exc: openai.APIConnectionError) -> Exception:
    """A timeout or a connection failure, told apart by what aiohttp raised.

    The SDK's aiohttp transport reports every aiohttp connection error as a connect
    timeout (a refused connection included), so the SDK's exception class alone would
    call an unreachable upstream slow."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ServerTimeoutError | TimeoutError):
            break
        if isinstance(cause, aiohttp.ClientError | OSError):
            return connection_error(upstream.name, cause)
        cause = cause.__cause__
    if isinstance(exc, openai.APITimeoutError) or cause is not None:
        return timeout_error(upstream.name, upstream.config.timeout_seconds)
    return connection_error(upstream.name, exc)


async def _upload(index: int, reference: ReferenceImage) -> tuple[str, bytes, str]:
    """A reference as a multipart file; GIF (which the Images API refuses) becomes PNG."""
    content_type = _UPLOAD_TYPES.get(reference.format)
    if content_type is not None:
        extension = content_type.rsplit("/", 1)[1]
        return f"reference-{index}.{extension}", reference.data, content_type
    data = await asyncio.to_thread(_to_png, reference.data)
    return f"reference-{index}.png", data, "image/png"


def _to_png(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGBA").save(out, format="PNG")
        return out.getvalue()


@dataclass(frozen=True)
class _Answer:
    #: The decoded image, or None when the answer links to it instead.
    image: bytes | None
    url: str | None
    usage: dict[str, int]


def _read_answer(upstream: Upstream, body: bytes) -> _Answer:
    """The image (or its link) and usage in an Images API answer:
    `{"data": [{"b64_json": …} or {"url": …}], "usage": {…}}`.

    Gateways send all sorts: text, other JSON, partial usage. Nothing here trusts the shape."""
    try:
        answer: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_answer_error(upstream.name, "answered with an unreadable response") from None
    if not isinstance(answer, dict):
        raise bad_answer_error(upstream.name, "answered with an unreadable response")
    data = answer.get("data")
    first = data[0] if isinstance(data, list) and data else None
    encoded = first.get("b64_json") if isinstance(first, dict) else None
    link = first.get("url") if isinstance(first, dict) else None
    image: bytes | None = None
    if isinstance(encoded, str) and encoded:
        try:
            image = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise bad_answer_error(upstream.name, "answered with invalid base64") from None
    elif not (isinstance(link, str) and link):
        raise bad_answer_error(upstream.name, "answered without an image")
    reported = answer.get("usage")
    usage = (
        {
            name: value
            for name in ("input_tokens", "output_tokens", "total_tokens")
            if type(value := reported.get(name)) is int
        }
        if isinstance(reported, dict)
        else {}
    )
    return _Answer(image=image, url=None if image is not None else link, usage=usage)

"""Which upstream serves a request: routes per public model, failover, concurrency limits.

One `Router` per upstream engine (openai, relay) holds every upstream of that kind, each with
its circuit breaker and a semaphore that caps the calls in flight there. A public model routes
to the upstreams its config lists (`[models.NAME] upstreams = [...]`), in order or weighted;
a model without a list uses every configured upstream of the engine's kind, in config order,
and when none is configured the implicit one named after the kind (`openai` from
OPENAI_API_KEY / OPENAI_BASE_URL, `relay` from IMAGEFORGE_RELAY_BASE_URL / _API_KEY).

A request tries the upstreams of its route once each, in route order, skipping those whose
circuit is open, and moves on only after a failure that says "not now" (see
`UpstreamError.failover`). The runner owns retries across attempts, so one `run` never loops.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
from PIL import Image, UnidentifiedImageError

from imageforge.engines.base import GeneratedImage
from imageforge.engines.breaker import CircuitBreaker
from imageforge.engines.config import UpstreamConfig, UpstreamKind
from imageforge.engines.upstream_errors import (
    UpstreamError,
    bad_answer_error,
    connection_error,
    timeout_error,
    too_large_error,
)
from imageforge.errors import ConfigurationError

if TYPE_CHECKING:
    from imageforge.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: The Images API has no "-r" variant; its model is gpt-image-2.
_OPENAI_DEFAULT_MODELS = {"gpt-image-2-r": "gpt-image-2"}
_IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


@dataclass
class Upstream:
    """One upstream service and its runtime state (breaker, concurrency slots)."""

    name: str
    config: UpstreamConfig
    base_url: str
    api_key: str = field(repr=False)
    max_concurrency: int
    breaker: CircuitBreaker
    slots: asyncio.Semaphore = field(repr=False)

    def authorization(self) -> dict[str, str]:
        """The header carrying this upstream's key. Per request, never a client default:
        downloads may go to another host."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def model_for(self, public_model: str, route_model: str | None) -> str:
        """The model name to send here: this upstream's mapping, else the route's, else the
        kind's default, else the public name."""
        if public_model in self.config.models:
            return self.config.models[public_model]
        if route_model:
            return route_model
        if self.config.kind == "openai":
            return _OPENAI_DEFAULT_MODELS.get(public_model, public_model)
        return public_model


@dataclass(frozen=True)
class Route:
    """The upstreams one public model may use, and how to choose among them."""

    model: str
    upstreams: tuple[Upstream, ...]
    #: None: strict order (failover); else one weight per upstream (weighted random order).
    weights: tuple[float, ...] | None = None
    #: `upstream_model` of the model's config, if any.
    upstream_model: str | None = None

    def order(self, rng: random.Random) -> list[Upstream]:
        if self.weights is None:
            return list(self.upstreams)
        # Efraimidis-Spirakis: a weighted random permutation, so the upstreams not drawn
        # first still serve as failover, in weighted order.
        keyed = [
            (rng.random() ** (1.0 / weight), index) for index, weight in enumerate(self.weights)
        ]
        keyed.sort(reverse=True)
        return [self.upstreams[index] for _, index in keyed]


class Router:
    def __init__(
        self,
        kind: UpstreamKind,
        upstreams: Mapping[str, Upstream],
        routes: Mapping[str, Route],
        default_route: Route,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.kind = kind
        self.upstreams = dict(upstreams)
        self._routes = dict(routes)
        self._default = default_route
        self._rng = rng or random.Random()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        kind: UpstreamKind,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> Router:
        env = os.environ if environ is None else environ
        configured = {
            name: config for name, config in settings.upstreams.items() if config.kind == kind
        }
        for name, config in settings.upstreams.items():
            if config.kind != kind and name == kind:
                raise ConfigurationError(
                    f"upstream '{name}' has kind '{config.kind}', but that name is reserved "
                    f"for the implicit {kind} upstream"
                )
        built: dict[str, Upstream] = {}

        def upstream(name: str, model: str) -> Upstream:
            if name in built:
                return built[name]
            config = configured.get(name)
            if config is None:
                if name != kind:
                    other = settings.upstreams.get(name)
                    raise ConfigurationError(
                        f"model '{model}' uses upstream '{name}', which is "
                        + (f"a {other.kind} upstream, not {kind}" if other else "not configured")
                    )
                config = UpstreamConfig(kind=kind)
            built[name] = _build_upstream(name, config, settings, env, clock)
            return built[name]

        default_names = list(configured) or [kind]
        default_route = Route(
            model="*", upstreams=tuple(upstream(name, "*") for name in default_names)
        )
        routes: dict[str, Route] = {}
        for model, spec in settings.model_specs().items():
            if spec.engine != kind:
                continue
            model_config = settings.models.get(model)
            names = (model_config.upstreams if model_config else None) or default_names
            if len(set(names)) != len(names):
                raise ConfigurationError(f"model '{model}' lists an upstream twice")
            weights: tuple[float, ...] | None = None
            if model_config is not None and model_config.routing == "weighted":
                unknown = set(model_config.upstream_weights) - set(names)
                if unknown:
                    raise ConfigurationError(
                        f"model '{model}': upstream_weights names {sorted(unknown)}, "
                        "which are not in its upstreams"
                    )
                weights = tuple(float(model_config.upstream_weights.get(n, 1.0)) for n in names)
                if any(weight <= 0 for weight in weights):
                    raise ConfigurationError(f"model '{model}': upstream weights must be > 0")
            routes[model] = Route(
                model=model,
                upstreams=tuple(upstream(name, model) for name in names),
                weights=weights,
                upstream_model=model_config.upstream_model if model_config else None,
            )
        return cls(kind, built, routes, default_route, rng=rng)

    def route_for(self, model: str) -> Route:
        """The model's route; a model unknown here (renamed since the task was queued) takes
        the default route of this engine."""
        return self._routes.get(model) or Route(model=model, upstreams=self._default.upstreams)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(upstream.api_key for upstream in self.upstreams.values())

    async def run(self, route: Route, call: Callable[[Upstream], Awaitable[T]]) -> T:
        """`call` on the first upstream of the route that is in rotation; on a failure that
        allows it, on the next one. Raises the last failure, or a retryable error carrying
        the time until the first probe when every upstream is out of rotation."""
        last_error: UpstreamError | None = None
        skipped: list[Upstream] = []
        candidates = route.order(self._rng)
        for position, upstream in enumerate(candidates, start=1):
            if not upstream.breaker.allow():
                skipped.append(upstream)
                continue
            try:
                return await self._call(upstream, call)
            except UpstreamError as exc:
                if not exc.failover:
                    raise
                last_error = exc
                if position < len(candidates):
                    log.warning("%s; trying the next upstream of model %r", exc, route.model)
        if last_error is not None:
            raise last_error
        wait = min((u.breaker.seconds_until_probe() for u in skipped), default=1.0)
        raise UpstreamError(
            f"every upstream of model '{route.model}' is out of rotation after repeated "
            f"failures; the next probe is in {wait:.0f}s",
            upstream=",".join(u.name for u in route.upstreams),
            retryable=True,
            retry_after=wait,
            code="upstream_unavailable",
            failover=False,
        )

    async def call_on(self, upstream: Upstream, call: Callable[[Upstream], Awaitable[T]]) -> T:
        """`call` on this very upstream, open circuit or not: work already submitted there
        can only be collected there."""
        return await self._call(upstream, call)

    @staticmethod
    async def _call(upstream: Upstream, call: Callable[[Upstream], Awaitable[T]]) -> T:
        async with upstream.slots:
            try:
                result = await call(upstream)
            except UpstreamError as exc:
                if exc.counts_against_upstream:
                    upstream.breaker.record_failure()
                else:
                    upstream.breaker.record_neutral()
                raise
            except BaseException:
                upstream.breaker.record_neutral()
                raise
        upstream.breaker.record_success()
        return result


def _build_upstream(
    name: str,
    config: UpstreamConfig,
    settings: Settings,
    env: Mapping[str, str],
    clock: Callable[[], float],
) -> Upstream:
    implicit_relay = config.kind == "relay" and name == "relay" and name not in settings.upstreams
    base_url = config.base_url
    if config.kind == "openai":
        base_url = base_url or env.get("OPENAI_BASE_URL", "").rstrip("/") or OPENAI_DEFAULT_BASE_URL
    elif implicit_relay:
        base_url = settings.relay_base_url
    if not base_url:
        setting = "IMAGEFORGE_RELAY_BASE_URL" if implicit_relay else f"upstreams.{name}.base_url"
        raise ConfigurationError(f"relay upstream '{name}' needs a base URL: set {setting}")

    key = env.get(config.key_env, "")
    if config.kind == "relay" and config.api_key_env is None and settings.relay_api_key:
        # The relay key setting, from IMAGEFORGE_RELAY_API_KEY or wherever settings found it.
        key = settings.relay_api_key.get_secret_value()
    if not key.strip():
        raise ConfigurationError(
            f"upstream '{name}' needs an API key: set the environment variable {config.key_env}"
        )
    limit = config.max_concurrency or settings.worker_concurrency
    return Upstream(
        name=name,
        config=config,
        base_url=base_url,
        api_key=key.strip(),
        max_concurrency=limit,
        breaker=CircuitBreaker(
            failure_threshold=config.breaker.failure_threshold,
            cooldown_seconds=config.breaker.cooldown_seconds,
            clock=clock,
        ),
        slots=asyncio.Semaphore(limit),
    )


def upstream_image(
    upstream: Upstream, data: bytes, usage: dict[str, int] | None = None
) -> GeneratedImage:
    """What an engine returns for image bytes an upstream sent (checked by `describe_image`)."""
    content_type, width, height = describe_image(upstream.name, data)
    return GeneratedImage(
        data=data,
        content_type=content_type,
        width=width,
        height=height,
        usage=usage or {},
        upstream=upstream.name,
    )


def describe_image(upstream: str, data: bytes) -> tuple[str, int, int]:
    """Content type, width and height of an image an upstream returned, from its header."""
    try:
        with Image.open(io.BytesIO(data), formats=tuple(_IMAGE_TYPES)) as image:
            return _IMAGE_TYPES[image.format or ""], image.width, image.height
    except (UnidentifiedImageError, OSError, KeyError, ValueError) as exc:
        raise bad_answer_error(
            upstream, "returned data that is not a PNG, JPEG or WebP image"
        ) from exc


#: Idle connections are closed after this long: below the 5 s keep-alive of common servers
#: (uvicorn, gunicorn), so a request is not sent on a connection the server is closing.
KEEPALIVE_SECONDS = 4.0


def request_timeouts(config: UpstreamConfig) -> aiohttp.ClientTimeout:
    """Per-step limits for one short call (submit, poll, download), as httpx counts them: a
    connection within `connect_timeout_seconds`, then no wait for a pool slot or for the next
    bytes longer than `request_timeout_seconds`. No limit on the whole: a large image may take
    longer than that to arrive, as long as it keeps arriving."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=config.request_timeout_seconds,
        sock_connect=config.connect_timeout_seconds,
        sock_read=config.request_timeout_seconds,
    )


def same_origin(url: str, base_url: str) -> bool:
    """Whether `url` points at the upstream itself: only then does it get the upstream's key."""
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


async def download_image(session: aiohttp.ClientSession, upstream: Upstream, link: str) -> bytes:
    """The image at `link` (absolute, or relative to the upstream), up to `max_image_bytes`,
    without following redirects. The upstream's key goes only to the upstream's own origin:
    a CDN link gets no Authorization."""
    config = upstream.config
    url = urljoin(upstream.base_url + "/", link)
    if urlsplit(url).scheme not in ("http", "https"):
        raise bad_answer_error(upstream.name, "linked its image at a URL that is not http(s)")
    headers = upstream.authorization() if same_origin(url, upstream.base_url) else {}
    cap = config.max_image_bytes
    data = bytearray()
    try:
        async with session.get(
            url, headers=headers, allow_redirects=False, timeout=request_timeouts(config)
        ) as reply:
            if not 200 <= reply.status < 300:
                raise bad_answer_error(
                    upstream.name, f"answered {reply.status} to the image download"
                )
            if (reply.content_length or 0) > cap:
                raise too_large_error(upstream.name, cap)
            async for chunk in reply.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > cap:
                    raise too_large_error(upstream.name, cap)
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise timeout_error(upstream.name, config.request_timeout_seconds) from None
    except aiohttp.ClientError as exc:
        raise connection_error(upstream.name, exc) from None
    return bytes(data)

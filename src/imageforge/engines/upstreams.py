"""Which upstream serves a request: routes per public model, failover, concurrency limits.

One `Router` per upstream engine (openai, relay) holds every upstream of that kind, each with
its circuit breaker and a semaphore that caps the calls in flight there. A public model routes
to the upstreams its config lists (`[models.NAME] upstreams = [...]`), in order or weighted;
a model without a list uses every configured upstream of the engine's kind, in config order,
and when none is configured the implicit one named after the kind (`openai` from
OPENAI_API_KEY / OPENAI_BASE_URL, `relay` from IMAGEFORGE_RELAY_BASE_URL / _API_KEY). The
runtime builds routers from the settings (`imageforge.engine_setup.build_router`); this
module knows nothing of settings, the environment or HTTP (`upstream_http.py`).

A request tries the upstreams of its route once each, in route order, skipping those whose
circuit is open, and moves on only after a failure that says "not now" (see
`UpstreamError.failover`). The runner owns retries across attempts, so one `run` never loops.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from imageforge.engines.breaker import CircuitBreaker
from imageforge.engines.config import UpstreamConfig, UpstreamKind
from imageforge.engines.upstream_errors import UpstreamError
from imageforge.observability.metrics import BREAKER_VALUES, Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The Images API has no "-r" variant; its model is gpt-image-2.
_OPENAI_DEFAULT_MODELS = {"gpt-image-2-r": "gpt-image-2"}


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
        metrics: Metrics | None = None,
    ) -> None:
        self.kind = kind
        self._metrics = metrics
        self.upstreams = dict(upstreams)
        self._routes = dict(routes)
        self._default = default_route
        self._rng = rng or random.Random()

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

    async def _call(self, upstream: Upstream, call: Callable[[Upstream], Awaitable[T]]) -> T:
        async with upstream.slots:
            try:
                result = await call(upstream)
            except UpstreamError as exc:
                if exc.counts_against_upstream:
                    upstream.breaker.record_failure()
                else:
                    upstream.breaker.record_neutral()
                self._observe(upstream, error=exc.code)
                raise
            except BaseException:
                upstream.breaker.record_neutral()
                self._observe(upstream)
                raise
        upstream.breaker.record_success()
        self._observe(upstream)
        return result

    def _observe(self, upstream: Upstream, *, error: str | None = None) -> None:
        """The upstream's breaker state after a call, and the call's error class."""
        if self._metrics is None:
            return
        if error is not None:
            self._metrics.upstream_errors.labels(upstream.name, error).inc()
        state = BREAKER_VALUES[upstream.breaker.state.value]
        self._metrics.breaker_state.labels(upstream.name).set(state)

"""OpenTelemetry traces (the `tracing` extra), off unless configured.

Spans: one per HTTP request (`GET /v1/result/{task_id}`), and for each task attempt its
time in queue (from when it became due to its claim) and its engine call, within which the
instrumented HTTP clients (httpx, aiohttp) add a span per upstream call. Every span of a
task carries `imageforge.task_id`, the attribute to search by; the request that created a
task carries it too.

On when `otel_endpoint` is set or one of the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables is; spans then go over OTLP/HTTP in batches.
Tests hand `Tracing` a provider of their own (the SDK's in-memory exporter).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from imageforge.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from imageforge.settings import Settings
    from imageforge.tasks import Task

log = logging.getLogger(__name__)

TASK_ID = "imageforge.task_id"
_STANDARD_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def tracing_configured(settings: Settings, environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return settings.otel_endpoint is not None or any(environ.get(n) for n in _STANDARD_ENDPOINTS)


def check_tracing(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """ConfigurationError when tracing is asked for without the extra installed."""
    if not tracing_configured(settings, environ):
        return
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"tracing needs the tracing extra ({exc.name} is missing)",
            setting="otel_endpoint",
            fix="pip install 'imageforge[tracing]', or unset it and OTEL_EXPORTER_OTLP_*",
        ) from None


def build_tracing(settings: Settings) -> Tracing | None:
    """Tracing exporting over OTLP/HTTP, or None when not configured."""
    if not tracing_configured(settings):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    endpoint = settings.otel_endpoint
    exporter = (
        OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
        if endpoint
        else OTLPSpanExporter()  # the standard variables say where
    )
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name})
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, instrument_clients=True)


class Tracing:
    def __init__(self, provider: TracerProvider, *, instrument_clients: bool = False) -> None:
        from opentelemetry import trace

        self._provider = provider
        self._trace = trace
        self._tracer = provider.get_tracer("imageforge")
        self._instrumented: list[Any] = []
        if instrument_clients:
            self._instrument_clients()

    def _instrument_clients(self) -> None:
        """Spans for every upstream call, by the clients' own instrumentation where its
        package is installed (httpx: references and S3-free calls; aiohttp: upstreams)."""
        for module, name in (
            ("opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor"),
            ("opentelemetry.instrumentation.aiohttp_client", "AioHttpClientInstrumentor"),
        ):
            try:
                instrumentor = getattr(__import__(module, fromlist=[name]), name)()
            except ImportError:
                continue
            instrumentor.instrument(tracer_provider=self._provider)
            self._instrumented.append(instrumentor)

    def request_span(self, scope: MutableMapping[str, Any]) -> tuple[Span, object]:
        """A server span for an HTTP request, current while the app answers it; the
        caller's `traceparent` (W3C) makes it a child of the caller's span."""
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        span = self._tracer.start_span(
            scope["method"],
            context=extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
        )
        token = self._context_attach(span)
        return span, token

    def end_request_span(
        self, handle: tuple[Span, object], *, route: str, status: int, state: dict[str, Any]
    ) -> None:
        from opentelemetry import context

        span, token = handle
        span.update_name(f"{span.attributes.get('http.request.method')} {route}")  # type: ignore[attr-defined]
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        for key, attribute in (("task_id", TASK_ID), ("key_id", "imageforge.key_id")):
            value = state.get(key)
            if value is not None:
                span.set_attribute(attribute, str(value))
        if status >= 500:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()
        context.detach(token)  # type: ignore[arg-type]

    def _context_attach(self, span: Span) -> object:
        from opentelemetry import context

        return context.attach(self._trace.set_span_in_context(span))

    def queue_span(self, task: Task, *, claimed_at: float) -> None:
        """The task's wait while claimable, recorded when it is claimed."""
        due = max(task.run_after, task.created_at)
        start = int(due * 1e9)
        span = self._tracer.start_span(
            "task.queue",
            start_time=start,
            attributes={TASK_ID: task.id, "imageforge.attempt": task.attempt},
        )
        span.end(end_time=max(start, int(claimed_at * 1e9)))

    @contextlib.contextmanager
    def engine_span(self, task: Task) -> Iterator[Span]:
        """The engine call, current while it runs (so upstream calls are its children)."""
        with self._tracer.start_as_current_span(
            f"engine {task.engine}",
            attributes={
                TASK_ID: task.id,
                "imageforge.attempt": task.attempt,
                "imageforge.model": task.model,
                "imageforge.engine": task.engine,
            },
        ) as span:
            yield span

    def shutdown(self) -> None:
        for instrumentor in self._instrumented:
            with contextlib.suppress(Exception):
                instrumentor.uninstrument()
        self._provider.shutdown()

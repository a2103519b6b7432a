"""Traces (the tracing extra): a span per request, and per task attempt its time in queue
and its engine call, all carrying the task id; off unless configured."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from imageforge.api.app import create_app
from imageforge.engines.relay import RelayEngine
from imageforge.observability.tracing import TASK_ID, Tracing, tracing_configured
from tests.conftest import ApiHarness, make_settings
from tests.test_relay_engine import make_engine, relay_upstream  # noqa: F401 (fixtures)
from tests.test_relay_engine import request as relay_request
from tests.test_store_contract import make_task

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_spans_of_a_request_and_its_task(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = make_settings(tmp_path / "data")
    app = create_app(settings, tracing=Tracing(provider))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    import httpx

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    api = ApiHarness(app, client)
    try:
        key = await api.new_key()
        created = await client.post(
            "/v1/image2/images",
            json={"model": "gpt-image-2", "prompt": "a traced fox"},
            headers={"Authorization": f"Bearer {key}", "traceparent": TRACEPARENT},
        )
        task_id = created.json()["id"]
        assert (await api.wait_terminal(key, task_id))["status"] == "completed"
        for _ in range(50):  # the engine span ends just after the task completes
            if any(s.name == "engine offline" for s in exporter.get_finished_spans()):
                break
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)

    spans = exporter.get_finished_spans()
    by_name = {span.name: span for span in spans}
    create = by_name["POST /v1/image2/images"]
    assert create.attributes is not None and create.attributes[TASK_ID] == task_id
    assert create.attributes["http.response.status_code"] == 200
    # The caller's trace continues here.
    assert format(create.context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    assert create.parent is not None and format(create.parent.span_id, "016x") == "b7ad6b7169203331"
    polls = [s for s in spans if s.name == "GET /v1/result/{task_id}"]
    assert polls and all(s.attributes and s.attributes[TASK_ID] == task_id for s in polls)
    queue, engine = by_name["task.queue"], by_name["engine offline"]
    for span in (queue, engine):
        assert span.attributes is not None and span.attributes[TASK_ID] == task_id
        assert span.attributes["imageforge.attempt"] == 1
    assert queue.start_time is not None and queue.end_time is not None
    assert queue.start_time <= queue.end_time
    assert engine.start_time is not None and queue.end_time <= engine.start_time + 10**9


def test_tracing_is_off_unless_configured(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    assert not tracing_configured(settings, environ={})
    assert tracing_configured(settings, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    configured = make_settings(tmp_path / "data", otel_endpoint="http://127.0.0.1:4318")
    assert tracing_configured(configured, environ={})


async def test_upstream_calls_are_spans_inside_the_engine_call(
    make_engine: Callable[..., RelayEngine],  # noqa: F811 (the fixture)
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider, instrument_clients=True)
    try:
        engine = make_engine()  # its HTTP sessions are made on first use, instrumented
        task = make_task(engine="relay")
        with tracing.engine_span(task):
            image = await engine.generate(relay_request(task_id=task.id))
        assert image.data
    finally:
        tracing.shutdown()
    spans = exporter.get_finished_spans()
    (engine_span,) = [s for s in spans if s.name == "engine relay"]
    calls = [s for s in spans if s is not engine_span]
    assert calls, [s.name for s in spans]
    for call in calls:
        assert call.parent is not None and call.context.trace_id == engine_span.context.trace_id
    methods = {
        (call.attributes or {}).get("http.request.method")
        or (call.attributes or {}).get("http.method")
        for call in calls
    }
    assert {"POST", "GET"} <= methods  # the submission, the polls and the download

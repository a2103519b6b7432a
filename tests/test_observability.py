"""Request lines, request ids, liveness and readiness, and /metrics after a known workload."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import sqlite3
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imageforge.observability.logs import JsonFormatter
from imageforge.observability.metrics import QUEUE_DEPTH_TTL_SECONDS
from imageforge.observability.request_log import LOGGER_NAME
from imageforge.testing.processes import free_port
from tests.conftest import ApiHarness, make_settings, start_harness

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(api: ApiHarness, **headers: str) -> Samples:
    response = await api.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER_NAME]


async def test_request_lines_carry_the_request_id_and_never_the_key(
    api: ApiHarness, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    created = await api.client.post(
        "/v1/image2/images",
        json={"model": "gpt-image-2", "prompt": "a secret garden"},
        headers={"Authorization": f"Bearer {key}", "X-Request-Id": "trace-abc.123"},
    )
    assert created.status_code == 200
    assert created.headers["x-request-id"] == "trace-abc.123"
    task_id = created.json()["id"]
    polled = await api.poll(key, task_id)
    generated = polled.headers["x-request-id"]
    assert re.fullmatch("[0-9a-f]{22}", generated)
    again = (await api.poll(key, task_id)).headers["x-request-id"]
    assert again != generated and again[:12] == generated[:12]  # this process's prefix
    # Not a usable id (a space, too long): replaced, never echoed.
    for bad in ("two words", "x" * 129):
        answer = await api.client.get("/healthz", headers={"X-Request-Id": bad})
        assert answer.headers["x-request-id"] != bad

    lines = request_lines(caplog)
    create_line, poll_line = lines[0], lines[1]
    assert create_line.fields == {  # type: ignore[attr-defined]
        "method": "POST",
        "route": "/v1/image2/images",
        "status": 200,
        "duration_ms": create_line.fields["duration_ms"],  # type: ignore[attr-defined]
        "request_id": "trace-abc.123",
        "key_id": (await api.runtime.store.list_keys())[0].id,
        "task_id": task_id,
    }
    assert poll_line.fields["route"] == "/v1/result/{task_id}"  # type: ignore[attr-defined]
    assert poll_line.fields["task_id"] == task_id  # type: ignore[attr-defined]
    assert poll_line.fields["request_id"] == generated  # type: ignore[attr-defined]
    everything = "\n".join(r.getMessage() + json.dumps(r.fields) for r in lines)  # type: ignore[attr-defined]
    assert key not in everything and "secret garden" not in everything
    assert "trace-abc.123" in create_line.getMessage()

    # The JSON format: one object per line, the fields as keys.
    parsed = json.loads(JsonFormatter().format(poll_line))
    assert parsed["route"] == "/v1/result/{task_id}" and parsed["status"] == 200
    assert parsed["level"] == "info" and parsed["logger"] == LOGGER_NAME and parsed["time"]


async def test_unknown_routes_are_logged_as_unmatched(
    api: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    assert (await api.client.get("/no/such/thing/12345")).status_code == 404
    assert (await api.client.get("/openapi.json")).status_code == 200
    unknown, document = request_lines(caplog)
    assert unknown.fields["route"] == "unmatched"  # type: ignore[attr-defined]
    assert "12345" not in unknown.getMessage()
    # A fixed path of the app's own, served by a plain Starlette route, is its own label.
    assert document.fields["route"] == "/openapi.json"  # type: ignore[attr-defined]


async def test_prompts_are_logged_only_when_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    lifespan, api = await start_harness(
        make_settings(tmp_path / "data", log_prompts=True), run_worker=False
    )
    try:
        key = await api.new_key()
        assert (await api.create(key, prompt="a lighthouse")).status_code == 200
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)
    (line,) = request_lines(caplog)
    assert line.fields["prompt"] == "a lighthouse"  # type: ignore[attr-defined]


async def test_the_request_log_can_be_turned_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    lifespan, api = await start_harness(
        make_settings(tmp_path / "data", access_log=False, metrics_enabled=False),
        run_worker=False,
    )
    try:
        answer = await api.client.get("/healthz")
        assert answer.status_code == 200 and answer.headers["x-request-id"]
        assert (await api.client.get("/metrics")).status_code == 404
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)
    assert not request_lines(caplog)


async def test_readiness_names_what_is_wrong_and_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lifespan, api = await start_harness(make_settings(data), run_worker=False)
    try:
        assert (await api.client.get("/readyz")).status_code == 200
        # The schema behind this version's migrations.
        with sqlite3.connect(data / "imageforge.db") as db:
            (head,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
            db.execute("UPDATE alembic_version SET version_num = '0001'")
        answer = await api.client.get("/readyz")
        assert answer.status_code == 503 and answer.headers["retry-after"]
        error = answer.json()["error"]
        assert error["code"] == "not_ready" and "schema is at migration 0001" in error["message"]
        assert head in error["message"]
        assert (await api.client.get("/healthz")).status_code == 200  # alive all the same
        with sqlite3.connect(data / "imageforge.db") as db:
            db.execute("UPDATE alembic_version SET version_num = ?", (head,))
        assert (await api.client.get("/readyz")).status_code == 200

        # Storage that takes no write: its folder replaced by a file.
        images = data / "images"
        shutil.rmtree(images)
        images.write_text("not a folder")
        answer = await api.client.get("/readyz")
        assert answer.status_code == 503
        assert "readiness check while writing" in answer.json()["error"]["message"]
        images.unlink()
        images.mkdir()
        assert (await api.client.get("/readyz")).status_code == 200
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_metrics_after_a_known_workload(api: ApiHarness, key: str) -> None:
    before = await scrape(api)
    answers = [(await api.create(key)).json() for _ in range(3)]
    created = [answer["id"] for answer in answers]
    amounts = [answer["amount"] for answer in answers]
    for task_id in created:
        assert (await api.wait_terminal(key, task_id))["status"] == "completed"
    assert (await api.create(key, size="1x1")).status_code == 400
    for _ in range(4):
        assert (await api.poll(key, created[0])).status_code == 200
    await asyncio.sleep(QUEUE_DEPTH_TTL_SECONDS)  # the queue depth is read at most once a second
    after = await scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    model = {"model": "gpt-image-2", "engine": "offline"}
    assert delta("imageforge_tasks_created_total", **model) == 3
    assert delta("imageforge_tasks_completed_total", **model) == 3
    charged = delta("imageforge_credits_charged_micros_total", model="gpt-image-2")
    assert charged == round(sum(amounts) * 1_000_000) and charged > 0
    create = {"route": "/v1/image2/images", "method": "POST"}
    assert delta("imageforge_http_requests_total", **create, status="200") == 3
    assert delta("imageforge_http_requests_total", **create, status="400") == 1
    poll = {"route": "/v1/result/{task_id}", "method": "GET"}
    polls = delta("imageforge_http_requests_total", **poll, status="200")
    assert polls >= 4 + 3  # wait_terminal polled each task at least once
    assert delta("imageforge_http_request_duration_seconds_count", **poll) == polls
    assert delta("imageforge_http_request_duration_seconds_bucket", **poll, le="+Inf") == polls
    assert delta("imageforge_task_queue_seconds_count", **model) == 3
    assert delta("imageforge_engine_seconds_count", **model, outcome="ok") == 3
    assert value(after, "imageforge_queue_depth", status="completed") == 3
    assert value(after, "imageforge_queue_depth", status="queued") == 0
    assert ("imageforge_webhook_deliveries_total", frozenset()) not in after  # no outcome yet


async def test_metrics_token_and_port(tmp_path: Path) -> None:
    token = "s3cret-metrics-token"
    lifespan, api = await start_harness(
        make_settings(tmp_path / "data", metrics_token=token), run_worker=False
    )
    try:
        assert (await api.client.get("/metrics")).status_code == 401
        wrong = await api.client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        found = await scrape(api, Authorization=f"Bearer {token}")
        assert ("imageforge_queue_depth", frozenset({("status", "queued")})) in found
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_metrics_on_their_own_port(tmp_path: Path) -> None:
    port = free_port()
    token = "s3cret-metrics-token"
    settings = make_settings(tmp_path / "data", metrics_port=port, metrics_token=token)
    lifespan, api = await start_harness(settings, run_worker=False)
    try:
        key = await api.new_key()
        assert (await api.create(key)).status_code == 200
        assert (await api.client.get("/metrics")).status_code == 404  # not on the API's port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as scraper:
            assert (await scraper.get("/metrics")).status_code == 401
            answer = await scraper.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200
            found = samples(answer.text)
            assert value(found, "imageforge_queue_depth", status="queued") == 1
            assert (await scraper.get("/other")).status_code == 404
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


def test_info_lines_come_in_batches_and_warnings_at_once_in_order() -> None:
    import io

    from imageforge.observability.logs import BatchingStreamHandler

    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, interval=0.05, batch=1000)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("tests.batching")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("first")
        log.info("second")
        log.warning("trouble")  # at once, after what waited
        assert stream.getvalue() == "INFO first\nINFO second\nWARNING trouble\n"
        log.info("later")
        deadline = time.monotonic() + 5
        while "later" not in stream.getvalue():  # the flusher writes it within its interval
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        log.removeHandler(handler)
        handler.close()
    log.info("after close")
    assert stream.getvalue().endswith("INFO later\n")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_direct_line_writer_writes_what_the_formatter_would(log_format: str) -> None:
    import io

    from imageforge.observability.logs import (
        TEXT_FORMAT,
        BatchingStreamHandler,
        LineWriter,
    )
    from imageforge.observability.request_log import RequestLog

    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    direct, through = io.StringIO(), io.StringIO()
    handlers = [BatchingStreamHandler(stream, interval=60) for stream in (direct, through)]
    for handler in handlers:
        handler.setFormatter(formatter)
    logger = logging.getLogger("tests.lines")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handlers[1])
    record = (
        time.time(),
        "GET",
        "/v1/result/{task_id}",
        200,
        0.0012345,
        "r1",
        "key_0123456789abcdef",
        "image_x",
        None,
    )
    try:
        RequestLog(
            logger=logger,
            writer=LineWriter(handlers[0], json=log_format == "json", logger="tests.lines"),
        ).write(record)
        RequestLog(logger=logger).write(record)
    finally:
        logger.removeHandler(handlers[1])
        for handler in handlers:
            handler.close()

    def without_time(text: str) -> str:
        if log_format == "json":
            parsed = json.loads(text)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", parsed.pop("time"))
            return json.dumps(parsed, sort_keys=True)
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", text)
        return text.split(" ", 2)[2]

    assert direct.getvalue().endswith("\n") and through.getvalue().endswith("\n")
    assert without_time(direct.getvalue()) == without_time(through.getvalue())


async def test_the_request_tally_folds_into_what_observing_each_request_gives() -> None:
    """The tally adds to prometheus-client's values the way `observe` and `inc` would, on
    the bounds too (a bucket holds what is <= its bound); a library change shows here."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from imageforge.observability.metrics import REQUEST_BUCKETS, metrics
    from imageforge.observability.request_tally import RequestTally

    registry = CollectorRegistry()
    requests = Counter("reference_requests", "", ["route", "method", "status"], registry=registry)
    seconds = Histogram(
        "reference_seconds", "", ["route", "method"], buckets=REQUEST_BUCKETS, registry=registry
    )
    durations = [0.0, 0.0004, *REQUEST_BUCKETS, 0.0010001, 0.03, 7.5, 42.0]
    tally = RequestTally(metrics(), delay=3600)
    route = f"/tally-test/{uuid.uuid4().hex}"
    for n, duration in enumerate(durations):
        status = 200 if n % 3 else 404
        tally.record((0.0, "GET", route, status, duration, f"r{n}", None, None, None))
        requests.labels(route, "GET", str(status)).inc()
        seconds.labels(route, "GET").observe(duration)
    found = samples(generate_latest().decode())
    assert value(found, "imageforge_http_request_duration_seconds_count", route=route) == 0
    tally.fold()
    found = samples(generate_latest().decode())
    reference = samples(generate_latest(registry).decode())
    ours = {
        (
            name.replace("imageforge_http_request_duration_seconds", "reference_seconds").replace(
                "imageforge_http_requests", "reference_requests"
            ),
            labels,
        ): figure
        for (name, labels), figure in found.items()
        if ("route", route) in labels and not name.endswith("_created")
    }
    theirs = {key: figure for key, figure in reference.items() if not key[0].endswith("_created")}
    assert ours == theirs and len(ours) == 2 + 2 + len(REQUEST_BUCKETS) + 1
    tally.fold()  # nothing new: nothing added twice
    again = samples(generate_latest().decode())
    assert {key: again[key] for key in found if ("route", route) in key[1]} == {
        key: figure for key, figure in found.items() if ("route", route) in key[1]
    }

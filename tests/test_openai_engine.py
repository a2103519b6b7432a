"""The openai engine against a real OpenAI-style Images API on 127.0.0.1: what it sends, what
it records, and what each kind of upstream failure does to a task."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imageforge.engine_setup import build_router
from imageforge.engines.base import GenerationRequest, ReferenceImage
from imageforge.engines.breaker import BreakerState
from imageforge.engines.openai import OpenAIEngine
from imageforge.engines.upstream_errors import UpstreamError
from imageforge.settings import Settings
from imageforge.testing.processes import free_port
from tests.conftest import ApiHarness, make_settings, start_harness
from tests.upstream_servers import FakeImagesAPI, Reply, sentinel_beside, serve_images_api

KEY_ENV = "IMAGEFORGE_TEST_OPENAI_KEY"
SECRET = "sk-test-9f8e7d6c5b4a39281706"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


@pytest.fixture
def fake() -> Iterator[FakeImagesAPI]:
    with serve_images_api() as api:
        yield api


def openai_engine(settings: Settings) -> OpenAIEngine:
    """The engine as the runtime builds it: its router from the settings."""
    return OpenAIEngine(build_router(settings, "openai"))


def upstream(base_url: str, **options: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": f"{base_url}/v1", "api_key_env": KEY_ENV, **options}


@pytest.fixture
async def engine(fake: FakeImagesAPI) -> AsyncIterator[OpenAIEngine]:
    settings = Settings(engine="openai", upstreams={"fake": upstream(fake.base_url)})
    engine = openai_engine(settings)
    yield engine
    await engine.aclose()


def request(**changes: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "prompt": "a lighthouse in a storm",
        "width": 1536,
        "height": 864,
        "quality": "high",
        "model": "gpt-image-2",
    }
    values.update(changes)
    return GenerationRequest(**values)


def reference(fmt: str = "PNG") -> ReferenceImage:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 30)).save(out, format=fmt)
    return ReferenceImage(
        url=f"https://example.com/r.{fmt.lower()}",
        data=out.getvalue(),
        format=fmt,
        width=32,
        height=24,
    )


# What is sent and what comes back ---------------------------------------------------------


async def test_generate_sends_the_resolved_parameters(
    engine: OpenAIEngine, fake: FakeImagesAPI
) -> None:
    image = await engine.generate(request())
    [call] = fake.calls
    assert call.path == "/v1/images/generations"
    assert call.authorization == f"Bearer {SECRET}"
    assert call.fields == {
        "model": "gpt-image-2",
        "prompt": "a lighthouse in a storm",
        "size": "1536x864",
        "quality": "high",
        "n": 1,
        "output_format": "png",
    }
    assert (image.content_type, image.width, image.height) == ("image/png", 1536, 864)
    assert Image.open(io.BytesIO(image.data)).size == (1536, 864)
    assert image.usage == {"input_tokens": 15, "output_tokens": 1000, "total_tokens": 1015}
    assert image.upstream == "fake"


async def test_models_without_quality_omit_it_and_map_to_the_upstream_model(
    engine: OpenAIEngine, fake: FakeImagesAPI
) -> None:
    await engine.generate(request(model="gpt-image-2-r", quality=None, width=1024, height=1024))
    [call] = fake.calls
    assert call.fields["model"] == "gpt-image-2"
    assert "quality" not in call.fields


async def test_upstream_model_names_are_configurable(fake: FakeImagesAPI) -> None:
    settings = Settings(
        engine="openai",
        upstreams={"fake": upstream(fake.base_url, models={"house": "gpt-image-2-2026-04-21"})},
        models={"house": {}, "gpt-image-2": {"upstream_model": "gpt-image-1.5"}},
    )
    engine = openai_engine(settings)
    try:
        await engine.generate(request(model="house"))
        await engine.generate(request(model="gpt-image-2"))
    finally:
        await engine.aclose()
    assert [c.fields["model"] for c in fake.calls] == ["gpt-image-2-2026-04-21", "gpt-image-1.5"]


async def test_references_go_to_the_edits_endpoint_as_files(
    engine: OpenAIEngine, fake: FakeImagesAPI
) -> None:
    image = await engine.generate(
        request(references=(reference("PNG"), reference("JPEG"), reference("GIF")))
    )
    [call] = fake.calls
    assert call.path == "/v1/images/edits"
    assert call.fields["prompt"] == "a lighthouse in a storm"
    assert call.fields["size"] == "1536x864"
    assert call.fields["model"] == "gpt-image-2"
    assert [(name, filename, ctype) for name, filename, ctype, _ in call.files] == [
        ("image[]", "reference-0.png", "image/png"),
        ("image[]", "reference-1.jpeg", "image/jpeg"),
        # The Images API refuses GIF, so it is converted.
        ("image[]", "reference-2.png", "image/png"),
    ]
    assert image.usage["input_tokens"] == 15 + 300


async def test_many_calls_in_flight_at_once(fake: FakeImagesAPI) -> None:
    fake.default = Reply(delay=0.5)
    fake.record = False
    settings = Settings(
        engine="openai", worker_concurrency=200, upstreams={"fake": upstream(fake.base_url)}
    )
    engine = openai_engine(settings)
    started = time.monotonic()
    try:
        images = await asyncio.gather(
            *(engine.generate(request(width=1024, height=1024)) for _ in range(200))
        )
    finally:
        await engine.aclose()
    assert len(images) == 200
    assert fake.max_in_flight == 200
    elapsed = time.monotonic() - started
    print(f"200 calls of 0.5 s each, all in flight at once: {elapsed:.2f} s")
    # One after another they would take 100 s; a busy 2-core machine has measured 7.8 s.
    assert elapsed < 25.0


async def test_per_upstream_concurrency_limit(fake: FakeImagesAPI) -> None:
    fake.default = Reply(delay=0.1)
    settings = Settings(
        engine="openai", upstreams={"fake": upstream(fake.base_url, max_concurrency=2)}
    )
    engine = openai_engine(settings)
    try:
        await asyncio.gather(*(engine.generate(request()) for _ in range(6)))
    finally:
        await engine.aclose()
    assert fake.max_in_flight == 2 and len(fake.calls) == 6


# Each failure class, at the engine ---------------------------------------------------------


def _png(width: int, height: int, noisy: bool = False) -> bytes:
    image = (
        Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
        if noisy
        else Image.new("RGB", (width, height), (1, 2, 3))
    )
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _answer(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


PNG_B64 = base64.b64encode(_png(8, 6)).decode()


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        (_answer(data=[{"b64_json": PNG_B64}]), {}),
        (_answer(data=[{"b64_json": PNG_B64}], usage=None), {}),
        # Gateways send partial or mistyped usage: keep the whole numbers that are there.
        (
            _answer(
                data=[{"b64_json": PNG_B64}],
                usage={"input_tokens": "12", "output_tokens": 7, "total_tokens": True},
            ),
            {"output_tokens": 7},
        ),
    ],
)
async def test_answers_with_odd_usage_still_give_the_image(
    engine: OpenAIEngine, fake: FakeImagesAPI, body: bytes, usage: dict[str, int]
) -> None:
    fake.push(Reply(200, body=body))
    image = await engine.generate(request())
    assert (image.content_type, image.width, image.height) == ("image/png", 8, 6)
    assert image.usage == usage


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"[1, 2]", "unreadable"),
        (b'{"data": "', "unreadable"),
        (_answer(data=[]), "without an image"),
        (_answer(data=[{"url": 42}]), "without an image"),
        (_answer(data=[{"url": "file:///etc/passwd"}]), "not http(s)"),
        (_answer(data=[{"b64_json": 42}]), "without an image"),
        (_answer(data=[{"b64_json": "not base64!"}]), "invalid base64"),
        (
            _answer(data=[{"b64_json": base64.b64encode(b"GIF89a...").decode()}]),
            "not a PNG, JPEG or WebP",
        ),
    ],
)
async def test_answers_without_a_usable_image_are_bad_responses(
    engine: OpenAIEngine, fake: FakeImagesAPI, body: bytes, text: str
) -> None:
    fake.push(Reply(200, body=body))
    with pytest.raises(UpstreamError) as caught:
        await engine.generate(request())
    assert caught.value.code == "upstream_bad_response"
    assert caught.value.retryable
    assert text in caught.value.message


async def test_a_linked_image_is_downloaded_with_the_key_on_the_upstreams_origin(
    engine: OpenAIEngine, fake: FakeImagesAPI
) -> None:
    fake.push(
        Reply(
            200,
            body=_answer(
                data=[{"url": f"{fake.base_url}/files/40x30.png"}], usage={"output_tokens": 9}
            ),
        )
    )
    image = await engine.generate(request())
    assert (image.content_type, image.width, image.height) == ("image/png", 40, 30)
    assert image.usage == {"output_tokens": 9}
    assert fake.downloads == [("/files/40x30.png", f"Bearer {SECRET}")]


async def test_a_relative_link_is_resolved_against_the_upstream(
    engine: OpenAIEngine, fake: FakeImagesAPI
) -> None:
    fake.push(Reply(200, body=_answer(data=[{"url": "/files/12x10.png"}])))
    image = await engine.generate(request())
    assert (image.width, image.height) == (12, 10)
    assert fake.downloads == [("/files/12x10.png", f"Bearer {SECRET}")]


async def test_a_link_to_an_address_nobody_allowed_is_refused_unreached(
    engine: OpenAIEngine, fake: FakeImagesAPI
) -> None:
    # The upstream is on 127.0.0.1; its answer points at 127.0.0.2, same port: an internal
    # address nobody allowed. The worker must not even connect there.
    port = fake.base_url.rsplit(":", 1)[1]
    with sentinel_beside(fake.base_url) as sentinel:
        fake.push(
            Reply(200, body=_answer(data=[{"url": f"http://127.0.0.2:{port}/files/8x8.png"}]))
        )
        with pytest.raises(UpstreamError) as caught:
            await engine.generate(request())
    assert sentinel.connections == 0
    error = caught.value
    assert error.code == "upstream_bad_response" and not error.retryable
    assert "download_allowlist" in error.message and "127.0.0.2" not in error.message
    assert fake.downloads == []


@pytest.mark.parametrize("host", ["2130706434", "0x7f.0.0.2", "127.0.0.2.", "[::ffff:127.0.0.2]"])
async def test_other_spellings_of_an_address_nobody_allowed_are_refused_unreached(
    engine: OpenAIEngine, fake: FakeImagesAPI, host: str
) -> None:
    port = fake.base_url.rsplit(":", 1)[1]
    with sentinel_beside(fake.base_url) as sentinel:
        fake.push(Reply(200, body=_answer(data=[{"url": f"http://{host}:{port}/files/8x8.png"}])))
        with pytest.raises(UpstreamError) as caught:
            await engine.generate(request())
    assert sentinel.connections == 0
    assert "download_allowlist" in caught.value.message


async def test_a_name_is_checked_where_it_resolves(fake: FakeImagesAPI) -> None:
    # `localhost` is not the upstream's origin (127.0.0.1) by name; it resolves to loopback.
    port = fake.base_url.rsplit(":", 1)[1]
    link = _answer(data=[{"url": f"http://localhost:{port}/files/8x6.png"}])
    for allowlist, allowed in (([], False), (["localhost"], True)):
        settings = Settings(
            engine="openai",
            upstreams={"fake": upstream(fake.base_url, download_allowlist=allowlist)},
        )
        engine = openai_engine(settings)
        fake.push(Reply(200, body=link))
        try:
            if allowed:
                image = await engine.generate(request())
                assert (image.width, image.height) == (8, 6)
            else:
                with pytest.raises(UpstreamError, match="download_allowlist"):
                    await engine.generate(request())
        finally:
            await engine.aclose()
    # Another origin than the upstream's (by name): no key.
    assert fake.downloads == [("/files/8x6.png", "")]


async def test_another_port_of_the_upstreams_host_is_not_its_origin(
    engine: OpenAIEngine, fake: FakeImagesAPI
) -> None:
    # Same address, another service: the origin is scheme, host and port.
    with serve_images_api() as other:
        fake.push(Reply(200, body=_answer(data=[{"url": f"{other.base_url}/files/16x9.png"}])))
        with pytest.raises(UpstreamError) as caught:
            await engine.generate(request())
    assert "download_allowlist" in caught.value.message
    assert other.downloads == []


async def test_a_download_allowlist_entry_admits_a_file_host_without_the_key(
    fake: FakeImagesAPI,
) -> None:
    with serve_images_api() as cdn:
        settings = Settings(
            engine="openai",
            upstreams={"fake": upstream(fake.base_url, download_allowlist=["127.0.0.1"])},
        )
        engine = openai_engine(settings)
        try:
            fake.push(Reply(200, body=_answer(data=[{"url": f"{cdn.base_url}/files/16x9.png"}])))
            image = await engine.generate(request())
        finally:
            await engine.aclose()
    assert (image.width, image.height) == (16, 9)
    assert cdn.downloads == [("/files/16x9.png", "")]
    assert fake.downloads == []


async def test_a_broken_link_is_a_bad_response(engine: OpenAIEngine, fake: FakeImagesAPI) -> None:
    fake.push(Reply(200, body=_answer(data=[{"url": f"{fake.base_url}/files/missing"}])))
    with pytest.raises(UpstreamError) as caught:
        await engine.generate(request())
    assert caught.value.code == "upstream_bad_response" and caught.value.retryable
    assert "answered 404 to the image download" in caught.value.message


async def test_a_linked_image_over_the_cap_fails_for_good(fake: FakeImagesAPI) -> None:
    settings = Settings(
        engine="openai", upstreams={"fake": upstream(fake.base_url, max_image_bytes=1024)}
    )
    engine = openai_engine(settings)
    fake.push(Reply(200, body=_answer(data=[{"url": f"{fake.base_url}/files/512x512.png"}])))
    try:
        with pytest.raises(UpstreamError) as caught:
            await engine.generate(request())
    finally:
        await engine.aclose()
    assert caught.value.code == "upstream_bad_response" and not caught.value.retryable
    assert "larger than 1024 bytes" in caught.value.message


async def test_a_large_answer_is_read_whole(engine: OpenAIEngine, fake: FakeImagesAPI) -> None:
    # Over a megabyte: read on a worker thread rather than the event loop.
    png = _png(700, 700, noisy=True)
    assert len(png) > 1024 * 1024
    fake.push(Reply(200, body=_answer(data=[{"b64_json": base64.b64encode(png).decode()}])))
    image = await engine.generate(request())
    assert image.data == png
    assert (image.width, image.height) == (700, 700)


@pytest.mark.parametrize(
    ("reply", "retryable", "retry_after", "code", "text"),
    [
        (Reply(429, retry_after="7", message="Rate limit reached"), True, 7.0, "rate_limited", ""),
        (Reply(500, message="The server had an error"), True, None, "unavailable", "(500)"),
        (Reply(503, retry_after="2"), True, 2.0, "unavailable", "(503)"),
        (
            Reply(400, message="Your request was rejected by the safety system."),
            False,
            None,
            "rejected",
            "rejected by the safety system",
        ),
        (Reply(422, message="Invalid size"), False, None, "rejected", "Invalid size"),
        (Reply(401, message="Incorrect API key"), False, None, "auth", "rejected our credentials"),
        (Reply(200, body=b"<html>gateway</html>"), True, None, "bad_response", "unreadable"),
    ],
)
async def test_failure_classes(
    engine: OpenAIEngine,
    fake: FakeImagesAPI,
    reply: Reply,
    retryable: bool,
    retry_after: float | None,
    code: str,
    text: str,
) -> None:
    fake.push(reply)
    with pytest.raises(UpstreamError) as caught:
        await engine.generate(request())
    error = caught.value
    assert (error.retryable, error.retry_after, error.code) == (
        retryable,
        retry_after,
        f"upstream_{code}",
    )
    assert text in error.message
    assert len(fake.calls) == 1  # the SDK's own retries are off: the runner owns retries


async def test_a_slow_upstream_times_out_as_retryable(fake: FakeImagesAPI) -> None:
    fake.push(Reply(delay=5))
    settings = Settings(
        engine="openai", upstreams={"fake": upstream(fake.base_url, timeout_seconds=0.3)}
    )
    engine = openai_engine(settings)
    try:
        with pytest.raises(UpstreamError) as caught:
            await engine.generate(request())
    finally:
        await engine.aclose()
    assert caught.value.retryable and caught.value.code == "upstream_timeout"


async def test_an_unreachable_upstream_is_retryable() -> None:
    settings = Settings(
        engine="openai", upstreams={"gone": upstream(f"http://127.0.0.1:{free_port()}")}
    )
    engine = openai_engine(settings)
    try:
        with pytest.raises(UpstreamError) as caught:
            await engine.generate(request())
    finally:
        await engine.aclose()
    assert caught.value.retryable and caught.value.code == "upstream_unreachable"


# Failover ---------------------------------------------------------------------------------


async def test_failover_to_a_second_upstream_and_back(fake: FakeImagesAPI) -> None:
    with serve_images_api() as backup:
        settings = Settings(
            engine="openai",
            upstreams={
                "primary": upstream(
                    fake.base_url, breaker={"failure_threshold": 1, "cooldown_seconds": 0.3}
                ),
                "backup": upstream(backup.base_url),
            },
            models={"gpt-image-2": {"upstreams": ["primary", "backup"]}},
        )
        engine = openai_engine(settings)
        try:
            fake.default = Reply(503)
            served = await engine.generate(request())
            assert served.upstream == "backup"
            primary = engine.router.upstreams["primary"]
            assert primary.breaker.state is BreakerState.OPEN

            # Out of rotation: the next request goes straight to the backup.
            assert (await engine.generate(request())).upstream == "backup"
            assert (len(fake.calls), len(backup.calls)) == (1, 2)

            # Primary recovers; after the cool-down one probe brings it back.
            fake.default = Reply()
            deadline = time.monotonic() + 5
            while primary.breaker.seconds_until_probe() > 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert (await engine.generate(request())).upstream == "primary"
            assert primary.breaker.state is BreakerState.CLOSED
            assert (await engine.generate(request())).upstream == "primary"
            assert (len(fake.calls), len(backup.calls)) == (3, 2)
        finally:
            await engine.aclose()


# Through the worker: attempts, delays, final status and message -------------------------------


@pytest.fixture
async def worker_with(tmp_path: Path, fake: FakeImagesAPI) -> AsyncIterator[Any]:
    started: list[tuple[Any, ApiHarness]] = []

    async def start(**overrides: Any) -> tuple[ApiHarness, str]:
        options = overrides.pop("upstream", {})
        values: dict[str, Any] = {
            "engine": "openai",
            "upstreams": {"fake": upstream(fake.base_url, **options)},
            "max_attempts": 3,
        }
        values.update(overrides)
        lifespan, harness = await start_harness(make_settings(tmp_path / "data", **values))
        started.append((lifespan, harness))
        return harness, await harness.new_key()

    yield start
    for lifespan, harness in started:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def run_task(harness: ApiHarness, key: str, **body: Any) -> tuple[dict[str, Any], Any]:
    created = await harness.create(key, **body)
    assert created.status_code == 200, created.text
    result = await harness.wait_terminal(key, created.json()["id"])
    task = await harness.runtime.store.get_task(created.json()["id"])
    return result, task


async def test_completed_task_records_usage_and_upstream(
    worker_with: Any, fake: FakeImagesAPI
) -> None:
    harness, key = await worker_with()
    result, task = await run_task(harness, key, prompt="a red fox", quality="medium")
    assert result["status"] == "completed"
    assert (task.attempt, task.upstream, task.content_type) == (1, "fake", "image/png")
    assert task.usage == {"input_tokens": 12, "output_tokens": 1000, "total_tokens": 1012}
    image = await harness.client.get(result["image_url"])
    assert Image.open(io.BytesIO(image.content)).size == (1024, 1024)


async def test_rate_limit_is_retried_after_retry_after(
    worker_with: Any, fake: FakeImagesAPI
) -> None:
    harness, key = await worker_with(retry_max_seconds=5.0)
    fake.push(Reply(429, retry_after="1", message="Rate limit reached for images"))
    result, task = await run_task(harness, key)
    assert result["status"] == "completed" and task.attempt == 2
    first, second = fake.calls
    assert second.at - first.at >= 0.95  # Retry-After won over the 0.05 s backoff


async def test_server_errors_use_every_attempt_with_backoff(
    worker_with: Any, fake: FakeImagesAPI
) -> None:
    harness, key = await worker_with(retry_base_seconds=0.2, retry_max_seconds=1.0)
    fake.default = Reply(500, message="The server had an error while processing your request")
    result, task = await run_task(harness, key)
    assert result["status"] == "failed" and task.attempt == 3
    assert result["error"] == (
        "generation failed after 3 attempts: upstream 'fake' is unavailable (500): "
        "The server had an error while processing your request"
    )
    gaps = [b.at - a.at for a, b in zip(fake.calls, fake.calls[1:], strict=False)]
    # Equal jitter: attempt n waits between half and all of base × 2^(n-1).
    assert len(gaps) == 2 and gaps[0] >= 0.1 and gaps[1] >= 0.2


async def test_timeouts_are_retried(worker_with: Any, fake: FakeImagesAPI) -> None:
    harness, key = await worker_with(upstream={"timeout_seconds": 0.3})
    fake.push(Reply(delay=5))
    result, task = await run_task(harness, key)
    assert result["status"] == "completed" and task.attempt == 2
    assert len(fake.calls) == 2


async def test_a_rejected_prompt_fails_at_once_with_the_upstreams_message(
    worker_with: Any, fake: FakeImagesAPI
) -> None:
    harness, key = await worker_with()
    fake.push(Reply(400, message="Your request was rejected as a result of our safety system."))
    result, task = await run_task(harness, key)
    assert result["status"] == "failed" and task.attempt == 1
    assert result["error"] == (
        "upstream 'fake' rejected the request (400): "
        "Your request was rejected as a result of our safety system."
    )
    assert len(fake.calls) == 1


async def test_bad_credentials_fail_loudly_without_leaking_the_key(
    worker_with: Any, fake: FakeImagesAPI, caplog: pytest.LogCaptureFixture
) -> None:
    harness, key = await worker_with()
    fake.push(Reply(401, message=f"Incorrect API key provided: {SECRET}."))
    with caplog.at_level(logging.DEBUG):
        result, task = await run_task(harness, key)
    assert result["status"] == "failed" and task.attempt == 1
    assert result["error"] == (
        "upstream 'fake' rejected our credentials (401); check the API key configured for it"
    )
    assert any(
        r.levelno == logging.ERROR and "rejected our credentials" in r.getMessage()
        for r in caplog.records
    )
    assert SECRET not in caplog.text
    assert SECRET not in repr(task)


async def test_the_task_records_the_upstream_that_served_it_after_failover(
    worker_with: Any, fake: FakeImagesAPI
) -> None:
    with serve_images_api() as backup:
        harness, key = await worker_with(
            upstreams={"primary": upstream(fake.base_url), "backup": upstream(backup.base_url)},
        )
        fake.default = Reply(502)
        result, task = await run_task(harness, key, size="1024x1536", image_urls=[])
        assert result["status"] == "completed"
        assert (task.attempt, task.upstream) == (1, "backup")
        assert backup.calls[0].fields["size"] == "1024x1536"


async def test_zero_config_routes_every_model_to_openai(
    tmp_path: Path, fake: FakeImagesAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEFORGE_ENGINE", "openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-zero-config-key")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{fake.base_url}/v1")
    lifespan, harness = await start_harness(make_settings(tmp_path / "data"))
    try:
        key = await harness.new_key()
        for model in ("gpt-image-2", "gpt-image-2-r"):
            result, task = await run_task(harness, key, model=model)
            assert result["status"] == "completed"
            assert (task.engine, task.upstream) == ("openai", "openai")
        assert [c.fields["model"] for c in fake.calls] == ["gpt-image-2", "gpt-image-2"]
        assert {c.authorization for c in fake.calls} == {"Bearer sk-zero-config-key"}
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)

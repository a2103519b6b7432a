"""Upstream routing without a network: error classification, Retry-After, scrubbing, the
circuit breaker, failover order, concurrency limits and building routes from settings."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections import Counter
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from imageforge.engine_setup import build_router
from imageforge.engines.breaker import BreakerState, CircuitBreaker
from imageforge.engines.config import UpstreamConfig
from imageforge.engines.upstream_errors import (
    UpstreamError,
    error_for_status,
    parse_retry_after,
    scrub,
    upstream_message,
)
from imageforge.engines.upstreams import Route, Router, Upstream
from imageforge.errors import ConfigurationError
from imageforge.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# Classification ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504, 529])
def test_not_now_statuses_are_retryable_and_count_against_the_upstream(status: int) -> None:
    error = error_for_status("primary", status, body={"message": "busy"}, retry_after=4.0)
    assert error.retryable and error.failover and error.counts_against_upstream
    assert error.retry_after == 4.0
    assert error.status == status
    assert "primary" in error.message and str(status) in error.message and "busy" in error.message


@pytest.mark.parametrize("status", [400, 404, 413, 415, 422, 418])
def test_rejections_fail_at_once_with_the_upstreams_message(status: int) -> None:
    body = {"error": {"message": "Your request was rejected by the safety system."}}
    error = error_for_status("primary", status, body=body)
    assert not error.retryable and not error.failover and not error.counts_against_upstream
    assert error.code == "upstream_rejected"
    assert "Your request was rejected by the safety system." in error.message


@pytest.mark.parametrize("status", [401, 403])
def test_credential_rejections_are_configuration_errors_logged_loudly(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        error = error_for_status(
            "primary",
            status,
            body={"message": "Incorrect API key provided: sk-live-abcdef123456"},
            secrets=["sk-live-abcdef123456"],
        )
    assert error.message == (
        f"upstream 'primary' rejected our credentials ({status}); "
        "check the API key configured for it"
    )
    assert not error.retryable and not error.counts_against_upstream
    assert error.code == "upstream_auth"
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "abcdef123456" not in caplog.text


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("99999") == 3600.0
    now = 1_800_000_000.0
    date = formatdate(now + 12, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(12.0)
    assert parse_retry_after(formatdate(now - 60, usegmt=True), now=now) == 0.0
    for garbage in (None, "", "soon", "nan"):
        assert parse_retry_after(garbage) is None


def test_scrub_removes_keys_and_bearer_tokens_and_trims() -> None:
    text = "key my-secret-key\nwas\tBearer abc.def.ghi and sk-proj-A1b2C3d4E5 and ifk_abcdefgh12"
    cleaned = scrub(text, ["my-secret-key"])
    assert cleaned == "key *** was *** and *** and ***"
    assert len(scrub("x" * 5000)) == 500
    assert scrub("ask-me task-runner") == "ask-me task-runner"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "bad size"}}, "bad size"),
        ({"message": "bad size"}, "bad size"),
        ({"error": "bad size"}, "bad size"),
        (b'{"error": {"message": "bad size"}}', "bad size"),
        (b"<html>oops</html>", "<html>oops</html>"),
        (None, ""),
        ({"error": {"code": 3}}, ""),
    ],
)
def test_upstream_message_reads_every_error_shape(body: object, message: str) -> None:
    assert upstream_message(body) == message


# Circuit breaker ----------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_and_probes_back() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_seconds=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    breaker.record_success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.seconds_until_probe() == 10
    clock.now += 9.5
    assert not breaker.allow()
    assert breaker.seconds_until_probe() == pytest.approx(0.5)

    clock.now += 0.5
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one at a time
    breaker.record_failure()  # probe failed: open for another cool-down
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()

    clock.now += 10
    assert breaker.allow()
    breaker.record_neutral()  # e.g. cancelled: the probe slot is free again
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()


def test_stragglers_do_not_close_an_open_breaker() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_seconds=5, clock=clock)
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state is BreakerState.OPEN


# Router --------------------------------------------------------------------------------------


def make_upstream(
    name: str, *, clock: Clock | None = None, limit: int = 10, threshold: int = 2
) -> Upstream:
    return Upstream(
        name=name,
        config=UpstreamConfig(kind="openai"),
        base_url="http://127.0.0.1:1/v1",
        api_key=f"key-of-{name}",
        max_concurrency=limit,
        breaker=CircuitBreaker(
            failure_threshold=threshold, cooldown_seconds=30, clock=clock or Clock()
        ),
        slots=asyncio.Semaphore(limit),
    )


def make_router(*upstreams: Upstream, weights: tuple[float, ...] | None = None) -> Router:
    route = Route(model="m", upstreams=upstreams, weights=weights)
    return Router(
        "openai", {u.name: u for u in upstreams}, {"m": route}, route, rng=random.Random(7)
    )


def retryable(upstream: str) -> UpstreamError:
    return error_for_status(upstream, 503)


async def test_failover_moves_on_after_a_retryable_failure() -> None:
    a, b = make_upstream("a"), make_upstream("b")
    router = make_router(a, b)
    tried: list[str] = []

    async def call(upstream: Upstream) -> str:
        tried.append(upstream.name)
        if upstream.name == "a":
            raise retryable("a")
        return upstream.name

    assert await router.run(router.route_for("m"), call) == "b"
    assert tried == ["a", "b"]


async def test_no_failover_after_a_rejection_or_once_submitted() -> None:
    a, b = make_upstream("a"), make_upstream("b")
    router = make_router(a, b)
    tried: list[str] = []

    async def rejected(upstream: Upstream) -> str:
        tried.append(upstream.name)
        raise error_for_status(upstream.name, 400, body={"message": "no"})

    with pytest.raises(UpstreamError, match="rejected the request"):
        await router.run(router.route_for("m"), rejected)

    async def paid(upstream: Upstream) -> str:
        tried.append(upstream.name)
        raise retryable(upstream.name).not_failing_over()

    with pytest.raises(UpstreamError, match="unavailable"):
        await router.run(router.route_for("m"), paid)
    assert tried == ["a", "a"]


async def test_every_upstream_failing_raises_the_last_error() -> None:
    router = make_router(make_upstream("a"), make_upstream("b"))

    async def call(upstream: Upstream) -> str:
        raise retryable(upstream.name)

    with pytest.raises(UpstreamError) as caught:
        await router.run(router.route_for("m"), call)
    assert caught.value.upstream == "b" and caught.value.retryable


async def test_open_circuits_are_skipped_and_all_open_says_when_to_retry() -> None:
    clock = Clock()
    a, b = make_upstream("a", clock=clock), make_upstream("b", clock=clock)
    router = make_router(a, b)
    calls: Counter[str] = Counter()

    async def failing(upstream: Upstream) -> str:
        calls[upstream.name] += 1
        raise retryable(upstream.name)

    for _ in range(2):  # threshold 2: both circuits open
        with pytest.raises(UpstreamError):
            await router.run(router.route_for("m"), failing)
    assert a.breaker.state is b.breaker.state is BreakerState.OPEN

    clock.now += 12
    with pytest.raises(UpstreamError) as caught:
        await router.run(router.route_for("m"), failing)
    assert caught.value.retryable and caught.value.code == "upstream_unavailable"
    assert caught.value.retry_after == pytest.approx(18)
    assert calls == {"a": 2, "b": 2}  # nothing was sent while open

    clock.now += 18

    async def healthy(upstream: Upstream) -> str:
        calls[upstream.name] += 1
        return upstream.name

    assert await router.run(router.route_for("m"), healthy) == "a"
    assert a.breaker.state is BreakerState.CLOSED


async def test_a_rejection_does_not_trip_the_breaker() -> None:
    a = make_upstream("a", threshold=1)
    router = make_router(a)

    async def rejected(upstream: Upstream) -> str:
        raise error_for_status(upstream.name, 422, body={"message": "no"})

    for _ in range(3):
        with pytest.raises(UpstreamError):
            await router.run(router.route_for("m"), rejected)
    assert a.breaker.state is BreakerState.CLOSED


async def test_a_cancelled_probe_frees_the_probe_slot() -> None:
    clock = Clock()
    a = make_upstream("a", clock=clock, threshold=1)
    router = make_router(a)
    a.breaker.record_failure()
    clock.now += 30
    started = asyncio.Event()

    async def hanging(upstream: Upstream) -> str:
        started.set()
        await asyncio.sleep(3600)
        return "never"

    job = asyncio.create_task(router.run(router.route_for("m"), hanging))
    await started.wait()
    assert a.breaker.state is BreakerState.HALF_OPEN and not a.breaker.allow()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert a.breaker.allow()


def test_weighted_routing_follows_the_weights() -> None:
    a, b = make_upstream("a"), make_upstream("b")
    route = Route(model="m", upstreams=(a, b), weights=(3.0, 1.0))
    rng = random.Random(1)
    first = Counter(route.order(rng)[0].name for _ in range(4000))
    assert 0.71 < first["a"] / 4000 < 0.79
    assert all(len(route.order(rng)) == 2 for _ in range(10))  # the rest remain as failover


async def test_concurrency_limit_per_upstream() -> None:
    a = make_upstream("a", limit=2)
    router = make_router(a)
    in_flight = peak = 0

    async def call(upstream: Upstream) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return "ok"

    results = await asyncio.gather(*(router.run(router.route_for("m"), call) for _ in range(7)))
    assert results == ["ok"] * 7 and peak == 2


def test_keys_stay_out_of_reprs() -> None:
    upstream = make_upstream("a")
    assert "key-of-a" not in repr(upstream)


# Settings → routes -------------------------------------------------------------------------


def test_zero_config_openai_uses_the_sdk_variables() -> None:
    settings = Settings(engine="openai")
    router = build_router(
        settings,
        "openai",
        environ={"OPENAI_API_KEY": "sk-zero", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1/"},
    )
    assert list(router.upstreams) == ["openai"]
    upstream = router.upstreams["openai"]
    assert upstream.base_url == "http://127.0.0.1:9/v1"
    assert upstream.api_key == "sk-zero"
    assert upstream.max_concurrency == settings.worker_concurrency
    route = router.route_for("gpt-image-2-r")
    assert [u.name for u in route.upstreams] == ["openai"]
    assert upstream.model_for("gpt-image-2-r", route.upstream_model) == "gpt-image-2"
    assert upstream.model_for("gpt-image-2", None) == "gpt-image-2"


def test_zero_config_openai_defaults_to_openai_and_needs_a_key() -> None:
    router = build_router(Settings(engine="openai"), "openai", environ={"OPENAI_API_KEY": "k"})
    assert router.upstreams["openai"].base_url == "https://api.openai.com/v1"
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        build_router(Settings(engine="openai"), "openai", environ={})


def test_zero_config_relay_from_imageforge_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEFORGE_ENGINE", "relay")
    monkeypatch.setenv("IMAGEFORGE_RELAY_BASE_URL", "https://relay.example.com/")
    monkeypatch.setenv("IMAGEFORGE_RELAY_API_KEY", "ifk_relaykey")
    settings = Settings()
    assert settings.relay_api_key is not None
    assert "ifk_relaykey" not in repr(settings)
    router = build_router(settings, "relay", environ={})
    upstream = router.upstreams["relay"]
    assert (upstream.base_url, upstream.api_key) == ("https://relay.example.com", "ifk_relaykey")
    assert upstream.model_for("gpt-image-2-r", None) == "gpt-image-2-r"

    monkeypatch.delenv("IMAGEFORGE_RELAY_BASE_URL")
    with pytest.raises(ConfigurationError, match="relay_base_url: the relay engine needs"):
        build_router(Settings(), "relay", environ={})


def test_models_route_to_their_listed_upstreams() -> None:
    settings = Settings(
        engine="openai",
        upstreams={
            "primary": {"kind": "openai", "api_key_env": "KEY_A", "max_concurrency": 8},
            "backup": {
                "kind": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key_env": "KEY_B",
                "models": {"gpt-image-2": "gpt-image-2-2026-04-21"},
            },
            "elsewhere": {"kind": "relay", "base_url": "http://127.0.0.1:8", "api_key_env": "X"},
        },
        models={
            "gpt-image-2": {"upstreams": ["backup", "primary"]},
            "house": {"routing": "weighted", "upstream_weights": {"primary": 4}},
            "gpt-image-2-r": {"upstream_model": "gpt-image-2-mini"},
        },
    )
    router = build_router(settings, "openai", environ={"KEY_A": "a", "KEY_B": "b"})
    assert set(router.upstreams) == {"primary", "backup"}
    assert router.upstreams["primary"].max_concurrency == 8
    route = router.route_for("gpt-image-2")
    assert [u.name for u in route.upstreams] == ["backup", "primary"]
    assert route.upstreams[0].model_for("gpt-image-2", route.upstream_model) == (
        "gpt-image-2-2026-04-21"
    )
    house = router.route_for("house")
    assert [u.name for u in house.upstreams] == ["primary", "backup"]
    assert house.weights == (4.0, 1.0)
    r_route = router.route_for("gpt-image-2-r")
    assert r_route.upstreams[0].model_for("gpt-image-2-r", r_route.upstream_model) == (
        "gpt-image-2-mini"
    )
    # A model unknown to the configuration (renamed since queued) takes the default route.
    assert [u.name for u in router.route_for("gone").upstreams] == ["primary", "backup"]


@pytest.mark.parametrize(
    ("upstreams", "models", "match"),
    [
        ({}, {"gpt-image-2": {"upstreams": ["nope"]}}, "'nope', which is not configured"),
        (
            {"r": {"kind": "relay", "base_url": "http://127.0.0.1:8", "api_key_env": "K"}},
            {"gpt-image-2": {"upstreams": ["r"]}},
            "a relay upstream, not openai",
        ),
        (
            {"a": {"kind": "openai", "api_key_env": "K"}},
            {"gpt-image-2": {"upstreams": ["a", "a"]}},
            "twice",
        ),
        (
            {"a": {"kind": "openai", "api_key_env": "K"}},
            {"gpt-image-2": {"routing": "weighted", "upstream_weights": {"b": 1}}},
            "not in the model's upstreams",
        ),
        (
            {"a": {"kind": "openai", "api_key_env": "K"}},
            {"gpt-image-2": {"routing": "weighted", "upstream_weights": {"a": 0}}},
            "greater than 0",
        ),
    ],
)
def test_bad_routes_fail_at_start_up(
    upstreams: dict[str, Any], models: dict[str, Any], match: str
) -> None:
    settings = Settings(engine="openai", upstreams=upstreams, models=models)
    with pytest.raises(ConfigurationError, match=match):
        build_router(settings, "openai", environ={"K": "k", "OPENAI_API_KEY": "k"})


def test_upstream_config_rejects_typos_and_bad_urls() -> None:
    with pytest.raises(ValueError, match="extra"):
        UpstreamConfig.model_validate({"kind": "openai", "max_concurency": 3})
    with pytest.raises(ValueError, match="http"):
        UpstreamConfig.model_validate({"kind": "relay", "base_url": "relay.example.com"})


def _readme_toml_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## Upstream engines", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```toml\n(.*?)```", section, flags=re.S)


def test_readme_examples_load_and_route(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _readme_toml_blocks()
    assert len(blocks) >= 3
    for variable in (
        "OPENAI_API_KEY",
        "OPENAI_BACKUP_KEY",
        "RELAY_KEY",
        "IMAGEFORGE_RELAY_API_KEY",
    ):
        monkeypatch.setenv(variable, "k")
    for index, block in enumerate(blocks):
        path = tmp_path / f"example-{index}.toml"
        path.write_text(block)
        settings = Settings.load(path)
        kinds = {spec.engine for spec in settings.model_specs().values()}
        assert kinds <= {"openai", "relay", "offline"}, kinds
        for kind in kinds - {"offline"}:
            router = build_router(settings, kind)  # type: ignore[arg-type]
            assert router.upstreams

"""The relay engine against a second imageforge on 127.0.0.1: submission, checkpoint before
polling, resume after a crash (one paid submission), failures, failover and the download cap."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imageforge.engine_setup import build_router
from imageforge.engines.base import (
    CLIENT_CANCELLED,
    GenerationRequest,
    ReferenceImage,
    UpstreamRef,
)
from imageforge.engines.relay import RelayEngine
from imageforge.engines.upstream_errors import UpstreamError
from imageforge.settings import Settings
from imageforge.testing.processes import cli_env, free_port
from tests.conftest import make_settings, start_harness
from tests.upstream_servers import (
    FakeImagesAPI,
    ImageforgeUpstream,
    Reply,
    sentinel_beside,
    serve_images_api,
    serve_task_api,
    solid_png,
)

KEY_ENV = "IMAGEFORGE_TEST_RELAY_KEY"


@pytest.fixture
async def relay_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ImageforgeUpstream]:
    upstream = await ImageforgeUpstream.start(tmp_path / "upstream")
    monkeypatch.setenv(KEY_ENV, upstream.api_key)
    try:
        yield upstream
    finally:
        await upstream.stop()


@pytest.fixture
def files() -> Iterator[FakeImagesAPI]:
    """Serves reference images at /files/WxH.png."""
    with serve_images_api() as api:
        yield api


def relay_engine(settings: Settings) -> RelayEngine:
    """The engine as the runtime builds it: its router from the settings."""
    return RelayEngine(build_router(settings, "relay"))


def relay_config(base_url: str, **options: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "kind": "relay",
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "poll_initial_seconds": 0.02,
        "poll_max_seconds": 0.1,
    }
    values.update(options)
    return values


@pytest.fixture
async def make_engine(
    relay_upstream: ImageforgeUpstream,
) -> AsyncIterator[Callable[..., RelayEngine]]:
    engines: list[RelayEngine] = []

    def make(upstreams: dict[str, Any] | None = None, **options: Any) -> RelayEngine:
        settings = Settings(
            engine="relay",
            upstreams=upstreams or {"up": relay_config(relay_upstream.base_url, **options)},
        )
        engine = relay_engine(settings)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.aclose()


class Checkpoints:
    """Records each checkpoint and how many polls the upstream had seen by then."""

    def __init__(self, upstream: ImageforgeUpstream) -> None:
        self.upstream = upstream
        self.refs: list[UpstreamRef] = []
        self.polls_before: list[int] = []

    async def __call__(self, ref: UpstreamRef) -> None:
        self.refs.append(ref)
        self.polls_before.append(self.upstream.wrapper.counts["poll"])


def request(**changes: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "prompt": "a harbour at dawn",
        "width": 1536,
        "height": 864,
        "quality": "high",
        "model": "gpt-image-2",
        "task_id": "image_00000000-0000-4000-8000-000000000001",
    }
    values.update(changes)
    return GenerationRequest(**values)


# Submit, checkpoint, poll, download -------------------------------------------------------


async def test_submits_the_parameters_and_checkpoints_before_polling(
    make_engine: Callable[..., RelayEngine], relay_upstream: ImageforgeUpstream
) -> None:
    checkpoints = Checkpoints(relay_upstream)
    image = await make_engine().generate(request(checkpoint=checkpoints))
    assert relay_upstream.wrapper.submitted == [
        {
            "model": "gpt-image-2",
            "prompt": "a harbour at dawn",
            "size": "1536x864",
            "quality": "high",
        }
    ]
    assert relay_upstream.wrapper.idempotency_keys == [request().task_id]
    [ref] = checkpoints.refs
    assert ref.upstream == "up" and ref.task_id.startswith("image_")
    assert checkpoints.polls_before == [0]
    assert (image.content_type, image.width, image.height, image.upstream) == (
        "image/png",
        1536,
        864,
        "up",
    )
    assert Image.open(io.BytesIO(image.data)).size == (1536, 864)


async def _upstream_status(upstream: ImageforgeUpstream, task_id: str) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient() as client:
        answer = await client.get(
            f"{upstream.base_url}/v1/result/{task_id}",
            headers={"Authorization": f"Bearer {upstream.api_key}"},
        )
    body: dict[str, Any] = answer.json()
    return body


@pytest.mark.parametrize("by_client", [True, False])
async def test_a_cancel_by_the_client_cancels_upstream_and_no_other_does(
    make_engine: Callable[..., RelayEngine], relay_upstream: ImageforgeUpstream, by_client: bool
) -> None:
    """The client's cancel reaches the upstream (imageforge has the route); a lost lease or a
    shutdown cancels the call too, but leaves the upstream task for the next attempt."""
    relay_upstream.hold()
    checkpoints = Checkpoints(relay_upstream)
    figures: list[int] = []
    call = asyncio.ensure_future(
        make_engine().generate(request(checkpoint=checkpoints, progress=figures.append))
    )
    await until(lambda: _true(bool(checkpoints.refs)))
    assert figures == [0], "the relay reports the start of the upstream's work"
    await asyncio.sleep(0.1)
    call.cancel(CLIENT_CANCELLED if by_client else None)
    with pytest.raises(asyncio.CancelledError):
        await call
    remote = checkpoints.refs[0].task_id
    if by_client:

        async def cancelled_upstream() -> bool:
            body = await _upstream_status(relay_upstream, remote)
            return body["status"] == "failed" and body["error"].startswith("cancelled")

        await until(cancelled_upstream)
    else:
        await asyncio.sleep(0.5)
        assert (await _upstream_status(relay_upstream, remote))["status"] == "processing"


async def _true(value: bool) -> bool:
    return value


async def test_references_are_passed_as_their_original_urls(
    make_engine: Callable[..., RelayEngine],
    relay_upstream: ImageforgeUpstream,
    files: FakeImagesAPI,
) -> None:
    url = f"{files.base_url}/files/64x48.png"
    reference = ReferenceImage(url=url, data=solid_png(64, 48), format="PNG", width=64, height=48)
    image = await make_engine().generate(
        request(
            model="gpt-image-2-r", quality=None, width=1024, height=1024, references=(reference,)
        )
    )
    [body] = relay_upstream.wrapper.submitted
    assert body["image_urls"] == [url] and "quality" not in body
    assert body["model"] == "gpt-image-2-r"
    assert (image.width, image.height) == (1024, 1024)


async def test_a_resumed_task_is_polled_not_submitted_again(
    make_engine: Callable[..., RelayEngine], relay_upstream: ImageforgeUpstream
) -> None:
    engine = make_engine()
    checkpoints = Checkpoints(relay_upstream)
    await engine.generate(request(checkpoint=checkpoints))
    resumed = await engine.generate(request(resume=checkpoints.refs[0], checkpoint=checkpoints))
    assert relay_upstream.wrapper.submissions == 1
    assert len(checkpoints.refs) == 1
    assert (resumed.width, resumed.height, resumed.upstream) == (1536, 864, "up")


async def test_a_resumed_task_the_upstream_forgot_is_submitted_anew(
    make_engine: Callable[..., RelayEngine], relay_upstream: ImageforgeUpstream
) -> None:
    checkpoints = Checkpoints(relay_upstream)
    gone = UpstreamRef("up", "image_00000000-0000-4000-8000-0000000000ff")
    image = await make_engine().generate(request(resume=gone, checkpoint=checkpoints))
    assert relay_upstream.wrapper.submissions == 1
    assert [ref.task_id for ref in checkpoints.refs] != [gone.task_id]
    assert image.upstream == "up"


# Failures ---------------------------------------------------------------------------------


async def test_an_upstream_failure_fails_the_task_with_its_message(
    make_engine: Callable[..., RelayEngine],
) -> None:
    with pytest.raises(UpstreamError) as caught:
        await make_engine().generate(request(prompt="REJECT this harbour"))
    error = caught.value
    assert not error.retryable and error.code == "upstream_failed"
    assert error.message == (
        "upstream 'up' failed the task: content policy violation in 'REJECT this harbour'"
    )


async def test_a_rate_limited_submission_is_retryable_after_retry_after(
    make_engine: Callable[..., RelayEngine], relay_upstream: ImageforgeUpstream
) -> None:
    relay_upstream.wrapper.faults.submits.append(Reply(429, retry_after="9", message="slow down"))
    with pytest.raises(UpstreamError) as caught:
        await make_engine().generate(request())
    assert caught.value.retryable and caught.value.retry_after == 9.0
    assert caught.value.message == "upstream 'up' is rate limiting (429): slow down"
    assert relay_upstream.wrapper.submissions == 0


async def test_a_wrong_key_is_a_configuration_error(
    make_engine: Callable[..., RelayEngine],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(KEY_ENV, "ifk_wrongwrongwrongwrongwrongwrongwrong00")
    with pytest.raises(UpstreamError) as caught:
        await make_engine().generate(request())
    assert not caught.value.retryable
    assert caught.value.message == (
        "upstream 'up' rejected our credentials (401); check the API key configured for it"
    )
    assert "wrongwrong" not in caplog.text


async def test_transient_poll_failures_are_ridden_out(
    make_engine: Callable[..., RelayEngine], relay_upstream: ImageforgeUpstream
) -> None:
    relay_upstream.wrapper.faults.polls.extend([Reply(503), Reply(429, retry_after="0.05")])
    image = await make_engine().generate(request())
    assert image.width == 1536
    assert relay_upstream.wrapper.counts["poll_fault"] == 2


async def test_polls_failing_in_a_row_end_the_attempt_without_failover(
    make_engine: Callable[..., RelayEngine], relay_upstream: ImageforgeUpstream
) -> None:
    relay_upstream.hold()
    relay_upstream.wrapper.faults.polls.extend([Reply(502)] * 5)
    with pytest.raises(UpstreamError) as caught:
        await make_engine().generate(request(checkpoint=Checkpoints(relay_upstream)))
    assert caught.value.retryable and not caught.value.failover
    assert caught.value.status == 502


async def test_the_deadline_ends_the_attempt_as_retryable(
    make_engine: Callable[..., RelayEngine], relay_upstream: ImageforgeUpstream
) -> None:
    relay_upstream.hold()
    checkpoints = Checkpoints(relay_upstream)
    with pytest.raises(UpstreamError) as caught:
        await make_engine(timeout_seconds=0.4).generate(request(checkpoint=checkpoints))
    assert caught.value.retryable and not caught.value.failover
    assert caught.value.code == "upstream_timeout"
    assert len(checkpoints.refs) == 1  # the next attempt resumes it


async def test_the_download_is_capped(make_engine: Callable[..., RelayEngine]) -> None:
    with pytest.raises(UpstreamError, match="larger than 2048 bytes") as caught:
        await make_engine(max_image_bytes=2048).generate(request())
    assert not caught.value.retryable


async def test_a_finished_task_linking_to_an_address_nobody_allowed_is_refused_unreached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, "ifk_test")
    with serve_task_api() as (api, base_url), sentinel_beside(base_url) as sentinel:
        api.link_base = "http://127.0.0.2:" + base_url.rsplit(":", 1)[1]
        engine = relay_engine(Settings(engine="relay", upstreams={"up": relay_config(base_url)}))
        try:
            with pytest.raises(UpstreamError) as caught:
                await engine.generate(request())
        finally:
            await engine.aclose()
    assert sentinel.connections == 0
    assert api.downloads == 0 and api.submissions == 1
    assert not caught.value.retryable and not caught.value.failover
    assert "download_allowlist" in caught.value.message


async def test_the_upstreams_own_origin_and_its_download_allowlist_are_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, "ifk_test")
    with serve_images_api() as files, serve_task_api() as (api, base_url):
        own = relay_engine(Settings(engine="relay", upstreams={"up": relay_config(base_url)}))
        try:
            image = await own.generate(request(width=1024, height=768))
            assert (image.width, image.height) == (1024, 768)
            assert api.downloads == 1

            # The task API's files live on another server (same address, another port).
            api.link_base = files.base_url
            with pytest.raises(UpstreamError):
                await own.generate(request())
            assert files.downloads == []
        finally:
            await own.aclose()
        config = relay_config(base_url, download_allowlist=["127.0.0.1"])
        allowed = relay_engine(Settings(engine="relay", upstreams={"up": config}))
        try:
            image = await allowed.generate(request(width=768, height=1024))
        finally:
            await allowed.aclose()
    assert (image.width, image.height) == (768, 1024)
    # The file host is not the upstream: it gets no key.
    assert files.downloads == [("/files/768x1024.png", "")]


async def test_a_submission_left_unanswered_times_out_as_retryable(
    make_engine: Callable[..., RelayEngine],
) -> None:
    """An upstream that accepts the connection and never answers: the call gives up after
    `request_timeout_seconds` instead of hanging until the attempt's deadline."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(65536)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = make_engine(
        upstreams={"mute": relay_config(f"http://127.0.0.1:{port}", request_timeout_seconds=0.3)}
    )
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamError) as caught:
            await engine.generate(request())
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert caught.value.code == "upstream_timeout" and caught.value.retryable
    assert held, "the engine never connected: the test proves nothing"
    assert time.monotonic() - started < 5


async def test_a_dead_upstream_fails_over_at_submission(
    make_engine: Callable[..., RelayEngine], relay_upstream: ImageforgeUpstream
) -> None:
    engine = make_engine(
        upstreams={
            "dead": relay_config(f"http://127.0.0.1:{free_port()}"),
            "up": relay_config(relay_upstream.base_url),
        }
    )
    image = await engine.generate(request())
    assert image.upstream == "up"
    assert relay_upstream.wrapper.submissions == 1


# Through the worker ------------------------------------------------------------------------


async def test_a_relayed_task_completes_and_records_its_upstream(
    tmp_path: Path, relay_upstream: ImageforgeUpstream, files: FakeImagesAPI
) -> None:
    settings = make_settings(
        tmp_path / "downstream",
        engine="relay",
        upstreams={"up": relay_config(relay_upstream.base_url)},
        reference_allowlist=["127.0.0.1"],
    )
    lifespan, api = await start_harness(settings)
    try:
        key = await api.new_key()
        reference = f"{files.base_url}/files/80x80.png"
        created = await api.create(key, ratio="16:9", quality="medium", image_urls=[reference])
        assert created.status_code == 200, created.text
        result = await api.wait_terminal(key, created.json()["id"])
        assert result["status"] == "completed", result
        task = await api.runtime.store.get_task(created.json()["id"])
        assert task is not None
        assert (task.upstream, task.attempt) == ("up", 1)
        [body] = relay_upstream.wrapper.submitted
        assert body == {
            "model": "gpt-image-2",
            "prompt": "a red fox in the snow",
            "size": "1536x864",
            "quality": "medium",
            "image_urls": [reference],
        }
        assert task.upstream_task_id is not None and task.upstream_task_id.startswith("image_")
        image = await api.client.get(result["image_url"])
        assert Image.open(io.BytesIO(image.content)).size == (1536, 864)
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def until(condition: Callable[[], Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def start_worker(
    data_dir: Path, upstream: ImageforgeUpstream, log: Path
) -> subprocess.Popen[bytes]:
    # Zero configuration: the relay comes from the environment alone.
    env = cli_env(
        data_dir,
        IMAGEFORGE_ENGINE="relay",
        IMAGEFORGE_RELAY_BASE_URL=upstream.base_url,
        IMAGEFORGE_RELAY_API_KEY=upstream.api_key,
        IMAGEFORGE_LEASE_SECONDS="2",
        IMAGEFORGE_HEARTBEAT_SECONDS="0.5",
        IMAGEFORGE_RESCUE_INTERVAL_SECONDS="0.2",
        IMAGEFORGE_POLL_INTERVAL_SECONDS="0.1",
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "imageforge", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_a_worker_killed_mid_poll_is_resumed_with_one_submission(
    tmp_path: Path, relay_upstream: ImageforgeUpstream
) -> None:
    data_dir = tmp_path / "downstream"
    log = tmp_path / "workers.log"
    # The API side in this process, without a worker; the workers are real processes.
    lifespan, api = await start_harness(make_settings(data_dir, engine="relay"), run_worker=False)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        key = await api.new_key()
        created = await api.create(key)
        assert created.status_code == 200, created.text
        task_id = created.json()["id"]
        relay_upstream.hold()
        workers.append(start_worker(data_dir, relay_upstream, log))

        async def polling() -> bool:
            task = await api.runtime.store.get_task(task_id)
            return (
                bool(task and task.upstream_task_id) and relay_upstream.wrapper.counts["poll"] >= 2
            )

        await until(polling)
        first = await api.runtime.store.get_task(task_id)
        assert first is not None and first.attempt == 1
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(timeout=10)

        relay_upstream.release()
        workers.append(start_worker(data_dir, relay_upstream, log))
        result = await api.wait_terminal(key, task_id, timeout=30)
        assert result["status"] == "completed", (result, log.read_text())
        task = await api.runtime.store.get_task(task_id)
        assert task is not None
        assert task.attempt == 2
        assert (task.upstream, task.upstream_task_id) == ("relay", first.upstream_task_id)
        assert relay_upstream.wrapper.submissions == 1
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


# Installed without aiohttp ------------------------------------------------------------------

#: Runs `imageforge worker` in a Python where aiohttp cannot be imported, as on a base install.
_WITHOUT_AIOHTTP = """
import runpy, sys

class NoAiohttp:
    def find_spec(self, name, path=None, target=None):
        if name == "aiohttp" or name.startswith("aiohttp."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoAiohttp())
sys.argv = ["imageforge", "worker"]
runpy.run_module("imageforge", run_name="__main__", alter_sys=True)
"""


def test_the_relay_without_aiohttp_stops_the_worker_saying_which_extra_to_install(
    tmp_path: Path,
) -> None:
    env = cli_env(
        tmp_path / "data",
        IMAGEFORGE_ENGINE="relay",
        IMAGEFORGE_RELAY_BASE_URL=f"http://127.0.0.1:{free_port()}",
        IMAGEFORGE_RELAY_API_KEY="ifk_unused",
        COLUMNS="200",
    )
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_AIOHTTP],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 78, done.stderr[-2000:]  # EX_CONFIG
    # One line, naming the setting that picked the engine and what to install.
    assert done.stderr.strip() == (
        "imageforge: IMAGEFORGE_ENGINE: the relay engine needs aiohttp; "
        "install it with pip install 'imageforge[relay]'"
    ), done.stderr[-2000:]

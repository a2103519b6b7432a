"""The SDK's retries and fallbacks, through a real proxy that fails on purpose in front of a
real imageforge: 429/503 with Retry-After, answers lost after the server acted, and a server
that lists no extensions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from imageforge.testing.processes import ServerProcess, create_key
from imageforge_client import (
    APIConnectionError,
    AsyncClient,
    Capabilities,
    Client,
    RateLimitError,
    ServiceUnavailableError,
    UnsupportedFeatureError,
)
from tests.sdk_servers import Fault, FaultyProxy, serve_imageforge
from tests.test_sdk import FAST, UNKNOWN_TASK, png_size

CREATE = ("POST", "/v1/image2/images")
RESULT = ("GET", "/v1/result/")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve_imageforge(tmp_path_factory, "sdk-retries")


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[FaultyProxy]:
    with FaultyProxy(server.base_url) as running:
        yield running


@pytest.fixture
def api_key(server: ServerProcess) -> str:
    """A fresh key per test, so the server's own count of its tasks is this test's."""
    key: str = create_key(server.data_dir, "retries")["key"]
    return key


def tasks_of(server: ServerProcess, api_key: str) -> int:
    with Client(api_key, base_url=server.base_url) as direct:
        return direct.usage.get().tasks


def test_429_and_503_are_retried_after_their_retry_after(
    proxy: FaultyProxy, server: ServerProcess, api_key: str
) -> None:
    with Client(api_key, base_url=proxy.base_url) as client:
        created = client.images.create("a heron")
        not_before = int(time.time()) + 3  # an HTTP date has whole seconds
        proxy.script.fail(
            *RESULT,
            Fault("status", 429, retry_after="1"),
            Fault("status", 503, retry_after=formatdate(not_before, usegmt=True)),
        )
        started = time.monotonic()
        task = client.results.get(created.id)
        elapsed, finished = time.monotonic() - started, time.time()
    assert task.id == created.id
    assert [s.outcome for s in proxy.script.requests_to(*RESULT)] == ["429", "503", "200"]
    print(f"waited {elapsed:.2f} s for Retry-After 1 s, then an HTTP date")
    # Both waits honoured: lower bounds, never an upper bound on a busy machine.
    assert elapsed >= 1.0 and finished >= not_before - 0.05


def test_a_rate_limited_create_is_retried_with_the_same_idempotency_key(
    proxy: FaultyProxy, server: ServerProcess, api_key: str
) -> None:
    proxy.script.fail(*CREATE, Fault("status", 429, retry_after="0"))
    with Client(api_key, base_url=proxy.base_url) as client:
        created = client.images.create("a heron")
    creates = proxy.script.requests_to(*CREATE)
    assert [s.outcome for s in creates] == ["429", "200"]
    assert creates[0].idempotency_key and creates[0].idempotency_key == creates[1].idempotency_key
    assert proxy.script.created == [created.id] and tasks_of(server, api_key) == 1


def test_retries_are_bounded(proxy: FaultyProxy, api_key: str) -> None:
    proxy.script.fail(*RESULT, *[Fault("status", 429, retry_after="0")] * 5)
    with (
        Client(api_key, base_url=proxy.base_url, max_retries=2) as client,
        pytest.raises(RateLimitError) as caught,
    ):
        client.results.get(UNKNOWN_TASK)
    assert caught.value.status_code == 429 and caught.value.message == "Too many requests."
    assert len(proxy.script.requests_to(*RESULT)) == 3


def test_a_retry_after_beyond_the_longest_wait_is_raised_at_once(
    proxy: FaultyProxy, api_key: str
) -> None:
    proxy.script.fail(*RESULT, Fault("status", 429, retry_after="3600"))
    started = time.monotonic()
    with (
        Client(api_key, base_url=proxy.base_url) as client,
        pytest.raises(RateLimitError) as caught,
    ):
        client.results.get(UNKNOWN_TASK)
    assert caught.value.retry_after == 3600
    assert time.monotonic() - started < 10
    assert len(proxy.script.requests_to(*RESULT)) == 1


@pytest.mark.parametrize(
    "fault", [Fault("forward_then_drop"), Fault("forward_then_status", 503, retry_after="0")]
)
def test_a_create_whose_answer_is_lost_makes_exactly_one_task(
    proxy: FaultyProxy, server: ServerProcess, api_key: str, fault: Fault
) -> None:
    proxy.script.fail(*CREATE, fault)
    with Client(api_key, base_url=proxy.base_url) as client:
        created = client.images.create("a heron at dusk")
    creates = proxy.script.requests_to(*CREATE)
    lost = "dropped" if fault.kind == "forward_then_drop" else "503"
    assert [s.outcome for s in creates] == [lost, "200"]
    assert len({s.idempotency_key for s in creates}) == 1
    assert proxy.script.created == [created.id]  # the retry got the task the first one made
    assert tasks_of(server, api_key) == 1


async def test_async_a_create_whose_answer_is_lost_makes_exactly_one_task(
    proxy: FaultyProxy, server: ServerProcess, api_key: str
) -> None:
    proxy.script.fail(*CREATE, Fault("forward_then_drop"))
    async with AsyncClient(api_key, base_url=proxy.base_url) as client:
        created = await client.images.create("a heron at dusk")
    assert [s.outcome for s in proxy.script.requests_to(*CREATE)] == ["dropped", "200"]
    assert proxy.script.created == [created.id] and tasks_of(server, api_key) == 1


def test_without_idempotency_support_a_create_that_may_have_landed_is_not_resent(
    proxy: FaultyProxy, server: ServerProcess, api_key: str
) -> None:
    proxy.script.hide_openapi = True
    proxy.script.fail(*CREATE, Fault("forward_then_drop"), Fault("forward_then_status", 503))
    with Client(api_key, base_url=proxy.base_url) as client:
        with pytest.raises(APIConnectionError):
            client.images.create("a heron")
        with pytest.raises(ServiceUnavailableError) as caught:
            client.images.create("a heron")
    assert caught.value.status_code == 503 and caught.value.message == "Overloaded, try again."
    assert [s.outcome for s in proxy.script.requests_to(*CREATE)] == ["dropped", "503"]
    assert tasks_of(server, api_key) == 2  # one per call: never a second one for a resend


def test_a_dropped_read_is_retried(proxy: FaultyProxy, api_key: str) -> None:
    with Client(api_key, base_url=proxy.base_url) as client:
        created = client.images.create("a heron")
        proxy.script.fail(*RESULT, Fault("drop"))
        assert client.results.get(created.id).id == created.id
    assert [s.outcome for s in proxy.script.requests_to(*RESULT)] == ["dropped", "200"]


def test_without_extensions_generate_polls_and_the_rest_is_unsupported(
    proxy: FaultyProxy, api_key: str, tmp_path: Path
) -> None:
    proxy.script.hide_openapi = True
    with Client(api_key, base_url=proxy.base_url, polling=FAST) as client:
        assert client.capabilities() == Capabilities()
        first = client.images.generate("a heron", ratio="3:2", timeout=60)
        second = client.images.generate("a crane", ratio="2:3", timeout=60)
        assert png_size(first.save(tmp_path / "a.png").read_bytes()) == (1536, 1024)
        assert png_size(second.bytes()) == (1024, 1536)
        with pytest.raises(UnsupportedFeatureError, match="cancelling tasks"):
            client.results.cancel(first.id)
        with pytest.raises(UnsupportedFeatureError, match="listing tasks"):
            list(client.tasks.list())
        with pytest.raises(UnsupportedFeatureError, match="quotes"):
            client.images.quote("x")
        with pytest.raises(UnsupportedFeatureError, match="callback_url"):
            client.images.create("x", callback_url="https://example.com/hook")
    seen = proxy.script.seen
    assert len(proxy.script.requests_to("GET", "/openapi.json")) == 1, "asked once per client"
    polls = proxy.script.requests_to(*RESULT)
    assert len(polls) >= 2 and all("wait=" not in s.query for s in polls)
    assert not proxy.script.requests_to("GET", "/v1/tasks")
    downloads = proxy.script.requests_to("GET", "/files/")
    assert len(downloads) == 2 and not any(s.authorized for s in downloads), "key never sent"
    assert all(s.authorized for s in seen if s.path.startswith("/v1/"))


def test_an_expired_link_is_renewed_once(proxy: FaultyProxy, api_key: str) -> None:
    with Client(api_key, base_url=proxy.base_url, polling=FAST) as client:
        image = client.images.generate("a heron", timeout=60)
        proxy.script.fail("GET", "/files/", Fault("status", 410))
        polls_before = len(proxy.script.requests_to(*RESULT))
        assert png_size(image.bytes()) == (1024, 1024)
    assert [s.outcome for s in proxy.script.requests_to("GET", "/files/")] == ["410", "200"]
    assert len(proxy.script.requests_to(*RESULT)) == polls_before + 1

"""The Python SDK against a real imageforge process: generate and save, sync and async, and
every error class the server can produce."""

from __future__ import annotations

import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from PIL import Image

from imageforge.testing.processes import ServerProcess, create_key, run_cli
from imageforge_client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ClientConfigurationError,
    IdempotencyMismatchError,
    InsufficientCreditsError,
    NotFoundError,
    PayloadTooLargeError,
    PollSchedule,
    RateLimitError,
    TaskResult,
)
from tests.sdk_servers import serve_imageforge

#: Polling fast enough that a test does not sit through the production schedule.
FAST = PollSchedule(initial=0.1, factor=1.5, maximum=0.5)
UNKNOWN_TASK = "image_00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve_imageforge(tmp_path_factory, "sdk")


@pytest.fixture(scope="module")
def api_key(server: ServerProcess) -> str:
    key: str = create_key(server.data_dir, "sdk")["key"]
    return key


@pytest.fixture
def client(server: ServerProcess, api_key: str) -> Iterator[Client]:
    with Client(api_key, base_url=server.base_url, polling=FAST) as sdk:
        yield sdk


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def test_generate_waits_and_saves_an_image_of_the_asked_size(
    client: Client, tmp_path: Path
) -> None:
    seen: list[TaskResult] = []
    image = client.images.generate(
        "a red fox in the snow", size="1536x1024", timeout=60, on_progress=seen.append
    )
    assert image.task.status == "completed" and image.id.startswith("image_")
    saved = image.save(tmp_path / "fox.png")
    assert saved == tmp_path / "fox.png"
    assert png_size(saved.read_bytes()) == (1536, 1024)
    assert image.bytes() == saved.read_bytes()
    assert seen[0].status in ("queued", "processing") and seen[-1].status == "completed"
    assert [task.id for task in seen] == [image.id] * len(seen)
    assert len({(task.status, task.progress) for task in seen}) == len(seen), "no repeats"

    again = client.results.get(image.id)
    assert again.status == "completed" and again.image_url and again.error is None
    assert again.amount == Decimal("0.006") and again.refunded is False


async def test_async_generate_saves_into_a_directory(
    server: ServerProcess, api_key: str, tmp_path: Path
) -> None:
    progress: list[str] = []

    async def note(task: TaskResult) -> None:
        progress.append(task.status)

    async with AsyncClient(api_key, base_url=server.base_url, polling=FAST) as client:
        created = await client.images.create("a lighthouse", ratio="16:9", quality="medium")
        assert created.status in ("queued", "processing") and created.model == "gpt-image-2"
        assert created.amount == Decimal("0.053") and created.refunded is False
        image = await client.results.wait(created.id, timeout=60, on_progress=note)
        saved = await image.save(tmp_path)
        assert saved == tmp_path / f"{created.id}.png"
        assert png_size(saved.read_bytes()) == (1536, 864)
        assert (await client.results.get(created.id)).status == "completed"
        with pytest.raises(NotFoundError):
            await client.results.get(UNKNOWN_TASK)
    assert progress[-1] == "completed"


def test_quote_and_usage_are_typed(client: Client) -> None:
    quote = client.images.quote("x", ratio="21:9", resolution="2k", quality="high")
    assert (quote.size, quote.width, quote.height) == ("2688x1152", 2688, 1152)
    assert quote.amount == Decimal("0.211") and quote.currency == "USD"
    usage = client.usage.get(days=7)
    assert usage.balance is None and usage.currency == "USD" and usage.tasks >= 0
    assert isinstance(usage.refunded, Decimal) and usage.refunded >= 0
    assert all(isinstance(day.refunded, Decimal) and day.refunds >= 0 for day in usage.days)


def test_bad_input_is_a_bad_request_naming_the_field(client: Client) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.images.create("x", size="1000x1000")
    error = caught.value
    assert error.status_code == 400 and error.param == "size" and error.code == "invalid_size"
    assert "multiples of 16" in error.message and "1000x1000" in error.message
    with pytest.raises(BadRequestError) as caught:
        client.images.create("x", model="no-such-model")
    assert caught.value.param == "model"
    with pytest.raises(BadRequestError) as caught:
        client.images.create("x", model="")  # sent as given, never swapped for the default
    assert caught.value.param == "model"
    with pytest.raises(TypeError, match="image_urls"):
        client.images.create("x", image_urls="https://example.com/a.png")


def test_wrong_key_is_an_authentication_error(server: ServerProcess) -> None:
    with Client("if_wrong", base_url=server.base_url) as client:
        with pytest.raises(AuthenticationError) as caught:
            client.images.create("x")
        assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
        with pytest.raises(AuthenticationError):
            client.results.get(UNKNOWN_TASK)


def test_an_empty_balance_is_insufficient_credits(server: ServerProcess) -> None:
    created = run_cli(server.data_dir, "keys", "create", "--name", "broke", "--credits", "0")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    with Client(secret, base_url=server.base_url) as client:
        with pytest.raises(InsufficientCreditsError) as caught:
            client.images.create("x")
        assert caught.value.status_code == 402 and caught.value.message
        assert client.usage.get().balance == 0


def test_unknown_task_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.results.get(UNKNOWN_TASK)
    assert caught.value.status_code == 404
    with pytest.raises(NotFoundError):
        client.results.get("../usage")  # quoted into the path, never a path of its own


def test_a_body_over_the_limit_is_payload_too_large(client: Client) -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        client.images.create("x" * (1024 * 1024 + 1))
    assert caught.value.status_code == 413


def test_reusing_an_idempotency_key_for_another_body_is_a_mismatch(client: Client) -> None:
    first = client.images.create("a cat", idempotency_key="sdk-test-reuse")
    assert client.images.create("a cat", idempotency_key="sdk-test-reuse").id == first.id
    with pytest.raises(IdempotencyMismatchError) as caught:
        client.images.create("a dog", idempotency_key="sdk-test-reuse")
    assert caught.value.status_code == 422 and caught.value.code == "idempotency_key_reused"


def test_rate_limit_is_raised_with_its_retry_after(tmp_path: Path) -> None:
    data = tmp_path / "data"
    secret = create_key(data)["key"]
    with (
        ServerProcess(data, "--no-worker", IMAGEFORGE_RATE_LIMIT_PER_MINUTE="2") as server,
        Client(secret, base_url=server.base_url, max_retries=0) as client,
    ):
        client.images.create("one")
        client.images.create("two")
        with pytest.raises(RateLimitError) as caught:
            client.images.create("three")
        assert caught.value.status_code == 429
        assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 60
        server.terminate()


def test_key_and_base_url_come_from_the_environment(
    server: ServerProcess, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEFORGE_API_KEY", api_key)
    monkeypatch.setenv("IMAGEFORGE_BASE_URL", server.base_url + "/")
    with Client() as client:
        assert client.base_url == server.base_url
        assert client.results.get(client.images.create("x").id).model == "gpt-image-2"
    monkeypatch.delenv("IMAGEFORGE_API_KEY")
    with pytest.raises(ClientConfigurationError, match="IMAGEFORGE_API_KEY"):
        Client()
    with pytest.raises(ClientConfigurationError, match="base_url"):
        Client("k", base_url="ftp://example.com")

"""An engine's image must decode, as what the engine declared, before the worker stores it."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from PIL import Image

from imageforge.engines import GeneratedImage
from imageforge.ids import TaskId
from imageforge.keyring import create_api_key
from imageforge.testing.engines import ScriptedEngine, ok
from imageforge.worker.image_check import InvalidEngineImage, check_image_bytes
from tests.conftest import ApiHarness, make_settings, start_harness


def encoded(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(out, format=fmt)
    return out.getvalue()


def declared(data: bytes, content_type: str = "image/png") -> GeneratedImage:
    """`data` as an engine returns it, declared as a 64x48 image."""
    return GeneratedImage(data=data, content_type=content_type, width=64, height=48)


def truncated_png() -> GeneratedImage:
    data = encoded("PNG")
    return declared(data[: len(data) // 2])


def png_without_its_end() -> GeneratedImage:
    data = encoded("PNG")  # every pixel there, only the 12-byte IEND chunk missing
    return declared(data[:-12])


def png_with_a_damaged_byte() -> GeneratedImage:
    data = bytearray(encoded("PNG"))
    data[len(data) // 2] ^= 0xFF
    return declared(bytes(data))


def truncated_jpeg() -> GeneratedImage:
    data = encoded("JPEG")
    return declared(data[: len(data) // 2], "image/jpeg")


def jpeg_declared_as_png() -> GeneratedImage:
    return declared(encoded("JPEG"))


def png_of_another_size() -> GeneratedImage:
    return GeneratedImage(data=encoded("PNG"), content_type="image/png", width=1024, height=1024)


BROKEN = [
    truncated_png,
    png_without_its_end,
    png_with_a_damaged_byte,
    truncated_jpeg,
    jpeg_declared_as_png,
    png_of_another_size,
]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiHarness]:
    lifespan, harness = await start_harness(make_settings(tmp_path / "data", max_attempts=3))
    try:
        yield harness
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)


def scripted(api: ApiHarness, *script: Callable[[], GeneratedImage]) -> ScriptedEngine:
    engine = ScriptedEngine(script=list(script))
    api.runtime.engines["offline"] = engine
    return engine


@pytest.mark.parametrize("broken", BROKEN, ids=lambda step: step.__name__)
async def test_a_broken_image_is_retried_then_fails_and_is_refunded(
    api: ApiHarness, broken: Callable[[], GeneratedImage]
) -> None:
    engine = scripted(api, broken, broken, broken)
    record, secret = await create_api_key(api.runtime.store, "limited", balance_micros=1_000_000)
    created = (await api.create(secret, quality="low")).json()
    assert created["amount"] == 0.006
    result = await api.wait_terminal(secret, created["id"])
    assert (result["status"], result["amount"], result["refunded"]) == ("failed", 0, True)
    assert result["image_url"] is None
    assert result["error"].startswith("generation failed after 3 attempts: the engine returned")
    assert len(engine.calls) == 3
    task = await api.runtime.store.get_task(TaskId(created["id"]))
    assert task is not None and task.error_code == "invalid_engine_image"
    key = await api.runtime.store.get_key(record.id)
    assert key is not None and key.balance_micros == 1_000_000


async def test_a_broken_image_then_a_good_one_completes(api: ApiHarness) -> None:
    engine = scripted(api, truncated_png, ok)
    secret = await api.new_key()
    created = (await api.create(secret)).json()
    result = await api.wait_terminal(secret, created["id"])
    assert result["status"] == "completed" and not result["refunded"]
    assert len(engine.calls) == 2
    image = await api.client.get(result["image_url"])
    assert image.status_code == 200
    Image.open(io.BytesIO(image.content)).load()


@pytest.mark.parametrize(
    ("fmt", "content_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_each_declared_format_that_decodes_passes(fmt: str, content_type: str) -> None:
    check_image_bytes(declared(encoded(fmt), content_type))
    with pytest.raises(InvalidEngineImage, match="not PNG, JPEG or WebP"):
        check_image_bytes(declared(encoded(fmt), "image/gif"))

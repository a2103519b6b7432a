"""The diffusers engine on tiny random model folders: sizes, references, determinism, progress,
batching, cancellation and the start-up errors. (The engine contract suite runs on it too.)"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat
from pydantic import ValidationError

from imageforge.engine_setup import build_engine
from imageforge.engines import EngineError, GenerationRequest, ReferenceImage
from imageforge.engines.diffusers.config import DiffusersModelConfig
from imageforge.engines.diffusers.engine import DiffusersEngine
from imageforge.engines.diffusers.plan import image_to_image_steps
from imageforge.errors import ConfigurationError
from imageforge.settings import Settings
from imageforge.sizes import RATIOS, RESOLUTIONS, size_for
from tests.conftest import make_settings, start_harness
from tests.tiny_diffusers import TinyFolders, tiny_config

pytest.importorskip("diffusers", reason="the local extra is not installed")


def engine_for(**models: dict[str, Any]) -> DiffusersEngine:
    """An engine built the way a worker builds it: from the TOML tables, through build_engine."""
    tables = {name: {"engine": "diffusers", "diffusers": table} for name, table in models.items()}
    settings = Settings(models=tables)
    engine = build_engine("diffusers", settings)
    assert isinstance(engine, DiffusersEngine)
    return engine


@pytest.fixture
async def engines() -> AsyncIterator[list[DiffusersEngine]]:
    """Engines a test makes, closed after it."""
    made: list[DiffusersEngine] = []
    yield made
    for engine in made:
        await engine.aclose()


def request(**changes: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "prompt": "a lighthouse at dusk",
        "width": 1024,
        "height": 1024,
        "quality": "low",
        "model": "tiny",
        "task_id": f"image_{uuid.uuid4()}",
    }
    values.update(changes)
    return GenerationRequest(**values)


def png_reference(colour: str, size: tuple[int, int] = (96, 64)) -> ReferenceImage:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return ReferenceImage(
        url=f"https://example.test/{colour}.png",
        data=out.getvalue(),
        format="PNG",
        width=size[0],
        height=size[1],
    )


def pixels(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def difference(a: bytes, b: bytes) -> float:
    """Mean absolute difference per channel, 0–255."""
    return float(sum(ImageStat.Stat(ImageChops.difference(pixels(a), pixels(b))).mean) / 3)


# Sizes --------------------------------------------------------------------------------------


async def test_every_table_size_comes_out_exact(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine]
) -> None:
    engines.append(engine := engine_for(tiny=tiny_config(tiny_folders.sd)))
    sizes = []
    for ratio in RATIOS:
        for resolution in RESOLUTIONS:
            try:
                sizes.append(size_for(ratio, resolution))
            except Exception:
                continue  # 4K is offered for some ratios only
    assert len(sizes) == 32
    started = time.monotonic()
    images = await asyncio.gather(*(engine.generate(request(width=w, height=h)) for w, h in sizes))
    print(f"{len(sizes)} table sizes in {time.monotonic() - started:.1f}s")
    for (width, height), image in zip(sizes, images, strict=True):
        assert (image.width, image.height) == (width, height)
        decoded = Image.open(io.BytesIO(image.data))
        assert (decoded.format, decoded.size) == ("PNG", (width, height))


# Determinism --------------------------------------------------------------------------------


async def test_the_same_task_gives_the_same_pixels_and_another_task_other_pixels(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine]
) -> None:
    engines.append(engine := engine_for(tiny=tiny_config(tiny_folders.sdxl)))
    first = await engine.generate(request(task_id="image_1", quality="medium"))
    again = await engine.generate(request(task_id="image_1", quality="medium"))
    other = await engine.generate(request(task_id="image_2", quality="medium"))
    assert first.data == again.data
    assert first.usage == again.usage == {"seed": first.usage["seed"], "steps": 2}
    assert other.usage["seed"] != first.usage["seed"]
    assert difference(first.data, other.data) > 0.05
    # A fresh engine (a retry on another worker) draws the same image for the same task.
    engines.append(fresh := engine_for(tiny=tiny_config(tiny_folders.sdxl)))
    assert (await fresh.generate(request(task_id="image_1", quality="medium"))).data == first.data


async def test_an_explicit_seed_is_used_and_reported(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine]
) -> None:
    engines.append(engine := engine_for(tiny=tiny_config(tiny_folders.sd)))
    one = await engine.generate(request(seed=1234))
    two = await engine.generate(request(seed=1234))  # another task id, the same seed
    assert one.usage["seed"] == two.usage["seed"] == 1234
    assert one.data == two.data


# Progress -----------------------------------------------------------------------------------


async def test_progress_rises_step_by_step_to_100(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine]
) -> None:
    steps = {"low": 1, "medium": 2, "high": 8}
    engines.append(engine := engine_for(tiny=tiny_config(tiny_folders.sd, steps=steps)))
    loop_thread: list[bool] = []
    figures: list[int] = []

    def record(figure: int) -> None:
        loop_thread.append(asyncio.get_running_loop() is not None)
        figures.append(figure)

    await engine.generate(request(quality="high", progress=record))
    assert figures[-1] == 100
    assert figures == sorted(set(figures)), figures
    assert len(figures) == 8 + 1  # one figure per step, then the delivered image
    assert all(loop_thread)


async def test_a_failing_progress_callback_does_not_fail_the_generation(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine]
) -> None:
    engines.append(engine := engine_for(tiny=tiny_config(tiny_folders.sd)))

    def broken(figure: int) -> None:
        raise RuntimeError("progress sink down")

    image = await engine.generate(request(progress=broken))
    assert (image.width, image.height) == (1024, 1024)


async def test_high_quality_can_refine_at_the_output_size(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine]
) -> None:
    table = tiny_config(tiny_folders.sd, refine_strength=0.5, refine_max_pixels=128 * 128)
    engines.append(engine := engine_for(tiny=table))
    figures: list[int] = []
    refined = await engine.generate(
        request(quality="high", width=1536, height=864, progress=figures.append)
    )
    # sd-turbo: 4 steps, then 4 × 0.5 = 2 more at about 128² instead of 64².
    assert refined.usage["steps"] == 4 + 2
    assert (refined.width, refined.height) == (1536, 864)
    assert figures[-1] == 100 and figures == sorted(set(figures))
    # Only high quality spends the second pass.
    assert (await engine.generate(request(quality="medium"))).usage["steps"] == 2


# References ---------------------------------------------------------------------------------


async def test_image_to_image_starts_from_the_first_reference(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine]
) -> None:
    engines.append(engine := engine_for(tiny=tiny_config(tiny_folders.sdxl)))
    task = "image_refs"
    red = await engine.generate(request(task_id=task, references=(png_reference("red"),)))
    red_again = await engine.generate(
        request(task_id=task, references=(png_reference("red"), png_reference("blue")))
    )
    blue = await engine.generate(request(task_id=task, references=(png_reference("blue"),)))
    assert red.data == red_again.data  # only the first reference is the starting image
    # Random weights follow their input only loosely, but they do follow it.
    assert difference(red.data, blue.data) > 0.05
    # A turbo model's single low-quality step at strength 0.5 would be int(0.5) = 0 steps
    # inside diffusers; the engine lengthens the schedule so that one step runs.
    assert red.usage["steps"] == 1


def test_the_steps_times_strength_guard() -> None:
    assert image_to_image_steps(1, 0.5) == 2
    assert image_to_image_steps(4, 0.5) == 4
    assert image_to_image_steps(1, 0.3) == 4
    for steps in range(1, 20):
        for strength in (0.05, 0.1, 0.3, 0.5, 0.65, 0.8, 1.0):
            assert int(image_to_image_steps(steps, strength) * strength) >= 1


async def test_an_ip_adapter_folder_steers_with_every_reference(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine]
) -> None:
    engines.append(engine := engine_for(tiny=tiny_config(tiny_folders.sd_ip_adapter)))
    task = "image_ip"
    plain = await engine.generate(request(task_id=task))
    one = await engine.generate(request(task_id=task, references=(png_reference("red"),)))
    two = await engine.generate(
        request(task_id=task, references=(png_reference("red"), png_reference("blue")))
    )
    # Without references the adapter is at scale 0: the same image as without an adapter.
    engines.append(bare := engine_for(tiny=tiny_config(tiny_folders.sd)))
    assert plain.data == (await bare.generate(request(task_id=task))).data
    assert difference(plain.data, one.data) > 0.05
    assert difference(one.data, two.data) > 0.05  # the second reference counts too


async def test_an_undecodable_reference_fails_the_task_for_good(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine]
) -> None:
    engines.append(engine := engine_for(tiny=tiny_config(tiny_folders.sdxl)))
    broken = ReferenceImage(
        url="https://example.test/x.png",
        data=b"\x89PNG not really",
        format="PNG",
        width=10,
        height=10,
    )
    with pytest.raises(EngineError, match="reference 1 could not be decoded") as raised:
        await engine.generate(request(references=(broken,)))
    assert raised.value.retryable is False


# Batching, cancellation, shutdown -----------------------------------------------------------


async def test_queued_compatible_tasks_share_pipeline_calls(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine], caplog: pytest.LogCaptureFixture
) -> None:
    # CUDA batches by default; max_batch forces the same path on CPU.
    batched = engine_for(
        tiny=tiny_config(tiny_folders.sdxl, max_batch=3),
        slow=tiny_config(tiny_folders.sdxl, steps={"low": 40, "medium": 40, "high": 40}),
    )
    engines.append(batched)
    await batched.generate(request())  # loaded: its max batch is known
    caplog.set_level(logging.DEBUG, logger="imageforge.engines.diffusers.engine")
    blocker = asyncio.create_task(batched.generate(request(model="slow")))
    await asyncio.sleep(0)
    tasks = [f"image_batch_{i}" for i in range(5)]
    wanted = [request(task_id=t, width=1024, height=768) for t in tasks[:4]]
    wanted.append(request(task_id=tasks[4], width=768, height=1024))  # another size
    images = await asyncio.gather(*(batched.generate(r) for r in wanted))
    await blocker
    sizes = [
        record.getMessage().split(" ")[2]
        for record in caplog.records
        if record.getMessage().startswith("batch of")
    ]
    # The slow one alone, then the four alike as three and one, the other size alone.
    assert sizes == ["1", "3", "1", "1"], sizes
    # Each image keeps its own seed's noise: batched or not, the same picture.
    engines.append(alone := engine_for(tiny=tiny_config(tiny_folders.sdxl)))
    for want, image in zip(wanted, images, strict=True):
        single = await alone.generate(want)
        assert image.usage == single.usage
        assert difference(image.data, single.data) < 1.0


async def test_a_cancelled_generation_stops_at_its_next_step(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine]
) -> None:
    slow = {"low": 500, "medium": 500, "high": 500}
    engine = engine_for(
        slow=tiny_config(tiny_folders.sd, steps=slow), tiny=tiny_config(tiny_folders.sd)
    )
    engines.append(engine)
    await engine.generate(request())
    figures: list[int] = []
    stepping = asyncio.Event()

    def record(figure: int) -> None:
        figures.append(figure)
        stepping.set()

    job = asyncio.create_task(engine.generate(request(model="slow", progress=record)))
    await asyncio.wait_for(stepping.wait(), timeout=30)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    started = time.monotonic()
    await engine.generate(request())
    waited = time.monotonic() - started
    print(f"next generation after a cancel: {waited:.2f}s")
    # 500 steps take seconds; the thread was free again after about one.
    assert waited < 3.0
    assert max(figures) < 50


async def test_aclose_fails_queued_tasks_as_retryable(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine]
) -> None:
    slow = {"low": 500, "medium": 500, "high": 500}
    engine = engine_for(slow=tiny_config(tiny_folders.sd, steps=slow))
    engines.append(engine)
    running = asyncio.create_task(engine.generate(request(model="slow")))
    queued = asyncio.create_task(engine.generate(request(model="slow")))
    await asyncio.sleep(0.2)
    await engine.aclose()
    for job in (running, queued):
        with pytest.raises(EngineError, match="shut down") as raised:
            await job
        assert raised.value.retryable is True


async def test_an_unknown_model_is_refused_for_good(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine]
) -> None:
    engines.append(engine := engine_for(tiny=tiny_config(tiny_folders.sd)))
    with pytest.raises(EngineError, match="'other' is not configured") as raised:
        await engine.generate(request(model="other"))
    assert raised.value.retryable is False


async def test_a_device_the_machine_lacks_fails_its_tasks_for_good(
    tiny_folders: TinyFolders, engines: list[DiffusersEngine], caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    engines.append(engine := engine_for(tiny=tiny_config(tiny_folders.sd, device="cuda:7")))
    with pytest.raises(EngineError, match=r"device 'cuda:7' is configured but") as raised:
        await engine.generate(request())
    assert raised.value.retryable is False
    # The preload at start-up already said so in the log.
    assert any("could not load diffusers model 'tiny'" in r.getMessage() for r in caplog.records)


# Start-up errors ----------------------------------------------------------------------------


def startup_error(**table: Any) -> str:
    with pytest.raises(ConfigurationError) as raised:
        DiffusersEngine({"tiny": DiffusersModelConfig(**table)}, preload=False)
    return raised.value.message


def test_a_missing_folder_is_refused_at_start_up(tmp_path: Path) -> None:
    message = startup_error(path=tmp_path / "nowhere")
    assert f"model folder {tmp_path / 'nowhere'} does not exist" in message


def test_a_hub_id_is_refused_with_the_download_command() -> None:
    message = startup_error(path="stabilityai/sd-turbo")
    assert "'stabilityai/sd-turbo' is not a local folder" in message
    assert "huggingface-cli download stabilityai/sd-turbo --local-dir" in message


def test_a_folder_that_is_not_a_diffusers_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert "no model_index.json" in startup_error(path=tmp_path)


def test_a_family_that_does_not_match_the_folder_is_refused(tiny_folders: TinyFolders) -> None:
    message = startup_error(path=tiny_folders.sd, family="sdxl")
    assert "expects StableDiffusionXLPipeline" in message


def test_an_unknown_scheduler_is_refused_at_start_up(tiny_folders: TinyFolders) -> None:
    assert "no scheduler 'NoSuchScheduler'" in startup_error(
        path=tiny_folders.sd, scheduler="NoSuchScheduler"
    )


def test_a_missing_local_extra_is_named_at_start_up(
    tiny_folders: TinyFolders, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an installation without the extra looks like to the import system.
    monkeypatch.setitem(sys.modules, "diffusers", None)
    message = startup_error(path=tiny_folders.sd)
    assert "needs the 'local' extra (missing: diffusers)" in message
    assert "pip install 'imageforge[local]'" in message


def test_a_model_routed_to_diffusers_needs_its_table(tiny_folders: TinyFolders) -> None:
    settings = Settings(
        models={
            "gpt-image-2": {"engine": "diffusers", "diffusers": tiny_config(tiny_folders.sd)},
            "gpt-image-2-r": {"engine": "diffusers"},
        }
    )
    with pytest.raises(ConfigurationError, match=r"'gpt-image-2-r' is routed to the diffusers"):
        build_engine("diffusers", settings)


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"strength": {"low": 0, "medium": 0.5, "high": 0.5}}, "strength"),
        ({"steps": {"low": 0, "medium": 1, "high": 1}}, "steps.low"),
        ({"device": "tpu"}, "device"),
        ({"device": "cudax"}, "device"),
        ({"guidance": {"low": -1, "medium": 0, "high": 0}}, "guidance"),
        ({"scheduler": "fast"}, "scheduler"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_tables_name_the_field(table: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(models={"m": {"engine": "diffusers", "diffusers": {"path": "/m", **table}}})
    assert field in str(raised.value)


async def test_a_task_runs_through_the_server_and_records_its_seed(
    tiny_folders: TinyFolders, tmp_path: Path
) -> None:
    models = {
        "gpt-image-2": {"engine": "diffusers", "diffusers": tiny_config(tiny_folders.sd)},
        "gpt-image-2-r": {"engine": "diffusers", "diffusers": tiny_config(tiny_folders.sdxl)},
    }
    lifespan, harness = await start_harness(make_settings(tmp_path / "data", models=models))
    try:
        key = await harness.new_key()
        created = await harness.create(key, prompt="a red fox", ratio="16:9", quality="medium")
        assert created.status_code == 200, created.text
        result = await harness.wait_terminal(key, created.json()["id"])
        assert result["status"] == "completed", result
        task = await harness.runtime.store.get_task(created.json()["id"])
        assert task is not None and task.usage is not None
        assert task.usage["steps"] == 2 and 0 <= task.usage["seed"] < 2**32
        image = await harness.client.get(result["image_url"])
        assert Image.open(io.BytesIO(image.content)).size == (1536, 864)
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)

"""The offline engine: exact sizes, byte-for-byte determinism, visible differences, detail by
quality, references composited, and rendering in a process pool off the event loop."""

from __future__ import annotations

import asyncio
import colorsys
import dataclasses
import io
import itertools
import os
import signal
import struct
import time
from collections.abc import Callable

import pytest
from PIL import Image, ImageChops, ImageFilter, ImageStat

from imageforge.engines.base import (
    EngineError,
    GeneratedImage,
    GenerationRequest,
    Quality,
    ReferenceImage,
)
from imageforge.engines.offline import OfflineEngine, render_png
from imageforge.engines.offline.caption import layout_caption
from imageforge.engines.offline.progress import CAPTIONED, PLANNED, SCENE_PAINTED

RED = (255, 0, 0)


def request(
    prompt: str = "A lighthouse on a rocky island at dusk",
    width: int = 1024,
    height: int = 1024,
    quality: Quality | None = "medium",
    references: tuple[ReferenceImage, ...] = (),
) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt,
        width=width,
        height=height,
        quality=quality,
        model="gpt-image-2",
        references=references,
        task_id="task_test",
    )


def reference(
    colour: tuple[int, int, int], size: tuple[int, int] = (300, 200), fmt: str = "PNG"
) -> ReferenceImage:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return ReferenceImage(
        url="https://example.com/ref",
        data=out.getvalue(),
        format=fmt,
        width=size[0],
        height=size[1],
    )


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.convert("RGB")


def render(req: GenerationRequest) -> Image.Image:
    return decode(render_png(req))


def colour_counts(image: Image.Image) -> dict[tuple[int, ...], int]:
    colours = image.getcolors(image.width * image.height)
    assert colours is not None
    return {rgb: n for n, rgb in colours if isinstance(rgb, tuple)}


def count_pixels(image: Image.Image, predicate: Callable[[tuple[int, ...]], bool]) -> int:
    return sum(n for rgb, n in colour_counts(image).items() if predicate(rgb))


def is_red(rgb: tuple[int, ...]) -> bool:
    r, g, b = rgb
    return r > 220 and g < 40 and b < 40


def hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def edge_energy(image: Image.Image) -> float:
    return float(ImageStat.Stat(image.convert("L").filter(ImageFilter.FIND_EDGES)).mean[0])


def mean_abs_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


# --------------------------------------------------------------------------------------------
# Sizes and encoding
# --------------------------------------------------------------------------------------------

SIZES = [
    (1024, 1024),
    (1536, 864),
    (864, 1536),
    (3840, 2160),
    (2160, 3840),
    (3840, 1648),
    (2016, 864),
    # The extremes the size rules allow: 3:1 both ways and the smallest pixel count.
    (1536, 512),
    (512, 1536),
    (1024, 640),
    (640, 1024),
]


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_renders_exactly_the_requested_size(width: int, height: int) -> None:
    # Guard the test data itself: every size here must be one the server accepts.
    assert width % 16 == 0 and height % 16 == 0
    assert 655_360 <= width * height <= 8_294_400
    assert max(width, height) <= 3 * min(width, height)

    image = render(request(width=width, height=height, quality="low", references=(reference(RED),)))

    assert image.size == (width, height)


def test_png_carries_no_metadata() -> None:
    data = render_png(request(quality="low"))

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks = []
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    # Nothing that could vary between runs: no tIME, no text, no gamma or physical size.
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}
    assert decode(data).mode == "RGB"


# --------------------------------------------------------------------------------------------
# Determinism and variety
# --------------------------------------------------------------------------------------------


def test_same_request_gives_identical_bytes() -> None:
    refs = (reference(RED), reference((10, 120, 240), fmt="JPEG"))
    req = request(quality="high", references=refs)

    assert render_png(req) == render_png(req)
    # A fresh but equal request (new objects, same content) gives the same bytes too.
    again = request(
        quality="high", references=(reference(RED), reference((10, 120, 240), fmt="JPEG"))
    )
    assert render_png(again) == render_png(req)


def test_task_id_and_model_do_not_change_the_picture() -> None:
    a = request()
    b = GenerationRequest(
        prompt=a.prompt,
        width=a.width,
        height=a.height,
        quality=a.quality,
        model="other",
        task_id="x",
    )

    assert render_png(a) == render_png(b)


def test_no_quality_draws_medium_detail_and_captions_the_resolution_tier() -> None:
    # gpt-image-2-r ignores quality (its quote says quality: null): its caption names the
    # resolution tier it is billed by instead of a quality that does not apply.
    plain, medium = render(request(quality=None)), render(request(quality="medium"))
    top = layout_caption("A lighthouse on a rocky island at dusk", 1024, 1024, "1k", 0).top

    assert plain.crop((0, 0, 1024, top)).tobytes() == medium.crop((0, 0, 1024, top)).tobytes()
    assert plain.crop((0, top, 1024, 1024)).tobytes() != medium.crop((0, top, 1024, 1024)).tobytes()
    assert layout_caption("x", 1024, 1024, "1k", 0).label.endswith("1024 x 1024  ·  1K")
    assert layout_caption("x", 1024, 1024, "medium", 2).label.endswith("MEDIUM  ·  2 REFERENCES")


def test_different_prompts_give_clearly_different_pictures() -> None:
    prompts = ["a cat", "a cat.", "a dog", "lighthouse at dusk", "city skyline at night"]
    # Compare the scene above the caption band, so differing caption text alone cannot pass.
    scenes = [render(request(p, 768, 768)).crop((0, 0, 768, 480)) for p in prompts]

    for a, b in itertools.combinations(scenes, 2):
        assert mean_abs_difference(a, b) > 10


def test_different_references_change_the_picture() -> None:
    plain = render_png(request(references=(reference((0, 0, 255)),)))

    assert render_png(request(references=(reference((0, 0, 254)),))) != plain


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "x" * 5000,  # one unbreakable word
        "a long prompt " * 2300,  # ~32k characters
        "tabs\tnew\nlines\x00and \ud800 lone surrogates",
        "一只猫坐在窗台上 🐈 — ünïcödé",
    ],
)
def test_any_prompt_renders(prompt: str) -> None:
    started = time.perf_counter()
    image = render(request(prompt, quality="low"))

    assert image.size == (1024, 1024)
    # The caption only ever looks at the start of the prompt.
    assert time.perf_counter() - started < 2


# --------------------------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["p0", "p5", "p12", "a quiet harbour", "dunes at noon"])
def test_higher_quality_draws_more_detail(prompt: str) -> None:
    images = {q: render(request(prompt, 768, 768, q)) for q in ("low", "medium", "high")}
    colours = {q: len(colour_counts(im)) for q, im in images.items()}
    edges = {q: edge_energy(im) for q, im in images.items()}

    assert colours["low"] < colours["medium"] < colours["high"]
    assert edges["low"] < edges["medium"] < edges["high"]


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def test_reference_is_composited_as_a_thumbnail() -> None:
    without = render(request(quality="low"))
    with_ref = render(request(quality="low", references=(reference(RED),)))

    bottom = (0, 512, 1024, 1024)
    assert count_pixels(without.crop(bottom), is_red) < 500
    # One thumbnail at 1024² is well over 100x100 pixels of the reference's own colour.
    assert count_pixels(with_ref.crop(bottom), is_red) > 100 * 100


def test_reference_colour_tints_the_palette() -> None:
    for prompt in ("p0", "p1", "p2", "p3"):
        sky = render(request(prompt, quality="low", references=(reference(RED),))).crop(
            (0, 0, 1024, 64)
        )
        r, g, b = ImageStat.Stat(sky).mean

        assert r > g and r > b, prompt


@pytest.mark.parametrize(("width", "height"), [(1024, 1024), (1536, 512), (512, 1536)])
def test_sixteen_references_all_fit_legibly(width: int, height: int) -> None:
    colours = [hsv(i / 16, 1.0, 1.0 if i % 2 else 0.7) for i in range(16)]
    refs = tuple(reference(c, size=(120 + 10 * i, 90)) for i, c in enumerate(colours))

    image = render(request(width=width, height=height, quality="low", references=refs))

    counts = colour_counts(image)
    for colour in colours:
        # Each thumbnail shows at least ~55x55 pixels of its reference.
        assert counts.get(colour, 0) >= 3000, colour


def test_undecodable_reference_is_a_permanent_error() -> None:
    broken = ReferenceImage(
        url="https://example.com/x", data=b"\x89PNG garbage", format="PNG", width=1, height=1
    )

    with pytest.raises(EngineError) as caught:
        render_png(request(references=(reference(RED), broken)))

    assert caught.value.retryable is False
    assert "reference image 1" in str(caught.value)


# --------------------------------------------------------------------------------------------
# The engine: process pool, event loop, shutdown
# --------------------------------------------------------------------------------------------


def test_engine_identity() -> None:
    assert OfflineEngine.name == "offline"
    with pytest.raises(ValueError):
        OfflineEngine(max_workers=0)


async def test_generate_renders_in_the_pool_without_blocking_the_loop() -> None:
    engine = OfflineEngine(max_workers=2)
    # Big PNG references make the render slow enough (~0.5 s) that blocking would show.
    heavy = tuple(reference((40 * i, 90, 200), size=(3000, 2000)) for i in range(4))
    big = request(width=3840, height=2160, quality="high", references=heavy)
    small = request("a small one", quality="low")
    broken = ReferenceImage(
        url="https://example.com/x", data=b"GIF89a...", format="GIF", width=1, height=1
    )

    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    try:
        results = await asyncio.gather(engine.generate(big), engine.generate(small))
        with pytest.raises(EngineError) as caught:
            await engine.generate(request(references=(broken,)))
    finally:
        stop.set()
        await beat
        await engine.aclose()

    for result, req in zip(results, (big, small), strict=True):
        assert isinstance(result, GeneratedImage)
        assert result.content_type == "image/png"
        assert (result.width, result.height) == (req.width, req.height)
        assert result.usage == {}
        # The worker process renders exactly what a direct call renders.
        assert result.data == render_png(req)
    assert caught.value.retryable is False
    assert max(gaps) < 0.15, max(gaps)


async def test_progress_follows_the_render_stages_and_changes_no_byte() -> None:
    engine = OfflineEngine()
    plain = request(width=2048, height=1152, quality="high")
    figures: list[int] = []
    try:
        reported = await engine.generate(dataclasses.replace(plain, progress=figures.append))
        unreported = await engine.generate(plain)
    finally:
        await engine.aclose()
    # Every stage's figure arrives, in order, before the engine's own 100.
    assert figures == [0, PLANNED, SCENE_PAINTED, CAPTIONED, 100]
    assert reported.data == unreported.data == render_png(plain)


async def test_a_dead_worker_is_retryable_and_the_next_call_gets_a_fresh_pool() -> None:
    engine = OfflineEngine()
    heavy = tuple(reference((40 * i, 90, 200), size=(3000, 2000)) for i in range(4))
    try:
        pending = asyncio.create_task(
            engine.generate(request(width=3840, height=2160, references=heavy))
        )
        for _ in range(1000):  # white-box: wait until the pool has started its worker
            if engine._pool is not None and engine._pool._processes:
                break
            await asyncio.sleep(0.005)
        assert engine._pool is not None
        for pid in list(engine._pool._processes):
            os.kill(pid, signal.SIGKILL)

        with pytest.raises(EngineError) as caught:
            await pending
        assert caught.value.retryable is True

        result = await engine.generate(request(quality="low"))
        assert result.data == render_png(request(quality="low"))
    finally:
        await engine.aclose()


async def test_aclose_without_use_and_twice() -> None:
    engine = OfflineEngine()

    await engine.aclose()  # never used: the pool was never created
    await engine.aclose()

"""Reference decoding within bounds: every decode holds its pixels in one budget per
process, and an image larger than the task needs is decoded reduced.

The budget's own instrument (`PixelBudget.peak`) is what is asserted, with a lowered cap
and small images, so no test needs a 49-megapixel image to show the bound holds.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from imageforge.references import FetchLimits, PixelBudget, ReferenceFetcher, ReferenceFetchError
from imageforge.references import images as images_module
from imageforge.references.images import Inspected, cover_size, decode_image
from imageforge.testing.engines import ScriptedEngine
from tests.conftest import ApiHarness, make_settings, start_harness


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Not a flat colour, so a decode that skipped pixels would show."""
    image = Image.linear_gradient("L").resize((width, height))
    return image.convert(mode)


SQUARE_300 = encoded(gradient(300, 300), "PNG")
WIDE_PNG = encoded(gradient(2000, 1000), "PNG")
BIG_JPEG = encoded(gradient(4000, 3000), "JPEG", quality=80)
PALETTE_GIF = encoded(gradient(1200, 800, "RGB").convert("P"), "GIF", transparency=0)
SMALL_PNG = encoded(gradient(200, 100), "PNG")

FILES = {
    "/square.png": SQUARE_300,
    "/wide.png": WIDE_PNG,
    "/big.jpg": BIG_JPEG,
    "/palette.gif": PALETTE_GIF,
    "/small.png": SMALL_PNG,
    "/truncated.jpg": BIG_JPEG[: len(BIG_JPEG) // 2],
}


class _Files(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        body = FILES.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
async def fetcher() -> AsyncIterator[ReferenceFetcher]:
    made = ReferenceFetcher(
        allowlist=["127.0.0.1"], limits=FetchLimits(max_decoding_pixels=200_000)
    )
    try:
        yield made
    finally:
        await made.aclose()


# --- the budget -------------------------------------------------------------------------


async def test_the_budget_admits_what_fits_and_queues_the_rest_in_order() -> None:
    budget = PixelBudget(100)
    order: list[str] = []
    release = {name: asyncio.Event() for name in ("a", "b", "big", "c")}

    async def use(name: str, pixels: int) -> None:
        async with budget.hold(pixels):
            order.append(name)
            await release[name].wait()

    a = asyncio.create_task(use("a", 60))
    await asyncio.sleep(0)
    b = asyncio.create_task(use("b", 30))
    big = asyncio.create_task(use("big", 500))  # more than the whole budget: waits to be alone
    c = asyncio.create_task(use("c", 10))  # would fit now, but comes after `big`
    await asyncio.sleep(0.01)
    assert order == ["a", "b"] and budget.in_use == 90
    release["a"].set()
    release["b"].set()
    await asyncio.sleep(0.01)
    assert order == ["a", "b", "big"] and budget.in_use == 100
    release["big"].set()
    await asyncio.sleep(0.01)
    assert order == ["a", "b", "big", "c"]
    release["c"].set()
    await asyncio.gather(a, b, big, c)
    assert budget.in_use == 0 and budget.peak == 100


async def test_a_cancelled_waiter_gives_its_place_to_the_next() -> None:
    budget = PixelBudget(10)
    holder = asyncio.Event()

    async def hold(pixels: int, until: asyncio.Event) -> None:
        async with budget.hold(pixels):
            await until.wait()

    first = asyncio.create_task(hold(6, holder))
    await asyncio.sleep(0)
    blocked = asyncio.create_task(hold(10, asyncio.Event()))  # waits for all 10
    small_done = asyncio.Event()
    small_done.set()
    small = asyncio.create_task(hold(4, small_done))  # fits, but queued behind `blocked`
    await asyncio.sleep(0.01)
    assert not small.done()
    blocked.cancel()
    await asyncio.sleep(0.01)
    assert small.done() and budget.in_use == 6
    holder.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert budget.in_use == 0


# --- fetching within the budget ----------------------------------------------------------


async def test_concurrent_fetches_never_hold_more_decoded_pixels_than_the_budget(
    files: str, fetcher: ReferenceFetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three tasks of four 300x300 references at once (12 x 90,000 pixels) against a
    200,000-pixel budget: at most two decodes at a time, and every reference arrives."""
    decoding_now = 0
    most_at_once = 0
    lock = threading.Lock()
    real_decode = images_module.decode_image

    def counting_decode(
        data: bytes, inspected: Inspected, fit: tuple[int, int] | None
    ) -> tuple[bytes, str, int, int]:
        nonlocal decoding_now, most_at_once
        with lock:
            decoding_now += inspected.decoded_pixels
            most_at_once = max(most_at_once, decoding_now)
        try:
            return real_decode(data, inspected, fit)
        finally:
            with lock:
                decoding_now -= inspected.decoded_pixels

    monkeypatch.setattr("imageforge.references.fetcher.decode_image", counting_decode)
    urls = [f"{files}/square.png"] * 4
    results = await asyncio.gather(*(fetcher.fetch_all(urls, fit=(1024, 1024)) for _ in range(3)))
    assert all(len(refs) == 4 and refs[0].data == SQUARE_300 for refs in results)
    print(f"peak decoded pixels: {fetcher.decoding.peak:,} of {fetcher.decoding.capacity:,}")
    assert fetcher.decoding.peak <= 200_000 and most_at_once <= 200_000
    assert fetcher.decoding.in_use == 0


async def test_a_png_larger_than_the_task_needs_arrives_reduced_to_cover_it(
    files: str, fetcher: ReferenceFetcher
) -> None:
    [reference] = await fetcher.fetch_all([f"{files}/wide.png"], fit=(512, 512))
    assert (reference.format, reference.width, reference.height) == ("PNG", 1024, 512)
    with Image.open(io.BytesIO(reference.data)) as image:
        assert image.size == (1024, 512) and image.mode == "RGB"
    # PNG decodes whole: the budget held the full image while it did.
    assert fetcher.decoding.peak == 200_000  # 2,000,000 pixels, clamped to the budget


async def test_a_large_jpeg_is_decoded_at_a_draft_scale_that_still_covers_the_task(
    files: str,
) -> None:
    fetcher = ReferenceFetcher(allowlist=["127.0.0.1"])
    try:
        [reference] = await fetcher.fetch_all([f"{files}/big.jpg"], fit=(500, 500))
    finally:
        await fetcher.aclose()
    assert (reference.format, reference.width, reference.height) == ("PNG", 667, 500)
    # 4000x3000 decoded at 1/4 (1000x750): 1/8 would no longer cover 667x500.
    assert fetcher.decoding.peak == 1000 * 750


async def test_an_image_no_larger_than_needed_is_handed_on_as_sent(
    files: str, fetcher: ReferenceFetcher
) -> None:
    [reference] = await fetcher.fetch_all([f"{files}/small.png"], fit=(1024, 1024))
    assert reference.data == SMALL_PNG
    assert (reference.format, reference.width, reference.height) == ("PNG", 200, 100)


async def test_a_reduced_palette_image_keeps_its_transparency(
    files: str, fetcher: ReferenceFetcher
) -> None:
    [reference] = await fetcher.fetch_all([f"{files}/palette.gif"], fit=(300, 200))
    with Image.open(io.BytesIO(reference.data)) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (300, 200), "RGBA")


async def test_a_truncated_image_is_refused_however_it_is_decoded(
    files: str, fetcher: ReferenceFetcher
) -> None:
    for fit in (None, (256, 256)):
        with pytest.raises(ReferenceFetchError, match="corrupt or truncated"):
            await fetcher.fetch_all([f"{files}/truncated.jpg"], fit=fit)
    assert fetcher.decoding.in_use == 0


@pytest.mark.parametrize(
    ("size", "fit", "cover"),
    [
        ((4000, 3000), (500, 500), (667, 500)),
        ((3000, 4000), (1024, 576), (1024, 1366)),
        ((1000, 1000), (1024, 1024), (1000, 1000)),
        ((7000, 7000), (3840, 2160), (3840, 3840)),
        ((10, 5000), (16, 16), (10, 5000)),
    ],
)
def test_the_cover_size_keeps_the_aspect_and_never_grows(
    size: tuple[int, int], fit: tuple[int, int], cover: tuple[int, int]
) -> None:
    assert cover_size(*size, fit) == cover


def test_decode_image_reports_the_reduced_size_it_made() -> None:
    inspected = Inspected("PNG", 2000, 1000, 2_000_000)
    data, fmt, width, height = decode_image(WIDE_PNG, inspected, (100, 100))
    assert (fmt, width, height) == ("PNG", 200, 100)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (200, 100)


# --- through the worker --------------------------------------------------------------------


async def test_the_worker_hands_the_engine_references_reduced_to_the_task(
    files: str, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path / "data",
        reference_allowlist=["127.0.0.1"],
        reference_decoding_max_pixels=5_000_000,
    )
    lifespan, api = await start_harness(settings)
    engine = ScriptedEngine()
    api.runtime.engines["offline"] = engine  # the runner routes through this very dict
    try:
        await check_reduced_by_the_worker(api, engine, files)
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def check_reduced_by_the_worker(api: ApiHarness, engine: ScriptedEngine, files: str) -> None:
    key = await api.new_key()
    urls = [f"{files}/wide.png", f"{files}/small.png"]
    created = await api.create(key, size="1536x864", image_urls=urls)
    assert created.status_code == 200, created.text
    result = await api.wait_terminal(key, created.json()["id"])
    assert result["status"] == "completed", result
    [request] = engine.calls
    sizes = [(ref.width, ref.height) for ref in request.references]
    assert sizes == [(1728, 864), (200, 100)]  # 2000x1000 covers 1536x864 at 0.864
    fetcher = api.runtime.fetcher
    assert fetcher is not None and fetcher.decoding.capacity == 5_000_000
    # The PNG decodes whole; the small one may have been decoding beside it.
    assert 2_000_000 <= fetcher.decoding.peak <= 2_000_000 + 200 * 100
    assert fetcher.decoding.in_use == 0

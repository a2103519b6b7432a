"""The offline engine: renders in a low-priority process pool, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import io
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import ClassVar

from PIL import Image

from imageforge.engines.base import EngineError, GeneratedImage, GenerationRequest, Quality
from imageforge.engines.offline.caption import layout_caption, paint_caption
from imageforge.engines.offline.lexicon import read_prompt
from imageforge.engines.offline.plan import plan_scene
from imageforge.engines.offline.progress import (
    CAPTIONED,
    PLANNED,
    SCENE_PAINTED,
    ProgressChannel,
    install_sender,
    sender_for,
)
from imageforge.engines.offline.scene import paint_scene
from imageforge.engines.offline.style import (
    DETAILS,
    PNG_COMPRESS_LEVEL,
    UndecodableReference,
    scene_digest,
)
from imageforge.engines.offline.thumbnails import (
    average_colour,
    decode_reference,
    layout_thumbnails,
    paint_thumbnails,
)
from imageforge.lifeline import exit_with_parent
from imageforge.sizes import resolution_tier

# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    """How this server's offline engine renders; the same for every request it serves."""

    #: Font files tried before any font found on the machine, first to last; a file that
    #: cannot be read is skipped (`fonts.check_font_files` tells at start-up).
    font_files: tuple[str, ...] = ()


def render_png(request: GenerationRequest, options: RenderOptions | None = None) -> bytes:
    """Render `request` synchronously in this process and return the PNG bytes."""
    try:
        return render_png_bytes(*_render_args(request), options or RenderOptions())
    except UndecodableReference as exc:
        raise EngineError(str(exc), retryable=False) from exc


def render_png_bytes(
    prompt: str,
    width: int,
    height: int,
    quality: str | None,
    references: tuple[bytes, ...],
    options: RenderOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> bytes:
    """The worker-side entry point: plain, picklable arguments only (see `OfflineEngine`).
    `progress` is told how far along the render is as each stage ends (`progress.py`); it
    changes nothing in the picture."""
    options = options or RenderOptions()
    report = progress or (lambda _figure: None)
    if width < 1 or height < 1:
        raise ValueError(f"invalid size {width}x{height}")
    # Models that ignore quality get the middle level of detail, and a caption that names what
    # does apply to them: the resolution tier they are billed by, not a quality they never had.
    level: Quality = "low" if quality == "low" else "high" if quality == "high" else "medium"
    detail = DETAILS[level]
    digest = scene_digest(prompt, references)
    tier = level if quality is not None else resolution_tier(width, height)

    caption = layout_caption(prompt, width, height, tier, len(references), options.font_files)
    grid = layout_thumbnails(len(references), width, height, caption)
    thumbs = [decode_reference(data, i, grid.inner) for i, data in enumerate(references)]
    plan = plan_scene(digest, read_prompt(prompt), average_colour(thumbs))
    palette = plan.palette
    report(PLANNED)

    image = Image.new("RGB", (width, height), palette.sky_top)
    paint_scene(image, digest, plan, detail, caption.top)
    report(SCENE_PAINTED)
    paint_caption(image, caption, palette)
    paint_thumbnails(image, thumbs, grid, palette)
    report(CAPTIONED)

    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return out.getvalue()


class OfflineEngine:
    """Renders in a process pool, created on first use, so the event loop is never blocked."""

    name: ClassVar[str] = "offline"
    #: References are drawn into the picture: the worker fetches them.
    fetches_references: ClassVar[bool] = True

    def __init__(self, *, max_workers: int = 1, options: RenderOptions | None = None) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        #: A picklable value handed to every render.
        self.render_options = options or RenderOptions()
        self._pool: ProcessPoolExecutor | None = None
        #: The pool's progress pipe, made and closed with it.
        self._channel: ProgressChannel | None = None

    def _executor(self) -> tuple[ProcessPoolExecutor, ProgressChannel]:
        if self._pool is None or self._channel is None:
            self._channel = ProgressChannel()
            self._pool = ProcessPoolExecutor(
                max_workers=self._max_workers,
                mp_context=_process_context(),
                initializer=_prepare_render_process,
                initargs=(os.getpid(), self._channel.sender),
            )
        return self._pool, self._channel

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        pool, channel = self._executor()
        loop = asyncio.get_running_loop()
        # 0 when the render is handed to the pool (it may wait there for a free process),
        # the render's own figures as its stages end, 100 once its bytes are back.
        if request.progress is not None:
            request.progress(0)
        try:
            async with channel.listening(request.progress) as token:
                data = await loop.run_in_executor(
                    pool, _render_reporting, token, *_render_args(request), self.render_options
                )
        except UndecodableReference as exc:
            raise EngineError(str(exc), retryable=False) from exc
        except BrokenProcessPool as exc:
            # A worker died (most likely killed for memory); a fresh pool may well succeed.
            if self._pool is pool:
                self._pool, self._channel = None, None
            pool.shutdown(wait=False, cancel_futures=True)
            # Its processes are gone (the executor terminates the rest): nothing writes to
            # the pipe any more.
            await asyncio.to_thread(channel.close)
            raise EngineError("the offline renderer process died", retryable=True) from exc
        if request.progress is not None:
            request.progress(100)
        return GeneratedImage(
            data=data,
            content_type="image/png",
            width=request.width,
            height=request.height,
            usage={},
        )

    async def aclose(self) -> None:
        """Stop the workers, dropping renders not yet started. A later call starts a new pool."""
        pool, self._pool = self._pool, None
        channel, self._channel = self._channel, None
        if pool is not None:
            # Joining the workers can take a moment; do it off the event loop.
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        if channel is not None:
            await asyncio.to_thread(channel.close)


def _render_reporting(
    token: int | None,
    prompt: str,
    width: int,
    height: int,
    quality: str | None,
    references: tuple[bytes, ...],
    options: RenderOptions,
) -> bytes:
    """`render_png_bytes` in a render process, its figures sent up the pool's pipe."""
    progress = sender_for(token)
    return render_png_bytes(prompt, width, height, quality, references, options, progress)


def _prepare_render_process(parent_pid: int, progress: Connection) -> None:
    """Run first in every render process."""
    install_sender(progress)
    # A render process is only any use to the process that started it: when that one is
    # killed outright, this one goes too (and with the last of them, the resource tracker
    # whose pipe they hold), instead of waiting for work forever.
    exit_with_parent(parent_pid, signal.SIGKILL)
    # Ctrl-C reaches the whole terminal's process group; stopping is the parent's business
    # (it shuts the pool down), and a KeyboardInterrupt here only prints a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Renders are batch work; the API process sharing these cores answers polls. A lower
    # scheduling priority keeps poll latency flat while a 4K image renders.
    with contextlib.suppress(OSError):
        os.nice(10)


def _process_context() -> multiprocessing.context.BaseContext:
    # Not fork: the server has an event loop and threads that a forked child would inherit in
    # whatever state they were in. Not forkserver either: its first use blocks the calling thread
    # (the event loop) until the server process has booted. A spawned worker is slower to start,
    # but that happens once per worker and entirely off the loop.
    return multiprocessing.get_context("spawn")


def _render_args(
    request: GenerationRequest,
) -> tuple[str, int, int, str | None, tuple[bytes, ...]]:
    return (
        request.prompt,
        request.width,
        request.height,
        request.quality,
        tuple(ref.data for ref in request.references),
    )

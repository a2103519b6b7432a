"""The diffusers engine: local diffusion models, one loaded instance per worker process.

All torch work runs on one thread of the engine's own, so the event loop never waits on a
denoising step and pipelines are never used from two threads. Requests queue in front of that
thread; whenever it is free it takes the oldest one together with every queued request that
can share its pipeline call (same model, mode, size, steps and guidance), up to the model's
`max_batch` (4 on CUDA, 1 elsewhere). So batching costs no added latency: it only gathers what
was waiting anyway. Decoding references and encoding the PNG run beside it, on the default
executor, so the next batch starts while the last one is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

from PIL import Image

from imageforge.engines.base import EngineError, GeneratedImage, GenerationRequest
from imageforge.engines.diffusers.config import DiffusersModelConfig
from imageforge.engines.diffusers.loading import (
    LocalModel,
    check_scheduler,
    prepare_model,
    require_local_extra,
)
from imageforge.engines.diffusers.pipelines import Batch, Inputs, LoadedModel
from imageforge.engines.diffusers.plan import Plan, plan_generation
from imageforge.engines.diffusers.sizes import fit_exactly

log = logging.getLogger(__name__)

#: Diffusion output is photographic: higher zlib levels cost several times the time for a
#: few percent of size.
PNG_COMPRESS_LEVEL = 1
#: References steer an IP-Adapter through a 224 px CLIP encoder; larger copies only cost memory.
IP_REFERENCE_EDGE = 512
_MESSAGE_LIMIT = 500


class DiffusersEngine:
    """Generates with local diffusers model folders, one per public model name."""

    name: ClassVar[str] = "diffusers"
    #: References are used as images (image-to-image, IP-Adapter): the worker fetches them.
    fetches_references: ClassVar[bool] = True

    def __init__(self, models: Mapping[str, DiffusersModelConfig], *, preload: bool = True) -> None:
        require_local_extra()
        self._models = {name: prepare_model(name, config) for name, config in models.items()}
        for model in self._models.values():
            if model.config.scheduler is not None:
                check_scheduler(model.name, model.config.scheduler)
        self._session: _Session | None = None
        if preload and self._models:
            # Load while the worker starts rather than in the first task.
            self._session = _Session()
            self._session.preload(list(self._models.values()))

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        model = self._models.get(request.model)
        if model is None:
            raise EngineError(
                f"model {request.model!r} is not configured for the diffusers engine "
                f"(configured: {', '.join(sorted(self._models)) or 'none'})",
                retryable=False,
            )
        plan = plan_generation(model, request)
        # Decoding runs off the loop; a text-only plan has nothing to decode (and so joins the
        # queue in the order its caller asked).
        inputs = (
            await asyncio.to_thread(prepare_inputs, plan, request)
            if request.references
            else Inputs()
        )
        session = self._session = self._session or _Session()
        loop = asyncio.get_running_loop()
        job = _Job(plan, inputs, loop, loop.create_future(), request.progress)
        session.submit(job)
        try:
            image = await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            session.withdraw(job)
            raise
        data = await asyncio.to_thread(encode_png, image, plan.width, plan.height)
        job.report_here(100)
        return GeneratedImage(
            data=data,
            content_type="image/png",
            width=plan.width,
            height=plan.height,
            usage={"seed": plan.seed, "steps": plan.steps_run},
        )

    async def aclose(self) -> None:
        """Stop the thread and free the models; queued requests fail as retryable. A later
        `generate` starts afresh (and loads again)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def prepare_inputs(plan: Plan, request: GenerationRequest) -> Inputs:
    """Decode the references a plan uses, sized for it."""
    if plan.mode == "text":
        return Inputs()
    if plan.mode == "image":  # only the first reference is used
        first = _decode(0, request.references[0].data)
        return Inputs(init_image=fit_exactly(first, plan.first.width, plan.first.height))
    references = [_decode(index, ref.data) for index, ref in enumerate(request.references)]
    for reference in references:
        reference.thumbnail((IP_REFERENCE_EDGE, IP_REFERENCE_EDGE), Image.Resampling.LANCZOS)
    return Inputs(references=references)


def encode_png(image: Image.Image, width: int, height: int) -> bytes:
    out = io.BytesIO()
    fit_exactly(image, width, height).save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def _decode(index: int, data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError) as exc:
        raise EngineError(
            f"reference {index + 1} could not be decoded: {exc}", retryable=False
        ) from None


@dataclass(eq=False)
class _Job:
    plan: Plan
    inputs: Inputs
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Image.Image]
    progress: Callable[[int], None] | None
    #: Set on the loop when the caller gave up; read by the engine's thread.
    cancelled: bool = False
    _reported: int = field(default=-1, repr=False)

    def report(self, figure: int) -> None:
        """From the engine's thread: hand a progress figure to the loop, once per rise."""
        if self.progress is not None and figure > self._reported:
            self._reported = figure
            self._call_soon(self.report_here, figure)

    def report_here(self, figure: int) -> None:
        if self.progress is None or self.cancelled:
            return
        try:
            self.progress(figure)
        except Exception:  # a broken progress sink must not fail the generation
            log.exception("progress callback of %s failed", self.plan.model.name)

    def settle(self, outcome: Image.Image | BaseException) -> None:
        self._call_soon(self._settle_here, outcome)

    def _settle_here(self, outcome: Image.Image | BaseException) -> None:
        if self.future.done():
            return
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)

    def _call_soon(self, callback: Callable[..., None], *args: object) -> None:
        # The loop may be gone (a caller that stopped without aclose); nobody is waiting then.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(callback, *args)


class _Session:
    """The engine's thread, its queue and the models it loaded. `aclose` ends a session."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffusers")
        self._lock = threading.Lock()
        self._pending: deque[_Job] = deque()
        self._draining = False
        self._closing = False
        #: Only the session's thread touches these.
        self._loaded: dict[tuple[object, ...], LoadedModel] = {}

    def preload(self, models: list[LocalModel]) -> None:
        self._executor.submit(self._preload, models)

    def submit(self, job: _Job) -> None:
        with self._lock:
            self._pending.append(job)
            if self._draining:
                return
            self._draining = True
        self._executor.submit(self._drain)

    def withdraw(self, job: _Job) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._pending.remove(job)

    async def close(self) -> None:
        with self._lock:
            self._closing = True
            pending = list(self._pending)
            self._pending.clear()
        for job in pending:
            job.settle(EngineError("the diffusers engine shut down first", retryable=True))
        await asyncio.to_thread(self._shut_down)

    def _shut_down(self) -> None:
        self._executor.shutdown(wait=True)  # a running batch stops at its next step
        self._loaded.clear()
        _release_gpu_memory()

    # The session's thread --------------------------------------------------------------

    def _preload(self, models: list[LocalModel]) -> None:
        for model in models:
            if self._closing:
                return
            try:
                self._load(model)
            except Exception as exc:
                # The first task of this model tries again and fails with this message.
                log.error("could not load diffusers model %r: %s", model.name, exc)

    def _drain(self) -> None:
        while True:
            with self._lock:
                jobs = [] if self._closing else self._take()
                if not jobs:
                    self._draining = False
                    return
            self._run(jobs)

    def _take(self) -> list[_Job]:
        """The oldest live job and the queued ones that can share its pipeline call."""
        pending = self._pending
        while pending and pending[0].cancelled:
            pending.popleft()
        if not pending:
            return []
        head = pending.popleft()
        key = head.plan.batch_key
        loaded = self._loaded.get(head.plan.model.load_key)
        limit = loaded.max_batch if loaded is not None else 1
        jobs = [head]
        if key is not None:
            for job in list(pending):
                if len(jobs) >= limit:
                    break
                if not job.cancelled and job.plan.batch_key == key:
                    jobs.append(job)
                    pending.remove(job)
        return jobs

    def _load(self, model: LocalModel) -> LoadedModel:
        loaded = self._loaded.get(model.load_key)
        if loaded is None:
            started = time.monotonic()
            loaded = LoadedModel(model)
            self._loaded[model.load_key] = loaded
            log.info(
                "loaded diffusers model %r from %s on %s in %.1f s",
                model.name,
                model.folder,
                loaded.device,
                time.monotonic() - started,
            )
        return loaded

    def _run(self, jobs: list[_Job]) -> None:
        """Run one batch and settle every job of it; never raises."""
        model = jobs[0].plan.model
        try:
            loaded = self._load(model)
        except Exception as exc:
            error = EngineError(
                _trimmed(f"cannot load the model folder {model.folder}: {exc}"), retryable=False
            )
            for job in jobs:
                job.settle(error)
            return

        def report(figure: int) -> None:
            for job in jobs:
                job.report(figure)

        def abandoned() -> bool:
            return self._closing or all(job.cancelled for job in jobs)

        plans, inputs = [job.plan for job in jobs], [job.inputs for job in jobs]
        log.debug("batch of %d for %r at %s", len(jobs), model.name, plans[0].first)
        try:
            images = loaded.run(Batch(plans, inputs, report, abandoned))
        except Exception as exc:
            if _out_of_memory(exc) and len(jobs) > 1:
                log.warning(
                    "out of GPU memory at a batch of %d; running them one by one", len(jobs)
                )
                _release_gpu_memory()
                for job in jobs:
                    self._run([job])
                return
            for job in jobs:
                job.settle(_generation_error(exc, jobs[0].plan))
            return
        if images is None:  # abandoned: its callers are gone, or the engine is closing
            for job in jobs:
                job.settle(EngineError("the diffusers engine shut down first", retryable=True))
            return
        for job, image in zip(jobs, images, strict=True):
            job.settle(image)


def _generation_error(exc: Exception, plan: Plan) -> EngineError:
    if _out_of_memory(exc):
        _release_gpu_memory()
        return EngineError(
            f"out of GPU memory generating {plan.first.width}x{plan.first.height} with "
            f"{plan.model.name!r}",
            retryable=True,
        )
    log.error("diffusers pipeline of %r failed", plan.model.name, exc_info=exc)
    # Bad arguments fail the same way every time; anything else (a CUDA error) may not.
    return EngineError(
        _trimmed(f"the diffusers pipeline failed: {type(exc).__name__}: {exc}"),
        retryable=not isinstance(exc, ValueError | TypeError),
    )


def _out_of_memory(exc: Exception) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _release_gpu_memory() -> None:
    torch = sys.modules.get("torch")  # nothing to release if torch was never imported
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _trimmed(message: str) -> str:
    return message if len(message) <= _MESSAGE_LIMIT else message[: _MESSAGE_LIMIT - 3] + "..."

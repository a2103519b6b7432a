"""The engine interface: turn a generation request into image bytes.

Engines know nothing of tasks, databases or storage. Errors carry `retryable`;
the runner owns retries, never the engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from imageforge.errors import ConfigurationError, ImageforgeError
from imageforge.references.images import ReferenceImage

__all__ = [
    "CLIENT_CANCELLED",
    "Engine",
    "EngineError",
    "GeneratedImage",
    "GenerationRequest",
    "Quality",
    "ReferenceImage",
    "UpstreamRef",
    "cancelled_by_client",
    "missing_extra",
]

Quality = Literal["low", "medium", "high"]

#: The message of the `CancelledError` an engine call gets when a client cancelled the
#: task (`Task.cancel(msg)`): only then should an engine cancel upstream work; any other
#: cancellation (a lost lease, a shutdown) leaves it for the next attempt to resume.
CLIENT_CANCELLED = "cancelled by the client"


def cancelled_by_client(error: BaseException) -> bool:
    return bool(error.args) and error.args[0] == CLIENT_CANCELLED


@dataclass(frozen=True)
class UpstreamRef:
    """A task submitted to an upstream service: which upstream, and its id there."""

    upstream: str
    task_id: str


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    width: int
    height: int
    #: None for models that ignore quality (gpt-image-2-r).
    quality: Quality | None
    model: str
    references: tuple[ReferenceImage, ...] = ()
    #: The reference URLs as the client sent them (set even when `references` is empty
    #: because the engine declared `fetches_references = False`).
    reference_urls: tuple[str, ...] = ()
    #: Task id, for logs and for engines that must resume work (relay); never in pixels.
    task_id: str = ""
    #: Upstream work an earlier attempt already submitted (and paid for): resume it.
    resume: UpstreamRef | None = None
    #: Engines that submit to an upstream call this before waiting on it, so that a
    #: crash never leads to a second paid submission. It raises if the task is no
    #: longer ours; the engine must then stop.
    checkpoint: Callable[[UpstreamRef], Awaitable[None]] | None = field(
        default=None, compare=False, repr=False
    )
    #: Engines that know how far along they are call this with a 0–100 figure, on the event
    #: loop thread; the figures rise and end at 100.
    progress: Callable[[int], None] | None = field(default=None, compare=False, repr=False)
    #: The seed of engines that draw noise (diffusers); None: derived from the task id, so
    #: every attempt at one task draws the same image.
    seed: int | None = None


#: The formats an engine's image may have: Pillow's format name → content type.
IMAGE_CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    #: MIME type of `data`, e.g. "image/png".
    content_type: str
    width: int
    height: int
    #: Upstream accounting (tokens), when the engine has any.
    usage: dict[str, int] = field(default_factory=dict)
    #: Name of the upstream that produced the image, for engines that route.
    upstream: str | None = None


class EngineError(ImageforgeError):
    """A generation failed. `retryable` tells the runner whether another attempt may succeed."""

    code = "engine_error"

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Engine(Protocol):
    """What the worker needs of an engine. Engines are built by the runtime
    (`imageforge.engine_setup`) from their explicit configuration; they read neither the
    settings nor the environment."""

    @property
    def name(self) -> str:
        """The engine's name, for logs."""
        ...

    @property
    def fetches_references(self) -> bool:
        """True: the worker downloads and checks `image_urls` and passes them as `references`.
        False: the service behind the engine fetches the URLs itself (relay), so the worker
        downloads nothing and passes only `reference_urls`."""
        ...

    async def generate(self, request: GenerationRequest) -> GeneratedImage: ...

    async def aclose(self) -> None:
        """Release what the engine holds; a later `generate` may open it again."""
        ...


def missing_extra(engine: str, needs: str) -> ConfigurationError:
    """The start-up error of an engine whose optional dependencies are not installed."""
    return ConfigurationError(
        f"the {engine} engine needs {needs}",
        fix=f"install it with pip install 'imageforge[{engine}]'",
    )

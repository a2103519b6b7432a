"""What every engine promises, run against offline, openai (a fake Images API on 127.0.0.1),
relay (a second imageforge on 127.0.0.1) and diffusers (tiny random SD and SDXL model
folders: references through an IP-Adapter on SD, image-to-image on SDXL), each built through
`build_engine`."""

from __future__ import annotations

import ast
import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from imageforge.engine_setup import build_engine
from imageforge.engines import Engine, GenerationRequest, ReferenceImage
from imageforge.errors import ConfigurationError
from imageforge.settings import Settings
from tests.tiny_diffusers import TinyFolders, tiny_config
from tests.upstream_servers import (
    FakeImagesAPI,
    ImageforgeUpstream,
    Reply,
    serve_images_api,
    solid_png,
)

KEY_ENV = "IMAGEFORGE_TEST_CONTRACT_KEY"


@dataclass
class Subject:
    engine: Engine
    #: A reference image whose URL really serves it (the relay's upstream fetches it).
    reference: ReferenceImage
    #: Makes the next generation take far longer than any test waits...
    slow_down: Callable[[], None]
    #: ...and undoes that for the generations after it.
    speed_up: Callable[[], None]
    #: Requests the upstream has seen so far (0 for engines without one).
    activity: Callable[[], int]
    has_upstream: bool = True


@pytest.fixture
def files() -> Iterator[FakeImagesAPI]:
    with serve_images_api() as api:
        yield api


def diffusers_subject(folders: TinyFolders, layout: str, reference: ReferenceImage) -> Subject:
    plain = folders.sd if layout == "sd" else folders.sdxl
    with_references = folders.sd_ip_adapter if layout == "sd" else folders.sdxl
    # A model of 500 steps a generation, on the same folder (and so the same loaded pipeline
    # and thread): a task queued behind one of its generations waits for seconds.
    slow = {"low": 500, "medium": 500, "high": 500}
    settings = Settings(
        engine="diffusers",
        models={
            "gpt-image-2": {"diffusers": tiny_config(plain)},
            "gpt-image-2-r": {"diffusers": tiny_config(with_references)},
            "slow-lane": {"diffusers": tiny_config(plain, steps=slow)},
        },
    )
    engine = build_engine("diffusers", settings)
    blockers: list[asyncio.Task[object]] = []

    def slow_down() -> None:
        blockers.append(asyncio.create_task(engine.generate(generation(model="slow-lane"))))

    def speed_up() -> None:
        for blocker in blockers:
            blocker.cancel()

    return Subject(engine, reference, slow_down, speed_up, lambda: 0, False)


@pytest.fixture(params=["offline", "openai", "relay", "diffusers-sd", "diffusers-sdxl"])
async def subject(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    files: FakeImagesAPI,
) -> AsyncIterator[Subject]:
    url = f"{files.base_url}/files/64x64.png"
    reference = ReferenceImage(url=url, data=solid_png(64, 64), format="PNG", width=64, height=64)
    upstream: ImageforgeUpstream | None = None
    name: str = request.param
    if name == "offline":
        engine = build_engine("offline", Settings())
        subject = Subject(engine, reference, lambda: None, lambda: None, lambda: 0, False)
    elif name == "openai":
        monkeypatch.setenv(KEY_ENV, "sk-contract")
        # One slot only: a slot leaked by a cancelled call would hang the next test step.
        config = {"kind": "openai", "base_url": f"{files.base_url}/v1", "api_key_env": KEY_ENV}
        settings = Settings(engine="openai", upstreams={"fake": {**config, "max_concurrency": 1}})
        engine = build_engine("openai", settings)
        subject = Subject(
            engine,
            reference,
            lambda: files.push(Reply(delay=60)),
            lambda: None,  # the slow reply was for one call only
            lambda: files.completed + files.in_flight,
        )
    elif name.startswith("diffusers-"):
        folders: TinyFolders = request.getfixturevalue("tiny_folders")
        subject = diffusers_subject(folders, name.removeprefix("diffusers-"), reference)
    else:
        upstream = await ImageforgeUpstream.start(tmp_path / "upstream")
        monkeypatch.setenv(KEY_ENV, upstream.api_key)
        config = {
            "kind": "relay",
            "base_url": upstream.base_url,
            "api_key_env": KEY_ENV,
            "max_concurrency": 1,
            "poll_initial_seconds": 0.02,
            "poll_max_seconds": 0.05,
        }
        engine = build_engine("relay", Settings(engine="relay", upstreams={"up": config}))
        counts = upstream.wrapper.counts
        subject = Subject(
            engine,
            reference,
            upstream.hold,
            upstream.release,
            lambda: counts["submit"] + counts["poll"],
        )
    try:
        yield subject
    finally:
        await subject.engine.aclose()
        if upstream is not None:
            await upstream.stop()


def generation(**changes: object) -> GenerationRequest:
    values: dict[str, object] = {
        "prompt": "a paper boat on a pond",
        "width": 1024,
        "height": 1024,
        "quality": "low",
        "model": "gpt-image-2",
        # A task per call: an upstream that honours Idempotency-Key refuses a reused id
        # with a different body.
        "task_id": f"image_{uuid.uuid4()}",
    }
    values.update(changes)
    return GenerationRequest(**values)  # type: ignore[arg-type]


async def test_returns_a_png_of_exactly_the_requested_size(subject: Subject) -> None:
    for width, height in ((1024, 1024), (1536, 864), (768, 1024)):
        image = await subject.engine.generate(generation(width=width, height=height))
        assert image.content_type == "image/png"
        assert (image.width, image.height) == (width, height)
        decoded = Image.open(io.BytesIO(image.data))
        assert (decoded.format, decoded.size) == ("PNG", (width, height))


async def test_a_request_with_references_works(subject: Subject) -> None:
    image = await subject.engine.generate(
        generation(
            model="gpt-image-2-r",
            quality=None,
            width=1280,
            height=1024,
            references=(subject.reference, subject.reference),
        )
    )
    assert (image.width, image.height) == (1280, 1024)
    assert Image.open(io.BytesIO(image.data)).size == (1280, 1024)


async def test_a_cancelled_generate_leaves_nothing_running(subject: Subject) -> None:
    subject.slow_down()
    before = asyncio.all_tasks()
    baseline = subject.activity()
    job = asyncio.create_task(subject.engine.generate(generation(width=3840, height=2160)))
    if subject.has_upstream:
        deadline = time.monotonic() + 10
        while subject.activity() == baseline:  # the upstream has the request
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not job.done()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    await asyncio.sleep(0.05)
    assert asyncio.all_tasks() <= before
    # No polling or resubmitting behind our back once cancelled.
    seen = subject.activity()
    await asyncio.sleep(0.3)
    assert subject.activity() == seen
    # Nothing leaked (concurrency slot, breaker probe): the engine still serves.
    subject.speed_up()
    image = await asyncio.wait_for(subject.engine.generate(generation()), timeout=20)
    assert (image.width, image.height) == (1024, 1024)


async def test_aclose_is_idempotent_and_the_engine_reopens(subject: Subject) -> None:
    await subject.engine.generate(generation())
    await subject.engine.aclose()
    await subject.engine.aclose()
    started = time.monotonic()
    image = await subject.engine.generate(generation(width=1024, height=768))
    assert (image.width, image.height) == (1024, 768)
    assert time.monotonic() - started < 20


async def test_aclose_before_any_use_is_fine(subject: Subject) -> None:
    await subject.engine.aclose()
    await subject.engine.aclose()


# How engines are built -----------------------------------------------------------------------


class LegacyPlugin:
    """A plugin written to the first contract: `settings=` only, no `fetches_references`."""

    def __init__(self, *, settings: Settings) -> None:
        self.settings = settings

    async def generate(self, request: GenerationRequest) -> object:
        return ("generated", request.prompt, self.settings.worker_concurrency)

    async def aclose(self) -> None:
        return None


class FetchingPlugin(LegacyPlugin):
    name = "fetching-itself"
    fetches_references = False


class NotAnEngine:
    def __init__(self, *, settings: Settings) -> None:
        pass

    async def generate(self, request: GenerationRequest) -> object:
        return None


async def test_plugins_keep_the_settings_constructor_and_get_the_contracts_defaults() -> None:
    settings = Settings(worker_concurrency=7)
    legacy = build_engine("tests.test_engine_contract:LegacyPlugin", settings)
    assert legacy.fetches_references is True
    assert legacy.name == "tests.test_engine_contract:LegacyPlugin"
    assert await legacy.generate(generation(prompt="p")) == ("generated", "p", 7)
    await legacy.aclose()
    fetching = build_engine("tests.test_engine_contract:FetchingPlugin", settings)
    assert (fetching.name, fetching.fetches_references) == ("fetching-itself", False)


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("tests.test_engine_contract:NotAnEngine", r"has no aclose\(\) method"),
        ("tests.test_engine_contract:Missing", "cannot load engine plugin"),
        ("tests.no_such_module:Engine", "cannot load engine plugin"),
        ("diffusion", "unknown engine 'diffusion'; use one of offline, openai, relay"),
    ],
)
def test_engines_that_cannot_be_built_stop_the_start(path: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        build_engine(path, Settings())


def test_every_built_in_engine_declares_whether_it_fetches_references() -> None:
    from imageforge.engines.offline import OfflineEngine
    from imageforge.engines.openai import OpenAIEngine
    from imageforge.engines.relay import RelayEngine

    declared = {
        cls.name: cls.__dict__["fetches_references"]
        for cls in (OfflineEngine, OpenAIEngine, RelayEngine)
    }
    assert declared == {"offline": True, "openai": True, "relay": False}


def test_a_bad_download_allowlist_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "k")
    config = {"kind": "relay", "base_url": "http://127.0.0.1:9", "api_key_env": KEY_ENV}
    settings = Settings(
        engine="relay", upstreams={"up": {**config, "download_allowlist": ["files.*"]}}
    )
    with pytest.raises(ConfigurationError, match=r"upstreams\.up\.download_allowlist entry"):
        build_engine("relay", settings)


def test_engines_read_neither_settings_nor_the_environment() -> None:
    # The runtime hands each engine its configuration (imageforge.engine_setup).
    package = Path(__file__).resolve().parents[1] / "src" / "imageforge" / "engines"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                names = [f"os.{node.attr}"]
            offenders += [
                f"{path.relative_to(package)}: {name}"
                for name in names
                if name.startswith(("imageforge.settings", "os.environ", "os.getenv"))
            ]
    assert offenders == []

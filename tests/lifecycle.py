"""Shared by the lifecycle tests: an engine that reports progress and can be held, the
in-process server on SQLite or PostgreSQL with it, and a server-sent events parser."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from imageforge.engines import GeneratedImage, GenerationRequest
from imageforge.engines.base import cancelled_by_client
from imageforge.keyring import create_api_key
from imageforge.testing.engines import PNG_1X1
from tests.conftest import ApiHarness, make_settings, start_harness


@dataclass
class StepEngine:
    """Reports 0 and 50, then (once `release` is set, at once when `hold` is False) 100, a
    `step` apart; notes each call and each cancellation a client asked for."""

    name: ClassVar[str] = "steps"
    fetches_references: ClassVar[bool] = False
    step: float = 0.05
    hold: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[GenerationRequest] = field(default_factory=list)
    client_cancels: int = 0

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.calls.append(request)
        report = request.progress or (lambda _figure: None)
        try:
            report(0)
            self.started.set()
            await asyncio.sleep(self.step)
            report(50)
            await asyncio.sleep(self.step)
            if self.hold:
                await self.release.wait()
            report(100)
        except asyncio.CancelledError as exc:
            if cancelled_by_client(exc):
                self.client_cancels += 1
            raise
        return GeneratedImage(data=PNG_1X1, content_type="image/png", width=1, height=1)

    async def aclose(self) -> None:
        return None


BACKENDS = ["sqlite", "postgres"]


def database_url_for(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """None: SQLite in the data dir; else the test's PostgreSQL database."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return None


async def serve(
    tmp_path: Path,
    database_url: str | None,
    *,
    run_worker: bool = True,
    engine: StepEngine | None = None,
    **overrides: Any,
) -> tuple[Any, ApiHarness]:
    values: dict[str, Any] = {
        "events_keepalive_seconds": 0.2,
        "progress_write_seconds": 0.01,
        "webhook_poll_seconds": 0.05,
        "webhook_timeout_seconds": 5.0,
        "reference_allowlist": ["127.0.0.1"],
    }
    if database_url is not None:
        values["database_url"] = database_url
    values.update(overrides)
    lifespan, harness = await start_harness(
        make_settings(tmp_path / "data", **values), run_worker=run_worker
    )
    if engine is not None:
        harness.runtime.engines["offline"] = engine
    return lifespan, harness


async def stop(lifespan: Any, harness: ApiHarness) -> None:
    await harness.client.aclose()
    await lifespan.__aexit__(None, None, None)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def limited_key(harness: ApiHarness, micros: int) -> tuple[str, str]:
    """(key id, secret) of a key with `micros` of credits."""
    record, secret = await create_api_key(harness.runtime.store, "limited", balance_micros=micros)
    return record.id, secret


async def balance(harness: ApiHarness, key: str) -> float:
    usage = await harness.client.get("/v1/usage", headers=auth(key))
    assert usage.status_code == 200, usage.text
    value: float = usage.json()["balance"]
    return value


async def until(predicate: Any, *, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.02)


@dataclass(frozen=True)
class Event:
    id: str | None
    event: str
    data: dict[str, Any]


def parse_events(text: str) -> tuple[list[Event], list[str]]:
    """(events, comments) of a complete `text/event-stream` body."""
    events: list[Event] = []
    comments: list[str] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line[1:].strip())
            elif line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            events.append(
                Event(
                    fields.get("id"), fields.get("event", "message"), orjson.loads(fields["data"])
                )
            )
    return events, comments

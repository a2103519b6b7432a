"""Engines for tests: one scripted call by call, and two for whole processes.

`ScriptedEngine` runs in the test's own process: each call takes the next step of its
script (`ok`, `transient`, `permanent` or any callable returning a `GeneratedImage`)
and records the request. `ChaosEngine` is an engine plugin for server and worker
processes (`IMAGEFORGE_ENGINE=imageforge.testing.engines:ChaosEngine`): it sleeps a
random time (IMAGEFORGE_CHAOS_MIN_SECONDS … IMAGEFORGE_CHAOS_MAX_SECONDS, default
0.05 … 1; 0 and 0 make it instant) and returns a 1×1 PNG. It is configured through
the environment because it runs in processes a test starts. When IMAGEFORGE_CHAOS_LOG
names a file, every call appends a line there when it starts and one *after* its
work, the latter standing for a side effect that costs money upstream:

    start <task id> <attempt> <pid> <time>
    done <task id> <attempt> <pid> <time>

Lines are appended with O_APPEND and fsynced before the engine goes on, so a `done`
line exists for every generation whose result a worker could have stored, even if that
worker is SIGKILLed right after. The attempt is read from the database when the call
starts (the engine interface does not carry it); the task was claimed a moment before,
so the row still holds this worker's attempt.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from imageforge.engines.base import EngineError, GeneratedImage, GenerationRequest
from imageforge.settings import Settings
from imageforge.store.urls import asyncpg_dsn, database_backend

#: A whole, decodable 1×1 transparent PNG (what converts and re-encodes like any image).
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000b4944415478da636000020000050001e9fadcd80000000049454e44ae426082"
)
LOG_ENV = "IMAGEFORGE_CHAOS_LOG"
#: Prompts starting with this fail for good (non-retryable), after the side effect.
FAIL_PREFIX = "fail:"


def ok() -> GeneratedImage:
    """A script step: the call succeeds with a 1×1 PNG."""
    return GeneratedImage(data=PNG_1X1, content_type="image/png", width=1, height=1)


def transient() -> GeneratedImage:
    """A script step: the call fails in a way another attempt may not."""
    raise EngineError("upstream busy", retryable=True)


def permanent() -> GeneratedImage:
    """A script step: the call fails for good."""
    raise EngineError("prompt rejected by policy", retryable=False)


@dataclass
class ScriptedEngine:
    """An engine whose outcome per call is scripted by the test (`ok` once the script
    is used up), each call `delay` seconds long."""

    name: ClassVar[str] = "scripted"
    fetches_references: ClassVar[bool] = True
    script: list[Callable[[], GeneratedImage]] = field(default_factory=list)
    delay: float = 0.0
    calls: list[GenerationRequest] = field(default_factory=list)

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        self.calls.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        step = self.script.pop(0) if self.script else ok
        return step()

    async def aclose(self) -> None:
        return None


class ChaosEngine:
    name: ClassVar[str] = "chaos"
    fetches_references: ClassVar[bool] = True

    def __init__(self, *, settings: Settings) -> None:
        self._min = float(os.environ.get("IMAGEFORGE_CHAOS_MIN_SECONDS", "0.05"))
        self._max = float(os.environ.get("IMAGEFORGE_CHAOS_MAX_SECONDS", "1.0"))
        log = os.environ.get(LOG_ENV)
        self._log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log else None
        self._database_url = settings.resolved_database_url
        self._pg: Any = None
        self._pg_lock = asyncio.Lock()

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        attempt = await self._attempt(request.task_id) if self._log_fd is not None else 0
        self._record("start", request.task_id, attempt)
        if self._max > 0:
            await asyncio.sleep(random.uniform(self._min, self._max))
        self._record("done", request.task_id, attempt)
        if request.prompt.startswith(FAIL_PREFIX):
            # A task the upstream refuses after doing (and billing) the work: the worker
            # must fail it, and the failure must refund its charge exactly once.
            raise EngineError("chaos: this prompt always fails", retryable=False)
        return ok()

    def _record(self, event: str, task_id: str, attempt: int) -> None:
        if self._log_fd is None:
            return
        line = f"{event} {task_id} {attempt} {os.getpid()} {time.time():.6f}\n"
        os.write(self._log_fd, line.encode())
        os.fsync(self._log_fd)

    async def _attempt(self, task_id: str) -> int:
        if database_backend(self._database_url) == "sqlite":
            path = self._database_url.split("///", 1)[1]
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
                row = db.execute("SELECT attempt FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return int(row[0])
        import asyncpg

        async with self._pg_lock:
            if self._pg is None or self._pg.is_closed():
                self._pg = await asyncpg.connect(asyncpg_dsn(self._database_url))
            return int(await self._pg.fetchval("SELECT attempt FROM tasks WHERE id = $1", task_id))

    async def aclose(self) -> None:
        if self._pg is not None:
            await self._pg.close()
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None


class PartlyFailingEngine:
    """An engine plugin for server processes whose outcome the prompt picks, so that one
    request's images can fail in part (`IMAGEFORGE_ENGINE=imageforge.testing.engines:
    PartlyFailingEngine`):

    - `fail:…` fails for good, every call;
    - `alternate:…` fails for good on every second call of this process (of `n` such
      images made at once, exactly `n // 2` fail, whichever order they run in);
    - `slow:…` takes `SLOW_SECONDS`, then succeeds;
    - anything else succeeds at once, with a 1×1 PNG.
    """

    name: ClassVar[str] = "partly-failing"
    fetches_references: ClassVar[bool] = True
    SLOW_SECONDS: ClassVar[float] = 3.0

    def __init__(self, *, settings: Settings) -> None:
        del settings
        self._alternate_calls = 0

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        prompt = request.prompt
        if prompt.startswith(FAIL_PREFIX):
            raise EngineError("refused: this prompt always fails", retryable=False)
        if prompt.startswith("alternate:"):
            self._alternate_calls += 1
            if self._alternate_calls % 2 == 0:
                raise EngineError("refused: every second image fails", retryable=False)
        if prompt.startswith("slow:"):
            await asyncio.sleep(self.SLOW_SECONDS)
        return ok()

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class EngineEvent:
    #: "start" or "done".
    event: str
    task_id: str
    attempt: int
    pid: int
    at: float


def read_events(path: Path) -> list[EngineEvent]:
    """The lines ChaosEngine processes appended to the log at `path`."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        event, task_id, attempt, pid, at = line.split()
        events.append(EngineEvent(event, task_id, int(attempt), int(pid), float(at)))
    return events

"""A GPT Image 2 task API with the lifecycle extensions, served for real on 127.0.0.1.

It speaks the shapes the lifecycle routes are specified with (long-poll `?wait=N`, server-sent
`/events` resumable with `Last-Event-ID`, `/cancel`, `GET /v1/tasks` paged with `after=`),
and documents each in its `/openapi.json` only when switched on, so the SDK's use of each
extension, and its fallbacks, are tested against a server before imageforge has them.

Tasks run on a schedule the test picks: queued, then processing with progress 0/50/100, then
completed, one step per `step_seconds`. A prompt containing "fail" ends failed; one
containing "hold" stays processing until cancelled.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Query, Request
from pydantic import BaseModel
from starlette.responses import Response, StreamingResponse

from tests.upstream_servers import ServerThread, solid_png


class CreateBody(BaseModel):
    model: str
    prompt: str
    size: str | None = None
    callback_url: str | None = None


@dataclass
class StandInTask:
    id: str
    created: int
    model: str
    prompt: str
    status: str = "queued"
    progress: int | None = None
    error: str | None = None
    #: Every state it has been in, as the `data` of its events; event id = index + 1.
    history: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Switches:
    long_poll: bool = True
    events: bool = True
    cancel: bool = True
    listing: bool = True
    #: Cut the first event stream of each task after this many events (reconnect tests).
    cut_first_stream_after: int | None = None


class StandInTaskAPI:
    def __init__(self, switches: Switches, step_seconds: float) -> None:
        self.switches = switches
        self.step_seconds = step_seconds
        self.tasks: dict[str, StandInTask] = {}
        self.order: list[str] = []
        self.counts: Counter[str] = Counter()
        self.last_event_ids: list[str | None] = []
        self.base_url = ""
        self._runs: set[asyncio.Task[None]] = set()
        self.app = self._build()

    def view(self, task: StandInTask) -> dict[str, Any]:
        done = task.status == "completed"
        return {
            "id": task.id,
            "object": "image.generation",
            "created": task.created,
            "model": task.model,
            "status": task.status,
            "image_url": f"{self.base_url}/files/{task.id}.png?signature=x" if done else None,
            "error": task.error,
            "progress": task.progress,
            "amount": 0.006,
        }

    def _move(self, task: StandInTask, status: str, *, progress: int | None = None,
              error: str | None = None) -> None:  # fmt: skip
        if task.status in ("completed", "failed"):
            return
        task.status, task.progress, task.error = status, progress, error
        task.history.append(self.view(task))
        task.changed.set()
        task.changed = asyncio.Event()

    async def _run(self, task: StandInTask) -> None:
        await asyncio.sleep(self.step_seconds)
        for progress in (0, 50, 100):
            self._move(task, "processing", progress=progress)
            await asyncio.sleep(self.step_seconds)
        if "hold" in task.prompt:
            return
        if "fail" in task.prompt:
            self._move(task, "failed", error="the engine refused this prompt")
        else:
            self._move(task, "completed", progress=100)

    def _task(self, task_id: str) -> StandInTask:
        task = self.tasks.get(task_id)
        if task is None:
            raise HTTPException(404, "No such task.")
        return task

    def _build(self) -> FastAPI:
        app = FastAPI()
        switches = self.switches

        @app.post("/v1/image2/images")
        async def create(
            body: CreateBody,
            idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
        ) -> dict[str, Any]:
            self.counts["create"] += 1
            task = StandInTask(
                id=f"image_{uuid.uuid4()}", created=int(time.time()), model=body.model,
                prompt=body.prompt,
            )  # fmt: skip
            task.history.append(self.view(task))
            self.tasks[task.id] = task
            self.order.append(task.id)
            run = asyncio.get_running_loop().create_task(self._run(task))
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)
            return {key: self.view(task)[key] for key in ("id", "created", "model", "status")}

        async def result(task_id: str, wait: int | None = None) -> dict[str, Any]:
            self.counts["wait" if wait else "poll"] += 1
            task = self._task(task_id)
            if wait and task.status not in ("completed", "failed"):
                deadline = time.monotonic() + wait
                while task.status not in ("completed", "failed"):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        await asyncio.wait_for(task.changed.wait(), left)
                    except TimeoutError:
                        break
            return self.view(task)

        if switches.long_poll:

            @app.get("/v1/result/{task_id}")
            async def get_waiting(
                task_id: str, wait: Annotated[int | None, Query(ge=1, le=60)] = None
            ) -> dict[str, Any]:
                return await result(task_id, wait)
        else:

            @app.get("/v1/result/{task_id}")
            async def get_plain(task_id: str) -> dict[str, Any]:
                return await result(task_id)

        @app.get("/v1/result/{task_id}/events", include_in_schema=switches.events)
        async def events(
            task_id: str,
            request: Request,
            last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        ) -> Response:
            self.counts["events"] += 1
            self.last_event_ids.append(last_event_id)
            task = self._task(task_id)
            cut = switches.cut_first_stream_after if self.counts["events"] == 1 else None
            start = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
            return StreamingResponse(self._stream(task, start, cut), media_type="text/event-stream")

        @app.post("/v1/result/{task_id}/cancel", include_in_schema=switches.cancel)
        async def cancel(task_id: str) -> dict[str, Any]:
            task = self._task(task_id)
            self._move(task, "failed", error="cancelled by the client")
            return self.view(task)

        @app.get("/v1/tasks", include_in_schema=switches.listing)
        async def list_tasks(
            status: str | None = None,
            limit: Annotated[int, Query(ge=1, le=100)] = 20,
            after: str | None = None,
        ) -> dict[str, Any]:
            ids = list(reversed(self.order))
            if after is not None:
                ids = ids[ids.index(after) + 1 :]
            tasks = [self.tasks[i] for i in ids if status in (None, self.tasks[i].status)]
            page = tasks[:limit]
            data = [self.view(task) for task in page]
            return {"object": "list", "data": data, "has_more": len(tasks) > limit}

        @app.get("/files/{name}")
        async def file(name: str) -> Response:
            return Response(solid_png(1024, 1024), media_type="image/png")

        return app

    async def _stream(self, task: StandInTask, start: int, cut: int | None) -> AsyncIterator[bytes]:
        sent = 0
        index = start
        yield b": connected\r\n\r\n"
        while True:
            while index < len(task.history):
                data = task.history[index]
                index += 1
                kind = "progress" if data["status"] == "processing" else "status"
                yield f"id: {index}\nevent: {kind}\ndata: {_json(data)}\n\n".encode()
                sent += 1
                if data["status"] in ("completed", "failed"):
                    return
                if cut is not None and sent >= cut:
                    return  # an abrupt end, before the terminal event
            try:
                await asyncio.wait_for(task.changed.wait(), 0.5)
            except TimeoutError:
                yield b": keep-alive\n\n"


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


@contextmanager
def serve_task_api(
    switches: Switches | None = None, *, step_seconds: float = 0.1
) -> Iterator[StandInTaskAPI]:
    api = StandInTaskAPI(switches or Switches(), step_seconds)
    server = ServerThread(api.app).start()
    api.base_url = server.base_url
    try:
        yield api
    finally:
        server.stop()

"""The offline engine's progress, as a client sees it: figures between 0 and 100 as the render
goes through its stages, in polls and in the event stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

from imageforge.engines.offline.progress import CAPTIONED, PLANNED, SCENE_PAINTED
from tests.lifecycle import auth, parse_events, serve, stop

STAGES = {0, PLANNED, SCENE_PAINTED, CAPTIONED, 100}


async def test_polls_and_events_see_the_render_move_between_0_and_100(tmp_path: Path) -> None:
    lifespan, api = await serve(tmp_path, None)  # the real offline engine, its process pool
    try:
        key = await api.new_key()
        # A 4K render: its PNG encoding alone, after the last stage's figure, takes ~0.2 s.
        created = await api.create(key, ratio="16:9", resolution="4k", quality="high")
        task_id = created.json()["id"]
        streaming = asyncio.ensure_future(
            api.client.get(f"/v1/result/{task_id}/events", headers=auth(key))
        )
        polled: list[int] = []
        async with asyncio.timeout(60):
            while (body := (await api.poll(key, task_id)).json())["status"] != "completed":
                assert body["status"] in ("queued", "processing"), body
                if body["status"] == "processing" and body["progress"] is not None:
                    polled.append(body["progress"])
                await asyncio.sleep(0.005)
        assert body["progress"] == 100
        events, _ = parse_events((await asyncio.wait_for(streaming, 30)).text)
    finally:
        await stop(lifespan, api)
    # None until the first figure is written.
    streamed = [
        e.data["progress"]
        for e in events
        if e.data["status"] == "processing" and e.data["progress"] is not None
    ]
    for figures in (polled, streamed):
        assert figures == sorted(figures) and set(figures) <= STAGES, figures
        assert any(0 < figure < 100 for figure in figures), figures

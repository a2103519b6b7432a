"""Long-poll benchmark: N concurrent `GET /v1/result/{id}?wait=60` on one API process.

Measures what the issue asks of long-polls: while N waiters wait, how many statements read
the tasks table (expected: none), and, once their tasks finish, how long after each task's
transition committed its waiter had its answer (p50, p99, max).

The app runs in this process (its lifespan, routes and store; requests through httpx's ASGI
transport, so no sockets: what is measured is the server's path from a commit to the
answer, not the network). No worker runs in it: the bench finishes the tasks itself, through
the app's own store on SQLite (the in-process notification path), or with `--postgres URL`
through a second store, as another node would (the LISTEN/NOTIFY path).

    .venv/bin/python bench/lifecycle.py [--waiters 1000] [--postgres postgresql://…]

Prints one JSON report on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from imageforge.api.app import create_app
from imageforge.keyring import create_api_key
from imageforge.settings import Settings
from imageforge.store import open_store


async def bench(waiters: int, postgres: str | None) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="lifecycle-bench-"))
    settings = Settings(
        data_dir=data_dir,
        database_url=postgres,
        postgres_pool_size=20,
    )
    app = create_app(settings, run_worker=False)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    runtime = app.state.runtime
    limits = httpx.Limits(max_connections=waiters + 10)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://bench",
        limits=limits,
        timeout=120,
    )
    other = await open_store(postgres) if postgres else runtime.store
    try:
        _, key = await create_api_key(runtime.store, "bench")
        headers = {"Authorization": f"Bearer {key}"}
        ids = []
        for n in range(waiters):
            answer = await client.post(
                "/v1/image2/images",
                json={"model": "gpt-image-2", "prompt": f"fox {n}"},
                headers=headers,
            )
            ids.append(answer.json()["id"])
        answered: dict[str, float] = {}

        async def wait(task_id: str) -> None:
            response = await client.get(f"/v1/result/{task_id}?wait=60", headers=headers)
            assert response.json()["status"] == "failed", response.text
            answered[task_id] = time.perf_counter()

        polls = [asyncio.ensure_future(wait(task_id)) for task_id in ids]
        for _ in range(1200):  # up to a minute for every request to reach its wait
            if runtime.events.waiting >= waiters:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # every waiter has read its task once and waits

        statements: list[str] = []
        traced = []
        if postgres is None:
            traced = [runtime.store._reader, runtime.store._db]
            for connection in traced:
                connection.set_trace_callback(statements.append)
        await asyncio.sleep(2.0)
        task_reads_while_waiting = sum("tasks" in s for s in statements)
        for connection in traced:
            connection.set_trace_callback(None)

        claimed = await other.claim(worker_id="bench", limit=waiters, lease_seconds=120)
        finished: dict[str, float] = {}
        for task in claimed:
            await other.fail(task.id, task.attempt, error="finished by the bench", error_code="x")
            finished[task.id] = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*polls), 120)
        latencies = sorted((answered[i] - finished[i]) * 1000 for i in finished)
        return {
            "waiters": waiters,
            "store": "postgresql (finished by another store: LISTEN/NOTIFY)"
            if postgres
            else "sqlite (finished in-process)",
            "task_reads_while_waiting_2s": task_reads_while_waiting if postgres is None else None,
            "latency_ms": {
                "p50": round(statistics.median(latencies), 1),
                "p99": round(latencies[int(len(latencies) * 0.99) - 1], 1),
                "max": round(latencies[-1], 1),
            },
        }
    finally:
        if postgres:
            await other.close()
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--postgres", help="a PostgreSQL URL (its tables are used as they are)")
    args = parser.parse_args()
    report = asyncio.run(bench(args.waiters, args.postgres))
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()

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

With `--listing N` it measures `GET /v1/tasks` instead: N tasks of one key (plus N of
another) are written straight into the database, and pages of 100 are timed at the newest
end, in the middle (a cursor half-way down) and filtered by status.

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


_FILL = {
    "postgresql": (
        "INSERT INTO tasks (id, key_id, model, engine, prompt, quality, width, height, ratio, "
        "resolution, image_urls, status, attempt, max_attempts, run_after, price_micros, "
        "created_at, updated_at) SELECT 'image_' || md5(k || ':' || n), k, 'gpt-image-2', "
        "'offline', 'p', 'low', 1024, 1024, '1:1', '1k', '[]', "
        "CASE WHEN n % 10 = 0 THEN 'failed' ELSE 'completed' END, 1, 3, 0, 0, n, n "
        "FROM generate_series(1, {rows}) AS n, (VALUES ('key_bench_a'), ('key_bench_b')) AS keys(k)"
    ),
}


async def listing(rows: int, postgres: str | None) -> dict[str, Any]:
    import asyncpg

    from imageforge.store.urls import asyncpg_dsn

    if postgres is None:
        raise SystemExit("--listing needs --postgres (it fills the tasks table with SQL)")
    data_dir = Path(tempfile.mkdtemp(prefix="lifecycle-bench-"))
    settings = Settings(data_dir=data_dir, database_url=postgres)
    app = create_app(settings, run_worker=False)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()  # migrates
    connection = await asyncpg.connect(asyncpg_dsn(postgres))
    try:
        await connection.execute(_FILL["postgresql"].format(rows=rows))
        await connection.execute("ANALYZE tasks")
        store = app.state.runtime.store
        key = "key_bench_a"
        timings: dict[str, float] = {}

        async def timed(name: str, **query: Any) -> None:
            best = float("inf")
            for _ in range(20):
                started = time.perf_counter()
                page = await store.list_tasks(key, limit=100, **query)
                best = min(best, time.perf_counter() - started)
                assert page is not None and len(page.tasks) == 100
            timings[name] = round(best * 1000, 2)

        await timed("newest_page_ms")
        middle = await connection.fetchval(
            "SELECT id FROM tasks WHERE key_id = $1 ORDER BY seq LIMIT 1 OFFSET $2", key, rows // 2
        )
        await timed("middle_page_ms", after=middle)
        await timed("failed_only_page_ms", status="failed")
        return {"rows_per_key": rows, "keys": 2, "best_of_20": timings}
    finally:
        await connection.execute("DELETE FROM tasks WHERE key_id LIKE 'key_bench_%'")
        await connection.close()
        await lifespan.__aexit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--postgres", help="a PostgreSQL URL (its tables are used as they are)")
    parser.add_argument("--listing", type=int, help="measure listing over this many tasks")
    args = parser.parse_args()
    if args.listing:
        report = asyncio.run(listing(args.listing, args.postgres))
    else:
        report = asyncio.run(bench(args.waiters, args.postgres))
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()

"""The queue benchmark on PostgreSQL: `python bench/queue_bench.py [--help]`. One JSON report.

1. dispatch: idle `imageforge worker` processes; tasks are inserted one at a time, as an
   API node does (INSERT + NOTIFY in one statement); latency = the claim's `started_at`
   minus the task's `created_at` (stamped just before the INSERT, as the service does).
   Targets: p50 ≤ 20 ms, p99 ≤ 100 ms.
2. throughput: an instant engine, 1, 2 and 4 worker processes; a batch of tasks becomes
   claimable in one transaction and the clock runs until the last one is completed.
3. api: bench/api.py's poll and create phases (real routes vs bare routes in the same
   server, same load generator) with the server on PostgreSQL. Targets: poll ≥ 0.70,
   create ≥ 0.30 of the bare endpoint.

Each section runs on its own throw-away database on the server named by --server-url
(default postgresql://postgres@127.0.0.1:5432/postgres), dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

import loadgen  # bench/loadgen.py
from imageforge.ids import KeyId, new_task_id
from imageforge.store.postgres import PostgresStore
from imageforge.store.rows import TASK_COLUMN_NAMES, TASK_COLUMNS, task_values
from imageforge.store.urls import asyncpg_dsn
from imageforge.store.wakeups import APPLICATION_NAME
from imageforge.tasks import Task
from imageforge.testing.postgres import PostgresServer

REPO_ROOT = Path(__file__).resolve().parent.parent

DISPATCH_P50_TARGET_MS = 20.0
DISPATCH_P99_TARGET_MS = 100.0
POLL_TARGET = 0.70
CREATE_TARGET = 0.30
_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[queue bench {time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return math.nan
    rank = min(len(sorted_values), max(1, math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


def make_task(now: float, *, run_after: float | None = None) -> Task:
    task = Task.queued(
        id=new_task_id(),
        key_id=KeyId("key_bench"),
        model="gpt-image-2",
        engine="imageforge.testing.engines:ChaosEngine",
        prompt="bench",
        quality="low",
        width=1024,
        height=1024,
        ratio="1:1",
        resolution="1k",
        image_urls=(),
        max_attempts=3,
        price_micros=0,
        now=now,
    )
    return task if run_after is None else task.evolve(run_after=run_after)


class Workers:
    """`imageforge worker` processes with an instant engine."""

    def __init__(self, url: str, work_dir: Path, count: int, concurrency: int) -> None:
        self.url = url
        self.count = count
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEFORGE_")}
        env.update(
            {
                "IMAGEFORGE_DATABASE_URL": url,
                "IMAGEFORGE_DATA_DIR": str(work_dir / "data"),
                "IMAGEFORGE_ENGINE": "imageforge.testing.engines:ChaosEngine",
                "IMAGEFORGE_CHAOS_MAX_SECONDS": "0",
                "IMAGEFORGE_LOG_LEVEL": "warning",
            }
        )
        work_dir.mkdir(parents=True, exist_ok=True)
        self.logs = [(work_dir / f"worker-{n}.log").open("w") for n in range(count)]
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "imageforge", "worker", "--concurrency", str(concurrency)],
                env=env,
                cwd=REPO_ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            for log_file in self.logs
        ]

    async def wait_listening(self) -> None:
        """Ready = each worker's wake-up listener is connected (it starts with the worker)."""
        deadline = time.monotonic() + 60
        connection = await asyncpg.connect(asyncpg_dsn(self.url))
        try:
            while True:
                listening = await connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = $1 AND datname = current_database()",
                    APPLICATION_NAME,
                )
                if listening >= self.count:
                    return
                for process in self.processes:
                    if process.poll() is not None:
                        raise RuntimeError(f"a worker exited with {process.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError("workers did not start")
                await asyncio.sleep(0.1)
        finally:
            await connection.close()

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log_file in self.logs:
            log_file.close()


# 1. dispatch latency ------------------------------------------------------------------


async def measure_dispatch(url: str, tasks: int, interval_s: float) -> dict[str, Any]:
    store = await PostgresStore.connect(url)
    inserts: list[float] = []
    ids = []
    try:
        for _ in range(tasks):
            now = time.time()
            task = make_task(now)
            await store.insert_task(task)
            inserts.append(time.time() - now)
            ids.append(task.id)
            await asyncio.sleep(interval_s)
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            deadline = time.monotonic() + 30
            while True:
                rows = await connection.fetch(
                    "SELECT started_at - created_at FROM tasks WHERE id = ANY($1::text[])", ids
                )
                if all(row[0] is not None for row in rows):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("dispatch: tasks not claimed within 30 s")
                await asyncio.sleep(0.1)
        finally:
            await connection.close()
    finally:
        await store.close()
    latencies = sorted(row[0] * 1000 for row in rows)
    insert_ms = sorted(value * 1000 for value in inserts)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return {
        "tasks": tasks,
        "p50_ms": round(p50, 2),
        "p90_ms": round(percentile(latencies, 0.9), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(latencies[-1], 2),
        "insert_p50_ms": round(percentile(insert_ms, 0.5), 2),
        "target_p50_ms": DISPATCH_P50_TARGET_MS,
        "target_p99_ms": DISPATCH_P99_TARGET_MS,
        "pass": p50 <= DISPATCH_P50_TARGET_MS and p99 <= DISPATCH_P99_TARGET_MS,
    }


# 2. throughput --------------------------------------------------------------------------


async def measure_throughput(url: str, tasks: int) -> dict[str, Any]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        # Held back, then released in one transaction so every worker wakes at once. The
        # store makes every task it accepts due at once, so these rows are written here.
        held = time.time() + 3600
        placeholders = ", ".join(f"${n}" for n in range(1, len(TASK_COLUMN_NAMES) + 1))
        await connection.executemany(
            f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({placeholders})",
            [task_values(make_task(time.time(), run_after=held)) for _ in range(tasks)],
        )
        released = time.time()
        async with connection.transaction():
            await connection.execute("UPDATE tasks SET run_after = $1", released)
            await connection.execute("SELECT pg_notify('imageforge_tasks', '')")
        deadline = time.monotonic() + 300
        while True:
            done = await connection.fetchval(
                "SELECT count(*) FROM tasks WHERE status IN ('completed', 'failed')"
            )
            if done >= tasks:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"throughput: only {done}/{tasks} done after 300 s")
            await asyncio.sleep(0.05)
        last, failed = await connection.fetchrow(
            "SELECT max(finished_at), count(*) FILTER (WHERE status = 'failed') FROM tasks"
        )
        attempts = await connection.fetchval("SELECT sum(attempt) FROM tasks")
    finally:
        await connection.close()
    elapsed = last - released
    return {
        "tasks": tasks,
        "seconds": round(elapsed, 3),
        "tasks_per_s": round(tasks / elapsed, 1),
        "failed": failed,
        "claims": attempts,
    }


async def _truncate(url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute("TRUNCATE tasks")
    finally:
        await connection.close()


# 3. API ratios (bench/api.py's phases on PostgreSQL) ------------------------------------------


def _run_load_checked(spec: Any) -> Any:
    """loadgen.run_load (its report now comes back through a file, which fixed the
    garbled pipe output seen before)."""
    return loadgen.run_load(spec)


def measure_api(url: str, passes: int, duration: float) -> dict[str, Any]:
    import api  # bench/api.py: the foundation's benchmark

    base_env = api._server_env

    def on_postgres(data_dir: Path) -> dict[str, str]:
        env: dict[str, str] = base_env(data_dir)
        env["IMAGEFORGE_DATABASE_URL"] = url
        return env

    api._server_env = on_postgres
    api.run_load = _run_load_checked
    options = api.parse_args(["--passes", str(passes), "--duration", str(duration)])
    work_dir = Path(tempfile.mkdtemp(prefix="imageforge-queue-bench-api-"))
    try:
        bench = api.Bench(options, work_dir)
        bench.key = bench.create_key()
        completed = bench.phase_setup()
        poll, create = bench.phase_poll_and_create(completed)
    finally:
        api._server_env = base_env
        api.run_load = loadgen.run_load
        shutil.rmtree(work_dir, ignore_errors=True)
    for name, result, target in (("poll", poll, POLL_TARGET), ("create", create, CREATE_TARGET)):
        result["target"] = target
        result["pass"] = result["ratio"] >= target
        result.pop("detail", None)
        log(f"api {name} on PostgreSQL: ratio {result['ratio']} (target {target})")
    return {"poll": poll, "create": create}


# ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--server-url",
        default=os.environ.get(
            "IMAGEFORGE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL server to create throw-away databases on",
    )
    parser.add_argument("--dispatch-tasks", type=int, default=300)
    parser.add_argument("--dispatch-workers", type=int, default=2)
    parser.add_argument(
        "--dispatch-interval", type=float, default=0.03, help="seconds between creates"
    )
    parser.add_argument("--throughput-tasks", type=int, default=3000)
    parser.add_argument("--workers", default="1,2,4", help="worker process counts to scale over")
    parser.add_argument("--concurrency", type=int, default=16, help="tasks per worker at once")
    parser.add_argument("--api-passes", type=int, default=3)
    parser.add_argument("--api-duration", type=float, default=5.0)
    parser.add_argument(
        "--sections", default="dispatch,throughput,api", help="which measurements to run"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sections = set(args.sections.split(","))
    databases = PostgresServer(args.server_url)
    work_dir = Path(tempfile.mkdtemp(prefix="imageforge-queue-bench-"))
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "config": {
            "engine": "instant (imageforge.testing.engines.ChaosEngine with 0 s)",
            "worker_concurrency": args.concurrency,
            "poll_interval_s": 0.5,
            "dispatch_workers": args.dispatch_workers,
        },
    }
    try:
        if "dispatch" in sections:
            report["dispatch"] = run_dispatch(args, databases.create_database(), work_dir)
        if "throughput" in sections:
            report["throughput"] = run_throughput(args, databases.create_database(), work_dir)
        if "api" in sections:
            report["api_on_postgres"] = measure_api(
                databases.create_database(), args.api_passes, args.api_duration
            )
    finally:
        databases.drop_all()
        shutil.rmtree(work_dir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


def run_dispatch(args: argparse.Namespace, url: str, work_dir: Path) -> dict[str, Any]:
    log(f"dispatch: {args.dispatch_workers} idle workers, {args.dispatch_tasks} creates")
    workers = Workers(url, work_dir / "dispatch", args.dispatch_workers, 4)
    try:
        asyncio.run(workers.wait_listening())
        result = asyncio.run(measure_dispatch(url, args.dispatch_tasks, args.dispatch_interval))
    finally:
        workers.stop()
    log(f"dispatch: {result}")
    return result


def run_throughput(args: argparse.Namespace, url: str, work_dir: Path) -> dict[str, Any]:
    throughput: dict[str, Any] = {}
    for count in [int(n) for n in args.workers.split(",")]:
        asyncio.run(_truncate(url))
        workers = Workers(url, work_dir / f"throughput-{count}", count, args.concurrency)
        try:
            asyncio.run(workers.wait_listening())
            result = asyncio.run(measure_throughput(url, args.throughput_tasks))
        finally:
            workers.stop()
        throughput[f"{count}_workers"] = result
        log(f"throughput with {count} worker(s): {result}")
    base = next(iter(throughput.values()))["tasks_per_s"]
    for result in throughput.values():
        result["scaling_vs_1"] = round(result["tasks_per_s"] / base, 2)
    return throughput


if __name__ == "__main__":
    sys.exit(main())

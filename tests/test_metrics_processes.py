"""Metrics with several processes: `worker --processes 2` on one metrics port, where the
counters of both processes add up (prometheus-client's multi-process mode)."""

from __future__ import annotations

from pathlib import Path

import httpx

from imageforge.testing.engines import read_events
from imageforge.testing.processes import ServerProcess, free_port
from tests.cluster import WorkerProcess, cluster_env, wait_until
from tests.test_observability import samples
from tests.test_postgres_workers import _create, _key, fetch
from tests.test_worker_processes import _ready

TASKS = 12


def _sum(text: str, name: str) -> float:
    return sum(v for (sample, _), v in samples(text).items() if sample == name)


def test_two_worker_processes_counters_add_up(tmp_path: Path, fresh_pg_url: str) -> None:
    data = tmp_path / "data"
    effects = tmp_path / "effects.log"
    port = free_port()
    env = cluster_env(
        fresh_pg_url,
        effects,
        IMAGEFORGE_CHAOS_MIN_SECONDS="0.3",
        IMAGEFORGE_CHAOS_MAX_SECONDS="0.3",
        IMAGEFORGE_METRICS_PORT=str(port),
    )
    key = _key(data, env)
    api_env = {k: v for k, v in env.items() if k != "IMAGEFORGE_METRICS_PORT"}
    with ServerProcess(data, "--no-worker", **api_env) as api:
        supervisor = WorkerProcess(data, env, concurrency=2, args=["--processes", "2"])
        try:
            wait_until(lambda: _ready(supervisor) >= 2, 30, "both processes ready")
            for n in range(TASKS):
                _create(api, key, f"counted {n}")
            wait_until(
                lambda: all(
                    row["status"] == "completed"
                    for row in fetch(fresh_pg_url, "SELECT status FROM tasks")
                ),
                30,
                "every task to complete",
            )
            done = [event.pid for event in read_events(effects) if event.event == "done"]
            assert len(set(done)) == 2, "both processes should have taken tasks"
            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            assert scraped.status_code == 200
            assert _sum(scraped.text, "imageforge_tasks_completed_total") == TASKS
            assert _sum(scraped.text, "imageforge_engine_seconds_count") == TASKS
            assert _sum(scraped.text, "imageforge_task_queue_seconds_count") == TASKS
            # The API node counted what it accepted, on its own port.
            served = httpx.get(f"{api.base_url}/metrics", timeout=10).text
            assert _sum(served, "imageforge_tasks_created_total") == TASKS
            assert _sum(served, "imageforge_queue_depth") == TASKS
            assert supervisor.terminate(timeout=30) == 0
        finally:
            supervisor.close()

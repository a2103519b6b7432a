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


def test_serve_processes_request_counts_reach_the_supervisors_port(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    """Each server process tallies its requests and adds them to the shared files within a
    second, without being scraped itself: the supervisor's port sees every one."""
    data = tmp_path / "data"
    port = free_port()
    env = cluster_env(fresh_pg_url, IMAGEFORGE_ENGINE="offline", IMAGEFORGE_METRICS_PORT=str(port))
    key = _key(data, env)
    with ServerProcess(data, "--no-worker", "--processes", "2", **env) as server:
        # Connections of their own, so that SO_REUSEPORT hands both processes some.
        clients = [server.client(key) for _ in range(24)]
        try:
            created = clients[0].post(
                "/v1/image2/images", json={"model": "gpt-image-2", "prompt": "counted"}
            )
            assert created.status_code == 200, created.text
            task_id = created.json()["id"]
            for client in clients:
                assert client.get(f"/v1/result/{task_id}").status_code == 200
        finally:
            for client in clients:
                client.close()

        def polls() -> float:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            return sum(
                value
                for (sample, labels), value in samples(text).items()
                if sample == "imageforge_http_request_duration_seconds_count"
                and ("route", "/v1/result/{task_id}") in labels
            )

        wait_until(lambda: polls() == 24, 10, "24 polls counted on the supervisor's port")
        assert server.terminate(timeout=30) == 0

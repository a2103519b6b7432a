"""Worker processes on PostgreSQL: a stale worker changes nothing; SIGTERM drains."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from imageforge.testing.engines import read_events
from imageforge.testing.processes import ServerProcess, run_cli
from tests.cluster import WorkerProcess, cluster_env, wait_until
from tests.pg import pg_connect, run_sync


async def _fetch(url: str, query: str, *args: Any) -> list[dict[str, Any]]:
    connection = await pg_connect(url)
    try:
        return [dict(row) for row in await connection.fetch(query, *args)]
    finally:
        await connection.close()


def fetch(url: str, query: str, *args: Any) -> list[dict[str, Any]]:
    return run_sync(lambda: _fetch(url, query, *args))


def _key(data: Path, env: dict[str, str]) -> str:
    created = run_cli(data, "keys", "create", "--name", "t", "--credits", "100", "--json", **env)
    assert created.returncode == 0, created.stderr
    secret: str = json.loads(created.stdout.strip().splitlines()[-1])["key"]
    return secret


def _create(api: ServerProcess, key: str, prompt: str) -> str:
    with api.client(key) as client:
        response = client.post("/v1/image2/images", json={"model": "gpt-image-2", "prompt": prompt})
    assert response.status_code == 200, response.text
    task_id: str = response.json()["id"]
    return task_id


def test_a_stale_worker_cannot_write_after_its_lease_was_taken(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    data = tmp_path / "data"
    effects = tmp_path / "effects.log"
    env = cluster_env(fresh_pg_url, effects)
    slow = {**env, "IMAGEFORGE_CHAOS_MIN_SECONDS": "2", "IMAGEFORGE_CHAOS_MAX_SECONDS": "2"}
    fast = {**env, "IMAGEFORGE_CHAOS_MIN_SECONDS": "0.1", "IMAGEFORGE_CHAOS_MAX_SECONDS": "0.1"}
    key = _key(data, env)
    stale = fresh = None
    with ServerProcess(data, "--no-worker", **env) as api:
        try:
            stale = WorkerProcess(data, slow, concurrency=1)
            stale.wait_started()
            task_id = _create(api, key, "stale")
            wait_until(
                lambda: any(e.pid == stale.pid for e in read_events(effects)), 10, "engine start"
            )
            # Frozen mid-generation, past its lease: heartbeats stop, the lease expires.
            stale.signal(signal.SIGSTOP)
            fresh = WorkerProcess(data, fast, concurrency=1)
            wait_until(
                lambda: fetch(fresh_pg_url, "SELECT status FROM tasks")[0]["status"] == "completed",
                20,
                "the fresh worker to complete the task",
            )
            before = fetch(fresh_pg_url, "SELECT * FROM tasks WHERE id = $1", task_id)
            ledger_before = fetch(fresh_pg_url, "SELECT * FROM ledger ORDER BY id")
            assert before[0]["attempt"] == 2

            stale.signal(signal.SIGCONT)
            wait_until(lambda: "lost the lease" in stale.output(), 15, "the stale worker to notice")
            time.sleep(0.5)  # anything it would still write, it has written by now

            assert fetch(fresh_pg_url, "SELECT * FROM tasks WHERE id = $1", task_id) == before
            assert fetch(fresh_pg_url, "SELECT * FROM ledger ORDER BY id") == ledger_before
            # The task's image is attempt 2's. Attempt 1 either noticed at its complete()
            # (and deleted its file) or at its next heartbeat, which cancels it; a file
            # it was writing at that moment may remain, under its own attempt's name,
            # which nothing refers to.
            images = {path.name for path in (data / "images").rglob(f"{task_id}-*")}
            assert f"{task_id}-2.png" in images and images <= {
                f"{task_id}-1.png",
                f"{task_id}-2.png",
            }
            done = [e.attempt for e in read_events(effects) if e.event == "done"]
            # Whether or not the frozen generation got to finish (upstream cost is
            # at-least-once), attempt 1 changed nothing: no completion, charge or refund.
            assert sorted(done) in ([2], [1, 2])

            # The stale worker is healthy afterwards and takes new work.
            assert fresh.terminate() == 0
            second = _create(api, key, "after")
            wait_until(
                lambda: (
                    fetch(fresh_pg_url, "SELECT status FROM tasks WHERE id = $1", second)[0][
                        "status"
                    ]
                    == "completed"
                ),
                20,
                "the revived worker to complete a new task",
            )
            assert stale.terminate() == 0
        finally:
            for worker in (stale, fresh):
                if worker is not None:
                    worker.close()


def test_sigterm_hands_unfinished_tasks_back_and_exits_zero(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    data = tmp_path / "data"
    effects = tmp_path / "effects.log"
    env = cluster_env(fresh_pg_url, effects, IMAGEFORGE_SHUTDOWN_GRACE_SECONDS="0.5")
    slow = {**env, "IMAGEFORGE_CHAOS_MIN_SECONDS": "30", "IMAGEFORGE_CHAOS_MAX_SECONDS": "30"}
    fast = {**env, "IMAGEFORGE_CHAOS_MIN_SECONDS": "0", "IMAGEFORGE_CHAOS_MAX_SECONDS": "0"}
    key = _key(data, env)
    draining = taker = None
    with ServerProcess(data, "--no-worker", **env) as api:
        try:
            draining = WorkerProcess(data, slow, concurrency=4)
            draining.wait_started()
            ids = [_create(api, key, f"drain {n}") for n in range(3)]
            wait_until(
                lambda: len([e for e in read_events(effects) if e.event == "start"]) == 3,
                10,
                "three generations to start",
            )
            started = time.monotonic()
            assert draining.terminate(timeout=15) == 0
            assert time.monotonic() - started < 5
            rows = fetch(fresh_pg_url, "SELECT status, attempt, max_attempts FROM tasks")
            # Handed back: queued, the attempt spent but the budget raised to match.
            assert rows == [{"status": "queued", "attempt": 1, "max_attempts": 11}] * 3

            taker = WorkerProcess(data, fast, concurrency=4)
            wait_until(
                lambda: (
                    {r["status"] for r in fetch(fresh_pg_url, "SELECT status FROM tasks")}
                    == {"completed"}
                ),
                20,
                "another worker to finish the handed-back tasks",
            )
            ledger = fetch(
                fresh_pg_url, "SELECT task_id, kind FROM ledger WHERE task_id IS NOT NULL"
            )
            assert sorted((r["task_id"], r["kind"]) for r in ledger) == sorted(
                (task_id, "charge") for task_id in ids
            )
            assert taker.terminate() == 0
        finally:
            for worker in (draining, taker):
                if worker is not None:
                    worker.close()

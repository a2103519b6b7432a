"""`imageforge worker --processes N` on PostgreSQL: the processes share the queue, one that is
killed is replaced, SIGTERM drains them all; SQLite is refused."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from imageforge.testing.engines import read_events
from imageforge.testing.processes import ServerProcess, cli_env
from tests.cluster import REPO_ROOT, WorkerProcess, cluster_env, wait_until
from tests.test_postgres_workers import _create, _key, fetch

#: cluster_env's shutdown grace and lease.
GRACE_SECONDS, LEASE_SECONDS = 2.0, 3.0


def _children(supervisor: WorkerProcess) -> list[int]:
    return [int(pid) for pid in re.findall(r"started worker process (\d+)", supervisor.output())]


def _ready(supervisor: WorkerProcess) -> int:
    """How many worker processes have logged that they started."""
    return len(re.findall(r"worker \S+:\d+:\w+ started", supervisor.output()))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_processes_share_the_queue_and_a_killed_one_is_replaced(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    data = tmp_path / "data"
    effects = tmp_path / "effects.log"
    env = cluster_env(
        fresh_pg_url,
        effects,
        IMAGEFORGE_CHAOS_MIN_SECONDS="0.3",
        IMAGEFORGE_CHAOS_MAX_SECONDS="0.3",
    )
    key = _key(data, env)
    supervisor = None
    with ServerProcess(data, "--no-worker", **env) as api:
        try:
            supervisor = WorkerProcess(data, env, concurrency=2, args=["--processes", "2"])
            wait_until(lambda: len(_children(supervisor)) == 2, 30, "two worker processes")
            first, second = _children(supervisor)
            wait_until(lambda: _ready(supervisor) >= 2, 30, "both processes ready")
            ids = [_create(api, key, f"shared {n}") for n in range(12)]
            wait_until(
                lambda: all(
                    row["status"] == "completed"
                    for row in fetch(fresh_pg_url, "SELECT status FROM tasks")
                ),
                30,
                "every task to complete",
            )
            pids = {event.pid for event in read_events(effects) if event.event == "done"}
            assert pids == {first, second}, "both processes should have taken tasks"

            # A process killed outright is replaced.
            subprocess.run(["kill", "-9", str(first)], check=True)
            wait_until(lambda: len(_children(supervisor)) == 3, 30, "a replacement process")
            replacement = _children(supervisor)[2]
            assert replacement not in (first, second)
            assert "exited with SIGKILL" in supervisor.output()
            later = [_create(api, key, f"later {n}") for n in range(6)]
            wait_until(
                lambda: all(
                    row["status"] == "completed"
                    for row in fetch(
                        fresh_pg_url, "SELECT status FROM tasks WHERE id = ANY($1)", later
                    )
                ),
                30,
                "tasks created after the kill to complete",
            )
            assert len(ids) == 12

            # SIGTERM drains every process and the supervisor exits 0.
            assert supervisor.terminate(timeout=30) == 0
            assert not _alive(second) and not _alive(replacement)
        finally:
            if supervisor is not None:
                supervisor.close()


def test_several_processes_on_sqlite_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imageforge", "worker", "--processes", "2"],
        env=cli_env(tmp_path / "data"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78  # EX_CONFIG
    assert result.stderr.startswith("imageforge: IMAGEFORGE_DATABASE_URL: --processes needs")
    assert "Traceback" not in result.stderr


def test_sigint_stops_the_supervisor_too(tmp_path: Path, fresh_pg_url: str) -> None:
    data = tmp_path / "data"
    supervisor = WorkerProcess(data, cluster_env(fresh_pg_url), args=["--processes", "2"])
    try:
        wait_until(lambda: len(_children(supervisor)) == 2, 30, "two worker processes")
        children = _children(supervisor)
        wait_until(lambda: _ready(supervisor) >= 2, 30, "both processes ready")
        started = time.monotonic()
        supervisor.signal(signal.SIGINT)
        assert supervisor.process.wait(timeout=30) == 0
        took = time.monotonic() - started
        print(f"\nSIGINT to the supervisor: every process drained and exited in {took:.2f}s")
        # Idle workers: the drain is the processes' own exit, far within the grace period
        # plus a lease, however loaded the machine (the grace only bounds in-flight work).
        assert took < GRACE_SECONDS + LEASE_SECONDS + 10
        assert not any(_alive(pid) for pid in children)
    finally:
        supervisor.close()

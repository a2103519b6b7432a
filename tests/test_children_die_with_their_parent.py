"""`kill -9` of a parent takes its children with it: serve's render processes (and with
them multiprocessing's resource tracker), and the workers of `worker --processes N`."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imageforge.testing.leftovers import Leftover, alive, descendants
from imageforge.testing.processes import ServerProcess, create_key, wait_terminal
from tests.cluster import WorkerProcess, cluster_env, wait_until

#: A child learns of its parent's death at once (prctl); a worker then drains (grace: 2 s).
EXIT_WITHIN_SECONDS = 15.0


def _kill_and_time_children(parent: int, children: list[Leftover]) -> float:
    started = time.monotonic()
    os.kill(parent, signal.SIGKILL)
    deadline = started + EXIT_WITHIN_SECONDS
    while any(alive(child.pid) for child in children):
        still = [child.command[:120] for child in children if alive(child.pid)]
        assert time.monotonic() < deadline, f"still running after the parent died: {still}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_kill_9_of_serve_takes_its_render_processes_and_resource_tracker(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    key = create_key(data)["key"]
    with (
        ServerProcess(data, IMAGEFORGE_RENDER_PROCESSES="2") as server,
        server.client(key) as client,
    ):
        body = {"model": "gpt-image-2", "prompt": "a lighthouse"}
        with ThreadPoolExecutor(2) as pool:
            ids = list(pool.map(lambda _: client.post("/v1/image2/images", json=body), range(4)))
        for created in ids:
            assert wait_terminal(client, created.json()["id"])["status"] == "completed"
        children = descendants(server.process.pid)
        trackers = [c for c in children if "resource_tracker" in c.command]
        renders = [c for c in children if c not in trackers]
        assert trackers and renders, children
        # Only the server is killed, not its process group: as a user's `kill -9 PID` does.
        took = _kill_and_time_children(server.process.pid, children)
        server.process.wait(timeout=10)
    print(f"\n{len(renders)} render processes and the resource tracker gone {took:.2f}s after")


def test_kill_9_of_the_supervisor_takes_its_workers(tmp_path: Path, fresh_pg_url: str) -> None:
    data = tmp_path / "data"
    supervisor = WorkerProcess(
        data, cluster_env(fresh_pg_url, IMAGEFORGE_ENGINE="offline"), args=["--processes", "2"]
    )
    try:
        wait_until(lambda: supervisor.output().count(" started") >= 4, 60, "two workers started")
        workers = descendants(supervisor.pid)
        assert len(workers) >= 2, workers
        took = _kill_and_time_children(supervisor.pid, workers)
        supervisor.process.wait(timeout=10)
        output = supervisor.output()
        assert output.count("draining") >= 2, output  # each worker drained, as on SIGTERM
    finally:
        supervisor.close()
    print(f"\n{len(workers)} worker processes drained and gone {took:.2f}s after the supervisor")


def test_kill_9_of_serve_processes_takes_its_servers(tmp_path: Path, fresh_pg_url: str) -> None:
    data = tmp_path / "data"
    env = cluster_env(fresh_pg_url, IMAGEFORGE_ENGINE="offline", IMAGEFORGE_LOG_LEVEL="info")
    with ServerProcess(data, "--no-worker", "--processes", "2", **env) as server:
        wait_until(lambda: server.output().count("started server process") >= 2, 30, "two servers")
        servers = descendants(server.process.pid)
        assert len(servers) >= 2, servers
        took = _kill_and_time_children(server.process.pid, servers)
        server.process.wait(timeout=10)
    print(f"\n{len(servers)} server processes gone {took:.2f}s after the supervisor")

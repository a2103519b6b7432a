"""Database outage: the API answers 503 (never 500), workers back off, both recover.

The machine's PostgreSQL stays up; the processes reach it through a TCP proxy this
test controls, and "the outage" is the proxy dropping every connection and refusing
new ones. Scale the outage by hand with IMAGEFORGE_OUTAGE_SECONDS (default 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from imageforge.testing.engines import read_events
from imageforge.testing.processes import ServerProcess, free_port, run_cli
from tests.cluster import WorkerProcess, cluster_env, wait_until
from tests.pg import pg_connect, run_sync

LEASE_SECONDS = 10.0


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target port, on its own event loop thread.
    `cut()` resets every connection and stops listening; `restore()` listens again."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, coroutine: object) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)  # type: ignore[arg-type]

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()  # RST, like a crashed server or a dropped network
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self._target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            for end in (writer, upstream_writer):
                self._writers.discard(end)
                end.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


async def _statuses(url: str) -> Counter[str]:
    connection = await pg_connect(url)
    try:
        rows = await connection.fetch("SELECT status FROM tasks")
    finally:
        await connection.close()
    return Counter(row[0] for row in rows)


def test_database_outage_gives_503_then_everything_recovers(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    outage_seconds = float(os.environ.get("IMAGEFORGE_OUTAGE_SECONDS", "6"))
    data = tmp_path / "data"
    effects = tmp_path / "effects.log"
    direct = make_url(fresh_pg_url)
    with TcpProxy(direct.port or 5432) as proxy:
        proxied_url = direct.set(port=proxy.port).render_as_string(hide_password=False)
        env = cluster_env(
            proxied_url,
            effects,
            IMAGEFORGE_CHAOS_MIN_SECONDS="0.2",
            IMAGEFORGE_CHAOS_MAX_SECONDS="0.4",
            # Longer than the outage: work in flight rides it out instead of being rescued.
            IMAGEFORGE_LEASE_SECONDS=str(LEASE_SECONDS),
        )
        created = run_cli(data, "keys", "create", "--name", "o", "--json", **env)
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout.strip().splitlines()[-1])["key"]
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "gpt-image-2", "prompt": "outage"}
        worker = WorkerProcess(data, env, concurrency=4)
        try:
            with (
                ServerProcess(data, "--no-worker", **env) as api,
                httpx.Client(base_url=api.base_url, headers=headers, timeout=30) as client,
            ):
                worker.wait_started()
                accepted = [client.post("/v1/image2/images", json=body).json()["id"]]
                accepted += [
                    client.post("/v1/image2/images", json=body).json()["id"] for _ in range(7)
                ]
                time.sleep(0.3)  # some in flight on the worker when the database goes

                proxy.cut()
                seen: Counter[str] = Counter()
                ends = time.monotonic() + outage_seconds
                while time.monotonic() < ends:
                    create = client.post("/v1/image2/images", json=body)
                    poll = client.get(f"/v1/result/{accepted[-1]}")
                    health = client.get("/readyz")
                    # Alive all along: liveness does no I/O, so no one restarts the node.
                    alive = client.get("/healthz")
                    assert alive.status_code == 200, alive.text
                    for name, response in (("create", create), ("poll", poll), ("health", health)):
                        seen[f"{name} {response.status_code}"] += 1
                        if response.status_code == 503:
                            assert response.headers["retry-after"] == "5"
                            assert response.json()["error"]["type"]
                    if health.status_code == 503:
                        assert "database is unreachable" in health.json()["error"]["message"]
                    time.sleep(0.2)
                assert not [status for status in seen if status.endswith(" 500")], seen
                assert seen["create 503"] and seen["health 503"], seen
                assert set(seen) <= {"create 503", "poll 503", "poll 200", "health 503"}, seen

                proxy.restore()
                restored = time.monotonic()
                while (response := client.post("/v1/image2/images", json=body)).status_code != 200:
                    assert response.status_code == 503, response.text
                    assert time.monotonic() - restored < 5, "API not back within 5 s"
                    time.sleep(0.1)
                api_recovery = time.monotonic() - restored
                assert client.get("/readyz").status_code == 200
                accepted.append(response.json()["id"])

                wait_until(
                    lambda: (
                        run_sync(lambda: _statuses(fresh_pg_url)) == {"completed": len(accepted)}
                    ),
                    20,
                    "every accepted task to complete after the outage",
                )
                worker_recovery = time.monotonic() - restored
                for task_id in accepted:
                    assert client.get(f"/v1/result/{task_id}").json()["status"] == "completed"
                print(
                    f"\noutage {outage_seconds:.0f}s: {dict(seen)}; API back after "
                    f"{api_recovery:.2f}s, all tasks done {worker_recovery:.2f}s after restore"
                )
                assert "database unavailable" in worker.output()
                if outage_seconds < LEASE_SECONDS - 2:
                    # Nothing ran twice: completions waited for the database.
                    done = Counter(e.task_id for e in read_events(effects) if e.event == "done")
                    assert set(done.values()) == {1}, done
                assert api.terminate() == 0
            assert worker.terminate() == 0
        finally:
            worker.close()

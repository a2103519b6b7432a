"""A worker SIGKILLed after its image is in the bucket and before its completion is
committed: no image is lost (another attempt completes the task, and its image
downloads) and no orphan is left once the janitor has swept. PostgreSQL + S3, every
process with a data dir of its own, as on separate machines.

The worker reaches the bucket through a proxy on loopback that holds back the bucket's
answers on command: the image is stored, the worker is still waiting to hear so, and
its completion has not been sent when it is killed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from imageforge.testing.processes import ServerProcess, create_key, wait_terminal
from imageforge.testing.s3 import MotoServer
from tests.cluster import WorkerProcess, cluster_env, wait_until
from tests.pg import pg_connect, run_sync


class HoldingProxy:
    """TCP proxy 127.0.0.1:port → target; while `hold` is set, what the target sends
    back waits in the proxy (requests still go through)."""

    def __init__(self, target_port: int) -> None:
        self.hold = threading.Event()
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                while answers and self.hold.is_set() and not self._closed.is_set():
                    time.sleep(0.01)
                sink.sendall(data)

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


async def _status(url: str, task_id: str) -> str | None:
    connection = await pg_connect(url)
    try:
        status: str | None = await connection.fetchval(
            "SELECT status FROM tasks WHERE id = $1", task_id
        )
        return status
    finally:
        await connection.close()


def test_a_kill_between_write_and_commit_loses_no_image_and_leaves_no_orphan(
    tmp_path: Path, fresh_pg_url: str, moto_s3: MotoServer
) -> None:
    bucket = moto_s3.create_bucket()
    env = cluster_env(
        fresh_pg_url,
        **moto_s3.env(bucket),
        IMAGEFORGE_JANITOR_INTERVAL_SECONDS="1",
        IMAGEFORGE_ORPHAN_GRACE_SECONDS="1",
    )
    key = create_key(tmp_path / "cli" / "data", **env)["key"]
    api = ServerProcess(tmp_path / "api" / "data", "--no-worker", **env)
    proxy = HoldingProxy(moto_s3.port)
    through_proxy = {**env, "IMAGEFORGE_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    first = WorkerProcess(tmp_path / "worker-1" / "data", through_proxy, concurrency=1)
    second: WorkerProcess | None = None
    try:
        first.wait_started()  # its start-up check went through the proxy
        proxy.hold.set()
        with api.client(key) as client:
            task_id = client.post(
                "/v1/image2/images", json={"model": "gpt-image-2", "prompt": "kill me"}
            ).json()["id"]
            day = datetime.now(UTC).strftime("%Y/%m/%d")
            written = f"{day}/{task_id}-1.png"
            wait_until(lambda: written in moto_s3.object_keys(bucket), 20, "the image to be stored")
            # Stored, and the worker not told yet: it has not sent its completion.
            time.sleep(0.2)
            first.kill()
            proxy.close()
            assert run_sync(lambda: _status(fresh_pg_url, task_id)) == "processing"
            assert moto_s3.object_keys(bucket) == [written]

            # Another node rescues the task once the lease runs out, and completes it.
            second = WorkerProcess(tmp_path / "worker-2" / "data", env, concurrency=1)
            body = wait_terminal(client, task_id, timeout=60)
            assert body["status"] == "completed", body
            image = httpx.get(body["image_url"])
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
            assert f"/{task_id}-2.png" in body["image_url"]

        # The killed attempt's image is an orphan, and the janitor removes it.
        wait_until(
            lambda: moto_s3.object_keys(bucket) == [f"{day}/{task_id}-2.png"],
            30,
            "the janitor to remove the orphan",
        )
        assert second.terminate() == 0, second.output()[-2000:]
        assert api.terminate() == 0
    finally:
        proxy.close()
        first.close()
        if second is not None:
            second.close()
        if api.process.poll() is None:
            api.kill()

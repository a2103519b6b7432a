"""Run `imageforge` as a user would: real processes on real ports, for tests and benchmarks.

Every process gets a clean environment: the caller's, without any `IMAGEFORGE_*`
variable, plus the data dir and what the caller adds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEFORGE_")}
    env.update({"IMAGEFORGE_DATA_DIR": str(data_dir), "IMAGEFORGE_LOG_LEVEL": "warning"})
    env.update(extra)
    return env


def run_cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imageforge", *args],
        env=cli_env(data_dir, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def create_key(data_dir: Path, name: str = "test", **env: str) -> dict[str, Any]:
    """`imageforge keys create --json`: → {"id", "key", "name"}."""
    result = run_cli(data_dir, "keys", "create", "--name", name, "--json", **env)
    if result.returncode != 0:
        raise RuntimeError(f"keys create failed: {result.stderr}")
    created: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return created


class ServerProcess:
    """`imageforge serve` on a free port of 127.0.0.1, ready (/readyz 200) once built;
    its output goes to a log file beside the data dir."""

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        program: Sequence[str] = (sys.executable, "-m", "imageforge"),
        cwd: Path | None = None,
        **env: str,
    ) -> None:
        """`program` is how `imageforge` is started (e.g. its console script); `cwd` the
        working directory (default: the caller's)."""
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                *program,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *args,
            ],
            env=cli_env(data_dir, **env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            # Its own process group, so that `kill` takes the render processes with it.
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        )

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash would: the server and every process it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.kill()
        elif not self._log.closed:
            self._log.close()


def wait_terminal(client: httpx.Client, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll a task until it is completed or failed; → its last poll's body."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/result/{task_id}")
        if response.status_code != 200:
            raise AssertionError(f"poll of {task_id}: {response.status_code} {response.text}")
        body: dict[str, Any] = response.json()
        if body["status"] in ("completed", "failed"):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{task_id} still {body['status']}")
        time.sleep(0.1)

"""Distributed mode as an operator runs it: API nodes and workers as real processes.

API nodes are `imageforge serve --no-worker` (imageforge.testing.processes.ServerProcess);
workers are `imageforge worker` (WorkerProcess here). All share one database and one
data dir, and run the chaos engine from imageforge.testing.engines.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from imageforge.testing.processes import cli_env

REPO_ROOT = Path(__file__).resolve().parent.parent
CHAOS_ENGINE = "imageforge.testing.engines:ChaosEngine"


def cluster_env(
    database_url: str, side_effects: Path | None = None, **extra: str
) -> dict[str, str]:
    """Settings every process of a test cluster shares (short leases: kills heal fast)."""
    env = {
        "PYTHONPATH": str(REPO_ROOT),
        "IMAGEFORGE_DATABASE_URL": database_url,
        "IMAGEFORGE_ENGINE": CHAOS_ENGINE,
        "IMAGEFORGE_LEASE_SECONDS": "3",
        "IMAGEFORGE_HEARTBEAT_SECONDS": "1",
        "IMAGEFORGE_RESCUE_INTERVAL_SECONDS": "0.5",
        "IMAGEFORGE_POLL_INTERVAL_SECONDS": "0.5",
        "IMAGEFORGE_MAX_ATTEMPTS": "10",
        "IMAGEFORGE_SHUTDOWN_GRACE_SECONDS": "2",
    }
    if side_effects is not None:
        env["IMAGEFORGE_CHAOS_LOG"] = str(side_effects)
    env.update(extra)
    return env


class WorkerProcess:
    """`imageforge worker`: claims and runs tasks until SIGTERM (drain) or SIGKILL."""

    _started = 0

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str],
        *,
        concurrency: int = 4,
        args: Sequence[str] = (),
    ) -> None:
        WorkerProcess._started += 1
        self.log_path = data_dir.parent / f"worker-{WorkerProcess._started}.log"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imageforge",
                "worker",
                "--concurrency",
                str(concurrency),
                *args,
            ],
            env=cli_env(data_dir, IMAGEFORGE_LOG_LEVEL="info", **env),
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_started(self, timeout: float = 30.0) -> None:
        wait_until(lambda: "started" in self.output(), timeout, f"worker {self.pid} start")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._log.close()
        return code

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        elif not self._log.closed:
            self._log.close()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)

"""SIGTERM at any moment of start-up is a clean stop: exit 0, nothing logged as an error.

PostgreSQL start-up (connecting, migrating a new database, the advisory lock) can take
seconds, and service managers stop what they just started. Each command is stopped at
random moments from the instant its handler is installed (an interpreter that has not run
a line of imageforge yet cannot handle anything; /proc tells when it can) through loading
the settings, the start-up check, migrations, the first key, the engines and serving.
`IMAGEFORGE_STOP_SEED` replays a run.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imageforge.testing.processes import cli_env, free_port
from tests.cluster import REPO_ROOT
from tests.pg import PostgresServer

SEED = os.environ.get("IMAGEFORGE_STOP_SEED") or str(random.randrange(10**6))
#: What each command logs once it is started, and how many times.
READY = {
    "serve": (re.compile(r"Application startup complete"), 1),
    "worker": (re.compile(r"worker \S+ started"), 1),
    "worker --processes 2": (re.compile(r"worker \S+ started"), 2),
}
#: Stops at random moments of the start-up as measured (one in each half of it), after
#: the measuring run, which is stopped once ready.
HALVES = ((0.0, 0.5), (0.5, 1.0))


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler installed (`SigCgt` in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def _run_and_stop(
    directory: Path, command: str, args: list[str], *, delay: float | None, **env: str
) -> tuple[str, float, float]:
    """Start `args`, SIGTERM it `delay` seconds after its handler is in place (None: once
    it is ready), insist on a clean exit; → (output, seconds from the start to the
    handler, seconds from the handler to ready or to the stop)."""
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "output.log"
    marker, count = READY[command]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "imageforge", *args],
            env=cli_env(directory / "data", IMAGEFORGE_LOG_LEVEL="info", **env),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        spawned = time.monotonic()
        try:
            deadline = spawned + 60
            while not _catches_sigterm(process.pid):
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "no SIGTERM handler after 60 s"
                time.sleep(0.002)
            armed = time.monotonic()
            if delay is None:
                while len(marker.findall(log_path.read_text())) < count:
                    assert process.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, f"not ready:\n{log_path.read_text()}"
                    time.sleep(0.01)
            else:
                time.sleep(delay)
            elapsed = time.monotonic() - armed
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=90)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text()
    when = "once ready" if delay is None else f"at +{delay}s"
    assert code == 0, f"exit {code} after SIGTERM {when} (seed {SEED}):\n{output[-4000:]}"
    for bad in ("Traceback", " ERROR ", "CRITICAL"):
        assert bad not in output, f"{bad!r} after SIGTERM {when} (seed {SEED}):\n{output}"
    return output, armed - spawned, elapsed


def _stops_across_start_up(
    tmp_path: Path,
    command: str,
    database: str,
    args: list[str],
    env_for_run: Callable[[], dict[str, str]] = dict,
) -> None:
    _, unarmed, start_up = _run_and_stop(
        tmp_path / "ready", command, args, delay=None, **env_for_run()
    )
    rng = random.Random(f"{SEED}:{command}:{database}")
    delays = [round(rng.uniform(low, high) * start_up, 3) for low, high in HALVES]
    print(
        f"\n{command} ({database}): handler after {unarmed:.2f}s, then {start_up:.2f}s to "
        f"ready; SIGTERM at +{delays} s"
    )
    # The handler comes first (before the heavy imports, the settings, the database): what
    # runs before it is the interpreter's own start, which no program can stop cleanly.
    assert unarmed < start_up, f"the SIGTERM handler came {unarmed:.2f}s into the start"
    for index, delay in enumerate(delays):
        _run_and_stop(tmp_path / str(index), command, args, delay=delay, **env_for_run())


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_sigterm_during_start_up_on_sqlite(tmp_path: Path, command: str) -> None:
    args = command.split()
    if command == "serve":
        args += ["--host", "127.0.0.1", "--port", str(free_port())]
    _stops_across_start_up(tmp_path, command, "SQLite", args)


@pytest.mark.parametrize("command", ["serve", "worker", "worker --processes 2"])
def test_sigterm_during_start_up_on_postgresql(
    tmp_path: Path, postgres_server: PostgresServer, command: str
) -> None:
    args = command.split()
    if command == "serve":
        args += ["--host", "127.0.0.1", "--port", str(free_port())]

    def new_database() -> dict[str, str]:
        # Never migrated: each start-up includes the migrations, under their lock.
        return {"IMAGEFORGE_DATABASE_URL": postgres_server.create_database(migrate=False)}

    _stops_across_start_up(tmp_path, command, "PostgreSQL", args, new_database)

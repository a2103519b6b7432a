"""Upstream engine benchmark: many slow upstream calls in flight in ONE worker process.

A local OpenAI-style Images API (`tests/upstream_servers.py`, its own process) takes `--latency`
seconds per image. `--tasks` tasks are created through `imageforge serve --no-worker` (stopped
before the measurement), then one `imageforge worker --concurrency N` with the zero-config
`IMAGEFORGE_ENGINE=openai` (`OPENAI_BASE_URL` pointing at the local upstream) runs them all.

`--engine relay` measures the relay engine the same way against a local task API that finishes
each task `--latency` seconds after its submission. The relay sees a task done only at its
next poll, so its ceiling is `concurrency / (first poll at or after latency)` (2.875 s for a
2 s latency with the default schedule), reported as `ratio_to_poll_schedule`.

Reported (one JSON object on stdout, progress on stderr):

- throughput: tasks / (last finish − first start), from the tasks' own timestamps, against the
  ideal `concurrency / latency`; the target is ≥ 90 %.
- worker RSS: sampled from /proc/<pid>/status; growth = peak − the first sample after the worker
  logged that it started (imports, engines and clients are loaded by then); target ≤ 200 MB.
- lost: tasks not completed when the run ends (target 0), with failed and retried counts.
- the baseline (openai engine): `bare_client.py`, a bare aiohttp client making the same calls to
  the same upstream at the same concurrency, in the same run: its CPU per call, the worker's CPU
  per task as a multiple of it (target ≤ 3×, stretch ≤ 2×), and its own ratio to the ideal (a
  machine where it stays under 0.98 cannot show the worker's 0.90 either).
- where the time goes: the worker's CPU seconds, the upstream's peak calls in flight, and the
  spread of task start times (a slow claim or completion path shows up there).

Exit status 0 when the run completed, whatever the figures; 1 when it broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from imageforge.testing.processes import ServerProcess, cli_env, create_key, free_port

ROOT = Path(__file__).resolve().parents[1]

THROUGHPUT_TARGET = 0.90
#: The worker's CPU per task as a multiple of a bare aiohttp client's CPU per call.
CPU_MULTIPLE_TARGET, CPU_MULTIPLE_STRETCH = 3.0, 2.0
RSS_GROWTH_TARGET_MB = 200.0
TASK = {"model": "gpt-image-2", "prompt": "a lighthouse on a cliff at dusk", "quality": "low"}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time of a process, or of one of its threads (the main thread's id is the pid)."""
    stat = Path(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


class RssSampler(threading.Thread):
    """The RSS of the worker: its process, or the sum of a supervisor's worker processes."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            values = [rss_kib(pid) for pid in self.pids()]
            if values and None not in values:
                self.samples.append((time.monotonic(), sum(v for v in values if v)))
            time.sleep(self.interval)

    def first_after(self, moment: float) -> int:
        return next(v for t, v in self.samples if t >= moment)

    @property
    def peak(self) -> int:
        return max(v for _, v in self.samples)


def children(pid: int) -> list[int]:
    """The child processes of `pid` (a supervisor's workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


class TaskTable:
    """Reads the tasks table of the run's database: SQLite, or PostgreSQL through one
    connection on a private event loop."""

    def __init__(self, data_dir: Path, database_url: str | None) -> None:
        self.db = data_dir / "imageforge.db"
        self.database_url = database_url
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: Any = None

    def _query(self, query: str) -> list[tuple[Any, ...]]:
        if self.database_url is None:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
                rows = conn.execute(query).fetchall()
            conn.close()
            return rows
        import asyncpg

        from imageforge.store.urls import asyncpg_dsn

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._connection = self._loop.run_until_complete(
                asyncpg.connect(asyncpg_dsn(self.database_url))
            )
        records = self._loop.run_until_complete(self._connection.fetch(query))
        return [tuple(record) for record in records]

    def rows(self) -> list[tuple[str, int, float | None, float | None, str | None]]:
        return self._query("SELECT status, attempt, started_at, finished_at, upstream FROM tasks")  # type: ignore[return-value]

    def status_counts(self) -> dict[str, int]:
        return dict(self._query("SELECT status, count(*) FROM tasks GROUP BY status"))  # type: ignore[arg-type]

    def close(self) -> None:
        if self._loop is not None:
            self._loop.run_until_complete(self._connection.close())
            self._loop.close()
            self._loop = None


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_upstream(
    port: int, latency: float, log_path: Path, engine: str
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    api = "images" if engine == "openai" else "tasks"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.upstream_servers", "--port", str(port),
             "--delay", str(latency), "--api", api],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 30, "the upstream to start")
    return process


async def create_tasks(base_url: str, key: str, count: int, parallel: int = 32) -> list[str]:
    ids: list[str] = []
    queue = iter(range(count))
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:

        async def creator() -> None:
            for _ in queue:
                response = await client.post("/v1/image2/images", json=TASK)
                response.raise_for_status()
                ids.append(response.json()["id"])

        await asyncio.gather(*(creator() for _ in range(parallel)))
    return ids


def bare_client(port: int, args: argparse.Namespace) -> dict[str, Any]:
    """The baseline: `bare_client.py`'s calls to the same upstream, in its own process."""
    log(f"the bare aiohttp client: {args.tasks} calls at concurrency {args.concurrency}")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bare_client.py"), "--port", str(port),
         "--calls", str(args.tasks), "--concurrency", str(args.concurrency)],
        capture_output=True, text=True, timeout=args.timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the bare client failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run(
    args: argparse.Namespace, *, processes: int = 1, database_url: str | None = None
) -> dict[str, Any]:
    """One run: `args.tasks` tasks per worker process, each at `args.concurrency`."""
    work = Path(tempfile.mkdtemp(prefix="imageforge-upstream-bench-"))
    data_dir = work / "data"
    table = TaskTable(data_dir, database_url)
    tasks = args.tasks * processes
    database = {"IMAGEFORGE_DATABASE_URL": database_url} if database_url else {}
    port = free_port()
    upstream = start_upstream(port, args.latency, work / "upstream.log", args.engine)
    engine_env = (
        {
            "OPENAI_API_KEY": "sk-bench-not-a-real-key",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
        }
        if args.engine == "openai"
        else {
            "IMAGEFORGE_RELAY_BASE_URL": f"http://127.0.0.1:{port}",
            "IMAGEFORGE_RELAY_API_KEY": "bench-not-a-real-key",
        }
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        key = create_key(data_dir, **database)["key"]
        log(f"creating {tasks} tasks through the API")
        started = time.monotonic()
        # The engine is chosen when a task is accepted, so the API must route to openai too.
        with ServerProcess(
            data_dir, "--no-worker", IMAGEFORGE_ENGINE=args.engine, **engine_env, **database
        ) as api:
            ids = asyncio.run(create_tasks(api.base_url, key, tasks))
            api.terminate()
        create_seconds = time.monotonic() - started
        assert len(set(ids)) == tasks

        log(f"running them through {processes} worker process(es), concurrency {args.concurrency}")
        worker_log = work / "worker.log"
        env = cli_env(
            data_dir,
            IMAGEFORGE_ENGINE=args.engine,
            IMAGEFORGE_LOG_LEVEL="info",
            **engine_env,
            **database,
        )
        several = ["--processes", str(processes)] if processes > 1 else []
        with worker_log.open("wb") as out:
            profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
            worker = subprocess.Popen(
                [sys.executable, *profile, "-m", "imageforge", "worker", "--concurrency",
                 str(args.concurrency), *several],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        launched = time.monotonic()
        supervisor = worker.pid

        def workers() -> list[int]:
            return children(supervisor) if processes > 1 else [supervisor]

        def started() -> bool:
            # Each worker process's own line (the supervisor's say "started worker process").
            return len(re.findall(rb"worker \S+ started", worker_log.read_bytes())) >= processes

        sampler = RssSampler(workers)
        sampler.start()
        wait_for(started, 60, "the worker to start")
        pids = workers()
        ready = time.monotonic()
        cpu_at_ready = sum(cpu_seconds(pid) for pid in pids)
        upstream_cpu_at_ready = cpu_seconds(upstream.pid)
        loop_cpu_at_ready = sum(cpu_seconds(pid, thread=pid) for pid in pids)

        def finished() -> bool:
            if worker is not None and worker.poll() is not None:
                raise RuntimeError(f"worker exited:\n{worker_log.read_text()[-3000:]}")
            counts = table.status_counts()
            return counts.get("completed", 0) + counts.get("failed", 0) >= tasks

        wait_for(finished, args.timeout, "every task to finish")
        done = time.monotonic()
        time.sleep(1.0)  # an idle sample after the run
        worker_cpu = sum(cpu_seconds(pid) for pid in pids)
        loop_cpu = sum(cpu_seconds(pid, thread=pid) for pid in pids) - loop_cpu_at_ready
        sampler.stop_event.set()
        sampler.join()
        worker.send_signal(signal.SIGTERM)
        worker_exit = worker.wait(timeout=60)
        stats = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()
        upstream_cpu = cpu_seconds(upstream.pid) - upstream_cpu_at_ready
        bare = bare_client(port, args) if args.engine == "openai" and processes == 1 else None
        rows = table.rows()
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        upstream.terminate()
        upstream.wait(timeout=30)
        table.close()

    completed = [r for r in rows if r[0] == "completed"]
    starts = sorted(r[2] for r in rows if r[2] is not None)
    finishes = sorted(r[3] for r in completed if r[3] is not None)
    window = finishes[-1] - starts[0]
    throughput = len(completed) / window
    ideal = processes * args.concurrency / args.latency
    # Tasks finish in waves of `concurrency`; the floor for the window is latency × waves.
    waves = -(-tasks // (args.concurrency * processes))
    baseline_kib = sampler.first_after(ready)
    growth_mb = (sampler.peak - baseline_kib) / 1024
    durations = [r[3] - r[2] for r in completed if r[2] is not None and r[3] is not None]
    # One event loop handles a wave of `concurrency` calls one after another, so each wave
    # costs latency + concurrency × (CPU per task): the ceiling this model predicts.
    cpu_per_task = (worker_cpu - cpu_at_ready) / tasks
    predicted = processes * args.concurrency / (args.latency + args.concurrency * cpu_per_task)
    # Where a task's time goes: claimed → at the upstream → answered → completed.
    arrivals = sorted(t[0] for t in stats["timings"])
    answers = sorted(t[1] for t in stats["timings"])
    phases = {
        "claim_to_upstream_p50_s": _median_gap(starts, arrivals),
        "upstream_answer_to_completed_p50_s": _median_gap(answers, finishes),
        "first_wave_sent_within_s": round(arrivals[args.concurrency - 1] - arrivals[0], 3)
        if len(arrivals) >= args.concurrency
        else None,
        # The second wave can start only once the first answers are back.
        "first_call_arrived_after_s": round(arrivals[0] - starts[0], 3) if arrivals else None,
        "first_answer_after_s": round(answers[0] - starts[0], 3) if answers else None,
        "second_wave_started_after_s": round(starts[args.concurrency] - starts[0], 3)
        if len(starts) > args.concurrency
        else None,
        # After the first answer the loop is the limit: how long it takes to send the rest,
        # and how long the last answer waits to be stored and completed.
        "rest_sent_within_s": round(arrivals[-1] - arrivals[args.concurrency], 3)
        if len(arrivals) > args.concurrency
        else None,
        "last_answer_to_last_finish_s": round(finishes[-1] - answers[-1], 3)
        if answers and finishes
        else None,
    }
    baseline: dict[str, Any] | None = None
    if bare is not None:
        multiple = cpu_per_task * 1000 / bare["cpu_ms_per_call"]
        baseline = {
            **bare,
            "ratio_to_ideal": round(bare["calls_per_s"] / ideal, 3),
            "worker_cpu_multiple": round(multiple, 2),
            "target_multiple": CPU_MULTIPLE_TARGET,
            "stretch_multiple": CPU_MULTIPLE_STRETCH,
            "ok": multiple <= CPU_MULTIPLE_TARGET,
        }
    return {
        "bench": "upstream",
        "setup": {
            "tasks": tasks,
            "concurrency": args.concurrency,
            "processes": processes,
            "database": "postgresql" if database_url else "sqlite",
            "upstream_latency_s": args.latency,
            "engine": f"{args.engine} (zero-config: IMAGEFORGE_ENGINE={args.engine})",
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "throughput": {
            "tasks_per_s": round(throughput, 1),
            "ideal_tasks_per_s": round(ideal, 1),
            "ratio": round(throughput / ideal, 3),
            "target": THROUGHPUT_TARGET,
            "ok": throughput / ideal >= THROUGHPUT_TARGET,
            "window_s": round(window, 3),
            "ideal_window_s": round(waves * args.latency, 3),
            **(
                {
                    # The relay sees a task done only at its first poll after that: the
                    # ceiling its default poll schedule allows.
                    "first_poll_after_latency_s": round(seen, 3),
                    "ratio_to_poll_schedule": round(throughput / (args.concurrency / seen), 3),
                }
                if args.engine == "relay" and (seen := first_poll_at_or_after(args.latency))
                else {}
            ),
        },
        "bare_client": baseline,
        "worker_rss_mb": {
            "at_start": round(baseline_kib / 1024, 1),
            "peak": round(sampler.peak / 1024, 1),
            "after_run": round(sampler.samples[-1][1] / 1024, 1),
            "growth": round(growth_mb, 1),
            "target_growth": RSS_GROWTH_TARGET_MB,
            "ok": growth_mb <= RSS_GROWTH_TARGET_MB,
        },
        "tasks": {
            "completed": len(completed),
            "failed": sum(1 for r in rows if r[0] == "failed"),
            "lost": tasks - len(completed),
            "retried": sum(1 for r in rows if r[1] > 1),
            "served_by": sorted({r[4] for r in completed if r[4]}),
            "duration_s_p50": round(statistics.median(durations), 3),
            "duration_s_max": round(max(durations), 3),
            "ok": len(completed) == tasks,
        },
        "diagnostics": {
            "create_s": round(create_seconds, 2),
            "worker_start_s": round(ready - launched, 2),
            "worker_ready_to_all_done_s": round(done - ready, 2),
            "worker_cpu_s": round(worker_cpu, 2),
            "worker_cpu_ms_per_task": round(cpu_per_task * 1000, 2),
            # The event loop's thread alone: what one wave's work queues behind.
            "worker_loop_thread_cpu_ms_per_task": round(loop_cpu / tasks * 1000, 2),
            "predicted_tasks_per_s_cpu_bound_waves": round(predicted, 1),
            "upstream_calls": stats["completed"],
            **(
                {"upstream_submissions": stats["submissions"], "upstream_polls": stats["polls"]}
                if "polls" in stats
                else {}
            ),
            "upstream_cpu_ms_per_call": round(upstream_cpu / max(1, stats["completed"]) * 1000, 2),
            "upstream_max_in_flight": stats["max_in_flight"],
            "upstream_connections": stats["connections"],
            "start_spread_first_wave_s": round(starts[args.concurrency - 1] - starts[0], 3)
            if len(starts) >= args.concurrency
            else None,
            "worker_exit_code": worker_exit,
            **phases,
        },
    }


def run_postgres(args: argparse.Namespace) -> dict[str, Any]:
    """One worker process, then `--processes` of them with as many times the load, each on
    a fresh database: how the throughput scales, and what each run's workers hold."""
    from imageforge.testing.postgres import PostgresServer

    databases = PostgresServer(args.postgres)
    try:
        one = run(args, database_url=databases.create_database())
        several = run(args, processes=args.processes, database_url=databases.create_database())
    finally:
        databases.drop_all()
    scale = several["throughput"]["tasks_per_s"] / one["throughput"]["tasks_per_s"]
    return {
        "bench": "upstream-postgres",
        "processes": args.processes,
        "cpus": os.cpu_count(),
        "scale": round(scale, 3),
        "ideal_scale": args.processes,
        "one_process": one,
        "several_processes": several,
    }


def first_poll_at_or_after(latency: float) -> float:
    """When the relay's default schedule (`engines/relay.py`) polls a task for the first time
    at or after `latency` seconds from its submission."""
    from imageforge.engines.config import UpstreamConfig
    from imageforge.engines.relay import _POLL_GROWTH

    config = UpstreamConfig(kind="relay", base_url="http://127.0.0.1")
    at = wait = interval = config.poll_initial_seconds
    while at < latency:
        wait, interval = interval, min(interval * _POLL_GROWTH, config.poll_max_seconds)
        at += wait
    return at


def _median_gap(earlier: list[float], later: list[float]) -> float | None:
    """Median of the i-th later event minus the i-th earlier one (both sorted): tasks are
    interchangeable here, so rank i stands for "the i-th task through this step"."""
    gaps = [b - a for a, b in zip(earlier, later, strict=False)]
    return round(statistics.median(gaps), 3) if gaps else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--latency", type=float, default=2.0, help="upstream seconds per image")
    parser.add_argument("--timeout", type=float, default=90.0, help="give up after (s)")
    parser.add_argument("--profile", help="run the worker under cProfile, writing this file")
    parser.add_argument(
        "--engine",
        choices=("openai", "relay"),
        default="openai",
        help="openai: a fake Images API answers after --latency; relay: a fake task API "
        "finishes each task --latency after its submission (the relay polls for it)",
    )
    parser.add_argument(
        "--postgres",
        metavar="SERVER_URL",
        nargs="?",
        const="postgresql://postgres@127.0.0.1:5432/postgres",
        help="on PostgreSQL (throw-away databases on this server): one worker process with "
        "--tasks, then `worker --processes N` with N times the tasks; reports the scale",
    )
    parser.add_argument("--processes", type=int, default=2, help="N of the --postgres run")
    args = parser.parse_args()
    try:
        report = run(args) if args.postgres is None else run_postgres(args)
    except Exception as exc:
        log(f"broke: {exc!r}")
        import traceback

        traceback.print_exc()
        sys.exit(1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

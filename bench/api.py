"""End-to-end API benchmark: `imageforge serve` against an independent bare FastAPI app.

`make bench` runs this file (and `upstream.py`, then `report.py` writes bench/REPORT.md); it
prints one JSON report on stdout and its progress on stderr.

The baseline is `bench/bare_app.py`: a minimal FastAPI app in its own process, under uvicorn
with the settings `imageforge serve` uses (uvloop, httptools, no access log), one route per
hot path returning a dict of the same shape. Each ratio is imageforge's median req/s over
the bare app's, their passes interleaved in the same run. Because the machine may be shared,
each figure also gives the servers' CPU per request (from /proc) and the ratio of those
(bare CPU / imageforge CPU), which a busy machine moves far less than req/s.

Phases, each against fresh `imageforge serve` subprocesses on 127.0.0.1, for each store
(`--stores sqlite,postgres`; PostgreSQL on `--postgres-url`, a throw-away database):

0. setup (with the in-process worker): create an API key and `--small-tasks` 1024x640 tasks,
   wait until all are completed, stop; (SQLite) copy the data dir for phase 3.
1. poll and create (`--no-worker`): create `--queued-tasks` more tasks (they stay queued),
   then, pass after pass: the bare app's `GET /v1/result/{id}`, imageforge's poll over the
   completed tasks only, over a 50/50 mix of completed and queued tasks, the bare app's
   `POST /v1/image2/images`, imageforge's create.
2. more cores (PostgreSQL): `serve --no-worker --processes N` beside the one-process server
   of phase 1, poll (completed) and create passes alternating between the two.
3. poll during 4K renders (SQLite, with the worker, on the copy of phase 0's data): keep a
   backlog of 4K tasks queued and poll a mix of completed and rendering ids while the worker
   renders; first with `--connections` closed-loop connections (the primary figure), then at
   a fixed `--render-rate`.
1b. observability cost (SQLite): three fresh API-only servers with the defaults (request lines
   and metrics on) and three with both off, on the same data; each pass polls all six in turn,
   on and off alternating, and each side is pooled over its servers (two processes of the
   same program differ by up to 10 % here; the spread of the "on" servers is the A/A control).
   Target: on ≥ 95 % of off.

Load comes from `loadgen.py` in a separate process. Throughput figures are the median req/s of
the passes and the ratio of the medians; p50/p99 come from the pass with the median req/s and are
also given pooled over all passes. The exit status is 0 when the bench ran, whatever the figures,
and 1 when it broke (a server did not start, tasks did not complete, or > 1% errors).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg

from imageforge.testing.postgres import PostgresServer
from loadgen import LoadResult, LoadSpec, percentile, run_load

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent
#: Poll throughput with request lines and metrics on, against both off: at most 5 % less.
OBSERVABILITY_TARGET = 0.95
#: Server processes on each side of phase 1b.
OBSERVABILITY_SERVERS = 3
OBSERVABILITY_OFF = {"IMAGEFORGE_ACCESS_LOG": "false", "IMAGEFORGE_METRICS_ENABLED": "false"}
#: (target, stretch) of imageforge's req/s over the bare app's, by store and route.
TARGETS: dict[str, dict[str, tuple[float, float | None]]] = {
    "sqlite": {"poll": (0.80, 1.2), "create": (0.35, 0.5)},
    "postgres": {"poll": (0.70, None), "create": (0.30, None)},
}
RENDER_P99_TARGET_MS = 50.0
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
#: More errors than this (of the measured requests of a phase) means the bench broke.
MAX_ERROR_RATE = 0.01
#: Above this share of a core the generator may be what limits the request rate.
GENERATOR_CORE_LIMIT = 0.90
SMALL_TASK = {"model": "gpt-image-2", "size": "1024x640"}
RENDER_TASK = {"model": "gpt-image-2", "ratio": "16:9", "resolution": "4k", "quality": "high"}
#: Distinct create bodies cycled by the create passes.
CREATE_BODIES = 256
SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 60.0
TASKS_TIMEOUT_S = 300.0
_STARTED = time.monotonic()


class BenchError(Exception):
    """The bench itself broke (as opposed to the server missing a target)."""


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    passes: int
    duration: float
    warmup: float
    connections: int
    small_tasks: int
    queued_tasks: int
    render_backlog: int
    render_rate: float
    render_duration: float
    keep_data: bool
    stores: tuple[str, ...]
    postgres_url: str
    processes: int
    render: bool


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark imageforge's API against an independent bare FastAPI app.",
    )
    parser.add_argument("--passes", type=int, default=3, help="passes of each endpoint (3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per pass")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per pass")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--small-tasks", type=int, default=60, help="completed tasks (60)")
    parser.add_argument("--queued-tasks", type=int, default=60, help="queued tasks in the mix")
    parser.add_argument(
        "--stores", default="sqlite,postgres", help="sqlite, postgres or both (the default)"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("IMAGEFORGE_TEST_DATABASE_URL", DEFAULT_POSTGRES_URL),
        help="a PostgreSQL server to create a throw-away database on",
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="`serve --processes N` of phase 2 (2; 1: skip)"
    )
    parser.add_argument("--no-render", action="store_true", help="skip phase 3")
    parser.add_argument(
        "--render-backlog", type=int, default=6, help="4K tasks kept unfinished in phase 3"
    )
    parser.add_argument(
        "--render-rate",
        type=float,
        default=2000.0,
        help="req/s of the fixed-rate poll during renders (0: skip it)",
    )
    parser.add_argument(
        "--render-duration", type=float, default=None, help="seconds per phase-3 window"
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data dir")
    args = parser.parse_args(argv)
    if args.passes < 1 or args.duration <= 0 or args.warmup < 0 or args.connections < 1:
        parser.error("--passes, --duration and --connections must be positive")
    stores = tuple(name.strip() for name in args.stores.split(",") if name.strip())
    if not stores or any(name not in TARGETS for name in stores):
        parser.error("--stores: a comma-separated list of sqlite and postgres")
    return Options(
        passes=args.passes,
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        small_tasks=max(1, args.small_tasks),
        queued_tasks=max(1, args.queued_tasks),
        render_backlog=max(1, args.render_backlog),
        render_rate=max(0.0, args.render_rate),
        render_duration=args.render_duration or args.duration,
        keep_data=args.keep_data,
        stores=stores,
        postgres_url=args.postgres_url,
        processes=max(1, args.processes),
        render=not args.no_render and "sqlite" in stores,
    )


# --------------------------------------------------------------------------------------------
# The server subprocess and a small synchronous client
# --------------------------------------------------------------------------------------------


def _imageforge_command() -> str:
    beside = Path(sys.executable).parent / "imageforge"
    if beside.is_file():
        return str(beside)
    found = shutil.which("imageforge")
    if found is None:
        raise BenchError("the `imageforge` command is not installed (run `make install`)")
    return found


def _server_env(data_dir: Path, database_url: str | None = None) -> dict[str, str]:
    """The caller's environment without its own IMAGEFORGE_* settings, plus the bench's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEFORGE_")}
    env["IMAGEFORGE_DATA_DIR"] = str(data_dir)
    if database_url is not None:
        env["IMAGEFORGE_DATABASE_URL"] = database_url
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Server:
    """One server subprocess in its own session (so Ctrl-C reaches only us)."""

    def __init__(
        self,
        *,
        command: list[str],
        env: dict[str, str],
        work_dir: Path,
        log_path: Path,
        port: int,
        health_path: str = "/healthz",
    ) -> None:
        self.command = command
        self.env = env
        self.work_dir = work_dir
        self.log_path = log_path
        self.port = port
        self.health_path = health_path
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def imageforge(
        cls,
        *,
        data_dir: Path,
        database_url: str | None,
        work_dir: Path,
        log_path: Path,
        worker: bool,
        processes: int = 1,
        env: dict[str, str] | None = None,
    ) -> Server:
        port = _free_port()
        command = [_imageforge_command(), "serve", "--host", HOST, "--port", str(port)]
        if not worker:
            command.append("--no-worker")
        if processes > 1:
            command += ["--processes", str(processes)]
        return cls(
            command=command,
            env={**_server_env(data_dir, database_url), **(env or {})},
            work_dir=work_dir,
            log_path=log_path,
            port=port,
            health_path="/readyz",
        )

    @classmethod
    def bare(cls, *, work_dir: Path) -> Server:
        """The independent baseline, `bare_app.py`."""
        port = _free_port()
        return cls(
            command=[
                sys.executable,
                str(ROOT / "bare_app.py"),
                "--host",
                HOST,
                "--port",
                str(port),
            ],
            env={k: v for k, v in os.environ.items() if not k.startswith("IMAGEFORGE_")},
            work_dir=work_dir,
            log_path=work_dir / "server-bare.log",
            port=port,
            health_path="/v1/result/health",
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        """Start the server and wait until it answers 200; return how long that took."""
        started = time.perf_counter()
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.work_dir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = started + SERVER_START_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"the server exited with status {self.proc.returncode} at start-up; "
                    f"log:\n{_tail(self.log_path)}"
                )
            if self._healthy():
                return time.perf_counter() - started
            time.sleep(0.05)
        raise BenchError(
            f"the server did not answer {self.health_path} within "
            f"{SERVER_START_TIMEOUT_S:.0f} s; log:\n{_tail(self.log_path)}"
        )

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            conn.request("GET", self.health_path)
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def stop(self) -> float | None:
        """SIGTERM, wait, SIGKILL the whole group if it lingers; how long it took to exit."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        started = time.perf_counter()
        elapsed: float | None = None
        if proc.poll() is not None:
            log(f"the server had already exited with status {proc.returncode}")
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(SERVER_STOP_TIMEOUT_S)
                elapsed = time.perf_counter() - started
            except subprocess.TimeoutExpired:
                log(f"the server did not exit {SERVER_STOP_TIMEOUT_S:.0f} s after SIGTERM; killing")
        # Whatever is left of its process group (render processes included) goes too.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return elapsed


class Client:
    """A keep-alive JSON client for setup and monitoring (not for measurements)."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        payload = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            conn = self._conn or http.client.HTTPConnection(HOST, self.port, timeout=30)
            try:
                conn.request(method, path, body=payload, headers=self.headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._conn = None
                if attempt == 2:
                    raise
                continue
            self._conn = conn
            if response.status != 200:
                raise BenchError(f"{method} {path}: HTTP {response.status}: {data[:300]!r}")
            return json.loads(data)
        raise AssertionError("unreachable")

    def create(self, body: dict[str, Any]) -> str:
        task_id: str = self.request("POST", "/v1/image2/images", body)["id"]
        return task_id

    def status(self, task_id: str) -> str:
        status: str = self.request("GET", f"/v1/result/{task_id}")["status"]
        return status

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def _interleave(first: Sequence[str], second: Sequence[str]) -> list[str]:
    """first[0], second[0], first[1], ...: cycling it alternates between the two kinds."""
    count = min(len(first), len(second))
    mixed = [item for pair in zip(first[:count], second[:count], strict=True) for item in pair]
    return mixed + list(first[count:]) + list(second[count:])


def _ms(value: float) -> float:
    return round(value, 3)


def _summarise(runs: list[LoadResult]) -> dict[str, Any]:
    """Median req/s of the passes; percentiles of the median pass and pooled over all."""
    median_pass = sorted(runs, key=lambda r: r.rps)[(len(runs) - 1) // 2]
    pooled = sorted(sample for run in runs for sample in run.latencies_us)
    return {
        "rps": round(statistics.median(r.rps for r in runs), 1),
        "p50_ms": _ms(median_pass.p50_ms),
        "p99_ms": _ms(median_pass.p99_ms),
        "max_ms": _ms(max(r.max_ms for r in runs)),
        "pooled_p50_ms": _ms(percentile(pooled, 0.50) / 1000),
        "pooled_p99_ms": _ms(percentile(pooled, 0.99) / 1000),
        "passes_rps": [r.rps for r in runs],
        "requests": sum(r.requests for r in runs),
        "errors": sum(r.errors for r in runs),
        "server_cpu_us_per_req": _median_or_none([r.server_cpu_us_per_req for r in runs]),
        "server_core_fraction": _median_or_none([r.server_core_fraction for r in runs]),
        "client_cpu_us_per_req": round(statistics.median(r.client_cpu_us_per_req for r in runs), 2),
        "client_core_fraction_max": max(r.client_core_fraction for r in runs),
        "max_gap_ms": max(r.max_gap_ms for r in runs),
        "stalls_20ms": sum(r.stalls for r in runs),
        "stalled_fraction": round(
            sum(r.stalls_ms for r in runs) / max(1.0, sum(r.window_s * 1000 for r in runs)), 4
        ),
    }


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


@dataclass
class ErrorBook:
    """Errors per phase, over the measured windows (warm-ups are counted apart)."""

    phases: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, phase: str, runs: Sequence[LoadResult]) -> None:
        entry = self.phases.setdefault(
            phase,
            {"requests": 0, "errors": 0, "errors_incl_warmup": 0, "statuses": {}, "samples": []},
        )
        statuses: Counter[str] = Counter(entry["statuses"])
        for run in runs:
            entry["requests"] += run.requests
            entry["errors"] += run.errors
            entry["errors_incl_warmup"] += run.errors_total
            statuses.update(run.statuses)
            entry["samples"] = list(dict.fromkeys(entry["samples"] + run.error_samples))[:5]
        entry["statuses"] = dict(statuses)
        entry["rate"] = round(entry["errors"] / max(1, entry["requests"]), 5)

    @property
    def broken(self) -> bool:
        return any(e["rate"] > MAX_ERROR_RATE for e in self.phases.values())

    def report(self) -> dict[str, Any]:
        total = sum(e["errors"] for e in self.phases.values())
        return {
            "total": total,
            "flagged": total > 0 or any(e["errors_incl_warmup"] for e in self.phases.values()),
            "max_rate": MAX_ERROR_RATE,
            "broken": self.broken,
            "by_phase": self.phases,
        }


@dataclass
class RenderTask:
    id: str
    created_ns: int
    started_ns: int | None = None  # first seen `processing`
    done_ns: int | None = None  # first seen `completed` or `failed`
    status: str = "queued"


class RenderMonitor(threading.Thread):
    """Keeps `backlog` 4K tasks unfinished and records when each is seen processing and done."""

    def __init__(self, port: int, key: str, backlog: int, interval_s: float = 0.05) -> None:
        super().__init__(name="render-monitor", daemon=True)
        self.client = Client(port, key)
        self.backlog = backlog
        self.interval_s = interval_s
        self.tasks: list[RenderTask] = []
        self.topping_up = True
        self.halt = threading.Event()
        self.processing_seen = threading.Event()
        self.failure: BaseException | None = None

    def fill(self) -> None:
        while self.topping_up and sum(t.done_ns is None for t in self.tasks) < self.backlog:
            body = {**RENDER_TASK, "prompt": f"bench 4k render {len(self.tasks)}"}
            self.tasks.append(RenderTask(self.client.create(body), time.perf_counter_ns()))

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.fill()
                for task in [t for t in self.tasks if t.done_ns is None]:
                    status = self.client.status(task.id)
                    now = time.perf_counter_ns()
                    task.status = status
                    if status == "processing" and task.started_ns is None:
                        task.started_ns = now
                    elif status in ("completed", "failed"):
                        task.done_ns = now
                        task.started_ns = task.started_ns or now
                    if task.started_ns is not None:
                        self.processing_seen.set()
                self.halt.wait(self.interval_s)
        except BaseException as exc:
            self.failure = exc
        finally:
            self.client.close()

    def overlap(self, start_ns: int, end_ns: int) -> dict[str, Any]:
        """How the renders (as seen by polling) overlapped the window [start_ns, end_ns]."""
        tasks = list(self.tasks)
        window = max(1, end_ns - start_ns)
        spans = [
            (max(t.started_ns, start_ns), min(t.done_ns or end_ns, end_ns))
            for t in tasks
            if t.started_ns is not None and t.started_ns <= end_ns
            if t.done_ns is None or t.done_ns >= start_ns
        ]
        covered, reach = 0, start_ns
        for begin, finish in sorted(spans):
            begin = max(begin, reach)
            if finish > begin:
                covered += finish - begin
                reach = finish
        done_inside = [
            t for t in tasks if t.done_ns is not None and start_ns <= t.done_ns <= end_ns
        ]
        return {
            "renders_overlapping": len(spans),
            "renders_completed_in_window": len(done_inside),
            "render_busy_fraction": round(covered / window, 3),
            "renders_failed": sum(t.status == "failed" for t in done_inside),
        }


# --------------------------------------------------------------------------------------------
# The bench
# --------------------------------------------------------------------------------------------


@dataclass
class StoreRun:
    """One store's data: its data dir, database and key, and its completed tasks."""

    name: str
    data_dir: Path
    database_url: str | None
    key: str = ""
    completed: list[str] = field(default_factory=list)


@dataclass
class Measured:
    """The passes of one measured load, against one server."""

    label: str
    spec: LoadSpec
    runs: list[LoadResult] = field(default_factory=list)


class Bench:
    def __init__(self, options: Options, work_dir: Path) -> None:
        self.opts = options
        self.work_dir = work_dir
        self.errors = ErrorBook()
        self.server_times: dict[str, list[float | None]] = {"start_s": [], "stop_s": []}
        self.generator_limited = False
        self.setup: dict[str, Any] = {}
        self.databases: PostgresServer | None = None
        self.skipped: dict[str, str] = {}

    # servers ---------------------------------------------------------------------------

    @contextmanager
    def server(self, name: str, server: Server) -> Iterator[Server]:
        try:
            log(f"starting the server ({name})")
            elapsed = server.start()
            self.server_times["start_s"].append(round(elapsed, 2))
            log(f"server up on port {server.port} after {elapsed:.2f} s")
            yield server
        finally:
            stopped = server.stop()
            self.server_times["stop_s"].append(round(stopped, 2) if stopped else None)
            log(f"server stopped after {stopped:.2f} s" if stopped else "server killed")

    def imageforge(
        self,
        name: str,
        store: StoreRun,
        *,
        worker: bool,
        processes: int = 1,
        env: dict[str, str] | None = None,
    ) -> Server:
        return Server.imageforge(
            data_dir=store.data_dir,
            database_url=store.database_url,
            work_dir=self.work_dir,
            log_path=self.work_dir / f"server-{store.name}-{name}.log",
            worker=worker,
            processes=processes,
            env=env,
        )

    def create_key(self, store: StoreRun) -> str:
        store.data_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [_imageforge_command(), "keys", "create", "--name", "bench", "--json"],
            cwd=self.work_dir,
            env=_server_env(store.data_dir, store.database_url),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if done.returncode != 0 or not lines:
            raise BenchError(f"`imageforge keys create` failed: {done.stderr[-2000:]}")
        key: str = json.loads(lines[-1])["key"]
        return key

    def open_store(self, name: str) -> StoreRun | None:
        data_dir = self.work_dir / f"data-{name}"
        if name == "sqlite":
            return StoreRun(name, data_dir, None)
        self.databases = self.databases or PostgresServer(self.opts.postgres_url)
        try:
            url = self.databases.create_database()
        except (OSError, asyncpg.PostgresError) as exc:
            self.skipped["postgres"] = (
                f"PostgreSQL not reachable at {self.opts.postgres_url}: {exc}"
            )
            log(f"skipping PostgreSQL: {exc}")
            return None
        return StoreRun(name, data_dir, url)

    # phases ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        bare = Server.bare(work_dir=self.work_dir)
        stores: dict[str, Any] = {}
        render: dict[str, Any] | None = None
        render_store: StoreRun | None = None
        scale: dict[str, Any] | None = None
        try:
            with self.server("bare", bare):
                for name in self.opts.stores:
                    store = self.open_store(name)
                    if store is None:
                        continue
                    store.key = self.create_key(store)
                    store.completed = self.phase_setup(store)
                    if name == "sqlite" and self.opts.render:
                        copy = self.work_dir / "data-render"
                        shutil.copytree(store.data_dir, copy)
                        render_store = replace(store, name="render", data_dir=copy)
                    figures, scale_of_store = self.phase_poll_and_create(store, bare)
                    stores[name] = figures
                    scale = scale_of_store or scale
            if render_store is not None:
                render = self.phase_render(render_store)
        finally:
            if self.databases is not None:
                self.databases.drop_all()
        report = {
            "machine": machine_info(),
            "config": self.config(),
            "stores": stores,
            "processes": scale,
            "poll_during_4k_render": render,
            "skipped": self.skipped,
            "generator": {
                "bottleneck_suspected": self.generator_limited,
                "core_limit": GENERATOR_CORE_LIMIT,
                "note": "client_* figures are the load generator's own CPU (getrusage in its "
                "process); server_* are the server process's CPU from /proc over the window",
            },
            "setup": self.setup,
            "server": {**self.server_times, "log": scan_logs(self.work_dir)},
            "errors": self.errors.report(),
            "elapsed_s": round(time.monotonic() - _STARTED, 1),
        }
        report["findings"] = findings(report)
        return report

    def phase_setup(self, store: StoreRun) -> list[str]:
        """Phase 0: tasks rendered by the embedded worker, the completed ones polled."""
        with self.server("setup", self.imageforge("setup", store, worker=True)) as server:
            client = Client(server.port, store.key)
            started = time.perf_counter()
            ids = [
                client.create({**SMALL_TASK, "prompt": f"bench small {i}"})
                for i in range(self.opts.small_tasks)
            ]
            log(f"{store.name}: created {len(ids)} small tasks; waiting for the worker")
            statuses = wait_for_tasks(client, ids)
            elapsed = time.perf_counter() - started
            client.close()
        failed = [task_id for task_id, status in statuses.items() if status != "completed"]
        if failed:
            raise BenchError(f"{len(failed)} setup tasks did not complete, e.g. {failed[0]}")
        self.setup[store.name] = {
            "small_tasks": len(ids),
            "small_size": SMALL_TASK["size"],
            "small_tasks_s": round(elapsed, 2),
            "small_renders_per_s": round(len(ids) / elapsed, 1),
        }
        log(f"{store.name}: {len(ids)} small tasks completed in {elapsed:.1f} s")
        return ids

    def phase_poll_and_create(
        self, store: StoreRun, bare: Server
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Phases 1 and 2 on API-only servers, so no render competes for the CPU."""
        opts = self.opts
        with self.server("api", self.imageforge("api", store, worker=False)) as server:
            client = Client(server.port, store.key)
            queued = [
                client.create({"model": "gpt-image-2", "prompt": f"bench queued {i}"})
                for i in range(opts.queued_tasks)
            ]
            mix_ids = _interleave(store.completed, queued)
            seen = Counter(client.status(task_id) for task_id in mix_ids)
            client.close()
            if seen["completed"] != len(store.completed) or seen["queued"] != len(queued):
                raise BenchError(f"unexpected task statuses before the poll phase: {dict(seen)}")
            log(f"{store.name}: poll mix {dict(seen)}")

            get_headers = {"Authorization": f"Bearer {store.key}"}
            post_headers = {**get_headers, "Content-Type": "application/json"}
            bodies = [
                json.dumps({"model": "gpt-image-2", "prompt": f"bench {n}"})
                for n in range(CREATE_BODIES)
            ]
            completed_paths = [f"/v1/result/{i}" for i in store.completed]
            loads = {
                "bare_poll": self.spec(bare, completed_paths, get_headers),
                "poll_completed": self.spec(server, completed_paths, get_headers),
                "poll_mix": self.spec(server, [f"/v1/result/{i}" for i in mix_ids], get_headers),
                "bare_create": self.spec(bare, ["/v1/image2/images"], post_headers, "POST", bodies),
                "create": self.spec(server, ["/v1/image2/images"], post_headers, "POST", bodies),
            }
            runs = self.interleave(store.name, loads)
            targets = TARGETS[store.name]
            figures = {
                "poll_completed": self.figure(
                    runs["poll_completed"], runs["bare_poll"], targets["poll"]
                ),
                "poll_mix": self.figure(runs["poll_mix"], runs["bare_poll"], targets["poll"]),
                "create": self.figure(runs["create"], runs["bare_create"], targets["create"]),
            }
            figures["poll_mix"]["mix"] = {"completed": seen["completed"], "queued": seen["queued"]}
            for name, figure in figures.items():
                log(f"{store.name} {name}: ratio {figure['ratio']:.3f} (target {figure['target']})")
            if store.name == "sqlite":
                figures["observability"] = self.phase_observability(store, loads)
            scale = None
            if store.name == "postgres" and opts.processes > 1:
                scale = self.phase_processes(store, server, loads)
        return figures, scale

    def phase_observability(self, store: StoreRun, loads: dict[str, LoadSpec]) -> dict[str, Any]:
        """Phase 1b: `OBSERVABILITY_SERVERS` fresh API-only servers with the defaults
        (request lines and metrics on) and as many with both off, on the same data; each
        pass polls every one of them in turn, on and off alternating. Two processes of the
        same program differ here by up to 10 % (their memory layout, their hash seeds, where
        the scheduler puts them), more than the cost measured, so each side is pooled over
        several processes; the spread of the servers with the defaults is the A/A control."""
        count = OBSERVABILITY_SERVERS
        servers = {
            f"poll_{side}_{n}": self.imageforge(
                f"observability {side} {n}",
                store,
                worker=False,
                env=OBSERVABILITY_OFF if side == "off" else None,
            )
            for n in range(1, count + 1)
            for side in ("on", "off")
        }
        with contextlib.ExitStack() as running:
            for label, server in servers.items():
                running.enter_context(self.server(label.replace("_", " "), server))
            poll = loads["poll_completed"]
            paired = {
                label: replace(poll, port=server.port, server_pid=server.pid)
                for label, server in servers.items()
            }
            runs = self.interleave(f"{store.name} observability", paired)
        on = [run for label, results in runs.items() if "_on_" in label for run in results]
        off = [run for label, results in runs.items() if "_off_" in label for run in results]
        figure = self.figure(on, off, (OBSERVABILITY_TARGET, None))
        by_server = {label: _summarise(results) for label, results in runs.items()}
        on_rps = [by_server[f"poll_on_{n}"]["rps"] for n in range(1, count + 1)]
        on_cpu = [by_server[f"poll_on_{n}"]["server_cpu_us_per_req"] for n in range(1, count + 1)]
        figure["servers"] = count
        figure["by_server"] = {
            label: {"rps": row["rps"], "server_cpu_us_per_req": row["server_cpu_us_per_req"]}
            for label, row in by_server.items()
        }
        figure["control"] = {
            "ratio": round(min(on_rps) / max(on_rps), 3) if max(on_rps) else None,
            "cpu_ratio": (
                round(min(on_cpu) / max(on_cpu), 3) if all(on_cpu) and max(on_cpu) else None
            ),
            "note": "A/A: the slowest server with the defaults over the fastest",
        }
        figure["note"] = (
            "on: a request line per poll (text, to the server's log) and its metrics; off: "
            "IMAGEFORGE_ACCESS_LOG=false, IMAGEFORGE_METRICS_ENABLED=false; baseline = off; "
            f"each side pooled over {count} server processes, passes interleaved"
        )
        figure["in_process"] = self.observability_in_process(store, figure)
        log(
            f"{store.name} observability on/off: ratio {figure['ratio']:.3f}, CPU ratio "
            f"{figure['cpu_ratio']}; A/A control {figure['control']['ratio']}"
        )
        return figure

    def observability_in_process(
        self, store: StoreRun, http: dict[str, Any]
    ) -> dict[str, Any] | None:
        """`observability.py`: the same two settings in one process, the app alone; its
        added microseconds over the HTTP poll's CPU of the servers with both off."""
        command = [
            sys.executable,
            str(ROOT / "observability.py"),
            "--data-dir",
            str(store.data_dir),
            "--key",
            store.key,
            "--task-id",
            store.completed[0],
        ]
        off_cpu = http.get("bare_server_cpu_us_per_req")
        if off_cpu:
            command += ["--http-cpu-us", str(off_cpu)]
        log(f"{store.name} observability in one process: bench/observability.py")
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            log(f"observability.py failed: {done.stderr[-2000:]}")
            return None
        figure: dict[str, Any] = json.loads(done.stdout)
        log(
            f"{store.name} observability in one process: +{figure['added_us']} µs a poll "
            f"over {figure['off_cpu_us_per_call']} µs, {figure.get('cost_over_http')} of the "
            "HTTP poll's CPU"
        )
        return figure

    def phase_processes(
        self, store: StoreRun, single: Server, loads: dict[str, LoadSpec]
    ) -> dict[str, Any]:
        """Phase 2: `serve --processes N` on the same database, beside the one-process server."""
        count = self.opts.processes
        multi = self.imageforge("multi", store, worker=False, processes=count)
        with self.server(f"{count} processes", multi):
            paired: dict[str, LoadSpec] = {}
            for route in ("poll_completed", "create"):
                spec = loads[route]
                paired[f"{route}_1"] = replace(spec, port=single.port, server_pid=single.pid)
                # Several processes: no single pid to read the CPU of.
                paired[f"{route}_{count}"] = replace(spec, port=multi.port, server_pid=None)
            runs = self.interleave(f"{store.name} processes", paired)
        report: dict[str, Any] = {"processes": count, "cpus": os.cpu_count()}
        for route in ("poll_completed", "create"):
            one, many = _summarise(runs[f"{route}_1"]), _summarise(runs[f"{route}_{count}"])
            report[route] = {
                "rps_1": one["rps"],
                f"rps_{count}": many["rps"],
                "scale": round(many["rps"] / one["rps"], 3) if one["rps"] else 0.0,
                "p99_ms_1": one["p99_ms"],
                f"p99_ms_{count}": many["p99_ms"],
            }
            log(f"{route}: {count} processes {report[route]['scale']:.2f}× one")
        return report

    def phase_render(self, store: StoreRun) -> dict[str, Any]:
        """Phase 3: poll latency while the embedded worker renders 4K pictures."""
        opts = self.opts
        completed = store.completed
        with self.server("render", self.imageforge("render", store, worker=True)) as server:
            monitor = RenderMonitor(server.port, store.key, opts.render_backlog)
            monitor.fill()
            render_ids = [t.id for t in monitor.tasks]
            monitor.start()
            try:
                if not monitor.processing_seen.wait(SERVER_START_TIMEOUT_S):
                    raise BenchError(
                        f"no 4K task reached `processing`: {monitor.failure or 'timed out'}"
                    )
                # Every other request polls a task being rendered (or waiting for its turn).
                ids = _interleave(completed, (render_ids * len(completed))[: len(completed)])
                paths = [f"/v1/result/{task_id}" for task_id in ids]
                headers = {"Authorization": f"Bearer {store.key}"}

                log("polling while 4K renders run (closed loop)")
                closed = run_load(self.spec(server, paths, headers, duration=opts.render_duration))
                fixed = None
                if opts.render_rate:
                    log(f"polling while 4K renders run ({opts.render_rate:.0f} req/s)")
                    fixed = run_load(
                        self.spec(
                            server,
                            paths,
                            headers,
                            duration=opts.render_duration,
                            rate=opts.render_rate,
                        )
                    )
            finally:
                monitor.topping_up = False
                monitor.halt.set()
                monitor.join(10)
            if monitor.failure is not None:
                raise BenchError(f"render monitor failed: {monitor.failure!r}")
        self.errors.add("poll_during_4k_render", [r for r in (closed, fixed) if r])
        self._check_generator([r for r in (closed, fixed) if r])

        report: dict[str, Any] = {
            "mode": f"closed loop, {opts.connections} keep-alive connections, "
            f"one {opts.render_duration:g} s window after {opts.warmup:g} s warm-up",
            "p50_ms": _ms(closed.p50_ms),
            "p99_ms": _ms(closed.p99_ms),
            "max_ms": _ms(closed.max_ms),
            "rps": closed.rps,
            **monitor.overlap(closed.window_start_ns, closed.window_end_ns),
            "target_p99_ms": RENDER_P99_TARGET_MS,
            "pass": closed.p99_ms <= RENDER_P99_TARGET_MS,
            "mix": {"completed": len(completed), "rendering_tasks": len(render_ids)},
            "render_tasks_created": len(monitor.tasks),
            "server_cpu_us_per_req": closed.server_cpu_us_per_req,
            "client_core_fraction": closed.client_core_fraction,
            "max_gap_ms": closed.max_gap_ms,
            "stalls_20ms": closed.stalls,
            "stall_samples_ms": closed.stall_samples,
            "errors": closed.errors,
        }
        if fixed is not None:
            report["fixed_rate"] = {
                "mode": f"{opts.render_rate:.0f} req/s paced over {opts.connections} "
                "connections; latency from each request's intended send time",
                "rate": opts.render_rate,
                "p50_ms": _ms(fixed.p50_ms),
                "p99_ms": _ms(fixed.p99_ms),
                "max_ms": _ms(fixed.max_ms),
                "rps": fixed.rps,
                **monitor.overlap(fixed.window_start_ns, fixed.window_end_ns),
                "pass": fixed.p99_ms <= RENDER_P99_TARGET_MS,
                "max_gap_ms": fixed.max_gap_ms,
                "stalls_20ms": fixed.stalls,
                "errors": fixed.errors,
            }
        log(
            f"during 4K renders: p50 {closed.p50_ms:.1f} ms, p99 {closed.p99_ms:.1f} ms, "
            f"max {closed.max_ms:.1f} ms, {closed.rps:.0f} req/s, "
            f"{report['renders_completed_in_window']} renders completed in the window"
        )
        return report

    # helpers ---------------------------------------------------------------------------

    def spec(
        self,
        server: Server,
        paths: list[str],
        headers: dict[str, str],
        method: str = "GET",
        bodies: list[str] | None = None,
        *,
        duration: float | None = None,
        rate: float | None = None,
    ) -> LoadSpec:
        return LoadSpec(
            port=server.port,
            paths=paths,
            method=method,
            headers=headers,
            bodies=bodies or [],
            connections=self.opts.connections,
            duration_s=duration or self.opts.duration,
            warmup_s=self.opts.warmup,
            rate=rate,
            server_pid=server.pid,
        )

    def interleave(self, name: str, loads: dict[str, LoadSpec]) -> dict[str, list[LoadResult]]:
        """Pass after pass, one run of each load in turn; every run of each load."""
        runs: dict[str, list[LoadResult]] = {label: [] for label in loads}
        for index in range(self.opts.passes):
            for label, spec in loads.items():
                result = run_load(spec)
                runs[label].append(result)
                cpu = result.server_cpu_us_per_req
                log(
                    f"{name} {label} pass {index + 1}/{self.opts.passes}: "
                    f"{result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                    f"p99 {result.p99_ms:.2f} ms, server "
                    f"{'-' if cpu is None else f'{cpu:.0f}'} µs/req, errors {result.errors}, "
                    f"generator {result.client_core_fraction:.0%} of a core"
                )
        for label, results in runs.items():
            self.errors.add(f"{name} {label}", results)
            self._check_generator(results)
        return runs

    def figure(
        self,
        real_runs: list[LoadResult],
        bare_runs: list[LoadResult],
        target: tuple[float, float | None],
    ) -> dict[str, Any]:
        """imageforge's median req/s over the bare app's, and the same of CPU per request."""
        real, bare = _summarise(real_runs), _summarise(bare_runs)
        ratio = real["rps"] / bare["rps"] if bare["rps"] else 0.0
        real_cpu, bare_cpu = real["server_cpu_us_per_req"], bare["server_cpu_us_per_req"]
        cpu_ratio = bare_cpu / real_cpu if real_cpu and bare_cpu else None
        return {
            "rps": real["rps"],
            "p50_ms": real["p50_ms"],
            "p99_ms": real["p99_ms"],
            "bare_rps": bare["rps"],
            "bare_p50_ms": bare["p50_ms"],
            "bare_p99_ms": bare["p99_ms"],
            "ratio": round(ratio, 3),
            "server_cpu_us_per_req": real_cpu,
            "bare_server_cpu_us_per_req": bare_cpu,
            "cpu_ratio": None if cpu_ratio is None else round(cpu_ratio, 3),
            "target": target[0],
            "stretch": target[1],
            "pass": ratio >= target[0],
            "detail": {"real": real, "bare": bare},
        }

    def _check_generator(self, runs: Sequence[LoadResult]) -> None:
        if any(r.client_core_fraction > GENERATOR_CORE_LIMIT for r in runs):
            self.generator_limited = True
            log("warning: the load generator used more than 90% of a core")

    def config(self) -> dict[str, Any]:
        opts = self.opts
        return {
            "passes": opts.passes,
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "connections": opts.connections,
            "small_tasks": opts.small_tasks,
            "queued_tasks": opts.queued_tasks,
            "render_task": RENDER_TASK,
            "render_backlog": opts.render_backlog,
            "render_rate": opts.render_rate,
            "render_duration_s": opts.render_duration,
            "stores": list(opts.stores),
            "processes": opts.processes,
            "order": "each pass runs every load once, in turn: bare poll, poll (completed), "
            "poll (mix), bare create, create; then the next pass",
            "throughput": "median req/s of the passes; ratio = median imageforge / median "
            "bare; cpu_ratio = bare server CPU per request / imageforge's",
            "latency": "p50/p99 from the pass with the median req/s; detail.*.pooled_* over "
            "all passes; latency is from send to the last byte of the response",
            "server": "imageforge serve (uvicorn, uvloop, httptools, no access log), "
            "default settings, fresh temporary data dir; baseline: bench/bare_app.py in its "
            "own process, same uvicorn settings",
            "load_generator": "bench/loadgen.py: asyncio + uvloop, HTTP/1.1 keep-alive, "
            "one request in flight per connection, separate process",
        }


def wait_for_tasks(client: Client, ids: Sequence[str]) -> dict[str, str]:
    """Poll until every task is completed or failed; their final statuses."""
    final: dict[str, str] = {}
    deadline = time.perf_counter() + TASKS_TIMEOUT_S
    pending = list(ids)
    while pending:
        if time.perf_counter() > deadline:
            raise BenchError(f"{len(pending)} tasks not finished after {TASKS_TIMEOUT_S:.0f} s")
        still = []
        for task_id in pending:
            status = client.status(task_id)
            if status in ("completed", "failed"):
                final[task_id] = status
            else:
                still.append(task_id)
        pending = still
        if pending:
            time.sleep(0.25)
    return final


def findings(report: dict[str, Any]) -> list[str]:
    """Plain-language notes on what in the figures deserves a look."""
    notes = []
    figures = [
        (f"{store} {name}", figure)
        for store, by_name in report["stores"].items()
        for name, figure in by_name.items()
    ]
    if report["generator"]["bottleneck_suspected"]:
        notes.append("the load generator used > 90% of a core in some pass: ratios are suspect")
    elif figures:
        most = max(
            figure["detail"][side]["client_core_fraction_max"]
            for _, figure in figures
            for side in ("real", "bare")
        )
        notes.append(f"the load generator used at most {most:.0%} of a core: not the bottleneck")
    for name, figure in figures:
        real, bare = figure["detail"]["real"], figure["detail"]["bare"]
        if real["stalls_20ms"]:
            notes.append(
                f"{name}: {real['stalls_20ms']} silences >= 20 ms with no response on any "
                f"connection ({real['stalled_fraction']:.1%} of the time, longest "
                f"{real['max_gap_ms']:.0f} ms; bare: {bare['stalls_20ms']}): the server's event "
                "loop blocks (a gen-2 garbage collection looks like this)"
            )
        core = real["server_core_fraction"]
        if core is not None and core < 0.9:
            notes.append(
                f"{name}: the server process used only {core:.0%} of a core while saturated: "
                "it waits on something (fsync, a lock, a thread, or a busy machine's other "
                "processes) instead of computing"
            )
    render = report["poll_during_4k_render"]
    if render is not None and render["render_busy_fraction"] < 0.9:
        notes.append(
            f"renders ran during only {render['render_busy_fraction']:.0%} of the phase-3 window"
        )
    load = report["machine"]["load_average_at_end"]
    if load[1] > (report["machine"]["cpus"] or 1) * 0.75:
        notes.append(
            f"the machine was busy (load average {load[1]:.1f} over 5 minutes on "
            f"{report['machine']['cpus']} cores): req/s moves with other work, cpu_ratio less"
        )
    log_counts = report["server"]["log"]["counts"]
    if log_counts:
        notes.append(f"the server logged {log_counts}; see server.log.samples")
    if report["errors"]["flagged"]:
        notes.append(f"requests failed: {report['errors']['total']} in measured windows")
    return notes


def scan_logs(work_dir: Path) -> dict[str, Any]:
    """Warnings, errors and tracebacks the servers logged during the bench."""
    counts: Counter[str] = Counter()
    samples: list[str] = []
    for path in sorted(work_dir.glob("server-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            kind = next(
                (k for k in ("Traceback", "CRITICAL", "ERROR", "WARNING") if k in line), None
            )
            if kind is None:
                continue
            counts[kind] += 1
            if len(samples) < 10:
                samples.append(f"{path.stem}: {line.strip()[:300]}")
    return {"counts": dict(counts), "samples": samples}


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("uvicorn", "uvloop", "httptools", "fastapi", "starlette", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model or platform.processor() or None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "packages": versions,
    }


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # Also when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    work_dir = Path(tempfile.mkdtemp(prefix="imageforge-bench-"))
    bench = Bench(options, work_dir)
    try:
        report = bench.run()
    except BenchError as exc:
        log(f"the bench broke: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if options.keep_data:
            log(f"data kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if report["errors"]["broken"]:
        log(f"more than {MAX_ERROR_RATE:.0%} of the requests of a phase failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

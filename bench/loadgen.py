"""A small HTTP/1.1 keep-alive load generator: asyncio + uvloop, one process, one core.

Each of N connections sends one request at a time (closed loop) and sends the next one as soon
as the response is complete; with `rate` set, the connections instead pace themselves to that
total rate and latency is measured from each request's *intended* send time, so a stalled server
is not hidden by the generator waiting for it (no coordinated omission).

The response parser is deliberately minimal: status line, headers up to the blank line, then
exactly Content-Length body bytes. Chunked responses are counted as errors.

Run it in its own process so it does not share a core with the driver or the server:
`run_load(spec)` starts `python loadgen.py`, writes the spec as JSON on its stdin and reads a
JSON `LoadResult` from its stdout. Only 127.0.0.1 (or another loopback address) is allowed.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_NS_PER_S = 1_000_000_000
#: A run that has not answered every request this long after its window closed gives up.
_DRAIN_TIMEOUT_S = 10.0
#: A silence this long between two responses (any connection) counts as a server stall.
_STALL_NS = 20_000_000
#: Distinct error messages kept verbatim in the result (the rest are only counted).
_MAX_ERROR_SAMPLES = 5


@dataclass(frozen=True)
class LoadSpec:
    """What to send, how hard and for how long. `bodies` (if any) cycle in step with `paths`."""

    port: int
    paths: list[str]
    method: str = "GET"
    host: str = "127.0.0.1"
    headers: dict[str, str] = field(default_factory=dict)
    bodies: list[str] = field(default_factory=list)
    connections: int = 64
    duration_s: float = 5.0
    warmup_s: float = 1.0
    #: Total requests/s across all connections; None for a closed loop (as fast as answered).
    rate: float | None = None
    #: The server's pid, to report its CPU time per request over the window (Linux only).
    server_pid: int | None = None
    #: Keep every latency sample in the result (for pooled percentiles).
    keep_latencies: bool = True


@dataclass
class LoadResult:
    """What one run measured over its window (warm-up excluded)."""

    requests: int
    errors: int
    errors_total: int
    window_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    statuses: dict[str, int]
    error_samples: list[str]
    client_cpu_s: float
    client_cpu_us_per_req: float
    client_core_fraction: float
    server_cpu_s: float | None
    server_cpu_us_per_req: float | None
    server_core_fraction: float | None
    window_start_ns: int
    window_end_ns: int
    #: Requests still unanswered when the run gave up (also counted in `errors`).
    unanswered: int = 0
    #: Longest time no response at all arrived, and the silences >= 20 ms: when the server's
    #: event loop blocks, every connection waits at once.
    max_gap_ms: float = 0.0
    stalls: int = 0
    stalls_ms: float = 0.0
    #: The longest silences as [offset into the window (ms), length (ms)], in time order.
    stall_samples: list[list[float]] = field(default_factory=list)
    latencies_us: list[int] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadResult:
        return cls(**data)


def percentile(sorted_values: list[int] | list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when it is empty)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values), max(1, math.ceil(fraction * len(sorted_values))))
    return float(sorted_values[rank - 1])


# --------------------------------------------------------------------------------------------
# The generator (runs in the child process)
# --------------------------------------------------------------------------------------------


def _build_requests(spec: LoadSpec) -> list[bytes]:
    count = max(len(spec.paths), len(spec.bodies) or 1)
    fixed = [f"Host: {spec.host}:{spec.port}"]
    fixed += [f"{name}: {value}" for name, value in spec.headers.items()]
    requests = []
    for index in range(count):
        path = spec.paths[index % len(spec.paths)]
        lines = [f"{spec.method} {path} HTTP/1.1", *fixed]
        body = spec.bodies[index % len(spec.bodies)].encode() if spec.bodies else b""
        if body or spec.method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {len(body)}")
        requests.append(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    return requests


def _content_length(head: bytes) -> int:
    """Content-Length of a response head; -1 when it has none (chunked or close-delimited)."""
    lowered = head.lower()
    start = lowered.find(b"\r\ncontent-length:")
    if start < 0:
        return -1
    start += len(b"\r\ncontent-length:")
    end = lowered.find(b"\r\n", start)
    return int(lowered[start : end if end >= 0 else len(lowered)])


class _ProtocolError(Exception):
    pass


class _Generator:
    """Shared state of all connections: the window, the samples and the counters."""

    def __init__(self, spec: LoadSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.requests = _build_requests(spec)
        self.window_start = sys.maxsize  # set by the warm-up timer
        self.window_end = sys.maxsize
        self.stopping = False
        self.latencies: list[int] = []
        self.last_done = 0
        self.max_gap = 0
        #: (offset into the window, length) of each silence >= _STALL_NS between responses.
        self.stalls: list[tuple[int, int]] = []
        self.statuses: Counter[str] = Counter()
        self.errors_in_window = 0
        self.errors_total = 0
        self.error_samples: list[str] = []
        self.connections: list[_Connection] = []
        self.interval_ns = (
            int(spec.connections * _NS_PER_S / spec.rate) if spec.rate else 0
        )  # per connection
        self.finished = loop.create_future()
        self.cpu_start = 0.0
        self.cpu_end = 0.0
        self.server_cpu_start: float | None = None
        self.server_cpu_end: float | None = None

    def record(self, intended_ns: int, status: int) -> None:
        now = time.perf_counter_ns()
        if not 200 <= status < 300:
            self.error(f"HTTP {status}", now)
        if self.window_start <= now and not self.stopping:
            self.latencies.append(now - intended_ns)
            self.statuses[str(status)] += 1
            gap = now - max(self.last_done, self.window_start)
            self.max_gap = max(self.max_gap, gap)
            if gap >= _STALL_NS:
                self.stalls.append((now - gap - self.window_start, gap))
            self.last_done = now

    def error(self, message: str, now: int | None = None) -> None:
        now = time.perf_counter_ns() if now is None else now
        self.errors_total += 1
        if self.window_start <= now and not self.stopping:
            self.errors_in_window += 1
            if not message.startswith("HTTP "):  # statuses are counted by `record`
                self.statuses[message] += 1
        if len(self.error_samples) < _MAX_ERROR_SAMPLES and message not in self.error_samples:
            self.error_samples.append(message)

    def connection_done(self) -> None:
        if all(conn.done for conn in self.connections) and not self.finished.done():
            self.finished.set_result(None)

    def open_window(self) -> None:
        self.cpu_start = _own_cpu_seconds()
        self.server_cpu_start = _process_cpu_seconds(self.spec.server_pid)
        self.window_start = time.perf_counter_ns()

    def close_window(self) -> None:
        self.window_end = time.perf_counter_ns()
        self.stopping = True
        self.cpu_end = _own_cpu_seconds()
        self.server_cpu_end = _process_cpu_seconds(self.spec.server_pid)
        for conn in self.connections:
            conn.stop()
        self.connection_done()


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request in flight at a time."""

    def __init__(self, gen: _Generator, index: int) -> None:
        self.gen = gen
        self.index = index
        count = len(gen.requests)
        self.cursor = index * count // gen.spec.connections % count
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.need = -1  # bytes of the current response, head included; -1 while in the head
        self.status = 0
        self.intended_ns = 0
        self.in_flight = False
        self.timer: asyncio.TimerHandle | None = None
        self.done = False
        # Paced connections start spread over one interval so they do not send in bursts.
        self.next_at = time.perf_counter_ns() + gen.interval_ns * index // gen.spec.connections

    # asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.schedule()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        try:
            while buf:
                if self.need < 0:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = buf[:end]
                    if not head.startswith(b"HTTP/1."):
                        raise _ProtocolError(f"not an HTTP/1.x response: {head[:40]!r}")
                    length = _content_length(head)
                    if length < 0:
                        raise _ProtocolError("response without Content-Length")
                    self.status = int(head[9:12])
                    self.need = end + 4 + length
                if len(buf) < self.need:
                    break
                buf = buf[self.need :]
                self.need = -1
                self.complete()
        except (_ProtocolError, ValueError) as exc:
            self.gen.error(f"protocol: {exc}")
            self.buffer = b""
            if self.transport is not None:
                self.transport.close()
            return
        self.buffer = buf

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.done:
            return
        self.gen.error(f"connection lost: {exc or 'closed by server'}")
        self.in_flight = False
        self.buffer = b""
        self.need = -1
        if self.gen.stopping:
            self.finish()
        else:
            self.gen.loop.create_task(self.reconnect())

    # requests --------------------------------------------------------------------------

    def schedule(self) -> None:
        if self.gen.stopping:
            self.finish()
            return
        if not self.gen.interval_ns:
            self.send(time.perf_counter_ns())
            return
        intended = self.next_at
        self.next_at += self.gen.interval_ns
        delay = intended - time.perf_counter_ns()
        if delay <= 0:
            self.send(intended)  # late: send now, but measure from when it was due
        else:
            self.timer = self.gen.loop.call_later(delay / _NS_PER_S, self.send, intended)

    def send(self, intended_ns: int) -> None:
        self.timer = None
        if self.transport is None or self.gen.stopping:
            self.finish()
            return
        request = self.gen.requests[self.cursor]
        self.cursor = (self.cursor + 1) % len(self.gen.requests)
        self.intended_ns = intended_ns
        self.in_flight = True
        self.transport.write(request)

    def complete(self) -> None:
        self.in_flight = False
        self.gen.record(self.intended_ns, self.status)
        self.schedule()

    def stop(self) -> None:
        """The window closed: finish now if idle, else after the response in flight."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.in_flight:
            self.finish()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.transport is not None:
            self.transport.close()
        self.gen.connection_done()

    async def reconnect(self) -> None:
        await asyncio.sleep(0.01)
        try:
            await self.gen.loop.create_connection(
                lambda: self, self.gen.spec.host, self.gen.spec.port
            )
        except OSError as exc:
            self.gen.error(f"connect: {exc}")
            if self.gen.stopping:
                self.finish()
            else:
                self.gen.loop.create_task(self.reconnect())


async def _run(spec: LoadSpec) -> LoadResult:
    loop = asyncio.get_running_loop()
    gen = _Generator(spec, loop)
    gen.connections = [_Connection(gen, index) for index in range(spec.connections)]
    await asyncio.gather(
        *(loop.create_connection(lambda c=c: c, spec.host, spec.port) for c in gen.connections)
    )
    loop.call_later(spec.warmup_s, gen.open_window)
    loop.call_later(spec.warmup_s + spec.duration_s, gen.close_window)
    await asyncio.sleep(spec.warmup_s + spec.duration_s)
    unanswered = 0
    try:
        await asyncio.wait_for(asyncio.shield(gen.finished), _DRAIN_TIMEOUT_S)
    except TimeoutError:
        unanswered = sum(1 for conn in gen.connections if not conn.done)
        for conn in gen.connections:
            if not conn.done:
                gen.error(f"no response within {_DRAIN_TIMEOUT_S:.0f} s after the window")
                conn.finish()
        gen.errors_in_window += unanswered
    return _summarise(gen, unanswered)


def _summarise(gen: _Generator, unanswered: int) -> LoadResult:
    spec = gen.spec
    window_s = (gen.window_end - gen.window_start) / _NS_PER_S
    samples = sorted(ns // 1000 for ns in gen.latencies)
    count = len(samples)
    client_cpu = gen.cpu_end - gen.cpu_start
    server_cpu = (
        gen.server_cpu_end - gen.server_cpu_start
        if gen.server_cpu_end is not None and gen.server_cpu_start is not None
        else None
    )
    return LoadResult(
        requests=count,
        errors=gen.errors_in_window,
        errors_total=gen.errors_total,
        window_s=round(window_s, 4),
        rps=round(count / window_s, 1) if window_s > 0 else 0.0,
        p50_ms=percentile(samples, 0.50) / 1000,
        p90_ms=percentile(samples, 0.90) / 1000,
        p99_ms=percentile(samples, 0.99) / 1000,
        max_ms=(samples[-1] / 1000) if samples else 0.0,
        mean_ms=round(sum(samples) / count / 1000, 3) if count else 0.0,
        statuses=dict(gen.statuses),
        error_samples=gen.error_samples,
        client_cpu_s=round(client_cpu, 4),
        client_cpu_us_per_req=round(client_cpu * 1e6 / count, 2) if count else 0.0,
        client_core_fraction=round(client_cpu / window_s, 3) if window_s > 0 else 0.0,
        server_cpu_s=round(server_cpu, 4) if server_cpu is not None else None,
        server_cpu_us_per_req=(
            round(server_cpu * 1e6 / count, 2) if server_cpu is not None and count else None
        ),
        server_core_fraction=(
            round(server_cpu / window_s, 3) if server_cpu is not None and window_s > 0 else None
        ),
        window_start_ns=gen.window_start,
        window_end_ns=gen.window_end,
        unanswered=unanswered,
        max_gap_ms=round(gen.max_gap / 1e6, 3),
        stalls=len(gen.stalls),
        stalls_ms=round(sum(gap for _, gap in gen.stalls) / 1e6, 1),
        stall_samples=[
            [round(offset / 1e6, 1), round(gap / 1e6, 1)]
            for offset, gap in sorted(sorted(gen.stalls, key=lambda s: -s[1])[:10])
        ],
        latencies_us=samples if spec.keep_latencies else [],
    )


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of another process (all its threads), from /proc; None elsewhere."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def generate(spec: LoadSpec) -> LoadResult:
    """Run the load in this process (the child); blocks for warm-up + duration."""
    if spec.host not in _LOOPBACK:
        raise ValueError(f"the load generator only talks to loopback, not {spec.host!r}")
    if not spec.paths:
        raise ValueError("no request paths")
    import uvloop

    return uvloop.run(_run(spec))


# --------------------------------------------------------------------------------------------
# The parent side
# --------------------------------------------------------------------------------------------


def run_load(spec: LoadSpec) -> LoadResult:
    """Run `spec` in a fresh child process and return what it measured."""
    timeout = spec.warmup_s + spec.duration_s + _DRAIN_TIMEOUT_S + 30
    # The report (every latency) comes back through a file, not a pipe: reading it from the
    # child's stdout garbled it now and then (a duplicated or cut 64 KiB block).
    with tempfile.TemporaryDirectory(prefix="loadgen-") as scratch:
        report_path = Path(scratch) / "report.json"
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(report_path)],
            stdin=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the parent only; it kills this child
        )
        try:
            proc.communicate(json.dumps(asdict(spec)), timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"load generator exited with status {proc.returncode}")
        return LoadResult.from_json(json.loads(report_path.read_text()))


def main() -> None:
    # Ctrl-C is the parent's to handle: it kills this process (a run also ends by itself).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = LoadSpec(**json.loads(sys.stdin.read()))
    result = generate(spec)
    Path(sys.argv[1]).write_text(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()

"""bench/REPORT.md from the benchmarks' JSON reports: one table, every figure beside its
target and the baseline measured in the same run.

    python bench/report.py API.json UPSTREAM.json UPSTREAM-POSTGRES.json > bench/REPORT.md

A report that is missing or empty (a benchmark that could not run, e.g. without PostgreSQL)
leaves its rows saying so.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str, str]


def _load(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _control(figure: dict[str, Any]) -> str:
    """The A/A control's spread, where the bench ran one."""
    control = figure.get("control")
    if control is None or control.get("ratio") is None:
        return ""
    servers = figure.get("servers")
    text = (
        f"; each side pooled over {servers} server processes; A/A control: the slowest "
        f"server with the defaults is {control['ratio']:.2f} × the fastest"
    )
    if control.get("cpu_ratio") is not None:
        text += f" (CPU {control['cpu_ratio']:.2f})"
    return text


def _http_verdict(figure: dict[str, Any]) -> str:
    """Phase 1b over HTTP: where two servers of the same settings differ by more than the
    target allows, the figure cannot tell a pass from a miss, and says so."""
    control = (figure.get("control") or {}).get("ratio")
    if control is not None and control < figure["target"]:
        return f"unresolved: the A/A spread is {1 - control:.0%}"
    return _verdict(figure["pass"], False)


def _verdict(ok: bool | None, stretch: bool | None = None) -> str:
    if ok is None:
        return "—"
    if stretch:
        return "yes (stretch too)"
    return "yes" if ok else "**no**"


def _api_rows(api: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    routes = {
        "poll_completed": "poll `GET /v1/result/{id}`, completed tasks",
        "poll_mix": "poll, 50/50 completed and queued tasks",
        "create": "create `POST /v1/image2/images`",
    }
    for store, figures in api.get("stores", {}).items():
        for route, title in routes.items():
            figure = figures.get(route)
            if figure is None:
                continue
            target = f"≥ {figure['target']:g}"
            if figure.get("stretch"):
                target += f" (stretch ≥ {figure['stretch']:g})"
            cpu = figure.get("cpu_ratio")
            measured = f"**{figure['ratio']:.2f}** × bare ({figure['rps']:,.0f} req/s"
            measured += f", p99 {figure['p99_ms']:.1f} ms)"
            if cpu is not None:
                measured += f"; CPU per request: bare's / ours = {cpu:.2f}"
            baseline = (
                f"bare FastAPI app {figure['bare_rps']:,.0f} req/s, p99 "
                f"{figure['bare_p99_ms']:.1f} ms"
            )
            stretch = figure.get("stretch")
            rows.append(
                (
                    f"{names.get(store, store)}: {title}",
                    measured,
                    target,
                    baseline,
                    _verdict(figure["pass"], stretch is not None and figure["ratio"] >= stretch),
                )
            )
        quiet = figures.get("observability")
        if quiet is not None:
            cpu = quiet.get("cpu_ratio")
            measured = f"**{quiet['ratio']:.2f}** × off ({quiet['rps']:,.0f} req/s"
            measured += f", p99 {quiet['p99_ms']:.1f} ms)"
            if cpu is not None:
                measured += f"; CPU per request: off's / on's = {cpu:.2f}"
            rows.append(
                (
                    f"{names.get(store, store)}: poll with request lines and metrics on",
                    measured,
                    f"≥ {quiet['target']:g} of off",
                    f"servers with both off: {quiet['bare_rps']:,.0f} req/s, "
                    f"p99 {quiet['bare_p99_ms']:.1f} ms" + _control(quiet),
                    _http_verdict(quiet),
                )
            )
            inside = quiet.get("in_process")
            if inside:
                share = inside.get("cost_over_http")
                measured = (
                    f"**+{inside['added_us']:.1f} µs** a poll (the app's own CPU with both "
                    f"off: {inside['off_cpu_us_per_call']:.1f} µs)"
                )
                if share is not None:
                    measured += (
                        f" = **{share:.1%}** of the HTTP poll's CPU "
                        f"({inside['http_cpu_us_per_req']:.0f} µs a request, both off)"
                    )
                rows.append(
                    (
                        f"{names.get(store, store)}: request lines and metrics, one process",
                        measured,
                        "≤ 5 % of the poll",
                        f"the same app with both off, in the same process: the median of "
                        f"{inside['passes']} passes' on − off, {inside['requests_per_pass']:,} "
                        "calls a side, sides alternating",
                        _verdict(share <= 0.05 if share is not None else None, False),
                    )
                )
    for store, reason in api.get("skipped", {}).items():
        rows.append((f"{names.get(store, store)}: every API figure", "not run", "", reason, "—"))
    scale = api.get("processes")
    if scale:
        count = scale["processes"]
        for route, title in (("poll_completed", "poll"), ("create", "create")):
            entry = scale[route]
            rows.append(
                (
                    f"PostgreSQL: `serve --processes {count}`, {title}",
                    f"{entry[f'rps_{count}']:,.0f} req/s = **{entry['scale']:.2f}** × one "
                    f"process (p99 {entry[f'p99_ms_{count}']:.1f} ms)",
                    "reported (no target)",
                    f"`serve` one process {entry['rps_1']:,.0f} req/s (p99 "
                    f"{entry['p99_ms_1']:.1f} ms), on {scale['cpus']} cores shared with the "
                    "load generator and PostgreSQL",
                    "—",
                )
            )
    render = api.get("poll_during_4k_render")
    if render:
        rows.append(
            (
                "poll p99 while 4K renders run (closed loop)",
                f"**{render['p99_ms']:.1f} ms** (p50 {render['p50_ms']:.1f}, "
                f"{render['rps']:,.0f} req/s, renders busy "
                f"{render['render_busy_fraction']:.0%} of the window)",
                f"≤ {render['target_p99_ms']:g} ms",
                "—",
                _verdict(render["pass"]),
            )
        )
        fixed = render.get("fixed_rate")
        if fixed:
            rows.append(
                (
                    f"poll p99 while 4K renders run ({fixed['rate']:,.0f} req/s paced)",
                    f"**{fixed['p99_ms']:.1f} ms** (p50 {fixed['p50_ms']:.1f})",
                    f"≤ {render['target_p99_ms']:g} ms",
                    "—",
                    _verdict(fixed["pass"]),
                )
            )
    return rows


def _upstream_rows(upstream: dict[str, Any], title: str) -> list[Row]:
    if not upstream:
        return [(f"{title}: every figure", "not run", "", "", "—")]
    setup, throughput = upstream["setup"], upstream["throughput"]
    rows: list[Row] = []
    bare = upstream.get("bare_client")
    where = f"{setup['tasks']:,} tasks at {setup['concurrency']} in flight"
    if bare:
        baseline = (
            f"bare aiohttp client: {bare['ratio_to_ideal']:.2f} of the ideal "
            f"({bare['calls_per_s']:,.0f} calls/s)"
        )
    else:
        baseline = "—"
    rows.append(
        (
            f"{title}: throughput, {where}",
            f"**{throughput['ratio']:.2f}** of the ideal ({throughput['tasks_per_s']:,.0f} of "
            f"{throughput['ideal_tasks_per_s']:,.0f} tasks/s)",
            f"≥ {throughput['target']:g} where the bare client reaches ≥ 0.98",
            baseline,
            "—" if bare is None or bare["ratio_to_ideal"] < 0.98 else _verdict(throughput["ok"]),
        )
    )
    diagnostics = upstream["diagnostics"]
    if bare:
        multiple = bare["worker_cpu_multiple"]
        rows.append(
            (
                f"{title}: worker CPU per task",
                f"{diagnostics['worker_cpu_ms_per_task']:.2f} ms = **{multiple:.2f}** × the bare "
                "client's",
                f"≤ {bare['target_multiple']:g}× (stretch ≤ {bare['stretch_multiple']:g}×)",
                f"bare aiohttp client {bare['cpu_ms_per_call']:.3f} ms per call",
                _verdict(bare["ok"], multiple <= bare["stretch_multiple"]),
            )
        )
    rss = upstream["worker_rss_mb"]
    rows.append(
        (
            f"{title}: worker RSS growth",
            f"**{rss['growth']:.0f} MB** (start {rss['at_start']:.0f} MB, peak {rss['peak']:.0f})",
            f"≤ {rss['target_growth']:g} MB",
            "—",
            _verdict(rss["ok"]),
        )
    )
    tasks = upstream["tasks"]
    rows.append(
        (
            f"{title}: tasks lost",
            f"**{tasks['lost']}** (failed {tasks['failed']}, retried {tasks['retried']})",
            "0",
            "—",
            _verdict(tasks["ok"]),
        )
    )
    return rows


def _postgres_rows(report: dict[str, Any]) -> list[Row]:
    if not report:
        return [("PostgreSQL `worker --processes N`: every figure", "not run", "", "", "—")]
    count = report["processes"]
    one, several = report["one_process"], report["several_processes"]
    rows = [
        (
            f"PostgreSQL: `worker --processes {count}`, {count}× the load, scale",
            f"**{report['scale']:.2f}** × one process ({several['throughput']['tasks_per_s']:,.0f}"
            f" tasks/s; {several['throughput']['ratio']:.2f} of its ideal)",
            f"reported (ideal {count}×)",
            f"one process: {one['throughput']['tasks_per_s']:,.0f} tasks/s "
            f"({one['throughput']['ratio']:.2f} of its ideal), on {report['cpus']} cores shared "
            "with the upstream and PostgreSQL",
            "—",
        ),
        (
            f"PostgreSQL: `worker --processes {count}`, RSS",
            f"**{several['worker_rss_mb']['peak']:.0f} MB** peak, all processes "
            f"(growth {several['worker_rss_mb']['growth']:.0f} MB)",
            f"growth ≤ {several['worker_rss_mb']['target_growth']:g} MB",
            f"one process: {one['worker_rss_mb']['peak']:.0f} MB peak",
            _verdict(several["worker_rss_mb"]["ok"]),
        ),
    ]
    return rows


def render(api: dict[str, Any], upstream: dict[str, Any], postgres: dict[str, Any]) -> str:
    machine = api.get("machine", {})
    cpus = machine.get("cpus") or upstream.get("setup", {}).get("cpus")
    load = machine.get("load_average_at_end")
    rows = (
        _api_rows(api)
        + _upstream_rows(upstream, "Worker, openai engine, SQLite")
        + _postgres_rows(postgres)
    )
    lines = [
        "# Benchmark report",
        "",
        f"Written by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on a machine with "
        f"**{cpus} cores** ({machine.get('cpu_model') or 'unknown CPU'}, Python "
        f"{machine.get('python', '?')})"
        + (
            f"; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end"
            if load
            else ""
        )
        + ". Every baseline was measured in the same run, its passes interleaved with the "
        "figure's; throughput is the median of the passes.",
        "",
        "| figure | measured | target | baseline (same run) | met |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
        "The API figures are imageforge's req/s over those of `bench/bare_app.py`, a minimal "
        "FastAPI app in its own process under the same uvicorn settings (uvloop, httptools, no "
        "access log) returning a dict of the same shape. On a shared machine req/s moves with "
        "the other work; the CPU-per-request ratio beside it moves far less. The worker's "
        "ratio to the ideal (`concurrency / latency`) is CPU-bound, so it is judged only where "
        "the bare client itself reaches 0.98; its CPU per task as a multiple of the bare "
        "client's carries across machines.",
    ]
    findings = api.get("findings") or []
    if findings:
        lines += ["", "Notes from the API bench:", "", *(f"- {note}" for note in findings)]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    api, upstream, postgres = (_load(path) for path in argv)
    sys.stdout.write(render(api, upstream, postgres))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

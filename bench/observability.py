"""What request lines and metrics cost the poll, measured in one process.

The HTTP figure (`bench/api.py` phase 1b) runs uvicorn, the kernel's loopback and a load
generator on the same two cores, and two server processes of the same program differ there
by up to 10 % from one to the other (memory layout, hash seeds, where the scheduler puts
them): more than the few microseconds at stake. Here one process builds two copies of the
app on the same SQLite data, one with the defaults and one with `access_log` and
`metrics_enabled` off, starts both, and drives each with ASGI calls of `GET
/v1/result/{id}` for a completed task (the lean poll, the key checked, the task read, the
link signed, the JSON written): passes of `--requests` calls, the two apps alternating, the
process's CPU time per call (the log flusher's thread included; the lines go to a file).

The calls leave out the server and the network, which both sides pay alike, so the figure
is an upper bound of what an HTTP poll pays: `added_us` is the median over the passes of
on − off (the two sides of a pass run back to back, so a drift of the machine's speed
cancels), `cost` that over the app's own time with both off, and `cost_over_http` the same
microseconds over the HTTP poll's CPU per request when given (`--http-cpu-us`: phase 1b's
servers with both off, the whole request: server, kernel, app).

    python bench/observability.py --data-dir DIR --key KEY --task-id ID [--passes 9]

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop


def _scope(path: str, key: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"user-agent", b"bench"),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class _Answers:
    """The ASGI send: keeps the last status (every call must be a 200)."""

    def __init__(self) -> None:
        self.status = 0

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from imageforge.api.app import create_app
    from imageforge.settings import Settings

    defaults = Settings.load(None)
    quiet = defaults.model_copy(update={"access_log": False, "metrics_enabled": False})
    apps = {
        "on": create_app(defaults, run_worker=False, serve_metrics=False),
        "off": create_app(quiet, run_worker=False, serve_metrics=False),
    }
    path = f"/v1/result/{args.task_id}"
    answers = _Answers()
    per_call: dict[str, list[float]] = {side: [] for side in apps}
    async with (
        apps["on"].router.lifespan_context(apps["on"]),
        apps["off"].router.lifespan_context(apps["off"]),
    ):
        for side, app in apps.items():  # warm-up: caches, the first label, the first line
            for _ in range(args.requests // 10):
                await app(_scope(path, args.key), _receive, answers)
            if answers.status != 200:
                raise SystemExit(f"the poll answered {answers.status} on the {side} app")
        for index in range(args.passes):
            order = ("on", "off") if index % 2 == 0 else ("off", "on")
            for side in order:
                app = apps[side]
                started = time.process_time()
                for _ in range(args.requests):
                    await app(_scope(path, args.key), _receive, answers)
                per_call[side].append((time.process_time() - started) / args.requests * 1e6)
                if answers.status != 200:
                    raise SystemExit(f"the poll answered {answers.status} on the {side} app")
    on, off = statistics.median(per_call["on"]), statistics.median(per_call["off"])
    # This machine's speed drifts from one second to the next (other tenants): a pass's two
    # sides run back to back, so the median of their differences is what the drift spares.
    added = statistics.median(a - b for a, b in zip(per_call["on"], per_call["off"], strict=True))
    figure: dict[str, Any] = {
        "passes": args.passes,
        "requests_per_pass": args.requests,
        "on_cpu_us_per_call": round(on, 2),
        "off_cpu_us_per_call": round(off, 2),
        "added_us": round(added, 2),
        "cost": round(added / off, 4),
        "passes_us": {side: [round(v, 2) for v in values] for side, values in per_call.items()},
        "note": "CPU time of one process per ASGI call of the poll, the app alone (no server, "
        "no network); added_us: the median of each pass's on − off, sides alternating",
    }
    if args.http_cpu_us:
        figure["http_cpu_us_per_req"] = args.http_cpu_us
        figure["cost_over_http"] = round(added / args.http_cpu_us, 4)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path, help="a SQLite data dir")
    parser.add_argument("--key", required=True, help="an API key of that data")
    parser.add_argument("--task-id", required=True, help="a completed task of that key")
    parser.add_argument("--passes", type=int, default=9, help="passes of each side (9)")
    parser.add_argument("--requests", type=int, default=20_000, help="calls per pass")
    parser.add_argument("--http-cpu-us", type=float, default=None, help="HTTP CPU per poll")
    args = parser.parse_args()
    for name in [name for name in os.environ if name.startswith("IMAGEFORGE_")]:
        del os.environ[name]
    os.environ["IMAGEFORGE_DATA_DIR"] = str(args.data_dir)

    from imageforge.observability.logs import configure_logging

    # The request lines are written, as by `serve`, to a file rather than a terminal.
    with tempfile.TemporaryDirectory(prefix="observability-") as scratch:
        log_file = (Path(scratch) / "requests.log").open("w")
        real_stderr, sys.stderr = sys.stderr, log_file
        try:
            configure_logging("info", "text")
        finally:
            sys.stderr = real_stderr
        try:
            figure = uvloop.run(_measure(args))
        finally:
            log_file.close()
    print(json.dumps(figure))


if __name__ == "__main__":
    main()

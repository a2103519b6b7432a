"""The OpenAI Images routes' own cost: how long `images.generate` takes when the image itself
takes no time, and how much of it is the wait between the last task ending and the answer.

Runs `imageforge serve` with an instant engine (ChaosEngine at 0 s) and the official `openai`
SDK; for each `n`, `--rounds` sequential generates. `wait_gap` is the answer's arrival minus
the last task's `finished_at` (read from the server's SQLite file): what polling the tasks
costs over being told at once. Prints one JSON report on stdout.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

from imageforge.testing.processes import ServerProcess, create_key


def _finished_at(database: Path, task_ids: list[str]) -> float:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        marks = ",".join("?" for _ in task_ids)
        row = db.execute(
            f"SELECT max(finished_at) FROM tasks WHERE id IN ({marks})", task_ids
        ).fetchone()
    return float(row[0])


def _figures(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 10])
    args = parser.parse_args()
    report: dict[str, object] = {"rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        key = create_key(data_dir)["key"]
        env = {
            "IMAGEFORGE_ENGINE": "imageforge.testing.engines:ChaosEngine",
            "IMAGEFORGE_CHAOS_MIN_SECONDS": "0",
            "IMAGEFORGE_CHAOS_MAX_SECONDS": "0",
        }
        with ServerProcess(data_dir, **env) as server:
            database = data_dir / "imageforge.db"
            with openai.OpenAI(api_key=key, base_url=f"{server.base_url}/v1") as client:
                client.images.generate(prompt="warm-up")
                for n in args.n:
                    totals, gaps = [], []
                    for _ in range(args.rounds):
                        started = time.time()
                        raw = client.images.with_raw_response.generate(prompt="bench", n=n)
                        answered = time.time()
                        ids = raw.headers["imageforge-task-ids"].split(",")
                        totals.append(answered - started)
                        gaps.append(answered - _finished_at(database, ids))
                    report[f"n={n}"] = {"total": _figures(totals), "wait_gap": _figures(gaps)}
                    print(f"n={n} done", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

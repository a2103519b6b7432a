"""Metrics shared by several processes: where their files live, decided before any count.

prometheus-client reads `PROMETHEUS_MULTIPROC_DIR` once, when it is first imported: set,
every process writes its values to files there and a scrape sums them. imageforge
handles the variable itself: the first process of a run (`worker --processes N`, and any
command given the variable by the operator) empties or creates the directory, the
processes it starts inherit it, and a per-run directory it created is removed at exit.
A single process keeps its values in memory (no directory at all).

This module must not import prometheus-client: it runs before it may be imported.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(*, processes: int, child: bool = False) -> Path | None:
    """The directory the processes of this run share, or None for one process.

    `child`: started by an imageforge parent that prepared the directory (keep it)."""
    configured = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())
    if child:
        return Path(configured) if configured else None
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        # A previous run's files would add its counts to this run's.
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    elif processes > 1:
        directory = Path(tempfile.mkdtemp(prefix="imageforge-metrics-"))
        atexit.register(shutil.rmtree, directory, True)
    else:
        return None
    if "prometheus_client" in sys.modules:
        # Too late: values already live in memory, and a scrape would miss other processes.
        raise RuntimeError("multiprocess metrics must be prepared before prometheus_client loads")
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def process_exited(pid: int) -> None:
    """Forget a finished process's live gauges (its counters still count)."""
    if not os.environ.get(MULTIPROC_ENV):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

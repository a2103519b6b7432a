"""The live view of tasks being waited for: one line per task on stderr, so stdout carries
only what a script reads (file paths, or JSON with `--json`).

Each line shows the task's id, its status, a bar (filled from the server's `progress` where it
reports one, pulsing otherwise) and the time since the command started waiting for it.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from imageforge_client import TaskResult

_STATUS_STYLES = {
    "queued": "yellow",
    "processing": "cyan",
    "completed": "green",
    "failed": "red",
}


class TaskDisplay:
    """A `rich` progress display with one row per task id; `update` takes a task's state."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(finished_text="•"),
            TextColumn("{task.description}"),
            TextColumn("{task.fields[status]}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=console,
            # Refreshed by a thread; a status change shows at the next of ten frames a second.
            refresh_per_second=10,
        )
        self._rows: dict[str, TaskID] = {}

    def add(self, task_id: str, status: str) -> None:
        self._rows[task_id] = self._progress.add_task(
            task_id, total=None, status=_styled(status), start=True
        )

    def update(self, task: TaskResult) -> None:
        row = self._rows.get(task.id)
        if row is None:
            return
        finished = task.status in ("completed", "failed")
        if task.progress is not None or task.status == "completed":
            # A bar only once the server has said how far it is; until then it pulses.
            done = 100.0 if task.status == "completed" else float(task.progress or 0)
            self._progress.update(row, total=100, completed=done, status=_styled(task.status))
        else:
            self._progress.update(row, status=_styled(task.status))
        if finished:
            self._progress.stop_task(row)

    def __enter__(self) -> TaskDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()


def _styled(status: str) -> str:
    style = _STATUS_STYLES.get(status)
    return f"[{style}]{status}[/{style}]" if style else status

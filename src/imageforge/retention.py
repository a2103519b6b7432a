"""How long images and finished tasks are kept, as one rule read wherever a task is read.

Both lifetimes count from a task's `finished_at`; unset keeps forever. An image never
outlives its task row (deleting a row deletes its image first), so its lifetime is the
shorter of the two. Whether an image or a task is past retention is decided when the
task is read, from the task and the time, never remembered: a cached task or response
can therefore not serve a link past retention, and every node answers the same whether
or not the janitor has swept yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from imageforge.tasks import Task, TaskStatus


@dataclass(frozen=True, slots=True)
class Retention:
    #: Seconds an image is kept after its task finished; None keeps it.
    image_seconds: int | None = None
    #: Seconds a finished task's row is kept (never its ledger rows); None keeps it.
    task_seconds: int | None = None

    @property
    def image_lifetime(self) -> int | None:
        kept = [s for s in (self.image_seconds, self.task_seconds) if s is not None]
        return min(kept) if kept else None

    def image_expired(self, task: Task, now: float) -> bool:
        """A completed task whose image is past retention (or already deleted)."""
        if task.status is not TaskStatus.COMPLETED:
            return False
        if task.image_key is None:
            return True
        lifetime = self.image_lifetime
        return lifetime is not None and _past(task, lifetime, now)

    def task_expired(self, task: Task, now: float) -> bool:
        """A finished task past its row's retention: answered as if it never existed."""
        return (
            self.task_seconds is not None
            and task.status.is_terminal
            and _past(task, self.task_seconds, now)
        )

    def image_cutoff(self, now: float) -> float | None:
        """Images of tasks finished before this are past retention."""
        lifetime = self.image_lifetime
        return None if lifetime is None else now - lifetime

    def task_cutoff(self, now: float) -> float | None:
        """Tasks finished before this are past retention."""
        return None if self.task_seconds is None else now - self.task_seconds


def _past(task: Task, seconds: int, now: float) -> bool:
    return task.finished_at is not None and task.finished_at + seconds <= now

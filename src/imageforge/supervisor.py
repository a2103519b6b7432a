"""`imageforge worker --processes N` and `serve --processes N`: several processes under one
command.

A worker process runs its event loop on one core (`make bench-upstream`: ~0.85 ms of CPU per
upstream call), so a machine with more cores runs more processes. The supervisor starts them,
replaces one that dies (after a pause that grows while replacements keep dying), and on
SIGTERM or SIGINT asks every process to drain and waits for all of them. It holds no tasks
itself: each process claims, leases and completes its own, so a process that is killed loses
nothing (the rescuer hands its tasks to the others).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from imageforge.observability import multiprocess

log = logging.getLogger(__name__)

#: A replacement waits this long at first, doubling while replacements keep dying, up to the max.
RESTART_DELAY_SECONDS = 1.0
RESTART_DELAY_MAX_SECONDS = 30.0
#: A process that ran at least this long before it died resets the pause.
HEALTHY_AFTER_SECONDS = 30.0
#: How often the supervisor looks at its processes.
_TICK_SECONDS = 0.2


@dataclass
class _Slot:
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    delay: float = RESTART_DELAY_SECONDS


#: The signals a child must not receive before it can handle them (see `_start`).
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class Supervisor:
    """`command` is the worker's command line; `stop_requested` says when to drain (the
    command line's SIGTERM/SIGINT handler, installed before the supervisor starts)."""

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        stop_requested: Callable[[], bool],
        kind: str = "worker",
    ) -> None:
        self._command = list(command)
        #: What the processes are, in log lines ("worker", "server").
        self._kind = kind
        self._slots = [_Slot() for _ in range(processes)]
        self._stop_requested = stop_requested

    def run(self) -> int:
        """Until a stop is requested; then drain every process. 0 when all of them exited
        cleanly, 1 otherwise."""
        for index, slot in enumerate(self._slots):
            if self._stop_requested():
                break
            self._start(index, slot)
        while not self._stop_requested():
            now = time.monotonic()
            for index, slot in enumerate(self._slots):
                if slot.process is None:
                    if now >= slot.restart_at:
                        self._start(index, slot)
                    continue
                code = slot.process.poll()
                if code is None:
                    continue
                lived = now - slot.started_at
                # A killed process could not forget its own live gauges.
                multiprocess.process_exited(slot.process.pid)
                if lived >= HEALTHY_AFTER_SECONDS:
                    slot.delay = RESTART_DELAY_SECONDS
                wait, slot.delay = slot.delay, min(RESTART_DELAY_MAX_SECONDS, slot.delay * 2)
                log.error(
                    "%s process %d exited with %s after %.0fs; starting another in %.0fs",
                    self._kind,
                    slot.process.pid,
                    _describe(code),
                    lived,
                    wait,
                )
                slot.process, slot.restart_at = None, now + wait
            time.sleep(_TICK_SECONDS)
        return self._drain()

    def _start(self, index: int, slot: _Slot) -> None:
        # The child inherits the signal mask: with SIGTERM blocked, a drain that begins while
        # its interpreter is still starting leaves the signal pending until the child's
        # handler is in place (it unblocks them then), instead of killing it with status
        # -15. Our own stop waits here meanwhile, and is delivered as the mask is restored.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            slot.process = subprocess.Popen(self._command)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        slot.started_at = time.monotonic()
        log.info(
            "started %s process %d (%d of %d)",
            self._kind,
            slot.process.pid,
            index + 1,
            len(self._slots),
        )

    def _drain(self) -> int:
        running = [slot.process for slot in self._slots if slot.process is not None]
        log.info("draining %d %s processes", len(running), self._kind)
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        clean = True
        for process in running:
            code = process.wait()
            if code != 0:
                clean = False
                log.error("%s process %d exited with %s", self._kind, process.pid, _describe(code))
        return 0 if clean else 1


def _describe(code: int) -> str:
    if code < 0:
        return signal.Signals(-code).name
    return f"status {code}"

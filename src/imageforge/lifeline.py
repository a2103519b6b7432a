"""Child processes that die with their parent.

A process imageforge starts for itself (the offline engine's render processes, the workers
of `worker --processes N`) is useless without its parent, and one left behind holds memory,
and a render process holds the pipe that keeps multiprocessing's resource tracker alive
too. After `kill -9` of `imageforge serve` nothing tells them: their parent cannot clean
up. So each child arranges its own end, at its start:

- on Linux, `prctl(PR_SET_PDEATHSIG)`: the kernel sends the signal the moment the parent
  dies (strictly: the thread that started the child; both are the main thread here);
- elsewhere, a daemon thread that checks once a second whether the parent is still the
  parent (an orphan is adopted by another process).

A parent that died before the child got this far is caught by comparing `os.getppid()`
with the parent's pid, handed down by the parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1
#: How often the fallback thread looks (seconds); prctl, where available, acts at once.
POLL_SECONDS = 1.0


def exit_with_parent(parent_pid: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """Have `sig` sent to this process when process `parent_pid` (its parent) dies."""
    armed = _parent_death_signal(sig)
    if os.getppid() != parent_pid:
        # The parent died before the request above was made: nobody will send it.
        os.kill(os.getpid(), sig)
        return
    if not armed:
        watcher = threading.Thread(
            target=_watch, args=(parent_pid, sig), name="parent watch", daemon=True
        )
        watcher.start()


def _parent_death_signal(sig: signal.Signals) -> bool:
    """prctl(PR_SET_PDEATHSIG) where the system has it; → whether it was set."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    return False


def _watch(parent_pid: int, sig: signal.Signals) -> None:
    stop = threading.Event()
    while not stop.wait(POLL_SECONDS):
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), sig)
            return

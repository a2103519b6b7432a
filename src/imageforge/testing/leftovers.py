"""Which processes a test session left running.

A session marks itself with an environment variable that every process it starts inherits
(`mark_session`), and at its end lists the processes that carry the mark or descend from
it (`leftovers`): an orphan re-parented to PID 1 still has the mark in its environment.
Other sessions on the same machine have marks of their own and are never matched.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

#: Not `IMAGEFORGE_*`: the harness strips those from the environments it hands down.
MARKER = "PYTEST_IMAGEFORGE_SESSION"


@dataclass(frozen=True)
class Leftover:
    pid: int
    parent: int
    command: str


def mark_session() -> str:
    """Give this process (and so everything it starts from now on) a mark of its own."""
    mark = f"{os.getpid()}-{secrets.token_hex(4)}"
    os.environ[MARKER] = mark
    return mark


def leftovers(mark: str, *, root: int | None = None) -> list[Leftover]:
    """Live processes, other than `root` (default: this one), that carry `mark` or
    descend from `root`. Not counted: zombies (dead, only not yet reaped), and `root`'s own
    multiprocessing resource tracker, which exits when `root` does."""
    root = os.getpid() if root is None else root
    table = _process_table()
    needle = f"{MARKER}={mark}".encode()
    found = []
    for pid, (parent, state, command) in table.items():
        if pid == root or state == "Z":
            continue
        if parent == root and "multiprocessing.resource_tracker" in command:
            continue
        if _descends_from(pid, root, table) or needle in _environment(pid):
            found.append(Leftover(pid, parent, command))
    return found


def descendants(root: int) -> list[Leftover]:
    """The live processes below `root`: its children, theirs, and so on."""
    table = _process_table()
    return [
        Leftover(pid, parent, command)
        for pid, (parent, state, command) in table.items()
        if state != "Z" and _descends_from(pid, root, table)
    ]


def alive(pid: int) -> bool:
    """Running, or at least not yet dead: a zombie only waits to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _process_table() -> dict[int, tuple[int, str, str]]:
    """pid → (parent pid, state letter, command line)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        # The command name in parentheses may hold spaces and parentheses itself.
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), fields[0], command.strip())
    return table


def _descends_from(pid: int, root: int, table: dict[int, tuple[int, str, str]]) -> bool:
    seen = set()
    while pid in table and pid not in seen:
        seen.add(pid)
        pid = table[pid][0]
        if pid == root:
            return True
    return False


def _environment(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""

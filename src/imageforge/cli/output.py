"""The consoles, exit codes and how this program is spelt in messages: all that every command
shares and that imports nothing of the server, so the client commands start fast."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from rich.console import Console

console = Console()
err_console = Console(stderr=True)

#: sysexits.h: "configuration error"; service managers show it as such.
EX_CONFIG = 78


def command_name() -> str:
    """This program as the operator can run it again: `imageforge` when that is what is on
    PATH, else the path they started (`.venv/bin/imageforge` after `make serve`), or
    `python -m imageforge` with the interpreter they used."""
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if started is None or started.name in ("__main__.py", "-m", "-c") or started.suffix == ".py":
        return f"{_shown_path(Path(sys.executable))} -m imageforge"
    on_path = shutil.which(started.name)
    if on_path is not None and Path(on_path).resolve() == started.resolve():
        return started.name
    return _shown_path(started)


def _shown_path(path: Path) -> str:
    """Relative to the working directory when it is inside it, so it reads `.venv/bin/…`."""
    absolute = path if path.is_absolute() else Path.cwd() / path
    try:
        relative = absolute.relative_to(Path.cwd())
    except ValueError:
        return str(absolute)
    # A bare name would be looked up on PATH instead.
    return str(relative) if len(relative.parts) > 1 else f"./{relative}"

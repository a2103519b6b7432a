"""What every command shares: settings, logging, output, a store for one action, and how
the command itself is spelt when a message tells the operator what to run."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console

from imageforge.config_errors import one_line
from imageforge.errors import ConfigurationError
from imageforge.settings import Settings, config_file_path
from imageforge.store import Store, open_store, upgrade_database

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML configuration file (default: $IMAGEFORGE_CONFIG or ./imageforge.toml).",
    ),
]


#: sysexits.h: "configuration error"; service managers show it as such.
EX_CONFIG = 78
#: The TOML file the settings came from (for naming settings in messages).
_config_file: Path | None = None


def load_settings(config: Path | None) -> Settings:
    """The settings, checked as far as every command needs them (`Runtime.check`
    without the engines: only a worker runs those), or exit 78 with one line saying
    which setting is wrong."""
    from imageforge.runtime import Runtime

    global _config_file
    try:
        _config_file = config_file_path(config)
        settings = Settings.load(config)
        Runtime.check(settings, run_worker=False)
    except ConfigurationError as exc:
        exit_for_configuration(exc)
    return settings


def exit_for_configuration(error: ConfigurationError) -> NoReturn:
    """One line on stderr, no traceback, exit 78."""
    line = one_line(
        error,
        top_level=Settings.field_names(),
        config_file=_config_file,
        environ=os.environ,
    )
    # Plain print: rich would wrap the line and read brackets as markup.
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(EX_CONFIG)


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


async def with_store(settings: Settings, action: Callable[[Store], Awaitable[T]]) -> T:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(upgrade_database, settings.resolved_database_url)
    store = await open_store(settings.resolved_database_url)
    try:
        return await action(store)
    finally:
        await store.close()

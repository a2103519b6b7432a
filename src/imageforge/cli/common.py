"""What the server's commands share: settings, logging, a store for one action (output and
how the command is spelt: `cli/output.py`)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer

# Re-exported: the commands import their output from here.
from imageforge.cli.output import EX_CONFIG as EX_CONFIG
from imageforge.cli.output import command_name as command_name
from imageforge.cli.output import console as console
from imageforge.cli.output import err_console as err_console
from imageforge.config_errors import one_line
from imageforge.errors import ConfigurationError
from imageforge.settings import Settings, config_file_path
from imageforge.store import Store, open_store, upgrade_database

T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML configuration file (default: $IMAGEFORGE_CONFIG or ./imageforge.toml).",
    ),
]


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


async def with_store(settings: Settings, action: Callable[[Store], Awaitable[T]]) -> T:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(upgrade_database, settings.resolved_database_url)
    store = await open_store(settings.resolved_database_url)
    try:
        return await action(store)
    finally:
        await store.close()

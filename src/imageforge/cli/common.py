"""What every command shares: settings, logging, output, a store for one action."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from imageforge.settings import Settings
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


def load_settings(config: Path | None) -> Settings:
    try:
        return Settings.load(config)
    except Exception as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet = max(logging.WARNING, logging.getLevelName(level.upper()))
    # Migrations announce every step at INFO; only problems are worth a line at start-up.
    # The HTTP clients log every request at INFO: one line per upstream call on top of the
    # task's own, with the upstream's URL in it.
    for name in ("alembic", "httpx", "httpx2", "httpcore", "httpcore2", "aiohttp"):
        logging.getLogger(name).setLevel(quiet)


async def with_store(settings: Settings, action: Callable[[Store], Awaitable[T]]) -> T:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(upgrade_database, settings.resolved_database_url)
    store = await open_store(settings.resolved_database_url)
    try:
        return await action(store)
    finally:
        await store.close()

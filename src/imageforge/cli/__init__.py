"""The `imageforge` command line: serve, worker, keys, db.

Each group of commands lives in its own module; this one assembles them.
"""

from __future__ import annotations

import typer

from imageforge.cli import keys
from imageforge.cli.common import ConfigOption, console, load_settings
from imageforge.cli.serve import serve, worker
from imageforge.store import upgrade_database

app = typer.Typer(
    name="imageforge",
    help="A self-hosted server for the GPT Image 2 asynchronous task API.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.command()(serve)
app.command()(worker)
app.add_typer(keys.app, name="keys")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply database migrations (the server also does this at start-up)."""
    settings = load_settings(config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    console.print("Database is up to date.")


def main() -> None:
    app()
